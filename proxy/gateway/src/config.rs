//! The proxy's configuration file: serde types, parsing with field paths, and semantic checks.
//!
//! Every error names the field it is about (`routes[1].cluster: ...`), so a refused file says
//! what to fix. Relative paths (filters, TLS files) are resolved against the file's directory.

pub use crate::client_headers::{ReservedHeaders, TrustedProxies};
pub use crate::path_normalization::{EscapedSlashes, PathSettings};
use serde::Deserialize;
use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A configuration error: the field it concerns and what is wrong with it.
#[derive(Debug, thiserror::Error)]
#[error("{field}: {message}")]
pub struct ConfigError {
    /// Dotted path of the offending field, e.g. `clusters[0].endpoints[1]`.
    pub field: String,
    /// What is wrong.
    pub message: String,
}

impl ConfigError {
    /// An error about `field`.
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Process-wide settings.
    #[serde(default)]
    pub server: ServerSettings,
    /// Logging.
    #[serde(default)]
    pub logging: LoggingSettings,
    /// The admin listener (`/healthz`, `/readyz`, `/metrics`).
    #[serde(default)]
    pub admin: AdminSettings,
    /// Where client traffic arrives.
    pub listeners: Vec<ListenerConfig>,
    /// Named filter chains that routes refer to.
    #[serde(default)]
    pub filter_chains: Vec<FilterChainConfig>,
    /// Routes, matched in order; the first match wins.
    pub routes: Vec<RouteConfig>,
    /// Upstream clusters.
    pub clusters: Vec<ClusterConfig>,
    /// Where filters' shared data (rate-limit buckets, cache entries) lives.
    #[serde(default)]
    pub shared_data: SharedDataSettings,
    /// Directory the file was read from; relative paths are resolved against it.
    #[serde(skip)]
    pub base_dir: PathBuf,
}

/// Process-wide settings.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ServerSettings {
    /// Worker threads for the proxy listeners.
    pub threads: usize,
    /// How long in-flight requests may take to finish on shutdown.
    #[serde(with = "duration")]
    pub shutdown_grace_period: Duration,
    /// Request bodies larger than this get a 413.
    pub max_request_body_bytes: u64,
    /// Requests with more header fields than this get a 431 (Pingora refuses more than 256).
    pub max_request_headers: usize,
    /// Requests whose header names and values add up to more than this get a 431.
    pub max_request_header_bytes: usize,
    /// Directory for compiled filter modules (faster restarts); none disables the cache.
    pub module_cache_dir: Option<PathBuf>,
    /// Reloading the configuration while serving.
    pub reload: ReloadSettings,
    /// Unix socket on which a new process started with `--upgrade` takes over the listeners.
    pub upgrade_socket: PathBuf,
    /// How request paths are normalised before routing, filters and the upstream.
    pub paths: PathSettings,
    /// Client headers removed before routing and filters (default: the `x-gateway-` prefix).
    pub reserved_headers: ReservedHeaders,
    /// Peers (addresses or CIDR ranges) whose `X-Forwarded-*` headers are kept and appended to;
    /// from anyone else they are replaced.
    pub trusted_proxies: TrustedProxies,
}

impl Default for ServerSettings {
    fn default() -> Self {
        Self {
            threads: 2,
            shutdown_grace_period: Duration::from_secs(10),
            max_request_body_bytes: 10 << 20,
            max_request_headers: 100,
            max_request_header_bytes: 64 << 10,
            module_cache_dir: None,
            reload: ReloadSettings::default(),
            upgrade_socket: crate::private_dir::default_upgrade_socket(),
            paths: PathSettings::default(),
            reserved_headers: ReservedHeaders::default(),
            trusted_proxies: TrustedProxies::default(),
        }
    }
}

/// When the proxy reloads its configuration (it always does on SIGHUP).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ReloadSettings {
    /// Reload when the configuration file, a filter's `.wasm` or its `configuration_file` changes.
    pub watch: bool,
    /// How often watched files are checked; a change is applied once it has held for one period,
    /// so a file caught mid-write is not loaded.
    #[serde(with = "duration")]
    pub poll_interval: Duration,
}

impl Default for ReloadSettings {
    fn default() -> Self {
        Self {
            watch: true,
            poll_interval: Duration::from_secs(1),
        }
    }
}

/// Where filters' shared data lives.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SharedDataSettings {
    /// `memory` (per process) or `redis` (shared by every proxy using the same Redis).
    pub backend: SharedDataBackendKind,
    /// Bounds of process memory: the memory backend, and Redis's fail-open fallback.
    pub memory: MemorySettings,
    /// The Redis backend.
    pub redis: RedisConfig,
}

/// The shared-data backends.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum SharedDataBackendKind {
    /// One LRU map per process (the default; nothing to run).
    #[default]
    Memory,
    /// Redis or Redis Cluster.
    Redis,
}

/// Bounds of process-local shared data.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct MemorySettings {
    /// Most keys kept; the least recently used go first.
    pub max_entries: usize,
    /// Most bytes (keys plus values) kept.
    pub max_bytes: usize,
}

