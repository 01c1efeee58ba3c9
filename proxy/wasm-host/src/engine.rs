//! [`Host`]: the wasmtime engine, the on-disk module cache, the CPU-deadline ticker, and the
//! services every plugin shares (shared data, queues, metrics, callouts).

use crate::callout::{HttpCallDispatcher, NoClusters};
use crate::metrics::MetricsRegistry;
use crate::plugin::{LoadError, Plugin, PluginInner, PluginShared, PluginSpec};
use crate::queues::SharedQueues;
use crate::shared_data::{MemoryLimits, MemorySharedData, SharedDataBackend};
use crate::vm::PluginVm;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use wasm_engine_common::{epoch_ticks, EpochTicker, ModuleCache};
use wasmtime::{
    Config, Engine, InstanceAllocationStrategy, Linker, Module, PoolingAllocationConfig,
};

/// How often the engine's epoch advances; CPU deadlines are whole multiples of it.
pub const EPOCH_TICK: Duration = Duration::from_millis(5);

/// Epoch ticks for a deadline (at least one full tick, plus one for the partial tick in progress).
pub(crate) fn ticks_for(deadline: Duration) -> u64 {
    epoch_ticks(EPOCH_TICK, deadline)
}

/// Options for [`Host::new`].
pub struct HostOptions {
    /// Directory for compiled modules, keyed by content hash; `None` disables the cache.
    pub cache_dir: Option<PathBuf>,
    /// Where shared data lives (default: process memory, bounded).
    pub shared_data: Arc<dyn SharedDataBackend>,
    /// Transport for `proxy_http_call` (default: no clusters).
    pub callouts: Arc<dyn HttpCallDispatcher>,
}

impl Default for HostOptions {
    fn default() -> Self {
        Self {
            cache_dir: None,
            shared_data: Arc::new(MemorySharedData::new(MemoryLimits::default())),
            callouts: Arc::new(NoClusters),
        }
    }
}

/// What all plugins of a host share.
pub(crate) struct HostServices {
    pub(crate) shared_data: Arc<dyn SharedDataBackend>,
    pub(crate) queues: SharedQueues,
    pub(crate) metrics: MetricsRegistry,
    pub(crate) callouts: Arc<dyn HttpCallDispatcher>,
}

impl HostServices {
    /// Counts a filter trap in the metrics (`wasm_filter_traps_total{plugin=...}`).
    pub(crate) fn record_trap(&self, plugin: &str) {
        if let Ok(id) = self.metrics.define(
            plugin,
            crate::abi::MetricType::Counter,
            "filter_traps_total",
        ) {
            self.metrics.increment(id, 1);
        }
    }
}

/// A proxy-wasm host. Create one per process; load plugins from it.
pub struct Host {
    engine: Engine,
    services: Arc<HostServices>,
    modules: ModuleCache,
    next_plugin_id: AtomicU64,
    _ticker: EpochTicker,
}

/// Compiled filter modules kept in memory: a reload that keeps a `.wasm` reuses its module.
const RECENT_MODULES: usize = 16;

/// VM slots for the whole process: one VM per plugin per worker thread, plus reloads.
const POOLED_VMS: u32 = 256;

/// The pooling allocator's limits. Memories may reserve the whole 32-bit space; each plugin's own
/// cap is enforced by its store limits, so one pool serves every plugin.
fn pooling_config() -> PoolingAllocationConfig {
    let mut pooling = PoolingAllocationConfig::default();
    pooling
        .total_core_instances(POOLED_VMS)
        .total_memories(POOLED_VMS)
        .total_tables(POOLED_VMS)
        .total_stacks(POOLED_VMS)
        .max_memory_size(4 << 30);
    pooling
}

impl Host {
    /// Creates the engine and starts the epoch ticker thread.
    pub fn new(options: HostOptions) -> wasmtime::Result<Self> {
        let mut config = Config::new();
        config.epoch_interruption(true);
        config.cranelift_opt_level(wasmtime::OptLevel::Speed);
        // Every callback runs on a fiber; pooling reuses fiber stacks, instances and memories
        // instead of an mmap/munmap per call (about a tenth of a filtered request's CPU).
        config.allocation_strategy(InstanceAllocationStrategy::Pooling(pooling_config()));
        let engine = Engine::new(&config)?;
        let ticker = EpochTicker::start(&engine, EPOCH_TICK)?;
        let modules = ModuleCache::new(options.cache_dir)?.keeping_recent(RECENT_MODULES);
        Ok(Self {
            engine,
            services: Arc::new(HostServices {
                shared_data: options.shared_data,
                queues: SharedQueues::default(),
                metrics: MetricsRegistry::default(),
                callouts: options.callouts,
            }),
            modules,
            next_plugin_id: AtomicU64::new(1),
            _ticker: ticker,
        })
    }

    /// Filter-defined metrics (and filter trap counts), for the proxy's `/metrics`.
    pub fn metrics(&self) -> &MetricsRegistry {
        &self.services.metrics
    }

    /// Compiles `wasm` (or loads it from the cache), then starts one VM on this thread to check that
    /// the filter accepts its configuration. Must run inside a tokio runtime.
    pub async fn load_plugin(&self, wasm: &[u8], spec: PluginSpec) -> Result<Plugin, LoadError> {
        let module = self.compile(wasm)?;
        let exports: Vec<&str> = module.exports().map(|e| e.name()).collect();
        if !exports
            .iter()
            .any(|e| *e == "proxy_abi_version_0_2_1" || *e == "proxy_abi_version_0_2_0")
        {
            return Err(LoadError::Abi(
                "no proxy_abi_version_0_2_1 or proxy_abi_version_0_2_0 export".into(),
            ));
        }
        let mut linker = Linker::new(&self.engine);
        crate::hostcalls::add_to_linker(&mut linker).map_err(|e| LoadError::Abi(e.to_string()))?;
        crate::hostcalls::add_fallbacks(&mut linker, &module)
            .map_err(|e| LoadError::Abi(e.to_string()))?;
        let instance_pre = linker
            .instantiate_pre(&module)
            .map_err(|e| LoadError::Abi(format!("{e:#}")))?;
        let shared = Arc::new(PluginShared {
            spec,
            services: self.services.clone(),
        });
        let id = self.next_plugin_id.fetch_add(1, Ordering::Relaxed);
        let inner = Arc::new(PluginInner::new(
            id,
            shared,
            self.engine.clone(),
            instance_pre,
        ));
        let first_vm = PluginVm::start(&inner).await?;
        let plugin = Plugin::new(inner);
        plugin.adopt(first_vm);
        Ok(plugin)
    }

    fn compile(&self, wasm: &[u8]) -> Result<Module, LoadError> {
        self.modules
            .compile(&self.engine, wasm)
            .map_err(|e| LoadError::Compile(format!("{e:#}")))
    }
}
