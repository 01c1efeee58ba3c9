//! What a VM's store holds: the plugin's identity and services, and the state of each context.

use crate::call_mode::CallMode;
use crate::callout::{CalloutRequest, CalloutResponse, GrpcCallout, GrpcOutgoing, GrpcStatus};
use crate::headers::Headers;
use crate::plugin::PluginShared;
use crate::types::{LocalResponse, StreamInfo};
use crate::vm::Phase;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc::{self, UnboundedSender};
use tokio::sync::Notify;
use tokio::task::AbortHandle;
use wasmtime::{Memory, StoreLimits, TypedFunc};

/// The data of one VM's `Store`.
pub(crate) struct HostState {
    pub(crate) plugin: Arc<PluginShared>,
    pub(crate) limits: StoreLimits,
    pub(crate) memory: Option<Memory>,
    pub(crate) allocate: Option<TypedFunc<i32, i32>>,
    /// Whether guest calls run on a fiber (and host calls may wait).
    pub(crate) calls: CallMode,
    pub(crate) root_context_id: u32,
    /// The context host calls act on (the callback's, or the one set by `proxy_set_effective_context`).
    pub(crate) effective_context: u32,
    pub(crate) streams: HashMap<u32, StreamState>,
    /// Properties the root context set with `proxy_set_property`.
    pub(crate) root_properties: HashMap<Vec<u8>, Vec<u8>>,
    pub(crate) tick_period: Option<Duration>,
    /// Wakes the VM's background task when the tick period changes.
    pub(crate) tick_changed: Arc<Notify>,
    pub(crate) queue_notify: UnboundedSender<u32>,
    pub(crate) next_callout_token: u32,
    /// Callouts asked for and not yet delivered (bounded by `MAX_CALLOUTS_IN_FLIGHT`).
    pub(crate) callouts_in_flight: usize,
    /// Callouts the guest asked for during the current callback, started once it returns.
    pub(crate) new_callouts: Vec<PendingCallout>,
    /// The response being delivered to `proxy_on_http_call_response`.
    pub(crate) callout_response: Option<CalloutResponse>,
    /// gRPC calls and streams open, by token (bounded by `MAX_CALLOUTS_IN_FLIGHT`).
    pub(crate) grpc_calls: HashMap<u32, GrpcCallState>,
    /// gRPC calls the guest opened during the current callback, started once it returns.
    pub(crate) new_grpc_calls: Vec<PendingGrpcCall>,
    /// What the running `proxy_on_grpc_*` callback may read.
    pub(crate) grpc_delivery: GrpcDelivery,
    /// The last error the guest logged, quoted when its start fails.
    pub(crate) last_error_log: Option<String>,
    /// Buffered output of WASI `fd_write`, per file descriptor, emitted line by line.
    pub(crate) stdio_lines: [Vec<u8>; 2],
    /// The running callback's CPU budget.
    pub(crate) clock: GuestClock,
}

/// A callback's deadline counts the guest's own time only: time it spends suspended on an awaited
/// host call (a remote shared-data backend) is given back when the call returns.
#[derive(Debug, Clone, Copy)]
pub(crate) struct GuestClock {
    started: Instant,
    budget: Duration,
    suspended: Duration,
}

impl GuestClock {
    /// A clock for a callback allowed `budget` of its own time, starting now.
    pub(crate) fn start(budget: Duration) -> Self {
        Self {
            started: Instant::now(),
            budget,
            suspended: Duration::ZERO,
        }
    }

    /// Records a suspension of `waited`; returns the budget left.
    pub(crate) fn resume_after(&mut self, waited: Duration) -> Duration {
        self.suspended += waited;
        let used = self.started.elapsed().saturating_sub(self.suspended);
        self.budget.saturating_sub(used)
    }
}

/// A callout requested by a guest.
pub(crate) struct PendingCallout {
    pub(crate) token: u32,
    pub(crate) context_id: u32,
    pub(crate) cluster: String,
    pub(crate) request: CalloutRequest,
}

