//! The configuration turned into what the request path uses: compiled routes, clusters and
//! loaded filter chains, plus the wasm host and metrics they share.

use crate::callouts::ClusterCallouts;
use crate::cluster::Cluster;
use crate::config::{Config, ConfigError, RouteConfig};
use crate::filter_chain::FilterChain;
use crate::metrics::GatewayMetrics;
use crate::routing::{RequestFacts, RouteMatcher};
use crate::shared_data::SharedData;
use pingora::http::RequestHeader;
use proxy_wasm_host::{Host, HostOptions};
use std::collections::HashMap;
use std::sync::Arc;

/// A route ready for matching.
pub struct Route {
    /// Its configuration.
    pub config: RouteConfig,
    matcher: RouteMatcher,
    /// Its filters, if any.
    pub chain: Option<Arc<FilterChain>>,
}

/// Everything the request path needs.
pub struct Runtime {
    routes: Vec<Arc<Route>>,
    clusters: HashMap<String, Arc<Cluster>>,
    /// The proxy's metrics.
    pub metrics: Arc<GatewayMetrics>,
    /// The wasm host running the filters.
    pub host: Host,
    /// Where the filters' shared data lives.
    pub shared_data: SharedData,
    /// `server.max_request_body_bytes`.
    pub max_request_body_bytes: u64,
    /// Whether to write access-log lines.
    pub access_log: bool,
}

impl Runtime {
    /// Builds the runtime: starts the wasm host and loads every filter chain (compiling modules
    /// and checking that each filter accepts its configuration).
    pub async fn build(config: &Config) -> Result<Self, ConfigError> {
        let clusters: HashMap<String, Arc<Cluster>> = config
            .clusters
            .iter()
            .map(|c| (c.name.clone(), Arc::new(Cluster::new(c.clone()))))
            .collect();
        let shared_data = SharedData::from_config(&config.shared_data)?;
        let host = Host::new(HostOptions {
            cache_dir: config
                .server
                .module_cache_dir
                .as_ref()
                .map(|dir| config.resolve(dir)),
            callouts: Arc::new(ClusterCallouts::new(clusters.clone())),
            shared_data: shared_data.backend(),
        })
        .map_err(|e| ConfigError {
            field: "server".into(),
            message: format!("cannot start the wasm engine: {e}"),
        })?;
        let mut chains = HashMap::new();
        for (i, chain) in config.filter_chains.iter().enumerate() {
            let loaded =
                FilterChain::load(&host, config, chain, &format!("filter_chains[{i}]")).await?;
            chains.insert(chain.name.clone(), Arc::new(loaded));
        }
        let routes = config
            .routes
            .iter()
            .enumerate()
            .map(|(i, route)| {
                Ok(Arc::new(Route {
                    matcher: RouteMatcher::compile(&route.matcher, &format!("routes[{i}].match"))?,
                    chain: route.filter_chain.as_ref().map(|name| chains[name].clone()),
                    config: route.clone(),
                }))
            })
            .collect::<Result<_, ConfigError>>()?;
        Ok(Self {
            routes,
            clusters,
            metrics: Arc::new(GatewayMetrics::new()),
            host,
            shared_data,
            max_request_body_bytes: config.server.max_request_body_bytes,
            access_log: config.logging.access_log,
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
        self.routes.iter().find(|r| r.matcher.matches(&facts))
    }

    /// A cluster by name (routes are checked to name existing clusters).
    pub fn cluster(&self, name: &str) -> Arc<Cluster> {
        self.clusters[name].clone()
    }

    /// All clusters.
    pub fn clusters(&self) -> impl Iterator<Item = &Arc<Cluster>> {
        self.clusters.values()
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
