//! The scheduler: runs every loaded projection version from its checkpoint to the head of
//! the log, in batches, on a bounded pool of worker threads. Which versions exist is the
//! registry's business (`registry.rs`), kept in step with the projections folder
//! (`folder.rs`).
//!
//! A projection with work is queued once; a worker takes it for a turn of batches (each: read
//! after the checkpoint, filter, `apply` in the guest, commit the view changes and the new
//! checkpoint in one transaction) and queues it again at the back if it is still behind, so a
//! hundred projections share the workers fairly and each is run by one worker at a time.
//! Within a turn, a helper thread reads the next batch while the guest applies one, and a
//! commit thread ([`commits`]) commits what the guest applied meanwhile (a rebuilding version
//! merges many batches into one commit); so a lone projection catching up keeps both cores
//! busy. New events reach the
//! scheduler through the log's head watch; nothing polls. A fault stops only its
//! projection: the failing event is found by re-running the batch one event at a time, the
//! events before it are committed, and the projection is retried with backoff.

mod batch;
mod commits;
mod folder;
mod registry;
mod status;

use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::log::{Log, LogReader, Position, RecordedEvent, Source, StorageError};
use crate::runtime::{Changes, Code, Fault, FaultKind, Limits, Runtime};
use crate::views::{ViewDir, ViewError, ViewStore};

pub use folder::valid_name;
pub use registry::ControlError;
pub use status::{FaultReport, RebuildStatus, SkipRecord, State, Status, SubscriptionReport};

/// How often at most a view's commit is made durable (fsync'd); commits in between are
/// rolled back by a crash, with their checkpoints, and simply replayed.
const DURABLE_EVERY: Duration = Duration::from_secs(1);
/// Longest wait before retrying a faulted projection.
const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// A worker keeps a projection for at least this long before yielding to others waiting:
/// long enough that reads and commits overlap the guest over many batches, short enough that
/// a projection catching up on millions of events holds the others back by little.
const TURN: Duration = Duration::from_millis(50);

pub struct SchedulerConfig {
    /// The folder of `<name>.wasm` files.
    pub projections: PathBuf,
    /// Where view databases live (`<views>/<name>/<version>.redb`).
    pub views: PathBuf,
    /// Where compiled components are cached.
    pub cache: PathBuf,
    pub workers: usize,
    pub limits: Limits,
    /// Most events read from one source per batch ([`DEFAULT_BATCH`] unless testing).
    pub max_batch: usize,
    /// Follow changes to the folder (the server); without it, the folder is read once.
    pub watch: bool,
}

/// Events read from one source per batch: large enough that a call into the guest (a fresh
/// instance each) is spread over many events, small enough to bound a batch's memory, and
/// the work lost to a fault before the failing event is isolated. Commits are sized apart
/// from batches ([`commits`]).
pub const DEFAULT_BATCH: usize = 4096;

