//! Injected failures (`src/failpoint.rs`): each leaves the server serving, the projection
//! faulted with the right kind, and once the failure is removed, a state equal to a run
//! without it.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::common::{
    EXAMPLES, Server, append, assert_views_match_native, clear_failpoint, client, failpoint,
    get_json, guest, log_events, order_placed, poll_projection, status_until,
};

/// Appends `count` orders (placed, one item each) and returns the head.
async fn orders(client: &reqwest::Client, server: &Server, from: u64, count: u64) -> u64 {
    let mut head = 0;
    for n in from..from + count {
        let item = json!({"type": "ItemAdded", "data": {"orderId": format!("{n}"), "sku": "tea",
            "quantity": 1 + n % 3, "unitPriceCents": 450}});
        let (status, body) = append(
            client,
            server,
            &format!("order-{n}"),
            None,
            &json!([order_placed(n), item]),
        )
        .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        head = body["last_position"].as_u64().unwrap();
    }
    head
}

/// Appends an order to `order-x`, a stream no other append of these tests touches, so that
/// whether the log holds it shows whether the append was stored.
async fn append_stray(client: &reqwest::Client, server: &Server) -> (StatusCode, Value) {
    append(client, server, "order-x", None, &json!([order_placed(99)])).await
}

/// Checks the log with `check`, kills the server (a crash), restarts it on the same data and
/// checks again: what the log held before the crash is what it holds after. Returns the
/// restarted server.
async fn check_across_a_crash(
    dir: &std::path::Path,
    client: &reqwest::Client,
    server: Server,
    check: impl Fn(Vec<crate::common::LoggedEvent>),
) -> Server {
    check(log_events(client, &server).await);
    server.kill();
    let server = Server::start(dir);
    check(log_events(client, &server).await);
    server
}

/// Waits until every example has applied `head`.
async fn all_caught_up(client: &reqwest::Client, server: &Server, head: u64) {
    for name in EXAMPLES {
        status_until(client, server, name, caught_up(head)).await;
    }
}

/// Waits until every example has applied `head`, then checks each view against a native run.
async fn settled(client: &reqwest::Client, server: &Server, head: u64) {
    all_caught_up(client, server, head).await;
    assert_views_match_native(client, server).await;
}

/// Waits until `/health` answers 200 again after a log failure (the writer probes the disk
/// on its own).
async fn healthy_again(client: &reqwest::Client, server: &Server) {
    health_until(client, server, true, "health did not recover").await;
}

/// Polls `/health` for up to 10 s until whether it answers 200 is `ok`; returns its body.
async fn health_until(client: &reqwest::Client, server: &Server, ok: bool, why: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, health) = get_json(client, &server.url("/health")).await;
        if (status == StatusCode::OK) == ok {
            return health;
        }
        assert!(Instant::now() < deadline, "{why}: {health}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn caught_up(head: u64) -> impl Fn(&Value) -> bool {
    move |s| s["state"] == "caught_up" && s["position"].as_u64() >= Some(head)
}

/// With `action` injected into every view commit, each example faults with `kind` while the
/// server serves on; once it is removed, each catches up to what a native run builds.
async fn a_view_commit_failure_recovers(action: &str, kind: &str) {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let client = client();
    let head = orders(&client, &server, 0, 5).await;
    all_caught_up(&client, &server, head).await;
    failpoint(&client, &server, "view-commit", action).await;
    let head = orders(&client, &server, 5, 5).await;
    for name in EXAMPLES {
        let status = status_until(&client, &server, name, |s| s["state"] == "faulted").await;
        assert_eq!(status["last_error"]["kind"], kind, "{status}");
    }
    // The rest of the server serves on.
    let (status, health) = get_json(&client, &server.url("/health")).await;
    assert_eq!((status, &health["status"]), (StatusCode::OK, &json!("ok")));
    assert_eq!(log_events(&client, &server).await.len() as u64, head);
    clear_failpoint(&client, &server, "view-commit").await;
    settled(&client, &server, head).await;
}

#[tokio::test]
async fn a_failed_view_commit_faults_the_projection_with_kind_storage_and_it_recovers() {
    a_view_commit_failure_recovers("return(eio)", "storage").await;
}

#[tokio::test]
async fn a_panic_in_a_view_commit_is_a_host_fault_and_it_recovers() {
    a_view_commit_failure_recovers("panic", "host").await;
}

