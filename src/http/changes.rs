//! `GET /projections/{name}/changes`: a view's changes as Server-Sent Events, one message per
//! changed key after each commit, so that a client can keep a copy of (part of) a view
//! current: read a page, then follow from the page's `position`.
//!
//! Every message's SSE id is its commit's position. A reconnect with `Last-Event-ID: P` gets
//! commit P again in full (the client may have seen only part of it; a change applied twice
//! leaves the same document), `from=P` starts after commit P. A resume older than the feed's
//! retention, or from before the serving version started (a restart, a blue/green swap), gets
//! a `reset` event: read the view again, then apply the changes after its position.

use std::convert::Infallible;
use std::sync::Arc;

use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::value::RawValue;
use tokio::sync::mpsc;

use super::AppState;
use super::error::{ApiError, rejection};
use super::tenant::Tenant;
use crate::log::Position;
use crate::scheduler::Projections;
use crate::views::ChangeFeed;
use crate::views::feed::{Commit, Gap};

/// Commits copied from the feed at a time.
const COMMITS_PER_READ: usize = 64;
/// Messages queued for the client, at most: past it the follower waits (and, if the client
/// stays behind the feed's retention, gets a `reset`).
const QUEUED: usize = 256;

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ChangesParams {
    /// Follow from after this position (a page's `position`); without it (and without
    /// `Last-Event-ID`), changes committed from now on.
    from: Option<Position>,
    /// Only keys starting with this.
    #[serde(default)]
    prefix: String,
    #[allow(dead_code)]
    access_token: Option<String>,
}

#[utoipa::path(get, path = "/projections/{name}/changes", tag = "projections",
    params(
        ("name" = String, Path),
        ChangesParams,
        ("Last-Event-ID" = Option<u64>, Header, description = "Resume: that commit is sent again in full, then the later ones"),
    ),
    responses(
        (status = 200, description = "Server-Sent Events: `{\"key\", \"value\" (null: deleted), \"position\"}` per changed key, id the commit's position; `event: reset` (`{\"reason\", \"position\"}`) when the client must read the view again; `event: removed` when the projection is removed", content_type = "text/event-stream", body = String),
        (status = 404, description = "No such projection", body = super::openapi::ErrorBody),
        (status = 429, description = "The account holds its limit of live subscriptions", body = super::openapi::ErrorBody),
    ))]
pub async fn follow(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    path: Result<Path<String>, PathRejection>,
    query: Result<Query<ChangesParams>, QueryRejection>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let Path(name) = path.map_err(|r| rejection("invalid_path", r))?;
    let Query(params) = query.map_err(|r| rejection("invalid_query", r))?;
    let last_seen =
        super::live::last_event_id(&headers, "Last-Event-ID must be a commit position")?;
    let projections = tenant.projections.clone();
    let feed = projections.feed(&name).ok_or_else(|| {
        ApiError::not_found(
            "projection_not_found",
            format!("no projection named {name:?} is serving"),
        )
    })?;
    let held = super::live::hold(&state, &tenant)?;
    let after = match (last_seen, params.from) {
        (Some(id), _) => Some(id.saturating_sub(1)),
        (None, from) => from,
    };
    let (tx, rx) = mpsc::channel::<Event>(QUEUED);
    // The follower: owned by the runtime; ends when the client goes away, the projection is
    // removed, or the server shuts down.
    let mut shutdown = state.shutdown.clone();
    tokio::spawn(async move {
        let _held = held;
        let follower = Follower {
            projections,
            name,
            prefix: params.prefix,
            tx: tx.clone(),
        };
        tokio::select! {
            _ = follower.run(feed, after) => {}
            _ = shutdown.wait_for(|s| *s) => {}
            _ = tx.closed() => {}
        }
    });
    let events = futures_util::StreamExt::map(
        tokio_stream::wrappers::ReceiverStream::new(rx),
        Ok::<_, Infallible>,
    );
    Ok(Sse::new(events)
        .keep_alive(KeepAlive::new().interval(state.sse_keep_alive))
        .into_response())
}

struct Follower {
    projections: Arc<Projections>,
    name: String,
    prefix: String,
    tx: mpsc::Sender<Event>,
}

impl Follower {
    async fn run(&self, mut feed: Arc<ChangeFeed>, after: Option<Position>) -> Option<()> {
        let mut after = match after {
            Some(after) => after,
            None => feed.position().unwrap_or(0),
        };
        loop {
            let mut published = feed.watch();
            match feed.after(after, COMMITS_PER_READ) {
                Ok(commits) if commits.is_empty() => {
                    published.changed().await.ok()?;
                }
                Ok(commits) => {
                    for commit in &commits {
                        self.send_commit(commit).await?;
                        after = commit.position;
                    }
                }
                Err(Gap::TooOld { position }) => {
                    self.reset("the changes after the requested position are no longer kept: read the view again", position).await?;
                    after = position;
                }
                Err(Gap::Closed) => {
                    // Swapped for a rebuilt version (whose feed starts where it took over),
                    // or removed.
                    let Some(next) = self.projections.feed(&self.name) else {
                        let data = serde_json::json!({ "reason": "the projection was removed" });
                        let _ = self
                            .tx
                            .send(Event::default().event("removed").data(data.to_string()))
                            .await;
                        return None;
                    };
                    if Arc::ptr_eq(&next, &feed) {
                        // Retired but not yet replaced in the catalog: look again shortly.
                        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                        continue;
                    }
                    let Ok(since) = next.since() else {
                        // Retired already too: wait for its successor.
                        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                        continue;
                    };
                    self.reset(
                        "a rebuilt version was swapped in: read the view again",
                        since,
                    )
                    .await?;
                    feed = next;
                    after = since;
                }
            }
        }
    }

    async fn reset(&self, reason: &str, position: Position) -> Option<()> {
        let data = serde_json::json!({ "reason": reason, "position": position });
        self.tx
            .send(Event::default().event("reset").data(data.to_string()))
            .await
            .ok()
    }

    async fn send_commit(&self, commit: &Commit) -> Option<()> {
        let mut keys: Vec<&String> = commit
            .changes
            .keys()
            .filter(|k| k.starts_with(&self.prefix))
            .collect();
        keys.sort_unstable();
        let id = commit.position.to_string();
        for key in keys {
            let data = match &commit.changes[key] {
                None => {
                    serde_json::json!({ "key": key, "value": null, "position": commit.position })
                }
                Some(bytes) => match std::str::from_utf8(bytes)
                    .ok()
                    .and_then(|t| RawValue::from_string(t.to_owned()).ok())
                {
                    Some(value) => {
                        serde_json::json!({ "key": key, "value": value, "position": commit.position })
                    }
                    None => serde_json::json!({ "key": key, "position": commit.position, "error": {
                        "code": "not_json",
                        "message": format!("the projection stored a document under {key:?} that is not JSON"),
                    }}),
                },
            };
            self.tx
                .send(Event::default().id(id.clone()).data(data.to_string()))
                .await
                .ok()?;
        }
        Some(())
    }
}
