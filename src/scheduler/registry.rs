//! The registry: which versions of which projections run, kept in step with the projections
//! folder, and the operator's controls over them.
//!
//! Each name has at most two versions: the serving one, which answers queries and follows the
//! log, and a building one, rebuilding from position 0 into its own storage after the file
//! changed or an operator asked. When the building version reaches the head it is swapped in
//! under the entries lock (a query sees one version or the other, never a mix), recorded as
//! the name's current storage, and the old version's storage is deleted.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Instant;

use tokio::sync::watch;

use super::status::{self, RebuildStatus, SkipRecord, State, Status, SubscriptionReport};
use super::{SchedulerError, Shared, Slot, SlotState, batch, folder};
use crate::log::Position;
use crate::runtime::VersionHash;

/// What the registry knows about one name.
#[derive(Default)]
pub struct Entry {
    /// The version queries are answered from.
    pub serving: Option<Arc<Slot>>,
    /// A version rebuilding from position 0 beside it.
    pub building: Option<Arc<Slot>>,
    /// Why the file's current content could not be loaded.
    pub file_error: Option<String>,
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
    Storage(String),
}

impl Entry {
    pub fn status(&self, name: &str, head: Position) -> Status {
        let Some(serving) = &self.serving else {
            return Status {
                name: name.to_owned(),
                state: State::Invalid,
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
            };
        };
        let state = serving.state.lock().expect("slot lock");
        let s = serving.code.subscription();
        Status {
            name: name.to_owned(),
            state: serving.state_name(&state, head),
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
            last_error: state.fault.clone(),
            load_error: self.file_error.clone(),
            skipped: state.skipped.clone(),
            rebuild: self.building.as_ref().map(|b| b.rebuild_status(head)),
        }
    }
}

impl Slot {
    fn state_name(&self, state: &SlotState, head: Position) -> State {
        if self.paused.load(Ordering::Relaxed) {
            State::Paused
        } else if state.fault.is_some() {
            State::Faulted
        } else if state.checkpoint >= head {
            State::CaughtUp
        } else {
            State::Running
        }
    }

    fn rebuild_status(&self, head: Position) -> RebuildStatus {
        let state = self.state.lock().expect("slot lock");
        let lag = head.saturating_sub(state.checkpoint);
        let rate = state.rate.per_second();
        RebuildStatus {
            state: self.state_name(&state, head),
            version: self.code.hash().to_string(),
            position: state.checkpoint,
            head,
            lag,
            events_per_second: rate,
            eta_seconds: (rate > 0.0).then(|| lag as f64 / rate),
            last_error: state.fault.clone(),
        }
    }

    /// Never runs again; wakes anyone waiting on its progress so they look for its successor.
    fn retire(&self) {
        self.retired.store(true, Ordering::Relaxed);
        self.progress.send_modify(|_| {});
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
            .entries
            .read()
            .expect("entries lock")
            .keys()
            .cloned()
            .chain(self.views.names())
            .collect();
        for name in known {
            if !files.iter().any(|(n, _)| *n == name) {
                self.deploy(&name);
            }
        }
        Ok(())
    }

