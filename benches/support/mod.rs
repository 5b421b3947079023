//! What the benchmarks share: the release server as a child process.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

use tokio::io::AsyncReadExt;
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
        std::fs::create_dir_all(data.join("deploy")).expect("creating the deploy folder");
        let mut child = Command::new(env!("CARGO_BIN_EXE_projector"))
            .args(["serve", "--listen", "127.0.0.1:0", "--data"])
            .arg(data)
            .arg("--projections")
            .arg(data.join("deploy"))
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
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Reads one HTTP/1.1 response (with a `Content-Length`) from `socket` and checks its status:
/// the lean clients' way of waiting for an answer without a client library's overhead.
pub async fn read_response(socket: &mut TcpStream, buffer: &mut [u8], status: u16) {
    let expected = format!("http/1.1 {status}");
    let mut filled = 0;
    loop {
        let read = socket.read(&mut buffer[filled..]).await.unwrap();
        assert!(read > 0, "the server closed the connection");
        filled += read;
        let text = &buffer[..filled];
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
