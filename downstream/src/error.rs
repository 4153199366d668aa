//! The one place where failures become HTTP responses: a status and a JSON
//! body `{code, message}`, without internals leaking.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use duplex_store::StoreError;
use serde::Serialize;

/// A request that failed, naming the party at fault through its status.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }

    /// The caller sent something wrong (400).
    pub fn bad(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    pub fn not_found(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, code, message)
    }

    pub fn unauthorized() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "send a valid API key as `Authorization: Bearer <key>`",
        )
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Unavailable(_) => Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "store_unavailable",
                "the message store is unavailable; retry later (with the same idempotency_key)",
            ),
            StoreError::Corrupt(_) => Self::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "the message store holds unreadable data",
            ),
            StoreError::Internal(_) => Self::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "this node's store client failed",
            ),
        }
    }
}

#[derive(Serialize)]
pub struct ErrorBody<'a> {
    pub code: &'a str,
    pub message: &'a str,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status.as_u16();
        if self.status.is_server_error() {
            tracing::warn!(status, code = self.code, detail = %self.message, "push API error");
        } else if self.status == axum::http::StatusCode::TOO_MANY_REQUESTS {
            // Load shedding, possibly thousands a second: counted in duplex_pushes_rejected_total.
            tracing::debug!(status, code = self.code, detail = %self.message, "push API call refused");
        } else {
            // A backend's mistake (bad key, bad body, unknown path): support needs to see it.
            // `detail`, not `message`: JSON logs already use that key for the event's text.
            tracing::info!(status, code = self.code, detail = %self.message, "push API call refused");
        }
        (
            self.status,
            Json(ErrorBody {
                code: self.code,
                message: &self.message,
            }),
        )
            .into_response()
    }
}
