//! The tenant a request acts on: its key's account's (the default account's without auth).
//! Handlers take [`Tenant`] rather than reach into the app state, so a request can only ever
//! name streams, projections and views of its own account; another account's are not found.

use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::http::StatusCode;
use axum::http::request::Parts;

use super::AppState;
use super::error::ApiError;
use crate::auth::Principal;

pub struct Tenant(pub Arc<crate::tenants::Tenant>);

impl FromRequestParts<AppState> for Tenant {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let account = parts
            .extensions
            .get::<Arc<Principal>>()
            .map_or(crate::account::DEFAULT, |p| p.account.as_str());
        state.tenants.get(account).map(Tenant).ok_or_else(|| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "account_unavailable",
                "this key's account is not being served",
            )
        })
    }
}
