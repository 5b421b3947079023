//! Appending to streams and reading streams, categories and `$all` as JSON pages or NDJSON.

use axum::body::{Body, Bytes};
use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use serde::Deserialize;
use serde_json::value::RawValue;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use uuid::Uuid;

use super::error::{ApiError, rejection};
use super::tenant::Tenant;
use super::{AppState, encode};
use crate::log::{
    AppendError, AppendOutcome, AppendRequest, Direction, ExpectedRevision, JsonPayload, LogReader,
    NewEvent, RecordedEvent, Source, StreamName,
};

/// Events in a JSON page when the client names no limit.
const DEFAULT_PAGE: usize = 100;
/// Most events in one JSON page (NDJSON has no limit: it streams).
pub const MAX_PAGE: usize = 10_000;
/// Events read per redb snapshot while streaming NDJSON.
const NDJSON_CHUNK: usize = 1024;
/// Stored bytes a JSON page holds at most (plus one event): a longer page stops early and
/// links `next`.
const PAGE_BYTES: usize = 4 * 1024 * 1024;
/// Stored bytes of one NDJSON chunk at most (plus one event); one chunk is read ahead.
const CHUNK_BYTES: usize = 256 * 1024;
/// What may be percent-encoded in a stream name inside a `next` link: all but unreserved.
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~')
    .remove(b'$');

pub const NDJSON: &str = "application/x-ndjson";

/// `$all`, `$ce-<category>`, or a user stream.
pub fn parse_source(name: &str) -> Result<Source, ApiError> {
    Ok(Source::parse(name)?)
}

pub fn path_param(path: Result<Path<String>, PathRejection>) -> Result<String, ApiError> {
    path.map(|Path(p)| p)
        .map_err(|r| rejection("invalid_path", r))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AppendParams {
    /// `any` (default), `no_stream`, `exists`, or the exact revision of the stream's last
    /// event.
    expected_revision: Option<String>,
}

/// One event of an append request.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub struct NewEventJson {
    /// 1 to 256 bytes.
    #[schema(rename = "type")]
    r#type: String,
    /// Any JSON, at most 1 MiB with the metadata.
    #[schema(value_type = Object)]
    data: serde_json::Value,
    #[schema(value_type = Option<Object>)]
    metadata: Option<serde_json::Value>,
    /// The client's id for the event: a retry with the same ids is stored once.
    #[schema(format = Uuid)]
    id: Option<String>,
}

/// Where an append's events landed.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct Appended {
    stream: String,
    first_position: u64,
    last_position: u64,
    first_revision: u64,
    last_revision: u64,
    /// True when this was a retry of a stored append: nothing was written.
    deduplicated: bool,
    events: Vec<AppendedEvent>,
}

#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct AppendedEvent {
    #[schema(format = Uuid)]
    id: Uuid,
    position: u64,
    revision: u64,
}

/// An event of an append's body (over HTTP, or in an AMQP message).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct EventBody<'a> {
    #[serde(rename = "type")]
    pub event_type: String,
    #[serde(borrow)]
    pub data: &'a RawValue,
    #[serde(borrow, default)]
    pub metadata: Option<&'a RawValue>,
    #[serde(default)]
    pub id: Option<Uuid>,
}

/// `POST /streams/{stream}`: a JSON array of `{type, data, metadata?, id?}`.
/// 201 when written, 200 when the same batch had been appended before (a retry).
#[utoipa::path(
    post,
    path = "/streams/{stream}",
    tag = "streams",
    params(("stream" = String, Path, description = "1 to 256 bytes, not starting with `$`"), AppendParams),
    request_body(content = Vec<NewEventJson>, content_type = "application/json"),
    responses(
        (status = 201, description = "Written, durably", body = Appended),
        (status = 200, description = "A retry of a stored append: nothing written", body = Appended),
        (status = 409, description = "The expected revision does not hold, or an id is stored elsewhere", body = super::openapi::ErrorBody),
        (status = 413, description = "Over 32 MiB", body = super::openapi::ErrorBody),
        (status = 415, description = "Not application/json", body = super::openapi::ErrorBody),
        (status = 507, description = "The disk is full", body = super::openapi::ErrorBody),
    )
)]
pub async fn append(
    Tenant(tenant): Tenant,
    path: Result<Path<String>, PathRejection>,
    query: Result<Query<AppendParams>, QueryRejection>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let stream = StreamName::new(path_param(path)?)?;
    let Query(params) = query.map_err(|r| rejection("invalid_query", r))?;
    let expected = match params.expected_revision.as_deref() {
        None => ExpectedRevision::Any,
        Some(text) => text
            .parse()
            .map_err(|m: String| ApiError::bad_request("invalid_expected_revision", m))?,
    };
    if !is_json(&headers) {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "appends take a JSON array of events with Content-Type: application/json",
        ));
    }
    let body = body.map_err(|r| rejection("invalid_body", r))?;
    let body = std::str::from_utf8(&body).map_err(|e| {
        ApiError::bad_request("malformed_json", format!("the body is not UTF-8: {e}"))
    })?;
    let parsed: Vec<EventBody> = serde_json::from_str(body).map_err(|e| {
        ApiError::bad_request(
            "malformed_json",
            format!("the body must be a JSON array of {{type, data, metadata?, id?}}: {e}"),
        )
    })?;
    let events = new_events(parsed)?;
    let count = events.len() as u64;
    let request = AppendRequest::new(stream.clone(), expected, events)?;
    let started = std::time::Instant::now();
    let result = tenant.log.append(request).await;
    crate::telemetry::append(outcome_label(&result), count, started.elapsed());
    let outcome = result?;
    let status = if outcome.deduplicated {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok((
        status,
        axum::Json(append_response(&stream, count, &outcome)),
    )
        .into_response())
}

