//! The request path: Pingora's phases mapped onto routing, the filter chain and the upstream.

use crate::client_headers;
use crate::cluster::InFlight;
use crate::config::UpstreamErrors;
use crate::filter_chain::{ChainRun, ChainVerdict};
use crate::forwarding;
use crate::grpc;
use crate::header_maps;
use crate::lifecycle::Lifecycle;
use crate::offload;
use crate::path_normalization::PathRejection;
use crate::request_context::{retry_budget_allows, within_retry_limits, Answered, RequestContext};
use crate::responses::{self, ProxyError};
use crate::state::{GatewayState, Generation};
use async_trait::async_trait;
use bytes::Bytes;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::upstreams::peer::{HttpPeer, Peer};
use pingora::{Error, ErrorSource, ErrorType};
use proxy_wasm_host::{LocalResponse, StreamInfo};
use request_tracing::{KeyValue, RequestTrace, TraceExport};
use std::borrow::Cow;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How far past the body limit a declared body is still read (and dropped) before the 413.
const DRAIN_LIMIT: u64 = 1 << 20;
/// Largest request body read through the filters before the upstream is connected: Pingora's
/// retry buffer, from which each attempt's body is replayed.
const BODY_READ_FIRST_LIMIT: usize = 64 * 1024;

/// The proxy logic for one listener.
pub struct Gateway {
    state: Arc<GatewayState>,
    listener: String,
    tls: bool,
    lifecycle: Arc<Lifecycle>,
    trace_export: Arc<TraceExport>,
}

impl Gateway {
    /// The logic for listener `listener` (`tls` decides `X-Forwarded-Proto`); while `lifecycle`
    /// is handing over to a new process, responses close their connection; `trace_export` says
    /// whether requests' spans are exported.
    pub fn new(
        state: Arc<GatewayState>,
        listener: &str,
        tls: bool,
        lifecycle: Arc<Lifecycle>,
        trace_export: Arc<TraceExport>,
    ) -> Self {
        Self {
            state,
            listener: listener.to_string(),
            tls,
            lifecycle,
            trace_export,
        }
    }
}

#[async_trait]
impl ProxyHttp for Gateway {
    type CTX = RequestContext;

    fn new_ctx(&self) -> RequestContext {
        RequestContext::new(self.state.current())
    }

