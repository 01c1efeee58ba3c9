//! Routes: what requests they match and where they go.

use super::values::optional_duration;
use serde::Deserialize;
use std::time::Duration;

/// A route: what requests it matches and where they go.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// Name used in logs, metrics and the `xds.route_name` property.
    pub name: String,
    /// Conditions; all must hold. Empty matches every request.
    #[serde(default, rename = "match")]
    pub matcher: RouteMatch,
    /// Target cluster.
    pub cluster: String,
    /// Name of the filter chain to run, if any.
    #[serde(default)]
    pub filter_chain: Option<String>,
    /// Deadline for the upstream's response headers and between body reads (504 when exceeded).
    #[serde(default, with = "optional_duration")]
    pub timeout: Option<Duration>,
    /// What clients see when the upstream answers 5xx.
    #[serde(default)]
    pub upstream_errors: UpstreamErrors,
    /// Forward `Upgrade` (WebSocket and the like); otherwise it is removed as hop-by-hop.
    #[serde(default)]
    pub allow_upgrade: bool,
}

/// Route conditions.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RouteMatch {
    /// Listener names; the request must have arrived on one of them (e.g. a sidecar's inbound
    /// or outbound listener).
    #[serde(default)]
    pub listeners: Vec<String>,
    /// Path condition.
    #[serde(default)]
    pub path: Option<PathMatch>,
    /// Host names (the `Host` header or `:authority`, without the port); any of them matches.
    #[serde(default)]
    pub hosts: Vec<String>,
    /// Methods; any of them matches.
    #[serde(default)]
    pub methods: Vec<String>,
    /// Header conditions; all must hold.
    #[serde(default)]
    pub headers: Vec<HeaderMatch>,
}

/// How the path (without the query string) is matched: set exactly one field.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PathMatch {
    /// The path starts with this.
    pub prefix: Option<String>,
    /// The path is exactly this.
    pub exact: Option<String>,
    /// The whole path matches this regular expression.
    pub regex: Option<String>,
}

/// A header condition.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct HeaderMatch {
    /// Header name (case-insensitive).
    pub name: String,
    /// The value is exactly this.
    #[serde(default)]
    pub exact: Option<String>,
    /// The whole value matches this regular expression.
    #[serde(default)]
    pub regex: Option<String>,
    /// The header is present (`true`) or absent (`false`).
    #[serde(default)]
    pub present: Option<bool>,
}

/// Upstream 5xx handling.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum UpstreamErrors {
    /// Pass the upstream's response through unchanged.
    #[default]
    PassThrough,
    /// Replace the body with the proxy's JSON error (status kept), so tracebacks never leak.
    Json,
}
