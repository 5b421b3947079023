//! The scheduler: runs every loaded projection version from its checkpoint to the head of
//! the log, in batches, on a bounded pool of worker threads. Which versions exist is the
//! registry's business (`registry.rs`), kept in step with the projections folder
//! (`folder.rs`).
//!
//! A projection with work is queued once; a worker takes it for a turn of batches (each: read
//! after the checkpoint, filter, `apply` in the guest, commit the view changes and the new
//! checkpoint in one transaction) and queues it again at the back if it is still behind, so a
//! hundred projections share the workers fairly and each is run by one worker at a time.
//! Within a turn, a read-ahead thread (`read_ahead.rs`) reads the next batch while the guest
//! applies one, and a commit thread ([`commits`]) commits what the guest applied meanwhile (a
//! rebuilding version merges many batches into one commit); so a lone projection catching up
//! keeps both cores busy. New events reach the
//! scheduler through the log's head watch; nothing polls. A fault stops only its
//! projection: the failing event is found by re-running the batch one event at a time, the
//! events before it are committed, and the projection is retried with backoff.

mod batch;
mod commits;
mod deploy;
mod folder;
mod queue;
mod read_ahead;
mod registry;
mod slot;
mod status;
mod worker;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::thread::JoinHandle;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::watch;

use crate::log::{Log, LogReader, Position};
use crate::runtime::{Changes, Runtime};
use crate::views::{Quota, ViewDir, ViewError, ViewStore};

pub use folder::valid_name;
pub use registry::ControlError;
pub use status::{FaultReport, Rate, RebuildStatus, SkipRecord, State, Status, SubscriptionReport};

use queue::Signal;
use registry::Registry;
use slot::{Claim, Slot};

pub struct SchedulerConfig {
    /// The folder of `<name>.wasm` files.
    pub projections: PathBuf,
    /// Where view databases live (`<views>/<name>/<version>.redb`).
    pub views: PathBuf,
    pub workers: usize,
    /// Most events read from one source per batch ([`DEFAULT_BATCH`] unless testing).
    pub max_batch: usize,
    /// Follow changes to the folder (the server); without it, the folder is read once.
    pub watch: bool,
    /// The account's view storage limit, checked before each turn.
    pub quota: Option<Arc<Quota>>,
    /// The account the projections belong to (their metrics' `account` label).
    pub account: String,
    /// Changes each serving version keeps for readers of its change feed.
    pub change_retention: usize,
}

/// Events read from one source per batch: large enough that a call into the guest (a fresh
/// instance each) is spread over many events, small enough to bound a batch's memory, and
/// the work lost to a fault before the failing event is isolated. Commits are sized apart
/// from batches ([`commits`]).
pub const DEFAULT_BATCH: usize = 4096;

