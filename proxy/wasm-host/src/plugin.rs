//! Plugins: a compiled filter module plus its configuration, with one VM per worker thread.

use crate::call_mode::CallMode;
use crate::epoch::ticks_for;
use crate::services::HostServices;
use crate::state::HostState;
use crate::stream::HttpStream;
use crate::types::{PluginSpec, StreamInfo};
use crate::vm::{PluginVm, SharedVm};
use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};
use wasmtime::{Engine, InstancePre, StoreLimits, StoreLimitsBuilder};

/// What every VM of a plugin shares.
pub(crate) struct PluginShared {
    pub(crate) spec: PluginSpec,
    pub(crate) services: Arc<HostServices>,
}

/// The compiled plugin and its VM-recreation state.
pub(crate) struct PluginInner {
    id: u64,
    pub(crate) shared: Arc<PluginShared>,
    pub(crate) engine: Engine,
    pub(crate) instance_pre: InstancePre<HostState>,
    /// How its VMs call the guest (fixed by the host calls linked into `instance_pre`).
    pub(crate) calls: CallMode,
    restarts: Mutex<RestartState>,
}

/// Start-up failures in a row, and when the next start may be tried.
struct RestartState {
    failures: u32,
    next_attempt: Option<Instant>,
}

/// A worker thread's VMs of one plugin. VMs hold their plugin, so the thread-local map cannot
/// tell by itself when a plugin is gone; `loaded` dies with the last [`Plugin`] handle.
struct ThreadVms {
    vms: Vec<SharedVm>,
    loaded: Weak<RootVm>,
    /// Which VM the next request takes when all are busy.
    next: usize,
}

/// VMs a thread keeps of a plugin whose host calls may wait (shared data in Redis): a callback
/// holds its VM while it waits, so other requests need other VMs for the waits to overlap. A VM
/// whose calls never wait is never held across a wait, and one per thread is enough.
const VMS_PER_THREAD_WHEN_WAITING: usize = 4;

thread_local! {
    /// This worker thread's VMs of each plugin, by plugin id.
    static THREAD_VMS: RefCell<HashMap<u64, ThreadVms>> = RefCell::new(HashMap::new());
    /// Plugins whose VM this thread is starting, so concurrent requests start only one.
    static STARTING: RefCell<HashSet<u64>> = RefCell::new(HashSet::new());
}

/// Marks a plugin's VM as being started on this thread until dropped.
struct StartingGuard(u64);

impl StartingGuard {
    /// `None` when this thread is already starting the plugin's VM.
    fn claim(plugin_id: u64) -> Option<Self> {
        // `then`, not `then_some`: a guard made eagerly and dropped would release another's claim.
        STARTING
            .with(|starting| starting.borrow_mut().insert(plugin_id))
            .then(|| Self(plugin_id))
    }
}

impl Drop for StartingGuard {
    fn drop(&mut self) {
        STARTING.with(|starting| starting.borrow_mut().remove(&self.0));
    }
}

impl PluginInner {
    pub(crate) fn new(
        id: u64,
        shared: Arc<PluginShared>,
        engine: Engine,
        instance_pre: InstancePre<HostState>,
        calls: CallMode,
    ) -> Self {
        Self {
            id,
            shared,
            engine,
            instance_pre,
            calls,
            restarts: Mutex::new(RestartState {
                failures: 0,
                next_attempt: None,
            }),
        }
    }

    pub(crate) fn store_limits(&self) -> StoreLimits {
        StoreLimitsBuilder::new()
            .memory_size(self.shared.spec.limits.max_memory_bytes)
            .instances(1)
            .memories(1)
            .tables(8)
            .table_elements(1 << 16)
            .build()
    }

    pub(crate) fn start_ticks(&self) -> u64 {
        ticks_for(self.shared.spec.limits.start_deadline)
    }
}

/// A loaded filter. Cheap to clone; use it from any worker thread. When the last clone is dropped
/// (say, after a configuration reload), its root VM stops, and each thread releases its VM of the
/// plugin the next time it adopts one; streams still running keep theirs until they finish.
#[derive(Clone)]
pub struct Plugin {
    pub(crate) inner: Arc<PluginInner>,
    loaded: Arc<RootVm>,
}

/// The VM started when the plugin loaded, as Envoy's main-thread VM: its root context has run
/// `on_vm_start` and `on_configure`, and gets `on_tick` on its period whether or not requests
/// come. Requests run on per-thread VMs; this one lives exactly as long as the plugin.
pub(crate) struct RootVm {
    _vm: SharedVm,
}

impl Plugin {
    /// The plugin's name.
    pub fn name(&self) -> &str {
        &self.inner.shared.spec.name
    }

    /// The plugin's spec.
    pub fn spec(&self) -> &PluginSpec {
        &self.inner.shared.spec
    }

    /// Wraps a freshly loaded plugin and the VM that loaded it.
    pub(crate) fn new(inner: Arc<PluginInner>, root_vm: SharedVm) -> Self {
        Self {
            inner,
            loaded: Arc::new(RootVm { _vm: root_vm }),
        }
    }

