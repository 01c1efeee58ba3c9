//! Cache decisions and storage, independent of proxy-wasm: which requests use the cache, their
//! keys, which responses are stored, and entries in shared data within a byte budget.

use crate::cache_control::CacheControl;
use crate::config::CacheConfig;
use crate::entry::{Entry, Freshness};
use filter_common::{is_malformed, SharedStore};
use sha2::{Digest, Sha256};

/// Prefix of every entry key in shared data.
pub const KEY_PREFIX: &str = "cache|";
/// The shared-data key holding the bytes all entries use.
pub const USAGE_KEY: &str = "cache-usage";
/// Attempts at updating the usage counter before giving up on storing.
const MAX_CAS_ATTEMPTS: usize = 32;

/// Response headers never stored: framing, hop-by-hop, and per-response values.
const UNSTORED_HEADERS: &[&str] = &[
    "connection",
    "keep-alive",
    "transfer-encoding",
    "content-length",
    "te",
    "trailer",
    "upgrade",
    "proxy-authenticate",
    "proxy-connection",
    "age",
    "x-cache",
    gateway_contract::headers::REQUEST_ID,
    "set-cookie",
];

/// What the request side reads.
pub trait RequestFacts {
    /// A request header (lowercase name); pseudo-headers `:method`, `:path`, `:authority` too.
    /// Invalid UTF-8 arrives as U+FFFD (`filter_common::header_text`).
    fn header(&self, name: &str) -> Option<String>;
}

/// How a request uses the cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// Not cacheable: no rule applies. The response is untouched.
    Skip,
    /// Cacheable, but this request must go upstream and its response not be stored.
    Bypass,
    /// Use the cache.
    Use(Use),
}

/// A cacheable request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Use {
    /// Index of the matching rule.
    pub rule: usize,
    /// Look the key up (false when the client sent `no-cache`: refresh the entry).
    pub lookup: bool,
    /// The key includes the request body (POST): wait for it.
    pub needs_body: bool,
    /// A HEAD request: served from the GET entry, never stored.
    pub head: bool,
    /// The request carried `Authorization` or an identity header the auth filter set.
    pub authorized: bool,
    /// The key includes an identity or tenant header the request carries: it separates callers.
    pub partitioned: bool,
}

/// A configured cache.
pub struct Cache {
    config: CacheConfig,
}

impl Cache {
    /// A cache with validated configuration.
    pub fn new(config: CacheConfig) -> Self {
        Self { config }
    }

    /// The configuration.
    pub fn config(&self) -> &CacheConfig {
        &self.config
    }

    /// Decides how a request uses the cache.
    pub fn plan(&self, request: &dyn RequestFacts) -> Plan {
        let method = request.header(":method").unwrap_or_default();
        let path = request.header(":path").unwrap_or_default();
        let Some(rule) = self.config.rule_for(&method, &path) else {
            return Plan::Skip;
        };
        let config = &self.config;
        if config
            .unkeyed_headers
            .iter()
            .any(|h| request.header(h).is_some())
        {
            return Plan::Bypass;
        }
        // Every invalid byte sequence reads as the same U+FFFD text: two different values would
        // share one entry.
        let malformed = [":authority", ":path"]
            .iter()
            .copied()
            .chain(config.key_headers.iter().map(String::as_str))
            .chain(config.partition_headers.iter().map(String::as_str))
            .any(|h| request.header(h).is_some_and(|v| is_malformed(&v)));
        if malformed {
            return Plan::Bypass;
        }
        if let Some(bypass) = &config.bypass {
            let asked = request
                .header(&bypass.header)
                .is_some_and(|v| matches!(v.trim(), "1" | "true" | "yes"));
            let allowed = request
                .header(&bypass.scopes_header)
                .is_some_and(|s| s.split_whitespace().any(|s| s == bypass.scope));
            if asked && allowed {
                return Plan::Bypass;
            }
        }
        // A directive with invalid bytes matches none and is ignored.
        let cc = CacheControl::parse(&request.header("cache-control").unwrap_or_default());
        if cc.no_store {
            return Plan::Bypass;
        }
        let pragma_no_cache = request
            .header("pragma")
            .is_some_and(|p| p.to_ascii_lowercase().contains("no-cache"));
        // Identity headers the request carries, each read once.
        let identified: Vec<&String> = config
            .identity_headers
            .iter()
            .filter(|h| request.header(h).is_some())
            .collect();
        Plan::Use(Use {
            rule,
            lookup: !(cc.no_cache || cc.max_age == Some(0) || pragma_no_cache),
            needs_body: method == "POST",
            head: method == "HEAD",
            authorized: request.header("authorization").is_some() || !identified.is_empty(),
            partitioned: config
                .partition_headers
                .iter()
                .any(|h| identified.contains(&h)),
        })
    }

