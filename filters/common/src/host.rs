//! Host access shared by the filters' wasm shells: the clock, request headers, properties and
//! shared data, all acting on the current (effective) context.

use crate::{header_text, HeaderSnapshot, SharedStore};
use proxy_wasm::hostcalls;
use proxy_wasm::types::{MapType, Status};
use std::time::{Duration, UNIX_EPOCH};

/// The host's wall clock since the Unix epoch.
pub fn now() -> Duration {
    hostcalls::get_current_time()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .unwrap_or_default()
}

/// A request header of the current context. Read as bytes (the SDK's `String` accessor panics on
/// invalid UTF-8, which a client can send); invalid bytes become U+FFFD, see [`header_text`].
pub fn request_header(name: &str) -> Option<String> {
    hostcalls::get_map_value_bytes(MapType::HttpRequestHeaders, name)
        .ok()
        .flatten()
        .map(header_text)
}

/// A copy of the current context's request headers; call it while their phase runs.
pub fn request_headers() -> HeaderSnapshot {
    HeaderSnapshot::new(hostcalls::get_map_bytes(MapType::HttpRequestHeaders).unwrap_or_default())
}

/// A property such as `source.address`, as text.
pub fn property(path: &[&str]) -> Option<String> {
    let bytes = hostcalls::get_property(path.to_vec()).ok().flatten()?;
    String::from_utf8(bytes).ok()
}

/// The host's shared data (process-wide per `vm_id`, or cluster-wide with a Redis backend).
pub struct HostSharedData;

impl SharedStore for HostSharedData {
    fn get(&self, key: &str) -> (Option<Vec<u8>>, Option<u32>) {
        hostcalls::get_shared_data(key).unwrap_or((None, None))
    }

    fn set(&self, key: &str, value: &[u8], cas: u32) -> bool {
        let cas = (cas != 0).then_some(cas);
        match hostcalls::set_shared_data(key, Some(value), cas) {
            Ok(()) => true,
            Err(Status::CasMismatch) => false,
            Err(status) => {
                log::warn!("shared data refused a write: {status:?}");
                false
            }
        }
    }
}

/// A counter metric (`wasm_<name>` in our proxy, `wasmcustom.<name>` in Envoy). A host that refuses
/// to define it makes its increments no-ops: a metric never fails a request.
#[derive(Debug, Clone, Copy)]
pub struct Counter(Option<u32>);

impl Counter {
    /// Defines the counter `name`.
    pub fn define(name: &str) -> Self {
        Self(hostcalls::define_metric(proxy_wasm::types::MetricType::Counter, name).ok())
    }

    /// Adds `value`.
    pub fn add(self, value: u64) {
        if let (Some(id), Ok(value)) = (self.0, i64::try_from(value)) {
            if value > 0 {
                let _ = hostcalls::increment_metric(id, value);
            }
        }
    }
}
