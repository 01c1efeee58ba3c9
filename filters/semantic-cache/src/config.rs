//! Plugin configuration of the semantic-cache filter, parsed and validated in `on_configure`.

use filter_common::{check_header_name, parse_config, ConfigError};
use serde::Deserialize;

/// The validated configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SemanticCacheConfig {
    /// Whose answers a request may be served: the verified tenant's or the verified identity's.
    #[serde(default)]
    pub partition_by: PartitionBy,
    /// Header the auth filter forwards the caller's identity in.
    #[serde(default = "default_identity_header")]
    pub identity_header: String,
    /// Header the auth filter forwards the caller's tenant in.
    #[serde(default = "default_tenant_header")]
    pub tenant_header: String,
    /// Separates caches that share a shared-data backend and a vector service (part of the
    /// partition).
    #[serde(default)]
    pub namespace: String,
    /// The trailing messages (the last user turn and those before it, system prompts aside) that
    /// make a question: its key and its embedded text.
    #[serde(default = "default_context_messages")]
    pub context_messages: usize,
    /// How long an answer is served from cache.
    #[serde(default = "default_ttl_seconds")]
    pub ttl_seconds: u64,
    /// Request bodies larger than this bypass the cache.
    #[serde(default = "default_max_request_body_bytes")]
    pub max_request_body_bytes: usize,
    /// Answers larger than this (the JSON body, or the whole event stream) are not stored: they
    /// share the proxy's shared data with every other filter's state.
    #[serde(default = "default_max_answer_bytes")]
    pub max_answer_bytes: usize,
    /// The similarity search; without it only exact repeats are answered from cache.
    #[serde(default)]
    pub index: Option<IndexConfig>,
}

/// Whose earlier answers a request may get.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PartitionBy {
    /// The verified tenant (the identity when the auth filter names no tenant).
    #[default]
    Tenant,
    /// The verified identity.
    Identity,
}

/// The vector service the filter asks for similar questions.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IndexConfig {
    /// Cluster serving the look-up endpoint.
    pub cluster: String,
    /// `:authority` of the call; the cluster's name when unset.
    #[serde(default)]
    pub authority: Option<String>,
    /// Path of the look-up endpoint.
    #[serde(default = "default_index_path")]
    pub path: String,
    /// Bearer token the service expects (`PYML_SEMANTIC_CACHE_TOKEN` in python-ml).
    pub token: Token,
    /// How long a request waits for the look-up before it goes upstream as a miss.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// Lowest cosine similarity served as a hit.
    #[serde(default = "default_min_similarity")]
    pub min_similarity: f64,
    /// Most similar questions the service returns, best first; the first whose answer is still
    /// stored is served.
    #[serde(default = "default_candidates")]
    pub candidates: u32,
    /// Questions longer than this (in characters) are not embedded: exact repeats only.
    #[serde(default = "default_max_text_chars")]
    pub max_text_chars: usize,
}

/// A secret that never reaches a log or a `Debug` print.
#[derive(Clone, Deserialize)]
pub struct Token(String);

