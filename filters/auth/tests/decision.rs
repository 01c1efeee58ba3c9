//! The auth decision end to end in plain Rust: real signatures, an injected clock.

use auth_filter::config::AuthConfig;
use auth_filter::credentials::RequestView;
use auth_filter::decision::{Authenticator, Decision, Denial};
use auth_filter::jwks_cache::{JwksCache, MIN_REFETCH_SECONDS};
use auth_filter::keys::KeySet;
use filter_common::header_text;
use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use sha2::Digest;
use std::collections::HashMap;

const NOW: u64 = 1_800_000_000;
const SECRET: &str = "0123456789abcdef0123456789abcdef";
const RSA_KEY: &str = include_str!("keys/rsa.key");
const RSA_PUB: &str = include_str!("keys/rsa.pub");
const EC_KEY: &str = include_str!("keys/ec256.key");
const EC_PUB: &str = include_str!("keys/ec256.pub");
const ED_KEY: &str = include_str!("keys/ed25519.key");
const ED_PUB: &str = include_str!("keys/ed25519.pub");

struct Request {
    method: &'static str,
    path: String,
    headers: HashMap<String, String>,
}

impl RequestView for Request {
    fn header(&self, name: &str) -> Option<String> {
        self.headers.get(name).cloned()
    }
    fn path(&self) -> String {
        self.path.clone()
    }
    fn method(&self) -> String {
        self.method.into()
    }
}

fn request(path: &str, headers: &[(&str, &str)]) -> Request {
    Request {
        method: "GET",
        path: path.into(),
        headers: headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    }
}

fn bearer(token: &str) -> Request {
    request("/v1/data", &[("authorization", &format!("Bearer {token}"))])
}

fn claims() -> Value {
    json!({"iss": "https://idp.test", "aud": "gateway", "sub": "alice", "exp": NOW + 600,
           "scope": "read write", "tenant": "acme"})
}

fn sign(alg: Algorithm, key: &EncodingKey, kid: Option<&str>, claims: &Value) -> String {
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_string);
    encode(&header, claims, key).unwrap()
}

fn hs256(claims: &Value) -> String {
    sign(
        Algorithm::HS256,
        &EncodingKey::from_secret(SECRET.as_bytes()),
        None,
        claims,
    )
}

fn authenticator(provider: Value, extra: Value) -> Authenticator {
    let mut config = json!({
        "jwt": {"providers": [provider], "clock_skew_seconds": 30, "max_token_bytes": 4096},
        "rules": [
            {"path_prefix": "/public", "allow_anonymous": true},
            {"path_prefix": "/admin", "scopes": ["admin"]}
        ]
    });
    if let (Value::Object(config), Value::Object(extra)) = (&mut config, extra) {
        config.extend(extra);
    }
    let config = AuthConfig::from_json(config.to_string().as_bytes()).unwrap();
    Authenticator::new(config).unwrap()
}

fn hs_provider() -> Value {
    json!({"name": "idp", "issuer": "https://idp.test", "audiences": ["gateway"],
           "algorithms": ["HS256"], "keys": {"secret": SECRET}, "tenant_claim": "tenant",
           "claims_to_headers": [{"claim": "email", "header": "x-email"}]})
}

fn decide(auth: &Authenticator, request: &Request) -> Decision {
    auth.authenticate(request, NOW, &JwksCache::default())
}

fn denial(decision: Decision) -> Denial {
    match decision {
        Decision::Deny(denial) => denial,
        other => panic!("expected a denial, got {other:?}"),
    }
}

fn code(auth: &Authenticator, request: &Request) -> &'static str {
    denial(decide(auth, request)).code
}

#[test]
fn valid_token_forwards_identity_and_strips_the_token() {
    let auth = authenticator(hs_provider(), json!({}));
    let mut c = claims();
    c["email"] = json!("alice@acme.test");
    let Decision::Allow(allow) = decide(&auth, &bearer(&hs256(&c))) else {
        panic!("expected allow")
    };
    assert_eq!(
        allow.set_headers,
        [
            ("x-gateway-identity".to_string(), "alice".to_string()),
            ("x-gateway-scopes".into(), "read write".into()),
            ("x-gateway-tenant".into(), "acme".into()),
            ("x-email".into(), "alice@acme.test".into()),
        ]
    );
    assert_eq!(allow.remove_headers, ["authorization"]);
}

#[test]
fn token_is_forwarded_when_configured() {
    let auth = authenticator(hs_provider(), json!({}));
    let config = json!({"jwt": {"providers": [hs_provider()], "forward_token": true}});
    let forwarding =
        Authenticator::new(AuthConfig::from_json(config.to_string().as_bytes()).unwrap()).unwrap();
    let token = hs256(&claims());
    let Decision::Allow(allow) = decide(&forwarding, &bearer(&token)) else {
        panic!()
    };
    assert!(allow.remove_headers.is_empty());
    assert!(matches!(decide(&auth, &bearer(&token)), Decision::Allow(_)));
}

