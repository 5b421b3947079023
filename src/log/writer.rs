//! Group commit: the one thread that writes the log.
//!
//! Requests queue on a bounded channel. The writer takes whatever is queued (up to a cap),
//! checks and writes each request in one redb transaction, writes the group's records to the
//! write-ahead segment, commits the transaction without fsync, and hands the answers to the
//! syncer (`sync`), which publishes the new heads and answers once an fdatasync covered the
//! frame. A group that can be checked without the write transaction (`Writer::stage_ahead`)
//! writes its frame first and fills the transaction after, beside the fdatasync. The fdatasync
//! runs beside the redb commit and the next groups' work, and one covers every frame written
//! before it began, so concurrent appenders share its cost without any timer. When the index
//! tail is full, the next commit also flushes it (see `store`).
//!
//! This file holds the thread, its queue and the group loop; `commit` one group's commit,
//! `recover` the reopen after a failure.

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};

use super::LogHealth;
use super::error::{AppendError, StorageError};
use super::files::LogFiles;
use super::head::{Head, Heads};
use super::store::{Lengths, Partition, Store, StreamLengths};
use super::sync::{self, Syncer};
use super::types::{AppendOutcome, AppendRequest, Position};
use super::wal::{self, Wal};

mod commit;
mod recover;

/// Requests waiting for the writer. Appenders past this wait for room (back-pressure).
pub const QUEUE_CAPACITY: usize = 4096;
/// Most events in one commit, to bound a transaction's size and its latency.
const MAX_GROUP_EVENTS: usize = 50_000;
/// A group whose records take more bytes than this commits to redb durably (a checkpoint)
/// rather than through the write-ahead segment: a durable commit's fixed cost is small beside
/// such a group, and the segment would write its bytes twice.
const LARGE_GROUP: usize = 64 * 1024;
/// While the log is failing, how often the writer tries again unasked.
const REOPEN_EVERY: Duration = Duration::from_secs(1);

pub struct Job {
    /// The account whose partition the request appends to.
    pub account: Arc<str>,
    pub request: AppendRequest,
    pub reply: oneshot::Sender<Result<AppendOutcome, AppendError>>,
}

type Answers = Vec<Result<AppendOutcome, AppendError>>;

/// A group refused by a failure.
struct Refused {
    error: StorageError,
    /// Set when redb's commit itself failed: the group may still have reached the file (a
    /// failure after its pages, or a handle closed after the error), which the reopen shows.
    unsettled: Option<Box<Unsettled>>,
}

impl From<StorageError> for Refused {
    fn from(error: StorageError) -> Self {
        Refused {
            error,
            unsettled: None,
        }
    }
}

/// What a group whose commit failed would have been, had it landed.
struct Unsettled {
    /// Each account it wrote, with the head its commit would have reached.
    heads: Vec<(Arc<str>, Position)>,
    answers: Answers,
}

/// Wakes a parked thread.
struct Unpark(std::thread::Thread);

impl Wake for Unpark {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.0.unpark();
    }
}

/// What the writer knows of one account's partition beyond the tables.
struct AccountState {
    head: Position,
    lengths: StreamLengths,
    /// The head as published to readers (behind `head` until the syncer answers the group).
    published: Arc<Head>,
}

/// What the writer thread owns. It stops when every `Log` handle is gone (the channel
/// closes), after committing what is queued; a panic ends it too, reported on `health`.
struct Writer {
    files: Arc<LogFiles>,
    heads: Arc<Heads>,
    /// By account, made on the account's first append since the file was (re)opened.
    accounts: HashMap<Arc<str>, AccountState>,
    /// The tails' stream lengths from the last (re)open, for accounts not in `accounts` yet.
    opened: Lengths,
    health: watch::Sender<LogHealth>,
    /// The write-ahead segment; `None` if it could not be made (every commit is then durable
    /// in redb), tried again at the next reopen.
    wal: Option<Wal>,
    /// The frame being built, kept for its allocation.
    payload: wal::Payload,
    /// Makes the segment's frames durable and answers the groups waiting on them.
    sync: Syncer,
}

