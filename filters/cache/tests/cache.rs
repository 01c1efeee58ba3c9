//! Cache decisions and storage in plain Rust, over an in-memory shared store.

use cache_filter::cache::{response_status, stored_headers, Cache, Plan, RequestFacts, Use};
use cache_filter::config::CacheConfig;
use cache_filter::entry::Entry;
use filter_common::header_text;
use filter_common::testing::MemoryStore;
use std::collections::HashMap;

struct Request(HashMap<String, String>);

impl RequestFacts for Request {
    fn header(&self, name: &str) -> Option<String> {
        self.0.get(name).cloned()
    }
}

fn request(method: &str, path: &str, headers: &[(&str, &str)]) -> Request {
    let mut map: HashMap<String, String> = headers
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    map.insert(":method".into(), method.into());
    map.insert(":path".into(), path.into());
    map.insert(":authority".into(), "api.test".into());
    Request(map)
}

fn cache(extra: &str) -> Cache {
    let json = format!(
        r#"{{"rules": [{{"path_prefix": "/v1/rag/query", "methods": ["POST"], "ttl_seconds": 3600, "stale_if_error_seconds": 600}},
                       {{"path_prefix": "/v1/", "ttl_seconds": 60}}],
            "partition_headers": ["x-gateway-tenant"], "key_headers": ["accept"],
            "bypass": {{"scope": "cache:bypass"}}, "max_entry_bytes": 100, "max_total_bytes": 340 {extra}}}"#
    );
    Cache::new(CacheConfig::from_json(json.as_bytes()).unwrap())
}

fn plan(cache: &Cache, request: &Request) -> Use {
    match cache.plan(request) {
        Plan::Use(plan) => plan,
        other => panic!("expected a cacheable plan, got {other:?}"),
    }
}

