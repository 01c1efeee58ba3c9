//! Fault isolation and limits, with the `misbehaving` test filter: traps, endless loops, memory
//! exhaustion and bad pointers never take the host down, and each failure policy does what it says.

mod common;

use common::*;
use proxy_wasm_host::abi::Status;
use proxy_wasm_host::bounds::MAX_CALLOUTS_IN_FLIGHT;
use proxy_wasm_host::{
    BoxFuture, FailurePolicy, Host, HostOptions, LoadError, MemoryLimits, MemorySharedData, Plugin,
    PluginSpec, SharedDataBackend, SharedValue, Unavailable, Verdict, VmLimits,
};
use std::sync::Arc;
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
    let mut s = stream(plugin);
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
async fn fail_closed_refuses_the_failing_request_and_a_fresh_vm_serves_the_next() {
    let host = host();
    let plugin = load(&host, "misbehaving_filter", spec(FailurePolicy::FailClosed)).await;
    let (verdict, first_vm) = send(&plugin, "/ok").await;
    assert_eq!(verdict, Verdict::Continue);
    assert_503(&send(&plugin, "/panic").await.0);
    let (verdict, second_vm) = send(&plugin, "/ok").await;
    assert_eq!(verdict, Verdict::Continue);
    assert!(
        second_vm.is_some() && second_vm != first_vm,
        "a fresh VM served the request"
    );
    let metrics = host.metrics().render_prometheus();
    for counter in ["filter_traps_total", "filter_vm_restarts_total"] {
        assert!(
            metrics.contains(&format!("wasm_{counter}{{plugin=\"misbehaving\"}} 1")),
            "{metrics}"
        );
    }
}

#[tokio::test]
async fn fail_open_lets_the_failing_request_through_and_the_filter_runs_again() {
    let host = host();
    let plugin = load(&host, "misbehaving_filter", spec(FailurePolicy::FailOpen)).await;
    assert_eq!(send(&plugin, "/panic").await, (Verdict::Continue, None));
    assert!(
        matches!(send(&plugin, "/ok").await, (Verdict::Continue, Some(_))),
        "the filter ran on a fresh VM"
    );
}

/// Two worker threads, each with its own runtime and VM as in the gateway, each running four
/// concurrent clients that alternate traps and valid requests.
#[test]
fn hundreds_of_traps_under_concurrent_load_cost_only_the_trapping_requests() {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let host = host();
    let plugin = runtime.block_on(load(
        &host,
        "misbehaving_filter",
        spec(FailurePolicy::FailClosed),
    ));
    let workers: Vec<_> = (0..2)
        .map(|_| {
            let plugin = plugin.clone();
            std::thread::spawn(move || {
                let worker = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("worker runtime");
                let clients = (0..4).map(|client| client_rounds(plugin.clone(), client));
                worker
                    .block_on(futures_join_all(clients))
                    .into_iter()
                    .sum::<usize>()
            })
        })
        .collect();
    let served: usize = workers.into_iter().map(|w| w.join().expect("worker")).sum();
    assert_eq!(served, 240, "every valid request was served by the filter");
    let metrics = host.metrics().render_prometheus();
    assert!(
        metrics.contains("wasm_filter_traps_total{plugin=\"misbehaving\"} 240"),
        "{metrics}"
    );
}

/// 60 requests, every other one a trap; returns how many valid ones the filter served.
async fn client_rounds(plugin: Plugin, client: usize) -> usize {
    let mut served = 0;
    for round in 0..60 {
        if (client + round).is_multiple_of(2) {
            assert_503(&send(&plugin, "/panic").await.0);
        } else {
            let (verdict, vm) = send(&plugin, "/ok").await;
            assert_eq!(verdict, Verdict::Continue, "client {client} round {round}");
            assert!(vm.is_some(), "the filter ran");
            served += 1;
        }
        tokio::task::yield_now().await;
    }
    served
}

