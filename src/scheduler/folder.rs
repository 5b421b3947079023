//! The projections folder: which files are projections, and following changes to it.
//!
//! File events arrive from `notify` in bursts (a `cp` of a large file is many writes), so a
//! name is acted on only once its file has been quiet for [`QUIET`]. Acting means asking the
//! registry to reconcile that one name with the file as it is then; a half-written file that
//! slips through is reported as invalid and picked up again at its next write, and the
//! running version keeps running meanwhile.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Weak;
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use notify::{RecommendedWatcher, RecursiveMode, Watcher};

use super::{SchedulerError, Shared};

/// How long a file must go unchanged before it is deployed.
const QUIET: Duration = Duration::from_millis(200);

/// Follows the folder until dropped.
pub struct FolderWatch {
    watcher: Option<RecommendedWatcher>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for FolderWatch {
    fn drop(&mut self) {
        // Dropping the watcher closes the channel, which ends the thread.
        drop(self.watcher.take());
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            tracing::error!("the projections folder watcher panicked");
        }
    }
}

/// Starts following `folder`. The thread holds the registry weakly: it never keeps the
/// projections (and their open views) alive.
pub fn watch(folder: &Path, shared: Weak<Shared>) -> Result<FolderWatch, SchedulerError> {
    let error = |e: notify::Error| SchedulerError::Watch {
        path: folder.display().to_string(),
        message: e.to_string(),
    };
    let (events, received) = channel();
    let mut watcher = notify::recommended_watcher(move |event| {
        let _ = events.send(event);
    })
    .map_err(error)?;
    watcher
        .watch(folder, RecursiveMode::NonRecursive)
        .map_err(error)?;
    let thread = std::thread::Builder::new()
        .name("projections-folder".into())
        .spawn(move || debounce(&received, &shared))
        .map_err(SchedulerError::Thread)?;
    Ok(FolderWatch {
        watcher: Some(watcher),
        thread: Some(thread),
    })
}

fn debounce(events: &Receiver<notify::Result<notify::Event>>, shared: &Weak<Shared>) {
    let mut due: HashMap<String, Instant> = HashMap::new();
    let mut everything_due: Option<Instant> = None;
    loop {
        let next = due.values().chain(&everything_due).min().copied();
        let wait = next.map_or(Duration::from_secs(3600), |t| {
            t.saturating_duration_since(Instant::now())
        });
        match events.recv_timeout(wait) {
            // Reads of a file (ours included) change nothing.
            Ok(Ok(event)) if event.kind.is_access() => {}
            Ok(Ok(event)) => {
                if event.need_rescan() {
                    everything_due = Some(Instant::now() + QUIET);
                }
                for name in event.paths.iter().filter_map(|p| projection_name(p)) {
                    due.insert(name, Instant::now() + QUIET);
                }
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "watching the projections folder; reading it again");
                everything_due = Some(Instant::now() + QUIET);
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return,
        }
        let now = Instant::now();
        let ready: Vec<String> = due
            .iter()
            .filter(|(_, t)| **t <= now)
            .map(|(name, _)| name.clone())
            .collect();
        let rescan = everything_due.is_some_and(|t| t <= now);
        if ready.is_empty() && !rescan {
            continue;
        }
        let Some(shared) = shared.upgrade() else {
            return;
        };
        for name in ready {
            due.remove(&name);
            shared.deploy(&name);
        }
        if rescan {
            everything_due = None;
            if let Err(e) = shared.reconcile() {
                tracing::error!(error = %e, "reading the projections folder");
            }
        }
    }
}

/// The projection a path in the folder names: `<name>.wasm` with a valid name.
fn projection_name(path: &Path) -> Option<String> {
    if path.extension()? != "wasm" {
        return None;
    }
    let name = path.file_stem()?.to_str()?;
    valid_name(name).then(|| name.to_owned())
}

/// The `<name>.wasm` files in the folder, by name.
pub fn wasm_files(folder: &Path) -> Result<Vec<(String, PathBuf)>, SchedulerError> {
    let error = |source| SchedulerError::Folder {
        path: folder.display().to_string(),
        source,
    };
    let mut files = Vec::new();
    for entry in std::fs::read_dir(folder).map_err(error)? {
        let path = entry.map_err(error)?.path();
        if !path.is_file() {
            continue;
        }
        match projection_name(&path) {
            Some(name) => files.push((name, path)),
            None if path.extension().is_some_and(|e| e == "wasm") => {
                tracing::warn!(file = %path.display(), "ignored: a projection name is 1 to 64 of a-z, 0-9, - and _");
            }
            None => {}
        }
    }
    files.sort();
    Ok(files)
}

/// Projection names appear in URLs and file names: keep them plain.
pub fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}
