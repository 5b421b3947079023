//! Runs a projection natively, against an in-memory view: the way to test a projection's
//! logic with plain `cargo test`. The harness numbers events like the log does (positions from
//! 1, revisions from 0 per stream), applies only those the subscription selects, and can split
//! the events into batches of any size, as the server does.

use std::collections::{BTreeMap, HashMap};
use std::marker::PhantomData;

use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::{Backend, Error, Event, Projection, View};

/// An event as the harness stores it.
#[derive(Clone, Debug)]
pub struct StoredEvent {
    pub position: u64,
    pub revision: u64,
    pub stream: String,
    pub event_type: String,
    pub data: Vec<u8>,
    pub metadata: Vec<u8>,
}

impl StoredEvent {
    pub fn as_event(&self) -> Event<'_> {
        let mut id = [0u8; 16];
        id[8..].copy_from_slice(&self.position.to_be_bytes());
        Event {
            position: self.position,
            revision: self.revision,
            recorded_at: self.position,
            id,
            stream: &self.stream,
            event_type: &self.event_type,
            data: &self.data,
            metadata: &self.metadata,
        }
    }
}

/// The in-memory view.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MemoryView(pub BTreeMap<String, Vec<u8>>);

impl Backend for MemoryView {
    fn get(&mut self, key: &str) -> Option<Vec<u8>> {
        self.0.get(key).cloned()
    }
    fn put(&mut self, key: &str, value: &[u8]) {
        self.0.insert(key.to_owned(), value.to_vec());
    }
    fn delete(&mut self, key: &str) {
        self.0.remove(key);
    }
}

/// A projection under test with its log and its view.
pub struct Harness<P> {
    log: Vec<StoredEvent>,
    revisions: HashMap<String, u64>,
    view: MemoryView,
    applied: usize,
    projection: PhantomData<P>,
}

impl<P: Projection> Default for Harness<P> {
    fn default() -> Self {
        Self::new()
    }
}

impl<P: Projection> Harness<P> {
    pub fn new() -> Self {
        Harness {
            log: Vec::new(),
            revisions: HashMap::new(),
            view: MemoryView::default(),
            applied: 0,
            projection: PhantomData,
        }
    }

    /// Appends an event to the log without applying it.
    pub fn record(&mut self, stream: &str, event_type: &str, data: Value) -> &StoredEvent {
        let revision = self.revisions.entry(stream.to_owned()).or_default();
        self.log.push(StoredEvent {
            position: self.log.len() as u64 + 1,
            revision: *revision,
            stream: stream.to_owned(),
            event_type: event_type.to_owned(),
            data: serde_json::to_vec(&data).expect("JSON values serialize"),
            metadata: Vec::new(),
        });
        *revision += 1;
        self.log.last().expect("just pushed")
    }

    /// Appends an event and applies it, panicking if the projection refuses it.
    pub fn append(&mut self, stream: &str, event_type: &str, data: Value) {
        self.record(stream, event_type, data);
        self.catch_up(usize::MAX)
            .expect("the projection refused an event");
    }

    /// Applies every recorded event not applied yet, in batches of `batch` events of the log
    /// (events the subscription skips count toward a batch, as on the server).
    pub fn catch_up(&mut self, batch: usize) -> Result<(), Error> {
        let subscription = P::subscription();
        while self.applied < self.log.len() {
            let end = self
                .log
                .len()
                .min(self.applied.saturating_add(batch.max(1)));
            let mut view = View::new(&mut self.view);
            for stored in &self.log[self.applied..end] {
                if subscription.matches(&stored.stream, &stored.event_type) {
                    P::apply(&mut view, &stored.as_event())?;
                }
            }
            view.flush()?;
            self.applied = end;
        }
        Ok(())
    }

    /// The document under `key` as JSON.
    pub fn document(&self, key: &str) -> Option<Value> {
        self.view
            .0
            .get(key)
            .map(|bytes| serde_json::from_slice(bytes).expect("documents are JSON"))
    }

    /// The document under `key` decoded as `T`.
    pub fn get<T: DeserializeOwned>(&self, key: &str) -> Option<T> {
        self.view
            .0
            .get(key)
            .map(|bytes| serde_json::from_slice(bytes).expect("document of the expected type"))
    }

    /// Every document, by key.
    pub fn view(&self) -> &MemoryView {
        &self.view
    }

    /// The recorded events.
    pub fn log(&self) -> &[StoredEvent] {
        &self.log
    }
}
