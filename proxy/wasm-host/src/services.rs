//! The services every plugin of a host shares: shared data, queues, metrics, callouts.

use crate::callout::CalloutDispatcher;
use crate::metrics::MetricsRegistry;
use crate::queues::SharedQueues;
use crate::shared_data::SharedDataBackend;
use crate::types::{TRAPS_METRIC, VM_RESTARTS_METRIC};
use std::sync::Arc;

/// What all plugins of a host share.
pub(crate) struct HostServices {
    pub(crate) shared_data: Arc<dyn SharedDataBackend>,
    pub(crate) queues: SharedQueues,
    pub(crate) metrics: MetricsRegistry,
    pub(crate) callouts: Arc<dyn CalloutDispatcher>,
}

impl HostServices {
    /// Counts a filter trap in the metrics (`wasm_filter_traps_total{plugin=...}`).
    pub(crate) fn record_trap(&self, plugin: &str) {
        self.count(plugin, TRAPS_METRIC);
    }

    /// Counts a VM started in place of a broken one (`wasm_filter_vm_restarts_total`).
    pub(crate) fn record_vm_restart(&self, plugin: &str) {
        self.count(plugin, VM_RESTARTS_METRIC);
    }

    fn count(&self, plugin: &str, name: &str) {
        if let Ok(id) = self
            .metrics
            .define(plugin, crate::abi::MetricType::Counter, name)
        {
            self.metrics.increment(id, 1);
        }
    }
}
