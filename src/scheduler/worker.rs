//! The worker threads: each takes a projection from the queue and runs it for a turn of
//! batches (read, apply in the guest, commit), isolates a failing event, and records faults.
//!
//! A turn runs under `catch_unwind`: a panic in the host code around a projection becomes a
//! fault of kind `host` at its checkpoint, retried with backoff like any other, and the worker
//! goes on with the next projection. Locks do not poison (`parking_lot`), so a panic leaves
//! nothing behind that fails the other workers or the HTTP reads.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::Shared;
use super::batch::{self, Batch, FaultSite};
use super::commits::Commits;
use super::queue::Work;
use super::read_ahead::ReadAhead;
use super::slot::{Next, Role, Run, Slot};
use crate::log::{Position, StorageError};
use crate::runtime::Fault;

/// A worker keeps a projection for at least this long before yielding to others waiting:
/// long enough that reads and commits overlap the guest over many batches, short enough that
/// a projection catching up on millions of events holds the others back by little.
const TURN: Duration = Duration::from_millis(50);

/// Why a turn's batches stopped; acted on once everything applied is committed.
enum TurnEnd {
    /// Paused or retired.
    Stopped,
    /// Others wait, or the workers stop.
    Yield,
    CaughtUp,
    /// A commit failed; its fault is recorded.
    CommitFailed(Next),
    /// Reading the log or the view failed after `after`.
    HostFault {
        after: Position,
        message: String,
    },
    /// The guest failed on a batch of one event.
    GuestFault {
        at: FaultSite,
        fault: Fault,
    },
    /// The guest failed somewhere in a batch of several events.
    Failed(Batch),
}

impl TurnEnd {
    fn host_fault(after: Position, error: impl std::fmt::Display) -> Self {
        TurnEnd::HostFault {
            after,
            message: error.to_string(),
        }
    }
}

impl Shared {
    /// A worker thread's life: until the queue stops. Owned by `Projections`, which joins it.
    /// A panic outside a turn (none is expected) restarts the loop rather than lose the
    /// thread.
    pub(super) fn work(self: &Arc<Self>) {
        loop {
            match std::panic::catch_unwind(AssertUnwindSafe(|| self.work_loop())) {
                Ok(()) => return,
                Err(panic) => tracing::error!(
                    reason = %crate::panic_message(&*panic),
                    "a projection worker panicked outside a turn; it carries on"
                ),
            }
        }
    }

    fn work_loop(self: &Arc<Self>) {
        loop {
            let slot = match self.signal.next() {
                Work::Stop => return,
                Work::Rescan => {
                    self.schedule_all();
                    continue;
                }
                Work::Run(slot) => slot,
            };
            slot.set_run(Run::Running);
            let turn_started = Instant::now();
            let from = slot.checkpoint();
            let span = tracing::debug_span!(
                "turn",
                projection = %slot.name,
                version = %slot.code.hash(),
                role = ?slot.role(),
                from,
                to = tracing::field::Empty,
            );
            let turn = span.enter();
            let next = match std::panic::catch_unwind(AssertUnwindSafe(|| self.run_turn(&slot))) {
                Ok(next) => next,
                Err(panic) => {
                    let reason = crate::panic_message(&*panic);
                    tracing::error!(projection = %slot.name, %reason, "a projection's turn panicked");
                    slot.host_fault(slot.checkpoint(), &format!("the host panicked: {reason}"))
                }
            };
            span.record("to", slot.checkpoint());
            tracing::debug!("turn ended");
            drop(turn);
            match next {
                Next::Again => {
                    slot.set_run(Run::Queued);
                    self.signal.push(slot);
                }
                Next::Idle => {
                    slot.caught_up(turn_started.elapsed());
                    slot.set_run(Run::Idle);
                    // The head may have moved after the turn read it.
                    self.schedule(&slot);
                }
                Next::Faulted(backoff) => {
                    slot.set_run(Run::Idle);
                    slot.start_backoff(backoff, &self.signal);
                }
            }
        }
    }

    /// Runs batches of `slot` until it reaches the head, faults, or has had its turn while
    /// others wait. A read-ahead thread ([`ReadAhead`]) reads the next batch while the guest
    /// applies one, and a commit thread ([`Commits`]) commits applied batches meanwhile; what
    /// ends the turn is acted on once they are all committed.
    fn run_turn(&self, slot: &Arc<Slot>) -> Next {
        crate::failpoint::failpoint!("turn", |_| Next::Idle);
        if let Some(over) = self.quota.as_ref().and_then(|q| q.exceeded()) {
            return slot.quota_fault(slot.checkpoint(), over);
        }
        if let Err(e) = slot.resync() {
            return slot.storage_fault(slot.checkpoint(), &e);
        }
        std::thread::scope(|scope| {
            let mut commits = Commits::start(scope, slot);
            let end = self.apply_batches(scope, slot, &mut commits);
            if let Err(fault) = commits.finish() {
                return fault;
            }
            match end {
                TurnEnd::Stopped => Next::Idle,
                TurnEnd::Yield => Next::Again,
                TurnEnd::CommitFailed(fault) => fault,
                TurnEnd::CaughtUp => {
                    if slot.role() == Role::Building {
                        return self.promote(slot);
                    }
                    Next::Idle
                }
                TurnEnd::HostFault { after, message } => slot.host_fault(after, &message),
                TurnEnd::GuestFault { at, fault } => slot.guest_fault(&at, fault),
                TurnEnd::Failed(batch) => isolate(slot, &batch),
            }
        })
    }

