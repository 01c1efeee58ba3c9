//! proxy-wasm shell of the semantic-cache filter.
//!
//! Request: a POST's headers go on at once (as in ai-tokens: Envoy would hold the body too while
//! they wait) and its body is buffered to its end. An exact repeat is answered from shared data at
//! once; otherwise the request waits for the vector service's look-up (bounded by its timeout),
//! then is answered from the first similar question whose answer is still stored, or goes upstream
//! as a miss. Response: a miss's answer is copied as it passes (not held) and stored once it has
//! ended whole.

use crate::answer::{Answer, StreamAssembly};
use crate::config::{IndexConfig, SemanticCacheConfig};
use crate::entry::{expire, shared_key, Entry};
use crate::index;
use crate::request::{client_opt_out, verified_caller, Bypass, CacheKeys, ChatQuery};
use filter_common::host::{now, property, request_headers, Counter, HostSharedData};
use filter_common::sweep::{Sweep, KEYS_PER_TICK};
use filter_common::{header_text, HeaderSnapshot, SharedStore};
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};
use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

/// How often the root context deletes expired answers this VM stored.
const SWEEP_PERIOD: Duration = Duration::from_secs(5);
/// Largest look-up answer read (eight matches take under 1 KiB).
const MAX_LOOKUP_ANSWER_BYTES: usize = 64 * 1024;
/// Most answer keys one VM remembers for expiry.
const MAX_TRACKED_KEYS: usize = 65_536;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(CacheRoot { state: None }) });
}}

/// Counters (`wasm_semantic_cache_*` in our proxy, `wasmcustom.semantic_cache_*` in Envoy).
struct Metrics {
    exact_hits: Counter,
    semantic_hits: Counter,
    misses: Counter,
    bypasses: Counter,
    stored: Counter,
    lookup_failures: Counter,
    tokens_saved: Counter,
}

impl Metrics {
    fn define() -> Self {
        Self {
            exact_hits: Counter::define("semantic_cache_exact_hits_total"),
            semantic_hits: Counter::define("semantic_cache_semantic_hits_total"),
            misses: Counter::define("semantic_cache_misses_total"),
            bypasses: Counter::define("semantic_cache_bypasses_total"),
            stored: Counter::define("semantic_cache_stored_total"),
            lookup_failures: Counter::define("semantic_cache_lookup_failures_total"),
            tokens_saved: Counter::define("semantic_cache_tokens_saved_total"),
        }
    }
}

struct FilterState {
    config: SemanticCacheConfig,
    stored: RefCell<Sweep>,
    metrics: Metrics,
}

struct CacheRoot {
    state: Option<Rc<FilterState>>,
}

impl Context for CacheRoot {}