pub fn spawn(
    files: Arc<LogFiles>,
    lengths: Lengths,
    mut jobs: mpsc::Receiver<Job>,
    heads: Arc<Heads>,
    health: watch::Sender<LogHealth>,
) -> std::io::Result<JoinHandle<()>> {
    let mut writer = Writer {
        sync: Syncer::spawn()?,
        wal: None,
        files,
        heads,
        accounts: HashMap::new(),
        opened: lengths,
        health,
        payload: wal::Payload::default(),
    };
    if let Ok(store) = writer.files.current() {
        writer.open_wal(&store);
    }
    std::thread::Builder::new()
        .name("log-writer".into())
        .spawn(move || {
            let run = std::panic::catch_unwind(AssertUnwindSafe(|| writer.run(&mut jobs)));
            if let Err(panic) = run {
                writer.fail(&*panic);
            }
            // Dropping the receiver (after health says why) refuses whatever is queued and
            // every later append.
            drop(jobs);
        })
}

impl Writer {
    /// Records that the writer died of `panic`; returns the reason given to appenders.
    fn fail(&self, panic: &(dyn std::any::Any + Send)) -> String {
        let reason = format!(
            "the log writer thread panicked: {}",
            crate::panic_message(panic)
        );
        tracing::error!(%reason, "appends are refused until a restart");
        self.health.send_replace(LogHealth::Failed {
            reason: reason.clone(),
        });
        reason
    }

    fn run(&mut self, jobs: &mut mpsc::Receiver<Job>) {
        let mut group = Vec::new();
        // The writer waits for jobs by parking this thread: the channel and the syncer unpark it.
        let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
        let mut cx = Context::from_waker(&waker);
        self.sync.wake_on_failure(std::thread::current());
        loop {
            let Some(job) = self.next_job(jobs, &mut cx) else {
                break;
            };
            let mut events = job.request.events.len();
            group.push(job);
            while events < MAX_GROUP_EVENTS {
                match jobs.try_recv() {
                    Ok(job) => {
                        events += job.request.events.len();
                        group.push(job);
                    }
                    Err(_) => break,
                }
            }
            let answers =
                match std::panic::catch_unwind(AssertUnwindSafe(|| self.commit_group(&group))) {
                    Ok(answers) => answers,
                    Err(panic) => {
                        // Health first: whoever is refused from now on is told why.
                        let reason = self.fail(&*panic);
                        for job in group.drain(..) {
                            let _ = job
                                .reply
                                .send(Err(AppendError::WriterFailed(reason.clone())));
                        }
                        return;
                    }
                };
            if answers.iter().any(Result::is_ok) {
                crate::telemetry::group_commit(events);
            }
            // The syncer publishes the heads, then answers, once the frames are durable.
            let heads = self
                .accounts
                .values()
                .filter(|state| state.published.get() < state.head)
                .map(|state| (state.published.clone(), state.head))
                .collect();
            let replies = group.drain(..).map(|job| job.reply).zip(answers).collect();
            self.sync.hand_over(sync::Group { heads, replies });
        }
        // Closing: flush the tail, so the next open has nothing to rebuild.
        self.commit_group(&[]);
    }

