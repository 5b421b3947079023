//! Persistent subscriptions: named, durable consumers of a source (`$all`, a stream, a
//! category) with acknowledgements, redelivery after a timeout, parking after too many
//! deliveries, and competing consumers (round robin, or pinned by stream).
//!
//! A subscription reads the log as a projection does (after a position, filtered, in order)
//! and keeps its own state in `subscriptions.redb` (`store`): settings, the acknowledged floor,
//! the acknowledgements above it, the parked events. Its delivery state lives in memory
//! (`core`). An acknowledgement is answered once durable; after a restart, events not
//! acknowledged are delivered again and acknowledged ones never are.
//!
//! Each subscription has one driver task (owned by the runtime; it stops when the
//! subscription is deleted or the server shuts down) that reads the log ahead of the
//! consumers, expires deliveries past their deadline and stores the floor as it moves over
//! events the settings filter out.

mod core;
mod settings;
mod store;

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::sync::{Notify, watch};

pub use self::core::{ConsumerId, Counts, Delivery, NackAction, Resolution};
use self::core::{Core, TICK};
pub use settings::{InvalidSettings, Named, Settings, StartFrom, Strategy, valid_name};
pub use store::{Parked, Store, StoreError};

use crate::log::{Log, Position, RecordedEvent, Source, StorageError};

