//! What the proxy-wasm host and the sandbox both need around a wasmtime [`Engine`]: compiled
//! modules cached on disk ([`ModuleCache`]) and a thread that advances the engine's epoch
//! ([`EpochTicker`]), which turns epoch deadlines into wall-clock deadlines.
//!
//! [`Engine`]: wasmtime::Engine

mod epoch;
mod module_cache;

pub use epoch::{epoch_ticks, EpochTicker};
pub use module_cache::ModuleCache;
