//! Active HTTP health checks: `GET path` on every endpoint of a checked cluster at its interval.
//! An endpoint leaves the rotation after `unhealthy_threshold` failures in a row and returns after
//! `healthy_threshold` successes.

use crate::cluster::{Cluster, Endpoint};
use crate::metrics::GatewayMetrics;
use crate::state::GatewayState;
use async_trait::async_trait;
use pingora::http::RequestHeader;
use pingora::lb::health_check::{HealthCheck, HttpHealthCheck};
use pingora::lb::Backend;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use std::sync::Arc;

/// Runs the checks of every cluster that has a `health_check`, in the generation serving new
/// requests: after a reload the checks restart on the new generation's clusters (an unchanged
/// cluster is the same object, so its endpoints keep their health).
pub struct HealthChecker {
    state: Arc<GatewayState>,
}

impl HealthChecker {
    /// Checks `state`'s clusters.
    pub fn new(state: Arc<GatewayState>) -> Self {
        Self { state }
    }
}

#[async_trait]
impl BackgroundService for HealthChecker {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut installs = self.state.installs();
        loop {
            let metrics = &self.state.metrics;
            let generation = self.state.current();
            let checked = generation
                .clusters()
                .filter(|cluster| cluster.config.health_check.is_some());
            // The checks run until the next install; with none to run, that is all this waits for.
            let checks = futures::future::join_all(checked.map(|cluster| {
                for endpoint in &cluster.endpoints {
                    let address = endpoint.address.to_string();
                    metrics.set_upstream_health(
                        &cluster.config.name,
                        &address,
                        endpoint.is_healthy(),
                    );
                }
                check_cluster(cluster, metrics)
            }));
            let checks = async {
                checks.await;
                std::future::pending::<()>().await
            };
            tokio::select! {
                () = checks => {}
                _ = shutdown.changed() => return,
                changed = installs.changed() => {
                    if changed.is_err() {
                        return;
                    }
                }
            }
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
            check.peer_template = cluster.peer(endpoint, Some(config.timeout.get()));
            check.peer_template.options.connection_timeout = Some(config.timeout.get());
            check.peer_template.options.total_connection_timeout = Some(config.timeout.get());
            let mut request = RequestHeader::build("GET", config.path.as_str().as_bytes(), None)
                .expect("valid request");
            let host = match &endpoint.name {
                Some(name) => format!("{name}:{}", endpoint.address.port()),
                None => endpoint.address.to_string(),
            };
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
    let mut interval = tokio::time::interval(config.interval.get());
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        let results =
            futures::future::join_all(checks.iter().map(|(_, check, backend)| async move {
                tokio::time::timeout(config.timeout.get(), check.check(backend))
                    .await
                    .map_err(|_| "timed out".to_string())
                    .and_then(|r| r.map_err(|e| e.to_string()))
            }))
            .await;
        for (((endpoint, _, _), result), streak) in checks.iter().zip(results).zip(&mut streaks) {
            let ok = result.is_ok();
            let threshold = if ok {
                config.healthy_threshold.get()
            } else {
                config.unhealthy_threshold.get()
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
