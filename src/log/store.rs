//! The log's redb tables, the append of one request inside a write transaction, and reads.
//!
//! Layout (one file, `log.redb`):
//!
//! | table              | key                              | value                        |
//! |--------------------|----------------------------------|------------------------------|
//! | `events`           | position                         | record (see `codec`)         |
//! | `event_ids`        | event id (u128)                  | position                     |
//! | `streams`          | stream name                      | (stream number, event count) |
//! | `stream_extents`   | (stream number, first revision)  | (first position, count)      |
//! | `categories`       | category name                    | category number              |
//! | `category_extents` | (category number, first position)| (first position, count)      |
//!
//! An append request writes one stream at consecutive positions and revisions, so the stream
//! and category indexes hold one *extent* per request rather than one row per event: a
//! 1,000-event batch costs two index rows. A stream's (category's) number is the position of its
//! first event, which is unique and needs no counter.

use std::ops::RangeInclusive;
use std::path::Path;

use redb::{Database, ReadTransaction, ReadableDatabase, ReadableTable, Table, TableDefinition};
use uuid::Uuid;

use super::codec;
use super::error::{AppendError, StorageError};
use super::types::{AppendOutcome, AppendRequest, Direction, EventId, Position, RecordedEvent, Source};

const EVENTS: TableDefinition<u64, &[u8]> = TableDefinition::new("events");
const EVENT_IDS: TableDefinition<u128, u64> = TableDefinition::new("event_ids");
const STREAMS: TableDefinition<&str, (u64, u64)> = TableDefinition::new("streams");
const STREAM_EXTENTS: TableDefinition<(u64, u64), (u64, u64)> =
    TableDefinition::new("stream_extents");
const CATEGORIES: TableDefinition<&str, u64> = TableDefinition::new("categories");
const CATEGORY_EXTENTS: TableDefinition<(u64, u64), (u64, u64)> =
    TableDefinition::new("category_extents");

/// Pages redb may keep in memory. The log is read mostly at its tail, so a modest cache serves.
const CACHE_BYTES: usize = 256 * 1024 * 1024;

pub struct Store {
    db: Database,
}

impl Store {
    pub fn open(path: &Path) -> Result<Self, StorageError> {
        let db = Database::builder()
            .set_cache_size(CACHE_BYTES)
            .create(path)?;
        let txn = db.begin_write()?;
        txn.open_table(EVENTS)?;
        txn.open_table(EVENT_IDS)?;
        txn.open_table(STREAMS)?;
        txn.open_table(STREAM_EXTENTS)?;
        txn.open_table(CATEGORIES)?;
        txn.open_table(CATEGORY_EXTENTS)?;
        txn.commit()?;
        Ok(Self { db })
    }

    pub fn database(&self) -> &Database {
        &self.db
    }

    /// The position of the last event, 0 for an empty log.
    pub fn head(&self) -> Result<Position, StorageError> {
        let txn = self.db.begin_read()?;
        let events = txn.open_table(EVENTS)?;
        Ok(events.last()?.map_or(0, |(k, _)| k.value()))
    }

    /// Reads up to `limit` events of `source` starting at `from` (a revision for a stream, a
    /// position otherwise; `None` is the start, or the end when reading backward), never past
    /// position `until`. `Ok(None)` means the stream or category has no events at all.
    pub fn read(
        &self,
        source: &Source,
        from: Option<u64>,
        direction: Direction,
        limit: usize,
        until: Position,
    ) -> Result<Option<Vec<RecordedEvent>>, StorageError> {
        let txn = self.db.begin_read()?;
        let events = txn.open_table(EVENTS)?;
        let bounds = match direction {
            Direction::Forward => from.unwrap_or(0)..=u64::MAX,
            Direction::Backward => 0..=from.unwrap_or(u64::MAX),
        };
        let positions = match source {
            Source::All => {
                let (low, high) = (*bounds.start(), (*bounds.end()).min(until));
                if low > high {
                    return Ok(Some(Vec::new()));
                }
                let range = events.range(low..=high)?;
                let mut out = Vec::with_capacity(limit.min(4096));
                let mut push = |item: Result<_, redb::StorageError>| -> Result<bool, StorageError> {
                    let (k, v): (redb::AccessGuard<u64>, redb::AccessGuard<&[u8]>) = item?;
                    out.push(codec::decode(k.value(), v.value())?);
                    Ok(out.len() < limit)
                };
                match direction {
                    Direction::Forward => for item in range { if !push(item)? { break } },
                    Direction::Backward => for item in range.rev() { if !push(item)? { break } },
                }
                return Ok(Some(out));
            }
            Source::Stream(name) => {
                let streams = txn.open_table(STREAMS)?;
                let Some(state) = streams.get(name.as_str())? else {
                    return Ok(None);
                };
                let (number, _) = state.value();
                extent_positions(&txn, STREAM_EXTENTS, number, bounds, direction, limit, until)?
            }
            Source::Category(name) => {
                let categories = txn.open_table(CATEGORIES)?;
                let Some(number) = categories.get(name.as_str())? else {
                    return Ok(None);
                };
                let number = number.value();
                extent_positions(&txn, CATEGORY_EXTENTS, number, bounds, direction, limit, until)?
            }
        };
        let mut out = Vec::with_capacity(positions.len());
        for position in positions {
            let record = events.get(position)?.ok_or(StorageError::Corrupt {
                position,
                reason: "an index names a position with no event",
            })?;
            out.push(codec::decode(position, record.value())?);
        }
        Ok(Some(out))
    }

