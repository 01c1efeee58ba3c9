//! Callouts from filters to the proxy's clusters, over Pingora's connector with the cluster's
//! protocol, TLS, timeouts and endpoint selection: `proxy_http_call` (e.g. an auth filter fetching
//! a JWKS) here, gRPC calls in [`grpc_callouts`](crate::grpc_callouts).

use crate::cluster::Cluster;
use crate::config::UpstreamProtocol;
use crate::grpc_callouts;
use arc_swap::ArcSwap;
use bytes::Bytes;
use pingora::connectors::http::Connector;
use pingora::http::RequestHeader;
use proxy_wasm_host::shared_data::BoxFuture;
use proxy_wasm_host::{
    CalloutDispatcher, CalloutRequest, CalloutResponse, GrpcCallout, GrpcChannels, Headers,
};
use std::collections::HashMap;
use std::sync::Arc;

/// Largest callout response body kept; a bigger one fails the call rather than filling memory.
const MAX_RESPONSE_BYTES: usize = 4 << 20;

/// Sends filters' callouts to the clusters of the configuration serving new requests.
pub struct ClusterCallouts {
    clusters: ArcSwap<HashMap<String, Arc<Cluster>>>,
    connector: Arc<Connector>,
}

impl Default for ClusterCallouts {
    fn default() -> Self {
        Self {
            clusters: ArcSwap::default(),
            connector: Arc::new(Connector::new(None)),
        }
    }
}

impl ClusterCallouts {
    /// From now on, callouts may go to any of these clusters (and no others).
    pub fn set_clusters(&self, clusters: HashMap<String, Arc<Cluster>>) {
        self.clusters.store(Arc::new(clusters));
    }
}

impl CalloutDispatcher for ClusterCallouts {
    fn has_cluster(&self, cluster: &str) -> bool {
        self.clusters.load().contains_key(cluster)
    }

    fn call(
        &self,
        cluster: &str,
        request: CalloutRequest,
    ) -> BoxFuture<'static, Option<CalloutResponse>> {
        let cluster = self.clusters.load().get(cluster).cloned();
        let connector = self.connector.clone();
        Box::pin(async move {
            let cluster = cluster?;
            let timeout = request.timeout;
            match tokio::time::timeout(timeout, exchange(&connector, &cluster, request)).await {
                Ok(Ok(response)) => Some(response),
                Ok(Err(error)) => {
                    tracing::warn!(cluster = cluster.config.name, %error, "filter callout failed");
                    None
                }
                Err(_) => {
                    tracing::warn!(
                        cluster = cluster.config.name,
                        ?timeout,
                        "filter callout timed out"
                    );
                    None
                }
            }
        })
    }

    fn has_grpc_cluster(&self, cluster: &str) -> bool {
        self.clusters
            .load()
            .get(cluster)
            .is_some_and(|c| c.config.protocol == UpstreamProtocol::Http2)
    }

    fn grpc_call(
        &self,
        cluster: &str,
        call: GrpcCallout,
        channels: GrpcChannels,
    ) -> BoxFuture<'static, ()> {
        let cluster = self.clusters.load().get(cluster).cloned();
        let connector = self.connector.clone();
        Box::pin(async move {
            match cluster {
                Some(cluster) => grpc_callouts::run(&connector, &cluster, call, channels).await,
                // Removed by a reload since the filter asked: as if it had no endpoint.
                None => {
                    let status = proxy_wasm_host::GrpcStatus::new(
                        proxy_wasm_host::GrpcStatus::UNAVAILABLE,
                        "the cluster is gone",
                    );
                    let _ = channels
                        .events
                        .send(proxy_wasm_host::GrpcEvent::Close(status))
                        .await;
                }
            }
        })
    }
}

async fn exchange(
    connector: &Connector,
    cluster: &Cluster,
    request: CalloutRequest,
) -> pingora::Result<CalloutResponse> {
    let endpoint = cluster.select(None, None).ok_or_else(|| {
        pingora::Error::explain(pingora::ErrorType::ConnectNoRoute, "no healthy endpoint")
    })?;
    let peer = cluster.peer(&endpoint, Some(request.timeout));
    let header = request_header(&request.headers, request.body.len())?;
    let (mut session, _reused) = connector.get_http_session(&peer).await?;
    session.write_request_header(Box::new(header)).await?;
    if !request.body.is_empty() {
        session
            .write_request_body(Bytes::from(request.body), true)
            .await?;
    }
    session.finish_request_body().await?;
    session.read_response_header().await?;
    let head = session.response_header().expect("read above");
    let status = head.status.as_u16().to_string();
    let mut headers = Headers::from_pairs([(":status", status.as_bytes())]);
    for (name, value) in &head.headers {
        headers.add(name.as_str(), value.as_bytes());
    }
    let mut body = Vec::new();
    while let Some(chunk) = session.read_response_body().await? {
        body.extend_from_slice(&chunk);
        if body.len() > MAX_RESPONSE_BYTES {
            return pingora::Error::e_explain(
                pingora::ErrorType::InvalidHTTPHeader,
                "callout response body is too large",
            );
        }
    }
    connector
        .release_http_session(session, &peer, Some(cluster.config.timeouts.idle))
        .await;
    Ok(CalloutResponse {
        headers,
        body,
        trailers: Headers::new(),
    })
}

/// The request head from the filter's headers (`:method`, `:path`, `:authority` and the rest).
/// The callout's request head. The body's framing is the proxy's, as in Envoy: a filter's own
/// `content-length` or `transfer-encoding` could disagree with the body it passed and desynchronise
/// a pooled connection, so they are replaced by the body's length.
fn request_header(headers: &Headers, body_len: usize) -> pingora::Result<RequestHeader> {
    let method = headers.get_str(":method").unwrap_or_else(|| "GET".into());
    let path = headers.get_str(":path").unwrap_or_else(|| "/".into());
    let mut header = RequestHeader::build(method.as_str(), path.as_bytes(), None)?;
    for (name, value) in headers.iter() {
        match name {
            ":authority" => {
                header.insert_header(http::header::HOST, value.to_vec())?;
            }
            _ if name.starts_with(':') => {}
            _ if name.eq_ignore_ascii_case("content-length")
                || name.eq_ignore_ascii_case("transfer-encoding") => {}
            _ => {
                header.append_header(name.to_string(), value.to_vec())?;
            }
        }
    }
    if body_len > 0 {
        header.insert_header(http::header::CONTENT_LENGTH, body_len.to_string())?;
    }
    Ok(header)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_callout_body_is_framed_by_its_length_whatever_the_filter_says() {
        let headers = Headers::from_pairs([
            (":method", "POST"),
            (":path", "/lookup"),
            (":authority", "index"),
            ("content-length", "999"),
            ("transfer-encoding", "chunked"),
            ("x-request-id", "r1"),
        ]);
        let head = request_header(&headers, 42).unwrap();
        assert_eq!(head.headers.get("content-length").unwrap(), "42");
        assert!(head.headers.get("transfer-encoding").is_none());
        assert_eq!(head.headers.get("host").unwrap(), "index");
        assert_eq!(head.headers.get("x-request-id").unwrap(), "r1");
        let get = request_header(&Headers::from_pairs([(":method", "GET")]), 0).unwrap();
        assert!(get.headers.get("content-length").is_none());
    }
}
