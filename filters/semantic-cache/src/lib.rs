//! A semantic cache for OpenAI-style chat completions, as a proxy-wasm filter that runs unchanged
//! in Envoy and in our proxy. A question asked before (exactly, or in other words above a
//! configured similarity) is answered from cache, as JSON or replayed as server-sent events.
//!
//! The cache is partitioned structurally: the verified caller, the route, the model, the system
//! prompt and the generation parameters make a partition digest that is part of every key and the
//! filter of every similarity search, never part of the embedded text. Answers live in shared
//! data; a vector service (python-ml's `/v1/semantic-cache/lookup`, over `http_call`) maps a
//! question to the keys of similar ones.
//!
//! The logic is plain Rust (`config`, `request`, `answer`, `entry`, `index`), unit-tested
//! natively; `filter` is the thin wasm shell. Guide: `docs/filters/semantic-cache.md`.

pub mod answer;
pub mod config;
pub mod entry;
#[cfg(target_arch = "wasm32")]
mod filter;
pub mod index;
pub mod request;
