//! The registry: which versions of which projections run, kept in step with the projections
//! folder, and the operator's controls over them. It alone changes the set.
//!
//! Each name has at most two versions: the serving one, which answers queries and follows the
//! log, and a building one, rebuilding from position 0 into its own storage after the file
//! changed or an operator asked. When the building version reaches the head it is swapped in
//! (a query sees one version or the other, never a mix), recorded as the name's current
//! storage, and the old version's storage is deleted.
//!
//! Readers (HTTP handlers on the reactor, workers) never lock: the set is published as an
//! immutable [`Catalog`] that each change replaces whole (`arc-swap`). Changes are serialised
//! by `Registry::deploying`, and every file-system step (compiling, `CURRENT`, deleting
//! storage) happens with no lock but that one held, which no reader takes.

use std::collections::BTreeMap;
use std::sync::Arc;

use arc_swap::ArcSwap;
use parking_lot::{Mutex, MutexGuard};

use super::slot::{Next, Role, Run, Slot};
use super::status::{SkipRecord, State, Status, SubscriptionReport};
use super::{SchedulerError, Shared, batch, folder};
use crate::log::Position;
use crate::runtime::{Compiled, LoadError, VersionHash};

/// Components up to this size are compiled by the deploy itself (a Rust projection of a few
/// hundred KiB compiles in a fraction of a second); larger ones (a JavaScript or Python
/// component is 12-18 MB and takes seconds) go to the compiler thread, so that they hold up
/// neither the folder watcher, nor the start of the server, nor the other deploys.
const COMPILE_HERE_BYTES: usize = 2 << 20;

/// What the registry knows about one name.
#[derive(Clone, Default)]
pub struct Entry {
    /// The version queries are answered from.
    pub serving: Option<Arc<Slot>>,
    /// A version rebuilding from position 0 beside it.
    pub building: Option<Arc<Slot>>,
    /// Why the file's current content could not be loaded.
    pub file_error: Option<String>,
    /// The file's new content, while the compiler thread compiles it.
    pub compiling: Option<VersionHash>,
}

/// The projection set at one moment: replaced whole by each change, never changed in place.
pub type Catalog = BTreeMap<String, Entry>;

pub(super) struct Registry {
    /// The published set; loaded without a lock.
    catalog: ArcSwap<Catalog>,
    /// Held by whoever changes the set (a deploy, rebuild or removal, a promotion, a file
    /// error), across its file-system steps: one change at a time. Taken first, before a
    /// slot's state and the queue; no reader takes it.
    deploying: Mutex<()>,
}

/// Why an operator's request was refused.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("no projection named {0:?} is loaded")]
    NotFound(String),
    #[error("projection {0:?} is already rebuilding; wait for it to be swapped in")]
    RebuildInProgress(String),
    #[error("projection {0:?} is not faulted")]
    NotFaulted(String),
    #[error("projection {0:?} is retrying the failed event right now; ask again")]
    Busy(String),
    #[error("projection {name:?} cannot be loaded: {reason}")]
    Load { name: String, reason: String },
    #[error("view storage: {0}")]
    Storage(#[from] crate::views::ViewError),
}

impl Registry {
    pub fn new() -> Self {
        Registry {
            catalog: ArcSwap::from_pointee(Catalog::new()),
            deploying: Mutex::new(()),
        }
    }

    /// The set as it is now.
    pub fn catalog(&self) -> Arc<Catalog> {
        self.catalog.load_full()
    }

    /// Replaces the set with `edit` applied to a copy; the caller holds `deploying`.
    fn publish(&self, _deploying: &MutexGuard<'_, ()>, edit: impl FnOnce(&mut Catalog)) {
        let mut next = Catalog::clone(&self.catalog.load());
        edit(&mut next);
        self.catalog.store(Arc::new(next));
    }
}

