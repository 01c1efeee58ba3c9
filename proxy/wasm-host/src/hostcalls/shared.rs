//! Shared data (`proxy_get/set_shared_data`, with compare-and-swap) and shared queues.
//! Shared-data calls are asynchronous: the backend may be remote, and the guest waits while the
//! worker thread serves other requests; the wait does not count against its CPU deadline. When the backend refuses (unavailable under a fail-closed
//! policy), the guest sees an absent key or a CAS conflict, the only statuses the SDK accepts, and
//! the host answers the request 503 once the callback returns.

use crate::abi::Status;
use crate::call_mode::CallMode;
use crate::hostcalls::func_wrap_awaiting;
use crate::memory::{finish, read, read_string, return_bytes, write_u32, Failure, HostResult};
use crate::queues::QueueSubscriber;
use crate::state::HostState;
use wasmtime::{AsContextMut, Caller, Linker};

/// Largest value a filter may store in one key.
pub const MAX_SHARED_VALUE_BYTES: usize = 1 << 20;

pub(super) fn add_to_linker(
    linker: &mut Linker<HostState>,
    mode: CallMode,
) -> wasmtime::Result<()> {
    func_wrap_awaiting!(
        linker,
        mode,
        "proxy_get_shared_data",
        |caller, key, key_len, data_ptr, size_ptr, cas_ptr| {
            get_shared_data(&mut caller, (key, key_len), data_ptr, size_ptr, cas_ptr).await
        }
    )?;
    func_wrap_awaiting!(
        linker,
        mode,
        "proxy_set_shared_data",
        |caller, key, key_len, value, value_len, cas| {
            if !crate::bounds::within(value_len, MAX_SHARED_VALUE_BYTES) {
                // The SDK accepts only OK or CAS_MISMATCH here; an oversized value is refused
                // as a conflict so a CAS loop re-reads instead of trapping.
                return Err(Status::CasMismatch.into());
            }
            let key = read(&mut caller, key, key_len)?;
            let value = read(&mut caller, value, value_len)?;
            let plugin = caller.data().plugin.clone();
            let backend = &plugin.services.shared_data;
            let stored = off_the_clock(
                &mut caller,
                backend.set(&plugin.spec.vm_id, &key, &value, cas as u32),
            )
            .await;
            match stored.unwrap_or_else(|_| refuse(&mut caller, Status::CasMismatch)) {
                Status::Ok => Ok(()),
                status => Err(status.into()),
            }
        }
    )?;
    linker.func_wrap(
        "env",
        "proxy_register_shared_queue",
        |mut caller: Caller<'_, HostState>, name: i32, name_len: i32, id_ptr: i32| -> HostResult {
            finish((|| {
                let name = read_string(&mut caller, name, name_len)?;
                let state = caller.data();
                let subscriber = QueueSubscriber {
                    notify: state.queue_notify.clone(),
                };
                let id = state.plugin.services.queues.register(
                    &state.plugin.spec.vm_id,
                    &name,
                    subscriber,
                );
                write_u32(&mut caller, id_ptr, id)?;
                Ok(())
            })())
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_resolve_shared_queue",
        |mut caller: Caller<'_, HostState>,
         vm_id: i32,
         vm_id_len: i32,
         name: i32,
         name_len: i32,
         id_ptr: i32|
         -> HostResult {
            finish((|| {
                let vm_id = read_string(&mut caller, vm_id, vm_id_len)?;
                let name = read_string(&mut caller, name, name_len)?;
                let plugin = caller.data().plugin.clone();
                // An empty vm_id means the caller's own, as in Envoy.
                let vm_id = if vm_id.is_empty() {
                    plugin.spec.vm_id.clone()
                } else {
                    vm_id
                };
                let id = plugin
                    .services
                    .queues
                    .resolve(&vm_id, &name)
                    .ok_or(Status::NotFound)?;
                write_u32(&mut caller, id_ptr, id)?;
                Ok(())
            })())
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_enqueue_shared_queue",
        |mut caller: Caller<'_, HostState>, id: i32, value: i32, value_len: i32| -> HostResult {
            finish((|| {
                if !crate::bounds::within(value_len, crate::bounds::MAX_QUEUE_ITEM_BYTES) {
                    return Err(Status::BadArgument.into());
                }
                let value = read(&mut caller, value, value_len)?;
                match caller
                    .data()
                    .plugin
                    .services
                    .queues
                    .enqueue(id as u32, value)
                {
                    Status::Ok => Ok(()),
                    status => Err(status.into()),
                }
            })())
        },
    )?;
    func_wrap_awaiting!(
        linker,
        mode,
        "proxy_dequeue_shared_queue",
        |caller, id, data_ptr, size_ptr| {
            let item = caller.data().plugin.services.queues.dequeue(id as u32)?;
            let item = item.ok_or(Status::Empty)?;
            return_bytes(&mut caller, &item, data_ptr, size_ptr).await
        }
    )?;
    Ok(())
}

async fn get_shared_data(
    caller: &mut Caller<'_, HostState>,
    (key, key_len): (i32, i32),
    data_ptr: i32,
    size_ptr: i32,
    cas_ptr: i32,
) -> Result<(), Failure> {
    let key = read(caller, key, key_len)?;
    let plugin = caller.data().plugin.clone();
    let lookup = plugin.services.shared_data.get(&plugin.spec.vm_id, &key);
    let found = off_the_clock(caller, lookup).await;
    let value = match found {
        Ok(found) => found.ok_or(Status::NotFound)?,
        Err(_) => return Err(refuse(caller, Status::NotFound).into()),
    };
    write_u32(caller, cas_ptr, value.cas)?;
    return_bytes(caller, &value.value, data_ptr, size_ptr).await
}

/// Awaits `call` with the guest's CPU deadline stopped: the time it waits is given back to the
/// callback, so a slow backend never traps a filter that has used little CPU.
async fn off_the_clock<T>(
    caller: &mut Caller<'_, HostState>,
    call: impl std::future::Future<Output = T>,
) -> T {
    if caller.data().calls == CallMode::Synchronous {
        return call.await; // answered at once: nothing to give back
    }
    let waiting = std::time::Instant::now();
    let output = call.await;
    let remaining = caller.data_mut().clock.resume_after(waiting.elapsed());
    caller
        .as_context_mut()
        .set_epoch_deadline(crate::epoch::ticks_for(remaining));
    output
}

/// Marks the current stream as failed by unavailable shared data; returns the status the guest sees.
fn refuse(caller: &mut Caller<'_, HostState>, status: Status) -> Status {
    if let Some(stream) = caller.data_mut().stream() {
        stream.shared_data_unavailable = true;
    }
    status
}
