//! The admin API: accounts and their keys. Every route needs the `admin` scope.

use axum::Json;
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::AppState;
use super::error::{ApiError, rejection};
use crate::auth::{NewKey, StoreError};

/// `GET /admin/accounts`
pub async fn accounts(State(state): State<AppState>) -> Response {
    let accounts: Vec<_> = state
        .keys
        .accounts()
        .into_iter()
        .map(|name| serde_json::json!({ "name": name }))
        .collect();
    Json(serde_json::json!({ "accounts": accounts })).into_response()
}

#[derive(Deserialize)]
pub struct KeyFilter {
    account: Option<String>,
}

/// `GET /admin/keys[?account=]`: never a secret.
pub async fn list_keys(
    State(state): State<AppState>,
    query: Result<Query<KeyFilter>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(filter) = query.map_err(|r| rejection("invalid_query", r))?;
    let keys = state.keys.list(filter.account.as_deref());
    Ok(Json(serde_json::json!({ "keys": keys })).into_response())
}

/// `POST /admin/keys {"account", "scopes", "expires_in_days"?, "label"?}`: 201 with the key
/// and its token, which is shown this once.
pub async fn create_key(
    State(state): State<AppState>,
    body: Result<Json<NewKey>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(new) = body.map_err(|r| rejection("invalid_body", r))?;
    let keys = state.keys.clone();
    let (key, token) = tokio::task::spawn_blocking(move || keys.create(&new))
        .await?
        .map_err(refused)?;
    let mut body = serde_json::to_value(&key).map_err(ApiError::internal)?;
    body["token"] = token.into();
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

/// `DELETE /admin/keys/{id}`: the key is refused from the next request on, and live
/// subscriptions opened with it are closed.
pub async fn revoke_key(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let Path(id) = path.map_err(|r| rejection("invalid_path", r))?;
    let keys = state.keys.clone();
    let key = tokio::task::spawn_blocking(move || keys.revoke(&id))
        .await?
        .map_err(refused)?;
    Ok(Json(key).into_response())
}

fn refused(error: StoreError) -> ApiError {
    match error {
        StoreError::UnknownAccount(_) => {
            ApiError::not_found("account_not_found", error.to_string())
        }
        StoreError::UnknownKey(_) => ApiError::not_found("key_not_found", error.to_string()),
        StoreError::AdminOutsideRoot | StoreError::NoScope => {
            ApiError::bad_request("invalid_key", error.to_string())
        }
        other => ApiError::internal(other),
    }
}
