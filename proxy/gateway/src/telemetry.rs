//! Log output through `tracing`: JSON lines or pretty text, filtered by `logging.level`
//! (or `RUST_LOG`, which wins when set).

use crate::config::{LogFormat, LogOutput};
use tracing_subscriber::EnvFilter;

/// Installs the global subscriber. Logs go to stderr; access-log lines have target `access_log`.
pub fn init(settings: &LogOutput) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&settings.level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let result = match settings.format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Pretty => builder.try_init(),
    };
    if let Err(error) = result {
        eprintln!("logging was already set up: {error}");
    }
}
