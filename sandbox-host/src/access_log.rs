//! One access-log line per request, and one server span when traces are exported, both carrying
//! the request id and the trace the caller (the gateway) sent.

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue};
use axum::middleware::Next;
use axum::response::Response;
use gateway_contract::headers::REQUEST_ID;
use request_tracing::{KeyValue, TraceExport};
use std::sync::Arc;
use std::time::Instant;

/// Attributes a handler puts in its response's extensions for the request's span (an
/// execution's language and outcome).
#[derive(Clone, Default)]
pub struct SpanAttributes(pub Vec<KeyValue>);

/// The request's id, in its extensions for handlers: the caller's `x-request-id` when usable
/// as sent, else a new UUID. (The headers stay as sent: the gateway's signature covers them.)
#[derive(Clone)]
pub struct RequestId(pub String);

/// The caller's `x-request-id` when usable as sent (`gateway_contract`), else a new UUID.
fn request_id(headers: &HeaderMap) -> String {
    headers
        .get(REQUEST_ID)
        .and_then(|value| gateway_contract::usable_request_id(value.as_bytes()))
        .map_or_else(|| uuid::Uuid::new_v4().to_string(), str::to_owned)
}

/// The middleware: gives the request its id (a [`RequestId`] extension, so handlers, the line and
/// the span agree), continues its trace, and logs it once answered.
pub async fn observe(
    State(trace_export): State<Arc<TraceExport>>,
    mut request: Request,
    next: Next,
) -> Response {
    let started = Instant::now();
    let request_id = request_id(request.headers());
    request
        .extensions_mut()
        .insert(RequestId(request_id.clone()));
    let trace = trace_export.start(
        request
            .headers()
            .get("traceparent")
            .map(HeaderValue::as_bytes),
    );
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let mut response = next.run(request).await;
    let status = response.status();
    tracing::info!(
        target: "access_log",
        request_id,
        trace_id = trace.trace_id(),
        method = method.as_str(),
        path,
        status = status.as_u16(),
        duration_ms = started.elapsed().as_secs_f64() * 1000.0,
        "request"
    );
    if trace.is_recording() {
        // The routes have no parameters, so a path that found one is its own route template.
        let name = if status == axum::http::StatusCode::NOT_FOUND {
            method.to_string()
        } else {
            format!("{method} {path}")
        };
        let mut attributes = vec![
            KeyValue::new("http.request.method", method.to_string()),
            KeyValue::new("url.path", path),
            KeyValue::new("http.response.status_code", i64::from(status.as_u16())),
            KeyValue::new("request.id", request_id),
        ];
        if let Some(SpanAttributes(extra)) = response.extensions_mut().remove() {
            attributes.extend(extra);
        }
        trace.finish(name, attributes, status.is_server_error());
    }
    response
}
