//! Persistent subscriptions over HTTP: settings, state, consuming (long poll and SSE),
//! acknowledgements and parked events. The subscriptions themselves are in
//! [`crate::subscriptions`]; a request reaches its account's only.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

use super::error::{ApiError, rejection};
use super::tenant::Tenant;
use super::{AppState, encode};
use crate::log::Position;
use crate::subscriptions::{
    ConsumerId, Delivery, NackAction, Settings, Subscription, SubscriptionError, SubscriptionStatus,
};

/// Most events one poll returns.
const MAX_POLL: usize = 10_000;
/// Longest a poll waits for its first event.
const MAX_WAIT_MS: u64 = 60_000;
/// Most positions in one ack or nack.
const MAX_POSITIONS: usize = 100_000;
/// Deliveries queued for an SSE consumer's connection, at most (they are in flight, so
/// their ack timeout runs while they wait).
const SSE_QUEUE: usize = 64;

impl From<SubscriptionError> for ApiError {
    fn from(e: SubscriptionError) -> Self {
        let message = e.to_string();
        match e {
            SubscriptionError::NotFound(_) => {
                ApiError::not_found("subscription_not_found", message)
            }
            SubscriptionError::Invalid(_) => ApiError::bad_request("invalid_settings", message),
            SubscriptionError::Fixed(_) => {
                ApiError::new(StatusCode::CONFLICT, "setting_fixed", message)
            }
            SubscriptionError::NotInFlight(_) => {
                ApiError::new(StatusCode::CONFLICT, "not_in_flight", message)
            }
            SubscriptionError::NotParked(_) => {
                ApiError::new(StatusCode::CONFLICT, "not_parked", message)
            }
            SubscriptionError::Log(e) => e.into(),
            SubscriptionError::Store(e) => ApiError::internal(e),
            SubscriptionError::Task(e) => ApiError::internal(e),
        }
    }
}

fn name_of(path: Result<Path<String>, PathRejection>) -> Result<String, ApiError> {
    path.map(|Path(p)| p)
        .map_err(|r| rejection("invalid_path", r))
}

fn find(
    state: &AppState,
    tenant: &crate::tenants::Tenant,
    name: &str,
) -> Result<Arc<Subscription>, ApiError> {
    Ok(state.subscriptions.get(&tenant.account, name)?)
}

/// `GET /subscriptions`.
#[derive(Serialize, utoipa::ToSchema)]
pub struct SubscriptionList {
    pub subscriptions: Vec<SubscriptionStatus>,
}

#[utoipa::path(get, path = "/subscriptions", tag = "subscriptions",
    responses((status = 200, description = "The account's subscriptions", body = SubscriptionList)))]
pub async fn list(State(state): State<AppState>, Tenant(tenant): Tenant) -> Json<SubscriptionList> {
    Json(SubscriptionList {
        subscriptions: state
            .subscriptions
            .list(&tenant.account)
            .iter()
            .map(|s| s.status())
            .collect(),
    })
}

/// `PUT /subscriptions/{name}`: creates the subscription (201) or changes its settings (200).
#[utoipa::path(put, path = "/subscriptions/{name}", tag = "subscriptions",
    params(("name" = String, Path, description = "1 to 128 of letters, digits, `-`, `_`, `.`")),
    request_body = Settings,
    responses(
        (status = 201, description = "Made", body = SubscriptionStatus),
        (status = 200, description = "Settings changed", body = SubscriptionStatus),
        (status = 409, description = "`source` or `from` differ from the subscription's: they are fixed", body = super::openapi::ErrorBody),
        (status = 415, description = "Not application/json", body = super::openapi::ErrorBody),
    ))]
pub async fn put(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    path: Result<Path<String>, PathRejection>,
    body: Result<Json<Settings>, JsonRejection>,
) -> Result<Response, ApiError> {
    let name = name_of(path)?;
    let Json(settings) = body.map_err(|r| match r {
        // Settings that do not fit the schema are invalid settings, like those out of range.
        JsonRejection::JsonDataError(e) => ApiError::bad_request("invalid_settings", e.body_text()),
        r => rejection("invalid_body", r),
    })?;
    let made = state
        .subscriptions
        .put(&tenant.log, &name, settings)
        .await?;
    let status = find(&state, &tenant, &name)?.status();
    let code = if made {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((code, Json(status)).into_response())
}

#[utoipa::path(get, path = "/subscriptions/{name}", tag = "subscriptions",
    params(("name" = String, Path)),
    responses(
        (status = 200, description = "Its settings and state", body = SubscriptionStatus),
        (status = 404, description = "No such subscription", body = super::openapi::ErrorBody),
    ))]
