//! RabbitMQ (AMQP 0-9-1, with `lapin`): events in from a queue, committed events out to a
//! fanout exchange. Both are the root account's.
//!
//! - Ingest (`ingest`): each message of the durable queue is an append; it is acknowledged
//!   to the broker only once the append is durable. A message that can never succeed goes to
//!   the dead-letter exchange with the reason in its headers; one that failed for a passing
//!   reason is requeued.
//! - Fanout (`fanout`): every committed event is published in position order as a persistent
//!   message, with publisher confirms. The position published through is stored (the outbox
//!   mark, in `subscriptions.redb`) only after the broker confirmed everything up to it, so
//!   publishing resumes from there after a restart or an outage: at least once, in order.
//!
//! One supervisor task (owned by the runtime, stopped by the shutdown flag, awaited by the
//! server before the log's writer stops) connects, runs both over one connection, and on any
//! failure reconnects with a growing backoff; the server serves on meanwhile.

mod fanout;
mod ingest;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use lapin::{Connection, ConnectionProperties};
use parking_lot::Mutex;
use serde::Serialize;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::log::{Log, StorageError};
use crate::subscriptions::{Store, StoreError};

/// Where the broker is and what is read from and written to it.
#[derive(Clone, Debug)]
pub struct AmqpConfig {
    /// `amqp://user:password@host:port/vhost`.
    pub url: String,
    /// The durable queue appends are taken from; empty: no ingest.
    pub ingest_queue: String,
    /// The durable fanout exchange committed events are published to; empty: no fanout.
    pub fanout_exchange: String,
    /// The fanout exchange (and the durable queue bound to it, of the same name) refused
    /// messages go to.
    pub dead_exchange: String,
}

pub const DEFAULT_INGEST_QUEUE: &str = "projector.append";
pub const DEFAULT_FANOUT_EXCHANGE: &str = "projector.events";
pub const DEFAULT_DEAD_EXCHANGE: &str = "projector.dead";

/// Longest wait between two connection attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum AmqpError {
    #[error("broker: {0}")]
    Broker(#[from] lapin::Error),
    #[error("the broker refused (nack) the event at position {0}")]
    Refused(u64),
    #[error("the broker closed the consumer")]
    ConsumerClosed,
    #[error(transparent)]
    Log(#[from] StorageError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("a task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// The connection's state, as `/health` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum BrokerState {
    Connecting,
    Connected,
    /// Lost or refused; retried after a backoff.
    Down {
        reason: String,
    },
}

/// What `/health` shows of the broker.
pub struct Broker {
    state: Mutex<BrokerState>,
    /// The position published through (confirmed and stored).
    published: AtomicU64,
    /// Whether the fanout runs (else `/health` shows no fanout figures).
    fanout: bool,
    log: Log,
}

impl Broker {
    fn set(&self, state: BrokerState) {
        *self.state.lock() = state;
    }

    pub fn state(&self) -> BrokerState {
        self.state.lock().clone()
    }

    /// `{"state", "reason"?, "fanout_position", "fanout_lag"}`.
    pub fn health(&self) -> serde_json::Value {
        let mut value = serde_json::to_value(self.state()).unwrap_or_default();
        if self.fanout {
            let published = self.published.load(Ordering::Acquire);
            let head = *self.log.head().borrow();
            value["fanout_position"] = published.into();
            value["fanout_lag"] = head.saturating_sub(published).into();
        }
        value
    }
}

/// Starts the supervisor; join the handle after the shutdown flag turned.
pub fn start(
    config: AmqpConfig,
    log: Log,
    store: Arc<Store>,
    shutdown: watch::Receiver<bool>,
) -> (Arc<Broker>, JoinHandle<()>) {
    let broker = Arc::new(Broker {
        state: Mutex::new(BrokerState::Connecting),
        published: AtomicU64::new(0),
        fanout: !config.fanout_exchange.is_empty(),
        log: log.clone(),
    });
    let supervisor = broker.clone();
    let handle = tokio::spawn(async move {
        supervise(config, log, store, supervisor, shutdown).await;
    });
    (broker, handle)
}

async fn supervise(
    config: AmqpConfig,
    log: Log,
    store: Arc<Store>,
    broker: Arc<Broker>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut backoff = Duration::from_millis(200);
    loop {
        let stopping = *shutdown.borrow();
        if stopping {
            return;
        }
        broker.set(BrokerState::Connecting);
        let started = tokio::time::Instant::now();
        let result = session(&config, &log, &store, &broker, shutdown.clone()).await;
        match result {
            Ok(()) => return,
            Err(e) => {
                tracing::warn!(error = %e, "AMQP broker connection lost; reconnecting");
                broker.set(BrokerState::Down {
                    reason: e.to_string(),
                });
            }
        }
        if started.elapsed() > Duration::from_secs(30) {
            backoff = Duration::from_millis(200);
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// One connection: ingest and fanout until either fails (an error) or the server stops.
async fn session(
    config: &AmqpConfig,
    log: &Log,
    store: &Arc<Store>,
    broker: &Arc<Broker>,
    shutdown: watch::Receiver<bool>,
) -> Result<(), AmqpError> {
    let name = format!("projector/{}", std::process::id());
    let connection = Connection::connect(
        &config.url,
        ConnectionProperties::default().with_connection_name(name.into()),
    )
    .await?;
    broker.set(BrokerState::Connected);
    tracing::info!("AMQP broker connected");
    let idle = |mut shutdown: watch::Receiver<bool>| async move {
        let _ = shutdown.wait_for(|s| *s).await;
        Ok(())
    };
    let ingest = async {
        if config.ingest_queue.is_empty() {
            idle(shutdown.clone()).await
        } else {
            ingest::run(&connection, config, log, shutdown.clone()).await
        }
    };
    let fanout = async {
        if config.fanout_exchange.is_empty() {
            idle(shutdown.clone()).await
        } else {
            fanout::run(&connection, config, log, store, broker, shutdown.clone()).await
        }
    };
    tokio::pin!(ingest, fanout);
    // Either ends with an error (the other is dropped: the connection is going anyway), or
    // with the shutdown, after which the other is let finish too (the ingest settles the
    // appends it has in flight).
    let result = tokio::select! {
        r = &mut ingest => match r {
            Ok(()) => (&mut fanout).await,
            Err(e) => Err(e),
        },
        r = &mut fanout => match r {
            Ok(()) => (&mut ingest).await,
            Err(e) => Err(e),
        },
    };
    let _ = connection.close(200, "projector stopping".into()).await;
    result
}