    async fn request_filter(
        &self,
        session: &mut Session,
        ctx: &mut RequestContext,
    ) -> pingora::Result<bool> {
        if self.lifecycle.is_handing_over() {
            session.set_keepalive(None);
        }
        let generation = ctx.generation.clone();
        // Before anything reads the request: the gateway's own headers come only from the
        // gateway, and routes, filters and the upstream see one normalised path.
        generation.reserved_headers.strip(session.req_header_mut());
        self.add_forwarding_headers(session, ctx)?;
        let request = session.req_header();
        let header_bytes: usize = request
            .headers
            .iter()
            .map(|(name, value)| name.as_str().len() + value.len())
            .sum();
        if request.headers.len() > generation.max_request_headers
            || header_bytes > generation.max_request_header_bytes
        {
            session.set_keepalive(None);
            return self.refuse(session, ctx, ProxyError::HeadersTooLarge).await;
        }
        if !unambiguous_framing(session.req_header()) {
            // What follows the headers cannot be told apart from a next request: close after.
            session.set_keepalive(None);
            return self.refuse(session, ctx, ProxyError::BadRequest).await;
        }
        if let Err(rejection) = normalize_path(session, &generation) {
            return self
                .refuse(session, ctx, ProxyError::InvalidPath(rejection))
                .await;
        }

        let Some(route) = generation.route_for(session.req_header(), &self.listener) else {
            return self.refuse(session, ctx, ProxyError::NoRoute).await;
        };
        client_headers::strip_hop_by_hop(session.req_header_mut(), route.config.allow_upgrade);
        ctx.route = Some(route.clone());

        let declared_length = session
            .req_header()
            .headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if let Some(length) = declared_length.filter(|n| *n > generation.max_request_body_bytes) {
            // Reading a modest body first lets the client see the 413 instead of a reset while
            // it is still sending; a huge one is refused at once and the connection closed.
            if length
                <= generation
                    .max_request_body_bytes
                    .saturating_add(DRAIN_LIMIT)
            {
                let drain = session.drain_request_body();
                let _ = tokio::time::timeout(Duration::from_secs(1), drain).await;
            }
            return self.refuse(session, ctx, ProxyError::BodyTooLarge).await;
        }

        let Some(chain) = &route.chain else {
            return Ok(false);
        };
        let info = StreamInfo {
            source: session.client_addr().and_then(|a| a.as_inet()).copied(),
            destination: session.server_addr().and_then(|a| a.as_inet()).copied(),
            protocol: if session.is_http2() {
                "HTTP/2"
            } else {
                "HTTP/1.1"
            }
            .into(),
            route_name: Some(route.config.name.clone()),
            cluster_name: Some(route.cluster.config.name.clone()),
            peer_certificate: crate::peer_identity::verified_peer(session),
        };
        let mut headers = header_maps::request_to_filters(session.req_header(), self.tls);
        let end_of_stream = session.is_body_empty();
        ctx.request_ended_with_headers = end_of_stream;
        ctx.chain = Some(chain.start(info, &self.state.metrics));
        let Some((headers, verdict)) = self
            .run_filters(ctx, move |mut run| async move {
                let verdict = run.request_headers(&mut headers, end_of_stream).await;
                (run, (headers, verdict))
            })
            .await
        else {
            return Ok(false);
        };
        match verdict {
            ChainVerdict::Continue | ChainVerdict::Buffer => {
                header_maps::apply_to_request(session.req_header_mut(), &headers)?;
                Ok(false)
            }
            ChainVerdict::Respond(response) => {
                answer_locally(session, ctx, response).await?;
                Ok(true)
            }
            ChainVerdict::Reset => Err(reset(ctx)),
        }
    }

    async fn upstream_peer(
        &self,
        session: &mut Session,
        ctx: &mut RequestContext,
    ) -> pingora::Result<Box<HttpPeer>> {
        let route = ctx.chosen_route()?.clone();
        let cluster = &route.cluster;
        if ctx.attempts == 0 {
            cluster.record_request();
        } else {
            self.state.metrics.retry(&cluster.config.name);
        }
        ctx.attempts += 1;
        ctx.replay_expected = ctx.body_read_first.is_some();
        let hash_key = cluster.hash_key(session.req_header());
        let Some(endpoint) = cluster.select(hash_key, ctx.failed_endpoint) else {
            ctx.error = Some(ProxyError::NoHealthyUpstream);
            return Err(ProxyError::NoHealthyUpstream.into_pingora());
        };
        // A gRPC caller's deadline bounds the wait for the upstream too.
        let read_timeout = route.config.timeout.unwrap_or(cluster.config.timeouts.read);
        let read_timeout = grpc::deadline(session.req_header())
            .map_or(read_timeout, |deadline| deadline.min(read_timeout));
        let peer = cluster.peer(&endpoint, Some(read_timeout));
        ctx.in_flight = Some(InFlight::new(endpoint));
        ctx.upstream_started = Some(Instant::now());
        Ok(Box::new(peer))
    }

    async fn upstream_request_filter(
        &self,
        _session: &mut Session,
        upstream_request: &mut pingora::http::RequestHeader,
        ctx: &mut RequestContext,
    ) -> pingora::Result<()> {
        let cluster = &ctx.chosen_route()?.cluster;
        // Over the identity headers as they leave: set by the filters, clients' own removed.
        if let Some(key) = ctx.generation.signing_key(&cluster.config.name) {
            let signature = key.sign_headers(&upstream_request.headers);
            upstream_request.insert_header(gateway_contract::headers::SIGNATURE, signature)?;
        }
        Ok(())
    }

