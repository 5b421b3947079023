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
    drain_within(slot, DRAIN);
}

fn drain_within<T>(slot: &ArcSwapOption<T>, limit: Duration) {
    let Some(taken) = slot.swap(None) else {
        return;
    };
    let old: Weak<T> = Arc::downgrade(&taken);
    // This function's own reference goes first, or it would always wait out the limit (it
    // did: a shadowed `Arc` lives to the end of its scope, so every reopen took 10 s).
    drop(taken);
    let started = Instant::now();
    while old.strong_count() > 0 && started.elapsed() < limit {
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_drain_ends_when_the_last_use_does_not_at_the_limit() {
        let slot = ArcSwapOption::from_pointee(7u32);
        // One use under way, ending shortly.
        let user = slot.load_full().unwrap();
        let ends = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            drop(user);
        });
        let start = Instant::now();
        drain_within(&slot, Duration::from_secs(300));
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the drain waited for its own reference"
        );
        assert!(slot.load().is_none());
        ends.join().unwrap();

        // Nothing in use: no wait at all beyond the check.
        let slot = ArcSwapOption::from_pointee(8u32);
        drain_within(&slot, Duration::from_secs(300));
        assert!(slot.load().is_none());
    }
}