impl Entry {
    pub fn status(&self, name: &str, head: Position) -> Status {
        let compiling = self.compiling.map(|h| h.to_string());
        let Some(serving) = &self.serving else {
            return Status {
                name: name.to_owned(),
                state: if self.compiling.is_some() {
                    State::Compiling
                } else {
                    State::Invalid
                },
                version: None,
                position: 0,
                head,
                lag: head,
                events_per_second: 0.0,
                subscription: None,
                last_error: None,
                load_error: self.file_error.clone(),
                skipped: Vec::new(),
                rebuild: None,
                compiling,
            };
        };
        let rebuild = self.building.as_ref().map(|b| b.rebuild_status(head));
        let state = serving.state.lock();
        let s = serving.code.subscription();
        Status {
            name: name.to_owned(),
            state: Slot::state_name(&state, head),
            version: Some(serving.code.hash().to_string()),
            position: state.checkpoint,
            head,
            lag: head.saturating_sub(state.checkpoint),
            events_per_second: state.rate.per_second(),
            subscription: Some(SubscriptionReport {
                streams: s.streams.clone(),
                categories: s.categories.clone(),
                event_types: s.event_types.clone(),
            }),
            last_error: state.fault.as_ref().map(|f| f.report.clone()),
            load_error: self.file_error.clone(),
            skipped: state.skipped.clone(),
            rebuild,
            compiling,
        }
    }
}

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
    fn prune_cache(&self, _deploying: &MutexGuard<'_, ()>) {
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
        let mut still_wanted = false;
        self.registry.publish(&deploying, |catalog| {
            if let Some(entry) = catalog.get_mut(name)
                && entry.compiling == Some(hash)
            {
                entry.compiling = None;
                still_wanted = true;
            }
        });
        let path = self.folder.join(format!("{name}.wasm"));
        let current = std::fs::read(&path).ok().map(|b| VersionHash::of(&b));
        if !still_wanted || current != Some(hash) {
            return self.deploy_locked(&deploying, name);
        }
        let beside = self
            .registry
            .catalog()
            .get(name)
            .is_some_and(|e| e.serving.is_some());
        match outcome {
            Ok(compiled) => {
                let _ = self.start_version(&deploying, name, &compiled, hash, beside);
            }
            Err(e) => self.file_error(&deploying, name, e.to_string()),
        }
    }

    /// Loads a new version of `name` and runs it: as the serving version if there is none
    /// (resuming the storage recorded as current when it holds this version), or as the
    /// building one beside it. A failure is recorded as the file's error, and returned.
    fn start_version(
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

    fn file_error(&self, deploying: &MutexGuard<'_, ()>, name: &str, reason: String) {
        tracing::warn!(projection = name, %reason, "projection file not loaded");
        self.registry.publish(deploying, |catalog| {
            catalog.entry(name.to_owned()).or_default().file_error = Some(reason);
        });
    }

    fn clear_file_error(&self, deploying: &MutexGuard<'_, ()>, name: &str) {
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
    fn discard(&self, slot: &Slot) {
        slot.retire();
        if let Err(e) = self.views.remove(&slot.name, &slot.storage) {
            tracing::warn!(projection = %slot.name, error = %e, "removing old storage");
        }
    }

    /// Swaps a rebuilt version in, if it is still the one building for its name: `CURRENT`
    /// first (a crash after it resumes the new version), then the published set, then the
    /// old storage goes. Waits for a deploy under way (it may be compiling). A failure to
    /// write `CURRENT` faults the building version (kind `storage`), retried with backoff.
    pub(super) fn promote(&self, slot: &Arc<Slot>) -> Next {
        let deploying = self.registry.deploying.lock();
        let still_building = self
            .registry
            .catalog()
            .get(&slot.name)
            .and_then(|e| e.building.as_ref())
            .is_some_and(|b| Arc::ptr_eq(b, slot));
        if !still_building {
            return Next::Idle;
        }
        if let Err(e) = self.views.set_current(&slot.name, &slot.storage) {
            tracing::error!(projection = %slot.name, error = %e, "swapping in a rebuilt version");
            return slot.storage_fault(slot.checkpoint(), &e);
        }
        slot.state.lock().role = Role::Serving;
        slot.feed.open(slot.checkpoint());
        let mut old = None;
        self.registry.publish(&deploying, |catalog| {
            if let Some(entry) = catalog.get_mut(&slot.name) {
                old = entry.serving.replace(slot.clone());
                entry.building = None;
            }
        });
        self.prune_cache(&deploying);
        drop(deploying);
        if let Some(old) = old {
            self.discard(&old);
        }
        tracing::info!(
            projection = %slot.name, version = %slot.code.hash().short(), position = slot.checkpoint(),
            "rebuilt version swapped in"
        );
        Next::Idle
    }

    pub(super) fn rebuild(&self, name: &str) -> Result<(), ControlError> {
        let deploying = self.registry.deploying.lock();
        let entry = self
            .registry
            .catalog()
            .get(name)
            .cloned()
            .ok_or_else(|| ControlError::NotFound(name.to_owned()))?;
        let serving = entry
            .serving
            .ok_or_else(|| ControlError::NotFound(name.to_owned()))?;
        if entry.building.is_some() {
            return Err(ControlError::RebuildInProgress(name.to_owned()));
        }
        let path = self.folder.join(format!("{name}.wasm"));
        let bytes = std::fs::read(&path).map_err(|e| ControlError::Load {
            name: name.to_owned(),
            reason: format!("reading {name}.wasm: {}", e.kind()),
        })?;
        let hash = VersionHash::of(&bytes);
        if hash != serving.code.hash() {
            tracing::info!(
                projection = name,
                "the file changed; rebuilding its new content"
            );
        }
        // The file's content as it is now, compiled here if the watcher has not yet seen it
        // change (the operator asked, and waits).
        let compiled = self
            .runtime
            .compile(hash, &bytes)
            .map_err(|e| ControlError::Load {
                name: name.to_owned(),
                reason: e.to_string(),
            })?;
        self.start_version(&deploying, name, &compiled, hash, true)
            .map_err(|reason| ControlError::Load {
                name: name.to_owned(),
                reason,
            })
    }

    pub(super) fn set_paused(&self, name: &str, paused: bool) -> Result<(), ControlError> {
        let slots = self.versions(name)?;
        for slot in &slots {
            slot.state.lock().paused = paused;
        }
        if !paused {
            for slot in &slots {
                self.schedule(slot);
            }
        }
        Ok(())
    }

    pub(super) fn retry(&self, name: &str) -> Result<(), ControlError> {
        let slot = self.faulted(name)?;
        slot.make_retry_due();
        self.schedule(&slot);
        Ok(())
    }

    pub(super) fn skip(&self, name: &str) -> Result<(), ControlError> {
        let slot = self.faulted(name)?;
        let fault = {
            let mut state = slot.state.lock();
            if state.run != Run::Idle {
                return Err(ControlError::Busy(name.to_owned()));
            }
            let Some(fault) = &state.fault else {
                return Err(ControlError::NotFaulted(name.to_owned()));
            };
            let fault = fault.report.clone();
            // Held, so that no worker runs it while the skip commits.
            state.run = Run::Held;
            fault
        };
        let record = SkipRecord {
            position: fault.position,
            event_id: fault.event_id,
            stream: fault.stream,
            kind: fault.kind,
            message: fault.message,
        };
        let why = serde_json::to_vec(&record).expect("a skip record serializes");
        let skipped = slot.view.skip(record.position, &why);
        if skipped.is_ok() {
            slot.committed(record.position, 0, true);
            tracing::warn!(
                projection = name,
                position = record.position,
                "event skipped by an operator"
            );
        }
        {
            let mut state = slot.state.lock();
            state.run = Run::Idle;
            if skipped.is_ok() {
                state.skipped.push(record);
            }
        }
        self.schedule(&slot);
        Ok(skipped?)
    }

    /// The serving and building versions of `name`.
    fn versions(&self, name: &str) -> Result<Vec<Arc<Slot>>, ControlError> {
        let catalog = self.registry.catalog();
        let entry = catalog
            .get(name)
            .filter(|e| e.serving.is_some())
            .ok_or_else(|| ControlError::NotFound(name.to_owned()))?;
        Ok(entry
            .serving
            .iter()
            .chain(&entry.building)
            .cloned()
            .collect())
    }

    /// The faulted version of `name`: the serving one if it is, else the building one.
    fn faulted(&self, name: &str) -> Result<Arc<Slot>, ControlError> {
        self.versions(name)?
            .into_iter()
            .find(|s| s.state.lock().fault.is_some())
            .ok_or_else(|| ControlError::NotFaulted(name.to_owned()))
    }
}