    /// The stream and revision of the event at `position`, if there is one.
    pub fn locate(&self, position: Position) -> Result<Option<(String, u64)>, StorageError> {
        let txn = self.db.begin_read()?;
        let events = txn.open_table(EVENTS)?;
        let Some(record) = events.get(position)? else {
            return Ok(None);
        };
        let (stream, revision) = codec::decode_stream_and_revision(position, record.value())?;
        Ok(Some((stream.to_owned(), revision)))
    }
}

/// Walks the extents of one stream or category, yielding the positions of the events whose
/// coordinate (revision or position) lies in `bounds`, in `direction`, at most `limit`.
fn extent_positions(
    txn: &ReadTransaction,
    table: TableDefinition<(u64, u64), (u64, u64)>,
    number: u64,
    bounds: RangeInclusive<u64>,
    direction: Direction,
    limit: usize,
    until: Position,
) -> Result<Vec<Position>, StorageError> {
    let extents = txn.open_table(table)?;
    let (low, high) = bounds.into_inner();
    let mut out = Vec::new();
    match direction {
        Direction::Forward => {
            // The extent holding `low` may start before it.
            let start = extents
                .range((number, 0)..=(number, low))?
                .next_back()
                .transpose()?
                .map_or(low, |(k, _)| k.value().1);
            for item in extents.range((number, start)..=(number, u64::MAX))? {
                let (key, value) = item?;
                let (first, (first_position, count)) = (key.value().1, value.value());
                for coordinate in first.max(low)..first + count {
                    let position = first_position + (coordinate - first);
                    if out.len() >= limit || position > until {
                        return Ok(out);
                    }
                    out.push(position);
                }
            }
        }
        Direction::Backward => {
            for item in extents.range((number, 0)..=(number, high))?.rev() {
                let (key, value) = item?;
                let (first, (first_position, count)) = (key.value().1, value.value());
                for coordinate in (first..=high.min(first + count - 1)).rev() {
                    let position = first_position + (coordinate - first);
                    if out.len() >= limit {
                        return Ok(out);
                    }
                    if position <= until {
                        out.push(position);
                    }
                }
            }
        }
    }
    Ok(out)
}

/// The tables of one write transaction, opened once per group commit.
pub struct WriteTables<'txn> {
    events: Table<'txn, u64, &'static [u8]>,
    ids: Table<'txn, u128, u64>,
    streams: Table<'txn, &'static str, (u64, u64)>,
    stream_extents: Table<'txn, (u64, u64), (u64, u64)>,
    categories: Table<'txn, &'static str, u64>,
    category_extents: Table<'txn, (u64, u64), (u64, u64)>,
    record: Vec<u8>,
}

impl<'txn> WriteTables<'txn> {
    pub fn open(txn: &'txn redb::WriteTransaction) -> Result<Self, StorageError> {
        Ok(Self {
            events: txn.open_table(EVENTS)?,
            ids: txn.open_table(EVENT_IDS)?,
            streams: txn.open_table(STREAMS)?,
            stream_extents: txn.open_table(STREAM_EXTENTS)?,
            categories: txn.open_table(CATEGORIES)?,
            category_extents: txn.open_table(CATEGORY_EXTENTS)?,
            record: Vec::new(),
        })
    }

    /// Checks `request` against the log as this transaction sees it and, if it passes, writes
    /// it after `*head`, advancing `*head`. A request that fails a check writes nothing.
    pub fn append(
        &mut self,
        request: &AppendRequest,
        head: &mut Position,
        recorded_at: u64,
    ) -> Result<AppendOutcome, AppendError> {
        let stream = request.stream.as_str();
        let state = self.streams.get(stream)?.map(|g| g.value());
        let len = state.map_or(0, |(_, len)| len);

        if let Some(outcome) = self.replayed(request)? {
            return Ok(outcome);
        }
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
            self.events.insert(position, self.record.as_slice())?;
            self.ids.insert(event.id.uuid().as_u128(), position)?;
        }
        let number = state.map_or(first_position, |(number, _)| number);
        self.streams.insert(stream, (number, len + count))?;
        self.stream_extents
            .insert((number, len), (first_position, count))?;
        if let Some(category) = request.stream.category() {
            let existing = self.categories.get(category)?.map(|g| g.value());
            let number = match existing {
                Some(number) => number,
                None => {
                    self.categories.insert(category, first_position)?;
                    first_position
                }
            };
            self.category_extents
                .insert((number, first_position), (first_position, count))?;
        }
        *head += count;
        Ok(AppendOutcome {
            first_position,
            first_revision: len,
            ids: request.events.iter().map(|e| e.id.uuid()).collect(),
            deduplicated: false,
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
