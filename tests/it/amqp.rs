//! RabbitMQ against the real broker on 127.0.0.1:5672: ingest in order with acks, dead
//! letters with their reasons, request/reply, and a fanout consumer that sees every event in
//! position order across a SIGKILL of the server and a forced close of its connection.
//!
//! Every test uses queues and exchanges of its own (unique names), so they run in parallel.

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions,
    ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::common::{Server, append, client, get_json, get_ndjson};

const BROKER: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

struct Names {
    ingest: String,
    fanout: String,
    dead: String,
}

impl Names {
    /// Deletes what the server declared, so that runs leave nothing on the broker.
    async fn clean(&self, ch: &Channel) {
        for queue in [&self.ingest, &self.dead] {
            let _ = ch
                .queue_delete(queue.as_str().into(), Default::default())
                .await;
        }
        for exchange in [&self.fanout, &self.dead] {
            let _ = ch
                .exchange_delete(exchange.as_str().into(), Default::default())
                .await;
        }
    }
}

fn names() -> Names {
    let tag = uuid::Uuid::now_v7().simple().to_string();
    Names {
        ingest: format!("test.{tag}.append"),
        fanout: format!("test.{tag}.events"),
        dead: format!("test.{tag}.dead"),
    }
}

fn start(dir: &std::path::Path, n: &Names) -> Server {
    Server::start_with(
        dir,
        &[
            "--amqp",
            BROKER,
            "--amqp-ingest-queue",
            &n.ingest,
            "--amqp-fanout-exchange",
            &n.fanout,
            "--amqp-dead-exchange",
            &n.dead,
        ],
    )
}

async fn channel() -> (Connection, Channel) {
    let connection = Connection::connect(BROKER, ConnectionProperties::default())
        .await
        .expect("RabbitMQ on 127.0.0.1:5672 (guest/guest)");
    let channel = connection.create_channel().await.unwrap();
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    (connection, channel)
}

fn durable() -> QueueDeclareOptions {
    QueueDeclareOptions {
        durable: true,
        ..Default::default()
    }
}

