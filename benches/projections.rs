//! Projection throughput on this machine.
//!
//! `cargo bench --bench projections` builds a 1,000,000-event log of the example shop in
//! `target/tmp`, then measures:
//! - replay: `stream-stats` and `order-summary` run from position 0 to the head through wasm,
//!   in-process (real log, real view files, the server's scheduler), written in Rust, in
//!   JavaScript and in Python (when their tools are installed), against the Rust logic compiled
//!   natively and run by the SDK harness over the same events; with each one's ratio to the
//!   Rust component of the same run, and `stream-stats` in JavaScript and Python also written
//!   without the SDK (what the SDKs cost);
//! - loading the JavaScript and Python `order-summary`: a compile from nothing, then a load
//!   from the compile cache (what a restart pays), and a cold drop over HTTP to the first
//!   answered query;
//! - view GETs by key over HTTP against the release server, with latency percentiles.
//!
//! `BENCH_RUNS` (default 3) sets the runs per figure, `BENCH_EVENTS` the log's size,
//! `BENCH_BATCH` the events per batch of the replays (default the server's), and
//! `BENCH_ONLY` (a word, such as `replay`, `natively` or `GET`) keeps the measurements whose
//! name contains it.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use order_summary::OrderSummaryProjection;
use projector::log::Log;
use projector::runtime::{Limits, Runtime, VersionHash};
use projector::scheduler::{DEFAULT_BATCH, Projections, SchedulerConfig};
use projector_sdk::Projection;
use projector_sdk::harness::Harness;
use serde_json::Value;
use stream_stats::StreamStatsProjection;

#[path = "support/shop.rs"]
mod shop;
mod support;
use support::{Lean, Server, env_number, guest, median, quantile, selected};

/// Replays `wasm` from 0 to the head; events per second of log.
fn replay(log_dir: &Path, wasm: &[u8], tokio: &tokio::runtime::Runtime) -> f64 {
    let scratch = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    std::fs::create_dir_all(scratch.path().join("deploy")).unwrap();
    std::fs::write(scratch.path().join("deploy/p.wasm"), wasm).unwrap();
    let (log, writer) = Log::open(log_dir).unwrap();
    let head = *log.head().borrow();
    let config = SchedulerConfig {
        projections: scratch.path().join("deploy"),
        views: scratch.path().join("views"),
        workers: 2,
        max_batch: env_number("BENCH_BATCH", DEFAULT_BATCH as u64) as usize,
        watch: false,
        quota: None,
        account: "root".into(),
        change_retention: projector::views::feed::DEFAULT_RETENTION,
    };
    let cache = Path::new(env!("CARGO_TARGET_TMPDIR")).join("bench-cache");
    let runtime = Arc::new(Runtime::new(&cache, Limits::default()).unwrap());
    // Compiled before the clock starts (a JavaScript or Python component takes seconds): the
    // figure is the replay's.
    runtime.compile(VersionHash::of(wasm), wasm).unwrap();
    let start = Instant::now();
    let projections = Projections::start(config, runtime, &log, tokio.handle().clone()).unwrap();
    let loaded = start.elapsed();
    assert!(tokio.block_on(projections.wait_for("p", head, Duration::from_secs(600))));
    let elapsed = start.elapsed() - loaded;
    let status = projections.status("p").unwrap();
    assert!(status.last_error.is_none(), "{:?}", status.last_error);
    projections.shutdown();
    drop(projections);
    drop(log);
    writer.join();
    head as f64 / elapsed.as_secs_f64()
}

