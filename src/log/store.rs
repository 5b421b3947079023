//! The log's redb tables and partitions, each partition's index tail, opening and recovery;
//! the append of a group's requests inside a write transaction (`write`), and reads (`read`).
//!
//! Layout (one file, `log.redb`). Each account is a *partition*: its own set of the tables
//! below, named `<account>/<table>`, except the default account's, which keep the plain names
//! a log had before accounts existed (so an older log is the default account's, unchanged).
//!
//! | table              | key                             | value                   |
//! |--------------------|---------------------------------|-------------------------|
//! | `events`           | position                        | record (see `codec`)    |
//! | `event_ids`        | event id (u128)                 | position                |
//! | `stream_extents`   | (stream name, first revision)   | (first position, count) |
//! | `category_extents` | (category name, first position) | (first position, count) |
//! | `meta`             | `"indexed_through"`             | position                |
//!
//! Positions, revisions, event ids, stream and category names are all per partition: two
//! accounts' `order-1` are two streams, each account's positions run 1, 2, 3, … and an id
//! stored by one account is unknown to another. One write transaction (one fsync) commits a
//! group of appends to any number of partitions.
//!
//! An append request writes one stream at consecutive positions and revisions: one *extent*.
//! The stream and category indexes hold extents, not events, so a 1,000-event batch costs two
//! index rows.
//!
//! Index tail. A durable commit here costs about 18 µs per page it writes, and each stream's
//! newest extent sits in its own B-tree leaf, so writing the indexes on every commit doubled
//! the pages of a small-append commit (measured: 645 µs against 406 µs for 32 one-event
//! appends). Commits therefore write only `events` and `event_ids`; the extents of recent
//! appends live in memory, in each partition's [`Tail`], and are flushed into the index tables
//! in bulk every few thousand appends, together with `indexed_through`, the position up to
//! which the tables are complete. The tail is derived data: on open it is rebuilt from the
//! events after `indexed_through`, so a crash loses nothing.

use parking_lot::RwLock;
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use redb::{
    Database, ReadOnlyTable, ReadTransaction, ReadableDatabase, ReadableTable, Table,
    TableDefinition, TableHandle, WriteTransaction,
};

use super::codec;
use super::error::StorageError;
use super::types::Position;
use super::wal;

mod read;
mod write;

pub use read::ReadRange;
pub use write::{Staged, StagedMark, StreamLengths, WriteTables};

/// An index of extents: (stream or category name, first coordinate) → (first position, count).
/// The coordinate is the revision for streams and the position for categories.
type Extents<'a> = TableDefinition<'a, (&'static str, u64), (u64, u64)>;
type Events<'a> = TableDefinition<'a, u64, &'static [u8]>;

const INDEXED_THROUGH: &str = "indexed_through";

/// The write-ahead segment's state in the file (one for all partitions): the generation its
/// frames carry until the next checkpoint (see `wal`).
const WAL: TableDefinition<'static, &'static str, u64> = TableDefinition::new("wal");
const GENERATION: &str = "generation";

/// The table names of one account's partition.
pub struct Tables {
    events: String,
    ids: String,
    streams: String,
    categories: String,
    meta: String,
}

impl Tables {
    /// The default account's tables have the plain names; any other account's are prefixed
    /// with `<account>/` (account names hold no `/`).
    fn of(account: &str) -> Self {
        let name = |table: &str| {
            if account == crate::account::DEFAULT {
                table.to_owned()
            } else {
                format!("{account}/{table}")
            }
        };
        Tables {
            events: name("events"),
            ids: name("event_ids"),
            streams: name("stream_extents"),
            categories: name("category_extents"),
            meta: name("meta"),
        }
    }

    /// The account a partition's `events` table belongs to.
    fn account_of_events_table(table: &str) -> Option<&str> {
        if table == "events" {
            return Some(crate::account::DEFAULT);
        }
        table.strip_suffix("/events")
    }

    fn events(&self) -> Events<'_> {
        TableDefinition::new(&self.events)
    }
    fn ids(&self) -> TableDefinition<'_, u128, u64> {
        TableDefinition::new(&self.ids)
    }
    fn streams(&self) -> Extents<'_> {
        TableDefinition::new(&self.streams)
    }
    fn categories(&self) -> Extents<'_> {
        TableDefinition::new(&self.categories)
    }
    fn meta(&self) -> TableDefinition<'_, &'static str, u64> {
        TableDefinition::new(&self.meta)
    }

    fn names(&self) -> [&str; 5] {
        [
            &self.events,
            &self.ids,
            &self.streams,
            &self.categories,
            &self.meta,
        ]
    }

    /// Creates the tables in `txn` (opening a table creates it).
    fn create(&self, txn: &WriteTransaction) -> Result<(), StorageError> {
        txn.open_table(self.events())?;
        txn.open_table(self.ids())?;
        txn.open_table(self.streams())?;
        txn.open_table(self.categories())?;
        txn.open_table(self.meta())?;
        Ok(())
    }
}

