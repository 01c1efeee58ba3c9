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
use crate::guest_wait::Watch;
use crate::limits::Limits;
use crate::runtimes::Language;
use crate::sandbox::{
    exit_status, report, run_prelude, Entry, ExecutionError, GuestState, Output, Report, Sandbox,
};
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
            let result = (|| -> Result<LiveSession, ExecutionError> {
                let started = Instant::now();
                let watch = Watch {
                    started,
                    deadline: started + Duration::from_millis(limits.timeout_ms),
                    cancel,
                };
                let output = Output::new(&limits);
                let mut store = sandbox.new_store(
                    &prepared,
                    b"",
                    std::slice::from_ref(&scratch),
                    &limits,
                    watch,
                    &output,
                )?;
                let opened = prepared
                    .pre
                    .instantiate(&mut store)
                    .and_then(|instance| TurnExports::new(&instance, &mut store))
                    .and_then(|exports| {
                        run_prelude(&exports, &mut store, &[], LastExpression::Printed)?;
                        Ok(exports)
                    });
                match opened {
                    Ok(exports) => Ok(LiveSession {
                        store,
                        exports,
                        output,
                        clock_origin: started,
                    }),
                    Err(error) => {
                        let report = report(&store, Err(error), limits, &output, started)?;
                        Err(ExecutionError::Internal(format!(
                            "the interpreter did not start: {}",
                            report.detail.unwrap_or_default()
                        )))
                    }
                }
            })();
            (result, ())
        })
        .await
        .map_err(OpenError::from)
    }

    /// Runs `code` as the session's next program under `limits` (its memory cap is the
    /// session's), on a guest thread. Dropping this future cancels the program and, as a
    /// cancelled program leaves the interpreter unsound, the session.
    pub async fn execute_in_session(
        self: &Arc<Self>,
        mut session: LiveSession,
        code: Vec<u8>,
        limits: Limits,
    ) -> Result<SessionRun, ExecutionError> {
        self.on_guest_thread(move |cancel| {
            let result = (|| -> Result<SessionRun, ExecutionError> {
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
                let status = session.exports.run(&mut session.store, &code);
                // Only a turn that returned leaves an interpreter that can take another; one that
                // asked to quit has ended itself.
                let sound = matches!(&status, Ok(status) if !status.quit());
                let result = status.and_then(exit_status);
                let report = report(&session.store, result, limits, &session.output, started)?;
                Ok(SessionRun {
                    report,
                    session: sound.then_some(session),
                })
            })();
            (result, ())
        })
        .await
    }
}
