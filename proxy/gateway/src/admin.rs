//! The admin listener: `/healthz` (the process is up), `/readyz` (it takes traffic: the admin
//! listener opens once the filters are loaded and closes when shutdown starts; the body lists
//! healthy endpoints per cluster), `/config` (which
//! configuration generation serves, and how the last reload went) and `/metrics` (Prometheus text).

use crate::reload::Reloader;
use crate::runtime::Runtime;
use async_trait::async_trait;
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use std::sync::Arc;

/// The admin endpoints.
pub struct AdminApp {
    runtime: Arc<Runtime>,
    reloader: Arc<Reloader>,
}

impl AdminApp {
    /// Serves `runtime`'s state and `reloader`'s history.
    pub fn new(runtime: Arc<Runtime>, reloader: Arc<Reloader>) -> Self {
        Self { runtime, reloader }
    }

    fn config(&self) -> serde_json::Value {
        serde_json::json!({
            "path": self.reloader.path().display().to_string(),
            "generation": self.runtime.current().number,
            "last_reload": self.reloader.last_report(),
        })
    }

    fn readiness(&self) -> serde_json::Value {
        let mut clusters = serde_json::Map::new();
        for cluster in self.runtime.current().clusters() {
            let healthy = cluster.endpoints.iter().filter(|e| e.is_healthy()).count();
            clusters.insert(
                cluster.config.name.clone(),
                serde_json::json!({"healthy": healthy, "endpoints": cluster.endpoints.len()}),
            );
        }
        // One failing backend must not take the whole gateway out of its load balancer, so
        // upstream health is reported but does not decide readiness (as with Envoy's /ready).
        serde_json::json!({"status": "ready", "clusters": clusters})
    }
}

#[async_trait]
impl ServeHttp for AdminApp {
    async fn response(&self, session: &mut ServerSession) -> http::Response<Vec<u8>> {
        let path = session.req_header().uri.path().to_string();
        let (status, content_type, body) = match path.as_str() {
            "/healthz" => (200, "application/json", br#"{"status":"ok"}"#.to_vec()),
            "/readyz" => (
                200,
                "application/json",
                self.readiness().to_string().into_bytes(),
            ),
            "/config" => (
                200,
                "application/json",
                self.config().to_string().into_bytes(),
            ),
            "/metrics" => {
                let mut text = self.runtime.metrics.render();
                text.push_str(&self.runtime.host.metrics().render_prometheus());
                text.push_str(&self.runtime.shared_data.render_prometheus());
                (200, "text/plain; version=0.0.4", text.into_bytes())
            }
            _ => (
                404,
                "application/json",
                filter_common::error_body(404, "not_found", "unknown admin endpoint", None),
            ),
        };
        http::Response::builder()
            .status(status)
            .header("content-type", content_type)
            .header("content-length", body.len())
            .body(body)
            .expect("a valid response")
    }
}
