//! Group commit: the one thread that writes the log.
//!
//! Requests queue on a bounded channel. The writer takes whatever is queued (up to a cap),
//! checks and writes each request in one redb transaction, commits it with fsync once, then
//! publishes the new head and answers every request. While one commit waits on the disk the
//! next group gathers, so concurrent appenders share the cost of an fsync without any timer.
//! When the index tail is full, the next commit also flushes it (see `store`).

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{SystemTime, UNIX_EPOCH};

use tokio::sync::{mpsc, oneshot, watch};

use super::error::{AppendError, StorageError};
use super::store::{Extent, Store, StreamLengths, WriteTables};
use super::types::{AppendOutcome, AppendRequest, Position};

/// Requests waiting for the writer. Appenders past this wait for room (back-pressure).
pub const QUEUE_CAPACITY: usize = 4096;
/// Most events in one commit, to bound a transaction's size and its latency.
const MAX_GROUP_EVENTS: usize = 50_000;

pub struct Job {
    pub request: AppendRequest,
    pub reply: oneshot::Sender<Result<AppendOutcome, AppendError>>,
}

type Answers = Vec<Result<AppendOutcome, AppendError>>;

pub fn spawn(
    store: Arc<Store>,
    mut lengths: StreamLengths,
    mut jobs: mpsc::Receiver<Job>,
    head_tx: watch::Sender<Position>,
) -> std::io::Result<JoinHandle<()>> {
    let mut head = *head_tx.borrow();
    std::thread::Builder::new()
        .name("log-writer".into())
        .spawn(move || {
            let mut group = Vec::new();
            while let Some(job) = jobs.blocking_recv() {
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
                let answers = commit_group(&store, &mut head, &mut lengths, &group);
                // Publish before answering: whoever holds an answer sees a head that covers it.
                head_tx.send_replace(head);
                for (job, answer) in group.drain(..).zip(answers) {
                    // The appender may have gone away; its events are committed all the same.
                    let _ = job.reply.send(answer);
                }
            }
            // Closing: flush the tail, so the next open has nothing to rebuild.
            commit_group(&store, &mut head, &mut lengths, &[]);
        })
}

/// Writes and commits one group (flushing the index tail when it is full, or when the group
/// is empty), advancing `*head` when the commit succeeds, and returns each request's answer.
fn commit_group(
    store: &Store,
    head: &mut Position,
    lengths: &mut StreamLengths,
    group: &[Job],
) -> Answers {
    let mut next_head = *head;
    let flush = group.is_empty() || store.tail_is_full();
    let outcome = (|| -> Result<(Answers, usize, Vec<Extent>), StorageError> {
        let txn = store.database().begin_write()?;
        let (answers, flushed, appended) = {
            let mut tables = WriteTables::open(&txn)?;
            let flushed = if flush { tables.flush(store)? } else { 0 };
            let now = now_micros();
            let mut answers = Vec::with_capacity(group.len());
            for job in group {
                match tables.append(&job.request, &mut next_head, now, lengths) {
                    // A storage failure may leave part of a request written: abandon the group.
                    Err(AppendError::Storage(e)) => return Err(e),
                    answer => answers.push(answer),
                }
            }
            (answers, flushed, tables.appended)
        };
        txn.commit()?;
        Ok((answers, flushed, appended))
    })();
    match outcome {
        Ok((answers, flushed, appended)) => {
            store.advance_tail(flushed, appended, next_head);
            lengths.commit_group(flush);
            *head = next_head;
            answers
        }
        Err(e) => {
            lengths.abandon_group();
            tracing::error!(error = %e, "log commit failed; the group is refused");
            let message = e.to_string();
            group
                .iter()
                .map(|_| Err(AppendError::Storage(StorageError::Failed(message.clone()))))
                .collect()
        }
    }
}

fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}
