//! Group commit: the one thread that writes the log.
//!
//! Requests queue on a bounded channel. The writer takes whatever is queued (up to a cap),
//! checks and writes each request in one redb transaction, commits it with fsync once, then
//! publishes the new head and answers every request. While one commit waits on the disk the
//! next group gathers, so concurrent appenders share the cost of an fsync without any timer.
//! When the index tail is full, the next commit also flushes it (see `store`).

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::{mpsc, oneshot, watch};

use super::LogHealth;
use super::error::{AppendError, StorageError};
use super::files::LogFiles;
use super::store::{Store, StreamLengths, WriteTables};
use super::types::{AppendOutcome, AppendRequest, Position};

/// Requests waiting for the writer. Appenders past this wait for room (back-pressure).
pub const QUEUE_CAPACITY: usize = 4096;
/// Most events in one commit, to bound a transaction's size and its latency.
const MAX_GROUP_EVENTS: usize = 50_000;
/// While the log is failing, how often the writer tries again unasked.
const REOPEN_EVERY: Duration = Duration::from_secs(1);

pub struct Job {
    pub request: AppendRequest,
    pub reply: oneshot::Sender<Result<AppendOutcome, AppendError>>,
}

type Answers = Vec<Result<AppendOutcome, AppendError>>;

/// What the writer thread owns. It stops when every `Log` handle is gone (the channel
/// closes), after committing what is queued; a panic ends it too, reported on `health`.
struct Writer {
    files: Arc<LogFiles>,
    lengths: StreamLengths,
    head: Position,
    head_tx: watch::Sender<Position>,
    health: watch::Sender<LogHealth>,
}

pub fn spawn(
    files: Arc<LogFiles>,
    lengths: StreamLengths,
    mut jobs: mpsc::Receiver<Job>,
    head_tx: watch::Sender<Position>,
    health: watch::Sender<LogHealth>,
) -> std::io::Result<JoinHandle<()>> {
    let head = *head_tx.borrow();
    let mut writer = Writer {
        files,
        lengths,
        head,
        head_tx,
        health,
    };
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
        loop {
            let Some(job) = self.next_job(jobs) else {
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
            // Publish before answering: whoever holds an answer sees a head that covers it.
            self.head_tx.send_replace(self.head);
            for (job, answer) in group.drain(..).zip(answers) {
                // The appender may have gone away; its events are committed all the same.
                let _ = job.reply.send(answer);
            }
        }
        // Closing: flush the tail, so the next open has nothing to rebuild.
        self.commit_group(&[]);
    }

    /// The next job. While the log is failing (a full disk, a closed file), it also retries
    /// every [`REOPEN_EVERY`] on its own: it reopens the file, or commits an empty group (which
    /// flushes the index tail) to find out whether the disk has room again, so that health
    /// recovers without an append to prompt it.
    fn next_job(&mut self, jobs: &mut mpsc::Receiver<Job>) -> Option<Job> {
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
        jobs.blocking_recv()
    }

    /// Writes and commits one group (flushing the index tail when it is full, or when the
    /// group is empty), advancing the head when the commit succeeds, and returns each
    /// request's answer. A storage failure refuses the whole group, which writes nothing,
    /// and an I/O failure reopens the file so the next group can succeed.
    fn commit_group(&mut self, group: &[Job]) -> Answers {
        let outcome = self
            .files
            .current()
            .or_else(|_| {
                self.reopen()
                    .map(|_| ())
                    .and_then(|()| self.files.current())
            })
            .and_then(|store| self.try_commit(&store, group));
        match outcome {
            Ok(answers) => {
                if *self.health.borrow() != LogHealth::Ok {
                    tracing::info!("the log accepts appends again");
                    self.health.send_replace(LogHealth::Ok);
                }
                answers
            }
            Err(e) => {
                self.lengths.abandon_group();
                let e = e.classify();
                tracing::error!(error = %e, "log commit failed; the group is refused");
                if e.is_io() {
                    self.failing(&e, "a write to the log failed");
                    // Whatever it rolls back to is what the head and lengths become.
                    let _ = self.reopen();
                }
                group
                    .iter()
                    .map(|_| Err(AppendError::Storage(refusal(&e))))
                    .collect()
            }
        }
    }

    fn try_commit(&mut self, store: &Store, group: &[Job]) -> Result<Answers, StorageError> {
        let mut next_head = self.head;
        let flush = group.is_empty() || store.tail_is_full();
        let txn = store.database().begin_write()?;
        let (answers, flushed, appended) = {
            let mut tables = WriteTables::open(&txn)?;
            let flushed = if flush { tables.flush(store)? } else { 0 };
            let now = now_micros();
            let mut answers = Vec::with_capacity(group.len());
            for job in group {
                match tables.append(&job.request, &mut next_head, now, &mut self.lengths) {
                    // A storage failure may leave part of a request written: abandon the group.
                    Err(AppendError::Storage(e)) => return Err(e),
                    answer => answers.push(answer),
                }
            }
            (answers, flushed, tables.appended)
        };
        crate::failpoint::failpoint!("log-commit", |arg| Err(StorageError::io(
            crate::failpoint::io_error(arg)
        )));
        txn.commit()?;
        store.advance_tail(flushed, appended, next_head);
        self.lengths.commit_group(flush);
        self.head = next_head;
        Ok(answers)
    }

    /// Reopens the file after a failure and takes the head and stream lengths from what it
    /// holds. A commit that failed after reaching the disk is found there, not lost.
    fn reopen(&mut self) -> Result<(), StorageError> {
        match self
            .files
            .reopen()
            .and_then(|(store, lengths)| Ok((store.head()?, lengths)))
        {
            Ok((head, lengths)) => {
                tracing::info!(head, "the log was reopened");
                self.lengths = lengths;
                if head != self.head {
                    self.head = head;
                    self.head_tx.send_replace(head);
                }
                Ok(())
            }
            Err(e) => {
                let e = e.classify();
                tracing::error!(error = %e, "reopening the log failed; retrying");
                self.failing(&e, "the log cannot be opened after a failure");
                Err(e)
            }
        }
    }

    /// Health after an I/O failure: a full disk, or the log unavailable for `reason`.
    fn failing(&self, e: &StorageError, reason: &str) {
        self.health.send_replace(match e {
            StorageError::DiskFull => LogHealth::DiskFull,
            _ => LogHealth::Unavailable {
                reason: reason.to_owned(),
            },
        });
    }
}

/// What each request of a refused group is told: a full disk and an unavailable log as
/// themselves, anything else as the failure's text (logged once, above).
fn refusal(e: &StorageError) -> StorageError {
    match e {
        StorageError::DiskFull => StorageError::DiskFull,
        StorageError::Unavailable => StorageError::Unavailable,
        other => StorageError::Failed(other.to_string()),
    }
}

fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}
