//! Counters the proxy exports as metrics.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// Live counters of a Redis backend.
#[derive(Debug, Default)]
pub struct Stats {
    pub(crate) connected: AtomicBool,
    pub(crate) operations: AtomicU64,
    pub(crate) timeouts: AtomicU64,
    pub(crate) connection_errors: AtomicU64,
    pub(crate) server_errors: AtomicU64,
    pub(crate) fallback_operations: AtomicU64,
    pub(crate) refused_operations: AtomicU64,
    pub(crate) reconnects: AtomicU64,
}

/// A copy of the counters at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatsSnapshot {
    /// A connection is up and not backing off.
    pub connected: bool,
    /// Operations sent to Redis.
    pub operations: u64,
    /// Operations that exceeded the operation timeout.
    pub timeouts: u64,
    /// Failed connection attempts and dropped connections.
    pub connection_errors: u64,
    /// Errors Redis answered (out of memory, read-only replica, cluster down…).
    pub server_errors: u64,
    /// Operations answered from process-local state (fail-open).
    pub fallback_operations: u64,
    /// Operations refused (fail-closed).
    pub refused_operations: u64,
    /// Connections established after the first.
    pub reconnects: u64,
}

impl Stats {
    pub(crate) fn count(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// The current values.
    pub fn snapshot(&self) -> StatsSnapshot {
        let read = |c: &AtomicU64| c.load(Ordering::Relaxed);
        StatsSnapshot {
            connected: self.connected.load(Ordering::Relaxed),
            operations: read(&self.operations),
            timeouts: read(&self.timeouts),
            connection_errors: read(&self.connection_errors),
            server_errors: read(&self.server_errors),
            fallback_operations: read(&self.fallback_operations),
            refused_operations: read(&self.refused_operations),
            reconnects: read(&self.reconnects),
        }
    }
}