/// Events read from the log per chunk, and their bytes at most (plus one event).
const READ_CHUNK: usize = 512;
const READ_BYTES: usize = 4 * 1024 * 1024;
/// How often a floor moved over filtered events is stored, at most.
const FLOOR_EVERY: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum SubscriptionError {
    #[error("no subscription named {0:?}")]
    NotFound(String),
    #[error(transparent)]
    Invalid(#[from] InvalidSettings),
    #[error("a subscription's {0} is fixed when it is made; delete it and make it again")]
    Fixed(&'static str),
    #[error("positions not in flight: {0:?}")]
    NotInFlight(Vec<Position>),
    #[error("positions not parked: {0:?}")]
    NotParked(Vec<Position>),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Log(#[from] StorageError),
    #[error("a subscription task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// Every account's subscriptions.
pub struct Subscriptions {
    store: Arc<Store>,
    /// By (account, name). Held briefly, never across I/O or an await; taken alone.
    map: Mutex<HashMap<(String, String), Arc<Subscription>>>,
    /// Serialises creations, updates and deletions (they write the store). Taken first.
    changing: tokio::sync::Mutex<()>,
    shutdown: watch::Receiver<bool>,
    /// The server's main runtime, which runs the drivers: a subscription created over HTTP
    /// outlives the connection (and the connection thread's runtime) that created it.
    runtime: tokio::runtime::Handle,
}

impl Subscriptions {
    /// Opens the store in `dir` and starts every stored subscription whose account has a
    /// log (`log_of`). Blocking; call within the main runtime (its drivers, and those of
    /// subscriptions created later, run there).
    pub fn open(
        dir: &Path,
        log_of: impl Fn(&str) -> Option<Log>,
        shutdown: watch::Receiver<bool>,
    ) -> Result<Self, SubscriptionError> {
        let store = Arc::new(Store::open(dir)?);
        let runtime = tokio::runtime::Handle::current();
        let mut map = HashMap::new();
        for stored in store.load()? {
            let Some(log) = log_of(&stored.account) else {
                tracing::warn!(account = %stored.account, subscription = %stored.name, "the subscription's account is not served");
                continue;
            };
            let source = stored.settings.check()?;
            let core = Core::new(stored.settings, stored.floor, stored.acked, stored.parked);
            let sub = Subscription::start(
                (&stored.account, &stored.name),
                source,
                core,
                log,
                store.clone(),
                (&runtime, shutdown.clone()),
            );
            map.insert((stored.account, stored.name), sub);
        }
        Ok(Subscriptions {
            store,
            map: Mutex::new(map),
            changing: tokio::sync::Mutex::new(()),
            shutdown,
            runtime,
        })
    }

    /// The store, shared with the AMQP fanout's outbox.
    pub fn store(&self) -> Arc<Store> {
        self.store.clone()
    }

    pub fn get(&self, account: &str, name: &str) -> Result<Arc<Subscription>, SubscriptionError> {
        self.map
            .lock()
            .get(&(account.to_owned(), name.to_owned()))
            .cloned()
            .ok_or_else(|| SubscriptionError::NotFound(name.to_owned()))
    }

    /// The account's subscriptions, by name.
    pub fn list(&self, account: &str) -> Vec<Arc<Subscription>> {
        let mut all: Vec<_> = self
            .map
            .lock()
            .iter()
            .filter(|((a, _), _)| a == account)
            .map(|(_, s)| s.clone())
            .collect();
        all.sort_by(|a, b| a.name.cmp(&b.name));
        all
    }

    /// Creates the subscription (true) or updates its settings (false).
    pub async fn put(
        &self,
        log: &Log,
        name: &str,
        settings: Settings,
    ) -> Result<bool, SubscriptionError> {
        valid_name(name)?;
        let source = settings.check()?;
        let account = log.account_name().to_owned();
        let _changing = self.changing.lock().await;
        if let Ok(existing) = self.get(&account, name) {
            {
                let core = existing.core.lock();
                if core.settings.source != settings.source {
                    return Err(SubscriptionError::Fixed("source"));
                }
                if core.settings.from != settings.from {
                    return Err(SubscriptionError::Fixed("start (from)"));
                }
            }
            let (store, key, s) = (
                self.store.clone(),
                (account, name.to_owned()),
                settings.clone(),
            );
            tokio::task::spawn_blocking(move || store.put((&key.0, &key.1), &s, None)).await??;
            existing.core.lock().settings = settings;
            existing.wake();
            return Ok(false);
        }
        let head = *log.head().borrow();
        let floor = match settings.from {
            StartFrom::Named(Named::Start) => 0,
            StartFrom::Named(Named::End) => head,
            StartFrom::Position(p) => p.saturating_sub(1),
        };
        {
            let (store, key, s) = (
                self.store.clone(),
                (account.clone(), name.to_owned()),
                settings.clone(),
            );
            tokio::task::spawn_blocking(move || store.put((&key.0, &key.1), &s, Some(floor)))
                .await??;
        }
        let core = Core::new(settings, floor, Default::default(), Default::default());
        let sub = Subscription::start(
            (&account, name),
            source,
            core,
            log.clone(),
            self.store.clone(),
            (&self.runtime, self.shutdown.clone()),
        );
        self.map.lock().insert((account, name.to_owned()), sub);
        Ok(true)
    }

    /// Deletes the subscription and its state; its consumers are ended.
    pub async fn delete(&self, account: &str, name: &str) -> Result<(), SubscriptionError> {
        let _changing = self.changing.lock().await;
        let sub = self.get(account, name)?;
        let (store, key) = (self.store.clone(), (account.to_owned(), name.to_owned()));
        tokio::task::spawn_blocking(move || store.delete((&key.0, &key.1))).await??;
        self.map
            .lock()
            .remove(&(account.to_owned(), name.to_owned()));
        sub.stop.send_replace(true);
        Ok(())
    }
}

/// One subscription.
pub struct Subscription {
    pub account: String,
    pub name: String,
    source: Source,
    /// The delivery state. Held briefly, never across I/O or an await; taken after `persist`.
    core: Mutex<Core>,
    /// Held across each durable write of the state (on a blocking thread), so that the
    /// writes, and the floors they store, follow one another. Taken first.
    persist: Mutex<()>,
    /// Bumped when something may have become deliverable: waiting consumers look again.
    wake: watch::Sender<u64>,
    /// Tells the driver to read on (room was made) sooner than its tick.
    refill: Notify,
    /// True once deleted (or at shutdown): the driver and the consumers end.
    stop: watch::Sender<bool>,
    log: Log,
    store: Arc<Store>,
}

/// What an ack or nack does with the events it names.
enum Settle<'a> {
    Resolve(Resolution),
    /// Deliver again, noting why.
    Retry(&'a str),
}

/// A subscription as `GET /subscriptions/{name}` shows it.
#[derive(Clone, Debug, serde::Serialize, utoipa::ToSchema)]
pub struct SubscriptionStatus {
    pub name: String,
    pub settings: Settings,
    /// Every event up to this position is acknowledged, skipped or parked.
    pub floor: Position,
    pub in_flight: usize,
    /// Read from the log and waiting for a consumer.
    pub waiting: usize,
    pub parked: usize,
    pub consumers: usize,
    /// Events acknowledged, skipped or parked per second, over the last seconds.
    pub events_per_second: f64,
    pub head: Position,
    /// Log positions between the floor and the head.
    pub lag: u64,
}

impl Subscription {
    fn start(
        (account, name): (&str, &str),
        source: Source,
        core: Core,
        log: Log,
        store: Arc<Store>,
        (runtime, mut shutdown): (&tokio::runtime::Handle, watch::Receiver<bool>),
    ) -> Arc<Self> {
        let sub = Arc::new(Subscription {
            account: account.to_owned(),
            name: name.to_owned(),
            source,
            core: Mutex::new(core),
            persist: Mutex::new(()),
            wake: watch::Sender::new(0),
            refill: Notify::new(),
            stop: watch::Sender::new(false),
            log,
            store,
        });
        // The driver: owned by the main runtime; ends when the subscription is deleted or the
        // server shuts down. It holds the subscription, which holds no task.
        let driver = sub.clone();
        let mut stopped = sub.stop.subscribe();
        runtime.spawn(async move {
            tokio::select! {
                _ = driver.drive() => {}
                _ = stopped.wait_for(|s| *s) => {}
                _ = shutdown.wait_for(|s| *s) => { driver.stop.send_replace(true); }
            }
        });
        sub
    }

    fn key(&self) -> (&str, &str) {
        (&self.account, &self.name)
    }

    fn wake(&self) {
        self.wake.send_modify(|n| *n += 1);
    }

    pub fn status(&self) -> SubscriptionStatus {
        let head = *self.log.head().borrow();
        let core = self.core.lock();
        let counts = core.counts(Instant::now());
        SubscriptionStatus {
            name: self.name.clone(),
            settings: core.settings.clone(),
            floor: counts.floor,
            in_flight: counts.in_flight,
            waiting: counts.ready,
            parked: counts.parked,
            consumers: counts.consumers,
            events_per_second: counts.events_per_second,
            head,
            lag: head.saturating_sub(counts.floor),
        }
    }

    /// Whether the subscription was deleted (or the server is stopping).
    pub fn stopped(&self) -> watch::Receiver<bool> {
        self.stop.subscribe()
    }

    /// Reads ahead, expires deliveries, stores the floor; until stopped.
    async fn drive(self: &Arc<Self>) {
        let mut head = self.log.head();
        let mut floor_stored = Instant::now();
        loop {
            let until = *head.borrow_and_update();
            let (wants, cursor) = {
                let core = self.core.lock();
                (core.wants_events(), core.cursor())
            };
            if wants && cursor < until {
                match self.read(cursor, until).await {
                    Ok(()) => continue,
                    Err(e) => {
                        tracing::error!(subscription = %self.name, error = %e, "reading the log for a subscription");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        continue;
                    }
                }
            }
            let (late, parks) = self.core.lock().expire(Instant::now());
            if late > 0 {
                self.wake();
            }
            if !parks.is_empty() {
                self.resolve_async(parks).await;
            }
            if floor_stored.elapsed() >= FLOOR_EVERY {
                floor_stored = Instant::now();
                self.resolve_async(Vec::new()).await;
            }
            tokio::select! {
                changed = head.changed() => if changed.is_err() { return },
                _ = self.refill.notified() => {}
                _ = tokio::time::sleep(TICK) => {}
            }
        }
    }

    /// Reads the next chunk of the source after `cursor`, up to `until`.
    async fn read(&self, cursor: Position, until: Position) -> Result<(), SubscriptionError> {
        let (reader, source) = (self.log.reader().clone(), self.source.clone());
        let (events, through) = tokio::task::spawn_blocking(move || {
            let events = reader.read_after(&source, cursor, (READ_CHUNK, READ_BYTES), until)?;
            let bytes: usize = events.iter().map(|e| e.data.len() + e.metadata.len()).sum();
            // A short chunk read everything of the source up to `until`.
            let through = if events.len() < READ_CHUNK && bytes <= READ_BYTES {
                until
            } else {
                events.last().map_or(until, |e| e.position)
            };
            Ok::<_, StorageError>((events, through))
        })
        .await??;
        self.core.lock().accept(events, through);
        self.wake();
        Ok(())
    }

    async fn resolve_async(self: &Arc<Self>, resolutions: Vec<(Position, Resolution)>) {
        let sub = self.clone();
        let done = tokio::task::spawn_blocking(move || sub.resolve(resolutions)).await;
        if let Ok(Err(e)) = done {
            tracing::error!(subscription = %self.name, error = %e, "storing a subscription's state");
        }
    }

    /// Makes the resolution of `resolutions` (already begun) durable, then applies it; on a
    /// failure they go back to be delivered again. Blocking.
    fn resolve(&self, resolutions: Vec<(Position, Resolution)>) -> Result<(), StoreError> {
        let _persist = self.persist.lock();
        let plan = self.core.lock().plan(resolutions);
        if plan.delta.is_empty() && plan.resolved.is_empty() {
            return Ok(());
        }
        let written = if plan.delta.is_empty() {
            Ok(())
        } else {
            self.store.write(self.key(), &plan.delta)
        };
        let mut core = self.core.lock();
        match written {
            Ok(()) => core.apply(&plan),
            Err(_) => core.abandon(&plan),
        }
        drop(core);
        self.wake();
        self.refill.notify_one();
        written
    }

    /// Up to `max` events for `consumer`, waiting up to `wait` for the first. Events appended
    /// before the poll began are among them when they are the consumer's to take: the
    /// subscription reads the log in its own task, a moment behind the appends' answers, so
    /// the poll first waits (within `wait`) for that reading to reach the head as the poll
    /// began, or to pause because enough is read ahead.
    pub async fn poll(&self, consumer: &ConsumerId, max: usize, wait: Duration) -> Vec<Delivery> {
        let mut wake = self.wake.subscribe();
        let mut stop = self.stop.subscribe();
        let head = *self.log.head().borrow();
        self.core.lock().enter(consumer, Instant::now());
        let deadline = tokio::time::Instant::now() + wait;
        let taken = loop {
            {
                let mut core = self.core.lock();
                if core.cursor() >= head || !core.wants_events() {
                    let taken = core.take(consumer, max, Instant::now());
                    if !taken.is_empty() {
                        break taken;
                    }
                }
            }
            tokio::select! {
                changed = wake.changed() => if changed.is_err() { break Vec::new() },
                // Out of time: whatever is read by now.
                _ = tokio::time::sleep_until(deadline) => {
                    break self.core.lock().take(consumer, max, Instant::now())
                }
                _ = stop.wait_for(|s| *s) => break Vec::new(),
            }
        };
        self.core.lock().leave(consumer, Instant::now());
        if !taken.is_empty() {
            self.refill.notify_one();
        }
        taken
    }

    /// A consumer connected for longer (SSE): counted as connected until [`Subscription::leave`].
    pub fn enter(&self, consumer: &ConsumerId) {
        self.core.lock().enter(consumer, Instant::now());
    }

    pub fn leave(&self, consumer: &ConsumerId) {
        self.core.lock().leave(consumer, Instant::now());
    }

    /// Up to `max` events for a connected consumer, now; none while `max_in_flight` are out.
    pub fn take(&self, consumer: &ConsumerId, max: usize) -> Vec<Delivery> {
        let taken = self.core.lock().take(consumer, max, Instant::now());
        if !taken.is_empty() {
            self.refill.notify_one();
        }
        taken
    }

    /// Changes each time something may have become deliverable.
    pub fn wakes(&self) -> watch::Receiver<u64> {
        self.wake.subscribe()
    }

    /// Acknowledges in-flight events; answered once durable.
    pub async fn ack(self: &Arc<Self>, positions: &[Position]) -> Result<(), SubscriptionError> {
        self.settle(positions, Settle::Resolve(Resolution::Ack))
            .await
    }

    /// Refuses in-flight events: delivered again, parked, or skipped (as acknowledged).
    pub async fn nack(
        self: &Arc<Self>,
        positions: &[Position],
        action: NackAction,
        reason: &str,
    ) -> Result<(), SubscriptionError> {
        let settle = match action {
            NackAction::Skip => Settle::Resolve(Resolution::Ack),
            NackAction::Park => Settle::Resolve(Resolution::Park(reason.to_owned())),
            NackAction::Retry => Settle::Retry(reason),
        };
        self.settle(positions, settle).await
    }

    /// Checks that every position is in flight, then settles them all alike, durably.
    async fn settle(
        self: &Arc<Self>,
        positions: &[Position],
        settle: Settle<'_>,
    ) -> Result<(), SubscriptionError> {
        let begun = {
            let mut core = self.core.lock();
            let missing = core.not_in_flight(positions);
            if !missing.is_empty() {
                return Err(SubscriptionError::NotInFlight(missing));
            }
            let mut unique = positions.to_vec();
            unique.sort_unstable();
            unique.dedup();
            match settle {
                // Parked instead when delivered `max_deliveries` times.
                Settle::Retry(reason) => core.retry(&unique, reason),
                Settle::Resolve(resolution) => core.begin(
                    unique
                        .into_iter()
                        .map(|p| (p, resolution.clone()))
                        .collect(),
                ),
            }
        };
        self.wake();
        if begun.is_empty() {
            return Ok(());
        }
        let sub = self.clone();
        tokio::task::spawn_blocking(move || sub.resolve(begun)).await??;
        Ok(())
    }

    /// Parked events, oldest first, from `after` on, at most `limit`, with the events.
    pub async fn parked(
        &self,
        after: Position,
        limit: usize,
    ) -> Result<Vec<(RecordedEvent, Parked)>, SubscriptionError> {
        let records: Vec<(Position, Parked)> = self
            .core
            .lock()
            .parked()
            .range(after + 1..)
            .take(limit)
            .map(|(p, r)| (*p, r.clone()))
            .collect();
        let events = self
            .events_at(records.iter().map(|(p, _)| *p).collect())
            .await?;
        Ok(events
            .into_iter()
            .zip(records)
            .map(|(e, (_, r))| (e, r))
            .collect())
    }

    /// Delivers parked events again: all, or those named. Returns how many.
    pub async fn replay_parked(
        &self,
        positions: Option<Vec<Position>>,
    ) -> Result<usize, SubscriptionError> {
        let wanted: Vec<Position> = {
            let core = self.core.lock();
            match positions {
                None => core.parked().keys().copied().collect(),
                Some(positions) => {
                    let missing: Vec<Position> = positions
                        .iter()
                        .copied()
                        .filter(|p| !core.parked().contains_key(p))
                        .collect();
                    if !missing.is_empty() {
                        return Err(SubscriptionError::NotParked(missing));
                    }
                    positions
                }
            }
        };
        let events = self.events_at(wanted).await?;
        let added = self.core.lock().replay(events);
        self.wake();
        Ok(added)
    }

    /// The events at `positions` (ascending, each stored).
    async fn events_at(
        &self,
        positions: Vec<Position>,
    ) -> Result<Vec<RecordedEvent>, SubscriptionError> {
        let reader = self.log.reader().clone();
        let head = *self.log.head().borrow();
        Ok(tokio::task::spawn_blocking(move || {
            let mut events = Vec::with_capacity(positions.len());
            for p in positions {
                events.extend(reader.read_after(&Source::All, p - 1, (1, usize::MAX), head)?);
            }
            Ok::<_, StorageError>(events)
        })
        .await??)
    }
}