/// Pages redb may keep in memory. The log is read mostly at its tail, so a modest cache serves;
/// a replay reads it once from end to end, which a cache does not speed up but fills (with
/// 256 MiB the server held 180 MiB more at the end of a 3,000,000-event replay; BENCHMARKS.md).
/// 32 MiB rather than 64 kept a 10M-event rebuild's peak RSS under 256 MiB (issue 16).
const CACHE_BYTES: usize = 32 * 1024 * 1024;

/// When the index tail is flushed into the index tables.
#[derive(Clone, Copy, Debug)]
pub struct FlushPolicy {
    /// Flush once the tail holds this many extents (bounds its memory).
    pub extents: usize,
    /// Flush once the tail covers this many events (bounds the scan on open after a crash).
    pub events: u64,
}

impl Default for FlushPolicy {
    fn default() -> Self {
        Self {
            extents: 16_384,
            events: 262_144,
        }
    }
}

/// One append's run of events: consecutive positions and revisions of one stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Extent {
    pub stream: String,
    pub first_revision: u64,
    pub first_position: Position,
    pub count: u64,
}

/// Extents committed since the last flush, in position order, and the head they reach.
#[derive(Default)]
pub struct Tail {
    extents: Vec<Extent>,
    /// Every event up to here is indexed, in the tables or in `extents`.
    covered: Position,
}

impl Tail {
    fn events(&self) -> u64 {
        self.extents.iter().map(|e| e.count).sum()
    }
}

/// One account's part of the log: its tables and its index tail.
pub struct Partition {
    tables: Tables,
    /// Guards the index tail. Readers take it together with a redb snapshot (so they see a
    /// consistent pair); the writer takes it only to advance it after a commit. No I/O
    /// happens under it but the snapshot's begin; no other lock is taken inside it.
    tail: RwLock<Tail>,
}

/// The stream lengths of each partition's tail, by account: what the writer starts from.
pub type Lengths = HashMap<String, StreamLengths>;

pub struct Store {
    db: Database,
    /// The partitions, by account. Guards only the map: taken for a lookup, or to add a
    /// partition once its tables are committed; never held across I/O or with a tail lock.
    partitions: RwLock<HashMap<String, Arc<Partition>>>,
    policy: FlushPolicy,
    /// The generation of the write-ahead segment's frames as of this open (see `wal`).
    wal_generation: u64,
}

impl Store {
    /// Opens the file, writes into it what the write-ahead segment holds beyond it, and
    /// rebuilds each partition's index tail from the events after its `indexed_through`.
    /// Returns the store and the stream lengths of the tails, for the writer.
    pub fn open(path: &Path, policy: FlushPolicy) -> Result<(Self, Lengths), StorageError> {
        let db = Database::builder()
            .set_cache_size(CACHE_BYTES)
            .create(path)?;
        let wal_generation = recover(&db, &wal::path_of(path))?;
        let store = Store {
            db,
            partitions: RwLock::new(HashMap::new()),
            policy,
            wal_generation,
        };
        // The default account's tables always exist; a new log creates them. An existing one
        // is opened without a write, so that it can be reopened (and read) while the disk is
        // full.
        let mut lengths = Lengths::new();
        let existing = store.table_names()?;
        let mut accounts: Vec<String> = existing
            .iter()
            .filter_map(|t| Tables::account_of_events_table(t).map(str::to_owned))
            .collect();
        if !accounts.iter().any(|a| a == crate::account::DEFAULT) {
            accounts.push(crate::account::DEFAULT.to_owned());
        }
        for account in accounts {
            let (partition, tail_lengths) = store.load_partition(&account, &existing)?;
            lengths.insert(account.clone(), tail_lengths);
            store
                .partitions
                .write()
                .insert(account, Arc::new(partition));
        }
        Ok((store, lengths))
    }

