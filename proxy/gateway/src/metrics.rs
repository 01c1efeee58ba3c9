//! The proxy's Prometheus metrics. Filter-defined metrics and wasm traps come from the host's
//! registry and are appended when `/metrics` is rendered.

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};
use std::time::Duration;

/// Latency buckets from 0.5 ms to 30 s: gateway overhead lives at the low end, LLM calls at the top.
const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Buckets for one filter callback: microseconds to the 500 ms default deadline.
const FILTER_BUCKETS: &[f64] = &[
    0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.005, 0.025, 0.1, 0.5,
];

/// The phases a filter's time is recorded under (`gateway_filter_duration_seconds{phase=...}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FilterPhase {
    /// `on_request_headers`.
    RequestHeaders,
    /// `on_request_body`.
    RequestBody,
    /// `on_response_headers`.
    ResponseHeaders,
    /// `on_response_body`.
    ResponseBody,
}

impl FilterPhase {
    const ALL: [FilterPhase; 4] = [
        Self::RequestHeaders,
        Self::RequestBody,
        Self::ResponseHeaders,
        Self::ResponseBody,
    ];

    /// The `phase` label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::RequestHeaders => "request_headers",
            Self::RequestBody => "request_body",
            Self::ResponseHeaders => "response_headers",
            Self::ResponseBody => "response_body",
        }
    }
}

/// One filter's duration histogram per phase.
#[derive(Clone)]
pub struct FilterTimers([Histogram; 4]);

impl FilterTimers {
    /// Records one callback of `phase` that took `elapsed`.
    pub fn observe(&self, phase: FilterPhase, elapsed: Duration) {
        self.0[phase as usize].observe(elapsed.as_secs_f64());
    }
}

/// All metrics the proxy itself records.
pub struct GatewayMetrics {
    registry: Registry,
    requests: IntCounterVec,
    duration: HistogramVec,
    upstream_healthy: IntGaugeVec,
    retries: IntCounterVec,
    filter_duration: HistogramVec,
    config_reloads: IntCounterVec,
    config_generation: IntGauge,
    connections: IntGaugeVec,
    connections_refused: IntCounterVec,
}

impl GatewayMetrics {
    /// Registers every metric in a fresh registry.
    pub fn new() -> Self {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new(
                "gateway_requests_total",
                "Requests answered, by route, cluster and status",
            ),
            &["route", "cluster", "status"],
        )
        .expect("valid metric");
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "gateway_request_duration_seconds",
                "Time from request headers to the end of the response",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["route", "cluster"],
        )
        .expect("valid metric");
        let upstream_healthy = IntGaugeVec::new(
            Opts::new(
                "gateway_upstream_healthy",
                "1 when the endpoint passes health checks",
            ),
            &["cluster", "endpoint"],
        )
        .expect("valid metric");
        let retries = IntCounterVec::new(
            Opts::new(
                "gateway_upstream_retries_total",
                "Upstream attempts retried",
            ),
            &["cluster"],
        )
        .expect("valid metric");
        let filter_duration = HistogramVec::new(
            HistogramOpts::new(
                "gateway_filter_duration_seconds",
                "Time spent in one filter phase, including host calls",
            )
            .buckets(FILTER_BUCKETS.to_vec()),
            &["filter", "phase"],
        )
        .expect("valid metric");
        let config_reloads = IntCounterVec::new(
            Opts::new(
                "gateway_config_reloads_total",
                "Configuration reloads, by outcome (applied or refused)",
            ),
            &["outcome"],
        )
        .expect("valid metric");
        let config_generation = IntGauge::new(
            "gateway_config_generation",
            "Number of the configuration serving new requests (1 at start, +1 per applied reload)",
        )
        .expect("valid metric");
        let connections = IntGaugeVec::new(
            Opts::new(
                "gateway_downstream_connections",
                "Client connections open, by listener",
            ),
            &["listener"],
        )
        .expect("valid metric");
        let connections_refused = IntCounterVec::new(
            Opts::new(
                "gateway_downstream_connections_refused_total",
                "Client connections closed at once because the listener had max_connections open",
            ),
            &["listener"],
        )
        .expect("valid metric");
        for metric in [
            Box::new(requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(duration.clone()),
            Box::new(upstream_healthy.clone()),
            Box::new(retries.clone()),
            Box::new(filter_duration.clone()),
            Box::new(config_reloads.clone()),
            Box::new(config_generation.clone()),
            Box::new(connections.clone()),
            Box::new(connections_refused.clone()),
        ] {
            registry.register(metric).expect("metric names are unique");
        }
        Self {
            registry,
            requests,
            duration,
            upstream_healthy,
            retries,
            filter_duration,
            config_reloads,
            config_generation,
            connections,
            connections_refused,
        }
    }

    /// The open-connection gauge and refusal counter of `listener`.
    pub fn listener_connections(&self, listener: &str) -> (IntGauge, IntCounter) {
        (
            self.connections.with_label_values(&[listener]),
            self.connections_refused.with_label_values(&[listener]),
        )
    }

    /// Records a finished request.
    pub fn request_done(&self, route: &str, cluster: &str, status: u16, elapsed: Duration) {
        self.requests
            .with_label_values(&[route, cluster, &status.to_string()])
            .inc();
        self.duration
            .with_label_values(&[route, cluster])
            .observe(elapsed.as_secs_f64());
    }

    /// Records an endpoint's health.
    pub fn set_upstream_health(&self, cluster: &str, endpoint: &str, healthy: bool) {
        self.upstream_healthy
            .with_label_values(&[cluster, endpoint])
            .set(i64::from(healthy));
    }

    /// Counts a retried upstream attempt.
    pub fn retry(&self, cluster: &str) {
        self.retries.with_label_values(&[cluster]).inc();
    }

    /// The phase timers of `filter`, resolved once so requests do not look labels up.
    pub fn filter_timers(&self, filter: &str) -> FilterTimers {
        FilterTimers(FilterPhase::ALL.map(|phase| {
            self.filter_duration
                .with_label_values(&[filter, phase.as_str()])
        }))
    }

    /// Counts a reload attempt.
    pub fn config_reload(&self, applied: bool) {
        let outcome = if applied { "applied" } else { "refused" };
        self.config_reloads.with_label_values(&[outcome]).inc();
    }

    /// Records the generation serving new requests.
    pub fn config_generation(&self, generation: u64) {
        self.config_generation
            .set(i64::try_from(generation).unwrap_or(i64::MAX));
    }

    /// The Prometheus text exposition of these metrics.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("text encoding cannot fail");
        String::from_utf8(out).expect("the text format is UTF-8")
    }
}

impl Default for GatewayMetrics {
    fn default() -> Self {
        Self::new()
    }
}
