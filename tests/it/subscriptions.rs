//! Persistent subscriptions against the real server: settings, long polls, acks and nacks,
//! timeouts and parking, back-pressure, pinned consumers, SSE, and state across a SIGKILL.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::common::{Server, Sse, append, client, get_json};

async fn put(c: &reqwest::Client, s: &Server, name: &str, settings: Value) -> (StatusCode, Value) {
    let r = c
        .put(s.url(&format!("/subscriptions/{name}")))
        .json(&settings)
        .send()
        .await
        .unwrap();
    let status = r.status();
    (status, r.json().await.unwrap_or(Value::Null))
}

async fn poll(c: &reqwest::Client, s: &Server, name: &str, query: &str) -> Vec<Value> {
    let (status, body) =
        get_json(c, &s.url(&format!("/subscriptions/{name}/events?{query}"))).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["events"].as_array().unwrap().clone()
}

async fn post(c: &reqwest::Client, s: &Server, path: &str, body: Value) -> (StatusCode, Value) {
    let r = c.post(s.url(path)).json(&body).send().await.unwrap();
    let status = r.status();
    (status, r.json().await.unwrap_or(Value::Null))
}

fn positions(events: &[Value]) -> Vec<u64> {
    events
        .iter()
        .map(|e| e["position"].as_u64().unwrap())
        .collect()
}

async fn append_n(c: &reqwest::Client, s: &Server, stream: &str, n: usize) {
    let events: Vec<Value> = (0..n)
        .map(|i| json!({"type": "T", "data": {"i": i}}))
        .collect();
    let (status, body) = append(c, s, stream, None, &Value::Array(events)).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
}

async fn status(c: &reqwest::Client, s: &Server, name: &str) -> Value {
    let (code, body) = get_json(c, &s.url(&format!("/subscriptions/{name}"))).await;
    assert_eq!(code, StatusCode::OK, "{body}");
    body
}

