//! Active health checks: `GET path`, or gRPC's `grpc.health.v1.Health/Check`, on every endpoint
//! of a checked cluster at its interval. An endpoint leaves the rotation after
//! `unhealthy_threshold` failures in a row and returns after `healthy_threshold` successes.

use crate::cluster::{Cluster, Endpoint};
use crate::config::HealthProbe;
use crate::grpc;
use crate::metrics::GatewayMetrics;
use crate::state::GatewayState;
use async_trait::async_trait;
use bytes::Bytes;
use pingora::connectors::http::Connector;
use pingora::http::RequestHeader;
use pingora::lb::health_check::{HealthCheck, HttpHealthCheck};
use pingora::lb::Backend;
use pingora::protocols::http::client::HttpSession;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use pingora::upstreams::peer::HttpPeer;
use pingora::{Error, ErrorType};
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
    let probe = config
        .probe()
        .expect("the configuration names path or grpc");
    let checks: Vec<(Arc<Endpoint>, Box<dyn HealthCheck + Send + Sync>, Backend)> = cluster
        .endpoints
        .iter()
        .map(|endpoint| {
            let mut peer = cluster.peer(endpoint, Some(config.timeout.get()));
            peer.options.connection_timeout = Some(config.timeout.get());
            peer.options.total_connection_timeout = Some(config.timeout.get());
            let host = match &endpoint.name {
                Some(name) => format!("{name}:{}", endpoint.address.port()),
                None => endpoint.address.to_string(),
            };
            let check: Box<dyn HealthCheck + Send + Sync> = match probe {
                HealthProbe::Http(path) => Box::new(http_check(peer, path.as_str(), &host)),
                HealthProbe::Grpc(service) => Box::new(GrpcHealthCheck::new(peer, service, &host)),
            };
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

fn http_check(peer: HttpPeer, path: &str, host: &str) -> HttpHealthCheck {
    let mut check = HttpHealthCheck::new(host, false);
    check.peer_template = peer;
    let mut request = RequestHeader::build("GET", path.as_bytes(), None).expect("valid request");
    request.insert_header("host", host).expect("valid header");
    request
        .insert_header("user-agent", USER_AGENT)
        .expect("valid header");
    check.req = request;
    check.validator = Some(Box::new(|response| {
        if response.status.is_success() {
            Ok(())
        } else {
            Error::e_explain(
                ErrorType::CustomCode("unhealthy status", response.status.as_u16()),
                "during health check",
            )
        }
    }));
    check
}

const USER_AGENT: &str = "gateway-health-check";

/// Largest health check answer read; a health response is a few bytes.
const MAX_GRPC_RESPONSE_BYTES: usize = 1024;

/// `grpc.health.v1.Health/Check` for one service on one endpoint, over HTTP/2.
struct GrpcHealthCheck {
    peer: HttpPeer,
    request: RequestHeader,
    body: Bytes,
    connector: Connector,
}

impl GrpcHealthCheck {
    fn new(peer: HttpPeer, service: &str, host: &str) -> Self {
        let body = grpc::health_check_request(service);
        let mut request = RequestHeader::build("POST", grpc::HEALTH_CHECK_PATH.as_bytes(), None)
            .expect("valid request");
        for (name, value) in [
            ("host", host),
            ("content-type", grpc::CONTENT_TYPE),
            ("te", "trailers"),
            ("user-agent", USER_AGENT),
        ] {
            request.insert_header(name, value).expect("valid header");
        }
        Self {
            peer,
            request,
            body: Bytes::from(body),
            connector: Connector::new(None),
        }
    }

    async fn ask(&self) -> pingora::Result<()> {
        let (mut session, _) = self.connector.get_http_session(&self.peer).await?;
        session
            .write_request_header(Box::new(self.request.clone()))
            .await?;
        session.write_request_body(self.body.clone(), true).await?;
        session.finish_request_body().await?;
        session.read_response_header().await?;
        let head = session.response_header().expect("read above");
        let status = head.status.as_u16();
        // A refusal comes trailers-only: its grpc-status is among the headers.
        let mut grpc_status = head.headers.get("grpc-status").cloned();
        let mut body = Vec::new();
        while let Some(chunk) = session.read_response_body().await? {
            body.extend_from_slice(&chunk);
            if body.len() > MAX_GRPC_RESPONSE_BYTES {
                return unhealthy("the health check answer is too large");
            }
        }
        if grpc_status.is_none() {
            if let HttpSession::H2(h2) = &mut session {
                grpc_status = h2
                    .read_trailers()
                    .await?
                    .and_then(|trailers| trailers.get("grpc-status").cloned());
            }
        }
        self.connector
            .release_http_session(session, &self.peer, None)
            .await;
        if status != 200 {
            return unhealthy(&format!("HTTP status {status}"));
        }
        match grpc_status.as_ref().map(|value| value.as_bytes()) {
            Some(b"0") if grpc::is_serving(&body) => Ok(()),
            Some(b"0") => unhealthy("the service is not SERVING"),
            Some(code) => unhealthy(&format!("grpc-status {}", String::from_utf8_lossy(code))),
            None => unhealthy("the answer has no grpc-status"),
        }
    }
}

fn unhealthy(why: &str) -> pingora::Result<()> {
    Error::e_explain(
        ErrorType::CustomCode("unhealthy gRPC answer", 0),
        why.to_string(),
    )
}

#[async_trait]
impl HealthCheck for GrpcHealthCheck {
    async fn check(&self, _target: &Backend) -> pingora::Result<()> {
        self.ask().await
    }

    fn health_threshold(&self, _success: bool) -> usize {
        // The checker counts streaks itself (`Streak`).
        1
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
