//! A turn's commits, made on a thread of their own while the guest applies the next batches.
//! The thread is started for the first set that something may overlap: a set that reaches the
//! head (or the turn's end) before any was handed over, the common turn of a projection that
//! follows the log, is committed on the worker's own thread, so such a turn starts no thread.
//!
//! A serving version commits each batch, so that its queries see a catch-up move at once. A
//! building version (a rebuild), which nothing queries until it is swapped in, merges its
//! batches into sets: a view's B-tree pages are copied once per commit that touches them, so
//! when the keys scatter over a large view, one commit of many batches writes far fewer pages
//! than a commit per batch. Its sets start at one batch and double with each set up to
//! [`MERGE_EVENTS`] (the commit thread starts early), are sealed at [`MERGE_BYTES`] of changes
//! or after [`MERGE_AGE`] (status shows progress), and shrink on the way to the head (the
//! last commit, which nothing overlaps, is small).
//!
//! The guest reads the documents of sets not yet committed through layers over the
//! committed view ([`ViewStore::reader`](crate::views::ViewStore::reader)).

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{SyncSender, sync_channel};

use parking_lot::Mutex;
use std::thread::{Scope, ScopedJoinHandle};
use std::time::{Duration, Instant};

use super::slot::{Next, Role, Slot};
use crate::log::Position;
use crate::runtime::Changes;

/// Most events merged into one commit.
const MERGE_EVENTS: usize = 262_144;
/// Most bytes of keys and values (counted as written, overwrites included) merged into one
/// commit. Three sets can be alive at once: committing, queued, and merging, each holding
/// more than it counts (each document's allocation, the map's table). 8 MiB rather than 32
/// cut the 10M-event rebuild's peak RSS from 252-267 MiB to 203-229 MiB with no change in its
/// time beyond the noise (BENCHMARKS.md, stop 31).
const MERGE_BYTES: usize = 8 * 1024 * 1024;
/// Longest a set merges before it is sealed, so that status shows a slow rebuild move.
const MERGE_AGE: Duration = Duration::from_secs(1);

/// Applied batches merged, not yet handed to the commit thread.
struct Open {
    changes: Arc<Changes>,
    checkpoint: Position,
    applied: usize,
    bytes: usize,
    since: Instant,
}

/// A sealed set for the commit thread.
struct Sealed {
    changes: Arc<Changes>,
    checkpoint: Position,
    applied: usize,
}

/// What the commit thread reports back.
#[derive(Default)]
struct Done {
    /// Sets committed, in the order they were sealed.
    count: AtomicUsize,
    /// The backoff of a commit that failed (its fault is recorded in the slot); nothing
    /// after it is committed.
    fault: Mutex<Option<Duration>>,
}

pub(super) struct Commits<'scope, 'env: 'scope> {
    scope: &'scope Scope<'scope, 'env>,
    slot: &'scope Slot,
    /// The checkpoint of the last batch added.
    position: Position,
    open: Option<Open>,
    /// Sealed sets not yet known to be committed, oldest first.
    in_flight: VecDeque<Arc<Changes>>,
    /// Sealed sets already dropped from `in_flight` because they were committed.
    retired: usize,
    /// Events at which the open set is sealed.
    target: usize,
    /// Whether sets grow: only for a building version.
    merge: bool,
    /// The commit thread and its queue, once started; `Closed` after `finish`.
    thread: CommitThread<'scope>,
    done: Arc<Done>,
}

enum CommitThread<'scope> {
    NotStarted,
    Running {
        sender: SyncSender<Sealed>,
        handle: ScopedJoinHandle<'scope, ()>,
    },
    Closed,
}

impl<'scope, 'env> Commits<'scope, 'env> {
    pub(super) fn start(scope: &'scope Scope<'scope, 'env>, slot: &'scope Slot) -> Self {
        Commits {
            scope,
            slot,
            position: slot.checkpoint(),
            open: None,
            in_flight: VecDeque::new(),
            retired: 0,
            target: 1,
            merge: slot.role() == Role::Building,
            thread: CommitThread::NotStarted,
            done: Arc::new(Done::default()),
        }
    }

    /// The commit thread's queue, the thread started on first use. Owned by the turn's scope:
    /// it stops when the queue closes (`finish`) or a commit fails.
    fn queue(&mut self) -> Option<&SyncSender<Sealed>> {
        if let CommitThread::NotStarted = self.thread {
            // One set queued while another commits: the guest waits rather than outrun the
            // commits by more than that.
            let (sender, receiver) = sync_channel::<Sealed>(1);
            let (reported, slot) = (self.done.clone(), self.slot);
            let handle = self.scope.spawn(move || {
                for set in receiver {
                    if let Next::Faulted(backoff) =
                        slot.commit(&set.changes, set.checkpoint, set.applied)
                    {
                        *reported.fault.lock() = Some(backoff);
                        return;
                    }
                    reported.count.fetch_add(1, Ordering::Release);
                }
            });
            self.thread = CommitThread::Running { sender, handle };
        }
        match &self.thread {
            CommitThread::Running { sender, .. } => Some(sender),
            _ => None,
        }
    }

