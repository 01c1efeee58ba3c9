//! Upstream clusters: endpoints with health and load, endpoint selection, and the retry budget.

use crate::config::{
    ClusterConfig, ConfigError, EndpointAddress, LoadBalancing, RetryConfig, UpstreamProtocol,
};
use crate::upstream_tls::UpstreamCredentials;
use pingora::http::RequestHeader;
use pingora::upstreams::peer::HttpPeer;
use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// One upstream address.
#[derive(Debug)]
pub struct Endpoint {
    /// Where to connect.
    pub address: SocketAddr,
    /// The DNS name it was resolved from, if any: the default TLS server name and health-check
    /// `Host`.
    pub name: Option<String>,
    healthy: AtomicBool,
    in_flight: AtomicUsize,
}

impl Endpoint {
    /// Whether health checks (if any) currently pass.
    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    /// Records a health-check verdict; returns whether it changed.
    pub fn set_healthy(&self, healthy: bool) -> bool {
        self.healthy.swap(healthy, Ordering::Relaxed) != healthy
    }

    /// Requests currently in flight to this endpoint.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }
}

/// Marks a request in flight on an endpoint until dropped (for least-connections).
#[derive(Debug)]
pub struct InFlight(Arc<Endpoint>);

impl InFlight {
    /// Counts a request on `endpoint`.
    pub fn new(endpoint: Arc<Endpoint>) -> Self {
        endpoint.in_flight.fetch_add(1, Ordering::Relaxed);
        Self(endpoint)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A cluster at run time.
#[derive(Debug)]
pub struct Cluster {
    /// Its configuration.
    pub config: ClusterConfig,
    /// Its endpoints, in configuration order.
    pub endpoints: Vec<Arc<Endpoint>>,
    /// Its TLS credentials (CA bundle, client certificate).
    pub credentials: UpstreamCredentials,
    next: AtomicUsize,
    budget: RetryBudget,
}

impl Cluster {
    /// Builds a cluster from checked configuration, its resolved endpoints (see
    /// [`resolve_endpoints`]) and the credentials its `tls` names.
    pub fn new(
        config: ClusterConfig,
        endpoints: Vec<ResolvedEndpoint>,
        credentials: UpstreamCredentials,
    ) -> Self {
        let endpoints = endpoints
            .into_iter()
            .map(|ResolvedEndpoint { address, name }| {
                Arc::new(Endpoint {
                    address,
                    name,
                    healthy: AtomicBool::new(true),
                    in_flight: AtomicUsize::new(0),
                })
            })
            .collect();
        let budget = RetryBudget::new(&config.retries);
        Self {
            config,
            endpoints,
            credentials,
            next: AtomicUsize::new(0),
            budget,
        }
    }

    /// Whether this cluster was built from exactly these parts, so a reload may keep it (with its
    /// endpoints' health and load).
    pub fn built_from(
        &self,
        config: &ClusterConfig,
        endpoints: &[ResolvedEndpoint],
        credentials: &UpstreamCredentials,
    ) -> bool {
        self.config == *config
            && self.credentials == *credentials
            && self.endpoints.len() == endpoints.len()
            && self
                .endpoints
                .iter()
                .zip(endpoints)
                .all(|(kept, new)| kept.address == new.address && kept.name == new.name)
    }

    /// How many endpoints are in rotation now (what `/readyz` and the status page report).
    pub fn healthy_endpoints(&self) -> usize {
        self.endpoints.iter().filter(|e| e.is_healthy()).count()
    }

    /// Picks a healthy endpoint, avoiding `exclude` (a failed attempt) when another is healthy.
    /// `hash_key` is the consistent-hash header's value, when the policy uses one.
    pub fn select(
        &self,
        hash_key: Option<&[u8]>,
        exclude: Option<SocketAddr>,
    ) -> Option<Arc<Endpoint>> {
        let mut candidates: Vec<&Arc<Endpoint>> =
            self.endpoints.iter().filter(|e| e.is_healthy()).collect();
        if let Some(addr) = exclude {
            if candidates.len() > 1 {
                candidates.retain(|e| e.address != addr);
            }
        }
        if candidates.is_empty() {
            return None;
        }
        let chosen = match (&self.config.load_balancing, hash_key) {
            (LoadBalancing::LeastConnections, _) => {
                // Ties go round robin so an idle cluster still spreads load.
                let start = self.next.fetch_add(1, Ordering::Relaxed);
                (0..candidates.len())
                    .map(|i| candidates[(start + i) % candidates.len()])
                    .min_by_key(|e| e.in_flight())
                    .expect("candidates is not empty")
            }
            (LoadBalancing::ConsistentHash { .. }, Some(key)) => {
                // Rendezvous hashing: only keys of an endpoint that leaves move elsewhere.
                candidates
                    .iter()
                    .max_by_key(|e| rendezvous_weight(key, e.address))
                    .expect("candidates is not empty")
            }
            // A retry does not advance the rotation, so the next request still gets its turn.
            _ if exclude.is_some() => {
                candidates[self.next.load(Ordering::Relaxed) % candidates.len()]
            }
            _ => candidates[self.next.fetch_add(1, Ordering::Relaxed) % candidates.len()],
        };
        Some(chosen.clone())
    }

    /// A peer for `endpoint` with this cluster's protocol, TLS and timeouts; `read_timeout`
    /// overrides the cluster's read timeout (a route's `timeout`).
    pub fn peer(&self, endpoint: &Endpoint, read_timeout: Option<Duration>) -> HttpPeer {
        let tls = self.config.tls.as_ref();
        let sni = tls
            .and_then(|t| t.sni.clone())
            .or_else(|| endpoint.name.clone())
            .unwrap_or_else(|| endpoint.address.ip().to_string());
        let mut peer = HttpPeer::new(endpoint.address, tls.is_some(), sni);
        let timeouts = &self.config.timeouts;
        let options = &mut peer.options;
        options.connection_timeout = Some(timeouts.connect);
        options.total_connection_timeout = Some(timeouts.connect);
        options.read_timeout = Some(read_timeout.unwrap_or(timeouts.read));
        options.write_timeout = Some(timeouts.read);
        options.idle_timeout = Some(timeouts.idle);
        if let Some(tls) = tls {
            options.verify_cert = tls.verify;
            options.verify_hostname = tls.verify;
        }
        if self.config.protocol == UpstreamProtocol::Http2 {
            // Without TLS this is h2c with prior knowledge (gRPC backends speak it).
            options.set_http_version(2, 2);
            options.max_h2_streams = 100;
        }
        self.credentials.apply(&mut peer);
        peer
    }

    /// Counts a request for the retry budget.
    pub fn record_request(&self) {
        self.budget.record_request();
    }

    /// Whether a retry is allowed now (and, if so, counts it).
    pub fn try_retry(&self) -> bool {
        self.budget.try_retry()
    }

    /// Whether a request that has made `attempts` attempts may make another (`retries.attempts`).
    pub fn has_attempts_left(&self, attempts: u32) -> bool {
        attempts <= self.config.retries.attempts
    }

    /// What a consistent-hash policy balances `request` on (its configured header), if anything.
    pub fn hash_key<'r>(&self, request: &'r RequestHeader) -> Option<&'r [u8]> {
        match &self.config.load_balancing {
            LoadBalancing::ConsistentHash { header } => request
                .headers
                .get(header.as_str())
                .map(|value| value.as_bytes()),
            _ => None,
        }
    }
}

