//! The log's redb tables, the append of one request inside a write transaction, and reads.
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
use std::ops::RangeInclusive;
use std::path::Path;
use std::sync::Arc;

use redb::{
    Database, ReadOnlyTable, ReadTransaction, ReadableDatabase, ReadableTable, Table,
    TableDefinition, TableHandle, WriteTransaction,
};
use uuid::Uuid;

use super::codec;
use super::error::{AppendError, StorageError};
use super::types::{
    AppendOutcome, AppendRequest, Direction, EventId, EventRef, Position, RecordedEvent, Source,
    StreamName, category_of,
};
use super::wal;

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
            lengths.committed.insert(stream.to_owned(), revision + 1);
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

/// Which events of a source a read takes: from `from` (a revision for a stream, a position
/// otherwise; `None` is the start, or the end when reading backward) in `direction`, at most
/// `limit` of them, none past position `until`. The read stops after the first event that
/// takes the bytes of the events' data and metadata past `max_bytes`, so it holds at most that
/// plus one event.
#[derive(Clone, Copy, Debug)]
pub struct ReadRange {
    pub from: Option<u64>,
    pub direction: Direction,
    pub limit: usize,
    pub max_bytes: usize,
    pub until: Position,
}

impl Store {
    pub fn policy(&self) -> FlushPolicy {
        self.policy
    }

    /// Reads the events of `source` that `range` selects. `Ok(None)` means the stream or
    /// category has no events at all.
    pub fn read(
        &self,
        partition: &Partition,
        source: &Source,
        range: ReadRange,
    ) -> Result<Option<Vec<RecordedEvent>>, StorageError> {
        let mut out = Vec::new();
        let found = self.visit(partition, source, range, &mut |e| {
            out.push(e.to_owned());
            true
        })?;
        Ok(found.then_some(out))
    }

