//! The shared-data backend the configuration asks for (memory or Redis), and its metrics.

use crate::config::{ConfigError, SharedDataBackendKind, SharedDataSettings};
use proxy_wasm_host::{MemoryLimits, MemorySharedData, SharedDataBackend};
use shared_data_redis::{ExpiryRules, RedisSettings, RedisSharedData, Topology};
use std::fmt::Write;
use std::path::Path;
use std::sync::Arc;

/// The configured backend.
pub enum SharedData {
    /// Per process.
    Memory(Arc<MemorySharedData>),
    /// Redis, shared by every proxy pointing at it.
    Redis(Arc<RedisSharedData>),
}

impl SharedData {
    /// Builds the backend. Redis need not be up: the link connects in the background and calls
    /// follow `on_unavailable` until it does. Relative files in `settings` (the Redis CA) are
    /// read from `base_dir`.
    pub fn from_config(
        settings: &SharedDataSettings,
        base_dir: &Path,
    ) -> Result<Self, ConfigError> {
        let memory = settings.memory.limits();
        match settings.backend {
            SharedDataBackendKind::Memory => {
                Ok(Self::Memory(Arc::new(MemorySharedData::new(memory))))
            }
            SharedDataBackendKind::Redis => {
                let redis = redis_settings(settings, base_dir, memory)?;
                // Filter phases run on the filter runtime with Redis (see `offload`); its I/O
                // runs there too, so a call costs no hop to another thread.
                let backend = RedisSharedData::on_runtime(redis, crate::offload::runtime_handle())
                    .map_err(|e| ConfigError::new("shared_data.redis", e.to_string()))?;
                Ok(Self::Redis(Arc::new(backend)))
            }
        }
    }

    /// The backend for the wasm host.
    pub fn backend(&self) -> Arc<dyn SharedDataBackend> {
        match self {
            Self::Memory(memory) => memory.clone(),
            Self::Redis(redis) => redis.clone(),
        }
    }

    /// Whether every shared-data call completes without waiting (the host backend's own answer).
    pub fn answers_immediately(&self) -> bool {
        match self {
            Self::Memory(memory) => memory.answers_immediately(),
            Self::Redis(redis) => redis.answers_immediately(),
        }
    }

    /// Starts connecting to Redis, if that is the backend.
    pub fn start(&self) {
        if let Self::Redis(redis) = self {
            redis.connect_in_background();
        }
    }

    /// The backend's name and, for Redis, whether a connection is up.
    pub fn describe(&self) -> (&'static str, &'static str) {
        match self {
            Self::Memory(_) => ("memory", "in this process"),
            Self::Redis(redis) if redis.stats().connected => ("redis", "connected"),
            Self::Redis(_) => ("redis", "not connected (on_unavailable applies)"),
        }
    }

    /// Prometheus text for the backend.
    pub fn render_prometheus(&self) -> String {
        let Self::Redis(redis) = self else {
            return String::new();
        };
        let stats = redis.stats();
        let mut out = String::new();
        let metrics: [(&str, &str, &str, u64); 8] = [
            (
                "shared_data_redis_connected",
                "gauge",
                "1 while a Redis connection is up",
                u64::from(stats.connected),
            ),
            (
                "shared_data_redis_operations_total",
                "counter",
                "Shared-data calls sent to Redis",
                stats.operations,
            ),
            (
                "shared_data_redis_timeouts_total",
                "counter",
                "Calls Redis did not answer within the operation timeout",
                stats.timeouts,
            ),
            (
                "shared_data_redis_connection_errors_total",
                "counter",
                "Failed connection attempts and dropped connections",
                stats.connection_errors,
            ),
            (
                "shared_data_redis_server_errors_total",
                "counter",
                "Errors Redis answered",
                stats.server_errors,
            ),
            (
                "shared_data_redis_reconnects_total",
                "counter",
                "Connections made again after a failure",
                stats.reconnects,
            ),
            (
                "shared_data_fallback_operations_total",
                "counter",
                "Calls answered from process-local state while Redis was unavailable",
                stats.fallback_operations,
            ),
            (
                "shared_data_refused_operations_total",
                "counter",
                "Calls refused while Redis was unavailable (fail_closed)",
                stats.refused_operations,
            ),
        ];
        for (name, kind, help, value) in metrics {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
            );
        }
        out
    }
}

