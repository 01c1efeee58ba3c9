//! Responses the proxy writes itself: JSON errors with a stable shape, and filter local replies.
//! A gRPC caller gets either as a gRPC status instead (see [`crate::grpc`]).

use crate::grpc::{self, GrpcStatus};
use crate::path_normalization::PathRejection;
use bytes::Bytes;
use pingora::http::ResponseHeader;
use pingora::protocols::http::HttpTask;
use pingora::proxy::Session;
use pingora::{Error, ErrorSource, ErrorType};
use proxy_wasm_host::LocalResponse;

/// Errors the proxy answers with. The body is always
/// `{"error": {"status", "code", "message", "request_id"}}` (see `gateway_contract::error_body`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyError {
    /// No route matches.
    NoRoute,
    /// The request body exceeds `server.max_request_body_bytes`.
    BodyTooLarge,
    /// The request has more header fields or bytes than `server.max_request_headers` /
    /// `max_request_header_bytes` allow.
    HeadersTooLarge,
    /// Every endpoint of the cluster is failing its health checks.
    NoHealthyUpstream,
    /// The upstream could not be reached.
    UpstreamUnavailable,
    /// The upstream did not answer in time.
    UpstreamTimeout,
    /// The upstream broke the connection or answered with invalid HTTP.
    BadGateway,
    /// The upstream answered 5xx and the route replaces such bodies (status kept).
    UpstreamFailed(u16),
    /// The client sent a malformed request.
    BadRequest,
    /// The request path is malformed or has an encoded slash (`server.paths`).
    InvalidPath(PathRejection),
    /// Anything else.
    Internal,
}

impl ProxyError {
    /// The error the client sees for a proxying failure.
    pub fn from_failure(e: &Error) -> Self {
        match e.etype() {
            ErrorType::ConnectTimedout
            | ErrorType::ConnectRefused
            | ErrorType::ConnectNoRoute
            | ErrorType::ConnectError
            | ErrorType::ConnectProxyFailure
            | ErrorType::TLSHandshakeFailure
            | ErrorType::TLSHandshakeTimedout => ProxyError::UpstreamUnavailable,
            ErrorType::ReadTimedout | ErrorType::WriteTimedout
                if e.esource() == &ErrorSource::Upstream =>
            {
                ProxyError::UpstreamTimeout
            }
            _ => match e.esource() {
                ErrorSource::Upstream => ProxyError::BadGateway,
                ErrorSource::Downstream => ProxyError::BadRequest,
                ErrorSource::Internal | ErrorSource::Unset => ProxyError::Internal,
            },
        }
    }

    /// HTTP status.
    pub fn status(self) -> u16 {
        match self {
            ProxyError::NoRoute => 404,
            ProxyError::BodyTooLarge => 413,
            ProxyError::HeadersTooLarge => 431,
            ProxyError::NoHealthyUpstream | ProxyError::UpstreamUnavailable => 503,
            ProxyError::UpstreamTimeout => 504,
            ProxyError::BadGateway => 502,
            ProxyError::UpstreamFailed(status) => status,
            ProxyError::BadRequest | ProxyError::InvalidPath(_) => 400,
            ProxyError::Internal => 500,
        }
    }

    /// Stable machine-readable code.
    pub fn code(self) -> &'static str {
        match self {
            ProxyError::NoRoute => "no_route",
            ProxyError::BodyTooLarge => "request_body_too_large",
            ProxyError::HeadersTooLarge => "request_headers_too_large",
            ProxyError::NoHealthyUpstream => "no_healthy_upstream",
            ProxyError::UpstreamUnavailable => "upstream_unavailable",
            ProxyError::UpstreamTimeout => "upstream_timeout",
            ProxyError::BadGateway => "bad_gateway",
            ProxyError::UpstreamFailed(_) => "upstream_error",
            ProxyError::BadRequest => "bad_request",
            ProxyError::InvalidPath(_) => "invalid_path",
            ProxyError::Internal => "internal_error",
        }
    }

    /// Human-readable message.
    pub fn message(self) -> &'static str {
        match self {
            ProxyError::NoRoute => "no route matches this request",
            ProxyError::BodyTooLarge => "the request body is too large",
            ProxyError::HeadersTooLarge => "the request has too many or too large header fields",
            ProxyError::NoHealthyUpstream => "no healthy upstream is available",
            ProxyError::UpstreamUnavailable => "the upstream service is unavailable",
            ProxyError::UpstreamTimeout => "the upstream service did not answer in time",
            ProxyError::BadGateway => "the upstream service sent an invalid response",
            ProxyError::UpstreamFailed(_) => "the upstream service failed",
            ProxyError::BadRequest => "the request is malformed",
            ProxyError::InvalidPath(PathRejection::NotAbsolute) => "the path must start with /",
            ProxyError::InvalidPath(PathRejection::BadEscape) => {
                "the path has an invalid percent-encoding"
            }
            ProxyError::InvalidPath(PathRejection::EscapedSlash) => {
                "the path has an encoded slash or backslash (%2F, %5C)"
            }
            ProxyError::Internal => "internal error",
        }
    }

    /// The JSON body.
    pub fn body(self, request_id: &str) -> Vec<u8> {
        gateway_contract::error_body(self.status(), self.code(), self.message(), Some(request_id))
    }

    /// The error as a response filters can see and change.
    pub fn local_response(self, request_id: &str) -> LocalResponse {
        LocalResponse {
            status: self.status(),
            headers: proxy_wasm_host::Headers::from_pairs([("content-type", "application/json")]),
            body: self.body(request_id),
            details: self.code().to_string(),
            // As Envoy answers a gRPC call whose upstream timed out; the rest follow the status.
            grpc_status: (self == ProxyError::UpstreamTimeout)
                .then_some(GrpcStatus::DEADLINE_EXCEEDED.code()),
        }
    }

    /// The error as a pingora error, so the proxy stops and `fail_to_proxy` renders it.
    pub fn into_pingora(self) -> Box<pingora::Error> {
        pingora::Error::explain(pingora::ErrorType::HTTPStatus(self.status()), self.code())
    }
}

