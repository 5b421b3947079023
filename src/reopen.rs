//! Closing a storage handle that others may be using, so that its file can be opened again:
//! after an I/O error redb refuses a handle until the file is reopened, and a second handle
//! on the same file cannot be opened while the first lives. The log and the views both hold
//! their handle in an `ArcSwapOption`, and each use holds it for one read or commit.

use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;

/// How long [`take_and_drain`] waits for the uses under way (each is short).
const DRAIN: Duration = Duration::from_secs(10);

/// Takes the handle out of `slot` (new uses see none) and waits until the uses under way have
/// dropped it, or until [`DRAIN`] passes, then drops it: when this returns within the limit,
/// the handle is closed (past it, a use still under way closes it as it ends). The caller
/// must hold no clone.
pub fn take_and_drain<T>(slot: &ArcSwapOption<T>) {
    drain_within(slot, DRAIN);
}

fn drain_within<T>(slot: &ArcSwapOption<T>, limit: Duration) {
    let Some(taken) = slot.swap(None) else {
        return;
    };
    // Waits until this is the last reference (no one else holds one to clone), then drops it
    // here, so that the handle's own drop (for redb: its last write and the file lock's
    // release) has finished when this returns. Waiting instead for a `Weak` to count zero
    // returned while the last user's thread was still inside that drop, and opening the file
    // again then failed as "already open".
    let started = Instant::now();
    while Arc::strong_count(&taken) > 1 && started.elapsed() < limit {
        std::thread::sleep(Duration::from_millis(1));
    }
    drop(taken);
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};

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

        // The last user's drop is slow (as redb's is: a write and a lock's release): the drain
        // returns only once it has finished.
        struct SlowToClose(Arc<AtomicBool>);
        impl Drop for SlowToClose {
            fn drop(&mut self) {
                std::thread::sleep(Duration::from_millis(50));
                self.0.store(true, Ordering::SeqCst);
            }
        }
        let closed = Arc::new(AtomicBool::new(false));
        let slot = ArcSwapOption::from_pointee(SlowToClose(closed.clone()));
        let user = slot.load_full().unwrap();
        let ends = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            drop(user);
        });
        drain_within(&slot, Duration::from_secs(300));
        assert!(
            closed.load(Ordering::SeqCst),
            "the drain returned before the handle closed"
        );
        ends.join().unwrap();

        // Nothing in use: no wait at all beyond the check.
        let slot = ArcSwapOption::from_pointee(8u32);
        drain_within(&slot, Duration::from_secs(300));
        assert!(slot.load().is_none());
    }
}
