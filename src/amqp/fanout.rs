//! The fanout: every committed event, in position order, to a durable fanout exchange as a
//! persistent message (body: the event's JSON as `/streams` serves it; `message_id`: the
//! event id; headers `position`, `stream`, `revision`, `type`), with publisher confirms.
//!
//! The outbox mark (the position published through) is stored only after the broker
//! confirmed every message up to it; after a restart or an outage publishing resumes after
//! the mark. A consumer may see the events after the mark twice (at least once), never out
//! of order and never with a gap: it dedupes by `position`.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Connection, ExchangeKind};
use tokio::sync::watch;

use super::{AmqpConfig, AmqpError, Broker};
use crate::http::encode;
use crate::log::{Log, Position, RecordedEvent, Source};
use crate::subscriptions::Store;

/// Events read and published per round, and their bytes at most (plus one event); the mark
/// is stored once per round.
const ROUND_EVENTS: usize = 4096;
const ROUND_BYTES: usize = 16 * 1024 * 1024;

/// The outbox mark's name in the store.
fn mark(config: &AmqpConfig) -> String {
    format!("amqp-fanout/{}", config.fanout_exchange)
}

/// A round of messages published, awaiting the broker's confirms.
struct Round {
    last: Position,
    confirms: Vec<(Position, lapin::PublisherConfirm)>,
}

impl Round {
    /// Waits for every confirm, then stores the mark: the position published through.
    async fn confirm(self, store: &Arc<Store>, name: &str) -> Result<Position, AmqpError> {
        for (position, confirm) in self.confirms {
            if confirm.await?.is_nack() {
                return Err(AmqpError::Refused(position));
            }
        }
        let (store, name, last) = (store.clone(), name.to_owned(), self.last);
        tokio::task::spawn_blocking(move || store.set_outbox(&name, last)).await??;
        Ok(last)
    }
}

/// A message's properties: persistent, the event id as `message_id`, and the headers.
fn properties(e: &RecordedEvent) -> BasicProperties {
    let mut headers = FieldTable::default();
    headers.insert("position".into(), AMQPValue::LongLongInt(e.position as i64));
    headers.insert(
        "stream".into(),
        AMQPValue::LongString(e.stream.as_str().into()),
    );
    headers.insert("revision".into(), AMQPValue::LongLongInt(e.revision as i64));
    headers.insert(
        "type".into(),
        AMQPValue::LongString(e.event_type.as_str().into()),
    );
    BasicProperties::default()
        .with_message_id(e.id.to_string().into())
        .with_content_type("application/json".into())
        .with_delivery_mode(2)
        .with_headers(headers)
}

pub(super) async fn run(
    connection: &Connection,
    config: &AmqpConfig,
    log: &Log,
    store: &Arc<Store>,
    broker: &Broker,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), AmqpError> {
    let channel = connection.create_channel().await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    channel
        .exchange_declare(
            config.fanout_exchange.as_str().into(),
            ExchangeKind::Fanout,
            ExchangeDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
    let name = mark(config);
    let mut published = {
        let (store, name) = (store.clone(), name.clone());
        tokio::task::spawn_blocking(move || store.outbox(&name)).await??
    };
    broker.published.store(published, Ordering::Release);
    let mut head = log.head();
    let exchange: lapin::types::ShortString = config.fanout_exchange.as_str().into();
    // Published and not yet confirmed: one round, whose confirms are awaited (and its mark
    // stored) while the next round goes out, so the broker is never idle between rounds.
    let mut unconfirmed: Option<Round> = None;
    let mut sent = published;
    loop {
        let until = *head.borrow_and_update();
        while sent < until {
            let events = {
                let reader = log.reader().clone();
                let after = sent;
                tokio::task::spawn_blocking(move || {
                    reader.read_after(&Source::All, after, (ROUND_EVENTS, ROUND_BYTES), until)
                })
                .await??
            };
            let Some(last) = events.last().map(|e| e.position) else {
                break;
            };
            // Every body of the round in one buffer (one allocation, not one per message:
            // lapin frees on its I/O thread what was allocated here, and glibc's arenas then
            // contend).
            let mut bodies = Vec::with_capacity(
                events
                    .iter()
                    .map(|e| 256 + e.data.len() + e.metadata.len())
                    .sum(),
            );
            let mut ends = Vec::with_capacity(events.len());
            for e in &events {
                encode::event(&mut bodies, e);
                ends.push(bodies.len());
            }
            // `basic_publish` queues its frames (and takes its confirm's number) on its first
            // poll, then waits for lapin's I/O thread to have written them. Awaiting each in
            // turn would make every message a round trip between threads (measured: about
            // 35 µs of CPU a message); instead each is polled once, in position order, which
            // queues them all in that order, and the writes are awaited afterwards.
            let mut sending = Vec::with_capacity(events.len());
            let starts = std::iter::once(0).chain(ends.iter().copied());
            for (e, (start, end)) in events.iter().zip(starts.zip(ends.iter().copied())) {
                let body = &bodies[start..end];
                let mut publish = Box::pin(channel.basic_publish(
                    exchange.clone(),
                    "".into(),
                    BasicPublishOptions::default(),
                    body,
                    properties(e),
                ));
                let first =
                    std::future::poll_fn(|cx| std::task::Poll::Ready(publish.as_mut().poll(cx)))
                        .await;
                sending.push((e.position, first, publish));
            }
            let mut confirms = Vec::with_capacity(events.len());
            for (position, first, publish) in sending {
                let confirm = match first {
                    std::task::Poll::Ready(confirm) => confirm?,
                    std::task::Poll::Pending => publish.await?,
                };
                confirms.push((position, confirm));
            }
            sent = last;
            if let Some(round) = unconfirmed.replace(Round { last, confirms }) {
                published = round.confirm(store, &name).await?;
                broker.published.store(published, Ordering::Release);
            }
        }
        if let Some(round) = unconfirmed.take() {
            published = round.confirm(store, &name).await?;
            broker.published.store(published, Ordering::Release);
        }
        tokio::select! {
            changed = head.changed() => if changed.is_err() { return Ok(()) },
            _ = shutdown.wait_for(|s| *s) => return Ok(()),
        }
    }
}
