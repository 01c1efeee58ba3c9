//! JWT verification: choosing the provider by issuer, checking the algorithm allow-list, the
//! signature, time claims against an injected clock, audience and required claims, and turning
//! the claims into the identity forwarded upstream.

use crate::config::{is_header_value, KeySource, ProviderConfig};
use crate::keys::KeySet;
use filter_common::ConfigError;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{decode, decode_header, Algorithm, AlgorithmFamily, Validation};
use serde_json::{Map, Value};
use std::collections::HashSet;
use std::str::FromStr;

/// The caller's identity, from a verified token or an API key.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Identity {
    /// The subject (`sub`, or the API key's identity).
    pub subject: String,
    /// Granted scopes.
    pub scopes: Vec<String>,
    /// Tenant, when configured.
    pub tenant: Option<String>,
    /// Further claims to forward: (header, value).
    pub claim_headers: Vec<(String, String)>,
}

/// Why a token was refused. Each has a stable code for the JSON body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenError {
    /// Larger than `max_token_bytes`.
    TooLarge,
    /// Not a JWT: bad structure, base64 or JSON.
    Malformed,
    /// `alg` is `none`, unknown, or not allowed for the issuer.
    DisallowedAlgorithm,
    /// No provider trusts the token's `iss`.
    UnknownIssuer,
    /// No key with the token's `kid`.
    UnknownKey,
    /// The issuer's keys could not be fetched.
    KeysUnavailable,
    /// The signature does not verify.
    InvalidSignature,
    /// `exp` has passed (beyond the allowed skew).
    Expired,
    /// `nbf` is in the future (beyond the allowed skew).
    NotYetValid,
    /// `iss` does not match.
    InvalidIssuer,
    /// No accepted audience in `aud`.
    InvalidAudience,
    /// A required claim is absent.
    MissingClaim(String),
    /// A claim has the wrong type, or cannot be forwarded as a header.
    InvalidClaim(String),
}

impl TokenError {
    /// Stable machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            TokenError::TooLarge => "token_too_large",
            TokenError::Malformed => "malformed_token",
            TokenError::DisallowedAlgorithm => "disallowed_algorithm",
            TokenError::UnknownIssuer => "unknown_issuer",
            TokenError::UnknownKey => "unknown_key",
            TokenError::KeysUnavailable => "keys_unavailable",
            TokenError::InvalidSignature => "invalid_signature",
            TokenError::Expired => "token_expired",
            TokenError::NotYetValid => "token_not_yet_valid",
            TokenError::InvalidIssuer => "invalid_issuer",
            TokenError::InvalidAudience => "invalid_audience",
            TokenError::MissingClaim(_) => "missing_claim",
            TokenError::InvalidClaim(_) => "invalid_claim",
        }
    }

    /// Human-readable explanation (never echoes the token).
    pub fn message(&self) -> String {
        match self {
            TokenError::TooLarge => "the token is too large".into(),
            TokenError::Malformed => "the token is not a well-formed JWT".into(),
            TokenError::DisallowedAlgorithm => "the token's algorithm is not accepted".into(),
            TokenError::UnknownIssuer => "the token's issuer is not trusted".into(),
            TokenError::UnknownKey => "the token was signed with an unknown key".into(),
            TokenError::KeysUnavailable => "the issuer's keys are unavailable".into(),
            TokenError::InvalidSignature => "the token's signature is invalid".into(),
            TokenError::Expired => "the token has expired".into(),
            TokenError::NotYetValid => "the token is not valid yet".into(),
            TokenError::InvalidIssuer => "the token's issuer is not accepted".into(),
            TokenError::InvalidAudience => "the token is not meant for this audience".into(),
            TokenError::MissingClaim(claim) => format!("the token lacks the {claim:?} claim"),
            TokenError::InvalidClaim(claim) => format!("the token's {claim:?} claim is invalid"),
        }
    }
}

/// A trusted issuer, ready to verify tokens.
pub struct Provider {
    /// Name from the configuration, for logs.
    pub name: String,
    issuer: Option<String>,
    audiences: Vec<String>,
    algorithms: Vec<Algorithm>,
    /// Keys known at configuration time; `None` for a remote JWKS.
    pub static_keys: Option<KeySet>,
    required_claims: Vec<String>,
    subject_claim: String,
    scopes_claim: String,
    tenant_claim: Option<String>,
    claims_to_headers: Vec<(String, String)>,
}