    fn fail_to_connect(
        &self,
        session: &mut Session,
        peer: &HttpPeer,
        ctx: &mut RequestContext,
        mut e: Box<Error>,
    ) -> Box<Error> {
        // Nothing was sent, so another endpoint may be tried for any method.
        ctx.failed_endpoint = peer.address().as_inet().copied();
        ctx.in_flight = None;
        e.set_retry(within_retry_limits(session, ctx) && retry_budget_allows(ctx));
        e
    }

    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        ctx: &mut RequestContext,
        client_reused: bool,
    ) -> Box<Error> {
        let mut e = e.more_context(format!("endpoint {}", peer.address()));
        ctx.failed_endpoint = peer.address().as_inet().copied();
        let idempotent = session.req_header().method.is_idempotent();
        if idempotent && within_retry_limits(session, ctx) {
            e.retry.decide_reuse(client_reused);
            if e.retry() && !retry_budget_allows(ctx) {
                e.set_retry(false);
            }
        } else {
            e.set_retry(false);
        }
        e
    }

    async fn proxy_upstream_filter(
        &self,
        session: &mut Session,
        ctx: &mut RequestContext,
    ) -> pingora::Result<bool> {
        self.decide_body_first(session, ctx).await
    }

    async fn request_body_filter(
        &self,
        session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut RequestContext,
    ) -> pingora::Result<()> {
        if ctx.replay_expected {
            // Pingora's replay of the body read first: the filters have had it already, and what
            // they released goes instead.
            ctx.replay_expected = false;
            *body = ctx
                .body_read_first
                .clone()
                .filter(|b| !b.is_empty() || !end_of_stream);
            return Ok(());
        }
        self.filter_request_body(session, body, end_of_stream, ctx, true)
            .await
    }

    async fn response_filter(
        &self,
        session: &mut Session,
        response: &mut ResponseHeader,
        ctx: &mut RequestContext,
    ) -> pingora::Result<()> {
        let status = response.status.as_u16();
        if response.status.is_informational() && status != 101 {
            // An interim answer (`100 Continue`) passes on; filters see only the final one, as
            // in Envoy, whose wasm filters get no 1xx headers.
            return Ok(());
        }
        ctx.upstream_headers_after = ctx.upstream_started.map(|t| t.elapsed());
        response.insert_header("x-request-id", ctx.request_id.as_str())?;
        // A gRPC caller reads the upstream's status from its trailers; a JSON body would be noise.
        let replace_5xx = ctx
            .route
            .as_ref()
            .is_some_and(|r| r.config.upstream_errors == UpstreamErrors::Json)
            && !grpc::is_grpc(session.req_header());
        if status >= 500 && replace_5xx {
            let error = ProxyError::UpstreamFailed(status);
            replace_response(
                response,
                ctx,
                error.body(&ctx.request_id),
                "application/json",
            )?;
        }
        if ctx.chain.is_none() {
            return Ok(());
        }
        let mut headers = header_maps::response_to_filters(response);
        let end_of_stream = session.req_header().method == http::Method::HEAD
            || matches!(status, 204 | 304)
            || response
                .headers
                .get(http::header::CONTENT_LENGTH)
                .is_some_and(|v| v.as_bytes() == b"0");
        let Some((headers, verdict)) = self
            .run_filters(ctx, move |mut run| async move {
                let verdict = run.response_headers(&mut headers, end_of_stream).await;
                (run, (headers, verdict))
            })
            .await
        else {
            return Ok(());
        };
        match verdict {
            ChainVerdict::Continue | ChainVerdict::Buffer => {
                header_maps::apply_to_response(response, &headers)
            }
            ChainVerdict::Respond(local) => {
                let content_type = local
                    .headers
                    .get_str("content-type")
                    .unwrap_or_else(|| "text/plain".into());
                response.set_status(local.status)?;
                replace_response(response, ctx, local.body, &content_type)
            }
            ChainVerdict::Reset => Err(reset(ctx)),
        }
    }

    fn response_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut RequestContext,
    ) -> pingora::Result<Option<Duration>> {
        if ctx.replacement_body.is_some() {
            // The upstream body is dropped; the replacement goes out once.
            *body = ctx.replacement_body.take().filter(|b| !b.is_empty());
            ctx.replacement_body = Some(Bytes::new());
            return Ok(None);
        }
        if ctx.chain.is_none() {
            return Ok(None);
        }
        let mut chunk = body.take().map(Vec::from).unwrap_or_default();
        // Pingora 0.9 calls this phase synchronously; see `offload` for how filters still await.
        let Some((chunk, verdict)) = run_filters_blocking(ctx, move |mut run| async move {
            let verdict = run.response_body(&mut chunk, end_of_stream).await;
            (run, (chunk, verdict))
        }) else {
            return Ok(None);
        };
        match verdict {
            ChainVerdict::Continue => {
                *body = (!chunk.is_empty()).then(|| Bytes::from(chunk));
                Ok(None)
            }
            ChainVerdict::Buffer => Ok(None),
            // Headers are already on their way: a body-phase reply can only end the stream.
            ChainVerdict::Respond(_) | ChainVerdict::Reset => Err(reset(ctx)),
        }
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut RequestContext,
    ) -> FailToProxy {
        if let Some(answered) = ctx.answered {
            return FailToProxy {
                error_code: answered.status(),
                // Pingora ends a connection whose proxying failed whatever this says; a filter's
                // answer that keeps the connection is given before proxying starts
                // (`decide_body_first`).
                can_reuse_downstream: false,
            };
        }
        let error = ctx.error.unwrap_or_else(|| ProxyError::from_failure(e));
        let downstream_gone = e.esource() == &ErrorSource::Downstream
            && matches!(
                e.etype(),
                ErrorType::WriteError | ErrorType::ReadError | ErrorType::ConnectionClosed
            );
        if downstream_gone {
            return FailToProxy {
                error_code: 0,
                can_reuse_downstream: false,
            };
        }
        if session.response_written().is_none() {
            // Filters see the error like any response (a cache may answer stale instead).
            let local = error.local_response(&ctx.request_id);
            let verdict = self
                .run_filters(ctx, move |mut run| async move {
                    let verdict = run.through_response_phases(local).await;
                    (run, verdict)
                })
                .await;
            let written = match verdict {
                Some(ChainVerdict::Respond(response)) => {
                    responses::write_local(session, response, &ctx.request_id).await
                }
                Some(_) => Ok(()),
                None => responses::write_error(session, error, &ctx.request_id).await,
            };
            if let Err(write_error) = written {
                tracing::debug!(%write_error, "could not send the error response");
            }
        }
        ctx.answered = Some(Answered::Locally(error.status()));
        FailToProxy {
            error_code: error.status(),
            can_reuse_downstream: false,
        }
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut RequestContext) {
        let filters = match ctx.chain.take() {
            Some(run) => {
                let outcome = run.outcome.to_string();
                offload::finish_phase(self.may_wait(), run.finish()).await;
                outcome
            }
            None => "none".to_string(),
        };
        ctx.in_flight = None;
        let status = session
            .response_written()
            .map(|r| r.status.as_u16())
            .or(ctx.answered.map(Answered::status))
            .unwrap_or(0);
        let route = ctx.route.as_ref().map_or("", |r| r.config.name.as_str());
        let cluster = ctx
            .route
            .as_ref()
            .map_or("", |r| r.cluster.config.name.as_str());
        let elapsed = ctx.started.elapsed();
        self.state
            .metrics
            .request_done(route, cluster, status, elapsed);
        let request = session.req_header();
        let trace = ctx.trace.take();
        if ctx.generation.access_log {
            tracing::info!(
                target: "access_log",
                listener = self.listener,
                request_id = ctx.request_id,
                trace_id = trace.as_ref().map(RequestTrace::trace_id),
                client = session.client_addr().map(|a| a.to_string()),
                method = request.method.as_str(),
                path = request.uri.path(),
                route,
                cluster,
                status,
                attempts = ctx.attempts,
                duration_ms = elapsed.as_secs_f64() * 1000.0,
                upstream_ms = ctx.upstream_headers_after.map(|d| d.as_secs_f64() * 1000.0),
                request_bytes = ctx.request_body_bytes,
                response_bytes = session.body_bytes_sent(),
                filters,
                error = e.map(|e| e.to_string()),
                "request"
            );
        }
        if let Some(trace) = trace.filter(RequestTrace::is_recording) {
            self.finish_span(trace, session.req_header(), ctx, status, filters);
        }
    }
}

