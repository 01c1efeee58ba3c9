//! proxy-wasm shell of the ai-tokens filter.
//!
//! Request: a POST's headers go on at once (Envoy stops the body too while headers are paused),
//! without `content-length`, since the body may be rewritten; the body is buffered to its end,
//! priced and reserved, and a streamed request is made to ask for its usage. Response: the usage
//! is read from the JSON answer or from the stream's last chunk as they pass (neither buffered); the
//! reservation is settled as the answer ends (before the client has it all), or in `on_log` for a
//! request that ended otherwise.

use crate::budget::{window_over, Budgets, Outcome, Report, RequestFacts, Reservation};
use crate::chat::{ChatRequest, StreamScan, Usage};
use crate::config::AiTokensConfig;
use crate::usage_metrics::UsageSeries;
use filter_common::host::{now, request_headers, Counter, HostSharedData};
use filter_common::sweep::{Sweep, KEYS_PER_TICK};
use filter_common::HeaderSnapshot;
use gateway_contract::error_body;
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};
use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

/// How often the root context looks for ended windows to delete.
const SWEEP_PERIOD: Duration = Duration::from_secs(5);
/// Most window keys one VM remembers for expiry.
const MAX_TRACKED_KEYS: usize = 65_536;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(AiTokensRoot { state: None }) });
}}

/// Counters (`wasm_ai_tokens_*` in our proxy, `wasmcustom.ai_tokens_*` in Envoy).
struct Metrics {
    prompt: Counter,
    completion: Counter,
    refused: Counter,
    refunded: Counter,
    estimated: Counter,
    streams_stopped: Counter,
}

impl Metrics {
    fn define() -> Self {
        let counter = Counter::define;
        Self {
            prompt: counter("ai_tokens_prompt_total"),
            completion: counter("ai_tokens_completion_total"),
            refused: counter("ai_tokens_refused_total"),
            refunded: counter("ai_tokens_refunded_total"),
            estimated: counter("ai_tokens_estimated_settlements_total"),
            streams_stopped: counter("ai_tokens_streams_stopped_total"),
        }
    }
}

struct FilterState {
    budgets: Budgets,
    touched: RefCell<Sweep>,
    metrics: Metrics,
    /// Prompt and completion counters per identity and model.
    usage: RefCell<UsageSeries<(Counter, Counter)>>,
}

impl FilterState {
    /// Remembers windows this VM wrote, so the root context deletes them once they end.
    fn track<'a>(&self, keys: impl IntoIterator<Item = &'a str>) {
        let mut touched = self.touched.borrow_mut();
        for key in keys {
            touched.insert(key);
        }
    }
}

struct AiTokensRoot {
    state: Option<Rc<FilterState>>,
}

impl Context for AiTokensRoot {}

impl RootContext for AiTokensRoot {
    fn on_configure(&mut self, _size: usize) -> bool {
        let bytes = self.get_plugin_configuration().unwrap_or_default();
        let config = match AiTokensConfig::from_json(&bytes) {
            Ok(config) => config,
            Err(err) => {
                log::error!("ai-tokens: invalid plugin configuration: {err}");
                return false;
            }
        };
        log::info!("ai-tokens: configured {} budget(s)", config.budgets.len());
        let usage = RefCell::new(UsageSeries::new(config.max_usage_series));
        self.state = Some(Rc::new(FilterState {
            usage,
            budgets: Budgets::new(config),
            touched: RefCell::new(Sweep::new(MAX_TRACKED_KEYS)),
            metrics: Metrics::define(),
        }));
        self.set_tick_period(SWEEP_PERIOD);
        true
    }

