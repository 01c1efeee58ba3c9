//! Callouts from filters to the proxy's clusters: HTTP (`proxy_http_call`) and gRPC
//! (`proxy_grpc_call`, `proxy_grpc_stream`). The embedding proxy provides the transport.

use crate::headers::Headers;
use crate::shared_data::BoxFuture;
use std::time::Duration;
use tokio::sync::mpsc;

/// A request a filter sends to a named upstream cluster.
#[derive(Debug, Clone)]
pub struct CalloutRequest {
    /// Headers including `:method`, `:path` and `:authority`.
    pub headers: Headers,
    /// Request body.
    pub body: Vec<u8>,
    /// Request trailers.
    pub trailers: Headers,
    /// Time allowed for the whole exchange.
    pub timeout: Duration,
}

/// The upstream's answer.
#[derive(Debug, Clone, Default)]
pub struct CalloutResponse {
    /// Headers including `:status`.
    pub headers: Headers,
    /// Response body.
    pub body: Vec<u8>,
    /// Response trailers.
    pub trailers: Headers,
}

/// The `/{service}/{method}` path of a gRPC call, from names a filter passed. Only the characters
/// of protobuf identifiers (and `.` between a package's parts) are accepted, so a name cannot
/// smuggle another path, a query or a header-breaking byte.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrpcMethodPath(String);

impl GrpcMethodPath {
    /// Longest service or method name accepted.
    pub const MAX_NAME_BYTES: usize = 256;

    /// The path for `service` and `method`, or `None` when either is empty, too long or not a
    /// protobuf name.
    pub fn new(service: &str, method: &str) -> Option<Self> {
        let valid = |name: &str, dots: bool| {
            !name.is_empty()
                && name.len() <= Self::MAX_NAME_BYTES
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || (dots && b == b'.'))
        };
        (valid(service, true) && valid(method, false)).then(|| Self(format!("/{service}/{method}")))
    }

    /// The request path.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A gRPC call a filter opens on a cluster.
#[derive(Debug, Clone)]
pub struct GrpcCallout {
    /// `/{service}/{method}`.
    pub path: GrpcMethodPath,
    /// Metadata sent with the request headers.
    pub initial_metadata: Headers,
    /// Deadline of the whole call, sent as `grpc-timeout` too; `None` for a stream, which lasts
    /// as long as the context that opened it.
    pub timeout: Option<Duration>,
}

/// A message a filter sends on a gRPC call (unframed; the transport adds gRPC's 5-byte prefix).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrpcOutgoing {
    /// The serialised message (an empty one is a message too); `None` with `end_stream` is a
    /// half-close with no message (`proxy_grpc_close`).
    pub message: Option<Vec<u8>>,
    /// The filter sends nothing more (half-close).
    pub end_stream: bool,
}

/// A gRPC status: its code (0 to 16) and message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrpcStatus {
    /// `grpc-status`.
    pub code: u32,
    /// `grpc-message`, percent-decoded.
    pub message: String,
}

impl GrpcStatus {
    /// OK.
    pub const OK: u32 = 0;
    /// CANCELLED.
    pub const CANCELLED: u32 = 1;
    /// DEADLINE_EXCEEDED.
    pub const DEADLINE_EXCEEDED: u32 = 4;
    /// RESOURCE_EXHAUSTED.
    pub const RESOURCE_EXHAUSTED: u32 = 8;
    /// INTERNAL.
    pub const INTERNAL: u32 = 13;
    /// UNAVAILABLE.
    pub const UNAVAILABLE: u32 = 14;

    /// A status with this code and message.
    pub fn new(code: u32, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

/// What the upstream of a gRPC call sends, in order: initial metadata, messages, trailing
/// metadata, then the status that closes the call (the only event of a call that failed early).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GrpcEvent {
    /// The response headers.
    InitialMetadata(Headers),
    /// One message, unframed.
    Message(Vec<u8>),
    /// The response trailers.
    TrailingMetadata(Headers),
    /// The call is over.
    Close(GrpcStatus),
}

/// The two ends of a gRPC call a transport serves: the filter's messages to send, and where the
/// upstream's events go. Both channels are bounded, so a slow side holds the other back.
pub struct GrpcChannels {
    /// Messages from the filter; closed without `end_stream` when the call is cancelled.
    pub outgoing: mpsc::Receiver<GrpcOutgoing>,
    /// Events for the filter; the transport stops when it is closed (the call was cancelled).
    pub events: mpsc::Sender<GrpcEvent>,
}

/// Sends callouts to clusters. Implemented by the proxy (its clusters) or by tests.
pub trait CalloutDispatcher: Send + Sync {
    /// True when `cluster` names a cluster callouts may go to.
    fn has_cluster(&self, cluster: &str) -> bool;
    /// Performs the call; `None` means it failed (connection error, timeout), which the guest sees
    /// as a response with no headers, as in Envoy.
    fn call(
        &self,
        cluster: &str,
        request: CalloutRequest,
    ) -> BoxFuture<'static, Option<CalloutResponse>>;

    /// True when `cluster` names a cluster gRPC calls may go to (it speaks HTTP/2). The default:
    /// none, and `proxy_grpc_call` answers `PARSE_FAILURE` as Envoy does for an unknown cluster.
    fn has_grpc_cluster(&self, _cluster: &str) -> bool {
        false
    }

    /// Runs a gRPC call until it closes: sends `channels.outgoing`, reports to `channels.events`
    /// and ends with a [`GrpcEvent::Close`]. Dropping the future cancels the call.
    fn grpc_call(
        &self,
        _cluster: &str,
        _call: GrpcCallout,
        channels: GrpcChannels,
    ) -> BoxFuture<'static, ()> {
        Box::pin(async move {
            let status = GrpcStatus::new(GrpcStatus::UNAVAILABLE, "no gRPC transport");
            let _ = channels.events.send(GrpcEvent::Close(status)).await;
        })
    }
}

/// A dispatcher with no clusters: every `proxy_http_call` gets `BAD_ARGUMENT`, every
/// `proxy_grpc_call` `PARSE_FAILURE`.
pub struct NoClusters;

impl CalloutDispatcher for NoClusters {
    fn has_cluster(&self, _cluster: &str) -> bool {
        false
    }

    fn call(
        &self,
        _cluster: &str,
        _request: CalloutRequest,
    ) -> BoxFuture<'static, Option<CalloutResponse>> {
        Box::pin(std::future::ready(None))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_method_path_takes_protobuf_names_only() {
        let path = GrpcMethodPath::new("grpc.health.v1.Health", "Check").unwrap();
        assert_eq!(path.as_str(), "/grpc.health.v1.Health/Check");
        for (service, method) in [
            ("", "Check"),
            ("svc", ""),
            ("svc/../admin", "Check"),
            ("svc", "Check?x=1"),
            ("svc", "a.b"),
            ("svc\r\nx-injected: 1", "Check"),
            ("svc", "Ch eck"),
        ] {
            assert!(
                GrpcMethodPath::new(service, method).is_none(),
                "{service:?}/{method:?}"
            );
        }
        let long = "a".repeat(GrpcMethodPath::MAX_NAME_BYTES + 1);
        assert!(GrpcMethodPath::new(&long, "Check").is_none());
    }
}
