//! A group's commit: checked and staged, its frame written, its redb transaction committed.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use redb::{Durability, WriteTransaction};

use super::{Answers, Job, LARGE_GROUP, Refused, Unsettled, Writer, partition_of};
use crate::log::error::{AppendError, StorageError};
use crate::log::store::{self, Extent, Partition, Staged, StagedMark, Store, WriteTables};
use crate::log::types::Position;

/// A group's change to one partition, once its transaction is filled.
struct Written {
    account: Arc<str>,
    partition: Arc<Partition>,
    /// The partition's head after the group.
    head: Position,
    /// How many of the tail's extents the transaction flushed into the index tables.
    flushed: usize,
    appended: Vec<Extent>,
}

impl Written {
    fn new(account: Arc<str>, tables: WriteTables, head: Position, flushed: usize) -> Self {
        Written {
            account,
            partition: tables.partition().clone(),
            head,
            flushed,
            appended: tables.staged.appended,
        }
    }
}

/// A group checked and staged without a transaction ([`Writer::stage_ahead`]), by account:
/// the partition, its head after the group and what the group appends to it.
type StagedGroup = HashMap<Arc<str>, (Arc<Partition>, Position, Staged)>;

/// How a group's transaction is made durable.
#[derive(Clone, Copy)]
enum Commit {
    /// Its records are in the write-ahead segment (the frame at this offset); redb commits
    /// without fsync.
    Logged(u64),
    /// It wrote no event (refusals, retries, an index flush): redb commits without fsync.
    Volatile,
    /// redb commits with fsync; with a segment, the commit is a checkpoint that starts its
    /// frames over under the next generation.
    Durable(Option<u64>),
}

impl Writer {
    /// Checks, writes and commits `group`. When every request can be checked without reading
    /// the tables ([`Writer::stage_ahead`]), the group's frame is written, and its fdatasync
    /// started, before redb's transaction is begun; otherwise the transaction comes first.
    pub(super) fn try_commit(&mut self, store: &Store, group: &[Job]) -> Result<Answers, Refused> {
        if let Some((answers, staging)) = self.stage_ahead(store, group)? {
            return self.commit_staged(store, answers, staging);
        }
        let txn = store.database().begin_write().map_err(StorageError::from)?;
        let (answers, written) = {
            // The partitions this group writes, each with its tables and its head so far.
            let mut open: HashMap<Arc<str>, (WriteTables, Position, usize)> = HashMap::new();
            if group.is_empty() {
                // An empty group flushes every tail.
                for (account, partition) in store.partitions() {
                    let account: Arc<str> = account.into();
                    let head = self.state(store, &account)?.head;
                    let mut tables = WriteTables::open(&txn, partition, Staged::default())?;
                    let flushed = tables.flush()?;
                    open.insert(account, (tables, head, flushed));
                }
            }
            let now = now_micros();
            let mut answers = Vec::with_capacity(group.len());
            for job in group {
                let state = self.state(store, &job.account)?;
                let (tables, head, _) = match open.entry(job.account.clone()) {
                    Entry::Occupied(entry) => entry.into_mut(),
                    Entry::Vacant(entry) => {
                        let partition = partition_of(store, &job.account)?;
                        let (tables, flushed) = WriteTables::open_for_group(
                            &txn,
                            partition,
                            store.policy(),
                            Staged::default(),
                        )?;
                        entry.insert((tables, state.head, flushed))
                    }
                };
                match tables.append(&job.request, head, now, &mut state.lengths) {
                    // A storage failure may leave part of a request written: abandon the group.
                    Err(AppendError::Storage(e)) => return Err(e.into()),
                    answer => answers.push(answer),
                }
            }
            self.payload.clear();
            for (account, (tables, ..)) in &open {
                self.payload.section(account, &tables.staged.logged);
            }
            let written: Vec<_> = open
                .into_iter()
                .map(|(account, (tables, head, flushed))| {
                    Written::new(account, tables, head, flushed)
                })
                .collect();
            (answers, written)
        };
        // An error drops `txn`, which writes nothing.
        let commit = self.write_frame(group.is_empty())?;
        self.commit(store, txn, commit, group.is_empty(), answers, written)
    }

    /// Checks and stages `group` without a write transaction, when that is enough to check it:
    /// every stream's length known in memory, and no request a retry (none of its client-chosen
    /// ids stored yet, which one read looks up, or repeated in the group). `None` otherwise, and
    /// for an empty group: a retry or an id conflict is recognised on the transaction-first
    /// path. A lone append's frame is then written about 30-50 µs sooner (BENCHMARKS.md, stop
    /// 42): redb's transaction, its tables and the inserts come after it, beside the fdatasync.
    fn stage_ahead(
        &mut self,
        store: &Store,
        group: &[Job],
    ) -> Result<Option<(Answers, StagedGroup)>, Refused> {
        if group.is_empty() {
            return Ok(None);
        }
        let mut client_ids: HashMap<&Arc<str>, Vec<u128>> = HashMap::new();
        for job in group {
            let stream = job.request.stream.as_str();
            if self
                .state(store, &job.account)?
                .lengths
                .get(stream)
                .is_none()
            {
                return Ok(None);
            }
            let events = job.request.events.iter();
            let mut ids = events
                .filter(|e| e.id.is_client())
                .map(|e| e.id.uuid().as_u128());
            if let Some(first) = ids.next() {
                let all = client_ids.entry(&job.account).or_default();
                all.push(first);
                all.extend(ids);
            }
        }
        for (account, ids) in &mut client_ids {
            ids.sort_unstable();
            if ids.windows(2).any(|pair| pair[0] == pair[1])
                || store.any_id_stored(&*partition_of(store, account)?, ids)?
            {
                return Ok(None);
            }
        }
        let now = now_micros();
        let mut answers = Vec::with_capacity(group.len());
        let mut staging = StagedGroup::new();
        for job in group {
            let state = self.state(store, &job.account)?;
            let (_, head, staged) = match staging.entry(job.account.clone()) {
                Entry::Occupied(entry) => entry.into_mut(),
                Entry::Vacant(entry) => {
                    let partition = partition_of(store, &job.account)?;
                    entry.insert((partition, state.head, Staged::default()))
                }
            };
            let len = (state.lengths)
                .get(job.request.stream.as_str())
                .expect("checked above; staging only adds lengths");
            answers.push(staged.stage(&job.request, len, head, now, &mut state.lengths));
        }
        Ok(Some((answers, staging)))
    }

