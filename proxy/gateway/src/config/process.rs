//! Process-wide settings: the server, reloads, logging, the admin and client listeners.
//!
//! The `server` and `logging` sections each hold settings of two kinds: those a running process
//! cannot change (worker threads, the log format) and those every request reads (body limits,
//! the access log). Reading splits them into two types, so [`ProcessSettings`] is everything only
//! a restart applies and a reload compares it instead of keeping a list.

use super::shared_data::SharedDataSettings;
use super::values::{duration, Address, AtLeastOne};
use super::{PathSettings, ReservedHeaders, TrustedProxies};
use serde::{Deserialize, Deserializer, Serialize};
use std::path::PathBuf;
use std::time::Duration;

/// The `server` section.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(from = "ServerFile")]
pub struct ServerSettings {
    /// What only a restart applies.
    pub process: ServerProcess,
    /// What every request reads; a reload applies it.
    pub requests: RequestSettings,
}

/// The server settings a running process cannot change.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ServerProcess {
    /// Worker threads for the proxy listeners.
    pub threads: AtLeastOne<usize>,
    /// How long in-flight requests may take to finish on shutdown.
    #[serde(with = "duration")]
    pub shutdown_grace_period: Duration,
    /// Directory for compiled filter modules (faster restarts); none disables the cache.
    pub module_cache_dir: Option<PathBuf>,
    /// Reloading the configuration while serving.
    pub reload: ReloadSettings,
    /// Unix socket on which a new process started with `--upgrade` takes over the listeners.
    pub upgrade_socket: PathBuf,
}

/// The server settings requests read: limits and how client headers and paths are taken.
#[derive(Debug, Clone, PartialEq)]
pub struct RequestSettings {
    /// Request bodies larger than this get a 413.
    pub max_request_body_bytes: u64,
    /// Requests with more header fields than this get a 431 (Pingora refuses more than 256).
    pub max_request_headers: usize,
    /// Requests whose header names and values add up to more than this get a 431.
    pub max_request_header_bytes: usize,
    /// How request paths are normalised before routing, filters and the upstream.
    pub paths: PathSettings,
    /// Client headers removed before routing and filters (default: the `x-gateway-` prefix).
    pub reserved_headers: ReservedHeaders,
    /// Peers (addresses or CIDR ranges) whose `X-Forwarded-*` headers are kept and appended to;
    /// from anyone else they are replaced.
    pub trusted_proxies: TrustedProxies,
}

/// The `server` section as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct ServerFile {
    threads: AtLeastOne<usize>,
    #[serde(with = "duration")]
    shutdown_grace_period: Duration,
    max_request_body_bytes: u64,
    max_request_headers: usize,
    max_request_header_bytes: usize,
    module_cache_dir: Option<PathBuf>,
    reload: ReloadSettings,
    upgrade_socket: PathBuf,
    paths: PathSettings,
    reserved_headers: ReservedHeaders,
    trusted_proxies: TrustedProxies,
}

impl Default for ServerFile {
    fn default() -> Self {
        Self {
            threads: AtLeastOne::new(2).expect("at least 1"),
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

impl From<ServerFile> for ServerSettings {
    fn from(file: ServerFile) -> Self {
        Self {
            process: ServerProcess {
                threads: file.threads,
                shutdown_grace_period: file.shutdown_grace_period,
                module_cache_dir: file.module_cache_dir,
                reload: file.reload,
                upgrade_socket: file.upgrade_socket,
            },
            requests: RequestSettings {
                max_request_body_bytes: file.max_request_body_bytes,
                max_request_headers: file.max_request_headers,
                max_request_header_bytes: file.max_request_header_bytes,
                paths: file.paths,
                reserved_headers: file.reserved_headers,
                trusted_proxies: file.trusted_proxies,
            },
        }
    }
}

impl Default for ServerProcess {
    fn default() -> Self {
        ServerSettings::from(ServerFile::default()).process
    }
}

impl Default for RequestSettings {
    fn default() -> Self {
        ServerSettings::from(ServerFile::default()).requests
    }
}

/// When the proxy reloads its configuration (it always does on SIGHUP).
#[derive(Debug, Clone, Deserialize, PartialEq, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReloadSettings {
    /// Reload when the configuration file, a filter's `.wasm` or its `configuration_file` changes.
    pub watch: bool,
    /// How often watched files are checked (at least 100ms); a change is applied once it has held
    /// for one period, so a file caught mid-write is not loaded.
    #[serde(
        deserialize_with = "poll_interval",
        serialize_with = "duration::serialize"
    )]
    pub poll_interval: Duration,
}

fn poll_interval<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let interval = duration::deserialize(d)?;
    if interval < Duration::from_millis(100) {
        return Err(serde::de::Error::custom("must be at least 100ms"));
    }
    Ok(interval)
}

