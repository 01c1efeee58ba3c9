//! A Pingora reverse proxy that runs proxy-wasm filter chains on the `proxy-wasm-host` crate's
//! host.
//!
//! Layout: `config` (the YAML file and its checks) → `state` (compiled routes, clusters and
//! loaded filter chains) → `proxy` (Pingora's phases: routing, filters, upstream, errors) →
//! `server` (listeners, admin, health checks). The binary in `src/bin/proxy.rs` is a thin CLI.

pub mod admin;
pub mod callouts;
pub mod client_headers;
pub mod cluster;
pub mod config;
pub mod connection_limit;
pub mod filter_chain;
pub mod forwarding;
pub mod grpc;
pub mod grpc_callouts;
pub mod header_maps;
pub mod health;
pub mod lifecycle;
pub mod metrics;
mod offload;
pub mod path_normalization;
pub mod peer_identity;
pub mod private_dir;
pub mod proxy;
pub mod reload;
mod request_context;
pub mod responses;
pub mod routing;
pub mod server;
pub mod shared_data;
pub mod state;
pub mod status_page;
pub mod telemetry;
pub mod upstream_tls;
