//! One loaded projection version, and the state its worker, the registry and the operator's
//! controls share under one lock.

use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::sync::watch;

use super::batch::FaultSite;
use super::queue::Signal;
use super::status::{self, FaultReport, RebuildStatus, SkipRecord, State};
use crate::log::{Position, Source};
use crate::runtime::{Changes, Code, Fault, FaultKind};
use crate::views::{ChangeFeed, ViewError, ViewStore};

/// How often at most a view's commit is made durable (fsync'd); commits in between are
/// rolled back by a crash, with their checkpoints, and simply replayed.
const DURABLE_EVERY: Duration = Duration::from_secs(1);
/// Longest wait before retrying a faulted projection.
const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// A serving version that caught up rests for this many times its turn's length before its
/// next turn (at most [`MAX_REST`]), and the events appended meanwhile go into one batch. A
/// turn has a fixed cost (a guest instance, a read, a commit: 100-300 µs for a Rust guest,
/// more for JavaScript and Python) that a log taking one event at a time would otherwise pay
/// per event and per projection, on the cores the appends need; resting keeps a following
/// projection to about a tenth of a core. An append after a quiet spell is applied at once.
const REST_FACTOR: u32 = 9;
/// Longest rest, so a view lags a steady stream of appends by little more than this.
const MAX_REST: Duration = Duration::from_millis(5);

/// One loaded projection version.
pub(super) struct Slot {
    /// The account whose projection this is (for its metrics' labels).
    pub account: Arc<str>,
    pub name: String,
    /// Its storage in the views folder.
    pub storage: String,
    pub code: Code,
    pub sources: Vec<Source>,
    pub view: ViewStore,
    /// Everything that changes while it runs. Taken after the registry's locks and before
    /// the work queue's; never held across I/O or a call into the guest.
    pub state: Mutex<SlotState>,
    /// The checkpoint and whether the version is retired, for readers on the reactor waiting
    /// until a position is applied (without the state's lock).
    pub progress: watch::Sender<Progress>,
    /// Its recent commits' changes, for readers following the view; open while it serves.
    pub feed: Arc<ChangeFeed>,
}

pub(super) struct SlotState {
    pub checkpoint: Position,
    pub role: Role,
    /// Who has the slot: the scheduling handshake between the queue, the workers and the
    /// operator's skip. At most one worker runs a slot, so its view has one writer.
    pub run: Run,
    /// Paused by an operator: no worker takes it until resumed.
    pub paused: bool,
    pub fault: Option<Faulted>,
    /// Events an operator chose to skip, oldest first.
    pub skipped: Vec<SkipRecord>,
    pub rate: status::Rate,
    pub last_durable: Instant,
    /// Earliest start of the next turn of a serving version that caught up ([`REST_FACTOR`]).
    pub rested: Instant,
}

/// What a reader waiting on a version sees.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Progress {
    pub checkpoint: Position,
    /// Replaced or removed: whoever waits looks for its successor.
    pub retired: bool,
}

/// What the version is to its name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Role {
    /// Answers queries and follows the log.
    Serving,
    /// Rebuilding from position 0 beside the serving version; swapped in at the head.
    Building,
    /// Replaced or removed: never run again.
    Retired,
}

/// Who has the slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Run {
    /// Nobody: it waits for the head to move, a backoff to end, or a resume.
    Idle,
    /// In the work queue.
    Queued,
    /// A worker runs its turn.
    Running,
    /// An operator's skip is committing.
    Held,
    /// Caught up a moment ago, with new events: rests until a timer queues it
    /// ([`Slot::rest`]).
    Resting,
}

/// What [`Slot::claim_for_queue`] decided.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Claim {
    /// Marked queued: the caller queues it.
    Queue,
    /// Marked resting until then: the caller starts its timer ([`Slot::rest`]).
    Rest(Instant),
    /// Nothing to do (no work, or someone has it).
    No,
}

/// A fault and its retry.
pub(super) struct Faulted {
    pub report: FaultReport,
    /// The backoff has passed (or an operator asked): a worker may run it again.
    pub retry_due: bool,
}

/// What a worker does with a projection after a turn.
pub(super) enum Next {
    Again,
    Idle,
    Faulted(Duration),
}

impl Slot {
    pub fn new(
        (account, name): (&Arc<str>, &str),
        storage: &str,
        code: Code,
        sources: Vec<Source>,
        view: ViewStore,
        (checkpoint, skipped): (Position, Vec<SkipRecord>),
        (role, retention): (Role, usize),
    ) -> Self {
        let feed = Arc::new(ChangeFeed::new(retention));
        if role == Role::Serving {
            feed.open(checkpoint);
        }
        Slot {
            feed,
            account: account.clone(),
            name: name.to_owned(),
            storage: storage.to_owned(),
            code,
            sources,
            view,
            state: Mutex::new(SlotState {
                checkpoint,
                role,
                run: Run::Idle,
                paused: false,
                fault: None,
                skipped,
                rate: status::Rate::default(),
                last_durable: Instant::now(),
                rested: Instant::now(),
            }),
            progress: watch::Sender::new(Progress {
                checkpoint,
                retired: false,
            }),
        }
    }