pub async fn status(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<SubscriptionStatus>, ApiError> {
    Ok(Json(find(&state, &tenant, &name_of(path)?)?.status()))
}

/// `DELETE /subscriptions/{name}`: removes it and its state; its consumers are ended.
#[utoipa::path(delete, path = "/subscriptions/{name}", tag = "subscriptions",
    params(("name" = String, Path)),
    responses(
        (status = 204, description = "Deleted"),
        (status = 404, description = "No such subscription", body = super::openapi::ErrorBody),
    ))]
pub async fn delete(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    path: Result<Path<String>, PathRejection>,
) -> Result<StatusCode, ApiError> {
    let name = name_of(path)?;
    state.subscriptions.delete(&tenant.account, &name).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PollParams {
    /// Most events to return (1 to 10,000; default 100).
    max: Option<usize>,
    /// How long to wait for the first event, in milliseconds (0 to 60,000; default 5,000).
    wait_ms: Option<u64>,
    /// The consumer's name (for `pinned` and the count of consumers); one per request if
    /// not given.
    consumer: Option<String>,
    /// The API key, for clients that cannot send headers.
    #[allow(dead_code)]
    access_token: Option<String>,
}

fn consumer_of(name: Option<String>) -> Result<ConsumerId, ApiError> {
    match name {
        Some(name) if name.is_empty() || name.len() > 128 => Err(ApiError::bad_request(
            "invalid_query",
            "consumer must be 1 to 128 bytes",
        )),
        Some(name) => Ok(name.into()),
        None => Ok(uuid::Uuid::now_v7().simple().to_string().into()),
    }
}

/// A delivered event: the event as `/streams` shows it, plus `attempt` (1 for the first
/// delivery). Its `position` is the id to acknowledge.
fn delivery_json(out: &mut Vec<u8>, d: &Delivery) {
    encode::event(out, &d.event);
    out.pop();
    out.extend_from_slice(b",\"attempt\":");
    out.extend_from_slice(itoa::Buffer::new().format(d.attempt).as_bytes());
    out.push(b'}');
}

/// `GET /subscriptions/{name}/events`: a long poll.
#[utoipa::path(get, path = "/subscriptions/{name}/events", tag = "subscriptions",
    params(("name" = String, Path), PollParams),
    responses(
        (status = 200, description = "`{\"events\": [...]}`: each event with its `position` (the ack id) and `attempt`; empty when the wait ended first", content_type = "application/json", body = Object),
        (status = 404, description = "No such subscription", body = super::openapi::ErrorBody),
    ))]
pub async fn poll(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    path: Result<Path<String>, PathRejection>,
    query: Result<Query<PollParams>, QueryRejection>,
) -> Result<Response, ApiError> {
    let sub = find(&state, &tenant, &name_of(path)?)?;
    let Query(params) = query.map_err(|r| rejection("invalid_query", r))?;
    let max = params.max.unwrap_or(100);
    let wait = params.wait_ms.unwrap_or(5_000);
    if !(1..=MAX_POLL).contains(&max) || wait > MAX_WAIT_MS {
        return Err(ApiError::bad_request(
            "invalid_query",
            format!("max must be 1 to {MAX_POLL} and wait_ms 0 to {MAX_WAIT_MS}"),
        ));
    }
    let consumer = consumer_of(params.consumer)?;
    let mut shutdown = state.shutdown.clone();
    let taken = tokio::select! {
        taken = sub.poll(&consumer, max, Duration::from_millis(wait)) => taken,
        _ = shutdown.wait_for(|s| *s) => Vec::new(),
    };
    let mut body = Vec::with_capacity(64 + taken.len() * 256);
    body.extend_from_slice(b"{\"events\":[");
    for (i, d) in taken.iter().enumerate() {
        if i > 0 {
            body.push(b',');
        }
        delivery_json(&mut body, d);
    }
    body.extend_from_slice(b"]}");
    Ok(encode::json_response(body))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct LiveParams {
    consumer: Option<String>,
    #[allow(dead_code)]
    access_token: Option<String>,
}

/// `GET /subscriptions/{name}/live`: events as Server-Sent Events (id: the position), at
/// most `max_in_flight` unacknowledged at a time.
#[utoipa::path(get, path = "/subscriptions/{name}/live", tag = "subscriptions",
    params(("name" = String, Path), LiveParams),
    responses(
        (status = 200, description = "Server-Sent Events: one per delivery (the event with `attempt`), id the position", content_type = "text/event-stream", body = String),
        (status = 404, description = "No such subscription", body = super::openapi::ErrorBody),
        (status = 429, description = "The account holds its limit of live subscriptions", body = super::openapi::ErrorBody),
    ))]
