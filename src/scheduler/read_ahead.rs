//! A turn's read-ahead thread: it reads the next batch while the worker applies one.
//!
//! One thread per turn, started at the turn's first read-ahead (a turn that follows the log
//! usually has none), rather than one per batch: a catch-up runs hundreds of batches a second,
//! and each thread's start and end (its stack mapped and unmapped, a wake-up to join it) cost
//! the worker more than handing a request over a channel.

use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::thread::{Scope, ScopedJoinHandle};

use super::Shared;
use super::batch::Batch;
use super::slot::Slot;
use crate::log::{Position, StorageError};

/// One batch to read: after `after`, up to `head`, framed into `buffer`.
struct Request {
    after: Position,
    head: Position,
    buffer: Vec<u8>,
}

/// The worker's end of the thread. The thread is owned by the turn's scope, which joins it;
/// it stops when this is dropped (its request channel closes), finishing a read in hand
/// first.
pub(super) struct ReadAhead<'scope> {
    requests: SyncSender<Request>,
    results: Receiver<Result<Batch, StorageError>>,
    /// Taken to join the thread when it ended without an answer: it panicked.
    thread: Option<ScopedJoinHandle<'scope, ()>>,
}

impl<'scope> ReadAhead<'scope> {
    pub fn start(
        scope: &'scope Scope<'scope, '_>,
        shared: &'scope Shared,
        slot: &'scope Slot,
    ) -> Self {
        // One request in flight at a time: the worker asks for the next batch, then takes it.
        let (requests, inbox) = sync_channel::<Request>(1);
        let (outbox, results) = sync_channel(1);
        let thread = std::thread::Builder::new()
            .name("projection-read".into())
            .spawn_scoped(scope, move || {
                for Request {
                    after,
                    head,
                    buffer,
                } in inbox
                {
                    crate::failpoint::failpoint!("read-ahead");
                    if outbox.send(shared.read(slot, after, head, buffer)).is_err() {
                        return;
                    }
                }
            })
            .expect("starting a projection's read-ahead thread");
        ReadAhead {
            requests,
            results,
            thread: Some(thread),
        }
    }

    /// Starts reading the batch after `after`, up to `head`, into `buffer`.
    pub fn request(&mut self, after: Position, head: Position, buffer: Vec<u8>) {
        let request = Request {
            after,
            head,
            buffer,
        };
        if self.requests.send(request).is_err() {
            self.rethrow();
        }
    }

    /// The batch last requested, once read. A panic on the thread is the turn's panic
    /// (caught around the turn), as if the read had run on the worker.
    pub fn take(&mut self) -> Result<Batch, StorageError> {
        match self.results.recv() {
            Ok(read) => read,
            Err(_) => self.rethrow(),
        }
    }

    /// The thread ended without answering, which only a panic does: raise it here.
    fn rethrow(&mut self) -> ! {
        let thread = self.thread.take().expect("the thread ended once");
        match thread.join() {
            Err(panic) => std::panic::resume_unwind(panic),
            Ok(()) => unreachable!("the read-ahead thread ended while its requests were open"),
        }
    }
}
