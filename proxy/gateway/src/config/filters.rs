//! Filter chains and the proxy-wasm filters in them.

use super::values::duration;
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
    pub failure_policy: FailurePolicyConfig,
    /// Per-VM limits.
    #[serde(default)]
    pub limits: FilterLimits,
}

/// Failure policy names, as in Envoy's `failure_policy`: what the request that hit the failure
/// gets. Either way the next request runs on a fresh VM.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum FailurePolicyConfig {
    /// A 503 JSON error. `reload`, the name of an earlier policy that did this and then
    /// restarted the VM (every policy restarts it now), is read as `fail_closed`.
    #[default]
    #[serde(alias = "reload")]
    FailClosed,
    /// The request goes on without the filter.
    FailOpen,
}

/// Filter VM limits.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct FilterLimits {
    /// Linear memory cap, in MiB.
    pub max_memory_mib: usize,
    /// CPU deadline for one callback.
    #[serde(with = "duration")]
    pub callback_timeout: Duration,
    /// Longest a filter may hold a request paused.
    #[serde(with = "duration")]
    pub pause_timeout: Duration,
}

impl Default for FilterLimits {
    fn default() -> Self {
        let limits = proxy_wasm_host::VmLimits::default();
        Self {
            max_memory_mib: limits.max_memory_bytes >> 20,
            callback_timeout: limits.callback_deadline,
            pause_timeout: limits.pause_timeout,
        }
    }
}
