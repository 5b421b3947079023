//! The HTTP API (axum): appends and reads of raw streams, live subscriptions, projection
//! status and views, health.
//!
//! Handlers never block the reactor: appends await the log writer, reads run on tokio's
//! blocking pool. Every error is JSON (`error::ApiError`), including unknown routes and
//! methods and the rejections of axum's own extractors.

mod encode;
mod error;
mod live;
mod projections;
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

use crate::log::Log;
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

/// `GET /health`: the process is up; reports the log's head position.
async fn health(State(state): State<AppState>) -> impl IntoResponse {
    let head = *state.log.head().borrow();
    axum::Json(serde_json::json!({ "status": "ok", "head": head }))
}
