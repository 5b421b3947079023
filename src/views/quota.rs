//! An account's view storage, measured against its limit: the bytes of every file under the
//! account's views folder (all projections, serving and rebuilding versions).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// How stale a measurement may be before the next check walks the folder again.
const MEASURE_EVERY: Duration = Duration::from_secs(1);

/// No limit.
const UNLIMITED: u64 = u64::MAX;

pub struct Quota {
    dir: PathBuf,
    /// The limit in bytes; [`UNLIMITED`] for none.
    limit: AtomicU64,
    /// Bytes found by the last measurement.
    used: AtomicU64,
    /// When the last measurement started. Guards only the decision to measure (one thread
    /// measures, the others take the last figure); released before the walk.
    measured_at: Mutex<Option<Instant>>,
}

/// Storage over its limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OverQuota {
    pub used: u64,
    pub limit: u64,
}

impl std::fmt::Display for OverQuota {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the account's views take {} bytes, at or over its limit of {} bytes",
            self.used, self.limit
        )
    }
}

impl Quota {
    pub fn new(dir: &Path, limit: Option<u64>) -> Self {
        Quota {
            dir: dir.to_owned(),
            limit: AtomicU64::new(limit.unwrap_or(UNLIMITED)),
            used: AtomicU64::new(0),
            measured_at: Mutex::new(None),
        }
    }

    pub fn set_limit(&self, limit: Option<u64>) {
        self.limit
            .store(limit.unwrap_or(UNLIMITED), Ordering::Relaxed);
        // Measure again at the next check.
        *self.measured_at.lock() = None;
    }

    /// Whether the views are at or over the limit. Blocking: walks the folder when the last
    /// measurement is over a second old.
    pub fn exceeded(&self) -> Option<OverQuota> {
        let limit = self.limit.load(Ordering::Relaxed);
        if limit == UNLIMITED {
            return None;
        }
        let used = self.used();
        (used >= limit).then_some(OverQuota { used, limit })
    }

    /// The bytes the views take, measured at most every [`MEASURE_EVERY`].
    pub fn used(&self) -> u64 {
        let measure = {
            let mut at = self.measured_at.lock();
            let due = at.is_none_or(|t| t.elapsed() >= MEASURE_EVERY);
            if due {
                *at = Some(Instant::now());
            }
            due
        };
        if measure {
            self.used.store(bytes_under(&self.dir), Ordering::Relaxed);
        }
        self.used.load(Ordering::Relaxed)
    }
}

/// The bytes of every file under `dir` (0 when it does not exist).
fn bytes_under(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|entry| match entry.file_type() {
            Ok(t) if t.is_dir() => bytes_under(&entry.path()),
            Ok(_) => entry.metadata().map_or(0, |m| m.len()),
            Err(_) => 0,
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_limit_is_exceeded_once_the_files_reach_it() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("a")).unwrap();
        std::fs::write(dir.path().join("a/v.redb"), vec![0u8; 1000]).unwrap();
        let quota = Quota::new(dir.path(), None);
        assert_eq!(quota.exceeded(), None);
        quota.set_limit(Some(1500));
        assert_eq!(quota.exceeded(), None);
        std::fs::write(dir.path().join("b.redb"), vec![0u8; 600]).unwrap();
        quota.set_limit(Some(1500));
        assert_eq!(
            quota.exceeded(),
            Some(OverQuota {
                used: 1600,
                limit: 1500
            })
        );
    }
}
