//! Errors as clients see them: `{"error":{"code","message"}}` with a fitting status.

use agentwire_log::LogError;
use agentwire_protocol::{ErrorCode, EventError, IdError};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::auth::AuthError;

/// An error answered to an HTTP client.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
    /// Seconds after which the request may succeed (`Retry-After`, with `429`).
    pub retry_after: Option<u64>,
    /// The run that made the request conflict (a run going in the thread).
    pub run_id: Option<String>,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self { code, message: message.into(), retry_after: None, run_id: None }
    }

    /// Says when to try again.
    pub fn retry_after(mut self, seconds: u64) -> Self {
        self.retry_after = Some(seconds);
        self
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::BadRequest, message)
    }

    pub fn forbidden() -> Self {
        Self::new(ErrorCode::Forbidden, "this belongs to another user or needs another kind of credential")
    }

    pub fn not_found(what: impl std::fmt::Display) -> Self {
        Self::new(ErrorCode::NotFound, format!("{what} does not exist"))
    }

    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Unavailable, message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.code.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut body = json!({ "error": { "code": self.code, "message": self.message } });
        if let Some(run_id) = self.run_id {
            body["error"]["run_id"] = run_id.into();
        }
        let mut response = (status, axum::Json(body)).into_response();
        if let Some(seconds) = self.retry_after {
            response.headers_mut().insert(axum::http::header::RETRY_AFTER, axum::http::HeaderValue::from(seconds));
        }
        response
    }
}

impl From<LogError> for ApiError {
    fn from(e: LogError) -> Self {
        let mut error = Self::new(e.code(), e.to_string());
        if let LogError::RunInFlight(run) = &e {
            error.run_id = Some(run.to_string());
        }
        error
    }
}

impl From<EventError> for ApiError {
    fn from(e: EventError) -> Self {
        Self::new(e.code(), e.to_string())
    }
}

impl From<IdError> for ApiError {
    fn from(e: IdError) -> Self {
        Self::bad_request(e.to_string())
    }
}

impl From<agentwire_agent::StartError> for ApiError {
    fn from(e: agentwire_agent::StartError) -> Self {
        match e {
            agentwire_agent::StartError::TooManyRuns(_) => {
                Self::new(ErrorCode::RateLimited, e.to_string()).retry_after(1)
            }
            agentwire_agent::StartError::ShuttingDown => Self::unavailable(e.to_string()),
        }
    }
}

impl From<AuthError> for ApiError {
    fn from(e: AuthError) -> Self {
        Self::new(ErrorCode::Unauthorized, e.to_string())
    }
}
