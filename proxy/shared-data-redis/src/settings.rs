//! What a deployment configures: where Redis is, how keys are named and expire, and what happens
//! when Redis cannot answer.

use proxy_wasm_host::MemoryLimits;
use std::time::Duration;

/// Where the Redis deployment is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Topology {
    /// One server (or a proxy in front of several): `redis://host:port/db`, `rediss://` for TLS.
    Single(String),
    /// Redis Cluster: seed node URLs; the rest of the cluster is discovered.
    Cluster(Vec<String>),
}

/// What happens to shared-data calls while Redis is unreachable or slow (written `fail_open` or
/// `fail_closed`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum UnavailablePolicy {
    /// Use process-local state (bounded like the memory backend) until Redis returns; limits then
    /// hold per process instead of cluster-wide.
    #[default]
    FailOpen,
    /// Refuse: the request that needed shared data is answered 503.
    FailClosed,
}

/// Expiry of keys in Redis: the longest matching key prefix wins, else the default.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ExpiryRules {
    /// `(key prefix, TTL)`; a TTL of `None` keeps matching keys until they are deleted.
    pub prefixes: Vec<(Vec<u8>, Option<Duration>)>,
    /// TTL of keys no prefix matches.
    pub default: Option<Duration>,
}

impl ExpiryRules {
    /// The TTL for a filter's key (refreshed on every write).
    pub fn ttl_for(&self, key: &[u8]) -> Option<Duration> {
        self.prefixes
            .iter()
            .filter(|(prefix, _)| key.starts_with(prefix))
            .max_by_key(|(prefix, _)| prefix.len())
            .map_or(self.default, |(_, ttl)| *ttl)
    }
}

/// Everything [`crate::RedisSharedData`] needs.
#[derive(Debug, Clone)]
pub struct RedisSettings {
    /// The server or cluster.
    pub topology: Topology,
    /// ACL user name, when not in the URL.
    pub username: Option<String>,
    /// Password, when not in the URL (read from the environment by the caller; never logged).
    pub password: Option<String>,
    /// Prepended to every key, so deployments can share one Redis.
    pub key_prefix: String,
    /// Longest a shared-data call waits for Redis before the unavailable policy applies.
    pub operation_timeout: Duration,
    /// Longest a connection attempt may take.
    pub connect_timeout: Duration,
    /// First wait before reconnecting after a failure; doubles up to `max_backoff`.
    pub min_backoff: Duration,
    /// Longest wait between reconnection attempts.
    pub max_backoff: Duration,
    /// Key expiry.
    pub expiry: ExpiryRules,
    /// What happens while Redis is unavailable.
    pub on_unavailable: UnavailablePolicy,
    /// Bounds of the process-local state used under [`UnavailablePolicy::FailOpen`].
    pub fallback_limits: MemoryLimits,
    /// PEM of the CAs that may sign the server's certificate (`rediss://`), instead of the
    /// system's roots: a private CA. One server only: the cluster client verifies nodes against
    /// the system's roots (the Redis client takes a CA for a cluster only with rustls).
    pub root_certificates: Option<Vec<u8>>,
}

impl RedisSettings {
    /// Settings for one server with the defaults: 50 ms operations, 1 s connects, backoff from
    /// 100 ms to 5 s, keys prefixed `gateway:` expiring a day after their last write, fail-open.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            topology: Topology::Single(url.into()),
            username: None,
            password: None,
            key_prefix: "gateway:".into(),
            operation_timeout: Duration::from_millis(50),
            connect_timeout: Duration::from_secs(1),
            min_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
            expiry: ExpiryRules {
                prefixes: Vec::new(),
                default: Some(Duration::from_secs(24 * 3600)),
            },
            on_unavailable: UnavailablePolicy::FailOpen,
            fallback_limits: MemoryLimits::default(),
            root_certificates: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn longest_prefix_wins() {
        let rules = ExpiryRules {
            prefixes: vec![
                (b"cache".to_vec(), Some(Duration::from_secs(60))),
                (b"cache|".to_vec(), Some(Duration::from_secs(3600))),
                (b"keep".to_vec(), None),
            ],
            default: Some(Duration::from_secs(5)),
        };
        assert_eq!(rules.ttl_for(b"cache|k"), Some(Duration::from_secs(3600)));
        assert_eq!(rules.ttl_for(b"cache-usage"), Some(Duration::from_secs(60)));
        assert_eq!(rules.ttl_for(b"keep-me"), None);
        assert_eq!(rules.ttl_for(b"other"), Some(Duration::from_secs(5)));
    }
}
