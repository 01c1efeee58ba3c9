//! A thread that increments an engine's epoch at a fixed period.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use wasmtime::Engine;

/// Advances an engine's epoch every `period` until dropped (or the engine is gone).
#[derive(Debug)]
pub struct EpochTicker {
    period: Duration,
    stop: Arc<AtomicBool>,
}

impl EpochTicker {
    /// Starts the ticker thread for `engine`; it holds only a weak reference to it.
    pub fn start(engine: &Engine, period: Duration) -> std::io::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let (engine, stopped) = (engine.weak(), stop.clone());
        std::thread::Builder::new()
            .name("wasm-epoch".into())
            .spawn(move || {
                while !stopped.load(Ordering::Relaxed) {
                    std::thread::sleep(period);
                    match engine.upgrade() {
                        Some(engine) => engine.increment_epoch(),
                        None => return,
                    }
                }
            })?;
        Ok(Self { period, stop })
    }

    /// Epoch ticks for a deadline with this ticker's period (see [`epoch_ticks`]).
    pub fn ticks_for(&self, deadline: Duration) -> u64 {
        epoch_ticks(self.period, deadline)
    }
}

impl Drop for EpochTicker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Epoch ticks for a deadline: at least one full tick, plus one for the tick in progress.
pub fn epoch_ticks(period: Duration, deadline: Duration) -> u64 {
    (deadline.as_micros() / period.as_micros()).max(1) as u64 + 1
}
