//! The authentication decision for one request, independent of proxy-wasm.

use crate::api_key::ApiKeyStore;
use crate::config::AuthConfig;
use filter_common::{query_param, remove_query_param};

/// A configured authenticator: configuration plus the key store built from it.
#[derive(Debug)]
pub struct Authenticator {
    config: AuthConfig,
    keys: ApiKeyStore,
}

/// What the filter does with a request.
#[derive(Debug, PartialEq, Eq)]
pub enum Decision {
    /// Let the request through with `identity` forwarded upstream.
    Allow(Allow),
    /// Answer locally.
    Deny(Denial),
}

/// Changes to make to an authenticated request before it goes upstream.
#[derive(Debug, PartialEq, Eq)]
pub struct Allow {
    /// The authenticated identity.
    pub identity: String,
    /// Remove this header (the credential) from the request.
    pub remove_header: Option<String>,
    /// Replace `:path` with this (the credential removed from the query).
    pub rewritten_path: Option<String>,
}

/// A rejected request: status, stable reason code, message and challenge.
#[derive(Debug, PartialEq, Eq)]
pub struct Denial {
    /// HTTP status (401).
    pub status: u16,
    /// Stable machine-readable reason.
    pub code: &'static str,
    /// Human-readable explanation; never echoes the presented credential.
    pub message: &'static str,
    /// Value of the `WWW-Authenticate` header.
    pub www_authenticate: String,
}

impl Authenticator {
    /// Builds an authenticator from validated configuration.
    pub fn new(config: AuthConfig) -> Self {
        let keys = ApiKeyStore::new(&config.api_key.keys);
        Self { config, keys }
    }

    /// The configuration this authenticator was built from.
    pub fn config(&self) -> &AuthConfig {
        &self.config
    }

    /// Decides on a request given the value of the configured key header (if sent) and its path.
    pub fn authenticate(&self, key_header: Option<&[u8]>, path: &str) -> Decision {
        let api_key = &self.config.api_key;
        let from_query = || {
            api_key
                .query_parameter
                .as_deref()
                .and_then(|param| query_param(path, param))
        };
        let (key, location) = match key_header {
            Some(value) => (value.to_vec(), KeyLocation::Header),
            None => match from_query() {
                Some(value) => (value.into_bytes(), KeyLocation::Query),
                None => {
                    return Decision::Deny(self.deny("missing_api_key", "an API key is required"))
                }
            },
        };
        let Some(identity) = self.keys.identify(&key) else {
            return Decision::Deny(self.deny("invalid_api_key", "the API key is not valid"));
        };
        let hide = api_key.hide_credentials;
        Decision::Allow(Allow {
            identity: identity.to_string(),
            remove_header: (hide && location == KeyLocation::Header)
                .then(|| api_key.header.clone()),
            rewritten_path: match (&api_key.query_parameter, location) {
                (Some(param), KeyLocation::Query) if hide => Some(remove_query_param(path, param)),
                _ => None,
            },
        })
    }

    fn deny(&self, code: &'static str, message: &'static str) -> Denial {
        Denial {
            status: 401,
            code,
            message,
            www_authenticate: format!("ApiKey realm=\"{}\"", self.config.realm),
        }
    }
}

#[derive(Debug, PartialEq, Eq, Clone, Copy)]
enum KeyLocation {
    Header,
    Query,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn authenticator(extra: &str) -> Authenticator {
        let json = format!(
            r#"{{"api_key": {{"query_parameter": "api_key", {extra} "keys": [{{"identity": "alice", "key": "k-alice"}}]}}}}"#
        );
        Authenticator::new(AuthConfig::from_json(json.as_bytes()).unwrap())
    }

    #[test]
    fn valid_header_key_is_allowed_and_hidden() {
        let decision = authenticator("").authenticate(Some(b"k-alice"), "/v1/x");
        assert_eq!(
            decision,
            Decision::Allow(Allow {
                identity: "alice".into(),
                remove_header: Some("x-api-key".into()),
                rewritten_path: None,
            })
        );
    }

    #[test]
    fn valid_query_key_is_allowed_and_removed_from_path() {
        let decision = authenticator("").authenticate(None, "/v1/x?a=1&api_key=k-alice");
        assert_eq!(
            decision,
            Decision::Allow(Allow {
                identity: "alice".into(),
                remove_header: None,
                rewritten_path: Some("/v1/x?a=1".into()),
            })
        );
    }

    #[test]
    fn credentials_kept_when_not_hidden() {
        let decision =
            authenticator(r#""hide_credentials": false,"#).authenticate(None, "/?api_key=k-alice");
        let Decision::Allow(allow) = decision else {
            panic!("expected allow")
        };
        assert_eq!(allow.rewritten_path, None);
        assert_eq!(allow.remove_header, None);
    }

    #[test]
    fn header_wins_over_query() {
        let decision = authenticator("").authenticate(Some(b"wrong"), "/?api_key=k-alice");
        assert!(matches!(
            decision,
            Decision::Deny(Denial {
                code: "invalid_api_key",
                ..
            })
        ));
    }

    #[test]
    fn missing_and_wrong_keys_are_denied_with_challenge() {
        let auth = authenticator("");
        let Decision::Deny(missing) = auth.authenticate(None, "/v1/x") else {
            panic!()
        };
        assert_eq!(missing.status, 401);
        assert_eq!(missing.code, "missing_api_key");
        assert_eq!(missing.www_authenticate, "ApiKey realm=\"gateway\"");
        let Decision::Deny(wrong) = auth.authenticate(Some(b"k-bob"), "/v1/x") else {
            panic!()
        };
        assert_eq!(wrong.code, "invalid_api_key");
    }

    #[test]
    fn query_key_ignored_when_not_configured() {
        let json = r#"{"api_key": {"keys": [{"identity": "alice", "key": "k-alice"}]}}"#;
        let auth = Authenticator::new(AuthConfig::from_json(json.as_bytes()).unwrap());
        assert!(matches!(
            auth.authenticate(None, "/?api_key=k-alice"),
            Decision::Deny(_)
        ));
    }
}
