//! The HTTP API (axum): appends and reads of raw streams, live subscriptions, projection
//! status and views, health.
//!
//! Handlers never block the reactor: appends await the log writer, reads run on tokio's
//! blocking pool. Every error is JSON (`error::ApiError`), including unknown routes and
//! methods and the rejections of axum's own extractors.

mod encode;
mod error;
pub mod live;
mod projections;
pub mod serve;
mod streams;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{MethodRouter, get, post};
use tokio::sync::watch;

pub use error::ApiError;

use projections::Action;
pub use streams::NDJSON;

use crate::log::{Log, LogHealth};
use crate::scheduler::Projections;

/// Largest request body. An append of `MAX_EVENTS_PER_APPEND` small events fits; a larger
/// body is refused with 413 before it is buffered.
pub const MAX_BODY_BYTES: usize = 32 * 1024 * 1024;

#[derive(Clone)]
pub struct AppState {
    pub log: Log,
    pub projections: Arc<Projections>,
    /// Turns true when the server shuts down, which ends live subscriptions.
    pub shutdown: watch::Receiver<bool>,
    /// How often an idle live subscription sends an SSE comment, so proxies keep it open.
    pub sse_keep_alive: Duration,
    /// One permit per NDJSON read streaming: a read without one gets a 503.
    pub streams: Arc<tokio::sync::Semaphore>,
    /// One permit per live subscription.
    pub live: Arc<tokio::sync::Semaphore>,
    /// Bytes queued for live subscribers, all together.
    pub live_bytes: live::LiveBudget,
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/health", get(health))
        .route(
            "/streams/{stream}",
            get(streams::read).post(streams::append),
        )
        .route("/streams/{stream}/live", get(live::subscribe))
        .route("/projections", get(projections::list))
        .route(
            "/projections/{name}",
            get(projections::status).put(projections::put),
        )
        .route("/projections/{name}/rebuild", control(Action::Rebuild))
        .route("/projections/{name}/pause", control(Action::Pause))
        .route("/projections/{name}/resume", control(Action::Resume))
        .route("/projections/{name}/retry", control(Action::Retry))
        .route("/projections/{name}/skip", control(Action::Skip))
        .route("/projections/{name}/view", get(projections::page))
        .route(
            "/projections/{name}/view/{*key}",
            get(projections::document),
        )
        .merge(debug_routes())
        .fallback(|| async { ApiError::not_found("not_found", "no such route") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "this route does not take that method",
            )
        })
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

/// A `POST` route for an operator's action on a projection.
fn control(action: Action) -> MethodRouter<AppState> {
    post(move |State(state): State<AppState>, path| projections::control(state, path, action))
}

/// `GET /health`: 200 `{"status": "ok", "head"}` while the log takes appends; 503 with
/// `"status": "degraded"` (the disk is full or the log is being reopened: reads are served,
/// appends refused) or `"failing"` (the log writer is gone until a restart), with a reason.
async fn health(State(state): State<AppState>) -> impl IntoResponse {
    let head = *state.log.head().borrow();
    let (status, reason) = match state.log.health() {
        LogHealth::Ok => {
            return axum::Json(serde_json::json!({ "status": "ok", "head": head })).into_response();
        }
        LogHealth::DiskFull => (
            "degraded",
            "the disk is full: appends are refused until space is freed".to_owned(),
        ),
        LogHealth::Unavailable { reason } => ("degraded", reason),
        LogHealth::Failed { reason } => ("failing", reason),
    };
    (
        StatusCode::SERVICE_UNAVAILABLE,
        axum::Json(serde_json::json!({ "status": status, "reason": reason, "head": head })),
    )
        .into_response()
}

/// `PUT /debug/failpoints/{name}` (body: a `fail` action such as `return(enospc)`, `panic`,
/// `sleep(2000)`, `off`) and `DELETE` to remove it: only in a build with the `failpoints`
/// feature, which is how `cargo test` builds the server.
#[cfg(feature = "failpoints")]
fn debug_routes() -> Router<AppState> {
    use axum::extract::Path;
    Router::new().route(
        "/debug/failpoints/{name}",
        axum::routing::put(|Path(name): Path<String>, body: String| async move {
            match fail::cfg(name, body.trim()) {
                Ok(()) => StatusCode::NO_CONTENT.into_response(),
                Err(e) => ApiError::bad_request("invalid_failpoint", e).into_response(),
            }
        })
        .delete(|Path(name): Path<String>| async move {
            fail::remove(name);
            StatusCode::NO_CONTENT
        }),
    )
}

#[cfg(not(feature = "failpoints"))]
fn debug_routes() -> Router<AppState> {
    Router::new()
}
