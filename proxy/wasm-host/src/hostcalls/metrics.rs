//! `proxy_define_metric`, `proxy_increment_metric`, `proxy_record_metric`, `proxy_get_metric`.

use crate::abi::{MetricType, Status};
use crate::memory::{finish, read_string, write_u32, write_u64, HostResult};
use crate::state::HostState;
use wasmtime::{Caller, Linker};

pub(super) fn add_to_linker(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    linker.func_wrap(
        "env",
        "proxy_define_metric",
        |mut caller: Caller<'_, HostState>,
         kind: i32,
         name: i32,
         name_len: i32,
         id_ptr: i32|
         -> HostResult {
            finish((|| {
                let kind = MetricType::from_i32(kind).ok_or(Status::BadArgument)?;
                let name = read_string(&mut caller, name, name_len)?;
                let plugin = caller.data().plugin.clone();
                let id = plugin
                    .services
                    .metrics
                    .define(&plugin.spec.name, kind, &name)?;
                write_u32(&mut caller, id_ptr, id)?;
                Ok(())
            })())
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_increment_metric",
        |caller: Caller<'_, HostState>, id: i32, delta: i64| -> HostResult {
            Ok(caller
                .data()
                .plugin
                .services
                .metrics
                .increment(id as u32, delta)
                .into())
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_record_metric",
        |caller: Caller<'_, HostState>, id: i32, value: i64| -> HostResult {
            Ok(caller
                .data()
                .plugin
                .services
                .metrics
                .record(id as u32, value as u64)
                .into())
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_get_metric",
        |mut caller: Caller<'_, HostState>, id: i32, out: i32| -> HostResult {
            finish((|| {
                let value = caller.data().plugin.services.metrics.get(id as u32)?;
                write_u64(&mut caller, out, value)?;
                Ok(())
            })())
        },
    )?;
    Ok(())
}