#[tokio::test]
async fn a_full_disk_on_append_answers_507_writes_nothing_and_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let client = client();
    let head = orders(&client, &server, 0, 3).await;
    failpoint(&client, &server, "log-commit", "return(enospc)").await;
    let (status, body) = append_stray(&client, &server).await;
    assert_eq!(status, StatusCode::INSUFFICIENT_STORAGE, "{body}");
    assert_eq!(body["error"]["code"], "insufficient_storage");
    let (status, health) = get_json(&client, &server.url("/health")).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(health["status"], "degraded", "{health}");
    assert!(health["reason"].as_str().unwrap().contains("disk is full"));
    // Reads are served meanwhile.
    assert_eq!(log_events(&client, &server).await.len() as u64, head);

    // Any other I/O failure: a 500 naming no detail of the disk, and nothing written.
    failpoint(&client, &server, "log-commit", "return(eio)").await;
    let (status, body) = append_stray(&client, &server).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{body}");

    clear_failpoint(&client, &server, "log-commit").await;
    // Health recovers by itself (the writer probes the disk), before any append.
    healthy_again(&client, &server).await;
    let head = orders(&client, &server, 3, 3).await;
    let events = log_events(&client, &server).await;
    assert_eq!(
        events.len() as u64,
        head,
        "the refused appends wrote nothing"
    );
    assert!(events.iter().all(|e| e.stream != "order-x"));
    settled(&client, &server, head).await;
}

/// A group whose frame reached the write-ahead segment but whose redb commit failed is refused
/// and stays unwritten: its frame is retracted, so neither the reopen after the failure nor the
/// recovery after a crash writes it back.
#[tokio::test]
async fn a_group_refused_after_its_frame_was_written_stays_refused_across_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let client = client();
    orders(&client, &server, 0, 3).await;
    failpoint(&client, &server, "log-commit-logged", "return(eio)").await;
    let (status, body) = append_stray(&client, &server).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{body}");
    clear_failpoint(&client, &server, "log-commit-logged").await;
    healthy_again(&client, &server).await;
    let head = orders(&client, &server, 3, 3).await;
    let check = |events: Vec<crate::common::LoggedEvent>| {
        assert_eq!(
            events.len() as u64,
            head,
            "the refused append wrote nothing"
        );
        assert!(events.iter().all(|e| e.stream != "order-x"));
        assert!((0..6).all(|n| events.iter().any(|e| e.stream == format!("order-{n}"))));
    };
    // A crash: the segment holds the acknowledged groups since the reopen, not the refused one.
    let server = check_across_a_crash(dir.path(), &client, server, check).await;
    let (status, body) = append_stray(&client, &server).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["first_position"].as_u64(), Some(head + 1));
}

/// The same for a group whose frame is written before redb's transaction is even begun (an
/// append with generated ids to a stream the writer knows the length of): a failure while the
/// transaction is filled, or at its commit, retracts the frame, and the group stays refused,
/// also after a crash.
#[tokio::test]
async fn a_group_written_frame_first_and_refused_stays_refused_across_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(dir.path());
    let client = client();
    let mut head = orders(&client, &server, 0, 3).await;
    for (notes, point) in (1..).zip(["log-commit-staged", "log-commit-logged"]) {
        failpoint(&client, &server, point, "return(eio)").await;
        let refused = json!([{"type": "Refused", "data": {"orderId": "1"}}]);
        let (status, body) = append(&client, &server, "order-1", None, &refused).await;
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{point}: {body}");
        clear_failpoint(&client, &server, point).await;
        healthy_again(&client, &server).await;
        let (status, body) = append(
            &client,
            &server,
            "order-1",
            None,
            &json!([{"type": "Noted", "data": {}}]),
        )
        .await;
        assert_eq!(status, StatusCode::CREATED, "{point}: {body}");
        assert_eq!(
            body["first_position"].as_u64(),
            Some(head + 1),
            "{point}: the refused group took no position"
        );
        head += 1;
        let check = |events: Vec<crate::common::LoggedEvent>| {
            assert_eq!(
                events.len() as u64,
                head,
                "{point}: the refused append wrote nothing"
            );
            assert!(events.iter().all(|e| e.event_type != "Refused"), "{point}");
            let in_order_1 = events.iter().filter(|e| e.stream == "order-1").count();
            assert_eq!(
                in_order_1,
                2 + notes,
                "{point}: order-1 holds its order and the notes"
            );
        };
        server = check_across_a_crash(dir.path(), &client, server, check).await;
    }
}

