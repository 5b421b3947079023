//! Keeping the set in step with the projections folder: a file added, replaced, unchanged,
//! removed or unreadable (`deploy`), the whole folder at start-up (`reconcile`), and the
//! compiles that go with new content. Every change here runs under `Registry::deploying`,
//! which no reader takes; a large component is compiled on the runtime's compiler thread, not
//! under it.

use std::sync::Arc;

use parking_lot::MutexGuard;

use super::slot::{Role, Slot};
use super::{SchedulerError, Shared, batch, folder};
use crate::runtime::{Compiled, LoadError, VersionHash};

/// Components up to this size are compiled by the deploy itself (a Rust projection of a few
/// hundred KiB compiles in a fraction of a second); larger ones (a JavaScript or Python
/// component is 12-18 MB and takes seconds) go to the compiler thread, so that they hold up
/// neither the folder watcher, nor the start of the server, nor the other deploys.
const COMPILE_HERE_BYTES: usize = 2 << 20;

impl Shared {
    /// Brings the registry in line with the folder: every file deployed (a version whose
    /// storage is recorded as current resumes from its checkpoint), every name without a
    /// file removed with its storage.
    pub(super) fn reconcile(&self) -> Result<(), SchedulerError> {
        let files = folder::wasm_files(&self.folder)?;
        for (name, _) in &files {
            self.deploy(name);
        }
        let known: Vec<String> = self
            .registry
            .catalog()
            .keys()
            .cloned()
            .chain(self.views.names())
            .collect();
        for name in known {
            if !files.iter().any(|(n, _)| *n == name) {
                self.deploy(&name);
            }
        }
        self.prune_cache(&self.registry.deploying.lock());
        Ok(())
    }

    /// Deletes compiled components that no loaded version uses (a file that did not load has
    /// nothing worth keeping). Under `deploying`, so that no compile races it.
    pub(super) fn prune_cache(&self, _deploying: &MutexGuard<'_, ()>) {
        let keep: Vec<VersionHash> = self
            .registry
            .catalog()
            .values()
            .flat_map(|e| {
                let running = e.serving.iter().chain(&e.building);
                running.map(|slot| slot.code.hash()).chain(e.compiling)
            })
            .collect();
        self.runtime.prune_cache(&keep);
    }

    /// Reconciles one name with its file as it is now: added, replaced, unchanged, removed,
    /// or unreadable. Blocking, but it does not compile: new content that is not in the
    /// compile cache goes to the compiler thread and is run when compiled.
    pub(super) fn deploy(&self, name: &str) {
        let deploying = self.registry.deploying.lock();
        self.deploy_locked(&deploying, name);
    }

