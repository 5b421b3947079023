//! The accept loop: HTTP/1.1 connections served by hyper under limits a server exposed to the
//! internet needs, which `axum::serve` does not set.
//!
//! - **Connections** are capped ([`Limits::max_connections`]). Over the cap a new connection
//!   is answered at once with a 503 JSON error and `Retry-After`, and closed; existing
//!   clients keep working.
//! - **Header read timeout**: a connection must deliver a request's headers within
//!   [`Limits::header_timeout`], counted from when it opens or its previous response ended,
//!   so slowloris clients, silent connections and idle keep-alive connections are all closed.
//! - **Send timeout**: a response whose writes make no progress for [`Limits::send_timeout`]
//!   (a client that stopped reading) is abandoned and the connection closed, freeing what it
//!   held.
//! - **Threads**: by default connections are served on the main runtime's work-stealing
//!   workers; with [`Limits::threads`] over 0 on that many connection threads instead, each
//!   with its own single-threaded runtime (`threads.rs`; the accept loop stays on the main
//!   runtime and hands each accepted connection to the least busy thread).
//! - **Drain**: on shutdown the listener closes, in-flight requests get
//!   [`Limits::drain_timeout`] to finish, and whatever is left is closed.
//!
//! hyper answers malformed requests itself (400 for bad syntax, 431 for a request line and
//! headers over its buffer or more than 100 headers) with an empty body: those few rejections
//! cannot carry the JSON error body.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;
use tokio::time::Sleep;

use super::threads::ConnectionThreads;

/// hyper's per-connection buffer (its default is about 400 KB).
const MAX_BUF: usize = 64 * 1024;

/// What the accept loop enforces; flags of `projector serve`.
#[derive(Clone, Debug)]
pub struct Limits {
    pub max_connections: usize,
    pub header_timeout: Duration,
    pub send_timeout: Duration,
    pub drain_timeout: Duration,
    /// Connection threads; 0 serves connections on the main runtime.
    pub threads: usize,
}

impl Limits {
    /// Connections a process with `open_files` file descriptors can hold: what is left after
    /// a reserve for the log, the views, compiled components and the blocking pool, at most
    /// 10,000 (each costs memory too).
    pub fn connections_for(open_files: u64) -> usize {
        open_files.saturating_sub(256).clamp(16, 10_000) as usize
    }
}

/// Raises the soft limit on open files to the hard limit, and returns the new soft limit.
pub fn raise_open_files_limit() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit read and write the struct passed, nothing else.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return 1024;
        }
        if limit.rlim_cur < limit.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: limit.rlim_max,
                rlim_max: limit.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                limit = raised;
            }
        }
    }
    limit.rlim_cur
}

/// Serves `app` on `listener` until `stop` turns true, then drains. Returns once every
/// connection is done or closed.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: Limits,
    mut stop: watch::Receiver<bool>,
) {
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let threads = match (limits.threads > 0)
        .then(|| ConnectionThreads::start(limits.threads, limits.drain_timeout))
        .transpose()
    {
        Ok(threads) => threads,
        Err(e) => {
            tracing::error!(error = %e, "starting the connection threads failed; serving connections on the main runtime");
            None
        }
    };
    let mut http = hyper::server::conn::http1::Builder::new();
    // A small buffer bounds what each connection holds for a client that reads slowly
    // (hyper takes no more of a response while this much waits); it also bounds a request's
    // line and headers (431 past it).
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_buf_size(MAX_BUF);
    // Connection tasks, owned here: awaited on shutdown, aborted after the drain timeout.
    let mut connections = JoinSet::new();
    // Each connection's own stop signal, which asks hyper to finish the request in flight and
    // close.
    let (closing_tx, closing) = watch::channel(false);
    loop {
        while connections.try_join_next().is_some() {}
        let accepted = tokio::select! {
            _ = stop.wait_for(|s| *s) => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, _peer) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of file descriptors (or a connection reset before it was taken): wait a
                // little for connections to close rather than spin.
                tracing::warn!(error = %e, "accepting a connection failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            connections.spawn(refuse(stream));
            continue;
        };
        let (service, http, mut closing) = (app.clone(), http.clone(), closing.clone());
        let send_timeout = limits.send_timeout;
        let serve_on = move |stream: TcpStream| async move {
            let io = TokioIo::new(SendTimeout::new(stream, send_timeout));
            let connection = http.serve_connection(io, TowerToHyperService::new(service));
            let mut connection = std::pin::pin!(connection);
            tokio::select! {
                _ = connection.as_mut() => return,
                _ = closing.wait_for(|c| *c) => {}
            }
            connection.as_mut().graceful_shutdown();
            let _ = connection.await;
        };
        let Some(threads) = &threads else {
            connections.spawn(async move {
                let _permit = permit;
                serve_on(stream).await
            });
            continue;
        };
        let (runtime, placed) = threads.place();
        connections.spawn_on(
            async move {
                let (_permit, _placed) = (permit, placed);
                // The socket moves to this thread's reactor: registered here, from within its
                // runtime.
                match stream.into_std().and_then(TcpStream::from_std) {
                    Ok(stream) => serve_on(stream).await,
                    Err(e) => tracing::warn!(error = %e, "taking a connection failed"),
                }
            },
            runtime,
        );
    }
    drop(listener);
    let _ = closing_tx.send(true);
    let drained = tokio::time::timeout(limits.drain_timeout, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            open = connections.len(),
            "connections still open after the drain timeout are closed"
        );
        connections.shutdown().await;
    }
    if let Some(threads) = threads {
        threads.stop().await;
    }
}

/// Answers a connection over the cap with a 503 and closes it.
async fn refuse(mut stream: TcpStream) {
    const BODY: &str = r#"{"error":{"code":"too_many_connections","message":"the server holds as many connections as it takes; retry shortly"}}"#;
    let response = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\n\
         connection: close\r\ncontent-length: {}\r\n\r\n{BODY}",
        BODY.len()
    );
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        stream.write_all(response.as_bytes()).await?;
        stream.shutdown().await
    })
    .await;
}

/// A stream whose writes fail with `TimedOut` once one has made no progress for `limit`: a
/// client that stops reading loses its connection instead of holding the server's memory.
struct SendTimeout {
    stream: TcpStream,
    limit: Duration,
    /// Armed while a write waits for the client; reset by any progress.
    stalled: Option<Pin<Box<Sleep>>>,
}

impl SendTimeout {
    fn new(stream: TcpStream, limit: Duration) -> Self {
        SendTimeout {
            stream,
            limit,
            stalled: None,
        }
    }

    fn poll_progress<T>(
        &mut self,
        cx: &mut Context<'_>,
        poll: impl FnOnce(Pin<&mut TcpStream>, &mut Context<'_>) -> Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        match poll(Pin::new(&mut self.stream), cx) {
            Poll::Ready(result) => {
                self.stalled = None;
                Poll::Ready(result)
            }
            Poll::Pending => {
                let limit = self.limit;
                let stalled = self
                    .stalled
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
                ready!(stalled.as_mut().poll(cx));
                Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the client stopped reading",
                )))
            }
        }
    }
}

impl AsyncRead for SendTimeout {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for SendTimeout {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_progress(cx, |s, cx| s.poll_write(cx, buf))
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.poll_progress(cx, |s, cx| s.poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.poll_progress(cx, |s, cx| s.poll_flush(cx))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}
