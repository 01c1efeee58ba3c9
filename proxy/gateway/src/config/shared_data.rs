//! Where filters' shared data lives: process memory or Redis.

use super::values::{duration, optional_duration, AtLeastOne, NonZeroDuration};
use proxy_wasm_host::MemoryLimits;
use serde::{Deserialize, Serialize};
use shared_data_redis::UnavailablePolicy;
use std::path::PathBuf;
use std::time::Duration;

/// Where filters' shared data lives.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct SharedDataSettings {
    /// `memory` (per process) or `redis` (shared by every proxy using the same Redis).
    pub backend: SharedDataBackendKind,
    /// Bounds of process memory: the memory backend, and Redis's fail-open fallback.
    pub memory: MemorySettings,
    /// The Redis backend.
    pub redis: RedisConfig,
}

/// The shared-data backends.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SharedDataBackendKind {
    /// One LRU map per process (the default; nothing to run).
    #[default]
    Memory,
    /// Redis or Redis Cluster.
    Redis,
}

/// Bounds of process-local shared data.
#[derive(Debug, Clone, Deserialize, PartialEq, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct MemorySettings {
    /// Most keys kept; the least recently used go first.
    pub max_entries: AtLeastOne<usize>,
    /// Most bytes (keys plus values) kept.
    pub max_bytes: AtLeastOne<usize>,
}

impl MemorySettings {
    /// The bounds in the wasm host's terms.
    pub fn limits(&self) -> MemoryLimits {
        MemoryLimits {
            max_entries: self.max_entries.get(),
            max_bytes: self.max_bytes.get(),
        }
    }
}

impl Default for MemorySettings {
    fn default() -> Self {
        let limits = MemoryLimits::default();
        Self {
            max_entries: AtLeastOne::new(limits.max_entries).expect("at least 1"),
            max_bytes: AtLeastOne::new(limits.max_bytes).expect("at least 1"),
        }
    }
}

/// The Redis backend's settings.
#[derive(Debug, Clone, Deserialize, PartialEq, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedisConfig {
    /// One server: `redis://host:port/db`, or `rediss://` for TLS.
    pub url: String,
    /// Redis Cluster seed nodes; when set, `url` is not used.
    pub cluster_nodes: Vec<String>,
    /// ACL user name, when not in the URL.
    pub username: Option<String>,
    /// Name of the environment variable holding the password (kept out of the file and logs).
    pub password_env: Option<String>,
    /// Prepended to every key, so deployments can share a Redis.
    pub key_prefix: String,
    /// Longest a filter waits for Redis before `on_unavailable` applies.
    pub operation_timeout: NonZeroDuration,
    /// Longest a connection attempt may take.
    pub connect_timeout: NonZeroDuration,
    /// First wait before reconnecting; doubles on each failure up to `max_reconnect_backoff`.
    pub min_reconnect_backoff: NonZeroDuration,
    /// Longest wait between reconnection attempts.
    #[serde(with = "duration")]
    pub max_reconnect_backoff: Duration,
    /// `fail_open` (process-local state while Redis is away) or `fail_closed` (503).
    pub on_unavailable: UnavailablePolicy,
    /// Key expiry in Redis.
    pub expiry: ExpiryConfig,
    /// TLS for `rediss://` URLs and cluster nodes.
    pub tls: RedisTls,
}

/// How the gateway verifies Redis servers over TLS.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedisTls {
    /// PEM bundle of the CAs that may sign the server's certificate, instead of the system's
    /// roots (a private CA); relative to the configuration file. With `url` only: cluster nodes
    /// are verified against the system's roots.
    pub ca: Option<PathBuf>,
}

impl Default for RedisConfig {
    fn default() -> Self {
        Self {
            url: "redis://127.0.0.1:6379/0".into(),
            cluster_nodes: Vec::new(),
            username: None,
            password_env: None,
            key_prefix: "gateway:".into(),
            operation_timeout: NonZeroDuration::new(Duration::from_millis(50)).expect("positive"),
            connect_timeout: NonZeroDuration::new(Duration::from_secs(1)).expect("positive"),
            min_reconnect_backoff: NonZeroDuration::new(Duration::from_millis(100))
                .expect("positive"),
            max_reconnect_backoff: Duration::from_secs(5),
            on_unavailable: UnavailablePolicy::FailOpen,
            expiry: ExpiryConfig::default(),
            tls: RedisTls::default(),
        }
    }
}

/// Key expiry: the longest matching prefix wins, else `default`. TTLs refresh on every write.
#[derive(Debug, Clone, Deserialize, PartialEq, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ExpiryConfig {
    /// TTL of keys no prefix matches; `null` keeps them until deleted.
    #[serde(with = "optional_duration")]
    pub default: Option<Duration>,
    /// Per-prefix TTLs.
    pub prefixes: Vec<ExpiryRule>,
}

impl Default for ExpiryConfig {
    fn default() -> Self {
        Self {
            default: Some(Duration::from_secs(24 * 3600)),
            prefixes: Vec::new(),
        }
    }
}

/// The TTL of keys starting with `prefix`.
#[derive(Debug, Clone, Deserialize, PartialEq, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ExpiryRule {
    /// A key prefix, such as `cache|` or `ratelimit|`.
    pub prefix: String,
    /// TTL; `null` keeps matching keys until deleted.
    #[serde(with = "optional_duration")]
    pub ttl: Option<Duration>,
}
