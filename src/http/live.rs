//! Live subscriptions as Server-Sent Events: catch up from a starting point, then follow the
//! head as the writer publishes it. The SSE `id` of every event is its global position, so a
//! client that reconnects with `Last-Event-ID` resumes right after the last event it saw: no
//! event is lost and none is sent twice.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Extension, Path, Query, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use serde::Deserialize;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot, watch};

use super::error::{ApiError, rejection};
use super::streams::{parse_source, path_param};
use super::tenant::Tenant;
use super::{AppState, encode};
use crate::auth::Principal;
use crate::log::{Direction, LogReader, Position, Source};

/// Events read per redb snapshot while catching up...
const CATCH_UP_CHUNK: usize = 512;
/// ... and their data and metadata bytes, at most (plus one event).
const CATCH_UP_BYTES: usize = 64 * 1024;
/// Bytes of events queued for one subscriber that its client has not taken yet. Past it the
/// subscription waits for the client, for at most [`SLOW_SUBSCRIBER`]. Small enough that the
/// default cap of subscriptions (1,024) fits in [`LIVE_BYTES`], so that subscribers that stop
/// reading cannot starve the others of small events.
const QUEUED_BYTES: usize = 64 * 1024;
/// Bytes of events queued for all subscribers together (see [`LiveBudget`]).
pub const LIVE_BYTES: usize = 64 * 1024 * 1024;
/// How long a subscriber may keep its queue full before it is disconnected, with a comment
/// saying why; it resumes with `Last-Event-ID`.
const SLOW_SUBSCRIBER: Duration = Duration::from_secs(10);

/// The bytes queued for live subscribers, across all of them: one event holds its size from
/// this budget and from its subscriber's own until the client has taken it (the permit is
/// dropped when the next event is asked for, once the HTTP layer has room again).
pub type LiveBudget = Arc<Semaphore>;

/// One queued event and its share of the byte budgets.
type Queued = (Event, (OwnedSemaphorePermit, OwnedSemaphorePermit));

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct LiveParams {
    /// First event to send (inclusive): a revision for a stream, a position otherwise.
    from: Option<u64>,
    /// The API key, for clients that cannot send headers (browsers' `EventSource`).
    #[allow(dead_code)]
    access_token: Option<String>,
}

/// `GET /streams/{stream}/live?from=`: with neither `from` nor `Last-Event-ID`, only events
/// appended after the subscription starts.
#[utoipa::path(
    get,
    path = "/streams/{stream}/live",
    tag = "streams",
    params(
        ("stream" = String, Path, description = "A stream, `$all`, or `$ce-<category>`"),
        LiveParams,
        ("Last-Event-ID" = Option<u64>, Header, description = "Resume after this event (exclusive)"),
    ),
    responses(
        (status = 200, description = "Server-Sent Events: one `event` per log event, its position (or revision) as the id", content_type = "text/event-stream", body = String),
        (status = 429, description = "The account holds its limit of live subscriptions", body = super::openapi::ErrorBody),
    )
)]
pub async fn subscribe(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    path: Result<Path<String>, PathRejection>,
    query: Result<Query<LiveParams>, QueryRejection>,
    principal: Option<Extension<Arc<Principal>>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let source = parse_source(&path_param(path)?)?;
    let held = hold(&state, &tenant)?;
    let Query(params) = query.map_err(|r| rejection("invalid_query", r))?;
    let last_seen = last_event_id(&headers, "Last-Event-ID must be an event position")?;
    let reader = tenant.log.reader().clone();
    let head = *tenant.log.head().borrow();
    let start = {
        let (reader, source) = (reader.clone(), source.clone());
        tokio::task::spawn_blocking(move || {
            start_at(&reader, &source, last_seen, params.from, head)
        })
        .await??
    };

    let keep_alive = KeepAlive::new().interval(state.sse_keep_alive);
    // The queue is bounded by the byte budget; the count only bounds its bookkeeping.
    let (tx, rx) = mpsc::channel::<Queued>(4096);
    let (why_tx, why) = oneshot::channel::<String>();
    let subscriber = Subscriber {
        tx,
        own: Arc::new(Semaphore::new(QUEUED_BYTES)),
        shared: state.live_bytes.clone(),
        why: Some(why_tx),
    };
    // The follower: owned by the runtime, it ends when the client goes away, the server
    // shuts down (also while it waits on a slow client), the key is revoked, a read fails, or
    // the subscriber falls too far behind. It holds the subscription's permit, and no `Log`.
    let (head, mut shutdown) = (tenant.log.head(), state.shutdown.clone());
    let (keys, mut revocations) = (state.keys.clone(), state.keys.revocations());
    let key = principal.map(|Extension(p)| p.key_id.clone());
    tokio::spawn(async move {
        let _held = held;
        let revoked = async move {
            let Some(key) = key else {
                return std::future::pending().await;
            };
            while revocations.changed().await.is_ok() {
                if !keys.is_live(&key) {
                    return;
                }
            }
            std::future::pending().await
        };
        tokio::select! {
            _ = follow(head, reader, source, start, subscriber) => {}
            _ = shutdown.wait_for(|stop| *stop) => {}
            _ = revoked => {}
        }
    });
    let events =
        futures_util::stream::unfold((rx, Some(why), None), |(mut rx, why, sent)| async move {
            // The previous event's bytes are released now that the HTTP layer asks for more.
            drop::<Option<(OwnedSemaphorePermit, OwnedSemaphorePermit)>>(sent);
            match rx.recv().await {
                Some((event, held)) => Some((Ok::<_, Infallible>(event), (rx, why, Some(held)))),
                None => {
                    let reason = why?.await.ok()?;
                    Some((Ok(Event::default().comment(reason)), (rx, None, None)))
                }
            }
        });
    Ok(Sse::new(events.boxed())
        .keep_alive(keep_alive)
        .into_response())
}

