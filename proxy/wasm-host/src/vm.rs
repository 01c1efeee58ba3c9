//! One instance of a plugin's module (a "VM", as Envoy says): its store, its callbacks, and the
//! background task that delivers ticks and queue notifications to its root context.

use crate::abi::Action;
use crate::call_mode::CallMode;
use crate::callout::{CalloutResponse, GrpcChannels, GrpcEvent, GrpcStatus};
use crate::epoch::ticks_for;
use crate::grpc_call::UnaryResponse;
use crate::hostcalls::flush_stdio;
use crate::plugin::PluginInner;
use crate::state::{GrpcDelivery, GuestClock, HostState, StreamState};
use crate::types::{LoadError, StreamInfo};
use crate::vm_lock::{VmGuard, VmLock};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;
use tokio::sync::mpsc::UnboundedReceiver;
use tokio::sync::Notify;
use wasmtime::{Instance, Store, TypedFunc, WasmParams, WasmResults};

/// The context id of every VM's root context (stream contexts count up from it).
pub(crate) const ROOT_CONTEXT_ID: u32 = 1;

/// A VM shared by the streams of one worker thread.
pub(crate) struct VmCell {
    /// Set once the VM trapped; a broken VM never runs guest code again.
    pub(crate) broken: AtomicBool,
    vm: VmLock<PluginVm>,
}

impl VmCell {
    /// Whether a task holds the VM now (a hint: it may change at once).
    pub(crate) fn is_locked(&self) -> bool {
        self.vm.is_locked()
    }

    /// Locks the VM; see [`VmLock`] for why it never queues.
    pub(crate) async fn lock(&self) -> VmGuard<'_, PluginVm> {
        self.vm.lock().await
    }
}

pub(crate) type SharedVm = Arc<VmCell>;

/// The HTTP phases a stream goes through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    RequestHeaders,
    RequestBody,
    RequestTrailers,
    ResponseHeaders,
    ResponseBody,
    ResponseTrailers,
}

/// The guest exports the host calls. Missing optional callbacks are skipped, as in Envoy.
struct Callbacks {
    on_context_create: TypedFunc<(i32, i32), ()>,
    on_vm_start: Option<TypedFunc<(i32, i32), i32>>,
    on_configure: Option<TypedFunc<(i32, i32), i32>>,
    on_request_headers: Option<TypedFunc<(i32, i32, i32), i32>>,
    on_request_body: Option<TypedFunc<(i32, i32, i32), i32>>,
    on_request_trailers: Option<TypedFunc<(i32, i32), i32>>,
    on_response_headers: Option<TypedFunc<(i32, i32, i32), i32>>,
    on_response_body: Option<TypedFunc<(i32, i32, i32), i32>>,
    on_response_trailers: Option<TypedFunc<(i32, i32), i32>>,
    on_done: Option<TypedFunc<i32, i32>>,
    on_log: Option<TypedFunc<i32, ()>>,
    on_delete: Option<TypedFunc<i32, ()>>,
    on_tick: Option<TypedFunc<i32, ()>>,
    on_queue_ready: Option<TypedFunc<(i32, i32), ()>>,
    on_http_call_response: Option<TypedFunc<CallResponseParams, ()>>,
    on_grpc_receive_initial_metadata: Option<TypedFunc<GrpcParams, ()>>,
    on_grpc_receive: Option<TypedFunc<GrpcParams, ()>>,
    on_grpc_receive_trailing_metadata: Option<TypedFunc<GrpcParams, ()>>,
    on_grpc_close: Option<TypedFunc<GrpcParams, ()>>,
}

/// `proxy_on_grpc_*(context, token, count)`: the metadata's pairs, the message's size, or the
/// closing status code.
type GrpcParams = (i32, i32, i32);

/// Picks one of the `proxy_on_grpc_*` callbacks.
type GrpcCallback = fn(&Callbacks) -> Option<&TypedFunc<GrpcParams, ()>>;

/// Events of one gRPC call buffered between its transport and its guest: past it, the transport
/// stops reading and HTTP/2 flow control holds the upstream back.
const GRPC_EVENTS_BUFFERED: usize = 16;

/// `proxy_on_http_call_response(context, token, headers, body size, trailers)`.
type CallResponseParams = (i32, i32, i32, i32, i32);

