//! The gateway's response cache filter: GET and HEAD, and POST to configured routes (keyed by a
//! digest of the body), stored in proxy-wasm shared data so every worker (and, with a Redis
//! backend, every proxy) shares entries.
//!
//! [`config`], [`cache_control`], [`entry`] and [`cache`] are plain Rust, unit-tested natively
//! with injected time; `filter` is the thin proxy-wasm shell compiled only for wasm.

pub mod cache;
pub mod cache_control;
pub mod config;
pub mod entry;

#[cfg(target_arch = "wasm32")]
mod filter;
