//! Projection status and views over HTTP. View reads run on the blocking pool (redb), and may
//! wait (`wait_for=<position>`) until the projection has applied a position: read-your-writes
//! after an append.

use std::time::Duration;

use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
use serde::Deserialize;
use serde_json::value::RawValue;

use super::error::{ApiError, rejection};
use super::tenant::Tenant;
use crate::log::Position;
use crate::runtime::VersionHash;
use crate::scheduler::{ControlError, Projections, valid_name};
use crate::views::ViewStore;

const DEFAULT_PAGE: usize = 100;
const MAX_PAGE: usize = 1000;
const DEFAULT_WAIT: Duration = Duration::from_secs(5);
const MAX_WAIT: Duration = Duration::from_secs(30);

#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct ProjectionList {
    projections: Vec<crate::scheduler::Status>,
}

/// `GET /projections`
#[utoipa::path(get, path = "/projections", tag = "projections",
    responses((status = 200, description = "Every projection's status", body = ProjectionList)))]
pub async fn list(Tenant(tenant): Tenant) -> impl IntoResponse {
    axum::Json(ProjectionList {
        projections: tenant.projections.statuses(),
    })
}

/// `GET /projections/{name}`
#[utoipa::path(get, path = "/projections/{name}", tag = "projections",
    params(("name" = String, Path)),
    responses(
        (status = 200, description = "The projection's status", body = crate::scheduler::Status),
        (status = 404, description = "No such projection", body = super::openapi::ErrorBody),
    ))]
pub async fn status(
    Tenant(tenant): Tenant,
    path: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let Path(name) = path.map_err(|r| rejection("invalid_path", r))?;
    let status = tenant
        .projections
        .status(&name)
        .ok_or_else(|| unknown(&name))?;
    Ok(axum::Json(status).into_response())
}

/// `PUT /projections/{name}` with a `.wasm` body: deploys it through the projections folder
/// (202; the status shows the new version once the watcher has loaded it).
#[utoipa::path(put, path = "/projections/{name}", tag = "projections",
    params(("name" = String, Path, description = "1 to 64 of a-z, 0-9, - and _")),
    request_body(content = Vec<u8>, content_type = "application/octet-stream", description = "A WebAssembly component (any content type is taken)"),
    responses(
        (status = 202, description = "Written to the projections folder; loaded within a moment", body = Deployed),
        (status = 413, description = "Over 32 MiB", body = super::openapi::ErrorBody),
        (status = 429, description = "The account's views are at their storage limit", body = super::openapi::ErrorBody),
    ))]
pub async fn put(
    Tenant(tenant): Tenant,
    path: Result<Path<String>, PathRejection>,
    body: Result<axum::body::Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<Response, ApiError> {
    let Path(name) = path.map_err(|r| rejection("invalid_path", r))?;
    // Over the body limit: a JSON 413 like an append's, not axum's plain text.
    let body = body.map_err(|r| rejection("invalid_body", r))?;
    if !valid_name(&name) {
        return Err(ApiError::bad_request(
            "invalid_name",
            "a projection name is 1 to 64 of a-z, 0-9, - and _",
        ));
    }
    if !body.starts_with(b"\0asm") {
        return Err(ApiError::bad_request(
            "invalid_projection",
            "the body is not a WebAssembly component",
        ));
    }
    let version = VersionHash::of(&body).to_string();
    let target = name.clone();
    tokio::task::spawn_blocking(move || {
        within_quota(&tenant)?;
        tenant
            .projections
            .write_file(&target, &body)
            .map_err(ApiError::internal)
    })
    .await??;
    Ok((StatusCode::ACCEPTED, axum::Json(Deployed { name, version })).into_response())
}

/// `DELETE /projections/{name}`: removes the projection's file from the folder (202); the
/// watcher then stops it and deletes its storage.
#[utoipa::path(delete, path = "/projections/{name}", tag = "projections",
    params(("name" = String, Path)),
    responses(
        (status = 202, description = "Removed from the folder; stopped and its storage deleted within a moment", body = Removed),
        (status = 404, description = "No such projection", body = super::openapi::ErrorBody),
    ))]
