//! What the proxy keeps about one request between Pingora's phases.

use crate::cluster::InFlight;
use crate::filter_chain::ChainRun;
use crate::responses::ProxyError;
use crate::state::{Generation, Route};
use bytes::Bytes;
use pingora::proxy::Session;
use pingora::{Error, ErrorType};
use request_tracing::RequestTrace;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How the proxy itself ended a request, instead of the upstream's response.
#[derive(Debug, Clone, Copy)]
pub enum Answered {
    /// A local reply with this status (a filter's, or an error the proxy chose).
    Locally(u16),
    /// The stream was reset without a response.
    Reset,
}

impl Answered {
    /// The status for the access log and metrics: 0 for a reset, as Envoy logs it.
    pub fn status(self) -> u16 {
        match self {
            Self::Locally(status) => status,
            Self::Reset => 0,
        }
    }
}

/// Per-request state.
pub struct RequestContext {
    pub started: Instant,
    /// The configuration this request runs on from start to end, even if a reload swaps it.
    pub generation: Arc<Generation>,
    pub request_id: String,
    /// The request's place in its trace, and its span when traces are exported.
    pub trace: Option<RequestTrace>,
    /// The route `request_filter` chose, and through it the cluster; the upstream phases run
    /// only after one is chosen.
    pub route: Option<Arc<Route>>,
    pub in_flight: Option<InFlight>,
    pub failed_endpoint: Option<SocketAddr>,
    pub attempts: u32,
    pub upstream_started: Option<Instant>,
    pub upstream_headers_after: Option<Duration>,
    pub chain: Option<ChainRun>,
    /// An error chosen by the proxy; `fail_to_proxy` renders it.
    pub error: Option<ProxyError>,
    /// The proxy itself already answered (or reset) the request; nothing else must be written.
    pub answered: Option<Answered>,
    /// Replaces the upstream body (a 5xx turned into JSON, or a response-phase local reply).
    pub replacement_body: Option<Bytes>,
    pub request_body_bytes: u64,
    /// The request headers ended the stream (no body): filters get no body callback, as in Envoy.
    pub request_ended_with_headers: bool,
    /// The body the filters released while it was read before any upstream connection
    /// (`Gateway::decide_body_first`); each attempt sends it in place of Pingora's replay.
    pub body_read_first: Option<Bytes>,
    /// The next request body chunk is Pingora's replay of the body read first.
    pub replay_expected: bool,
}

impl RequestContext {
    /// A request starting on `generation`.
    pub fn new(generation: Arc<Generation>) -> Self {
        Self {
            started: Instant::now(),
            generation,
            request_id: String::new(),
            trace: None,
            route: None,
            in_flight: None,
            failed_endpoint: None,
            attempts: 0,
            upstream_started: None,
            upstream_headers_after: None,
            chain: None,
            error: None,
            answered: None,
            replacement_body: None,
            request_body_bytes: 0,
            request_ended_with_headers: false,
            body_read_first: None,
            replay_expected: false,
        }
    }

    /// The route `request_filter` chose; an upstream phase without one is a proxy bug, answered
    /// as a 500 rather than a panic.
    pub fn chosen_route(&self) -> pingora::Result<&Arc<Route>> {
        self.route
            .as_ref()
            .ok_or_else(|| Error::explain(ErrorType::InternalError, "no route was chosen"))
    }
}

/// Whether the request has attempts left and its body (if any) can still be replayed.
pub fn within_retry_limits(session: &Session, ctx: &RequestContext) -> bool {
    ctx.route
        .as_ref()
        .is_some_and(|route| route.cluster.has_attempts_left(ctx.attempts))
        && !session.as_ref().retry_buffer_truncated()
}

/// Whether the cluster's retry budget allows one more retry now (and, if so, counts it).
pub fn retry_budget_allows(ctx: &RequestContext) -> bool {
    ctx.route
        .as_ref()
        .is_some_and(|route| route.cluster.try_retry())
}
