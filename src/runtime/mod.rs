//! The WebAssembly runtime: the only module that knows wasmtime.
//!
//! It compiles projection components (off the reactor, cached on disk by content hash), checks
//! them against the WIT world in `sdk/wit`, and runs one batch at a time in a fresh instance
//! (from a pool of slots reset in place, `pool.rs`) under limits: fuel proportional to the
//! batch (deterministic, so a runaway batch fails the same way on every replay), an epoch
//! deadline as the wall-clock backstop, a memory cap, and a cap on the bytes a batch writes. Guests get WASI only as far as a `wasm32-wasip2`
//! component needs to instantiate: no files, network or environment; the clocks stand still
//! and randomness is a fixed sequence, so a view stays a pure function of the events; what
//! they print becomes log lines tagged with the projection.

mod cache;
mod guest;
mod pool;

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use sha2::{Digest, Sha256};
use wasmtime::component::{Component, Linker};
use wasmtime::{Config, Engine, Store, Trap};

use cache::{Cache, FunctionCache};
use guest::{GuestState, bindings};
use pool::Slots;

pub use guest::ViewReader;
pub use projector_sdk::Subscription;

/// How often the epoch advances; the unit of [`Limits::deadline`].
const EPOCH_TICK: Duration = Duration::from_millis(10);

/// What one call into a guest may use.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Fuel for a call, plus `fuel_per_event` for each event in its batch.
    pub fuel_base: u64,
    pub fuel_per_event: u64,
    /// Wall-clock backstop for one call.
    pub deadline: Duration,
    /// Largest linear memory a guest may grow to.
    pub memory_bytes: usize,
    /// Most bytes (keys and values) one batch may write to the view.
    pub written_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            fuel_base: 50_000_000,
            fuel_per_event: 1_000_000,
            deadline: Duration::from_secs(10),
            memory_bytes: 128 * 1024 * 1024,
            written_bytes: 64 * 1024 * 1024,
        }
    }
}

/// The content hash of a projection's `.wasm`, which names its version.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct VersionHash([u8; 32]);

impl VersionHash {
    pub fn of(bytes: &[u8]) -> Self {
        VersionHash(Sha256::digest(bytes).into())
    }

    /// The first 16 hex digits: enough to tell versions apart in names and status.
    pub fn short(&self) -> String {
        self.0[..8].iter().map(|b| format!("{b:02x}")).collect()
    }
}

impl std::fmt::Display for VersionHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("not a valid projection component: {0}")]
    Invalid(String),
    #[error("the component does not implement the projection world: {0}")]
    Contract(String),
    #[error("calling subscription failed: {0}")]
    Subscription(Fault),
}

#[derive(Debug, thiserror::Error)]
#[error("starting the wasm engine: {0}")]
pub struct EngineError(String);

/// Why a call into a guest failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fault {
    pub kind: FaultKind,
    /// The reason: the guest's error, the trap's cause, or the limit hit with its figure.
    pub message: String,
    /// The guest's stack when it trapped (wasm frames, innermost first), apart from the reason.
    pub backtrace: Option<String>,
}

impl Fault {
    pub fn new(kind: FaultKind, message: String) -> Self {
        Fault {
            kind,
            message,
            backtrace: None,
        }
    }
}

#[derive(
    Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum FaultKind {
    /// `apply` returned an error.
    Refused,
    /// The guest trapped (a panic, an out-of-bounds access, ...).
    Trap,
    /// The batch used up its fuel.
    OutOfFuel,
    /// The call ran past its wall-clock deadline.
    Deadline,
    /// The guest tried to grow its memory past the cap.
    Memory,
    /// The batch wrote more than the cap, or an invalid key.
    Writes,
    /// The host failed around the call (reading the log or the view, a panic in the host's
    /// code): not the guest's doing, but it stops the projection all the same until a retry
    /// succeeds.
    Host,
    /// Writing the view failed (a full disk, an I/O error); retried with backoff, and the
    /// view's checkpoint is read back from the file before the retry.
    Storage,
    /// The account's views are at their storage limit; retried with backoff, so the
    /// projection resumes once the limit is raised or storage freed.
    Quota,
}