    fn apply_batches<'scope>(
        &'scope self,
        scope: &'scope std::thread::Scope<'scope, '_>,
        slot: &'scope Slot,
        commits: &mut Commits<'scope, '_>,
    ) -> TurnEnd {
        let started = Instant::now();
        let labels = slot.labels();
        let mut read_ahead: Option<Batch> = None;
        // Started at the turn's first read-ahead.
        let mut reader: Option<ReadAhead<'scope>> = None;
        // An applied batch's frame, kept to frame a later batch into (see `batch::next`).
        let mut spare: Vec<u8> = Vec::new();
        loop {
            if let Some(fault) = commits.failed() {
                return TurnEnd::CommitFailed(fault);
            }
            let head = *self.head.borrow();
            let after = commits.position();
            if slot.stopped() {
                return TurnEnd::Stopped;
            }
            if after >= head {
                return TurnEnd::CaughtUp;
            }
            if self.signal.should_yield(started.elapsed() >= TURN) {
                return TurnEnd::Yield;
            }
            let batch = match read_ahead.take() {
                Some(batch) => batch,
                None => match self.read(slot, after, head, std::mem::take(&mut spare)) {
                    Ok(batch) => batch,
                    Err(e) => return TurnEnd::host_fault(after, e),
                },
            };
            if batch.len == 0 {
                commits.advance(batch.checkpoint, head);
                spare = batch.frame;
                continue;
            }
            let view = match slot.view.reader(commits.layers()) {
                Ok(view) => view,
                Err(e) => return TurnEnd::host_fault(after, e),
            };
            // The next batch is read meanwhile, if there is one (a turn that follows the log
            // usually has none, and starts no thread).
            let next_after = batch.checkpoint;
            let ahead = (next_after < head).then(|| {
                reader
                    .get_or_insert_with(|| ReadAhead::start(scope, self, slot))
                    .request(next_after, head, std::mem::take(&mut spare));
            });
            let applying = Instant::now();
            let outcome = slot.code.apply(&batch.frame, batch.len, view);
            if let Ok(applied) = &outcome {
                labels.batch(batch.len, applying.elapsed(), applied.fuel);
            }
            let ahead = ahead.and(reader.as_mut()).map(ReadAhead::take);
            match outcome {
                Ok(applied) => {
                    commits.add(applied.changes, batch.checkpoint, batch.len, head);
                    read_ahead = ahead.and_then(Result::ok);
                    spare = batch.frame;
                }
                Err(fault) if batch.len == 1 => {
                    let Some((_, at)) = batch.events().next() else {
                        unreachable!("a batch of one event")
                    };
                    return TurnEnd::GuestFault { at, fault };
                }
                Err(_) => return TurnEnd::Failed(batch),
            }
        }
    }

    pub(super) fn read(
        &self,
        slot: &Slot,
        after: Position,
        head: Position,
        buffer: Vec<u8>,
    ) -> Result<Batch, StorageError> {
        batch::next(
            &self.reader,
            &slot.sources,
            slot.code.subscription(),
            (after, head),
            self.max_batch,
            buffer,
        )
    }
}

/// The batch failed somewhere: apply its events one at a time, committing each, until the
/// one that fails, which faults the projection. Deterministic guests fail at the same event
/// every time; if none fails alone, the batch as a whole was over a limit, and its events are
/// all committed.
fn isolate(slot: &Slot, batch: &Batch) -> Next {
    for (frame, at) in batch.events() {
        let reader = match slot.view.reader(Vec::new()) {
            Ok(reader) => reader,
            Err(e) => return slot.storage_fault(slot.checkpoint(), &e),
        };
        match slot.code.apply(frame, 1, reader) {
            Ok(applied) => {
                if let Next::Faulted(backoff) =
                    slot.commit(&Arc::new(applied.changes), at.position, 1)
                {
                    return Next::Faulted(backoff);
                }
            }
            Err(fault) => return slot.guest_fault(&at, fault),
        }
    }
    slot.commit(&Arc::default(), batch.checkpoint, 0)
}