    /// The partition of `account`, created (its tables committed) if it has none yet.
    /// Creating one waits for the writer's transaction in progress, if any.
    pub fn partition(&self, account: &str) -> Result<Arc<Partition>, StorageError> {
        if let Some(partition) = self.partitions.read().get(account) {
            return Ok(partition.clone());
        }
        let (partition, _) = self.load_partition(account, &self.table_names()?)?;
        let mut partitions = self.partitions.write();
        Ok(partitions
            .entry(account.to_owned())
            .or_insert_with(|| Arc::new(partition))
            .clone())
    }

    /// The partition of `account`, if it has one.
    pub fn existing_partition(&self, account: &str) -> Option<Arc<Partition>> {
        self.partitions.read().get(account).cloned()
    }

    /// Every partition, by account.
    pub fn partitions(&self) -> Vec<(String, Arc<Partition>)> {
        let partitions = self.partitions.read();
        partitions
            .iter()
            .map(|(a, p)| (a.clone(), p.clone()))
            .collect()
    }

    /// The names of the tables in the file.
    fn table_names(&self) -> Result<Vec<String>, StorageError> {
        Ok(self
            .db
            .begin_read()?
            .list_tables()?
            .map(|t| t.name().to_owned())
            .collect())
    }

    /// Opens one account's partition, creating its tables when they are not among `existing`,
    /// and rebuilds its tail.
    fn load_partition(
        &self,
        account: &str,
        existing: &[String],
    ) -> Result<(Partition, StreamLengths), StorageError> {
        let tables = Tables::of(account);
        if !tables
            .names()
            .iter()
            .all(|t| existing.iter().any(|n| n == t))
        {
            let txn = self.db.begin_write()?;
            tables.create(&txn)?;
            txn.commit()?;
        }

        let txn = self.db.begin_read()?;
        let indexed = indexed_through(&txn, &tables)?;
        let events = txn.open_table(tables.events())?;
        let mut tail = Tail {
            extents: Vec::new(),
            covered: last_position(&events)?,
        };
        let mut lengths = StreamLengths::default();
        for item in events.range(indexed + 1..)? {
            let (key, value) = item?;
            let position = key.value();
            let (stream, revision) = codec::decode_stream_and_revision(position, value.value())?;
            match tail.extents.last_mut() {
                Some(last)
                    if last.stream == stream
                        && last.first_position + last.count == position
                        && last.first_revision + last.count == revision =>
                {
                    last.count += 1;
                }
                _ => tail.extents.push(Extent {
                    stream: stream.to_owned(),
                    first_revision: revision,
                    first_position: position,
                    count: 1,
                }),
            }
            lengths.set_committed(stream, revision + 1);
        }
        drop((events, txn));
        let partition = Partition {
            tables,
            tail: RwLock::new(tail),
        };
        Ok((partition, lengths))
    }

    pub fn database(&self) -> &Database {
        &self.db
    }

    /// The generation of the write-ahead segment's frames as of this open.
    pub fn wal_generation(&self) -> u64 {
        self.wal_generation
    }

    /// Whether any of `ids` is stored in the partition, as of the last commit.
    pub fn any_id_stored(&self, partition: &Partition, ids: &[u128]) -> Result<bool, StorageError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(partition.tables.ids())?;
        for &id in ids {
            if table.get(id)?.is_some() {
                return Ok(true);
            }
        }
        Ok(false)
    }

    pub fn policy(&self) -> FlushPolicy {
        self.policy
    }

    /// The position of the partition's last event, 0 for an empty one.
    pub fn head(&self, partition: &Partition) -> Result<Position, StorageError> {
        let txn = self.db.begin_read()?;
        last_position(&txn.open_table(partition.tables.events())?)
    }
}

impl Partition {
    /// Whether the next commit should flush the tail.
    pub fn tail_is_full(&self, policy: FlushPolicy) -> bool {
        let tail = self.tail.read();
        tail.extents.len() >= policy.extents || tail.events() >= policy.events
    }

    /// After a commit: drops the first `flushed` extents (now in the tables) and appends the
    /// commit's own.
    pub fn advance_tail(&self, flushed: usize, appended: Vec<Extent>, head: Position) {
        let mut tail = self.tail.write();
        tail.extents.drain(..flushed);
        tail.extents.extend(appended);
        tail.covered = head;
    }
}

