//! Calls a gRPC service from a filter and answers what it saw as JSON, so the same request gets
//! the same answer in Envoy and in our proxy. The plugin configuration names the cluster; the
//! request header `x-grpc-case` picks the call:
//!
//! - `unary`: `probe.Echo/Unary` with the request's `x-message` and metadata `x-probe-meta: m1`;
//! - `fail`: `probe.Echo/Fail` (the service refuses it);
//! - `deadline`: `probe.Echo/Slow` with a 300 ms deadline;
//! - `stream`: a `probe.Echo/Chat` stream: three messages, a half-close, then everything back;
//! - `cancel`: `probe.Echo/Slow`, cancelled at once (the service sees the cancellation);
//! - `unknown-cluster`: a call to a cluster that does not exist;
//! - anything else: `probe.Echo/<x-grpc-case>` as a unary call.

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};
use serde_json::{json, Value};
use std::time::Duration;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(ProbeRoot::default()) });
}}

#[derive(Default)]
struct ProbeRoot {
    cluster: String,
}

impl Context for ProbeRoot {}

impl RootContext for ProbeRoot {
    fn on_configure(&mut self, _size: usize) -> bool {
        self.cluster = String::from_utf8(self.get_plugin_configuration().unwrap_or_default())
            .unwrap_or_default();
        true
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(GrpcProbe {
            cluster: self.cluster.clone(),
            transcript: Vec::new(),
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct GrpcProbe {
    cluster: String,
    /// What a stream delivered, in order.
    transcript: Vec<Value>,
}

const SERVICE: &str = "probe.Echo";

impl GrpcProbe {
    fn answer(&mut self, body: Value) {
        let body = body.to_string();
        self.send_http_response(
            200,
            vec![("content-type", "application/json")],
            Some(body.as_bytes()),
        );
    }

    fn unary(&mut self, cluster: &str, method: &str, message: &[u8], timeout: Duration) -> Action {
        let metadata = vec![("x-probe-meta", &b"m1"[..])];
        match self.dispatch_grpc_call(cluster, SERVICE, method, metadata, Some(message), timeout) {
            Ok(_) => Action::Pause,
            Err(status) => {
                self.answer(json!({ "dispatch_error": format!("{status:?}") }));
                Action::Pause
            }
        }
    }

    fn status(&self) -> Value {
        let (code, message) = self.get_grpc_status();
        json!({ "code": code, "message": message })
    }
}

impl Context for GrpcProbe {
    fn on_grpc_call_response(&mut self, _token: u32, status_code: u32, response_size: usize) {
        let response = self
            .get_grpc_call_response_body(0, response_size)
            .map(|bytes| String::from_utf8_lossy(&bytes).into_owned());
        let status = self.status();
        self.answer(json!({
            "status_code": status_code,
            "status": status,
            "response": response,
        }));
    }

    fn on_grpc_stream_initial_metadata(&mut self, _token: u32, _num_elements: u32) {
        let echoed = self
            .get_grpc_stream_initial_metadata_value("x-echo-meta")
            .map(|v| String::from_utf8_lossy(&v).into_owned());
        self.transcript.push(json!({ "initial_metadata": echoed }));
    }

    fn on_grpc_stream_message(&mut self, _token: u32, message_size: usize) {
        let message = self
            .get_grpc_stream_message(0, message_size)
            .map(|bytes| String::from_utf8_lossy(&bytes).into_owned());
        self.transcript.push(json!({ "message": message }));
    }

    fn on_grpc_stream_trailing_metadata(&mut self, _token: u32, _num_elements: u32) {
        let count = self
            .get_grpc_stream_trailing_metadata_value("x-count")
            .map(|v| String::from_utf8_lossy(&v).into_owned());
        self.transcript.push(json!({ "trailing_metadata": count }));
    }

    fn on_grpc_stream_close(&mut self, _token: u32, status_code: u32) {
        let status = self.status();
        let transcript = std::mem::take(&mut self.transcript);
        self.answer(json!({
            "status_code": status_code,
            "status": status,
            "transcript": transcript,
        }));
    }
}

impl HttpContext for GrpcProbe {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let case = self
            .get_http_request_header("x-grpc-case")
            .unwrap_or_default();
        let message = self
            .get_http_request_header("x-message")
            .unwrap_or_default();
        let cluster = self.cluster.clone();
        match case.as_str() {
            "unary" => self.unary(
                &cluster,
                "Unary",
                message.as_bytes(),
                Duration::from_secs(5),
            ),
            "deadline" => self.unary(&cluster, "Slow", b"", Duration::from_millis(300)),
            "unknown-cluster" => {
                self.unary("no_such_cluster", "Unary", b"", Duration::from_secs(5))
            }
            "cancel" => {
                let metadata = vec![("x-probe-meta", &b"cancel"[..])];
                let token = self.dispatch_grpc_call(
                    &cluster,
                    SERVICE,
                    "Slow",
                    metadata,
                    Some(b""),
                    Duration::from_secs(5),
                );
                let cancelled = token.map(|token| self.cancel_grpc_call(token)).is_ok();
                self.answer(json!({ "cancelled": cancelled }));
                Action::Pause
            }
            "stream" => {
                let metadata = vec![("x-probe-meta", &b"m1"[..])];
                let token = match self.open_grpc_stream(&cluster, SERVICE, "Chat", metadata) {
                    Ok(token) => token,
                    Err(status) => {
                        self.answer(json!({ "dispatch_error": format!("{status:?}") }));
                        return Action::Pause;
                    }
                };
                for word in [&b"a"[..], b"b", b"c"] {
                    self.send_grpc_stream_message(token, Some(word), false);
                }
                self.close_grpc_stream(token);
                Action::Pause
            }
            method => self.unary(&cluster, method, message.as_bytes(), Duration::from_secs(5)),
        }
    }
}