#[tokio::test]
async fn settings_acks_nacks_and_errors() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path());
    let c = client();
    let (code, body) = put(&c, &s, "work", json!({"source": "$ce-order"})).await;
    assert_eq!(code, StatusCode::CREATED, "{body}");
    assert_eq!(body["settings"]["max_in_flight"], 1000);
    let (code, _) = put(
        &c,
        &s,
        "work",
        json!({"source": "$ce-order", "max_deliveries": 3}),
    )
    .await;
    assert_eq!(code, StatusCode::OK);
    let (code, body) = put(&c, &s, "work", json!({"source": "$all"})).await;
    assert_eq!(code, StatusCode::CONFLICT, "{body}");
    for bad in [
        json!({"source": "$nope"}),
        json!({"source": "x", "max_in_flight": 0}),
        json!({"source": "x", "strategy": "random"}),
        json!({"source": "x", "ack_timeout_ms": 5}),
    ] {
        let (code, body) = put(&c, &s, "bad", bad).await;
        assert_eq!(code, StatusCode::BAD_REQUEST, "{body}");
        assert!(body["error"]["message"].as_str().unwrap().len() > 5);
    }
    let (code, body) = get_json(&c, &s.url("/subscriptions/nope")).await;
    assert_eq!(
        (code, body["error"]["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("subscription_not_found"))
    );

    append_n(&c, &s, "order-1", 6).await;
    append_n(&c, &s, "other-1", 2).await;
    let got = poll(&c, &s, "work", "max=4&wait_ms=2000").await;
    assert_eq!(positions(&got), vec![1, 2, 3, 4]);
    assert!(
        got.iter()
            .all(|e| e["attempt"] == 1 && e["stream"] == "order-1")
    );
    let (code, _) = post(
        &c,
        &s,
        "/subscriptions/work/ack",
        json!({"positions": [1, 2]}),
    )
    .await;
    assert_eq!(code, StatusCode::NO_CONTENT);
    let (code, body) = post(
        &c,
        &s,
        "/subscriptions/work/ack",
        json!({"positions": [2, 3, 99]}),
    )
    .await;
    assert_eq!(code, StatusCode::CONFLICT, "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains('2') && message.contains("99"), "{message}");
    assert_eq!(
        status(&c, &s, "work").await["floor"],
        2,
        "3 was not acked by the refused request"
    );

    // Retry: delivered again with its attempt counted; park: listed with the reason; replay.
    let (code, _) = post(
        &c,
        &s,
        "/subscriptions/work/nack",
        json!({"positions": [3], "action": "retry", "reason": "busy"}),
    )
    .await;
    assert_eq!(code, StatusCode::NO_CONTENT);
    let again = poll(&c, &s, "work", "max=1&wait_ms=2000").await;
    assert_eq!(
        (positions(&again), again[0]["attempt"].as_u64()),
        (vec![3], Some(2))
    );
    let (code, _) = post(
        &c,
        &s,
        "/subscriptions/work/nack",
        json!({"positions": [3], "action": "park", "reason": "poison pill"}),
    )
    .await;
    assert_eq!(code, StatusCode::NO_CONTENT);
    let (_, parked) = get_json(&c, &s.url("/subscriptions/work/parked")).await;
    assert_eq!(parked["parked"][0]["event"]["position"], 3);
    assert_eq!(parked["parked"][0]["reason"], "poison pill");
    let (code, _) = post(
        &c,
        &s,
        "/subscriptions/work/nack",
        json!({"positions": [4], "action": "skip"}),
    )
    .await;
    assert_eq!(code, StatusCode::NO_CONTENT);
    let st = status(&c, &s, "work").await;
    assert_eq!(
        (st["floor"].as_u64(), st["parked"].as_u64()),
        (Some(4), Some(1))
    );
    let (code, body) = post(
        &c,
        &s,
        "/subscriptions/work/parked/replay",
        json!({"positions": [5]}),
    )
    .await;
    assert_eq!(code, StatusCode::CONFLICT, "{body}");
    let (code, body) = post(&c, &s, "/subscriptions/work/parked/replay", json!({})).await;
    assert_eq!((code, body["replayed"].as_u64()), (StatusCode::OK, Some(1)));
    let got = poll(&c, &s, "work", "max=10&wait_ms=2000").await;
    assert_eq!(
        positions(&got),
        vec![3, 5, 6],
        "the other stream's events are not in $ce-order"
    );
    let (code, _) = post(
        &c,
        &s,
        "/subscriptions/work/ack",
        json!({"positions": [3, 5, 6]}),
    )
    .await;
    assert_eq!(code, StatusCode::NO_CONTENT);
    let st = status(&c, &s, "work").await;
    assert_eq!(
        (
            st["floor"].as_u64(),
            st["parked"].as_u64(),
            st["in_flight"].as_u64()
        ),
        (Some(8), Some(0), Some(0)),
        "{st}"
    );

    let (code, _) = get_json(&c, &s.url("/subscriptions")).await;
    assert_eq!(code, StatusCode::OK);
    let r = c.delete(s.url("/subscriptions/work")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let (code, _) = get_json(&c, &s.url("/subscriptions/work")).await;
    assert_eq!(code, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn timeouts_redeliver_then_park_and_back_pressure_holds() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path());
    let c = client();
    let settings =
        json!({"source": "$all", "ack_timeout_ms": 300, "max_deliveries": 2, "max_in_flight": 2});
    assert_eq!(put(&c, &s, "slow", settings).await.0, StatusCode::CREATED);
    append_n(&c, &s, "a-1", 3).await;
    assert_eq!(
        positions(&poll(&c, &s, "slow", "max=10&wait_ms=2000").await),
        vec![1, 2]
    );
    let started = Instant::now();
    let none = poll(&c, &s, "slow", "max=10&wait_ms=100").await;
    assert!(none.is_empty(), "max_in_flight is 2");
    // Not acknowledged: delivered again after the timeout, with attempt 2.
    let again = poll(&c, &s, "slow", "max=10&wait_ms=5000").await;
    assert!(started.elapsed() >= Duration::from_millis(150));
    assert_eq!(positions(&again), vec![1, 2]);
    assert!(again.iter().all(|e| e["attempt"] == 2));
    let (code, _) = post(&c, &s, "/subscriptions/slow/ack", json!({"positions": [2]})).await;
    assert_eq!(code, StatusCode::NO_CONTENT);
    // 3 goes out now that there is room; 1 times out a second time and is parked.
    let third = poll(&c, &s, "slow", "max=10&wait_ms=2000").await;
    assert_eq!(positions(&third), vec![3]);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, parked) = get_json(&c, &s.url("/subscriptions/slow/parked")).await;
        if let Some(first) = parked["parked"].as_array().unwrap().first() {
            assert_eq!(first["event"]["position"], 1);
            assert_eq!(first["deliveries"], 2);
            assert!(
                first["reason"]
                    .as_str()
                    .unwrap()
                    .contains("not acknowledged within 300 ms")
            );
            break;
        }
        assert!(Instant::now() < deadline, "1 was never parked");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn acks_survive_a_kill_and_unacked_events_come_again() {
    let dir = tempfile::tempdir().unwrap();
    let c = client();
    let s = Server::start(dir.path());
    assert_eq!(
        put(&c, &s, "durable", json!({"source": "s-1"})).await.0,
        StatusCode::CREATED
    );
    append_n(&c, &s, "s-1", 10).await;
    let got = poll(&c, &s, "durable", "max=10&wait_ms=2000").await;
    assert_eq!(got.len(), 10);
    let (code, _) = post(
        &c,
        &s,
        "/subscriptions/durable/ack",
        json!({"positions": [1, 2, 3, 4, 5, 8]}),
    )
    .await;
    assert_eq!(code, StatusCode::NO_CONTENT);
    let (code, _) = post(
        &c,
        &s,
        "/subscriptions/durable/nack",
        json!({"positions": [9], "action": "park", "reason": "bad"}),
    )
    .await;
    assert_eq!(code, StatusCode::NO_CONTENT);
    s.kill();
    let s = Server::start(dir.path());
    let st = status(&c, &s, "durable").await;
    assert_eq!(
        (st["floor"].as_u64(), st["parked"].as_u64()),
        (Some(5), Some(1)),
        "{st}"
    );
    let got = poll(&c, &s, "durable", "max=100&wait_ms=2000").await;
    assert_eq!(
        positions(&got),
        vec![6, 7, 10],
        "acked and parked events are not delivered again"
    );
    assert!(got.iter().all(|e| e["attempt"] == 1));
}

#[tokio::test]
async fn pinned_keeps_each_stream_with_one_consumer_and_polls_wake_on_appends() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path());
    let c = client();
    assert_eq!(
        put(
            &c,
            &s,
            "pin",
            json!({"source": "$all", "strategy": "pinned", "from": "end"})
        )
        .await
        .0,
        StatusCode::CREATED
    );
    // A waiting poll returns as soon as an event is appended.
    let waiting = {
        let (c, url) = (
            c.clone(),
            s.url("/subscriptions/pin/events?max=1&wait_ms=20000&consumer=a"),
        );
        tokio::spawn(async move { get_json(&c, &url).await })
    };
    // The poll is waiting once its consumer counts as connected.
    let deadline = Instant::now() + Duration::from_secs(10);
    while status(&c, &s, "pin").await["consumers"] != 1 {
        assert!(Instant::now() < deadline, "the poll never started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let started = Instant::now();
    append_n(&c, &s, "x-1", 1).await;
    let (code, first) = waiting.await.unwrap();
    assert_eq!(code, StatusCode::OK);
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(first["events"][0]["stream"], "x-1");
    for _ in 0..3 {
        append_n(&c, &s, "x-1", 1).await;
        append_n(&c, &s, "y-1", 1).await;
    }
    let b = poll(&c, &s, "pin", "max=100&wait_ms=1000&consumer=b").await;
    assert!(
        !b.is_empty() && b.iter().all(|e| e["stream"] == "y-1"),
        "{b:?}"
    );
    // The subscription reads the log behind the appends' answers: a poll hands over what it
    // has read, so `a` polls until its three events (still in flight, so not handed again)
    // have come.
    let mut a = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while a.len() < 3 && Instant::now() < deadline {
        a.extend(poll(&c, &s, "pin", "max=100&wait_ms=1000&consumer=a").await);
    }
    assert!(
        a.len() == 3 && a.iter().all(|e| e["stream"] == "x-1"),
        "{a:?}"
    );
    assert_eq!(status(&c, &s, "pin").await["consumers"], 2);
}

/// A poll hands over every event appended before it began (up to `max`), although the
/// subscription reads the log in its own task, behind the appends' answers.
#[tokio::test]
async fn a_poll_holds_every_event_appended_before_it() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path());
    let c = client();
    let settings = json!({"source": "$all", "max_in_flight": 1000});
    assert_eq!(put(&c, &s, "all", settings).await.0, StatusCode::CREATED);
    for round in 0..5u64 {
        // Many appends answered at about the same time, each its own head move.
        let appends = (0..40).map(|i| {
            let (c, s) = (&c, &s);
            async move { append_n(c, s, &format!("r{round}-{i}"), 1).await }
        });
        futures_util::future::join_all(appends).await;
        let got = poll(&c, &s, "all", "max=1000&wait_ms=5000").await;
        let expected: Vec<u64> = (round * 40 + 1..=round * 40 + 40).collect();
        let mut got = positions(&got);
        got.sort_unstable();
        assert_eq!(got, expected, "round {round}");
        let (code, body) = post(&c, &s, "/subscriptions/all/ack", json!({"positions": got})).await;
        assert_eq!(code, StatusCode::NO_CONTENT, "{body}");
    }
}

#[tokio::test]
async fn sse_consumers_are_held_to_max_in_flight() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path());
    let c = client();
    assert_eq!(
        put(
            &c,
            &s,
            "push",
            json!({"source": "$all", "max_in_flight": 2})
        )
        .await
        .0,
        StatusCode::CREATED
    );
    append_n(&c, &s, "p-1", 5).await;
    let mut sse = Sse::connect(&s.url("/subscriptions/push/live"), None).await;
    let first = sse.drain(Duration::from_millis(500)).await;
    assert_eq!(first.iter().map(|e| e.id).collect::<Vec<_>>(), vec![1, 2]);
    assert_eq!(first[0].data["attempt"], 1);
    let (code, _) = post(
        &c,
        &s,
        "/subscriptions/push/ack",
        json!({"positions": [1, 2]}),
    )
    .await;
    assert_eq!(code, StatusCode::NO_CONTENT);
    let next = sse.drain(Duration::from_millis(500)).await;
    assert_eq!(next.iter().map(|e| e.id).collect::<Vec<_>>(), vec![3, 4]);
}

