//! The HTTP error boundary: every failure becomes a status and a JSON body
//! `{"error": {"code": "...", "message": "..."}}` naming the problem.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::log::{AppendError, InvalidAppend, StorageError};

#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    /// For a revision conflict: the stream's current revision (`null` when it has no events).
    current_revision: Option<Option<u64>>,
    /// Seconds after which a refused request may be retried (`Retry-After`).
    retry_after: Option<u64>,
    /// For a failure of the server: the id its log line carries.
    request_id: Option<String>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            current_revision: None,
            retry_after: None,
            request_id: None,
        }
    }

    /// 503 with `Retry-After: 1`: a limit on concurrent work is reached.
    pub fn busy(code: &'static str, message: impl Into<String>) -> Self {
        Self {
            retry_after: Some(1),
            ..Self::new(StatusCode::SERVICE_UNAVAILABLE, code, message)
        }
    }

    /// 429 with `Retry-After`: the account's limit on something it holds is reached.
    pub fn too_many(code: &'static str, message: impl Into<String>, retry_after: u64) -> Self {
        Self {
            retry_after: Some(retry_after),
            ..Self::new(StatusCode::TOO_MANY_REQUESTS, code, message)
        }
    }

    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    pub fn not_found(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, code, message)
    }

    /// A failure of the server itself, reported as 500 without its detail (storage errors
    /// name files and system errors): the detail is logged with an id the answer carries.
    pub fn internal(error: impl std::fmt::Display) -> Self {
        Self::failure(StatusCode::INTERNAL_SERVER_ERROR, "internal_error", error)
    }

    fn failure(status: StatusCode, code: &'static str, error: impl std::fmt::Display) -> Self {
        // The request's own id (`x-request-id`), which its span in the log carries too.
        let id = super::trace::REQUEST_ID
            .try_with(Clone::clone)
            .unwrap_or_else(|_| uuid::Uuid::now_v7().simple().to_string());
        tracing::error!(request_id = %id, %error, "request failed");
        Self {
            request_id: Some(id.clone()),
            ..Self::new(
                status,
                code,
                format!("the server failed; its log has the details under request id {id}"),
            )
        }
    }

    pub fn status(&self) -> StatusCode {
        self.status
    }

    pub fn code(&self) -> &'static str {
        self.code
    }

    pub fn message(&self) -> &str {
        &self.message
    }

    /// The body the error answers with: `{"error": {"code", "message", ...}}`.
    pub fn body(&self) -> serde_json::Value {
        let mut error = json!({ "code": self.code, "message": self.message });
        if let Some(current) = self.current_revision {
            error["current_revision"] = json!(current);
        }
        if let Some(id) = &self.request_id {
            error["request_id"] = json!(id);
        }
        json!({ "error": error })
    }

    /// Adds `Retry-After: seconds`.
    pub fn retry_after(mut self, seconds: u64) -> Self {
        self.retry_after = Some(seconds);
        self
    }

    /// Says which part of the request the error is about.
    pub fn context(mut self, context: String) -> Self {
        self.message = format!("{context}: {}", self.message);
        self
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, axum::Json(self.body())).into_response();
        if let Some(seconds) = self.retry_after {
            response
                .headers_mut()
                .insert(axum::http::header::RETRY_AFTER, seconds.into());
        }
        response
    }
}

impl From<AppendError> for ApiError {
    fn from(e: AppendError) -> Self {
        let message = e.to_string();
        match e {
            AppendError::Invalid(invalid) => invalid.into(),
            AppendError::WrongExpectedRevision { current, .. } => Self {
                current_revision: Some(current),
                ..Self::new(StatusCode::CONFLICT, "wrong_expected_revision", message)
            },
            AppendError::IdConflict { .. } => {
                Self::new(StatusCode::CONFLICT, "event_id_conflict", message)
            }
            AppendError::Storage(e) => e.into(),
            AppendError::Closed => {
                Self::new(StatusCode::SERVICE_UNAVAILABLE, "shutting_down", message)
            }
            AppendError::WriterFailed(_) => {
                Self::new(StatusCode::SERVICE_UNAVAILABLE, "log_failed", message)
            }
        }
    }
}

impl From<InvalidAppend> for ApiError {
    fn from(e: InvalidAppend) -> Self {
        let message = e.to_string();
        match e {
            InvalidAppend::StreamName(_) => Self::bad_request("invalid_stream_name", message),
            InvalidAppend::EventType(_) => Self::bad_request("invalid_event_type", message),
            InvalidAppend::Empty => Self::bad_request("empty_append", message),
            InvalidAppend::RepeatedId(_) => Self::bad_request("repeated_event_id", message),
            InvalidAppend::TooDeep => Self::bad_request("json_too_deep", message),
            InvalidAppend::TooManyEvents { .. } | InvalidAppend::EventTooLarge { .. } => {
                Self::new(StatusCode::PAYLOAD_TOO_LARGE, "too_large", message)
            }
        }
    }
}

impl From<StorageError> for ApiError {
    fn from(e: StorageError) -> Self {
        match e {
            StorageError::DiskFull => {
                return Self::new(
                    StatusCode::INSUFFICIENT_STORAGE,
                    "insufficient_storage",
                    "the disk is full: nothing was written; appends are taken again once space is freed",
                );
            }
            StorageError::Unavailable => {
                return Self::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "storage_unavailable",
                    e.to_string(),
                );
            }
            _ => {}
        }
        Self::failure(StatusCode::INTERNAL_SERVER_ERROR, "storage_error", e)
    }
}

impl From<crate::views::ViewError> for ApiError {
    fn from(e: crate::views::ViewError) -> Self {
        match e {
            crate::views::ViewError::Unavailable => Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "storage_unavailable",
                e.to_string(),
            ),
            e => Self::internal(e),
        }
    }
}

impl From<tokio::task::JoinError> for ApiError {
    fn from(e: tokio::task::JoinError) -> Self {
        Self::internal(e)
    }
}

/// Rejections of axum's extractors (query strings, bodies) keep their status but speak JSON.
pub fn rejection(code: &'static str, r: impl IntoResponse + std::fmt::Display) -> ApiError {
    let message = r.to_string();
    let status = r.into_response().status();
    if status == StatusCode::PAYLOAD_TOO_LARGE {
        return ApiError::new(status, "too_large", message);
    }
    ApiError::new(status, code, message)
}
