//! `sandbox-host --config sandbox.yaml`: the code-execution service.

use clap::Parser;
use request_tracing::TraceExport;
use sandbox_host::{Service, Settings};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
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

fn main() -> anyhow::Result<()> {
    // Flat JSON lines, as the gateway writes them: `request_id` and `trace_id` at the top level.
    tracing_subscriber::fmt()
        .json()
        .flatten_event(true)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let args = Args::parse();
    // Built before the runtime: the exporter's HTTP client blocks on a runtime of its own.
    let trace_export = Arc::new(TraceExport::from_env("sandbox-host").map_err(anyhow::Error::msg)?);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let served = runtime.block_on(serve(args, trace_export.clone()));
    drop(runtime);
    // Outside the runtime, as the exporter's blocking client needs: what is queued leaves now.
    trace_export.shutdown();
    served
}

async fn serve(args: Args, trace_export: Arc<TraceExport>) -> anyhow::Result<()> {
    let mut settings = Settings::load(&args.config)?;
    if let Some(listen) = args.listen {
        settings.listen = listen;
    }
    if args.cache_dir.is_some() {
        settings.cache_dir = args.cache_dir;
    }
    let listener = tokio::net::TcpListener::bind(settings.listen).await?;
    tracing::info!(listen = %listener.local_addr()?, "sandbox-host listening; loading runtimes");
    let service = Service::new(settings, trace_export);
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
