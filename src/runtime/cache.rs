//! Compiling components, and the on-disk cache of compiled ones: `<cache>/<sha256 of the
//! .wasm>-<engine compatibility hash>.cwasm`, written aside and renamed into place. A restart,
//! or another account deploying the same file, maps the compiled form instead of compiling
//! again (a JavaScript or Python component takes seconds to compile, milliseconds to map).

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};

use wasmtime::Engine;
use wasmtime::component::Component;

use super::{Compiled, LoadError, VersionHash};

/// The engine and the cache folder; cheap to clone (the compiler thread has its own).
#[derive(Clone)]
pub(super) struct Cache {
    engine: Engine,
    dir: PathBuf,
}

impl Cache {
    pub fn new(engine: Engine, dir: &Path) -> Self {
        Cache {
            engine,
            dir: dir.to_owned(),
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
        let compiled = self
            .engine
            .precompile_component(bytes)
            .map_err(|e| LoadError::Invalid(format!("{e:#}")))?;
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
