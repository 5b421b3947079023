//! Projected views: one redb file per projection version, holding its documents and its
//! checkpoint. A batch's document changes and the new checkpoint commit in one transaction,
//! so a view never shows an event applied without its checkpoint or the other way round:
//! every event is applied exactly once, across crashes and restarts.
//!
//! Commits are not each fsync'd: a view is derived data, and redb rolls a file back to its
//! last durable commit after a crash, documents and checkpoint together, so the runner just
//! replays from there. The runner asks for a durable commit now and then ([`ViewStore::commit`])
//! and on shutdown.

mod cache;
pub mod feed;
mod quota;

pub use feed::ChangeFeed;
pub use quota::{OverQuota, Quota};

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use arc_swap::ArcSwapOption;
use bytes::Bytes;
use parking_lot::Mutex;
use redb::{Database, Durability, ReadOnlyTable, ReadableDatabase, ReadableTable, TableDefinition};

use crate::log::Position;
use crate::runtime::{Changes, ViewReader};

const DOCUMENTS: TableDefinition<&str, &[u8]> = TableDefinition::new("documents");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// Events an operator skipped, by position: what the view is missing, and why.
const SKIPPED: TableDefinition<u64, &[u8]> = TableDefinition::new("skipped");
const CHECKPOINT: &str = "checkpoint";

#[derive(Debug, thiserror::Error)]
pub enum ViewError {
    #[error("view storage: {0}")]
    Redb(#[from] redb::Error),
    #[error("view storage at {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    /// The file failed and is being reopened.
    #[error("view storage is unavailable after a failure; it is being reopened")]
    Unavailable,
}

impl ViewError {
    /// An I/O failure: redb refuses the handle until the file is reopened.
    fn is_io(&self) -> bool {
        matches!(
            self,
            ViewError::Redb(redb::Error::Io(_) | redb::Error::PreviousIo)
        )
    }

    /// The disk (or quota) is full.
    pub fn is_disk_full(&self) -> bool {
        match self {
            ViewError::Redb(redb::Error::Io(e)) | ViewError::Io { source: e, .. } => {
                crate::log::is_disk_full(e)
            }
            _ => false,
        }
    }
}

from_redb!(
    ViewError:
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

/// Where every projection keeps its views: `<root>/<name>/<storage>.redb`, one file per
/// version being run, and `<root>/<name>/CURRENT` naming the storage that answers queries.
/// A storage is named by its version hash, with `-<n>` added for a rebuild of the same
/// version. `CURRENT` is replaced atomically when a rebuilt version is swapped in, so a crash
/// at any point leaves one serving storage to resume from.
#[derive(Clone, Debug)]
pub struct ViewDir {
    root: PathBuf,
}

const CURRENT: &str = "CURRENT";

impl ViewDir {
    pub fn new(root: &Path) -> Self {
        ViewDir {
            root: root.to_owned(),
        }
    }

    pub fn open(&self, name: &str, storage: &str) -> Result<ViewStore, ViewError> {
        ViewStore::open(&self.root, name, storage)
    }

    /// The names that have storage.
    pub fn names(&self) -> Vec<String> {
        entries(&self.root)
            .filter(|p| p.is_dir())
            .filter_map(|p| Some(p.file_name()?.to_str()?.to_owned()))
            .collect()
    }

    /// The storages of `name`, serving or not.
    pub fn storages(&self, name: &str) -> Vec<String> {
        entries(&self.root.join(name))
            .filter(|p| p.extension().is_some_and(|e| e == "redb"))
            .filter_map(|p| Some(p.file_stem()?.to_str()?.to_owned()))
            .collect()
    }

    /// The storage that answers `name`'s queries, if one was recorded.
    pub fn current(&self, name: &str) -> Option<String> {
        let text = std::fs::read_to_string(self.root.join(name).join(CURRENT)).ok()?;
        Some(text.trim().to_owned()).filter(|s| !s.is_empty())
    }

    /// Records `storage` as the one answering `name`'s queries: written aside, synced, and
    /// renamed over the previous record.
    pub fn set_current(&self, name: &str, storage: &str) -> Result<(), ViewError> {
        let folder = self.root.join(name);
        let io = |source| ViewError::Io {
            path: folder.display().to_string(),
            source,
        };
        std::fs::create_dir_all(&folder).map_err(io)?;
        crate::failpoint::failpoint!("view-current", |arg| Err(io(crate::failpoint::io_error(
            arg
        ))));
        let partial = folder.join("CURRENT.partial");
        {
            use std::io::Write;
            let mut file = std::fs::File::create(&partial).map_err(io)?;
            file.write_all(storage.as_bytes()).map_err(io)?;
            file.sync_all().map_err(io)?;
        }
        std::fs::rename(&partial, folder.join(CURRENT)).map_err(io)?;
        std::fs::File::open(&folder)
            .and_then(|dir| dir.sync_all())
            .map_err(io)
    }

    /// A storage name for a new build of `version` that no file uses yet.
    pub fn fresh_storage(&self, name: &str, version: &str) -> String {
        let taken = self.storages(name);
        std::iter::once(version.to_owned())
            .chain((1..).map(|n| format!("{version}-{n}")))
            .find(|s| !taken.contains(s))
            .expect("an unused name")
    }

    /// Deletes one storage. A handle still open elsewhere keeps reading the unlinked file.
    pub fn remove(&self, name: &str, storage: &str) -> Result<(), ViewError> {
        let path = self.root.join(name).join(format!("{storage}.redb"));
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(ViewError::Io {
                path: path.display().to_string(),
                source: e,
            }),
            _ => Ok(()),
        }
    }

    /// Deletes everything `name` stored.
    pub fn remove_all(&self, name: &str) -> Result<(), ViewError> {
        let path = self.root.join(name);
        match std::fs::remove_dir_all(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(ViewError::Io {
                path: path.display().to_string(),
                source: e,
            }),
            _ => Ok(()),
        }
    }
}

fn entries(dir: &Path) -> impl Iterator<Item = PathBuf> {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok().map(|e| e.path()))
}