/// A gRPC call or stream a guest opened.
pub(crate) struct GrpcCallState {
    pub(crate) context_id: u32,
    /// A stream (`proxy_grpc_stream`), rather than a unary call.
    pub(crate) is_stream: bool,
    /// Where `proxy_grpc_send` puts messages; `None` once the guest half-closed (and for a unary
    /// call, whose one message was queued when it opened).
    pub(crate) outgoing: Option<mpsc::Sender<GrpcOutgoing>>,
    /// The task running the call, once started; aborted (the call cancelled) when the state goes.
    pub(crate) task: Option<AbortHandle>,
}

impl Drop for GrpcCallState {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

/// A gRPC call opened during a callback, not started yet.
pub(crate) struct PendingGrpcCall {
    pub(crate) token: u32,
    pub(crate) cluster: String,
    pub(crate) call: GrpcCallout,
    pub(crate) outgoing: mpsc::Receiver<GrpcOutgoing>,
}

/// What a `proxy_on_grpc_*` callback reads: the message (`GRPC_RECEIVE_BUFFER`), the metadata
/// maps, and the status `proxy_get_status` answers.
#[derive(Default)]
pub(crate) struct GrpcDelivery {
    pub(crate) message: Option<Vec<u8>>,
    pub(crate) initial_metadata: Option<Headers>,
    pub(crate) trailing_metadata: Option<Headers>,
    pub(crate) status: Option<GrpcStatus>,
}

/// The state of one HTTP context (one request through this filter).
pub(crate) struct StreamState {
    pub(crate) info: StreamInfo,
    pub(crate) request_headers: Headers,
    pub(crate) request_trailers: Headers,
    pub(crate) response_headers: Headers,
    pub(crate) response_trailers: Headers,
    pub(crate) request_body: Vec<u8>,
    pub(crate) response_body: Vec<u8>,
    pub(crate) properties: HashMap<Vec<u8>, Vec<u8>>,
    pub(crate) local_response: Option<LocalResponse>,
    /// `proxy_continue_stream` was called for the request / response direction.
    pub(crate) resume_request: bool,
    pub(crate) resume_response: bool,
    /// `proxy_close_stream` was called.
    pub(crate) close: bool,
    /// Shared data was unavailable under a fail-closed backend: the request is answered 503.
    pub(crate) shared_data_unavailable: bool,
    /// Wakes a paused phase when a callout completes or the guest resumes the stream.
    pub(crate) wake: Arc<Notify>,
    /// The request / response headers phase continued: as in Envoy, the guest can no longer
    /// read or change those headers (they have gone on), until the stream ends.
    pub(crate) request_headers_gone: bool,
    pub(crate) response_headers_gone: bool,
    /// `on_done`, `on_log` and `on_delete` are running: every map is readable again, as in
    /// Envoy's access-log phase.
    pub(crate) ending: bool,
}

impl StreamState {
    pub(crate) fn new(info: StreamInfo) -> Self {
        Self {
            info,
            request_headers: Headers::new(),
            request_trailers: Headers::new(),
            response_headers: Headers::new(),
            response_trailers: Headers::new(),
            request_body: Vec::new(),
            response_body: Vec::new(),
            properties: HashMap::new(),
            local_response: None,
            resume_request: false,
            resume_response: false,
            close: false,
            shared_data_unavailable: false,
            wake: Arc::new(Notify::new()),
            request_headers_gone: false,
            response_headers_gone: false,
            ending: false,
        }
    }

    /// Records that a headers phase returned `Continue`: its headers have gone on.
    pub(crate) fn headers_passed_on(&mut self, phase: Phase) {
        match phase {
            Phase::RequestHeaders => self.request_headers_gone = true,
            Phase::ResponseHeaders => self.response_headers_gone = true,
            _ => {}
        }
    }
}

impl HostState {
    /// The stream the current host call acts on, if the effective context is a stream.
    pub(crate) fn stream(&mut self) -> Option<&mut StreamState> {
        self.streams.get_mut(&self.effective_context)
    }

    /// The plugin's name, for log lines.
    pub(crate) fn plugin_name(&self) -> &str {
        &self.plugin.spec.name
    }
}
