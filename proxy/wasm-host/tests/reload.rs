//! Reloading: a proxy that reloads its configuration loads every filter again and drops the old
//! plugins. Their VMs must go back to the pool, or a long-lived proxy runs out after a few hundred
//! reloads.

mod common;

use common::*;
use proxy_wasm_host::{FailurePolicy, PluginSpec, Verdict};

#[tokio::test]
async fn dropped_plugins_release_their_vms_across_many_reloads() {
    let host = host();
    let spec = || {
        let mut spec = PluginSpec::new("misbehaving", Vec::new());
        spec.failure_policy = FailurePolicy::FailClosed;
        spec
    };
    // As in a proxy, each new plugin loads beside the one serving, which is then dropped. More
    // loads than the host has VM slots (256): each load starts a VM on this thread.
    let mut serving = load(&host, "misbehaving_filter", spec()).await;
    for round in 0..300 {
        let mut stream = stream(&serving);
        let verdict = stream.on_request_headers(&mut request("/ok"), true).await;
        stream.finish().await;
        assert_eq!(verdict, Verdict::Continue, "round {round}");
        serving = load(&host, "misbehaving_filter", spec()).await;
    }
}

#[tokio::test]
async fn a_module_is_compiled_once_while_plugins_use_it() {
    let host = host();
    let spec = || PluginSpec::new("misbehaving", Vec::new());
    let first = load(&host, "misbehaving_filter", spec()).await;
    let second = load(&host, "misbehaving_filter", spec()).await;
    assert_eq!(
        host.modules_in_use(),
        1,
        "the second load reused the module"
    );
    let other = load(
        &host,
        "abi_probe_filter",
        PluginSpec::new("probe", "headers"),
    )
    .await;
    assert_eq!(host.modules_in_use(), 2);
    drop((first, second));
    assert_eq!(
        host.modules_in_use(),
        1,
        "a module leaves with its last plugin"
    );
    drop(other);
    assert_eq!(host.modules_in_use(), 0);
}
