//! The durable event log: the one source of truth every other part reads.
//!
//! Appends go through [`Log::append`] to a single writer thread that commits in groups
//! (`writer`); reads go straight to redb snapshots through [`LogReader`], from any thread.
//! Once a commit is durable the syncer (`sync`) publishes the new head on a `watch` channel,
//! which is how readers that follow the log (live subscriptions, the projection scheduler)
//! wake up.
//!
//! Invariants:
//! - positions are 1, 2, 3, … with no gap; a stream's revisions are 0, 1, 2, … with no gap;
//! - an append is answered only after its records are durable (its frame of the write-ahead
//!   segment fdatasynced, or a redb commit with fsync), and after the head covering it is
//!   published; reads are bounded by a published head, so no reader sees an event that is not
//!   durable yet;
//! - a request that fails a check writes nothing, and does not fail the other requests of its
//!   group; an event id is stored at most once.

mod codec;
mod error;
mod files;
mod head;
mod store;
mod sync;
mod types;
mod wal;
mod writer;

use std::path::Path;
use std::sync::Arc;
use std::thread::JoinHandle;

use tokio::sync::{mpsc, oneshot, watch};

pub use error::{AppendError, InvalidAppend, StorageError, is_disk_full};
pub use types::{
    AppendOutcome, AppendRequest, Direction, EventId, EventRef, ExpectedRevision, JsonPayload,
    MAX_EVENT_BYTES, MAX_EVENT_TYPE_BYTES, MAX_EVENTS_PER_APPEND, MAX_JSON_DEPTH,
    MAX_STREAM_NAME_BYTES, NewEvent, Position, RecordedEvent, Source, StreamName,
};

pub use store::FlushPolicy;

use files::LogFiles;
pub use head::HeadListener;
use head::{Head, Heads};

/// The name of the log's database file inside the data directory.
pub const LOG_FILE: &str = "log.redb";

/// A handle to one account's part of the log; cheap to clone and share between tasks. Every
/// account's handle shares the one writer (so a group commit spans accounts) and the one file.
#[derive(Clone)]
pub struct Log {
    account: Arc<str>,
    shared: Arc<Shared>,
    head: watch::Receiver<Position>,
    /// Where `head` comes from, for listeners.
    head_source: Arc<Head>,
    reader: LogReader,
}

/// What every account's handle shares.
struct Shared {
    jobs: mpsc::Sender<writer::Job>,
    /// The writer queue's byte budget, in KiB: an append holds its size in permits from
    /// before it is queued until it is answered, so queued requests hold at most
    /// [`QUEUE_BYTES`] (an append larger than the budget waits until it is alone).
    queue_bytes: Arc<tokio::sync::Semaphore>,
    health: watch::Receiver<LogHealth>,
    files: Arc<LogFiles>,
    heads: Arc<Heads>,
}

/// Bytes of append requests queued for the writer or being committed, at most.
pub const QUEUE_BYTES: usize = 128 * 1024 * 1024;

/// Whether the log takes appends, as `/health` reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LogHealth {
    Ok,
    /// The last commit found the disk full; appends are refused (507) until space returns.
    DiskFull,
    /// A write failed and the file could not be reopened yet; the writer keeps trying.
    Unavailable {
        reason: String,
    },
    /// The writer thread is gone: nothing is appended until a restart.
    Failed {
        reason: String,
    },
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
    /// Opens (or creates) the log in `dir` and starts its writer thread. The handle is the
    /// default account's ([`crate::account::DEFAULT`]); [`Log::account`] gives the others.
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
        let (files, lengths) = LogFiles::open(&dir.join(LOG_FILE), policy)?;
        let (health_tx, health_rx) = watch::channel(LogHealth::Ok);
        let (jobs_tx, jobs_rx) = mpsc::channel(writer::QUEUE_CAPACITY);
        let heads = Arc::new(Heads::default());
        let thread = writer::spawn(files.clone(), lengths, jobs_rx, heads.clone(), health_tx)
            .map_err(|source| StorageError::Open {
                path: "log writer thread".into(),
                source,
            })?;
        let shared = Arc::new(Shared {
            jobs: jobs_tx,
            queue_bytes: Arc::new(tokio::sync::Semaphore::new(QUEUE_BYTES / 1024)),
            health: health_rx,
            files,
            heads,
        });
        let log = Self::handle(&shared, crate::account::DEFAULT)?;
        Ok((log, WriterHandle(thread)))
    }

    /// The handle of `account`'s part of the log, created (its tables committed) the first
    /// time. Blocking: it may wait for the writer's transaction.
    pub fn account(&self, account: &str) -> Result<Log, StorageError> {
        Self::handle(&self.shared, account)
    }

    fn handle(shared: &Arc<Shared>, account: &str) -> Result<Log, StorageError> {
        let store = shared.files.current()?;
        let partition = store.partition(account)?;
        let head = store.head(&partition)?;
        let account: Arc<str> = account.into();
        let head_source = shared.heads.get(&account, head);
        Ok(Log {
            head: head_source.subscribe(),
            head_source,
            reader: LogReader {
                files: shared.files.clone(),
                account: account.clone(),
            },
            account,
            shared: shared.clone(),
        })
    }

    /// The account this handle appends to and reads.
    pub fn account_name(&self) -> &str {
        &self.account
    }

    /// Appends a batch to one stream; resolves once it is durable (or refused).
    pub async fn append(&self, request: AppendRequest) -> Result<AppendOutcome, AppendError> {
        self.submit(request).await?.await
    }

    /// Queues a batch for the writer and returns its answer, to await later: batches
    /// submitted one after another by one task are appended in that order (how the AMQP
    /// ingest keeps a queue's order while many appends are in flight).
    pub async fn submit(
        &self,
        request: AppendRequest,
    ) -> Result<
        impl Future<Output = Result<AppendOutcome, AppendError>> + Send + 'static,
        AppendError,
    > {
        let kib = (request.bytes() / 1024).clamp(1, QUEUE_BYTES / 1024) as u32;
        let queued = self
            .shared
            .queue_bytes
            .clone()
            .acquire_many_owned(kib)
            .await
            .map_err(|_| self.closed())?;
        let (reply, answer) = oneshot::channel();
        self.shared
            .jobs
            .send(writer::Job {
                account: self.account.clone(),
                request,
                reply,
            })
            .await
            .map_err(|_| self.closed())?;
        let log = self.clone();
        Ok(async move {
            let _queued = queued;
            answer.await.map_err(|_| log.closed())?
        })
    }

    /// Why the writer took no more work: shut down, or failed.
    fn closed(&self) -> AppendError {
        match &*self.shared.health.borrow() {
            LogHealth::Failed { reason } => AppendError::WriterFailed(reason.clone()),
            _ => AppendError::Closed,
        }
    }

    /// Whether appends are taken (the whole log's, not one account's).
    pub fn health(&self) -> LogHealth {
        self.shared.health.borrow().clone()
    }

    /// The position of the account's last durable event; changes after every commit that
    /// appends to it.
    pub fn head(&self) -> watch::Receiver<Position> {
        self.head.clone()
    }

    /// Calls `on_move` on the thread that publishes the account's head, right after every
    /// move, until the returned guard is dropped. For waking threads: `on_move` must be cheap
    /// and must not block (it runs between two fdatasyncs of the log).
    pub fn on_head_move(&self, on_move: impl Fn() + Send + Sync + 'static) -> HeadListener {
        self.head_source.listen(on_move)
    }

    pub fn reader(&self) -> &LogReader {
        &self.reader
    }
}

