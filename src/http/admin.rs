//! The admin API: accounts and their keys. Every route needs the `admin` scope.

use axum::Json;
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::AppState;
use super::error::{ApiError, rejection};
use crate::account::Limits;
use crate::auth::{NewKey, StoreError};

/// `GET /admin/accounts`: every account with its limits.
pub async fn accounts(State(state): State<AppState>) -> Response {
    Json(serde_json::json!({ "accounts": state.keys.accounts() })).into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewAccount {
    name: String,
    #[serde(default)]
    limits: Limits,
}

/// `POST /admin/accounts {"name", "limits"?}`: 201 with the account, once it is stored and
/// served (its log partition, projections folder and views made).
pub async fn create_account(
    State(state): State<AppState>,
    body: Result<Json<NewAccount>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(new) = body.map_err(|r| rejection("invalid_body", r))?;
    let (keys, tenants) = (state.keys.clone(), state.tenants.clone());
    let account = tokio::task::spawn_blocking(move || {
        let account = keys
            .create_account(&new.name, new.limits)
            .map_err(refused)?;
        // Stored first: a failure to start it is retried at the next start-up.
        tenants.add(&account).map_err(ApiError::internal)?;
        Ok::<_, ApiError>(account)
    })
    .await??;
    Ok((StatusCode::CREATED, Json(account)).into_response())
}

/// `PUT /admin/accounts/{name}/limits {"live_subscriptions"?, "view_bytes"?}`: replaces the
/// account's limits (a field left out takes its default); in force from the next request.
pub async fn set_limits(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
    body: Result<Json<Limits>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Path(name) = path.map_err(|r| rejection("invalid_path", r))?;
    let Json(limits) = body.map_err(|r| rejection("invalid_body", r))?;
    let keys = state.keys.clone();
    let account = tokio::task::spawn_blocking(move || keys.set_limits(&name, limits))
        .await?
        .map_err(refused)?;
    if let Some(tenant) = state.tenants.get(&account.name) {
        tenant.set_limits(account.limits);
    }
    Ok(Json(account).into_response())
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
        StoreError::AccountExists(_) => {
            ApiError::new(StatusCode::CONFLICT, "account_exists", error.to_string())
        }
        StoreError::InvalidAccountName => {
            ApiError::bad_request("invalid_account_name", error.to_string())
        }
        other => ApiError::internal(other),
    }
}
