//! The scheduler: runs every loaded projection from its checkpoint to the head of the log,
//! one batch at a time, on a bounded pool of worker threads.
//!
//! A projection with work is queued once; a worker takes it for a turn of batches (each: read
//! after the checkpoint, filter, `apply` in the guest, commit the view changes and the new
//! checkpoint in one transaction) and queues it again at the back if it is still behind, so a
//! hundred projections share the workers fairly and each is run by one worker at a time.
//! Within a turn, a second thread commits each batch and reads the next one while the guest
//! runs, so a lone projection catching up keeps both cores busy. New events reach the
//! scheduler through the log's head watch; nothing polls. A fault stops only its
//! projection: the failing event is found by re-running the batch one event at a time, the
//! events before it are committed, and the projection is retried with backoff.

mod batch;
mod status;

use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::log::{Log, LogReader, Position, RecordedEvent, Source, StorageError};
use crate::runtime::{Changes, Code, Fault, FaultKind, Limits, Runtime};
use crate::views::{ViewError, ViewStore};

pub use status::{FaultReport, State, Status, SubscriptionReport};

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
}

/// Events read from one source per batch: large enough that a call into the guest and a
/// commit are spread over many events, small enough to bound a batch's memory and latency.
pub const DEFAULT_BATCH: usize = 2048;

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
}

/// The set of projections and the workers that run them.
pub struct Projections {
    shared: Arc<Shared>,
    workers: Mutex<Vec<JoinHandle<()>>>,
}

struct Shared {
    /// Kept for as long as projections run: it owns the engine's epoch ticker.
    _runtime: Runtime,
    /// Most events read from one source per batch.
    max_batch: usize,
    reader: LogReader,
    head: watch::Receiver<Position>,
    entries: RwLock<BTreeMap<String, Entry>>,
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
        queue.ready.push_back(slot);
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

enum Entry {
    Loaded(Arc<Slot>),
    /// The file could not be loaded: why.
    Invalid(String),
}

/// One loaded projection version.
struct Slot {
    name: String,
    code: Code,
    sources: Vec<Source>,
    view: ViewStore,
    state: Mutex<SlotState>,
    /// The checkpoint, for readers waiting until a position is applied.
    progress: watch::Sender<Position>,
    /// A faulted projection runs again only when its backoff has passed; set by the retry
    /// task, which holds only this flag.
    retry_due: Arc<AtomicBool>,
}

/// A batch the guest has applied whose changes are not committed yet.
struct Pending {
    changes: Arc<Changes>,
    checkpoint: Position,
    applied: usize,
}

struct SlotState {
    checkpoint: Position,
    /// Queued or being run by a worker.
    scheduled: bool,
    fault: Option<FaultReport>,
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
        let mut entries = BTreeMap::new();
        for (name, path) in wasm_files(&config.projections)? {
            let entry = match load(&runtime, &config.views, &name, &path) {
                Ok(slot) => Entry::Loaded(Arc::new(slot)),
                Err(reason) => {
                    tracing::warn!(projection = %name, %reason, "projection not loaded");
                    Entry::Invalid(reason)
                }
            };
            entries.insert(name, entry);
        }
        let shared = Arc::new(Shared {
            _runtime: runtime,
            max_batch: config.max_batch.max(1),
            reader: log.reader().clone(),
            head: log.head(),
            entries: RwLock::new(entries),
            signal: Arc::default(),
            tokio,
        });
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
        Some(match entries.get(name)? {
            Entry::Loaded(slot) => slot.status(head),
            Entry::Invalid(reason) => Status {
                name: name.to_owned(),
                state: State::Invalid,
                version: None,
                position: 0,
                head,
                lag: head,
                events_per_second: 0.0,
                subscription: None,
                last_error: None,
                load_error: Some(reason.clone()),
            },
        })
    }

    /// The view of a loaded projection.
    pub fn view(&self, name: &str) -> Option<ViewStore> {
        match self
            .shared
            .entries
            .read()
            .expect("entries lock")
            .get(name)?
        {
            Entry::Loaded(slot) => Some(slot.view.clone()),
            Entry::Invalid(_) => None,
        }
    }