fn projector(server: &Server, args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_projector"))
        .args(args)
        .args(["--server", &server.base])
        .output()
        .expect("running projector")
}

#[tokio::test]
async fn the_cli_creates_lists_consumes_and_deletes() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path());
    let c = client();
    let out = crate::common::stdout(&projector(
        &s,
        &[
            "subscriptions",
            "create",
            "cli",
            "--source",
            "$ce-order",
            "--strategy",
            "pinned",
        ],
    ));
    assert!(
        out.contains("subscription  cli") && out.contains("pinned"),
        "{out}"
    );
    let bad = projector(
        &s,
        &[
            "subscriptions",
            "create",
            "x",
            "--source",
            "$all",
            "--max-in-flight",
            "0",
        ],
    );
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("max_in_flight"));
    append_n(&c, &s, "order-1", 3).await;
    append_n(&c, &s, "user-1", 1).await;
    let out = crate::common::stdout(&projector(
        &s,
        &[
            "subscriptions",
            "consume",
            "cli",
            "--ack",
            "--limit",
            "3",
            "--json",
        ],
    ));
    let positions: Vec<u64> = out
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["position"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(positions, vec![1, 2, 3]);
    assert_eq!(
        status(&c, &s, "cli").await["floor"],
        4,
        "acked, and the user event passed"
    );
    let out = crate::common::stdout(&projector(&s, &["subscriptions", "list"]));
    assert!(out.lines().nth(1).unwrap().starts_with("cli "), "{out}");
    crate::common::stdout(&projector(&s, &["subscriptions", "delete", "cli"]));
    let gone = projector(&s, &["subscriptions", "show", "cli"]);
    assert!(!gone.status.success());
    assert!(String::from_utf8_lossy(&gone.stderr).contains("subscription_not_found"));
}