    /// Where the projection stands once everything applied so far is committed.
    pub(super) fn position(&self) -> Position {
        self.position
    }

    /// The fault of a failed commit: the turn is over.
    pub(super) fn failed(&self) -> Option<Next> {
        self.done.fault.lock().map(Next::Faulted)
    }

    /// The changes not yet committed, newest first, for a reader over the committed view.
    /// Sets known to be committed are dropped first, so a snapshot taken after this call
    /// holds them.
    pub(super) fn layers(&mut self) -> Vec<Arc<Changes>> {
        let committed = self.done.count.load(Ordering::Acquire);
        while self.retired < committed {
            self.in_flight.pop_front();
            self.retired += 1;
        }
        self.open
            .iter()
            .map(|o| o.changes.clone())
            .chain(self.in_flight.iter().rev().cloned())
            .collect()
    }

    /// Adds a batch's changes, applied up to `checkpoint`, and seals the set if it is due.
    pub(super) fn add(
        &mut self,
        changes: Changes,
        checkpoint: Position,
        applied: usize,
        head: Position,
    ) {
        let bytes: usize = changes
            .iter()
            .map(|(k, v)| k.len() + v.as_ref().map_or(0, Vec::len))
            .sum();
        self.position = checkpoint;
        match &mut self.open {
            Some(open) => {
                Arc::get_mut(&mut open.changes)
                    .expect("no reader outlives its batch")
                    .extend(changes);
                open.checkpoint = checkpoint;
                open.applied += applied;
                open.bytes += bytes;
            }
            None => {
                self.open = Some(Open {
                    changes: Arc::new(changes),
                    checkpoint,
                    applied,
                    bytes,
                    since: Instant::now(),
                })
            }
        }
        self.seal_if_due(head);
    }

    /// Moves the checkpoint past events the subscription did not select.
    pub(super) fn advance(&mut self, checkpoint: Position, head: Position) {
        self.add(Changes::default(), checkpoint, 0, head);
    }

    fn seal_if_due(&mut self, head: Position) {
        let Some(open) = &self.open else { return };
        let due = open.checkpoint >= head
            || open.applied >= self.target
            || open.bytes >= MERGE_BYTES
            || open.since.elapsed() >= MERGE_AGE
            // Sets shrink on the way to the head, so that the last one, which nothing
            // overlaps, commits quickly.
            || open.applied as u64 >= head.saturating_sub(open.checkpoint);
        let last = open.checkpoint >= head;
        if due {
            self.seal(last);
            if self.merge {
                self.target = (self.target * 2).min(MERGE_EVENTS);
            }
        }
    }

    /// Hands the open set to the commit thread; `last` when nothing applied after it can
    /// overlap its commit (it reaches the head, or the turn ends), so that, with no thread
    /// started yet, it is committed here instead.
    fn seal(&mut self, last: bool) {
        let Some(open) = self.open.take() else {
            return;
        };
        if last && matches!(self.thread, CommitThread::NotStarted) {
            // After a failed commit nothing more is committed.
            let failed = self.done.fault.lock().is_some();
            if !failed
                && let Next::Faulted(backoff) =
                    self.slot
                        .commit(&open.changes, open.checkpoint, open.applied)
            {
                *self.done.fault.lock() = Some(backoff);
            }
            return;
        }
        let changes = open.changes.clone();
        let Some(sender) = self.queue() else { return };
        // A closed channel means the thread stopped on a fault, which `finish` reports.
        let _ = sender.send(Sealed {
            changes: open.changes,
            checkpoint: open.checkpoint,
            applied: open.applied,
        });
        self.in_flight.push_back(changes);
    }

    /// Commits everything applied and waits for it; `Err` holds the fault of a failed commit.
    pub(super) fn finish(&mut self) -> Result<(), Next> {
        self.seal(true);
        if let CommitThread::Running { sender, handle } =
            std::mem::replace(&mut self.thread, CommitThread::Closed)
        {
            drop(sender);
            // A panic on the commit thread is the turn's panic (caught around the turn).
            if let Err(panic) = handle.join() {
                std::panic::resume_unwind(panic);
            }
        }
        self.in_flight.clear();
        match self.failed() {
            Some(fault) => Err(fault),
            None => Ok(()),
        }
    }
}
