//! The authentication decision for one request, independent of proxy-wasm.

use crate::api_key::ApiKeyStore;
use crate::config::{AuthConfig, Rule};
use crate::credentials::{find_api_key, find_token, Found, Location, RequestView};
use crate::jwks_cache::JwksCache;
use crate::jwt::{Identity, Provider, TokenError, TokenHeader};
use filter_common::{is_malformed, remove_query_param, ConfigError};

/// A configured authenticator: configuration, key store and token providers.
pub struct Authenticator {
    config: AuthConfig,
    keys: ApiKeyStore,
    providers: Vec<Provider>,
    identity_headers: Vec<String>,
}

/// What the filter does with a request.
#[derive(Debug, PartialEq, Eq)]
pub enum Decision {
    /// Let the request through with these changes.
    Allow(Allow),
    /// Answer locally.
    Deny(Denial),
    /// Wait for provider `n`'s remote JWKS, then decide again.
    NeedKeys(usize),
}

/// Changes to make to an admitted request before it goes upstream. Client-sent copies of the
/// identity headers are removed whatever the decision.
#[derive(Debug, PartialEq, Eq, Default)]
pub struct Allow {
    /// Headers to set (identity, scopes, tenant, claims).
    pub set_headers: Vec<(String, String)>,
    /// Headers to remove (the credential).
    pub remove_headers: Vec<String>,
    /// Replace `:path` with this (the credential removed from the query).
    pub rewritten_path: Option<String>,
}

/// A rejected request: status, stable reason code, message and challenge.
#[derive(Debug, PartialEq, Eq)]
pub struct Denial {
    /// HTTP status: 401, or 403 for missing scopes.
    pub status: u16,
    /// Stable machine-readable reason.
    pub code: &'static str,
    /// Human-readable explanation; never echoes the presented credential.
    pub message: String,
    /// Value of the `WWW-Authenticate` header (RFC 6750 for bearer tokens).
    pub www_authenticate: String,
}

enum Credential {
    ApiKey(Found),
    Token(Found),
}

impl Authenticator {
    /// Builds an authenticator from validated configuration, parsing keys (errors name the field).
    pub fn new(config: AuthConfig) -> Result<Self, ConfigError> {
        let keys = config
            .api_key
            .as_ref()
            .map(|api_key| ApiKeyStore::new(&api_key.keys))
            .unwrap_or_default();
        let providers = match &config.jwt {
            None => Vec::new(),
            Some(jwt) => jwt
                .providers
                .iter()
                .enumerate()
                .map(|(i, p)| Provider::new(p, &format!("jwt.providers[{i}]")))
                .collect::<Result<_, _>>()?,
        };
        let identity_headers = config
            .identity_headers()
            .into_iter()
            .map(str::to_string)
            .collect();
        Ok(Self {
            config,
            keys,
            providers,
            identity_headers,
        })
    }

    /// Every header this filter sets upstream (computed once; removed from each request first).
    pub fn identity_headers(&self) -> &[String] {
        &self.identity_headers
    }

    /// The configuration this authenticator was built from.
    pub fn config(&self) -> &AuthConfig {
        &self.config
    }

    /// The providers, in configuration order.
    pub fn providers(&self) -> &[Provider] {
        &self.providers
    }

    /// Decides on a request at time `now` (Unix seconds). `jwks` holds remote providers' keys.
    pub fn authenticate(&self, request: &dyn RequestView, now: u64, jwks: &JwksCache) -> Decision {
        let path = request.path();
        let rule = self.rule_for(&request.method(), &path);
        let credential = self
            .config
            .api_key
            .as_ref()
            .and_then(|c| find_api_key(c, request))
            .map(Credential::ApiKey)
            .or_else(|| {
                let jwt = self.config.jwt.as_ref()?;
                find_token(&jwt.from, request).map(Credential::Token)
            });
        let (identity, found) = match credential {
            None if rule.is_some_and(|r| r.allow_anonymous) => {
                return Decision::Allow(Allow::default())
            }
            None => return Decision::Deny(self.missing()),
            // Every invalid byte sequence reads as the same U+FFFD text: such a key is refused
            // whatever the lookup says, so two different keys can never match one entry.
            Some(Credential::ApiKey(found)) => match self
                .keys
                .identify(found.value.as_bytes())
                .filter(|_| !is_malformed(&found.value))
            {
                Some(identity) => (identity.clone(), found),
                None => {
                    return Decision::Deny(
                        self.deny_api_key("invalid_api_key", "the API key is not valid".into()),
                    )
                }
            },
            Some(Credential::Token(found)) => match self.verify_token(&found.value, now, jwks) {
                Ok(identity) => (identity, found),
                Err(TokenVerdict::NeedKeys(provider)) => return Decision::NeedKeys(provider),
                Err(TokenVerdict::Invalid(error)) => {
                    return Decision::Deny(self.deny_token(&error))
                }
            },
        };
        let required = rule.map_or(&[][..], |r| &r.scopes[..]);
        if let Some(missing) = required.iter().find(|s| !identity.scopes.contains(s)) {
            return Decision::Deny(self.insufficient_scope(required, missing));
        }
        Decision::Allow(self.admit(identity, &found, &path))
    }

    fn rule_for(&self, method: &str, path: &str) -> Option<&Rule> {
        let path = path.split('?').next().unwrap_or_default();
        self.config.rules.iter().find(|rule| {
            path.starts_with(&rule.path_prefix)
                && (rule.methods.is_empty()
                    || rule.methods.iter().any(|m| m.eq_ignore_ascii_case(method)))
        })
    }

