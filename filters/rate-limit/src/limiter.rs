//! Applying the configured limits to a request: bucket keys, compare-and-swap updates in shared
//! data, and the most restrictive limit to report.

use crate::bucket::{decode, encode, BucketShape, Take};
use crate::config::{KeyConfig, LimitConfig, RateLimitConfig};
use filter_common::SharedStore;
use sha2::{Digest, Sha256};

/// Attempts at a compare-and-swap before giving up on a contended bucket (and letting the
/// request through: the limiter never fails a request for its own contention).
pub const MAX_CAS_ATTEMPTS: usize = 32;

/// Bucket keys longer than this are hashed, so a huge header cannot make a huge key.
const MAX_KEY_VALUE_BYTES: usize = 128;

/// Prefix of every bucket key in shared data.
pub const KEY_PREFIX: &str = "ratelimit|";

/// What the limiter reads from a request.
pub trait RequestFacts {
    /// A request header (lowercase name); invalid UTF-8 arrives as U+FFFD
    /// (`filter_common::header_text`).
    fn header(&self, name: &str) -> Option<String>;
    /// The client's address (`ip:port` or `[ip]:port`).
    fn client_address(&self) -> Option<String>;
    /// The matched route's name.
    fn route(&self) -> Option<String>;
    /// `:path`.
    fn path(&self) -> String;
}

/// One limit's state after this request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Report {
    /// The limit's `requests`.
    pub limit: u64,
    /// Requests left in the bucket.
    pub remaining: u64,
    /// Seconds until the bucket is full again.
    pub reset_seconds: u64,
}

/// The limiter's verdict on a request.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Verdict {
    /// The limit that refused the request, if one did.
    pub refused_by: Option<String>,
    /// Seconds until a refused request may be retried.
    pub retry_after_seconds: u64,
    /// The most restrictive limit (fewest remaining), for response headers.
    pub report: Option<Report>,
    /// Bucket keys written, for expiry.
    pub touched: Vec<String>,
}

/// A configured limiter.
pub struct Limiter {
    config: RateLimitConfig,
    shapes: Vec<BucketShape>,
}

impl Limiter {
    /// Builds the limiter from validated configuration.
    pub fn new(config: RateLimitConfig) -> Self {
        let shapes = config
            .limits
            .iter()
            .map(|l| BucketShape::new(l.requests, l.per.seconds(), l.capacity()))
            .collect();
        Self { config, shapes }
    }

    /// The configuration.
    pub fn config(&self) -> &RateLimitConfig {
        &self.config
    }

    /// Takes one request from every bucket that applies, at `now_ns`.
    pub fn check(
        &self,
        request: &dyn RequestFacts,
        store: &dyn SharedStore,
        now_ns: u64,
    ) -> Verdict {
        let path = request.path();
        let mut verdict = Verdict::default();
        for (limit, shape) in self.config.limits.iter().zip(&self.shapes) {
            if limit
                .path_prefix
                .as_ref()
                .is_some_and(|p| !path.starts_with(p.as_str()))
            {
                continue;
            }
            // A request without the key's value (no identity, say) is not counted by this limit.
            let Some(value) = self.key_value(limit, request) else {
                continue;
            };
            let key = bucket_key(&limit.name, &value);
            let (report, refused) = match take(store, &key, *shape, now_ns) {
                Some(Take::Allowed {
                    remaining,
                    reset_seconds,
                    ..
                }) => {
                    verdict.touched.push(key);
                    (
                        Report {
                            limit: limit.requests,
                            remaining,
                            reset_seconds,
                        },
                        None,
                    )
                }
                Some(Take::Refused {
                    retry_after_seconds,
                    reset_seconds,
                }) => (
                    Report {
                        limit: limit.requests,
                        remaining: 0,
                        reset_seconds,
                    },
                    Some(retry_after_seconds),
                ),
                None => {
                    log::warn!(
                        "rate-limit: bucket of limit {:?} too contended; request let through",
                        limit.name
                    );
                    continue;
                }
            };
            if verdict
                .report
                .is_none_or(|r| report.remaining < r.remaining)
            {
                verdict.report = Some(report);
            }
            if let Some(retry_after) = refused {
                if verdict.refused_by.is_none() {
                    verdict.refused_by = Some(limit.name.clone());
                }
                verdict.retry_after_seconds = verdict.retry_after_seconds.max(retry_after);
            }
        }
        verdict
    }