impl FaultKind {
    /// The kind as the API and the metrics name it.
    pub fn as_str(self) -> &'static str {
        match self {
            FaultKind::Refused => "refused",
            FaultKind::Trap => "trap",
            FaultKind::OutOfFuel => "out_of_fuel",
            FaultKind::Deadline => "deadline",
            FaultKind::Memory => "memory",
            FaultKind::Writes => "writes",
            FaultKind::Host => "host",
            FaultKind::Storage => "storage",
            FaultKind::Quota => "quota",
        }
    }
}

impl std::fmt::Display for Fault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// The view changes of one batch: key → new document, or `None` for a delete. Hashed with
/// foldhash, seeded per map, not SipHash: a catch-up inserts and looks up thousands of keys
/// per batch (SipHash was about 3% of a worker's time), and a guest, which chooses the keys,
/// never sees a hash or the seed to aim collisions with.
pub type Changes = HashMap<String, Option<Vec<u8>>, foldhash::fast::RandomState>;

/// The engine and linker shared by every projection.
pub struct Runtime {
    linker: Linker<GuestState>,
    cache: Cache,
    limits: Limits,
    /// Permits for the engine's pool of instance slots, shared with every [`Code`].
    slots: Arc<Slots>,
    ticker: Option<(Arc<AtomicBool>, JoinHandle<()>)>,
    /// Jobs for the compiler thread ("wasm-compiler"), which the runtime owns: dropping the
    /// runtime drops this sender, which ends the thread once its job in hand is done, and
    /// joins it (so the caches' files are closed when the runtime is gone). A job's callback
    /// holds only a `Weak` to what it calls back. The lock guards only the send.
    compiler: parking_lot::Mutex<Option<std::sync::mpsc::Sender<CompileJob>>>,
    compiler_thread: Option<JoinHandle<()>>,
}

