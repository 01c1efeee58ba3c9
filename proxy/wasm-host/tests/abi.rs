//! The ABI surface, exercised by the `abi-probe` test filter through the public host API.

mod common;

use common::*;
use proxy_wasm_host::{
    CalloutResponse, Headers, Host, HostOptions, MemoryLimits, MemorySharedData, PeerCertificate,
    PluginSpec, StreamInfo, Verdict,
};
use std::sync::Arc;
use std::time::Duration;

fn spec(mode: &str) -> PluginSpec {
    let mut spec = PluginSpec::new("probe", mode.as_bytes().to_vec());
    spec.vm_configuration = b"vm-config-bytes".to_vec();
    spec
}

#[tokio::test]
async fn a_verified_client_certificate_is_the_source_principal() {
    let host = host();
    let plugin = load(&host, "abi_probe_filter", spec("headers")).await;
    let mut s = plugin.new_http_stream(StreamInfo {
        peer_certificate: Some(PeerCertificate {
            subject: "CN=svc-a,O=example".into(),
            uri_sans: vec!["spiffe://example/ns/default/sa/svc-a".into()],
            dns_sans: vec!["svc-a.default".into()],
        }),
        ..StreamInfo::default()
    });
    let mut headers = request("/");
    s.on_request_headers(&mut headers, true).await;
    assert_eq!(
        headers.get_str("x-prop-principal").unwrap(),
        "spiffe://example/ns/default/sa/svc-a",
        "the URI SAN, as Istio names peers"
    );
    assert_eq!(
        headers.get_str("x-prop-peer-subject").unwrap(),
        "CN=svc-a,O=example"
    );
}

