//! Contexts, time, timers and foreign functions.

use crate::abi::Status;
use crate::memory::{finish, write_u64, HostResult};
use crate::state::HostState;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use wasmtime::{Caller, Linker};

pub(super) fn add_to_linker(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    linker.func_wrap(
        "env",
        "proxy_set_effective_context",
        |mut caller: Caller<'_, HostState>, context_id: i32| -> HostResult {
            let state = caller.data_mut();
            let context_id = context_id as u32;
            if context_id != state.root_context_id && !state.streams.contains_key(&context_id) {
                return Ok(Status::BadArgument.into());
            }
            state.effective_context = context_id;
            Ok(Status::Ok.into())
        },
    )?;
    // A context that returned false from on_done is finished by the host anyway; nothing waits.
    linker.func_wrap(
        "env",
        "proxy_done",
        |_caller: Caller<'_, HostState>| -> HostResult { Ok(Status::Ok.into()) },
    )?;
    linker.func_wrap(
        "env",
        "proxy_get_current_time_nanoseconds",
        |mut caller: Caller<'_, HostState>, out: i32| -> HostResult {
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default()
                .as_nanos() as u64;
            finish(write_u64(&mut caller, out, now).map_err(Into::into))
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_set_tick_period_milliseconds",
        |mut caller: Caller<'_, HostState>, period_ms: i32| -> HostResult {
            let state = caller.data_mut();
            state.tick_period = match period_ms as u32 {
                0 => None,
                ms => Some(Duration::from_millis(u64::from(ms))),
            };
            state.tick_changed.notify_one();
            Ok(Status::Ok.into())
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_call_foreign_function",
        |_caller: Caller<'_, HostState>,
         _name: i32,
         _name_len: i32,
         _args: i32,
         _args_len: i32,
         _ret: i32,
         _ret_len: i32|
         -> HostResult {
            // No foreign functions are registered in this host.
            Ok(Status::NotFound.into())
        },
    )?;
    Ok(())
}
