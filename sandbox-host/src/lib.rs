//! sandbox-host: runs untrusted, LLM-generated Python, JavaScript and WebAssembly on wasmtime with
//! strict limits, behind the gateway. Guide: `docs/sandbox.md`; security model: `docs/sandbox-security.md`.

pub mod access_log;
pub mod admission;
pub mod api;
pub mod capabilities;
pub mod config;
pub mod guest_wait;
pub mod limits;
pub mod metrics;
pub mod module_shape;
pub mod output;
pub mod prestart;
pub mod runtimes;
pub mod sandbox;
pub mod scratch_quota;
pub mod server;
pub mod session;
pub mod session_api;
pub mod session_table;
pub mod snapshot;
pub mod turn;

pub use config::Settings;
pub use sandbox::{Outcome, Program, Report, Sandbox};
pub use server::Service;
