//! The host's public values: what a plugin is given (spec, limits, failure policy), what a stream
//! is told about its connection, and what the proxy is told after each phase. A leaf module.

use crate::headers::Headers;
use std::net::SocketAddr;
use std::time::Duration;

/// The host's own counter of a plugin's traps (`wasm_filter_traps_total` in Prometheus text).
pub const TRAPS_METRIC: &str = "filter_traps_total";

/// The host's own counter of VMs started in place of broken ones (`wasm_filter_vm_restarts_total`).
pub const VM_RESTARTS_METRIC: &str = "filter_vm_restarts_total";

/// What a request gets when its filter traps, exceeds its limits or cannot start (named after
/// Envoy's `FailurePolicy`, and written as Envoy writes it: `fail_closed`, `fail_open`). Whatever
/// the policy, a broken VM is replaced by a fresh one for the requests that come after, so a
/// failure costs the failing request only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailurePolicy {
    /// The request gets a 503 JSON error (Envoy's default). `reload`, the name of an earlier
    /// policy that did this and then restarted the VM (every policy restarts it now), is read as
    /// `fail_closed`.
    #[default]
    #[serde(alias = "reload")]
    FailClosed,
    /// The request goes on without the filter.
    FailOpen,
}

/// Per-VM resource limits.
#[derive(Debug, Clone, Copy)]
pub struct VmLimits {
    /// Cap on the guest's linear memory.
    pub max_memory_bytes: usize,
    /// CPU (wall-clock) deadline for one callback; a filter that runs longer is trapped.
    pub callback_deadline: Duration,
    /// Deadline for start-up (`_initialize`, `on_vm_start`, `on_configure`).
    pub start_deadline: Duration,
    /// Longest a filter may keep a stream paused (waiting on a callout, say).
    pub pause_timeout: Duration,
}

impl Default for VmLimits {
    fn default() -> Self {
        Self {
            max_memory_bytes: 64 << 20,
            callback_deadline: Duration::from_millis(500),
            start_deadline: Duration::from_secs(5),
            pause_timeout: Duration::from_secs(30),
        }
    }
}

/// Everything needed to run a filter.
#[derive(Debug, Clone)]
pub struct PluginSpec {
    /// The plugin's name (`plugin_name`, log lines, metrics labels).
    pub name: String,
    /// Root id the filter registered its root context under (`plugin_root_id`).
    pub root_id: String,
    /// VM id: plugins sharing it share shared data and queues (`plugin_vm_id`).
    pub vm_id: String,
    /// The VM configuration, read by the filter in `on_vm_start`.
    pub vm_configuration: Vec<u8>,
    /// The plugin configuration, read by the filter in `on_configure`.
    pub plugin_configuration: Vec<u8>,
    /// What happens when the filter fails.
    pub failure_policy: FailurePolicy,
    /// Resource limits.
    pub limits: VmLimits,
}

impl PluginSpec {
    /// A spec with default limits and policy; `vm_id` and `root_id` default to the name.
    pub fn new(name: &str, plugin_configuration: impl Into<Vec<u8>>) -> Self {
        Self {
            name: name.to_string(),
            root_id: name.to_string(),
            vm_id: name.to_string(),
            vm_configuration: Vec::new(),
            plugin_configuration: plugin_configuration.into(),
            failure_policy: FailurePolicy::default(),
            limits: VmLimits::default(),
        }
    }
}

/// Why a plugin could not be loaded or started.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The bytes are not a valid module, or compiling failed.
    #[error("cannot compile the module: {0}")]
    Compile(String),
    /// The module does not follow proxy-wasm ABI 0.2.x.
    #[error("not a proxy-wasm 0.2 module: {0}")]
    Abi(String),
    /// Instantiation or a start-up callback trapped.
    #[error("failed to start: {0}")]
    Start(String),
    /// The filter refused its configuration.
    #[error("refused its configuration: {0}")]
    Refused(String),
}

/// Facts about the connection and route that filters read as properties.
#[derive(Debug, Clone, Default)]
pub struct StreamInfo {
    /// The client's address (`source.address`).
    pub source: Option<SocketAddr>,
    /// The address the client connected to (`destination.address`).
    pub destination: Option<SocketAddr>,
    /// `HTTP/1.1`, `HTTP/2`… (`request.protocol`).
    pub protocol: String,
    /// The matched route (`xds.route_name`).
    pub route_name: Option<String>,
    /// The selected cluster (`xds.cluster_name`).
    pub cluster_name: Option<String>,
    /// The client certificate the listener verified, when mTLS was used.
    pub peer_certificate: Option<PeerCertificate>,
}

/// A verified client certificate's names, as filters see them in `connection.*` properties.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerCertificate {
    /// The subject, e.g. `CN=svc-a,O=example` (`connection.subject_peer_certificate`).
    pub subject: String,
    /// URI subject alternative names, e.g. SPIFFE IDs (`connection.uri_san_peer_certificate`).
    pub uri_sans: Vec<String>,
    /// DNS subject alternative names (`connection.dns_san_peer_certificate`).
    pub dns_sans: Vec<String>,
}

impl PeerCertificate {
    /// The identity as Istio names it (`source.principal`): the first URI SAN (a SPIFFE ID),
    /// else the first DNS SAN, else the subject.
    pub fn principal(&self) -> &str {
        self.uri_sans
            .first()
            .or(self.dns_sans.first())
            .map_or(&self.subject, |name| name)
    }
}

/// A response a filter (or the host, on filter failure) sends instead of proxying.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalResponse {
    /// HTTP status.
    pub status: u16,
    /// Response headers (no pseudo-headers).
    pub headers: Headers,
    /// Response body.
    pub body: Vec<u8>,
    /// Why, for the access log.
    pub details: String,
    /// The gRPC status a filter asked a gRPC caller to get (`grpc_status` of
    /// `proxy_send_local_response`); `None`: derived from `status`, as Envoy does.
    pub grpc_status: Option<u32>,
}

/// What the proxy does after a phase.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Go on with the (possibly modified) headers or data.
    Continue,
    /// The filter is buffering the body: send nothing yet; the data is kept and handed back later.
    Buffer,
    /// Answer the client with this response and stop proxying.
    Respond(LocalResponse),
    /// Reset the stream without a response.
    Reset,
}