/// Writes into the file the records of the write-ahead segment at `segment` that it lacks
/// (those of a commit made non-durably and lost in a crash or a reopen), then, if the segment
/// had any frames, starts a new generation, durably. Returns the generation for new frames.
/// A log with nothing to recover is opened without a write.
fn recover(db: &Database, segment: &Path) -> Result<u64, StorageError> {
    let generation = {
        let txn = db.begin_read()?;
        match txn.open_table(WAL) {
            Ok(table) => table.get(GENERATION)?.map_or(1, |g| g.value()),
            Err(redb::TableError::TableDoesNotExist(_)) => 1,
            Err(e) => return Err(e.into()),
        }
    };
    let frames = wal::frames(segment, generation).map_err(StorageError::io)?;
    if frames.is_empty() {
        return Ok(generation);
    }
    let txn = db.begin_write()?;
    let mut replayed = 0u64;
    {
        let mut heads: HashMap<&str, Position> = HashMap::new();
        // The tables of the account being replayed: (account, events, event_ids).
        type Open<'t> = (&'t str, Table<'t, u64, &'static [u8]>, Table<'t, u128, u64>);
        let mut open: Option<Open> = None;
        for entry in frames.iter().flat_map(|frame| wal::entries(frame)) {
            let entry = entry.ok_or(StorageError::Corrupt {
                position: 0,
                reason: "a frame of the write-ahead segment is malformed",
            })?;
            if open
                .as_ref()
                .is_none_or(|(account, ..)| *account != entry.account)
            {
                let tables = Tables::of(entry.account);
                tables.create(&txn)?;
                let events = txn.open_table(tables.events())?;
                heads
                    .entry(entry.account)
                    .or_insert(events.last()?.map_or(0, |(k, _)| k.value()));
                open = Some((entry.account, events, txn.open_table(tables.ids())?));
            }
            let (account, events, ids) = open.as_mut().expect("opened above");
            let head = heads.get_mut(account).expect("inserted above");
            if entry.position <= *head {
                continue;
            }
            if entry.position != *head + 1 {
                return Err(StorageError::Corrupt {
                    position: entry.position,
                    reason: "the write-ahead segment skips positions",
                });
            }
            let id = entry.record.get(17..33).ok_or(StorageError::Corrupt {
                position: entry.position,
                reason: "truncated record in the write-ahead segment",
            })?;
            events.insert(entry.position, entry.record)?;
            ids.insert(
                u128::from_be_bytes(id.try_into().expect("16 bytes")),
                entry.position,
            )?;
            *head = entry.position;
            replayed += 1;
        }
    }
    checkpoint(&txn, generation + 1)?;
    txn.commit()?;
    tracing::info!(
        events = replayed,
        "recovered the log's commits from its write-ahead segment"
    );
    Ok(generation + 1)
}

/// Marks `txn` (which must be durable) as a checkpoint: the write-ahead segment's frames from
/// now on carry `generation`, and those of older generations are not read again.
pub fn checkpoint(txn: &WriteTransaction, generation: u64) -> Result<(), StorageError> {
    txn.open_table(WAL)?.insert(GENERATION, generation)?;
    Ok(())
}

fn indexed_through(txn: &ReadTransaction, tables: &Tables) -> Result<Position, StorageError> {
    Ok(txn
        .open_table(tables.meta())?
        .get(INDEXED_THROUGH)?
        .map_or(0, |g| g.value()))
}

fn last_position(events: &ReadOnlyTable<u64, &[u8]>) -> Result<Position, StorageError> {
    Ok(events.last()?.map_or(0, |(k, _)| k.value()))
}

/// Drops the index tables and `indexed_through` from a closed log file, leaving the state a
/// crash before the first flush leaves: only events and ids.
#[cfg(test)]
pub fn forget_index(path: &Path) -> Result<(), StorageError> {
    let db = Database::create(path)?;
    let txn = db.begin_write()?;
    let tables = Tables::of(crate::account::DEFAULT);
    txn.delete_table(tables.streams())?;
    txn.delete_table(tables.categories())?;
    txn.open_table(tables.meta())?.remove(INDEXED_THROUGH)?;
    txn.commit()?;
    Ok(())
}
