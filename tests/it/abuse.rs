//! Hostile clients that try to exhaust the server: idle and slow connections, readers that
//! never read, oversized requests, a shutdown with such clients open. Each case a test named
//! for it; limits are turned down by flags so that the cases are quick.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::common::{
    Server, append, clear_failpoint, client, failpoint, get_json, guest, log_events,
    poll_projection,
};

fn addr(server: &Server) -> String {
    server.base.trim_start_matches("http://").to_owned()
}

/// Reads what the server sends until it closes the connection (or `patience` passes: None).
async fn read_until_closed(stream: &mut TcpStream, patience: Duration) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    tokio::time::timeout(patience, async {
        let mut buf = [0u8; 65536];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await
    .ok()?;
    Some(out)
}

/// Appends `count` events of about `size` bytes each to `stream`, in requests of at most
/// 16 MiB.
async fn append_large(
    client: &reqwest::Client,
    server: &Server,
    stream: &str,
    count: usize,
    size: usize,
) {
    let per_request = (16 * 1024 * 1024 / size).clamp(1, count);
    let note = "x".repeat(size);
    let mut left = count;
    while left > 0 {
        let n = per_request.min(left);
        let events: Vec<Value> = (0..n)
            .map(|_| json!({"type": "Large", "data": {"note": note}}))
            .collect();
        let (status, body) = append(client, server, stream, None, &json!(events)).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        left -= n;
    }
}

#[tokio::test]
async fn connections_over_the_cap_get_a_json_503_and_idle_ones_are_closed() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_with(
        dir.path(),
        &["--max-connections", "8", "--header-timeout", "2"],
    );
    let mut idle = Vec::new();
    for _ in 0..8 {
        idle.push(TcpStream::connect(addr(&server)).await.unwrap());
    }
    // The cap is taken by idle connections: a new one is told so at once, in JSON.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut extra = TcpStream::connect(addr(&server)).await.unwrap();
    let answer = read_until_closed(&mut extra, Duration::from_secs(5))
        .await
        .expect("the server answers and closes");
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(answer.contains("retry-after: 1"), "{answer}");
    assert!(
        answer.contains(r#""code":"too_many_connections""#),
        "{answer}"
    );
    // Idle connections are closed by the header timeout, and new clients get in again.
    for stream in &mut idle {
        assert!(
            read_until_closed(stream, Duration::from_secs(10))
                .await
                .is_some(),
            "an idle connection stayed open"
        );
    }
    let (status, _) = get_json(&client(), &server.url("/health")).await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn a_slowloris_client_is_cut_off_by_the_header_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_with(dir.path(), &["--header-timeout", "2"]);
    let mut stream = TcpStream::connect(addr(&server)).await.unwrap();
    let started = Instant::now();
    let request =
        b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    let mut closed = false;
    for byte in request {
        if stream.write_all(&[*byte]).await.is_err() {
            closed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        if started.elapsed() > Duration::from_secs(8) {
            break;
        }
    }
    if !closed {
        closed = read_until_closed(&mut stream, Duration::from_secs(5))
            .await
            .is_some();
    }
    assert!(closed, "the slow client was still connected");
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[tokio::test]
async fn a_silent_connection_is_closed_by_the_header_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_with(dir.path(), &["--header-timeout", "2"]);
    let mut stream = TcpStream::connect(addr(&server)).await.unwrap();
    let started = Instant::now();
    assert!(
        read_until_closed(&mut stream, Duration::from_secs(10))
            .await
            .is_some(),
        "the silent connection stayed open"
    );
    assert!(started.elapsed() >= Duration::from_secs(1));
}

#[tokio::test]
async fn ndjson_readers_that_never_read_pin_no_thread_and_are_capped() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_with(dir.path(), &["--max-streams", "40"]);
    let client = client();
    append_large(&client, &server, "big-1", 1500, 8_000).await;
    let threads = || {
        std::fs::read_dir(format!("/proc/{}/task", server.pid()))
            .unwrap()
            .count()
    };
    let before = threads();
    // 40 readers that send their request and never read the answer. Each used to hold a
    // thread of tokio's blocking pool (512 in all) while its channel was full.
    let mut stalled = Vec::new();
    for _ in 0..40 {
        let mut stream = TcpStream::connect(addr(&server)).await.unwrap();
        stream
            .write_all(
                b"GET /streams/big-1 HTTP/1.1\r\nHost: x\r\nAccept: application/x-ndjson\r\n\r\n",
            )
            .await
            .unwrap();
        stalled.push(stream);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = threads();
    assert!(after < before + 20, "threads went from {before} to {after}");
    // Over the cap: a 503 with Retry-After.
    let response = client
        .get(server.url("/streams/big-1"))
        .header("accept", "application/x-ndjson")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(response.headers()["retry-after"], "1");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "too_many_streams");
    // Everything that reads on the blocking pool still answers.
    let started = Instant::now();
    let (status, page) = get_json(&client, &server.url("/streams/$all?limit=5")).await;
    assert_eq!(status, StatusCode::OK, "{page}");
    let (status, _) = get_json(
        &client,
        &server.url("/projections/stream-stats/view/stream/big-1"),
    )
    .await;
    assert!(status == StatusCode::OK || status == StatusCode::NOT_FOUND);
    let (status, _) = append(
        &client,
        &server,
        "small-1",
        None,
        &json!([{"type": "T", "data": {}}]),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    drop(stalled);
}

#[tokio::test]
async fn a_page_of_large_events_stops_at_its_byte_budget_and_links_next() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let client = client();
    append_large(&client, &server, "big-1", 12, 900_000).await;
    let mut url = server.url("/streams/big-1?limit=100");
    let mut pages = Vec::new();
    loop {
        let (status, page) = get_json(&client, &url).await;
        assert_eq!(status, StatusCode::OK);
        pages.push(page["events"].as_array().unwrap().len());
        match page["next"].as_str() {
            Some(next) => url = server.url(next),
            None => break,
        }
    }
    assert!(pages.len() >= 3, "{pages:?}");
    assert!(pages.iter().all(|n| *n <= 5), "{pages:?}");
    assert_eq!(pages.iter().sum::<usize>(), 12);
}

#[tokio::test]
async fn live_subscriptions_over_the_cap_get_503() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_with(dir.path(), &["--max-live", "2"]);
    let client = client();
    let mut open = Vec::new();
    for _ in 0..2 {
        let response = client
            .get(server.url("/streams/$all/live"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        open.push(response);
    }
    let response = client
        .get(server.url("/streams/$all/live"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(response.headers()["retry-after"], "1");
    // A subscription that ends gives its place back.
    drop(open.pop());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let response = client
            .get(server.url("/streams/$all/live"))
            .send()
            .await
            .unwrap();
        if response.status() == StatusCode::OK {
            break;
        }
        assert!(Instant::now() < deadline, "the place was not given back");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_live_subscriber_that_stops_reading_is_disconnected() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_with(dir.path(), &["--send-timeout", "2"]);
    let client = client();
    append_large(&client, &server, "big-1", 40, 500_000).await;
    let mut stream = TcpStream::connect(addr(&server)).await.unwrap();
    stream
        .write_all(b"GET /streams/$all/live?from=1 HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n")
        .await
        .unwrap();
    // Not reading: once the socket buffers are full the server's writes stall, and after the
    // send timeout it closes the connection (what is buffered still arrives, then the end).
    tokio::time::sleep(Duration::from_secs(8)).await;
    let received = read_until_closed(&mut stream, Duration::from_secs(20))
        .await
        .expect("the stalled subscription was closed");
    assert!(received.len() < 20_000_000, "it did not send everything");
    // The server is fine, and its subscription place is free again.
    let (status, _) = get_json(&client, &server.url("/health")).await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn sigterm_with_stalled_clients_exits_within_the_drain_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_with(
        dir.path(),
        &["--drain-timeout", "1", "--send-timeout", "60"],
    );
    let client = client();
    append_large(&client, &server, "big-1", 1500, 8_000).await;
    let mut stalled = TcpStream::connect(addr(&server)).await.unwrap();
    stalled
        .write_all(
            b"GET /streams/big-1 HTTP/1.1\r\nHost: x\r\nAccept: application/x-ndjson\r\n\r\n",
        )
        .await
        .unwrap();
    let mut slow = TcpStream::connect(addr(&server)).await.unwrap();
    slow.write_all(b"GET /health HTTP/1.1\r\n").await.unwrap();
    let head = log_events(&client, &server).await.len();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = Instant::now();
    let data = server.data.clone();
    server.terminate();
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "shutdown took {:?}",
        started.elapsed()
    );
    let server = Server::start(&data);
    assert_eq!(log_events(&client, &server).await.len(), head);
}

#[tokio::test]
async fn a_put_over_the_body_limit_answers_json_413() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let mut body = guest("stream_stats");
    body.resize(33 * 1024 * 1024, 0);
    let response = client()
        .put(server.url("/projections/big"))
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "too_large", "{body}");
}

#[tokio::test]
async fn an_internal_error_names_a_request_id_and_no_detail() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let client = client();
    failpoint(&client, &server, "log-commit", "return(eio)").await;
    let (status, body) = append(
        &client,
        &server,
        "order-1",
        None,
        &json!([{"type": "T", "data": {}}]),
    )
    .await;
    clear_failpoint(&client, &server, "log-commit").await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    let id = body["error"]["request_id"].as_str().unwrap();
    assert!(message.contains(id), "{body}");
    assert!(
        !message.contains("os error") && !message.contains("I/O"),
        "{body}"
    );
}

#[tokio::test]
async fn compiled_components_no_version_uses_are_pruned() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let client = client();
    let cached = || -> usize {
        std::fs::read_dir(dir.path().join("cache"))
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .ends_with(".cwasm")
            })
            .count()
    };
    let before = cached();
    let mut wasm = guest("stream_stats");
    wasm.extend_from_slice(&[0, 3, 1, b'p', 1]);
    let response = client
        .put(server.url("/projections/pruned"))
        .body(wasm)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    poll_projection(
        &client,
        &server,
        "pruned",
        Duration::from_secs(60),
        |s, b| s == StatusCode::OK && b["state"] == "caught_up",
    )
    .await;
    assert_eq!(cached(), before + 1);
    std::fs::remove_file(dir.path().join("deploy/pruned.wasm")).unwrap();
    poll_projection(
        &client,
        &server,
        "pruned",
        Duration::from_secs(60),
        |s, _| s == StatusCode::NOT_FOUND,
    )
    .await;
    assert_eq!(
        cached(),
        before,
        "the removed version's compiled component is gone"
    );
}