impl Provider {
    /// Builds a provider, refusing algorithm lists and keys that do not fit together.
    pub fn new(config: &ProviderConfig, field: &str) -> Result<Self, ConfigError> {
        let algorithms = parse_algorithms(&config.algorithms, &format!("{field}.algorithms"))?;
        let families: Vec<AlgorithmFamily> = algorithms.iter().map(|a| a.family()).collect();
        let symmetric = families.contains(&AlgorithmFamily::Hmac);
        if symmetric && families.iter().any(|f| *f != AlgorithmFamily::Hmac) {
            return Err(ConfigError::new(
                format!("{field}.algorithms"),
                "HS* and public-key algorithms cannot be mixed in one provider",
            ));
        }
        let keys_field = format!("{field}.keys");
        let static_keys = match &config.keys {
            KeySource::Secret(secret) if symmetric => {
                if secret.len() < 32 {
                    return Err(ConfigError::new(
                        format!("{keys_field}.secret"),
                        "must be at least 32 bytes (256 bits)",
                    ));
                }
                Some(KeySet::from_secret(secret))
            }
            KeySource::Secret(_) => {
                return Err(ConfigError::new(
                    keys_field,
                    "a secret verifies only HS* algorithms",
                ))
            }
            _ if symmetric => {
                return Err(ConfigError::new(
                    keys_field,
                    "HS* algorithms need a \"secret\" (public keys cannot verify them)",
                ))
            }
            KeySource::Pem(pem) => {
                let mut distinct = families.clone();
                distinct.dedup();
                let [family] = distinct[..] else {
                    return Err(ConfigError::new(
                        format!("{field}.algorithms"),
                        "a PEM key serves one algorithm family (RS/PS, ES or EdDSA)",
                    ));
                };
                Some(
                    KeySet::from_pem(pem, family)
                        .map_err(|e| ConfigError::new(format!("{keys_field}.pem"), e))?,
                )
            }
            KeySource::Jwks(jwks) => {
                let set = KeySet::from_jwks(jwks)
                    .map_err(|e| ConfigError::new(format!("{keys_field}.jwks"), e))?;
                if !set.has_family(&families) {
                    return Err(ConfigError::new(
                        format!("{keys_field}.jwks"),
                        "no key can verify the configured algorithms",
                    ));
                }
                Some(set)
            }
            KeySource::RemoteJwks(_) => None,
        };
        let mut claims_to_headers = Vec::new();
        for mapping in &config.claims_to_headers {
            claims_to_headers.push((mapping.claim.clone(), mapping.header.to_ascii_lowercase()));
        }
        Ok(Self {
            name: config.name.clone(),
            issuer: config.issuer.clone(),
            audiences: config.audiences.clone(),
            algorithms,
            static_keys,
            required_claims: config.required_claims.clone(),
            subject_claim: config.subject_claim.clone(),
            scopes_claim: config.scopes_claim.clone(),
            tenant_claim: config.tenant_claim.clone(),
            claims_to_headers,
        })
    }

    /// Whether this provider handles tokens whose `iss` is `issuer`.
    pub fn trusts(&self, issuer: Option<&str>) -> bool {
        match &self.issuer {
            Some(expected) => issuer == Some(expected.as_str()),
            None => true,
        }
    }

    /// Verifies `token` with `keys` at time `now` (Unix seconds), allowing `skew` seconds.
    pub fn verify(
        &self,
        token: &str,
        header: &TokenHeader,
        keys: &KeySet,
        now: u64,
        skew: u64,
    ) -> Result<Identity, TokenError> {
        if !self.algorithms.contains(&header.algorithm) {
            return Err(TokenError::DisallowedAlgorithm);
        }
        let mut validation = Validation::new(header.algorithm);
        // Time claims are checked below against the injected clock.
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.required_spec_claims = HashSet::new();
        if let Some(issuer) = &self.issuer {
            validation.set_issuer(&[issuer]);
        }
        if self.audiences.is_empty() {
            validation.validate_aud = false;
        } else {
            validation.set_audience(&self.audiences);
            validation.required_spec_claims.insert("aud".into());
        }
        let mut candidates = keys
            .candidates(header.kid.as_deref(), header.algorithm)
            .peekable();
        if candidates.peek().is_none() {
            return Err(TokenError::UnknownKey);
        }
        let mut outcome = Err(TokenError::InvalidSignature);
        for key in candidates {
            outcome = decode::<Map<String, Value>>(token, key, &validation)
                .map(|data| data.claims)
                .map_err(|e| map_error(e.kind()));
            if !matches!(outcome, Err(TokenError::InvalidSignature)) {
                break;
            }
        }
        let claims = outcome?;
        self.check_time(&claims, now, skew)?;
        for claim in &self.required_claims {
            if !claims.contains_key(claim) {
                return Err(TokenError::MissingClaim(claim.clone()));
            }
        }
        self.identity(&claims)
    }

    fn check_time(
        &self,
        claims: &Map<String, Value>,
        now: u64,
        skew: u64,
    ) -> Result<(), TokenError> {
        let time = |name: &str| match claims.get(name) {
            None => Ok(None),
            Some(value) => value
                .as_f64()
                .filter(|t| t.is_finite() && *t >= 0.0)
                .map(|t| Some(t as u64))
                .ok_or_else(|| TokenError::InvalidClaim(name.into())),
        };
        if let Some(exp) = time("exp")? {
            if now >= exp.saturating_add(skew) {
                return Err(TokenError::Expired);
            }
        }
        if let Some(nbf) = time("nbf")? {
            if nbf > now.saturating_add(skew) {
                return Err(TokenError::NotYetValid);
            }
        }
        Ok(())
    }

