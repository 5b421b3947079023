//! Appends and reads of raw streams over HTTP, against the real server.

use crate::common::{Server, append, client, get_json, get_ndjson, order_placed};
use reqwest::StatusCode;
use serde_json::{Value, json};

fn positions(events: &Value) -> Vec<u64> {
    events
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["position"].as_u64().unwrap())
        .collect()
}

#[tokio::test]
async fn appended_events_read_back_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let client = client();
    let batch = json!([
        order_placed(1),
        {"type": "ItemAdded", "data": {"orderId": "1", "sku": "tea", "quantity": 2, "unitPriceCents": 450},
         "metadata": {"correlationId": "abc"}},
        {"type": "OrderShipped", "data": {"orderId": "1"}, "id": "0b6e4ad9-2f4a-4d9a-9a57-8a1cfd1e2d10"},
    ]);
    let (status, body) = append(&client, &server, "order-1", None, &batch).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["first_position"], 1);
    assert_eq!(body["last_position"], 3);
    assert_eq!(body["first_revision"], 0);
    assert_eq!(body["last_revision"], 2);
    assert_eq!(body["deduplicated"], false);
    assert_eq!(
        body["events"][2]["id"],
        "0b6e4ad9-2f4a-4d9a-9a57-8a1cfd1e2d10"
    );
    assert_eq!(body["events"][1]["position"], 2);

    let (status, page) = get_json(&client, &server.url("/streams/order-1")).await;
    assert_eq!(status, StatusCode::OK);
    let events = page["events"].as_array().unwrap();
    assert_eq!(events.len(), 3);
    assert_eq!(page["next"], Value::Null);
    for (i, e) in events.iter().enumerate() {
        assert_eq!(e["position"], i as u64 + 1);
        assert_eq!(e["revision"], i as u64);
        assert_eq!(e["stream"], "order-1");
        assert_eq!(e["type"], batch[i]["type"]);
        assert_eq!(e["data"], batch[i]["data"]);
        assert_eq!(e["id"], body["events"][i]["id"]);
        assert!(e["recorded_at"].as_u64().unwrap() > 1_700_000_000_000_000);
    }
    assert_eq!(events[0]["metadata"], Value::Null);
    assert_eq!(events[1]["metadata"], json!({"correlationId": "abc"}));

    // The whole log, backward, and NDJSON give the same events.
    let (_, all) = get_json(&client, &server.url("/streams/$all")).await;
    assert_eq!(all["events"], page["events"]);
    let (_, backward) = get_json(&client, &server.url("/streams/order-1?direction=backward")).await;
    assert_eq!(positions(&backward["events"]), vec![3, 2, 1]);
    let lines = get_ndjson(&client, &server.url("/streams/order-1")).await;
    assert_eq!(Value::Array(lines), page["events"]);
    let lines = get_ndjson(&client, &server.url("/streams/$all?from=2&limit=1")).await;
    assert_eq!(lines, vec![page["events"][1].clone()]);
}

#[tokio::test]
async fn pages_link_to_the_next_page() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let client = client();
    for order in 0..5 {
        let (status, _) = append(
            &client,
            &server,
            "order-7",
            None,
            &json!([order_placed(order)]),
        )
        .await;
        assert_eq!(status, StatusCode::CREATED);
    }
    let (status, _) = append(
        &client,
        &server,
        "weird%20name%2F%C3%A9",
        None,
        &json!([order_placed(9)]),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);

    let mut url = server.url("/streams/order-7?limit=2");
    let mut seen = Vec::new();
    loop {
        let (status, page) = get_json(&client, &url).await;
        assert_eq!(status, StatusCode::OK);
        seen.extend(
            page["events"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| e["revision"].as_u64().unwrap()),
        );
        match page["next"].as_str() {
            Some(next) => url = server.url(next),
            None => break,
        }
    }
    assert_eq!(seen, vec![0, 1, 2, 3, 4]);

    let (_, page) = get_json(
        &client,
        &server.url("/streams/order-7?from=3&direction=backward&limit=3"),
    )
    .await;
    assert_eq!(positions(&page["events"]), vec![4, 3, 2]);
    assert_eq!(
        page["next"],
        "/streams/order-7?from=0&limit=3&direction=backward"
    );

    // Names that need escaping survive the round trip through the next link.
    let (_, page) = get_json(
        &client,
        &server.url("/streams/weird%20name%2F%C3%A9?limit=1&from=0"),
    )
    .await;
    assert_eq!(page["events"][0]["stream"], "weird name/é");
    assert_eq!(page["next"], Value::Null);
    let (_, page) = get_json(&client, &server.url("/streams/$all?from=5&limit=1")).await;
    assert_eq!(
        page["next"],
        "/streams/$all?from=6&limit=1&direction=forward"
    );
}

