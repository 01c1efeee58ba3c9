//! A proxy-wasm (ABI v0.2.1 and v0.2.0) host on wasmtime, independent of any proxy.
//!
//! Embedding, in short: create one [`Host`]; [`Host::load_plugin`] compiles a filter and checks that
//! it accepts its configuration; per request, [`Plugin::new_http_stream`] gives an [`HttpStream`]
//! whose phase methods return a [`Verdict`]. Each worker thread gets its own VM per plugin (as in
//! Envoy), so the request path takes no global lock; shared data, queues and metrics are
//! process-wide. See `docs/proxy-wasm-host.md` for the supported ABI surface.
//!
//! Layout: guest memory access is in `memory`, host functions in `hostcalls` (one module per ABI
//! area), guest callbacks in `vm`, and the request driver in `stream`.

pub mod abi;
pub mod bounds;
mod call_mode;
pub mod callout;
mod engine;
mod epoch;
mod grpc_call;
pub mod headers;
mod hostcalls;
mod memory;
pub mod metrics;
mod plugin;
pub mod queues;
mod services;
pub mod shared_data;
mod state;
mod stream;
mod types;
mod vm;
mod vm_lock;

pub use callout::{
    CalloutDispatcher, CalloutRequest, CalloutResponse, GrpcCallout, GrpcChannels, GrpcEvent,
    GrpcMethodPath, GrpcOutgoing, GrpcStatus, NoClusters,
};
pub use engine::{Host, HostOptions};
pub use epoch::EPOCH_TICK;
pub use headers::Headers;
pub use memory::{decode_map, encode_map};
pub use plugin::Plugin;
pub use shared_data::{
    BoxFuture, MemoryLimits, MemorySharedData, SharedDataBackend, SharedValue, Unavailable,
};
pub use stream::HttpStream;
pub use types::{
    FailurePolicy, LoadError, LocalResponse, PeerCertificate, PluginSpec, StreamInfo, Verdict,
    VmLimits, TRAPS_METRIC, VM_RESTARTS_METRIC,
};
