//! The log's error boundary: what callers of append and read can get back.

use uuid::Uuid;

use super::types::{ExpectedRevision, MAX_EVENT_BYTES, MAX_EVENTS_PER_APPEND, MAX_JSON_DEPTH};

/// A request the log refuses before looking at storage.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum InvalidAppend {
    #[error("{0}")]
    StreamName(String),
    #[error("{0}")]
    EventType(String),
    #[error("an append needs at least one event")]
    Empty,
    #[error("{count} events in one append, the limit is {MAX_EVENTS_PER_APPEND}")]
    TooManyEvents { count: usize },
    #[error("an event's data and metadata are {size} bytes, the limit is {MAX_EVENT_BYTES}")]
    EventTooLarge { size: usize },
    #[error("event id {0} appears twice in one append")]
    RepeatedId(Uuid),
    #[error(
        "an event's data or metadata nests arrays and objects deeper than {MAX_JSON_DEPTH} levels"
    )]
    TooDeep,
}

/// Why an append was not accepted. Nothing of a failed request is written.
#[derive(Debug, thiserror::Error)]
pub enum AppendError {
    #[error(transparent)]
    Invalid(#[from] InvalidAppend),
    #[error(
        "stream {stream} expected revision {expected}, but its current revision is {}",
        current.map_or_else(|| "none (no stream)".to_owned(), |r| r.to_string())
    )]
    WrongExpectedRevision {
        stream: String,
        expected: ExpectedRevision,
        /// The revision of the stream's last event; `None` when the stream has no events.
        current: Option<u64>,
    },
    #[error(
        "event id {id} is already stored at position {position}, and the request is not a retry of that append"
    )]
    IdConflict { id: Uuid, position: u64 },
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("the log is shut down")]
    Closed,
    /// The writer thread died; nothing can be appended until the server restarts.
    #[error("the log writer failed: {0}")]
    WriterFailed(String),
}

/// The storage engine failed, or the file holds something this version cannot read.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("storage: {0}")]
    Redb(#[from] redb::Error),
    #[error("corrupt record at position {position}: {reason}")]
    Corrupt { position: u64, reason: &'static str },
    /// A failure already reported elsewhere, passed on to every request it affected.
    #[error("{0}")]
    Failed(String),
    #[error("opening {path}: {source}")]
    Open {
        path: String,
        source: std::io::Error,
    },
    /// The disk (or the user's quota) is full: nothing was written.
    #[error("the disk is full")]
    DiskFull,
    /// The storage failed and is being reopened; try again shortly.
    #[error("the storage is unavailable after a failure; it is being reopened")]
    Unavailable,
}

impl StorageError {
    pub fn io(e: std::io::Error) -> Self {
        Self::Redb(redb::Error::Io(e))
    }

    /// An I/O failure, after which redb refuses the handle until the file is reopened.
    pub fn is_io(&self) -> bool {
        matches!(
            self,
            Self::Redb(redb::Error::Io(_) | redb::Error::PreviousIo) | Self::DiskFull
        )
    }

    /// The same failure, named [`StorageError::DiskFull`] when it is one.
    pub fn classify(self) -> Self {
        match &self {
            Self::Redb(redb::Error::Io(e)) if is_disk_full(e) => Self::DiskFull,
            _ => self,
        }
    }
}

/// ENOSPC or EDQUOT.
pub fn is_disk_full(e: &std::io::Error) -> bool {
    e.kind() == std::io::ErrorKind::StorageFull
        || matches!(e.raw_os_error(), Some(libc::ENOSPC | libc::EDQUOT))
}

from_redb!(
    StorageError:
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);

impl From<redb::StorageError> for AppendError {
    fn from(e: redb::StorageError) -> Self {
        Self::Storage(e.into())
    }
}
