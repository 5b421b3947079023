//! Closing a storage handle that others may be using, so that its file can be opened again:
//! after an I/O error redb refuses a handle until the file is reopened, and a second handle
//! on the same file cannot be opened while the first lives. The log and the views both hold
//! their handle in an `ArcSwapOption`, and each use holds it for one read or commit.

use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;

/// How long [`take_and_drain`] waits for the uses under way (each is short).
const DRAIN: Duration = Duration::from_secs(10);

/// Takes the handle out of `slot` (new uses see none) and waits until the uses under way have
/// dropped it, so that it is closed, or until [`DRAIN`] passes. The caller must hold no clone.
pub fn take_and_drain<T>(slot: &ArcSwapOption<T>) {
    if let Some(old) = slot.swap(None) {
        let old: Weak<T> = Arc::downgrade(&old);
        let started = Instant::now();
        while old.strong_count() > 0 && started.elapsed() < DRAIN {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}
