//! Plugin configuration of the cache filter, parsed and validated in `on_configure`.

use filter_common::{parse_config, ConfigError};
use gateway_contract::headers;
use serde::Deserialize;

/// Request headers that commonly change a response without being part of the URL. A request
/// carrying one is answered from upstream and its response is not stored, so it cannot poison
/// the entry other callers get ("unkeyed input" cache poisoning).
pub const DEFAULT_UNKEYED_HEADERS: &[&str] = &[
    "x-forwarded-host",
    "x-forwarded-scheme",
    "x-forwarded-server",
    "x-host",
    "x-original-url",
    "x-rewrite-url",
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
    "forwarded",
];

/// The auth filter's default identity and tenant headers.
pub const DEFAULT_IDENTITY_HEADERS: &[&str] = &[headers::IDENTITY, headers::TENANT];

/// The validated configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheConfig {
    /// Which requests are cached, first match wins. Unmatched requests pass untouched.
    pub rules: Vec<CacheRule>,
    /// Request headers that are part of the key (beyond method, authority, path and body).
    #[serde(default)]
    pub key_headers: Vec<String>,
    /// Request headers that separate tenants (e.g. the auth filter's tenant or identity header):
    /// part of the key, so one tenant never gets another's answer.
    #[serde(default)]
    pub partition_headers: Vec<String>,
    /// Headers the auth filter sets on requests it identified (its `identity_header` and
    /// `tenant_header`). A request carrying one, or `Authorization`, is authorised: its response
    /// is stored only under a key partitioned by one of these headers, or when marked `public`.
    #[serde(default = "default_identity_headers")]
    pub identity_headers: Vec<String>,
    /// Requests with any of these headers bypass the cache (see [`DEFAULT_UNKEYED_HEADERS`]).
    #[serde(default = "default_unkeyed_headers")]
    pub unkeyed_headers: Vec<String>,
    /// Largest response body stored.
    #[serde(default = "default_max_entry_bytes")]
    pub max_entry_bytes: usize,
    /// Most bytes all entries may hold together.
    #[serde(default = "default_max_total_bytes")]
    pub max_total_bytes: usize,
    /// Largest request body hashed into a key; larger POSTs are not cached.
    #[serde(default = "default_max_request_body_bytes")]
    pub max_request_body_bytes: usize,
    /// A caller holding `scope` may send `header: 1` to skip the cache.
    #[serde(default)]
    pub bypass: Option<BypassConfig>,
}

/// A set of cached requests.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheRule {
    /// Path prefix (query ignored).
    pub path_prefix: String,
    /// Methods cached: GET, HEAD and POST. Default: GET and HEAD.
    #[serde(default = "default_methods")]
    pub methods: Vec<String>,
    /// Freshness when the upstream does not say (`max-age`/`s-maxage` win).
    pub ttl_seconds: u64,
    /// How long past freshness an entry may answer when the upstream fails (`stale-if-error`
    /// from the upstream wins).
    #[serde(default)]
    pub stale_if_error_seconds: u64,
}

/// The authorised cache bypass.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BypassConfig {
    /// Request header asking for a bypass.
    #[serde(default = "default_bypass_header")]
    pub header: String,
    /// Scope the caller must hold.
    pub scope: String,
    /// Header the auth filter forwards scopes in.
    #[serde(default = "default_scopes_header")]
    pub scopes_header: String,
}

fn default_unkeyed_headers() -> Vec<String> {
    DEFAULT_UNKEYED_HEADERS
        .iter()
        .map(|h| h.to_string())
        .collect()
}
fn default_identity_headers() -> Vec<String> {
    DEFAULT_IDENTITY_HEADERS
        .iter()
        .map(|h| h.to_string())
        .collect()
}
fn default_max_entry_bytes() -> usize {
    1 << 20
}
fn default_max_total_bytes() -> usize {
    32 << 20
}
fn default_max_request_body_bytes() -> usize {
    64 << 10
}
fn default_methods() -> Vec<String> {
    vec!["GET".into(), "HEAD".into()]
}
fn default_bypass_header() -> String {
    "x-cache-bypass".into()
}
fn default_scopes_header() -> String {
    headers::SCOPES.into()
}

