//! The segment's syncer: the thread that makes written frames durable and answers the groups
//! that wait on them, so that the writer commits the next group to redb while the disk flushes
//! the last one.
//!
//! The writer writes a group's frame without fdatasync and says so ([`Syncer::frame_written`]);
//! the syncer starts an fdatasync of the segment at once, while the writer commits the group to
//! redb (without fsync) and hands its answers over ([`Syncer::hand_over`]). One fdatasync
//! covers every frame written before it began, so under load it covers several groups. When it
//! returns, the syncer publishes the heads and sends the answers of every group it covered.
//!
//! Invariants:
//! - a group is answered, and heads cover it, only once every frame written before it was
//!   handed over is durable: its own, and those whose events its answers may name (an
//!   idempotent retry answers with an earlier group's positions). A durable redb commit makes
//!   every frame written before it durable too ([`Syncer::durable`]);
//! - groups become answerable in the order they were handed over; each group's heads are
//!   published before its answers are sent, and heads only move forward;
//! - after a failed fdatasync nothing is answered as written: every waiting group, and every
//!   group handed over after it, is refused, until the writer has taken the failure
//!   ([`Syncer::drain`]) and reopened the log, whose recovery checkpoints what the segment
//!   holds. The failure unparks the writer's thread ([`Syncer::wake_on_failure`]), so that
//!   the reopen, and the health it reports, do not wait for the next append.

use std::collections::VecDeque;
use std::fs::File;
use std::sync::Arc;
use std::thread::JoinHandle;

use parking_lot::{Condvar, Mutex};
use tokio::sync::oneshot;

use super::error::{AppendError, StorageError};
use super::head::Head;
use super::types::{AppendOutcome, Position};

pub type Reply = oneshot::Sender<Result<AppendOutcome, AppendError>>;

/// A group committed to redb, waiting until the frames written before it are durable.
pub struct Group {
    /// Each account's head after the group, to publish before the answers.
    pub heads: Vec<(Arc<Head>, Position)>,
    pub replies: Vec<(Reply, Result<AppendOutcome, AppendError>)>,
}

/// The syncer thread's handle, owned by the writer. Dropping it answers what waits (after the
/// fdatasync it needs) and stops the thread.
pub struct Syncer {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

struct Shared {
    /// Guards the whole state. Taken by the writer (briefly, per frame and per group) and by the
    /// syncer; never held across an fdatasync or while answers are sent; no lock is taken
    /// inside it.
    state: Mutex<State>,
    /// Wakes the syncer: a frame written, a group handed over, closing.
    work: Condvar,
    /// Wakes a writer in [`Syncer::drain`]: a sync ended or groups were answered.
    idle: Condvar,
}

#[derive(Default)]
struct State {
    /// The segment the frames are written to (`None` without one: every commit is durable).
    file: Option<Arc<File>>,
    /// Frames written so far, counted from the start (a count, not an offset: the segment
    /// starts over at every checkpoint).
    written: u64,
    /// Frames known durable: through an fdatasync that began after they were written, or a
    /// durable redb commit.
    synced: u64,
    syncing: bool,
    /// The syncer is sending answers it took from `waiting` (outside the lock).
    answering: bool,
    /// Groups handed over, in order, each with the frame count it needs durable.
    waiting: VecDeque<(u64, Group)>,
    /// Set by a failed fdatasync; taken by the writer in [`Syncer::drain`].
    failed: Option<StorageError>,
    /// The writer's thread, unparked when `failed` is set.
    writer: Option<std::thread::Thread>,
    closing: bool,
}

impl State {
    /// The groups at the front that can be answered now, with the failure they are refused
    /// for, if any.
    fn ready(&mut self) -> Option<(Vec<Group>, Option<StorageError>)> {
        let failed = self.failed.as_ref().map(super::writer::refusal);
        let n = self
            .waiting
            .iter()
            .take_while(|(needs, _)| failed.is_some() || *needs <= self.synced)
            .count();
        (n > 0).then(|| (self.waiting.drain(..n).map(|(_, g)| g).collect(), failed))
    }
}

impl Syncer {
    pub fn spawn() -> std::io::Result<Syncer> {
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            work: Condvar::new(),
            idle: Condvar::new(),
        });
        let thread = std::thread::Builder::new()
            .name("log-syncer".into())
            .spawn({
                let shared = shared.clone();
                move || shared.run()
            })?;
        Ok(Syncer {
            shared,
            thread: Some(thread),
        })
    }

    /// The segment frames are written to from now on.
    pub fn set_file(&self, file: Arc<File>) {
        self.shared.state.lock().file = Some(file);
    }

    /// A frame was written to the segment: the syncer makes it durable.
    pub fn frame_written(&self) {
        self.shared.state.lock().written += 1;
        self.shared.work.notify_one();
    }

    /// A redb commit with fsync succeeded: it holds every group committed before it, so every
    /// frame written so far is durable.
    pub fn durable(&self) {
        let mut state = self.shared.state.lock();
        state.synced = state.written;
    }

    /// Answers `group` once the frames written so far are durable: at once, on this thread,
    /// when they are and no group waits before it; otherwise on the syncer's.
    pub fn hand_over(&self, group: Group) {
        let mut state = self.shared.state.lock();
        if state.waiting.is_empty() && state.failed.is_none() && state.synced >= state.written {
            drop(state);
            answer(vec![group], None);
            return;
        }
        let needs = state.written;
        state.waiting.push_back((needs, group));
        drop(state);
        self.shared.work.notify_one();
    }

    /// Unparks `writer` (the writer's thread) when an fdatasync fails, so that an idle writer
    /// takes the failure without waiting for an append.
    pub fn wake_on_failure(&self, writer: std::thread::Thread) {
        self.shared.state.lock().writer = Some(writer);
    }

    /// Whether an fdatasync failed and the failure was not taken yet.
    pub fn has_failed(&self) -> bool {
        self.shared.state.lock().failed.is_some()
    }

    /// Waits until every group handed over is answered (or refused) and no fdatasync is under
    /// way; returns the failure of an fdatasync since the last drain, if any (its groups were
    /// refused).
    pub fn drain(&self) -> Result<(), StorageError> {
        let mut state = self.shared.state.lock();
        while !state.waiting.is_empty() || state.syncing || state.answering {
            self.shared.idle.wait(&mut state);
        }
        state.failed.take().map_or(Ok(()), Err)
    }
}

