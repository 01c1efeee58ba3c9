//! Plugin configuration of the auth filter: parsed from JSON and validated once, in `on_configure`.

use serde::Deserialize;

/// Default header that carries the caller's identity upstream.
pub const DEFAULT_IDENTITY_HEADER: &str = "x-gateway-identity";
/// Default header a client sends its API key in.
pub const DEFAULT_API_KEY_HEADER: &str = "x-api-key";
/// Default realm named in `WWW-Authenticate`.
pub const DEFAULT_REALM: &str = "gateway";

/// The validated configuration of the auth filter.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// Header that carries the authenticated identity upstream. Any client-sent copy is removed first.
    #[serde(default = "default_identity_header")]
    pub identity_header: String,
    /// Realm named in the `WWW-Authenticate` challenge.
    #[serde(default = "default_realm")]
    pub realm: String,
    /// API-key authentication.
    pub api_key: ApiKeyConfig,
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
}

fn default_identity_header() -> String {
    DEFAULT_IDENTITY_HEADER.to_string()
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

/// Why a configuration was refused. The message names the field and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError(pub String);

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

impl AuthConfig {
    /// Parses and validates a plugin configuration.
    pub fn from_json(bytes: &[u8]) -> Result<Self, ConfigError> {
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Err(ConfigError(
                "plugin configuration is empty; expected a JSON object with an \"api_key\" section"
                    .into(),
            ));
        }
        let mut config: AuthConfig = serde_json::from_slice(bytes)
            .map_err(|e| ConfigError(format!("plugin configuration: {e}")))?;
        config.validate()?;
        config.identity_header.make_ascii_lowercase();
        config.api_key.header.make_ascii_lowercase();
        Ok(config)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        check_header_name("identity_header", &self.identity_header)?;
        check_header_name("api_key.header", &self.api_key.header)?;
        if self
            .api_key
            .header
            .eq_ignore_ascii_case(&self.identity_header)
        {
            return Err(ConfigError(
                "api_key.header: must differ from identity_header".into(),
            ));
        }
        if let Some(param) = &self.api_key.query_parameter {
            if param.is_empty() {
                return Err(ConfigError(
                    "api_key.query_parameter: must not be empty".into(),
                ));
            }
        }
        if self.api_key.keys.is_empty() {
            return Err(ConfigError(
                "api_key.keys: at least one key is required".into(),
            ));
        }
        for (i, entry) in self.api_key.keys.iter().enumerate() {
            let field = format!("api_key.keys[{i}]");
            if entry.identity.is_empty() || entry.identity.bytes().any(|b| b < 0x20 || b == 0x7f) {
                return Err(ConfigError(format!(
                    "{field}.identity: must be non-empty printable text (it becomes a header value)"
                )));
            }
            match (&entry.key, &entry.sha256) {
                (Some(key), None) if key.is_empty() => {
                    return Err(ConfigError(format!("{field}.key: must not be empty")))
                }
                (Some(_), None) => {}
                (None, Some(digest)) => {
                    if digest.len() != 64 || hex::decode(digest).is_err() {
                        return Err(ConfigError(format!(
                            "{field}.sha256: must be 64 hexadecimal characters"
                        )));
                    }
                }
                _ => {
                    return Err(ConfigError(format!(
                        "{field}: give exactly one of \"key\" or \"sha256\""
                    )))
                }
            }
        }
        Ok(())
    }
}

fn check_header_name(field: &str, name: &str) -> Result<(), ConfigError> {
    let is_token_char = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
    if name.is_empty() || !name.bytes().all(is_token_char) {
        return Err(ConfigError(format!(
            "{field}: {name:?} is not a valid HTTP header name"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<AuthConfig, ConfigError> {
        AuthConfig::from_json(json.as_bytes())
    }

    #[test]
    fn defaults_apply() {
        let c = parse(r#"{"api_key": {"keys": [{"identity": "alice", "key": "k1"}]}}"#).unwrap();
        assert_eq!(c.identity_header, DEFAULT_IDENTITY_HEADER);
        assert_eq!(c.api_key.header, DEFAULT_API_KEY_HEADER);
        assert!(c.api_key.hide_credentials);
        assert_eq!(c.api_key.query_parameter, None);
    }

    #[test]
    fn header_names_are_lowercased() {
        let c = parse(r#"{"identity_header": "X-User", "api_key": {"header": "X-Key", "keys": [{"identity": "a", "key": "k"}]}}"#).unwrap();
        assert_eq!(c.identity_header, "x-user");
        assert_eq!(c.api_key.header, "x-key");
    }

    #[test]
    fn errors_name_the_field() {
        let cases = [
            ("", "empty"),
            ("{", "plugin configuration"),
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
                r#"{"api_key": {"keys": [{"identity": "", "key": "k"}]}}"#,
                "api_key.keys[0].identity",
            ),
            (
                r#"{"api_key": {"keys": [{"identity": "a\n", "key": "k"}]}}"#,
                "identity",
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
            (r#"{}"#, "missing field `api_key`"),
        ];
        for (json, expected) in cases {
            let err = parse(json).expect_err(json).0;
            assert!(
                err.contains(expected),
                "{json}: {err:?} does not mention {expected:?}"
            );
        }
    }
}
