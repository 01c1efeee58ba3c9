//! Plugin configuration of the auth filter: parsed from JSON and validated once, in `on_configure`.
//!
//! Every error names the field it is about (`jwt.providers[0].algorithms: ...`), so the log line a
//! refused configuration produces says what to fix.

use gateway_contract::headers;
use serde::Deserialize;

/// Default header a client sends its API key in.
pub const DEFAULT_API_KEY_HEADER: &str = "x-api-key";
/// Default realm named in `WWW-Authenticate`.
pub const DEFAULT_REALM: &str = "gateway";
/// Default clock skew allowed when checking `exp` and `nbf`.
pub const DEFAULT_CLOCK_SKEW_SECONDS: u64 = 60;
/// Default largest token accepted; larger ones are refused before any parsing.
pub const DEFAULT_MAX_TOKEN_BYTES: usize = 8192;
/// Default lifetime of a fetched JWKS.
pub const DEFAULT_JWKS_CACHE_SECONDS: u64 = 300;

/// The validated configuration of the auth filter.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// Header that carries the authenticated identity upstream.
    #[serde(default = "default_identity_header")]
    pub identity_header: String,
    /// Header that carries the caller's scopes upstream.
    #[serde(default = "default_scopes_header")]
    pub scopes_header: String,
    /// Header that carries the caller's tenant upstream.
    #[serde(default = "default_tenant_header")]
    pub tenant_header: String,
    /// Realm named in the `WWW-Authenticate` challenge.
    #[serde(default = "default_realm")]
    pub realm: String,
    /// API-key authentication.
    #[serde(default)]
    pub api_key: Option<ApiKeyConfig>,
    /// JWT authentication.
    #[serde(default)]
    pub jwt: Option<JwtConfig>,
    /// Per-path requirements, first match wins. Unmatched requests need valid credentials and no
    /// particular scope.
    #[serde(default)]
    pub rules: Vec<Rule>,
}

/// Where API keys are read from and which keys are valid.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKeyConfig {
    /// Request header holding the key.
    #[serde(default = "default_api_key_header")]
    pub header: String,
    /// Optional query parameter holding the key, checked when the header is absent.
    #[serde(default)]
    pub query_parameter: Option<String>,
    /// Remove the key from the request before it goes upstream (Kong's `hide_credentials`).
    #[serde(default = "default_true")]
    pub hide_credentials: bool,
    /// The valid keys and the identity each one authenticates.
    pub keys: Vec<ApiKeyEntry>,
}

/// One valid API key. Give either the key itself or its SHA-256 digest (hex), so configuration
/// files need not hold secrets in clear.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKeyEntry {
    /// The identity forwarded upstream for this key.
    pub identity: String,
    /// The key in clear.
    #[serde(default)]
    pub key: Option<String>,
    /// Hex SHA-256 of the key.
    #[serde(default)]
    pub sha256: Option<String>,
    /// Scopes granted to this key.
    #[serde(default)]
    pub scopes: Vec<String>,
    /// Tenant of this key, forwarded in the tenant header.
    #[serde(default)]
    pub tenant: Option<String>,
}

/// JWT authentication: where tokens come from and who may issue them.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtConfig {
    /// Trusted issuers. A token is checked against the provider whose `issuer` equals its `iss`.
    pub providers: Vec<ProviderConfig>,
    /// Where the token is read from, in order. Default: `Authorization: Bearer`.
    #[serde(default = "default_token_sources")]
    pub from: Vec<TokenSource>,
    /// Tolerance for `exp` and `nbf`, in seconds.
    #[serde(default = "default_clock_skew")]
    pub clock_skew_seconds: u64,
    /// Longest token accepted, in bytes.
    #[serde(default = "default_max_token_bytes")]
    pub max_token_bytes: usize,
    /// Keep the token on the request sent upstream (default: removed).
    #[serde(default)]
    pub forward_token: bool,
}

/// One trusted token issuer.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderConfig {
    /// Name used in logs.
    pub name: String,
    /// Required value of `iss`. May be omitted only when there is a single provider.
    #[serde(default)]
    pub issuer: Option<String>,
    /// Accepted `aud` values; when set, a token must name at least one.
    #[serde(default)]
    pub audiences: Vec<String>,
    /// Algorithms accepted from this issuer (e.g. `["RS256"]`). Symmetric (HS*) and asymmetric
    /// algorithms cannot be mixed, which rules out HS/RS confusion.
    pub algorithms: Vec<String>,
    /// The issuer's verification keys.
    pub keys: KeySource,
    /// Claims every token must carry. Default: `["exp"]`.
    #[serde(default = "default_required_claims")]
    pub required_claims: Vec<String>,
    /// Claim forwarded in the identity header.
    #[serde(default = "default_subject_claim")]
    pub subject_claim: String,
    /// Claim holding scopes (a space-separated string or an array).
    #[serde(default = "default_scopes_claim")]
    pub scopes_claim: String,
    /// Claim forwarded in the tenant header.
    #[serde(default)]
    pub tenant_claim: Option<String>,
    /// Further claims copied to upstream headers.
    #[serde(default)]
    pub claims_to_headers: Vec<ClaimToHeader>,
}