#[tokio::test]
async fn expected_revisions_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let client = client();
    let one = json!([order_placed(1)]);
    let (status, body) = append(&client, &server, "order-1", Some("exists"), &one).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(body["error"]["code"], "wrong_expected_revision");
    assert_eq!(body["error"]["current_revision"], Value::Null);

    assert_eq!(
        append(&client, &server, "order-1", Some("no_stream"), &one)
            .await
            .0,
        StatusCode::CREATED
    );
    let (status, body) = append(&client, &server, "order-1", Some("no_stream"), &one).await;
    assert_eq!(
        (status, &body["error"]["current_revision"]),
        (StatusCode::CONFLICT, &json!(0))
    );
    assert_eq!(
        append(&client, &server, "order-1", Some("exists"), &one)
            .await
            .0,
        StatusCode::CREATED
    );
    assert_eq!(
        append(&client, &server, "order-1", Some("1"), &one).await.0,
        StatusCode::CREATED
    );
    let (status, body) = append(&client, &server, "order-1", Some("1"), &one).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(body["error"]["current_revision"], 2);
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("current revision is 2")
    );
    assert_eq!(
        append(&client, &server, "order-1", Some("any"), &one)
            .await
            .0,
        StatusCode::CREATED
    );
    let (status, body) = append(&client, &server, "order-1", Some("latest"), &one).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_expected_revision"))
    );

    let (_, page) = get_json(&client, &server.url("/streams/order-1")).await;
    assert_eq!(positions(&page["events"]), vec![1, 2, 3, 4]);
}

#[tokio::test]
async fn racing_writers_get_exactly_one_win_per_revision() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let client = client();
    let (writers, rounds) = (12, 8);
    for round in 0..rounds {
        let expected = if round == 0 {
            "no_stream".to_owned()
        } else {
            (round - 1).to_string()
        };
        let attempts = (0..writers).map(|w| {
            let (client, expected, url) = (
                client.clone(),
                expected.clone(),
                server.url("/streams/race-1"),
            );
            tokio::spawn(async move {
                let event = json!([{"type": "Claimed", "data": {"writer": w, "round": round}}]);
                let url = format!("{url}?expected_revision={expected}");
                client.post(url).json(&event).send().await.unwrap().status()
            })
        });
        let statuses: Vec<StatusCode> = futures_util::future::join_all(attempts)
            .await
            .into_iter()
            .map(Result::unwrap)
            .collect();
        let wins = statuses
            .iter()
            .filter(|s| **s == StatusCode::CREATED)
            .count();
        let conflicts = statuses
            .iter()
            .filter(|s| **s == StatusCode::CONFLICT)
            .count();
        assert_eq!(
            (wins, conflicts),
            (1, writers - 1),
            "round {round}: {statuses:?}"
        );
    }
    let (_, page) = get_json(&client, &server.url("/streams/race-1")).await;
    let rounds_seen: Vec<u64> = page["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["data"]["round"].as_u64().unwrap())
        .collect();
    assert_eq!(rounds_seen, (0..rounds).collect::<Vec<_>>());
}

