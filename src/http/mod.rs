//! The HTTP API (axum): appends and reads of raw streams, live subscriptions, projection
//! status and views, the admin API, health; and the accept loop that serves it (`serve`).
//!
//! The router is built from one table of routes, each with the scope it needs (`routes`),
//! which the auth check (`auth`) reads. Handlers never block the reactor: appends await the
//! log writer, reads run on tokio's blocking pool. Every error is JSON (`error::ApiError`),
//! including unknown routes and methods and the rejections of axum's own extractors.

mod admin;
mod auth;
mod changes;
mod dashboard;
pub(crate) mod encode;
pub(crate) mod error;
pub mod live;
pub mod openapi;
mod projections;
pub mod serve;
pub(crate) mod streams;
mod subscriptions;
mod tenant;
mod threads;
mod trace;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::Method;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{MethodRouter, delete, get, post, put};
use tokio::sync::watch;

pub use error::ApiError;

pub use streams::NDJSON;

use crate::auth::{AuthMode, KeyStore, Scope};
use crate::log::{Log, LogHealth};
use crate::tenants::Tenants;

/// Largest request body. An append of `MAX_EVENTS_PER_APPEND` small events fits; a larger
/// body is refused with 413 before it is buffered.
pub const MAX_BODY_BYTES: usize = 32 * 1024 * 1024;

/// What every handler shares: one allocation, so the clone each extractor and middleware makes
/// per request is one reference count (it was a dozen, 2% of a small append's CPU).
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

impl AppState {
    pub fn new(shared: Shared) -> Self {
        AppState(Arc::new(shared))
    }
}

impl std::ops::Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// The server's parts, shared by every request through [`AppState`].
pub struct Shared {
    /// The default account's log: for `/health` (the writer's health is the whole log's).
    pub log: Log,
    /// Every account's log, projections and limits; a handler reaches its request's through
    /// the [`tenant::Tenant`] extractor.
    pub tenants: Arc<Tenants>,
    /// Turns true when the server shuts down, which ends live subscriptions.
    pub shutdown: watch::Receiver<bool>,
    /// How often an idle live subscription sends an SSE comment, so proxies keep it open.
    pub sse_keep_alive: Duration,
    /// One permit per NDJSON read streaming: a read without one gets a 503.
    pub streams: Arc<tokio::sync::Semaphore>,
    /// One permit per live subscription, all accounts together (each account has its own
    /// limit besides).
    pub live: Arc<tokio::sync::Semaphore>,
    /// Bytes queued for live subscribers, all together.
    pub live_bytes: live::LiveBudget,
    /// Whether requests need a key.
    pub auth: AuthMode,
    /// The accounts' keys (open in either mode, so keys can be made before turning auth on).
    pub keys: Arc<KeyStore>,
    /// The RabbitMQ connection's state, when one is configured.
    pub broker: Option<Arc<crate::amqp::Broker>>,
    /// Every account's persistent subscriptions.
    pub subscriptions: Arc<crate::subscriptions::Subscriptions>,
    /// Renders `GET /metrics`; `None` when another server in this process holds the recorder.
    pub metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
}

/// What a route needs of the request's key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Nothing (`GET /health`).
    Public,
    /// A live key holding this scope.
    Needs(Scope),
}

/// One method on one path, and what it needs: the table the router is built from and the
/// auth check reads, so that no route exists without an entry.
#[derive(Clone, Debug)]
pub struct Route {
    pub method: Method,
    pub path: &'static str,
    pub access: Access,
}

/// Every route of the API.
pub fn routes() -> Vec<Route> {
    routes_with_handlers().into_iter().map(|(r, _)| r).collect()
}