/// The storage of one projection version: a cheap handle, shared by the worker that commits
/// and the HTTP reads.
#[derive(Clone)]
pub struct ViewStore {
    file: Arc<ViewFile>,
}

struct ViewFile {
    path: PathBuf,
    /// The open handle; `None` only while it is being reopened. Each use holds it for one
    /// read or commit, so that a reopen can close it.
    db: ArcSwapOption<Database>,
    /// Set by an I/O failure: redb refuses the handle until the file is reopened, which the
    /// next use does first.
    failed: AtomicBool,
    /// Held by the one thread reopening the file; taken with no other lock held.
    reopening: Mutex<()>,
    /// Documents read lately, for point reads (see `cache`).
    cache: cache::DocumentCache,
}

impl ViewStore {
    /// Opens (or creates) `<dir>/<name>/<storage>.redb`.
    fn open(dir: &Path, name: &str, storage: &str) -> Result<Self, ViewError> {
        let folder = dir.join(name);
        std::fs::create_dir_all(&folder).map_err(|source| ViewError::Io {
            path: folder.display().to_string(),
            source,
        })?;
        let path = folder.join(format!("{storage}.redb"));
        let db = open_database(&path)?;
        Ok(ViewStore {
            file: Arc::new(ViewFile {
                path,
                db: ArcSwapOption::from_pointee(db),
                failed: AtomicBool::new(false),
                reopening: Mutex::new(()),
                cache: cache::DocumentCache::default(),
            }),
        })
    }

    /// The handle for one operation, reopened first after a failure.
    fn db(&self) -> Result<Arc<Database>, ViewError> {
        if self.file.failed.load(Ordering::Acquire) {
            self.reopen()?;
        }
        self.file.db.load_full().ok_or(ViewError::Unavailable)
    }

    /// Notes an I/O failure, so that the next use reopens the file.
    fn check<T>(&self, result: Result<T, ViewError>) -> Result<T, ViewError> {
        if let Err(e) = &result
            && e.is_io()
        {
            self.file.failed.store(true, Ordering::Release);
        }
        result
    }

