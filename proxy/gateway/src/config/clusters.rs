//! Upstream clusters: endpoints, balancing, TLS, timeouts, health checks and retries.

use super::values::{duration, AtLeastOne, EndpointAddress, HeaderName, NonZeroDuration, UrlPath};
use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::Deserialize;
use std::fmt;
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
    #[serde(deserialize_with = "endpoints")]
    pub endpoints: Vec<EndpointAddress>,
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

fn endpoints<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<EndpointAddress>, D::Error> {
    let endpoints = Vec::deserialize(d)?;
    if endpoints.is_empty() {
        return Err(de::Error::custom("at least one endpoint is needed"));
    }
    Ok(endpoints)
}

/// Load-balancing policy: `round_robin`, `least_connections` or
/// `{consistent_hash: {header: <name>}}`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum LoadBalancing {
    /// Each endpoint in turn.
    #[default]
    RoundRobin,
    /// The endpoint with the fewest requests in flight.
    LeastConnections,
    /// The same header value always goes to the same endpoint (while it is healthy).
    ConsistentHash {
        /// Header whose value is hashed; requests without it are spread round robin.
        header: HeaderName,
    },
}

impl<'de> Deserialize<'de> for LoadBalancing {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(LoadBalancingVisitor)
    }
}

/// Reads a policy's name, or the map of a policy with settings; the map is read field by field,
/// so an error inside it names its field.
struct LoadBalancingVisitor;

const EXPECTED_POLICIES: &str =
    "round_robin, least_connections or {consistent_hash: {header: <name>}}";

impl<'de> Visitor<'de> for LoadBalancingVisitor {
    type Value = LoadBalancing;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(EXPECTED_POLICIES)
    }

    fn visit_str<E: de::Error>(self, name: &str) -> Result<LoadBalancing, E> {
        match name {
            "round_robin" => Ok(LoadBalancing::RoundRobin),
            "least_connections" => Ok(LoadBalancing::LeastConnections),
            other => Err(E::custom(format!(
                "unknown policy {other:?} (expected {EXPECTED_POLICIES})"
            ))),
        }
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<LoadBalancing, A::Error> {
        let policy = PolicyWithSettings::deserialize(de::value::MapAccessDeserializer::new(map))?;
        Ok(LoadBalancing::ConsistentHash {
            header: policy.consistent_hash.header,
        })
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyWithSettings {
    consistent_hash: ConsistentHashConfig,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ConsistentHashConfig {
    header: HeaderName,
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

/// Active health check on every endpoint at an interval: `GET path`, or gRPC's standard health
/// check (`grpc`).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct HealthCheckConfig {
    /// Path to request with `GET`; a 2xx answer passes.
    #[serde(default)]
    pub path: Option<UrlPath>,
    /// Ask `grpc.health.v1.Health/Check` instead (the cluster must speak HTTP/2); SERVING passes.
    #[serde(default)]
    pub grpc: Option<GrpcHealthCheckConfig>,
    /// Time between checks.
    #[serde(default = "default_interval")]
    pub interval: NonZeroDuration,
    /// A check that takes longer fails.
    #[serde(default = "default_check_timeout")]
    pub timeout: NonZeroDuration,
    /// Consecutive failures before an endpoint is taken out.
    #[serde(default = "default_threshold")]
    pub unhealthy_threshold: AtLeastOne<u32>,
    /// Consecutive successes before it is put back.
    #[serde(default = "one")]
    pub healthy_threshold: AtLeastOne<u32>,
}

/// A gRPC health check.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct GrpcHealthCheckConfig {
    /// The service asked about; "" (the default) is the server as a whole.
    #[serde(default)]
    pub service: String,
}

/// What a health check asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HealthProbe<'a> {
    /// `GET path`.
    Http(&'a UrlPath),
    /// `grpc.health.v1.Health/Check` for this service.
    Grpc(&'a str),
}

impl HealthCheckConfig {
    /// What the check asks; `None` when the configuration names neither or both (refused when it
    /// loads).
    pub fn probe(&self) -> Option<HealthProbe<'_>> {
        match (&self.path, &self.grpc) {
            (Some(path), None) => Some(HealthProbe::Http(path)),
            (None, Some(grpc)) => Some(HealthProbe::Grpc(&grpc.service)),
            _ => None,
        }
    }
}

fn default_interval() -> NonZeroDuration {
    NonZeroDuration::new(Duration::from_secs(5)).expect("positive")
}

fn default_check_timeout() -> NonZeroDuration {
    NonZeroDuration::new(Duration::from_secs(1)).expect("positive")
}

fn default_threshold() -> AtLeastOne<u32> {
    AtLeastOne::new(2).expect("at least 1")
}

fn one() -> AtLeastOne<u32> {
    AtLeastOne::new(1).expect("at least 1")
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
