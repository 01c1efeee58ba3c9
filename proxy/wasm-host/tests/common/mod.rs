//! Helpers for driving filters through the host API.

#![allow(dead_code)] // each test binary uses a different subset

use proxy_wasm_host::{
    CalloutDispatcher, CalloutRequest, CalloutResponse, Headers, Host, HostOptions, HttpStream,
    Plugin, PluginSpec, StreamInfo,
};
use std::path::PathBuf;
use std::sync::Arc;

/// The bytes of a filter built by `make filters`; panics with the fix when missing.
pub fn wasm(name: &str) -> Vec<u8> {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target"));
    let path = target
        .join("wasm32-wasip1/release")
        .join(format!("{name}.wasm"));
    std::fs::read(&path)
        .unwrap_or_else(|e| panic!("{}: {e}; run `make filters` first", path.display()))
}

/// A host with default options.
pub fn host() -> Host {
    Host::new(HostOptions::default()).expect("host")
}

/// A host whose callouts go to `dispatcher`.
pub fn host_with_callouts(dispatcher: impl CalloutDispatcher + 'static) -> Host {
    Host::new(HostOptions {
        callouts: Arc::new(dispatcher),
        ..HostOptions::default()
    })
    .expect("host")
}

/// Loads `filter` with `config`, panicking on failure.
pub async fn load(host: &Host, filter: &str, spec: PluginSpec) -> Plugin {
    host.load_plugin(&wasm(filter), spec)
        .await
        .unwrap_or_else(|e| panic!("load {filter}: {e}"))
}

/// Request headers for `GET path`.
pub fn request(path: &str) -> Headers {
    Headers::from_pairs([
        (":method", "GET"),
        (":path", path),
        (":authority", "example.test"),
        (":scheme", "http"),
        ("x-request-id", "req-1"),
    ])
}

/// A stream with a client address.
pub fn stream(plugin: &Plugin) -> HttpStream {
    plugin.new_http_stream(StreamInfo {
        source: Some("127.0.0.7:5555".parse().unwrap()),
        protocol: "HTTP/1.1".into(),
        ..StreamInfo::default()
    })
}

/// A callout transport answering every request from a closure.
pub struct FnDispatcher<F>(pub F);

impl<F> CalloutDispatcher for FnDispatcher<F>
where
    F: Fn(&str, CalloutRequest) -> Option<CalloutResponse> + Send + Sync + 'static,
{
    fn has_cluster(&self, cluster: &str) -> bool {
        cluster == "authz"
    }

    fn call(
        &self,
        cluster: &str,
        request: CalloutRequest,
    ) -> std::pin::Pin<
        Box<dyn std::future::Future<Output = Option<CalloutResponse>> + Send + 'static>,
    > {
        let response = (self.0)(cluster, request);
        Box::pin(async move {
            // Answer asynchronously, as a real upstream would.
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            response
        })
    }
}
