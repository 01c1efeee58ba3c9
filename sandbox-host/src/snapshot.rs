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
//! deterministic: during the build the guest sees a fixed clock, a seeded random source, and file
//! metadata without what differs between machines and copies (device and inode numbers, access and
//! change times; see [`SteadyFileMetadata`]), so the same inputs always give the same bytes and the
//! configuration can pin their SHA-256. CPython keeps some of what it reads (its import caches hold
//! modification times), and more is left in freed memory that the snapshot copies. Executions
//! reseed Python's `random` from real entropy before the caller's code runs (see
//! [`crate::turn::prelude`]).

use crate::turn::{TurnExports, RESET_PREOPENS};
use rand::SeedableRng;
use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use wasmtime::{Caller, Config, Engine, Extern, Instance, Linker, Module, Store, TypedFunc};
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
    let mut linker: Linker<WasiP1Ctx> = Linker::new(&engine);
    wasmtime_wasi::p1::add_to_linker_sync(&mut linker, |wasi| wasi)?;
    let metadata = SteadyFileMetadata::install(&mut linker, &mut store)?;
    // `host.call` (the wheel's tool calls) is never offered to guests.
    linker.define_unknown_imports_as_traps(&module)?;
    let instance = linker.instantiate(&mut store, &module)?;
    metadata.connect(&engine, &mut store, &instance)?;
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

/// WASI's file metadata calls as the snapshot build answers them: the real answer with the device
/// and inode numbers zeroed, one link, and every time [`FixedClock`]'s, so nothing about where or
/// when the files were copied reaches the guest's memory.
///
/// The real calls find the guest's memory through the instance calling them, so the wrappers reach
/// them through a small module that shares the interpreter's memory (the [`SHIM`]), instantiated
/// once the interpreter is.
struct SteadyFileMetadata {
    shim: Arc<OnceLock<ShimCalls>>,
    originals: [(&'static str, Extern); 3],
}

/// The shim's exports: the real WASI calls, made from an instance whose memory is the guest's.
struct ShimCalls {
    fd_filestat_get: TypedFunc<(i32, i32), i32>,
    path_filestat_get: TypedFunc<(i32, i32, i32, i32, i32), i32>,
    fd_readdir: TypedFunc<(i32, i32, i32, i64, i32), i32>,
}

/// Imports the guest's memory and the real calls, re-exports the memory and calls through.
const SHIM: &str = r#"(module
  (import "env" "memory" (memory 0))
  (import "wasi" "fd_filestat_get" (func $fd_filestat_get (param i32 i32) (result i32)))
  (import "wasi" "path_filestat_get" (func $path_filestat_get (param i32 i32 i32 i32 i32) (result i32)))
  (import "wasi" "fd_readdir" (func $fd_readdir (param i32 i32 i32 i64 i32) (result i32)))
  (export "memory" (memory 0))
  (func (export "fd_filestat_get") (param i32 i32) (result i32)
    (call $fd_filestat_get (local.get 0) (local.get 1)))
  (func (export "path_filestat_get") (param i32 i32 i32 i32 i32) (result i32)
    (call $path_filestat_get (local.get 0) (local.get 1) (local.get 2) (local.get 3) (local.get 4)))
  (func (export "fd_readdir") (param i32 i32 i32 i64 i32) (result i32)
    (call $fd_readdir (local.get 0) (local.get 1) (local.get 2) (local.get 3) (local.get 4))))"#;

impl SteadyFileMetadata {
    const MODULE: &'static str = "wasi_snapshot_preview1";
    /// `filestat`: dev u64, ino u64, filetype u8, nlink u64 at 24, size at 32, then atim, mtim, ctim.
    const FILESTAT_BYTES: usize = 64;
    /// A `dirent` header: d_next u64, d_ino u64, d_namlen u32, d_type u8 (then the name).
    const DIRENT_BYTES: usize = 24;