/// Where a provider's keys come from.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub enum KeySource {
    /// An inline JSON Web Key Set.
    Jwks(serde_json::Value),
    /// A PEM public key (RSA, EC or Ed25519).
    Pem(String),
    /// A shared secret for HS* algorithms.
    Secret(String),
    /// A JWKS fetched from a cluster with `http_call`.
    RemoteJwks(RemoteJwks),
}

/// A JWKS served over HTTP by one of the proxy's clusters.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RemoteJwks {
    /// Cluster the request goes to (an Envoy cluster name or a gateway cluster).
    pub cluster: String,
    /// Request path.
    pub path: String,
    /// `:authority` of the request. Default: the cluster name.
    #[serde(default)]
    pub authority: Option<String>,
    /// How long a fetched key set is used before it is refetched.
    #[serde(default = "default_jwks_cache_seconds")]
    pub cache_seconds: u64,
    /// Timeout of the fetch, in milliseconds.
    #[serde(default = "default_jwks_timeout_ms")]
    pub timeout_ms: u64,
}

/// A place a token may be presented.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub enum TokenSource {
    /// A header, with a value prefix such as `"Bearer "` (matched case-insensitively).
    Header {
        /// Header name.
        name: String,
        /// Prefix before the token.
        #[serde(default)]
        prefix: String,
    },
    /// A query parameter.
    Query(String),
    /// A cookie.
    Cookie(String),
}

/// A claim copied to an upstream header.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClaimToHeader {
    /// Claim name.
    pub claim: String,
    /// Header name.
    pub header: String,
}

/// A requirement for requests whose path starts with `path_prefix`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// Path prefix the rule applies to (query string ignored).
    pub path_prefix: String,
    /// Methods the rule applies to; empty means all.
    #[serde(default)]
    pub methods: Vec<String>,
    /// Let requests without credentials through (without identity). Credentials that are sent
    /// must still be valid, as with Envoy's `allow_missing`.
    #[serde(default)]
    pub allow_anonymous: bool,
    /// Scopes the caller must hold, all of them.
    #[serde(default)]
    pub scopes: Vec<String>,
}

fn default_identity_header() -> String {
    headers::IDENTITY.to_string()
}
fn default_scopes_header() -> String {
    headers::SCOPES.to_string()
}
fn default_tenant_header() -> String {
    headers::TENANT.to_string()
}
fn default_realm() -> String {
    DEFAULT_REALM.to_string()
}
fn default_api_key_header() -> String {
    DEFAULT_API_KEY_HEADER.to_string()
}
fn default_true() -> bool {
    true
}
fn default_token_sources() -> Vec<TokenSource> {
    vec![TokenSource::Header {
        name: "authorization".into(),
        prefix: "Bearer ".into(),
    }]
}
fn default_clock_skew() -> u64 {
    DEFAULT_CLOCK_SKEW_SECONDS
}
fn default_max_token_bytes() -> usize {
    DEFAULT_MAX_TOKEN_BYTES
}
fn default_required_claims() -> Vec<String> {
    vec!["exp".into()]
}
fn default_subject_claim() -> String {
    "sub".into()
}
fn default_scopes_claim() -> String {
    "scope".into()
}
fn default_jwks_cache_seconds() -> u64 {
    DEFAULT_JWKS_CACHE_SECONDS
}
fn default_jwks_timeout_ms() -> u64 {
    2000
}

pub use filter_common::ConfigError;

impl AuthConfig {
    /// Parses and validates a plugin configuration. Header names come out lowercased.
    pub fn from_json(bytes: &[u8]) -> Result<Self, ConfigError> {
        let mut config: AuthConfig = filter_common::parse_config(
            bytes,
            "a JSON object with an \"api_key\" or \"jwt\" section",
        )?;
        config.validate()?;
        config.lowercase_header_names();
        Ok(config)
    }