pub async fn remove(
    Tenant(tenant): Tenant,
    path: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let Path(name) = path.map_err(|r| rejection("invalid_path", r))?;
    if !valid_name(&name) {
        return Err(unknown(&name));
    }
    let projections = tenant.projections.clone();
    let target = name.clone();
    let removed = tokio::task::spawn_blocking(move || projections.remove_file(&target)).await?;
    match removed {
        Ok(true) => Ok((
            StatusCode::ACCEPTED,
            axum::Json(Removed {
                name,
                removed: true,
            }),
        )
            .into_response()),
        Ok(false) => Err(unknown(&name)),
        Err(e) => Err(ApiError::internal(e)),
    }
}

#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct Deployed {
    name: String,
    /// SHA-256 of the component.
    version: String,
}

#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct Removed {
    name: String,
    removed: bool,
}

/// What an operator asks of a projection.
#[derive(Clone, Copy)]
pub enum Action {
    Rebuild,
    Pause,
    Resume,
    Retry,
    Skip,
}

/// `POST /projections/{name}/rebuild`
#[utoipa::path(post, path = "/projections/{name}/rebuild", tag = "projections",
    params(("name" = String, Path)),
    responses(
        (status = 202, description = "Rebuilding from position 0 beside the serving version", body = crate::scheduler::Status),
        (status = 404, description = "No such projection", body = super::openapi::ErrorBody),
        (status = 409, description = "A rebuild is under way", body = super::openapi::ErrorBody),
        (status = 422, description = "The file no longer loads", body = super::openapi::ErrorBody),
        (status = 429, description = "The account's views are at their storage limit", body = super::openapi::ErrorBody),
    ))]
pub async fn rebuild(
    tenant: Tenant,
    path: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    control(tenant, path, Action::Rebuild).await
}

/// `POST /projections/{name}/pause`
#[utoipa::path(post, path = "/projections/{name}/pause", tag = "projections",
    params(("name" = String, Path)),
    responses(
        (status = 200, description = "Paused, with its rebuild", body = crate::scheduler::Status),
        (status = 404, description = "No such projection", body = super::openapi::ErrorBody),
    ))]
pub async fn pause(
    tenant: Tenant,
    path: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    control(tenant, path, Action::Pause).await
}

/// `POST /projections/{name}/resume`
#[utoipa::path(post, path = "/projections/{name}/resume", tag = "projections",
    params(("name" = String, Path)),
    responses(
        (status = 200, description = "Running again", body = crate::scheduler::Status),
        (status = 404, description = "No such projection", body = super::openapi::ErrorBody),
    ))]
pub async fn resume(
    tenant: Tenant,
    path: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    control(tenant, path, Action::Resume).await
}

/// `POST /projections/{name}/retry`
#[utoipa::path(post, path = "/projections/{name}/retry", tag = "projections",
    params(("name" = String, Path)),
    responses(
        (status = 200, description = "Retried now rather than after its backoff", body = crate::scheduler::Status),
        (status = 404, description = "No such projection", body = super::openapi::ErrorBody),
        (status = 409, description = "It is not faulted", body = super::openapi::ErrorBody),
    ))]
pub async fn retry(
    tenant: Tenant,
    path: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    control(tenant, path, Action::Retry).await
}

/// `POST /projections/{name}/skip`
#[utoipa::path(post, path = "/projections/{name}/skip", tag = "projections",
    params(("name" = String, Path)),
    responses(
        (status = 200, description = "Moved past the event it failed on (recorded in `skipped`)", body = crate::scheduler::Status),
        (status = 404, description = "No such projection", body = super::openapi::ErrorBody),
        (status = 409, description = "It is not faulted, or is being retried", body = super::openapi::ErrorBody),
    ))]
pub async fn skip(
    tenant: Tenant,
    path: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    control(tenant, path, Action::Skip).await
}

