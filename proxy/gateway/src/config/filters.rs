//! Filter chains and the proxy-wasm filters in them.

use super::values::{duration, AtLeastOne};
use proxy_wasm_host::{FailurePolicy, VmLimits};
use serde::Deserialize;
use std::path::PathBuf;
use std::time::Duration;

/// A named, ordered list of filters.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FilterChainConfig {
    /// Name routes use to refer to the chain.
    pub name: String,
    /// Filters in request order (responses pass through them in reverse).
    pub filters: Vec<FilterConfig>,
}

/// One proxy-wasm filter.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FilterConfig {
    /// Plugin name (logs, metrics, `plugin_name` property).
    pub name: String,
    /// Path to the `.wasm` module.
    pub wasm: PathBuf,
    /// Root context id the filter registers under (usually empty).
    #[serde(default)]
    pub root_id: String,
    /// VM configuration passed to `on_vm_start`: a string as is, anything else as JSON.
    #[serde(default)]
    pub vm_configuration: Option<serde_json::Value>,
    /// Plugin configuration passed to `on_configure`: a string as is, anything else as JSON.
    #[serde(default)]
    pub configuration: Option<serde_json::Value>,
    /// Read the plugin configuration from this file instead (the same file Envoy can use).
    #[serde(default)]
    pub configuration_file: Option<PathBuf>,
    /// What requests get when the filter fails.
    #[serde(default)]
    pub failure_policy: FailurePolicy,
    /// Per-VM limits.
    #[serde(default)]
    pub limits: FilterLimits,
}

/// Filter VM limits.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct FilterLimits {
    /// Linear memory cap, in MiB.
    pub max_memory_mib: AtLeastOne<usize>,
    /// CPU deadline for one callback.
    #[serde(with = "duration")]
    pub callback_timeout: Duration,
    /// Longest a filter may hold a request paused.
    #[serde(with = "duration")]
    pub pause_timeout: Duration,
}

impl FilterLimits {
    /// The limits in the wasm host's units.
    pub fn vm_limits(&self) -> VmLimits {
        VmLimits {
            max_memory_bytes: self.max_memory_mib.get() << 20,
            callback_deadline: self.callback_timeout,
            pause_timeout: self.pause_timeout,
            ..VmLimits::default()
        }
    }
}

impl Default for FilterLimits {
    fn default() -> Self {
        let limits = VmLimits::default();
        Self {
            max_memory_mib: AtLeastOne::new(limits.max_memory_bytes >> 20).expect("at least 1 MiB"),
            callback_timeout: limits.callback_deadline,
            pause_timeout: limits.pause_timeout,
        }
    }
}
