//! proxy-wasm shell of the cache filter.
//!
//! Request side: plan, key (after the body for POST), lookup; a fresh entry is answered locally
//! (`X-Cache: HIT`). A miss goes upstream; concurrent misses for the same key in this VM wait
//! for the first one and are then answered from the entry it stored. Response side: a storable
//! response is copied as it streams by and stored at its end; a 5xx replaced by a stale entry
//! within its `stale-if-error` window (`X-Cache: STALE`).

use crate::cache::{response_status, Cache, Plan, RequestFacts};
use crate::config::CacheConfig;
use crate::entry::{Entry, Freshness};
use filter_common::host::{now, request_header, request_headers, HostSharedData};
use filter_common::sweep::{Sweep, KEYS_PER_TICK};
use filter_common::HeaderSnapshot;
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel, MetricType};
use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::rc::Rc;
use std::time::Duration;

/// How often the root context deletes expired entries this VM stored (a bounded number per tick).
const SWEEP_PERIOD: Duration = Duration::from_secs(5);
/// Most entry keys one VM remembers for expiry.
const MAX_TRACKED_KEYS: usize = 65_536;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(CacheRoot { state: None }) });
}}

struct FilterState {
    cache: Cache,
    /// Keys with a miss on its way upstream → requests waiting for it.
    in_flight: RefCell<HashMap<String, Vec<u32>>>,
    /// Keys stored by this VM, for expiry.
    stored: RefCell<Sweep>,
    /// Waiting requests another request answered from cache (their response is our reply).
    answered: RefCell<HashSet<u32>>,
    /// Responses by how the cache took part, as `X-Cache` says.
    outcomes: OutcomeMetrics,
}

/// Counters of responses by their `X-Cache` value (`cache_hits_total`, `cache_misses_total`,
/// `cache_stale_total`, `cache_bypassed_total`), for a hit ratio; `None` if the host refused one.
struct OutcomeMetrics {
    hits: Option<u32>,
    misses: Option<u32>,
    stale: Option<u32>,
    bypassed: Option<u32>,
}

impl OutcomeMetrics {
    fn define() -> Self {
        let counter = |name| hostcalls::define_metric(MetricType::Counter, name).ok();
        Self {
            hits: counter("cache_hits_total"),
            misses: counter("cache_misses_total"),
            stale: counter("cache_stale_total"),
            bypassed: counter("cache_bypassed_total"),
        }
    }

    /// Counts one response labelled `label` (`HIT`, `MISS`, `STALE` or `BYPASS`).
    fn count(&self, label: &str) {
        let metric = match label {
            "HIT" => self.hits,
            "MISS" => self.misses,
            "STALE" => self.stale,
            _ => self.bypassed,
        };
        if let Some(id) = metric {
            let _ = hostcalls::increment_metric(id, 1);
        }
    }
}

struct CacheRoot {
    state: Option<Rc<FilterState>>,
}

impl Context for CacheRoot {}

impl RootContext for CacheRoot {
    fn on_configure(&mut self, _size: usize) -> bool {
        let bytes = self.get_plugin_configuration().unwrap_or_default();
        match CacheConfig::from_json(&bytes) {
            Ok(config) => {
                log::info!("cache: configured {} rule(s)", config.rules.len());
                self.state = Some(Rc::new(FilterState {
                    cache: Cache::new(config),
                    in_flight: RefCell::default(),
                    stored: RefCell::new(Sweep::new(MAX_TRACKED_KEYS)),
                    answered: RefCell::default(),
                    outcomes: OutcomeMetrics::define(),
                }));
                self.set_tick_period(SWEEP_PERIOD);
                true
            }
            Err(err) => {
                log::error!("cache: invalid plugin configuration: {err}");
                false
            }
        }
    }