fn headers(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn plans_follow_rules_client_directives_and_bypass_rights() {
    let cache = cache("");
    assert_eq!(cache.plan(&request("GET", "/other", &[])), Plan::Skip);
    assert_eq!(cache.plan(&request("DELETE", "/v1/x", &[])), Plan::Skip);
    let post = plan(&cache, &request("POST", "/v1/rag/query", &[]));
    assert!(post.needs_body && post.lookup);
    assert!(plan(&cache, &request("HEAD", "/v1/x", &[])).head);
    assert!(
        !plan(
            &cache,
            &request("GET", "/v1/x", &[("cache-control", "no-cache")])
        )
        .lookup
    );
    assert_eq!(
        cache.plan(&request("GET", "/v1/x", &[("cache-control", "no-store")])),
        Plan::Bypass
    );
    // Poisoning through unkeyed headers: such requests never touch the cache.
    assert_eq!(
        cache.plan(&request(
            "GET",
            "/v1/x",
            &[("x-forwarded-host", "evil.test")]
        )),
        Plan::Bypass
    );
    // The bypass header works only for callers the auth filter granted the scope.
    let asks = [("x-cache-bypass", "1")];
    assert!(matches!(
        cache.plan(&request("GET", "/v1/x", &asks)),
        Plan::Use(_)
    ));
    let granted = [
        ("x-cache-bypass", "1"),
        ("x-gateway-scopes", "read cache:bypass"),
    ];
    assert_eq!(cache.plan(&request("GET", "/v1/x", &granted)), Plan::Bypass);
}

#[test]
fn keys_separate_tenants_bodies_and_keyed_headers_only() {
    let cache = cache("");
    let key = |method, path, headers: &[(&str, &str)], body: Option<&[u8]>| {
        cache.key(&request(method, path, headers), body)
    };
    let base = key("GET", "/v1/x", &[("x-gateway-tenant", "acme")], None);
    assert_ne!(
        base,
        key("GET", "/v1/x", &[("x-gateway-tenant", "other")], None)
    );
    assert_ne!(base, key("GET", "/v1/x", &[], None));
    assert_ne!(
        base,
        key("GET", "/v1/x?a=1", &[("x-gateway-tenant", "acme")], None)
    );
    assert_ne!(
        base,
        key(
            "GET",
            "/v1/x",
            &[("x-gateway-tenant", "acme"), ("accept", "text/html")],
            None
        )
    );
    assert_eq!(
        base,
        key("HEAD", "/v1/x", &[("x-gateway-tenant", "acme")], None)
    );
    assert_eq!(
        base,
        key(
            "GET",
            "/v1/x",
            &[("x-gateway-tenant", "acme"), ("user-agent", "x")],
            None
        )
    );
    let q1 = key("POST", "/v1/rag/query", &[], Some(b"{\"q\": 1}"));
    assert_ne!(q1, key("POST", "/v1/rag/query", &[], Some(b"{\"q\": 2}")));
    assert_eq!(q1, key("POST", "/v1/rag/query", &[], Some(b"{\"q\": 1}")));
    assert!(base.starts_with("cache|"));
}

#[test]
fn storable_honours_cache_control_vary_cookies_and_authorization() {
    let cache = cache("");
    let get = plan(&cache, &request("GET", "/v1/x", &[]));
    let ok = |h: &[(&str, &str)]| cache.storable(&get, 200, &headers(h));
    assert_eq!(ok(&[]), Some((60, 0)));
    assert_eq!(
        ok(&[("cache-control", "max-age=5, stale-if-error=9")]),
        Some((5, 9))
    );
    assert_eq!(
        ok(&[("cache-control", "max-age=5, s-maxage=7")]),
        Some((7, 0))
    );
    for refused in ["no-store", "private", "no-cache", "max-age=0"] {
        assert_eq!(ok(&[("cache-control", refused)]), None, "{refused}");
    }
    assert_eq!(ok(&[("set-cookie", "a=b")]), None);
    assert_eq!(ok(&[("vary", "*")]), None);
    assert_eq!(
        ok(&[("vary", "User-Agent")]),
        None,
        "varies on an unkeyed header"
    );
    assert_eq!(ok(&[("vary", "Accept, x-gateway-tenant")]), Some((60, 0)));
    assert_eq!(ok(&[("content-type", "text/event-stream")]), None);
    assert_eq!(cache.storable(&get, 500, &[]), None);
    let head = plan(&cache, &request("HEAD", "/v1/x", &[]));
    assert_eq!(cache.storable(&head, 200, &[]), None);

    let unpartitioned = Cache::new(
        CacheConfig::from_json(br#"{"rules": [{"path_prefix": "/", "ttl_seconds": 60}]}"#).unwrap(),
    );
    let authorized = plan(
        &unpartitioned,
        &request("GET", "/a", &[("authorization", "Bearer t")]),
    );
    assert_eq!(unpartitioned.storable(&authorized, 200, &[]), None);
    let public = headers(&[("cache-control", "public")]);
    assert_eq!(
        unpartitioned.storable(&authorized, 200, &public),
        Some((60, 0))
    );
}

#[test]
fn entries_live_within_their_budget_and_expire() {
    let cache = cache("");
    let store = MemoryStore::default();
    let entry = |body: &[u8], stored_at| Entry {
        stored_at,
        fresh_seconds: 10,
        stale_seconds: 5,
        status: 200,
        headers: stored_headers(headers(&[
            ("content-type", "text/plain"),
            ("content-length", "3"),
            ("x-request-id", "r1"),
            ("ratelimit-remaining", "3"),
        ])),
        body: body.to_vec(),
    };
    let stored = entry(b"abc", 1000);
    assert_eq!(stored.headers, headers(&[("content-type", "text/plain")]));
    assert!(cache.store(&store, "cache|a", &stored));
    assert_eq!(cache.lookup(&store, "cache|a", 1009), Some(stored.clone()));
    assert!(
        cache.lookup(&store, "cache|a", 1014).is_some(),
        "stale, still usable on error"
    );
    assert_eq!(cache.lookup(&store, "cache|a", 1015), None);

    assert!(
        !cache.store(&store, "cache|big", &entry(&[0; 101], 1000)),
        "over max_entry_bytes"
    );
    assert!(cache.store(&store, "cache|b", &entry(&[1; 90], 1000)));
    assert!(cache.store(&store, "cache|c", &entry(&[2; 90], 1000)));
    assert!(
        !cache.store(&store, "cache|d", &entry(&[3; 90], 1000)),
        "over max_total_bytes"
    );
    assert!(!cache.expire(&store, "cache|b", 1010));
    assert!(cache.expire(&store, "cache|b", 1015));
    assert!(!store.contains("cache|b"));
    assert!(
        cache.store(&store, "cache|d", &entry(&[3; 90], 1000)),
        "space freed by expiry"
    );
}

#[test]
fn request_headers_with_invalid_bytes_never_share_an_entry() {
    let cache = cache("");
    // `\xff` and `\xfe` read alike: keyed on that text, they would share an entry.
    let malformed = header_text(b"acme\xff".to_vec());
    assert_eq!(malformed, header_text(b"acme\xfe".to_vec()));
    for header in ["x-gateway-tenant", "accept", ":authority"] {
        let mut request = request("GET", "/v1/x", &[]);
        request.0.insert(header.into(), malformed.clone());
        assert_eq!(cache.plan(&request), Plan::Bypass, "{header}");
    }
    let path = header_text(b"/v1/x\xff".to_vec());
    assert_eq!(cache.plan(&request("GET", &path, &[])), Plan::Bypass);
    // Headers outside the key do not matter.
    let other = request("GET", "/v1/x", &[("user-agent", &malformed)]);
    assert!(matches!(cache.plan(&other), Plan::Use(_)));
    // A directive with invalid bytes is ignored, as are the bypass header and scopes.
    let no_store = header_text(b"no-store\xff".to_vec());
    assert!(
        plan(
            &cache,
            &request("GET", "/v1/x", &[("cache-control", &no_store)])
        )
        .lookup
    );
    let scopes = header_text(b"cache:bypass\xff".to_vec());
    let asks = [
        ("x-cache-bypass", "1"),
        ("x-gateway-scopes", scopes.as_str()),
    ];
    assert!(matches!(
        cache.plan(&request("GET", "/v1/x", &asks)),
        Plan::Use(_)
    ));
}

#[test]
fn responses_with_invalid_header_bytes_are_passed_on_not_stored() {
    let cache = cache("");
    let get = plan(&cache, &request("GET", "/v1/x", &[]));
    let bytes = |pairs: &[(&str, &[u8])]| -> Vec<(String, Vec<u8>)> {
        pairs
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_vec()))
            .collect()
    };
    let valid = bytes(&[(":status", b"200"), ("content-type", b"text/plain")]);
    assert_eq!(response_status(&valid), 200);
    let entry = cache.start_entry(&get, 200, valid, 1000).unwrap();
    assert_eq!(entry.headers, headers(&[("content-type", "text/plain")]));
    assert_eq!((entry.stored_at, entry.fresh_seconds), (1000, 60));
    for value in [&b"caf\xe9"[..], b"\xff"] {
        let invalid = bytes(&[(":status", b"200"), ("x-note", value)]);
        assert_eq!(cache.start_entry(&get, 200, invalid, 1000), None);
    }
    // An invalid `Cache-Control` is not read as absent (which would store a `private` answer).
    let invalid = bytes(&[(":status", b"200"), ("cache-control", b"private\xff")]);
    assert_eq!(cache.start_entry(&get, 200, invalid, 1000), None);
    assert_eq!(response_status(&bytes(&[(":status", b"2\xff0")])), 0);
    assert_eq!(response_status(&[]), 0);
}