    pub fn checkpoint(&self) -> Position {
        self.state.lock().checkpoint
    }

    pub fn role(&self) -> Role {
        self.state.lock().role
    }

    /// Paused or retired: a worker lets go of it.
    pub fn stopped(&self) -> bool {
        let state = self.state.lock();
        state.paused || state.role == Role::Retired
    }

    /// Marks it queued if a worker should run it: behind `head`, idle, not paused or
    /// retired, and not waiting out a fault's backoff; or resting, if it is a serving version
    /// that caught up less than its rest ago.
    pub fn claim_for_queue(&self, head: Position) -> Claim {
        let mut state = self.state.lock();
        let blocked = state.fault.as_ref().is_some_and(|f| !f.retry_due);
        // A building version at the head has a promotion to retry (a failed `CURRENT` write).
        let has_work = state.checkpoint < head || state.role == Role::Building;
        if state.run != Run::Idle
            || state.paused
            || state.role == Role::Retired
            || blocked
            || !has_work
        {
            return Claim::No;
        }
        if state.role == Role::Serving && state.fault.is_none() && state.rested > Instant::now() {
            state.run = Run::Resting;
            return Claim::Rest(state.rested);
        }
        state.run = Run::Queued;
        Claim::Queue
    }

    /// A serving version's turn of `spent` caught up with the log: its next turn starts no
    /// sooner than its rest from now.
    pub fn caught_up(&self, spent: Duration) {
        let mut state = self.state.lock();
        if state.role == Role::Serving {
            state.rested = Instant::now() + (spent * REST_FACTOR).min(MAX_REST);
        }
    }

    /// Starts the timer of a rest [`Claim::Rest`] began: at `until` the slot is idle again and
    /// the workers look at it. Like a backoff's, the timer holds only a `Weak` reference.
    pub fn rest(self: &Arc<Self>, until: Instant, signal: &Arc<Signal>) {
        let (slot, signal) = (Arc::downgrade(self), signal.clone());
        let runtime = signal.tokio.clone();
        runtime.spawn(async move {
            tokio::time::sleep_until(until.into()).await;
            if let Some(slot) = Weak::upgrade(&slot) {
                let mut state = slot.state.lock();
                if state.run == Run::Resting {
                    state.run = Run::Idle;
                }
                drop(state);
                drop(slot);
                signal.rescan();
            }
        });
    }

    pub fn set_run(&self, run: Run) {
        self.state.lock().run = run;
    }

    /// Never runs again; wakes anyone waiting on its progress so they look for its successor.
    pub fn retire(&self) {
        self.state.lock().role = Role::Retired;
        self.feed.close();
        self.progress.send_modify(|p| p.retired = true);
    }

    /// Lets a faulted slot run again now.
    pub fn make_retry_due(&self) {
        if let Some(fault) = &mut self.state.lock().fault {
            fault.retry_due = true;
        }
    }

    /// Starts a fault's backoff: after it, the slot may run again. The timer holds only a
    /// `Weak` reference and the queue's signal, so it keeps nothing open.
    pub fn start_backoff(self: &Arc<Self>, backoff: Duration, signal: &Arc<Signal>) {
        let (slot, signal) = (Arc::downgrade(self), signal.clone());
        let runtime = signal.tokio.clone();
        runtime.spawn(async move {
            tokio::time::sleep(backoff).await;
            if let Some(slot) = Weak::upgrade(&slot) {
                slot.make_retry_due();
                drop(slot);
                signal.rescan();
            }
        });
    }

    /// Before a turn of a faulted slot: the view may have been reopened after a storage
    /// failure, or a panic may have cut a commit short, so the checkpoint is read back from
    /// the view, the one record of what is applied.
    pub fn resync(&self) -> Result<(), ViewError> {
        if self.state.lock().fault.is_none() {
            return Ok(());
        }
        let checkpoint = self.view.checkpoint()?;
        let mut state = self.state.lock();
        if state.checkpoint != checkpoint {
            tracing::info!(
                projection = %self.name, from = state.checkpoint, to = checkpoint,
                "checkpoint read back from the view"
            );
            state.checkpoint = checkpoint;
            drop(state);
            self.progress.send_modify(|p| p.checkpoint = checkpoint);
        }
        Ok(())
    }

    /// Commits a batch's changes with its checkpoint; a success clears any fault.
    pub fn commit(&self, changes: &Arc<Changes>, checkpoint: Position, applied: usize) -> Next {
        let durable = self.state.lock().last_durable.elapsed() >= DURABLE_EVERY;
        if let Err(e) = self.view.commit(changes, checkpoint, durable) {
            return self.storage_fault(self.checkpoint(), &e);
        }
        self.feed.publish(checkpoint, changes);
        self.committed(checkpoint, applied, durable)
    }