/// `POST /projections/{name}/{rebuild,pause,resume,retry,skip}`: the status after the action
/// (202 for a rebuild, which runs on).
async fn control(
    Tenant(tenant): Tenant,
    path: Result<Path<String>, PathRejection>,
    action: Action,
) -> Result<Response, ApiError> {
    let Path(name) = path.map_err(|r| rejection("invalid_path", r))?;
    let (projections, target) = (tenant.projections.clone(), name.clone());
    let quota = tenant.clone();
    // Blocking: a rebuild may compile, a skip commits.
    tokio::task::spawn_blocking(move || {
        let done = match action {
            Action::Rebuild => {
                within_quota(&quota)?;
                projections.rebuild(&target)
            }
            Action::Pause => projections.pause(&target),
            Action::Resume => projections.resume(&target),
            Action::Retry => projections.retry(&target),
            Action::Skip => projections.skip(&target),
        };
        done.map_err(refused)
    })
    .await??;
    let status = tenant
        .projections
        .status(&name)
        .ok_or_else(|| unknown(&name))?;
    let code = match action {
        Action::Rebuild => StatusCode::ACCEPTED,
        _ => StatusCode::OK,
    };
    Ok((code, axum::Json(status)).into_response())
}

/// 429 when the account's views are at their storage limit: a deploy or a rebuild would
/// only add to them. Blocking (it may measure the views).
fn within_quota(tenant: &crate::tenants::Tenant) -> Result<(), ApiError> {
    match tenant.quota.exceeded() {
        None => Ok(()),
        Some(over) => Err(ApiError::too_many(
            "view_storage_limit",
            format!("{over}; remove projections or ask for a higher limit"),
            60,
        )),
    }
}

fn refused(error: ControlError) -> ApiError {
    let (status, code) = match &error {
        ControlError::NotFound(_) => (StatusCode::NOT_FOUND, "projection_not_found"),
        ControlError::RebuildInProgress(_) => (StatusCode::CONFLICT, "rebuild_in_progress"),
        ControlError::NotFaulted(_) => (StatusCode::CONFLICT, "not_faulted"),
        ControlError::Busy(_) => (StatusCode::CONFLICT, "busy"),
        ControlError::Load { .. } => (StatusCode::UNPROCESSABLE_ENTITY, "invalid_projection"),
        ControlError::Storage(_) => return ApiError::internal(error),
    };
    ApiError::new(status, code, error.to_string())
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct WaitParams {
    /// Answer only once the projection has applied this position.
    wait_for: Option<Position>,
    /// How long to wait for it, in milliseconds (default 5,000, at most 30,000).
    timeout_ms: Option<u64>,
}

/// `GET /projections/{name}/view/{key}`: the document, as stored.
#[utoipa::path(get, path = "/projections/{name}/view/{key}", tag = "views",
    params(("name" = String, Path), ("key" = String, Path, description = "The document's key; may hold `/`"), WaitParams),
    responses(
        (status = 200, description = "The document, as the projection stored it (JSON)", content_type = "application/json", body = Object),
        (status = 404, description = "No such projection or document", body = super::openapi::ErrorBody),
        (status = 409, description = "The projection did not reach `wait_for` in time (`wait_timeout`; retry later)", body = super::openapi::ErrorBody),
    ))]
pub async fn document(
    Tenant(tenant): Tenant,
    path: Result<Path<(String, String)>, PathRejection>,
    query: Result<Query<WaitParams>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Path((name, key)) = path.map_err(|r| rejection("invalid_path", r))?;
    let Query(wait) = query.map_err(|r| rejection("invalid_query", r))?;
    let view = ready_view(&tenant.projections, &name, &wait).await?;
    // A hot document is served from memory, on the reactor: no read transaction, no thread hop.
    if let Some(document) = view.cached(&key) {
        return Ok(super::encode::json_response(document));
    }
    let lookup = key.clone();
    let found = tokio::task::spawn_blocking(move || view.get(&lookup)).await??;
    match found {
        Some(document) => Ok(super::encode::json_response(document)),
        None => Err(ApiError::not_found(
            "document_not_found",
            format!("projection {name:?} has no document {key:?}"),
        )),
    }
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PageParams {
    #[serde(default)]
    prefix: String,
    after: Option<String>,
    limit: Option<usize>,
    // Not `#[serde(flatten)] WaitParams`: flattened fields lose the query string's number
    // parsing ("invalid type: string").
    wait_for: Option<Position>,
    timeout_ms: Option<u64>,
}

#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub struct DocumentPage {
    documents: Vec<PageItem>,
    /// The next page's URL (path and query), `null` at the end.
    next: Option<String>,
    /// The position the view had applied when read.
    position: u64,
}

