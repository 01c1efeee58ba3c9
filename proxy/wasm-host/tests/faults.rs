//! Fault isolation and limits, with the `misbehaving` test filter: traps, endless loops, memory
//! exhaustion and bad pointers never take the host down, and each failure policy does what it says.

mod common;

use common::*;
use proxy_wasm_host::{FailurePolicy, LoadError, Plugin, PluginSpec, Verdict, VmLimits};
use std::time::{Duration, Instant};

fn spec(policy: FailurePolicy) -> PluginSpec {
    let mut spec = PluginSpec::new("misbehaving", Vec::new());
    spec.failure_policy = policy;
    spec.limits = VmLimits {
        max_memory_bytes: 16 << 20,
        callback_deadline: Duration::from_millis(100),
        ..VmLimits::default()
    };
    spec
}

async fn send(plugin: &Plugin, path: &str) -> (Verdict, Option<String>) {
    let mut s = stream(plugin).await;
    let mut headers = request(path);
    let verdict = s.on_request_headers(&mut headers, true).await;
    s.finish().await;
    (verdict, headers.get_str("x-vm-id"))
}

fn assert_503(verdict: &Verdict) {
    let Verdict::Respond(response) = verdict else {
        panic!("expected 503, got {verdict:?}")
    };
    assert_eq!(response.status, 503);
    let body: serde_json::Value = serde_json::from_slice(&response.body).unwrap();
    assert_eq!(body["error"]["code"], "filter_failed");
    assert_eq!(body["error"]["request_id"], "req-1");
}

#[tokio::test]
async fn fail_closed_rejects_every_request_after_a_trap() {
    let host = host();
    let plugin = load(&host, "misbehaving_filter", spec(FailurePolicy::FailClosed)).await;
    assert!(matches!(
        send(&plugin, "/ok").await,
        (Verdict::Continue, Some(_))
    ));
    assert_503(&send(&plugin, "/panic").await.0);
    assert_503(&send(&plugin, "/ok").await.0);
    let metrics = host.metrics().render_prometheus();
    assert!(
        metrics.contains("wasm_filter_traps_total{plugin=\"misbehaving\"} 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn fail_open_skips_the_broken_filter() {
    let host = host();
    let plugin = load(&host, "misbehaving_filter", spec(FailurePolicy::FailOpen)).await;
    assert_eq!(send(&plugin, "/panic").await, (Verdict::Continue, None));
    assert_eq!(
        send(&plugin, "/ok").await,
        (Verdict::Continue, None),
        "skipped: no header from the filter"
    );
}

#[tokio::test]
async fn reload_recreates_the_vm_for_the_next_request() {
    let host = host();
    let plugin = load(&host, "misbehaving_filter", spec(FailurePolicy::Reload)).await;
    let (_, first_vm) = send(&plugin, "/ok").await;
    assert_503(&send(&plugin, "/panic").await.0);
    let (verdict, second_vm) = send(&plugin, "/ok").await;
    assert_eq!(verdict, Verdict::Continue);
    assert!(
        second_vm.is_some() && second_vm != first_vm,
        "a fresh VM served the request"
    );
}

#[tokio::test]
async fn endless_loop_is_cut_off_and_the_next_request_is_served() {
    let host = host();
    let plugin = load(&host, "misbehaving_filter", spec(FailurePolicy::Reload)).await;
    let started = Instant::now();
    assert_503(&send(&plugin, "/loop").await.0);
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(5),
        "cut off by the 100 ms deadline, took {took:?}"
    );
    assert!(matches!(
        send(&plugin, "/ok").await,
        (Verdict::Continue, Some(_))
    ));
}

#[tokio::test]
async fn memory_cap_traps_instead_of_growing() {
    let host = host();
    let plugin = load(&host, "misbehaving_filter", spec(FailurePolicy::Reload)).await;
    assert_503(&send(&plugin, "/oom").await.0);
    assert!(matches!(
        send(&plugin, "/ok").await,
        (Verdict::Continue, Some(_))
    ));
}

#[tokio::test]
async fn bad_guest_pointers_get_invalid_memory_access() {
    let host = host();
    let plugin = load(&host, "misbehaving_filter", spec(FailurePolicy::FailClosed)).await;
    let mut s = stream(&plugin).await;
    let mut headers = request("/bad-pointers");
    assert_eq!(
        s.on_request_headers(&mut headers, true).await,
        Verdict::Continue
    );
    assert_eq!(headers.get_str("x-log-status").unwrap(), "6");
    assert_eq!(headers.get_str("x-get-status").unwrap(), "6");
}

#[tokio::test]
async fn refused_configuration_fails_the_load_with_the_filters_reason() {
    let host = host();
    let error = host
        .load_plugin(
            &wasm("misbehaving_filter"),
            PluginSpec::new("misbehaving", b"refuse".to_vec()),
        )
        .await
        .err()
        .expect("load must fail");
    assert!(matches!(error, LoadError::Refused(_)));
    assert!(
        error
            .to_string()
            .contains("misbehaving: refusing configuration on purpose"),
        "{error}"
    );
}

#[tokio::test]
async fn non_proxy_wasm_modules_are_refused() {
    let host = host();
    let error = host
        .load_plugin(b"not wasm", PluginSpec::new("x", Vec::new()))
        .await
        .err()
        .unwrap();
    assert!(matches!(error, LoadError::Compile(_)), "{error}");
    // A valid module without the ABI marker.
    let empty_module = [0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00];
    let error = host
        .load_plugin(&empty_module, PluginSpec::new("x", Vec::new()))
        .await
        .err()
        .unwrap();
    assert!(matches!(error, LoadError::Abi(_)), "{error}");
}