fn redis_settings(
    settings: &SharedDataSettings,
    base_dir: &Path,
    fallback_limits: MemoryLimits,
) -> Result<RedisSettings, ConfigError> {
    let config = &settings.redis;
    let field = |name: &str| format!("shared_data.redis.{name}");
    let topology = if config.cluster_nodes.is_empty() {
        Topology::Single(config.url.clone())
    } else {
        Topology::Cluster(config.cluster_nodes.clone())
    };
    let password = match &config.password_env {
        None => None,
        Some(name) => Some(std::env::var(name).map_err(|_| {
            ConfigError::new(
                field("password_env"),
                format!("environment variable {name} is not set"),
            )
        })?),
    };
    if config.max_reconnect_backoff < config.min_reconnect_backoff.get() {
        return Err(ConfigError::new(
            field("max_reconnect_backoff"),
            "must be at least min_reconnect_backoff",
        ));
    }
    for (i, rule) in config.expiry.prefixes.iter().enumerate() {
        if rule.prefix.is_empty() {
            return Err(ConfigError::new(
                field(&format!("expiry.prefixes[{i}].prefix")),
                "must not be empty (use expiry.default for every key)",
            ));
        }
    }
    Ok(RedisSettings {
        topology,
        username: config.username.clone(),
        password,
        key_prefix: config.key_prefix.clone(),
        operation_timeout: config.operation_timeout.get(),
        connect_timeout: config.connect_timeout.get(),
        min_backoff: config.min_reconnect_backoff.get(),
        max_backoff: config.max_reconnect_backoff,
        expiry: ExpiryRules {
            prefixes: config
                .expiry
                .prefixes
                .iter()
                .map(|rule| (rule.prefix.as_bytes().to_vec(), rule.ttl))
                .collect(),
            default: config.expiry.default,
        },
        on_unavailable: config.on_unavailable,
        fallback_limits,
        root_certificates: match &config.tls.ca {
            None => None,
            Some(_) if !config.cluster_nodes.is_empty() => {
                return Err(ConfigError::new(
                    field("tls.ca"),
                    "a private CA works with url (one server), not cluster_nodes: cluster nodes \
                     are verified against the system's roots",
                ));
            }
            Some(file) => {
                let path = base_dir.join(file);
                Some(std::fs::read(&path).map_err(|e| {
                    ConfigError::new(
                        field("tls.ca"),
                        format!("cannot read {}: {e}", path.display()),
                    )
                })?)
            }
        },
    })
}

#[cfg(test)]
mod tests {
    use super::redis_settings;
    use crate::config::Config;
    use proxy_wasm_host::MemoryLimits;
    use std::path::Path;

    fn shared_data(redis: &str) -> Result<(), String> {
        let text = format!(
            "
listeners: [{{name: public, address: 127.0.0.1:8080}}]
routes: [{{name: all, cluster: app}}]
clusters: [{{name: app, endpoints: [127.0.0.1:9000]}}]
shared_data: {{backend: redis, redis: {redis}}}
"
        );
        let config = Config::parse(&text, ".".into()).map_err(|e| e.to_string())?;
        redis_settings(&config.shared_data, Path::new("."), MemoryLimits::default())
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    #[test]
    fn a_private_ca_is_read_for_one_server_and_refused_beside_cluster_nodes() {
        let ca = concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml");
        assert_eq!(
            shared_data(&format!(
                "{{url: \"rediss://redis:6380\", tls: {{ca: {ca}}}}}"
            )),
            Ok(())
        );
        let cluster = shared_data(&format!(
            "{{cluster_nodes: [\"rediss://a:6380\"], tls: {{ca: {ca}}}}}"
        ))
        .unwrap_err();
        assert!(
            cluster.starts_with("shared_data.redis.tls.ca: "),
            "{cluster}"
        );
        let missing = shared_data("{url: \"rediss://redis:6380\", tls: {ca: /nonexistent.pem}}");
        assert_eq!(
            missing.unwrap_err(),
            "shared_data.redis.tls.ca: no such file: /nonexistent.pem"
        );
    }
}
