//! Throughput of the event log, end to end over HTTP, on this machine.
//!
//! `cargo bench --bench log` starts the release `projector serve` on loopback with its data on
//! the target directory's disk (so every commit pays a real fsync), drives it from this
//! process, and prints a Markdown table of medians. `BENCH_SECONDS` (default 3) sets each
//! run's length, `BENCH_RUNS` (default 3) the runs per figure, and `BENCH_ONLY` (a word, such
//! as `append` or `read`) keeps the measurements whose name contains it.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use projector::log::{AppendRequest, ExpectedRevision, JsonPayload, Log, NewEvent, StreamName};
use serde_json::{Value, json};

mod support;
use support::{Server, env_number, median, selected};

fn settings() -> (Duration, usize) {
    (
        Duration::from_secs(env_number("BENCH_SECONDS", 3)),
        env_number("BENCH_RUNS", 3) as usize,
    )
}

fn event(n: u64) -> Value {
    json!({"type": "ItemAdded", "data": {"orderId": format!("{}", n / 4), "sku": format!("sku-{}", n % 97), "quantity": 1 + n % 3, "unitPriceCents": 199 + n % 1000}})
}

/// `clients` concurrent clients, each appending `batch` events per request for `seconds`.
/// Returns durable events per second.
async fn appends(base: &str, clients: usize, batch: u64, seconds: Duration) -> f64 {
    let client = reqwest::Client::new();
    let done = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let tasks: Vec<_> = (0..clients)
        .map(|c| {
            let (client, done, base) = (client.clone(), done.clone(), base.to_owned());
            let body = serde_json::to_vec(&(0..batch).map(event).collect::<Vec<_>>()).unwrap();
            tokio::spawn(async move {
                let mut n = 0u64;
                while start.elapsed() < seconds {
                    let url = format!("{base}/streams/order-{c}x{}", n % 50);
                    let response = client
                        .post(url)
                        .header("content-type", "application/json")
                        .body(body.clone())
                        .send()
                        .await
                        .unwrap();
                    assert_eq!(response.status(), 201);
                    response.bytes().await.unwrap();
                    done.fetch_add(batch, Ordering::Relaxed);
                    n += 1;
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    done.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64()
}

/// The same load as [`appends`] with 1 event per request, from [`Lean`] clients.
async fn lean_appends(base: &str, clients: usize, seconds: Duration) -> f64 {
    let addr = base.trim_start_matches("http://").to_owned();
    let bodies: Vec<Vec<u8>> = (0..clients)
        .map(|c| serde_json::to_vec(&[event(c as u64)]).unwrap())
        .collect();
    let host = addr.clone();
    support::lean_rate(&addr, clients, seconds, 201, move |c, n| {
        let body = &bodies[c];
        let mut request = format!(
            "POST /streams/order-{c}x{} HTTP/1.1\r\nhost: {host}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
            n % 50,
            body.len()
        )
        .into_bytes();
        request.extend_from_slice(body);
        request
    })
    .await
}

/// `runs` runs of [`lean_appends`], each on a fresh server under `dir`, with the three example
/// projections deployed and caught up first if `following`; for one client, the raw
/// fdatasync loop's figure before each run too (the disk's own, for the ratio: issue 16), and
/// unless `following`, the same server's `GET /health` from one lean client (the HTTP round
/// trip alone).
/// Returns (appends/s, raw writes/s, health requests/s) per run.
async fn lean_runs(
    dir: &Path,
    clients: usize,
    following: bool,
    runs: usize,
    seconds: Duration,
) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let (mut samples, mut disk, mut http) = (Vec::new(), Vec::new(), Vec::new());
    for run in 0..runs {
        if clients == 1 {
            disk.push(raw_durable_writes(&dir.join(format!("raw-{run}")), seconds));
        }
        let data = dir.join(format!("{clients}-{run}"));
        if following {
            std::fs::create_dir_all(data.join("deploy")).unwrap();
            for (file, guest) in [
                ("category-index", "category_index"),
                ("order-summary", "order_summary"),
                ("stream-stats", "stream_stats"),
            ] {
                std::fs::write(
                    data.join(format!("deploy/{file}.wasm")),
                    support::guest(guest),
                )
                .unwrap();
            }
        }
        let server = Server::start(&data);
        if following {
            support::wait_for_projections(&server.base, 3).await;
        }
        if clients == 1 && !following {
            http.push(lean_health(&server.base, seconds).await);
        }
        samples.push(lean_appends(&server.base, clients, seconds).await);
    }
    (samples, disk, http)
}

/// `GET /health` from one [`support::Lean`] client for `seconds`: the server's bare HTTP round
/// trip on loopback, with no work behind it. Returns requests per second.
async fn lean_health(base: &str, seconds: Duration) -> f64 {
    let addr = base.trim_start_matches("http://").to_owned();
    let request = format!("GET /health HTTP/1.1\r\nhost: {addr}\r\n\r\n").into_bytes();
    support::lean_rate(&addr, 1, seconds, 200, move |_, _| request.clone()).await
}

/// Streams a read as NDJSON; returns (events, events per second).
async fn ndjson_read(base: &str, path: &str) -> (u64, f64) {
    let client = reqwest::Client::new();
    let start = Instant::now();
    let response = client
        .get(format!("{base}{path}"))
        .header("accept", "application/x-ndjson")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let mut body = response.bytes_stream();
    let mut lines = 0u64;
    while let Some(chunk) = body.next().await {
        lines += chunk.unwrap().iter().filter(|&&b| b == b'\n').count() as u64;
    }
    (lines, lines as f64 / start.elapsed().as_secs_f64())
}

/// Reads a stream as JSON pages of 10,000 following `next`; returns events per second.
async fn paged_read(base: &str, path: &str) -> f64 {
    let client = reqwest::Client::new();
    let start = Instant::now();
    let (mut url, mut events) = (format!("{base}{path}"), 0usize);
    loop {
        let page: Value = client.get(&url).send().await.unwrap().json().await.unwrap();
        events += page["events"].as_array().unwrap().len();
        match page["next"].as_str() {
            Some(next) => url = format!("{base}{next}"),
            None => break,
        }
    }
    events as f64 / start.elapsed().as_secs_f64()
}

/// The log without HTTP: `batch`-event requests straight into `Log::append`, one at a time.
/// The clock runs only inside `append` (building the events is not the log's cost), so the
/// figure is what the writer and one fsync per batch sustain for a single serial appender.
async fn direct_batches(dir: &Path, batch: u64, seconds: Duration) -> f64 {
    let (log, writer) = Log::open(dir).unwrap();
    let mut busy = Duration::ZERO;
    let mut done = 0u64;
    while busy < seconds {
        let events = (0..batch)
            .map(|n| {
                let data = JsonPayload::parse(&event(n).to_string()).unwrap();
                NewEvent::new(None, "ItemAdded", data, None).unwrap()
            })
            .collect();
        let stream = StreamName::new(format!("order-{}", done / batch % 50)).unwrap();
        let request = AppendRequest::new(stream, ExpectedRevision::Any, events).unwrap();
        let start = Instant::now();
        log.append(request).await.unwrap();
        busy += start.elapsed();
        done += batch;
    }
    let rate = done as f64 / busy.as_secs_f64();
    drop(log);
    writer.join();
    rate
}

/// The disk's limit for one serial writer, as the issue defines it: a loop that appends 300
/// bytes to a file and fdatasyncs it, for `seconds`, in `dir` (the same disk as the server's
/// data). Returns durable writes per second.
fn raw_durable_writes(dir: &Path, seconds: Duration) -> f64 {
    use std::io::Write;
    std::fs::create_dir_all(dir).unwrap();
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("raw.log"))
        .unwrap();
    let record = [b'x'; 300];
    let start = Instant::now();
    let mut done = 0u64;
    while start.elapsed() < seconds {
        file.write_all(&record).unwrap();
        file.sync_data().unwrap();
        done += 1;
    }
    done as f64 / start.elapsed().as_secs_f64()
}

fn main() {
    let (seconds, runs) = settings();
    let runtime = support::runtime();
    let scratch = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let mut rows: Vec<(String, f64)> = Vec::new();
    let mut ratios: Vec<(&str, f64)> = Vec::new();
    let mut report = |name: String, samples: Vec<f64>| {
        let m = median(samples.clone());
        eprintln!("{name}: median {m:.0} events/s of {samples:.0?}");
        rows.push((name, m));
    };

    runtime.block_on(async {
        for clients in [1, 8, 64] {
            let name = format!("append, 1 event/request, {clients} concurrent clients");
            if !selected(&name) {
                continue;
            }
            let mut samples = Vec::new();
            for run in 0..runs {
                let server = Server::start(&scratch.path().join(format!("append-{clients}-{run}")));
                samples.push(appends(&server.base, clients, 1, seconds).await);
            }
            report(name, samples);
        }
        for clients in [1, 8, 64] {
            let name = format!("append, 1 event/request, {clients} concurrent lean clients");
            if !selected(&name) {
                continue;
            }
            let (samples, disk, http) =
                lean_runs(&scratch.path().join("lean"), clients, false, runs, seconds).await;
            if clients == 1 {
                let (append, raw, health) = (
                    median(samples.clone()),
                    median(disk.clone()),
                    median(http.clone()),
                );
                let ratio = append / raw;
                report(
                    "raw 300-byte append + fdatasync loop, same disk (writes/s)".into(),
                    disk,
                );
                report(
                    "GET /health, 1 lean client (the HTTP round trip alone; requests/s)".into(),
                    http,
                );
                eprintln!("single lean client / raw durable writes: {ratio:.2} (target >= 0.60)");
                ratios.push(("1 lean client / raw fdatasync loop", ratio));
                // A lone append needs its request read before its write, and its write
                // durable before its answer: an HTTP round trip and an fdatasync in series,
                // whatever the server does between them. Its ceiling as a ratio, and how near
                // the append comes to that ceiling.
                let series = 1.0 / (1.0 / health + 1.0 / raw);
                ratios.push((
                    "ceiling of that ratio: (HTTP round trip + fdatasync in series) / raw loop",
                    series / raw,
                ));
                ratios.push((
                    "1 lean client / (HTTP round trip + fdatasync in series)",
                    append / series,
                ));
            }
            report(name, samples);
        }
        // What a user of the README's server meets: the same appenders while the example
        // projections follow the log (each append wakes them).
        for clients in [1, 64] {
            let name = format!(
                "append, 1 event/request, {clients} lean clients, the 3 example projections following"
            );
            if !selected(&name) {
                continue;
            }
            let (samples, disk, _) =
                lean_runs(&scratch.path().join("following"), clients, true, runs, seconds).await;
            if clients == 1 {
                let ratio = median(samples.clone()) / median(disk.clone());
                eprintln!("single lean client with projections / raw durable writes: {ratio:.2}");
                ratios.push((
                    "1 lean client, 3 projections following / raw fdatasync loop",
                    ratio,
                ));
            }
            report(name, samples);
        }
        for clients in [1, 4] {
            let name = format!("append, 1,000 events/request, {clients} concurrent clients");
            if !selected(&name) {
                continue;
            }
            let mut samples = Vec::new();
            for run in 0..runs {
                let server = Server::start(&scratch.path().join(format!("batch-{clients}-{run}")));
                samples.push(appends(&server.base, clients, 1000, seconds).await);
            }
            report(name, samples);
        }
        for (batch, name) in [
            (
                1,
                "append, 1 event/request, in-process Log::append, 1 appender (no HTTP)",
            ),
            (
                1000,
                "append, 1,000 events/request, in-process Log::append, 1 appender (no HTTP)",
            ),
        ] {
            if !selected(name) {
                continue;
            }
            let (mut samples, mut disk) = (Vec::new(), Vec::new());
            for run in 0..runs {
                let dir = scratch.path().join(format!("direct-{batch}-{run}"));
                if batch == 1 {
                    disk.push(raw_durable_writes(&dir.join("raw"), seconds));
                }
                samples.push(direct_batches(&dir.join("log"), batch, seconds).await);
            }
            if batch == 1 {
                // The log's own path for a lone append, without HTTP, against the disk.
                ratios.push((
                    "in-process Log::append, 1 appender / raw fdatasync loop",
                    median(samples.clone()) / median(disk),
                ));
            }
            report(name.into(), samples);
        }
        if !selected("read") {
            return;
        }

        // Reads: a 1,000,000-event log with one 100,000-event stream in it.
        let server = Server::start(&scratch.path().join("reads"));
        let client = reqwest::Client::new();
        let batch = serde_json::to_vec(&(0..1000).map(event).collect::<Vec<_>>()).unwrap();
        for n in 0..1000 {
            let stream = if n % 10 == 0 {
                "order-read".to_owned()
            } else {
                format!("order-{}", n % 37)
            };
            let response = client
                .post(format!("{}/streams/{stream}", server.base))
                .header("content-type", "application/json")
                .body(batch.clone())
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 201);
        }
        let mut samples = Vec::new();
        for _ in 0..runs {
            let (events, rate) = ndjson_read(&server.base, "/streams/$all").await;
            assert_eq!(events, 1_000_000);
            samples.push(rate);
        }
        report("read $all as NDJSON (1,000,000 events)".into(), samples);
        let mut samples = Vec::new();
        for _ in 0..runs {
            let (events, rate) = ndjson_read(&server.base, "/streams/order-read").await;
            assert_eq!(events, 100_000);
            samples.push(rate);
        }
        report("read one stream as NDJSON (100,000 events)".into(), samples);
        let mut samples = Vec::new();
        for _ in 0..runs {
            samples.push(paged_read(&server.base, "/streams/order-read?limit=10000").await);
        }
        report(
            "read one stream as JSON pages of 10,000 (100,000 events)".into(),
            samples,
        );
        let mut samples = Vec::new();
        for _ in 0..runs {
            samples.push(
                ndjson_read(&server.base, "/streams/$ce-order?from=1")
                    .await
                    .1,
            );
        }
        report(
            "read category $ce-order as NDJSON (1,000,000 events)".into(),
            samples,
        );
    });

    println!("| measurement | median events/s |\n|---|---:|");
    for (name, rate) in rows {
        println!("| {name} | {rate:.0} |");
    }
    for (name, ratio) in ratios {
        println!("ratio {name}: {ratio:.2}");
    }
}