    /// The next job. While the log is failing (a full disk, a closed file), it also retries
    /// every [`REOPEN_EVERY`] on its own: it reopens the file, or commits an empty group (which
    /// flushes the index tail) to find out whether the disk has room again, so that health
    /// recovers without an append to prompt it. While idle and healthy it also wakes when the
    /// syncer's fdatasync fails, and takes the failure at once (the reopen), so that health
    /// shows a log that cannot be reopened without an append to prompt it either.
    fn next_job(&mut self, jobs: &mut mpsc::Receiver<Job>, cx: &mut Context<'_>) -> Option<Job> {
        loop {
            while *self.health.borrow() != LogHealth::Ok {
                let deadline = std::time::Instant::now() + REOPEN_EVERY;
                loop {
                    match jobs.try_recv() {
                        Ok(job) => return Some(job),
                        Err(mpsc::error::TryRecvError::Disconnected) => return None,
                        Err(mpsc::error::TryRecvError::Empty) => {}
                    }
                    if std::time::Instant::now() >= deadline {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
                if !self.files.is_open() {
                    let _ = self.reopen();
                } else {
                    self.commit_group(&[]);
                }
            }
            // Parks until a job comes (the channel's waker unparks this thread) or the syncer
            // fails (it unparks this thread too); a spurious wake-up just looks again.
            loop {
                if let Poll::Ready(job) = jobs.poll_recv(cx) {
                    return job;
                }
                if self.sync.has_failed() {
                    // Drains the syncer, reports the failure and reopens (see `commit_group`).
                    self.commit_group(&[]);
                    break;
                }
                std::thread::park();
            }
        }
    }

    /// Writes and commits one group (flushing the index tail when it is full, or when the
    /// group is empty), advancing the head when the commit succeeds, and returns each
    /// request's answer. A storage failure refuses the whole group, which writes nothing,
    /// and an I/O failure reopens the file so the next group can succeed.
    fn commit_group(&mut self, group: &[Job]) -> Answers {
        if self.sync.has_failed() {
            // What the failed fdatasync covered may be lost: nothing is built on it until the
            // reopen's recovery made durable what the segment holds.
            if let Err(e) = self.sync.drain() {
                self.failing(&e, "a write to the log failed");
                let _ = self.reopen();
            }
        }
        let outcome = self
            .files
            .current()
            .or_else(|_| {
                self.reopen()
                    .map(|_| ())
                    .and_then(|()| self.files.current())
            })
            .map_err(Refused::from)
            .and_then(|store| self.try_commit(&store, group));
        match outcome {
            Ok(answers) => {
                if *self.health.borrow() != LogHealth::Ok {
                    tracing::info!("the log accepts appends again");
                    self.health.send_replace(LogHealth::Ok);
                }
                answers
            }
            Err(Refused { error, unsettled }) => {
                for state in self.accounts.values_mut() {
                    state.lengths.abandon_group();
                }
                let e = error.classify();
                tracing::error!(error = %e, "log commit failed");
                if e.is_io() {
                    self.failing(&e, "a write to the log failed");
                    // Whatever it rolls back to is what the head and lengths become.
                    if self.reopen().is_ok()
                        && let Some(unsettled) = unsettled
                        && self.landed(&unsettled)
                    {
                        tracing::warn!(
                            "the failed commit had reached the log file; its group is answered"
                        );
                        return unsettled.answers;
                    }
                }
                if !group.is_empty() {
                    tracing::error!(requests = group.len(), "the group is refused");
                }
                group
                    .iter()
                    .map(|_| Err(AppendError::Storage(refusal(&e))))
                    .collect()
            }
        }
    }

    /// The writer's state of `account`, made from the store on the account's first append
    /// since the file was (re)opened.
    fn state(
        &mut self,
        store: &Store,
        account: &Arc<str>,
    ) -> Result<&mut AccountState, StorageError> {
        if !self.accounts.contains_key(account) {
            let head = store.head(&*partition_of(store, account)?)?;
            let state = AccountState {
                head,
                lengths: self.opened.remove(&**account).unwrap_or_default(),
                published: self.heads.get(account, head),
            };
            self.accounts.insert(account.clone(), state);
        }
        Ok(self.accounts.get_mut(account).expect("inserted above"))
    }
}

/// The partition `account` appends to; every account's exists before its first append. (The
/// error's text is made only when it is missing: this runs for every group.)
fn partition_of(store: &Store, account: &str) -> Result<Arc<Partition>, StorageError> {
    store.existing_partition(account).ok_or_else(|| {
        StorageError::Failed(format!("the log has no partition for account {account}"))
    })
}

/// What each request of a refused group is told: a full disk and an unavailable log as
/// themselves, anything else as the failure's text (logged once, above).
pub(super) fn refusal(e: &StorageError) -> StorageError {
    match e {
        StorageError::DiskFull => StorageError::DiskFull,
        StorageError::Unavailable => StorageError::Unavailable,
        other => StorageError::Failed(other.to_string()),
    }
}
