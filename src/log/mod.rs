//! The durable event log: the one source of truth every other part reads.
//!
//! Appends go through [`Log::append`] to a single writer thread that commits in groups
//! (`writer`); reads go straight to redb snapshots through [`LogReader`], from any thread.
//! After each commit the writer publishes the new head on a `watch` channel, which is how
//! readers that follow the log (live subscriptions, later the projection runners) wake up.
//!
//! Invariants:
//! - positions are 1, 2, 3, … with no gap; a stream's revisions are 0, 1, 2, … with no gap;
//! - an append is answered only after its transaction committed with fsync;
//! - a request that fails a check writes nothing, and does not fail the other requests of its
//!   group; an event id is stored at most once.

mod codec;
mod error;
mod store;
mod types;
mod writer;

use std::path::Path;
use std::sync::Arc;
use std::thread::JoinHandle;

use tokio::sync::{mpsc, oneshot, watch};

pub use error::{AppendError, InvalidAppend, StorageError};
pub use types::{
    AppendOutcome, AppendRequest, Direction, EventId, ExpectedRevision, JsonPayload,
    MAX_EVENT_BYTES, MAX_EVENT_TYPE_BYTES, MAX_EVENTS_PER_APPEND, MAX_STREAM_NAME_BYTES, NewEvent,
    Position, RecordedEvent, Source, StreamName,
};

pub use store::FlushPolicy;

use store::Store;

/// The name of the log's database file inside the data directory.
pub const LOG_FILE: &str = "log.redb";

/// A handle to the log; cheap to clone and share between tasks.
#[derive(Clone)]
pub struct Log {
    jobs: mpsc::Sender<writer::Job>,
    head: watch::Receiver<Position>,
    reader: LogReader,
}

/// The writer thread. Joining it waits until every [`Log`] handle is gone and the last group
/// is committed.
pub struct WriterHandle(JoinHandle<()>);

impl WriterHandle {
    pub fn join(self) {
        if self.0.join().is_err() {
            tracing::error!("the log writer thread panicked");
        }
    }
}

impl Log {
    /// Opens (or creates) the log in `dir` and starts its writer thread.
    pub fn open(dir: &Path) -> Result<(Self, WriterHandle), StorageError> {
        Self::open_with(dir, FlushPolicy::default())
    }

    /// [`Log::open`], with a chosen policy for flushing the in-memory index tail.
    pub fn open_with(
        dir: &Path,
        policy: FlushPolicy,
    ) -> Result<(Self, WriterHandle), StorageError> {
        std::fs::create_dir_all(dir).map_err(|source| StorageError::Open {
            path: dir.display().to_string(),
            source,
        })?;
        let (store, lengths) = Store::open(&dir.join(LOG_FILE), policy)?;
        let store = Arc::new(store);
        let (head_tx, head_rx) = watch::channel(store.head()?);
        let (jobs_tx, jobs_rx) = mpsc::channel(writer::QUEUE_CAPACITY);
        let thread = writer::spawn(store.clone(), lengths, jobs_rx, head_tx).map_err(|source| {
            StorageError::Open {
                path: "log writer thread".into(),
                source,
            }
        })?;
        let log = Self {
            jobs: jobs_tx,
            head: head_rx,
            reader: LogReader { store },
        };
        Ok((log, WriterHandle(thread)))
    }

    /// Appends a batch to one stream; resolves once it is durable (or refused).
    pub async fn append(&self, request: AppendRequest) -> Result<AppendOutcome, AppendError> {
        let (reply, answer) = oneshot::channel();
        self.jobs
            .send(writer::Job { request, reply })
            .await
            .map_err(|_| AppendError::Closed)?;
        answer.await.map_err(|_| AppendError::Closed)?
    }

    /// The position of the last durable event; changes after every commit.
    pub fn head(&self) -> watch::Receiver<Position> {
        self.head.clone()
    }

    pub fn reader(&self) -> &LogReader {
        &self.reader
    }
}

/// Blocking reads over redb snapshots. Call from a blocking thread, not the async reactor.
#[derive(Clone)]
pub struct LogReader {
    store: Arc<Store>,
}

impl LogReader {
    /// Up to `limit` events of `source` from `from` (inclusive; a revision for a stream, a
    /// position otherwise; `None` means the start, or the end when reading backward), none
    /// past position `until`. `Ok(None)` when the stream or category has no events.
    pub fn read(
        &self,
        source: &Source,
        from: Option<u64>,
        direction: Direction,
        limit: usize,
        until: Position,
    ) -> Result<Option<Vec<RecordedEvent>>, StorageError> {
        self.store.read(source, from, direction, limit, until)
    }

    /// Up to `limit` events of `source` with positions after `after` and up to `until`, in
    /// log order: how a reader that remembers only a position (a projection's checkpoint)
    /// resumes in any source.
    pub fn read_after(
        &self,
        source: &Source,
        after: Position,
        limit: usize,
        until: Position,
    ) -> Result<Vec<RecordedEvent>, StorageError> {
        let from = match source {
            Source::Stream(name) => match self.store.revision_after(name, after)? {
                Some(revision) => revision,
                None => return Ok(Vec::new()),
            },
            Source::All | Source::Category(_) => after + 1,
        };
        Ok(self
            .store
            .read(source, Some(from), Direction::Forward, limit, until)?
            .unwrap_or_default())
    }

    /// The stream name and revision of the event at `position`.
    pub fn locate(&self, position: Position) -> Result<Option<(String, u64)>, StorageError> {
        self.store.locate(position)
    }
}

#[cfg(test)]
mod tests;