impl Runtime {
    pub fn new(cache_dir: &Path, limits: Limits) -> Result<Self, EngineError> {
        let mut config = Config::new();
        config
            .wasm_component_model(true)
            .concurrency_support(false)
            .consume_fuel(true)
            .epoch_interruption(true)
            .cranelift_nan_canonicalization(true)
            .allocation_strategy(pool::strategy());
        std::fs::create_dir_all(cache_dir).map_err(|e| EngineError(e.to_string()))?;
        let functions = match FunctionCache::open(cache_dir) {
            Ok(functions) => {
                let functions = Arc::new(functions);
                config
                    .enable_incremental_compilation(functions.clone())
                    .map_err(|e| EngineError(e.to_string()))?;
                Some(functions)
            }
            Err(e) => {
                tracing::warn!(error = %e, "compiling without the cache of compiled functions");
                None
            }
        };
        let engine = Engine::new(&config).map_err(|e| EngineError(e.to_string()))?;
        let mut linker = Linker::new(&engine);
        guest::add_to_linker(&mut linker).map_err(|e| EngineError(e.to_string()))?;
        let stop = Arc::new(AtomicBool::new(false));
        let ticker = {
            let (engine, stop) = (engine.clone(), stop.clone());
            std::thread::Builder::new()
                .name("wasm-epoch".into())
                .spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        std::thread::sleep(EPOCH_TICK);
                        engine.increment_epoch();
                    }
                })
                .map_err(|e| EngineError(e.to_string()))?
        };
        let (compiler, jobs) = std::sync::mpsc::channel::<CompileJob>();
        let cache = Cache::new(engine, cache_dir, functions);
        let worker = cache.clone();
        let compiler_thread = std::thread::Builder::new()
            .name("wasm-compiler".into())
            .spawn(move || {
                for job in jobs {
                    let outcome = worker.compile(job.hash, &job.bytes);
                    (job.done)(outcome);
                }
            })
            .map_err(|e| EngineError(e.to_string()))?;
        Ok(Runtime {
            cache,
            linker,
            limits,
            slots: Arc::new(Slots::new()),
            ticker: Some((stop, ticker)),
            compiler: parking_lot::Mutex::new(Some(compiler)),
            compiler_thread: Some(compiler_thread),
        })
    }

    /// Compiles (or loads from the cache) a projection's component, links it, and asks it for
    /// its subscription. Blocking: compiling takes tens of milliseconds, or seconds for a
    /// JavaScript or Python component.
    pub fn load(&self, name: &str, bytes: &[u8]) -> Result<Code, LoadError> {
        let hash = VersionHash::of(bytes);
        let component = self.compile(hash, bytes)?;
        self.link(name, hash, &component)
    }

    /// Links a compiled component and asks it for its subscription. Blocking, but quick.
    pub fn link(
        &self,
        name: &str,
        hash: VersionHash,
        component: &Compiled,
    ) -> Result<Code, LoadError> {
        let pre = self
            .linker
            .instantiate_pre(&component.0)
            .map_err(|e| LoadError::Contract(format!("{e:#}")))?;
        let pre =
            bindings::ProjectionPre::new(pre).map_err(|e| LoadError::Contract(format!("{e:#}")))?;
        let mut code = Code {
            name: name.to_owned(),
            hash,
            pre,
            slots: self.slots.clone(),
            limits: self.limits.clone(),
            subscription: Subscription::all(),
        };
        code.subscription = code.call_subscription().map_err(LoadError::Subscription)?;
        Ok(code)
    }

    /// The compiled component from the cache, if it is there: milliseconds however large the
    /// component (the file is mapped, not read).
    pub fn cached(&self, hash: VersionHash) -> Option<Compiled> {
        self.cache.cached(hash)
    }

    /// Compiles a component, or loads it from the cache. Blocking: from milliseconds to
    /// seconds (see [`Runtime::compile_later`]).
    pub fn compile(&self, hash: VersionHash, bytes: &[u8]) -> Result<Compiled, LoadError> {
        self.cache.compile(hash, bytes)
    }

    /// Compiles a component on the compiler thread and hands the outcome to `done` there, so
    /// that a large component (a JavaScript or Python one takes seconds) holds up neither the
    /// caller nor the projections already running. Jobs run one at a time, in order; wasmtime
    /// compiles each one's functions in parallel.
    pub fn compile_later(&self, hash: VersionHash, bytes: Vec<u8>, done: CompileDone) {
        let job = CompileJob { hash, bytes, done };
        let sent = match &*self.compiler.lock() {
            Some(sender) => sender
                .send(job)
                .map_err(|std::sync::mpsc::SendError(job)| job),
            None => Err(job),
        };
        if let Err(job) = sent {
            // The thread is gone (it cannot be while `self` lives, unless it panicked).
            (job.done)(self.compile(job.hash, &job.bytes));
        }
    }
}

/// A compiled component, ready to link. Cheap to clone.
#[derive(Clone)]
pub struct Compiled(Component);

/// What a background compile hands its outcome to.
pub type CompileDone = Box<dyn FnOnce(Result<Compiled, LoadError>) + Send>;

struct CompileJob {
    hash: VersionHash,
    bytes: Vec<u8>,
    done: CompileDone,
}

impl Runtime {
    /// Deletes the compiled components (and half-written ones) of every version not in
    /// `keep`. Returns how many files went.
    pub fn prune_cache(&self, keep: &[VersionHash]) -> usize {
        self.cache.prune(keep)
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        drop(self.compiler.lock().take());
        if let Some(thread) = self.compiler_thread.take() {
            // The last owner may be a job's callback, on the compiler thread itself.
            if thread.thread().id() != std::thread::current().id() {
                let _ = thread.join();
            }
        }
        if let Some((stop, thread)) = self.ticker.take() {
            stop.store(true, Ordering::Relaxed);
            let _ = thread.join();
        }
    }
}

/// One loaded projection version, ready to run batches. Cheap to share between threads.
pub struct Code {
    name: String,
    hash: VersionHash,
    pre: bindings::ProjectionPre<GuestState>,
    /// The engine's permits for instance slots: one is held while a store lives.
    slots: Arc<Slots>,
    limits: Limits,
    subscription: Subscription,
}

