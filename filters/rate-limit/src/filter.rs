//! proxy-wasm shell of the rate-limit filter: takes from the buckets on request headers, answers
//! 429 or lets the request through, and reports the tightest limit on the response.
//!
//! The root context sweeps the buckets this VM touched, a bounded number per tick: a bucket that
//! has refilled is deleted, so shared data holds only callers seen recently.

use crate::config::RateLimitConfig;
use crate::limiter::{expire, Limiter, Report, RequestFacts};
use filter_common::host::{now, property, request_header, HostSharedData};
use filter_common::sweep::{Sweep, KEYS_PER_TICK};
use gateway_contract::error_body;
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel, MetricType};
use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

/// How often the root context looks for refilled buckets to delete.
const SWEEP_PERIOD: Duration = Duration::from_secs(5);
/// Most bucket keys one VM remembers for expiry; the host's own bound covers the rest.
const MAX_TRACKED_KEYS: usize = 65_536;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(RateLimitRoot { state: None }) });
}}

struct FilterState {
    limiter: Limiter,
    touched: RefCell<Sweep>,
    refused_metric: Option<u32>,
    shadow_refused_metric: Option<u32>,
}

struct RateLimitRoot {
    state: Option<Rc<FilterState>>,
}

impl Context for RateLimitRoot {}

impl RootContext for RateLimitRoot {
    fn on_configure(&mut self, _size: usize) -> bool {
        let bytes = self.get_plugin_configuration().unwrap_or_default();
        let config = match RateLimitConfig::from_json(&bytes) {
            Ok(config) => config,
            Err(err) => {
                log::error!("rate-limit: invalid plugin configuration: {err}");
                return false;
            }
        };
        log::info!(
            "rate-limit: configured {} limit(s){}",
            config.limits.len(),
            if config.shadow_mode {
                " in shadow mode"
            } else {
                ""
            }
        );
        let counter = |name| hostcalls::define_metric(MetricType::Counter, name).ok();
        self.state = Some(Rc::new(FilterState {
            limiter: Limiter::new(config),
            touched: RefCell::new(Sweep::new(MAX_TRACKED_KEYS)),
            refused_metric: counter("rate_limit_refused_total"),
            shadow_refused_metric: counter("rate_limit_shadow_refused_total"),
        }));
        self.set_tick_period(SWEEP_PERIOD);
        true
    }

    fn on_tick(&mut self) {
        let Some(state) = &self.state else {
            return;
        };
        let now = now_ns();
        state
            .touched
            .borrow_mut()
            .tick(KEYS_PER_TICK, |key| expire(&HostSharedData, key, now));
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        let state = self.state.clone()?;
        Some(Box::new(RateLimitRequest {
            state,
            report: None,
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct RateLimitRequest {
    state: Rc<FilterState>,
    report: Option<Report>,
}

impl Context for RateLimitRequest {}

impl HttpContext for RateLimitRequest {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let verdict = self
            .state
            .limiter
            .check(&CurrentRequest, &HostSharedData, now_ns());
        {
            let mut touched = self.state.touched.borrow_mut();
            for key in &verdict.touched {
                touched.insert(key);
            }
        }
        self.report = verdict.report;
        let Some(limit) = verdict.refused_by else {
            return Action::Continue;
        };
        let config = self.state.limiter.config();
        if config.shadow_mode {
            log::info!("rate-limit: limit {limit:?} would refuse this request (shadow mode)");
            increment(self.state.shadow_refused_metric);
            return Action::Continue;
        }
        increment(self.state.refused_metric);
        let request_id = CurrentRequest.header(gateway_contract::headers::REQUEST_ID);
        let body = error_body(
            429,
            "rate_limited",
            "too many requests; retry after the time in Retry-After",
            request_id.as_deref(),
        );
        let retry_after = verdict.retry_after_seconds.to_string();
        let mut headers = vec![
            ("content-type".to_string(), "application/json".to_string()),
            ("retry-after".to_string(), retry_after),
        ];
        if config.response_headers {
            headers.extend(report_headers(self.report));
        }
        self.send_http_response(
            429,
            headers
                .iter()
                .map(|(n, v)| (n.as_str(), v.as_str()))
                .collect(),
            Some(&body),
        );
        // The local reply passes the response phase too; its headers are already set.
        self.report = None;
        Action::Pause
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        if self.state.limiter.config().response_headers {
            for (name, value) in report_headers(self.report.take()) {
                self.set_http_response_header(&name, Some(&value));
            }
        }
        Action::Continue
    }
}

/// `RateLimit-*` (IETF draft) and `X-RateLimit-*` headers for a report.
fn report_headers(report: Option<Report>) -> Vec<(String, String)> {
    let Some(report) = report else {
        return Vec::new();
    };
    let values = [
        ("limit", report.limit),
        ("remaining", report.remaining),
        ("reset", report.reset_seconds),
    ];
    values
        .iter()
        .flat_map(|(name, value)| {
            [
                (format!("ratelimit-{name}"), value.to_string()),
                (format!("x-ratelimit-{name}"), value.to_string()),
            ]
        })
        .collect()
}

fn increment(metric: Option<u32>) {
    if let Some(id) = metric {
        let _ = hostcalls::increment_metric(id, 1);
    }
}

/// The request of the current context.
struct CurrentRequest;

impl RequestFacts for CurrentRequest {
    fn header(&self, name: &str) -> Option<String> {
        request_header(name)
    }
    fn client_address(&self) -> Option<String> {
        property(&["source", "address"])
    }
    fn route(&self) -> Option<String> {
        property(&["xds", "route_name"])
    }
    fn path(&self) -> String {
        self.header(":path").unwrap_or_default()
    }
}

fn now_ns() -> u64 {
    u64::try_from(now().as_nanos()).unwrap_or(u64::MAX)
}