impl Default for MemorySettings {
    fn default() -> Self {
        Self {
            max_entries: 100_000,
            max_bytes: 64 << 20,
        }
    }
}

/// The Redis backend's settings.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RedisConfig {
    /// One server: `redis://host:port/db`, or `rediss://` for TLS.
    pub url: String,
    /// Redis Cluster seed nodes; when set, `url` is not used.
    pub cluster_nodes: Vec<String>,
    /// ACL user name, when not in the URL.
    pub username: Option<String>,
    /// Name of the environment variable holding the password (kept out of the file and logs).
    pub password_env: Option<String>,
    /// Prepended to every key, so deployments can share a Redis.
    pub key_prefix: String,
    /// Longest a filter waits for Redis before `on_unavailable` applies.
    #[serde(with = "duration")]
    pub operation_timeout: Duration,
    /// Longest a connection attempt may take.
    #[serde(with = "duration")]
    pub connect_timeout: Duration,
    /// First wait before reconnecting; doubles on each failure up to `max_reconnect_backoff`.
    #[serde(with = "duration")]
    pub min_reconnect_backoff: Duration,
    /// Longest wait between reconnection attempts.
    #[serde(with = "duration")]
    pub max_reconnect_backoff: Duration,
    /// `fail_open` (process-local state while Redis is away) or `fail_closed` (503).
    pub on_unavailable: UnavailableConfig,
    /// Key expiry in Redis.
    pub expiry: ExpiryConfig,
}

impl Default for RedisConfig {
    fn default() -> Self {
        Self {
            url: "redis://127.0.0.1:6379/0".into(),
            cluster_nodes: Vec::new(),
            username: None,
            password_env: None,
            key_prefix: "gateway:".into(),
            operation_timeout: Duration::from_millis(50),
            connect_timeout: Duration::from_secs(1),
            min_reconnect_backoff: Duration::from_millis(100),
            max_reconnect_backoff: Duration::from_secs(5),
            on_unavailable: UnavailableConfig::FailOpen,
            expiry: ExpiryConfig::default(),
        }
    }
}

/// What shared-data calls do while Redis is unreachable or slow.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum UnavailableConfig {
    /// Use process-local state; limits hold per proxy until Redis returns.
    #[default]
    FailOpen,
    /// Answer requests that need shared data with a 503.
    FailClosed,
}

/// Key expiry: the longest matching prefix wins, else `default`. TTLs refresh on every write.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ExpiryConfig {
    /// TTL of keys no prefix matches; `null` keeps them until deleted.
    #[serde(with = "optional_duration")]
    pub default: Option<Duration>,
    /// Per-prefix TTLs.
    pub prefixes: Vec<ExpiryRule>,
}

impl Default for ExpiryConfig {
    fn default() -> Self {
        Self {
            default: Some(Duration::from_secs(24 * 3600)),
            prefixes: Vec::new(),
        }
    }
}

/// The TTL of keys starting with `prefix`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ExpiryRule {
    /// A key prefix, such as `cache|` or `ratelimit|`.
    pub prefix: String,
    /// TTL; `null` keeps matching keys until deleted.
    #[serde(with = "optional_duration")]
    pub ttl: Option<Duration>,
}

/// Log output.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LoggingSettings {
    /// `json` (one object per line) or `pretty`.
    pub format: LogFormat,
    /// A `tracing` filter such as `info` or `gateway=debug,info`.
    pub level: String,
    /// One line per request (target `access_log`).
    pub access_log: bool,
}

impl Default for LoggingSettings {
    fn default() -> Self {
        Self {
            format: LogFormat::Json,
            level: "info".into(),
            access_log: true,
        }
    }
}

/// Log line format.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// One JSON object per line.
    Json,
    /// Human-readable, for terminals.
    Pretty,
}

/// The admin listener.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AdminSettings {
    /// Address of the admin listener; keep it on loopback or a private network.
    pub address: String,
    /// Environment variable holding a token that `/config` and `/metrics` require as
    /// `Authorization: Bearer <token>` (for an admin listener bound beyond loopback); `/healthz`
    /// and `/readyz` stay open for probes.
    pub bearer_token_env: Option<String>,
}

impl Default for AdminSettings {
    fn default() -> Self {
        Self {
            address: "127.0.0.1:9901".into(),
            bearer_token_env: None,
        }
    }
}

/// A listener for client traffic.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    /// Name used in logs and metrics.
    pub name: String,
    /// `host:port` to bind.
    pub address: String,
    /// Serve TLS with this certificate and key.
    pub tls: Option<ListenerTls>,
    /// Accept HTTP/2 without TLS (prior knowledge), e.g. for gRPC clients.
    #[serde(default)]
    pub h2c: bool,
    /// Most client connections open at once; past it a new connection is closed at once.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
}

fn default_max_connections() -> usize {
    10_000
}

