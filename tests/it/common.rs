//! Test support: a real `projector serve` child process on loopback, and small HTTP helpers.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use reqwest::StatusCode;
use serde_json::Value;

pub struct Server {
    child: Child,
    pub base: String,
    pub data: PathBuf,
}

impl Server {
    /// Starts the server binary on a free port with its data in `data`. Its projections folder
    /// is `data/deploy`: created with the example projections if it does not exist.
    pub fn start(data: &Path) -> Server {
        Self::start_with(data, &[])
    }

    /// [`Server::start`] with more command-line arguments.
    pub fn start_with(data: &Path, extra: &[&str]) -> Server {
        Self::start_binary(Path::new(env!("CARGO_BIN_EXE_projector")), data, extra)
    }

    /// [`Server::start_with`] of another build of the server (an older one, to compare).
    pub fn start_binary(binary: &Path, data: &Path, extra: &[&str]) -> Server {
        Self::spawn(binary, data, extra, Stdio::inherit(), "warn")
    }

    /// [`Server::start_with`], its stderr (logs at `debug`) written to `log`.
    pub fn start_logging(data: &Path, extra: &[&str], log: &Path) -> Server {
        let file = std::fs::File::create(log).unwrap();
        let binary = Path::new(env!("CARGO_BIN_EXE_projector"));
        Self::spawn(binary, data, extra, Stdio::from(file), "debug")
    }

