//! Reloading: a proxy that reloads its configuration loads every filter again and drops the old
//! plugins. Their VMs must go back to the pool, or a long-lived proxy runs out after a few hundred
//! reloads.

mod common;

use common::*;
use proxy_wasm_host::{FailurePolicy, PluginSpec, Verdict};

#[tokio::test]
async fn dropped_plugins_release_their_vms_across_many_reloads() {
    let host = host();
    // More loads than the host has VM slots (256): each load starts a VM on this thread.
    for round in 0..300 {
        let mut spec = PluginSpec::new("misbehaving", Vec::new());
        spec.failure_policy = FailurePolicy::FailClosed;
        let plugin = load(&host, "misbehaving_filter", spec).await;
        let mut stream = stream(&plugin).await;
        let verdict = stream.on_request_headers(&mut request("/ok"), true).await;
        stream.finish().await;
        assert_eq!(verdict, Verdict::Continue, "round {round}");
    }
}