impl Gateway {
    /// Ends a recorded request span, named as OpenTelemetry's HTTP conventions name server spans
    /// (`{method} {route}`); a reset (status 0) or a 5xx marks it failed.
    fn finish_span(
        &self,
        trace: RequestTrace,
        request: &RequestHeader,
        ctx: &RequestContext,
        status: u16,
        filters: String,
    ) {
        let route = ctx.route.as_ref().map(|r| r.config.name.as_str());
        let cluster = ctx.route.as_ref().map(|r| r.cluster.config.name.as_str());
        let name = match route {
            Some(route) => format!("{} {route}", request.method),
            None => request.method.to_string(),
        };
        let mut attributes = vec![
            KeyValue::new("http.request.method", request.method.to_string()),
            KeyValue::new("url.path", request.uri.path().to_string()),
            KeyValue::new("http.response.status_code", i64::from(status)),
            KeyValue::new("gateway.listener", self.listener.clone()),
            KeyValue::new("gateway.attempts", i64::from(ctx.attempts)),
            KeyValue::new("gateway.filters", filters),
            KeyValue::new("request.id", ctx.request_id.clone()),
        ];
        if let (Some(route), Some(cluster)) = (route, cluster) {
            attributes.push(KeyValue::new("gateway.route", route.to_string()));
            attributes.push(KeyValue::new("gateway.cluster", cluster.to_string()));
        }
        trace.finish(name, attributes, status == 0 || status >= 500);
    }