    /// Commits a group staged by [`Writer::stage_ahead`]: its frame, then redb's transaction.
    /// A failure after the frame retracts it.
    fn commit_staged(
        &mut self,
        store: &Store,
        answers: Answers,
        staging: StagedGroup,
    ) -> Result<Answers, Refused> {
        self.payload.clear();
        for (account, (_, _, staged)) in &staging {
            self.payload.section(account, &staged.logged);
        }
        let commit = self.write_frame(false)?;
        let tables = (|| {
            crate::failpoint::failpoint!("log-commit-staged", |arg| Err(StorageError::io(
                crate::failpoint::io_error(arg)
            )));
            let txn = store.database().begin_write().map_err(StorageError::from)?;
            let mut written = Vec::with_capacity(staging.len());
            for (account, (partition, head, staged)) in staging {
                let (mut tables, flushed) =
                    WriteTables::open_for_group(&txn, partition, store.policy(), staged)?;
                tables.insert_from(StagedMark::default())?;
                written.push(Written::new(account, tables, head, flushed));
            }
            Ok::<_, StorageError>((txn, written))
        })();
        match tables {
            Ok((txn, written)) => self.commit(store, txn, commit, false, answers, written),
            Err(error) => {
                self.retract(commit);
                Err(error.into())
            }
        }
    }

    /// Writes the group's frame (`self.payload`) to the segment, if it goes there, and says
    /// how the group's transaction is made durable.
    fn write_frame(&mut self, empty_group: bool) -> Result<Commit, Refused> {
        crate::failpoint::failpoint!("log-commit", |arg| Err(StorageError::io(
            crate::failpoint::io_error(arg)
        )
        .into()));
        let logged = self.payload.as_bytes();
        Ok(match &mut self.wal {
            Some(wal)
                if !logged.is_empty() && logged.len() <= LARGE_GROUP && wal.fits(logged.len()) =>
            {
                let at = wal.append(logged).map_err(StorageError::io)?;
                self.sync.frame_written();
                Commit::Logged(at)
            }
            _ if logged.is_empty() && !empty_group => Commit::Volatile,
            Some(wal) => Commit::Durable(Some(wal.generation() + 1)),
            None => Commit::Durable(None),
        })
    }

    /// Unwrites a refused group's frame, if it wrote one.
    fn retract(&mut self, commit: Commit) {
        if let (Commit::Logged(at), Some(wal)) = (commit, &mut self.wal)
            && let Err(retract) = wal.retract(at)
        {
            tracing::error!(error = %retract, "a refused group's frame stays in the write-ahead segment");
        }
    }

    /// Commits the group's transaction as `commit` says, then advances each partition's tail
    /// and the writer's heads and lengths.
    fn commit(
        &mut self,
        store: &Store,
        mut txn: WriteTransaction,
        commit: Commit,
        empty_group: bool,
        answers: Answers,
        written: Vec<Written>,
    ) -> Result<Answers, Refused> {
        match commit {
            Commit::Logged(_) | Commit::Volatile => txn
                .set_durability(Durability::None)
                .map_err(|e| StorageError::Failed(e.to_string()))?,
            Commit::Durable(Some(next)) => store::checkpoint(&txn, next)?,
            Commit::Durable(None) => {}
        }
        // Failures injected here stand for redb refusing a group whose frame is written, and
        // for redb reporting an error for a commit that reached the file.
        let injected: Option<std::io::Error> = (|| {
            crate::failpoint::failpoint!("log-commit-logged", |arg| Some(
                crate::failpoint::io_error(arg)
            ));
            None
        })();
        let landed_but_failed: Option<std::io::Error> = (|| {
            crate::failpoint::failpoint!("log-commit-landed", |arg| Some(
                crate::failpoint::io_error(arg)
            ));
            None
        })();
        let committed = match (injected, landed_but_failed) {
            (Some(e), _) if matches!(commit, Commit::Logged(_)) => Err(StorageError::io(e)),
            (_, Some(e)) => txn
                .commit()
                .map_err(StorageError::from)
                .and(Err(StorageError::io(e))),
            _ => txn.commit().map_err(StorageError::from),
        };
        if let Err(error) = committed {
            self.retract(commit);
            let heads = written.into_iter().map(|w| (w.account, w.head)).collect();
            return Err(Refused {
                error,
                unsettled: Some(Box::new(Unsettled { heads, answers })),
            });
        }
        if let Commit::Durable(checkpoint) = commit {
            self.sync.durable();
            if let (Some(next), Some(wal)) = (checkpoint, &mut self.wal) {
                wal.restart(next);
            }
        }
        for w in written {
            let did_flush = w.flushed > 0 || empty_group;
            w.partition.advance_tail(w.flushed, w.appended, w.head);
            let state = self.state(store, &w.account)?;
            state.lengths.commit_group(did_flush);
            state.head = w.head;
        }
        Ok(answers)
    }
}

fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}