#[tokio::test]
async fn headers_properties_bodies_trailers_and_metrics() {
    let host = host();
    let plugin = load(&host, "abi_probe_filter", spec("headers")).await;
    let mut s = stream(&plugin);

    let mut headers = request("/v1/x");
    headers.add("x-remove-me", b"secret");
    headers.add("X-Remove-Me", b"again");
    assert_eq!(
        s.on_request_headers(&mut headers, false).await,
        Verdict::Continue
    );
    assert_eq!(headers.get_str(":path").unwrap(), "/probed/v1/x");
    assert_eq!(headers.get_str("x-probe").unwrap(), "1");
    assert_eq!(headers.get("x-remove-me"), None);
    assert_eq!(headers.get_str("x-prop-method").unwrap(), "GET");
    assert_eq!(headers.get_str("x-prop-source").unwrap(), "127.0.0.7:5555");
    assert_eq!(headers.get_str("x-prop-plugin").unwrap(), "probe");
    assert_eq!(
        headers.get_str("x-prop-header").unwrap(),
        "secret,again",
        "read before removal"
    );
    assert_eq!(
        headers.get_str("x-prop-missing").unwrap(),
        "-",
        "unknown property is NOT_FOUND"
    );
    assert_eq!(headers.get_str("x-prop-principal").unwrap(), "-", "no mTLS");
    // 5 from the client + x-probe + 8 x-prop-*/x-context, after x-remove-me (2 values) went.
    assert_eq!(headers.get_str("x-pairs").unwrap(), "14");

    // The body is buffered until end of stream, then rewritten.
    let mut chunk = b"hello ".to_vec();
    assert_eq!(s.on_request_body(&mut chunk, false).await, Verdict::Buffer);
    assert!(chunk.is_empty());
    let mut chunk = b"world".to_vec();
    assert_eq!(s.on_request_body(&mut chunk, true).await, Verdict::Continue);
    assert_eq!(chunk, b"HELLO WORLD");

    let mut trailers = Headers::from_pairs([("x-checksum", "1")]);
    assert_eq!(
        s.on_request_trailers(&mut trailers).await,
        Verdict::Continue
    );
    assert_eq!(trailers.get_str("x-trailer-probe").unwrap(), "seen");

    let mut response = Headers::from_pairs([(":status", "201"), ("content-length", "4")]);
    assert_eq!(
        s.on_response_headers(&mut response, false).await,
        Verdict::Continue
    );
    assert_eq!(
        response.get_str("x-prop-roundtrip").unwrap(),
        "from-request",
        "set_property survives phases"
    );
    assert_eq!(response.get_str("x-prop-code").unwrap(), "201");
    assert_eq!(
        response.get_str("x-late-request-header").unwrap(),
        "2",
        "request headers are BAD_ARGUMENT once their phase continued, as in Envoy"
    );
    assert_eq!(response.get("content-length"), None);

    let mut body = b"done".to_vec();
    assert_eq!(s.on_response_body(&mut body, true).await, Verdict::Continue);
    assert_eq!(body, b"<done!", "prepend and append");
    s.finish().await;

    let metrics = host.metrics().render_prometheus();
    assert!(
        metrics.contains("wasm_probe_requests{plugin=\"probe\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("wasm_probe_body_bytes_bucket{plugin=\"probe\",le=\"25\"} 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn local_response_stops_the_request() {
    let host = host();
    let plugin = load(&host, "abi_probe_filter", spec("local-reply")).await;
    let mut s = stream(&plugin);
    let Verdict::Respond(response) = s.on_request_headers(&mut request("/"), true).await else {
        panic!("expected a local response")
    };
    assert_eq!(response.status, 418);
    assert_eq!(response.body, b"short and stout");
    assert_eq!(response.headers.get_str("x-local").unwrap(), "yes");

    // As Envoy does, the proxy sends a local reply through the response phases; the filter then
    // sees and edits it (tests/e2e/test_envoy_abi_parity.py checks the same result in Envoy).
    let mut headers = response.headers.clone();
    headers.add(":status", b"418");
    assert_eq!(
        s.on_response_headers(&mut headers, false).await,
        Verdict::Continue
    );
    assert_eq!(headers.get_str("x-prop-code").unwrap(), "418");
    let mut body = response.body;
    assert_eq!(s.on_response_body(&mut body, true).await, Verdict::Continue);
    assert_eq!(body, b"<short and stout!");
}

#[tokio::test]
async fn http_callout_pauses_and_resumes_the_request() {
    let host = host_with_callouts(FnDispatcher(
        |_cluster: &str, request: proxy_wasm_host::CalloutRequest| {
            let path = request.headers.get_str(":path").unwrap();
            let status = if path == "/allowed" { "200" } else { "401" };
            Some(CalloutResponse {
                headers: Headers::from_pairs([(":status", status)]),
                body: format!("verdict for {path}").into_bytes(),
                trailers: Headers::new(),
            })
        },
    ));
    let plugin = load(&host, "abi_probe_filter", spec("callout")).await;

    let mut allowed = stream(&plugin);
    let mut headers = request("/allowed");
    assert_eq!(
        allowed.on_request_headers(&mut headers, true).await,
        Verdict::Continue
    );
    assert_eq!(
        headers.get_str("x-callout").unwrap(),
        "verdict for /allowed"
    );

    let mut denied = stream(&plugin);
    let Verdict::Respond(response) = denied
        .on_request_headers(&mut request("/denied"), true)
        .await
    else {
        panic!("expected 403")
    };
    assert_eq!(response.status, 403);
    assert_eq!(response.headers.get_str("x-callout-status").unwrap(), "401");

    let mut unknown = stream(&plugin);
    let Verdict::Respond(response) = unknown
        .on_request_headers(&mut request("/unknown-cluster"), true)
        .await
    else {
        panic!("expected 500")
    };
    assert_eq!(
        response.headers.get_str("x-dispatch").unwrap(),
        "BadArgument"
    );
}

#[tokio::test]
async fn failed_callout_is_delivered_with_no_headers() {
    let host = host_with_callouts(FnDispatcher(|_: &str, _| None));
    let plugin = load(&host, "abi_probe_filter", spec("callout")).await;
    let mut s = stream(&plugin);
    let Verdict::Respond(response) = s.on_request_headers(&mut request("/x"), true).await else {
        panic!()
    };
    assert_eq!(response.status, 502);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_data_cas_queues_and_ticks_across_threads() {
    let store = Arc::new(MemorySharedData::new(MemoryLimits::default()));
    let host = Host::new(HostOptions {
        shared_data: store.clone(),
        ..HostOptions::default()
    })
    .unwrap();
    let plugin = load(&host, "abi_probe_filter", spec("shared")).await;
    // The key's first write has no CAS to compare against (cas 0 writes unconditionally, as in
    // Envoy), so two first writers could both store 1: one request creates it before the race.
    let mut first = stream(&plugin);
    let mut headers = request("/event/0");
    first.on_request_headers(&mut headers, true).await;
    first.finish().await;
    assert_eq!(headers.get_str("x-hits").as_deref(), Some("1"));
    // Requests from many tasks on two worker threads (so up to two VMs) all count into one key.
    let mut tasks = Vec::new();
    for i in 1..40 {
        let plugin = plugin.clone();
        tasks.push(tokio::spawn(async move {
            let mut s = stream(&plugin);
            let mut headers = request(&format!("/event/{i}"));
            assert_eq!(
                s.on_request_headers(&mut headers, true).await,
                Verdict::Continue
            );
            s.finish().await;
            headers.get_str("x-hits").unwrap().parse::<u64>().unwrap()
        }));
    }
    let mut hits = vec![1];
    for task in tasks {
        hits.push(task.await.unwrap());
    }
    hits.sort_unstable();
    assert_eq!(
        hits,
        (1..=40).collect::<Vec<_>>(),
        "CAS gives each request a distinct count"
    );

    // The queue consumer (on_queue_ready) and the tick timer run in the background.
    let read = |key: &'static str| {
        let store = store.clone();
        async move {
            store
                .get_now("probe", key.as_bytes())
                .map(|v| String::from_utf8(v.value).unwrap())
        }
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while read("dequeued").await.as_deref() != Some("40") && tokio::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        read("dequeued").await.as_deref(),
        Some("40"),
        "every enqueued item is dequeued once"
    );
    assert!(read("last-event").await.unwrap().starts_with("/event/"));
    tokio::time::sleep(Duration::from_millis(200)).await;
    let ticks: u64 = read("ticks").await.unwrap().parse().unwrap();
    assert!(ticks >= 3, "on_tick runs every 20 ms; saw {ticks}");
}
