//! `sandbox-snapshot --module python.wasm --stdlib DIR --preload preload.py --output OUT`: builds
//! the pre-initialised Python snapshot sandbox-host runs (see `sandbox_host::snapshot`).

use clap::Parser;
use sandbox_host::snapshot::{build, SnapshotInput};
use std::path::PathBuf;
use std::time::Instant;

/// Starts the reactor interpreter, runs the preload program, and writes the snapshot module.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// The reactor module (`python.wasm` from the hash-pinned wheel).
    #[arg(long)]
    module: PathBuf,
    /// The directory holding the standard library archive (`python315.zip`).
    #[arg(long)]
    stdlib: PathBuf,
    /// Python run before the snapshot is taken.
    #[arg(long)]
    preload: PathBuf,
    /// Where the snapshot module is written (atomically).
    #[arg(long)]
    output: PathBuf,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let started = Instant::now();
    let module = std::fs::read(&args.module)?;
    let preload = std::fs::read_to_string(&args.preload)?;
    let snapshot = build(&SnapshotInput {
        module: &module,
        stdlib_dir: &args.stdlib,
        preload: &preload,
    })?;
    let temporary = args.output.with_extension("tmp");
    std::fs::write(&temporary, &snapshot)?;
    std::fs::rename(&temporary, &args.output)?;
    eprintln!(
        "{}: {} bytes in {:.1} s",
        args.output.display(),
        snapshot.len(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
