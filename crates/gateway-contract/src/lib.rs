//! The gateway's contract with its clients and with the services behind it, in one leaf crate
//! that the filters (compiled to wasm), the proxy-wasm host, the proxy and sandbox-host share:
//! the JSON error body, the request id, and the header names the gateway reserves. python-ml
//! mirrors it in `python_ml/errors.py` and `python_ml/trust.py`. It also holds the one shape of a
//! refused configuration, which the proxy's file and the filters' plugin configurations share.

mod config_error;
mod error_body;
pub mod headers;
mod request_id;

pub use config_error::ConfigError;
pub use error_body::error_body;
pub use request_id::{usable_request_id, MAX_REQUEST_ID_BYTES};