fn routes_with_handlers() -> Vec<(Route, MethodRouter<AppState>)> {
    use Access::{Needs, Public};
    use Scope::{Admin, Append, Deploy, Read};
    let route = |method: Method, path: &'static str, access: Access, handler| {
        (
            Route {
                method,
                path,
                access,
            },
            handler,
        )
    };
    let mut all = vec![
        route(Method::GET, "/", Public, get(dashboard::page)),
        route(Method::GET, "/health", Public, get(health)),
        route(Method::GET, "/metrics", Needs(Read), get(metrics)),
        route(
            Method::GET,
            "/openapi.json",
            Public,
            get(openapi::openapi_json),
        ),
        route(
            Method::GET,
            "/streams/{stream}",
            Needs(Read),
            get(streams::read),
        ),
        route(
            Method::POST,
            "/streams/{stream}",
            Needs(Append),
            post(streams::append),
        ),
        route(
            Method::GET,
            "/streams/{stream}/live",
            Needs(Read),
            get(live::subscribe),
        ),
        route(
            Method::GET,
            "/projections",
            Needs(Read),
            get(projections::list),
        ),
        route(
            Method::GET,
            "/projections/{name}",
            Needs(Read),
            get(projections::status),
        ),
        route(
            Method::PUT,
            "/projections/{name}",
            Needs(Deploy),
            put(projections::put),
        ),
        route(
            Method::DELETE,
            "/projections/{name}",
            Needs(Deploy),
            delete(projections::remove),
        ),
        route(
            Method::POST,
            "/projections/{name}/rebuild",
            Needs(Deploy),
            post(projections::rebuild),
        ),
        route(
            Method::POST,
            "/projections/{name}/pause",
            Needs(Deploy),
            post(projections::pause),
        ),
        route(
            Method::POST,
            "/projections/{name}/resume",
            Needs(Deploy),
            post(projections::resume),
        ),
        route(
            Method::POST,
            "/projections/{name}/retry",
            Needs(Deploy),
            post(projections::retry),
        ),
        route(
            Method::POST,
            "/projections/{name}/skip",
            Needs(Deploy),
            post(projections::skip),
        ),
        route(
            Method::GET,
            "/projections/{name}/changes",
            Needs(Read),
            get(changes::follow),
        ),
        route(
            Method::GET,
            "/projections/{name}/view",
            Needs(Read),
            get(projections::page),
        ),
        route(
            Method::GET,
            "/projections/{name}/view/{*key}",
            Needs(Read),
            get(projections::document),
        ),
        route(
            Method::GET,
            "/subscriptions",
            Needs(Read),
            get(subscriptions::list),
        ),
        route(
            Method::PUT,
            "/subscriptions/{name}",
            Needs(Deploy),
            put(subscriptions::put),
        ),
        route(
            Method::GET,
            "/subscriptions/{name}",
            Needs(Read),
            get(subscriptions::status),
        ),
        route(
            Method::DELETE,
            "/subscriptions/{name}",
            Needs(Deploy),
            delete(subscriptions::delete),
        ),
        route(
            Method::GET,
            "/subscriptions/{name}/events",
            Needs(Read),
            get(subscriptions::poll),
        ),
        route(
            Method::GET,
            "/subscriptions/{name}/live",
            Needs(Read),
            get(subscriptions::live),
        ),
        route(
            Method::POST,
            "/subscriptions/{name}/ack",
            Needs(Read),
            post(subscriptions::ack),
        ),
        route(
            Method::POST,
            "/subscriptions/{name}/nack",
            Needs(Read),
            post(subscriptions::nack),
        ),
        route(
            Method::GET,
            "/subscriptions/{name}/parked",
            Needs(Read),
            get(subscriptions::parked),
        ),
        route(
            Method::POST,
            "/subscriptions/{name}/parked/replay",
            Needs(Deploy),
            post(subscriptions::replay),
        ),
        route(
            Method::GET,
            "/admin/accounts",
            Needs(Admin),
            get(admin::accounts),
        ),
        route(
            Method::POST,
            "/admin/accounts",
            Needs(Admin),
            post(admin::create_account),
        ),
        route(
            Method::PUT,
            "/admin/accounts/{name}/limits",
            Needs(Admin),
            put(admin::set_limits),
        ),
        route(
            Method::GET,
            "/admin/keys",
            Needs(Admin),
            get(admin::list_keys),
        ),
        route(
            Method::POST,
            "/admin/keys",
            Needs(Admin),
            post(admin::create_key),
        ),
        route(
            Method::DELETE,
            "/admin/keys/{id}",
            Needs(Admin),
            delete(admin::revoke_key),
        ),
    ];
    all.extend(debug_routes());
    all
}

pub fn router(state: AppState) -> Router {
    let mut router = Router::new();
    let mut table = Vec::new();
    for (route, handler) in routes_with_handlers() {
        router = router.route(route.path, handler);
        table.push(route);
    }
    let gate = Arc::new(auth::Gate::new(state.auth, state.keys.clone(), &table));
    router
        // Runs after routing (it needs the matched path), so unknown routes are 404 for all.
        .route_layer(axum::middleware::from_fn_with_state(gate, auth::check))
        .fallback(|| async { ApiError::not_found("not_found", "no such route") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "this route does not take that method",
            )
        })
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(axum::middleware::from_fn(trace::measure))
        .layer(trace::layer())
        .layer(axum::middleware::from_fn(trace::request_id))
        .with_state(state)
}

