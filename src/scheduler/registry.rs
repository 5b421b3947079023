//! The registry: which versions of which projections run, the swap of a rebuilt version, and
//! the operator's controls over them. It and `deploy.rs` (which keeps the set in step with the
//! projections folder) alone change the set.
//!
//! Each name has at most two versions: the serving one, which answers queries and follows the
//! log, and a building one, rebuilding from position 0 into its own storage after the file
//! changed or an operator asked. When the building version reaches the head it is swapped in
//! (a query sees one version or the other, never a mix), recorded as the name's current
//! storage, and the old version's storage is deleted.
//!
//! Readers (HTTP handlers on the reactor, workers) never lock: the set is published as an
//! immutable [`Catalog`] that each change replaces whole (`arc-swap`). Changes are serialised
//! by `Registry::deploying`, and every file-system step (a small compile, `CURRENT`, deleting
//! storage) happens with no lock but that one held, which no reader takes.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use arc_swap::ArcSwap;
use parking_lot::{Mutex, MutexGuard};

use super::Shared;
use super::slot::{Next, Role, Run, Slot};
use super::status::{SkipRecord, State, Status, SubscriptionReport};
use crate::log::Position;
use crate::runtime::VersionHash;

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
    pub(super) deploying: Mutex<()>,
    /// Whether the published set is not empty, for the head listener (which holds no slot).
    pub(super) loaded: Arc<AtomicBool>,
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
            loaded: Arc::new(AtomicBool::new(false)),
        }
    }

    /// The set as it is now.
    pub fn catalog(&self) -> Arc<Catalog> {
        self.catalog.load_full()
    }

    /// Replaces the set with `edit` applied to a copy; the caller holds `deploying`.
    pub(super) fn publish(&self, _deploying: &MutexGuard<'_, ()>, edit: impl FnOnce(&mut Catalog)) {
        let mut next = Catalog::clone(&self.catalog.load());
        edit(&mut next);
        self.loaded.store(!next.is_empty(), Ordering::SeqCst);
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
