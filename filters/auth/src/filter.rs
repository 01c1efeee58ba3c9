//! proxy-wasm shell of the auth filter: reads the request, asks [`Authenticator`], applies the
//! decision, and fetches remote JWKS for requests that wait on them.
//!
//! Fetches are dispatched from the root context (on its tick, which a waiting request shortens
//! to a millisecond), so their answer arrives even if the request that caused them is gone. The
//! root then decides for every request waiting on that provider (through
//! `set_effective_context`) and resumes or answers it. The SDK routes a callout's answer to the
//! context that was active when it was dispatched, hence the tick rather than a direct call.

use crate::config::RemoteJwks;
use crate::config::{AuthConfig, KeySource};
use crate::credentials::RequestView;
use crate::decision::{Authenticator, Decision};
use crate::jwks_cache::JwksCache;
use crate::keys::KeySet;
use filter_common::header_text;
use filter_common::host::{now, request_header};
use gateway_contract::error_body;
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel, MapType};
use std::cell::RefCell;
use std::collections::{BTreeSet, HashMap};
use std::rc::Rc;
use std::time::Duration;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|context_id| -> Box<dyn RootContext> {
        Box::new(AuthRoot { context_id, state: None })
    });
}}

/// Per-VM state shared by the root context and the requests.
struct FilterState {
    authenticator: Authenticator,
    jwks: RefCell<JwksCache>,
    /// Requests paused until provider `n`'s keys arrive.
    waiting: RefCell<HashMap<usize, Vec<u32>>>,
    /// Running fetches: callout token → provider.
    fetches: RefCell<HashMap<u32, usize>>,
    /// Providers whose keys requests are waiting for, to fetch on the next tick.
    wanted: RefCell<BTreeSet<usize>>,
}

/// Tick period while remote keys exist: how often lifetimes are checked for a refresh.
const KEY_CHECK_PERIOD: Duration = Duration::from_secs(1);
/// Tick period right after a request asked for keys.
const FETCH_SOON: Duration = Duration::from_millis(1);

struct AuthRoot {
    context_id: u32,
    state: Option<Rc<FilterState>>,
}

impl Context for AuthRoot {
    fn on_http_call_response(&mut self, token: u32, _: usize, body_size: usize, _: usize) {
        let Some(state) = self.state.clone() else {
            return;
        };
        let Some(provider) = state.fetches.borrow_mut().remove(&token) else {
            return;
        };
        let name = &state.authenticator.providers()[provider].name;
        let status = self
            .get_http_call_response_header_bytes(":status")
            .map(header_text);
        let result = match status.as_deref() {
            Some("200") => self
                .get_http_call_response_body(0, body_size)
                .ok_or_else(|| "empty body".to_string())
                .and_then(|body| serde_json::from_slice(&body).map_err(|e| e.to_string()))
                .and_then(|jwks| KeySet::from_jwks(&jwks)),
            Some(other) => Err(format!("status {other}")),
            None => Err("no response (timeout or unreachable cluster)".into()),
        };
        match &result {
            Ok(keys) => log::info!(
                "auth-filter: provider {name:?}: fetched {} key(s)",
                keys.len()
            ),
            Err(e) => log::warn!("auth-filter: provider {name:?}: JWKS fetch failed: {e}"),
        }
        state
            .jwks
            .borrow_mut()
            .finish_fetch(provider, result, now_seconds());
        self.answer_waiting(&state, provider);
    }
}

impl AuthRoot {
    fn has_remote_keys(&self) -> bool {
        self.state.as_ref().is_some_and(|state| {
            state
                .authenticator
                .providers()
                .iter()
                .any(|p| p.static_keys.is_none())
        })
    }
}

impl RootContext for AuthRoot {
    fn on_configure(&mut self, _size: usize) -> bool {
        let bytes = self.get_plugin_configuration().unwrap_or_default();
        let authenticator = match AuthConfig::from_json(&bytes).and_then(Authenticator::new) {
            Ok(authenticator) => authenticator,
            Err(err) => {
                log::error!("auth-filter: invalid plugin configuration: {err}");
                return false;
            }
        };
        let config = authenticator.config();
        let remote_ttls = config
            .jwt
            .iter()
            .flat_map(|jwt| &jwt.providers)
            .map(|p| match &p.keys {
                KeySource::RemoteJwks(remote) => Some(remote.cache_seconds),
                _ => None,
            });
        let jwks = JwksCache::new(remote_ttls);
        log::info!(
            "auth-filter: configured: {} API key(s), {} JWT provider(s), {} rule(s)",
            config.api_key.as_ref().map_or(0, |k| k.keys.len()),
            authenticator.providers().len(),
            config.rules.len()
        );
        self.state = Some(Rc::new(FilterState {
            authenticator,
            jwks: RefCell::new(jwks),
            waiting: RefCell::default(),
            fetches: RefCell::default(),
            wanted: RefCell::default(),
        }));
        if self.has_remote_keys() {
            self.set_tick_period(KEY_CHECK_PERIOD);
        }
        true
    }