/// An endpoint address, and the DNS name it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedEndpoint {
    /// Where to connect.
    pub address: SocketAddr,
    /// The name it was resolved from, if any.
    pub name: Option<String>,
}

/// How long resolving one endpoint name may take.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(5);

/// Whether endpoint names are looked up when a configuration loads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameLookup {
    /// Look them up (serving).
    Resolve,
    /// Check their syntax only: `proxy validate --skip-dns`, for a configuration meant for
    /// another network (a Kubernetes Service name checked in CI).
    Skip,
}

/// The cluster's endpoints as addresses: each `ip:port` as written, each `name:port` as every
/// address the name resolves to now (sorted, so an unchanged answer compares equal). A name that
/// does not resolve is a configuration error naming the endpoint.
pub async fn resolve_endpoints(
    config: &ClusterConfig,
    field: &str,
    lookup: NameLookup,
) -> Result<Vec<ResolvedEndpoint>, ConfigError> {
    let mut resolved = Vec::new();
    for (i, endpoint) in config.endpoints.iter().enumerate() {
        let field = format!("{field}.endpoints[{i}]");
        match endpoint {
            EndpointAddress::Address(address) => resolved.push(ResolvedEndpoint {
                address: *address,
                name: None,
            }),
            EndpointAddress::Name { .. } if lookup == NameLookup::Skip => {}
            EndpointAddress::Name { name, port } => {
                let lookup = tokio::net::lookup_host((name.as_str(), *port));
                let failed = |reason: String| {
                    ConfigError::new(&field, format!("cannot resolve {name}: {reason}"))
                };
                let mut addresses: Vec<SocketAddr> = tokio::time::timeout(RESOLVE_TIMEOUT, lookup)
                    .await
                    .map_err(|_| failed(format!("no answer within {RESOLVE_TIMEOUT:?}")))?
                    .map_err(|e| failed(e.to_string()))?
                    .collect();
                addresses.sort();
                addresses.dedup();
                resolved.extend(addresses.into_iter().map(|address| ResolvedEndpoint {
                    address,
                    name: Some(name.clone()),
                }));
            }
        }
    }
    Ok(resolved)
}

