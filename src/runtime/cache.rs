//! Compiling components, and two on-disk caches:
//!
//! - compiled components: `<cache>/<sha256 of the .wasm>-<engine compatibility hash>.cwasm`,
//!   written aside and renamed into place. A restart, or another account deploying the same
//!   file, maps the compiled form instead of compiling again (a JavaScript or Python component
//!   takes seconds to compile, milliseconds to map);
//! - compiled functions ([`FunctionCache`], Cranelift's incremental cache): every JavaScript
//!   component carries the same engine and every Python one the same interpreter, with the
//!   projection itself in their data, so a new projection or a new version of one compiles
//!   only the functions not seen before.

use std::borrow::Cow;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::Mutex;
use redb::{ReadableDatabase, TableDefinition};
use wasmtime::component::Component;
use wasmtime::{CacheStore, Engine};

use super::{Compiled, LoadError, VersionHash};

/// The engine and the cache folder; cheap to clone (the compiler thread has its own).
#[derive(Clone)]
pub(super) struct Cache {
    engine: Engine,
    dir: PathBuf,
    /// The engine's incremental cache, if it could be opened; flushed after each compile.
    functions: Option<Arc<FunctionCache>>,
}

impl Cache {
    pub fn new(engine: Engine, dir: &Path, functions: Option<Arc<FunctionCache>>) -> Self {
        Cache {
            engine,
            dir: dir.to_owned(),
            functions,
        }
    }

    /// The compiled component from the cache, if it is there.
    pub fn cached(&self, hash: VersionHash) -> Option<Compiled> {
        let path = self.path(hash);
        if !path.exists() {
            return None;
        }
        // SAFETY: files in the cache directory are written only by `compile` below, from this
        // engine's own `precompile_component`, and renamed into place when complete.
        match unsafe { Component::deserialize_file(&self.engine, &path) } {
            Ok(component) => Some(Compiled(component)),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "recompiling a bad cache entry");
                None
            }
        }
    }

    /// Compiles a component, or loads it from the cache. Blocking.
    pub fn compile(&self, hash: VersionHash, bytes: &[u8]) -> Result<Compiled, LoadError> {
        if let Some(component) = self.cached(hash) {
            return Ok(component);
        }
        let started = std::time::Instant::now();
        let compiled = self.engine.precompile_component(bytes);
        if let Some(functions) = &self.functions {
            functions.flush();
        }
        let compiled = compiled.map_err(|e| LoadError::Invalid(format!("{e:#}")))?;
        tracing::info!(
            version = %hash.short(), bytes = bytes.len(),
            seconds = started.elapsed().as_secs_f64(), "component compiled"
        );
        // The cache only saves the next start a compile: a failure to write it (a full disk)
        // is logged, and the component runs all the same.
        let path = self.path(hash);
        if let Err(e) = write(&path, &compiled) {
            tracing::warn!(path = %path.display(), error = %e, "the compiled component is not cached");
        }
        // SAFETY: as above; this is the artifact just produced by this engine.
        unsafe { Component::deserialize(&self.engine, &compiled) }
            .map(Compiled)
            .map_err(|e| LoadError::Invalid(format!("{e:#}")))
    }

    /// Deletes the compiled components (and half-written ones) of every version not in
    /// `keep`: each distinct file ever deployed would otherwise stay in the cache for good.
    /// Returns how many files went.
    pub fn prune(&self, keep: &[VersionHash]) -> usize {
        let keep: Vec<String> = keep.iter().map(|h| format!("{h}-")).collect();
        let mut removed = 0;
        for entry in std::fs::read_dir(&self.dir).into_iter().flatten().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let compiled = name.ends_with(".cwasm") || name.ends_with(".partial");
            if compiled
                && !keep.iter().any(|k| name.starts_with(k))
                && std::fs::remove_file(entry.path()).is_ok()
            {
                removed += 1;
            }
        }
        if removed > 0 {
            tracing::info!(removed, "compiled components no version uses were deleted");
        }
        removed
    }

    fn path(&self, hash: VersionHash) -> PathBuf {
        let mut engine_hash = std::hash::DefaultHasher::new();
        self.engine
            .precompile_compatibility_hash()
            .hash(&mut engine_hash);
        self.dir
            .join(format!("{hash}-{:016x}.cwasm", engine_hash.finish()))
    }
}

