//! Careless and hostile requests: each case a test named for it. Nothing acknowledged is lost
//! and no answer is a 500.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::common::{
    Server, append, client, get_json, guest, log_events, order_placed, poll_projection,
    status_until,
};

#[tokio::test]
async fn page_route_takes_wait_for_and_timeout_ms() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let client = client();
    let (_, body) = append(&client, &server, "order-1", None, &json!([order_placed(1)])).await;
    let head = body["last_position"].as_u64().unwrap();
    let (status, page) = get_json(
        &client,
        &server.url(&format!(
            "/projections/order-summary/view?prefix=order/&wait_for={head}&timeout_ms=20000"
        )),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert_eq!(page["documents"][0]["key"], "order/1");
    assert!(page["position"].as_u64().unwrap() >= head);
    // A position never reached times out as on the document route.
    let (status, body) = get_json(
        &client,
        &server.url("/projections/order-summary/view?prefix=order/&wait_for=999&timeout_ms=100"),
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
}

#[tokio::test]
async fn expected_revision_u64_max_on_an_empty_stream_is_a_conflict() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let client = client();
    let (status, body) = append(
        &client,
        &server,
        "order-1",
        Some("18446744073709551615"),
        &json!([order_placed(1)]),
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["error"]["code"], "wrong_expected_revision");
    assert!(log_events(&client, &server).await.is_empty());
}

#[tokio::test]
async fn last_event_id_u64_max_on_all_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let client = client();
    append(&client, &server, "order-1", None, &json!([order_placed(1)])).await;
    let response = client
        .get(server.url("/streams/$all/live"))
        .header("last-event-id", "18446744073709551615")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "invalid_last_event_id", "{body}");
}

#[tokio::test]
async fn eight_concurrent_puts_of_one_name_all_succeed_and_the_last_wins() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let client = client();
    // Eight different bodies: the same component with a custom section naming each.
    let base = guest("stream_stats");
    let bodies: Vec<Vec<u8>> = (0..8u8)
        .map(|n| {
            let mut wasm = base.clone();
            // A custom section (id 0): size, name length, name, payload.
            wasm.extend_from_slice(&[0, 3, 1, b'n', n]);
            wasm
        })
        .collect();
    let puts = bodies.iter().map(|body| {
        client
            .put(server.url("/projections/race"))
            .body(body.clone())
            .send()
    });
    let answers = futures_util::future::join_all(puts).await;
    for answer in answers {
        let answer = answer.unwrap();
        assert_eq!(answer.status(), StatusCode::ACCEPTED);
    }
    let file = std::fs::read(dir.path().join("deploy/race.wasm")).unwrap();
    assert!(
        bodies.contains(&file),
        "the file is one of the bodies, whole"
    );
    let leftovers: Vec<_> = std::fs::read_dir(dir.path().join("deploy"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".partial"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    poll_projection(
        &client,
        &server,
        "race",
        std::time::Duration::from_secs(60),
        |s, body| s == StatusCode::OK && body["state"] == "caught_up",
    )
    .await;
}

#[tokio::test]
async fn a_document_that_is_not_json_is_named_on_its_page_instead_of_a_500() {
    let dir = tempfile::tempdir().unwrap();
    crate::common::deploy(dir.path(), &[("hostile", guest("hostile"))]);
    let server = Server::start(dir.path());
    let client = client();
    let (_, body) = append(
        &client,
        &server,
        "hostile-1",
        None,
        &json!([{"type": "Garbage", "data": {}}]),
    )
    .await;
    let head = body["last_position"].as_u64().unwrap();
    status_until(&client, &server, "hostile", |s| {
        s["position"].as_u64() >= Some(head)
    })
    .await;
    let (status, page) = get_json(&client, &server.url("/projections/hostile/view")).await;
    assert_eq!(status, StatusCode::OK, "{page}");
    let documents = page["documents"].as_array().unwrap();
    let count = documents.iter().find(|d| d["key"] == "count").unwrap();
    assert_eq!(count["value"], 1);
    let garbage = documents
        .iter()
        .find(|d| d["key"] == "garbage")
        .unwrap_or_else(|| panic!("{page}"));
    assert_eq!(garbage["error"]["code"], "not_json", "{garbage}");
}

#[tokio::test]
async fn data_nested_deeper_than_100_levels_is_refused_with_400() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let client = client();
    let nested = |depth: usize| format!("{}{}", "[".repeat(depth), "]".repeat(depth));
    let body = |depth: usize| format!(r#"[{{"type":"Deep","data":{}}}]"#, nested(depth));
    let send = |depth: usize| {
        client
            .post(server.url("/streams/deep-1"))
            .header("content-type", "application/json")
            .body(body(depth))
            .send()
    };
    let refused = send(100_000).await.unwrap();
    assert_eq!(refused.status(), StatusCode::BAD_REQUEST);
    let error: Value = refused.json().await.unwrap();
    assert_eq!(error["error"]["code"], "json_too_deep", "{error}");
    assert_eq!(send(101).await.unwrap().status(), StatusCode::BAD_REQUEST);
    assert_eq!(send(100).await.unwrap().status(), StatusCode::CREATED);
    assert_eq!(log_events(&client, &server).await.len(), 1);
}
