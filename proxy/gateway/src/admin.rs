//! The admin listener: `/` (an HTML status page, see `status_page`), `/healthz` (the process is
//! up), `/readyz` (it takes traffic: the admin listener opens once the filters are loaded and
//! closes when shutdown starts; the body lists healthy endpoints per cluster), `/config` (which
//! configuration generation serves, and how the last reload went) and `/metrics` (Prometheus text).
//! With a bearer token configured, everything but the probes needs it.

use crate::reload::Reloader;
use crate::state::GatewayState;
use async_trait::async_trait;
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use sha2::{Digest, Sha256};
use std::sync::Arc;

/// The admin endpoints.
pub struct AdminApp {
    state: Arc<GatewayState>,
    reloader: Arc<Reloader>,
    /// SHA-256 of the bearer token `/config` and `/metrics` require, if any.
    token_digest: Option<[u8; 32]>,
}

impl AdminApp {
    /// Serves `state`'s state and `reloader`'s history; with `token`, `/config` and `/metrics`
    /// need it as a bearer token.
    pub fn new(state: Arc<GatewayState>, reloader: Arc<Reloader>, token: Option<String>) -> Self {
        Self {
            state,
            reloader,
            token_digest: token.map(|t| Sha256::digest(t.as_bytes()).into()),
        }
    }

    /// Whether the request may read `/`, `/config` and `/metrics`. Digests are compared, so the time
    /// taken says nothing about the token.
    fn authorized(&self, session: &ServerSession) -> bool {
        let Some(expected) = &self.token_digest else {
            return true;
        };
        let presented = session
            .req_header()
            .headers
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        digest == *expected
    }

    fn config(&self) -> serde_json::Value {
        serde_json::json!({
            "path": self.reloader.path().display().to_string(),
            "generation": self.state.current().number,
            "last_reload": self.reloader.last_report(),
        })
    }

    fn readiness(&self) -> serde_json::Value {
        let mut clusters = serde_json::Map::new();
        for cluster in self.state.current().clusters() {
            let healthy = cluster.healthy_endpoints();
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
        let open = matches!(path.as_str(), "/healthz" | "/readyz");
        let (status, content_type, body) = match path.as_str() {
            _ if !open && !self.authorized(session) => (
                401,
                "application/json",
                gateway_contract::error_body(
                    401,
                    "unauthorized",
                    "the admin API needs its bearer token",
                    None,
                ),
            ),
            "/" => (
                200,
                "text/html; charset=utf-8",
                crate::status_page::render(&self.state, &self.reloader).into_bytes(),
            ),
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
                let mut text = self.state.metrics.render();
                text.push_str(&self.state.host.metrics().render_prometheus());
                text.push_str(&self.state.shared_data.render_prometheus());
                (200, "text/plain; version=0.0.4", text.into_bytes())
            }
            _ => (
                404,
                "application/json",
                gateway_contract::error_body(404, "not_found", "unknown admin endpoint", None),
            ),
        };
        let mut response = http::Response::builder()
            .status(status)
            .header("content-type", content_type)
            .header("content-length", body.len());
        if status == 401 {
            response = response.header("www-authenticate", "Bearer realm=\"gateway-admin\"");
        }
        response.body(body).expect("a valid response")
    }
}
