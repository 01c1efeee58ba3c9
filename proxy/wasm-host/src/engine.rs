//! [`Host`]: the wasmtime engine, the on-disk module cache, the CPU-deadline ticker, and the
//! services every plugin shares (shared data, queues, metrics, callouts).

use crate::call_mode::CallMode;
use crate::callout::{CalloutDispatcher, NoClusters};
use crate::epoch::EPOCH_TICK;
use crate::metrics::MetricsRegistry;
use crate::plugin::{Plugin, PluginInner, PluginShared, RootVm};
use crate::queues::SharedQueues;
use crate::services::HostServices;
use crate::shared_data::{MemoryLimits, MemorySharedData, SharedDataBackend};
use crate::types::{LoadError, PluginSpec};
use crate::vm::PluginVm;
use sha2::{Digest, Sha256};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use wasm_engine_common::{EpochTicker, ModuleCache};
use wasmtime::{
    Config, Engine, InstanceAllocationStrategy, Linker, Module, PoolingAllocationConfig,
};

/// Options for [`Host::new`].
pub struct HostOptions {
    /// Directory for compiled modules, keyed by content hash; `None` disables the cache.
    pub cache_dir: Option<PathBuf>,
    /// Where shared data lives (default: process memory, bounded).
    pub shared_data: Arc<dyn SharedDataBackend>,
    /// Transport for `proxy_http_call` (default: no clusters).
    pub callouts: Arc<dyn CalloutDispatcher>,
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

/// A proxy-wasm host. Create one per process; load plugins from it.
pub struct Host {
    engine: Engine,
    services: Arc<HostServices>,
    modules: ModuleCache,
    in_use: Mutex<Vec<ModuleInUse>>,
    next_plugin_id: AtomicU64,
    _ticker: EpochTicker,
}

/// A compiled module and a plugin made from it. Loading the same `.wasm` while such a plugin is
/// alive (a configuration reload beside the generation serving, or one filter in two chains)
/// reuses the module instead of compiling it again; once its plugins are gone, so is the entry.
struct ModuleInUse {
    digest: [u8; 32],
    module: Module,
    plugin: Weak<RootVm>,
}

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
        let modules = ModuleCache::new(options.cache_dir)?;
        Ok(Self {
            engine,
            services: Arc::new(HostServices {
                shared_data: options.shared_data,
                queues: SharedQueues::default(),
                metrics: MetricsRegistry::default(),
                callouts: options.callouts,
            }),
            modules,
            in_use: Mutex::new(Vec::new()),
            next_plugin_id: AtomicU64::new(1),
            _ticker: ticker,
        })
    }

    /// Filter-defined metrics (and filter trap counts), for the proxy's `/metrics`.
    pub fn metrics(&self) -> &MetricsRegistry {
        &self.services.metrics
    }

    /// Compiles `wasm` (or loads it from the cache), then starts the plugin's root VM, which checks
    /// that the filter accepts its configuration and then ticks for as long as the plugin lives.
    /// Must run inside a tokio runtime that outlives the plugin (its ticks run there).
    pub async fn load_plugin(&self, wasm: &[u8], spec: PluginSpec) -> Result<Plugin, LoadError> {
        let digest: [u8; 32] = Sha256::digest(wasm).into();
        let module = match self.module_in_use(&digest) {
            Some(module) => module,
            None => self.compile(wasm)?,
        };
        let exports: Vec<&str> = module.exports().map(|e| e.name()).collect();
        if !exports
            .iter()
            .any(|e| *e == "proxy_abi_version_0_2_1" || *e == "proxy_abi_version_0_2_0")
        {
            return Err(LoadError::Abi(
                "no proxy_abi_version_0_2_1 or proxy_abi_version_0_2_0 export".into(),
            ));
        }
        let calls = if self.services.shared_data.answers_immediately() {
            CallMode::Synchronous
        } else {
            CallMode::Suspendable
        };
        let mut linker = Linker::new(&self.engine);
        crate::hostcalls::add_to_linker(&mut linker, calls)
            .map_err(|e| LoadError::Abi(e.to_string()))?;
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
            calls,
        ));
        let root_vm = PluginVm::start(&inner).await?;
        let plugin = Plugin::new(inner, root_vm);
        self.in_use.lock().expect("modules lock").push(ModuleInUse {
            digest,
            module,
            plugin: plugin.liveness(),
        });
        Ok(plugin)
    }

    /// How many distinct compiled modules live plugins use.
    pub fn modules_in_use(&self) -> usize {
        let mut in_use = self.in_use.lock().expect("modules lock");
        in_use.retain(|entry| entry.plugin.strong_count() > 0);
        let mut digests: Vec<_> = in_use.iter().map(|entry| entry.digest).collect();
        digests.sort_unstable();
        digests.dedup();
        digests.len()
    }

    /// The compiled module of a live plugin loaded from the same bytes, dropping entries whose
    /// plugins are gone.
    fn module_in_use(&self, digest: &[u8; 32]) -> Option<Module> {
        let mut in_use = self.in_use.lock().expect("modules lock");
        in_use.retain(|entry| entry.plugin.strong_count() > 0);
        let entry = in_use.iter().find(|entry| entry.digest == *digest)?;
        Some(entry.module.clone())
    }

    fn compile(&self, wasm: &[u8]) -> Result<Module, LoadError> {
        self.modules
            .compile(&self.engine, wasm)
            .map_err(|e| LoadError::Compile(format!("{e:#}")))
    }
}