/// What an open SSE response holds against the limits: one of the server's live
/// subscriptions and one of its account's; both freed when dropped.
pub struct Held {
    _server: OwnedSemaphorePermit,
    _account: crate::tenants::LiveSlot,
}

/// Takes a place for one more SSE response (a live read, a subscription's consumer, a change
/// feed): 503 when the server holds as many as it takes, 429 when the account does.
pub fn hold(state: &AppState, tenant: &crate::tenants::Tenant) -> Result<Held, ApiError> {
    let server = state.live.clone().try_acquire_owned().map_err(|_| {
        ApiError::busy(
            "too_many_subscriptions",
            "the server holds as many live subscriptions as it takes; retry shortly",
        )
    })?;
    let account = tenant.live_slot().ok_or_else(|| {
        ApiError::too_many(
            "too_many_live_subscriptions",
            format!(
                "this account holds its limit of {} live subscriptions; close one or retry later",
                tenant.limits().live_subscriptions
            ),
            1,
        )
    })?;
    Ok(Held {
        _server: server,
        _account: account,
    })
}

/// The `Last-Event-ID` header as a number, if sent; `invalid` is the 400's message otherwise.
pub fn last_event_id(headers: &HeaderMap, invalid: &'static str) -> Result<Option<u64>, ApiError> {
    headers
        .get("last-event-id")
        .map(|value| {
            value
                .to_str()
                .ok()
                .and_then(|v| v.trim().parse::<u64>().ok())
                .ok_or_else(|| ApiError::bad_request("invalid_last_event_id", invalid))
        })
        .transpose()
}

/// The follower's end of a subscription.
struct Subscriber {
    tx: mpsc::Sender<Queued>,
    /// This subscriber's bytes queued and not yet taken, at most [`QUEUED_BYTES`].
    own: Arc<Semaphore>,
    /// All subscribers' ([`LiveBudget`]).
    shared: LiveBudget,
    /// Why the follower ended the subscription, sent as the last SSE comment.
    why: Option<oneshot::Sender<String>>,
}

impl Subscriber {
    /// Waits until this subscriber's queue is at most half full; false when the client stays
    /// behind for [`SLOW_SUBSCRIBER`] (and has been told why).
    async fn room(&mut self) -> bool {
        let half = (QUEUED_BYTES / 2) as u32;
        let own = self.own.clone();
        let roomy = tokio::time::timeout(SLOW_SUBSCRIBER, own.acquire_many_owned(half)).await;
        if matches!(roomy, Ok(Ok(_))) {
            return true;
        }
        self.disconnect();
        false
    }

    fn disconnect(&mut self) {
        if let Some(why) = self.why.take() {
            let _ = why.send(format!(
                "disconnected: this client left {QUEUED_BYTES} bytes of events untaken for \
                 {}s; reconnect with Last-Event-ID to resume",
                SLOW_SUBSCRIBER.as_secs()
            ));
        }
    }

