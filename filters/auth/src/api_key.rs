//! The set of valid API keys, looked up by SHA-256 digest.
//!
//! Keys are stored and compared as digests: the configuration may hold digests instead of secrets,
//! and a lookup's timing depends on the digest, not on how many leading characters of a key match.

use crate::config::ApiKeyEntry;
use crate::jwt::Identity;
use sha2::{Digest, Sha256};
use std::collections::HashMap;

/// Maps the digest of each valid key to the identity it authenticates.
#[derive(Debug, Default)]
pub struct ApiKeyStore {
    identities: HashMap<[u8; 32], Identity>,
}

impl ApiKeyStore {
    /// Builds the store from validated configuration entries.
    pub fn new(entries: &[ApiKeyEntry]) -> Self {
        let identities = entries
            .iter()
            .map(|entry| {
                let digest = match (&entry.key, &entry.sha256) {
                    (Some(key), _) => digest(key.as_bytes()),
                    (None, Some(hex_digest)) => {
                        let mut out = [0u8; 32];
                        hex::decode_to_slice(hex_digest, &mut out)
                            .expect("validated as 64 hex characters");
                        out
                    }
                    (None, None) => unreachable!("validated: one of key or sha256 is set"),
                };
                let identity = Identity {
                    subject: entry.identity.clone(),
                    scopes: entry.scopes.clone(),
                    tenant: entry.tenant.clone(),
                    claim_headers: Vec::new(),
                };
                (digest, identity)
            })
            .collect();
        Self { identities }
    }

    /// The identity authenticated by `key`, if it is valid.
    pub fn identify(&self, key: &[u8]) -> Option<&Identity> {
        self.identities.get(&digest(key))
    }
}

fn digest(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(identity: &str, key: Option<&str>, sha256: Option<&str>) -> ApiKeyEntry {
        ApiKeyEntry {
            identity: identity.into(),
            key: key.map(Into::into),
            sha256: sha256.map(Into::into),
            scopes: vec!["read".into()],
            tenant: None,
        }
    }

    #[test]
    fn finds_clear_and_hashed_keys() {
        // sha256("secret-b")
        let hashed = hex::encode(Sha256::digest(b"secret-b"));
        let store = ApiKeyStore::new(&[
            entry("alice", Some("secret-a"), None),
            entry("bob", None, Some(&hashed)),
        ]);
        let subject = |key: &[u8]| store.identify(key).map(|i| i.subject.as_str());
        assert_eq!(subject(b"secret-a"), Some("alice"));
        assert_eq!(subject(b"secret-b"), Some("bob"));
        assert_eq!(store.identify(b"secret-a").unwrap().scopes, ["read"]);
        assert_eq!(store.identify(b"secret-c"), None);
        assert_eq!(store.identify(b""), None);
    }
}