    /// Whether filter callbacks may wait for shared data (Redis), so phases run on the offload
    /// runtime (see `offload`); the host's backend says so.
    fn may_wait(&self) -> bool {
        !self.state.shared_data.answers_immediately()
    }

    /// Reads a small request body through the filters before any upstream connection exists,
    /// when filters run on it: a filter that decides from the whole body (a cache hit, a budget
    /// refusal) then answers before anything went upstream, and the client's connection stays
    /// open for its next request (Pingora closes it after an answer given while the request was
    /// being proxied). What the filters release is kept for each attempt (Pingora replays the
    /// body it buffered for retries there; `request_body_filter` swaps that replay for it). Returns
    /// false when a filter answered. Bodies past Pingora's retry buffer, of unknown length, on
    /// HTTP/2, or held back for `100 Continue` stream through the filters as they are proxied.
    async fn decide_body_first(
        &self,
        session: &mut Session,
        ctx: &mut RequestContext,
    ) -> pingora::Result<bool> {
        // A client that waits for `100 Continue` before its body is left to the upstream's answer.
        let expects_continue = session
            .req_header()
            .headers
            .get(http::header::EXPECT)
            .is_some();
        if ctx.chain.is_none()
            || ctx.request_ended_with_headers
            || session.is_http2()
            || expects_continue
        {
            return Ok(true);
        }
        let declared_length = session
            .req_header()
            .headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<usize>().ok());
        if declared_length.is_none_or(|length| length > BODY_READ_FIRST_LIMIT) {
            return Ok(true);
        }
        session.as_mut().enable_retry_buffering();
        let mut released = Vec::new();
        loop {
            let mut body = session.read_request_body().await?;
            let end = body.is_none() || session.is_body_done();
            if let Err(error) = self
                .filter_request_body(session, &mut body, end, ctx, false)
                .await
            {
                return match ctx.answered {
                    Some(Answered::Locally(_)) => Ok(false),
                    _ => Err(error),
                };
            }
            // Read to the end even when filters release parts early: each attempt's replay must
            // be the whole body (the declared length is small).
            released.extend_from_slice(body.as_deref().unwrap_or_default());
            if end {
                break;
            }
        }
        ctx.body_read_first = Some(Bytes::from(released));
        Ok(true)
    }

    /// Runs a request body chunk through the filters: `body` becomes what goes upstream; a filter's
    /// answer is written and returned as an error. `proxying`: the upstream request has started
    /// (the body streams), so an answer ends the client's connection too.
    async fn filter_request_body(
        &self,
        session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut RequestContext,
        proxying: bool,
    ) -> pingora::Result<()> {
        let size = body.as_ref().map_or(0, |b| b.len() as u64);
        ctx.request_body_bytes += size;
        if ctx.request_body_bytes > ctx.generation.max_request_body_bytes {
            ctx.error = Some(ProxyError::BodyTooLarge);
            return Err(ProxyError::BodyTooLarge.into_pingora());
        }
        if ctx.request_ended_with_headers && body.as_ref().is_none_or(|b| b.is_empty()) {
            return Ok(());
        }
        if ctx.chain.is_none() {
            return Ok(());
        }
        let mut chunk = body.take().map(Vec::from).unwrap_or_default();
        let Some((chunk, verdict)) = self
            .run_filters(ctx, move |mut run| async move {
                let verdict = run.request_body(&mut chunk, end_of_stream).await;
                (run, (chunk, verdict))
            })
            .await
        else {
            return Ok(());
        };
        // Before the end, an empty chunk and never `None`: Pingora reads `None` as the end of the
        // body and would end the upstream request before a buffered body is released.
        match verdict {
            ChainVerdict::Continue => {
                *body = (!chunk.is_empty() || !end_of_stream).then(|| Bytes::from(chunk));
                Ok(())
            }
            ChainVerdict::Buffer => {
                *body = Some(Bytes::new());
                Ok(())
            }
            ChainVerdict::Respond(response) => {
                let status = response.status;
                if proxying || !session.is_body_done() {
                    // Pingora ends a connection whose proxying stopped, and the rest of a body
                    // is never read: the connection ends with this answer, which says so.
                    session.set_keepalive(None);
                }
                answer_locally(session, ctx, response).await?;
                Err(Error::explain(
                    ErrorType::HTTPStatus(status),
                    "a filter answered",
                ))
            }
            ChainVerdict::Reset => Err(reset(ctx)),
        }
    }

    /// Runs one phase of the request's filter chain where this deployment runs phases (see
    /// `offload::filter_phase`), then puts the chain back; `None` when the request has no filters.
    /// The phase owns the chain while it runs, so it can move to the offload runtime.
    async fn run_filters<T, Phase>(
        &self,
        ctx: &mut RequestContext,
        phase: impl FnOnce(ChainRun) -> Phase,
    ) -> Option<T>
    where
        T: Send + 'static,
        Phase: Future<Output = (ChainRun, T)> + Send + 'static,
    {
        let run = ctx.chain.take()?;
        let (run, output) = offload::filter_phase(self.may_wait(), phase(run)).await;
        ctx.chain = Some(run);
        Some(output)
    }

    /// Sets `x-request-id`, `traceparent` and `X-Forwarded-*` on the request before filters run.
    fn add_forwarding_headers(
        &self,
        session: &mut Session,
        ctx: &mut RequestContext,
    ) -> pingora::Result<()> {
        let client_ip = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip());
        let trusted = ctx.generation.trusted_proxies.trusts(client_ip);
        let request = session.req_header_mut();
        ctx.request_id =
            forwarding::request_id(request.headers.get("x-request-id").map(|v| v.as_bytes()));
        let trace = self
            .trace_export
            .start(request.headers.get("traceparent").map(|v| v.as_bytes()));
        let xff = forwarding::forwarded_for(
            request.headers.get("x-forwarded-for").map(|v| v.as_bytes()),
            client_ip,
            trusted,
        );
        request.insert_header("x-request-id", ctx.request_id.as_str())?;
        request.insert_header("traceparent", trace.context.header_value())?;
        match xff {
            Some(xff) => request.insert_header("x-forwarded-for", xff)?,
            None => {
                request.remove_header("x-forwarded-for");
            }
        }
        let proto = if self.tls { "https" } else { "http" };
        if !trusted || !request.headers.contains_key("x-forwarded-proto") {
            request.insert_header("x-forwarded-proto", proto)?;
        }
        if !trusted {
            // An untrusted client's claims about earlier hops are dropped; its `Host` is the one
            // fact the upstream gets (setting `x-forwarded-host` would make every request look
            // unkeyed-header-tainted to caches that refuse such requests).
            request.remove_header("forwarded");
            request.remove_header("x-forwarded-host");
        }
        ctx.trace = Some(trace);
        Ok(())
    }

    async fn refuse(
        &self,
        session: &mut Session,
        ctx: &mut RequestContext,
        error: ProxyError,
    ) -> pingora::Result<bool> {
        responses::write_error(session, error, &ctx.request_id).await?;
        ctx.answered = Some(Answered::Locally(error.status()));
        Ok(true)
    }
}