    fn on_tick(&mut self) {
        let Some(state) = &self.state else {
            return;
        };
        let now = now().as_secs();
        state.stored.borrow_mut().tick(KEYS_PER_TICK, |key| {
            state.cache.expire(&HostSharedData, key, now)
        });
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        let state = self.state.clone()?;
        Some(Box::new(CacheRequest {
            context_id,
            state,
            plan: Plan::Skip,
            key: None,
            leader: false,
            stale: None,
            response: Response::Untouched,
            headers: None,
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

/// What the response side does.
enum Response {
    /// Nothing (not cacheable, or answered from cache).
    Untouched,
    /// Only label it (`X-Cache: MISS` or `BYPASS`).
    Label(&'static str),
    /// Copy it into a new entry.
    Capture(Entry),
    /// Replace the body with a stale entry's.
    ReplaceBody(Vec<u8>),
}

struct CacheRequest {
    context_id: u32,
    state: Rc<FilterState>,
    plan: Plan,
    key: Option<String>,
    /// This request's miss is the one others wait for.
    leader: bool,
    /// An entry past freshness that may stand in for a failed upstream.
    stale: Option<Entry>,
    response: Response,
    /// The request headers, kept when the key waits for the body.
    headers: Option<HeaderSnapshot>,
}

impl Context for CacheRequest {}

impl HttpContext for CacheRequest {
    fn on_http_request_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        self.plan = self.state.cache.plan(&CurrentRequest);
        match &self.plan {
            Plan::Skip => Action::Continue,
            Plan::Bypass => {
                self.response = Response::Label("BYPASS");
                Action::Continue
            }
            // The key needs the body. Pausing the headers would stop the body too (Envoy turns a
            // headers pause into StopAllIteration); the body phase buffers instead, and a hit
            // then replaces the request that has started upstream. Envoy lets a filter read the
            // request headers only until their phase continues, so the key's come from a copy.
            Plan::Use(plan) if plan.needs_body && !end_of_stream => {
                self.headers = Some(request_headers());
                Action::Continue
            }
            Plan::Use(_) => self.resolve(None),
        }
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        let Plan::Use(plan) = &self.plan else {
            return Action::Continue;
        };
        if !plan.needs_body || self.key.is_some() {
            return Action::Continue;
        }
        if body_size > self.state.cache.config().max_request_body_bytes {
            self.plan = Plan::Bypass;
            self.response = Response::Label("BYPASS");
            return Action::Continue;
        }
        if !end_of_stream {
            return Action::Pause;
        }
        let body = self.get_http_request_body(0, body_size).unwrap_or_default();
        self.resolve(Some(&body))
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let Plan::Use(plan) = &self.plan else {
            if let Response::Label(label) = self.response {
                self.set_http_response_header("x-cache", Some(label));
                self.state.outcomes.count(label);
            }
            return Action::Continue;
        };
        let answered_by_leader = self.state.answered.borrow_mut().remove(&self.context_id);
        if answered_by_leader || matches!(self.response, Response::Untouched) {
            self.state.outcomes.count("HIT");
            return Action::Continue; // our own HIT reply
        }
        // Bytes: the SDK's `String` accessor panics on values that are not UTF-8, which an
        // upstream can send. (Names are tokens; both hosts refuse others.)
        let headers = self.get_http_response_headers_bytes();
        let status = response_status(&headers);
        let now = now().as_secs();
        if status >= 500 {
            if let Some(entry) = self.stale.take() {
                let mut replaced = response_headers(&entry, "STALE", now);
                replaced.push((":status".into(), entry.status.to_string()));
                self.set_http_response_headers(
                    replaced
                        .iter()
                        .map(|(n, v)| (n.as_str(), v.as_str()))
                        .collect(),
                );
                self.response = Response::ReplaceBody(entry.body);
                self.state.outcomes.count("STALE");
                return Action::Continue;
            }
        }
        self.set_http_response_header("x-cache", Some("MISS"));
        self.state.outcomes.count("MISS");
        self.response = match self.state.cache.start_entry(plan, status, headers, now) {
            Some(entry) if self.key.is_some() => Response::Capture(entry),
            _ => Response::Label("MISS"),
        };
        Action::Continue
    }

    fn on_http_response_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        match &mut self.response {
            Response::ReplaceBody(body) => {
                if !end_of_stream {
                    return Action::Pause;
                }
                let body = std::mem::take(body);
                self.set_http_response_body(0, body_size, &body);
                self.response = Response::Untouched;
            }
            Response::Capture(_) => {
                let chunk = self
                    .get_http_response_body(0, body_size)
                    .unwrap_or_default();
                let max_entry_bytes = self.state.cache.config().max_entry_bytes;
                let Response::Capture(entry) = &mut self.response else {
                    unreachable!("matched above")
                };
                entry.body.extend_from_slice(&chunk);
                if entry.body.len() > max_entry_bytes {
                    self.response = Response::Label("MISS");
                    self.release_waiters();
                } else if end_of_stream {
                    let captured = std::mem::replace(&mut self.response, Response::Untouched);
                    if let (Response::Capture(entry), Some(key)) = (captured, self.key.as_deref()) {
                        self.store(key, &entry);
                    }
                    self.release_waiters();
                }
            }
            Response::Untouched | Response::Label(_) => {}
        }
        Action::Continue
    }

    fn on_log(&mut self) {
        // A leader that ended without storing (error, reset, not storable) lets its waiters go.
        self.release_waiters();
        self.state.answered.borrow_mut().remove(&self.context_id);
    }
}

impl CacheRequest {
    /// Computes the key, answers a fresh entry, or sends the request upstream as a miss
    /// (waiting behind a concurrent miss for the same key).
    fn resolve(&mut self, body: Option<&[u8]>) -> Action {
        let Plan::Use(plan) = &self.plan else {
            return Action::Continue;
        };
        let key = match &self.headers {
            Some(headers) => self.state.cache.key(&SnapshotRequest(headers), body),
            None => self.state.cache.key(&CurrentRequest, body),
        };
        let now = now().as_secs();
        let plan = plan.clone();
        self.response = Response::Label("MISS");
        if plan.lookup {
            if let Some(entry) = self.state.cache.lookup(&HostSharedData, &key, now) {
                if entry.freshness(now) == Freshness::Fresh {
                    answer_from_cache(&entry, now);
                    self.response = Response::Untouched;
                    return Action::Pause;
                }
                self.stale = Some(entry);
            }
        }
        self.key = Some(key.clone());
        if !plan.lookup || plan.head {
            return Action::Continue;
        }
        let mut in_flight = self.state.in_flight.borrow_mut();
        match in_flight.get_mut(&key) {
            Some(waiters) => {
                waiters.push(self.context_id);
                Action::Pause
            }
            None => {
                in_flight.insert(key, Vec::new());
                self.leader = true;
                Action::Continue
            }
        }
    }

    fn store(&self, key: &str, entry: &Entry) {
        if self.state.cache.store(&HostSharedData, key, entry) {
            self.state.stored.borrow_mut().insert(key);
        } else {
            log::info!("cache: response not stored (over the entry or total size limit)");
        }
    }

    /// Answers the requests that waited for this miss from the stored entry, or lets them go
    /// upstream themselves when there is none.
    fn release_waiters(&mut self) {
        if !self.leader {
            return;
        }
        self.leader = false;
        let Some(key) = &self.key else {
            return;
        };
        let waiters = self
            .state
            .in_flight
            .borrow_mut()
            .remove(key)
            .unwrap_or_default();
        let now = now().as_secs();
        let entry = self
            .state
            .cache
            .lookup(&HostSharedData, key, now)
            .filter(|e| e.freshness(now) == Freshness::Fresh);
        for waiter in waiters {
            if hostcalls::set_effective_context(waiter).is_err() {
                continue; // the waiting request is gone
            }
            match &entry {
                Some(entry) => {
                    self.state.answered.borrow_mut().insert(waiter);
                    answer_from_cache(entry, now);
                }
                None => {
                    let _ = hostcalls::resume_http_request();
                }
            }
        }
        let _ = hostcalls::set_effective_context(self.context_id);
    }
}

/// Sends `entry` as the response of the effective context. The waiting request's own response
/// phase sees it as a local reply and leaves it alone.
fn answer_from_cache(entry: &Entry, now: u64) {
    let headers = response_headers(entry, "HIT", now);
    let _ = hostcalls::send_http_response(
        u32::from(entry.status),
        headers
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_str()))
            .collect(),
        Some(&entry.body),
    );
}

fn response_headers(entry: &Entry, label: &str, now: u64) -> Vec<(String, String)> {
    let mut headers = entry.headers.clone();
    headers.push(("x-cache".into(), label.into()));
    headers.push(("age".into(), entry.age(now).to_string()));
    headers
}

/// The request of the effective context.
struct CurrentRequest;

impl RequestFacts for CurrentRequest {
    fn header(&self, name: &str) -> Option<String> {
        request_header(name)
    }
}

/// The request as its headers phase saw it.
struct SnapshotRequest<'a>(&'a HeaderSnapshot);

impl RequestFacts for SnapshotRequest<'_> {
    fn header(&self, name: &str) -> Option<String> {
        self.0.header(name)
    }
}