#[tokio::test]
async fn a_retried_append_is_stored_once() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let client = client();
    let batch = json!([
        {"type": "OrderPlaced", "id": "6f1c1d2e-0000-4000-8000-000000000001", "data": {"orderId": "5"}},
        {"type": "ItemAdded", "id": "6f1c1d2e-0000-4000-8000-000000000002", "data": {"orderId": "5"}},
    ]);
    let (status, first) = append(&client, &server, "order-5", Some("no_stream"), &batch).await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, retry) = append(&client, &server, "order-5", Some("no_stream"), &batch).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(retry["deduplicated"], true);
    assert_eq!(retry["events"], first["events"]);

    let (status, body) = append(&client, &server, "order-6", None, &batch).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (StatusCode::CONFLICT, Some("event_id_conflict"))
    );
    let (_, all) = get_json(&client, &server.url("/streams/$all")).await;
    assert_eq!(positions(&all["events"]), vec![1, 2]);
}

#[tokio::test]
async fn categories_read_only_their_streams_in_log_order() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let client = client();
    for (stream, n) in [
        ("order-1", 2),
        ("user-1", 1),
        ("order-2", 3),
        ("order", 1),
        ("order-1", 1),
    ] {
        let events: Vec<Value> = (0..n).map(order_placed).collect();
        append(&client, &server, stream, None, &json!(events)).await;
    }
    let (status, page) = get_json(&client, &server.url("/streams/$ce-order")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(positions(&page["events"]), vec![1, 2, 4, 5, 6, 8]);
    let (_, page) = get_json(&client, &server.url("/streams/$ce-order?from=5&limit=2")).await;
    assert_eq!(positions(&page["events"]), vec![5, 6]);
    assert_eq!(
        page["next"],
        "/streams/$ce-order?from=8&limit=2&direction=forward"
    );
    let lines = get_ndjson(&client, &server.url("/streams/$ce-user")).await;
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0]["stream"], "user-1");
    let (status, body) = get_json(&client, &server.url("/streams/$ce-nothing")).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("stream_not_found"))
    );
}

async fn post_raw(
    client: &reqwest::Client,
    url: &str,
    content_type: Option<&str>,
    body: Vec<u8>,
) -> (StatusCode, Value) {
    let mut request = client.post(url).body(body);
    if let Some(ct) = content_type {
        request = request.header("content-type", ct);
    }
    let response = request.send().await.unwrap();
    let status = response.status();
    let text = response.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{status} {e}: {text:?}")),
    )
}