/// The same logic natively, through the SDK harness, in batches of the server's size.
fn native<P: Projection>(events: &[(String, &'static str, Value)]) -> f64 {
    let mut harness = Harness::<P>::new();
    for (stream, t, d) in events {
        harness.record(stream, t, d.clone());
    }
    let start = Instant::now();
    harness.catch_up(DEFAULT_BATCH).unwrap();
    events.len() as f64 / start.elapsed().as_secs_f64()
}

/// `clients` concurrent keep-alive connections GETting order documents (or, with `orders` 0,
/// the server's own `/health`, the bare HTTP ceiling) for `seconds`; returns (requests per
/// second, p50, p99).
async fn view_gets(
    base: &str,
    orders: u64,
    clients: usize,
    seconds: Duration,
) -> (f64, Duration, Duration) {
    let addr = base.trim_start_matches("http://").to_owned();
    let done = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let tasks: Vec<_> = (0..clients)
        .map(|c| {
            let (done, addr) = (done.clone(), addr.clone());
            tokio::spawn(async move {
                let mut client = Lean::connect(&addr).await;
                let mut latencies = Vec::new();
                let mut n = c as u64;
                while start.elapsed() < seconds {
                    let request = if orders == 0 {
                        format!("GET /health HTTP/1.1\r\nhost: {addr}\r\n\r\n")
                    } else {
                        format!(
                            "GET /projections/order-summary/view/order/{} HTTP/1.1\r\nhost: {addr}\r\n\r\n",
                            (n * 7919) % orders
                        )
                    };
                    let sent = Instant::now();
                    client.exchange(request.as_bytes(), 200).await;
                    latencies.push(sent.elapsed());
                    done.fetch_add(1, Ordering::Relaxed);
                    n += clients as u64;
                }
                latencies
            })
        })
        .collect();
    let mut latencies = Vec::new();
    for t in tasks {
        latencies.extend(t.await.unwrap());
    }
    let rate = done.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64();
    latencies.sort();
    (rate, quantile(&latencies, 0.5), quantile(&latencies, 0.99))
}

fn main() {
    let runs = env_number("BENCH_RUNS", 3) as usize;
    let total = env_number("BENCH_EVENTS", 1_000_000);
    let tokio = support::runtime();
    let scratch = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let log_dir = scratch.path().join("log");
    let started = Instant::now();
    let events = shop::build_log(&log_dir, total, true, &tokio).events;
    let orders = events.iter().filter(|e| e.1 == "OrderPlaced").count() as u64;
    eprintln!(
        "built a log of {} events ({orders} orders) in {:.1?}",
        events.len(),
        started.elapsed()
    );

    let mut rows: Vec<(String, String)> = Vec::new();
    // The Rust component's replay rate by projection, for its ratio to the native harness.
    let mut replayed: Vec<(&str, f64)> = Vec::new();
    let mut ratios: Vec<String> = Vec::new();
    // The `stream-stats` replay rates by language, for what the SDKs cost.
    let mut with_sdk: Vec<(&str, f64)> = Vec::new();
    let mut report = |name: &str, samples: Vec<f64>| {
        let m = median(samples.clone());
        eprintln!("{name}: median {m:.0} of {samples:.0?}");
        rows.push((name.to_owned(), format!("{m:.0}")));
        m
    };
    for (name, components) in [
        (
            "stream-stats",
            ["stream_stats", "stream-stats-js", "stream-stats-py"],
        ),
        (
            "order-summary",
            ["order_summary", "order-summary-js", "order-summary-py"],
        ),
    ] {
        let mut rust = None;
        for (language, wasm) in ["Rust", "JavaScript", "Python"].into_iter().zip(components) {
            let title = format!("replay {name} through wasm ({language}), events/s");
            if !selected(&title) {
                continue;
            }
            let Some(wasm) = optional_guest(wasm) else {
                continue;
            };
            let samples = (0..runs).map(|_| replay(&log_dir, &wasm, &tokio)).collect();
            let rate = report(&title, samples);
            match rust {
                None if language == "Rust" => {
                    rust = Some(rate);
                    replayed.push((name, rate));
                }
                Some(rust) => ratios.push(format!("{name} {language} / Rust: {:.2}", rate / rust)),
                None => {}
            }
            if name == "stream-stats" {
                with_sdk.push((language, rate));
            }
        }
    }
    // What the JavaScript and Python SDKs cost: `stream-stats` written by hand against the
    // WIT file alone (benches/guests-js/stream-stats-raw, benches/guests-py/...), replayed in
    // the same run. Issue 15's target for the SDKs is 0.80 of a hand-written projection.
    for (language, wasm) in [
        ("JavaScript", "stream-stats-raw-js"),
        ("Python", "stream-stats-raw-py"),
    ] {
        let title =
            format!("replay stream-stats through wasm ({language} without the SDK), events/s");
        let Some(wasm) = selected(&title).then(|| optional_guest(wasm)).flatten() else {
            continue;
        };
        let samples = (0..runs).map(|_| replay(&log_dir, &wasm, &tokio)).collect();
        let rate = report(&title, samples);
        if let Some((_, sdk)) = with_sdk.iter().find(|(l, _)| *l == language) {
            ratios.push(format!(
                "stream-stats {language} with the SDK / without: {:.2}",
                sdk / rate
            ));
        }
    }
    for (name, run) in [
        (
            "stream-stats",
            native::<StreamStatsProjection> as fn(&[(String, &'static str, Value)]) -> f64,
        ),
        ("order-summary", native::<OrderSummaryProjection>),
    ] {
        let title = format!("{name} natively (SDK harness), events/s");
        if !selected(&title) {
            continue;
        }
        let rate = report(&title, (0..runs).map(|_| run(&events)).collect());
        // Issue 16: a serving version's first catch-up through wasm against the harness (which
        // reads no log and commits no view), target >= 0.50 for stream-stats.
        if let Some((_, replay)) = replayed.iter().find(|(n, _)| *n == name) {
            ratios.push(format!(
                "{name} Rust replay / native harness: {:.2}",
                replay / rate
            ));
        }
    }

    let title = "load order-summary (JavaScript, Python): compile, then from the cache, s";
    if selected(title) {
        for (wasm, other) in [
            ("order-summary-js", "stream-stats-js"),
            ("order-summary-py", "stream-stats-py"),
        ] {
            let (Some(bytes), Some(other_bytes)) = (optional_guest(wasm), optional_guest(other))
            else {
                continue;
            };
            let [cold, cached, other_warm] = load_times(&bytes, &other_bytes);
            eprintln!(
                "load {wasm}: compile {cold:.2?}, from the cache {cached:.3?}; \
                 then {other} compiles in {other_warm:.2?} (the compiled functions cached)"
            );
            rows.push((
                format!("load {wasm}: compile / from the cache / {other} compiled next, s"),
                format!(
                    "{:.2} / {:.3} / {:.2}",
                    cold.as_secs_f64(),
                    cached.as_secs_f64(),
                    other_warm.as_secs_f64()
                ),
            ));
        }
    }
    for ratio in &ratios {
        eprintln!("ratio in this run: {ratio}");
    }

    // View GETs: the release server over the same log, order-summary caught up.
    if !selected("view GET by key") && !selected("cold drop") {
        print_table(rows);
        return;
    }
    let data = scratch.path().join("server");
    std::fs::rename(&log_dir, &data).unwrap();
    std::fs::create_dir_all(data.join("deploy")).unwrap();
    std::fs::write(
        data.join("deploy/order-summary.wasm"),
        guest("order_summary"),
    )
    .unwrap();
    let server = Server::start(&data);
    let client = reqwest::Client::new();
    tokio.block_on(async {
        let url = format!("{}/projections/order-summary/view/order/0?wait_for={}&timeout_ms=30000", server.base, events.len());
        while client.get(&url).send().await.unwrap().status() != 200 {}
        for wasm in ["order-summary-js", "order-summary-py"] {
            let title = format!("cold drop of {wasm} (PUT) to its first answered query, s");
            if let Some(bytes) = optional_guest(wasm).filter(|_| selected(&title)) {
                let took = cold_drop(&client, &server.base, wasm, bytes).await;
                eprintln!("{title}: {took:.2?}");
                rows.push((title, format!("{:.1}", took.as_secs_f64())));
                // Gone again before the next figure: its catch-up would take the cores.
                let url = format!("{}/projections/{wasm}", server.base);
                assert_eq!(client.delete(url).send().await.unwrap().status(), 202);
            }
        }
        if !selected("view GET by key") {
            return;
        }
        // Uniform over every order (about 213,000 documents, each read about once a run: the
        // document cache cannot help, every read is a redb read on a blocking thread), then
        // over a hot set of 1,000 (the workload: 1,000 streams' read model).
        for (clients, keys, set) in [(1, orders, "all"), (16, orders, "all"), (64, orders, "all"), (16, 1000, "1,000 hot"), (64, 1000, "1,000 hot")] {
            let mut rates = Vec::new();
            let mut p99s = Vec::new();
            let mut p50s = Vec::new();
            let mut health = Vec::new();
            for _ in 0..runs {
                let (rate, p50, p99) = view_gets(&server.base, keys, clients, Duration::from_secs(3)).await;
                rates.push(rate);
                p50s.push(p50.as_secs_f64() * 1e3);
                p99s.push(p99.as_secs_f64() * 1e3);
                // The bare HTTP ceiling in the same run: the server's own /health (issue 16).
                health.push(view_gets(&server.base, 0, clients, Duration::from_secs(3)).await.0);
            }
            let rate = median(rates.clone());
            let ceiling = median(health.clone());
            eprintln!("view GET ({set} keys), {clients} clients: {rate:.0}/s of {rates:.0?}; p50 {p50s:.2?} ms; p99 {p99s:.2?} ms; /health {ceiling:.0}/s of {health:.0?}");
            rows.push((
                format!("view GET by key over HTTP, {set} keys, {clients} clients: requests/s (p50, p99)"),
                format!("{rate:.0} ({:.2} ms, {:.2} ms)", median(p50s), median(p99s)),
            ));
            rows.push((
                format!("GET /health, {clients} clients: requests/s; view GET / /health (target >= 0.80 at 16 and 64)"),
                format!("{ceiling:.0}; {:.2}", rate / ceiling),
            ));
        }
    });

    print_table(rows);
}

/// A JavaScript or Python guest, if the build built it (its tools are installed).
fn optional_guest(name: &str) -> Option<Vec<u8>> {
    let path = Path::new(env!("PROJECTOR_GUESTS_DIR")).join(format!("{name}.wasm"));
    let bytes = std::fs::read(&path).ok();
    if bytes.is_none() {
        eprintln!(
            "skipping {name}: {} was not built (npm ci, scripts/setup-python)",
            path.display()
        );
    }
    bytes
}

/// How long a component takes to load from nothing (compiled), then from the compile cache,
/// and how long `other` (of the same language) then takes to compile with the functions the
/// first one compiled in the cache.
fn load_times(wasm: &[u8], other: &[u8]) -> [Duration; 3] {
    let cache = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let timed = |bytes: &[u8]| {
        let start = Instant::now();
        Runtime::new(cache.path(), Limits::default())
            .unwrap()
            .load("p", bytes)
            .unwrap();
        start.elapsed()
    };
    [timed(wasm), timed(wasm), timed(other)]
}

/// PUTs a projection into a running server and times it until its first document is served.
async fn cold_drop(client: &reqwest::Client, base: &str, name: &str, wasm: Vec<u8>) -> Duration {
    let start = Instant::now();
    let put = client
        .put(format!("{base}/projections/{name}"))
        .body(wasm)
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), 202);
    let url = format!("{base}/projections/{name}/view/order/0");
    while client.get(&url).send().await.unwrap().status() != 200 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    start.elapsed()
}

fn print_table(rows: Vec<(String, String)>) {
    println!("| measurement | median |\n|---|---:|");
    for (name, value) in rows {
        println!("| {name} | {value} |");
    }
}
