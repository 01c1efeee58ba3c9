//! The auth filter in this host gives the same results as in Envoy (tests/e2e/test_envoy_auth.py).

mod common;

use common::*;
use proxy_wasm_host::{LoadError, PluginSpec, Verdict};

const CONFIG: &str = r#"{"identity_header": "x-gateway-identity",
  "api_key": {"header": "x-api-key", "query_parameter": "api_key",
              "keys": [{"identity": "alice", "key": "alice-key-1"}, {"identity": "bob", "key": "bob-key-2"}]}}"#;

async fn auth() -> (proxy_wasm_host::Host, proxy_wasm_host::Plugin) {
    let host = host();
    let plugin = load(&host, "auth_filter", PluginSpec::new("auth", CONFIG)).await;
    (host, plugin)
}

fn assert_401(verdict: Verdict, code: &str) {
    let Verdict::Respond(response) = verdict else {
        panic!("expected 401, got {verdict:?}")
    };
    assert_eq!(response.status, 401);
    assert_eq!(
        response.headers.get_str("content-type").unwrap(),
        "application/json"
    );
    assert_eq!(
        response.headers.get_str("www-authenticate").unwrap(),
        "ApiKey realm=\"gateway\""
    );
    let body: serde_json::Value = serde_json::from_slice(&response.body).unwrap();
    assert_eq!(body["error"]["code"], code);
    assert_eq!(body["error"]["request_id"], "req-1");
}

#[tokio::test]
async fn valid_key_forwards_identity_and_hides_the_key() {
    let (_host, plugin) = auth().await;
    let mut s = stream(&plugin);
    let mut headers = request("/v1/echo");
    headers.add("x-api-key", b"alice-key-1");
    assert_eq!(
        s.on_request_headers(&mut headers, true).await,
        Verdict::Continue
    );
    assert_eq!(headers.get_str("x-gateway-identity").unwrap(), "alice");
    assert_eq!(headers.get("x-api-key"), None);
}

#[tokio::test]
async fn key_in_query_parameter_is_removed_from_the_path() {
    let (_host, plugin) = auth().await;
    let mut s = stream(&plugin);
    let mut headers = request("/v1/echo?a=1&api_key=bob-key-2");
    assert_eq!(
        s.on_request_headers(&mut headers, true).await,
        Verdict::Continue
    );
    assert_eq!(headers.get_str("x-gateway-identity").unwrap(), "bob");
    assert_eq!(headers.get_str(":path").unwrap(), "/v1/echo?a=1");
}

#[tokio::test]
async fn missing_and_wrong_keys_get_401() {
    let (_host, plugin) = auth().await;
    assert_401(
        stream(&plugin)
            .on_request_headers(&mut request("/"), true)
            .await,
        "missing_api_key",
    );
    let mut headers = request("/");
    headers.add("x-api-key", b"not-a-key");
    assert_401(
        stream(&plugin).on_request_headers(&mut headers, true).await,
        "invalid_api_key",
    );
}

#[tokio::test]
async fn forged_identity_is_replaced() {
    let (_host, plugin) = auth().await;
    let mut headers = request("/");
    headers.add("x-api-key", b"bob-key-2");
    headers.add("x-gateway-identity", b"admin");
    headers.add("X-Gateway-Identity", b"root");
    assert_eq!(
        stream(&plugin).on_request_headers(&mut headers, true).await,
        Verdict::Continue
    );
    assert_eq!(headers.get_str("x-gateway-identity").unwrap(), "bob");
}

#[tokio::test]
async fn invalid_configuration_is_refused_with_the_field_named() {
    let host = host();
    let error = host
        .load_plugin(
            &wasm("auth_filter"),
            PluginSpec::new("auth", r#"{"api_key": {"keys": [{"identity": "x"}]}}"#),
        )
        .await
        .err()
        .expect("refused");
    assert!(matches!(error, LoadError::Refused(_)));
    assert!(
        error
            .to_string()
            .contains("api_key.keys[0]: give exactly one of \"key\" or \"sha256\""),
        "{error}"
    );
}