#[derive(Debug, thiserror::Error)]
pub enum SchedulerError {
    #[error(transparent)]
    Engine(#[from] crate::runtime::EngineError),
    #[error("reading the projections folder {path}: {source}")]
    Folder {
        path: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    View(#[from] ViewError),
    #[error("starting a worker thread: {0}")]
    Thread(std::io::Error),
    #[error("watching the projections folder {path}: {message}")]
    Watch { path: String, message: String },
}

/// The set of projections and the workers that run them.
pub struct Projections {
    shared: Arc<Shared>,
    workers: Mutex<Vec<JoinHandle<()>>>,
    /// Dropped first when stopping, so that no deploy starts while the workers stop.
    folder: Mutex<Option<folder::FolderWatch>>,
}

struct Shared {
    /// Compiles new versions; owns the engine's epoch ticker.
    runtime: Runtime,
    /// The folder of `<name>.wasm` files: the one source of truth for what is deployed.
    folder: PathBuf,
    views: ViewDir,
    /// Most events read from one source per batch.
    max_batch: usize,
    reader: LogReader,
    head: watch::Receiver<Position>,
    entries: RwLock<BTreeMap<String, registry::Entry>>,
    /// Held while a version is deployed, rebuilt or removed: one change to the set at a time.
    deploying: Mutex<()>,
    signal: Arc<Signal>,
    tokio: tokio::runtime::Handle,
}

/// The work queue and what wakes the workers. Background tasks (the head follower, fault
/// retries) hold only this, never a projection: a view database must close as soon as
/// `Projections` is dropped.
#[derive(Default)]
struct Signal {
    queue: Mutex<Queue>,
    wake: Condvar,
}

#[derive(Default)]
struct Queue {
    ready: VecDeque<Arc<Slot>>,
    /// Versions rebuilding from position 0: taken only when no live projection waits, so a
    /// long rebuild cannot hold the live views back.
    rebuilding: VecDeque<Arc<Slot>>,
    /// The head moved, or a backoff ended: a worker should look at every projection.
    rescan: bool,
    stopping: bool,
}

impl Signal {
    /// Queues a projection for a worker, unless the workers are stopping (a queue left
    /// holding a projection would keep its view open).
    fn push(&self, slot: Arc<Slot>) {
        let mut queue = self.queue.lock().expect("queue lock");
        if queue.stopping {
            return;
        }
        if slot.rebuilding.load(Ordering::Relaxed) {
            queue.rebuilding.push_back(slot);
        } else {
            queue.ready.push_back(slot);
        }
        drop(queue);
        self.wake.notify_one();
    }

    /// Asks a worker to look at every projection again; false once stopping.
    fn rescan(&self) -> bool {
        let mut queue = self.queue.lock().expect("queue lock");
        if queue.stopping {
            return false;
        }
        queue.rescan = true;
        drop(queue);
        self.wake.notify_one();
        true
    }
}

/// One loaded projection version.
struct Slot {
    name: String,
    /// Its storage in the views folder.
    storage: String,
    code: Code,
    sources: Vec<Source>,
    view: ViewStore,
    state: Mutex<SlotState>,
    /// The checkpoint, for readers waiting until a position is applied.
    progress: watch::Sender<Position>,
    /// A faulted projection runs again only when its backoff has passed; set by the retry
    /// task, which holds only this flag.
    retry_due: Arc<AtomicBool>,
    /// Building from position 0 beside a serving version.
    rebuilding: AtomicBool,
    /// Replaced or removed: never run again.
    retired: AtomicBool,
    /// Paused by an operator.
    paused: AtomicBool,
}

/// Why a turn's batches stopped; acted on once everything applied is committed.
enum TurnEnd {
    /// Paused or retired.
    Stopped,
    /// Others wait, or the workers stop.
    Yield,
    CaughtUp,
    /// A commit failed; its fault is recorded.
    CommitFailed(Next),
    /// Reading the log or the view failed after `after`.
    HostFault {
        after: Position,
        message: String,
    },
    /// The guest failed on a batch of one event.
    GuestFault {
        event: RecordedEvent,
        fault: Fault,
    },
    /// The guest failed somewhere in a batch of several events.
    Failed(batch::Batch),
}

impl TurnEnd {
    fn host_fault(after: Position, error: impl std::fmt::Display) -> Self {
        TurnEnd::HostFault {
            after,
            message: error.to_string(),
        }
    }
}

struct SlotState {
    checkpoint: Position,
    /// Queued or being run by a worker.
    scheduled: bool,
    fault: Option<FaultReport>,
    /// Events an operator chose to skip, oldest first.
    skipped: Vec<SkipRecord>,
    rate: status::Rate,
    last_durable: Instant,
}

/// What a worker does with a projection after a batch.
enum Next {
    Again,
    Idle,
    Faulted(Duration),
}

impl Projections {
    /// Loads every `<name>.wasm` in the folder and starts the workers. Blocking (compiling
    /// components takes a while): call it off the reactor. Files that fail to load are
    /// reported as invalid; they do not stop the others.
    pub fn start(
        config: SchedulerConfig,
        log: &Log,
        tokio: tokio::runtime::Handle,
    ) -> Result<Self, SchedulerError> {
        let runtime = Runtime::new(&config.cache, config.limits.clone())?;
        let shared = Arc::new(Shared {
            runtime,
            folder: config.projections.clone(),
            views: ViewDir::new(&config.views),
            max_batch: config.max_batch.max(1),
            reader: log.reader().clone(),
            head: log.head(),
            entries: RwLock::default(),
            deploying: Mutex::default(),
            signal: Arc::default(),
            tokio,
        });
        // Watch before reading the folder, so that no change falls between the two.
        let folder = if config.watch {
            Some(folder::watch(&config.projections, Arc::downgrade(&shared))?)
        } else {
            None
        };
        shared.reconcile()?;
        let mut workers = Vec::new();
        for n in 0..config.workers.max(1) {
            let shared = shared.clone();
            let thread = std::thread::Builder::new()
                .name(format!("projection-worker-{n}"))
                .spawn(move || shared.work())
                .map_err(SchedulerError::Thread)?;
            workers.push(thread);
        }
        shared.schedule_all();
        let signal = shared.signal.clone();
        let mut head = log.head();
        shared
            .tokio
            .spawn(async move { while head.changed().await.is_ok() && signal.rescan() {} });
        Ok(Projections {
            shared,
            workers: Mutex::new(workers),
            folder: Mutex::new(folder),
        })
    }

    pub fn names(&self) -> Vec<String> {
        self.shared
            .entries
            .read()
            .expect("entries lock")
            .keys()
            .cloned()
            .collect()
    }

    pub fn status(&self, name: &str) -> Option<Status> {
        let head = *self.shared.head.borrow();
        let entries = self.shared.entries.read().expect("entries lock");
        Some(entries.get(name)?.status(name, head))
    }

    /// The view queries are answered from.
    pub fn view(&self, name: &str) -> Option<ViewStore> {
        Some(self.shared.serving(name)?.view.clone())
    }

    /// Waits until the serving version has applied `position` (true), or `timeout` passes
    /// (false). A version swapped in meanwhile is waited on in its turn.
    pub async fn wait_for(&self, name: &str, position: Position, timeout: Duration) -> bool {
        let wait = async {
            loop {
                let Some(slot) = self.shared.serving(name) else {
                    return false;
                };
                let mut progress = slot.progress.subscribe();
                let reached = progress
                    .wait_for(|p| *p >= position || slot.retired.load(Ordering::Relaxed))
                    .await
                    .is_ok_and(|p| *p >= position);
                if reached {
                    return true;
                }
                if !slot.retired.load(Ordering::Relaxed) {
                    return false;
                }
            }
        };
        tokio::time::timeout(timeout, wait).await.unwrap_or(false)
    }

    /// Writes `wasm` into the folder as `<name>.wasm` (aside, then renamed in), where the
    /// watcher picks it up like any other file: the folder stays the one source of truth.
    /// Blocking.
    pub fn write_file(&self, name: &str, wasm: &[u8]) -> std::io::Result<()> {
        use std::io::Write;
        let partial = self.shared.folder.join(format!(".{name}.wasm.partial"));
        let mut file = std::fs::File::create(&partial)?;
        file.write_all(wasm)?;
        file.sync_all()?;
        std::fs::rename(&partial, self.shared.folder.join(format!("{name}.wasm")))
    }

    /// Rebuilds the projection from position 0 beside the serving version (blue/green).
    /// Blocking: it may compile.
    pub fn rebuild(&self, name: &str) -> Result<(), ControlError> {
        self.shared.rebuild(name)
    }

    /// Stops running the projection (and its rebuild) until [`Projections::resume`].
    pub fn pause(&self, name: &str) -> Result<(), ControlError> {
        self.shared.set_paused(name, true)
    }

    pub fn resume(&self, name: &str) -> Result<(), ControlError> {
        self.shared.set_paused(name, false)
    }

    /// Runs a faulted version again now rather than when its backoff ends.
    pub fn retry(&self, name: &str) -> Result<(), ControlError> {
        self.shared.retry(name)
    }

    /// Moves a faulted version past the event it fails on, and records that in its status.
    /// Blocking: it commits.
    pub fn skip(&self, name: &str) -> Result<(), ControlError> {
        self.shared.skip(name)
    }

    /// Stops the workers after their current batch and makes every view's checkpoint
    /// durable. Blocking.
    pub fn shutdown(&self) {
        self.stop_workers();
        for slot in self.shared.slots() {
            let checkpoint = slot.checkpoint();
            if let Err(e) = slot.view.commit(&Changes::default(), checkpoint, true) {
                tracing::error!(projection = %slot.name, error = %e, "final view commit failed");
            }
        }
    }
}

impl Projections {
    fn stop_workers(&self) {
        drop(self.folder.lock().expect("folder lock").take());
        {
            let mut queue = self.shared.signal.queue.lock().expect("queue lock");
            queue.stopping = true;
            queue.ready.clear();
            queue.rebuilding.clear();
        }
        self.shared.signal.wake.notify_all();
        for worker in self.workers.lock().expect("workers lock").drain(..) {
            if worker.join().is_err() {
                tracing::error!("a projection worker panicked");
            }
        }
    }
}

/// Dropping without [`Projections::shutdown`] stops the workers but skips the final durable
/// commits: the views then resume from their last durable checkpoint, as after a crash.
impl Drop for Projections {
    fn drop(&mut self) {
        self.stop_workers();
    }
}

impl Shared {
    /// Every version being run, serving or rebuilding.
    fn slots(&self) -> Vec<Arc<Slot>> {
        self.entries
            .read()
            .expect("entries lock")
            .values()
            .flat_map(|e| e.serving.iter().chain(&e.building).cloned())
            .collect()
    }

    fn serving(&self, name: &str) -> Option<Arc<Slot>> {
        self.entries
            .read()
            .expect("entries lock")
            .get(name)?
            .serving
            .clone()
    }

    fn schedule_all(&self) {
        for slot in self.slots() {
            self.schedule(&slot);
        }
    }

    /// Queues `slot` if it is behind the head, not queued or running already, not paused or
    /// retired, and not waiting out a fault's backoff.
    fn schedule(&self, slot: &Arc<Slot>) {
        let head = *self.head.borrow();
        if slot.stopped() {
            return;
        }
        {
            let mut state = slot.state.lock().expect("slot lock");
            let blocked = state.fault.is_some() && !slot.retry_due.load(Ordering::Relaxed);
            if state.scheduled || blocked || state.checkpoint >= head {
                return;
            }
            state.scheduled = true;
        }
        self.signal.push(slot.clone());
    }

    fn work(self: Arc<Self>) {
        loop {
            let slot = {
                let mut queue = self.signal.queue.lock().expect("queue lock");
                loop {
                    if queue.stopping {
                        return;
                    }
                    if queue.rescan {
                        queue.rescan = false;
                        drop(queue);
                        self.schedule_all();
                        queue = self.signal.queue.lock().expect("queue lock");
                        continue;
                    }
                    if let Some(slot) = queue.ready.pop_front() {
                        break slot;
                    }
                    if let Some(slot) = queue.rebuilding.pop_front() {
                        break slot;
                    }
                    queue = self.signal.wake.wait(queue).expect("queue lock");
                }
            };
            let next = self.run_turn(&slot);
            match next {
                Next::Again => self.signal.push(slot),
                Next::Idle => {
                    slot.state.lock().expect("slot lock").scheduled = false;
                    // The head may have moved after this batch read it.
                    self.schedule(&slot);
                }
                Next::Faulted(backoff) => {
                    slot.state.lock().expect("slot lock").scheduled = false;
                    let (signal, retry_due) = (self.signal.clone(), slot.retry_due.clone());
                    self.tokio.spawn(async move {
                        tokio::time::sleep(backoff).await;
                        retry_due.store(true, Ordering::Relaxed);
                        signal.rescan();
                    });
                }
            }
        }
    }

    /// Runs batches of `slot` until it reaches the head, faults, or has had its turn while
    /// others wait. A helper thread reads the next batch while the guest applies one, and a
    /// commit thread ([`commits`]) commits applied batches meanwhile; what ends the turn is
    /// acted on once they are all committed.
    fn run_turn(&self, slot: &Arc<Slot>) -> Next {
        std::thread::scope(|scope| {
            let mut commits = commits::Commits::start(scope, slot);
            let end = self.apply_batches(scope, slot, &mut commits);
            if let Err(fault) = commits.finish() {
                return fault;
            }
            match end {
                TurnEnd::Stopped => Next::Idle,
                TurnEnd::Yield => Next::Again,
                TurnEnd::CommitFailed(fault) => fault,
                TurnEnd::CaughtUp => {
                    if slot.rebuilding.load(Ordering::Relaxed) {
                        self.promote(slot);
                    }
                    Next::Idle
                }
                TurnEnd::HostFault { after, message } => slot.host_fault(after, &message),
                TurnEnd::GuestFault { event, fault } => slot.guest_fault(&event, fault),
                TurnEnd::Failed(batch) => slot.isolate(&batch.events, batch.checkpoint),
            }
        })
    }

    fn apply_batches<'scope>(
        &'scope self,
        scope: &'scope std::thread::Scope<'scope, '_>,
        slot: &'scope Slot,
        commits: &mut commits::Commits<'scope>,
    ) -> TurnEnd {
        let started = Instant::now();
        let mut read_ahead: Option<batch::Batch> = None;
        loop {
            if let Some(fault) = commits.failed() {
                return TurnEnd::CommitFailed(fault);
            }
            let head = *self.head.borrow();
            let after = commits.position();
            if slot.stopped() {
                return TurnEnd::Stopped;
            }
            if after >= head {
                return TurnEnd::CaughtUp;
            }
            if self.should_yield(started) {
                return TurnEnd::Yield;
            }
            let batch = match read_ahead.take() {
                Some(batch) => batch,
                None => match self.read(slot, after, head) {
                    Ok(batch) => batch,
                    Err(e) => return TurnEnd::host_fault(after, e),
                },
            };
            if batch.events.is_empty() {
                commits.advance(batch.checkpoint, head);
                continue;
            }
            let reader = match slot.view.reader(commits.layers()) {
                Ok(reader) => reader,
                Err(e) => return TurnEnd::host_fault(after, e),
            };
            let next_after = batch.checkpoint;
            let helper =
                scope.spawn(move || (next_after < head).then(|| self.read(slot, next_after, head)));
            let outcome = slot.code.apply(&batch.frame, batch.events.len(), reader);
            let ahead = helper.join().expect("the read-ahead thread panicked");
            match outcome {
                Ok(applied) => {
                    commits.add(applied.changes, batch.checkpoint, batch.events.len(), head);
                    read_ahead = ahead.and_then(Result::ok);
                }
                Err(fault) if batch.events.len() == 1 => {
                    let event = batch.events.into_iter().next().expect("one event");
                    return TurnEnd::GuestFault { event, fault };
                }
                Err(_) => return TurnEnd::Failed(batch),
            }
        }
    }

    /// Whether the worker should put its projection back in the queue: the workers are
    /// stopping, or its turn is over and other work waits.
    fn should_yield(&self, started: Instant) -> bool {
        let queue = self.signal.queue.lock().expect("queue lock");
        queue.stopping
            || (started.elapsed() >= TURN
                && (!queue.ready.is_empty() || !queue.rebuilding.is_empty() || queue.rescan))
    }

    fn read(
        &self,
        slot: &Slot,
        after: Position,
        head: Position,
    ) -> Result<batch::Batch, StorageError> {
        batch::next(
            &self.reader,
            &slot.sources,
            slot.code.subscription(),
            after,
            head,
            self.max_batch,
        )
    }
}

impl Slot {
    fn checkpoint(&self) -> Position {
        self.state.lock().expect("slot lock").checkpoint
    }

    /// Paused or retired: a worker lets go of it.
    fn stopped(&self) -> bool {
        self.paused.load(Ordering::Relaxed) || self.retired.load(Ordering::Relaxed)
    }

    /// Commits a batch's changes with its checkpoint; a success clears any fault.
    fn commit(&self, changes: &Changes, checkpoint: Position, applied: usize) -> Next {
        let durable = self.state.lock().expect("slot lock").last_durable.elapsed() >= DURABLE_EVERY;
        if let Err(e) = self.view.commit(changes, checkpoint, durable) {
            return self.host_fault(checkpoint, &e.to_string());
        }
        self.committed(checkpoint, applied, durable)
    }

    /// Records a commit that reached `checkpoint`; one that applied events, or passed the
    /// faulted event, clears the fault.
    fn committed(&self, checkpoint: Position, applied: usize, durable: bool) -> Next {
        let mut state = self.state.lock().expect("slot lock");
        if durable {
            state.last_durable = Instant::now();
        }
        state.checkpoint = checkpoint;
        state.rate.record(checkpoint);
        if applied > 0
            || state
                .fault
                .as_ref()
                .is_some_and(|f| f.position <= checkpoint)
        {
            state.fault = None;
            self.retry_due.store(false, Ordering::Relaxed);
        }
        drop(state);
        self.progress.send_replace(checkpoint);
        Next::Again
    }

    /// The batch failed somewhere: apply its events one at a time, committing each, until
    /// the one that fails, which faults the projection. Deterministic guests fail at the same
    /// event every time; if none fails alone, the batch as a whole was over a limit, and its
    /// events are all committed.
    fn isolate(&self, events: &[RecordedEvent], checkpoint: Position) -> Next {
        for event in events {
            let mut frame = Vec::new();
            batch::encode(&mut frame, event);
            let reader = match self.view.reader(Vec::new()) {
                Ok(reader) => reader,
                Err(e) => return self.host_fault(event.position - 1, &e.to_string()),
            };
            match self.code.apply(&frame, 1, reader) {
                Ok(applied) => {
                    if let Next::Faulted(backoff) = self.commit(&applied.changes, event.position, 1)
                    {
                        return Next::Faulted(backoff);
                    }
                }
                Err(fault) => return self.guest_fault(event, fault),
            }
        }
        self.commit(&Changes::default(), checkpoint, 0)
    }

    /// The guest failed on `event`, and every event before it is committed or was passed
    /// over by the subscription: the checkpoint steps past the latter, so that it stands just
    /// before the failing event, then the fault is recorded.
    fn guest_fault(&self, event: &RecordedEvent, fault: Fault) -> Next {
        if self.checkpoint() + 1 < event.position
            && let Next::Faulted(backoff) = self.commit(&Changes::default(), event.position - 1, 0)
        {
            return Next::Faulted(backoff);
        }
        self.fault(event, fault)
    }

    fn fault(&self, event: &RecordedEvent, fault: Fault) -> Next {
        let mut state = self.state.lock().expect("slot lock");
        let attempts = match &state.fault {
            Some(previous) if previous.position == event.position => previous.attempts + 1,
            _ => 1,
        };
        tracing::warn!(
            projection = %self.name, position = event.position, kind = ?fault.kind,
            attempts, "projection faulted: {}", fault.message
        );
        state.fault = Some(FaultReport {
            kind: fault.kind,
            message: fault.message,
            position: event.position,
            event_id: event.id.to_string(),
            stream: event.stream.clone(),
            attempts,
        });
        self.retry_due.store(false, Ordering::Relaxed);
        Next::Faulted(backoff(attempts))
    }

    fn host_fault(&self, position: Position, message: &str) -> Next {
        let event = RecordedEvent {
            position: position + 1,
            stream: String::new(),
            revision: 0,
            event_type: String::new(),
            id: uuid::Uuid::nil(),
            recorded_at: 0,
            data: Vec::new(),
            metadata: Vec::new(),
        };
        self.fault(
            &event,
            Fault {
                kind: FaultKind::Host,
                message: message.to_owned(),
            },
        )
    }
}

#[cfg(test)]
mod tests;

/// 1 s, 2 s, 4 s, ... up to a minute.
fn backoff(attempts: u32) -> Duration {
    Duration::from_secs(1u64 << attempts.saturating_sub(1).min(6)).min(MAX_BACKOFF)
}