#[test]
fn every_asymmetric_algorithm_verifies() {
    let cases = [
        (
            Algorithm::RS256,
            EncodingKey::from_rsa_pem(RSA_KEY.as_bytes()).unwrap(),
            RSA_PUB,
        ),
        (
            Algorithm::RS512,
            EncodingKey::from_rsa_pem(RSA_KEY.as_bytes()).unwrap(),
            RSA_PUB,
        ),
        (
            Algorithm::PS256,
            EncodingKey::from_rsa_pem(RSA_KEY.as_bytes()).unwrap(),
            RSA_PUB,
        ),
        (
            Algorithm::ES256,
            EncodingKey::from_ec_pem(EC_KEY.as_bytes()).unwrap(),
            EC_PUB,
        ),
        (
            Algorithm::EdDSA,
            EncodingKey::from_ed_pem(ED_KEY.as_bytes()).unwrap(),
            ED_PUB,
        ),
    ];
    for (alg, private, public) in cases {
        let name = format!("{alg:?}");
        let provider = json!({"name": "pem", "algorithms": [name], "keys": {"pem": public}});
        let auth = authenticator(provider, json!({}));
        let token = sign(alg, &private, None, &claims());
        assert!(
            matches!(decide(&auth, &bearer(&token)), Decision::Allow(_)),
            "{alg:?} with a PEM key"
        );
        // The same key as an inline JWKS entry.
        let mut jwk = Jwk::from_encoding_key(&private, alg).unwrap();
        jwk.common.key_id = Some("k1".into());
        let jwks = serde_json::to_value(JwkSet { keys: vec![jwk] }).unwrap();
        let provider = json!({"name": "jwks", "algorithms": [name], "keys": {"jwks": jwks}});
        let auth = authenticator(provider, json!({}));
        let token = sign(alg, &private, Some("k1"), &claims());
        assert!(
            matches!(decide(&auth, &bearer(&token)), Decision::Allow(_)),
            "{alg:?} with a JWKS key"
        );
    }
}

#[test]
fn alg_none_and_algorithm_confusion_are_refused() {
    let auth = authenticator(hs_provider(), json!({}));
    let b64 = |v: &Value| {
        use base64::Engine;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
    };
    let none = format!(
        "{}.{}.",
        b64(&json!({"alg": "none", "typ": "JWT"})),
        b64(&claims())
    );
    assert_eq!(code(&auth, &bearer(&none)), "disallowed_algorithm");

    // An RS256 provider must not accept an HS256 token "signed" with its public key as secret.
    let rsa = json!({"name": "rsa", "algorithms": ["RS256"], "keys": {"pem": RSA_PUB}});
    let auth = authenticator(rsa, json!({}));
    let forged = sign(
        Algorithm::HS256,
        &EncodingKey::from_secret(RSA_PUB.as_bytes()),
        None,
        &claims(),
    );
    assert_eq!(code(&auth, &bearer(&forged)), "disallowed_algorithm");

    // And configuration refuses the mix that would make it possible.
    let mixed = json!({"jwt": {"providers": [{"name": "m", "algorithms": ["HS256", "RS256"], "keys": {"secret": SECRET}}]}});
    let err = Authenticator::new(AuthConfig::from_json(mixed.to_string().as_bytes()).unwrap())
        .err()
        .unwrap();
    assert!(err.to_string().contains("cannot be mixed"), "{err}");
}

#[test]
fn time_claims_use_the_injected_clock_with_skew() {
    let auth = authenticator(hs_provider(), json!({}));
    let with = |field: &str, value: u64| {
        let mut c = claims();
        c[field] = json!(value);
        bearer(&hs256(&c))
    };
    assert_eq!(code(&auth, &with("exp", NOW - 31)), "token_expired");
    assert!(matches!(
        decide(&auth, &with("exp", NOW - 29)),
        Decision::Allow(_)
    ));
    assert_eq!(code(&auth, &with("nbf", NOW + 31)), "token_not_yet_valid");
    assert!(matches!(
        decide(&auth, &with("nbf", NOW + 29)),
        Decision::Allow(_)
    ));
    let mut no_exp = claims();
    no_exp.as_object_mut().unwrap().remove("exp");
    assert_eq!(code(&auth, &bearer(&hs256(&no_exp))), "missing_claim");
    let mut text_exp = claims();
    text_exp["exp"] = json!("tomorrow");
    assert_eq!(code(&auth, &bearer(&hs256(&text_exp))), "invalid_claim");
}