/// Whether the body's length has one reading (RFC 9112 §6.3): `Content-Length` values that agree.
/// Otherwise the gateway and the upstream could see the request end in different places (request
/// smuggling). `Content-Length` beside `Transfer-Encoding` never gets here: Pingora drops the
/// former and closes the connection after the response, as RFC 9112 §6.1 asks.
fn unambiguous_framing(request: &pingora::http::RequestHeader) -> bool {
    let lengths = request.headers.get_all(http::header::CONTENT_LENGTH);
    let mut values = lengths
        .iter()
        .flat_map(|v| v.as_bytes().split(|b| *b == b','))
        .map(|v| v.trim_ascii());
    let Some(first) = values.next() else {
        return true;
    };
    !first.is_empty() && first.iter().all(u8::is_ascii_digit) && values.all(|v| v == first)
}

/// Replaces the request's path with its normal form (`server.paths`).
fn normalize_path(session: &mut Session, generation: &Generation) -> Result<(), PathRejection> {
    let request = session.req_header_mut();
    let target = request.uri.path_and_query().map_or("/", |p| p.as_str());
    let normal = match generation.paths.normalize(target)? {
        Cow::Borrowed(_) => return Ok(()),
        Cow::Owned(normal) => normal,
    };
    // HTTP/2 and absolute-form requests carry scheme and authority in the URI: keep them.
    let mut parts = request.uri.clone().into_parts();
    parts.path_and_query = Some(normal.parse().map_err(|_| PathRejection::BadEscape)?);
    let uri = http::Uri::from_parts(parts).map_err(|_| PathRejection::BadEscape)?;
    request.set_uri(uri);
    Ok(())
}

