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

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use redb::{Durability, WriteTransaction};
use tokio::sync::{mpsc, oneshot, watch};

use super::LogHealth;
use super::error::{AppendError, StorageError};
use super::files::LogFiles;
use super::head::{Head, Heads};
use super::store::{
    self, Extent, Lengths, Partition, Staged, StagedMark, Store, StreamLengths, WriteTables,
};
use super::sync::{self, Syncer};
use super::types::{AppendOutcome, AppendRequest, Position};
use super::wal::{self, Wal};

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

    /// Whether the reopened file holds `unsettled` (every account it wrote at the head its
    /// commit would have reached), made durable here: then its answers are true. The writer
    /// is the only one writing, so nothing else moved those heads.
    fn landed(&self, unsettled: &Unsettled) -> bool {
        let Ok(store) = self.files.current() else {
            return false;
        };
        let at_heads = unsettled.heads.iter().all(|(account, expected)| {
            store
                .existing_partition(account)
                .is_some_and(|p| store.head(&p).is_ok_and(|head| head == *expected))
        });
        // What the open found may not have been flushed before the failure: an answer is
        // given only once it is durable.
        at_heads
            && std::fs::File::open(self.files.path())
                .and_then(|file| file.sync_all())
                .is_ok()
    }

    /// Checks, writes and commits `group`. When every request can be checked without reading
    /// the tables ([`Writer::stage_ahead`]), the group's frame is written, and its fdatasync
    /// started, before redb's transaction is begun; otherwise the transaction comes first.
    fn try_commit(&mut self, store: &Store, group: &[Job]) -> Result<Answers, Refused> {
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

    /// The writer's state of `account`, made from the store on the account's first append
    /// since the file was (re)opened.
    fn state(
        &mut self,
        store: &Store,
        account: &Arc<str>,
    ) -> Result<&mut AccountState, StorageError> {
        if !self.accounts.contains_key(account) {
            let partition = store
                .existing_partition(account)
                .ok_or(StorageError::Failed(format!(
                    "the log has no partition for account {account}"
                )))?;
            let head = store.head(&partition)?;
            let state = AccountState {
                head,
                lengths: self.opened.remove(&**account).unwrap_or_default(),
                published: self.heads.get(account, head),
            };
            self.accounts.insert(account.clone(), state);
        }
        Ok(self.accounts.get_mut(account).expect("inserted above"))
    }

    /// Reopens the file after a failure and takes the heads and stream lengths from what it
    /// holds. A commit that failed after reaching the disk is found there, not lost.
    fn reopen(&mut self) -> Result<(), StorageError> {
        // The groups committed before are answered first (a failed fdatasync refuses them; the
        // caller saw it already), so that the heads published below are the newest.
        let _ = self.sync.drain();
        let reopened = self.files.reopen().and_then(|(store, lengths)| {
            let heads = self
                .heads
                .all()
                .into_iter()
                .filter_map(|(account, published)| {
                    let partition = store.existing_partition(&account)?;
                    Some(store.head(&partition).map(|head| (published, head)))
                })
                .collect::<Result<Vec<_>, _>>()?;
            Ok((heads, lengths))
        });
        match reopened {
            Ok((heads, lengths)) => {
                tracing::info!("the log was reopened");
                // Its recovery made durable what the segment held: no frame is owed a sync.
                self.sync.durable();
                if let Ok(store) = self.files.current() {
                    self.open_wal(&store);
                }
                self.accounts.clear();
                self.opened = lengths;
                for (published, head) in heads {
                    published.reset(head);
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

    /// (Re)opens the write-ahead segment after the log file was (re)opened, which recovered
    /// whatever the segment held: its frames start over under the store's generation.
    fn open_wal(&mut self, store: &Store) {
        let generation = store.wal_generation();
        match &mut self.wal {
            Some(wal) => wal.restart(generation),
            None => match Wal::open(&wal::path_of(self.files.path()), generation) {
                Ok(wal) => {
                    self.sync.set_file(wal.file());
                    self.wal = Some(wal);
                }
                Err(e) => tracing::warn!(
                    error = %e,
                    "no write-ahead segment: every append commits the log file with fsync"
                ),
            },
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
pub(super) fn refusal(e: &StorageError) -> StorageError {
    match e {
        StorageError::DiskFull => StorageError::DiskFull,
        StorageError::Unavailable => StorageError::Unavailable,
        other => StorageError::Failed(other.to_string()),
    }
}

/// The partition `account` appends to; every account's exists before its first append.
fn partition_of(store: &Store, account: &str) -> Result<Arc<Partition>, StorageError> {
    store
        .existing_partition(account)
        .ok_or(StorageError::Failed(format!(
            "the log has no partition for account {account}"
        )))
}

fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}