fn export<P: WasmParams, R: WasmResults>(
    instance: &Instance,
    store: &mut Store<HostState>,
    name: &str,
) -> Result<Option<TypedFunc<P, R>>, LoadError> {
    if instance.get_func(&mut *store, name).is_none() {
        return Ok(None);
    }
    instance
        .get_typed_func::<P, R>(&mut *store, name)
        .map(Some)
        .map_err(|e| LoadError::Abi(format!("export {name} has the wrong signature: {e}")))
}

impl Callbacks {
    fn resolve(instance: &Instance, store: &mut Store<HostState>) -> Result<Self, LoadError> {
        Ok(Self {
            on_context_create: export(instance, store, "proxy_on_context_create")?.ok_or_else(
                || LoadError::Abi("the module does not export proxy_on_context_create".into()),
            )?,
            on_vm_start: export(instance, store, "proxy_on_vm_start")?,
            on_configure: export(instance, store, "proxy_on_configure")?,
            on_request_headers: export(instance, store, "proxy_on_request_headers")?,
            on_request_body: export(instance, store, "proxy_on_request_body")?,
            on_request_trailers: export(instance, store, "proxy_on_request_trailers")?,
            on_response_headers: export(instance, store, "proxy_on_response_headers")?,
            on_response_body: export(instance, store, "proxy_on_response_body")?,
            on_response_trailers: export(instance, store, "proxy_on_response_trailers")?,
            on_done: export(instance, store, "proxy_on_done")?,
            on_log: export(instance, store, "proxy_on_log")?,
            on_delete: export(instance, store, "proxy_on_delete")?,
            on_tick: export(instance, store, "proxy_on_tick")?,
            on_queue_ready: export(instance, store, "proxy_on_queue_ready")?,
            on_http_call_response: export(instance, store, "proxy_on_http_call_response")?,
            on_grpc_receive_initial_metadata: export(
                instance,
                store,
                "proxy_on_grpc_receive_initial_metadata",
            )?,
            on_grpc_receive: export(instance, store, "proxy_on_grpc_receive")?,
            on_grpc_receive_trailing_metadata: export(
                instance,
                store,
                "proxy_on_grpc_receive_trailing_metadata",
            )?,
            on_grpc_close: export(instance, store, "proxy_on_grpc_close")?,
        })
    }
}

/// Calls `func` the way the VM's guest calls run: plainly, or on a fiber that host calls may
/// suspend.
async fn call_guest<P, R>(
    mode: CallMode,
    store: &mut Store<HostState>,
    func: &TypedFunc<P, R>,
    params: P,
) -> wasmtime::Result<R>
where
    P: WasmParams + Sync,
    R: WasmResults + Sync,
{
    match mode {
        CallMode::Synchronous => func.call(store, params),
        CallMode::Suspendable => func.call_async(store, params).await,
    }
}

/// The guest trapped (or ran out of time or memory); the VM is now broken.
#[derive(Debug)]
pub(crate) struct Trapped;

/// A plugin instance: a wasmtime store plus the guest's callbacks.
pub(crate) struct PluginVm {
    pub(crate) store: Store<HostState>,
    callbacks: Callbacks,
    plugin: Arc<PluginInner>,
    next_context_id: u32,
    self_ref: Weak<VmCell>,
}

