//! `proxy run <file>` serves a configuration; `proxy validate <file>` checks one without serving.

use clap::{Parser, Subcommand};
use gateway::cluster::NameLookup;
use gateway::config::Config;
use gateway::reload::FileStamps;
use gateway::state::GatewayState;
use pingora::server::RunArgs;
use request_tracing::TraceExport;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

/// mimalloc's per-thread free lists suit a request path that allocates and frees small buffers
/// on every callback (see docs/benchmarks.md for what it bought).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(version, about = "Reverse proxy with proxy-wasm filter chains")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the configuration until SIGTERM (graceful) or SIGINT (fast); SIGHUP reloads it.
    Run {
        /// The YAML configuration file.
        config: PathBuf,
        /// Take the listeners over from the running proxy once it is sent SIGQUIT (through
        /// `server.upgrade_socket`), instead of binding them.
        #[arg(long)]
        upgrade: bool,
    },
    /// Check a configuration file, including compiling its filters and their configuration.
    Validate {
        /// The YAML configuration file.
        config: PathBuf,
        /// Check endpoint names' syntax without looking them up (a file for another network).
        #[arg(long)]
        skip_dns: bool,
    },
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Validate { config, skip_dns } => {
            let lookup = if skip_dns {
                NameLookup::Skip
            } else {
                NameLookup::Resolve
            };
            match load(&config, lookup, false) {
                Ok(_) => {
                    println!("{}: configuration is valid", config.display());
                    ExitCode::SUCCESS
                }
                Err(message) => {
                    eprintln!("{message}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Run {
            config: path,
            upgrade,
        } => {
            if let Err(error) = gateway::reload::survive_early_hangups() {
                eprintln!("cannot handle SIGHUP: {error}");
                return ExitCode::FAILURE;
            }
            let Loaded {
                config,
                read,
                state,
            } = match load(&path, NameLookup::Resolve, true) {
                Ok(loaded) => loaded,
                Err(message) => {
                    eprintln!("{message}");
                    return ExitCode::FAILURE;
                }
            };
            // Built before any runtime: the exporter's HTTP client has a runtime of its own.
            let trace_export = match TraceExport::from_env("gateway") {
                Ok(export) => Arc::new(export),
                Err(error) => {
                    eprintln!("{error}");
                    return ExitCode::FAILURE;
                }
            };
            let server = match gateway::server::build(
                &path,
                &config,
                read,
                state,
                upgrade,
                trace_export.clone(),
            ) {
                Ok(server) => server,
                Err(error) => {
                    eprintln!("{}: invalid configuration: {error}", path.display());
                    return ExitCode::FAILURE;
                }
            };
            tracing::info!(config = %path.display(), upgrade, "proxy starting");
            server.run(RunArgs::default());
            // The runtimes are gone: spans still queued leave now, then the process ends.
            trace_export.shutdown();
            ExitCode::SUCCESS
        }
    }
}

/// A configuration file, its files as they were when it was read, and its loaded filters.
struct Loaded {
    config: Config,
    read: FileStamps,
    state: GatewayState,
}

/// Reads and loads a configuration; with `serving`, logging starts before the filters load, so
/// what their root contexts log while starting is in the log (as in Envoy).
fn load(path: &Path, lookup: NameLookup, serving: bool) -> Result<Loaded, String> {
    let invalid = |e| format!("{}: invalid configuration: {e}", path.display());
    let config = Config::from_file(path).map_err(invalid)?;
    if serving {
        gateway::telemetry::init(&config.logging.output);
    }
    // Before the filters compile: a file changed meanwhile is reloaded once the proxy serves.
    let read = FileStamps::of(path, &config);
    let state = gateway::server::load(&config, lookup).map_err(invalid)?;
    Ok(Loaded {
        config,
        read,
        state,
    })
}