impl Drop for Syncer {
    fn drop(&mut self) {
        self.shared.state.lock().closing = true;
        self.shared.work.notify_one();
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            tracing::error!("the log syncer thread panicked");
        }
    }
}

impl Shared {
    /// The syncer thread: owned by [`Syncer`], it stops once closing with nothing waiting.
    fn run(&self) {
        let mut state = self.state.lock();
        loop {
            if let Some((groups, failed)) = state.ready() {
                state.answering = true;
                drop(state);
                answer(groups, failed);
                state = self.state.lock();
                state.answering = false;
                self.idle.notify_all();
                continue;
            }
            if state.written > state.synced
                && state.failed.is_none()
                && let Some(file) = state.file.clone()
            {
                let target = state.written;
                state.syncing = true;
                drop(state);
                // An injected failure stands for the disk refusing the fdatasync.
                let synced: std::io::Result<()> = (|| {
                    crate::failpoint::failpoint!("log-sync", |arg| Err(
                        crate::failpoint::io_error(arg)
                    ));
                    file.sync_data()
                })();
                state = self.state.lock();
                state.syncing = false;
                match synced {
                    Ok(()) => state.synced = state.synced.max(target),
                    Err(e) => {
                        let e = StorageError::io(e).classify();
                        tracing::error!(error = %e, "the write-ahead segment's fdatasync failed");
                        state.failed = Some(e);
                        if let Some(writer) = &state.writer {
                            writer.unpark();
                        }
                    }
                }
                self.idle.notify_all();
                continue;
            }
            if state.waiting.is_empty() && state.closing {
                return;
            }
            self.work.wait(&mut state);
        }
    }
}