/// Writes a complete response: status, headers, body and `x-request-id`.
pub async fn write(
    session: &mut Session,
    status: u16,
    headers: impl IntoIterator<Item = (String, Vec<u8>)>,
    body: Vec<u8>,
    request_id: &str,
) -> pingora::Result<()> {
    let mut response = ResponseHeader::build(status, Some(4))?;
    for (name, value) in headers {
        if name.starts_with(':') || name == "content-length" || name == "transfer-encoding" {
            continue;
        }
        response.append_header(name, value)?;
    }
    response.insert_header("content-length", body.len().to_string())?;
    response.insert_header("x-request-id", request_id)?;
    let head_only = session.req_header().method == http::Method::HEAD;
    session
        .write_response_header(Box::new(response), body.is_empty() || head_only)
        .await?;
    if !body.is_empty() && !head_only {
        session
            .write_response_body(Some(Bytes::from(body)), true)
            .await?;
    }
    Ok(())
}

/// Writes a proxy error as JSON.
pub async fn write_error(
    session: &mut Session,
    error: ProxyError,
    request_id: &str,
) -> pingora::Result<()> {
    write_local(session, error.local_response(request_id), request_id).await
}

/// Writes a filter's local reply (or a proxy error), as a gRPC status when the request is a gRPC
/// call.
pub async fn write_local(
    session: &mut Session,
    response: LocalResponse,
    request_id: &str,
) -> pingora::Result<()> {
    if grpc::is_grpc(session.req_header()) {
        return write_grpc_status(session, response, request_id).await;
    }
    let headers: Vec<(String, Vec<u8>)> = response
        .headers
        .iter()
        .map(|(n, v)| (n.to_string(), v.to_vec()))
        .collect();
    write(session, response.status, headers, response.body, request_id).await
}

/// A refused gRPC call, answered as Envoy answers one: a trailers-only response (HTTP 200 whose
/// headers end the stream) with `grpc-status` (the filter's, or the one its HTTP status maps to)
/// and the body as `grpc-message`. The reply's other headers stay.
async fn write_grpc_status(
    session: &mut Session,
    response: LocalResponse,
    request_id: &str,
) -> pingora::Result<()> {
    let status = response
        .grpc_status
        .and_then(GrpcStatus::new)
        .unwrap_or_else(|| GrpcStatus::from_http(response.status));
    let mut header = ResponseHeader::build(200, Some(6))?;
    for (name, value) in response.headers.iter() {
        if name.starts_with(':')
            || matches!(
                name,
                "content-length"
                    | "content-type"
                    | "transfer-encoding"
                    | "grpc-status"
                    | "grpc-message"
            )
        {
            continue;
        }
        header.append_header(name.to_string(), value.to_vec())?;
    }
    header.insert_header("content-type", grpc::CONTENT_TYPE)?;
    header.insert_header("grpc-status", status.code().to_string())?;
    if !response.body.is_empty() {
        header.insert_header("grpc-message", grpc::encode_message(&response.body))?;
    }
    header.insert_header("x-request-id", request_id)?;
    if !session.is_http2() {
        header.insert_header("content-length", "0")?;
    }
    // As a task, so that on HTTP/2 the headers frame itself ends the stream (what gRPC clients
    // read as trailers-only); `write_response_header` would end it with an empty data frame.
    session
        .write_response_tasks(vec![HttpTask::Header(Box::new(header), true)])
        .await
        .map(|_| ())
}
