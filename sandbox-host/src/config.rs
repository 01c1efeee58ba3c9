//! The service's configuration file (YAML): listener, runtimes, limits, concurrency, datasets.
//!
//! Every limit has a server default (used when a request names none) and a server maximum (a
//! request asking for more is refused, not silently clamped).

use crate::limits::LimitSettings;
pub use crate::runtimes::RuntimeSettings;
pub use crate::session_table::SessionSettings;
use gateway_contract::ConfigError;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// Where the HTTP API listens.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Directory for compiled modules; relative paths are resolved against the file's directory.
    #[serde(default)]
    pub cache_dir: Option<PathBuf>,
    /// Interpreters by language (`python`, `javascript`).
    #[serde(default)]
    pub runtimes: BTreeMap<String, RuntimeSettings>,
    /// Per-execution limits: defaults and maxima.
    #[serde(default)]
    pub limits: LimitSettings,
    /// How many executions run at once, and how many may wait.
    #[serde(default)]
    pub concurrency: ConcurrencySettings,
    /// Guest threads and wasm stack.
    #[serde(default)]
    pub guest: GuestSettings,
    /// Largest request body accepted, in bytes (code, stdin and arguments together).
    #[serde(default = "default_max_request_bytes")]
    pub max_request_bytes: usize,
    /// Read-only data an execution may mount with a scope (`capabilities.datasets`).
    #[serde(default)]
    pub datasets: Vec<DatasetSettings>,
    /// Environment variable holding the key approvals of destructive capabilities are signed
    /// with; unset, nothing destructive is granted.
    #[serde(default)]
    pub approval_key_env: Option<String>,
    /// Replaced by `approval_key_env` (a static token could be replayed for any code); a file that
    /// still sets it is refused with that explanation.
    #[serde(default)]
    pub approval_token_sha256: Vec<String>,
    /// How callers prove they are the gateway (identity, scopes and approvals count only then).
    #[serde(default)]
    pub gateway: GatewayTrust,
    /// Stateful sessions: timeouts and caps.
    #[serde(default)]
    pub sessions: SessionSettings,
}

/// Who is trusted to say who the caller is: only a request signed by the gateway
/// (`x-gateway-signature`, see the `gateway-identity` crate).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GatewayTrust {
    /// Environment variable holding the key shared with the gateway. Unset (or the variable
    /// empty): no caller is trusted, and every execution is pure computation.
    pub signing_key_env: Option<String>,
    /// Accepted age of a signature, either way (clock skew), in seconds.
    pub max_signature_age_seconds: u64,
    /// What a caller without a valid signature gets.
    pub unsigned_callers: UnsignedCallers,
}

impl Default for GatewayTrust {
    fn default() -> Self {
        Self {
            signing_key_env: None,
            max_signature_age_seconds: 60,
            unsigned_callers: UnsignedCallers::ComputeOnly,
        }
    }
}

/// Treatment of callers the service cannot authenticate as the gateway.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum UnsignedCallers {
    /// Run their code with no identity, scopes or approvals: pure computation only.
    ComputeOnly,
    /// Answer 401 `untrusted_caller`.
    Refuse,
}

/// The admission queue in front of the guest threads.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConcurrencySettings {
    /// Executions running at once (each on its own thread, in its own pooled instance slot).
    pub max_running: u32,
    /// Executions waiting for a slot; one more is answered 429.
    pub max_queued: u32,
    /// Longest wait for a slot before the request is answered 503.
    pub queue_timeout_ms: u64,
    /// Python instances kept started ahead of requests (each holds a pooled instance slot); 0
    /// starts every instance on request.
    pub prestarted: u32,
}

impl Default for ConcurrencySettings {
    fn default() -> Self {
        Self {
            max_running: 4,
            max_queued: 32,
            queue_timeout_ms: 10_000,
            prestarted: 4,
        }
    }
}

/// Native and wasm stacks of guest threads.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GuestSettings {
    /// Native stack of each guest thread; it must hold the wasm stack plus host frames.
    pub thread_stack_bytes: usize,
    /// Deepest wasm stack before a guest traps with a stack overflow.
    pub max_wasm_stack_bytes: usize,
}