#[derive(Debug, thiserror::Error)]
pub enum SchedulerError {
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
///
/// Locks, in the order they are taken (a lock is never taken while holding a later one):
/// `Registry::deploying` (one change to the set at a time; held across its file-system
/// steps, never by a reader), a slot's `state`, the work queue (`Signal::queue`; also taken
/// by the head listener on the log's syncer thread, inside the head's listener list). None is held
/// across a call into a guest; only `deploying` is held across I/O. HTTP reads take none of
/// them but a slot's `state` for a status (no I/O under it).
pub struct Projections {
    shared: Arc<Shared>,
    /// The worker threads: started by `start`, stopped and joined by `stop_workers`.
    workers: Mutex<Vec<JoinHandle<()>>>,
    /// Dropped first when stopping, so that no deploy starts while the workers stop.
    folder: Mutex<Option<folder::FolderWatch>>,
    /// Wakes a worker when the log's head moves (see `start`).
    _head_listener: crate::log::HeadListener,
}

struct Shared {
    /// Itself, for the compiler thread to call back without keeping it alive.
    me: std::sync::Weak<Shared>,
    /// Compiles new versions; shared by every account's projections.
    runtime: Arc<Runtime>,
    /// The folder of `<name>.wasm` files: the one source of truth for what is deployed.
    folder: PathBuf,
    views: ViewDir,
    /// Most events read from one source per batch.
    max_batch: usize,
    reader: LogReader,
    head: watch::Receiver<Position>,
    registry: Registry,
    signal: Arc<Signal>,
    quota: Option<Arc<Quota>>,
    account: Arc<str>,
    change_retention: usize,
}

impl Projections {
    /// Loads every `<name>.wasm` in the folder and starts the workers. Blocking (compiling
    /// components takes a while): call it off the reactor. Files that fail to load are
    /// reported as invalid; they do not stop the others. `runtime` (the engine, the guests'
    /// limits and the compile cache) may be shared with other sets of projections: each
    /// account has its own set, all on one engine.
    pub fn start(
        config: SchedulerConfig,
        runtime: Arc<Runtime>,
        log: &Log,
        tokio: tokio::runtime::Handle,
    ) -> Result<Self, SchedulerError> {
        let shared = Arc::new_cyclic(|me| Shared {
            me: me.clone(),
            runtime,
            folder: config.projections.clone(),
            views: ViewDir::new(&config.views),
            max_batch: config.max_batch.max(1),
            reader: log.reader().clone(),
            head: log.head(),
            registry: Registry::new(),
            signal: Arc::new(Signal::new(tokio.clone())),
            quota: config.quota.clone(),
            account: config.account.as_str().into(),
            change_retention: config.change_retention,
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
        // The head follower: a listener the syncer calls after every move of the account's
        // head (after the appenders' answers), unregistered when `Projections` drops. While no
        // projection is loaded it wakes no worker (a deploy schedules its projection itself
        // after publishing it), so an append to an account without projections wakes nothing.
        let signal = shared.signal.clone();
        let loaded = shared.registry.loaded.clone();
        let head_listener = log.on_head_move(move || {
            if loaded.load(Ordering::SeqCst) {
                signal.rescan();
            }
        });
        // Registered before the first look at every projection: no append falls between.
        shared.schedule_all();
        Ok(Projections {
            shared,
            workers: Mutex::new(workers),
            folder: Mutex::new(folder),
            _head_listener: head_listener,
        })
    }

    /// Every projection's status, by name. Lock-free but for each slot's state.
    pub fn statuses(&self) -> Vec<Status> {
        let head = *self.shared.head.borrow();
        let catalog = self.shared.registry.catalog();
        catalog
            .iter()
            .map(|(name, e)| e.status(name, head))
            .collect()
    }

    pub fn names(&self) -> Vec<String> {
        self.shared.registry.catalog().keys().cloned().collect()
    }

    pub fn status(&self, name: &str) -> Option<Status> {
        let head = *self.shared.head.borrow();
        Some(self.shared.registry.catalog().get(name)?.status(name, head))
    }

    /// The change feed of the serving version.
    pub fn feed(&self, name: &str) -> Option<Arc<crate::views::ChangeFeed>> {
        Some(self.shared.serving(name)?.feed.clone())
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
                let seen = match progress
                    .wait_for(|p| p.checkpoint >= position || p.retired)
                    .await
                {
                    Ok(seen) => *seen,
                    Err(_) => return false,
                };
                if seen.checkpoint >= position {
                    return true;
                }
                // Retired: wait on its successor, if the name still has one (a removal
                // retires before it unpublishes, so give it a moment).
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        };
        tokio::time::timeout(timeout, wait).await.unwrap_or(false)
    }

    /// Writes `wasm` into the folder as `<name>.wasm` (aside, then renamed in), where the
    /// watcher picks it up like any other file: the folder stays the one source of truth.
    /// Blocking.
    pub fn write_file(&self, name: &str, wasm: &[u8]) -> std::io::Result<()> {
        use std::io::Write;
        // Each writer its own temporary file: concurrent PUTs of one name, last one wins.
        let partial = self.shared.folder.join(format!(
            ".{name}.{}.wasm.partial",
            uuid::Uuid::new_v4().simple()
        ));
        let mut file = std::fs::File::create(&partial)?;
        file.write_all(wasm)?;
        file.sync_all()?;
        let renamed = std::fs::rename(&partial, self.shared.folder.join(format!("{name}.wasm")));
        if renamed.is_err() {
            let _ = std::fs::remove_file(&partial);
        }
        renamed?;
        std::fs::File::open(&self.shared.folder)?.sync_all()
    }

    /// Removes `<name>.wasm` from the folder, where the watcher sees it go like any other
    /// removal; false when there is no such file. Blocking.
    pub fn remove_file(&self, name: &str) -> std::io::Result<bool> {
        match std::fs::remove_file(self.shared.folder.join(format!("{name}.wasm"))) {
            Ok(()) => {
                std::fs::File::open(&self.shared.folder)?.sync_all()?;
                Ok(true)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        }
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
        drop(self.folder.lock().take());
        self.shared.signal.stop();
        let workers: Vec<_> = self.workers.lock().drain(..).collect();
        for worker in workers {
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
        self.registry
            .catalog()
            .values()
            .flat_map(|e| e.serving.iter().chain(&e.building).cloned())
            .collect()
    }

    fn serving(&self, name: &str) -> Option<Arc<Slot>> {
        self.registry.catalog().get(name)?.serving.clone()
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
        match slot.claim_for_queue(head) {
            Claim::Queue => self.signal.push(slot.clone()),
            Claim::Rest(until) => slot.rest(until, &self.signal),
            Claim::No => {}
        }
    }
}

#[cfg(test)]
mod tests;