    /// The entry key of a request: method (HEAD shares GET's), authority, path with query, the
    /// key and partition headers, and a digest of the body when there is one.
    pub fn key(&self, request: &dyn RequestFacts, body: Option<&[u8]>) -> String {
        let mut hasher = Sha256::new();
        let mut part = |bytes: &[u8]| {
            hasher.update((bytes.len() as u64).to_le_bytes());
            hasher.update(bytes);
        };
        let method = request.header(":method").unwrap_or_default();
        part(if method == "HEAD" {
            b"GET"
        } else {
            method.as_bytes()
        });
        for pseudo in [":authority", ":path"] {
            part(request.header(pseudo).unwrap_or_default().as_bytes());
        }
        for name in self
            .config
            .key_headers
            .iter()
            .chain(&self.config.partition_headers)
        {
            part(name.as_bytes());
            match request.header(name) {
                Some(value) => part(format!("={value}").as_bytes()),
                None => part(b"!"),
            }
        }
        if let Some(body) = body {
            part(&Sha256::digest(body));
        }
        format!("{KEY_PREFIX}{}", hex::encode(hasher.finalize()))
    }

    /// The entry at `key` unless it has expired.
    pub fn lookup(&self, store: &dyn SharedStore, key: &str, now: u64) -> Option<Entry> {
        let bytes = store.get(key).0?;
        Entry::decode(&bytes).filter(|e| e.freshness(now) != Freshness::Expired)
    }

