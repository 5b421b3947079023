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

fn main() {
    let runs = env_number("BENCH_RUNS", 3) as usize;
    let seconds = Duration::from_secs(env_number("BENCH_SECONDS", 3));
    let tokio = support::runtime();
    let scratch = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let mut results: Vec<(&str, Vec<f64>, Vec<f64>)> = vec![
        ("none", Vec::new(), Vec::new()),
        ("keys", Vec::new(), Vec::new()),
    ];
    for run in 0..runs {
        // Each mode goes first in every other run: the second server of a pair starts while
        // the disk still writes back the first one's files, which would otherwise always
        // fall on the same mode.
        let order: Vec<usize> = if run % 2 == 0 { vec![0, 1] } else { vec![1, 0] };
        for i in order {
            let (mode, append_rates, get_rates) = &mut results[i];
            // Start each server on a quiet disk.
            std::process::Command::new("sync").status().unwrap();
            let data = scratch.path().join(format!("{mode}-{run}"));
            std::fs::create_dir_all(data.join("deploy")).unwrap();
            std::fs::write(data.join("deploy/stream-stats.wasm"), guest("stream_stats")).unwrap();
            let server = Server::start_with(&data, &["--auth", mode]);
            let addr = server.base.trim_start_matches("http://").to_owned();
            let auth = if *mode == "keys" {
                let token = std::fs::read_to_string(data.join("root.token")).unwrap();
                format!("authorization: Bearer {}\r\n", token.trim())
            } else {
                String::new()
            };
            let (append_rate, get_rate) = tokio.block_on(async {
                let append_rate = appends(&addr, &auth, 64, seconds).await;
                // Every stream's document is there once stream-stats caught up.
                tokio::time::sleep(Duration::from_secs(2)).await;
                let get_rate = view_gets(&addr, &auth, 16, seconds).await;
                (append_rate, get_rate)
            });
            println!(
                "run {run}, --auth {mode}: appends {append_rate:.0}/s (64 clients), view GETs {get_rate:.0}/s (16 clients)"
            );
            append_rates.push(append_rate);
            get_rates.push(get_rate);
        }
    }
    let [(_, none_appends, none_gets), (_, keys_appends, keys_gets)] = &results[..] else {
        unreachable!()
    };
    let (na, ka) = (median(none_appends.clone()), median(keys_appends.clone()));
    let (ng, kg) = (median(none_gets.clone()), median(keys_gets.clone()));
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
}