/// Publishes each group's heads (forward only), then sends its answers: whoever holds an
/// answer sees a head that covers it. A refused group's answers are replaced by `failed`.
/// The heads' watchers (projection schedulers, live subscriptions) are woken after the
/// answers, so that an appender's wake-up comes first.
fn answer(groups: Vec<Group>, failed: Option<StorageError>) {
    let mut moved: Vec<Arc<Head>> = Vec::new();
    for group in groups {
        if failed.is_none() {
            for (head, position) in group.heads {
                // The new head is visible to every reader at once; the watchers are told below.
                if head.advance_quietly(position) && !moved.iter().any(|m| Arc::ptr_eq(m, &head)) {
                    moved.push(head);
                }
            }
        }
        for (reply, answer) in group.replies {
            let answer = match &failed {
                Some(e) => Err(AppendError::Storage(super::writer::refusal(e))),
                None => answer,
            };
            // The appender may have gone away; its events are committed all the same.
            let _ = reply.send(answer);
        }
    }
    for head in moved {
        head.tell();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(position: Position) -> Result<AppendOutcome, AppendError> {
        Ok(AppendOutcome {
            first_position: position,
            first_revision: 0,
            ids: Vec::new(),
            deduplicated: false,
        })
    }

    /// Hands over one group with `head` at `position`; returns its answer.
    fn group(
        syncer: &Syncer,
        head: &Arc<Head>,
        position: Position,
    ) -> oneshot::Receiver<Result<AppendOutcome, AppendError>> {
        let (reply, answer) = oneshot::channel();
        syncer.hand_over(Group {
            heads: vec![(head.clone(), position)],
            replies: vec![(reply, outcome(position))],
        });
        answer
    }

    #[test]
    fn a_group_is_answered_after_its_frames_with_a_head_that_covers_it() {
        let dir = tempfile::tempdir().unwrap();
        let file = File::create(dir.path().join("segment")).unwrap();
        let syncer = Syncer::spawn().unwrap();
        syncer.set_file(Arc::new(file));
        let head = Arc::new(Head::new(0));
        let watcher = head.subscribe();
        let answers: Vec<_> = (1..=200)
            .map(|position| {
                syncer.frame_written();
                group(&syncer, &head, position)
            })
            .collect();
        for (position, answer) in (1..=200).zip(answers) {
            let answered = answer.blocking_recv().unwrap().unwrap();
            assert_eq!(answered.first_position, position);
            assert!(*watcher.borrow() >= position, "the head covers the answer");
        }
        assert_eq!(*watcher.borrow(), 200);
        let state = syncer.shared.state.lock();
        assert_eq!((state.written, state.synced), (200, 200));
    }

    #[test]
    fn with_nothing_to_sync_a_group_is_answered_at_once_and_drain_waits_for_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let syncer = Syncer::spawn().unwrap();
        let head = Arc::new(Head::new(0));
        // No frame written: answered on this thread.
        let mut first = group(&syncer, &head, 1);
        assert!(first.try_recv().unwrap().is_ok());
        assert_eq!(head.get(), 1);
        // A durable commit covers what was written before it.
        syncer.frame_written();
        syncer.durable();
        let mut second = group(&syncer, &head, 2);
        assert!(second.try_recv().unwrap().is_ok());
        // Frames waiting on an fdatasync: drain returns once they are answered.
        syncer.set_file(Arc::new(File::create(dir.path().join("segment")).unwrap()));
        let later: Vec<_> = (3..=20)
            .map(|position| {
                syncer.frame_written();
                group(&syncer, &head, position)
            })
            .collect();
        syncer.drain().unwrap();
        for mut answer in later {
            assert!(answer.try_recv().unwrap().is_ok());
        }
        assert_eq!(head.get(), 20);
    }

    #[test]
    fn heads_only_move_forward() {
        let syncer = Syncer::spawn().unwrap();
        let head = Arc::new(Head::new(0));
        drop(group(&syncer, &head, 9));
        drop(group(&syncer, &head, 4));
        assert_eq!(head.get(), 9);
    }

    #[test]
    fn listeners_are_called_after_the_answers_once_per_move_until_dropped() {
        use std::sync::atomic::{AtomicU64, Ordering};
        let dir = tempfile::tempdir().unwrap();
        let syncer = Syncer::spawn().unwrap();
        syncer.set_file(Arc::new(File::create(dir.path().join("segment")).unwrap()));
        let head = Arc::new(Head::new(0));
        // Each call records the head it saw; a call before the move would record 0.
        let seen = Arc::new(AtomicU64::new(0));
        let calls = Arc::new(AtomicU64::new(0));
        let listener = head.listen({
            let (head, seen, calls) = (Arc::downgrade(&head), seen.clone(), calls.clone());
            move || {
                seen.store(head.upgrade().unwrap().get(), Ordering::SeqCst);
                calls.fetch_add(1, Ordering::SeqCst);
            }
        });
        syncer.frame_written();
        let answer = group(&syncer, &head, 7);
        assert_eq!(answer.blocking_recv().unwrap().unwrap().first_position, 7);
        syncer.drain().unwrap();
        assert_eq!(seen.load(Ordering::SeqCst), 7);
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        // A head that does not move calls no one.
        drop(group(&syncer, &head, 5));
        syncer.drain().unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        // Dropped: not called again.
        drop(listener);
        drop(group(&syncer, &head, 9));
        syncer.drain().unwrap();
        assert_eq!((head.get(), calls.load(Ordering::SeqCst)), (9, 1));
    }
}