    /// Every header this filter sets upstream; client-sent copies are always removed first.
    pub fn identity_headers(&self) -> Vec<&str> {
        let mut headers = vec![
            self.identity_header.as_str(),
            self.scopes_header.as_str(),
            self.tenant_header.as_str(),
        ];
        for provider in self.jwt.iter().flat_map(|jwt| &jwt.providers) {
            headers.extend(provider.claims_to_headers.iter().map(|c| c.header.as_str()));
        }
        headers.sort_unstable();
        headers.dedup();
        headers
    }

    fn lowercase_header_names(&mut self) {
        self.identity_header.make_ascii_lowercase();
        self.scopes_header.make_ascii_lowercase();
        self.tenant_header.make_ascii_lowercase();
        if let Some(api_key) = &mut self.api_key {
            api_key.header.make_ascii_lowercase();
        }
        if let Some(jwt) = &mut self.jwt {
            for source in &mut jwt.from {
                if let TokenSource::Header { name, .. } = source {
                    name.make_ascii_lowercase();
                }
            }
            for provider in &mut jwt.providers {
                for mapping in &mut provider.claims_to_headers {
                    mapping.header.make_ascii_lowercase();
                }
            }
        }
    }

    fn validate(&self) -> Result<(), ConfigError> {
        check_header_name("identity_header", &self.identity_header)?;
        check_header_name("scopes_header", &self.scopes_header)?;
        check_header_name("tenant_header", &self.tenant_header)?;
        if self.api_key.is_none() && self.jwt.is_none() {
            return Err(ConfigError::new(
                "api_key",
                "enable at least one of \"api_key\" or \"jwt\"",
            ));
        }
        let forwarded = self.identity_headers();
        if let Some(api_key) = &self.api_key {
            api_key.validate(&forwarded)?;
        }
        if let Some(jwt) = &self.jwt {
            jwt.validate(&forwarded)?;
        }
        for (i, rule) in self.rules.iter().enumerate() {
            if !rule.path_prefix.starts_with('/') {
                return Err(ConfigError::new(
                    format!("rules[{i}].path_prefix"),
                    "must start with \"/\"",
                ));
            }
            if let Some(scope) = rule.scopes.iter().find(|s| !is_scope_token(s)) {
                return Err(ConfigError::new(
                    format!("rules[{i}].scopes"),
                    format!("{scope:?} is not a valid scope (printable, no spaces)"),
                ));
            }
        }
        Ok(())
    }
}

impl ApiKeyConfig {
    fn validate(&self, forwarded: &[&str]) -> Result<(), ConfigError> {
        check_header_name("api_key.header", &self.header)?;
        if forwarded
            .iter()
            .any(|h| h.eq_ignore_ascii_case(&self.header))
        {
            return Err(ConfigError::new(
                "api_key.header",
                "must differ from the headers the filter forwards upstream",
            ));
        }
        if self.query_parameter.as_deref() == Some("") {
            return Err(ConfigError::new(
                "api_key.query_parameter",
                "must not be empty",
            ));
        }
        if self.keys.is_empty() {
            return Err(ConfigError::new(
                "api_key.keys",
                "at least one key is required",
            ));
        }
        for (i, entry) in self.keys.iter().enumerate() {
            let field = format!("api_key.keys[{i}]");
            if !is_header_value(&entry.identity) {
                return Err(ConfigError::new(
                    format!("{field}.identity"),
                    "must be non-empty printable text (it becomes a header value)",
                ));
            }
            if let Some(tenant) = entry.tenant.as_deref().filter(|t| !is_header_value(t)) {
                return Err(ConfigError::new(
                    format!("{field}.tenant"),
                    format!("{tenant:?} must be non-empty printable text"),
                ));
            }
            if let Some(scope) = entry.scopes.iter().find(|s| !is_scope_token(s)) {
                return Err(ConfigError::new(
                    format!("{field}.scopes"),
                    format!("{scope:?} is not a valid scope (printable, no spaces)"),
                ));
            }
            match (&entry.key, &entry.sha256) {
                (Some(key), None) if key.is_empty() => {
                    return Err(ConfigError::new(
                        format!("{field}.key"),
                        "must not be empty",
                    ))
                }
                (Some(key), None) if filter_common::is_malformed(key) => {
                    return Err(ConfigError::new(
                        format!("{field}.key"),
                        "must not contain U+FFFD, which stands for invalid bytes in a request",
                    ))
                }
                (Some(_), None) => {}
                (None, Some(digest)) => {
                    if digest.len() != 64 || hex::decode(digest).is_err() {
                        return Err(ConfigError::new(
                            format!("{field}.sha256"),
                            "must be 64 hexadecimal characters",
                        ));
                    }
                }
                _ => {
                    return Err(ConfigError::new(
                        field,
                        "give exactly one of \"key\" or \"sha256\"",
                    ))
                }
            }
        }
        Ok(())
    }
}