/// Blocking reads over redb snapshots. Call from a blocking thread, not the async reactor.
#[derive(Clone)]
pub struct LogReader {
    files: Arc<LogFiles>,
    account: Arc<str>,
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
        self.read_bounded(source, from, direction, limit, until, usize::MAX)
    }

    /// [`LogReader::read`] that stops after the first event taking the bytes of the events'
    /// data and metadata past `max_bytes`: what a reader holding the events in memory reads
    /// with.
    pub fn read_bounded(
        &self,
        source: &Source,
        from: Option<u64>,
        direction: Direction,
        limit: usize,
        until: Position,
        max_bytes: usize,
    ) -> Result<Option<Vec<RecordedEvent>>, StorageError> {
        let store = self.files.current()?;
        let partition = self.partition(&store)?;
        let range = store::ReadRange {
            from,
            direction,
            limit,
            max_bytes,
            until,
        };
        store.read(&partition, source, range)
    }

    /// Up to `limit` events of `source` with positions after `after` and up to `until`, in
    /// log order: how a reader that remembers only a position (a projection's checkpoint)
    /// resumes in any source.
    ///
    /// Like [`LogReader::read_bounded`], it stops after the first event that takes the events'
    /// data and metadata past `max_bytes`.
    pub fn read_after(
        &self,
        source: &Source,
        after: Position,
        limits: (usize, usize),
        until: Position,
    ) -> Result<Vec<RecordedEvent>, StorageError> {
        let mut out = Vec::new();
        self.visit_after(source, after, limits, until, &mut |e| {
            out.push(e.to_owned());
            true
        })?;
        Ok(out)
    }

    /// What [`LogReader::read_after`] reads, handed to `each` in order, borrowing the stored
    /// bytes (nothing allocated per event); `each` returns false to stop early.
    pub fn visit_after(
        &self,
        source: &Source,
        after: Position,
        (limit, max_bytes): (usize, usize),
        until: Position,
        each: &mut dyn FnMut(EventRef<'_>) -> bool,
    ) -> Result<(), StorageError> {
        let store = self.files.current()?;
        let partition = self.partition(&store)?;
        let from = match source {
            Source::Stream(name) => match store.revision_after(&partition, name, after)? {
                Some(revision) => revision,
                None => return Ok(()),
            },
            Source::All | Source::Category(_) => after + 1,
        };
        let range = store::ReadRange {
            from: Some(from),
            direction: Direction::Forward,
            limit,
            max_bytes,
            until,
        };
        store.visit(&partition, source, range, each)?;
        Ok(())
    }

    /// The stream name and revision of the event at `position`.
    pub fn locate(&self, position: Position) -> Result<Option<(String, u64)>, StorageError> {
        let store = self.files.current()?;
        store.locate(&*self.partition(&store)?, position)
    }

    /// This reader's partition in `store`. Its tables are committed before any handle
    /// exists, so a reopened file has it too.
    fn partition(&self, store: &store::Store) -> Result<Arc<store::Partition>, StorageError> {
        store
            .existing_partition(&self.account)
            .ok_or(StorageError::Unavailable)
    }
}

#[cfg(test)]
mod tests;