    fn on_tick(&mut self) {
        let Some(state) = &self.state else {
            return;
        };
        let now = now().as_secs();
        state.touched.borrow_mut().tick(KEYS_PER_TICK, |key| {
            if !window_over(key, now) {
                return false;
            }
            let _ = hostcalls::set_shared_data(key, None, None);
            true
        });
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(TokensRequest {
            state: self.state.clone()?,
            headers: None,
            request: None,
            reservation: None,
            report: None,
            answered: false,
            upstream_failed: false,
            streamed: false,
            stopped: false,
            answer: Some(Vec::new()),
            scan: StreamScan::default(),
            usage: None,
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct TokensRequest {
    state: Rc<FilterState>,
    /// The request headers, copied in their phase for the body phase's keys.
    headers: Option<HeaderSnapshot>,
    request: Option<ChatRequest>,
    reservation: Option<Reservation>,
    report: Option<Report>,
    /// Response headers came (from the upstream, or a local reply).
    answered: bool,
    /// The answer is not a success (not 2xx): the reservation is refunded.
    upstream_failed: bool,
    /// A JSON answer so far; `None` once it is too large to read for its usage.
    answer: Option<Vec<u8>>,
    /// The answer is a server-sent event stream.
    streamed: bool,
    /// The stream outgrew its budget: the rest is counted, not forwarded.
    stopped: bool,
    scan: StreamScan,
    /// The usage of a JSON answer.
    usage: Option<Usage>,
}

impl Context for TokensRequest {}

impl HttpContext for TokensRequest {
    fn on_http_request_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        let headers = request_headers();
        if end_of_stream || headers.header(":method").as_deref() != Some("POST") {
            return Action::Continue; // nothing to price
        }
        self.set_http_request_header("content-length", None);
        self.headers = Some(headers);
        Action::Continue
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        if self.headers.is_none() || self.request.is_some() {
            return Action::Continue;
        }
        let config = self.state.budgets.config();
        if body_size > config.max_request_body_bytes {
            let message = format!(
                "the request body is over {} bytes; its token cost cannot be read",
                config.max_request_body_bytes
            );
            return self.refuse(413, "body_too_large", &message, Vec::new());
        }
        if !end_of_stream {
            return Action::Pause;
        }
        let body = self.get_http_request_body(0, body_size).unwrap_or_default();
        let Ok(request) = ChatRequest::parse(&body) else {
            return self.refuse(
                400,
                "invalid_request",
                "the body is not a JSON object",
                Vec::new(),
            );
        };
        let estimate = request.estimate(config.default_max_tokens);
        let facts = Snapshot(self.headers.as_ref().expect("checked above"));
        let outcome = self.state.budgets.reserve(
            &facts,
            request.model.as_deref(),
            estimate,
            &HostSharedData,
            now().as_secs(),
        );
        match outcome {
            Outcome::Refused {
                budget,
                report,
                never_fits,
            } => {
                self.state.metrics.refused.add(1);
                let mut headers = report_headers(report);
                let message = if never_fits {
                    format!(
                        "this request may use {estimate} tokens, more than token budget {budget:?} allows per window ({}); lower max_tokens",
                        report.limit
                    )
                } else {
                    // Only a request that fits an empty window is told when to retry.
                    headers.push(("retry-after".into(), report.reset_seconds.to_string()));
                    format!(
                        "token budget {budget:?} has {} tokens left until it resets in {} s; this request may use {estimate}",
                        report.remaining, report.reset_seconds
                    )
                };
                self.refuse(429, "token_budget_exceeded", &message, headers)
            }
            Outcome::Reserved(reservation, report) => {
                self.state.track(reservation.keys());
                if let Some(rewritten) = request.rewritten_body(config.default_max_tokens) {
                    self.set_http_request_body(0, body_size, &rewritten);
                }
                self.reservation = Some(reservation);
                self.report = report;
                self.request = Some(request);
                Action::Continue
            }
        }
    }

    fn on_http_request_trailers(&mut self, _num_trailers: usize) -> Action {
        // An HTTP/2 body can end with trailers instead of an end-of-stream data frame: a request
        // still unpriced then would go upstream unreserved.
        if self.headers.is_some() && self.request.is_none() {
            return self.refuse(
                400,
                "invalid_request",
                "request trailers are not accepted on a priced request",
                Vec::new(),
            );
        }
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        if self.reservation.is_none() {
            return Action::Continue;
        }
        self.answered = true;
        let status = self
            .get_http_response_header(":status")
            .and_then(|s| s.parse::<u16>().ok())
            .unwrap_or(0);
        // Only a successful answer used tokens worth charging.
        self.upstream_failed = !(200..300).contains(&status);
        self.streamed = self
            .get_http_response_header("content-type")
            .is_some_and(|t| t.starts_with("text/event-stream"));
        if let Some(report) = self.report {
            for (name, value) in report_headers(report) {
                self.set_http_response_header(&name, Some(&value));
            }
        }
        if end_of_stream {
            self.settle();
        }
        Action::Continue
    }

    fn on_http_response_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        if self.reservation.is_none() {
            return Action::Continue;
        }
        if self.upstream_failed {
            if end_of_stream {
                self.settle();
            }
            return Action::Continue;
        }
        if self.streamed {
            let chunk = self
                .get_http_response_body(0, body_size)
                .unwrap_or_default();
            self.scan.feed(&chunk);
            if self.stopped {
                // What the model still sends is counted, not forwarded.
                self.set_http_response_body(0, body_size, b"");
            } else if self.state.budgets.config().stop_streams_over_budget && !self.stream_covered()
            {
                self.stopped = true;
                self.state.metrics.streams_stopped.add(1);
                let event = self.stop_event();
                self.set_http_response_body(0, body_size, &event);
            }
        } else if self.answer.is_some() {
            // Copied as it passes rather than buffered by the proxy (Envoy's buffer is smaller
            // than the answers this reads); past the bound the estimate stands.
            let chunk = self
                .get_http_response_body(0, body_size)
                .unwrap_or_default();
            let bound = self.state.budgets.config().max_response_body_bytes;
            let answer = self.answer.as_mut().expect("checked above");
            if answer.len() + chunk.len() > bound {
                self.answer = None;
            } else {
                answer.extend_from_slice(&chunk);
                if end_of_stream {
                    self.usage = Usage::of_answer(answer);
                }
            }
        }
        // Settled before the end reaches the client, so its next request sees the settlement.
        if end_of_stream {
            self.settle();
        }
        Action::Continue
    }

    fn on_log(&mut self) {
        // A request that ended early (the client went away, the stream was reset) settles here.
        self.settle();
    }
}

impl TokensRequest {
    /// Whether the stream so far fits its reservation, growing it (by at least a tenth of the
    /// reservation, so not on every chunk) when the budgets can cover more.
    fn stream_covered(&mut self) -> bool {
        let prompt = self.request.as_ref().map_or(0, |r| r.prompt_tokens);
        let used = prompt + self.scan.completion_estimate();
        let Some(reservation) = self.reservation.as_mut() else {
            return true;
        };
        if used <= reservation.tokens {
            return true;
        }
        let needed = used - reservation.tokens;
        let step = needed.max(reservation.tokens / 10);
        self.state
            .budgets
            .extend(reservation, step, &HostSharedData)
            || self
                .state
                .budgets
                .extend(reservation, needed, &HostSharedData)
    }

    /// The request id the client sent or the proxy gave (from the headers' copy).
    fn request_id(&self) -> Option<String> {
        self.headers
            .as_ref()
            .and_then(|h| h.header(gateway_contract::headers::REQUEST_ID))
    }

    /// The stream's last words: an error chunk in the gateway's shape (OpenAI's clients raise it)
    /// and the end mark.
    fn stop_event(&self) -> Vec<u8> {
        let request_id = self.request_id();
        let body = error_body(
            429,
            "token_budget_exceeded",
            "the answer outgrew its token budget and was stopped",
            request_id.as_deref(),
        );
        let mut event = b"data: ".to_vec();
        event.extend_from_slice(&body);
        event.extend_from_slice(b"\n\ndata: [DONE]\n\n");
        event
    }

    /// Settles the reservation, once: at the reported usage, at nothing when no successful
    /// answer came, else at an estimate.
    fn settle(&mut self) {
        let Some(reservation) = self.reservation.take() else {
            return;
        };
        let metrics = &self.state.metrics;
        let prompt = self.request.as_ref().map_or(0, |r| r.prompt_tokens);
        let actual = if !self.answered || self.upstream_failed {
            0
        } else if let Some(usage) = self.usage.or(self.scan.usage()) {
            metrics.prompt.add(usage.prompt_tokens);
            metrics.completion.add(usage.completion_tokens);
            self.count_usage(usage);
            usage.total()
        } else {
            // No usage: a stream that broke or never reported it is counted from its text; an
            // unreadable JSON answer keeps its estimate.
            metrics.estimated.add(1);
            if self.streamed {
                prompt + self.scan.completion_estimate()
            } else {
                reservation.tokens
            }
        };
        metrics
            .refunded
            .add(reservation.tokens.saturating_sub(actual));
        let created =
            self.state
                .budgets
                .settle(&reservation, actual, &HostSharedData, now().as_secs());
        self.state.track(created.iter().map(String::as_str));
    }

    /// Adds a reported usage to its identity's and model's counters.
    fn count_usage(&self, usage: Usage) {
        let config = self.state.budgets.config();
        if config.max_usage_series == 0 {
            return;
        }
        let identity = self
            .headers
            .as_ref()
            .and_then(|h| h.header(&config.identity_header))
            .unwrap_or_default();
        let model = self.request.as_ref().and_then(|r| r.model.as_deref());
        let mut series = self.state.usage.borrow_mut();
        let &(prompt, completion) = series.get(&identity, model.unwrap_or_default(), |labels| {
            (
                Counter::define(&format!("ai_tokens_prompt_tokens{labels}")),
                Counter::define(&format!("ai_tokens_completion_tokens{labels}")),
            )
        });
        prompt.add(usage.prompt_tokens);
        completion.add(usage.completion_tokens);
    }

    /// Answers the request with the gateway's JSON error and `headers`.
    fn refuse(
        &mut self,
        status: u32,
        code: &str,
        message: &str,
        mut headers: Vec<(String, String)>,
    ) -> Action {
        let request_id = self.request_id();
        let body = error_body(status as u16, code, message, request_id.as_deref());
        headers.push(("content-type".into(), "application/json".into()));
        self.send_http_response(
            status,
            headers
                .iter()
                .map(|(n, v)| (n.as_str(), v.as_str()))
                .collect(),
            Some(&body),
        );
        Action::Pause
    }
}

/// OpenAI's `x-ratelimit-*-tokens` headers for the tightest budget.
fn report_headers(report: Report) -> Vec<(String, String)> {
    vec![
        ("x-ratelimit-limit-tokens".into(), report.limit.to_string()),
        (
            "x-ratelimit-remaining-tokens".into(),
            report.remaining.to_string(),
        ),
        (
            "x-ratelimit-reset-tokens".into(),
            format!("{}s", report.reset_seconds),
        ),
    ]
}

/// The request as its headers phase saw it.
struct Snapshot<'a>(&'a HeaderSnapshot);

impl RequestFacts for Snapshot<'_> {
    fn header(&self, name: &str) -> Option<String> {
        self.0.header(name)
    }
}