    /// Reconciles one name with its file as it is now: added, replaced, unchanged, removed,
    /// or unreadable. Blocking: it may compile.
    pub(super) fn deploy(&self, name: &str) {
        let _deploying = self.deploying();
        let path = self.folder.join(format!("{name}.wasm"));
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return self.remove(name),
            Err(e) => return self.file_error(name, format!("reading {}: {e}", path.display())),
        };
        let hash = VersionHash::of(&bytes);
        let (serving, building) = {
            let entries = self.entries.read().expect("entries lock");
            let entry = entries.get(name);
            let version = |slot: Option<&Arc<Slot>>| slot.map(|s| s.code.hash());
            (
                entry.and_then(|e| version(e.serving.as_ref())),
                entry.and_then(|e| version(e.building.as_ref())),
            )
        };
        if building == Some(hash) {
            // Already building this content (a change seen twice, or a requested rebuild).
            if let Some(entry) = self.entries.write().expect("entries lock").get_mut(name) {
                entry.file_error = None;
            }
            return;
        }
        if serving == Some(hash) {
            // Unchanged, or changed back while other content was building.
            let mut entries = self.entries.write().expect("entries lock");
            if let Some(entry) = entries.get_mut(name) {
                entry.file_error = None;
                if let Some(building) = entry.building.take() {
                    self.discard(&building);
                }
            }
            return;
        }
        // A failure is in the status as the file's error.
        let _ = self.start_version(name, &bytes, hash, serving.is_some());
    }

    /// Loads a new version of `name` and runs it: as the serving version if there is none
    /// (resuming the storage recorded as current when it holds this version), or as the
    /// building one beside it. A failure is recorded as the file's error, and returned.
    fn start_version(
        &self,
        name: &str,
        bytes: &[u8],
        hash: VersionHash,
        beside: bool,
    ) -> Result<(), String> {
        let (storage, fresh) = match self.views.current(name) {
            Some(current) if !beside && current.starts_with(&hash.to_string()) => (current, false),
            _ => (self.views.fresh_storage(name, &hash.to_string()), true),
        };
        let slot = match self.load(name, bytes, &storage, beside) {
            Ok(slot) => Arc::new(slot),
            Err(reason) => {
                // A view that was to be resumed stays for the next attempt.
                if fresh && let Err(e) = self.views.remove(name, &storage) {
                    tracing::warn!(projection = name, error = %e, "removing the storage of a failed load");
                }
                self.file_error(name, reason.clone());
                return Err(reason);
            }
        };
        if !beside {
            if let Err(e) = self.views.set_current(name, &storage) {
                self.file_error(name, e.to_string());
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
        {
            let mut entries = self.entries.write().expect("entries lock");
            let entry = entries.entry(name.to_owned()).or_default();
            entry.file_error = None;
            let previous = if beside {
                // A rebuild of a paused projection waits for it to be resumed.
                let paused = entry
                    .serving
                    .as_ref()
                    .is_some_and(|s| s.paused.load(Ordering::Relaxed));
                slot.paused.store(paused, Ordering::Relaxed);
                entry.building.replace(slot.clone())
            } else {
                entry.serving.replace(slot.clone())
            };
            if let Some(previous) = previous {
                self.discard(&previous);
            }
        }
        self.schedule(&slot);
        Ok(())
    }

    fn load(
        &self,
        name: &str,
        bytes: &[u8],
        storage: &str,
        rebuilding: bool,
    ) -> Result<Slot, String> {
        let code = self.runtime.load(name, bytes).map_err(|e| e.to_string())?;
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
            projection = name, version = %code.hash().short(), storage, checkpoint, rebuilding,
            "projection loaded"
        );
        Ok(Slot {
            name: name.to_owned(),
            storage: storage.to_owned(),
            sources,
            code,
            view,
            state: Mutex::new(SlotState {
                checkpoint,
                scheduled: false,
                fault: None,
                skipped,
                rate: status::Rate::default(),
                last_durable: Instant::now(),
            }),
            progress: watch::Sender::new(checkpoint),
            retry_due: Arc::default(),
            rebuilding: AtomicBool::new(rebuilding),
            retired: AtomicBool::new(false),
            paused: AtomicBool::new(false),
        })
    }

    fn file_error(&self, name: &str, reason: String) {
        tracing::warn!(projection = name, %reason, "projection file not loaded");
        let mut entries = self.entries.write().expect("entries lock");
        entries.entry(name.to_owned()).or_default().file_error = Some(reason);
    }

    /// The file is gone: stop every version and delete the name's storage. The storage goes
    /// under the entries lock, so that once the name has left the API its storage is gone too.
    fn remove(&self, name: &str) {
        let mut entries = self.entries.write().expect("entries lock");
        let removed = entries.remove(name);
        for slot in removed
            .iter()
            .flat_map(|e| e.serving.iter().chain(&e.building))
        {
            slot.retire();
        }
        if let Err(e) = self.views.remove_all(name) {
            tracing::warn!(projection = name, error = %e, "removing a projection's storage");
        }
        drop(entries);
        if removed.is_some() {
            tracing::info!(projection = name, "projection removed");
        }
    }

    /// Retires a version that will not serve, and deletes its storage.
    fn discard(&self, slot: &Slot) {
        slot.retire();
        if let Err(e) = self.views.remove(&slot.name, &slot.storage) {
            tracing::warn!(projection = %slot.name, error = %e, "removing old storage");
        }
    }

    /// Swaps a rebuilt version in, if it is still the one building for its name.
    pub(super) fn promote(&self, slot: &Arc<Slot>) {
        let mut entries = self.entries.write().expect("entries lock");
        let Some(entry) = entries.get_mut(&slot.name) else {
            return;
        };
        if !entry
            .building
            .as_ref()
            .is_some_and(|b| Arc::ptr_eq(b, slot))
        {
            return;
        }
        if let Err(e) = self.views.set_current(&slot.name, &slot.storage) {
            tracing::error!(projection = %slot.name, error = %e, "swapping in a rebuilt version");
            return;
        }
        slot.rebuilding.store(false, Ordering::Relaxed);
        let old = entry.serving.replace(slot.clone());
        entry.building = None;
        drop(entries);
        if let Some(old) = old {
            self.discard(&old);
        }
        tracing::info!(
            projection = %slot.name, version = %slot.code.hash().short(), position = slot.checkpoint(),
            "rebuilt version swapped in"
        );
    }

    pub(super) fn rebuild(&self, name: &str) -> Result<(), ControlError> {
        let _deploying = self.deploying();
        let (serving, building) = {
            let entries = self.entries.read().expect("entries lock");
            let entry = entries
                .get(name)
                .ok_or_else(|| ControlError::NotFound(name.to_owned()))?;
            (entry.serving.clone(), entry.building.is_some())
        };
        let serving = serving.ok_or_else(|| ControlError::NotFound(name.to_owned()))?;
        if building {
            return Err(ControlError::RebuildInProgress(name.to_owned()));
        }
        let path = self.folder.join(format!("{name}.wasm"));
        let bytes = std::fs::read(&path).map_err(|e| ControlError::Load {
            name: name.to_owned(),
            reason: format!("reading {}: {e}", path.display()),
        })?;
        let hash = VersionHash::of(&bytes);
        if hash != serving.code.hash() {
            tracing::info!(
                projection = name,
                "the file changed; rebuilding its new content"
            );
        }
        self.start_version(name, &bytes, hash, true)
            .map_err(|reason| ControlError::Load {
                name: name.to_owned(),
                reason,
            })
    }

    pub(super) fn set_paused(&self, name: &str, paused: bool) -> Result<(), ControlError> {
        let slots = self.versions(name)?;
        for slot in &slots {
            slot.paused.store(paused, Ordering::Relaxed);
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
        slot.retry_due.store(true, Ordering::Relaxed);
        self.schedule(&slot);
        Ok(())
    }

    pub(super) fn skip(&self, name: &str) -> Result<(), ControlError> {
        let slot = self.faulted(name)?;
        let fault = {
            let mut state = slot.state.lock().expect("slot lock");
            if state.scheduled {
                return Err(ControlError::Busy(name.to_owned()));
            }
            let Some(fault) = state.fault.clone() else {
                return Err(ControlError::NotFaulted(name.to_owned()));
            };
            // Held as if queued, so that no worker runs it while the skip commits.
            state.scheduled = true;
            fault
        };
        let record = SkipRecord {
            position: fault.position,
            event_id: fault.event_id,
            stream: fault.stream,
            kind: fault.kind,
            message: fault.message,
        };
        let why = serde_json::to_vec(&record).expect("a record serializes");
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
            let mut state = slot.state.lock().expect("slot lock");
            state.scheduled = false;
            if skipped.is_ok() {
                state.skipped.push(record);
            }
        }
        self.schedule(&slot);
        skipped.map_err(|e| ControlError::Storage(e.to_string()))
    }

    /// The serving and building versions of `name`.
    fn versions(&self, name: &str) -> Result<Vec<Arc<Slot>>, ControlError> {
        let entries = self.entries.read().expect("entries lock");
        let entry = entries
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
            .find(|s| s.state.lock().expect("slot lock").fault.is_some())
            .ok_or_else(|| ControlError::NotFaulted(name.to_owned()))
    }

    fn deploying(&self) -> MutexGuard<'_, ()> {
        self.deploying.lock().expect("deploy lock")
    }
}
