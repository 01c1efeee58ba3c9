//! The gateway's identity contract with the services behind it.
//!
//! The gateway's filters verify a caller and set `x-gateway-identity`, `x-gateway-scopes` and
//! `x-gateway-tenant`; the proxy removes every client-sent header of that namespace first. A
//! service reachable other than through the gateway (a pod IP, a port-forward) cannot tell those
//! headers from forged ones, so the gateway signs them: `x-gateway-signature` is an HMAC-SHA256,
//! under a key the gateway and the service share, over the identity, scopes, tenant, request id
//! and time. A service trusts the identity headers only when the signature verifies and is fresh.
//!
//! Header value: `v1;t=<unix seconds>;sig=<lowercase hex>`. Signed message (UTF-8):
//! `"v1\n" + t + "\n" + request_id + "\n" + identity + "\n" + scopes + "\n" + tenant`, where an
//! absent header is the empty string. python-ml implements the same check in Python.

use gateway_contract::headers;
use hmac::{Hmac, Mac};
use http::HeaderMap;
use sha2::Sha256;

/// Shortest key accepted: 128 bits.
pub const MIN_KEY_BYTES: usize = 16;

/// A signing key shared by the gateway and a service. Never printed.
#[derive(Clone)]
pub struct SigningKey(Vec<u8>);

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SigningKey(<redacted>)")
    }
}

impl SigningKey {
    /// A key from its bytes (an environment variable's value); refused when shorter than
    /// [`MIN_KEY_BYTES`].
    pub fn new(bytes: impl Into<Vec<u8>>) -> Result<Self, KeyTooShort> {
        let bytes = bytes.into();
        if bytes.len() < MIN_KEY_BYTES {
            return Err(KeyTooShort(bytes.len()));
        }
        Ok(Self(bytes))
    }

    fn mac(&self, t: u64, claims: &Claims<'_>) -> Hmac<Sha256> {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.0).expect("HMAC takes any key length");
        mac.update(format!("v1\n{t}").as_bytes());
        for value in [
            claims.request_id,
            claims.identity,
            claims.scopes,
            claims.tenant,
        ] {
            mac.update(b"\n");
            mac.update(value);
        }
        mac
    }

    /// The `x-gateway-signature` value for the identity headers of `headers`, now.
    pub fn sign_headers(&self, headers: &HeaderMap) -> String {
        self.sign(unix_now(), &Claims::from_headers(headers))
    }

    /// The identity headers of `headers` when their `x-gateway-signature` verifies and is at most
    /// `max_age_seconds` old (either way).
    pub fn verify_headers<'h>(
        &self,
        headers: &'h HeaderMap,
        max_age_seconds: u64,
    ) -> Result<Claims<'h>, SignatureError> {
        let signature = headers
            .get(headers::SIGNATURE)
            .and_then(|v| v.to_str().ok())
            .ok_or(SignatureError::Malformed)?;
        let claims = Claims::from_headers(headers);
        self.verify(signature, &claims, unix_now(), max_age_seconds)?;
        Ok(claims)
    }

    /// The `x-gateway-signature` value for `claims` at unix time `t`.
    pub fn sign(&self, t: u64, claims: &Claims<'_>) -> String {
        let sig = hex::encode(self.mac(t, claims).finalize().into_bytes());
        format!("v1;t={t};sig={sig}")
    }

    /// Checks `signature` (an `x-gateway-signature` value) over `claims`: it must verify and be at
    /// most `max_age_seconds` away from `now` (either way, for clock skew).
    pub fn verify(
        &self,
        signature: &str,
        claims: &Claims<'_>,
        now: u64,
        max_age_seconds: u64,
    ) -> Result<(), SignatureError> {
        let (t, sig) = parse(signature).ok_or(SignatureError::Malformed)?;
        if t.abs_diff(now) > max_age_seconds {
            return Err(SignatureError::Expired);
        }
        let sig = hex::decode(sig).map_err(|_| SignatureError::Malformed)?;
        // `verify_slice` compares in constant time.
        self.mac(t, claims)
            .verify_slice(&sig)
            .map_err(|_| SignatureError::Mismatch)
    }
}

/// What a signature covers: the header values as bytes, as sent (so a value that is not ASCII
/// is signed as it is, not as empty); absent headers are empty.
#[derive(Debug, Clone, Copy, Default)]
pub struct Claims<'a> {
    /// `x-request-id`.
    pub request_id: &'a [u8],
    /// `x-gateway-identity`.
    pub identity: &'a [u8],
    /// `x-gateway-scopes`.
    pub scopes: &'a [u8],
    /// `x-gateway-tenant`.
    pub tenant: &'a [u8],
}

