//! Compiled WebAssembly modules cached on disk, keyed by the module's SHA-256 and the engine's
//! compatibility hash, so a process restart (or a second process) skips Cranelift; optionally
//! also the most recently used ones in memory, so loading a module again in the same process (a
//! configuration reload, one filter in several chains) costs nothing.
//!
//! A cache entry is only ever a hint: an unreadable or incompatible artifact is recompiled and
//! replaced, never trusted.

use sha2::{Digest, Sha256};
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use wasmtime::{Engine, Module};

/// A module's SHA-256.
type ModuleDigest = [u8; 32];

/// Compiles modules for one engine, through an optional on-disk cache and an optional in-memory
/// one.
#[derive(Debug, Clone)]
pub struct ModuleCache {
    dir: Option<PathBuf>,
    recent: Option<Arc<Mutex<RecentModules>>>,
}

/// The most recently used compiled modules, most recent last. Dropping one from here does not
/// affect its users (a `Module` is reference-counted).
#[derive(Debug)]
struct RecentModules {
    capacity: usize,
    entries: Vec<(ModuleDigest, Module)>,
}

impl ModuleCache {
    /// A cache in `dir` (created if missing); `None` compiles every time.
    pub fn new(dir: Option<PathBuf>) -> std::io::Result<Self> {
        if let Some(dir) = &dir {
            std::fs::create_dir_all(dir)?;
        }
        Ok(Self { dir, recent: None })
    }

    /// Also keeps the `capacity` most recently used modules in memory. Only for modules the
    /// operator chose (filters): a cache of callers' modules would let callers fill memory.
    pub fn keeping_recent(mut self, capacity: usize) -> Self {
        self.recent = Some(Arc::new(Mutex::new(RecentModules {
            capacity,
            entries: Vec::with_capacity(capacity),
        })));
        self
    }

    /// The compiled `wasm` (binary or, with wasmtime's `wat` feature, text): from memory when
    /// recently used, from the disk cache when an artifact for this module and engine exists;
    /// otherwise compiled and written back.
    pub fn compile(&self, engine: &Engine, wasm: &[u8]) -> wasmtime::Result<Module> {
        let digest: ModuleDigest = Sha256::digest(wasm).into();
        if let Some(module) = self.recall(&digest) {
            return Ok(module);
        }
        let module = self.load_or_compile(engine, wasm, &digest)?;
        self.remember(digest, &module);
        Ok(module)
    }

    fn recall(&self, digest: &ModuleDigest) -> Option<Module> {
        let mut recent = self.recent.as_ref()?.lock().expect("module cache lock");
        let at = recent.entries.iter().position(|(d, _)| d == digest)?;
        let entry = recent.entries.remove(at);
        let module = entry.1.clone();
        recent.entries.push(entry);
        Some(module)
    }

    fn remember(&self, digest: ModuleDigest, module: &Module) {
        let Some(recent) = &self.recent else { return };
        let mut recent = recent.lock().expect("module cache lock");
        if recent.entries.len() >= recent.capacity {
            recent.entries.remove(0);
        }
        if recent.capacity > 0 {
            recent.entries.push((digest, module.clone()));
        }
    }

    fn load_or_compile(
        &self,
        engine: &Engine,
        wasm: &[u8],
        digest: &ModuleDigest,
    ) -> wasmtime::Result<Module> {
        let Some(dir) = &self.dir else {
            return Module::new(engine, wasm);
        };
        let path = artifact_path(dir, engine, digest);
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

fn artifact_path(dir: &Path, engine: &Engine, digest: &ModuleDigest) -> PathBuf {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    engine.precompile_compatibility_hash().hash(&mut hasher);
    let digest = hex::encode(digest);
    dir.join(format!("{digest}-{:016x}.cwasm", hasher.finish()))
}

/// Writes through a temporary file and a rename, so readers never see half an artifact.
fn write_artifact(path: &Path, module: &Module) -> wasmtime::Result<()> {
    let temporary = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&temporary, module.serialize()?)?;
    std::fs::rename(&temporary, path)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn module_text(n: u32) -> String {
        format!("(module (func (export \"f\") (result i32) i32.const {n}))")
    }

    #[test]
    fn recent_modules_are_reused_and_the_oldest_leaves_first() {
        let engine = Engine::default();
        let cache = ModuleCache::new(None).unwrap().keeping_recent(2);
        let compile = |n| cache.compile(&engine, module_text(n).as_bytes()).unwrap();
        let one = compile(1);
        assert!(Module::same(&one, &compile(1)), "a second load reuses it");
        let two = compile(2);
        compile(1);
        compile(3);
        assert!(Module::same(&one, &compile(1)), "1 was used more recently");
        assert!(!Module::same(&two, &compile(2)), "so 2 left to make room");
    }

    #[test]
    fn without_keeping_recent_every_load_compiles() {
        let engine = Engine::default();
        let cache = ModuleCache::new(None).unwrap();
        let text = module_text(1);
        let first = cache.compile(&engine, text.as_bytes()).unwrap();
        assert!(!Module::same(
            &first,
            &cache.compile(&engine, text.as_bytes()).unwrap()
        ));
    }
}