/// Runs a request through plan, key and storing of a 200 answering `body`: the key it was stored
/// under, if it was.
fn serve(
    cache: &Cache,
    store: &MemoryStore,
    request: &Request,
    response: &[(&str, &str)],
    body: &[u8],
) -> Option<String> {
    let plan = plan(cache, request);
    let key = cache.key(request, None);
    let response = response
        .iter()
        .map(|(n, v)| (n.to_string(), v.as_bytes().to_vec()))
        .collect();
    let mut entry = cache.start_entry(&plan, 200, response, 1000)?;
    entry.body = body.to_vec();
    assert!(cache.store(store, &key, &entry));
    Some(key)
}

#[test]
fn what_an_identity_received_is_shared_only_when_partitioned_or_public() {
    let unpartitioned = Cache::new(
        CacheConfig::from_json(br#"{"rules": [{"path_prefix": "/", "ttl_seconds": 60}]}"#).unwrap(),
    );
    let store = MemoryStore::default();
    let alice = request("GET", "/a", &[("x-gateway-identity", "alice")]);
    let bob = request("GET", "/a", &[("x-gateway-identity", "bob")]);
    assert!(plan(&unpartitioned, &alice).authorized);
    // The auth filter removed `Authorization`; its identity header marks the request.
    assert_eq!(
        serve(&unpartitioned, &store, &alice, &[], b"for anyone"),
        None
    );
    let tenant_only = request("GET", "/a", &[("x-gateway-tenant", "acme")]);
    assert_eq!(
        serve(&unpartitioned, &store, &tenant_only, &[], b"for anyone"),
        None
    );
    assert_eq!(
        serve(
            &unpartitioned,
            &store,
            &alice,
            &[("cache-control", "s-maxage=60")],
            b""
        ),
        None
    );
    assert!(store.is_empty());
    // Marked public by the upstream: shared.
    let public = [("cache-control", "public")];
    let key = serve(&unpartitioned, &store, &alice, &public, b"for anyone").unwrap();
    assert_eq!(unpartitioned.key(&bob, None), key);
    // Anonymous requests are stored as before.
    let anonymous = request("GET", "/b", &[]);
    assert!(serve(&unpartitioned, &store, &anonymous, &[], b"for anyone").is_some());

    // Partitioned by tenant: stored under a key of that tenant, which no other tenant reads.
    let by_tenant = cache("");
    let store = MemoryStore::default();
    let acme = request(
        "GET",
        "/v1/x",
        &[
            ("x-gateway-identity", "alice"),
            ("x-gateway-tenant", "acme"),
        ],
    );
    let other = request(
        "GET",
        "/v1/x",
        &[("x-gateway-identity", "bob"), ("x-gateway-tenant", "other")],
    );
    let key = serve(&by_tenant, &store, &acme, &[], b"for anyone").unwrap();
    assert_eq!(key, by_tenant.key(&acme, None));
    assert!(by_tenant.lookup(&store, &key, 1001).is_some());
    assert_eq!(
        by_tenant.lookup(&store, &by_tenant.key(&other, None), 1001),
        None
    );
    // A partition header that is absent separates no one.
    let no_tenant = request("GET", "/v1/y", &[("x-gateway-identity", "alice")]);
    assert!(!plan(&by_tenant, &no_tenant).partitioned);
    assert_eq!(
        serve(&by_tenant, &store, &no_tenant, &[], b"for anyone"),
        None
    );

    // Partitioned by identity: two identities never receive each other's entry.
    let by_identity = Cache::new(
        CacheConfig::from_json(
            br#"{"rules": [{"path_prefix": "/", "ttl_seconds": 60}],
                 "partition_headers": ["x-gateway-identity"]}"#,
        )
        .unwrap(),
    );
    let store = MemoryStore::default();
    let body_for = |request: &Request| {
        let key = by_identity.key(request, None);
        by_identity.lookup(&store, &key, 1001).map(|e| e.body)
    };
    serve(&by_identity, &store, &alice, &[], b"alice's").unwrap();
    assert_eq!(body_for(&bob), None);
    serve(&by_identity, &store, &bob, &[], b"bob's").unwrap();
    assert_eq!(body_for(&alice), Some(b"alice's".to_vec()));
    assert_eq!(body_for(&bob), Some(b"bob's".to_vec()));
    // A partition header that is not an identity header does not count.
    let by_accept = Cache::new(
        CacheConfig::from_json(
            br#"{"rules": [{"path_prefix": "/", "ttl_seconds": 60}],
                 "partition_headers": ["accept"], "identity_headers": ["x-user"]}"#,
        )
        .unwrap(),
    );
    let identified = request("GET", "/a", &[("x-user", "alice"), ("accept", "text/html")]);
    let use_ = plan(&by_accept, &identified);
    assert!(use_.authorized && !use_.partitioned);
    assert_eq!(by_accept.storable(&use_, 200, &[]), None);
}
