//! A live interpreter kept between executions: one store and one instance of a turn-based
//! interpreter, so globals, imports and open files survive from one program to the next.
//!
//! The instance starts, copy-on-write, from the interpreter's snapshot, like every execution. It
//! holds a pooled instance slot and its memory (bounded by the session's memory cap) while the
//! session lives. Each execution gets the limits of a one-shot execution (a fresh deadline, fuel
//! and output caps). An execution that ends in a trap (a timeout, the memory cap, a cancellation)
//! leaves the interpreter in an unknown state, so the session ends with it; a Python exception
//! does not. Ownership, expiry and caps are [`crate::session_table`]'s.

use crate::capabilities::Mount;
use crate::guest_wait::{Cancel, Watch};
use crate::limits::Limits;
use crate::runtimes::Language;
use crate::sandbox::{
    exit_status, report, run_prelude, Entry, ExecutionError, GuestState, Output, Prepared, Report,
    Sandbox,
};
use crate::scratch_quota::{ScratchExceeded, ScratchWatch};
use crate::turn::{LastExpression, TurnExports};
use std::sync::Arc;
use std::time::{Duration, Instant};
use wasmtime::Store;

/// An interpreter instance between executions.
pub struct LiveSession {
    store: Store<GuestState>,
    exports: TurnExports,
    output: Output,
    /// What the guest's monotonic clock counts from (and poll deadlines compare with).
    clock_origin: Instant,
    /// The session's `/scratch` and its quota, checked after every execution.
    scratch: Option<ScratchWatch>,
}

/// The result of an execution in a session.
pub struct SessionRun {
    /// The execution's report.
    pub report: Report,
    /// The instance, when it can run another execution; `None` ends the session.
    pub session: Option<LiveSession>,
}

impl LiveSession {
    /// The guest's linear memory, in bytes.
    pub fn memory_bytes(&self) -> u64 {
        self.store.data().limiter.peak_memory() as u64
    }

    /// Caps the guest's memory at `bytes` from now on; false (and unchanged) if it already holds
    /// more.
    pub(crate) fn cap_memory(&mut self, bytes: u64) -> bool {
        if self.memory_bytes() > bytes {
            return false;
        }
        self.store.data_mut().limiter.cap(bytes);
        true
    }
}

/// Why a session could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The language's interpreter runs one program per instance.
    #[error("{0} has no turn-based interpreter here; sessions run python")]
    Unsupported(&'static str),
    /// As for an execution.
    #[error(transparent)]
    Execution(#[from] ExecutionError),
}

impl Sandbox {
    /// Starts an instance of `language`'s interpreter with `scratch` mounted, capped at
    /// `limits.memory_bytes`, and runs its prelude, on a guest thread.
    pub async fn open_session(
        self: &Arc<Self>,
        language: Language,
        scratch: Mount,
        limits: Limits,
    ) -> Result<LiveSession, OpenError> {
        let prepared = self.prepare(language, b"", &[])?;
        if prepared.entry != Entry::Turn {
            return Err(OpenError::Unsupported(language.as_str()));
        }
        let sandbox = self.clone();
        self.on_guest_thread(move |cancel| {
            let mounts = std::slice::from_ref(&scratch);
            let started =
                sandbox.start_live(&prepared, mounts, limits, LastExpression::Printed, cancel);
            (started, ())
        })
        .await
        .map_err(OpenError::from)
    }

    /// Runs `code` as the session's next program under `limits` (its memory cap is the
    /// session's), on a guest thread. Dropping this future cancels the program and, as a
    /// cancelled program leaves the interpreter unsound, the session.
    pub async fn execute_in_session<H: Send + 'static>(
        self: &Arc<Self>,
        mut session: LiveSession,
        code: Vec<u8>,
        limits: Limits,
        held: H,
    ) -> Result<SessionRun, ExecutionError> {
        self.on_guest_thread(move |cancel| {
            let run = run_in_live(&mut session, &code, limits, cancel).map(|(report, sound)| {
                SessionRun {
                    report,
                    session: sound.then_some(session),
                }
            });
            // `held` (an admission slot) is let go once the guest has stopped.
            (run, held)
        })
        .await
    }

    /// Instantiates a turn-based interpreter with `mounts` and runs its prelude, on this guest
    /// thread.
    pub(crate) fn start_live(
        &self,
        prepared: &Prepared,
        mounts: &[Mount],
        limits: Limits,
        last: LastExpression,
        cancel: Arc<Cancel>,
    ) -> Result<LiveSession, ExecutionError> {
        let started = Instant::now();
        let watch = Watch {
            started,
            deadline: started + Duration::from_millis(limits.timeout_ms),
            cancel,
        };
        let output = Output::new(&limits);
        let mut store = self.new_store(prepared, b"", mounts, &limits, watch, &output)?;
        let opened = prepared
            .pre
            .instantiate(&mut store)
            .and_then(|instance| TurnExports::new(&instance, &mut store))
            .and_then(|exports| {
                run_prelude(&exports, &mut store, &[], last)?;
                Ok(exports)
            });
        let scratch = mounts
            .iter()
            .find(|m| m.guest == "/scratch" && m.writable)
            .map(|m| ScratchWatch::new(&m.host, self.limit_settings().scratch));
        match opened {
            Ok(exports) => Ok(LiveSession {
                store,
                exports,
                output,
                clock_origin: started,
                scratch,
            }),
            Err(error) => {
                let report = report(&store, Err(error), limits, &output, started)?;
                Err(ExecutionError::Internal(format!(
                    "the interpreter did not start: {}",
                    report.detail.unwrap_or_default()
                )))
            }
        }
    }
}

/// Runs `code` as the next turn of `session` under `limits` (a fresh deadline, fuel and output
/// caps; the memory cap is the instance's), on this guest thread. Also says whether the
/// interpreter can take another turn: only one whose turn returned (and did not ask to quit).
pub(crate) fn run_in_live(
    session: &mut LiveSession,
    code: &[u8],
    limits: Limits,
    cancel: Arc<Cancel>,
) -> Result<(Report, bool), ExecutionError> {
    let started = Instant::now();
    let state = session.store.data_mut();
    state.watch = Watch {
        started: session.clock_origin,
        deadline: started + Duration::from_millis(limits.timeout_ms),
        cancel,
    };
    state.limiter.memory_exceeded = false;
    session.output.restart(&limits);
    session
        .store
        .set_fuel(limits.fuel)
        .map_err(|e| ExecutionError::Internal(e.to_string()))?;
    session.store.set_epoch_deadline(1);
    let status = session.exports.run(&mut session.store, code);
    let sound = matches!(&status, Ok(status) if !status.ends_interpreter());
    let mut result = status.and_then(exit_status);
    // The epoch callback samples the quota only while wasm runs; what a short program left in a
    // session's `/scratch` is checked here, and a session over its quota ends.
    let over_quota = match &session.scratch {
        Some(scratch) if !matches!(&result, Err(e) if e.is::<ScratchExceeded>()) => {
            scratch.check().err()
        }
        _ => None,
    };
    let sound = sound && over_quota.is_none();
    if let Some(exceeded) = over_quota {
        result = Err(exceeded.into());
    }
    let report = report(&session.store, result, limits, &session.output, started)?;
    Ok((report, sound))
}
