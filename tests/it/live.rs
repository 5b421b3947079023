//! Live subscriptions over Server-Sent Events: catch-up, live follow, resume, heart-beats.

use std::time::Duration;

use crate::common::{Server, Sse, append, client, order_placed};
use reqwest::StatusCode;
use serde_json::{Value, json};

const QUIET: Duration = Duration::from_millis(400);
const WAIT: Duration = Duration::from_secs(10);

fn ids(events: &[crate::common::SseEvent]) -> Vec<u64> {
    events.iter().map(|e| e.id).collect()
}

async fn append_orders(
    client: &reqwest::Client,
    server: &Server,
    stream: &str,
    orders: std::ops::Range<u64>,
) {
    let events: Vec<Value> = orders.map(order_placed).collect();
    let (status, body) = append(client, server, stream, None, &json!(events)).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
}

#[tokio::test]
async fn catch_up_then_live_then_resume_without_loss_or_duplicates() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let client = client();
    append_orders(&client, &server, "order-1", 0..3).await;

    let mut sse = Sse::connect(&server.url("/streams/$all/live?from=1"), None).await;
    let caught_up = sse.drain(QUIET).await;
    assert_eq!(ids(&caught_up), vec![1, 2, 3]);
    assert_eq!(caught_up[0].data["stream"], "order-1");
    assert_eq!(caught_up[2].data["data"], order_placed(2)["data"]);

    append_orders(&client, &server, "order-2", 3..5).await;
    let live = sse.drain(QUIET).await;
    assert_eq!(ids(&live), vec![4, 5]);
    drop(sse);

    // Written while the client was away: a reconnect with its last id gets exactly these.
    append_orders(&client, &server, "order-1", 5..7).await;
    let mut sse = Sse::connect(&server.url("/streams/$all/live?from=1"), Some(5)).await;
    assert_eq!(ids(&sse.drain(QUIET).await), vec![6, 7]);
    append_orders(&client, &server, "user-1", 7..8).await;
    let next = sse.next(WAIT).await.expect("a live event");
    assert_eq!((next.id, next.data["stream"].as_str()), (8, Some("user-1")));
    assert!(sse.next(QUIET).await.is_none());
}

#[tokio::test]
async fn stream_and_category_subscriptions_see_only_their_events() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let client = client();
    append_orders(&client, &server, "order-1", 0..2).await; // positions 1, 2
    let mut stream = Sse::connect(&server.url("/streams/order-1/live?from=1"), None).await;
    let mut category = Sse::connect(&server.url("/streams/$ce-order/live?from=0"), None).await;

    append_orders(&client, &server, "user-1", 0..1).await; // 3
    append_orders(&client, &server, "order-2", 0..1).await; // 4
    append_orders(&client, &server, "order-1", 2..3).await; // 5

    let seen = stream.drain(QUIET).await;
    assert_eq!(ids(&seen), vec![2, 5]);
    let revisions: Vec<u64> = seen
        .iter()
        .map(|e| e.data["revision"].as_u64().unwrap())
        .collect();
    assert_eq!(revisions, vec![1, 2]);
    assert_eq!(ids(&category.drain(QUIET).await), vec![1, 2, 4, 5]);

    // A stream subscription resumes from the position of its last event.
    drop(stream);
    append_orders(&client, &server, "order-1", 3..4).await; // 6
    let mut stream = Sse::connect(&server.url("/streams/order-1/live"), Some(2)).await;
    assert_eq!(ids(&stream.drain(QUIET).await), vec![5, 6]);

    // An id that is not an event of this stream cannot be resumed from.
    let response = client
        .get(server.url("/streams/order-1/live"))
        .header("last-event-id", "3")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let error: Value = response.json().await.unwrap();
    assert_eq!(error["error"]["code"], "invalid_last_event_id");
}

#[tokio::test]
async fn without_a_start_only_new_events_arrive() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let client = client();
    append_orders(&client, &server, "order-1", 0..3).await;
    let mut all = Sse::connect(&server.url("/streams/$all/live"), None).await;
    let mut stream = Sse::connect(&server.url("/streams/order-1/live"), None).await;
    let mut fresh = Sse::connect(&server.url("/streams/order-9/live"), None).await;
    assert!(all.next(QUIET).await.is_none());
    append_orders(&client, &server, "order-1", 3..4).await;
    append_orders(&client, &server, "order-9", 0..1).await;
    assert_eq!(ids(&all.drain(QUIET).await), vec![4, 5]);
    assert_eq!(ids(&stream.drain(QUIET).await), vec![4]);
    assert_eq!(ids(&fresh.drain(QUIET).await), vec![5]);
}

#[tokio::test]
async fn idle_subscriptions_get_heartbeats() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path()); // keep-alive every second
    let mut sse = Sse::connect(&server.url("/streams/$all/live"), None).await;
    assert!(sse.next(Duration::from_millis(2500)).await.is_none());
    assert!(sse.comments >= 1, "no keep-alive comment in 2.5 s");
}

#[tokio::test]
async fn a_large_catch_up_arrives_complete_and_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let client = client();
    for chunk in 0..5 {
        append_orders(
            &client,
            &server,
            &format!("order-{chunk}"),
            chunk * 1000..(chunk + 1) * 1000,
        )
        .await;
    }
    let mut sse = Sse::connect(&server.url("/streams/$all/live?from=1"), None).await;
    let mut seen = Vec::new();
    while seen.len() < 5000 {
        seen.push(sse.next(WAIT).await.expect("catch-up stalled").id);
    }
    assert_eq!(seen, (1..=5000).collect::<Vec<_>>());
}

#[tokio::test]
async fn shutdown_ends_open_subscriptions() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let mut sse = Sse::connect(&server.url("/streams/$all/live?from=0"), None).await;
    assert!(sse.next(QUIET).await.is_none());
    let stopped = tokio::task::spawn_blocking(move || server.terminate());
    tokio::time::timeout(WAIT, stopped)
        .await
        .expect("the server did not stop with a subscriber connected")
        .unwrap();
}