impl Token {
    /// The secret itself, for the `authorization` header.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

fn default_identity_header() -> String {
    gateway_contract::headers::IDENTITY.into()
}
fn default_tenant_header() -> String {
    gateway_contract::headers::TENANT.into()
}
fn default_context_messages() -> usize {
    3
}
fn default_ttl_seconds() -> u64 {
    3600
}
fn default_max_request_body_bytes() -> usize {
    256 * 1024
}
fn default_max_answer_bytes() -> usize {
    64 * 1024
}
fn default_index_path() -> String {
    "/v1/semantic-cache/lookup".into()
}
fn default_timeout_ms() -> u64 {
    500
}
fn default_min_similarity() -> f64 {
    0.9
}
fn default_candidates() -> u32 {
    4
}
fn default_max_text_chars() -> usize {
    8000
}

/// Longest TTL: a week (the vector service keeps entries no longer either).
pub const MAX_TTL_SECONDS: u64 = 7 * 86_400;
/// Most trailing messages in a question.
pub const MAX_CONTEXT_MESSAGES: usize = 64;
/// Most candidates one look-up returns.
pub const MAX_CANDIDATES: u32 = 8;

impl SemanticCacheConfig {
    /// Parses and validates a plugin configuration.
    pub fn from_json(bytes: &[u8]) -> Result<Self, ConfigError> {
        let mut config: SemanticCacheConfig = parse_config(bytes, "a JSON object")?;
        config.identity_header.make_ascii_lowercase();
        config.tenant_header.make_ascii_lowercase();
        check_header_name("identity_header", &config.identity_header)?;
        check_header_name("tenant_header", &config.tenant_header)?;
        if !(1..=MAX_CONTEXT_MESSAGES).contains(&config.context_messages) {
            return Err(ConfigError::new(
                "context_messages",
                format!("must be 1 to {MAX_CONTEXT_MESSAGES}"),
            ));
        }
        if !(1..=MAX_TTL_SECONDS).contains(&config.ttl_seconds) {
            return Err(ConfigError::new(
                "ttl_seconds",
                format!("must be 1 to {MAX_TTL_SECONDS}"),
            ));
        }
        for (field, value) in [
            ("max_request_body_bytes", config.max_request_body_bytes),
            ("max_answer_bytes", config.max_answer_bytes),
        ] {
            if value == 0 {
                return Err(ConfigError::new(field, "must be positive"));
            }
        }
        if let Some(index) = &config.index {
            index.check()?;
        }
        Ok(config)
    }
}

impl IndexConfig {
    fn check(&self) -> Result<(), ConfigError> {
        if self.cluster.is_empty() {
            return Err(ConfigError::new("index.cluster", "must be non-empty"));
        }
        if !self.path.starts_with('/') {
            return Err(ConfigError::new("index.path", "must start with '/'"));
        }
        // The token goes into a header value: visible ASCII only.
        if self.token.0.is_empty() || !self.token.0.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(ConfigError::new(
                "index.token",
                "must be non-empty visible ASCII",
            ));
        }
        if !(1..=10_000).contains(&self.timeout_ms) {
            return Err(ConfigError::new("index.timeout_ms", "must be 1 to 10000"));
        }
        if !(self.min_similarity > 0.0 && self.min_similarity <= 1.0) {
            return Err(ConfigError::new(
                "index.min_similarity",
                "must be above 0 and at most 1",
            ));
        }
        if !(1..=MAX_CANDIDATES).contains(&self.candidates) {
            return Err(ConfigError::new(
                "index.candidates",
                format!("must be 1 to {MAX_CANDIDATES}"),
            ));
        }
        if self.max_text_chars == 0 {
            return Err(ConfigError::new("index.max_text_chars", "must be positive"));
        }
        Ok(())
    }

    /// The `:authority` to call with.
    pub fn authority(&self) -> &str {
        self.authority.as_deref().unwrap_or(&self.cluster)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_apply_and_the_token_is_never_printed() {
        let config = SemanticCacheConfig::from_json(
            br#"{"index": {"cluster": "python-ml", "token": "s3cret-token"}}"#,
        )
        .unwrap();
        assert_eq!(config.partition_by, PartitionBy::Tenant);
        assert_eq!(config.context_messages, 3);
        let index = config.index.as_ref().unwrap();
        assert_eq!(index.authority(), "python-ml");
        assert_eq!(index.path, "/v1/semantic-cache/lookup");
        assert_eq!(index.min_similarity, 0.9);
        assert!(!format!("{config:?}").contains("s3cret"));
        assert!(SemanticCacheConfig::from_json(b"{}")
            .unwrap()
            .index
            .is_none());
    }

    #[test]
    fn bad_values_name_their_field() {
        for (json, field) in [
            (r#"{"ttl_seconds": 0}"#, "ttl_seconds"),
            (r#"{"context_messages": 65}"#, "context_messages"),
            (r#"{"partition_by": "everyone"}"#, "partition_by"),
            (r#"{"tenant_header": ":path"}"#, "tenant_header"),
            (r#"{"max_answer_bytes": 0}"#, "max_answer_bytes"),
            (
                r#"{"index": {"cluster": "c", "token": "a b"}}"#,
                "index.token",
            ),
            (
                r#"{"index": {"cluster": "c", "token": "t", "min_similarity": 1.5}}"#,
                "index.min_similarity",
            ),
            (
                r#"{"index": {"cluster": "c", "token": "t", "candidates": 0}}"#,
                "index.candidates",
            ),
            (
                r#"{"index": {"cluster": "c", "token": "t", "path": "x"}}"#,
                "index.path",
            ),
            (r#"{"index": {"cluster": "c"}}"#, "index"),
        ] {
            let error = SemanticCacheConfig::from_json(json.as_bytes()).unwrap_err();
            assert_eq!(error.field, field, "{json}: {error}");
        }
    }
}