    /// Alive while any clone of this plugin is.
    pub(crate) fn liveness(&self) -> Weak<RootVm> {
        Arc::downgrade(&self.loaded)
    }

    /// Adds `vm` to this thread's VMs, releasing this thread's VMs of plugins that are gone so
    /// that their pool slots return.
    fn adopt(&self, vm: SharedVm) {
        THREAD_VMS.with(|vms| {
            let mut vms = vms.borrow_mut();
            vms.retain(|_, held| held.loaded.strong_count() > 0);
            let loaded = self.liveness();
            let held = vms.entry(self.inner.id).or_insert(ThreadVms {
                vms: Vec::new(),
                loaded,
                next: 0,
            });
            held.vms.retain(|vm| !vm.broken.load(Ordering::Acquire));
            held.vms.push(vm);
        });
    }

    /// Starts a new HTTP stream. Its filter context is created on this thread's VM when the
    /// first phase runs, so a request that arrives while a broken VM is being replaced is served
    /// by the replacement. Never fails: a filter that cannot run yields its failure policy's
    /// verdict from every phase.
    pub fn new_http_stream(&self, info: StreamInfo) -> HttpStream {
        HttpStream {
            plugin: self.clone(),
            pending: Some(info),
            vm: None,
            id: 0,
            bypass: false,
            request_id: None,
        }
    }

    /// Creates the stream's context on this thread's VM; `None` when no healthy VM can run it.
    pub(crate) async fn create_context(&self, info: StreamInfo) -> Option<(SharedVm, u32)> {
        let cell = self.vm_for_this_thread().await?;
        let id = cell.lock().await.create_stream(info).await.ok()?;
        Some((cell, id))
    }

    /// A healthy VM of this thread for a new stream: a free one, else a new one while the thread
    /// has fewer than its pool allows, else the next busy one in turn. Broken VMs are dropped
    /// and replaced. Start-up failures back off; meanwhile (and while another request of this
    /// thread starts a VM) a thread without a healthy VM has none.
    async fn vm_for_this_thread(&self) -> Option<SharedVm> {
        let pool_size = match self.inner.calls {
            CallMode::Synchronous => 1,
            CallMode::Suspendable => VMS_PER_THREAD_WHEN_WAITING,
        };
        let (choice, healthy, replaced) = THREAD_VMS.with(|vms| {
            let mut vms = vms.borrow_mut();
            let Some(held) = vms.get_mut(&self.inner.id) else {
                return (None, 0, false);
            };
            // Broken VMs stay listed until a replacement is adopted, so it is counted as one.
            let is_healthy = |vm: &&SharedVm| !vm.broken.load(Ordering::Acquire);
            let healthy = held.vms.iter().filter(is_healthy).count();
            let replaced = healthy < held.vms.len();
            let free = held
                .vms
                .iter()
                .filter(is_healthy)
                .find(|vm| !vm.is_locked())
                .cloned();
            let choice = free.or_else(|| {
                if healthy < pool_size {
                    return None;
                }
                held.next = held.next.wrapping_add(1);
                held.vms
                    .iter()
                    .filter(is_healthy)
                    .nth(held.next % healthy)
                    .cloned()
            });
            (choice, healthy, replaced)
        });
        if choice.is_some() {
            return choice;
        }
        let busy = || {
            THREAD_VMS.with(|vms| {
                vms.borrow().get(&self.inner.id).and_then(|held| {
                    held.vms
                        .iter()
                        .find(|vm| !vm.broken.load(Ordering::Acquire))
                        .cloned()
                })
            })
        };
        if !self.may_start_vm() {
            return busy();
        }
        let Some(_starting) = StartingGuard::claim(self.inner.id) else {
            return busy();
        };
        match PluginVm::start(&self.inner).await {
            Ok(vm) => {
                self.inner.restarts.lock().expect("restart lock").failures = 0;
                self.adopt(vm.clone());
                if replaced {
                    self.inner.shared.services.record_vm_restart(self.name());
                    tracing::info!(plugin = self.name(), "filter VM replaced after a failure");
                }
                Some(vm)
            }
            Err(error) => {
                let mut restarts = self.inner.restarts.lock().expect("restart lock");
                restarts.failures = restarts.failures.saturating_add(1);
                let backoff = Duration::from_millis(100 << restarts.failures.min(9))
                    .min(Duration::from_secs(30));
                restarts.next_attempt = Some(Instant::now() + backoff);
                tracing::error!(plugin = self.name(), %error, ?backoff, "cannot start filter VM");
                drop(restarts);
                (healthy > 0).then(busy).flatten()
            }
        }
    }

    fn may_start_vm(&self) -> bool {
        let restarts = self.inner.restarts.lock().expect("restart lock");
        restarts.next_attempt.is_none_or(|at| Instant::now() >= at)
    }
}