impl PluginVm {
    /// Instantiates the module and runs its start-up: `_initialize`, the root context,
    /// `on_vm_start` and `on_configure`. Must run inside a tokio runtime (timers and callouts).
    pub(crate) async fn start(plugin: &Arc<PluginInner>) -> Result<SharedVm, LoadError> {
        let (queue_tx, queue_rx) = tokio::sync::mpsc::unbounded_channel();
        let tick_changed = Arc::new(Notify::new());
        let state = HostState {
            plugin: plugin.shared.clone(),
            limits: plugin.store_limits(),
            memory: None,
            allocate: None,
            calls: plugin.calls,
            root_context_id: ROOT_CONTEXT_ID,
            effective_context: ROOT_CONTEXT_ID,
            streams: HashMap::new(),
            root_properties: HashMap::new(),
            tick_period: None,
            tick_changed: tick_changed.clone(),
            queue_notify: queue_tx,
            next_callout_token: 0,
            callouts_in_flight: 0,
            new_callouts: Vec::new(),
            callout_response: None,
            grpc_calls: HashMap::new(),
            new_grpc_calls: Vec::new(),
            grpc_delivery: GrpcDelivery::default(),
            last_error_log: None,
            stdio_lines: Default::default(),
            clock: GuestClock::start(plugin.shared.spec.limits.start_deadline),
        };
        let mut store = Store::new(&plugin.engine, state);
        store.limiter(|state| &mut state.limits);
        store.epoch_deadline_trap();
        store.set_epoch_deadline(plugin.start_ticks());
        let instance = match plugin.calls {
            CallMode::Synchronous => plugin.instance_pre.instantiate(&mut store),
            CallMode::Suspendable => plugin.instance_pre.instantiate_async(&mut store).await,
        }
        .map_err(|e| LoadError::Start(format!("instantiation failed: {e:#}")))?;
        let memory = instance
            .get_memory(&mut store, "memory")
            .ok_or_else(|| LoadError::Abi("the module does not export its memory".into()))?;
        let allocate = match export::<i32, i32>(&instance, &mut store, "proxy_on_memory_allocate")?
        {
            Some(f) => f,
            None => export::<i32, i32>(&instance, &mut store, "malloc")?.ok_or_else(|| {
                LoadError::Abi(
                    "the module exports neither proxy_on_memory_allocate nor malloc".into(),
                )
            })?,
        };
        store.data_mut().memory = Some(memory);
        store.data_mut().allocate = Some(allocate);
        let callbacks = Callbacks::resolve(&instance, &mut store)?;
        for init in ["_initialize", "_start"] {
            if let Some(f) = export::<(), ()>(&instance, &mut store, init)? {
                call_guest(plugin.calls, &mut store, &f, ())
                    .await
                    .map_err(|e| LoadError::Start(format!("{init} trapped: {e:#}")))?;
                break;
            }
        }
        let cell = Arc::new_cyclic(|self_ref| VmCell {
            broken: AtomicBool::new(false),
            vm: VmLock::new(PluginVm {
                store,
                callbacks,
                plugin: plugin.clone(),
                next_context_id: ROOT_CONTEXT_ID + 1,
                self_ref: self_ref.clone(),
            }),
        });
        {
            let mut vm = cell.lock().await;
            vm.start_root().await?;
        }
        spawn_background(Arc::downgrade(&cell), tick_changed, queue_rx);
        Ok(cell)
    }

    async fn start_root(&mut self) -> Result<(), LoadError> {
        let root = ROOT_CONTEXT_ID as i32;
        let deadline = self.plugin.shared.spec.limits.start_deadline;
        let spec = self.plugin.shared.spec.clone();
        self.invoke_with(
            ROOT_CONTEXT_ID,
            |c| Some(&c.on_context_create),
            (root, 0),
            deadline,
        )
        .await
        .map_err(|_| self.start_error("proxy_on_context_create trapped"))?;
        let started = self
            .invoke_with(
                ROOT_CONTEXT_ID,
                |c| c.on_vm_start.as_ref(),
                (root, spec.vm_configuration.len() as i32),
                deadline,
            )
            .await
            .map_err(|_| self.start_error("on_vm_start trapped"))?;
        if started == Some(0) {
            return Err(self.refused("on_vm_start returned false"));
        }
        let configured = self
            .invoke_with(
                ROOT_CONTEXT_ID,
                |c| c.on_configure.as_ref(),
                (root, spec.plugin_configuration.len() as i32),
                deadline,
            )
            .await
            .map_err(|_| self.start_error("on_configure trapped"))?;
        if configured == Some(0) {
            return Err(self.refused("on_configure returned false"));
        }
        Ok(())
    }

    fn start_error(&mut self, what: &str) -> LoadError {
        LoadError::Start(format!("{what}{}", self.last_guest_error()))
    }

    fn refused(&mut self, what: &str) -> LoadError {
        LoadError::Refused(format!("{what}{}", self.last_guest_error()))
    }

    fn last_guest_error(&mut self) -> String {
        self.store
            .data_mut()
            .last_error_log
            .take()
            .map(|m| format!(" (filter logged: {m})"))
            .unwrap_or_default()
    }