    /// The bucket a request counts against. Header values with invalid bytes all read as the
    /// same U+FFFD text, so they share one bucket per limit: conservative, since such callers
    /// limit each other rather than escape the limit.
    fn key_value(&self, limit: &LimitConfig, request: &dyn RequestFacts) -> Option<String> {
        let value = match &limit.key {
            KeyConfig::Identity => request.header(&self.config.identity_header)?,
            KeyConfig::Header(name) => request.header(name)?,
            KeyConfig::ApiKey(name) => hex::encode(Sha256::digest(request.header(name)?)),
            KeyConfig::ClientAddress => client_ip(&request.client_address()?).to_string(),
            KeyConfig::Route => request.route()?,
        };
        (!value.is_empty()).then_some(value)
    }
}

/// Takes one request from the bucket at `key`, retrying on CAS mismatch. `None` when the bucket
/// stayed contended for [`MAX_CAS_ATTEMPTS`].
fn take(store: &dyn SharedStore, key: &str, shape: BucketShape, now_ns: u64) -> Option<Take> {
    for _ in 0..MAX_CAS_ATTEMPTS {
        let (value, cas) = store.get(key);
        let tat = value.as_deref().and_then(decode);
        let outcome = shape.take(tat, now_ns);
        let Take::Allowed { tat: next, .. } = outcome else {
            return Some(outcome);
        };
        if store.set(key, &encode(next), cas.unwrap_or(0)) {
            return Some(outcome);
        }
    }
    None
}

/// The shared-data key of a limit's bucket for one key value.
pub fn bucket_key(limit: &str, value: &str) -> String {
    if value.len() > MAX_KEY_VALUE_BYTES {
        format!(
            "{KEY_PREFIX}{limit}|#{}",
            hex::encode(Sha256::digest(value))
        )
    } else {
        format!("{KEY_PREFIX}{limit}|{value}")
    }
}

/// Deletes the bucket at `key` if it has refilled completely (a full bucket is the same as none).
/// Returns true when the key is gone or was deleted, false while the bucket is still in use.
pub fn expire(store: &dyn SharedStore, key: &str, now_ns: u64) -> bool {
    let (value, cas) = store.get(key);
    match value.as_deref().and_then(decode) {
        None => true,
        Some(tat) if BucketShape::is_full(tat, now_ns) => store.set(key, b"", cas.unwrap_or(0)),
        Some(_) => false,
    }
}

