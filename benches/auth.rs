//! What API keys cost: appends (64 lean clients) and view GETs (16 lean clients) against a
//! release server with `--auth none` and with `--auth keys`, run alternately in one sitting,
//! so that the machine's drift falls on both alike. Prints each run, the medians and the
//! ratio.
//!
//! `BENCH_RUNS` (3) pairs, `BENCH_SECONDS` (3) per measurement.

mod support;

use std::time::Duration;

use support::{Server, env_number, guest, lean_rate, median};

/// Events per second of `clients` lean clients appending one event per request.
async fn appends(addr: &str, auth: &str, clients: usize, seconds: Duration) -> f64 {
    let (host, auth) = (addr.to_owned(), auth.to_owned());
    lean_rate(addr, clients, seconds, 201, move |c, n| {
        let body = br#"[{"type":"Deposited","data":{"amount":5}}]"#;
        let mut request = format!(
            "POST /streams/account-{c}x{} HTTP/1.1\r\nhost: {host}\r\n{auth}content-type: application/json\r\ncontent-length: {}\r\n\r\n",
            n % 20,
            body.len()
        )
        .into_bytes();
        request.extend_from_slice(body);
        request
    })
    .await
}

/// Requests per second of `clients` lean clients GETting `stream-stats` documents.
async fn view_gets(addr: &str, auth: &str, clients: usize, seconds: Duration) -> f64 {
    let (host, auth) = (addr.to_owned(), auth.to_owned());
    lean_rate(addr, clients, seconds, 200, move |c, n| {
        // Client c's nth request: the documents of the streams `appends` wrote, in turn.
        let k = c as u64 + n * clients as u64;
        format!(
            "GET /projections/stream-stats/view/stream/account-{}x{} HTTP/1.1\r\nhost: {host}\r\n{auth}\r\n",
            k % 64,
            (k / 64) % 20
        )
        .into_bytes()
    })
    .await
}

/// One mode's figures, a value per run.
struct Figures {
    mode: &'static str,
    appends: Vec<f64>,
    gets: Vec<f64>,
    /// Seconds of server CPU per view GET.
    get_cpu: Vec<f64>,
}

fn main() {
    let runs = env_number("BENCH_RUNS", 3) as usize;
    let seconds = Duration::from_secs(env_number("BENCH_SECONDS", 3));
    let tokio = support::runtime();
    let scratch = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let mut results = ["none", "keys"].map(|mode| Figures {
        mode,
        appends: Vec::new(),
        gets: Vec::new(),
        get_cpu: Vec::new(),
    });
    for run in 0..runs {
        // Each mode goes first in every other run: the second server of a pair starts while
        // the disk still writes back the first one's files, which would otherwise always
        // fall on the same mode.
        let order = if run % 2 == 0 { [0, 1] } else { [1, 0] };
        for i in order {
            let figures = &mut results[i];
            let mode = figures.mode;
            // Start each server on a quiet disk.
            std::process::Command::new("sync").status().unwrap();
            let (server, addr, auth) = start(&scratch.path().join(format!("{mode}-{run}")), mode);
            let (append_rate, get_rate, get_cpu) = tokio.block_on(async {
                let append_rate = appends(&addr, &auth, 64, seconds).await;
                // Every stream's document is there once stream-stats caught up.
                tokio::time::sleep(Duration::from_secs(2)).await;
                let cpu = server.cpu_time();
                let get_rate = view_gets(&addr, &auth, 16, seconds).await;
                // The server's CPU per GET: steadier than the rate, which the load generator
                // on the same cores and the machine's drift move by ±15%.
                let get_cpu =
                    (server.cpu_time() - cpu).as_secs_f64() / (get_rate * seconds.as_secs_f64());
                (append_rate, get_rate, get_cpu)
            });
            println!(
                "run {run}, --auth {mode}: appends {append_rate:.0}/s (64 clients), view GETs {get_rate:.0}/s (16 clients), {:.1} µs of server CPU per GET",
                get_cpu * 1e6
            );
            figures.appends.push(append_rate);
            figures.gets.push(get_rate);
            figures.get_cpu.push(get_cpu);
        }
    }
    let interleaved = interleaved(&tokio, scratch.path(), runs.max(2) * 4);
    let check = key_check_cost(scratch.path());
    let [none, keys] = &results;
    let med = |xs: &Vec<f64>| median(xs.clone());
    let (na, ka) = (med(&none.appends), med(&keys.appends));
    let (ng, kg) = (med(&none.gets), med(&keys.gets));
    let (nc, kc) = (med(&none.get_cpu), med(&keys.get_cpu));
    println!("| measurement | --auth none | --auth keys | keys / none |");
    println!("|---|---:|---:|---:|");
    println!(
        "| append, 64 lean clients, events/s | {na:.0} | {ka:.0} | {:.3} |",
        ka / na
    );
    println!(
        "| view GET, 16 lean clients, requests/s | {ng:.0} | {kg:.0} | {:.3} |",
        kg / ng
    );
    println!(
        "| view GET, server CPU per request, µs | {:.1} | {:.1} | {:.3} |",
        nc * 1e6,
        kc * 1e6,
        kc / nc
    );
    let [(ia_none, ia_keys), (ig_none, ig_keys)] = interleaved;
    println!(
        "| append, interleaved slices, events/s | {ia_none:.0} | {ia_keys:.0} | {:.3} |",
        ia_keys / ia_none
    );
    println!(
        "| view GET, interleaved slices, requests/s | {ig_none:.0} | {ig_keys:.0} | {:.3} |",
        ig_keys / ig_none
    );
    println!(
        "| the key check alone (parse, SHA-256, lookup), µs per request | | {:.2} | {:.3} of a GET's CPU |",
        check.as_secs_f64() * 1e6,
        check.as_secs_f64() / nc
    );
}

