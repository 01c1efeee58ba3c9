//! Upstream clusters: endpoints, balancing, TLS, timeouts, health checks and retries.

use super::values::{duration, parse_address};
use super::ConfigError;
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

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

pub(super) fn check_cluster(cluster: &ClusterConfig, field: &str) -> Result<(), ConfigError> {
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
