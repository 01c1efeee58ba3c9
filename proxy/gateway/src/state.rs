//! The configuration turned into what the request path uses: a [`Generation`] of compiled routes,
//! clusters and loaded filter chains, swapped as a whole on reload, and the [`GatewayState`] that
//! outlives generations (wasm host, shared data, metrics).

use crate::callouts::ClusterCallouts;
use crate::cluster::{resolve_endpoints, Cluster, NameLookup};
use crate::config::{
    Config, ConfigError, PathSettings, ReservedHeaders, RouteConfig, TrustedProxies,
};
use crate::filter_chain::FilterChain;
use crate::metrics::GatewayMetrics;
use crate::routing::RequestFacts;
use crate::shared_data::SharedData;
use crate::upstream_tls::UpstreamCredentials;
use arc_swap::ArcSwap;
use gateway_identity::SigningKey;
use pingora::http::RequestHeader;
use proxy_wasm_host::{Host, HostOptions};
use std::collections::HashMap;
use std::sync::Arc;
use tokio::sync::watch;

/// A route ready for matching.
pub struct Route {
    /// Its configuration.
    pub config: RouteConfig,
    /// The cluster it sends requests to.
    pub cluster: Arc<Cluster>,
    /// Its filters, if any.
    pub chain: Option<Arc<FilterChain>>,
}

/// One loaded configuration: routes, clusters and filter chains. A reload builds the next one
/// beside the one serving, then swaps; a request keeps the generation it started on, so in-flight
/// requests finish on the old routes and filters.
pub struct Generation {
    /// 1 for the configuration the process started with, +1 per applied reload.
    pub number: u64,
    routes: Vec<Arc<Route>>,
    clusters: HashMap<String, Arc<Cluster>>,
    /// `server.max_request_body_bytes`.
    pub max_request_body_bytes: u64,
    /// Whether to write access-log lines.
    pub access_log: bool,
    /// `server.max_request_headers`.
    pub max_request_headers: usize,
    /// `server.max_request_header_bytes`.
    pub max_request_header_bytes: usize,
    /// `server.paths`.
    pub paths: PathSettings,
    /// `server.reserved_headers`.
    pub reserved_headers: ReservedHeaders,
    /// `server.trusted_proxies`.
    pub trusted_proxies: TrustedProxies,
    /// Identity-signing keys of the clusters that have one, by cluster name.
    signing_keys: HashMap<String, SigningKey>,
}

impl Generation {
    /// Loads `config`'s filter chains on `host` (compiling modules and checking that each filter
    /// accepts its configuration) and resolves endpoint names. A cluster whose configuration,
    /// addresses and credentials are unchanged in `previous` is kept as it is, with its
    /// endpoints' health, load and retry budget.
    async fn build(
        host: &Host,
        config: &Config,
        number: u64,
        previous: &HashMap<String, Arc<Cluster>>,
        lookup: NameLookup,
    ) -> Result<Self, ConfigError> {
        let mut clusters = HashMap::new();
        let mut signing_keys = HashMap::new();
        for (i, c) in config.clusters.iter().enumerate() {
            if let Some(signature) = &c.identity_signature {
                let field = format!("clusters[{i}].identity_signature.key_env");
                let value = std::env::var(&signature.key_env).map_err(|_| {
                    ConfigError::new(&field, format!("{} is not set", signature.key_env))
                })?;
                let key =
                    SigningKey::new(value).map_err(|e| ConfigError::new(&field, e.to_string()))?;
                signing_keys.insert(c.name.clone(), key);
            }
            let credentials = match &c.tls {
                Some(tls) => UpstreamCredentials::load(tls, config, &format!("clusters[{i}].tls"))?,
                None => UpstreamCredentials::default(),
            };
            let endpoints = resolve_endpoints(c, &format!("clusters[{i}]"), lookup).await?;
            let cluster = match previous.get(&c.name) {
                Some(kept) if kept.built_from(c, &endpoints, &credentials) => kept.clone(),
                _ => Arc::new(Cluster::new(c.clone(), endpoints, credentials)),
            };
            clusters.insert(c.name.clone(), cluster);
        }
        let mut chains = HashMap::new();
        for (i, chain) in config.filter_chains.iter().enumerate() {
            let loaded =
                FilterChain::load(host, config, chain, &format!("filter_chains[{i}]")).await?;
            chains.insert(chain.name.clone(), Arc::new(loaded));
        }
        let routes = config
            .routes
            .iter()
            .map(|route| {
                Arc::new(Route {
                    cluster: clusters[&route.cluster].clone(),
                    chain: route.filter_chain.as_ref().map(|name| chains[name].clone()),
                    config: route.clone(),
                })
            })
            .collect();
        Ok(Self {
            number,
            routes,
            clusters,
            max_request_body_bytes: config.server.requests.max_request_body_bytes,
            access_log: config.logging.access_log,
            max_request_headers: config.server.requests.max_request_headers,
            max_request_header_bytes: config.server.requests.max_request_header_bytes,
            paths: config.server.requests.paths.clone(),
            reserved_headers: config.server.requests.reserved_headers.clone(),
            trusted_proxies: config.server.requests.trusted_proxies.clone(),
            signing_keys,
        })
    }

