//! Process-wide settings: the server, reloads, logging, the admin and client listeners.

use super::values::duration;
use super::{PathSettings, ReservedHeaders, TrustedProxies};
use serde::Deserialize;
use std::path::PathBuf;
use std::time::Duration;

/// Process-wide settings.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ServerSettings {
    /// Worker threads for the proxy listeners.
    pub threads: usize,
    /// How long in-flight requests may take to finish on shutdown.
    #[serde(with = "duration")]
    pub shutdown_grace_period: Duration,
    /// Request bodies larger than this get a 413.
    pub max_request_body_bytes: u64,
    /// Requests with more header fields than this get a 431 (Pingora refuses more than 256).
    pub max_request_headers: usize,
    /// Requests whose header names and values add up to more than this get a 431.
    pub max_request_header_bytes: usize,
    /// Directory for compiled filter modules (faster restarts); none disables the cache.
    pub module_cache_dir: Option<PathBuf>,
    /// Reloading the configuration while serving.
    pub reload: ReloadSettings,
    /// Unix socket on which a new process started with `--upgrade` takes over the listeners.
    pub upgrade_socket: PathBuf,
    /// How request paths are normalised before routing, filters and the upstream.
    pub paths: PathSettings,
    /// Client headers removed before routing and filters (default: the `x-gateway-` prefix).
    pub reserved_headers: ReservedHeaders,
    /// Peers (addresses or CIDR ranges) whose `X-Forwarded-*` headers are kept and appended to;
    /// from anyone else they are replaced.
    pub trusted_proxies: TrustedProxies,
}

impl Default for ServerSettings {
    fn default() -> Self {
        Self {
            threads: 2,
            shutdown_grace_period: Duration::from_secs(10),
            max_request_body_bytes: 10 << 20,
            max_request_headers: 100,
            max_request_header_bytes: 64 << 10,
            module_cache_dir: None,
            reload: ReloadSettings::default(),
            upgrade_socket: crate::private_dir::default_upgrade_socket(),
            paths: PathSettings::default(),
            reserved_headers: ReservedHeaders::default(),
            trusted_proxies: TrustedProxies::default(),
        }
    }
}

/// When the proxy reloads its configuration (it always does on SIGHUP).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ReloadSettings {
    /// Reload when the configuration file, a filter's `.wasm` or its `configuration_file` changes.
    pub watch: bool,
    /// How often watched files are checked; a change is applied once it has held for one period,
    /// so a file caught mid-write is not loaded.
    #[serde(with = "duration")]
    pub poll_interval: Duration,
}

impl Default for ReloadSettings {
    fn default() -> Self {
        Self {
            watch: true,
            poll_interval: Duration::from_secs(1),
        }
    }
}

/// Log output.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LoggingSettings {
    /// `json` (one object per line) or `pretty`.
    pub format: LogFormat,
    /// A `tracing` filter such as `info` or `gateway=debug,info`.
    pub level: String,
    /// One line per request (target `access_log`).
    pub access_log: bool,
}

impl Default for LoggingSettings {
    fn default() -> Self {
        Self {
            format: LogFormat::Json,
            level: "info".into(),
            access_log: true,
        }
    }
}

/// Log line format.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// One JSON object per line.
    Json,
    /// Human-readable, for terminals.
    Pretty,
}

/// The admin listener.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AdminSettings {
    /// Address of the admin listener; keep it on loopback or a private network.
    pub address: String,
    /// Environment variable holding a token that `/config` and `/metrics` require as
    /// `Authorization: Bearer <token>` (for an admin listener bound beyond loopback); `/healthz`
    /// and `/readyz` stay open for probes.
    pub bearer_token_env: Option<String>,
}

impl Default for AdminSettings {
    fn default() -> Self {
        Self {
            address: "127.0.0.1:9901".into(),
            bearer_token_env: None,
        }
    }
}

/// A listener for client traffic.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    /// Name used in logs and metrics.
    pub name: String,
    /// `host:port` to bind.
    pub address: String,
    /// Serve TLS with this certificate and key.
    pub tls: Option<ListenerTls>,
    /// Accept HTTP/2 without TLS (prior knowledge), e.g. for gRPC clients.
    #[serde(default)]
    pub h2c: bool,
    /// Most client connections open at once; past it a new connection is closed at once.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
}

fn default_max_connections() -> usize {
    10_000
}

/// Listener TLS files (PEM).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ListenerTls {
    /// Certificate chain.
    pub certificate: PathBuf,
    /// Private key.
    pub key: PathBuf,
    /// Mutual TLS: clients must present a certificate that this CA bundle verifies; its names
    /// reach filters as `source.principal` and `connection.*_peer_certificate`.
    #[serde(default)]
    pub client_ca: Option<PathBuf>,
}