/// Writes a compiled component aside and renames it into place, so a reader never sees half
/// of one.
fn write(path: &Path, compiled: &[u8]) -> std::io::Result<()> {
    let partial = path.with_extension("partial");
    let written = (|| {
        crate::failpoint::failpoint!("cache-write", |arg| Err(crate::failpoint::io_error(arg)));
        std::fs::write(&partial, compiled)?;
        std::fs::rename(&partial, path)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&partial);
    }
    written
}

const FUNCTIONS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("functions");

/// Cranelift's incremental compilation cache on disk (`<cache>/functions.redb`): a compiled
/// function by the hash of its input (Cranelift's key, which covers the target and the
/// compiler's version). Lookups read the file from the compile's threads; what a compile adds
/// is written in chunks as it goes (so that a 12 MB component's new functions are not all held
/// in memory) and made durable when the compile ends ([`Cache::compile`]). It is only a cache:
/// a failure to read or write it costs a compile, nothing else.
pub struct FunctionCache {
    db: redb::Database,
    /// Entries not written yet. Guards only the list: the writer takes it whole and writes
    /// with the lock released.
    pending: Mutex<Pending>,
}

#[derive(Default)]
struct Pending {
    entries: Vec<(Vec<u8>, Vec<u8>)>,
    bytes: usize,
    /// Chunks were written without a sync since the last durable write.
    unsynced: bool,
}

/// Entries written in one (unsynced) transaction once they add up to this much.
const CHUNK_BYTES: usize = 16 << 20;

impl FunctionCache {
    pub fn open(dir: &Path) -> Result<Self, redb::DatabaseError> {
        Ok(FunctionCache {
            db: redb::Database::create(dir.join("functions.redb"))?,
            pending: Mutex::new(Pending::default()),
        })
    }

    /// Writes what is pending and makes every earlier chunk durable: at the end of a compile.
    fn flush(&self) {
        let entries = {
            let mut pending = self.pending.lock();
            if pending.entries.is_empty() && !pending.unsynced {
                return;
            }
            pending.unsynced = false;
            pending.bytes = 0;
            std::mem::take(&mut pending.entries)
        };
        self.write(&entries, redb::Durability::Immediate);
    }

    fn write(&self, entries: &[(Vec<u8>, Vec<u8>)], durability: redb::Durability) {
        let written = (|| -> Result<(), redb::Error> {
            let mut txn = self.db.begin_write()?;
            txn.set_durability(durability)?;
            {
                let mut table = txn.open_table(FUNCTIONS)?;
                for (key, value) in entries {
                    table.insert(key.as_slice(), value.as_slice())?;
                }
            }
            txn.commit()?;
            Ok(())
        })();
        if let Err(e) = written {
            tracing::warn!(error = %e, "compiled functions are not cached");
        }
    }
}

impl CacheStore for FunctionCache {
    fn get(&self, key: &[u8]) -> Option<Cow<'_, [u8]>> {
        let txn = self.db.begin_read().ok()?;
        let table = txn.open_table(FUNCTIONS).ok()?;
        let value = table.get(key).ok()??;
        Some(Cow::Owned(value.value().to_vec()))
    }

    fn insert(&self, key: &[u8], value: Vec<u8>) -> bool {
        let chunk = {
            let mut pending = self.pending.lock();
            pending.bytes += key.len() + value.len();
            pending.entries.push((key.to_vec(), value));
            if pending.bytes < CHUNK_BYTES {
                return true;
            }
            pending.bytes = 0;
            pending.unsynced = true;
            std::mem::take(&mut pending.entries)
        };
        self.write(&chunk, redb::Durability::None);
        true
    }
}

impl std::fmt::Debug for FunctionCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FunctionCache")
    }
}