    fn on_tick(&mut self) {
        let Some(state) = self.state.clone() else {
            return;
        };
        let now = now_seconds();
        let mut due = std::mem::take(&mut *state.wanted.borrow_mut());
        due.extend(
            (0..state.authenticator.providers().len())
                .filter(|&i| state.jwks.borrow().is_stale(i, now)),
        );
        for provider in due {
            self.fetch_keys(&state, provider, now);
        }
        self.set_tick_period(KEY_CHECK_PERIOD);
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        let state = self.state.clone()?;
        Some(Box::new(AuthRequest { context_id, state }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct AuthRequest {
    context_id: u32,
    state: Rc<FilterState>,
}

impl Context for AuthRequest {}

impl HttpContext for AuthRequest {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        // A client must never be able to choose its own identity.
        for header in self.state.authenticator.identity_headers() {
            self.set_http_request_header(header, None);
        }
        decide(&self.state, self.context_id)
    }
}

/// Decides on the request of the effective context and applies the decision. Returns `Pause`
/// when the request was answered or waits for keys.
fn decide(state: &FilterState, context_id: u32) -> Action {
    let decision =
        state
            .authenticator
            .authenticate(&CurrentRequest, now_seconds(), &state.jwks.borrow());
    match decision {
        Decision::Allow(allow) => {
            for header in &allow.remove_headers {
                set_header(header, None);
            }
            if let Some(path) = &allow.rewritten_path {
                set_header(":path", Some(path));
            }
            for (name, value) in &allow.set_headers {
                set_header(name, Some(value));
            }
            Action::Continue
        }
        Decision::Deny(denial) => {
            let request_id = CurrentRequest.header(gateway_contract::headers::REQUEST_ID);
            let body = error_body(
                denial.status,
                denial.code,
                &denial.message,
                request_id.as_deref(),
            );
            let _ = hostcalls::send_http_response(
                u32::from(denial.status),
                vec![
                    ("content-type", "application/json"),
                    ("www-authenticate", &denial.www_authenticate),
                ],
                Some(&body),
            );
            Action::Pause
        }
        Decision::NeedKeys(provider) => {
            state
                .waiting
                .borrow_mut()
                .entry(provider)
                .or_default()
                .push(context_id);
            state.wanted.borrow_mut().insert(provider);
            let _ = hostcalls::set_tick_period(FETCH_SOON);
            Action::Pause
        }
    }
}

impl AuthRoot {
    /// Dispatches a JWKS fetch for `provider`, unless one is running.
    fn fetch_keys(&self, state: &FilterState, provider: usize, now: u64) {
        if !state.jwks.borrow_mut().start_fetch(provider, now) {
            return;
        }
        let remote = remote_jwks(state, provider);
        let authority = remote.authority.as_deref().unwrap_or(&remote.cluster);
        let dispatched = self.dispatch_http_call(
            &remote.cluster,
            vec![
                (":method", "GET"),
                (":path", &remote.path),
                (":authority", authority),
                ("accept", "application/json"),
            ],
            None,
            vec![],
            Duration::from_millis(remote.timeout_ms),
        );
        match dispatched {
            Ok(token) => {
                state.fetches.borrow_mut().insert(token, provider);
            }
            Err(status) => {
                let name = &state.authenticator.providers()[provider].name;
                log::warn!(
                    "auth-filter: provider {name:?}: cannot call cluster {:?}: {status:?}",
                    remote.cluster
                );
                state
                    .jwks
                    .borrow_mut()
                    .finish_fetch(provider, Err("dispatch failed".into()), now);
                self.answer_waiting(state, provider);
            }
        }
    }

    /// Decides again for every request waiting on `provider`'s keys.
    fn answer_waiting(&self, state: &FilterState, provider: usize) {
        let waiting = state
            .waiting
            .borrow_mut()
            .remove(&provider)
            .unwrap_or_default();
        for context_id in waiting {
            // A request that ended meanwhile is no longer a valid context.
            if hostcalls::set_effective_context(context_id).is_ok()
                && decide(state, context_id) == Action::Continue
            {
                let _ = hostcalls::resume_http_request();
            }
        }
        let _ = hostcalls::set_effective_context(self.context_id);
    }
}

fn remote_jwks(state: &FilterState, provider: usize) -> &RemoteJwks {
    let jwt = state.authenticator.config().jwt.as_ref();
    match jwt.map(|jwt| &jwt.providers[provider].keys) {
        Some(KeySource::RemoteJwks(remote)) => remote,
        _ => unreachable!("only remote-JWKS providers wait for keys"),
    }
}

/// The request of the effective context, read through host calls.
struct CurrentRequest;

impl RequestView for CurrentRequest {
    fn header(&self, name: &str) -> Option<String> {
        request_header(name)
    }
    fn path(&self) -> String {
        self.header(":path").unwrap_or_default()
    }
    fn method(&self) -> String {
        self.header(":method").unwrap_or_default()
    }
}

fn set_header(name: &str, value: Option<&str>) {
    let _ = hostcalls::set_map_value(MapType::HttpRequestHeaders, name, value);
}

fn now_seconds() -> u64 {
    now().as_secs()
}
