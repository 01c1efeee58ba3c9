//! Token budgets for OpenAI-style chat completions, as a proxy-wasm filter that runs unchanged in
//! Envoy and in our proxy. Before a request goes upstream its cost is estimated (prompt plus the
//! answer it may use) and reserved in every budget that applies; the answer's reported `usage`
//! settles the reservation (the unused part is refunded, a failed upstream refunds it all).
//!
//! The logic is plain Rust (`config`, `budget`, `chat`), unit-tested natively with injected time;
//! `filter` is the thin wasm shell. Guide: `docs/filters/ai-tokens.md`.

pub mod budget;
pub mod chat;
pub mod config;
#[cfg(target_arch = "wasm32")]
mod filter;
pub mod usage_metrics;