    /// Whether a response may be stored, and for how long: `(fresh, stale)` seconds.
    pub fn storable(
        &self,
        plan: &Use,
        status: u16,
        headers: &[(String, String)],
    ) -> Option<(u32, u32)> {
        if plan.head || !matches!(status, 200 | 203) {
            return None;
        }
        let header = |name: &str| {
            headers
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_str())
        };
        let cc = CacheControl::parse(header("cache-control").unwrap_or_default());
        if cc.no_store || cc.private || cc.no_cache || header("set-cookie").is_some() {
            return None;
        }
        if header("content-type").is_some_and(|t| t.starts_with("text/event-stream")) {
            return None;
        }
        // A response that varies on a header outside the key would be served to callers it
        // was not made for.
        if let Some(vary) = header("vary") {
            let keyed = |name: &str| {
                self.config
                    .key_headers
                    .iter()
                    .chain(&self.config.partition_headers)
                    .any(|k| k.eq_ignore_ascii_case(name))
            };
            if vary
                .split(',')
                .map(str::trim)
                .any(|v| v == "*" || !keyed(v))
            {
                return None;
            }
        }
        // What an identified caller received is shared only when the upstream marks it `public`,
        // or kept for that caller alone by a key partitioned by its identity or tenant.
        if plan.authorized && !plan.partitioned && !cc.public {
            return None;
        }
        let rule = &self.config.rules[plan.rule];
        let fresh = cc.shared_max_age().unwrap_or(rule.ttl_seconds);
        if fresh == 0 {
            return None;
        }
        let stale = cc.stale_if_error.unwrap_or(rule.stale_if_error_seconds);
        Some((clamp_u32(fresh), clamp_u32(stale)))
    }

    /// The entry a response starts (its body still to come) at `now`, if it may be stored. A
    /// response with a header value that is not UTF-8 is not: stored as text, it would come back
    /// altered.
    pub fn start_entry(
        &self,
        plan: &Use,
        status: u16,
        headers: Vec<(String, Vec<u8>)>,
        now: u64,
    ) -> Option<Entry> {
        let headers = headers
            .into_iter()
            .map(|(name, value)| Some((name, String::from_utf8(value).ok()?)))
            .collect::<Option<Vec<_>>>()?;
        let (fresh_seconds, stale_seconds) = self.storable(plan, status, &headers)?;
        Some(Entry {
            stored_at: now,
            fresh_seconds,
            stale_seconds,
            status,
            headers: stored_headers(headers),
            body: Vec::new(),
        })
    }

    /// Stores `entry` at `key` within the byte budget. Returns false when it does not fit.
    pub fn store(&self, store: &dyn SharedStore, key: &str, entry: &Entry) -> bool {
        let bytes = entry.encode();
        if entry.body.len() > self.config.max_entry_bytes {
            return false;
        }
        let previous = store.get(key).0.map_or(0, |v| v.len());
        let delta = bytes.len() as i64 - previous as i64;
        if !adjust_usage(store, delta, self.config.max_total_bytes) {
            return false;
        }
        if !store.set(key, &bytes, 0) {
            adjust_usage(store, -delta, usize::MAX);
            return false;
        }
        true
    }

    /// Deletes the entry at `key` if it has expired. Returns true when it is gone.
    pub fn expire(&self, store: &dyn SharedStore, key: &str, now: u64) -> bool {
        let (value, cas) = store.get(key);
        let Some(bytes) = value.filter(|v| !v.is_empty()) else {
            return true;
        };
        let expired = Entry::decode(&bytes).is_none_or(|e| e.freshness(now) == Freshness::Expired);
        if !expired {
            return false;
        }
        if store.set(key, b"", cas.unwrap_or(0)) {
            adjust_usage(store, -(bytes.len() as i64), usize::MAX);
            return true;
        }
        false
    }
}

/// A response's status from its `:status` header; 0 when absent or not a number.
pub fn response_status(headers: &[(String, Vec<u8>)]) -> u16 {
    headers
        .iter()
        .find(|(name, _)| name == ":status")
        .and_then(|(_, value)| std::str::from_utf8(value).ok()?.parse().ok())
        .unwrap_or(0)
}

/// Response headers worth storing.
pub fn stored_headers(headers: Vec<(String, String)>) -> Vec<(String, String)> {
    headers
        .into_iter()
        .filter(|(name, _)| {
            let name = name.to_ascii_lowercase();
            !name.starts_with(':')
                && !name.starts_with("x-envoy-")
                && !name.starts_with("ratelimit-")
                && !name.starts_with("x-ratelimit-")
                && !UNSTORED_HEADERS.contains(&name.as_str())
        })
        .collect()
}

/// Adds `delta` to the shared usage counter unless that would exceed `limit`.
fn adjust_usage(store: &dyn SharedStore, delta: i64, limit: usize) -> bool {
    for _ in 0..MAX_CAS_ATTEMPTS {
        let (value, cas) = store.get(USAGE_KEY);
        let current = value
            .and_then(|v| <[u8; 8]>::try_from(v.as_slice()).ok())
            .map_or(0, u64::from_le_bytes);
        let next = current.saturating_add_signed(delta);
        if delta > 0 && next > limit as u64 {
            return false;
        }
        if store.set(USAGE_KEY, &next.to_le_bytes(), cas.unwrap_or(0)) {
            return true;
        }
    }
    false
}

fn clamp_u32(seconds: u64) -> u32 {
    u32::try_from(seconds).unwrap_or(u32::MAX)
}
