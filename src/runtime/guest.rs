//! The store data of one call: the view the guest reads and writes, its limits, and the
//! deterministic WASI context.

use std::time::Duration;

use rand::SeedableRng;
use rand::rngs::StdRng;

use wasmtime::component::{HasSelf, Linker, Resource, ResourceTable};
use wasmtime::{ResourceLimiter, format_err};
use wasmtime_wasi::p2::DynPollable;
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{HostMonotonicClock, HostWallClock, WasiCtx, WasiCtxView, WasiView};

use super::{Changes, FaultKind, Limits};

pub mod bindings {
    wasmtime::component::bindgen!({
        path: "sdk/wit",
        world: "projection",
        imports: { default: trappable },
    });
}

/// Longest view key, in bytes.
pub const MAX_KEY_BYTES: usize = 512;
/// What a guest may print per call before its output is cut off.
const OUTPUT_BYTES: usize = 64 * 1024;

/// Reads committed documents of the view a batch runs against.
pub trait ViewReader: Send {
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, String>;
}

/// The view of a call that must not touch one (`subscription`).
pub struct EmptyView;

impl ViewReader for EmptyView {
    fn get(&self, _key: &str) -> Result<Option<Vec<u8>>, String> {
        Ok(None)
    }
}

pub struct GuestState {
    reader: Box<dyn ViewReader>,
    changes: Changes,
    written: u64,
    written_cap: u64,
    memory_cap: usize,
    limit_hit: Option<FaultKind>,
    wasi: WasiCtx,
    table: ResourceTable,
    stdout: MemoryOutputPipe,
    stderr: MemoryOutputPipe,
}

impl GuestState {
    pub fn new(reader: Box<dyn ViewReader>, limits: &Limits) -> Self {
        let stdout = MemoryOutputPipe::new(OUTPUT_BYTES);
        let stderr = MemoryOutputPipe::new(OUTPUT_BYTES);
        // No preopened directories, environment, arguments or sockets (the builder grants none
        // unless asked); clocks frozen at zero and a fixed random sequence, so a guest that
        // reads them still computes the same view on every replay.
        let wasi = WasiCtx::builder()
            .stdout(stdout.clone())
            .stderr(stderr.clone())
            .wall_clock(FrozenClock)
            .monotonic_clock(FrozenClock)
            .secure_random(fixed_random(0))
            .insecure_random(fixed_random(1))
            .insecure_random_seed(0)
            .allow_ip_name_lookup(false)
            .allow_tcp(false)
            .allow_udp(false)
            .build();
        GuestState {
            reader,
            changes: Changes::default(),
            written: 0,
            written_cap: limits.written_bytes,
            memory_cap: limits.memory_bytes,
            limit_hit: None,
            wasi,
            table: ResourceTable::new(),
            stdout,
            stderr,
        }
    }

    pub fn limiter(&mut self) -> &mut dyn ResourceLimiter {
        self
    }

    /// The limit that stopped the call, if one did.
    pub fn limit_hit(&self) -> Option<FaultKind> {
        self.limit_hit
    }

    pub fn into_changes(self) -> Changes {
        self.changes
    }

    /// Emits what the guest printed as log lines tagged with the projection.
    pub fn log_output(&self, projection: &str) {
        for (pipe, stream) in [(&self.stdout, "stdout"), (&self.stderr, "stderr")] {
            let bytes = pipe.contents();
            for line in String::from_utf8_lossy(&bytes).lines() {
                tracing::info!(target: "projector::guest", projection, stream, "{line}");
            }
        }
    }

    /// One put (`Some`) or delete (`None`) of the batch, charged against its write cap.
    fn change(&mut self, key: String, value: Option<Vec<u8>>) -> wasmtime::Result<()> {
        self.charge(&key, value.as_ref().map_or(0, Vec::len))?;
        self.changes.insert(key, value);
        Ok(())
    }

    fn charge(&mut self, key: &str, value_len: usize) -> wasmtime::Result<()> {
        if key.is_empty() || key.len() > MAX_KEY_BYTES {
            self.limit_hit = Some(FaultKind::Writes);
            return Err(format_err!(
                "view keys are 1 to {MAX_KEY_BYTES} bytes; got one of {} bytes",
                key.len()
            ));
        }
        self.written += (key.len() + value_len) as u64;
        if self.written > self.written_cap {
            self.limit_hit = Some(FaultKind::Writes);
            return Err(format_err!(
                "the batch wrote more than {} bytes to its view",
                self.written_cap
            ));
        }
        Ok(())
    }
}

