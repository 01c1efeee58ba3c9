//! CPU deadlines in epoch ticks: the engine's epoch advances every `EPOCH_TICK`.

use std::time::Duration;
use wasm_engine_common::epoch_ticks;

/// How often the engine's epoch advances; CPU deadlines are whole multiples of it.
pub const EPOCH_TICK: Duration = Duration::from_millis(5);

/// Epoch ticks for a deadline (at least one full tick, plus one for the partial tick in progress).
pub(crate) fn ticks_for(deadline: Duration) -> u64 {
    epoch_ticks(EPOCH_TICK, deadline)
}
