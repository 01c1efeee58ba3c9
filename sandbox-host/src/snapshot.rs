//! Pre-initialised interpreter snapshots: the reactor build of CPython started once, the common
//! modules imported, and its memory written out as a new module (Wizer), so that every execution
//! starts from there in microseconds instead of booting Python.
//!
//! wasi-libc reads its table of preopened directories once, so the snapshot's table would name
//! only the standard library. The snapshot therefore also exports wasi-libc's
//! `__wasilibc_reset_preopens` (as [`RESET_PREOPENS`]), which each execution calls first, so that
//! the directories it was granted (`/scratch`, `/data/...`) are found.
//!
//! The snapshot is built by `make` (`sandbox-snapshot`) from the hash-pinned wheel and is
//! deterministic: during the build the guest sees a fixed clock and a seeded random source, so the
//! same inputs always give the same bytes and the configuration can pin their SHA-256. Executions
//! reseed Python's `random` from real entropy before the caller's code runs (see
//! [`crate::turn::prelude`]).

use crate::turn::{TurnExports, RESET_PREOPENS};
use rand::SeedableRng;
use std::path::Path;
use std::time::Duration;
use wasmtime::{Config, Engine, Instance, Linker, Module, Store};
use wasmtime_wasi::p1::WasiP1Ctx;
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{FsPerms, HostMonotonicClock, HostWallClock, WasiCtxBuilder};
use wasmtime_wizer::{InstanceState, SnapshotVal, ValType, Wizer};

/// Where the guest finds its standard library (a directory holding `python315.zip`).
pub const STDLIB_GUEST_DIR: &str = "/usr/local/lib";

/// The guest's fixed environment: no time-zone database (none is shipped), temporary files in
/// `/tmp` (absent unless granted).
pub const GUEST_ENV: &[(&str, &str)] = &[("TMPDIR", "/tmp"), ("PYTHONTZPATH", "")];

/// What to snapshot.
pub struct SnapshotInput<'a> {
    /// The reactor module (`python.wasm` from the wheel).
    pub module: &'a [u8],
    /// The host directory preopened read-only at [`STDLIB_GUEST_DIR`].
    pub stdlib_dir: &'a Path,
    /// Python run once before the snapshot is taken (the imports to keep warm).
    pub preload: &'a str,
}

/// Why a snapshot could not be built.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// wasmtime, WASI or Wizer failed.
    #[error("{0:#}")]
    Wasmtime(#[from] wasmtime::Error),
    /// The runtime Wizer's reader needs could not start.
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// The module is not what the snapshot needs.
    #[error("{0}")]
    Module(String),
    /// The module does not parse.
    #[error("the module does not parse: {0}")]
    Parse(#[from] wasmparser::BinaryReaderError),
    /// The preload program failed.
    #[error("the preload program returned {status}: {stderr}")]
    Preload {
        /// What `turn` returned.
        status: i32,
        /// What Python wrote to stderr.
        stderr: String,
    },
}

/// Runs the interpreter's start-up and `input.preload`, then returns the snapshot module.
pub fn build(input: &SnapshotInput<'_>) -> Result<Vec<u8>, SnapshotError> {
    let mut config = Config::new();
    config.wasm_exceptions(true);
    let engine = Engine::new(&config)?;
    let mut wizer = Wizer::new();
    wizer.init_func("wizer.initialize");
    let (cx, instrumented) = wizer.instrument(input.module)?;
    let module = Module::new(&engine, &instrumented)?;
    let mut linker: Linker<WasiP1Ctx> = Linker::new(&engine);
    wasmtime_wasi::p1::add_to_linker_sync(&mut linker, |wasi| wasi)?;
    // `host.call` (the wheel's tool calls) is never offered to guests.
    linker.define_unknown_imports_as_traps(&module)?;
    let stderr = MemoryOutputPipe::new(1 << 20);
    let mut wasi = WasiCtxBuilder::new();
    wasi.args(&[crate::turn::ARGV0])
        .envs(GUEST_ENV)
        .stderr(stderr.clone())
        .secure_random(rand::rngs::StdRng::seed_from_u64(0))
        .insecure_random(rand::rngs::StdRng::seed_from_u64(1))
        .insecure_random_seed(0)
        .wall_clock(FixedClock)
        .monotonic_clock(FixedClock)
        .preopened_dir(input.stdlib_dir, STDLIB_GUEST_DIR, FsPerms::ReadOnly)?;
    let mut store = Store::new(&engine, wasi.build_p1());
    let instance = linker.instantiate(&mut store, &module)?;
    if let Ok(initialize) = instance.get_typed_func::<(), ()>(&mut store, "_initialize") {
        initialize.call(&mut store, ())?;
    }
    instance
        .get_typed_func::<(), ()>(&mut store, "wizer.initialize")?
        .call(&mut store, ())?;
    let status =
        TurnExports::new(&instance, &mut store)?.run(&mut store, input.preload.as_bytes())?;
    if status.0 != 0 {
        return Err(SnapshotError::Preload {
            status: status.0,
            stderr: String::from_utf8_lossy(&stderr.contents()).into_owned(),
        });
    }
    let mut state = Snapshotted {
        store: &mut store,
        instance,
    };
    // Wizer's reader is async; nothing in it waits, so a one-thread runtime is all it needs.
    let runtime = tokio::runtime::Builder::new_current_thread().build()?;
    let snapshot = runtime.block_on(wizer.snapshot(&cx, &mut state))?;
    export_function(&snapshot, "__wasilibc_reset_preopens", RESET_PREOPENS)
}

/// `module` with the function its name section calls `function` exported as `export`.
fn export_function(module: &[u8], function: &str, export: &str) -> Result<Vec<u8>, SnapshotError> {
    let mut index = None;
    for payload in wasmparser::Parser::new(0).parse_all(module) {
        let wasmparser::Payload::CustomSection(section) = payload? else {
            continue;
        };
        let wasmparser::KnownCustom::Name(names) = section.as_known() else {
            continue;
        };
        for name in names {
            let wasmparser::Name::Function(map) = name? else {
                continue;
            };
            for naming in map {
                let naming = naming?;
                if naming.name == function {
                    index = Some(naming.index);
                }
            }
        }
    }
    let index =
        index.ok_or_else(|| SnapshotError::Module(format!("no function named {function}")))?;
    // Top-level sections: an id byte, a LEB128 size, the contents.
    let mut at = 8;
    while at < module.len() {
        let id = module[at];
        let (size, contents) = read_leb128(module, at + 1)?;
        let end = contents + size;
        if id == 7 {
            let (count, entries) = read_leb128(module, contents)?;
            let mut section = Vec::new();
            write_leb128(&mut section, count + 1);
            section.extend_from_slice(&module[entries..end]);
            write_leb128(&mut section, export.len());
            section.extend_from_slice(export.as_bytes());
            section.push(0); // a function
            write_leb128(&mut section, index as usize);
            let mut out = module[..at].to_vec();
            out.push(7);
            write_leb128(&mut out, section.len());
            out.extend_from_slice(&section);
            out.extend_from_slice(&module[end..]);
            return Ok(out);
        }
        at = end;
    }
    Err(SnapshotError::Module("no export section".into()))
}

/// An unsigned LEB128 number at `at`, and where what follows it starts.
fn read_leb128(bytes: &[u8], mut at: usize) -> Result<(usize, usize), SnapshotError> {
    let mut value = 0usize;
    for shift in (0..35).step_by(7) {
        let byte = *bytes
            .get(at)
            .ok_or_else(|| SnapshotError::Module("truncated section header".into()))?;
        at += 1;
        value |= usize::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Ok((value, at));
        }
    }
    Err(SnapshotError::Module("a section size is too long".into()))
}

