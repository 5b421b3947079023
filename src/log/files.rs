//! The log's open database, and reopening it after an I/O failure.
//!
//! After one failed write redb refuses every later operation on that handle (`PreviousIo`)
//! until the file is opened again, so a full disk would otherwise stop the log until a
//! restart. The writer reopens the file after any I/O failure; readers take the current
//! handle for the length of one read, so the old one closes as soon as they are done.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwapOption;

use super::error::StorageError;
use super::store::{FlushPolicy, Lengths, Store};

/// The log's database, swapped for a fresh handle after an I/O failure.
pub struct LogFiles {
    path: PathBuf,
    policy: FlushPolicy,
    /// `None` while a reopen is under way or failed; readers then get
    /// [`StorageError::Unavailable`]. Written only by the writer thread (and `open`).
    store: ArcSwapOption<Store>,
}

impl LogFiles {
    pub fn open(path: &Path, policy: FlushPolicy) -> Result<(Arc<Self>, Lengths), StorageError> {
        let (store, lengths) = Store::open(path, policy)?;
        let files = LogFiles {
            path: path.to_owned(),
            policy,
            store: ArcSwapOption::from_pointee(store),
        };
        Ok((Arc::new(files), lengths))
    }

    /// The log file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The open handle, held for one read or one commit.
    pub fn current(&self) -> Result<Arc<Store>, StorageError> {
        self.store.load_full().ok_or(StorageError::Unavailable)
    }

    /// Whether a handle is open.
    pub fn is_open(&self) -> bool {
        self.store.load().is_some()
    }

    /// Closes the current handle (once the reads under way on it end) and opens the file
    /// again, which rolls it back to its last commit. The caller must hold no handle.
    pub fn reopen(&self) -> Result<(Arc<Store>, Lengths), StorageError> {
        crate::reopen::take_and_drain(&self.store);
        crate::failpoint::failpoint!("log-reopen", |arg| Err(StorageError::io(
            crate::failpoint::io_error(arg)
        )));
        let (store, lengths) = Store::open(&self.path, self.policy)?;
        let store = Arc::new(store);
        self.store.store(Some(store.clone()));
        Ok((store, lengths))
    }
}
