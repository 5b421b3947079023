//! Deployment on this machine.
//!
//! `cargo bench --bench deploy` measures, against the release server:
//! - drop to first answer: a never-seen `.wasm` (compiled from scratch) is renamed into the
//!   projections folder of a server on an empty log; the time until its view answers a GET;
//! - rebuild: `order-summary` caught up over a log of `BENCH_EVENTS` events (default
//!   1,000,000) of the example shop, then `POST /projections/order-summary/rebuild`; the time
//!   until the rebuilt version is swapped in, the server's peak RSS, and the latency of view
//!   GETs served by the old version meanwhile (4 clients sending `BENCH_GET_RATE` requests/s
//!   in all, default 1,000).
//!
//! `BENCH_RUNS` (default 3) sets the runs of the drop measurement. The 10,000,000-event figure
//! in BENCHMARKS.md is `BENCH_EVENTS=10000000 cargo bench --bench deploy`, run by hand.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use order_summary::OrderSummaryProjection;
use projector::scheduler::DEFAULT_BATCH;
use projector_sdk::harness::Harness;
use serde_json::Value;

#[path = "support/shop.rs"]
mod shop;
mod support;
use support::{Lean, Server, env_number, guest, median, quantile};

/// The component with a custom section naming `tag`: new content, so nothing is cached.
fn unseen(wasm: &[u8], tag: &str) -> Vec<u8> {
    let name = b"bench";
    let mut contents = vec![name.len() as u8];
    contents.extend_from_slice(name);
    contents.extend_from_slice(tag.as_bytes());
    let mut out = wasm.to_vec();
    out.push(0);
    out.push(contents.len() as u8);
    out.extend_from_slice(&contents);
    out
}

/// The time the SDK harness takes to apply every event of the log at `dir` to the native
/// `order-summary` (in the server's batch size; no log read, no view commit: the floor for a
/// pipeline that runs the guest once per event). The events are read out first, untimed.
fn native_order_summary(dir: &std::path::Path) -> Duration {
    use projector::log::{Log, Source};
    let mut harness = Harness::<OrderSummaryProjection>::new();
    {
        let (log, writer) = Log::open(dir).unwrap();
        let head = *log.head().borrow();
        let mut after = 0;
        while after < head {
            let events = log
                .reader()
                .read_after(&Source::All, after, (65_536, 64 << 20), head)
                .unwrap();
            for e in &events {
                let data: Value = serde_json::from_slice(&e.data).unwrap();
                harness.record(&e.stream, &e.event_type, data);
            }
            after = events.last().map_or(head, |e| e.position);
        }
        drop(log);
        writer.join();
    }
    let start = Instant::now();
    harness.catch_up(DEFAULT_BATCH).unwrap();
    start.elapsed()
}

/// A line of `/proc/<pid>/status`, in KiB.
fn proc_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