    /// The first route matching the request, which arrived on `listener`.
    pub fn route_for(&self, request: &RequestHeader, listener: &str) -> Option<&Arc<Route>> {
        let host_header = request
            .uri
            .host()
            .or_else(|| {
                request
                    .headers
                    .get(http::header::HOST)
                    .and_then(|v| v.to_str().ok())
            })
            .unwrap_or("");
        let host = strip_port(host_header);
        let header = |name: &str| request.headers.get(name).and_then(|v| v.to_str().ok());
        let facts = RequestFacts {
            listener,
            method: request.method.as_str(),
            path: request.uri.path(),
            host,
            header: &header,
        };
        self.routes
            .iter()
            .find(|r| r.config.matcher.matches(&facts))
    }

    /// The key that signs identity headers sent to `cluster`, if it has one.
    pub fn signing_key(&self, cluster: &str) -> Option<&SigningKey> {
        self.signing_keys.get(cluster)
    }

    /// The routes, in matching order.
    pub fn routes(&self) -> impl Iterator<Item = &Arc<Route>> {
        self.routes.iter()
    }

    /// All clusters.
    pub fn clusters(&self) -> impl Iterator<Item = &Arc<Cluster>> {
        self.clusters.values()
    }
}

/// What lives as long as the process: the wasm host (engine, compiled modules, shared data),
/// metrics, and the generation serving new requests.
pub struct GatewayState {
    /// The proxy's metrics.
    pub metrics: Arc<GatewayMetrics>,
    /// The wasm host running the filters.
    pub host: Host,
    /// Where the filters' shared data lives.
    pub shared_data: SharedData,
    callouts: Arc<ClusterCallouts>,
    current: ArcSwap<Generation>,
    installed: watch::Sender<u64>,
}

impl GatewayState {
    /// Starts the wasm host and loads `config` as generation 1, looking endpoint names up or not.
    pub async fn build(config: &Config, lookup: NameLookup) -> Result<Self, ConfigError> {
        let shared_data = SharedData::from_config(&config.shared_data, &config.base_dir)?;
        let callouts = Arc::new(ClusterCallouts::default());
        let host = Host::new(HostOptions {
            cache_dir: config
                .server
                .process
                .module_cache_dir
                .as_ref()
                .map(|dir| config.resolve(dir)),
            callouts: callouts.clone(),
            shared_data: shared_data.backend(),
        })
        .map_err(|e| ConfigError {
            field: "server".into(),
            message: format!("cannot start the wasm engine: {e}"),
        })?;
        let first = Generation::build(&host, config, 1, &HashMap::new(), lookup).await?;
        callouts.set_clusters(first.clusters.clone());
        let metrics = Arc::new(GatewayMetrics::new());
        metrics.config_generation(first.number);
        Ok(Self {
            metrics,
            host,
            shared_data,
            callouts,
            current: ArcSwap::from_pointee(first),
            installed: watch::Sender::new(1),
        })
    }

    /// The generation serving new requests.
    pub fn current(&self) -> Arc<Generation> {
        self.current.load_full()
    }

    /// Loads `config` as the next generation without serving it yet; an error leaves nothing
    /// changed.
    pub async fn prepare(&self, config: &Config) -> Result<Generation, ConfigError> {
        let current = self.current();
        let (next, lookup) = (current.number + 1, NameLookup::Resolve);
        Generation::build(&self.host, config, next, &current.clusters, lookup).await
    }

    /// Serves `generation` to new requests; requests already running keep theirs.
    pub fn install(&self, generation: Generation) {
        let number = generation.number;
        self.metrics.config_generation(number);
        self.callouts.set_clusters(generation.clusters.clone());
        self.current.store(Arc::new(generation));
        self.installed.send_replace(number);
    }

    /// Notified with the generation's number each time one is installed.
    pub fn installs(&self) -> watch::Receiver<u64> {
        self.installed.subscribe()
    }
}

/// `example.com:8080` → `example.com`; `[::1]:8080` → `[::1]`.
fn strip_port(host: &str) -> &str {
    match host.rfind(':') {
        Some(i) if !host[i..].contains(']') => &host[..i],
        _ => host,
    }
}

#[cfg(test)]
mod tests {
    use super::strip_port;

    #[test]
    fn ports_are_stripped_from_hosts() {
        assert_eq!(strip_port("example.com:8080"), "example.com");
        assert_eq!(strip_port("example.com"), "example.com");
        assert_eq!(strip_port("[::1]:80"), "[::1]");
        assert_eq!(strip_port("[::1]"), "[::1]");
    }
}