#[test]
fn hostile_tokens_are_refused_with_reason_codes() {
    let auth = authenticator(hs_provider(), json!({}));
    let with = |field: &str, value: Value| {
        let mut c = claims();
        c[field] = value;
        bearer(&hs256(&c))
    };
    assert_eq!(
        code(&auth, &with("aud", json!("other"))),
        "invalid_audience"
    );
    assert_eq!(
        code(&auth, &with("iss", json!("https://evil.test"))),
        "unknown_issuer"
    );
    assert_eq!(
        code(&auth, &with("sub", json!("alice\r\nx-admin: 1"))),
        "invalid_claim"
    );
    let mut no_aud = claims();
    no_aud.as_object_mut().unwrap().remove("aud");
    assert_eq!(code(&auth, &bearer(&hs256(&no_aud))), "invalid_audience");

    let token = hs256(&claims());
    let (signed, signature) = token.rsplit_once('.').unwrap();
    let flipped = if signature.starts_with('A') { "B" } else { "A" };
    let tampered = format!("{signed}.{flipped}{}", &signature[1..]);
    assert_eq!(code(&auth, &bearer(&tampered)), "invalid_signature");
    let wrong_secret = sign(
        Algorithm::HS256,
        &EncodingKey::from_secret(b"another-secret-another-secret-xx"),
        None,
        &claims(),
    );
    assert_eq!(code(&auth, &bearer(&wrong_secret)), "invalid_signature");

    assert_eq!(code(&auth, &bearer("not-a-jwt")), "malformed_token");
    assert_eq!(code(&auth, &bearer("a.b.c")), "malformed_token");
    assert_eq!(code(&auth, &bearer(&"a".repeat(5000))), "token_too_large");

    let denied = denial(decide(&auth, &bearer("a.b.c")));
    assert_eq!(denied.status, 401);
    assert!(denied
        .www_authenticate
        .starts_with("Bearer realm=\"gateway\", error=\"invalid_token\""));
}

#[test]
fn rules_require_scopes_or_allow_anonymous_callers() {
    let auth = authenticator(hs_provider(), json!({}));
    let token = hs256(&claims());
    let admin = request(
        "/admin/users",
        &[("authorization", &format!("Bearer {token}"))],
    );
    let denied = denial(decide(&auth, &admin));
    assert_eq!((denied.status, denied.code), (403, "insufficient_scope"));
    assert!(denied
        .www_authenticate
        .contains("error=\"insufficient_scope\""));
    assert!(denied.www_authenticate.contains("scope=\"admin\""));

    let mut admin_claims = claims();
    admin_claims["scope"] = json!(["admin", "read"]);
    let token = hs256(&admin_claims);
    let admin = request(
        "/admin/users",
        &[("authorization", &format!("Bearer {token}"))],
    );
    assert!(matches!(decide(&auth, &admin), Decision::Allow(_)));

    let anonymous = request("/public/docs", &[]);
    assert_eq!(
        decide(&auth, &anonymous),
        Decision::Allow(Default::default())
    );
    // Credentials that are sent must still be valid.
    let bad = request("/public/docs", &[("authorization", "Bearer a.b.c")]);
    assert_eq!(code(&auth, &bad), "malformed_token");
    let missing = denial(decide(&auth, &request("/v1/data", &[])));
    assert_eq!((missing.status, missing.code), (401, "missing_token"));
    assert_eq!(missing.www_authenticate, "Bearer realm=\"gateway\"");
}

#[test]
fn api_keys_and_tokens_work_side_by_side() {
    let keys = json!({"api_key": {"keys": [{"identity": "svc-batch", "key": "k-batch", "scopes": ["admin"], "tenant": "ops"}]}});
    let auth = authenticator(hs_provider(), keys);
    let Decision::Allow(allow) = decide(&auth, &request("/admin/x", &[("x-api-key", "k-batch")]))
    else {
        panic!()
    };
    assert!(allow
        .set_headers
        .contains(&("x-gateway-tenant".into(), "ops".into())));
    assert_eq!(allow.remove_headers, ["x-api-key"]);
    assert!(matches!(
        decide(&auth, &bearer(&hs256(&claims()))),
        Decision::Allow(_)
    ));
    assert_eq!(
        code(&auth, &request("/v1/x", &[("x-api-key", "nope")])),
        "invalid_api_key"
    );
    let missing = denial(decide(&auth, &request("/v1/x", &[])));
    assert_eq!(missing.code, "missing_credentials");
    assert_eq!(
        missing.www_authenticate,
        "Bearer realm=\"gateway\", ApiKey realm=\"gateway\""
    );
}