/// Runs the futures concurrently on the current task and collects their outputs in order.
async fn futures_join_all<F>(futures: impl Iterator<Item = F>) -> Vec<F::Output>
where
    F: std::future::Future + 'static,
    F::Output: 'static,
{
    let local = tokio::task::LocalSet::new();
    let handles: Vec<_> = futures.map(|f| local.spawn_local(f)).collect();
    local.await;
    let mut outputs = Vec::new();
    for handle in handles {
        outputs.push(handle.await.expect("client"));
    }
    outputs
}

#[tokio::test]
async fn endless_loop_is_cut_off_and_the_next_request_is_served() {
    let host = host();
    let plugin = load(&host, "misbehaving_filter", spec(FailurePolicy::FailClosed)).await;
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
    let plugin = load(&host, "misbehaving_filter", spec(FailurePolicy::FailClosed)).await;
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
    let mut s = stream(&plugin);
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

/// Shared data that answers after `delay`, as a remote store on a slow day.
struct SlowSharedData {
    memory: MemorySharedData,
    delay: Duration,
}

impl SharedDataBackend for SlowSharedData {
    fn get<'a>(
        &'a self,
        vm_id: &'a str,
        key: &'a [u8],
    ) -> BoxFuture<'a, Result<Option<SharedValue>, Unavailable>> {
        Box::pin(async move {
            tokio::time::sleep(self.delay).await;
            self.memory.get(vm_id, key).await
        })
    }

    fn set<'a>(
        &'a self,
        vm_id: &'a str,
        key: &'a [u8],
        value: &'a [u8],
        cas: u32,
    ) -> BoxFuture<'a, Result<Status, Unavailable>> {
        Box::pin(async move {
            tokio::time::sleep(self.delay).await;
            self.memory.set(vm_id, key, value, cas).await
        })
    }
}

#[tokio::test]
async fn time_waiting_on_shared_data_does_not_count_against_the_callback_deadline() {
    let host = Host::new(HostOptions {
        shared_data: Arc::new(SlowSharedData {
            memory: MemorySharedData::new(MemoryLimits::default()),
            delay: Duration::from_millis(150),
        }),
        ..HostOptions::default()
    })
    .expect("host");
    let mut spec = PluginSpec::new("probe", b"shared".to_vec());
    spec.limits.callback_deadline = Duration::from_millis(100);
    let plugin = load(&host, "abi_probe_filter", spec).await;
    for hits in 1..=2 {
        let mut s = stream(&plugin);
        let mut headers = request("/count");
        // A read and a compare-and-swap write: 300 ms waiting, well under 100 ms of CPU.
        assert_eq!(
            s.on_request_headers(&mut headers, true).await,
            Verdict::Continue
        );
        assert_eq!(headers.get_str("x-hits"), Some(hits.to_string()));
        s.finish().await;
    }
    assert!(!host
        .metrics()
        .render_prometheus()
        .contains("wasm_filter_traps_total"));
}

/// Shared data whose first `parties` reads each wait until all of them have arrived: they finish
/// only if that many callbacks can wait at once.
struct RendezvousSharedData {
    memory: MemorySharedData,
    parties: usize,
    arrived: std::sync::atomic::AtomicUsize,
    barrier: tokio::sync::Barrier,
}

impl SharedDataBackend for RendezvousSharedData {
    fn get<'a>(
        &'a self,
        vm_id: &'a str,
        key: &'a [u8],
    ) -> BoxFuture<'a, Result<Option<SharedValue>, Unavailable>> {
        Box::pin(async move {
            let arrival = self
                .arrived
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            if arrival < self.parties {
                self.barrier.wait().await;
            }
            self.memory.get(vm_id, key).await
        })
    }

    fn set<'a>(
        &'a self,
        vm_id: &'a str,
        key: &'a [u8],
        value: &'a [u8],
        cas: u32,
    ) -> BoxFuture<'a, Result<Status, Unavailable>> {
        self.memory.set(vm_id, key, value, cas)
    }
}

