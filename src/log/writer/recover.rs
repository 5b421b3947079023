//! After a failure: reopening the file, the write-ahead segment with it, and health.

use super::{Unsettled, Writer};
use crate::log::LogHealth;
use crate::log::error::StorageError;
use crate::log::store::Store;
use crate::log::wal::{self, Wal};

impl Writer {
    /// Whether the reopened file holds `unsettled` (every account it wrote at the head its
    /// commit would have reached), made durable here: then its answers are true. The writer
    /// is the only one writing, so nothing else moved those heads.
    pub(super) fn landed(&self, unsettled: &Unsettled) -> bool {
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

    /// Reopens the file after a failure and takes the heads and stream lengths from what it
    /// holds. A commit that failed after reaching the disk is found there, not lost.
    pub(super) fn reopen(&mut self) -> Result<(), StorageError> {
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
    pub(super) fn open_wal(&mut self, store: &Store) {
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
    pub(super) fn failing(&self, e: &StorageError, reason: &str) {
        self.health.send_replace(match e {
            StorageError::DiskFull => LogHealth::DiskFull,
            _ => LogHealth::Unavailable {
                reason: reason.to_owned(),
            },
        });
    }
}