    fn identity(&self, claims: &Map<String, Value>) -> Result<Identity, TokenError> {
        let subject = match claims.get(&self.subject_claim) {
            Some(Value::String(s)) if is_header_value(s) => s.clone(),
            Some(_) => return Err(TokenError::InvalidClaim(self.subject_claim.clone())),
            None => return Err(TokenError::MissingClaim(self.subject_claim.clone())),
        };
        let scopes = match claims.get(&self.scopes_claim) {
            None => Vec::new(),
            Some(Value::String(s)) => s.split_whitespace().map(str::to_string).collect(),
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| v.as_str().map(str::to_string))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| TokenError::InvalidClaim(self.scopes_claim.clone()))?,
            Some(_) => return Err(TokenError::InvalidClaim(self.scopes_claim.clone())),
        };
        if scopes.iter().any(|s| !is_header_value(s)) {
            return Err(TokenError::InvalidClaim(self.scopes_claim.clone()));
        }
        let tenant = match &self.tenant_claim {
            None => None,
            Some(claim) => match claims.get(claim).map(claim_text) {
                None => None,
                Some(Some(text)) if is_header_value(&text) => Some(text),
                Some(_) => return Err(TokenError::InvalidClaim(claim.clone())),
            },
        };
        let mut claim_headers = Vec::new();
        for (claim, header) in &self.claims_to_headers {
            match claims.get(claim).map(claim_text) {
                None => {}
                Some(Some(text)) if is_header_value(&text) => {
                    claim_headers.push((header.clone(), text))
                }
                Some(_) => return Err(TokenError::InvalidClaim(claim.clone())),
            }
        }
        Ok(Identity {
            subject,
            scopes,
            tenant,
            claim_headers,
        })
    }
}

/// The parts of a token's header used before verification.
#[derive(Debug, Clone)]
pub struct TokenHeader {
    /// `alg`.
    pub algorithm: Algorithm,
    /// `kid`.
    pub kid: Option<String>,
    /// `iss` from the (not yet verified) claims, to choose the provider.
    pub issuer: Option<String>,
}

impl TokenHeader {
    /// Reads the header and the unverified issuer. `alg: none` and unknown algorithms are refused
    /// here, before any key is looked at.
    pub fn parse(token: &str) -> Result<Self, TokenError> {
        let header = decode_header(token).map_err(|e| match e.kind() {
            ErrorKind::Json(_) if declares_algorithm(token) => TokenError::DisallowedAlgorithm,
            _ => TokenError::Malformed,
        })?;
        #[derive(serde::Deserialize)]
        struct Unverified {
            iss: Option<Value>,
        }
        let claims: Unverified = jsonwebtoken::dangerous::insecure_decode_claims(token)
            .map_err(|_| TokenError::Malformed)?;
        Ok(Self {
            algorithm: header.alg,
            kid: header.kid,
            issuer: claims.iss.and_then(|v| v.as_str().map(str::to_string)),
        })
    }
}

/// Whether the token's header is valid JSON with a string `alg` (so a parse failure was the
/// algorithm's fault: `none` or an unknown one).
fn declares_algorithm(token: &str) -> bool {
    use base64::Engine;
    let Some(encoded) = token.split('.').next() else {
        return false;
    };
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(encoded.trim_end_matches('='))
        .ok()
        .and_then(|bytes| serde_json::from_slice::<Value>(&bytes).ok())
        .is_some_and(|header| header.get("alg").is_some_and(Value::is_string))
}

fn claim_text(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Array(items) => items
            .iter()
            .map(|v| v.as_str().map(str::to_string))
            .collect::<Option<Vec<_>>>()
            .map(|parts| parts.join(" ")),
        Value::Null | Value::Object(_) => None,
    }
}

fn map_error(kind: &ErrorKind) -> TokenError {
    match kind {
        ErrorKind::InvalidSignature => TokenError::InvalidSignature,
        ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => {
            TokenError::DisallowedAlgorithm
        }
        ErrorKind::InvalidIssuer => TokenError::InvalidIssuer,
        ErrorKind::InvalidAudience | ErrorKind::MissingRequiredClaim(_) => {
            TokenError::InvalidAudience
        }
        ErrorKind::InvalidClaimFormat(claim) => TokenError::InvalidClaim(claim.clone()),
        _ => TokenError::Malformed,
    }
}

fn parse_algorithms(names: &[String], field: &str) -> Result<Vec<Algorithm>, ConfigError> {
    if names.is_empty() {
        return Err(ConfigError::new(
            field,
            "list the accepted algorithms, e.g. [\"RS256\"]",
        ));
    }
    names
        .iter()
        .map(|name| {
            Algorithm::from_str(name).map_err(|_| {
                ConfigError::new(
                    field,
                    format!(
                        "{name:?} is not a supported algorithm (HS256/384/512, RS256/384/512, \
                         PS256/384/512, ES256/384, EdDSA; \"none\" is never accepted)"
                    ),
                )
            })
        })
        .collect()
}