/// Listener TLS files (PEM).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ListenerTls {
    /// Certificate chain.
    pub certificate: PathBuf,
    /// Private key.
    pub key: PathBuf,
    /// Mutual TLS: clients must present a certificate that this CA bundle verifies; its names
    /// reach filters as `source.principal` and `connection.*_peer_certificate`.
    #[serde(default)]
    pub client_ca: Option<PathBuf>,
}

/// A named, ordered list of filters.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FilterChainConfig {
    /// Name routes use to refer to the chain.
    pub name: String,
    /// Filters in request order (responses pass through them in reverse).
    pub filters: Vec<FilterConfig>,
}

/// One proxy-wasm filter.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FilterConfig {
    /// Plugin name (logs, metrics, `plugin_name` property).
    pub name: String,
    /// Path to the `.wasm` module.
    pub wasm: PathBuf,
    /// Root context id the filter registers under (usually empty).
    #[serde(default)]
    pub root_id: String,
    /// VM configuration passed to `on_vm_start`: a string as is, anything else as JSON.
    #[serde(default)]
    pub vm_configuration: Option<serde_json::Value>,
    /// Plugin configuration passed to `on_configure`: a string as is, anything else as JSON.
    #[serde(default)]
    pub configuration: Option<serde_json::Value>,
    /// Read the plugin configuration from this file instead (the same file Envoy can use).
    #[serde(default)]
    pub configuration_file: Option<PathBuf>,
    /// What requests get when the filter fails.
    #[serde(default)]
    pub failure_policy: FailurePolicyConfig,
    /// Per-VM limits.
    #[serde(default)]
    pub limits: FilterLimits,
}

/// Failure policy names, as in Envoy's `failure_policy`: what the request that hit the failure
/// gets. Either way the next request runs on a fresh VM.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum FailurePolicyConfig {
    /// A 503 JSON error. `reload`, the name of an earlier policy that did this and then
    /// restarted the VM (every policy restarts it now), is read as `fail_closed`.
    #[default]
    #[serde(alias = "reload")]
    FailClosed,
    /// The request goes on without the filter.
    FailOpen,
}

/// Filter VM limits.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct FilterLimits {
    /// Linear memory cap, in MiB.
    pub max_memory_mib: usize,
    /// CPU deadline for one callback.
    #[serde(with = "duration")]
    pub callback_timeout: Duration,
    /// Longest a filter may hold a request paused.
    #[serde(with = "duration")]
    pub pause_timeout: Duration,
}

impl Default for FilterLimits {
    fn default() -> Self {
        let limits = proxy_wasm_host::VmLimits::default();
        Self {
            max_memory_mib: limits.max_memory_bytes >> 20,
            callback_timeout: limits.callback_deadline,
            pause_timeout: limits.pause_timeout,
        }
    }
}

/// A route: what requests it matches and where they go.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// Name used in logs, metrics and the `xds.route_name` property.
    pub name: String,
    /// Conditions; all must hold. Empty matches every request.
    #[serde(default, rename = "match")]
    pub matcher: RouteMatch,
    /// Target cluster.
    pub cluster: String,
    /// Name of the filter chain to run, if any.
    #[serde(default)]
    pub filter_chain: Option<String>,
    /// Deadline for the upstream's response headers and between body reads (504 when exceeded).
    #[serde(default, with = "optional_duration")]
    pub timeout: Option<Duration>,
    /// What clients see when the upstream answers 5xx.
    #[serde(default)]
    pub upstream_errors: UpstreamErrors,
    /// Forward `Upgrade` (WebSocket and the like); otherwise it is removed as hop-by-hop.
    #[serde(default)]
    pub allow_upgrade: bool,
}

/// Route conditions.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RouteMatch {
    /// Listener names; the request must have arrived on one of them (e.g. a sidecar's inbound
    /// or outbound listener).
    #[serde(default)]
    pub listeners: Vec<String>,
    /// Path condition.
    #[serde(default)]
    pub path: Option<PathMatch>,
    /// Host names (the `Host` header or `:authority`, without the port); any of them matches.
    #[serde(default)]
    pub hosts: Vec<String>,
    /// Methods; any of them matches.
    #[serde(default)]
    pub methods: Vec<String>,
    /// Header conditions; all must hold.
    #[serde(default)]
    pub headers: Vec<HeaderMatch>,
}

/// How the path (without the query string) is matched: set exactly one field.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PathMatch {
    /// The path starts with this.
    pub prefix: Option<String>,
    /// The path is exactly this.
    pub exact: Option<String>,
    /// The whole path matches this regular expression.
    pub regex: Option<String>,
}

/// A header condition.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct HeaderMatch {
    /// Header name (case-insensitive).
    pub name: String,
    /// The value is exactly this.
    #[serde(default)]
    pub exact: Option<String>,
    /// The whole value matches this regular expression.
    #[serde(default)]
    pub regex: Option<String>,
    /// The header is present (`true`) or absent (`false`).
    #[serde(default)]
    pub present: Option<bool>,
}

/// Upstream 5xx handling.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum UpstreamErrors {
    /// Pass the upstream's response through unchanged.
    #[default]
    PassThrough,
    /// Replace the body with the proxy's JSON error (status kept), so tracebacks never leak.
    Json,
}