#[tokio::test]
async fn requests_waiting_on_shared_data_wait_together_on_several_vms() {
    // One VM per thread would hold the first request's wait and keep the others out of the
    // filter, so the three reads would never meet.
    let parties = 3;
    let host = Host::new(HostOptions {
        shared_data: Arc::new(RendezvousSharedData {
            memory: MemorySharedData::new(MemoryLimits::default()),
            parties,
            arrived: Default::default(),
            barrier: tokio::sync::Barrier::new(parties),
        }),
        ..HostOptions::default()
    })
    .expect("host");
    let plugin = load(
        &host,
        "abi_probe_filter",
        PluginSpec::new("probe", b"shared".to_vec()),
    )
    .await;
    let requests = (0..parties).map(|_| {
        let plugin = plugin.clone();
        async move {
            let mut s = stream(&plugin);
            let verdict = s.on_request_headers(&mut request("/count"), true).await;
            s.finish().await;
            verdict
        }
    });
    let verdicts = tokio::time::timeout(Duration::from_secs(20), futures_join_all(requests))
        .await
        .expect("the waits overlapped");
    assert!(
        verdicts.iter().all(|v| *v == Verdict::Continue),
        "{verdicts:?}"
    );
}

#[tokio::test]
async fn a_filter_asking_the_host_to_hold_past_its_bounds_traps_and_the_next_request_is_served() {
    let host = host();
    let mut spec = spec(FailurePolicy::FailClosed);
    spec.limits.max_memory_bytes = 64 << 20;
    let plugin = load(&host, "misbehaving_filter", spec).await;
    for path in [
        "/grow-body",
        "/grow-headers",
        "/big-property",
        "/many-properties",
        "/queue-flood",
    ] {
        assert_503(&send(&plugin, path).await.0);
        assert!(
            matches!(send(&plugin, "/ok").await, (Verdict::Continue, Some(_))),
            "{path}: the next request runs on a fresh VM"
        );
    }
}

#[tokio::test]
async fn callouts_past_their_size_or_number_in_flight_are_refused() {
    let host = host_with_callouts(FnDispatcher(|_: &str, _| None));
    let plugin = load(&host, "misbehaving_filter", spec(FailurePolicy::FailClosed)).await;
    let accepted = |verdict: Verdict| match verdict {
        Verdict::Respond(response) => response.headers.get_str("x-callouts-accepted"),
        other => panic!("expected the filter's answer, got {other:?}"),
    };
    assert_eq!(
        accepted(send(&plugin, "/big-callout").await.0).as_deref(),
        Some("0")
    );
    assert_eq!(
        accepted(send(&plugin, "/callout-flood").await.0).as_deref(),
        Some(MAX_CALLOUTS_IN_FLIGHT.to_string().as_str())
    );
    assert!(matches!(
        send(&plugin, "/ok").await,
        (Verdict::Continue, Some(_))
    ));
}

#[tokio::test]
async fn a_body_past_what_a_filter_may_buffer_is_refused_with_413() {
    let host = host();
    let plugin = load(
        &host,
        "abi_probe_filter",
        PluginSpec::new("probe", b"buffer".to_vec()),
    )
    .await;
    let mut s = stream(&plugin);
    let mut headers = request("/upload");
    s.on_request_headers(&mut headers, false).await;
    let mut verdict = Verdict::Buffer;
    for _ in 0..20 {
        let mut chunk = vec![b'b'; 1 << 20];
        verdict = s.on_request_body(&mut chunk, false).await;
        if verdict != Verdict::Buffer {
            break;
        }
    }
    let Verdict::Respond(response) = verdict else {
        panic!("expected a 413, got {verdict:?}")
    };
    assert_eq!(response.status, 413);
    let body: serde_json::Value = serde_json::from_slice(&response.body).unwrap();
    assert_eq!(body["error"]["code"], "filter_buffer_exceeded");
    s.finish().await;
}