/// redb may report an error for a commit that reached the file. The writer reopens the file
/// after it, and answers the group with its positions if the reopened file holds it (made
/// durable first), or refuses it if not: either way the answer is what the log holds, also
/// after a crash.
#[tokio::test]
async fn a_commit_reported_failed_is_answered_by_what_the_reopened_log_holds() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let client = client();
    let head = orders(&client, &server, 0, 3).await;
    failpoint(&client, &server, "log-commit-landed", "return(eio)").await;
    // Over 64 KiB: committed to redb durably, so it is in the file when the error comes.
    let big: Vec<Value> = (0..200)
        .map(|i| json!({"type": "Noted", "data": {"i": i, "text": "x".repeat(400)}}))
        .collect();
    let (status, body) = append(&client, &server, "notes-1", None, &json!(big)).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["first_position"].as_u64(), Some(head + 1));
    assert_eq!(body["last_position"].as_u64(), Some(head + 200));
    // A small group goes through the write-ahead segment, whose frame is retracted on the
    // error: whether redb's own commit survived the reopen decides the answer.
    let (status, body) = append_stray(&client, &server).await;
    let small_stored = match status {
        StatusCode::CREATED => true,
        StatusCode::INTERNAL_SERVER_ERROR => false,
        other => panic!("{other}: {body}"),
    };
    clear_failpoint(&client, &server, "log-commit-landed").await;
    healthy_again(&client, &server).await;
    let check = |events: Vec<crate::common::LoggedEvent>| {
        let notes = events.iter().filter(|e| e.stream == "notes-1").count();
        assert_eq!(notes, 200, "the group answered 201 is in the log");
        let small = events.iter().filter(|e| e.stream == "order-x").count();
        assert_eq!(small, usize::from(small_stored), "the small group's answer");
        assert_eq!(events.len() as u64, head + 200 + u64::from(small_stored));
        let mut positions: Vec<u64> = events.iter().map(|e| e.position).collect();
        positions.dedup();
        assert_eq!(positions, (1..=events.len() as u64).collect::<Vec<_>>());
    };
    let server = check_across_a_crash(dir.path(), &client, server, check).await;
    let head = orders(&client, &server, 3, 1).await;
    assert_eq!(head, 6 + 200 + u64::from(small_stored) + 2);
}

/// A failed fdatasync of the write-ahead segment refuses the groups that waited on it (their
/// records may or may not be found later, like a commit whose fsync failed: the client got a
/// 500, not a 2xx), and nothing is acknowledged until the writer has reopened the log. What
/// was acknowledged, before and after, is in the log, gap-free, also after a crash.
#[tokio::test]
async fn a_failed_segment_sync_refuses_its_group_and_loses_nothing_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let client = client();
    orders(&client, &server, 0, 3).await;
    failpoint(&client, &server, "log-sync", "return(eio)").await;
    for _ in 0..2 {
        let (status, body) = append_stray(&client, &server).await;
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{body}");
    }
    clear_failpoint(&client, &server, "log-sync").await;
    let head = orders(&client, &server, 3, 3).await;
    healthy_again(&client, &server).await;
    let check = |events: Vec<crate::common::LoggedEvent>| {
        let positions: Vec<u64> = events.iter().map(|e| e.position).collect();
        assert_eq!(
            positions,
            (1..=head).collect::<Vec<_>>(),
            "gap-free up to the head"
        );
        assert!((0..6).all(|n| events.iter().any(|e| e.stream == format!("order-{n}"))));
        assert!(events.iter().filter(|e| e.stream == "order-x").count() <= 2);
    };
    let server = check_across_a_crash(dir.path(), &client, server, check).await;
    let (status, body) = append_stray(&client, &server).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["first_position"].as_u64(), Some(head + 1));
}