#[test]
fn remote_jwks_is_waited_for_refetched_on_unknown_kid_and_throttled() {
    let provider = json!({"name": "remote", "issuer": "https://idp.test", "algorithms": ["RS256"],
                          "keys": {"remote_jwks": {"cluster": "idp", "path": "/jwks", "cache_seconds": 300}}});
    let auth = authenticator(provider, json!({}));
    let private = EncodingKey::from_rsa_pem(RSA_KEY.as_bytes()).unwrap();
    let jwks_with = |kid: &str| {
        let mut jwk = Jwk::from_encoding_key(&private, Algorithm::RS256).unwrap();
        jwk.common.key_id = Some(kid.into());
        KeySet::from_jwks(&serde_json::to_value(JwkSet { keys: vec![jwk] }).unwrap()).unwrap()
    };
    let mut cache = JwksCache::new([Some(300)]);
    let token = bearer(&sign(Algorithm::RS256, &private, Some("k2"), &claims()));

    assert_eq!(
        auth.authenticate(&token, NOW, &cache),
        Decision::NeedKeys(0)
    );
    assert!(cache.start_fetch(0, NOW));
    cache.finish_fetch(0, Ok(jwks_with("k1")), NOW);
    // k2 is unknown and the set was just fetched: no new fetch yet.
    assert_eq!(
        denial(auth.authenticate(&token, NOW, &cache)).code,
        "unknown_key"
    );
    let later = NOW + MIN_REFETCH_SECONDS;
    assert_eq!(
        auth.authenticate(&token, later, &cache),
        Decision::NeedKeys(0)
    );
    assert!(cache.start_fetch(0, later));
    cache.finish_fetch(0, Ok(jwks_with("k2")), later);
    assert!(matches!(
        auth.authenticate(&token, later, &cache),
        Decision::Allow(_)
    ));

    let mut unreachable = JwksCache::new([Some(300)]);
    assert!(unreachable.start_fetch(0, NOW));
    unreachable.finish_fetch(0, Err("refused".into()), NOW);
    assert_eq!(
        denial(auth.authenticate(&token, NOW + 1, &unreachable)).code,
        "keys_unavailable"
    );
}

#[test]
fn credentials_with_invalid_bytes_are_refused_not_missing() {
    // What the shell reads for `x-api-key: k-batch\xff`, `Authorization: Bearer <token>\xfe`...
    let malformed = |bytes: &[u8]| header_text(bytes.to_vec());
    let keys = json!({"api_key": {"query_parameter": "api_key",
                                  "keys": [{"identity": "svc", "key": "k-batch"}]}});
    let auth = authenticator(hs_provider(), keys);
    let api_key = malformed(b"k-batch\xff");
    assert_eq!(
        code(&auth, &request("/v1/x", &[("x-api-key", &api_key)])),
        "invalid_api_key"
    );
    assert_eq!(
        code(&auth, &request("/v1/x?api_key=k-batch%FF", &[])),
        "invalid_api_key"
    );
    // Every invalid key reads as the same text; a key configured as that text never matches.
    let replacement = hex::encode(sha2::Sha256::digest("\u{fffd}"));
    let lookalike = json!({"api_key": {"keys": [{"identity": "svc", "sha256": replacement}]}});
    let lookalike = authenticator(hs_provider(), lookalike);
    let invalid = request("/v1/x", &[("x-api-key", &malformed(b"\xff"))]);
    assert_eq!(code(&lookalike, &invalid), "invalid_api_key");

    let token = hs256(&claims());
    let mut bad_token = format!("Bearer {token}").into_bytes();
    bad_token.push(0xfe);
    for header in [malformed(&bad_token), malformed(b"\xffBearer abc")] {
        let refused = denial(decide(
            &auth,
            &request("/v1/x", &[("authorization", &header)]),
        ));
        assert_eq!((refused.status, refused.code), (401, "malformed_token"));
        assert!(refused.www_authenticate.contains("error=\"invalid_token\""));
        // Sent credentials must be valid, on anonymous paths too.
        let public = request("/public/docs", &[("authorization", &header)]);
        assert_eq!(code(&auth, &public), "malformed_token");
    }

    let sources = json!({"jwt": {"providers": [hs_provider()],
                                 "from": [{"cookie": "session"}, {"query": "access_token"}]}});
    let auth =
        Authenticator::new(AuthConfig::from_json(sources.to_string().as_bytes()).unwrap()).unwrap();
    let mut cookie = format!("a=1; session={token}").into_bytes();
    cookie.push(0xff);
    let cookie = malformed(&cookie);
    assert_eq!(
        code(&auth, &request("/v1/x", &[("cookie", &cookie)])),
        "malformed_token"
    );
    let query = format!("/v1/x?access_token={token}%FF");
    assert_eq!(code(&auth, &request(&query, &[])), "malformed_token");
    let valid = request("/v1/x", &[("cookie", &format!("session={token}"))]);
    assert!(matches!(decide(&auth, &valid), Decision::Allow(_)));
}