    /// Closes the failed handle once the reads on it end, and opens the file again: it rolls
    /// back to its last durable commit, documents and checkpoint together.
    fn reopen(&self) -> Result<(), ViewError> {
        let _reopening = self.file.reopening.lock();
        if !self.file.failed.load(Ordering::Acquire) {
            return Ok(());
        }
        crate::reopen::take_and_drain(&self.file.db);
        let db = open_database(&self.file.path)?;
        self.file.db.store(Some(Arc::new(db)));
        self.file.cache.clear();
        self.file.failed.store(false, Ordering::Release);
        tracing::info!(path = %self.file.path.display(), "a view was reopened after a failure");
        Ok(())
    }

    /// The position of the last event this view has applied (or skipped), 0 for none.
    pub fn checkpoint(&self) -> Result<Position, ViewError> {
        self.check((|| {
            let txn = self.db()?.begin_read()?;
            let meta = txn.open_table(META)?;
            Ok(meta.get(CHECKPOINT)?.map_or(0, |g| g.value()))
        })())
    }

    /// Steps the checkpoint past the event at `position` without applying it, and records
    /// `why` for it, in one durable transaction.
    pub fn skip(&self, position: Position, why: &[u8]) -> Result<(), ViewError> {
        self.check((|| {
            let txn = self.db()?.begin_write()?;
            {
                txn.open_table(SKIPPED)?.insert(position, why)?;
                txn.open_table(META)?.insert(CHECKPOINT, position)?;
            }
            txn.commit()?;
            Ok(())
        })())
    }

    /// What [`ViewStore::skip`] recorded, by position.
    pub fn skipped(&self) -> Result<Vec<Vec<u8>>, ViewError> {
        self.check((|| {
            let txn = self.db()?.begin_read()?;
            let table = txn.open_table(SKIPPED)?;
            let mut out = Vec::new();
            for item in table.iter()? {
                out.push(item?.1.value().to_vec());
            }
            Ok(out)
        })())
    }

    /// Writes a batch's changes and its checkpoint in one transaction.
    pub fn commit(
        &self,
        changes: &Changes,
        checkpoint: Position,
        durable: bool,
    ) -> Result<(), ViewError> {
        self.check((|| {
            let mut txn = self.db()?.begin_write()?;
            if !durable {
                txn.set_durability(Durability::None)?;
            }
            {
                let mut documents = txn.open_table(DOCUMENTS)?;
                let mut sorted: Vec<_> = changes.iter().collect();
                sorted.sort_unstable_by(|a, b| a.0.cmp(b.0));
                for (key, value) in sorted {
                    match value {
                        Some(value) => documents.insert(key.as_str(), value.as_slice())?,
                        None => documents.remove(key.as_str())?,
                    };
                }
                txn.open_table(META)?.insert(CHECKPOINT, checkpoint)?;
            }
            crate::failpoint::failpoint!("view-commit", |arg| Err(ViewError::Redb(
                redb::Error::Io(crate::failpoint::io_error(arg))
            )));
            let committed = txn.commit();
            // Whatever the outcome: a failed commit leads to a reopen, which clears it anyway.
            self.file.cache.committed(changes);
            committed?;
            Ok(())
        })())
    }

    /// One document, read from the file; kept in the view's cache for the next read.
    pub fn get(&self, key: &str) -> Result<Option<Bytes>, ViewError> {
        self.check((|| {
            let version = self.file.cache.version();
            let txn = self.db()?.begin_read()?;
            let documents = txn.open_table(DOCUMENTS)?;
            let value = documents
                .get(key)?
                .map(|g| Bytes::copy_from_slice(g.value()));
            if let Some(value) = &value {
                self.file.cache.fill(version, key, value.clone());
            }
            Ok(value)
        })())
    }