    /// Records a commit that reached `checkpoint`; one that applied events, or passed the
    /// faulted event, clears the fault.
    pub fn committed(&self, checkpoint: Position, applied: usize, durable: bool) -> Next {
        let mut state = self.state.lock();
        if durable {
            state.last_durable = Instant::now();
        }
        state.checkpoint = checkpoint;
        state.rate.record(checkpoint);
        if applied > 0
            || state
                .fault
                .as_ref()
                .is_some_and(|f| f.report.position <= checkpoint)
        {
            state.fault = None;
        }
        drop(state);
        self.progress.send_modify(|p| p.checkpoint = checkpoint);
        Next::Again
    }

    /// The guest failed on `event`, and every event before it is committed or was passed
    /// over by the subscription: the checkpoint steps past the latter, so that it stands just
    /// before the failing event, then the fault is recorded.
    pub fn guest_fault(&self, event: &FaultSite, fault: Fault) -> Next {
        let before = event.position.saturating_sub(1);
        if self.checkpoint() < before
            && let Next::Faulted(backoff) = self.commit(&Arc::default(), before, 0)
        {
            return Next::Faulted(backoff);
        }
        self.fault(
            event.position,
            event.id.to_string(),
            event.stream.clone(),
            fault,
        )
    }

    /// The host failed (reading the log or the view, a panic) after `after`.
    pub fn host_fault(&self, after: Position, message: &str) -> Next {
        self.position_fault(after, FaultKind::Host, message.to_owned())
    }

    /// A view commit or read failed after `after`.
    pub fn storage_fault(&self, after: Position, error: &ViewError) -> Next {
        let message = if error.is_disk_full() {
            "the disk is full; the view is retried with backoff".to_owned()
        } else {
            error.to_string()
        };
        self.position_fault(after, FaultKind::Storage, message)
    }

    /// The account's views are over their storage limit.
    pub fn quota_fault(&self, after: Position, over: crate::views::OverQuota) -> Next {
        self.position_fault(after, FaultKind::Quota, over.to_string())
    }

    fn position_fault(&self, after: Position, kind: FaultKind, message: String) -> Next {
        self.fault(
            after.saturating_add(1),
            uuid::Uuid::nil().to_string(),
            String::new(),
            Fault::new(kind, message),
        )
    }

    /// The labels of this version's metrics, for its current role.
    pub fn labels(&self) -> crate::telemetry::ProjectionLabels {
        let building = self.state.lock().role == Role::Building;
        crate::telemetry::ProjectionLabels::new(&self.account, &self.name, building)
    }

    fn fault(&self, position: Position, event_id: String, stream: String, fault: Fault) -> Next {
        self.labels().fault(fault.kind.as_str());
        let mut state = self.state.lock();
        let attempts = match &state.fault {
            Some(previous) if previous.report.position == position => {
                previous.report.attempts.saturating_add(1)
            }
            _ => 1,
        };
        // One line per fault, with the reason (frames stay in the status); its retries failing
        // the same way are logged at debug.
        if attempts == 1 {
            tracing::warn!(
                projection = %self.name, version = %self.code.hash(), position, %event_id,
                kind = ?fault.kind, reason = %fault.message, "projection faulted"
            );
        } else {
            tracing::debug!(
                projection = %self.name, position, attempts, reason = %fault.message,
                "projection failed again"
            );
        }
        state.fault = Some(Faulted {
            report: FaultReport {
                kind: fault.kind,
                message: fault.message,
                backtrace: fault.backtrace,
                position,
                event_id,
                stream,
                attempts,
            },
            retry_due: false,
        });
        Next::Faulted(backoff(attempts))
    }

    /// The state the API shows, from the state under its lock.
    pub fn state_name(state: &SlotState, head: Position) -> State {
        if state.paused {
            State::Paused
        } else if state.fault.is_some() {
            State::Faulted
        } else if state.checkpoint >= head {
            State::CaughtUp
        } else {
            State::Running
        }
    }

    pub fn rebuild_status(&self, head: Position) -> RebuildStatus {
        let state = self.state.lock();
        let lag = head.saturating_sub(state.checkpoint);
        let rate = state.rate.per_second();
        RebuildStatus {
            state: Self::state_name(&state, head),
            version: self.code.hash().to_string(),
            position: state.checkpoint,
            head,
            lag,
            events_per_second: rate,
            eta_seconds: (rate > 0.0).then(|| lag as f64 / rate),
            last_error: state.fault.as_ref().map(|f| f.report.clone()),
        }
    }
}

/// 1 s, 2 s, 4 s, ... up to a minute.
pub(super) fn backoff(attempts: u32) -> Duration {
    Duration::from_secs(1u64 << attempts.saturating_sub(1).min(6)).min(MAX_BACKOFF)
}
