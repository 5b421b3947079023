//! Group commit: the one thread that writes the log.
//!
//! Requests queue on a bounded channel. The writer takes whatever is queued (up to a cap),
//! checks and writes each request in one redb transaction, commits it with fsync once, then
//! answers every request and publishes the new head. While one commit waits on the disk the
//! next group gathers, so concurrent appenders share the cost of an fsync without any timer.

use std::thread::JoinHandle;
use std::time::{SystemTime, UNIX_EPOCH};

use tokio::sync::{mpsc, oneshot, watch};

use super::error::{AppendError, StorageError};
use super::store::{Store, WriteTables};
use super::types::{AppendOutcome, AppendRequest, Position};

/// Requests waiting for the writer. Appenders past this wait for room (back-pressure).
pub const QUEUE_CAPACITY: usize = 4096;
/// Most events in one commit, to bound a transaction's size and its latency.
const MAX_GROUP_EVENTS: usize = 50_000;

pub struct Job {
    pub request: AppendRequest,
    pub reply: oneshot::Sender<Result<AppendOutcome, AppendError>>,
}

pub fn spawn(
    store: std::sync::Arc<Store>,
    mut head: Position,
    mut jobs: mpsc::Receiver<Job>,
    head_tx: watch::Sender<Position>,
) -> std::io::Result<JoinHandle<()>> {
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
                let results = commit_group(&store, &mut head, &group);
                // Publish before answering: whoever holds an answer sees a head that covers it.
                head_tx.send_replace(head);
                for (job, result) in group.drain(..).zip(results) {
                    // The appender may have gone away; its events are committed all the same.
                    let _ = job.reply.send(result);
                }
            }
        })
}

/// Writes and commits one group, advancing `*head` when the commit succeeds, and returns
/// each request's answer.
fn commit_group(
    store: &Store,
    head: &mut Position,
    group: &[Job],
) -> Vec<Result<AppendOutcome, AppendError>> {
    let mut next_head = *head;
    let outcome = (|| -> Result<Vec<Result<AppendOutcome, AppendError>>, StorageError> {
        let txn = store.database().begin_write()?;
        let results = {
            let mut tables = WriteTables::open(&txn)?;
            let now = now_micros();
            let mut results = Vec::with_capacity(group.len());
            for job in group.iter() {
                match tables.append(&job.request, &mut next_head, now) {
                    // A storage failure may leave part of a request written: abandon the group.
                    Err(AppendError::Storage(e)) => return Err(e),
                    result => results.push(result),
                }
            }
            results
        };
        txn.commit()?;
        Ok(results)
    })();
    match outcome {
        Ok(results) => {
            *head = next_head;
            results
        }
        Err(e) => {
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
