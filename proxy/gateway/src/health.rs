//! Active HTTP health checks: `GET path` on every endpoint of a checked cluster at its interval.
//! An endpoint leaves the rotation after `unhealthy_threshold` failures in a row and returns after
//! `healthy_threshold` successes.

use crate::cluster::{Cluster, Endpoint};
use crate::metrics::GatewayMetrics;
use async_trait::async_trait;
use pingora::http::RequestHeader;
use pingora::lb::health_check::{HealthCheck, HttpHealthCheck};
use pingora::lb::Backend;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use std::sync::Arc;

/// Runs the checks of every cluster that has a `health_check`.
pub struct HealthChecker {
    clusters: Vec<Arc<Cluster>>,
    metrics: Arc<GatewayMetrics>,
}

impl HealthChecker {
    /// Checks these clusters, reporting to `metrics`.
    pub fn new(clusters: Vec<Arc<Cluster>>, metrics: Arc<GatewayMetrics>) -> Self {
        for cluster in &clusters {
            for endpoint in &cluster.endpoints {
                metrics.set_upstream_health(
                    &cluster.config.name,
                    &endpoint.address.to_string(),
                    true,
                );
            }
        }
        Self { clusters, metrics }
    }
}

#[async_trait]
impl BackgroundService for HealthChecker {
    async fn start(&self, shutdown: ShutdownWatch) {
        let tasks = self.clusters.iter().filter_map(|cluster| {
            cluster.config.health_check.as_ref()?;
            let cluster = cluster.clone();
            let metrics = self.metrics.clone();
            let mut shutdown = shutdown.clone();
            Some(tokio::spawn(async move {
                tokio::select! {
                    _ = check_cluster(&cluster, &metrics) => {}
                    _ = shutdown.changed() => {}
                }
            }))
        });
        for task in tasks.collect::<Vec<_>>() {
            let _ = task.await;
        }
    }
}

async fn check_cluster(cluster: &Cluster, metrics: &GatewayMetrics) {
    let config = cluster
        .config
        .health_check
        .as_ref()
        .expect("only checked clusters are started");
    let checks: Vec<(Arc<Endpoint>, HttpHealthCheck, Backend)> = cluster
        .endpoints
        .iter()
        .map(|endpoint| {
            let mut check = HttpHealthCheck::new(&endpoint.address.to_string(), false);
            check.peer_template = cluster.peer(endpoint, Some(config.timeout));
            check.peer_template.options.connection_timeout = Some(config.timeout);
            check.peer_template.options.total_connection_timeout = Some(config.timeout);
            let mut request =
                RequestHeader::build("GET", config.path.as_bytes(), None).expect("valid request");
            let host = endpoint.address.to_string();
            request
                .insert_header("host", host.as_str())
                .expect("valid header");
            request
                .insert_header("user-agent", "gateway-health-check")
                .expect("valid header");
            check.req = request;
            check.validator = Some(Box::new(|response| {
                if response.status.is_success() {
                    Ok(())
                } else {
                    pingora::Error::e_explain(
                        pingora::ErrorType::CustomCode(
                            "unhealthy status",
                            response.status.as_u16(),
                        ),
                        "during health check",
                    )
                }
            }));
            let backend = Backend::new(&host).expect("a socket address is a valid backend");
            (endpoint.clone(), check, backend)
        })
        .collect();
    let mut streaks = vec![Streak::default(); checks.len()];
    let mut interval = tokio::time::interval(config.interval);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        let results =
            futures::future::join_all(checks.iter().map(|(_, check, backend)| async move {
                tokio::time::timeout(config.timeout, check.check(backend))
                    .await
                    .map_err(|_| "timed out".to_string())
                    .and_then(|r| r.map_err(|e| e.to_string()))
            }))
            .await;
        for (((endpoint, _, _), result), streak) in checks.iter().zip(results).zip(&mut streaks) {
            let ok = result.is_ok();
            let threshold = if ok {
                config.healthy_threshold
            } else {
                config.unhealthy_threshold
            };
            if streak.observe(ok) < threshold || endpoint.is_healthy() == ok {
                continue;
            }
            endpoint.set_healthy(ok);
            let address = endpoint.address.to_string();
            metrics.set_upstream_health(&cluster.config.name, &address, ok);
            match result {
                Ok(()) => tracing::info!(
                    cluster = cluster.config.name,
                    endpoint = address,
                    "endpoint is healthy again"
                ),
                Err(reason) => tracing::warn!(
                    cluster = cluster.config.name,
                    endpoint = address,
                    reason,
                    "endpoint failed its health checks and leaves the rotation"
                ),
            }
        }
    }
}

/// Consecutive results of one kind.
#[derive(Debug, Clone, Copy, Default)]
struct Streak {
    ok: bool,
    count: u32,
}

impl Streak {
    /// Adds a result; returns how many in a row had this outcome.
    fn observe(&mut self, ok: bool) -> u32 {
        if self.ok == ok {
            self.count = self.count.saturating_add(1);
        } else {
            *self = Self { ok, count: 1 };
        }
        self.count
    }
}
