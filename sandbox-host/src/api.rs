//! The HTTP API's request body and its errors (`{"error": {status, code, message, request_id}}`).

use crate::admission::Rejection;
use crate::capabilities::{Refusal, RequestedCapabilities};
use crate::limits::RequestedLimits;
use crate::runtimes::Language;
use crate::sandbox::ExecutionError;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

/// `POST /v1/executions`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecutionRequest {
    /// `python`, `javascript`, `wasm` or `wat`.
    pub language: Language,
    /// Source text, WAT text, or (for `wasm`) a base64-encoded module.
    pub code: String,
    /// The guest's stdin.
    #[serde(default)]
    pub stdin: String,
    /// Arguments after the program.
    #[serde(default)]
    pub args: Vec<String>,
    /// Per-execution limits; absent fields take the server defaults.
    #[serde(default)]
    pub limits: RequestedLimits,
    /// What the code may touch beyond pure computation.
    #[serde(default)]
    pub capabilities: RequestedCapabilities,
}

/// Why a request is refused, as the client will see it, before the request id is attached.
#[derive(Debug)]
pub struct Failure {
    /// HTTP status.
    pub status: StatusCode,
    /// Stable machine-readable code.
    pub code: &'static str,
    /// For humans; may change.
    pub message: String,
}

impl Failure {
    /// A failure with this status, code and message.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }

    /// The answer for the request `request_id`.
    pub fn for_request(self, request_id: &str) -> ApiError {
        ApiError::new(self.status, self.code, self.message, request_id)
    }
}

impl From<Refusal> for Failure {
    fn from(refusal: Refusal) -> Self {
        let (status, code) = match refusal {
            Refusal::UnknownDataset(_) => (StatusCode::BAD_REQUEST, "unknown_dataset"),
            Refusal::MissingScope { .. } => (StatusCode::FORBIDDEN, "insufficient_scope"),
            Refusal::ApprovalRequired(_) => (StatusCode::FORBIDDEN, "approval_required"),
        };
        Self::new(status, code, refusal.to_string())
    }
}

impl From<Rejection> for Failure {
    fn from(rejection: Rejection) -> Self {
        let (status, code) = match rejection {
            Rejection::QueueFull => (StatusCode::TOO_MANY_REQUESTS, "too_many_executions"),
            Rejection::QueueTimeout => (StatusCode::SERVICE_UNAVAILABLE, "queue_timeout"),
        };
        Self::new(status, code, rejection.to_string())
    }
}

impl From<ExecutionError> for Failure {
    fn from(error: ExecutionError) -> Self {
        let (status, code) = match &error {
            ExecutionError::InvalidModule(_) => (StatusCode::BAD_REQUEST, "invalid_module"),
            ExecutionError::NoRuntime(_) => (StatusCode::BAD_REQUEST, "unsupported_language"),
            ExecutionError::Busy => (StatusCode::SERVICE_UNAVAILABLE, "busy"),
            ExecutionError::Mount { .. } | ExecutionError::Internal(_) => {
                (StatusCode::INTERNAL_SERVER_ERROR, "internal_error")
            }
        };
        Self::new(status, code, error.to_string())
    }
}

/// An error answered as JSON with the request id.
#[derive(Debug)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Stable machine-readable code.
    pub code: &'static str,
    /// For humans; may change.
    pub message: String,
    /// The request's id.
    pub request_id: String,
}

impl ApiError {
    /// An error for `request_id`.
    pub fn new(
        status: StatusCode,
        code: &'static str,
        message: impl Into<String>,
        request_id: &str,
    ) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            request_id: request_id.to_string(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = gateway_contract::error_body(
            self.status.as_u16(),
            self.code,
            &self.message,
            Some(&self.request_id),
        );
        let mut response = (
            self.status,
            [
                (header::CONTENT_TYPE, "application/json".to_string()),
                (
                    header::HeaderName::from_static(gateway_contract::headers::REQUEST_ID),
                    self.request_id,
                ),
            ],
            body,
        )
            .into_response();
        // Retrying soon helps with a full queue, not with an identity's session cap.
        let transient = self.status == StatusCode::SERVICE_UNAVAILABLE
            || (self.status == StatusCode::TOO_MANY_REQUESTS && self.code != "too_many_sessions");
        if transient {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
        }
        response
    }
}
