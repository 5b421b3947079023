//! The work queue and what wakes the workers.

use std::collections::VecDeque;
use std::sync::Arc;

use parking_lot::{Condvar, Mutex};

use super::slot::{Role, Slot};

/// The work queue. Background tasks (the head listener, fault retries, the folder watcher)
/// hold only this (or a `Weak`), never a projection: a view database must close as soon as
/// `Projections` is dropped.
pub(super) struct Signal {
    /// Taken last: after the registry's locks and a slot's state, never the other way round;
    /// nothing is read or written to disk under it.
    pub queue: Mutex<Queue>,
    pub wake: Condvar,
    /// For the timers of fault backoffs.
    pub tokio: tokio::runtime::Handle,
}

#[derive(Default)]
pub(super) struct Queue {
    pub ready: VecDeque<Arc<Slot>>,
    /// Versions rebuilding from position 0: taken only when no live projection waits, so a
    /// long rebuild cannot hold the live views back.
    pub rebuilding: VecDeque<Arc<Slot>>,
    /// The head moved, or a backoff ended: a worker should look at every projection.
    pub rescan: bool,
    pub stopping: bool,
}

/// What a worker is handed.
pub(super) enum Work {
    Run(Arc<Slot>),
    /// Look at every projection.
    Rescan,
    Stop,
}

impl Signal {
    pub fn new(tokio: tokio::runtime::Handle) -> Self {
        Signal {
            queue: Mutex::default(),
            wake: Condvar::new(),
            tokio,
        }
    }

    /// Queues a projection the caller claimed ([`Slot::claim_for_queue`]), unless the
    /// workers are stopping (a queue left holding a projection would keep its view open).
    pub fn push(&self, slot: Arc<Slot>) {
        let building = slot.role() == Role::Building;
        let mut queue = self.queue.lock();
        if queue.stopping {
            return;
        }
        if building {
            queue.rebuilding.push_back(slot);
        } else {
            queue.ready.push_back(slot);
        }
        drop(queue);
        self.wake.notify_one();
    }

    /// Asks a worker to look at every projection again; false once stopping.
    pub fn rescan(&self) -> bool {
        let mut queue = self.queue.lock();
        if queue.stopping {
            return false;
        }
        // Already asked: the worker woken then (or the next to look) takes it.
        let asked = std::mem::replace(&mut queue.rescan, true);
        drop(queue);
        if !asked {
            self.wake.notify_one();
        }
        true
    }

    /// Waits for the next piece of work.
    pub fn next(&self) -> Work {
        let mut queue = self.queue.lock();
        loop {
            if queue.stopping {
                return Work::Stop;
            }
            if queue.rescan {
                queue.rescan = false;
                return Work::Rescan;
            }
            if let Some(slot) = queue.ready.pop_front() {
                return Work::Run(slot);
            }
            if let Some(slot) = queue.rebuilding.pop_front() {
                return Work::Run(slot);
            }
            self.wake.wait(&mut queue);
        }
    }

    /// Whether a worker should put its projection back (one look at the queue, per batch):
    /// the workers are stopping, or its turn is `over` and other work waits.
    pub fn should_yield(&self, over: bool) -> bool {
        let queue = self.queue.lock();
        queue.stopping
            || (over && (!queue.ready.is_empty() || !queue.rebuilding.is_empty() || queue.rescan))
    }

    /// Whether the workers are stopping (or stopped).
    pub fn stopping(&self) -> bool {
        self.queue.lock().stopping
    }

    /// Stops the workers: empties the queue and wakes every one.
    pub fn stop(&self) {
        {
            let mut queue = self.queue.lock();
            queue.stopping = true;
            queue.ready.clear();
            queue.rebuilding.clear();
        }
        self.wake.notify_all();
    }
}
