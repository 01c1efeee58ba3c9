//! HTTP callouts (`proxy_http_call`): the embedding proxy provides the transport.

use crate::headers::Headers;
use crate::shared_data::BoxFuture;
use std::time::Duration;

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

/// Sends callouts to clusters. Implemented by the proxy (its clusters) or by tests.
pub trait HttpCallDispatcher: Send + Sync {
    /// True when `cluster` names a cluster callouts may go to.
    fn has_cluster(&self, cluster: &str) -> bool;
    /// Performs the call; `None` means it failed (connection error, timeout), which the guest sees
    /// as a response with no headers, as in Envoy.
    fn call(
        &self,
        cluster: &str,
        request: CalloutRequest,
    ) -> BoxFuture<'static, Option<CalloutResponse>>;
}

/// A dispatcher with no clusters: every `proxy_http_call` gets `BAD_ARGUMENT`.
pub struct NoClusters;

impl HttpCallDispatcher for NoClusters {
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
