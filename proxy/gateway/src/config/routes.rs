//! Routes: what requests they match and where they go.

use super::values::{optional_duration, HeaderName};
use regex::Regex;
use serde::{Deserialize, Deserializer};
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

/// Route conditions, compiled as they are read (regular expressions built, names in one case).
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
    /// Host names (the `Host` header or `:authority`, without the port), lower case; any of them
    /// matches.
    #[serde(default, deserialize_with = "lower_case")]
    pub hosts: Vec<String>,
    /// Methods, upper case; any of them matches.
    #[serde(default, deserialize_with = "upper_case")]
    pub methods: Vec<String>,
    /// Header conditions; all must hold.
    #[serde(default)]
    pub headers: Vec<HeaderMatch>,
}

fn lower_case<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    let names = Vec::<String>::deserialize(d)?;
    Ok(names.iter().map(|name| name.to_ascii_lowercase()).collect())
}

fn upper_case<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    let names = Vec::<String>::deserialize(d)?;
    Ok(names.iter().map(|name| name.to_ascii_uppercase()).collect())
}

/// How the path (without the query string) is matched; written as a map with exactly one of
/// `prefix`, `exact` or `regex`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(try_from = "PathMatchFile")]
pub enum PathMatch {
    /// The path starts with this.
    Prefix(String),
    /// The path is exactly this.
    Exact(String),
    /// The whole path matches this.
    Regex(Pattern),
}

impl TryFrom<PathMatchFile> for PathMatch {
    type Error = &'static str;

    fn try_from(written: PathMatchFile) -> Result<Self, Self::Error> {
        match (written.prefix, written.exact, written.regex) {
            (Some(prefix), None, None) => Ok(Self::Prefix(prefix)),
            (None, Some(exact), None) => Ok(Self::Exact(exact)),
            (None, None, Some(regex)) => Ok(Self::Regex(regex)),
            _ => Err("set exactly one of prefix, exact or regex"),
        }
    }
}

/// A path condition as written: each way to match is a field.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PathMatchFile {
    #[serde(default)]
    prefix: Option<String>,
    #[serde(default)]
    exact: Option<String>,
    #[serde(default)]
    regex: Option<Pattern>,
}

/// A header condition: the header (case-insensitive) and what its value must be.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(try_from = "HeaderMatchFile")]
pub struct HeaderMatch {
    /// The header.
    pub name: HeaderName,
    /// What its first value must be.
    pub condition: HeaderCondition,
}

/// What a header's value must be.
#[derive(Debug, Clone, PartialEq)]
pub enum HeaderCondition {
    /// Exactly this.
    Exact(String),
    /// Matched whole by this.
    Regex(Pattern),
    /// Present (`true`) or absent (`false`).
    Present(bool),
}

/// A header condition as written: the name and exactly one of `exact`, `regex` or `present`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HeaderMatchFile {
    name: HeaderName,
    #[serde(default)]
    exact: Option<String>,
    #[serde(default)]
    regex: Option<Pattern>,
    #[serde(default)]
    present: Option<bool>,
}

impl TryFrom<HeaderMatchFile> for HeaderMatch {
    type Error = &'static str;

    fn try_from(written: HeaderMatchFile) -> Result<Self, Self::Error> {
        let condition = match (written.exact, written.regex, written.present) {
            (Some(exact), None, None) => HeaderCondition::Exact(exact),
            (None, Some(regex), None) => HeaderCondition::Regex(regex),
            (None, None, Some(present)) => HeaderCondition::Present(present),
            _ => return Err("set exactly one of exact, regex or present"),
        };
        Ok(Self {
            name: written.name,
            condition,
        })
    }
}

/// A regular expression that must match the whole input, as in Envoy's `safe_regex`.
#[derive(Debug, Clone)]
pub struct Pattern(Regex);

impl Pattern {
    /// The expression as written.
    pub fn as_str(&self) -> &str {
        let anchored = self.0.as_str();
        anchored
            .strip_prefix("^(?:")
            .and_then(|rest| rest.strip_suffix(")$"))
            .unwrap_or(anchored)
    }

    /// Whether `text` matches as a whole.
    pub fn is_match(&self, text: &str) -> bool {
        self.0.is_match(text)
    }
}

impl PartialEq for Pattern {
    fn eq(&self, other: &Self) -> bool {
        self.0.as_str() == other.0.as_str()
    }
}

impl<'de> Deserialize<'de> for Pattern {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let pattern = String::deserialize(d)?;
        Regex::new(&format!("^(?:{pattern})$"))
            .map(Self)
            .map_err(|e| serde::de::Error::custom(format!("invalid regular expression: {e}")))
    }
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
