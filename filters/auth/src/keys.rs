//! Verification keys of a token issuer: from an inline or fetched JWKS, a PEM public key or a
//! shared secret. Keys carried inside a token (`jwk`, `jku` headers) are never used.

use jsonwebtoken::jwk::{Jwk, PublicKeyUse};
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey};
use std::str::FromStr;

/// One key and what it may verify.
pub struct VerificationKey {
    /// `kid` from the JWKS, if any.
    pub kid: Option<String>,
    /// The JWK's `alg`, when it pins one algorithm.
    pub algorithm: Option<Algorithm>,
    /// The key itself; its family (HMAC, RSA, EC, Ed) is checked against the token's `alg`.
    pub key: DecodingKey,
}

/// The keys of one issuer.
#[derive(Default)]
pub struct KeySet {
    keys: Vec<VerificationKey>,
}

impl std::fmt::Debug for KeySet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeySet")
            .field(
                "kids",
                &self.keys.iter().map(|k| &k.kid).collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl KeySet {
    /// Parses a JSON Web Key Set. Keys meant for encryption or of unsupported types are skipped;
    /// a set with no usable key is an error.
    pub fn from_jwks(jwks: &serde_json::Value) -> Result<Self, String> {
        let Some(entries) = jwks.get("keys").and_then(|k| k.as_array()) else {
            return Err("a JWKS is an object with a \"keys\" array".into());
        };
        let keys: Vec<VerificationKey> = entries
            .iter()
            .filter_map(|entry| serde_json::from_value::<Jwk>(entry.clone()).ok())
            .filter(|jwk| {
                !matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption))
                    && jwk.is_supported()
            })
            .filter_map(|jwk| {
                let key = DecodingKey::from_jwk(&jwk).ok()?;
                let algorithm = jwk
                    .common
                    .key_algorithm
                    .and_then(|a| Algorithm::from_str(&a.to_string()).ok());
                Some(VerificationKey {
                    kid: jwk.common.key_id.clone(),
                    algorithm,
                    key,
                })
            })
            .collect();
        if keys.is_empty() {
            return Err(format!(
                "none of the {} key(s) in the JWKS is a usable signature key",
                entries.len()
            ));
        }
        Ok(Self { keys })
    }

    /// Parses a PEM public key of `family` (RSA, EC or Ed25519).
    pub fn from_pem(pem: &str, family: AlgorithmFamily) -> Result<Self, String> {
        let bytes = pem.as_bytes();
        let key = match family {
            AlgorithmFamily::Rsa => DecodingKey::from_rsa_pem(bytes),
            AlgorithmFamily::Ec => DecodingKey::from_ec_pem(bytes),
            AlgorithmFamily::Ed => DecodingKey::from_ed_pem(bytes),
            AlgorithmFamily::Hmac => return Err("HS* algorithms take a secret, not a PEM".into()),
        }
        .map_err(|e| format!("not a {family:?} public key in PEM form: {e}"))?;
        Ok(Self::single(key))
    }

    /// A shared secret for HS* algorithms.
    pub fn from_secret(secret: &str) -> Self {
        Self::single(DecodingKey::from_secret(secret.as_bytes()))
    }

    fn single(key: DecodingKey) -> Self {
        Self {
            keys: vec![VerificationKey {
                kid: None,
                algorithm: None,
                key,
            }],
        }
    }

    /// Keys that may verify a token signed with `algorithm`: of its family, not pinned to another
    /// algorithm, and with the token's `kid` when it names one.
    pub fn candidates<'a>(
        &'a self,
        kid: Option<&'a str>,
        algorithm: Algorithm,
    ) -> impl Iterator<Item = &'a DecodingKey> + 'a {
        self.keys
            .iter()
            .filter(move |k| {
                k.key.family() == algorithm.family()
                    && k.algorithm.is_none_or(|a| a == algorithm)
                    && match (kid, &k.kid) {
                        (Some(wanted), Some(have)) => wanted == have,
                        (Some(_), None) => true,
                        (None, _) => true,
                    }
            })
            .map(|k| &k.key)
    }

    /// Whether any key has one of these families.
    pub fn has_family(&self, families: &[AlgorithmFamily]) -> bool {
        self.keys.iter().any(|k| families.contains(&k.key.family()))
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// True when there is no key.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn oct(kid: &str) -> serde_json::Value {
        json!({"kty": "oct", "kid": kid, "k": "c2VjcmV0", "alg": "HS256"})
    }

    #[test]
    fn jwks_keys_are_selected_by_kid_and_family() {
        let set = KeySet::from_jwks(&json!({"keys": [oct("a"), oct("b")]})).unwrap();
        assert_eq!(set.len(), 2);
        assert_eq!(set.candidates(Some("a"), Algorithm::HS256).count(), 1);
        assert_eq!(set.candidates(Some("c"), Algorithm::HS256).count(), 0);
        assert_eq!(set.candidates(None, Algorithm::HS256).count(), 2);
        // Pinned to HS256, so not usable for HS512; and never for another family.
        assert_eq!(set.candidates(None, Algorithm::HS512).count(), 0);
        assert_eq!(set.candidates(None, Algorithm::RS256).count(), 0);
    }

    #[test]
    fn unusable_jwks_are_refused() {
        assert!(KeySet::from_jwks(&json!({"keys": []})).is_err());
        assert!(KeySet::from_jwks(&json!([])).is_err());
        let enc = json!({"keys": [{"kty": "oct", "k": "c2VjcmV0", "use": "enc"}]});
        assert!(KeySet::from_jwks(&enc).is_err());
        let mixed = json!({"keys": [{"kty": "weird"}, oct("ok")]});
        assert_eq!(KeySet::from_jwks(&mixed).unwrap().len(), 1);
    }

    #[test]
    fn pem_must_match_the_family() {
        assert!(KeySet::from_pem("not a pem", AlgorithmFamily::Rsa).is_err());
        assert!(KeySet::from_pem("x", AlgorithmFamily::Hmac).is_err());
    }
}