impl RootContext for CacheRoot {
    fn on_configure(&mut self, _size: usize) -> bool {
        let bytes = self.get_plugin_configuration().unwrap_or_default();
        let config = match SemanticCacheConfig::from_json(&bytes) {
            Ok(config) => config,
            Err(err) => {
                log::error!("semantic-cache: invalid plugin configuration: {err}");
                return false;
            }
        };
        match &config.index {
            Some(index) => log::info!(
                "semantic-cache: exact and similar questions (cluster {:?}, similarity >= {})",
                index.cluster,
                index.min_similarity
            ),
            None => log::info!("semantic-cache: exact repeats only (no index configured)"),
        }
        self.state = Some(Rc::new(FilterState {
            config,
            stored: RefCell::new(Sweep::new(MAX_TRACKED_KEYS)),
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
        state
            .stored
            .borrow_mut()
            .tick(KEYS_PER_TICK, |key| expire(&HostSharedData, key, now));
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(CacheRequest {
            state: self.state.clone()?,
            request: None,
            status: None,
            lookup: None,
            store_under: None,
            recorder: None,
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

/// What the response's `x-cache` says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CacheStatus {
    Hit,
    Miss,
    Bypass,
}

/// A POST as its headers phase saw it.
struct PostRequest {
    headers: HeaderSnapshot,
    route: String,
    path: String,
    /// The body has been read (or given up on).
    decided: bool,
}

/// A look-up in flight.
struct Lookup {
    token: u32,
    query: ChatQuery,
    keys: CacheKeys,
}

/// A miss's answer as it passes.
enum Recorder {
    Json(Vec<u8>),
    Stream(StreamAssembly, usize),
}

struct CacheRequest {
    state: Rc<FilterState>,
    request: Option<PostRequest>,
    status: Option<CacheStatus>,
    lookup: Option<Lookup>,
    /// Where a miss's answer goes once it has ended whole.
    store_under: Option<CacheKeys>,
    recorder: Option<Recorder>,
}

impl Context for CacheRequest {
    fn on_http_call_response(&mut self, token: u32, _: usize, body_size: usize, _: usize) {
        let Some(lookup) = self.lookup.take_if(|l| l.token == token) else {
            return;
        };
        let index = self.index_config();
        let status = self
            .get_http_call_response_header_bytes(":status")
            .map(header_text);
        let body = self.get_http_call_response_body(0, body_size.min(MAX_LOOKUP_ANSWER_BYTES));
        let found = match (status.as_deref(), &body) {
            (Some("200"), Some(body)) if body_size <= MAX_LOOKUP_ANSWER_BYTES => {
                index::matches(body, index.candidates, index.min_similarity)
            }
            _ => None,
        };
        match found {
            Some(found) => {
                for candidate in found {
                    if let Some(entry) = self.stored(&candidate.key, &lookup.keys.partition) {
                        self.state.metrics.semantic_hits.add(1);
                        self.serve(&entry, &lookup.query, &lookup.keys, candidate.similarity);
                        return;
                    }
                }
            }
            None => {
                self.state.metrics.lookup_failures.add(1);
                // The service's error says what it refused (its first bytes are enough).
                let said =
                    body.map(|b| String::from_utf8_lossy(&b[..b.len().min(256)]).into_owned());
                log::warn!(
                    "semantic-cache: look-up failed ({}); the request goes upstream",
                    match status {
                        Some(status) => format!("status {status}: {}", said.unwrap_or_default()),
                        None => "no answer: timeout or unreachable cluster".into(),
                    }
                );
            }
        }
        self.miss(lookup.keys);
        self.resume_http_request();
    }
}

impl HttpContext for CacheRequest {
    fn on_http_request_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        let headers = request_headers();
        if end_of_stream || headers.header(":method").as_deref() != Some("POST") {
            return Action::Continue; // nothing the cache answers
        }
        let path = headers.header(":path").unwrap_or_default();
        let path = path.split('?').next().unwrap_or_default().to_owned();
        let route = property(&["xds", "route_name"]).unwrap_or_default();
        self.request = Some(PostRequest {
            headers,
            route,
            path,
            decided: false,
        });
        Action::Continue
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        let Some(request) = self.request.as_mut().filter(|r| !r.decided) else {
            return Action::Continue;
        };
        if body_size > self.state.config.max_request_body_bytes {
            request.decided = true;
            return self.bypass(Bypass::BodyTooLarge);
        }
        if !end_of_stream {
            return Action::Pause;
        }
        request.decided = true;
        let body = self.get_http_request_body(0, body_size).unwrap_or_default();
        match self.look_up(&body) {
            Ok(action) => action,
            Err(reason) => self.bypass(reason),
        }
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let label = match self.status {
            None | Some(CacheStatus::Hit) => return Action::Continue,
            Some(CacheStatus::Miss) => "MISS",
            Some(CacheStatus::Bypass) => "BYPASS",
        };
        self.set_http_response_header("x-cache", Some(label));
        if self.store_under.is_none() {
            return Action::Continue;
        }
        let status = self.get_http_response_header(":status");
        let content_type = self
            .get_http_response_header("content-type")
            .unwrap_or_default();
        // Only a success is kept; what it is made of is checked as it passes.
        self.recorder = match status.as_deref() {
            Some("200") if content_type.starts_with("application/json") => {
                Some(Recorder::Json(Vec::new()))
            }
            Some("200") if content_type.starts_with("text/event-stream") => {
                Some(Recorder::Stream(StreamAssembly::default(), 0))
            }
            _ => None,
        };
        Action::Continue
    }

    fn on_http_response_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        if self.recorder.is_none() {
            return Action::Continue;
        }
        let chunk = self
            .get_http_response_body(0, body_size)
            .unwrap_or_default();
        let bound = self.state.config.max_answer_bytes;
        let within = match self.recorder.as_mut().expect("checked above") {
            Recorder::Json(body) => {
                body.extend_from_slice(&chunk);
                body.len() <= bound
            }
            Recorder::Stream(assembly, seen) => {
                *seen += chunk.len();
                assembly.feed(&chunk);
                *seen <= bound
            }
        };
        if !within {
            self.recorder = None;
        } else if end_of_stream {
            let answer = match self.recorder.take().expect("checked above") {
                Recorder::Json(body) => Answer::from_json(&body),
                Recorder::Stream(assembly, _) => assembly.finish(),
            };
            if let (Some(answer), Some(keys)) = (answer, self.store_under.take()) {
                self.store(&keys, answer);
            }
        }
        Action::Continue
    }
}

impl CacheRequest {
    fn index_config(&self) -> &IndexConfig {
        self.state
            .config
            .index
            .as_ref()
            .expect("a look-up is only made with an index")
    }

    /// Answers from cache, starts a look-up, or lets the request go upstream as a miss.
    fn look_up(&mut self, body: &[u8]) -> Result<Action, Bypass> {
        let config = &self.state.config;
        let request = self.request.as_ref().expect("a POST");
        let caller = verified_caller(config, &request.headers).ok_or(Bypass::NoVerifiedCaller)?;
        let query = ChatQuery::parse(body, config.context_messages)?;
        let keys = query.keys(&config.namespace, &caller, &request.route, &request.path);
        let (no_cache, no_store) = client_opt_out(&request.headers);
        if no_cache || no_store {
            // A fresh answer may still be kept for later, unless the client says not to.
            if !no_store {
                self.store_under = Some(keys);
            }
            return Err(Bypass::ClientOptOut);
        }
        if let Some(entry) = self.stored(&keys.question, &keys.partition) {
            self.state.metrics.exact_hits.add(1);
            return Ok(self.serve(&entry, &query, &keys, 1.0));
        }
        let text = query.text();
        let Some(index) = config
            .index
            .as_ref()
            .filter(|i| !text.trim().is_empty() && text.chars().count() <= i.max_text_chars)
        else {
            self.miss(keys);
            return Ok(Action::Continue);
        };
        let body = index::lookup_body(
            &keys.partition,
            &keys.question,
            &text,
            index.min_similarity,
            index.candidates,
            config.ttl_seconds,
        );
        let authorization = format!("Bearer {}", index.token.expose());
        let request_id = self.request_id().unwrap_or_default();
        let dispatched = self.dispatch_http_call(
            &index.cluster,
            vec![
                (":method", "POST"),
                (":path", &index.path),
                (":authority", index.authority()),
                ("content-type", "application/json"),
                ("authorization", &authorization),
                (gateway_contract::headers::REQUEST_ID, &request_id),
            ],
            Some(&body),
            vec![],
            Duration::from_millis(index.timeout_ms),
        );
        match dispatched {
            Ok(token) => {
                self.lookup = Some(Lookup { token, query, keys });
                Ok(Action::Pause)
            }
            Err(status) => {
                self.state.metrics.lookup_failures.add(1);
                log::warn!(
                    "semantic-cache: cannot call cluster {:?}: {status:?}; the request goes upstream",
                    index.cluster
                );
                self.miss(keys);
                Ok(Action::Continue)
            }
        }
    }

    fn bypass(&mut self, reason: Bypass) -> Action {
        log::debug!("semantic-cache: bypassed: {}", reason.as_str());
        self.state.metrics.bypasses.add(1);
        self.status = Some(CacheStatus::Bypass);
        Action::Continue
    }

    fn miss(&mut self, keys: CacheKeys) {
        self.state.metrics.misses.add(1);
        self.status = Some(CacheStatus::Miss);
        self.store_under = Some(keys);
    }

    /// The stored answer under question key `question`, if it serves `partition` now.
    fn stored(&self, question: &str, partition: &str) -> Option<Entry> {
        let (value, _) = HostSharedData.get(&shared_key(question));
        let entry = Entry::decode(&value?)?;
        entry.serves(partition, now().as_secs()).then_some(entry)
    }

    /// Answers the request from `entry`, framed as the request asks.
    fn serve(
        &mut self,
        entry: &Entry,
        query: &ChatQuery,
        keys: &CacheKeys,
        similarity: f64,
    ) -> Action {
        self.state.metrics.tokens_saved.add(entry.answer.tokens());
        self.status = Some(CacheStatus::Hit);
        self.store_under = None;
        let now = now().as_secs();
        let id = format!("chatcmpl-cache-{}", &keys.question[..24]);
        let mut entry = entry.clone();
        if entry.answer.model.is_empty() {
            // An upstream that named no model answered the one asked for.
            entry.answer.model.clone_from(&query.model);
        }
        let (content_type, body) = if query.stream {
            (
                "text/event-stream",
                entry.event_stream(&id, now, query.include_usage),
            )
        } else {
            ("application/json", entry.json_body(&id, now))
        };
        let similarity = format!("{similarity:.4}");
        let age = now.saturating_sub(entry.stored_at).to_string();
        self.send_http_response(
            200,
            vec![
                ("content-type", content_type),
                ("x-cache", "HIT"),
                ("x-cache-similarity", &similarity),
                ("age", &age),
            ],
            Some(&body),
        );
        Action::Pause
    }

    fn store(&self, keys: &CacheKeys, answer: Answer) {
        let now = now().as_secs();
        let entry = Entry {
            partition: keys.partition.clone(),
            stored_at: now,
            expires_at: now + self.state.config.ttl_seconds,
            answer,
        };
        let key = shared_key(&keys.question);
        if HostSharedData.set(&key, &entry.encode(), 0) {
            self.state.metrics.stored.add(1);
            self.state.stored.borrow_mut().insert(&key);
        }
    }

    fn request_id(&self) -> Option<String> {
        self.request
            .as_ref()?
            .headers
            .header(gateway_contract::headers::REQUEST_ID)
    }
}