    fn deploy_locked(&self, deploying: &MutexGuard<'_, ()>, name: &str) {
        let path = self.folder.join(format!("{name}.wasm"));
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return self.remove(deploying, name);
            }
            Err(e) => {
                let reason = format!("reading {name}.wasm: {}", e.kind());
                return self.file_error(deploying, name, reason);
            }
        };
        let hash = VersionHash::of(&bytes);
        let entry = self
            .registry
            .catalog()
            .get(name)
            .cloned()
            .unwrap_or_default();
        let version = |slot: &Option<Arc<Slot>>| slot.as_ref().map(|s| s.code.hash());
        if version(&entry.building) == Some(hash) {
            // Already building this content (a change seen twice, or a requested rebuild).
            return self.clear_file_error(deploying, name);
        }
        if version(&entry.serving) == Some(hash) {
            // Unchanged, or changed back while other content was building or compiling.
            let mut dropped = None;
            self.registry.publish(deploying, |catalog| {
                if let Some(entry) = catalog.get_mut(name) {
                    entry.file_error = None;
                    entry.compiling = None;
                    dropped = entry.building.take();
                }
            });
            if let Some(building) = dropped {
                self.discard(&building);
            }
            return;
        }
        match self.runtime.cached(hash) {
            // A failure is in the status as the file's error.
            Some(compiled) => {
                let _ =
                    self.start_version(deploying, name, &compiled, hash, entry.serving.is_some());
            }
            None if entry.compiling == Some(hash) => {}
            // A small component compiles in well under a second: here, so it runs at once.
            None if bytes.len() <= COMPILE_HERE_BYTES => match self.runtime.compile(hash, &bytes) {
                Ok(compiled) => {
                    let beside = entry.serving.is_some();
                    let _ = self.start_version(deploying, name, &compiled, hash, beside);
                }
                Err(e) => self.file_error(deploying, name, e.to_string()),
            },
            None => self.compile_later(deploying, name, bytes, hash),
        }
    }

    /// Hands new content to the compiler thread; the name's status says what is compiling
    /// until [`Shared::compiled`] runs it (or records why it cannot run).
    fn compile_later(
        &self,
        deploying: &MutexGuard<'_, ()>,
        name: &str,
        bytes: Vec<u8>,
        hash: VersionHash,
    ) {
        self.registry.publish(deploying, |catalog| {
            let entry = catalog.entry(name.to_owned()).or_default();
            entry.compiling = Some(hash);
            entry.file_error = None;
        });
        tracing::info!(projection = name, version = %hash.short(), bytes = bytes.len(), "compiling");
        let (shared, name) = (self.me.clone(), name.to_owned());
        self.runtime.compile_later(
            hash,
            bytes,
            Box::new(move |outcome| {
                if let Some(shared) = shared.upgrade() {
                    shared.compiled(&name, hash, outcome);
                }
            }),
        );
    }

    /// A background compile ended (on the compiler thread): runs the version if the file
    /// still holds it, else reconciles the name with whatever the file holds now.
    fn compiled(&self, name: &str, hash: VersionHash, outcome: Result<Compiled, LoadError>) {
        if self.signal.stopping() {
            return;
        }
        let deploying = self.registry.deploying.lock();
        let still_wanted = self
            .registry
            .catalog()
            .get(name)
            .is_some_and(|e| e.compiling == Some(hash));
        let path = self.folder.join(format!("{name}.wasm"));
        let current = std::fs::read(&path).ok().map(|b| VersionHash::of(&b));
        if !still_wanted || current != Some(hash) {
            self.compile_done(&deploying, name, hash);
            return self.deploy_locked(&deploying, name);
        }
        let beside = self
            .registry
            .catalog()
            .get(name)
            .is_some_and(|e| e.serving.is_some());
        // The name shows `compiling` until the version is published (`start_version` clears
        // it in the same change), never a moment of neither.
        match outcome {
            Ok(compiled) => {
                let _ = self.start_version(&deploying, name, &compiled, hash, beside);
            }
            Err(e) => self.file_error(&deploying, name, e.to_string()),
        }
        self.compile_done(&deploying, name, hash);
    }

    /// Clears `name`'s compiling mark if it is still `hash`'s.
    fn compile_done(&self, deploying: &MutexGuard<'_, ()>, name: &str, hash: VersionHash) {
        if self
            .registry
            .catalog()
            .get(name)
            .is_some_and(|e| e.compiling == Some(hash))
        {
            self.registry.publish(deploying, |catalog| {
                if let Some(entry) = catalog.get_mut(name)
                    && entry.compiling == Some(hash)
                {
                    entry.compiling = None;
                }
            });
        }
    }

    /// Loads a new version of `name` and runs it: as the serving version if there is none
    /// (resuming the storage recorded as current when it holds this version), or as the
    /// building one beside it. A failure is recorded as the file's error, and returned.
    pub(super) fn start_version(
        &self,
        deploying: &MutexGuard<'_, ()>,
        name: &str,
        compiled: &Compiled,
        hash: VersionHash,
        beside: bool,
    ) -> Result<(), String> {
        let (storage, fresh) = match self.views.current(name) {
            Some(current) if !beside && current.starts_with(&hash.to_string()) => (current, false),
            _ => (self.views.fresh_storage(name, &hash.to_string()), true),
        };
        let role = if beside {
            Role::Building
        } else {
            Role::Serving
        };
        let slot = match self.load(name, compiled, hash, &storage, role) {
            Ok(slot) => Arc::new(slot),
            Err(reason) => {
                // A view that was to be resumed stays for the next attempt.
                if fresh && let Err(e) = self.views.remove(name, &storage) {
                    tracing::warn!(projection = name, error = %e, "removing the storage of a failed load");
                }
                self.file_error(deploying, name, reason.clone());
                return Err(reason);
            }
        };
        if !beside {
            if let Err(e) = self.views.set_current(name, &storage) {
                self.file_error(deploying, name, e.to_string());
                return Err(e.to_string());
            }
            // Storages of older versions, or of a rebuild a crash interrupted.
            for other in self.views.storages(name) {
                if other != storage
                    && let Err(e) = self.views.remove(name, &other)
                {
                    tracing::warn!(projection = name, error = %e, "removing old storage");
                }
            }
        }
        let mut previous = None;
        self.registry.publish(deploying, |catalog| {
            let entry = catalog.entry(name.to_owned()).or_default();
            entry.file_error = None;
            if entry.compiling == Some(hash) {
                entry.compiling = None;
            }
            previous = if beside {
                // A rebuild of a paused projection waits for it to be resumed.
                let paused = entry
                    .serving
                    .as_ref()
                    .is_some_and(|s| s.state.lock().paused);
                slot.state.lock().paused = paused;
                entry.building.replace(slot.clone())
            } else {
                entry.serving.replace(slot.clone())
            };
        });
        if let Some(previous) = previous {
            self.discard(&previous);
        }
        self.schedule(&slot);
        Ok(())
    }

    fn load(
        &self,
        name: &str,
        compiled: &Compiled,
        hash: VersionHash,
        storage: &str,
        role: Role,
    ) -> Result<Slot, String> {
        let code = self
            .runtime
            .link(name, hash, compiled)
            .map_err(|e| e.to_string())?;
        let sources = batch::sources(code.subscription())?;
        let view = self.views.open(name, storage).map_err(|e| e.to_string())?;
        let checkpoint = view.checkpoint().map_err(|e| e.to_string())?;
        let skipped = view
            .skipped()
            .map_err(|e| e.to_string())?
            .iter()
            .filter_map(|bytes| serde_json::from_slice(bytes).ok())
            .collect();
        tracing::info!(
            projection = name, version = %code.hash().short(), storage, checkpoint, ?role,
            "projection loaded"
        );
        Ok(Slot::new(
            (&self.account, name),
            storage,
            code,
            sources,
            view,
            (checkpoint, skipped),
            (role, self.change_retention),
        ))
    }

    pub(super) fn file_error(&self, deploying: &MutexGuard<'_, ()>, name: &str, reason: String) {
        tracing::warn!(projection = name, %reason, "projection file not loaded");
        self.registry.publish(deploying, |catalog| {
            catalog.entry(name.to_owned()).or_default().file_error = Some(reason);
        });
    }

    pub(super) fn clear_file_error(&self, deploying: &MutexGuard<'_, ()>, name: &str) {
        self.registry.publish(deploying, |catalog| {
            if let Some(entry) = catalog.get_mut(name) {
                entry.file_error = None;
            }
        });
    }

    /// The file is gone: stop every version and delete the name's storage. The storage goes
    /// first, so that once the name has left the API its storage is gone too.
    fn remove(&self, deploying: &MutexGuard<'_, ()>, name: &str) {
        let entry = self.registry.catalog().get(name).cloned();
        for slot in entry
            .iter()
            .flat_map(|e| e.serving.iter().chain(&e.building))
        {
            slot.retire();
        }
        if let Err(e) = self.views.remove_all(name) {
            tracing::warn!(projection = name, error = %e, "removing a projection's storage");
        }
        if entry.is_some() {
            self.registry.publish(deploying, |catalog| {
                catalog.remove(name);
            });
            tracing::info!(projection = name, "projection removed");
            self.prune_cache(deploying);
        }
    }

    /// Retires a version that will not serve, and deletes its storage.
    pub(super) fn discard(&self, slot: &Slot) {
        slot.retire();
        if let Err(e) = self.views.remove(&slot.name, &slot.storage) {
            tracing::warn!(projection = %slot.name, error = %e, "removing old storage");
        }
    }
}