    /// Shadows `fd_filestat_get`, `path_filestat_get` and `fd_readdir` in `linker` with wrappers
    /// around its own definitions; [`Self::connect`] makes them callable.
    fn install(
        linker: &mut Linker<WasiP1Ctx>,
        store: &mut Store<WasiP1Ctx>,
    ) -> wasmtime::Result<Self> {
        let mut original = |name: &'static str| -> wasmtime::Result<(&'static str, Extern)> {
            Ok((name, linker.get(&mut *store, Self::MODULE, name)?))
        };
        let originals = [
            original("fd_filestat_get")?,
            original("path_filestat_get")?,
            original("fd_readdir")?,
        ];
        let shim: Arc<OnceLock<ShimCalls>> = Arc::default();
        linker.allow_shadowing(true);
        let calls = shim.clone();
        linker.func_wrap(
            Self::MODULE,
            "fd_filestat_get",
            move |mut caller: Caller<'_, WasiP1Ctx>, fd: i32, buf: i32| -> wasmtime::Result<i32> {
                let errno = Self::calls(&calls)?
                    .fd_filestat_get
                    .call(&mut caller, (fd, buf))?;
                if errno == 0 {
                    Self::steady_filestat(&mut caller, buf);
                }
                Ok(errno)
            },
        )?;
        let calls = shim.clone();
        linker.func_wrap(
            Self::MODULE,
            "path_filestat_get",
            move |mut caller: Caller<'_, WasiP1Ctx>,
                  fd: i32,
                  flags: i32,
                  path: i32,
                  path_len: i32,
                  buf: i32|
                  -> wasmtime::Result<i32> {
                let errno = Self::calls(&calls)?
                    .path_filestat_get
                    .call(&mut caller, (fd, flags, path, path_len, buf))?;
                if errno == 0 {
                    Self::steady_filestat(&mut caller, buf);
                }
                Ok(errno)
            },
        )?;
        let calls = shim.clone();
        linker.func_wrap(
            Self::MODULE,
            "fd_readdir",
            move |mut caller: Caller<'_, WasiP1Ctx>,
                  fd: i32,
                  buf: i32,
                  buf_len: i32,
                  cookie: i64,
                  used: i32|
                  -> wasmtime::Result<i32> {
                let errno = Self::calls(&calls)?
                    .fd_readdir
                    .call(&mut caller, (fd, buf, buf_len, cookie, used))?;
                if errno == 0 {
                    Self::steady_dirents(&mut caller, buf, used);
                }
                Ok(errno)
            },
        )?;
        linker.allow_shadowing(false);
        Ok(Self { shim, originals })
    }

    /// Instantiates the shim over `instance`'s memory; the wrappers work from then on.
    fn connect(
        self,
        engine: &Engine,
        store: &mut Store<WasiP1Ctx>,
        instance: &Instance,
    ) -> wasmtime::Result<()> {
        let memory = instance
            .get_memory(&mut *store, "memory")
            .ok_or_else(|| wasmtime::format_err!("the interpreter exports no memory"))?;
        let mut linker: Linker<WasiP1Ctx> = Linker::new(engine);
        linker.define(&mut *store, "env", "memory", memory)?;
        for (name, original) in self.originals {
            linker.define(&mut *store, "wasi", name, original)?;
        }
        let shim = linker.instantiate(&mut *store, &Module::new(engine, SHIM)?)?;
        let calls = ShimCalls {
            fd_filestat_get: shim.get_typed_func(&mut *store, "fd_filestat_get")?,
            path_filestat_get: shim.get_typed_func(&mut *store, "path_filestat_get")?,
            fd_readdir: shim.get_typed_func(&mut *store, "fd_readdir")?,
        };
        let _ = self.shim.set(calls);
        Ok(())
    }

    fn calls(shim: &OnceLock<ShimCalls>) -> wasmtime::Result<&ShimCalls> {
        shim.get()
            .ok_or_else(|| wasmtime::format_err!("file metadata asked for before start-up"))
    }

    fn memory<'a>(caller: &'a mut Caller<'_, WasiP1Ctx>) -> Option<&'a mut [u8]> {
        let memory = caller.get_export("memory")?.into_memory()?;
        Some(memory.data_mut(caller))
    }

    fn steady_filestat(caller: &mut Caller<'_, WasiP1Ctx>, buf: i32) {
        let time = FixedClock::NANOS.to_le_bytes();
        let Some(memory) = Self::memory(caller) else {
            return;
        };
        let Some(stat) = usize::try_from(buf)
            .ok()
            .and_then(|at| memory.get_mut(at..at.checked_add(Self::FILESTAT_BYTES)?))
        else {
            return;
        };
        stat[0..16].fill(0);
        stat[24..32].copy_from_slice(&1u64.to_le_bytes());
        for at in [40, 48, 56] {
            stat[at..at + 8].copy_from_slice(&time);
        }
    }

    fn steady_dirents(caller: &mut Caller<'_, WasiP1Ctx>, buf: i32, used: i32) {
        let Some(memory) = Self::memory(caller) else {
            return;
        };
        let (Ok(buf), Ok(used)) = (usize::try_from(buf), usize::try_from(used)) else {
            return;
        };
        let Some(used) = memory
            .get(used..used.saturating_add(4))
            .map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")) as usize)
        else {
            return;
        };
        let Some(entries) = memory.get_mut(buf..buf.saturating_add(used)) else {
            return;
        };
        // Whole headers only: the last entry may be cut short by the buffer's end.
        let mut at = 0;
        while at + Self::DIRENT_BYTES <= entries.len() {
            entries[at + 8..at + 16].fill(0);
            let name = u32::from_le_bytes(entries[at + 16..at + 20].try_into().expect("4 bytes"));
            at += Self::DIRENT_BYTES + name as usize;
        }
    }
}

/// A clock that always reads the same time, so a snapshot does not depend on when it was built.
struct FixedClock;

impl FixedClock {
    /// 2026-01-01T00:00:00Z, in seconds since the epoch (the runtimes' files carry it too).
    const SECONDS: u64 = 1_767_225_600;
    /// The same, in nanoseconds (WASI's file times).
    const NANOS: u64 = Self::SECONDS * 1_000_000_000;
}

impl HostWallClock for FixedClock {
    fn resolution(&self) -> Duration {
        Duration::from_micros(1)
    }
    fn now(&self) -> Duration {
        Duration::from_secs(Self::SECONDS)
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
