//! Plugin configuration of the rate-limit filter, parsed and validated in `on_configure`.

use filter_common::{check_entry_name, check_header_name, parse_config, ConfigError};
use serde::Deserialize;

/// The validated configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitConfig {
    /// The limits; a request must pass every one that applies to it.
    pub limits: Vec<LimitConfig>,
    /// Count and report, but never reject.
    #[serde(default)]
    pub shadow_mode: bool,
    /// Header the auth filter forwards the caller's identity in (for `"key": "identity"`).
    #[serde(default = "default_identity_header")]
    pub identity_header: String,
    /// Add `RateLimit-*` and `X-RateLimit-*` headers to responses.
    #[serde(default = "default_true")]
    pub response_headers: bool,
}

/// One limit: a token bucket per key value.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitConfig {
    /// Name, part of the bucket key and of log lines. Unique.
    pub name: String,
    /// What separates callers.
    pub key: KeyConfig,
    /// Requests allowed per `per`.
    pub requests: u64,
    /// The period `requests` refill over.
    pub per: Period,
    /// Bucket size: requests allowed at once. Default: `requests`.
    #[serde(default)]
    pub burst: Option<u64>,
    /// Only requests whose path starts with this prefix count. Default: all.
    #[serde(default)]
    pub path_prefix: Option<String>,
}

/// What a bucket is keyed by.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub enum KeyConfig {
    /// The authenticated identity, from `identity_header`.
    Identity,
    /// The client's IP address.
    ClientAddress,
    /// The matched route (`xds.route_name`).
    Route,
    /// The value of a request header (e.g. a tenant header).
    Header(String),
    /// An API key header; the key is hashed before it becomes part of a bucket key.
    ApiKey(String),
}

/// Refill periods.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Period {
    /// One second.
    Second,
    /// One minute.
    Minute,
    /// One hour.
    Hour,
    /// One day.
    Day,
}

impl Period {
    /// Length in seconds.
    pub fn seconds(self) -> u64 {
        match self {
            Period::Second => 1,
            Period::Minute => 60,
            Period::Hour => 3600,
            Period::Day => 86_400,
        }
    }
}

impl LimitConfig {
    /// Bucket capacity.
    pub fn capacity(&self) -> u64 {
        self.burst.unwrap_or(self.requests)
    }
}

fn default_identity_header() -> String {
    gateway_contract::headers::IDENTITY.into()
}
fn default_true() -> bool {
    true
}

impl RateLimitConfig {
    /// Parses and validates a plugin configuration.
    pub fn from_json(bytes: &[u8]) -> Result<Self, ConfigError> {
        let mut config: RateLimitConfig =
            parse_config(bytes, "a JSON object with a \"limits\" list")?;
        config.identity_header.make_ascii_lowercase();
        for limit in &mut config.limits {
            if let KeyConfig::Header(name) | KeyConfig::ApiKey(name) = &mut limit.key {
                name.make_ascii_lowercase();
            }
        }
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if self.limits.is_empty() {
            return Err(ConfigError::new("limits", "at least one limit is required"));
        }
        for (i, limit) in self.limits.iter().enumerate() {
            let field = format!("limits[{i}]");
            check_entry_name(
                &field,
                &limit.name,
                self.limits[..i].iter().map(|l| l.name.as_str()),
            )?;
            if limit.requests == 0 {
                return Err(ConfigError::new(
                    format!("{field}.requests"),
                    "must be greater than 0",
                ));
            }
            if limit.burst == Some(0) {
                return Err(ConfigError::new(
                    format!("{field}.burst"),
                    "must be greater than 0",
                ));
            }
            if let KeyConfig::Header(name) | KeyConfig::ApiKey(name) = &limit.key {
                check_header_name(&format!("{field}.key"), name)?;
            }
            if let Some(prefix) = &limit.path_prefix {
                if !prefix.starts_with('/') {
                    return Err(ConfigError::new(
                        format!("{field}.path_prefix"),
                        "must start with \"/\"",
                    ));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_limits() {
        let config = RateLimitConfig::from_json(
            br#"{"limits": [
                {"name": "per-user", "key": "identity", "requests": 10, "per": "second"},
                {"name": "per-tenant", "key": {"header": "X-Tenant"}, "requests": 600, "per": "minute", "burst": 50}
            ]}"#,
        )
        .unwrap();
        assert_eq!(config.limits[0].key, KeyConfig::Identity);
        assert_eq!(config.limits[0].capacity(), 10);
        assert_eq!(config.limits[1].key, KeyConfig::Header("x-tenant".into()));
        assert_eq!(config.limits[1].capacity(), 50);
        assert!(!config.shadow_mode);
    }

    #[test]
    fn the_shipped_example_is_valid() {
        let example = include_str!("../../../envoy-config/plugins/rate-limit.json");
        RateLimitConfig::from_json(example.as_bytes())
            .expect("envoy-config/plugins/rate-limit.json");
    }

    #[test]
    fn errors_name_the_field() {
        let cases = [
            ("", "empty"),
            (r#"{"limits": []}"#, "limits"),
            (
                r#"{"limits": [{"name": "a", "key": "identity", "requests": 0, "per": "second"}]}"#,
                "limits[0].requests",
            ),
            (
                r#"{"limits": [{"name": "a", "key": "identity", "requests": 1, "per": "fortnight"}]}"#,
                "limits[0].per",
            ),
            (
                r#"{"limits": [{"name": "a", "key": "nose", "requests": 1, "per": "second"}]}"#,
                "limits[0].key",
            ),
            (
                r#"{"limits": [{"name": "a", "key": "route", "requests": 1, "per": "second"}, {"name": "a", "key": "route", "requests": 1, "per": "second"}]}"#,
                "limits[1].name",
            ),
            (
                r#"{"limits": [{"name": "a", "key": {"header": ":path"}, "requests": 1, "per": "second"}]}"#,
                "limits[0].key",
            ),
        ];
        for (json, expected) in cases {
            let err = RateLimitConfig::from_json(json.as_bytes())
                .expect_err(json)
                .to_string();
            assert!(err.contains(expected), "{json}: {err:?} lacks {expected:?}");
        }
    }
}