    /// Calls the guest callback `select` picks (if the guest exports it) with the per-callback CPU
    /// deadline. A trap breaks the VM for good.
    async fn invoke<P, R>(
        &mut self,
        context_id: u32,
        select: impl FnOnce(&Callbacks) -> Option<&TypedFunc<P, R>>,
        params: P,
    ) -> Result<Option<R>, Trapped>
    where
        P: WasmParams + Sync,
        R: WasmResults + Sync,
    {
        let deadline = self.plugin.shared.spec.limits.callback_deadline;
        self.invoke_with(context_id, select, params, deadline).await
    }

    async fn invoke_with<P, R>(
        &mut self,
        context_id: u32,
        select: impl FnOnce(&Callbacks) -> Option<&TypedFunc<P, R>>,
        params: P,
        deadline: Duration,
    ) -> Result<Option<R>, Trapped>
    where
        P: WasmParams + Sync,
        R: WasmResults + Sync,
    {
        if self.is_broken() {
            return Err(Trapped);
        }
        // Borrowed, not cloned: a clone copies wasmtime's type registration on every callback.
        let Some(func) = select(&self.callbacks) else {
            return Ok(None);
        };
        self.store.data_mut().effective_context = context_id;
        if self.plugin.calls == CallMode::Suspendable {
            // Only a guest that can be suspended has waits to give back (see `GuestClock`).
            self.store.data_mut().clock = GuestClock::start(deadline);
        }
        self.store.set_epoch_deadline(ticks_for(deadline));
        let result = call_guest(self.plugin.calls, &mut self.store, func, params).await;
        flush_stdio(self.store.data_mut());
        self.start_callouts();
        self.start_grpc_calls();
        match result {
            Ok(value) => Ok(Some(value)),
            Err(error) => {
                self.mark_broken(&error);
                Err(Trapped)
            }
        }
    }

    fn is_broken(&self) -> bool {
        self.self_ref
            .upgrade()
            .is_some_and(|cell| cell.broken.load(Ordering::Acquire))
    }

    fn mark_broken(&mut self, error: &wasmtime::Error) {
        let plugin = &self.plugin.shared.spec.name;
        let reason = match error.downcast_ref::<wasmtime::Trap>() {
            Some(wasmtime::Trap::Interrupt) => "exceeded its CPU deadline".to_string(),
            _ => format!("trapped: {error:#}"),
        };
        tracing::error!(plugin, "filter {reason}; this VM will not run again");
        self.plugin.shared.services.record_trap(plugin);
        if let Some(cell) = self.self_ref.upgrade() {
            cell.broken.store(true, Ordering::Release);
        }
        // Wake every paused stream so it applies the failure policy now.
        for stream in self.store.data().streams.values() {
            stream.wake.notify_one();
        }
    }

    /// Starts the callouts the last callback asked for; each completes on its own task.
    fn start_callouts(&mut self) {
        let pending = std::mem::take(&mut self.store.data_mut().new_callouts);
        for callout in pending {
            let dispatcher = self.plugin.shared.services.callouts.clone();
            let cell = self.self_ref.clone();
            tokio::spawn(async move {
                let call = dispatcher.call(&callout.cluster, callout.request.clone());
                let response = tokio::time::timeout(callout.request.timeout, call)
                    .await
                    .ok()
                    .flatten();
                let Some(cell) = cell.upgrade() else { return };
                let mut vm = cell.lock().await;
                vm.deliver_callout(callout.context_id, callout.token, response)
                    .await;
            });
        }
    }

    async fn deliver_callout(
        &mut self,
        context_id: u32,
        token: u32,
        response: Option<CalloutResponse>,
    ) {
        self.store.data_mut().callouts_in_flight -= 1;
        let is_stream = context_id != ROOT_CONTEXT_ID;
        if is_stream && !self.store.data().streams.contains_key(&context_id) {
            return; // the request finished; Envoy cancels its callouts too
        }
        let sizes = response.as_ref().map_or((0, 0, 0), |r| {
            (
                r.headers.len() as i32,
                r.body.len() as i32,
                r.trailers.len() as i32,
            )
        });
        self.store.data_mut().callout_response = response;
        let _ = self
            .invoke(
                context_id,
                |c| c.on_http_call_response.as_ref(),
                (context_id as i32, token as i32, sizes.0, sizes.1, sizes.2),
            )
            .await;
        self.store.data_mut().callout_response = None;
        if let Some(stream) = self.store.data().streams.get(&context_id) {
            stream.wake.notify_one();
        }
    }

