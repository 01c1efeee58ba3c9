//! The gateway's authentication filter: API keys and JWTs, per-path scope rules.
//!
//! Decision logic lives in plain Rust and unit-tests natively with an injected clock:
//! [`config`], [`api_key`], [`keys`], [`jwt`], [`credentials`], [`jwks_cache`] and [`decision`].
//! `filter` is the thin proxy-wasm shell, compiled only for wasm.

pub mod api_key;
pub mod config;
pub mod credentials;
pub mod decision;
pub mod jwks_cache;
pub mod jwt;
pub mod keys;

#[cfg(target_arch = "wasm32")]
mod filter;
