//! Connection threads: each HTTP connection is served on one of a few threads, each running
//! its own single-threaded tokio runtime (the model of actix-web and of thread-per-core
//! servers), instead of on the main runtime's work-stealing workers.
//!
//! Why: an append is answered by the log's syncer thread, which wakes the connection's task
//! from outside the runtime. On the work-stealing runtime that wake goes through its inject
//! queue and unparks an idle worker, which in turn wakes another, so a lone client's answer
//! took two cross-thread wake-ups (about 40 µs each on this VM, BENCHMARKS.md). On a
//! connection thread the syncer's wake unparks the one thread that owns the connection, which
//! writes the answer at once.
//!
//! - **Ownership**: [`ConnectionThreads`] owns its threads; [`ConnectionThreads::stop`] (or a
//!   drop) ends them. A thread stops when its stop signal is sent or dropped: its runtime is
//!   then shut down, waiting at most `shutdown_timeout` for blocking work it started, and the
//!   thread says so on its `stopped` channel before it exits.
//! - **Placement**: a new connection goes to the thread serving the fewest connections; a
//!   connection stays on its thread for its whole life (no stealing, so a handler must not
//!   hog its thread: the heavy work, reads from redb and the like, runs on the blocking pool).
//! - **Tasks a handler spawns** (an SSE follower, an NDJSON producer) run on the connection's
//!   thread and end with the connection or at shutdown. Work that outlives a connection (a
//!   subscription's driver, the projection workers) is spawned on the main runtime by whoever
//!   owns it.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::runtime::Handle;
use tokio::sync::oneshot;

/// One connection thread, as its owner sees it.
struct ConnectionThread {
    runtime: Handle,
    /// Connections now served here (the placement's measure).
    serving: Arc<AtomicUsize>,
    /// Sent or dropped: the thread stops.
    stop: Option<oneshot::Sender<()>>,
    /// Resolves once the thread's runtime is shut down.
    stopped: oneshot::Receiver<()>,
}

/// The connection threads of one server.
pub struct ConnectionThreads {
    threads: Vec<ConnectionThread>,
}

/// A connection's hold on its thread: counted while it lives.
pub struct Placed {
    serving: Arc<AtomicUsize>,
}

impl Drop for Placed {
    fn drop(&mut self) {
        self.serving.fetch_sub(1, Ordering::Relaxed);
    }
}

impl ConnectionThreads {
    /// Starts `count` threads (at least one), named `http-N`.
    pub fn start(count: usize, shutdown_timeout: Duration) -> std::io::Result<Self> {
        let mut threads = Vec::new();
        for n in 0..count.max(1) {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .thread_name(format!("http-{n}-blocking"))
                .build()?;
            let handle = runtime.handle().clone();
            let (stop, stop_rx) = oneshot::channel::<()>();
            let (stopped_tx, stopped) = oneshot::channel();
            std::thread::Builder::new()
                .name(format!("http-{n}"))
                .spawn(move || {
                    // Either outcome (sent or dropped) means stop.
                    let _ = runtime.block_on(stop_rx);
                    runtime.shutdown_timeout(shutdown_timeout);
                    let _ = stopped_tx.send(());
                })?;
            threads.push(ConnectionThread {
                runtime: handle,
                serving: Arc::new(AtomicUsize::new(0)),
                stop: Some(stop),
                stopped,
            });
        }
        Ok(ConnectionThreads { threads })
    }

    /// The runtime of the thread serving the fewest connections, and the new connection's
    /// hold on it (to be dropped when the connection ends).
    pub fn place(&self) -> (&Handle, Placed) {
        let thread = self
            .threads
            .iter()
            .min_by_key(|t| t.serving.load(Ordering::Relaxed))
            .expect("at least one thread");
        thread.serving.fetch_add(1, Ordering::Relaxed);
        let placed = Placed {
            serving: thread.serving.clone(),
        };
        (&thread.runtime, placed)
    }

    /// Stops every thread and waits until their runtimes are shut down (each waits at most
    /// its `shutdown_timeout` for blocking work). Tasks still on them are dropped.
    pub async fn stop(mut self) {
        for thread in &mut self.threads {
            thread.stop.take();
        }
        for thread in std::mem::take(&mut self.threads) {
            let _ = thread.stopped.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn connections_go_to_the_least_busy_thread_and_run_there() {
        let threads = ConnectionThreads::start(2, Duration::from_secs(1)).unwrap();
        let (first, a) = threads.place();
        let first = first.clone();
        let (second, b) = threads.place();
        let second = second.clone();
        assert_ne!(first.id(), second.id(), "two connections, two threads");
        drop(a);
        let (third, _c) = threads.place();
        assert_eq!(
            third.id(),
            first.id(),
            "the freed thread takes the next one"
        );
        // A task placed on a thread runs on that thread, not on the caller's runtime.
        let name = first
            .spawn(async { std::thread::current().name().map(str::to_owned) })
            .await
            .unwrap();
        assert!(
            name.is_some_and(|n| n.starts_with("http-")),
            "ran on a connection thread"
        );
        drop(b);
        threads.stop().await;
        assert!(
            first.spawn(async {}).await.is_err(),
            "a stopped thread's runtime runs nothing more"
        );
    }
}