/// An upstream cluster.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// Name routes and `http_call` use.
    pub name: String,
    /// `ip:port` endpoints, or `name:port`, which stands for every address the name resolves to
    /// when the configuration loads (at start and on each reload).
    pub endpoints: Vec<String>,
    /// How an endpoint is chosen.
    #[serde(default)]
    pub load_balancing: LoadBalancing,
    /// Wire protocol to the endpoints.
    #[serde(default)]
    pub protocol: UpstreamProtocol,
    /// TLS to the endpoints.
    #[serde(default)]
    pub tls: Option<UpstreamTls>,
    /// Connection timeouts.
    #[serde(default)]
    pub timeouts: ClusterTimeouts,
    /// Active HTTP health checking.
    #[serde(default)]
    pub health_check: Option<HealthCheckConfig>,
    /// Retries of idempotent requests.
    #[serde(default)]
    pub retries: RetryConfig,
    /// Sign the identity headers sent to this cluster, so its services can tell them from forged
    /// ones (see the `gateway-identity` crate).
    #[serde(default)]
    pub identity_signature: Option<IdentitySignatureConfig>,
}

/// Where the key that signs a cluster's identity headers comes from.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct IdentitySignatureConfig {
    /// Name of the environment variable holding the key (at least 16 bytes; kept out of the file
    /// and the logs).
    pub key_env: String,
}

/// Load-balancing policy: `round_robin`, `least_connections` or
/// `{consistent_hash: {header: <name>}}`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(try_from = "LoadBalancingRepr")]
pub enum LoadBalancing {
    /// Each endpoint in turn.
    #[default]
    RoundRobin,
    /// The endpoint with the fewest requests in flight.
    LeastConnections,
    /// The same header value always goes to the same endpoint (while it is healthy).
    ConsistentHash {
        /// Header whose value is hashed; requests without it are spread round robin.
        header: String,
    },
}

/// The YAML shapes of [`LoadBalancing`].
#[derive(Deserialize)]
#[serde(untagged)]
enum LoadBalancingRepr {
    Named(String),
    Hash {
        consistent_hash: ConsistentHashConfig,
    },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ConsistentHashConfig {
    header: String,
}

impl TryFrom<LoadBalancingRepr> for LoadBalancing {
    type Error = String;

    fn try_from(repr: LoadBalancingRepr) -> Result<Self, String> {
        match repr {
            LoadBalancingRepr::Named(name) => match name.as_str() {
                "round_robin" => Ok(Self::RoundRobin),
                "least_connections" => Ok(Self::LeastConnections),
                other => Err(format!(
                    "unknown policy {other:?} (expected round_robin, least_connections or \
                     {{consistent_hash: {{header: <name>}}}})"
                )),
            },
            LoadBalancingRepr::Hash { consistent_hash } => Ok(Self::ConsistentHash {
                header: consistent_hash.header.to_ascii_lowercase(),
            }),
        }
    }
}

/// Wire protocol to upstream endpoints.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum UpstreamProtocol {
    /// HTTP/1.1.
    #[default]
    Http1,
    /// HTTP/2 (over TLS with ALPN, or h2c with prior knowledge without TLS), e.g. gRPC.
    Http2,
}

/// TLS to upstream endpoints.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct UpstreamTls {
    /// Server name to send and verify; defaults to the endpoint host.
    #[serde(default)]
    pub sni: Option<String>,
    /// Verify the upstream's certificate (default true).
    #[serde(default = "yes")]
    pub verify: bool,
    /// PEM bundle of the CAs that may sign the upstream's certificate, instead of the system
    /// roots (a mesh CA).
    #[serde(default)]
    pub ca: Option<PathBuf>,
    /// PEM certificate (chain) this proxy presents to the upstream: mutual TLS.
    #[serde(default)]
    pub client_certificate: Option<PathBuf>,
    /// PEM private key of `client_certificate`.
    #[serde(default)]
    pub client_key: Option<PathBuf>,
}

fn yes() -> bool {
    true
}

/// Upstream timeouts.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterTimeouts {
    /// TCP (and TLS) connect.
    #[serde(with = "duration")]
    pub connect: Duration,
    /// Waiting for response headers, and between reads; a route's `timeout` overrides it.
    #[serde(with = "duration")]
    pub read: Duration,
    /// How long an idle pooled connection is kept.
    #[serde(with = "duration")]
    pub idle: Duration,
}

impl Default for ClusterTimeouts {
    fn default() -> Self {
        Self {
            connect: Duration::from_secs(2),
            read: Duration::from_secs(60),
            idle: Duration::from_secs(60),
        }
    }
}

/// Active health check: `GET path` on every endpoint at an interval.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct HealthCheckConfig {
    /// Path to request.
    pub path: String,
    /// Time between checks.
    #[serde(default = "default_interval", with = "duration")]
    pub interval: Duration,
    /// A check that takes longer fails.
    #[serde(default = "default_check_timeout", with = "duration")]
    pub timeout: Duration,
    /// Consecutive failures before an endpoint is taken out.
    #[serde(default = "default_threshold")]
    pub unhealthy_threshold: u32,
    /// Consecutive successes before it is put back.
    #[serde(default = "one")]
    pub healthy_threshold: u32,
}

