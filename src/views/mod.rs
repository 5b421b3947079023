//! Projected views: one redb file per projection version, holding its documents and its
//! checkpoint. A batch's document changes and the new checkpoint commit in one transaction,
//! so a view never shows an event applied without its checkpoint or the other way round:
//! every event is applied exactly once, across crashes and restarts.
//!
//! Commits are not each fsync'd: a view is derived data, and redb rolls a file back to its
//! last durable commit after a crash, documents and checkpoint together, so the runner just
//! replays from there. The runner asks for a durable commit now and then ([`ViewStore::commit`])
//! and on shutdown.

use std::path::Path;
use std::sync::Arc;

use redb::{Database, Durability, ReadOnlyTable, ReadableDatabase, TableDefinition};

use crate::log::Position;
use crate::runtime::{Changes, ViewReader};

const DOCUMENTS: TableDefinition<&str, &[u8]> = TableDefinition::new("documents");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const CHECKPOINT: &str = "checkpoint";

#[derive(Debug, thiserror::Error)]
pub enum ViewError {
    #[error("view storage: {0}")]
    Redb(String),
    #[error("view storage at {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
}

macro_rules! from_redb {
    ($($t:ty),*) => {$(
        impl From<$t> for ViewError {
            fn from(e: $t) -> Self {
                ViewError::Redb(e.to_string())
            }
        }
    )*};
}
from_redb!(
    redb::Error,
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError,
    redb::SetDurabilityError
);

/// One document of a page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Document {
    pub key: String,
    pub value: Vec<u8>,
}

/// The storage of one projection version.
#[derive(Clone)]
pub struct ViewStore {
    db: Arc<Database>,
}

impl ViewStore {
    /// Opens (or creates) `<dir>/<name>/<version>.redb`.
    pub fn open(dir: &Path, name: &str, version: &str) -> Result<Self, ViewError> {
        let folder = dir.join(name);
        std::fs::create_dir_all(&folder).map_err(|source| ViewError::Io {
            path: folder.display().to_string(),
            source,
        })?;
        let path = folder.join(format!("{version}.redb"));
        let db = Database::builder()
            .set_cache_size(64 * 1024 * 1024)
            .create(&path)?;
        let txn = db.begin_write()?;
        txn.open_table(DOCUMENTS)?;
        txn.open_table(META)?;
        txn.commit()?;
        Ok(ViewStore { db: Arc::new(db) })
    }

    /// The position of the last event this view has applied (or skipped), 0 for none.
    pub fn checkpoint(&self) -> Result<Position, ViewError> {
        let txn = self.db.begin_read()?;
        let meta = txn.open_table(META)?;
        Ok(meta.get(CHECKPOINT)?.map_or(0, |g| g.value()))
    }

    /// Writes a batch's changes and its checkpoint in one transaction.
    pub fn commit(
        &self,
        changes: &Changes,
        checkpoint: Position,
        durable: bool,
    ) -> Result<(), ViewError> {
        let mut txn = self.db.begin_write()?;
        if !durable {
            txn.set_durability(Durability::None)?;
        }
        {
            let mut documents = txn.open_table(DOCUMENTS)?;
            for (key, value) in changes {
                match value {
                    Some(value) => documents.insert(key.as_str(), value.as_slice())?,
                    None => documents.remove(key.as_str())?,
                };
            }
            txn.open_table(META)?.insert(CHECKPOINT, checkpoint)?;
        }
        txn.commit()?;
        Ok(())
    }

    /// One document.
    pub fn get(&self, key: &str) -> Result<Option<Vec<u8>>, ViewError> {
        let txn = self.db.begin_read()?;
        let documents = txn.open_table(DOCUMENTS)?;
        Ok(documents.get(key)?.map(|g| g.value().to_vec()))
    }

    /// Up to `limit` documents whose key starts with `prefix`, after the key `after`, in key
    /// order, with the checkpoint they were read at.
    pub fn page(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<(Vec<Document>, Position), ViewError> {
        let txn = self.db.begin_read()?;
        let documents = txn.open_table(DOCUMENTS)?;
        let checkpoint = txn
            .open_table(META)?
            .get(CHECKPOINT)?
            .map_or(0, |g| g.value());
        let start = match after {
            Some(after) if after >= prefix => after,
            _ => prefix,
        };
        let mut out = Vec::new();
        for item in documents.range(start..)? {
            let (key, value) = item?;
            let key = key.value();
            if Some(key) == after {
                continue;
            }
            if !key.starts_with(prefix) || out.len() >= limit {
                break;
            }
            out.push(Document {
                key: key.to_owned(),
                value: value.value().to_vec(),
            });
        }
        Ok((out, checkpoint))
    }

    /// A reader for a guest's batch: `pending` (changes applied but not yet committed, being
    /// committed while this batch runs) over the committed documents. The snapshot is taken
    /// now, so it holds either none or all of `pending`; both read the same through it.
    pub fn reader(&self, pending: Arc<Changes>) -> Result<Box<dyn ViewReader>, ViewError> {
        let txn = self.db.begin_read()?;
        Ok(Box::new(Snapshot {
            pending,
            committed: txn.open_table(DOCUMENTS)?,
        }))
    }
}

struct Snapshot {
    pending: Arc<Changes>,
    committed: ReadOnlyTable<&'static str, &'static [u8]>,
}

impl ViewReader for Snapshot {
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, String> {
        if let Some(pending) = self.pending.get(key) {
            return Ok(pending.clone());
        }
        self.committed
            .get(key)
            .map(|g| g.map(|g| g.value().to_vec()))
            .map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn changes(pairs: &[(&str, Option<&str>)]) -> Changes {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.map(|v| v.as_bytes().to_vec())))
            .collect()
    }

    #[test]
    fn commits_documents_with_the_checkpoint_and_pages_by_prefix() {
        let dir = tempfile::tempdir().unwrap();
        let view = ViewStore::open(dir.path(), "p", "v1").unwrap();
        assert_eq!(view.checkpoint().unwrap(), 0);
        view.commit(
            &changes(&[
                ("order/1", Some("1")),
                ("order/2", Some("2")),
                ("order/3", Some("3")),
                ("user/1", Some("u")),
            ]),
            7,
            false,
        )
        .unwrap();
        view.commit(&changes(&[("order/2", None)]), 9, true)
            .unwrap();
        assert_eq!(view.checkpoint().unwrap(), 9);
        assert_eq!(view.get("order/1").unwrap(), Some(b"1".to_vec()));
        assert_eq!(view.get("order/2").unwrap(), None);
        let (page, at) = view.page("order/", None, 1).unwrap();
        assert_eq!((page[0].key.as_str(), at), ("order/1", 9));
        let (page, _) = view.page("order/", Some("order/1"), 10).unwrap();
        assert_eq!(
            page.iter().map(|d| d.key.as_str()).collect::<Vec<_>>(),
            ["order/3"]
        );
        let (page, _) = view.page("", Some("order/3"), 10).unwrap();
        assert_eq!(
            page.iter().map(|d| d.key.as_str()).collect::<Vec<_>>(),
            ["user/1"]
        );
        drop(view);
        let reopened = ViewStore::open(dir.path(), "p", "v1").unwrap();
        assert_eq!(reopened.checkpoint().unwrap(), 9);
    }
}