#[tokio::test]
async fn a_failed_segment_sync_shows_on_health_without_another_append() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let client = client();
    orders(&client, &server, 0, 2).await;
    // The next fdatasync fails, and the log cannot be reopened until the disk is back.
    failpoint(&client, &server, "log-reopen", "return(eio)").await;
    failpoint(&client, &server, "log-sync", "1*return(eio)").await;
    let (status, body) = append_stray(&client, &server).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{body}");
    // No append follows: health says so on its own, and recovers on its own.
    let health = health_until(&client, &server, false, "health stayed ok").await;
    assert_eq!(health["status"], "degraded", "{health}");
    assert!(health["reason"].as_str().is_some(), "{health}");
    clear_failpoint(&client, &server, "log-reopen").await;
    healthy_again(&client, &server).await;
    let head = orders(&client, &server, 2, 2).await;
    let events = log_events(&client, &server).await;
    let positions: Vec<u64> = events.iter().map(|e| e.position).collect();
    assert_eq!(positions, (1..=head).collect::<Vec<_>>(), "gap-free");
    assert!((0..4).all(|n| events.iter().any(|e| e.stream == format!("order-{n}"))));
}

#[tokio::test]
async fn a_dead_log_writer_makes_health_failing_and_appends_503() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let client = client();
    let head = orders(&client, &server, 0, 2).await;
    failpoint(&client, &server, "log-commit", "panic").await;
    let (status, body) = append(&client, &server, "order-x", None, &json!([order_placed(9)])).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["error"]["code"], "log_failed", "{body}");
    let (status, health) = get_json(&client, &server.url("/health")).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(health["status"], "failing", "{health}");
    assert!(
        health["reason"].as_str().unwrap().contains("panicked"),
        "{health}"
    );
    // Every later append names the cause too; reads go on.
    let (status, body) = append(&client, &server, "order-y", None, &json!([order_placed(9)])).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("panicked")
    );
    assert_eq!(log_events(&client, &server).await.len() as u64, head);
}

#[tokio::test]
async fn a_panic_in_a_projection_turn_is_a_host_fault_and_the_workers_carry_on() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_with(dir.path(), &["--workers", "1"]);
    let client = client();
    let head = orders(&client, &server, 0, 2).await;
    all_caught_up(&client, &server, head).await;
    // The next turn of whichever projection runs first panics, once.
    failpoint(&client, &server, "turn", "1*panic").await;
    let head = orders(&client, &server, 2, 3).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    let faulted = 'found: loop {
        for name in EXAMPLES {
            let (_, status) = get_json(&client, &server.url(&format!("/projections/{name}"))).await;
            if status["last_error"]["kind"] == "host" {
                break 'found status;
            }
        }
        assert!(
            Instant::now() < deadline,
            "no projection reported the panic"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert!(
        faulted["last_error"]["message"]
            .as_str()
            .unwrap()
            .contains("panicked"),
        "{faulted}"
    );
    // The one worker survived: every projection, the panicked one after its backoff, catches
    // up with later appends too.
    let head = orders(&client, &server, 5, 2).await.max(head);
    settled(&client, &server, head).await;
}

/// A catch-up of more than one batch reads the next batch on a read-ahead thread: a panic
/// there is the turn's panic, a host fault of the projection alone, retried after its backoff.
#[tokio::test]
async fn a_panic_on_the_read_ahead_thread_is_a_host_fault_and_the_catch_up_completes() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_with(dir.path(), &["--workers", "1"]);
    let client = client();
    let head = orders(&client, &server, 0, 2).await;
    all_caught_up(&client, &server, head).await;
    let pause = client
        .post(server.url("/projections/stream-stats/pause"))
        .send()
        .await
        .unwrap();
    assert_eq!(pause.status(), StatusCode::OK);
    // More than a batch (4,096 events) behind, so its catch-up reads ahead.
    let mut head = head;
    for chunk in 0..50 {
        let events: Vec<Value> = (0..100)
            .map(|i| json!({"type": "Noted", "data": {"n": chunk * 100 + i}}))
            .collect();
        let (status, body) = append(&client, &server, "notes-1", None, &Value::Array(events)).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        head = body["last_position"].as_u64().unwrap();
    }
    // The others followed the appends in batches of 100 (nothing to read ahead): the one
    // catch-up left is the paused projection's.
    for name in ["category-index", "order-summary"] {
        status_until(&client, &server, name, caught_up(head)).await;
    }
    failpoint(&client, &server, "read-ahead", "1*panic").await;
    let resume = client
        .post(server.url("/projections/stream-stats/resume"))
        .send()
        .await
        .unwrap();
    assert_eq!(resume.status(), StatusCode::OK);
    let faulted = status_until(&client, &server, "stream-stats", |s| {
        s["last_error"]["kind"] == "host"
    })
    .await;
    assert!(
        faulted["last_error"]["message"]
            .as_str()
            .unwrap()
            .contains("panicked"),
        "{faulted}"
    );
    settled(&client, &server, head).await;
}

