//! Every request's id and span. A request's `x-request-id` is kept when it is a plain token
//! (1 to 64 of `A-Z a-z 0-9 - _ .`, so a client cannot forge log lines with it), or replaced
//! by a fresh UUID; the response echoes it. tower-http's `TraceLayer` opens a span per request
//! carrying the method, the route template and the id, and logs each response with its status
//! and latency at `debug` (5xx at `error`). A failure's JSON body names the same id
//! (`ApiError::internal` reads it from [`REQUEST_ID`]).

use std::time::Duration;

use axum::extract::{MatchedPath, Request};
use axum::http::{HeaderName, HeaderValue, Response};
use axum::middleware::Next;
use tower_http::classify::ServerErrorsFailureClass;
use tower_http::trace::TraceLayer;
use tracing::Span;

pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

tokio::task_local! {
    /// The id of the request the current task serves.
    pub static REQUEST_ID: String;
}

/// The id a request goes by: its own `x-request-id` if plain, else a new one.
#[derive(Clone, Debug)]
pub struct RequestId(pub String);

fn valid(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

/// Outermost middleware: settles the request's id, runs the rest with it in [`REQUEST_ID`],
/// and echoes it on the response.
pub async fn request_id(mut request: Request, next: Next) -> axum::response::Response {
    let id = request
        .headers()
        .get(&X_REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|id| valid(id))
        .map(str::to_owned)
        .unwrap_or_else(|| uuid::Uuid::now_v7().simple().to_string());
    let value = HeaderValue::from_str(&id).expect("a valid id is a valid header value");
    request
        .headers_mut()
        .insert(X_REQUEST_ID.clone(), value.clone());
    request.extensions_mut().insert(RequestId(id.clone()));
    let mut response = REQUEST_ID.scope(id, next.run(request)).await;
    response.headers_mut().insert(X_REQUEST_ID.clone(), value);
    response
}

/// Counts and times every answered request by route template, method and status
/// (`projector_http_requests_total`, `projector_http_request_duration_seconds`).
pub async fn measure(request: Request, next: Next) -> axum::response::Response {
    let route = request.extensions().get::<MatchedPath>().cloned();
    let method = request.method().clone();
    let started = std::time::Instant::now();
    let response = next.run(request).await;
    crate::telemetry::http_request(
        route.as_ref().map_or("unmatched", MatchedPath::as_str),
        &method,
        response.status(),
        started.elapsed(),
    );
    response
}

/// The request's span and its response log line.
#[allow(clippy::type_complexity)]
pub fn layer() -> TraceLayer<
    tower_http::classify::SharedClassifier<tower_http::classify::ServerErrorsAsFailures>,
    fn(&Request) -> Span,
    (),
    fn(&Response<axum::body::Body>, Duration, &Span),
    (),
    (),
    fn(ServerErrorsFailureClass, Duration, &Span),
> {
    TraceLayer::new_for_http()
        .make_span_with(make_span as fn(&Request) -> Span)
        .on_request(())
        .on_response(on_response as fn(&Response<axum::body::Body>, Duration, &Span))
        .on_body_chunk(())
        .on_eos(())
        .on_failure(on_failure as fn(ServerErrorsFailureClass, Duration, &Span))
}

fn make_span(request: &Request) -> Span {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", |m| m.as_str());
    let id = request
        .extensions()
        .get::<RequestId>()
        .map_or("", |id| id.0.as_str());
    // At `debug`, so that at the default level no span is built per request (its cost was not
    // measured apart); failures log their request id themselves at any level.
    tracing::debug_span!("request", method = %request.method(), route, request_id = id)
}

fn on_response(response: &Response<axum::body::Body>, latency: Duration, _span: &Span) {
    tracing::debug!(status = response.status().as_u16(), ?latency, "answered");
}

fn on_failure(failure: ServerErrorsFailureClass, latency: Duration, _span: &Span) {
    tracing::error!(%failure, ?latency, "request failed");
}
