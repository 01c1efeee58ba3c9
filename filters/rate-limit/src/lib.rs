//! The gateway's rate-limit filter: token buckets per key, shared by every worker (and, with a
//! shared-data backend such as Redis, every proxy) through compare-and-swap on shared data.
//!
//! [`config`], [`bucket`] and [`limiter`] are plain Rust, unit-tested natively with injected time;
//! `filter` is the thin proxy-wasm shell compiled only for wasm.

pub mod bucket;
pub mod config;
pub mod limiter;

#[cfg(target_arch = "wasm32")]
mod filter;