    /// Starts the gRPC calls the last callback opened (and did not cancel at once); each runs on
    /// its own task, which delivers the call's events to the guest in order.
    fn start_grpc_calls(&mut self) {
        let pending = std::mem::take(&mut self.store.data_mut().new_grpc_calls);
        for opened in pending {
            let Some(call) = self.store.data_mut().grpc_calls.get_mut(&opened.token) else {
                continue; // cancelled in the callback that opened it
            };
            let (events, mut received) = tokio::sync::mpsc::channel(GRPC_EVENTS_BUFFERED);
            let channels = GrpcChannels {
                outgoing: opened.outgoing,
                events,
            };
            let transport = self.plugin.shared.services.callouts.grpc_call(
                &opened.cluster,
                opened.call,
                channels,
            );
            let is_stream = call.is_stream;
            let (cell, token) = (self.self_ref.clone(), opened.token);
            let deliver = async move {
                let mut unary = UnaryResponse::default();
                while let Some(event) = received.recv().await {
                    let event = if is_stream {
                        event
                    } else {
                        match unary.push(event) {
                            Some(event) => event,
                            None => continue,
                        }
                    };
                    let Some(cell) = cell.upgrade() else { return };
                    let mut vm = cell.lock().await;
                    if !vm.deliver_grpc(token, event).await {
                        return;
                    }
                }
            };
            // Two tasks: cancelling a call (even from its own callback) aborts the transport only;
            // its events channel closes and the delivery ends after the event in hand.
            tokio::spawn(deliver);
            let task = tokio::spawn(transport);
            call.task = Some(task.abort_handle());
        }
    }

    /// Hands one event of gRPC call `token` to its guest. False once the call is over for the
    /// guest: closed, answered (unary), cancelled, or its context gone.
    async fn deliver_grpc(&mut self, token: u32, event: GrpcEvent) -> bool {
        let state = self.store.data_mut();
        let Some(call) = state.grpc_calls.get(&token) else {
            return false; // cancelled
        };
        let (context_id, is_stream) = (call.context_id, call.is_stream);
        let ends = matches!(event, GrpcEvent::Close(_)) || !is_stream;
        if ends {
            // Forgotten before the callback, so the guest cannot send on or cancel a closed call.
            state.grpc_calls.remove(&token);
        }
        let (ctx, token_arg) = (context_id as i32, token as i32);
        let mut delivery = GrpcDelivery::default();
        let (select, count): (GrpcCallback, usize) = match event {
            GrpcEvent::InitialMetadata(headers) => {
                let pairs = headers.len();
                delivery.initial_metadata = Some(headers);
                (|c| c.on_grpc_receive_initial_metadata.as_ref(), pairs)
            }
            GrpcEvent::Message(message) => {
                let size = message.len();
                delivery.message = Some(message);
                if !is_stream {
                    delivery.status = Some(GrpcStatus::new(GrpcStatus::OK, ""));
                }
                (|c| c.on_grpc_receive.as_ref(), size)
            }
            GrpcEvent::TrailingMetadata(headers) => {
                let pairs = headers.len();
                delivery.trailing_metadata = Some(headers);
                (|c| c.on_grpc_receive_trailing_metadata.as_ref(), pairs)
            }
            GrpcEvent::Close(status) => {
                let code = status.code as usize;
                delivery.status = Some(status);
                (|c| c.on_grpc_close.as_ref(), code)
            }
        };
        self.store.data_mut().grpc_delivery = delivery;
        let _ = self
            .invoke(context_id, select, (ctx, token_arg, count as i32))
            .await;
        self.store.data_mut().grpc_delivery = GrpcDelivery::default();
        if let Some(stream) = self.store.data().streams.get(&context_id) {
            stream.wake.notify_one();
        }
        !ends
    }

    /// Creates an HTTP context for a new stream.
    pub(crate) async fn create_stream(&mut self, info: StreamInfo) -> Result<u32, Trapped> {
        let id = self.next_context_id;
        self.next_context_id = self
            .next_context_id
            .checked_add(1)
            .unwrap_or(ROOT_CONTEXT_ID + 1);
        self.store
            .data_mut()
            .streams
            .insert(id, StreamState::new(info));
        self.invoke(
            id,
            |c| Some(&c.on_context_create),
            (id as i32, ROOT_CONTEXT_ID as i32),
        )
        .await?;
        Ok(id)
    }