impl JwtConfig {
    fn validate(&self, forwarded: &[&str]) -> Result<(), ConfigError> {
        if self.providers.is_empty() {
            return Err(ConfigError::new(
                "jwt.providers",
                "at least one provider is required",
            ));
        }
        if self.from.is_empty() {
            return Err(ConfigError::new(
                "jwt.from",
                "at least one token source is required",
            ));
        }
        for (i, source) in self.from.iter().enumerate() {
            let field = format!("jwt.from[{i}]");
            match source {
                TokenSource::Header { name, .. } => {
                    check_header_name(&format!("{field}.header.name"), name)?;
                    if forwarded.iter().any(|h| h.eq_ignore_ascii_case(name)) {
                        return Err(ConfigError::new(
                            format!("{field}.header.name"),
                            "must differ from the headers the filter forwards upstream",
                        ));
                    }
                }
                TokenSource::Query(name) | TokenSource::Cookie(name) if name.is_empty() => {
                    return Err(ConfigError::new(field, "name must not be empty"))
                }
                TokenSource::Query(_) | TokenSource::Cookie(_) => {}
            }
        }
        if self.max_token_bytes == 0 {
            return Err(ConfigError::new(
                "jwt.max_token_bytes",
                "must be greater than 0",
            ));
        }
        let single = self.providers.len() == 1;
        let mut issuers = Vec::new();
        for (i, provider) in self.providers.iter().enumerate() {
            let field = format!("jwt.providers[{i}]");
            match &provider.issuer {
                None if !single => {
                    return Err(ConfigError::new(
                        format!("{field}.issuer"),
                        "required when there is more than one provider",
                    ))
                }
                Some(issuer) if issuers.contains(&issuer) => {
                    return Err(ConfigError::new(
                        format!("{field}.issuer"),
                        format!("{issuer:?} is used by another provider"),
                    ))
                }
                Some(issuer) => issuers.push(issuer),
                None => {}
            }
            for mapping in &provider.claims_to_headers {
                check_header_name(&format!("{field}.claims_to_headers"), &mapping.header)?;
            }
            if let KeySource::RemoteJwks(remote) = &provider.keys {
                if remote.cluster.is_empty() {
                    return Err(ConfigError::new(
                        format!("{field}.keys.remote_jwks.cluster"),
                        "must not be empty",
                    ));
                }
                if !remote.path.starts_with('/') {
                    return Err(ConfigError::new(
                        format!("{field}.keys.remote_jwks.path"),
                        "must start with \"/\"",
                    ));
                }
                if remote.cache_seconds == 0 || remote.timeout_ms == 0 {
                    return Err(ConfigError::new(
                        format!("{field}.keys.remote_jwks"),
                        "cache_seconds and timeout_ms must be greater than 0",
                    ));
                }
            }
        }
        Ok(())
    }
}

/// Checks an HTTP header name (RFC 9110 token characters).
pub fn check_header_name(field: &str, name: &str) -> Result<(), ConfigError> {
    let is_token_char = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
    if name.is_empty() || !name.bytes().all(is_token_char) {
        return Err(ConfigError::new(
            field,
            format!("{name:?} is not a valid HTTP header name"),
        ));
    }
    Ok(())
}

/// Non-empty text without control characters: safe as a header value.
pub fn is_header_value(value: &str) -> bool {
    !value.is_empty() && !value.bytes().any(|b| b < 0x20 || b == 0x7f)
}