/// A document of a page: its value, or an error for bytes that are not JSON.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub struct PageItem {
    key: String,
    #[schema(value_type = Option<Object>)]
    value: Option<serde_json::Value>,
    error: Option<super::openapi::ErrorDetail>,
}

/// `GET /projections/{name}/view?prefix=&after=&limit=`: documents in key order.
#[utoipa::path(get, path = "/projections/{name}/view", tag = "views",
    params(("name" = String, Path), PageParams),
    responses(
        (status = 200, description = "A page of documents in key order", body = DocumentPage),
        (status = 404, description = "No such projection", body = super::openapi::ErrorBody),
        (status = 409, description = "The projection did not reach `wait_for` in time (`wait_timeout`; retry later)", body = super::openapi::ErrorBody),
    ))]
pub async fn page(
    Tenant(tenant): Tenant,
    path: Result<Path<String>, PathRejection>,
    query: Result<Query<PageParams>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Path(name) = path.map_err(|r| rejection("invalid_path", r))?;
    let Query(params) = query.map_err(|r| rejection("invalid_query", r))?;
    let limit = params.limit.unwrap_or(DEFAULT_PAGE);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(ApiError::bad_request(
            "invalid_query",
            format!("limit must be 1 to {MAX_PAGE}"),
        ));
    }
    let wait = WaitParams {
        wait_for: params.wait_for,
        timeout_ms: params.timeout_ms,
    };
    let view = ready_view(&tenant.projections, &name, &wait).await?;
    let (prefix, after) = (params.prefix.clone(), params.after);
    let (documents, position) = tokio::task::spawn_blocking(move || {
        // One more than the page shows whether a next page exists.
        view.page(&prefix, after.as_deref(), limit + 1)
    })
    .await??;
    let more = documents.len() > limit;
    let mut items = Vec::with_capacity(limit);
    for d in documents.into_iter().take(limit) {
        let value = String::from_utf8(d.value)
            .ok()
            .and_then(|text| RawValue::from_string(text).ok());
        items.push(match value {
            Some(value) => serde_json::json!({ "key": d.key, "value": value }),
            // A guest can store any bytes; the page still serves, and names the bad one.
            None => serde_json::json!({ "key": d.key, "error": {
                "code": "not_json",
                "message": format!("the projection stored a document under {:?} that is not JSON", d.key),
            }}),
        });
    }
    let next = match items.last() {
        Some(last) if more => {
            let last = last["key"].as_str().unwrap_or_default();
            Some(format!(
                "/projections/{name}/view?prefix={}&after={}&limit={limit}",
                utf8_percent_encode(&params.prefix, NON_ALPHANUMERIC),
                utf8_percent_encode(last, NON_ALPHANUMERIC)
            ))
        }
        _ => None,
    };
    Ok(axum::Json(serde_json::json!({
        "documents": items,
        "next": next,
        "position": position,
    }))
    .into_response())
}

async fn ready_view(
    projections: &Projections,
    name: &str,
    wait: &WaitParams,
) -> Result<ViewStore, ApiError> {
    projections.view(name).ok_or_else(|| unknown(name))?;
    if let Some(position) = wait.wait_for {
        let timeout = wait
            .timeout_ms
            .map_or(DEFAULT_WAIT, Duration::from_millis)
            .min(MAX_WAIT);
        if !projections.wait_for(name, position, timeout).await {
            // Removed while waiting, or still there but not that far.
            projections.view(name).ok_or_else(|| unknown(name))?;
            // A state the view is not in yet, not a failure of the server: 409, to retry.
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "wait_timeout",
                format!("projection {name:?} did not reach position {position} within {timeout:?}"),
            )
            .retry_after(1));
        }
    }
    // Taken after the wait: a rebuilt version may have been swapped in meanwhile.
    projections.view(name).ok_or_else(|| unknown(name))
}

fn unknown(name: &str) -> ApiError {
    ApiError::not_found(
        "projection_not_found",
        format!("no projection named {name:?} is loaded"),
    )
}