fn rendezvous_weight(key: &[u8], address: SocketAddr) -> u64 {
    let mut hasher = DefaultHasher::new();
    key.hash(&mut hasher);
    address.hash(&mut hasher);
    hasher.finish()
}

/// Retries may add `budget_percent` to the request rate, with a floor of `min_retries_per_second`,
/// counted over one-second windows; this keeps retries from multiplying an outage.
#[derive(Debug)]
struct RetryBudget {
    percent: u64,
    floor: u64,
    epoch: Instant,
    window: AtomicU64,
    requests: AtomicU64,
    retries: AtomicU64,
}

impl RetryBudget {
    fn new(config: &RetryConfig) -> Self {
        Self {
            percent: u64::from(config.budget_percent),
            floor: u64::from(config.min_retries_per_second),
            epoch: Instant::now(),
            window: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            retries: AtomicU64::new(0),
        }
    }

    fn roll_window(&self) {
        let now = self.epoch.elapsed().as_secs();
        let current = self.window.load(Ordering::Relaxed);
        if now != current
            && self
                .window
                .compare_exchange(current, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            self.requests.store(0, Ordering::Relaxed);
            self.retries.store(0, Ordering::Relaxed);
        }
    }

    fn record_request(&self) {
        self.roll_window();
        self.requests.fetch_add(1, Ordering::Relaxed);
    }

    fn try_retry(&self) -> bool {
        self.roll_window();
        let allowed = (self.requests.load(Ordering::Relaxed) * self.percent / 100).max(self.floor);
        self.retries
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |r| {
                (r < allowed).then_some(r + 1)
            })
            .is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster(yaml: &str) -> Cluster {
        let config: ClusterConfig = serde_yaml_ng::from_str(yaml).unwrap();
        let endpoints = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(resolve_endpoints(&config, "c", NameLookup::Resolve))
            .unwrap();
        Cluster::new(config, endpoints, UpstreamCredentials::default())
    }

    const THREE: &str = "{name: c, endpoints: [127.0.0.1:1, 127.0.0.1:2, 127.0.0.1:3]";

    #[test]
    fn round_robin_visits_every_healthy_endpoint() {
        let c = cluster(&format!("{THREE}}}"));
        c.endpoints[1].set_healthy(false);
        let ports: Vec<u16> = (0..4)
            .map(|_| c.select(None, None).unwrap().address.port())
            .collect();
        assert_eq!(ports, [1, 3, 1, 3]);
        for e in &c.endpoints {
            e.set_healthy(false);
        }
        assert!(c.select(None, None).is_none());
    }

    #[test]
    fn least_connections_prefers_the_idle_endpoint() {
        let c = cluster(&format!("{THREE}, load_balancing: least_connections}}"));
        let _busy1 = InFlight::new(c.endpoints[0].clone());
        let _busy2 = InFlight::new(c.endpoints[2].clone());
        for _ in 0..3 {
            assert_eq!(c.select(None, None).unwrap().address.port(), 2);
        }
    }

    #[test]
    fn consistent_hash_is_sticky_and_moves_only_the_lost_keys() {
        let c = cluster(&format!(
            "{THREE}, load_balancing: {{consistent_hash: {{header: x-user}}}}}}"
        ));
        let keys: Vec<String> = (0..60).map(|i| format!("user-{i}")).collect();
        let before: Vec<u16> = keys
            .iter()
            .map(|k| c.select(Some(k.as_bytes()), None).unwrap().address.port())
            .collect();
        assert!(
            (1..=3).all(|p| before.contains(&p)),
            "keys spread: {before:?}"
        );
        c.endpoints[2].set_healthy(false);
        for (key, old) in keys.iter().zip(&before) {
            let now = c.select(Some(key.as_bytes()), None).unwrap().address.port();
            if *old != 3 {
                assert_eq!(now, *old, "{key} moved although its endpoint is healthy");
            }
        }
    }

    #[test]
    fn a_retry_avoids_the_failed_endpoint() {
        let c = cluster(&format!("{THREE}}}"));
        let failed = c.endpoints[0].address;
        for _ in 0..6 {
            assert_ne!(c.select(None, Some(failed)).unwrap().address, failed);
        }
    }

    #[test]
    fn retry_budget_has_a_floor_and_a_ratio() {
        let c = cluster(&format!(
            "{THREE}, retries: {{attempts: 3, budget_percent: 10, min_retries_per_second: 2}}}}"
        ));
        assert!(c.try_retry() && c.try_retry());
        assert!(!c.try_retry(), "floor of 2 with no traffic");
        for _ in 0..50 {
            c.record_request();
        }
        assert!(c.try_retry() && c.try_retry() && c.try_retry());
        assert!(!c.try_retry(), "10% of 50 requests is 5 retries");
    }
}
