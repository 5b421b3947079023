//! The auth check, run on every routed request: with `--auth keys`, the request's key must be
//! live and hold the scope its route needs (`Route::access`). A missing or bad key is a 401
//! with `WWW-Authenticate: Bearer`; a key without the scope, a 403 naming it. The key's
//! `Arc<Principal>` goes into the request's extensions for the handlers.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::error::ApiError;
use super::{Access, Route};
use crate::auth::{AuthError, AuthMode, KeyStore};

/// What the check needs: the mode, the keys, and each route's access.
pub struct Gate {
    mode: AuthMode,
    keys: Arc<KeyStore>,
    /// By path template, then method.
    access: HashMap<&'static str, Vec<(Method, Access)>>,
}

impl Gate {
    pub fn new(mode: AuthMode, keys: Arc<KeyStore>, routes: &[Route]) -> Self {
        let mut access: HashMap<&'static str, Vec<(Method, Access)>> = HashMap::new();
        for route in routes {
            access
                .entry(route.path)
                .or_default()
                .push((route.method.clone(), route.access));
        }
        Gate { mode, keys, access }
    }
}

pub async fn check(
    State(gate): State<Arc<Gate>>,
    matched: Option<MatchedPath>,
    mut request: Request,
    next: Next,
) -> Response {
    if gate.mode == AuthMode::None {
        return next.run(request).await;
    }
    let method = match request.method() {
        &Method::HEAD => Method::GET,
        other => other.clone(),
    };
    // A routed request has a table entry; one without is refused rather than let through.
    let access = matched
        .as_ref()
        .and_then(|m| gate.access.get(m.as_str()))
        .and_then(|methods| methods.iter().find(|(m, _)| *m == method))
        .map_or(Access::Needs(crate::auth::Scope::Admin), |(_, access)| {
            *access
        });
    let Access::Needs(scope) = access else {
        return next.run(request).await;
    };
    let principal = match token_of(&request).map(|t| gate.keys.verify(&t)) {
        None => return unauthorized(AuthError::Missing),
        Some(Err(e)) => return unauthorized(e),
        Some(Ok(principal)) => principal,
    };
    if !principal.scopes.contains(&scope) {
        return ApiError::new(
            axum::http::StatusCode::FORBIDDEN,
            "missing_scope",
            format!(
                "this key lacks the {} scope this route needs",
                scope.as_str()
            ),
        )
        .into_response();
    }
    request.extensions_mut().insert(principal);
    next.run(request).await
}

/// The bearer token of the `Authorization` header, or, on the live routes (browsers'
/// `EventSource` cannot send headers), of the `access_token` query parameter.
fn token_of(request: &Request) -> Option<String> {
    if let Some(value) = request.headers().get(header::AUTHORIZATION) {
        let value = value.to_str().ok()?;
        let (scheme, token) = value.split_once(' ')?;
        return scheme
            .eq_ignore_ascii_case("bearer")
            .then(|| token.trim().to_owned());
    }
    if !request.uri().path().ends_with("/live") {
        return None;
    }
    request.uri().query()?.split('&').find_map(|pair| {
        let (name, value) = pair.split_once('=')?;
        (name == "access_token").then(|| {
            percent_encoding::percent_decode_str(value)
                .decode_utf8_lossy()
                .into_owned()
        })
    })
}

fn unauthorized(error: AuthError) -> Response {
    let code = match error {
        AuthError::Missing => "missing_key",
        AuthError::Malformed => "malformed_key",
        AuthError::Unknown => "unknown_key",
        AuthError::Revoked => "revoked_key",
        AuthError::Expired => "expired_key",
    };
    let mut response = ApiError::new(
        axum::http::StatusCode::UNAUTHORIZED,
        code,
        error.to_string(),
    )
    .into_response();
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        axum::http::HeaderValue::from_static("Bearer realm=\"projector\""),
    );
    response
}
