//! RabbitMQ throughput against the broker on 127.0.0.1:5672, which shares this machine's
//! cores with the server and the bench:
//!
//! - ingest: `BENCH_EVENTS` (100,000) one-event messages are queued first, then a release
//!   server (without fanout) is started on the queue; events/s from its first append to its
//!   last;
//! - fanout: a server over the same log with a fresh fanout exchange (and no ingest)
//!   publishes the whole log from position 0; events/s from the first round confirmed until
//!   every event is confirmed and marked, with a classic durable queue, a stream queue, or
//!   nothing bound to the exchange (the classic queue must then hold them all).
//!
//! Each prints the broker's share of the wall time in CPU (the Erlang VM, `beam.smp`), and
//! the server's. `BENCH_RUNS` (3) runs of each.

mod support;

use std::time::{Duration, Instant};

use lapin::options::{
    BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions,
    QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};
use serde_json::Value;

use support::{Server, cpu_time, env_number, median};

const BROKER: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// The broker's process: the Erlang VM.
fn broker_pid() -> u32 {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .find(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|c| c.trim() == "beam.smp")
        })
        .expect("RabbitMQ's beam.smp is running")
}

async fn health(http: &reqwest::Client, server: &Server) -> Value {
    http.get(format!("{}/health", server.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

fn durable() -> QueueDeclareOptions {
    QueueDeclareOptions {
        durable: true,
        ..Default::default()
    }
}

async fn queue_events(ch: &Channel, queue: &str, events: u64) {
    ch.queue_declare(queue.into(), durable(), FieldTable::default())
        .await
        .unwrap();
    let mut confirms = Vec::with_capacity(events as usize);
    for i in 0..events {
        let body = format!(
            r#"{{"stream":"account-{}","type":"Deposited","data":{{"amount":{i}}}}}"#,
            i % 1000
        );
        confirms.push(
            ch.basic_publish(
                "".into(),
                queue.into(),
                BasicPublishOptions::default(),
                body.as_bytes(),
                BasicProperties::default().with_delivery_mode(2),
            )
            .await
            .unwrap(),
        );
    }
    for c in confirms {
        assert!(c.await.unwrap().is_ack());
    }
}

struct Figure {
    rate: f64,
    broker_cpu: f64,
    server_cpu: f64,
}

fn args<'a>(queue: &'a str, exchange: &'a str, dead: &'a str) -> [&'a str; 8] {
    [
        "--amqp",
        BROKER,
        "--amqp-ingest-queue",
        queue,
        "--amqp-fanout-exchange",
        exchange,
        "--amqp-dead-exchange",
        dead,
    ]
}

/// What listens on the fanout exchange: a classic durable queue (one Erlang process, bound to
/// one core), a stream queue, or nothing (the broker drops the messages after routing).
const LISTENERS: [&str; 3] = ["classic queue", "stream queue", "nothing"];

/// One fanout of the whole log to a fresh exchange, timed from the server's start until every
/// event is confirmed and marked.
async fn fanout_once(
    ch: &Channel,
    http: &reqwest::Client,
    broker: u32,
    data: &std::path::Path,
    (exchange, dead): (&str, &str),
    (listener, kind): (&str, &str),
    events: u64,
) -> Figure {
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
    if kind != "nothing" {
        let mut arguments = FieldTable::default();
        if kind == "stream queue" {
            arguments.insert(
                "x-queue-type".into(),
                lapin::types::AMQPValue::LongString("stream".into()),
            );
        }
        ch.queue_declare(listener.into(), durable(), arguments)
            .await
            .unwrap();
        ch.queue_bind(
            listener.into(),
            exchange.into(),
            "".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    }
    // Fanout alone (no ingest), from the first round confirmed to the last.
    let server = Server::start_with(data, &args("", exchange, dead));
    let (mut first, mut started) = (None, None);
    loop {
        let amqp = health(http, &server).await["amqp"].clone();
        let position = amqp["fanout_position"].as_u64().unwrap_or(0);
        if first.is_none() && position > 0 {
            first = Some(position);
            started = Some((Instant::now(), cpu_time(broker), server.cpu_time()));
        }
        if position >= events {
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let (t0, b0, s0) = started.unwrap();
    let wall = t0.elapsed().as_secs_f64();
    let figure = Figure {
        rate: (events - first.unwrap()) as f64 / wall,
        broker_cpu: (cpu_time(broker) - b0).as_secs_f64() / wall,
        server_cpu: (server.cpu_time() - s0).as_secs_f64() / wall,
    };
    drop(server);
    if kind == "classic queue" {
        let held = ch
            .queue_declare(
                listener.into(),
                QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap()
            .message_count();
        assert!(
            held as u64 >= events,
            "the listener holds {held} of {events}"
        );
    }
    if kind != "nothing" {
        let _ = ch.queue_delete(listener.into(), Default::default()).await;
    }
    figure
}

fn main() {
    let runs = env_number("BENCH_RUNS", 3);
    let events = env_number("BENCH_EVENTS", 100_000);
    let tokio = support::runtime();
    let http = reqwest::Client::new();
    let broker = broker_pid();
    let (mut ingest, mut fanout) = (Vec::new(), vec![Vec::new(); LISTENERS.len()]);
    tokio.block_on(async {
        let connection = Connection::connect(BROKER, ConnectionProperties::default())
            .await
            .expect("RabbitMQ on 127.0.0.1:5672");
        let ch = connection.create_channel().await.unwrap();
        ch.confirm_select(ConfirmSelectOptions::default())
            .await
            .unwrap();
        for run in 0..runs {
            let tag = uuid::Uuid::now_v7().simple().to_string();
            let (queue, dead) = (format!("bench.{tag}.in"), format!("bench.{tag}.dead"));
            let data = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
            queue_events(&ch, &queue, events).await;

            // Ingest alone (no fanout): from the first event appended to the last.
            let server = Server::start_with(data.path(), &args(&queue, "", &dead));
            let (mut first, mut started) = (None, None);
            loop {
                let head = health(&http, &server).await["head"].as_u64().unwrap();
                if first.is_none() && head > 0 {
                    first = Some(head);
                    started = Some((Instant::now(), cpu_time(broker), server.cpu_time()));
                }
                if head >= events {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            let (t0, b0, s0) = started.unwrap();
            let wall = t0.elapsed().as_secs_f64();
            let figure = Figure {
                rate: (events - first.unwrap()) as f64 / wall,
                broker_cpu: (cpu_time(broker) - b0).as_secs_f64() / wall,
                server_cpu: (server.cpu_time() - s0).as_secs_f64() / wall,
            };
            drop(server);

            print!(
                "run {run}: ingest {:>7.0} events/s (broker {:>3.0}% CPU, server {:>3.0}%)",
                figure.rate,
                figure.broker_cpu * 100.0,
                figure.server_cpu * 100.0
            );
            // Fanout: a fresh exchange each time, so the whole log goes out from position 0,
            // to a listener queue of each kind (or none).
            for (k, kind) in LISTENERS.iter().enumerate() {
                let exchange = format!("bench.{tag}.out{k}");
                let listener = format!("bench.{tag}.listener{k}");
                let out = fanout_once(
                    &ch,
                    &http,
                    broker,
                    data.path(),
                    (&exchange, &dead),
                    (&listener, *kind),
                    events,
                )
                .await;
                print!(
                    "   fanout to {kind}: {:>7.0} events/s (broker {:>3.0}%, server {:>3.0}%)",
                    out.rate,
                    out.broker_cpu * 100.0,
                    out.server_cpu * 100.0
                );
                fanout[k].push(out.rate);
                let _ = ch
                    .exchange_delete(exchange.as_str().into(), Default::default())
                    .await;
            }
            println!();
            ingest.push(figure.rate);
            for q in [&queue, &dead] {
                let _ = ch.queue_delete(q.as_str().into(), Default::default()).await;
            }
            for x in [&dead] {
                let _ = ch
                    .exchange_delete(x.as_str().into(), Default::default())
                    .await;
            }
        }
    });
    print!(
        "median of {runs}: ingest {:.0} events/s (target >= 20,000)",
        median(ingest)
    );
    for (kind, rates) in LISTENERS.iter().zip(fanout) {
        print!(", fanout to {kind} {:.0}", median(rates));
    }
    println!(" events/s (target >= 50,000)");
}