/// `GET /health`: 200 `{"status": "ok", "head"}` while the log takes appends; 503 with
/// `"status": "degraded"` (the disk is full or the log is being reopened: reads are served,
/// appends refused) or `"failing"` (the log writer is gone until a restart), with a reason.
#[utoipa::path(get, path = "/health", tag = "meta",
    responses(
        (status = 200, description = "The log takes appends", body = openapi::Health),
        (status = 503, description = "`degraded` (appends refused, reads served) or `failing` (restart)", body = openapi::Health),
    ))]
async fn health(State(state): State<AppState>) -> impl IntoResponse {
    let head = *state.log.head().borrow();
    let amqp = state.broker.as_ref().map(|b| b.health());
    let (status, reason) = match state.log.health() {
        LogHealth::Ok => {
            let mut body = serde_json::json!({ "status": "ok", "head": head });
            if let Some(amqp) = amqp {
                body["amqp"] = amqp;
            }
            return axum::Json(body).into_response();
        }
        LogHealth::DiskFull => (
            "degraded",
            "the disk is full: appends are refused until space is freed".to_owned(),
        ),
        LogHealth::Unavailable { reason } => ("degraded", reason),
        LogHealth::Failed { reason } => ("failing", reason),
    };
    let mut body = serde_json::json!({ "status": status, "reason": reason, "head": head });
    if let Some(amqp) = amqp {
        body["amqp"] = amqp;
    }
    (StatusCode::SERVICE_UNAVAILABLE, axum::Json(body)).into_response()
}

/// `GET /metrics`: Prometheus' text format. Every account's series are in it, so with keys it
/// takes a key of the root account (the operator's); another account's key is refused.
#[utoipa::path(get, path = "/metrics", tag = "meta",
    responses(
        (status = 200, description = "Prometheus text format", content_type = "text/plain", body = String),
        (status = 403, description = "A key of another account than root", body = openapi::ErrorBody),
        (status = 404, description = "This server records no metrics", body = openapi::ErrorBody),
    ))]
async fn metrics(
    State(state): State<AppState>,
    principal: Option<axum::Extension<Arc<crate::auth::Principal>>>,
) -> Result<axum::response::Response, ApiError> {
    if principal.is_some_and(|p| p.account != crate::account::DEFAULT) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "root_only",
            "metrics cover every account: they take a key of the root account",
        ));
    }
    let Some(handle) = state.metrics.clone() else {
        return Err(ApiError::not_found(
            "metrics_unavailable",
            "this server does not record metrics",
        ));
    };
    let tenants = state.tenants.clone();
    let body =
        tokio::task::spawn_blocking(move || crate::telemetry::render(&handle, &tenants)).await?;
    Ok((
        [(
            axum::http::header::CONTENT_TYPE,
            axum::http::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        )],
        body,
    )
        .into_response())
}

/// `PUT /debug/failpoints/{name}` (body: a `fail` action such as `return(enospc)`, `panic`,
/// `sleep(2000)`, `off`) and `DELETE` to remove it: only in a build with the `failpoints`
/// feature, which is how `cargo test` builds the server.
#[cfg(feature = "failpoints")]
fn debug_routes() -> Vec<(Route, MethodRouter<AppState>)> {
    use axum::extract::Path;
    let path = "/debug/failpoints/{name}";
    let access = Access::Needs(Scope::Admin);
    vec![
        (
            Route {
                method: Method::PUT,
                path,
                access,
            },
            put(|Path(name): Path<String>, body: String| async move {
                match fail::cfg(name, body.trim()) {
                    Ok(()) => StatusCode::NO_CONTENT.into_response(),
                    Err(e) => ApiError::bad_request("invalid_failpoint", e).into_response(),
                }
            }),
        ),
        (
            Route {
                method: Method::DELETE,
                path,
                access,
            },
            delete(|Path(name): Path<String>| async move {
                fail::remove(name);
                StatusCode::NO_CONTENT
            }),
        ),
    ]
}

#[cfg(not(feature = "failpoints"))]
fn debug_routes() -> Vec<(Route, MethodRouter<AppState>)> {
    Vec::new()
}