pub async fn live(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    path: Result<Path<String>, PathRejection>,
    query: Result<Query<LiveParams>, QueryRejection>,
) -> Result<Response, ApiError> {
    let sub = find(&state, &tenant, &name_of(path)?)?;
    let Query(params) = query.map_err(|r| rejection("invalid_query", r))?;
    let consumer = consumer_of(params.consumer)?;
    let held = super::live::hold(&state, &tenant)?;
    let (tx, rx) = tokio::sync::mpsc::channel::<Event>(SSE_QUEUE);
    // The consumer task: owned by the runtime; ends when the client goes away, the
    // subscription is deleted or the server shuts down. Events it took stay in flight until
    // acknowledged or past their deadline.
    let mut shutdown = state.shutdown.clone();
    tokio::spawn(async move {
        let _held = held;
        sub.enter(&consumer);
        let mut stopped = sub.stopped();
        tokio::select! {
            _ = feed(&sub, &consumer, &tx) => {}
            _ = stopped.wait_for(|s| *s) => {}
            _ = shutdown.wait_for(|s| *s) => {}
            _ = tx.closed() => {}
        }
        sub.leave(&consumer);
    });
    let events = tokio_stream::wrappers::ReceiverStream::new(rx);
    let events = futures_util::StreamExt::map(events, Ok::<_, Infallible>);
    Ok(Sse::new(events)
        .keep_alive(KeepAlive::new().interval(state.sse_keep_alive))
        .into_response())
}

async fn feed(sub: &Subscription, consumer: &ConsumerId, tx: &tokio::sync::mpsc::Sender<Event>) {
    let mut wakes = sub.wakes();
    loop {
        // Room in the channel first, so that what is taken goes out now.
        let Ok(permit) = tx.reserve().await else {
            return;
        };
        let taken = sub.take(consumer, 1);
        let Some(first) = taken.into_iter().next() else {
            drop(permit);
            if wakes.changed().await.is_err() {
                return;
            }
            continue;
        };
        let mut json = Vec::with_capacity(256);
        delivery_json(&mut json, &first);
        let data = String::from_utf8(json).unwrap_or_default();
        permit.send(
            Event::default()
                .id(first.event.position.to_string())
                .data(data),
        );
    }
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Ack {
    pub positions: Vec<Position>,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Nack {
    pub positions: Vec<Position>,
    pub action: NackAction,
    #[serde(default)]
    pub reason: Option<String>,
}

fn check_positions(positions: &[Position]) -> Result<(), ApiError> {
    if positions.is_empty() || positions.len() > MAX_POSITIONS {
        return Err(ApiError::bad_request(
            "invalid_body",
            format!("positions holds 1 to {MAX_POSITIONS} positions"),
        ));
    }
    Ok(())
}

/// `POST /subscriptions/{name}/ack`: answered once the acknowledgement is durable.
#[utoipa::path(post, path = "/subscriptions/{name}/ack", tag = "subscriptions",
    params(("name" = String, Path)),
    request_body = Ack,
    responses(
        (status = 204, description = "Acknowledged, durably"),
        (status = 404, description = "No such subscription", body = super::openapi::ErrorBody),
        (status = 409, description = "Positions not in flight (named in the message); nothing was acknowledged", body = super::openapi::ErrorBody),
        (status = 415, description = "Not application/json", body = super::openapi::ErrorBody),
    ))]