    /// What [`Store::read`] reads, handed to `each` in order as it is found, borrowing the
    /// stored bytes (nothing is allocated per event); `each` returns false to stop. Returns
    /// whether the source has any event (`read`'s `Some`).
    pub fn visit(
        &self,
        partition: &Partition,
        source: &Source,
        range: ReadRange,
        each: &mut dyn FnMut(EventRef<'_>) -> bool,
    ) -> Result<bool, StorageError> {
        let ReadRange {
            from,
            direction,
            limit,
            max_bytes,
            until,
        } = range;
        let bounds = match direction {
            Direction::Forward => from.unwrap_or(0)..=u64::MAX,
            Direction::Backward => 0..=from.unwrap_or(u64::MAX),
        };
        let (table, name) = match source {
            Source::All => {
                self.visit_all(
                    partition,
                    bounds,
                    direction,
                    (limit, max_bytes),
                    until,
                    each,
                )?;
                return Ok(true);
            }
            Source::Stream(name) => (partition.tables.streams(), name.as_str()),
            Source::Category(name) => (partition.tables.categories(), name.as_str()),
        };
        // A forward read of a category starts at a position: extents before it are skipped.
        let past = match (source, direction, from) {
            (Source::Category(_), Direction::Forward, Some(from)) if from > 0 => Some(from - 1),
            _ => None,
        };
        let TailSnapshot {
            txn,
            recent,
            first: first_in_tail,
            covered,
        } = self.snapshot_with_tail(partition, source, past, true)?;
        let until = until.min(covered);
        let extents = txn.open_table(table)?;
        let persisted = |range: RangeInclusive<u64>| {
            Ok::<_, StorageError>(
                extents
                    .range((name, *range.start())..=(name, *range.end()))?
                    .map(|item| -> Result<(u64, Position, u64), StorageError> {
                        let (key, value) = item?;
                        let (first_position, count) = value.value();
                        Ok((key.value().1, first_position, count))
                    }),
            )
        };
        // The source exists for this read if its first event is within `until`: one whose
        // first append is committed but not yet published (durable) does not, yet.
        let first = match persisted(0..=u64::MAX)?.next().transpose()? {
            Some((_, first_position, _)) => Some(first_position),
            None => first_in_tail,
        };
        if first.is_none_or(|p| p > until) {
            return Ok(false);
        }
        let (low, high) = bounds.into_inner();
        let mut positions = Vec::new();
        // Collects the positions of one extent within the bounds; false once the walk is done.
        let mut take = |(first, first_position, count): (u64, Position, u64)| {
            let coordinates = first.max(low)..=high.min(first + count - 1);
            let position = |c: u64| first_position + (c - first);
            match direction {
                Direction::Forward => {
                    for p in coordinates.map(position) {
                        if p > until || positions.len() >= limit {
                            return false;
                        }
                        positions.push(p);
                    }
                }
                Direction::Backward => {
                    for p in coordinates.rev().map(position).filter(|p| *p <= until) {
                        if positions.len() >= limit {
                            return false;
                        }
                        positions.push(p);
                    }
                }
            }
            positions.len() < limit
        };
        match direction {
            Direction::Forward => {
                // The extent holding `low` may start before it.
                let start = persisted(0..=low)?
                    .next_back()
                    .transpose()?
                    .map_or(low, |e| e.0);
                for extent in persisted(start..=u64::MAX)? {
                    if !take(extent?) {
                        break;
                    }
                }
                for extent in recent {
                    if !take(extent) {
                        break;
                    }
                }
            }
            Direction::Backward => {
                let older = persisted(0..=high)?.rev();
                for extent in recent.into_iter().rev().map(Ok).chain(older) {
                    if !take(extent?) {
                        break;
                    }
                }
            }
        }
        let events = txn.open_table(partition.tables.events())?;
        let mut bytes = 0usize;
        for position in positions {
            let record = events.get(position)?.ok_or(StorageError::Corrupt {
                position,
                reason: "an index names a position with no event",
            })?;
            let event = codec::decode(position, record.value())?;
            bytes = bytes.saturating_add(event.data.len() + event.metadata.len());
            if !each(event) || bytes > max_bytes {
                break;
            }
        }
        Ok(true)
    }

    /// A read snapshot with the extents of `source` (a stream or category) that the tail
    /// holds beyond the index tables, and how far the tail covers the log. The tail is taken
    /// before the snapshot: extents it lacks are of commits the snapshot may not show either,
    /// and `covered` bounds a read to what both agree on. Extents a flush moved into the
    /// tables are told apart by `indexed_through`. Extents that end at or before `past` are
    /// left out of `recent` (a reader that starts after it), not out of `first` (found only
    /// when asked for).
    fn snapshot_with_tail(
        &self,
        partition: &Partition,
        source: &Source,
        past: Option<Position>,
        find_first: bool,
    ) -> Result<TailSnapshot, StorageError> {
        let tail = partition.tail.read();
        let txn = self.db.begin_read()?;
        let indexed = indexed_through(&txn, &partition.tables)?;
        // The extents are in position order, those a flush already moved into the tables
        // first; and those that end at or before `past` hold nothing the reader wants. Both
        // cuts are binary searches: a reader following the log (a projection's batch) looks
        // at the few extents past its checkpoint, not at the whole tail (up to 16,384).
        let unflushed = &tail.extents[tail
            .extents
            .partition_point(|e| e.first_position <= indexed)..];
        let wanted = match past {
            Some(past) => {
                &unflushed[unflushed.partition_point(|e| e.first_position + e.count - 1 <= past)..]
            }
            None => unflushed,
        };
        let matcher = Matcher::new(source);
        let recent = wanted
            .iter()
            .filter(|e| matcher.matches(&e.stream))
            .map(|e| match source {
                Source::Stream(_) => (e.first_revision, e.first_position, e.count),
                _ => (e.first_position, e.first_position, e.count),
            })
            .collect();
        let first = if find_first {
            unflushed
                .iter()
                .find(|e| matcher.matches(&e.stream))
                .map(|e| e.first_position)
        } else {
            None
        };
        Ok(TailSnapshot {
            txn,
            recent,
            first,
            covered: tail.covered,
        })
    }

    fn visit_all(
        &self,
        partition: &Partition,
        bounds: RangeInclusive<u64>,
        direction: Direction,
        (limit, max_bytes): (usize, usize),
        until: Position,
        each: &mut dyn FnMut(EventRef<'_>) -> bool,
    ) -> Result<(), StorageError> {
        let txn = self.db.begin_read()?;
        let events = txn.open_table(partition.tables.events())?;
        let (low, high) = (*bounds.start(), (*bounds.end()).min(until));
        if low > high {
            return Ok(());
        }
        let range = events.range(low..=high)?;
        let (mut count, mut bytes) = (0usize, 0usize);
        let mut push = |item: Result<_, redb::StorageError>| -> Result<bool, StorageError> {
            let (k, v): (redb::AccessGuard<u64>, redb::AccessGuard<&[u8]>) = item?;
            let event = codec::decode(k.value(), v.value())?;
            bytes = bytes.saturating_add(event.data.len() + event.metadata.len());
            count += 1;
            Ok(each(event) && count < limit && bytes <= max_bytes)
        };
        match direction {
            Direction::Forward => {
                for item in range {
                    if !push(item)? {
                        break;
                    }
                }
            }
            Direction::Backward => {
                for item in range.rev() {
                    if !push(item)? {
                        break;
                    }
                }
            }
        }
        Ok(())
    }

    /// The revision of the first event of `stream` after `position`, if there is one: where a
    /// reader that follows the log by position resumes in one stream.
    pub fn revision_after(
        &self,
        partition: &Partition,
        stream: &StreamName,
        position: Position,
    ) -> Result<Option<u64>, StorageError> {
        let TailSnapshot { txn, recent, .. } = self.snapshot_with_tail(
            partition,
            &Source::Stream(stream.clone()),
            Some(position),
            false,
        )?;
        let stream = stream.as_str();
        let resume = |(first_revision, first_position, count): (u64, Position, u64)| {
            (first_position + count - 1 > position)
                .then(|| first_revision + position.saturating_add(1).saturating_sub(first_position))
        };
        let extents = txn.open_table(partition.tables.streams())?;
        for item in extents.range((stream, 0)..=(stream, u64::MAX))? {
            let (key, value) = item?;
            let (first_position, count) = value.value();
            if let Some(revision) = resume((key.value().1, first_position, count)) {
                return Ok(Some(revision));
            }
        }
        Ok(recent.into_iter().find_map(resume))
    }

    /// The stream and revision of the event at `position`, if there is one.
    pub fn locate(
        &self,
        partition: &Partition,
        position: Position,
    ) -> Result<Option<(String, u64)>, StorageError> {
        let txn = self.db.begin_read()?;
        let events = txn.open_table(partition.tables.events())?;
        let Some(record) = events.get(position)? else {
            return Ok(None);
        };
        let (stream, revision) = codec::decode_stream_and_revision(position, record.value())?;
        Ok(Some((stream.to_owned(), revision)))
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

/// A read snapshot and the index tail's part of one source that goes with it.
struct TailSnapshot {
    txn: ReadTransaction,
    /// (first coordinate, first position, count) of the source's extents only in the tail,
    /// from the first that ends after the position asked for.
    recent: Vec<(u64, Position, u64)>,
    /// The first position of the source's first extent only in the tail, skipped or not
    /// (`None` unless asked for).
    first: Option<Position>,
    /// The position up to which the tail and the snapshot agree.
    covered: Position,
}

/// Whether an extent's stream is of a source: its name, or a name in its category, compared
/// without searching the name for the category's end (a projection's read compares every
/// extent of the tail it looks at).
enum Matcher<'a> {
    Stream(&'a str),
    /// `category-`, as bytes: a stream is in it when its name starts with them.
    Category(Vec<u8>),
    /// A category name holding a `-` (or empty) has no stream: a stream's category ends at
    /// its first `-`. `$all` reads no extents.
    Nothing,
}

impl<'a> Matcher<'a> {
    fn new(source: &'a Source) -> Self {
        match source {
            Source::Stream(name) => Matcher::Stream(name.as_str()),
            Source::Category(name) if name.is_empty() || name.contains('-') => Matcher::Nothing,
            Source::Category(name) => Matcher::Category(format!("{name}-").into_bytes()),
            Source::All => Matcher::Nothing,
        }
    }

    fn matches(&self, stream: &str) -> bool {
        match self {
            Matcher::Stream(name) => stream == *name,
            Matcher::Category(prefix) => stream.as_bytes().starts_with(prefix),
            Matcher::Nothing => false,
        }
    }
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

/// The writer's knowledge of stream lengths beyond the index tables: the length of every
/// stream with extents in the tail, and of those the current group appended to.
#[derive(Default)]
pub struct StreamLengths {
    committed: HashMap<String, u64>,
    group: HashMap<String, u64>,
}

impl StreamLengths {
    /// The stream's length, if known without reading the tables.
    pub fn get(&self, stream: &str) -> Option<u64> {
        self.group
            .get(stream)
            .or_else(|| self.committed.get(stream))
            .copied()
    }

    /// The group committed. After a flush the tables know every older stream's length, so
    /// only the group's streams (the new tail) need remembering.
    pub fn commit_group(&mut self, flushed: bool) {
        if flushed {
            self.committed.clear();
        }
        self.committed.extend(self.group.drain());
    }

    /// The group failed: forget what it appended.
    pub fn abandon_group(&mut self) {
        self.group.clear();
    }
}

/// What a group appends to one partition, checked and encoded before any table is written:
/// its records (for the write-ahead segment, then the events table), each event's id (for the
/// ids table) and its extents (for the tail once the group commits).
#[derive(Default)]
pub struct Staged {
    pub logged: wal::Records,
    /// Each staged event's id, with its position.
    ids: Vec<(u128, Position)>,
    pub appended: Vec<Extent>,
    record: Vec<u8>,
}

/// How far a [`Staged`] had got: what was staged after it is what [`WriteTables::insert_from`]
/// writes.
#[derive(Clone, Copy, Default)]
pub struct StagedMark {
    logged: usize,
    ids: usize,
}

impl Staged {
    /// Checks `request` against its stream's length `len` (the log's, or the group's so far)
    /// and, if it passes, stages its events after `*head`, advancing `*head`. A request that
    /// fails the check stages nothing. Idempotent retries are not recognised here: see
    /// [`WriteTables::append`].
    pub fn stage(
        &mut self,
        request: &AppendRequest,
        len: u64,
        head: &mut Position,
        recorded_at: u64,
        lengths: &mut StreamLengths,
    ) -> Result<AppendOutcome, AppendError> {
        let stream = request.stream.as_str();
        if !request.expected.admits(len) {
            return Err(AppendError::WrongExpectedRevision {
                stream: stream.to_owned(),
                expected: request.expected,
                current: len.checked_sub(1),
            });
        }
        let first_position = *head + 1;
        let count = request.events.len() as u64;
        for (i, event) in request.events.iter().enumerate() {
            let position = first_position + i as u64;
            self.record.clear();
            codec::encode(&mut self.record, stream, len + i as u64, recorded_at, event);
            self.logged.push(position, &self.record);
            self.ids.push((event.id.uuid().as_u128(), position));
        }
        lengths.group.insert(stream.to_owned(), len + count);
        self.appended.push(Extent {
            stream: stream.to_owned(),
            first_revision: len,
            first_position,
            count,
        });
        *head += count;
        Ok(AppendOutcome {
            first_position,
            first_revision: len,
            ids: request.events.iter().map(|e| e.id.uuid()).collect(),
            deduplicated: false,
        })
    }

    fn mark(&self) -> StagedMark {
        StagedMark {
            logged: self.logged.byte_len(),
            ids: self.ids.len(),
        }
    }
}

/// The tables of one write transaction, opened once per group commit.
pub struct WriteTables<'txn> {
    txn: &'txn WriteTransaction,
    partition: Arc<Partition>,
    events: Table<'txn, u64, &'static [u8]>,
    ids: Table<'txn, u128, u64>,
    /// What the group appends to this partition.
    pub staged: Staged,
}

impl<'txn> WriteTables<'txn> {
    /// Opens the partition's tables in `txn`, with what the group staged for it so far.
    pub fn open(
        txn: &'txn WriteTransaction,
        partition: Arc<Partition>,
        staged: Staged,
    ) -> Result<Self, StorageError> {
        Ok(Self {
            txn,
            events: txn.open_table(partition.tables.events())?,
            ids: txn.open_table(partition.tables.ids())?,
            partition,
            staged,
        })
    }

    /// Opens the tables for a group's first request to the partition, with what the group
    /// staged for it, and flushes the tail into the index tables when it is full. Returns how
    /// many extents were flushed.
    pub fn open_for_group(
        txn: &'txn WriteTransaction,
        partition: Arc<Partition>,
        policy: FlushPolicy,
        staged: Staged,
    ) -> Result<(Self, usize), StorageError> {
        let flush = partition.tail_is_full(policy);
        let mut tables = Self::open(txn, partition, staged)?;
        let flushed = if flush { tables.flush()? } else { 0 };
        Ok((tables, flushed))
    }

    /// Writes into the tables what was staged after `mark` (from the start: all of it).
    pub fn insert_from(&mut self, mark: StagedMark) -> Result<(), StorageError> {
        for (position, record) in self.staged.logged.iter_from(mark.logged) {
            self.events.insert(position, record)?;
        }
        for &(id, position) in &self.staged.ids[mark.ids..] {
            self.ids.insert(id, position)?;
        }
        Ok(())
    }

    /// Writes the whole tail into the index tables and records how far they now reach.
    /// Returns how many extents were flushed.
    pub fn flush(&mut self) -> Result<usize, StorageError> {
        let tables = &self.partition.tables;
        let tail = self.partition.tail.read();
        let mut streams = self.txn.open_table(tables.streams())?;
        let mut categories = self.txn.open_table(tables.categories())?;
        for e in &tail.extents {
            let extent = (e.first_position, e.count);
            streams.insert((e.stream.as_str(), e.first_revision), extent)?;
            if let Some(category) = category_of(&e.stream) {
                categories.insert((category, e.first_position), extent)?;
            }
        }
        self.txn
            .open_table(tables.meta())?
            .insert(INDEXED_THROUGH, tail.covered)?;
        Ok(tail.extents.len())
    }

    /// Checks `request` against the log as this transaction sees it (the group's earlier
    /// requests included) and, if it passes, writes it after `*head`, advancing `*head`. A
    /// request that fails a check writes nothing.
    pub fn append(
        &mut self,
        request: &AppendRequest,
        head: &mut Position,
        recorded_at: u64,
        lengths: &mut StreamLengths,
    ) -> Result<AppendOutcome, AppendError> {
        let stream = request.stream.as_str();
        let len = match lengths.get(stream) {
            Some(len) => len,
            None => self.indexed_length(stream)?,
        };
        if let Some(outcome) = self.replayed(request)? {
            return Ok(outcome);
        }
        let mark = self.staged.mark();
        let outcome = self
            .staged
            .stage(request, len, head, recorded_at, lengths)?;
        // Written at once, so that a later request of the group sees these ids.
        self.insert_from(mark)?;
        Ok(outcome)
    }

    /// The partition this transaction writes.
    pub fn partition(&self) -> &Arc<Partition> {
        &self.partition
    }

    /// A stream's length per the index tables, for a stream with nothing in the tail.
    fn indexed_length(&self, stream: &str) -> Result<u64, StorageError> {
        let extents = self.txn.open_table(self.partition.tables.streams())?;
        let last = extents.range((stream, 0)..=(stream, u64::MAX))?.next_back();
        Ok(match last {
            Some(item) => {
                let (key, value) = item?;
                key.value().1 + value.value().1
            }
            None => 0,
        })
    }

    /// Recognises a retry: every event's id is already stored, in this stream, at consecutive
    /// revisions, and the expected revision held before that first append. Then the original
    /// outcome is returned and nothing is written. A client id stored anywhere else is a
    /// conflict, since writing it again would duplicate an event.
    fn replayed(&self, request: &AppendRequest) -> Result<Option<AppendOutcome>, AppendError> {
        let mut first: Option<(Position, u64)> = None;
        for (i, event) in request.events.iter().enumerate() {
            let EventId::Client(id) = event.id else {
                // Generated ids are fresh, so the batch cannot be a complete retry.
                if let Some((position, _)) = first {
                    return Err(conflict(request.events[0].id.uuid(), position));
                }
                continue;
            };
            let Some(position) = self.ids.get(id.as_u128())?.map(|g| g.value()) else {
                if let Some((position, _)) = first {
                    return Err(conflict(request.events[0].id.uuid(), position));
                }
                continue;
            };
            let record = self.events.get(position)?.ok_or(StorageError::Corrupt {
                position,
                reason: "an event id names a position with no event",
            })?;
            let (stream, revision) = codec::decode_stream_and_revision(position, record.value())?;
            let in_sequence = match first {
                None => i == 0,
                Some((first_position, first_revision)) => {
                    position == first_position + i as u64 && revision == first_revision + i as u64
                }
            };
            if stream != request.stream.as_str() || !in_sequence {
                return Err(conflict(id, position));
            }
            first.get_or_insert((position, revision));
        }
        let Some((first_position, first_revision)) = first else {
            return Ok(None);
        };
        if !request.expected.admits(first_revision) {
            return Err(conflict(request.events[0].id.uuid(), first_position));
        }
        Ok(Some(AppendOutcome {
            first_position,
            first_revision,
            ids: request.events.iter().map(|e| e.id.uuid()).collect(),
            deduplicated: true,
        }))
    }
}

fn conflict(id: Uuid, position: Position) -> AppendError {
    AppendError::IdConflict { id, position }
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