impl CacheConfig {
    /// Parses and validates a plugin configuration; header names come out lowercased and
    /// methods uppercased.
    pub fn from_json(bytes: &[u8]) -> Result<Self, ConfigError> {
        let mut config: CacheConfig = parse_config(bytes, "a JSON object with a \"rules\" list")?;
        for header in config
            .key_headers
            .iter_mut()
            .chain(&mut config.partition_headers)
            .chain(&mut config.identity_headers)
            .chain(&mut config.unkeyed_headers)
        {
            header.make_ascii_lowercase();
        }
        if let Some(bypass) = &mut config.bypass {
            bypass.header.make_ascii_lowercase();
            bypass.scopes_header.make_ascii_lowercase();
        }
        for rule in &mut config.rules {
            for method in &mut rule.methods {
                method.make_ascii_uppercase();
            }
        }
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if self.rules.is_empty() {
            return Err(ConfigError::new("rules", "at least one rule is required"));
        }
        for (i, rule) in self.rules.iter().enumerate() {
            let field = format!("rules[{i}]");
            if !rule.path_prefix.starts_with('/') {
                return Err(ConfigError::new(
                    format!("{field}.path_prefix"),
                    "must start with \"/\"",
                ));
            }
            if rule.methods.is_empty() {
                return Err(ConfigError::new(
                    format!("{field}.methods"),
                    "list at least one method",
                ));
            }
            if let Some(m) = rule
                .methods
                .iter()
                .find(|m| !["GET", "HEAD", "POST"].contains(&m.as_str()))
            {
                return Err(ConfigError::new(
                    format!("{field}.methods"),
                    format!("{m:?} is not cacheable (GET, HEAD, POST)"),
                ));
            }
            if rule.ttl_seconds == 0 {
                return Err(ConfigError::new(
                    format!("{field}.ttl_seconds"),
                    "must be greater than 0",
                ));
            }
        }
        for (field, headers) in [
            ("key_headers", &self.key_headers),
            ("partition_headers", &self.partition_headers),
            ("identity_headers", &self.identity_headers),
            ("unkeyed_headers", &self.unkeyed_headers),
        ] {
            if let Some(h) = headers.iter().find(|h| h.is_empty() || h.starts_with(':')) {
                return Err(ConfigError::new(
                    field,
                    format!("{h:?} is not a request header name"),
                ));
            }
        }
        if self.max_entry_bytes == 0 || self.max_total_bytes < self.max_entry_bytes {
            return Err(ConfigError::new(
                "max_total_bytes",
                "must be at least max_entry_bytes, which must be greater than 0",
            ));
        }
        if let Some(bypass) = &self.bypass {
            if bypass.scope.is_empty() || bypass.scope.contains(' ') {
                return Err(ConfigError::new(
                    "bypass.scope",
                    "must be one scope, without spaces",
                ));
            }
        }
        Ok(())
    }

    /// The index of the rule for a request, if it is cacheable at all.
    pub fn rule_for(&self, method: &str, path: &str) -> Option<usize> {
        let path = path.split('?').next().unwrap_or_default();
        self.rules
            .iter()
            .position(|r| path.starts_with(&r.path_prefix) && r.methods.iter().any(|m| m == method))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_match_method_and_prefix() {
        let config = CacheConfig::from_json(
            br#"{"rules": [{"path_prefix": "/v1/rag/query", "methods": ["post"], "ttl_seconds": 3600},
                           {"path_prefix": "/", "ttl_seconds": 60}]}"#,
        )
        .unwrap();
        assert_eq!(config.rule_for("POST", "/v1/rag/query?x=1"), Some(0));
        assert_eq!(config.rule_for("GET", "/v1/rag/query"), Some(1));
        assert!(config.rule_for("POST", "/v1/other").is_none());
        assert!(config.rule_for("DELETE", "/").is_none());
        assert!(config
            .unkeyed_headers
            .contains(&"x-forwarded-host".to_string()));
        assert_eq!(
            config.identity_headers,
            ["x-gateway-identity", "x-gateway-tenant"]
        );
    }

    #[test]
    fn the_shipped_example_is_valid() {
        let example = include_str!("../../../envoy-config/plugins/cache.json");
        CacheConfig::from_json(example.as_bytes()).expect("envoy-config/plugins/cache.json");
    }

    #[test]
    fn errors_name_the_field() {
        let cases = [
            ("", "empty"),
            (r#"{"rules": []}"#, "rules"),
            (
                r#"{"rules": [{"path_prefix": "x", "ttl_seconds": 1}]}"#,
                "rules[0].path_prefix",
            ),
            (
                r#"{"rules": [{"path_prefix": "/", "methods": ["PUT"], "ttl_seconds": 1}]}"#,
                "rules[0].methods",
            ),
            (
                r#"{"rules": [{"path_prefix": "/", "ttl_seconds": 0}]}"#,
                "rules[0].ttl_seconds",
            ),
            (r#"{"rules": [{"path_prefix": "/"}]}"#, "ttl_seconds"),
            (
                r#"{"rules": [{"path_prefix": "/", "ttl_seconds": 1}], "key_headers": [":path"]}"#,
                "key_headers",
            ),
            (
                r#"{"rules": [{"path_prefix": "/", "ttl_seconds": 1}], "identity_headers": [""]}"#,
                "identity_headers",
            ),
            (
                r#"{"rules": [{"path_prefix": "/", "ttl_seconds": 1}], "max_entry_bytes": 10, "max_total_bytes": 5}"#,
                "max_total_bytes",
            ),
            (
                r#"{"rules": [{"path_prefix": "/", "ttl_seconds": 1}], "bypass": {"scope": "a b"}}"#,
                "bypass.scope",
            ),
        ];
        for (json, expected) in cases {
            let err = CacheConfig::from_json(json.as_bytes())
                .expect_err(json)
                .to_string();
            assert!(err.contains(expected), "{json}: {err:?} lacks {expected:?}");
        }
    }
}