    /// One document, if the view's cache holds it: no I/O, so it may be called on the
    /// reactor. `None` says nothing of the file: read it with [`ViewStore::get`].
    pub fn cached(&self, key: &str) -> Option<Bytes> {
        self.file.cache.get(key)
    }

    /// Up to `limit` documents whose key starts with `prefix`, after the key `after`, in key
    /// order, with the checkpoint they were read at.
    pub fn page(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<(Vec<Document>, Position), ViewError> {
        self.check(self.read_page(prefix, after, limit))
    }

    fn read_page(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<(Vec<Document>, Position), ViewError> {
        let txn = self.db()?.begin_read()?;
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

    /// A reader for a guest's batch: `pending` (changes applied but not yet committed, newest
    /// first, some perhaps being committed while this batch runs) over the committed
    /// documents. Sets commit oldest first and the snapshot is taken now, so it holds some
    /// oldest of them or none; the layers read the same over either.
    pub fn reader(&self, pending: Vec<Arc<Changes>>) -> Result<Box<dyn ViewReader>, ViewError> {
        self.check((|| {
            let txn = self.db()?.begin_read()?;
            let reader: Box<dyn ViewReader> = Box::new(Snapshot {
                pending,
                committed: txn.open_table(DOCUMENTS)?,
            });
            Ok(reader)
        })())
    }
}

/// redb's page cache of one view file. Two are open for a projection while it rebuilds, and
/// the hot documents are in the document cache besides: 64 MiB each made the server's peak
/// RSS during a 1M-event rebuild 324 MiB, 16 MiB made it 221 MiB, with the rebuild's time
/// and view GETs over all 213,000 documents unchanged within the noise (BENCHMARKS.md).
const CACHE_BYTES: usize = 16 * 1024 * 1024;

/// Opens (or creates) a view's file with its tables.
fn open_database(path: &Path) -> Result<Database, ViewError> {
    let db = Database::builder()
        .set_cache_size(CACHE_BYTES)
        .create(path)?;
    let exists = db
        .begin_read()?
        .list_tables()?
        .any(|t| redb::TableHandle::name(&t) == "skipped");
    if !exists {
        let txn = db.begin_write()?;
        txn.open_table(DOCUMENTS)?;
        txn.open_table(META)?;
        txn.open_table(SKIPPED)?;
        txn.commit()?;
    }
    Ok(db)
}

struct Snapshot {
    pending: Vec<Arc<Changes>>,
    committed: ReadOnlyTable<&'static str, &'static [u8]>,
}

impl ViewReader for Snapshot {
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, String> {
        if let Some(pending) = self.pending.iter().find_map(|layer| layer.get(key)) {
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
        assert_eq!(view.get("order/1").unwrap().as_deref(), Some(&b"1"[..]));
        assert_eq!(view.cached("order/1").as_deref(), Some(&b"1"[..]));
        // A commit replaces what a read cached.
        view.commit(&changes(&[("order/1", Some("one"))]), 9, false)
            .unwrap();
        assert_eq!(view.cached("order/1"), None);
        assert_eq!(view.get("order/1").unwrap().as_deref(), Some(&b"one"[..]));
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

    #[test]
    fn names_storages_and_records_the_serving_one() {
        let dir = tempfile::tempdir().unwrap();
        let views = ViewDir::new(dir.path());
        assert_eq!(views.current("p"), None);
        assert_eq!(views.fresh_storage("p", "abc"), "abc");
        views.open("p", "abc").unwrap();
        assert_eq!(views.fresh_storage("p", "abc"), "abc-1");
        views.open("p", "abc-1").unwrap();
        views.set_current("p", "abc-1").unwrap();
        assert_eq!(views.current("p").as_deref(), Some("abc-1"));
        let mut storages = views.storages("p");
        storages.sort();
        assert_eq!(storages, ["abc", "abc-1"]);
        views.remove("p", "abc").unwrap();
        views.remove("p", "abc").unwrap();
        assert_eq!(views.storages("p"), ["abc-1"]);
        assert_eq!(views.names(), ["p"]);
        views.remove_all("p").unwrap();
        assert!(views.names().is_empty());
    }
}