/// [`Gateway::run_filters`] for the phases Pingora calls synchronously.
fn run_filters_blocking<T, Phase>(
    ctx: &mut RequestContext,
    phase: impl FnOnce(ChainRun) -> Phase,
) -> Option<T>
where
    T: Send + 'static,
    Phase: Future<Output = (ChainRun, T)> + Send + 'static,
{
    let run = ctx.chain.take()?;
    let (run, output) = offload::block_on(phase(run));
    ctx.chain = Some(run);
    Some(output)
}

/// Sends a filter's local reply and records that the request is answered.
async fn answer_locally(
    session: &mut Session,
    ctx: &mut RequestContext,
    response: LocalResponse,
) -> pingora::Result<()> {
    let status = response.status;
    responses::write_local(session, response, &ctx.request_id).await?;
    ctx.answered = Some(Answered::Locally(status));
    Ok(())
}

/// Ends the stream without a response (a filter reset it, or answered after the headers left):
/// `fail_to_proxy` sees `answered` and writes nothing.
fn reset(ctx: &mut RequestContext) -> Box<Error> {
    ctx.answered = Some(Answered::Reset);
    Error::explain(ErrorType::ConnectionClosed, "a filter reset the stream")
}

/// Swaps the response body for `body`, fixing the framing headers.
fn replace_response(
    response: &mut ResponseHeader,
    ctx: &mut RequestContext,
    body: Vec<u8>,
    content_type: &str,
) -> pingora::Result<()> {
    response.remove_header(&http::header::TRANSFER_ENCODING);
    response.remove_header(&http::header::CONTENT_ENCODING);
    response.insert_header("content-type", content_type)?;
    response.insert_header("content-length", body.len().to_string())?;
    ctx.replacement_body = Some(Bytes::from(body));
    Ok(())
}
