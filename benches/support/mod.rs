//! What the benchmarks share: the release server as a child process, a lean HTTP client, and
//! small helpers.
#![allow(dead_code)] // each bench uses its own part of this module

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub struct Server {
    child: Child,
    pub base: String,
}

impl Server {
    /// Starts the server over `data` with the projections already in `data/deploy`: none
    /// unless the caller put some there (the folder is created empty, so the examples are not
    /// seeded).
    pub fn start(data: &Path) -> Server {
        Self::start_with(data, &[])
    }

    /// [`Server::start`] with more arguments.
    pub fn start_with(data: &Path, extra: &[&str]) -> Server {
        std::fs::create_dir_all(data.join("deploy")).expect("creating the deploy folder");
        let mut child = Command::new(env!("CARGO_BIN_EXE_projector"))
            .args(["serve", "--listen", "127.0.0.1:0", "--data"])
            .arg(data)
            .arg("--projections")
            .arg(data.join("deploy"))
            .args(extra)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawning projector serve");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let base = loop {
            let line = lines.next().expect("server exited").unwrap();
            if let Some(addr) = line.strip_prefix("listening on ") {
                break addr.to_owned();
            }
        };
        Server { child, base }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// CPU time the server has used so far (user and system, all threads), from
    /// `/proc/<pid>/stat`.
    pub fn cpu_time(&self) -> Duration {
        cpu_time(self.pid())
    }
}

/// CPU time process `pid` has used so far (user and system, all threads), from
/// `/proc/<pid>/stat`.
pub fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // The fields after the command name, which is in parentheses and may hold spaces.
    let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    // SAFETY: sysconf reads a constant of the system.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
    Duration::from_secs_f64(ticks as f64 / per_second as f64)
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Requests per second of `clients` [`Lean`] clients on `addr`, client `c` sending
/// `request(c, n)` for its `n`th request (each answered `status`) until `seconds` pass.
pub async fn lean_rate<F>(
    addr: &str,
    clients: usize,
    seconds: Duration,
    status: u16,
    request: F,
) -> f64
where
    F: Fn(usize, u64) -> Vec<u8> + Send + Sync + 'static,
{
    let request = std::sync::Arc::new(request);
    let done = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let start = std::time::Instant::now();
    let tasks: Vec<_> = (0..clients)
        .map(|c| {
            let (done, addr, request) = (done.clone(), addr.to_owned(), request.clone());
            tokio::spawn(async move {
                let mut client = Lean::connect(&addr).await;
                let mut n = 0u64;
                while start.elapsed() < seconds {
                    client.exchange(&request(c, n), status).await;
                    done.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    n += 1;
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    done.load(std::sync::atomic::Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64()
}

/// A minimal HTTP/1.1 client over one keep-alive connection: a prepared request out, the
/// response read up to its `Content-Length`. It costs the shared 2 cores far less than a client
/// library, so a figure shows more of what the server takes when its clients run elsewhere.
pub struct Lean {
    socket: TcpStream,
    buffer: Vec<u8>,
}

impl Lean {
    pub async fn connect(addr: &str) -> Lean {
        let socket = TcpStream::connect(addr).await.unwrap();
        socket.set_nodelay(true).unwrap();
        Lean {
            socket,
            buffer: vec![0u8; 64 * 1024],
        }
    }

    /// Sends `request` and reads its response, which must have status `status`.
    pub async fn exchange(&mut self, request: &[u8], status: u16) {
        self.socket.write_all(request).await.unwrap();
        let expected = format!("http/1.1 {status}");
        let mut filled = 0;
        loop {
            if filled == self.buffer.len() {
                // A large answer (a 1,000-event append lists 1,000 ids).
                self.buffer.resize(filled * 2, 0);
            }
            let read = self.socket.read(&mut self.buffer[filled..]).await.unwrap();
            assert!(read > 0, "the server closed the connection");
            filled += read;
            let text = &self.buffer[..filled];
            let Some(end) = text.windows(4).position(|w| w == b"\r\n\r\n") else {
                continue;
            };
            let head = std::str::from_utf8(&text[..end])
                .unwrap()
                .to_ascii_lowercase();
            assert!(head.starts_with(&expected), "{head}");
            let length: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .unwrap()
                .trim()
                .parse()
                .unwrap();
            if filled >= end + 4 + length {
                return;
            }
        }
    }
}

/// Whether a measurement runs: `BENCH_ONLY` (a word, or several separated by `|`) keeps
/// those whose name contains one of them.
pub fn selected(name: &str) -> bool {
    std::env::var("BENCH_ONLY").map_or(true, |only| only.split('|').any(|word| name.contains(word)))
}

/// A number from the environment, or `default`.
pub fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

pub fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

/// The `q` quantile of latencies sorted in ascending order.
pub fn quantile(sorted: &[Duration], q: f64) -> Duration {
    sorted[((sorted.len() as f64 * q) as usize).min(sorted.len() - 1)]
}

/// A component built from `projections/` or `tests/guests/` by `build.rs`.
pub fn guest(name: &str) -> Vec<u8> {
    std::fs::read(Path::new(env!("PROJECTOR_GUESTS_DIR")).join(format!("{name}.wasm"))).unwrap()
}

/// A GET's JSON body.
pub async fn get_json(client: &reqwest::Client, url: &str) -> serde_json::Value {
    client.get(url).send().await.unwrap().json().await.unwrap()
}

/// Waits until the server at `base` lists `count` projections, every one caught up.
pub async fn wait_for_projections(base: &str, count: usize) {
    let client = reqwest::Client::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        let list = get_json(&client, &format!("{base}/projections")).await;
        let all = list["projections"]
            .as_array()
            .map_or(&[][..], Vec::as_slice);
        if all.len() == count && all.iter().all(|p| p["state"] == "caught_up") {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "projections not loaded: {list}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The multi-threaded runtime the benches drive their clients from.
pub fn runtime() -> tokio::runtime::Runtime {
    // The worker count is set here so that `TOKIO_WORKER_THREADS`, which the server started
    // by the bench reads, leaves the load generator alone.
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(std::thread::available_parallelism().map_or(2, |n| n.get()))
        .enable_all()
        .build()
        .unwrap()
}
