//! `sandbox-host --config sandbox.yaml`: the code-execution service.

use clap::Parser;
use sandbox_host::{Service, Settings};
use std::net::SocketAddr;
use std::path::PathBuf;
use tokio::signal::unix::{signal, SignalKind};

/// Runs untrusted Python, JavaScript and WebAssembly on wasmtime with strict limits.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// The configuration file (YAML).
    #[arg(long, default_value = "sandbox-host/config/default.yaml")]
    config: PathBuf,
    /// Listen here instead of the file's `listen`.
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Cache compiled modules here instead of the file's `cache_dir`.
    #[arg(long)]
    cache_dir: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .json()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let args = Args::parse();
    let mut settings = Settings::load(&args.config)?;
    if let Some(listen) = args.listen {
        settings.listen = listen;
    }
    if args.cache_dir.is_some() {
        settings.cache_dir = args.cache_dir;
    }
    let listener = tokio::net::TcpListener::bind(settings.listen).await?;
    tracing::info!(listen = %listener.local_addr()?, "sandbox-host listening; loading runtimes");
    let service = Service::new(settings);
    let loader = service.clone();
    tokio::spawn(async move {
        if let Err(error) = loader.load().await {
            tracing::error!(error = format!("{error:#}"), "cannot load runtimes");
            std::process::exit(1);
        }
        tracing::info!("ready");
    });
    let mut terminate = signal(SignalKind::terminate())?;
    let shutdown = async move {
        tokio::select! {
            _ = terminate.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    };
    service.serve(listener, shutdown).await?;
    Ok(())
}