impl ResourceLimiter for GuestState {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.memory_cap {
            self.limit_hit = Some(FaultKind::Memory);
            return Err(format_err!(
                "the guest tried to grow its memory to {desired} bytes, over the cap of {}",
                self.memory_cap
            ));
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= 1_000_000)
    }
}

impl bindings::projector::projection::view::Host for GuestState {
    fn get(&mut self, key: String) -> wasmtime::Result<Option<Vec<u8>>> {
        if let Some(change) = self.changes.get(&key) {
            return Ok(change.clone());
        }
        self.reader
            .get(&key)
            .map_err(|e| format_err!("reading the view: {e}"))
    }

    fn put(&mut self, key: String, value: Vec<u8>) -> wasmtime::Result<()> {
        self.change(key, Some(value))
    }

    fn delete(&mut self, key: String) -> wasmtime::Result<()> {
        self.change(key, None)
    }

    fn write_many(&mut self, changes: Vec<u8>) -> wasmtime::Result<()> {
        let mut rest = &changes[..];
        while !rest.is_empty() {
            let (key, value) = next_change(&mut rest)?;
            let key = std::str::from_utf8(key)
                .map_err(|_| format_err!("write-many: a key is not UTF-8"))?;
            self.change(key.to_owned(), value.map(<[u8]>::to_vec))?;
        }
        Ok(())
    }
}

/// The length of a deleted document in `write-many`'s changes.
const DELETED: u32 = u32::MAX;

/// The next (key, document or `None` to delete) of `write-many`'s changes.
fn next_change<'a>(rest: &mut &'a [u8]) -> wasmtime::Result<(&'a [u8], Option<&'a [u8]>)> {
    fn take<'a>(rest: &mut &'a [u8], n: usize) -> wasmtime::Result<&'a [u8]> {
        if rest.len() < n {
            return Err(format_err!("write-many: the changes are truncated"));
        }
        let (head, tail) = rest.split_at(n);
        *rest = tail;
        Ok(head)
    }
    fn length(rest: &mut &[u8]) -> wasmtime::Result<u32> {
        Ok(u32::from_le_bytes(
            take(rest, 4)?.try_into().expect("4 bytes"),
        ))
    }
    let key_len = length(rest)?;
    let key = take(rest, key_len as usize)?;
    let value = match length(rest)? {
        DELETED => None,
        n => Some(take(rest, n as usize)?),
    };
    Ok((key, value))
}

impl bindings::projector::projection::types::Host for GuestState {}

impl WasiView for GuestState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

pub fn add_to_linker(linker: &mut Linker<GuestState>) -> wasmtime::Result<()> {
    wasmtime_wasi::p2::add_to_linker_sync(linker)?;
    forbid_waiting(linker)?;
    bindings::Projection::add_to_linker::<_, HasSelf<_>>(linker, |s| s)
}

/// WASI's monotonic clock hands out pollables that sleep for real in host code, where the
/// epoch deadline cannot interrupt them: a guest sleeping for an hour would hold its worker
/// for an hour. A projection has nothing to wait for, so both ways to ask for such a pollable
/// trap instead.
fn forbid_waiting(linker: &mut Linker<GuestState>) -> wasmtime::Result<()> {
    const REFUSAL: &str = "projections cannot wait on a clock (wasi:clocks/monotonic-clock subscriptions are not available)";
    linker.allow_shadowing(true);
    let mut clock = linker.instance(MONOTONIC_CLOCK)?;
    clock.func_wrap(
        "subscribe-duration",
        |_, (_,): (u64,)| -> wasmtime::Result<(Resource<DynPollable>,)> {
            Err(format_err!(REFUSAL))
        },
    )?;
    clock.func_wrap(
        "subscribe-instant",
        |_, (_,): (u64,)| -> wasmtime::Result<(Resource<DynPollable>,)> {
            Err(format_err!(REFUSAL))
        },
    )?;
    linker.allow_shadowing(false);
    Ok(())
}

/// The interface as `wasmtime-wasi` defines it; imports of earlier 0.2 versions resolve to it.
const MONOTONIC_CLOCK: &str = "wasi:clocks/monotonic-clock@0.2.12";

/// A clock that always reads zero.
struct FrozenClock;

impl HostWallClock for FrozenClock {
    fn resolution(&self) -> Duration {
        Duration::from_secs(1)
    }
    fn now(&self) -> Duration {
        Duration::ZERO
    }
}

impl HostMonotonicClock for FrozenClock {
    fn resolution(&self) -> u64 {
        1_000_000_000
    }
    fn now(&self) -> u64 {
        0
    }
}

/// "Random" bytes that are the same on every run.
fn fixed_random(seed: u64) -> StdRng {
    StdRng::seed_from_u64(seed)
}