#[tokio::test]
async fn a_failed_compile_cache_write_still_runs_the_projection() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let client = client();
    let head = orders(&client, &server, 0, 2).await;
    failpoint(&client, &server, "cache-write", "return(enospc)").await;
    let wasm = guest("hostile");
    let cached_before = std::fs::read_dir(dir.path().join("cache")).unwrap().count();
    let response = client
        .put(server.url("/projections/hostile"))
        .body(wasm)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let loaded = caught_up(head);
    poll_projection(
        &client,
        &server,
        "hostile",
        Duration::from_secs(60),
        |s, body| s == StatusCode::OK && loaded(body),
    )
    .await;
    let cached_after = std::fs::read_dir(dir.path().join("cache")).unwrap().count();
    assert_eq!(cached_before, cached_after, "nothing was cached");
    clear_failpoint(&client, &server, "cache-write").await;
}

#[tokio::test]
async fn a_failed_current_swap_faults_the_rebuild_and_it_is_swapped_in_later() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let client = client();
    let head = orders(&client, &server, 0, 4).await;
    status_until(&client, &server, "order-summary", caught_up(head)).await;
    failpoint(&client, &server, "view-current", "return(eio)").await;
    let response = client
        .post(server.url("/projections/order-summary/rebuild"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let status = status_until(&client, &server, "order-summary", |s| {
        s["rebuild"]["last_error"]["kind"] == "storage"
    })
    .await;
    // The serving version serves on meanwhile.
    assert_eq!(status["state"], "caught_up", "{status}");
    let storages = |dir: &std::path::Path| {
        std::fs::read_dir(dir.join("views/order-summary"))
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .path()
                    .extension()
                    .is_some_and(|x| x == "redb")
            })
            .count()
    };
    assert_eq!(storages(dir.path()), 2, "the rebuild's storage is kept");
    clear_failpoint(&client, &server, "view-current").await;
    status_until(&client, &server, "order-summary", |s| {
        s["rebuild"].is_null()
    })
    .await;
    assert_eq!(
        storages(dir.path()),
        1,
        "the old storage is deleted once swapped"
    );
    let current = std::fs::read_to_string(dir.path().join("views/order-summary/CURRENT")).unwrap();
    assert!(
        dir.path()
            .join(format!("views/order-summary/{}.redb", current.trim()))
            .exists()
    );
    assert_views_match_native(&client, &server).await;
}

/// While a promotion's `CURRENT` write stalls for 2 s (under the registry's deploy lock),
/// view reads and the projection list are answered: neither takes that lock.
#[tokio::test]
async fn reads_do_not_wait_on_a_stalled_promotion() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let client = client();
    let head = orders(&client, &server, 0, 4).await;
    all_caught_up(&client, &server, head).await;
    failpoint(&client, &server, "view-current", "sleep(2000)").await;
    let requested = Instant::now();
    let response = client
        .post(server.url("/projections/stream-stats/rebuild"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let mut latencies = Vec::new();
    let mut swapped_at = None;
    while swapped_at.is_none() {
        for url in [
            "/projections",
            "/projections/order-summary/view/order/1",
            "/projections/stream-stats/view?prefix=&limit=10",
        ] {
            let started = Instant::now();
            let response = client.get(server.url(url)).send().await.unwrap();
            assert_eq!(response.status(), StatusCode::OK, "{url}");
            latencies.push(started.elapsed());
        }
        let (_, status) = get_json(&client, &server.url("/projections/stream-stats")).await;
        if status["rebuild"].is_null() {
            swapped_at = Some(requested.elapsed());
        }
        assert!(
            requested.elapsed() < Duration::from_secs(60),
            "never swapped in"
        );
    }
    clear_failpoint(&client, &server, "view-current").await;
    let swapped_at = swapped_at.unwrap();
    assert!(
        swapped_at >= Duration::from_secs(2),
        "the promotion did stall ({swapped_at:?})"
    );
    latencies.sort();
    let median = latencies[latencies.len() / 2];
    let worst = *latencies.last().unwrap();
    println!(
        "{} reads during a 2 s promotion stall: median {median:?}, worst {worst:?}",
        latencies.len()
    );
    assert!(median < Duration::from_millis(50), "median {median:?}");
    assert!(
        worst < Duration::from_secs(1),
        "a read waited on the stall: {worst:?}"
    );
}
