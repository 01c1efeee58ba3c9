//! The gateway's authentication filter.
//!
//! Decision logic lives in plain Rust ([`config`], [`api_key`], [`decision`]) and unit-tests natively;
//! `filter` is the thin proxy-wasm shell compiled only for wasm.

pub mod api_key;
pub mod config;
pub mod decision;

#[cfg(target_arch = "wasm32")]
mod filter;