/// The events of an append's body, checked; an error names the event.
pub(crate) fn new_events(parsed: Vec<EventBody<'_>>) -> Result<Vec<NewEvent>, ApiError> {
    parsed
        .into_iter()
        .map(|e| {
            let data = JsonPayload::from_raw(e.data)?;
            let metadata = e.metadata.map(JsonPayload::from_raw).transpose()?;
            NewEvent::new(e.id, e.event_type, data, metadata)
        })
        .enumerate()
        .map(|(i, event)| event.map_err(|err| ApiError::from(err).context(format!("event {i}"))))
        .collect()
}

/// What an append answers with.
pub(crate) fn append_response(stream: &StreamName, count: u64, o: &AppendOutcome) -> Appended {
    let events = o
        .ids
        .iter()
        .zip(0..)
        .map(|(id, i)| AppendedEvent {
            id: *id,
            position: o.first_position + i,
            revision: o.first_revision + i,
        })
        .collect();
    Appended {
        stream: stream.as_str().to_owned(),
        first_position: o.first_position,
        last_position: o.first_position + count - 1,
        first_revision: o.first_revision,
        last_revision: o.first_revision + count - 1,
        deduplicated: o.deduplicated,
        events,
    }
}

fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|mime| mime.trim().eq_ignore_ascii_case("application/json"))
}

fn wants_ndjson(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|mime| mime.split(';').next().unwrap_or("").trim() == NDJSON)
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ReadParams {
    /// First event (inclusive): a revision for a stream, a position for `$all` and a category.
    from: Option<u64>,
    /// Events per page, 1 to 1,000 (default 100); ignored by NDJSON, which streams to the head.
    limit: Option<usize>,
    /// `forward` (default) or `backward`.
    #[serde(default)]
    #[param(value_type = Option<String>)]
    direction: Direction,
}

/// `GET /streams/{stream}`: a JSON page `{events, next}`, or with `Accept: application/x-ndjson`
/// every event from `from` up to the head as the request arrived, one per line.
#[utoipa::path(
    get,
    path = "/streams/{stream}",
    tag = "streams",
    params(("stream" = String, Path, description = "A stream, `$all`, or `$ce-<category>`"), ReadParams),
    responses(
        (status = 200, description = "A page of events, or (Accept: application/x-ndjson) every event to the head, one per line",
            content((super::openapi::EventPage = "application/json"), (String = "application/x-ndjson"))),
        (status = 404, description = "The stream or category has no events", body = super::openapi::ErrorBody),
    )
)]
pub async fn read(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    path: Result<Path<String>, PathRejection>,
    query: Result<Query<ReadParams>, QueryRejection>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let name = path_param(path)?;
    let source = parse_source(&name)?;
    let Query(params) = query.map_err(|r| rejection("invalid_query", r))?;
    if params.limit == Some(0) {
        return Err(ApiError::bad_request(
            "invalid_query",
            "limit must be at least 1",
        ));
    }
    let until = *tenant.log.head().borrow();
    if wants_ndjson(&headers) {
        return ndjson(state, &tenant, &name, source, params, until).await;
    }
    let limit = params.limit.unwrap_or(DEFAULT_PAGE);
    if limit > MAX_PAGE {
        return Err(ApiError::bad_request(
            "invalid_query",
            format!("limit {limit} is over {MAX_PAGE}; read with Accept: {NDJSON} to stream more"),
        ));
    }
    let reader = tenant.log.reader().clone();
    let direction = params.direction;
    let (source, events) = tokio::task::spawn_blocking(move || {
        // One more than the page shows whether a next page exists, and where it starts; the
        // read stops once past the byte budget, with the first event of the next page.
        let events = reader.read_bounded(
            &source,
            params.from,
            direction,
            limit + 1,
            until,
            PAGE_BYTES,
        );
        (source, events)
    })
    .await?;
    let mut events = events?.ok_or_else(|| not_found(&name))?;
    let stored: usize = events.iter().map(|e| e.data.len() + e.metadata.len()).sum();
    let keep = if events.len() > limit {
        Some(limit)
    } else if events.len() > 1 && stored > PAGE_BYTES {
        Some(events.len() - 1)
    } else {
        None
    };
    let next = keep.map(|keep| {
        let first_of_next = source.coordinate(&events[keep]);
        events.truncate(keep);
        let segment = utf8_percent_encode(&name, SEGMENT);
        format!(
            "/streams/{segment}?from={first_of_next}&limit={limit}&direction={}",
            direction.as_str()
        )
    });
    let mut body = Vec::with_capacity(events.len() * 256 + 64);
    body.extend_from_slice(b"{\"events\":[");
    for (i, e) in events.iter().enumerate() {
        if i > 0 {
            body.push(b',');
        }
        encode::event(&mut body, e);
    }
    body.extend_from_slice(b"],\"next\":");
    serde_json::to_writer(&mut body, &next).expect("writing to a Vec cannot fail");
    body.push(b'}');
    Ok(encode::json_response(body))
}