    fn spawn(binary: &Path, data: &Path, extra: &[&str], stderr: Stdio, log: &str) -> Server {
        let mut child = Command::new(binary)
            .arg("serve")
            .arg("--data")
            .arg(data)
            .arg("--projections")
            .arg(data.join("deploy"))
            .args(["--listen", "127.0.0.1:0", "--sse-keep-alive", "1"])
            .args(extra)
            .env("RUST_LOG", log)
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("spawning projector serve");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if let Some(addr) = line.strip_prefix("listening on ") {
                    let _ = tx.send(addr.to_owned());
                }
            }
        });
        // Generous: on a loaded 2-core CI machine a start that compiles components takes long.
        let base = rx
            .recv_timeout(Duration::from_secs(180))
            .expect("the server printed its address");
        Server {
            child,
            base,
            data: data.to_owned(),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// SIGKILL: no chance to flush or clean up.
    pub fn kill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// SIGTERM, then waits for a clean exit.
    pub fn terminate(mut self) {
        // SAFETY: kill(2) with a pid we own; no memory is touched.
        assert_eq!(unsafe { libc::kill(self.pid(), libc::SIGTERM) }, 0);
        let status = self.child.wait().unwrap();
        assert!(status.success(), "projector exited with {status}");
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A guest component built by the build script (`stream_stats`, `hostile`, ...).
pub fn guest(name: &str) -> Vec<u8> {
    let path = Path::new(env!("PROJECTOR_GUESTS_DIR")).join(format!("{name}.wasm"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap()
}

/// Posts `events` (a JSON array) to a stream; `expected` is the expected_revision parameter.
pub async fn append(
    client: &reqwest::Client,
    server: &Server,
    stream: &str,
    expected: Option<&str>,
    events: &Value,
) -> (StatusCode, Value) {
    let mut url = server.url(&format!("/streams/{stream}"));
    if let Some(expected) = expected {
        url.push_str(&format!("?expected_revision={expected}"));
    }
    let response = client.post(url).json(events).send().await.unwrap();
    let status = response.status();
    (status, response.json().await.unwrap())
}

pub async fn get_json(client: &reqwest::Client, url: &str) -> (StatusCode, Value) {
    let response = client.get(url).send().await.unwrap();
    let status = response.status();
    let body = response.text().await.unwrap();
    let json = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{url}: {e}: {body}"));
    (status, json)
}

pub async fn get_ndjson(client: &reqwest::Client, url: &str) -> Vec<Value> {
    let response = client
        .get(url)
        .header("accept", "application/x-ndjson")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK, "{url}");
    assert_eq!(response.headers()["content-type"], "application/x-ndjson");
    let body = response.text().await.unwrap();
    body.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// A `{type, data}` event for the example domain.
pub fn order_placed(order: u64) -> Value {
    serde_json::json!({
        "type": "OrderPlaced",
        "data": {"orderId": format!("{order}"), "customerId": format!("c{}", order % 7)},
    })
}

/// A Server-Sent Events client reading one response.
pub struct Sse {
    body: std::pin::Pin<Box<dyn futures_util::Stream<Item = reqwest::Result<bytes::Bytes>> + Send>>,
    buffer: String,
    pub comments: usize,
}

#[derive(Debug)]
pub struct SseEvent {
    /// 0 for an event without an id (a `reset`).
    pub id: u64,
    /// The `event:` field; `message` when absent.
    pub kind: String,
    pub data: Value,
}

impl Sse {
    pub async fn connect(url: &str, last_event_id: Option<u64>) -> Sse {
        let mut request = reqwest::Client::new()
            .get(url)
            .header("accept", "text/event-stream");
        if let Some(id) = last_event_id {
            request = request.header("last-event-id", id.to_string());
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{url}");
        assert!(
            response.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with("text/event-stream")
        );
        Sse {
            body: Box::pin(response.bytes_stream()),
            buffer: String::new(),
            comments: 0,
        }
    }

    /// The next event, or `None` if none arrives within `wait`; panics if the stream ends.
    pub async fn next(&mut self, wait: Duration) -> Option<SseEvent> {
        let next = tokio::time::timeout(wait, self.next_event()).await.ok()?;
        Some(next.expect("the stream ended"))
    }

    /// The next event, or `None` if none arrives within `wait` or the stream ends.
    pub async fn next_or_end(&mut self, wait: Duration) -> Option<SseEvent> {
        tokio::time::timeout(wait, self.next_event())
            .await
            .ok()
            .flatten()
    }

    async fn next_event(&mut self) -> Option<SseEvent> {
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                let (mut id, mut data, mut kind) = (None, String::new(), None);
                for line in block.lines() {
                    if line.starts_with(':') {
                        self.comments += 1;
                    } else if let Some(v) = line.strip_prefix("event:") {
                        kind = Some(v.trim().to_owned());
                    } else if let Some(v) = line.strip_prefix("id:") {
                        id = Some(v.trim().parse().unwrap());
                    } else if let Some(v) = line.strip_prefix("data:") {
                        data.push_str(v.strip_prefix(' ').unwrap_or(v));
                    }
                }
                if id.is_some() || kind.is_some() {
                    return Some(SseEvent {
                        id: id.unwrap_or(0),
                        kind: kind.unwrap_or_else(|| "message".to_owned()),
                        data: serde_json::from_str(&data).unwrap(),
                    });
                }
                continue;
            }
            let Some(Ok(chunk)) = self.body.next().await else {
                return None;
            };
            self.buffer.push_str(std::str::from_utf8(&chunk).unwrap());
        }
    }

    /// Events until none arrives for `quiet`.
    pub async fn drain(&mut self, quiet: Duration) -> Vec<SseEvent> {
        let mut out = Vec::new();
        while let Some(e) = self.next(quiet).await {
            out.push(e);
        }
        out
    }
}

/// Polls `GET /projections/{name}` until `done` holds for its answer (or panics after
/// `patience`).
pub async fn poll_projection(
    client: &reqwest::Client,
    server: &Server,
    name: &str,
    patience: Duration,
    done: impl Fn(StatusCode, &Value) -> bool,
) -> Value {
    let deadline = Instant::now() + patience;
    loop {
        let (status, body) = get_json(client, &server.url(&format!("/projections/{name}"))).await;
        if done(status, &body) {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "gave up waiting on {name}: {status} {body}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Polls a projection's status, which must be there, until `done` holds (or panics after 60 s).
pub async fn status_until(
    client: &reqwest::Client,
    server: &Server,
    name: &str,
    done: impl Fn(&Value) -> bool,
) -> Value {
    poll_projection(
        client,
        server,
        name,
        Duration::from_secs(60),
        |status, body| {
            assert_eq!(status, StatusCode::OK, "{body}");
            done(body)
        },
    )
    .await
}

/// The names `GET /projections` lists, in its order.
pub async fn projection_names(client: &reqwest::Client, server: &Server) -> Vec<String> {
    let (_, list) = get_json(client, &server.url("/projections")).await;
    list["projections"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap().to_owned())
        .collect()
}

pub async fn document(
    client: &reqwest::Client,
    server: &Server,
    projection: &str,
    key: &str,
    wait_for: u64,
) -> (StatusCode, Value) {
    get_json(
        client,
        &server.url(&format!(
            "/projections/{projection}/view/{key}?wait_for={wait_for}"
        )),
    )
    .await
}

pub fn deploy(dir: &Path, files: &[(&str, Vec<u8>)]) {
    let deploy = dir.join("deploy");
    std::fs::create_dir_all(&deploy).unwrap();
    for (name, bytes) in files {
        std::fs::write(deploy.join(format!("{name}.wasm")), bytes).unwrap();
    }
}

/// Sets a failure injection point of the test build (`src/failpoint.rs`): `action` as the
/// `fail` crate takes it (`return(enospc)`, `panic`, `sleep(2000)`, `1*panic`).
pub async fn failpoint(client: &reqwest::Client, server: &Server, name: &str, action: &str) {
    change_failpoint(client, server, name, Some(action)).await;
}

pub async fn clear_failpoint(client: &reqwest::Client, server: &Server, name: &str) {
    change_failpoint(client, server, name, None).await;
}

/// `PUT` (set to `action`) or `DELETE` (none) `/debug/failpoints/{name}`.
async fn change_failpoint(
    client: &reqwest::Client,
    server: &Server,
    name: &str,
    action: Option<&str>,
) {
    let url = server.url(&format!("/debug/failpoints/{name}"));
    let request = match action {
        Some(action) => client.put(url).body(action.to_owned()),
        None => client.delete(url),
    };
    let response = request.send().await.unwrap();
    assert_eq!(
        response.status(),
        StatusCode::NO_CONTENT,
        "failpoint {name}"
    );
}

/// The example projections the server seeds its folder with.
pub const EXAMPLES: [&str; 3] = ["stream-stats", "category-index", "order-summary"];

/// An event as the log served it: what a projection sees of it.
#[derive(Clone, Debug)]
pub struct LoggedEvent {
    pub position: u64,
    pub stream: String,
    pub event_type: String,
    pub data: Value,
}

/// Every event of the log, over NDJSON.
pub async fn log_events(client: &reqwest::Client, server: &Server) -> Vec<LoggedEvent> {
    let all = get_ndjson(client, &server.url("/streams/$all")).await;
    all.iter().map(logged).collect()
}

pub fn logged(e: &Value) -> LoggedEvent {
    LoggedEvent {
        position: e["position"].as_u64().unwrap(),
        stream: e["stream"].as_str().unwrap().to_owned(),
        event_type: e["type"].as_str().unwrap().to_owned(),
        data: e["data"].clone(),
    }
}

/// The view one native run of example projection `name` builds over `events` (all of the log
/// from position 1, in order), document by document as JSON.
pub fn native_view(name: &str, events: &[LoggedEvent]) -> BTreeMap<String, Value> {
    fn run<P: projector_sdk::Projection>(events: &[LoggedEvent]) -> BTreeMap<String, Value> {
        let mut harness = projector_sdk::harness::Harness::<P>::new();
        for (n, e) in events.iter().enumerate() {
            assert_eq!(
                e.position,
                n as u64 + 1,
                "the events are the log from position 1"
            );
            harness.record(&e.stream, &e.event_type, e.data.clone());
        }
        harness.catch_up(usize::MAX).unwrap();
        harness
            .view()
            .0
            .iter()
            .map(|(k, v)| (k.clone(), serde_json::from_slice(v).unwrap()))
            .collect()
    }
    match name {
        "stream-stats" => run::<stream_stats::StreamStatsProjection>(events),
        "category-index" => run::<category_index::CategoryIndex>(events),
        "order-summary" => run::<order_summary::OrderSummaryProjection>(events),
        other => panic!("{other} is not an example projection"),
    }
}

/// Every document the projection serves once it has applied `wait_for`, and the position of
/// the page reads (the caller keeps the log still meanwhile).
pub async fn served_view(
    client: &reqwest::Client,
    server: &Server,
    name: &str,
    wait_for: u64,
) -> (BTreeMap<String, Value>, u64) {
    let mut out = BTreeMap::new();
    let mut url = server.url(&format!(
        "/projections/{name}/view?limit=1000&wait_for={wait_for}&timeout_ms=30000"
    ));
    loop {
        let (status, page) = get_json(client, &url).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        for d in page["documents"].as_array().unwrap() {
            out.insert(d["key"].as_str().unwrap().to_owned(), d["value"].clone());
        }
        match page["next"].as_str() {
            Some(next) => url = server.url(&format!("{next}&wait_for={wait_for}")),
            None => return (out, page["position"].as_u64().unwrap()),
        }
    }
}

/// Asserts that every example projection, once caught up with the log, serves exactly what a
/// native run over the log builds; returns the number of documents compared.
pub async fn assert_views_match_native(client: &reqwest::Client, server: &Server) -> usize {
    let events = log_events(client, server).await;
    let head = events.last().map_or(0, |e| e.position);
    let mut compared = 0;
    for name in EXAMPLES {
        let (served, _) = served_view(client, server, name, head).await;
        let native = native_view(name, &events);
        assert!(
            served == native,
            "{name}: the served view differs from a native run"
        );
        compared += served.len();
    }
    compared
}

/// The root key a server made at its first start with `--auth keys`.
pub fn root_token(data: &Path) -> String {
    std::fs::read_to_string(data.join("root.token"))
        .unwrap()
        .trim()
        .to_owned()
}

/// What a command printed, which must have succeeded (else both its outputs are shown).
pub fn stdout(output: &std::process::Output) -> String {
    assert!(
        output.status.success(),
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout.clone()).unwrap()
}
