//! Plugin configuration of the ai-tokens filter, parsed and validated in `on_configure`.

use filter_common::{check_entry_name, check_header_name, parse_config, ConfigError};
use serde::Deserialize;

/// The validated configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AiTokensConfig {
    /// The budgets; a request must fit in every one that applies to it (the tightest wins).
    pub budgets: Vec<BudgetConfig>,
    /// What a request that sets no `max_tokens` (nor `max_completion_tokens`) is assumed to use
    /// for its answer when it is reserved.
    #[serde(default = "default_max_tokens")]
    pub default_max_tokens: u64,
    /// Request bodies larger than this are refused (413): their cost cannot be read.
    #[serde(default = "default_max_request_body_bytes")]
    pub max_request_body_bytes: usize,
    /// Non-streamed answers larger than this are not read for `usage`; their estimate stands.
    #[serde(default = "default_max_response_body_bytes")]
    pub max_response_body_bytes: usize,
    /// Stop a streamed answer that outgrows its reservation when a budget cannot cover the rest:
    /// the client gets an error event and `[DONE]` instead of the remaining text.
    #[serde(default)]
    pub stop_streams_over_budget: bool,
    /// Header the auth filter forwards the caller's identity in (for `"key": "identity"`, and the
    /// usage metrics).
    #[serde(default = "default_identity_header")]
    pub identity_header: String,
    /// Most (identity, model) pairs with token counters of their own; past it, usage is counted
    /// under `other`. 0: no counters per identity and model.
    #[serde(default = "default_max_usage_series")]
    pub max_usage_series: usize,
    /// Header the auth filter forwards the caller's tenant in (for `"key": "tenant"`).
    #[serde(default = "default_tenant_header")]
    pub tenant_header: String,
}

/// One budget: tokens per period, per key value.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BudgetConfig {
    /// Name, part of the shared-data key and of refusals. Unique.
    pub name: String,
    /// What separates callers.
    pub key: KeyConfig,
    /// Tokens allowed per `per` (prompt and completion together).
    pub tokens: u64,
    /// The window the tokens are counted in.
    pub per: Period,
}

/// What a budget is kept per.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub enum KeyConfig {
    /// The authenticated identity, from `identity_header`.
    Identity,
    /// The authenticated tenant, from `tenant_header`.
    Tenant,
    /// The `model` the request names.
    Model,
    /// The value of a request header.
    Header(String),
    /// An API key header; the key is hashed before it becomes part of a shared-data key.
    ApiKey(String),
}

/// Budget windows (fixed, aligned to the Unix epoch).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Period {
    /// One minute.
    Minute,
    /// One hour.
    Hour,
    /// One day (UTC).
    Day,
}

impl Period {
    /// Length in seconds.
    pub fn seconds(self) -> u64 {
        match self {
            Period::Minute => 60,
            Period::Hour => 3600,
            Period::Day => 86_400,
        }
    }
}

fn default_max_tokens() -> u64 {
    4096
}
fn default_max_request_body_bytes() -> usize {
    1024 * 1024
}
fn default_max_response_body_bytes() -> usize {
    4 * 1024 * 1024
}
fn default_max_usage_series() -> usize {
    1000
}
fn default_identity_header() -> String {
    gateway_contract::headers::IDENTITY.into()
}
fn default_tenant_header() -> String {
    gateway_contract::headers::TENANT.into()
}

impl AiTokensConfig {
    /// Parses and validates a plugin configuration.
    pub fn from_json(bytes: &[u8]) -> Result<Self, ConfigError> {
        let mut config: AiTokensConfig =
            parse_config(bytes, "a JSON object with a \"budgets\" list")?;
        config.identity_header.make_ascii_lowercase();
        config.tenant_header.make_ascii_lowercase();
        for budget in &mut config.budgets {
            if let KeyConfig::Header(name) | KeyConfig::ApiKey(name) = &mut budget.key {
                name.make_ascii_lowercase();
            }
        }
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if self.budgets.is_empty() {
            return Err(ConfigError::new(
                "budgets",
                "at least one budget is required",
            ));
        }
        if self.default_max_tokens == 0 {
            return Err(ConfigError::new(
                "default_max_tokens",
                "must be greater than 0",
            ));
        }
        for (i, budget) in self.budgets.iter().enumerate() {
            let field = format!("budgets[{i}]");
            check_entry_name(
                &field,
                &budget.name,
                self.budgets[..i].iter().map(|b| b.name.as_str()),
            )?;
            if budget.tokens == 0 {
                return Err(ConfigError::new(
                    format!("{field}.tokens"),
                    "must be greater than 0",
                ));
            }
            if let KeyConfig::Header(name) | KeyConfig::ApiKey(name) = &budget.key {
                check_header_name(&format!("{field}.key"), name)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_budgets_with_defaults() {
        let config = AiTokensConfig::from_json(
            br#"{"budgets": [
                {"name": "per-identity", "key": "identity", "tokens": 10000, "per": "minute"},
                {"name": "per-key", "key": {"api_key": "X-API-Key"}, "tokens": 1000000, "per": "day"}
            ]}"#,
        )
        .unwrap();
        assert_eq!(config.budgets[1].key, KeyConfig::ApiKey("x-api-key".into()));
        assert_eq!(config.default_max_tokens, 4096);
        assert_eq!(config.identity_header, "x-gateway-identity");
        assert_eq!(config.budgets[1].per.seconds(), 86_400);
    }

    #[test]
    fn refuses_what_cannot_work() {
        for (json, field) in [
            (r#"{"budgets": []}"#, "budgets"),
            (
                r#"{"budgets": [{"name": "a|b", "key": "identity", "tokens": 1, "per": "minute"}]}"#,
                "budgets[0].name",
            ),
            (
                r#"{"budgets": [{"name": "a", "key": "identity", "tokens": 0, "per": "minute"}]}"#,
                "budgets[0].tokens",
            ),
            (
                r#"{"budgets": [{"name": "a", "key": "identity", "tokens": 1, "per": "minute"},
                                {"name": "a", "key": "model", "tokens": 1, "per": "day"}]}"#,
                "budgets[1].name",
            ),
            (
                r#"{"budgets": [{"name": "a", "key": {"header": ":path"}, "tokens": 1, "per": "minute"}]}"#,
                "budgets[0].key",
            ),
            (
                r#"{"budgets": [{"name": "a", "key": "identity", "tokens": 1, "per": "second"}]}"#,
                "budgets[0].per",
            ),
            (
                r#"{"budgets": [{"name": "a", "key": "identity", "tokens": 1, "per": "minute"}], "default_max_tokens": 0}"#,
                "default_max_tokens",
            ),
        ] {
            let err = AiTokensConfig::from_json(json.as_bytes()).unwrap_err();
            assert_eq!(err.field, field, "{json}: {err}");
        }
    }
}