fn write_leb128(out: &mut Vec<u8>, mut value: usize) {
    loop {
        let byte = (value & 0x7f) as u8;
        value >>= 7;
        if value == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

/// The instance whose state Wizer writes out.
struct Snapshotted<'a> {
    store: &'a mut Store<WasiP1Ctx>,
    instance: Instance,
}

impl InstanceState for Snapshotted<'_> {
    async fn global_get(&mut self, name: &str, _: ValType) -> SnapshotVal {
        let global = self
            .instance
            .get_global(&mut *self.store, name)
            .expect("Wizer names an exported global");
        match global.get(&mut *self.store) {
            wasmtime::Val::I32(x) => SnapshotVal::I32(x),
            wasmtime::Val::I64(x) => SnapshotVal::I64(x),
            wasmtime::Val::F32(x) => SnapshotVal::F32(x),
            wasmtime::Val::F64(x) => SnapshotVal::F64(x),
            wasmtime::Val::V128(x) => SnapshotVal::V128(x.as_u128()),
            other => panic!("a global of type {other:?} cannot be snapshotted"),
        }
    }

    async fn memory_contents(&mut self, name: &str, contents: impl FnOnce(&[u8]) + Send) {
        let memory = self
            .instance
            .get_memory(&mut *self.store, name)
            .expect("Wizer names an exported memory");
        contents(memory.data(&*self.store))
    }
}

/// A clock that always reads the same time, so a snapshot does not depend on when it was built.
struct FixedClock;

impl HostWallClock for FixedClock {
    fn resolution(&self) -> Duration {
        Duration::from_micros(1)
    }
    fn now(&self) -> Duration {
        // 2026-01-01T00:00:00Z.
        Duration::from_secs(1_767_225_600)
    }
}

impl HostMonotonicClock for FixedClock {
    fn resolution(&self) -> u64 {
        1_000
    }
    fn now(&self) -> u64 {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_named_function_is_exported_beside_the_others() {
        let module = wat::parse_str(
            r#"(module
                (func $kept (export "kept"))
                (func $__wasilibc_reset_preopens)
                (memory (export "memory") 1))"#,
        )
        .unwrap();
        let exported = export_function(&module, "__wasilibc_reset_preopens", "reset").unwrap();
        let engine = Engine::default();
        let module = Module::new(&engine, &exported).unwrap();
        let names: Vec<&str> = module.exports().map(|e| e.name()).collect();
        assert_eq!(names, ["kept", "memory", "reset"]);
        assert!(export_function(&exported, "absent", "x").is_err());
    }

    #[test]
    fn leb128_round_trips() {
        for value in [0, 1, 127, 128, 300, 1 << 20, 135_059_221] {
            let mut bytes = vec![0xff];
            write_leb128(&mut bytes, value);
            assert_eq!(read_leb128(&bytes, 1).unwrap(), (value, bytes.len()));
        }
    }
}