impl<'a> Claims<'a> {
    /// The identity headers of a request; absent ones are empty.
    pub fn from_headers(headers: &'a HeaderMap) -> Self {
        let value = |name| headers.get(name).map_or(&b""[..], |v| v.as_bytes());
        Self {
            request_id: value(headers::REQUEST_ID),
            identity: value(headers::IDENTITY),
            scopes: value(headers::SCOPES),
            tenant: value(headers::TENANT),
        }
    }
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// `v1;t=<digits>;sig=<hex>` → (t, hex).
fn parse(value: &str) -> Option<(u64, &str)> {
    let rest = value.trim().strip_prefix("v1;t=")?;
    let (t, sig) = rest.split_once(";sig=")?;
    if t.is_empty() || !t.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((t.parse().ok()?, sig))
}

/// A key shorter than [`MIN_KEY_BYTES`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the signing key has {0} bytes; at least {MIN_KEY_BYTES} are needed")]
pub struct KeyTooShort(pub usize);

/// Why a signature was not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// Not of the form `v1;t=<unix seconds>;sig=<hex>`.
    #[error("the gateway signature is malformed")]
    Malformed,
    /// Older (or further in the future) than the accepted window.
    #[error("the gateway signature has expired")]
    Expired,
    /// Made with another key or over other values.
    #[error("the gateway signature does not match")]
    Mismatch,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> SigningKey {
        SigningKey::new(*b"0123456789abcdef0123456789abcdef").unwrap()
    }

    const CLAIMS: Claims<'static> = Claims {
        request_id: b"req-1",
        identity: b"alice",
        scopes: b"read write",
        tenant: b"acme",
    };

    #[test]
    fn a_signature_verifies_within_its_window() {
        let signature = key().sign(1_000, &CLAIMS);
        assert!(signature.starts_with("v1;t=1000;sig="));
        assert_eq!(key().verify(&signature, &CLAIMS, 1_030, 60), Ok(()));
        assert_eq!(key().verify(&signature, &CLAIMS, 970, 60), Ok(()));
        assert_eq!(
            key().verify(&signature, &CLAIMS, 1_061, 60),
            Err(SignatureError::Expired)
        );
    }

    #[test]
    fn every_claim_and_the_key_are_covered() {
        let signature = key().sign(1_000, &CLAIMS);
        for forged in [
            Claims {
                request_id: b"req-2",
                ..CLAIMS
            },
            Claims {
                identity: b"mallory",
                ..CLAIMS
            },
            Claims {
                scopes: b"read write admin",
                ..CLAIMS
            },
            Claims {
                tenant: b"victim",
                ..CLAIMS
            },
        ] {
            assert_eq!(
                key().verify(&signature, &forged, 1_000, 60),
                Err(SignatureError::Mismatch)
            );
        }
        let other = SigningKey::new(*b"another key of sixteen or more b").unwrap();
        assert_eq!(
            other.verify(&signature, &CLAIMS, 1_000, 60),
            Err(SignatureError::Mismatch)
        );
    }

    #[test]
    fn the_message_format_is_stable() {
        // The same value python-ml computes (docs/python-ml.md); changing it breaks services.
        let mac = key().mac(1_000, &CLAIMS).finalize().into_bytes();
        let mut expected =
            Hmac::<Sha256>::new_from_slice(b"0123456789abcdef0123456789abcdef").unwrap();
        expected.update(b"v1\n1000\nreq-1\nalice\nread write\nacme");
        assert_eq!(mac, expected.finalize().into_bytes());
    }

    #[test]
    fn headers_signed_by_one_side_verify_on_the_other() {
        let mut headers = HeaderMap::new();
        for (name, value) in [
            (headers::REQUEST_ID, "req-1"),
            (headers::IDENTITY, "alice"),
            (headers::SCOPES, "read write"),
        ] {
            headers.insert(name, value.parse().unwrap());
        }
        let signature = key().sign_headers(&headers);
        headers.insert(headers::SIGNATURE, signature.parse().unwrap());
        let claims = key().verify_headers(&headers, 60).unwrap();
        assert_eq!(
            (claims.identity, claims.scopes, claims.tenant),
            (&b"alice"[..], &b"read write"[..], &b""[..])
        );
        headers.insert(headers::SCOPES, "read write admin".parse().unwrap());
        assert_eq!(
            key().verify_headers(&headers, 60).err(),
            Some(SignatureError::Mismatch)
        );
        // A value that is not ASCII is signed as sent, not as empty.
        headers.insert(
            headers::SCOPES,
            http::HeaderValue::from_bytes(b"read \xe9crire").unwrap(),
        );
        let signature = key().sign_headers(&headers);
        headers.insert(headers::SIGNATURE, signature.parse().unwrap());
        assert_eq!(
            key().verify_headers(&headers, 60).unwrap().scopes,
            b"read \xe9crire"
        );
        headers.insert(headers::SCOPES, "read ".parse().unwrap());
        assert_eq!(
            key().verify_headers(&headers, 60).err(),
            Some(SignatureError::Mismatch)
        );
        headers.remove(headers::SIGNATURE);
        assert_eq!(
            key().verify_headers(&headers, 60).err(),
            Some(SignatureError::Malformed)
        );
    }

    #[test]
    fn malformed_values_and_short_keys_are_refused() {
        for bad in [
            "",
            "v1",
            "v2;t=1;sig=00",
            "v1;t=;sig=00",
            "v1;t=-1;sig=00",
            "v1;t=1;sig=zz",
            "v1;t=99999999999999999999;sig=00",
        ] {
            assert!(
                matches!(
                    key().verify(bad, &CLAIMS, 1, 60),
                    Err(SignatureError::Malformed | SignatureError::Expired)
                ),
                "{bad:?}"
            );
        }
        assert_eq!(SigningKey::new(*b"short").err(), Some(KeyTooShort(5)));
        assert_eq!(format!("{:?}", key()), "SigningKey(<redacted>)");
    }
}