/// How an append ended, as `projector_appends_total` labels it.
fn outcome_label(result: &Result<AppendOutcome, AppendError>) -> &'static str {
    match result {
        Ok(outcome) if outcome.deduplicated => "deduplicated",
        Ok(_) => "written",
        Err(AppendError::WrongExpectedRevision { .. } | AppendError::IdConflict { .. }) => {
            "conflict"
        }
        Err(AppendError::Invalid(_)) => "invalid",
        Err(_) => "refused",
    }
}

fn not_found(name: &str) -> ApiError {
    ApiError::not_found("stream_not_found", format!("stream {name:?} has no events"))
}

async fn ndjson(
    state: AppState,
    tenant: &crate::tenants::Tenant,
    name: &str,
    source: Source,
    params: ReadParams,
    until: u64,
) -> Result<Response, ApiError> {
    let permit = state.streams.clone().try_acquire_owned().map_err(|_| {
        ApiError::busy(
            "too_many_streams",
            "the server streams as many NDJSON reads as it takes at once; retry shortly",
        )
    })?;
    let reader = tenant.log.reader().clone();
    let direction = params.direction;
    let remaining = params.limit.unwrap_or(usize::MAX);
    let first_chunk = chunk(&reader, &source, params.from, direction, remaining, until).await?;
    let Some(first_chunk) = first_chunk else {
        return Err(not_found(name));
    };
    // One chunk waits in the channel while the next is read: a slow client holds back only
    // its own reads, and no thread of the blocking pool waits on it.
    let (tx, rx) = mpsc::channel::<Result<Bytes, std::io::Error>>(1);
    // The producer: owned by the runtime, it ends at the last chunk, on a read error, or when
    // the client goes away (the body, and so the receiver, is dropped).
    tokio::spawn(async move {
        let _permit = permit;
        let (mut chunk_events, mut remaining) = (first_chunk, remaining);
        loop {
            let Some(last) = chunk_events.last() else {
                return;
            };
            let next = source.next_after(last, direction);
            remaining -= chunk_events.len();
            if tx.send(Ok(lines(&chunk_events))).await.is_err() {
                return;
            }
            let (Some(from), true) = (next, remaining > 0) else {
                return;
            };
            chunk_events = match chunk(&reader, &source, Some(from), direction, remaining, until)
                .await
            {
                Ok(events) => events.unwrap_or_default(),
                Err(e) => {
                    tracing::error!(error = ?e, "NDJSON read failed; the response is cut short");
                    let _ = tx.send(Err(std::io::Error::other("read failed"))).await;
                    return;
                }
            };
        }
    });
    let body = Body::from_stream(ReceiverStream::new(rx));
    Ok((
        [(header::CONTENT_TYPE, HeaderValue::from_static(NDJSON))],
        body,
    )
        .into_response())
}

/// One NDJSON chunk, read on the blocking pool: at most `remaining` events and about
/// [`CHUNK_BYTES`].
async fn chunk(
    reader: &LogReader,
    source: &Source,
    from: Option<u64>,
    direction: Direction,
    remaining: usize,
    until: u64,
) -> Result<Option<Vec<RecordedEvent>>, ApiError> {
    let (reader, source) = (reader.clone(), source.clone());
    let limit = NDJSON_CHUNK.min(remaining);
    Ok(tokio::task::spawn_blocking(move || {
        reader.read_bounded(&source, from, direction, limit, until, CHUNK_BYTES)
    })
    .await??)
}

fn lines(events: &[RecordedEvent]) -> Bytes {
    let mut out = Vec::with_capacity(events.len() * 256);
    for e in events {
        encode::event(&mut out, e);
        out.push(b'\n');
    }
    out.into()
}
