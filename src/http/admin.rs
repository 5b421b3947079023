//! The admin API: accounts and their keys. Every route needs the `admin` scope.

use axum::Json;
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::AppState;
use super::error::{ApiError, rejection};
use crate::account::{Account, Limits};
use crate::auth::{KeyInfo, NewKey, StoreError};

#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct AccountList {
    accounts: Vec<Account>,
}

/// `GET /admin/accounts`: every account with its limits.
#[utoipa::path(get, path = "/admin/accounts", tag = "admin",
    responses((status = 200, description = "Every account", body = AccountList)))]
pub async fn accounts(State(state): State<AppState>) -> Response {
    Json(AccountList {
        accounts: state.keys.accounts(),
    })
    .into_response()
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewAccount {
    name: String,
    #[serde(default)]
    limits: Limits,
}

/// `POST /admin/accounts {"name", "limits"?}`: 201 with the account, once it is stored and
/// served (its log partition, projections folder and views made).
#[utoipa::path(post, path = "/admin/accounts", tag = "admin",
    request_body = NewAccount,
    responses(
        (status = 201, description = "Created and served", body = Account),
        (status = 409, description = "An account of that name exists", body = super::openapi::ErrorBody),
        (status = 415, description = "Not application/json", body = super::openapi::ErrorBody),
        (status = 422, description = "The body does not describe an account", body = super::openapi::ErrorBody),
    ))]
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
#[utoipa::path(put, path = "/admin/accounts/{name}/limits", tag = "admin",
    params(("name" = String, Path)),
    request_body = Limits,
    responses(
        (status = 200, description = "The account with its new limits", body = Account),
        (status = 404, description = "No such account", body = super::openapi::ErrorBody),
        (status = 415, description = "Not application/json", body = super::openapi::ErrorBody),
        (status = 422, description = "The body does not describe limits", body = super::openapi::ErrorBody),
    ))]
pub async fn set_limits(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
    body: Result<Json<Limits>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Path(name) = path.map_err(|r| rejection("invalid_path", r))?;
    let Json(limits) = body.map_err(|r| rejection("invalid_body", r))?;
    let (keys, tenants) = (state.keys.clone(), state.tenants.clone());
    let account = tokio::task::spawn_blocking(move || {
        keys.set_limits(&name, limits, |account| {
            if let Some(tenant) = tenants.get(&account.name) {
                tenant.set_limits(account.limits);
            }
        })
    })
    .await?
    .map_err(refused)?;
    Ok(Json(account).into_response())
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct KeyFilter {
    account: Option<String>,
}

#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct KeyList {
    keys: Vec<KeyInfo>,
}

/// A new key and its token, shown this once.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct CreatedKey {
    #[serde(flatten)]
    key: KeyInfo,
    /// `pk_<id>_<secret>`: only its hash is stored.
    token: String,
}

/// `GET /admin/keys[?account=]`: never a secret.
#[utoipa::path(get, path = "/admin/keys", tag = "admin",
    params(KeyFilter),
    responses((status = 200, description = "Keys, oldest first; never a secret", body = KeyList)))]
pub async fn list_keys(
    State(state): State<AppState>,
    query: Result<Query<KeyFilter>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(filter) = query.map_err(|r| rejection("invalid_query", r))?;
    let keys = state.keys.list(filter.account.as_deref());
    Ok(Json(KeyList { keys }).into_response())
}

/// `POST /admin/keys {"account", "scopes", "expires_in_days"?, "label"?}`: 201 with the key
/// and its token, which is shown this once.
#[utoipa::path(post, path = "/admin/keys", tag = "admin",
    request_body = NewKey,
    responses(
        (status = 201, description = "The key and its token, shown this once", body = CreatedKey),
        (status = 404, description = "No such account", body = super::openapi::ErrorBody),
        (status = 415, description = "Not application/json", body = super::openapi::ErrorBody),
        (status = 422, description = "The body does not describe a key", body = super::openapi::ErrorBody),
    ))]
pub async fn create_key(
    State(state): State<AppState>,
    body: Result<Json<NewKey>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(new) = body.map_err(|r| rejection("invalid_body", r))?;
    let keys = state.keys.clone();
    let (key, token) = tokio::task::spawn_blocking(move || keys.create(&new))
        .await?
        .map_err(refused)?;
    Ok((StatusCode::CREATED, Json(CreatedKey { key, token })).into_response())
}

/// `DELETE /admin/keys/{id}`: the key is refused from the next request on, and live
/// subscriptions opened with it are closed.
#[utoipa::path(delete, path = "/admin/keys/{id}", tag = "admin",
    params(("id" = String, Path)),
    responses(
        (status = 200, description = "Revoked (or already): refused from the next request on", body = KeyInfo),
        (status = 404, description = "No such key", body = super::openapi::ErrorBody),
    ))]
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