fn default_interval() -> Duration {
    Duration::from_secs(5)
}

fn default_check_timeout() -> Duration {
    Duration::from_secs(1)
}

fn default_threshold() -> u32 {
    2
}

fn one() -> u32 {
    1
}

/// Retries for idempotent requests (GET, HEAD, PUT, DELETE, OPTIONS, TRACE) that failed to connect
/// or lost their connection before a response.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RetryConfig {
    /// Extra attempts per request.
    pub attempts: u32,
    /// Retries may add at most this percentage to the cluster's request rate…
    pub budget_percent: u32,
    /// …but this many retries per second are always allowed.
    pub min_retries_per_second: u32,
}

impl Default for RetryConfig {
    fn default() -> Self {
        Self {
            attempts: 1,
            budget_percent: 20,
            min_retries_per_second: 3,
        }
    }
}

impl Config {
    /// Reads, parses and checks a configuration file.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigError::new(path.display().to_string(), format!("cannot read: {e}"))
        })?;
        let base_dir = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."))
            .to_path_buf();
        Self::parse(&text, base_dir)
    }

    /// Parses and checks configuration text; relative paths resolve against `base_dir`.
    /// `${NAME}` is replaced by the environment variable `NAME` first.
    pub fn parse(text: &str, base_dir: PathBuf) -> Result<Self, ConfigError> {
        let text = expand_env(text, |name| std::env::var(name).ok())?;
        let deserializer = serde_yaml_ng::Deserializer::from_str(&text);
        let mut config: Config = serde_path_to_error::deserialize(deserializer).map_err(|e| {
            let field = e.path().to_string();
            let field = if field == "." { "(file)".into() } else { field };
            let message = e.into_inner().to_string();
            // The YAML error may already start with (part of) the path; say it once.
            let message = match message.split_once(": ") {
                Some((head, rest)) if field.starts_with(head) => rest.to_string(),
                _ => message,
            };
            ConfigError::new(field, message)
        })?;
        config.base_dir = base_dir;
        config.check()?;
        Ok(config)
    }

    /// Resolves a path from the file against the file's directory.
    pub fn resolve(&self, path: &Path) -> PathBuf {
        self.base_dir.join(path)
    }

    /// The plugin configuration bytes for a filter (inline value or file).
    pub fn plugin_configuration(
        &self,
        filter: &FilterConfig,
        field: &str,
    ) -> Result<Vec<u8>, ConfigError> {
        if let Some(file) = &filter.configuration_file {
            let path = self.resolve(file);
            return std::fs::read(&path).map_err(|e| {
                ConfigError::new(
                    format!("{field}.configuration_file"),
                    format!("cannot read {}: {e}", path.display()),
                )
            });
        }
        Ok(value_bytes(filter.configuration.as_ref()))
    }

    /// The files a reload reads again besides the configuration itself: each filter's `.wasm`
    /// and `configuration_file`, and each cluster's TLS files, resolved.
    pub fn referenced_files(&self) -> Vec<PathBuf> {
        let filters = self
            .filter_chains
            .iter()
            .flat_map(|chain| &chain.filters)
            .flat_map(|filter| std::iter::once(&filter.wasm).chain(&filter.configuration_file));
        let upstream_tls = self
            .clusters
            .iter()
            .filter_map(|cluster| cluster.tls.as_ref())
            .flat_map(|tls| [&tls.ca, &tls.client_certificate, &tls.client_key])
            .flatten();
        filters
            .chain(upstream_tls)
            .map(|path| self.resolve(path))
            .collect()
    }

    /// The filter chain a route refers to.
    pub fn filter_chain(&self, name: &str) -> Option<&FilterChainConfig> {
        self.filter_chains.iter().find(|c| c.name == name)
    }

    fn check_upstream_tls(&self, tls: &UpstreamTls, field: &str) -> Result<(), ConfigError> {
        if tls.client_certificate.is_some() != tls.client_key.is_some() {
            return Err(ConfigError::new(
                field,
                "set client_certificate and client_key together",
            ));
        }
        let files = [
            ("ca", &tls.ca),
            ("client_certificate", &tls.client_certificate),
            ("client_key", &tls.client_key),
        ];
        for (name, file) in files {
            if let Some(file) = file {
                self.check_file(file, &format!("{field}.{name}"))?;
            }
        }
        Ok(())
    }

    fn check(&self) -> Result<(), ConfigError> {
        if self.server.threads == 0 {
            return Err(ConfigError::new("server.threads", "must be at least 1"));
        }
        if self.server.reload.poll_interval < Duration::from_millis(100) {
            return Err(ConfigError::new(
                "server.reload.poll_interval",
                "must be at least 100ms",
            ));
        }
        parse_address(&self.admin.address, "admin.address")?;
        if self.listeners.is_empty() {
            return Err(ConfigError::new(
                "listeners",
                "at least one listener is needed",
            ));
        }
        let mut addresses = HashSet::new();
        unique_names(self.listeners.iter().map(|l| &l.name), "listeners")?;
        for (i, listener) in self.listeners.iter().enumerate() {
            let field = format!("listeners[{i}]");
            let addr = parse_address(&listener.address, &format!("{field}.address"))?;
            if !addresses.insert(addr) {
                return Err(ConfigError::new(
                    format!("{field}.address"),
                    format!("{addr} is used by another listener"),
                ));
            }
            if listener.max_connections == 0 {
                return Err(ConfigError::new(
                    format!("{field}.max_connections"),
                    "must be at least 1",
                ));
            }
            if let Some(tls) = &listener.tls {
                self.check_file(&tls.certificate, &format!("{field}.tls.certificate"))?;
                self.check_file(&tls.key, &format!("{field}.tls.key"))?;
                if let Some(ca) = &tls.client_ca {
                    self.check_file(ca, &format!("{field}.tls.client_ca"))?;
                }
            }
        }
        unique_names(self.clusters.iter().map(|c| &c.name), "clusters")?;
        for (i, cluster) in self.clusters.iter().enumerate() {
            let field = format!("clusters[{i}]");
            check_cluster(cluster, &field)?;
            if let Some(tls) = &cluster.tls {
                self.check_upstream_tls(tls, &format!("{field}.tls"))?;
            }
        }
        unique_names(self.filter_chains.iter().map(|c| &c.name), "filter_chains")?;
        for (i, chain) in self.filter_chains.iter().enumerate() {
            let field = format!("filter_chains[{i}]");
            unique_names(
                chain.filters.iter().map(|f| &f.name),
                &format!("{field}.filters"),
            )?;
            for (j, filter) in chain.filters.iter().enumerate() {
                let field = format!("{field}.filters[{j}]");
                self.check_file(&filter.wasm, &format!("{field}.wasm"))?;
                if filter.configuration.is_some() && filter.configuration_file.is_some() {
                    return Err(ConfigError::new(
                        field,
                        "set either configuration or configuration_file, not both",
                    ));
                }
                if filter.limits.max_memory_mib == 0 {
                    return Err(ConfigError::new(
                        format!("{field}.limits.max_memory_mib"),
                        "must be at least 1",
                    ));
                }
                if let Some(file) = &filter.configuration_file {
                    self.check_file(file, &format!("{field}.configuration_file"))?;
                }
            }
        }
        if self.routes.is_empty() {
            return Err(ConfigError::new("routes", "at least one route is needed"));
        }
        unique_names(self.routes.iter().map(|r| &r.name), "routes")?;
        for (i, route) in self.routes.iter().enumerate() {
            let field = format!("routes[{i}]");
            if !self.clusters.iter().any(|c| c.name == route.cluster) {
                return Err(ConfigError::new(
                    format!("{field}.cluster"),
                    format!("no cluster is named {:?}", route.cluster),
                ));
            }
            if let Some(chain) = &route.filter_chain {
                if self.filter_chain(chain).is_none() {
                    return Err(ConfigError::new(
                        format!("{field}.filter_chain"),
                        format!("no filter chain is named {chain:?}"),
                    ));
                }
            }
            if let Some(unknown) = route
                .matcher
                .listeners
                .iter()
                .find(|name| !self.listeners.iter().any(|l| &&l.name == name))
            {
                return Err(ConfigError::new(
                    format!("{field}.match.listeners"),
                    format!("no listener is named {unknown:?}"),
                ));
            }
            crate::routing::RouteMatcher::compile(&route.matcher, &format!("{field}.match"))?;
        }
        Ok(())
    }

    fn check_file(&self, path: &Path, field: &str) -> Result<(), ConfigError> {
        let resolved = self.resolve(path);
        if resolved.is_file() {
            Ok(())
        } else {
            Err(ConfigError::new(
                field,
                format!("no such file: {}", resolved.display()),
            ))
        }
    }
}

