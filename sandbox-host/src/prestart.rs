//! Python instances started ahead of requests: instantiated from the snapshot with the prelude
//! run (reseeded, `sys.argv = ['-c']`), waiting for a program. An execution with no stdin,
//! arguments or mounts takes one, runs its program as the only other turn, and discards it, so
//! that instantiating and the prelude (and the page faults they take) are off its path. A
//! background guest thread starts a replacement for each one taken, up to
//! `concurrency.prestarted`. Each instance serves one execution, never two.

use crate::guest_wait::Cancel;
use crate::limits::Limits;
use crate::runtimes::Language;
use crate::sandbox::{Entry, Program, Sandbox};
use crate::session::LiveSession;
use crate::turn::LastExpression;
use std::sync::{Arc, Condvar, Mutex, Weak};
use std::time::Duration;

/// The ready instances and the thread that keeps their number up.
pub(crate) struct Prestarted {
    target: usize,
    ready: Mutex<Vec<LiveSession>>,
    /// Signalled when an instance is taken.
    taken: Condvar,
}

impl Prestarted {
    /// An empty pool of `target` instances (none when 0).
    pub(crate) fn new(target: usize) -> Self {
        Self {
            target,
            ready: Mutex::default(),
            taken: Condvar::new(),
        }
    }

    /// A ready instance for `program`, if it is Python with nothing an instance would have had
    /// to be started with (stdin, arguments, mounts) and one is ready within `limits`' memory cap.
    pub(crate) fn take(
        &self,
        program: &Program,
        has_mounts: bool,
        limits: &Limits,
    ) -> Option<LiveSession> {
        let plain = program.language == Language::Python
            && program.stdin.is_empty()
            && program.args.is_empty()
            && !has_mounts;
        if !plain || self.target == 0 {
            return None;
        }
        let mut ready = self.ready.lock().expect("prestart lock");
        let mut live = ready.pop()?;
        // Started under the server's largest cap; this execution may ask for less than the
        // instance already holds, and then takes the usual path (the instance waits on).
        if !live.cap_memory(limits.memory_bytes) {
            ready.push(live);
            return None;
        }
        self.taken.notify_one();
        Some(live)
    }
}

impl Sandbox {
    /// How many prestarted instances are ready now.
    pub fn prestarted_ready(&self) -> usize {
        self.prestarted().ready.lock().expect("prestart lock").len()
    }

    /// Starts the thread that keeps `concurrency.prestarted` Python instances ready; it ends
    /// when the sandbox is dropped.
    pub fn start_prestarting(self: &Arc<Self>) -> std::io::Result<()> {
        if self.prestarted().target == 0 {
            return Ok(());
        }
        let sandbox = Arc::downgrade(self);
        std::thread::Builder::new()
            .name("sandbox-prestart".into())
            .stack_size(self.guest_thread_stack_bytes())
            .spawn(move || refill(&sandbox))
            .map(drop)
    }
}

/// Starts instances while fewer than the target are ready; waits for one to be taken otherwise.
fn refill(sandbox: &Weak<Sandbox>) {
    loop {
        let Some(strong) = sandbox.upgrade() else {
            return;
        };
        let prestarted = strong.prestarted();
        let missing = prestarted.ready.lock().expect("prestart lock").len() < prestarted.target;
        if !missing {
            let ready = prestarted.ready.lock().expect("prestart lock");
            // A bounded wait, so that a dropped sandbox ends this thread.
            drop(prestarted.taken.wait_timeout(ready, Duration::from_secs(1)));
            continue;
        }
        match start_one(&strong) {
            Some(live) => prestarted.ready.lock().expect("prestart lock").push(live),
            // No free slot or a failed start: executions go the usual way meanwhile.
            None => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

fn start_one(sandbox: &Sandbox) -> Option<LiveSession> {
    let prepared = sandbox.prepare(Language::Python, b"", &[]).ok()?;
    if prepared.entry != Entry::Turn {
        return None;
    }
    let settings = sandbox.limit_settings();
    let limits = Limits {
        memory_bytes: settings.memory_bytes.max,
        ..settings.resolve(&Default::default()).ok()?
    };
    let cancel = Arc::new(Cancel::default());
    sandbox
        .start_live(&prepared, &[], limits, LastExpression::Ignored, cancel)
        .map_err(|error| tracing::warn!(%error, "cannot prestart a Python instance"))
        .ok()
}
