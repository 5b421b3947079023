//! The write side of a partition: a group's requests checked and staged ([`Staged`]), then
//! written into one write transaction's tables ([`WriteTables`]), and the stream lengths the
//! writer checks expected revisions against ([`StreamLengths`]).

use std::collections::HashMap;
use std::sync::Arc;

use redb::{ReadableTable, Table, WriteTransaction};
use uuid::Uuid;

use super::{Extent, FlushPolicy, INDEXED_THROUGH, Partition};
use crate::log::codec;
use crate::log::error::{AppendError, StorageError};
use crate::log::types::{AppendOutcome, AppendRequest, EventId, Position, category_of};
use crate::log::wal;

/// The writer's knowledge of stream lengths beyond the index tables: the length of every
/// stream with extents in the tail, and of those the current group appended to.
#[derive(Default)]
pub struct StreamLengths {
    committed: HashMap<String, u64>,
    group: HashMap<String, u64>,
}

impl StreamLengths {
    /// A committed stream's length, found when the tail is rebuilt on open.
    pub(super) fn set_committed(&mut self, stream: &str, length: u64) {
        self.committed.insert(stream.to_owned(), length);
    }

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