#[tokio::test]
async fn bad_input_gets_a_json_error_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let client = client();
    let url = server.url("/streams/order-1");
    let json_ct = Some("application/json");
    let big = "x".repeat(1024 * 1024 + 1);
    let many: Vec<Value> = (0..10_001)
        .map(|_| json!({"type": "T", "data": 1}))
        .collect();
    let huge = vec![b' '; 33 * 1024 * 1024];
    let cases = [
        BadInput::new("not JSON", json_ct, b"{oops".to_vec(), StatusCode::BAD_REQUEST, "malformed_json"),
        BadInput::new("an object", json_ct, br#"{"type":"T","data":{}}"#.to_vec(), StatusCode::BAD_REQUEST, "malformed_json"),
        BadInput::new("no type", json_ct, br#"[{"data":{}}]"#.to_vec(), StatusCode::BAD_REQUEST, "malformed_json"),
        BadInput::new("no data", json_ct, br#"[{"type":"T"}]"#.to_vec(), StatusCode::BAD_REQUEST, "malformed_json"),
        BadInput::new("unknown field", json_ct, br#"[{"type":"T","data":1,"dta":2}]"#.to_vec(), StatusCode::BAD_REQUEST, "malformed_json"),
        BadInput::new("bad id", json_ct, br#"[{"type":"T","data":1,"id":"nope"}]"#.to_vec(), StatusCode::BAD_REQUEST, "malformed_json"),
        BadInput::new("not UTF-8", json_ct, b"[{\"type\":\"\xff\",\"data\":1}]".to_vec(), StatusCode::BAD_REQUEST, "malformed_json"),
        BadInput::new("empty", json_ct, b"[]".to_vec(), StatusCode::BAD_REQUEST, "empty_append"),
        BadInput::new("empty type", json_ct, br#"[{"type":"","data":1}]"#.to_vec(), StatusCode::BAD_REQUEST, "invalid_event_type"),
        BadInput::new("repeated id", json_ct, br#"[{"type":"T","data":1,"id":"6f1c1d2e-0000-4000-8000-000000000001"},{"type":"T","data":1,"id":"6f1c1d2e-0000-4000-8000-000000000001"}]"#.to_vec(), StatusCode::BAD_REQUEST, "repeated_event_id"),
        BadInput::new("text/plain", Some("text/plain"), b"[]".to_vec(), StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type"),
        BadInput::new("no content type", None, b"[]".to_vec(), StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type"),
        BadInput::new("event too large", json_ct, serde_json::to_vec(&json!([{"type": "T", "data": big}])).unwrap(), StatusCode::PAYLOAD_TOO_LARGE, "too_large"),
        BadInput::new("too many events", json_ct, serde_json::to_vec(&many).unwrap(), StatusCode::PAYLOAD_TOO_LARGE, "too_large"),
        BadInput::new("body too large", json_ct, huge, StatusCode::PAYLOAD_TOO_LARGE, "too_large"),
    ];
    for BadInput {
        what,
        content_type,
        body,
        status,
        code,
    } in cases
    {
        // The server closes a connection whose body it refused unread; don't reuse it.
        let client = if status == StatusCode::PAYLOAD_TOO_LARGE {
            crate::common::client()
        } else {
            client.clone()
        };
        let (got, error) = post_raw(&client, &url, content_type, body).await;
        assert_eq!(
            (got, error["error"]["code"].as_str()),
            (status, Some(code)),
            "{what}: {error}"
        );
        assert!(
            !error["error"]["message"].as_str().unwrap().is_empty(),
            "{what}"
        );
    }

    let one = br#"[{"type":"T","data":1}]"#.to_vec();
    for (path, status, code) in [
        (
            "/streams/$all",
            StatusCode::BAD_REQUEST,
            "invalid_stream_name",
        ),
        (
            "/streams/$ce-order",
            StatusCode::BAD_REQUEST,
            "invalid_stream_name",
        ),
        (
            &format!("/streams/{}", "s".repeat(257)),
            StatusCode::BAD_REQUEST,
            "invalid_stream_name",
        ),
        (
            "/streams/order-1?expected_revision=-3",
            StatusCode::BAD_REQUEST,
            "invalid_expected_revision",
        ),
        ("/nowhere", StatusCode::NOT_FOUND, "not_found"),
    ] {
        let (got, error) = post_raw(&client, &server.url(path), json_ct, one.clone()).await;
        assert_eq!(
            (got, error["error"]["code"].as_str()),
            (status, Some(code)),
            "{path}"
        );
    }
    for (path, status, code) in [
        (
            "/streams/order-1",
            StatusCode::NOT_FOUND,
            "stream_not_found",
        ),
        (
            "/streams/$all?limit=abc",
            StatusCode::BAD_REQUEST,
            "invalid_query",
        ),
        (
            "/streams/$all?limit=0",
            StatusCode::BAD_REQUEST,
            "invalid_query",
        ),
        (
            "/streams/$all?limit=10001",
            StatusCode::BAD_REQUEST,
            "invalid_query",
        ),
        (
            "/streams/$all?direction=sideways",
            StatusCode::BAD_REQUEST,
            "invalid_query",
        ),
        (
            "/streams/$system",
            StatusCode::BAD_REQUEST,
            "invalid_stream_name",
        ),
        (
            "/streams/$ce-",
            StatusCode::BAD_REQUEST,
            "invalid_stream_name",
        ),
        ("/health/x", StatusCode::NOT_FOUND, "not_found"),
    ] {
        let (got, error) = get_json(&client, &server.url(path)).await;
        assert_eq!(
            (got, error["error"]["code"].as_str()),
            (status, Some(code)),
            "{path}"
        );
    }
    let response = client
        .delete(server.url("/streams/order-1"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
    let error: Value = response.json().await.unwrap();
    assert_eq!(error["error"]["code"], "method_not_allowed");

    let (_, health) = get_json(&client, &server.url("/health")).await;
    assert_eq!(health, json!({"status": "ok", "head": 0}));
}

#[tokio::test]
async fn a_restart_keeps_everything() {
    let dir = tempfile::tempdir().unwrap();
    let client = client();
    let server = Server::start(dir.path());
    for order in 0..20 {
        let stream = format!("order-{}", order % 3);
        let (status, _) = append(
            &client,
            &server,
            &stream,
            None,
            &json!([order_placed(order)]),
        )
        .await;
        assert_eq!(status, StatusCode::CREATED);
    }
    let before = get_ndjson(&client, &server.url("/streams/$all")).await;
    server.terminate();

    let server = Server::start(dir.path());
    let after = get_ndjson(&client, &server.url("/streams/$all")).await;
    assert_eq!(after, before);
    let (_, health) = get_json(&client, &server.url("/health")).await;
    assert_eq!(health["head"], 20);
    let (status, body) = append(
        &client,
        &server,
        "order-0",
        Some("6"),
        &json!([order_placed(99)]),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(
        (
            body["first_position"].as_u64(),
            body["first_revision"].as_u64()
        ),
        (Some(21), Some(7))
    );
    server.terminate();
}

/// One malformed append and the answer it must get.
struct BadInput {
    what: &'static str,
    content_type: Option<&'static str>,
    body: Vec<u8>,
    status: StatusCode,
    code: &'static str,
}

impl BadInput {
    fn new(
        what: &'static str,
        content_type: Option<&'static str>,
        body: Vec<u8>,
        status: StatusCode,
        code: &'static str,
    ) -> Self {
        BadInput {
            what,
            content_type,
            body,
            status,
            code,
        }
    }
}

/// `--http-threads 2`: connections served on connection threads behave as on the main
/// runtime: concurrent appends on many connections are all durable, gap-free and read back,
/// a live subscription (a task on its connection's thread) follows them, and a clean
/// shutdown keeps every acknowledged event.
#[tokio::test]
async fn connection_threads_serve_appends_reads_and_live_subscriptions() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_with(dir.path(), &["--http-threads", "2"]);
    let mut sse = crate::common::Sse::connect(&server.url("/streams/$all/live?from=1"), None).await;
    let (clients, each) = (8u64, 25u64);
    let tasks: Vec<_> = (0..clients)
        .map(|c| {
            let url = server.url(&format!("/streams/order-{c}"));
            tokio::spawn(async move {
                // A client of its own: its own connection, placed on a thread of its own.
                let client = client();
                for n in 0..each {
                    let response = client
                        .post(&url)
                        .json(&json!([order_placed(c * 1000 + n)]))
                        .send()
                        .await
                        .unwrap();
                    assert_eq!(response.status(), StatusCode::CREATED);
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    let total = clients * each;
    let all = get_ndjson(&client(), &server.url("/streams/$all")).await;
    let positions: Vec<u64> = all
        .iter()
        .map(|e| e["position"].as_u64().unwrap())
        .collect();
    assert_eq!(
        positions,
        (1..=total).collect::<Vec<_>>(),
        "gap-free, every append"
    );
    let mut live = Vec::new();
    while (live.len() as u64) < total {
        let event = sse
            .next(std::time::Duration::from_secs(10))
            .await
            .expect("the live subscription follows every append");
        if event.id > 0 {
            live.push(event.id);
        }
    }
    assert_eq!(live, (1..=total).collect::<Vec<_>>());
    drop(sse);
    server.terminate();
    let server = Server::start_with(dir.path(), &["--http-threads", "2"]);
    let again = get_ndjson(&client(), &server.url("/streams/$all")).await;
    assert_eq!(
        again.len() as u64,
        total,
        "nothing acknowledged lost over a restart"
    );
}