/// A release server over `data` with `stream-stats`, in auth `mode`: the server, its address,
/// and the header line its requests carry (the root key's, with keys).
fn start(data: &std::path::Path, mode: &str) -> (Server, String, String) {
    std::fs::create_dir_all(data.join("deploy")).unwrap();
    std::fs::write(data.join("deploy/stream-stats.wasm"), guest("stream_stats")).unwrap();
    let server = Server::start_with(data, &["--auth", mode]);
    let addr = server.base.trim_start_matches("http://").to_owned();
    let auth = if mode == "keys" {
        let token = std::fs::read_to_string(data.join("root.token")).unwrap();
        format!("authorization: Bearer {}\r\n", token.trim())
    } else {
        String::new()
    };
    (server, addr, auth)
}

/// Both servers at once, measured in alternating one-second slices (each mode first in every
/// other slice), `slices` of each: drift that lasts longer than a second falls on both alike.
/// Returns (none, keys) rates for appends, then for view GETs.
fn interleaved(
    tokio: &tokio::runtime::Runtime,
    scratch: &std::path::Path,
    slices: usize,
) -> [(f64, f64); 2] {
    let slice = Duration::from_secs(1);
    let servers: Vec<(Server, String, String)> = ["none", "keys"]
        .into_iter()
        .map(|mode| start(&scratch.join(format!("interleaved-{mode}")), mode))
        .collect();
    tokio.block_on(async {
        let mut totals = [[0.0f64; 2]; 2];
        for (kind, total) in totals.iter_mut().enumerate() {
            for n in 0..slices {
                let order = if n % 2 == 0 { [0, 1] } else { [1, 0] };
                for i in order {
                    let (_, addr, auth) = &servers[i];
                    total[i] += if kind == 0 {
                        appends(addr, auth, 64, slice).await
                    } else {
                        view_gets(addr, auth, 16, slice).await
                    };
                }
            }
            if kind == 0 {
                // Every stream's document is there once stream-stats caught up.
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
        }
        totals.map(|[none, keys]| (none / slices as f64, keys / slices as f64))
    })
}

/// What `KeyStore::verify` costs per call, in process: the part of a keyed request the server
/// does on top of an open one (the route layer runs in both modes).
fn key_check_cost(scratch: &std::path::Path) -> Duration {
    let dir = scratch.join("key-check");
    std::fs::create_dir_all(&dir).unwrap();
    let store = projector::auth::KeyStore::open(&dir).unwrap();
    let (_, token) = store
        .create(&projector::auth::NewKey {
            account: projector::auth::ROOT.into(),
            scopes: vec![projector::auth::Scope::Read],
            expires_in_days: Some(1),
            label: None,
        })
        .unwrap();
    let calls = 200_000u32;
    let start = std::time::Instant::now();
    for _ in 0..calls {
        std::hint::black_box(store.verify(std::hint::black_box(&token)).unwrap());
    }
    start.elapsed() / calls
}