fn check_cluster(cluster: &ClusterConfig, field: &str) -> Result<(), ConfigError> {
    if cluster.endpoints.is_empty() {
        return Err(ConfigError::new(
            format!("{field}.endpoints"),
            "at least one endpoint is needed",
        ));
    }
    for (i, endpoint) in cluster.endpoints.iter().enumerate() {
        parse_endpoint(endpoint, &format!("{field}.endpoints[{i}]"))?;
    }
    if let LoadBalancing::ConsistentHash { header } = &cluster.load_balancing {
        if http::HeaderName::from_bytes(header.as_bytes()).is_err() {
            return Err(ConfigError::new(
                format!("{field}.load_balancing.consistent_hash.header"),
                format!("{header:?} is not a valid header name"),
            ));
        }
    }
    if let Some(check) = &cluster.health_check {
        if !check.path.starts_with('/') {
            return Err(ConfigError::new(
                format!("{field}.health_check.path"),
                "must start with /",
            ));
        }
        if check.unhealthy_threshold == 0 || check.healthy_threshold == 0 {
            return Err(ConfigError::new(
                format!("{field}.health_check"),
                "thresholds must be at least 1",
            ));
        }
        if check.interval.is_zero() || check.timeout.is_zero() {
            return Err(ConfigError::new(
                format!("{field}.health_check"),
                "interval and timeout must be positive",
            ));
        }
    }
    Ok(())
}