fn is_scope_token(scope: &str) -> bool {
    is_header_value(scope) && !scope.contains(' ')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<AuthConfig, ConfigError> {
        AuthConfig::from_json(json.as_bytes())
    }

    const KEYS: &str = r#""api_key": {"keys": [{"identity": "alice", "key": "k1"}]}"#;

    #[test]
    fn defaults_apply() {
        let c = parse(&format!("{{{KEYS}}}")).unwrap();
        assert_eq!(c.identity_header, headers::IDENTITY);
        let api_key = c.api_key.unwrap();
        assert_eq!(api_key.header, DEFAULT_API_KEY_HEADER);
        assert!(api_key.hide_credentials);
        assert_eq!(api_key.query_parameter, None);
        let c = parse(r#"{"jwt": {"providers": [{"name": "p", "algorithms": ["HS256"], "keys": {"secret": "s"}}]}}"#).unwrap();
        let jwt = c.jwt.unwrap();
        assert_eq!(jwt.clock_skew_seconds, DEFAULT_CLOCK_SKEW_SECONDS);
        assert!(!jwt.forward_token);
        assert!(
            matches!(&jwt.from[..], [TokenSource::Header { name, prefix }] if name == "authorization" && prefix == "Bearer ")
        );
        assert_eq!(jwt.providers[0].required_claims, ["exp"]);
    }

    #[test]
    fn header_names_are_lowercased() {
        let c = parse(r#"{"identity_header": "X-User", "api_key": {"header": "X-Key", "keys": [{"identity": "a", "key": "k"}]}}"#).unwrap();
        assert_eq!(c.identity_header, "x-user");
        assert_eq!(c.api_key.unwrap().header, "x-key");
    }

    #[test]
    fn identity_headers_cover_claim_mappings() {
        let c = parse(r#"{"jwt": {"providers": [{"name": "p", "algorithms": ["HS256"], "keys": {"secret": "s"}, "claims_to_headers": [{"claim": "email", "header": "X-Email"}]}]}}"#).unwrap();
        assert_eq!(
            c.identity_headers(),
            [
                "x-email",
                "x-gateway-identity",
                "x-gateway-scopes",
                "x-gateway-tenant"
            ]
        );
    }

    #[test]
    fn the_shipped_example_is_valid() {
        let example = include_str!("../../../envoy-config/plugins/auth.json");
        AuthConfig::from_json(example.as_bytes()).expect("envoy-config/plugins/auth.json");
    }

    #[test]
    fn errors_name_the_field() {
        let provider = r#""name": "p", "algorithms": ["HS256"], "keys": {"secret": "s"}"#;
        let cases = [
            ("", "empty"),
            ("{", "plugin configuration"),
            (r#"{}"#, "enable at least one"),
            (r#"{"api_key": {"keys": []}}"#, "api_key.keys"),
            (
                r#"{"api_key": {"keys": [{"identity": "a"}]}}"#,
                "api_key.keys[0]",
            ),
            (
                r#"{"api_key": {"keys": [{"identity": "a", "key": "k", "sha256": "00"}]}}"#,
                "exactly one",
            ),
            (
                r#"{"api_key": {"keys": [{"identity": "a", "sha256": "zz"}]}}"#,
                "api_key.keys[0].sha256",
            ),
            (
                r#"{"api_key": {"keys": [{"identity": "a", "key": "k\ufffd"}]}}"#,
                "api_key.keys[0].key",
            ),
            (
                r#"{"api_key": {"keys": [{"identity": "", "key": "k"}]}}"#,
                "api_key.keys[0].identity",
            ),
            (
                r#"{"api_key": {"keys": [{"identity": "a\n", "key": "k"}]}}"#,
                "identity",
            ),
            (
                r#"{"api_key": {"keys": [{"identity": "a", "key": "k", "scopes": ["a b"]}]}}"#,
                "api_key.keys[0].scopes",
            ),
            (
                r#"{"identity_header": "bad header", "api_key": {"keys": [{"identity": "a", "key": "k"}]}}"#,
                "identity_header",
            ),
            (
                r#"{"api_key": {"header": "x-gateway-identity", "keys": [{"identity": "a", "key": "k"}]}}"#,
                "must differ",
            ),
            (
                r#"{"api_key": {"query_parameter": "", "keys": [{"identity": "a", "key": "k"}]}}"#,
                "query_parameter",
            ),
            (r#"{"api_kye": {}}"#, "unknown field `api_kye`"),
            (r#"{"jwt": {"providers": []}}"#, "jwt.providers"),
            (
                &format!(r#"{{"jwt": {{"providers": [{{{provider}}}, {{{provider}}}]}}}}"#),
                "jwt.providers[0].issuer",
            ),
            (
                &format!(
                    r#"{{"jwt": {{"from": [{{"query": ""}}], "providers": [{{{provider}}}]}}}}"#
                ),
                "jwt.from[0]",
            ),
            (
                r#"{"jwt": {"providers": [{"name": "p", "algorithms": ["HS256"], "keys": {"remote_jwks": {"cluster": "c", "path": "jwks"}}}]}}"#,
                "jwt.providers[0].keys.remote_jwks.path",
            ),
            (
                r#"{"jwt": {"providers": [{"name": "p", "algorithms": ["HS256"], "keys": {"file": "x"}}]}}"#,
                "unknown variant `file`",
            ),
            (
                &format!(
                    r#"{{"jwt": {{"providers": [{{{provider}}}]}}, "rules": [{{"path_prefix": "x"}}]}}"#
                ),
                "rules[0].path_prefix",
            ),
        ];
        for (json, expected) in cases {
            let err = parse(json).expect_err(json).to_string();
            assert!(
                err.contains(expected),
                "{json}: {err:?} does not mention {expected:?}"
            );
        }
    }
}