impl Default for ReloadSettings {
    fn default() -> Self {
        Self {
            watch: true,
            poll_interval: Duration::from_secs(1),
        }
    }
}

/// The `logging` section.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(from = "LoggingFile")]
pub struct LoggingSettings {
    /// The log subscriber, built at start.
    pub output: LogOutput,
    /// One line per request (target `access_log`); a reload applies it.
    pub access_log: bool,
}

/// How log lines are written and which are kept.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LogOutput {
    /// `json` (one object per line) or `pretty`.
    pub format: LogFormat,
    /// A `tracing` filter such as `info` or `gateway=debug,info`.
    pub level: String,
}

impl Default for LogOutput {
    fn default() -> Self {
        Self {
            format: LogFormat::Json,
            level: "info".into(),
        }
    }
}

/// The `logging` section as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct LoggingFile {
    format: LogFormat,
    level: String,
    access_log: bool,
}

impl Default for LoggingFile {
    fn default() -> Self {
        let output = LogOutput::default();
        Self {
            format: output.format,
            level: output.level,
            access_log: true,
        }
    }
}

impl From<LoggingFile> for LoggingSettings {
    fn from(file: LoggingFile) -> Self {
        Self {
            output: LogOutput {
                format: file.format,
                level: file.level,
            },
            access_log: file.access_log,
        }
    }
}

/// Log line format.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// One JSON object per line.
    Json,
    /// Human-readable, for terminals.
    Pretty,
}

/// The admin listener.
#[derive(Debug, Clone, Deserialize, PartialEq, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminSettings {
    /// Address of the admin listener; keep it on loopback or a private network.
    pub address: Address,
    /// Environment variable holding a token that `/config` and `/metrics` require as
    /// `Authorization: Bearer <token>` (for an admin listener bound beyond loopback); `/healthz`
    /// and `/readyz` stay open for probes.
    pub bearer_token_env: Option<String>,
}

impl Default for AdminSettings {
    fn default() -> Self {
        Self {
            address: "127.0.0.1:9901".parse().expect("an address"),
            bearer_token_env: None,
        }
    }
}

/// A listener for client traffic.
#[derive(Debug, Clone, Deserialize, PartialEq, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    /// Name used in logs and metrics.
    pub name: String,
    /// `host:port` to bind.
    pub address: Address,
    /// Serve TLS with this certificate and key.
    pub tls: Option<ListenerTls>,
    /// Accept HTTP/2 without TLS (prior knowledge), e.g. for gRPC clients.
    #[serde(default)]
    pub h2c: bool,
    /// Most client connections open at once; past it a new connection is closed at once.
    #[serde(default = "default_max_connections")]
    pub max_connections: AtLeastOne<usize>,
}

fn default_max_connections() -> AtLeastOne<usize> {
    AtLeastOne::new(10_000).expect("at least 1")
}

/// Listener TLS files (PEM).
#[derive(Debug, Clone, Deserialize, PartialEq, Serialize)]
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

/// Everything only a restart applies: Pingora binds listeners and sizes its worker pools once,
/// and the wasm engine, shared-data backend and log subscriber are built at start.
#[derive(PartialEq, Serialize)]
pub struct ProcessSettings<'a> {
    /// `listeners`.
    pub listeners: &'a [ListenerConfig],
    /// `admin`.
    pub admin: &'a AdminSettings,
    /// `shared_data`.
    pub shared_data: &'a SharedDataSettings,
    /// `server`'s process part.
    pub server: &'a ServerProcess,
    /// `logging`'s process part.
    pub logging: &'a LogOutput,
}

impl ProcessSettings<'_> {
    /// The fields that differ in `other`, by their path in the file (`server.threads`); a list
    /// is named as a whole.
    pub fn changed_fields(&self, other: &Self) -> Vec<String> {
        match (
            serde_yaml_ng::to_value(self),
            serde_yaml_ng::to_value(other),
        ) {
            (Ok(old), Ok(new)) => {
                let mut changed = Vec::new();
                differences(&old, &new, "", &mut changed);
                changed
            }
            // A path that is not UTF-8 has no YAML form; say that something changed.
            _ if self != other => vec!["process settings".to_string()],
            _ => Vec::new(),
        }
    }
}

fn differences(
    old: &serde_yaml_ng::Value,
    new: &serde_yaml_ng::Value,
    path: &str,
    changed: &mut Vec<String>,
) {
    use serde_yaml_ng::Value;
    match (old, new) {
        (Value::Mapping(old), Value::Mapping(new)) => {
            for (key, old_value) in old {
                let name = key.as_str().unwrap_or_default();
                let path = if path.is_empty() {
                    name.to_string()
                } else {
                    format!("{path}.{name}")
                };
                differences(old_value, &new[key], &path, changed);
            }
        }
        _ if old != new => changed.push(path.to_string()),
        _ => {}
    }
}
