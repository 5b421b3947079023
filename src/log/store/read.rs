//! Reads of a partition: a source's events in a range, from a redb snapshot and the index
//! tail that goes with it (see the parent module for the layout).

use std::ops::RangeInclusive;

use redb::{ReadTransaction, ReadableDatabase};

use super::{Partition, Store, indexed_through};
use crate::log::codec;
use crate::log::error::StorageError;
use crate::log::types::{Direction, EventRef, Position, RecordedEvent, Source, StreamName};

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