/// The IP part of `ip:port` or `[ipv6]:port`.
fn client_ip(address: &str) -> &str {
    if let Some(rest) = address.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match address.rsplit_once(':') {
        Some((ip, port)) if !ip.contains(':') && port.bytes().all(|b| b.is_ascii_digit()) => ip,
        _ => address,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use filter_common::testing::MemoryStore as Store;
    use std::collections::HashMap;

    const SECOND: u64 = 1_000_000_000;

    struct Facts(HashMap<&'static str, &'static str>, &'static str);

    impl RequestFacts for Facts {
        fn header(&self, name: &str) -> Option<String> {
            self.0.get(name).map(|v| v.to_string())
        }
        fn client_address(&self) -> Option<String> {
            Some("10.0.0.7:51234".into())
        }
        fn route(&self) -> Option<String> {
            Some("rag".into())
        }
        fn path(&self) -> String {
            self.1.into()
        }
    }

    fn limiter(json: &str) -> Limiter {
        Limiter::new(RateLimitConfig::from_json(json.as_bytes()).unwrap())
    }

    #[test]
    fn the_tightest_limit_is_reported_and_any_refusal_refuses() {
        let limiter = limiter(
            r#"{"limits": [
                {"name": "user", "key": "identity", "requests": 5, "per": "second"},
                {"name": "tenant", "key": {"header": "x-tenant"}, "requests": 3, "per": "minute"}
            ]}"#,
        );
        let store = Store::default();
        let alice = Facts(
            HashMap::from([("x-gateway-identity", "alice"), ("x-tenant", "acme")]),
            "/",
        );
        let first = limiter.check(&alice, &store, SECOND);
        assert_eq!(first.refused_by, None);
        assert_eq!(
            first.report,
            Some(Report {
                limit: 3,
                remaining: 2,
                reset_seconds: 20
            })
        );
        limiter.check(&alice, &store, SECOND);
        limiter.check(&alice, &store, SECOND);
        let refused = limiter.check(&alice, &store, SECOND);
        assert_eq!(refused.refused_by.as_deref(), Some("tenant"));
        assert_eq!(refused.retry_after_seconds, 20);
        // Another tenant has its own bucket.
        let bob = Facts(
            HashMap::from([("x-gateway-identity", "bob"), ("x-tenant", "other")]),
            "/",
        );
        assert_eq!(limiter.check(&bob, &store, SECOND).refused_by, None);
    }

    #[test]
    fn limits_without_a_key_value_or_outside_their_prefix_do_not_count() {
        let limiter = limiter(
            r#"{"limits": [
                {"name": "user", "key": "identity", "requests": 1, "per": "hour"},
                {"name": "rag", "key": "route", "requests": 1, "per": "hour", "path_prefix": "/v1/rag"}
            ]}"#,
        );
        let store = Store::default();
        let anonymous = Facts(HashMap::new(), "/v1/other");
        for _ in 0..3 {
            assert_eq!(limiter.check(&anonymous, &store, SECOND).report, None);
        }
        let rag = Facts(HashMap::new(), "/v1/rag/query");
        assert_eq!(limiter.check(&rag, &store, SECOND).refused_by, None);
        assert_eq!(
            limiter.check(&rag, &store, SECOND).refused_by.as_deref(),
            Some("rag")
        );
    }

    #[test]
    fn cas_conflicts_are_retried_without_losing_a_request() {
        let limiter = limiter(
            r#"{"limits": [{"name": "ip", "key": "client_address", "requests": 2, "per": "hour"}]}"#,
        );
        let store = Store::default();
        let facts = Facts(HashMap::new(), "/");
        store.fail_next_writes(5);
        assert_eq!(
            limiter
                .check(&facts, &store, SECOND)
                .report
                .unwrap()
                .remaining,
            1
        );
        assert_eq!(
            limiter
                .check(&facts, &store, SECOND)
                .report
                .unwrap()
                .remaining,
            0
        );
        assert!(limiter.check(&facts, &store, SECOND).refused_by.is_some());
        assert!(store.contains("ratelimit|ip|10.0.0.7"));
    }

    #[test]
    fn full_buckets_expire() {
        let limiter = limiter(
            r#"{"limits": [{"name": "ip", "key": "client_address", "requests": 1, "per": "second"}]}"#,
        );
        let store = Store::default();
        let verdict = limiter.check(&Facts(HashMap::new(), "/"), &store, SECOND);
        let key = &verdict.touched[0];
        assert!(!expire(&store, key, SECOND));
        assert!(expire(&store, key, 2 * SECOND));
        assert!(store.is_empty());
    }

    #[test]
    fn invalid_header_bytes_share_one_bucket_per_limit() {
        use filter_common::header_text;
        let limiter = limiter(
            r#"{"limits": [
                {"name": "user", "key": "identity", "requests": 2, "per": "hour"},
                {"name": "tenant", "key": {"header": "x-tenant"}, "requests": 2, "per": "hour"},
                {"name": "key", "key": {"api_key": "x-api-key"}, "requests": 2, "per": "hour"}
            ]}"#,
        );
        // `a\xff` and `a\xfe` read alike; the limiter sees that text.
        assert_eq!(header_text(b"a\xff".to_vec()), "a\u{fffd}");
        assert_eq!(header_text(b"a\xfe".to_vec()), "a\u{fffd}");
        for header in ["x-gateway-identity", "x-tenant", "x-api-key"] {
            let store = Store::default();
            let malformed = Facts(HashMap::from([(header, "a\u{fffd}")]), "/");
            assert_eq!(limiter.check(&malformed, &store, SECOND).touched.len(), 1);
            limiter.check(&malformed, &store, SECOND);
            let refused = limiter.check(&malformed, &store, SECOND);
            assert!(refused.refused_by.is_some(), "{header}");
        }
    }

    #[test]
    fn keys_are_bounded_and_addresses_lose_their_port() {
        assert_eq!(client_ip("10.1.2.3:80"), "10.1.2.3");
        assert_eq!(client_ip("[::1]:8080"), "::1");
        assert_eq!(client_ip("::1"), "::1");
        assert_eq!(bucket_key("a", "b"), "ratelimit|a|b");
        assert!(bucket_key("a", &"x".repeat(1000)).len() < 100);
    }
}