/// A queue of the test's own bound to the server's fanout exchange (declared the same way).
async fn bind_to_fanout(ch: &Channel, exchange: &str) -> lapin::Consumer {
    ch.exchange_declare(
        exchange.into(),
        ExchangeKind::Fanout,
        ExchangeDeclareOptions {
            durable: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .unwrap();
    // Exclusive: gone with the test's connection.
    let queue = format!("{exchange}.listener");
    let exclusive = QueueDeclareOptions {
        exclusive: true,
        ..Default::default()
    };
    ch.queue_declare(queue.as_str().into(), exclusive, FieldTable::default())
        .await
        .unwrap();
    ch.queue_bind(
        queue.as_str().into(),
        exchange.into(),
        "".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    ch.basic_consume(
        queue.as_str().into(),
        "listener".into(),
        BasicConsumeOptions {
            no_ack: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .unwrap()
}

/// How many messages wait on `queue` (a passive declare: the queue must exist).
async fn message_count(ch: &Channel, queue: &str) -> u32 {
    let options = QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    ch.queue_declare(queue.into(), options, FieldTable::default())
        .await
        .unwrap()
        .message_count()
}

async fn publish(ch: &Channel, queue: &str, body: &[u8], properties: BasicProperties) {
    let confirm = ch
        .basic_publish(
            "".into(),
            queue.into(),
            BasicPublishOptions::default(),
            body,
            properties.with_delivery_mode(2),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    assert!(confirm.is_ack());
}

fn header(d: &lapin::message::Delivery, name: &str) -> Option<String> {
    match d.properties.headers().as_ref()?.inner().get(name)? {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::LongLongInt(n) => Some(n.to_string()),
        other => Some(format!("{other:?}")),
    }
}

async fn next(consumer: &mut lapin::Consumer, wait: Duration) -> lapin::message::Delivery {
    tokio::time::timeout(wait, consumer.next())
        .await
        .expect("a message within the wait")
        .unwrap()
        .unwrap()
}

#[tokio::test]
async fn ingest_appends_in_order_dead_letters_and_replies() {
    let n = names();
    let dir = tempfile::tempdir().unwrap();
    let (_conn, ch) = channel().await;
    ch.queue_declare(n.ingest.as_str().into(), durable(), FieldTable::default())
        .await
        .unwrap();
    let s = start(dir.path(), &n);
    let c = client();

    // 10,000 messages, published without waiting for each confirm.
    let mut confirms = Vec::new();
    for i in 0..10_000 {
        let body = json!({"stream": "ingest-1", "type": "Counted", "data": {"n": i}});
        confirms.push(
            ch.basic_publish(
                "".into(),
                n.ingest.as_str().into(),
                BasicPublishOptions::default(),
                body.to_string().as_bytes(),
                BasicProperties::default().with_delivery_mode(2),
            )
            .await
            .unwrap(),
        );
    }
    for confirm in confirms {
        assert!(confirm.await.unwrap().is_ack());
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    let events = loop {
        let events = get_ndjson(&c, &s.url("/streams/ingest-1?limit=20000&format=ndjson")).await;
        if events.len() == 10_000 {
            break events;
        }
        assert!(
            Instant::now() < deadline,
            "{} of 10000 ingested",
            events.len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    for (i, e) in events.iter().enumerate() {
        assert_eq!(e["data"]["n"], i, "in the queue's order");
        assert_eq!(e["position"], i + 1);
    }
    // Every message was acknowledged: none is left on the queue.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if message_count(&ch, &n.ingest).await == 0 {
            break;
        }
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Messages that can never succeed go to the dead-letter queue with the reason.
    let mut dead = ch
        .basic_consume(
            n.dead.as_str().into(),
            "dead".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let bad: [(&[u8], &str); 4] = [
        (b"not json", "malformed_json"),
        (br#"{"stream": "x-1", "type": "T"}"#, "malformed_json"),
        (br#"{"stream": "$bad", "type": "T", "data": {}}"#, "invalid_stream_name"),
        (
            br#"{"stream": "ingest-1", "expected_revision": 5, "events": [{"type": "T", "data": {}}]}"#,
            "wrong_expected_revision",
        ),
    ];
    for (body, _) in &bad {
        publish(&ch, &n.ingest, body, BasicProperties::default()).await;
    }
    for (body, code) in &bad {
        let d = next(&mut dead, Duration::from_secs(20)).await;
        assert_eq!(&d.data, body);
        assert_eq!(header(&d, "x-error-code").as_deref(), Some(*code));
        assert!(!header(&d, "x-error-message").unwrap().is_empty());
        d.ack(BasicAckOptions::default()).await.unwrap();
    }

    // Request/reply: the append's answer (or its error) goes to reply_to.
    let reply = ch
        .queue_declare(
            "".into(),
            QueueDeclareOptions {
                exclusive: true,
                auto_delete: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    let mut replies = ch
        .basic_consume(
            reply.name().clone(),
            "replies".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    let ask = |body: Value, id: &str| {
        BasicProperties::default()
            .with_reply_to(reply.name().clone())
            .with_correlation_id(id.into())
            .with_content_type(body.to_string().into())
    };
    let good = json!({"stream": "reply-1", "events": [{"type": "A", "data": {}}, {"type": "B", "data": {}}]});
    publish(
        &ch,
        &n.ingest,
        good.to_string().as_bytes(),
        ask(good.clone(), "one"),
    )
    .await;
    let conflict =
        json!({"stream": "reply-1", "expected_revision": "no_stream", "type": "C", "data": {}});
    publish(
        &ch,
        &n.ingest,
        conflict.to_string().as_bytes(),
        ask(conflict.clone(), "two"),
    )
    .await;
    let first = next(&mut replies, Duration::from_secs(20)).await;
    assert_eq!(
        first.properties.correlation_id().as_ref().unwrap().as_str(),
        "one"
    );
    let answer: Value = serde_json::from_slice(&first.data).unwrap();
    assert_eq!(
        (
            answer["first_position"].as_u64(),
            answer["last_revision"].as_u64()
        ),
        (Some(10_001), Some(1)),
        "{answer}"
    );
    let second = next(&mut replies, Duration::from_secs(20)).await;
    assert_eq!(
        second
            .properties
            .correlation_id()
            .as_ref()
            .unwrap()
            .as_str(),
        "two"
    );
    let answer: Value = serde_json::from_slice(&second.data).unwrap();
    assert_eq!(
        answer["error"]["code"], "wrong_expected_revision",
        "{answer}"
    );
    drop(s);
    n.clean(&ch).await;
}

/// Positions received, checked as they come: in order, no gap; a position seen before is
/// allowed only as part of a replay that starts at or before the last seen and runs on.
struct Seen {
    last: u64,
    duplicates: usize,
}

impl Seen {
    fn take(&mut self, d: &lapin::message::Delivery) {
        let position: u64 = header(d, "position").unwrap().parse().unwrap();
        let body: Value = serde_json::from_slice(&d.data).unwrap();
        assert_eq!(body["position"], position);
        assert_eq!(
            d.properties.message_id().as_ref().unwrap().as_str(),
            body["id"].as_str().unwrap()
        );
        assert_eq!(header(d, "stream").as_deref(), body["stream"].as_str());
        assert_eq!(header(d, "type").as_deref(), body["type"].as_str());
        if position <= self.last {
            self.duplicates += 1;
        } else {
            assert_eq!(position, self.last + 1, "a gap after {}", self.last);
            self.last = position;
        }
    }

    async fn until(&mut self, consumer: &mut lapin::Consumer, last: u64) {
        while self.last < last {
            let d = next(consumer, Duration::from_secs(60)).await;
            self.take(&d);
        }
    }
}

async fn append_many(c: &reqwest::Client, s: &Server, stream: &str, count: usize) {
    for chunk in 0..count / 100 {
        let events: Vec<Value> = (0..100)
            .map(|i| json!({"type": "T", "data": {"i": chunk * 100 + i}}))
            .collect();
        let (code, body) = append(c, s, stream, None, &Value::Array(events)).await;
        assert_eq!(code, StatusCode::CREATED, "{body}");
    }
}

/// The server's connection, found by the name it gives itself, closed by the broker.
fn close_server_connection(pid: i32) {
    let out = std::process::Command::new("rabbitmqctl")
        .args(["list_connections", "pid", "client_properties", "-q"])
        .output()
        .expect("rabbitmqctl");
    let listing = String::from_utf8_lossy(&out.stdout);
    let line = listing
        .lines()
        .find(|l| l.contains(&format!("projector/{pid}\"")))
        .unwrap_or_else(|| panic!("no connection of server {pid} in {listing}"));
    let connection = line.split('\t').next().unwrap();
    let status = std::process::Command::new("rabbitmqctl")
        .args(["close_connection", connection, "closed by the test"])
        .status()
        .unwrap();
    assert!(status.success());
}

async fn broker_state(c: &reqwest::Client, s: &Server) -> Value {
    get_json(c, &s.url("/health")).await.1["amqp"].clone()
}

#[tokio::test]
async fn fanout_is_in_order_across_a_kill_and_a_closed_connection() {
    let n = names();
    let dir = tempfile::tempdir().unwrap();
    let (_conn, ch) = channel().await;
    let mut listener = bind_to_fanout(&ch, &n.fanout).await;
    let c = client();
    let mut seen = Seen {
        last: 0,
        duplicates: 0,
    };

    let s = start(dir.path(), &n);
    append_many(&c, &s, "fan-1", 2000).await;
    seen.until(&mut listener, 2000).await;

    // SIGKILL with appends just committed: what was not confirmed and marked goes again.
    append_many(&c, &s, "fan-2", 500).await;
    s.kill();
    let s = start(dir.path(), &n);
    append_many(&c, &s, "fan-3", 1000).await;
    seen.until(&mut listener, 3500).await;

    // The broker closes the server's connection: it reconnects and publishes on from its mark.
    close_server_connection(s.pid());
    append_many(&c, &s, "fan-4", 1000).await;
    seen.until(&mut listener, 4500).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let state = broker_state(&c, &s).await;
        if state["state"] == "connected" && state["fanout_lag"] == 0 {
            assert_eq!(state["fanout_position"], 4500);
            break;
        }
        assert!(Instant::now() < deadline, "{state}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!(
        "fanout: {} duplicates at the restart and the reconnect",
        seen.duplicates
    );
    drop(s);
    n.clean(&ch).await;
}

#[tokio::test]
async fn the_server_serves_on_while_the_broker_is_unreachable() {
    let n = names();
    let dir = tempfile::tempdir().unwrap();
    // Nothing listens on port 1: the broker stays down.
    let s = Server::start_with(
        dir.path(),
        &[
            "--amqp",
            "amqp://guest:guest@127.0.0.1:1/%2f",
            "--amqp-ingest-queue",
            &n.ingest,
        ],
    );
    let c = client();
    let (code, _) = append(&c, &s, "a-1", None, &json!([{"type": "T", "data": {}}])).await;
    assert_eq!(code, StatusCode::CREATED);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let state = broker_state(&c, &s).await;
        if state["state"] == "down" {
            assert_eq!(state["fanout_lag"], 1);
            assert!(!state["reason"].as_str().unwrap().is_empty());
            break;
        }
        assert!(Instant::now() < deadline, "{state}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Reads go on, and `projector status` says where the broker is.
    let (code, _) = get_json(&c, &s.url("/streams/a-1")).await;
    assert_eq!(code, StatusCode::OK);
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_projector"))
        .args(["status", "--server", &s.base])
        .output()
        .unwrap();
    let out = crate::common::stdout(&status);
    assert!(
        out.contains("AMQP broker: down") && out.contains("(lag 1)"),
        "{out}"
    );
}

#[tokio::test]
async fn a_passing_failure_requeues_and_the_message_lands_once() {
    let n = names();
    let dir = tempfile::tempdir().unwrap();
    let (_conn, ch) = channel().await;
    ch.queue_declare(n.ingest.as_str().into(), durable(), FieldTable::default())
        .await
        .unwrap();
    let s = start(dir.path(), &n);
    let c = client();
    // The disk is full: the append is refused with 507, which may pass, so the message goes
    // back to the queue rather than to the dead letters.
    crate::common::failpoint(&c, &s, "log-commit", "return(enospc)").await;
    let body = json!({"stream": "full-1", "type": "T", "data": {"n": 1}});
    publish(
        &ch,
        &n.ingest,
        body.to_string().as_bytes(),
        BasicProperties::default(),
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while get_json(&c, &s.url("/health")).await.1["status"] != "degraded" {
        assert!(Instant::now() < deadline, "the full disk was never hit");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Degraded: the message's append was answered 507, so it is on its way back to the queue.
    crate::common::clear_failpoint(&c, &s, "log-commit").await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        // 404 until it lands (and a moment of 503 while the log reopens after the failure).
        let (code, page) = get_json(&c, &s.url("/streams/full-1")).await;
        if code == StatusCode::OK {
            assert_eq!(page["events"].as_array().unwrap().len(), 1, "appended once");
            break;
        }
        assert!(Instant::now() < deadline, "the message never landed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        message_count(&ch, &n.dead).await,
        0,
        "nothing was dead-lettered"
    );
    drop(s);
    n.clean(&ch).await;
}