    /// Waits until the projection has applied `position` (true), or `timeout` passes (false).
    pub async fn wait_for(&self, name: &str, position: Position, timeout: Duration) -> bool {
        let mut progress = match self.shared.entries.read().expect("entries lock").get(name) {
            Some(Entry::Loaded(slot)) => slot.progress.subscribe(),
            _ => return false,
        };
        tokio::time::timeout(timeout, progress.wait_for(|p| *p >= position))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// Stops the workers after their current batch and makes every view's checkpoint
    /// durable. Blocking.
    pub fn shutdown(&self) {
        self.stop_workers();
        for entry in self.shared.entries.read().expect("entries lock").values() {
            if let Entry::Loaded(slot) = entry {
                let checkpoint = slot.state.lock().expect("slot lock").checkpoint;
                if let Err(e) = slot.view.commit(&Changes::new(), checkpoint, true) {
                    tracing::error!(projection = %slot.name, error = %e, "final view commit failed");
                }
            }
        }
    }
}

impl Projections {
    fn stop_workers(&self) {
        {
            let mut queue = self.shared.signal.queue.lock().expect("queue lock");
            queue.stopping = true;
            queue.ready.clear();
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

fn wasm_files(folder: &Path) -> Result<Vec<(String, PathBuf)>, SchedulerError> {
    let error = |source| SchedulerError::Folder {
        path: folder.display().to_string(),
        source,
    };
    let mut files = Vec::new();
    for entry in std::fs::read_dir(folder).map_err(error)? {
        let path = entry.map_err(error)?.path();
        let is_wasm = path.extension().is_some_and(|e| e == "wasm") && path.is_file();
        let Some(name) = path
            .file_stem()
            .and_then(|s| s.to_str())
            .filter(|_| is_wasm)
        else {
            continue;
        };
        if valid_name(name) {
            files.push((name.to_owned(), path));
        } else {
            tracing::warn!(file = %path.display(), "ignored: a projection name is 1 to 64 of a-z, 0-9, - and _");
        }
    }
    files.sort();
    Ok(files)
}

/// Projection names appear in URLs and file names: keep them plain.
pub fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

fn load(runtime: &Runtime, views: &Path, name: &str, path: &Path) -> Result<Slot, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
    let code = runtime.load(name, &bytes).map_err(|e| e.to_string())?;
    let sources = batch::sources(code.subscription())?;
    let view = ViewStore::open(views, name, &code.hash().to_string()).map_err(|e| e.to_string())?;
    let checkpoint = view.checkpoint().map_err(|e| e.to_string())?;
    tracing::info!(projection = name, version = %code.hash().short(), checkpoint, "projection loaded");
    Ok(Slot {
        name: name.to_owned(),
        sources,
        code,
        view,
        state: Mutex::new(SlotState {
            checkpoint,
            scheduled: false,
            fault: None,
            rate: status::Rate::default(),
            last_durable: Instant::now(),
        }),
        progress: watch::Sender::new(checkpoint),
        retry_due: Arc::default(),
    })
}

impl Shared {
    fn slots(&self) -> Vec<Arc<Slot>> {
        self.entries
            .read()
            .expect("entries lock")
            .values()
            .filter_map(|e| match e {
                Entry::Loaded(slot) => Some(slot.clone()),
                Entry::Invalid(_) => None,
            })
            .collect()
    }

    fn schedule_all(&self) {
        for slot in self.slots() {
            self.schedule(&slot);
        }
    }

    /// Queues `slot` if it is behind the head, not queued or running already, and not
    /// waiting out a fault's backoff.
    fn schedule(&self, slot: &Arc<Slot>) {
        let head = *self.head.borrow();
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
    /// others wait. Each batch's changes are committed on a helper thread while the guest
    /// applies the next batch, which reads them through [`ViewStore::reader`]'s pending layer.
    fn run_turn(&self, slot: &Slot) -> Next {
        let started = Instant::now();
        let mut pending: Option<Pending> = None;
        let mut read_ahead: Option<batch::Batch> = None;
        loop {
            let head = *self.head.borrow();
            let after = pending
                .as_ref()
                .map_or_else(|| slot.checkpoint(), |p| p.checkpoint);
            if after >= head || self.should_yield(started) {
                let next = if after >= head {
                    Next::Idle
                } else {
                    Next::Again
                };
                return slot.settle(pending).map_or_else(|fault| fault, |()| next);
            }
            let batch = match read_ahead.take() {
                Some(batch) => batch,
                None => match self.read(slot, after, head) {
                    Ok(batch) => batch,
                    Err(e) => return slot.settle_then_fault(pending, after, &e.to_string()),
                },
            };
            if batch.events.is_empty() {
                let p = pending.get_or_insert_with(|| Pending {
                    changes: Arc::default(),
                    checkpoint: after,
                    applied: 0,
                });
                p.checkpoint = batch.checkpoint;
                continue;
            }
            let layer = pending
                .as_ref()
                .map(|p| p.changes.clone())
                .unwrap_or_default();
            let reader = match slot.view.reader(layer) {
                Ok(reader) => reader,
                Err(e) => return slot.settle_then_fault(pending, after, &e.to_string()),
            };
            let previous = pending.take();
            let (committed, outcome, ahead) = std::thread::scope(|scope| {
                let helper = scope.spawn(|| {
                    let committed = slot.settle(previous);
                    let ahead = (committed.is_ok() && batch.checkpoint < head)
                        .then(|| self.read(slot, batch.checkpoint, head));
                    (committed, ahead)
                });
                let outcome = slot.code.apply(&batch.frame, batch.events.len(), reader);
                let (committed, ahead) = helper.join().expect("the commit thread panicked");
                (committed, outcome, ahead)
            });
            if let Err(fault) = committed {
                return fault;
            }
            match outcome {
                Ok(applied) => {
                    pending = Some(Pending {
                        changes: Arc::new(applied.changes),
                        checkpoint: batch.checkpoint,
                        applied: batch.events.len(),
                    });
                    read_ahead = ahead.and_then(Result::ok);
                }
                Err(fault) if batch.events.len() == 1 => {
                    return slot.fault(&batch.events[0], fault);
                }
                Err(_) => return slot.isolate(&batch.events, batch.checkpoint),
            }
        }
    }

    /// Whether the worker should put its projection back in the queue: the workers are
    /// stopping, or its turn is over and other work waits.
    fn should_yield(&self, started: Instant) -> bool {
        let queue = self.signal.queue.lock().expect("queue lock");
        queue.stopping || (started.elapsed() >= TURN && (!queue.ready.is_empty() || queue.rescan))
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
    fn status(&self, head: Position) -> Status {
        let state = self.state.lock().expect("slot lock");
        let s = self.code.subscription();
        Status {
            name: self.name.clone(),
            state: if state.fault.is_some() {
                State::Faulted
            } else if state.checkpoint >= head {
                State::CaughtUp
            } else {
                State::Running
            },
            version: Some(self.code.hash().to_string()),
            position: state.checkpoint,
            head,
            lag: head.saturating_sub(state.checkpoint),
            events_per_second: state.rate.per_second(),
            subscription: Some(SubscriptionReport {
                streams: s.streams.clone(),
                categories: s.categories.clone(),
                event_types: s.event_types.clone(),
            }),
            last_error: state.fault.clone(),
            load_error: None,
        }
    }

    fn checkpoint(&self) -> Position {
        self.state.lock().expect("slot lock").checkpoint
    }

    /// Commits a pending batch, if any; `Err` holds the fault when the commit failed.
    fn settle(&self, pending: Option<Pending>) -> Result<(), Next> {
        match pending.map(|p| self.commit(&p.changes, p.checkpoint, p.applied)) {
            Some(Next::Faulted(backoff)) => Err(Next::Faulted(backoff)),
            _ => Ok(()),
        }
    }

    /// Commits a pending batch, then records a host fault at the position after `after`.
    fn settle_then_fault(&self, pending: Option<Pending>, after: Position, message: &str) -> Next {
        match self.settle(pending) {
            Ok(()) => self.host_fault(after, message),
            Err(fault) => fault,
        }
    }

    /// Commits a batch's changes with its checkpoint; a success clears any fault.
    fn commit(&self, changes: &Changes, checkpoint: Position, applied: usize) -> Next {
        let durable = self.state.lock().expect("slot lock").last_durable.elapsed() >= DURABLE_EVERY;
        if let Err(e) = self.view.commit(changes, checkpoint, durable) {
            return self.host_fault(checkpoint, &e.to_string());
        }
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
            let reader = match self.view.reader(Arc::default()) {
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
                Err(fault) => return self.fault(event, fault),
            }
        }
        self.commit(&Changes::new(), checkpoint, 0)
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