impl Default for GuestSettings {
    fn default() -> Self {
        Self {
            thread_stack_bytes: 16 << 20,
            max_wasm_stack_bytes: 4 << 20,
        }
    }
}

/// A host directory offered read-only to executions whose caller holds `scope`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatasetSettings {
    /// The name requests use; mounted at `/data/<name>` in the guest.
    pub name: String,
    /// The host directory; relative paths are resolved against the configuration file's directory.
    pub path: PathBuf,
    /// The scope the caller's verified identity must hold (default `sandbox:dataset:<name>`).
    #[serde(default)]
    pub scope: Option<String>,
}

impl DatasetSettings {
    /// The scope a caller needs to mount this dataset.
    pub fn required_scope(&self) -> String {
        self.scope
            .clone()
            .unwrap_or_else(|| format!("sandbox:dataset:{}", self.name))
    }
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8090))
}

fn default_max_request_bytes() -> usize {
    4 << 20
}

/// A configuration file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    /// The file cannot be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The YAML does not describe valid settings (the message names the field).
    #[error("{path}: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong, and where.
        message: String,
    },
}

impl Settings {
    /// Reads and checks a configuration file; relative paths in it become relative to its directory.
    pub fn load(path: &Path) -> Result<Self, SettingsError> {
        let text = std::fs::read_to_string(path).map_err(|source| SettingsError::Read {
            path: path.to_owned(),
            source,
        })?;
        let invalid = |message: String| SettingsError::Invalid {
            path: path.to_owned(),
            message,
        };
        let deserializer = serde_yaml_ng::Deserializer::from_str(&text);
        let mut settings: Settings =
            serde_path_to_error::deserialize(deserializer).map_err(|e| {
                let error =
                    ConfigError::from_yaml(&e.path().to_string(), &e.inner().to_string(), "(file)");
                invalid(error.to_string())
            })?;
        settings.validate().map_err(invalid)?;
        let base = path.parent().unwrap_or(Path::new("."));
        settings.resolve_paths(base);
        Ok(settings)
    }

    /// Checks what serde cannot: limits within maxima, names, languages.
    pub fn validate(&self) -> Result<(), String> {
        self.limits.validate()?;
        if self.concurrency.max_running == 0 {
            return Err("concurrency.max_running must be at least 1".into());
        }
        self.sessions.validate()?;
        for language in self.runtimes.keys() {
            if crate::runtimes::Language::interpreted(language).is_none() {
                return Err(format!(
                    "runtimes.{language}: unknown language (python, javascript)"
                ));
            }
        }
        for dataset in &self.datasets {
            let valid = !dataset.name.is_empty()
                && dataset
                    .name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
            if !valid {
                return Err(format!(
                    "datasets: name {:?} must be letters, digits, '-' or '_'",
                    dataset.name
                ));
            }
        }
        if !self.approval_token_sha256.is_empty() {
            return Err(
                "approval_token_sha256: static approval tokens are no longer accepted \
                 (one could be replayed for any code); set approval_key_env and issue approvals \
                 bound to identity, dataset and code (docs/sandbox-security.md)"
                    .into(),
            );
        }
        Ok(())
    }

    fn resolve_paths(&mut self, base: &Path) {
        if let Some(dir) = &mut self.cache_dir {
            *dir = base.join(&*dir);
        }
        for runtime in self.runtimes.values_mut() {
            runtime.module = base.join(&runtime.module);
            if let Some(stdlib) = &mut runtime.stdlib {
                stdlib.archive = base.join(&stdlib.archive);
            }
        }
        for dataset in &mut self.datasets {
            dataset.path = base.join(&dataset.path);
        }
    }
}

impl Default for Settings {
    /// Every field's default: no runtimes, no datasets, the default limits and queue.
    fn default() -> Self {
        serde_yaml_ng::from_str("{}").expect("every field has a default")
    }
}