fn unique_names<'a>(
    names: impl Iterator<Item = &'a String>,
    field: &str,
) -> Result<(), ConfigError> {
    let mut seen = HashSet::new();
    for (i, name) in names.enumerate() {
        if name.is_empty() {
            return Err(ConfigError::new(
                format!("{field}[{i}].name"),
                "must not be empty",
            ));
        }
        if !seen.insert(name) {
            return Err(ConfigError::new(
                format!("{field}[{i}].name"),
                format!("{name:?} is used twice"),
            ));
        }
    }
    Ok(())
}

/// Parses `host:port` where host is an IP address or `localhost`.
pub fn parse_address(text: &str, field: &str) -> Result<SocketAddr, ConfigError> {
    let normalised = match text.strip_prefix("localhost:") {
        Some(port) => format!("127.0.0.1:{port}"),
        None => text.to_string(),
    };
    normalised.parse().map_err(|_| {
        ConfigError::new(
            field,
            format!("{text:?} is not an address of the form ip:port"),
        )
    })
}

/// An upstream endpoint as written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EndpointSpec {
    /// `ip:port` (or `localhost:port`).
    Address(SocketAddr),
    /// `name:port`, resolved when the configuration loads.
    Name {
        /// The DNS name.
        host: String,
        /// The port.
        port: u16,
    },
}

/// Parses an endpoint: an address, or a DNS name and a port.
pub fn parse_endpoint(text: &str, field: &str) -> Result<EndpointSpec, ConfigError> {
    if let Ok(address) = parse_address(text, field) {
        return Ok(EndpointSpec::Address(address));
    }
    let invalid = || {
        ConfigError::new(
            field,
            format!("{text:?} is neither ip:port nor a DNS name and port (name:port)"),
        )
    };
    let (host, port) = text.rsplit_once(':').ok_or_else(invalid)?;
    let port: u16 = port.parse().map_err(|_| invalid())?;
    let label_ok = |label: &str| {
        !label.is_empty()
            && label.len() <= 63
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
    };
    let host = host.strip_suffix('.').unwrap_or(host);
    if port == 0 || host.len() > 253 || !host.split('.').all(label_ok) {
        return Err(invalid());
    }
    Ok(EndpointSpec::Name {
        host: host.to_ascii_lowercase(),
        port,
    })
}

/// Replaces `${NAME}` with `lookup(NAME)`; an unset variable is an error naming it.
fn expand_env(text: &str, lookup: impl Fn(&str) -> Option<String>) -> Result<String, ConfigError> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after.find('}').ok_or_else(|| {
            ConfigError::new(
                "(file)",
                "unterminated ${ in an environment variable reference",
            )
        })?;
        let name = &after[..end];
        let value = lookup(name).ok_or_else(|| {
            ConfigError::new(
                "(file)",
                format!("environment variable {name} is referenced but not set"),
            )
        })?;
        out.push_str(&value);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// A YAML/JSON value as filter configuration bytes: strings as is, anything else as JSON.
pub fn value_bytes(value: Option<&serde_json::Value>) -> Vec<u8> {
    match value {
        None | Some(serde_json::Value::Null) => Vec::new(),
        Some(serde_json::Value::String(text)) => text.clone().into_bytes(),
        Some(other) => other.to_string().into_bytes(),
    }
}

/// Durations written as `250ms`, `5s`, `2m` or `1h`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("{text:?} has no unit (use ms, s, m or h)"))?;
    let (number, unit) = text.split_at(split);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration such as 500ms or 30s"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(number)),
        "s" => Ok(Duration::from_secs(number)),
        "m" => Ok(Duration::from_secs(number * 60)),
        "h" => Ok(Duration::from_secs(number * 3600)),
        _ => Err(format!("{text:?} has an unknown unit (use ms, s, m or h)")),
    }
}

mod duration {
    use serde::{Deserialize, Deserializer};
    use std::time::Duration;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        super::parse_duration(&text).map_err(serde::de::Error::custom)
    }
}