    fn verify_token(
        &self,
        token: &str,
        now: u64,
        jwks: &JwksCache,
    ) -> Result<Identity, TokenVerdict> {
        let jwt = self
            .config
            .jwt
            .as_ref()
            .expect("tokens are looked for only with jwt");
        if token.len() > jwt.max_token_bytes {
            return Err(TokenVerdict::Invalid(TokenError::TooLarge));
        }
        if is_malformed(token) {
            return Err(TokenVerdict::Invalid(TokenError::Malformed));
        }
        let header = TokenHeader::parse(token).map_err(TokenVerdict::Invalid)?;
        let (index, provider) = self
            .providers
            .iter()
            .enumerate()
            .find(|(_, p)| p.trusts(header.issuer.as_deref()))
            .ok_or(TokenVerdict::Invalid(TokenError::UnknownIssuer))?;
        let skew = jwt.clock_skew_seconds;
        if let Some(keys) = &provider.static_keys {
            return provider
                .verify(token, &header, keys, now, skew)
                .map_err(TokenVerdict::Invalid);
        }
        let Some(keys) = jwks.keys(index) else {
            return Err(if jwks.may_wait(index, now) {
                TokenVerdict::NeedKeys(index)
            } else {
                TokenVerdict::Invalid(TokenError::KeysUnavailable)
            });
        };
        match provider.verify(token, &header, &keys, now, skew) {
            // A key rotated in at the issuer: fetch the set again, unless that was just done.
            Err(TokenError::UnknownKey) if jwks.may_wait(index, now) => {
                Err(TokenVerdict::NeedKeys(index))
            }
            other => other.map_err(TokenVerdict::Invalid),
        }
    }

    fn admit(&self, identity: Identity, found: &Found, path: &str) -> Allow {
        let config = &self.config;
        let mut allow = Allow::default();
        allow
            .set_headers
            .push((config.identity_header.clone(), identity.subject));
        if !identity.scopes.is_empty() {
            allow
                .set_headers
                .push((config.scopes_header.clone(), identity.scopes.join(" ")));
        }
        if let Some(tenant) = identity.tenant {
            allow
                .set_headers
                .push((config.tenant_header.clone(), tenant));
        }
        allow.set_headers.extend(identity.claim_headers);
        let strip = match &found.location {
            Location::Header(name)
                if config.api_key.as_ref().is_some_and(|k| &k.header == name) =>
            {
                config.api_key.as_ref().is_some_and(|k| k.hide_credentials)
            }
            Location::Query(name)
                if config
                    .api_key
                    .as_ref()
                    .is_some_and(|k| k.query_parameter.as_ref() == Some(name)) =>
            {
                config.api_key.as_ref().is_some_and(|k| k.hide_credentials)
            }
            _ => config.jwt.as_ref().is_some_and(|j| !j.forward_token),
        };
        if strip {
            match &found.location {
                Location::Header(name) => allow.remove_headers.push(name.clone()),
                Location::Query(name) => {
                    allow.rewritten_path = Some(remove_query_param(path, name))
                }
                Location::Cookie => {}
            }
        }
        allow
    }

    fn challenge(&self, error: Option<(&str, &str)>, scope: Option<&str>) -> String {
        let realm = &self.config.realm;
        let mut bearer = format!("Bearer realm=\"{realm}\"");
        if let Some((code, description)) = error {
            bearer.push_str(&format!(
                ", error=\"{code}\", error_description=\"{description}\""
            ));
        }
        if let Some(scope) = scope {
            bearer.push_str(&format!(", scope=\"{scope}\""));
        }
        match (self.config.jwt.is_some(), self.config.api_key.is_some()) {
            (true, true) if error.is_none() => format!("{bearer}, ApiKey realm=\"{realm}\""),
            (true, _) => bearer,
            (false, _) => format!("ApiKey realm=\"{realm}\""),
        }
    }

    fn missing(&self) -> Denial {
        let (code, message) = match (self.config.api_key.is_some(), self.config.jwt.is_some()) {
            (true, false) => ("missing_api_key", "an API key is required"),
            (false, true) => ("missing_token", "a bearer token is required"),
            _ => (
                "missing_credentials",
                "an API key or a bearer token is required",
            ),
        };
        Denial {
            status: 401,
            code,
            message: message.into(),
            www_authenticate: self.challenge(None, None),
        }
    }

    fn deny_api_key(&self, code: &'static str, message: String) -> Denial {
        Denial {
            status: 401,
            code,
            message,
            www_authenticate: format!("ApiKey realm=\"{}\"", self.config.realm),
        }
    }

    fn deny_token(&self, error: &TokenError) -> Denial {
        let message = error.message();
        Denial {
            status: 401,
            code: error.code(),
            www_authenticate: self.challenge(Some(("invalid_token", &message)), None),
            message,
        }
    }

    fn insufficient_scope(&self, required: &[String], missing: &str) -> Denial {
        let scope = required.join(" ");
        Denial {
            status: 403,
            code: "insufficient_scope",
            message: format!("the {missing:?} scope is required"),
            www_authenticate: self.challenge(
                Some(("insufficient_scope", "the request requires more privileges")),
                Some(&scope),
            ),
        }
    }
}

enum TokenVerdict {
    NeedKeys(usize),
    Invalid(TokenError),
}
