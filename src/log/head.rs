//! Each account's head: the position of its last durable event, published by the syncer after
//! the frames holding it are durable.
//!
//! Two kinds of watcher follow a head. Tasks (live subscriptions, the broker's fan-out) await
//! its watch channel. Threads (the projection workers) register a [`HeadListener`] instead,
//! called on the publishing thread (the syncer; the writer when a reopen resets the head)
//! right after the head moves: a worker is then woken straight from the syncer, not through a
//! task on the runtime, which would cost a second thread wake-up per append on a machine with
//! few cores.

use std::collections::HashMap;
use std::sync::{Arc, Weak};

use parking_lot::{Mutex, RwLock};
use tokio::sync::watch;

use super::types::Position;

/// What a listener runs: cheap and non-blocking (it runs on the syncer's thread, between two
/// fdatasyncs), taking no lock that is held across I/O.
pub type OnMove = dyn Fn() + Send + Sync;

/// One account's head.
pub struct Head {
    watch: watch::Sender<Position>,
    /// Guards the list only. Read (shared) while the listeners are called, written when one
    /// is added; the listeners' own locks are taken inside it, never the other way round.
    listeners: RwLock<Vec<Weak<OnMove>>>,
}

/// Keeps a listener registered: dropping it unregisters it (no call starts after the drop; a
/// call already under way finishes; the list forgets it at the next registration).
#[must_use = "the listener is unregistered when this is dropped"]
pub struct HeadListener {
    _on_move: Arc<OnMove>,
}

impl Head {
    pub(super) fn new(current: Position) -> Head {
        Head {
            watch: watch::channel(current).0,
            listeners: RwLock::default(),
        }
    }

    pub fn get(&self) -> Position {
        *self.watch.borrow()
    }

    pub fn subscribe(&self) -> watch::Receiver<Position> {
        self.watch.subscribe()
    }

    /// Calls `on_move` after every move of the head from now on, until the returned guard is
    /// dropped.
    pub fn listen(&self, on_move: impl Fn() + Send + Sync + 'static) -> HeadListener {
        let on_move: Arc<OnMove> = Arc::new(on_move);
        let mut listeners = self.listeners.write();
        listeners.retain(|l| l.strong_count() > 0);
        listeners.push(Arc::downgrade(&on_move));
        HeadListener { _on_move: on_move }
    }

    /// Makes `position` the head if it is ahead, without telling anyone yet; true if it
    /// moved. Readers of the head see it at once.
    pub(super) fn advance_quietly(&self, position: Position) -> bool {
        let mut ahead = false;
        self.watch.send_if_modified(|h| {
            ahead = *h < position;
            if ahead {
                *h = position;
            }
            false
        });
        ahead
    }

    /// Tells the head's watchers and listeners it moved.
    pub(super) fn tell(&self) {
        self.watch.send_modify(|_| {});
        self.tell_listeners();
    }

    /// Sets the head to `position` (forward or back: a reopen reads it from the file) and
    /// tells everyone, if it changed.
    pub(super) fn reset(&self, position: Position) {
        if self.get() != position {
            self.watch.send_replace(position);
            self.tell_listeners();
        }
    }

    fn tell_listeners(&self) {
        for listener in self.listeners.read().iter() {
            if let Some(on_move) = listener.upgrade() {
                on_move();
            }
        }
    }
}

/// Every account's head, made on first use by a `Log` handle or by the writer, and kept for
/// the life of the log (the handles' receivers outlive any reopen of the file).
#[derive(Default)]
pub struct Heads {
    /// Guards the map only; never held across I/O.
    heads: Mutex<HashMap<String, Arc<Head>>>,
}

impl Heads {
    /// The account's head; a new one starts at `current`. The writer publishes every commit
    /// to the same head, so a `current` read before a commit it missed is overwritten by that
    /// commit's head.
    pub fn get(&self, account: &str, current: Position) -> Arc<Head> {
        self.heads
            .lock()
            .entry(account.to_owned())
            .or_insert_with(|| Arc::new(Head::new(current)))
            .clone()
    }

    pub(super) fn all(&self) -> Vec<(String, Arc<Head>)> {
        let heads = self.heads.lock();
        heads.iter().map(|(a, h)| (a.clone(), h.clone())).collect()
    }
}