async fn get_json(client: &reqwest::Client, url: &str) -> (u16, Value) {
    let response = client.get(url).send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

fn main() {
    let runs = env_number("BENCH_RUNS", 3) as usize;
    let total = env_number("BENCH_EVENTS", 1_000_000);
    let tokio = support::runtime();
    let client = reqwest::Client::new();
    let summary = guest("order_summary");
    let scratch = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();

    // Drop to first answer, on an empty log.
    let empty = Server::start(&scratch.path().join("empty"));
    let folder = scratch.path().join("empty/deploy");
    let mut drops = Vec::new();
    for run in 0..runs {
        let wasm = unseen(&summary, &format!("{run} {:?}", Instant::now()));
        let name = format!("dropped-{run}");
        let partial = folder.join(format!(".{name}.partial"));
        std::fs::write(&partial, &wasm).unwrap();
        let url = format!("{}/projections/{name}/view?limit=1", empty.base);
        let start = Instant::now();
        std::fs::rename(&partial, folder.join(format!("{name}.wasm"))).unwrap();
        tokio.block_on(async {
            while get_json(&client, &url).await.0 != 200 {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        });
        drops.push(start.elapsed().as_secs_f64() * 1e3);
    }
    drop(empty);
    let drop_ms = median(drops.clone());
    eprintln!("drop to first answer: median {drop_ms:.0} ms of {drops:.0?}");

    // Rebuild over a large log.
    let data = scratch.path().join("shop");
    let started = Instant::now();
    let shop::Shop { head, orders, .. } = shop::build_log(&data, total, false, &tokio);
    eprintln!("built a log of {head} events in {:.1?}", started.elapsed());
    let native = native_order_summary(&data);
    eprintln!("order-summary natively (SDK harness) over the same events: {native:.1?}");
    std::fs::create_dir_all(data.join("deploy")).unwrap();
    std::fs::write(data.join("deploy/order-summary.wasm"), &summary).unwrap();
    let server = Server::start(&data);
    let base = server.base.clone();
    let started = Instant::now();
    tokio.block_on(async {
        let url = format!(
            "{base}/projections/order-summary/view/order/0?wait_for={head}&timeout_ms=30000"
        );
        while get_json(&client, &url).await.0 != 200 {}
    });
    eprintln!("first catch-up in {:.1?}", started.elapsed());
    let rss_caught_up = proc_kib(server.pid(), "VmRSS:");

    let interval = Duration::from_secs_f64(4.0 / env_number("BENCH_GET_RATE", 1000).max(1) as f64);
    let (rebuild, latencies, peak_rss) = tokio.block_on(async {
        let stop = Arc::new(AtomicBool::new(false));
        let readers: Vec<_> = (0..4u64)
            .map(|c| {
                let (stop, addr) = (stop.clone(), base.trim_start_matches("http://").to_owned());
                tokio::spawn(async move {
                    let mut lean = Lean::connect(&addr).await;
                    let mut latencies = Vec::new();
                    let mut n = c;
                    let mut pace = tokio::time::interval(interval);
                    while !stop.load(Ordering::Relaxed) {
                        pace.tick().await;
                        let request = format!(
                            "GET /projections/order-summary/view/order/{} HTTP/1.1\r\nhost: {addr}\r\n\r\n",
                            (n * 7919) % orders
                        );
                        let sent = Instant::now();
                        lean.exchange(request.as_bytes(), 200).await;
                        latencies.push(sent.elapsed());
                        n += 4;
                    }
                    latencies
                })
            })
            .collect();
        let start = Instant::now();
        let response = client
            .post(format!("{base}/projections/order-summary/rebuild"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 202);
        let mut peak_rss = 0;
        loop {
            peak_rss = peak_rss.max(proc_kib(server.pid(), "VmRSS:"));
            let (_, status) = get_json(&client, &format!("{base}/projections/order-summary")).await;
            assert!(status["last_error"].is_null(), "{status}");
            if status["rebuild"].is_null() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let rebuild = start.elapsed();
        stop.store(true, Ordering::Relaxed);
        let mut latencies = Vec::new();
        for r in readers {
            latencies.extend(r.await.unwrap());
        }
        latencies.sort();
        (rebuild, latencies, peak_rss)
    });
    let peak_ever = proc_kib(server.pid(), "VmHWM:");
    let at = |q: f64| quantile(&latencies, q);
    let seconds = rebuild.as_secs_f64();
    eprintln!(
        "rebuild of order-summary over {head} events: {seconds:.1} s ({:.0} events/s); RSS caught up {} MiB, peak sampled during the rebuild {} MiB, process peak (VmHWM) {} MiB; {} view GETs meanwhile, p50 {:.2?}, p99 {:.2?}",
        head as f64 / seconds,
        rss_caught_up / 1024,
        peak_rss / 1024,
        peak_ever / 1024,
        latencies.len(),
        at(0.5),
        at(0.99),
    );
    // Issue 16: the rebuild against the harness over the same events (target <= 1.5x).
    let ratio = seconds / native.as_secs_f64();
    eprintln!("rebuild / native harness: {ratio:.2}x (target <= 1.5x)");
    println!("| measurement | median |\n|---|---:|");
    println!("| drop to first answer on an empty log | {drop_ms:.0} ms |");
    println!("| rebuild `order-summary` over {head} events | {seconds:.1} s |");
    println!(
        "| peak RSS during the rebuild (sampled every 50 ms) | {} MiB |",
        peak_rss / 1024
    );
    println!("| process peak RSS (VmHWM) | {} MiB |", peak_ever / 1024);
    println!(
        "| order-summary natively (SDK harness), same events | {:.1} s (rebuild / native {ratio:.2}x) |",
        native.as_secs_f64()
    );
    println!(
        "| view GETs during the rebuild, 4 clients: p50, p99 | {:.2} ms, {:.2} ms |",
        at(0.5).as_secs_f64() * 1e3,
        at(0.99).as_secs_f64() * 1e3
    );
}