mod optional_duration {
    use serde::{Deserialize, Deserializer};
    use std::time::Duration;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        Option::<String>::deserialize(d)?
            .map(|text| super::parse_duration(&text).map_err(serde::de::Error::custom))
            .transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = "
listeners: [{name: public, address: 127.0.0.1:8080}]
routes: [{name: all, cluster: app}]
clusters: [{name: app, endpoints: [127.0.0.1:9000]}]
";

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, PathBuf::from("."))
    }

    #[test]
    fn minimal_file_gets_defaults() {
        let config = parse(MINIMAL).unwrap();
        assert_eq!(config.server.threads, 2);
        assert_eq!(config.clusters[0].load_balancing, LoadBalancing::RoundRobin);
        assert_eq!(config.clusters[0].timeouts.connect, Duration::from_secs(2));
        assert_eq!(
            config.routes[0].upstream_errors,
            UpstreamErrors::PassThrough
        );
    }

    #[test]
    fn errors_name_the_field() {
        let bad_lb = MINIMAL.replace(
            "endpoints: [127.0.0.1:9000]",
            "endpoints: [127.0.0.1:9000], load_balancing: fastest",
        );
        let err = parse(&bad_lb).unwrap_err();
        assert_eq!(err.field, "clusters[0].load_balancing");
        assert!(err.message.contains("fastest"), "{err}");

        let bad_endpoint = MINIMAL.replace("127.0.0.1:9000", "nowhere");
        assert_eq!(
            parse(&bad_endpoint).unwrap_err().to_string(),
            "clusters[0].endpoints[0]: \"nowhere\" is neither ip:port nor a DNS name and port \
             (name:port)"
        );

        let unknown_cluster = MINIMAL.replace("cluster: app", "cluster: ghost");
        assert_eq!(
            parse(&unknown_cluster).unwrap_err().field,
            "routes[0].cluster"
        );

        let typo = MINIMAL.replace("name: all,", "name: all, clustr: x,");
        let err = parse(&typo).unwrap_err();
        assert_eq!(err.field, "routes[0].clustr");
        assert!(err.message.contains("clustr"), "{err}");
    }

    #[test]
    fn endpoints_are_addresses_or_dns_names() {
        assert_eq!(
            parse_endpoint("10.0.0.1:80", "e").unwrap(),
            EndpointSpec::Address("10.0.0.1:80".parse().unwrap())
        );
        assert_eq!(
            parse_endpoint("Billing.default.svc.cluster.local.:8080", "e").unwrap(),
            EndpointSpec::Name {
                host: "billing.default.svc.cluster.local".into(),
                port: 8080
            }
        );
        for bad in [
            "billing",
            "billing:0",
            "billing:http",
            "-x:80",
            "a..b:80",
            "a_b:80",
        ] {
            assert!(parse_endpoint(bad, "e").is_err(), "{bad}");
        }
    }

    #[test]
    fn bad_regex_and_duration_are_refused() {
        let regex = MINIMAL.replace(
            "cluster: app}",
            "cluster: app, match: {path: {regex: '(['}}}",
        );
        assert_eq!(
            parse(&regex).unwrap_err().field,
            "routes[0].match.path.regex"
        );
        let timeout = MINIMAL.replace("cluster: app}", "cluster: app, timeout: 5 parsecs}");
        let err = parse(&timeout).unwrap_err();
        assert_eq!(err.field, "routes[0].timeout");
    }

    #[test]
    fn missing_wasm_file_is_refused() {
        let text = format!(
            "{MINIMAL}filter_chains: [{{name: c, filters: [{{name: f, wasm: /nonexistent.wasm}}]}}]"
        );
        let err = parse(&text).unwrap_err();
        assert_eq!(err.field, "filter_chains[0].filters[0].wasm");
    }

    #[test]
    fn upstream_client_certificate_needs_its_key_and_existing_files() {
        let with_tls = |tls: &str| {
            MINIMAL.replace(
                "endpoints: [127.0.0.1:9000]",
                &format!("endpoints: [127.0.0.1:9000], tls: {tls}"),
            )
        };
        let file = concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml");
        let lone = parse(&with_tls(&format!("{{client_certificate: {file}}}"))).unwrap_err();
        assert_eq!(
            lone.to_string(),
            "clusters[0].tls: set client_certificate and client_key together"
        );
        let missing = parse(&with_tls("{ca: /nonexistent/ca.pem}")).unwrap_err();
        assert_eq!(missing.field, "clusters[0].tls.ca");
        let config = parse(&with_tls(&format!("{{ca: {file}}}"))).unwrap();
        assert_eq!(
            config.referenced_files(),
            [PathBuf::from(file)],
            "a reload reads upstream TLS files again"
        );
    }

    #[test]
    fn plugin_configuration_is_json_or_a_string() {
        assert_eq!(
            value_bytes(Some(&serde_json::json!({"a": 1}))),
            br#"{"a":1}"#
        );
        assert_eq!(
            value_bytes(Some(&serde_json::json!("raw text"))),
            b"raw text"
        );
        assert!(value_bytes(None).is_empty());
    }

    #[test]
    fn environment_variables_are_expanded() {
        let lookup = |name: &str| (name == "DIR").then(|| "/opt/wasm".to_string());
        assert_eq!(
            expand_env("wasm: ${DIR}/auth.wasm", lookup).unwrap(),
            "wasm: /opt/wasm/auth.wasm"
        );
        let err = expand_env("wasm: ${MISSING}/auth.wasm", lookup).unwrap_err();
        assert!(err.message.contains("MISSING"), "{err}");
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("10").is_err());
        assert!(parse_duration("10 lightyears").is_err());
    }
}
