//! The HTTP API's request body and its errors (`{"error": {status, code, message, request_id}}`).

use crate::capabilities::RequestedCapabilities;
use crate::limits::RequestedLimits;
use crate::runtimes::Language;
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
        if self.status == StatusCode::TOO_MANY_REQUESTS
            || self.status == StatusCode::SERVICE_UNAVAILABLE
        {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
        }
        response
    }
}
