//! Projections end to end: real components built from `projections/` and `tests/guests/`,
//! run by a real server over a real log, queried over HTTP.

use crate::common::{
    Server, append, client, deploy, document, get_json, guest, projection_names, status_until,
};
use reqwest::StatusCode;
use serde_json::json;

#[tokio::test]
async fn order_summary_documents_follow_the_orders() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let client = client();
    assert_eq!(
        projection_names(&client, &server).await,
        ["category-index", "order-summary", "stream-stats"]
    );

    let placed = |order: &str, customer: &str| json!({"type": "OrderPlaced", "data": {"orderId": order, "customerId": customer}});
    let added = |order: &str, sku: &str, quantity: u64, price: u64| json!({"type": "ItemAdded", "data": {"orderId": order, "sku": sku, "quantity": quantity, "unitPriceCents": price}});
    append(
        &client,
        &server,
        "order-a1",
        None,
        &json!([
            placed("a1", "ann"),
            added("a1", "tea", 2, 450),
            added("a1", "cup", 1, 1200)
        ]),
    )
    .await;
    append(
        &client,
        &server,
        "order-b2",
        None,
        &json!([placed("b2", "ann"), added("b2", "pot", 1, 3000)]),
    )
    .await;
    append(
        &client,
        &server,
        "user-ann",
        None,
        &json!([{"type": "Registered", "data": {}}]),
    )
    .await;
    append(
        &client,
        &server,
        "order-a1",
        None,
        &json!([
            {"type": "ItemRemoved", "data": {"orderId": "a1", "sku": "tea", "quantity": 1}},
            {"type": "OrderShipped", "data": {"orderId": "a1", "carrier": "ignored"}},
        ]),
    )
    .await;
    let (_, last) = append(
        &client,
        &server,
        "order-b2",
        None,
        &json!([
            {"type": "OrderCancelled", "data": {"orderId": "b2", "reason": "too slow"}},
        ]),
    )
    .await;
    let head = last["last_position"].as_u64().unwrap();
    assert_eq!(head, 9);

    let (status, order) = document(&client, &server, "order-summary", "order/a1", head).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        order,
        json!({
            "orderId": "a1", "customerId": "ann", "status": "shipped",
            "lines": [
                {"sku": "tea", "quantity": 1, "unitPriceCents": 450},
                {"sku": "cup", "quantity": 1, "unitPriceCents": 1200},
            ],
            "totalCents": 1650, "cancelReason": null, "lastPosition": 8,
        })
    );
    let (status, customer) = get_json(
        &client,
        &server.url("/projections/order-summary/view?prefix=customer/ann/"),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{customer}");
    assert_eq!(
        customer["documents"],
        json!([
            {"key": "customer/ann/a1", "value": {"orderId": "a1", "status": "shipped", "totalCents": 1650}},
            {"key": "customer/ann/b2", "value": {"orderId": "b2", "status": "cancelled", "totalCents": 3000}},
        ])
    );
    let (status, missing) = document(&client, &server, "order-summary", "order/zz", head).await;
    assert_eq!(
        (status, missing["error"]["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("document_not_found"))
    );

    // Pages of documents by prefix, following `next`.
    let mut url = server.url("/projections/order-summary/view?prefix=order/&limit=1");
    let mut keys = Vec::new();
    loop {
        let (status, page) = get_json(&client, &url).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        assert_eq!(page["position"], head);
        for d in page["documents"].as_array().unwrap() {
            keys.push(d["key"].as_str().unwrap().to_owned());
            assert_eq!(
                d["value"]["orderId"],
                d["key"].as_str().unwrap().trim_start_matches("order/")
            );
        }
        match page["next"].as_str() {
            Some(next) => url = server.url(next),
            None => break,
        }
    }
    assert_eq!(keys, ["order/a1", "order/b2"]);

    let (_, index) = document(&client, &server, "category-index", "category/order", head).await;
    assert_eq!(index, json!({"events": 8, "streams": 2}));
    let (status, streams) = get_json(
        &client,
        &server.url("/projections/category-index/view?prefix=stream/order-"),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{streams}");
    assert_eq!(
        streams["documents"],
        json!([
            {"key": "stream/order-a1", "value": {"events": 5}},
            {"key": "stream/order-b2", "value": {"events": 3}},
        ])
    );
    let status = status_until(&client, &server, "order-summary", |s| {
        s["state"] == "caught_up"
    })
    .await;
    assert_eq!(
        (status["position"].as_u64(), status["lag"].as_u64()),
        (Some(head), Some(0))
    );
    assert_eq!(status["subscription"]["categories"], json!(["order"]));

    for (url, code) in [
        ("/projections/nope", "projection_not_found"),
        ("/projections/nope/view/x", "projection_not_found"),
    ] {
        let (status, body) = get_json(&client, &server.url(url)).await;
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (StatusCode::NOT_FOUND, Some(code))
        );
    }
    let (status, body) = get_json(
        &client,
        &server.url("/projections/stream-stats/view/total?wait_for=1000&timeout_ms=100"),
    )
    .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (StatusCode::CONFLICT, Some("wait_timeout"))
    );
}

/// Counts per stream, as stream-stats must see them, from the raw log.
async fn stats_match_the_log(client: &reqwest::Client, server: &Server) -> u64 {
    let log = crate::common::get_ndjson(client, &server.url("/streams/$all")).await;
    let head = log.len() as u64;
    let (_, total) = document(client, server, "stream-stats", "total", head).await;
    assert_eq!(total["events"], head, "every event applied once: {total}");
    let mut counts = std::collections::BTreeMap::<String, u64>::new();
    for e in &log {
        *counts
            .entry(e["stream"].as_str().unwrap().to_owned())
            .or_default() += 1;
    }
    assert_eq!(total["streams"], counts.len() as u64);
    for (stream, count) in counts {
        let (_, stats) = document(
            client,
            server,
            "stream-stats",
            &format!("stream/{stream}"),
            head,
        )
        .await;
        assert_eq!(stats["events"], count, "{stream}");
    }
    head
}

#[tokio::test]
async fn restarts_mid_stream_apply_every_event_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let client = client();
    for round in 0..4u64 {
        let server = Server::start(dir.path());
        // Many small appends, so projections are mid-way when the server goes down.
        let writers: Vec<_> = (0..4)
            .map(|w| {
                let (client, url) = (
                    client.clone(),
                    server.url(&format!("/streams/s{round}-{w}")),
                );
                tokio::spawn(async move {
                    for n in 0..50 {
                        let events =
                            json!([{"type": "E", "data": {"n": n}}, {"type": "E", "data": {}}]);
                        let r = client.post(&url).json(&events).send().await.unwrap();
                        assert_eq!(r.status(), StatusCode::CREATED);
                    }
                })
            })
            .collect();
        for w in writers {
            w.await.unwrap();
        }
        if round % 2 == 0 {
            server.kill();
        } else {
            server.terminate();
        }
    }
    let server = Server::start(dir.path());
    assert_eq!(stats_match_the_log(&client, &server).await, 4 * 4 * 50 * 2);
}