/// What a successful `apply` produced.
pub struct Applied {
    pub changes: Changes,
    /// Fuel the call used.
    pub fuel: u64,
}

impl Code {
    pub fn hash(&self) -> VersionHash {
        self.hash
    }

    pub fn subscription(&self) -> &Subscription {
        &self.subscription
    }

    /// Applies a framed batch of `events` events in a fresh instance. Reads the view through
    /// `reader`; the batch's writes come back as [`Applied::changes`], for the caller to
    /// commit. Blocking: call from a worker thread.
    pub fn apply(
        &self,
        batch: &[u8],
        events: usize,
        reader: Box<dyn ViewReader>,
    ) -> Result<Applied, Fault> {
        let fuel = self
            .limits
            .fuel_base
            .saturating_add(self.limits.fuel_per_event.saturating_mul(events as u64));
        let _permit = self.slots.acquire();
        let mut store = self.store(reader, fuel);
        let result = self
            .pre
            .instantiate(&mut store)
            .and_then(|instance| instance.call_apply(&mut store, batch));
        let outcome = match result {
            Ok(Ok(())) => Ok(()),
            Ok(Err(message)) => Err(Fault::new(FaultKind::Refused, message)),
            Err(e) => Err(self.classify(&store, e, fuel)),
        };
        let used = fuel.saturating_sub(store.get_fuel().unwrap_or(0));
        let state = store.into_data();
        state.log_output(&self.name);
        outcome.map(|()| Applied {
            changes: state.into_changes(),
            fuel: used,
        })
    }

    fn call_subscription(&self) -> Result<Subscription, Fault> {
        let _permit = self.slots.acquire();
        let mut store = self.store(Box::new(guest::EmptyView), self.limits.fuel_base);
        let result = self
            .pre
            .instantiate(&mut store)
            .and_then(|instance| instance.call_subscription(&mut store));
        let outcome = result.map_err(|e| self.classify(&store, e, self.limits.fuel_base));
        store.into_data().log_output(&self.name);
        let s = outcome?;
        Ok(Subscription {
            streams: s.streams,
            categories: s.categories,
            event_types: s.event_types,
        })
    }

    fn store(&self, reader: Box<dyn ViewReader>, fuel: u64) -> Store<GuestState> {
        let state = GuestState::new(reader, &self.limits);
        let mut store = Store::new(self.pre.engine(), state);
        store.limiter(|s| s.limiter());
        store.set_fuel(fuel).expect("fuel is enabled on the engine");
        let ticks = (self.limits.deadline.as_millis() / EPOCH_TICK.as_millis()).max(1) as u64;
        store.set_epoch_deadline(ticks);
        store.epoch_deadline_trap();
        store
    }

    /// A failed call as a fault: the reason first (wasmtime puts the backtrace before it), the
    /// wasm frames apart.
    fn classify(&self, store: &Store<GuestState>, error: wasmtime::Error, fuel: u64) -> Fault {
        let backtrace = error
            .downcast_ref::<wasmtime::WasmBacktrace>()
            .map(|frames| frames.to_string().trim_end().to_owned());
        let message = error.root_cause().to_string();
        let kind = if let Some(kind) = store.data().limit_hit() {
            kind
        } else {
            match error.downcast_ref::<Trap>() {
                Some(Trap::OutOfFuel) => FaultKind::OutOfFuel,
                Some(Trap::Interrupt) => FaultKind::Deadline,
                _ => FaultKind::Trap,
            }
        };
        let message = match kind {
            FaultKind::OutOfFuel => {
                format!("the batch ran out of fuel: it used up its budget of {fuel} units")
            }
            FaultKind::Deadline => format!(
                "the call ran past its deadline of {:?}",
                self.limits.deadline
            ),
            _ => message,
        };
        Fault {
            kind,
            message,
            backtrace,
        }
    }
}

#[cfg(test)]
pub(crate) mod tests;