    /// Runs one phase callback; `count` is the header count or body size.
    pub(crate) async fn call_phase(
        &mut self,
        id: u32,
        phase: Phase,
        count: usize,
        end_of_stream: bool,
    ) -> Result<Action, Trapped> {
        let (ctx, n, eos) = (id as i32, count as i32, i32::from(end_of_stream));
        let result = match phase {
            Phase::RequestHeaders => {
                self.invoke(id, |c| c.on_request_headers.as_ref(), (ctx, n, eos))
                    .await?
            }
            Phase::RequestBody => {
                self.invoke(id, |c| c.on_request_body.as_ref(), (ctx, n, eos))
                    .await?
            }
            Phase::RequestTrailers => {
                self.invoke(id, |c| c.on_request_trailers.as_ref(), (ctx, n))
                    .await?
            }
            Phase::ResponseHeaders => {
                self.invoke(id, |c| c.on_response_headers.as_ref(), (ctx, n, eos))
                    .await?
            }
            Phase::ResponseBody => {
                self.invoke(id, |c| c.on_response_body.as_ref(), (ctx, n, eos))
                    .await?
            }
            Phase::ResponseTrailers => {
                self.invoke(id, |c| c.on_response_trailers.as_ref(), (ctx, n))
                    .await?
            }
        };
        let action = result.map_or(Action::Continue, Action::from_i32);
        if action == Action::Continue {
            if let Some(stream) = self.stream(id) {
                stream.headers_passed_on(phase);
            }
        }
        Ok(action)
    }

    /// Ends a stream: `on_done`, `on_log`, `on_delete`, then forgets its state.
    pub(crate) async fn finish_stream(&mut self, id: u32) {
        let Some(stream) = self.stream(id) else {
            return;
        };
        stream.ending = true;
        let ctx = id as i32;
        let _ = self.invoke(id, |c| c.on_done.as_ref(), ctx).await;
        let _ = self.invoke(id, |c| c.on_log.as_ref(), ctx).await;
        let _ = self.invoke(id, |c| c.on_delete.as_ref(), ctx).await;
        let state = self.store.data_mut();
        state.streams.remove(&id);
        // As in Envoy, a context's gRPC calls end with it (dropping their state cancels them).
        state.grpc_calls.retain(|_, call| call.context_id != id);
    }

    /// The stream's state, for the stream driver.
    pub(crate) fn stream(&mut self, id: u32) -> Option<&mut StreamState> {
        self.store.data_mut().streams.get_mut(&id)
    }

    async fn on_tick(&mut self) {
        let _ = self
            .invoke(
                ROOT_CONTEXT_ID,
                |c| c.on_tick.as_ref(),
                ROOT_CONTEXT_ID as i32,
            )
            .await;
    }

    async fn on_queue_ready(&mut self, queue_id: u32) {
        let _ = self
            .invoke(
                ROOT_CONTEXT_ID,
                |c| c.on_queue_ready.as_ref(),
                (ROOT_CONTEXT_ID as i32, queue_id as i32),
            )
            .await;
    }
}

/// Delivers ticks and queue notifications to the root context until the VM breaks or is dropped.
fn spawn_background(
    cell: Weak<VmCell>,
    tick_changed: Arc<Notify>,
    mut queue_rx: UnboundedReceiver<u32>,
) {
    tokio::spawn(async move {
        loop {
            let period = {
                let Some(vm) = cell.upgrade() else { return };
                if vm.broken.load(Ordering::Acquire) {
                    return;
                }
                let guard = vm.lock().await;
                guard.store.data().tick_period
            };
            let tick = async {
                match period {
                    Some(period) => tokio::time::sleep(period).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = tick => {
                    let Some(vm) = cell.upgrade() else { return };
                    vm.lock().await.on_tick().await;
                }
                queue = queue_rx.recv() => {
                    let Some(queue_id) = queue else { return };
                    let Some(vm) = cell.upgrade() else { return };
                    vm.lock().await.on_queue_ready(queue_id).await;
                }
                () = tick_changed.notified() => {}
            }
        }
    });
}
