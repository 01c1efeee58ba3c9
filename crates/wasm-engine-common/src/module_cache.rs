//! Compiled WebAssembly modules cached on disk, keyed by the module's SHA-256 and the engine's
//! compatibility hash, so a process restart (or a second process) skips Cranelift.
//!
//! A cache entry is only ever a hint: an unreadable or incompatible artifact is recompiled and
//! replaced, never trusted.

use sha2::{Digest, Sha256};
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use wasmtime::{Engine, Module};

/// Compiles modules for one engine, through an optional on-disk cache.
#[derive(Debug, Clone)]
pub struct ModuleCache {
    dir: Option<PathBuf>,
}

impl ModuleCache {
    /// A cache in `dir` (created if missing); `None` compiles every time.
    pub fn new(dir: Option<PathBuf>) -> std::io::Result<Self> {
        if let Some(dir) = &dir {
            std::fs::create_dir_all(dir)?;
        }
        Ok(Self { dir })
    }

    /// The compiled `wasm` (binary or, with wasmtime's `wat` feature, text), from the cache when
    /// an artifact for this module and engine exists; otherwise compiled and written back.
    pub fn compile(&self, engine: &Engine, wasm: &[u8]) -> wasmtime::Result<Module> {
        let Some(dir) = &self.dir else {
            return Module::new(engine, wasm);
        };
        let path = artifact_path(dir, engine, wasm);
        // Read, not mapped: a mapped artifact truncated by someone else would crash the process.
        if let Ok(bytes) = std::fs::read(&path) {
            // SAFETY: the cache directory holds only artifacts serialised by this crate; wasmtime
            // checks the header and engine compatibility and errs on a mismatch, so we recompile.
            match unsafe { Module::deserialize(engine, &bytes) } {
                Ok(module) => return Ok(module),
                Err(error) => {
                    tracing::warn!(path = %path.display(), %error, "ignoring unusable cached module")
                }
            }
        }
        let module = Module::new(engine, wasm)?;
        if let Err(error) = write_artifact(&path, &module) {
            tracing::warn!(path = %path.display(), %error, "cannot cache compiled module");
        }
        Ok(module)
    }
}

fn artifact_path(dir: &Path, engine: &Engine, wasm: &[u8]) -> PathBuf {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    engine.precompile_compatibility_hash().hash(&mut hasher);
    let digest = hex::encode(Sha256::digest(wasm));
    dir.join(format!("{digest}-{:016x}.cwasm", hasher.finish()))
}

/// Writes through a temporary file and a rename, so readers never see half an artifact.
fn write_artifact(path: &Path, module: &Module) -> wasmtime::Result<()> {
    let temporary = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&temporary, module.serialize()?)?;
    std::fs::rename(&temporary, path)?;
    Ok(())
}