    /// Queues `event` once the budget has room for it; false when the subscription is over
    /// (the client went away, or stayed too far behind and was told why).
    async fn send(&mut self, event: Event, bytes: usize) -> bool {
        let (own, shared) = (self.own.clone(), self.shared.clone());
        let permits = tokio::time::timeout(SLOW_SUBSCRIBER, async move {
            let own = own
                .acquire_many_owned(bytes.clamp(1, QUEUED_BYTES) as u32)
                .await?;
            let shared = shared
                .acquire_many_owned(bytes.clamp(1, LIVE_BYTES) as u32)
                .await?;
            Ok::<_, tokio::sync::AcquireError>((own, shared))
        })
        .await;
        let Ok(Ok(permits)) = permits else {
            self.disconnect();
            return false;
        };
        self.tx.send((event, permits)).await.is_ok()
    }
}

/// The coordinate of the first event to send.
fn start_at(
    reader: &LogReader,
    source: &Source,
    last_seen: Option<u64>,
    from: Option<u64>,
    head: u64,
) -> Result<u64, ApiError> {
    match (source, last_seen, from) {
        (Source::Stream(_), Some(0), _) => Ok(0),
        // No client has seen a position past the head (and u64::MAX + 1 would wrap); the log
        // may hold events past it that are not durable yet, which no reader is shown.
        (_, Some(position), _) if position > head => Err(ApiError::bad_request(
            "invalid_last_event_id",
            format!("Last-Event-ID {position} is past the head of the log ({head})"),
        )),
        (Source::Stream(name), Some(position), _) => match reader.locate(position)? {
            Some((stream, revision)) if stream == name.as_str() => Ok(revision + 1),
            _ => Err(ApiError::bad_request(
                "invalid_last_event_id",
                format!(
                    "Last-Event-ID {position} is not the position of an event of stream {name:?}"
                ),
            )),
        },
        (_, Some(position), _) => Ok(position + 1),
        (_, None, Some(from)) => Ok(from),
        (Source::Stream(_), None, None) => Ok(reader
            .read(source, None, Direction::Backward, 1, head)?
            .and_then(|events| events.first().map(|e| e.revision + 1))
            .unwrap_or(0)),
        (_, None, None) => Ok(head + 1),
    }
}

/// Sends events from `cursor` on, following `head`, until the client leaves (the caller ends
/// it at shutdown and on revocation).
async fn follow(
    mut head: watch::Receiver<Position>,
    reader: LogReader,
    source: Source,
    mut cursor: u64,
    mut subscriber: Subscriber,
) {
    loop {
        // Marking the head seen before reading means a commit during the read still wakes us.
        let until = *head.borrow_and_update();
        loop {
            // No chunk is read while the client's queue is more than half full, so that a
            // client that stops reading holds at most one chunk.
            if !subscriber.room().await {
                return;
            }
            let read = {
                let (reader, source) = (reader.clone(), source.clone());
                tokio::task::spawn_blocking(move || {
                    reader.read_bounded(
                        &source,
                        Some(cursor),
                        Direction::Forward,
                        CATCH_UP_CHUNK,
                        until,
                        CATCH_UP_BYTES,
                    )
                })
                .await
            };
            let events = match read {
                Ok(Ok(events)) => events.unwrap_or_default(),
                Ok(Err(e)) => {
                    tracing::error!(error = %e, "live subscription read failed; closing it");
                    return;
                }
                Err(e) => {
                    tracing::error!(error = %e, "live subscription task failed; closing it");
                    return;
                }
            };
            let Some(last) = events.last() else { break };
            cursor = source.coordinate(last) + 1;
            for e in &events {
                let mut json = Vec::with_capacity(256);
                encode::event(&mut json, e);
                let data = String::from_utf8(json)
                    .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned());
                let bytes = data.len();
                let event = Event::default().id(e.position.to_string()).data(data);
                if !subscriber.send(event, bytes).await {
                    return;
                }
            }
            if events.last().map(|e| e.position) >= Some(until) {
                break;
            }
        }
        tokio::select! {
            changed = head.changed() => if changed.is_err() { return },
            _ = subscriber.tx.closed() => return,
        }
    }
}