pub async fn ack(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    path: Result<Path<String>, PathRejection>,
    body: Result<Json<Ack>, JsonRejection>,
) -> Result<StatusCode, ApiError> {
    let sub = find(&state, &tenant, &name_of(path)?)?;
    let Json(ack) = body.map_err(|r| rejection("invalid_body", r))?;
    check_positions(&ack.positions)?;
    sub.ack(&ack.positions).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /subscriptions/{name}/nack`: `retry` delivers again (parked after
/// `max_deliveries`), `park` parks now, `skip` counts as acknowledged.
#[utoipa::path(post, path = "/subscriptions/{name}/nack", tag = "subscriptions",
    params(("name" = String, Path)),
    request_body = Nack,
    responses(
        (status = 204, description = "Done, durably"),
        (status = 404, description = "No such subscription", body = super::openapi::ErrorBody),
        (status = 409, description = "Positions not in flight (named in the message); nothing was done", body = super::openapi::ErrorBody),
        (status = 415, description = "Not application/json", body = super::openapi::ErrorBody),
    ))]
pub async fn nack(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    path: Result<Path<String>, PathRejection>,
    body: Result<Json<Nack>, JsonRejection>,
) -> Result<StatusCode, ApiError> {
    let sub = find(&state, &tenant, &name_of(path)?)?;
    let Json(nack) = body.map_err(|r| rejection("invalid_body", r))?;
    check_positions(&nack.positions)?;
    let reason = nack
        .reason
        .unwrap_or_else(|| "refused by the consumer".to_owned());
    if reason.len() > 4096 {
        return Err(ApiError::bad_request(
            "invalid_body",
            "reason is at most 4096 bytes",
        ));
    }
    sub.nack(&nack.positions, nack.action, &reason).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ParkedParams {
    /// Parked events after this position (exclusive).
    after: Option<Position>,
    /// Most to return (1 to 1,000; default 100).
    limit: Option<usize>,
}

/// `GET /subscriptions/{name}/parked`.
#[utoipa::path(get, path = "/subscriptions/{name}/parked", tag = "subscriptions",
    params(("name" = String, Path), ParkedParams),
    responses(
        (status = 200, description = "`{\"parked\": [{\"event\", \"reason\", \"deliveries\", \"parked_at\"}]}`, oldest first", content_type = "application/json", body = Object),
        (status = 404, description = "No such subscription", body = super::openapi::ErrorBody),
    ))]
pub async fn parked(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    path: Result<Path<String>, PathRejection>,
    query: Result<Query<ParkedParams>, QueryRejection>,
) -> Result<Response, ApiError> {
    let sub = find(&state, &tenant, &name_of(path)?)?;
    let Query(params) = query.map_err(|r| rejection("invalid_query", r))?;
    let limit = params.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::bad_request(
            "invalid_query",
            "limit must be 1 to 1000",
        ));
    }
    let parked = sub.parked(params.after.unwrap_or(0), limit).await?;
    let mut body = Vec::with_capacity(64 + parked.len() * 300);
    body.extend_from_slice(b"{\"parked\":[");
    for (i, (event, record)) in parked.iter().enumerate() {
        if i > 0 {
            body.push(b',');
        }
        body.extend_from_slice(b"{\"event\":");
        encode::event(&mut body, event);
        body.extend_from_slice(b",\"reason\":");
        serde_json::to_writer(&mut body, &record.reason).map_err(ApiError::internal)?;
        body.extend_from_slice(
            format!(
                ",\"deliveries\":{},\"parked_at\":{}}}",
                record.deliveries, record.parked_at
            )
            .as_bytes(),
        );
    }
    body.extend_from_slice(b"]}");
    Ok(encode::json_response(body))
}

#[derive(Deserialize, Default, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Replay {
    /// Parked events to deliver again; all when absent.
    pub positions: Option<Vec<Position>>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct Replayed {
    pub replayed: usize,
}

/// `POST /subscriptions/{name}/parked/replay`: delivers parked events again (they stay
/// parked until acknowledged).
#[utoipa::path(post, path = "/subscriptions/{name}/parked/replay", tag = "subscriptions",
    params(("name" = String, Path)),
    request_body(content = Option<Replay>, description = "`{\"positions\": [...]}`, or nothing for all"),
    responses(
        (status = 200, description = "How many go out again", body = Replayed),
        (status = 404, description = "No such subscription", body = super::openapi::ErrorBody),
        (status = 409, description = "Positions not parked (named in the message)", body = super::openapi::ErrorBody),
    ))]
pub async fn replay(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    path: Result<Path<String>, PathRejection>,
    body: axum::body::Bytes,
) -> Result<Json<Replayed>, ApiError> {
    let sub = find(&state, &tenant, &name_of(path)?)?;
    let replay: Replay = if body.iter().all(u8::is_ascii_whitespace) {
        Replay::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| ApiError::bad_request("invalid_body", e.to_string()))?
    };
    if let Some(positions) = &replay.positions {
        check_positions(positions)?;
    }
    let replayed = sub.replay_parked(replay.positions).await?;
    Ok(Json(Replayed { replayed }))
}