#[tokio::test]
async fn hostile_projections_fault_alone() {
    // (event type, fault kind, how the fault's message begins (its reason), server flags)
    let cases = [
        ("Loop", "out_of_fuel", "the batch ran out of fuel", vec![]),
        (
            "Loop",
            "deadline",
            "the call ran past its deadline of 1s",
            vec![
                "--fuel-per-batch",
                "1000000000000000",
                "--guest-deadline",
                "1",
            ],
        ),
        (
            "Bomb",
            "memory",
            "the guest tried to grow its memory to",
            vec!["--guest-memory-mib", "64"],
        ),
        ("Panic", "trap", "wasm trap: wasm `unreachable`", vec![]),
        (
            "Sleep",
            "trap",
            "projections cannot wait on a clock",
            vec![],
        ),
        ("Refuse", "refused", "asked to refuse this event", vec![]),
        (
            "Flood",
            "writes",
            "the batch wrote more than 8388608 bytes",
            vec!["--guest-writes-mib", "8"],
        ),
    ];
    let runs: Vec<_> = cases
        .into_iter()
        .map(|(event_type, kind, message, flags)| {
            tokio::spawn(hostile_case(event_type, kind, message, flags))
        })
        .collect();
    for run in runs {
        run.await.unwrap();
    }
}

async fn hostile_case(
    event_type: &'static str,
    kind: &'static str,
    message: &'static str,
    flags: Vec<&'static str>,
) {
    let dir = tempfile::tempdir().unwrap();
    deploy(
        dir.path(),
        &[
            ("stream-stats", guest("stream_stats")),
            ("hostile", guest("hostile")),
            ("garbage", b"\0asm but not really".to_vec()),
        ],
    );
    // The cases run side by side on the test's one runtime thread: starting a server blocks
    // (it waits for the server to listen), so it must not hold that thread, or another case's
    // request that has connected but not yet sent its headers waits past the server's header
    // timeout and is closed.
    let data = dir.path().to_owned();
    let server = tokio::task::spawn_blocking(move || Server::start_with(&data, &flags))
        .await
        .unwrap();
    let client = client();
    // The bad event sits in the middle of one batch: the events before it are kept.
    let events = json!([
        {"type": "Fine", "data": {}},
        {"type": "Print", "data": "hello from the guest"},
        {"type": event_type, "data": {}},
        {"type": "Fine", "data": {}},
    ]);
    append(&client, &server, "hostile-1", None, &events).await;
    let status = status_until(&client, &server, "hostile", |s| s["state"] == "faulted").await;
    let error = &status["last_error"];
    assert_eq!(error["kind"], kind, "{event_type}: {status}");
    assert_eq!(error["position"], 3, "{status}");
    assert_eq!(error["stream"], "hostile-1");
    // The reason comes first and alone; the guest's frames, when it trapped, apart.
    let text = error["message"].as_str().unwrap();
    assert!(text.starts_with(message), "{event_type}: {status}");
    assert!(
        !text.contains("backtrace") && !text.contains('\n'),
        "{status}"
    );
    if kind != "refused" {
        let frames = error["backtrace"].as_str().unwrap_or_default();
        assert!(frames.contains("hostile.wasm!"), "{event_type}: {status}");
    }
    assert_eq!(
        status["position"], 2,
        "the events before the bad one are applied"
    );
    let (_, count) = document(&client, &server, "hostile", "count", 2).await;
    assert_eq!(count, 2);

    // Everything else keeps up with the log.
    for n in 0..20 {
        append(
            &client,
            &server,
            &format!("order-{n}"),
            None,
            &json!([{"type": "E", "data": {}}]),
        )
        .await;
    }
    stats_match_the_log(&client, &server).await;
    let (_, garbage) = get_json(&client, &server.url("/projections/garbage")).await;
    assert_eq!(garbage["state"], "invalid");
    assert!(
        garbage["load_error"]
            .as_str()
            .unwrap()
            .contains("not a valid"),
        "{garbage}"
    );
    let status = status_until(&client, &server, "hostile", |s| s["state"] == "faulted").await;
    assert_eq!(status["position"], 2, "still stopped at the bad event");
    let (health, _) = get_json(&client, &server.url("/health")).await;
    assert_eq!(health, StatusCode::OK);
}
