//! The host functions a guest imports, one module per ABI area. Each function decodes its
//! arguments, acts on [`HostState`], and returns only the statuses the spec allows for that call
//! (the Rust SDK panics on any other).

mod buffers;
mod context;
mod grpc;
mod header_maps;
mod logging;
mod metrics;
mod properties;
mod shared;
mod stream_control;
mod wasi;

use crate::abi::Status;
use crate::call_mode::CallMode;
use crate::state::HostState;
use wasmtime::{ExternType, Linker, Module, Val, ValType};

pub(crate) use logging::flush_stdio;

/// The type of one argument of an `env` host call (all are `i32`), for [`func_wrap_awaiting`].
macro_rules! abi_i32 {
    ($arg:ident) => {
        i32
    };
}

/// Defines an `env` host call whose body awaits (the guest allocator, shared data) and yields
/// `Result<(), Failure>`, answered to the guest through [`finish`](crate::memory::finish): on a
/// fiber in a suspendable VM, polled once in a synchronous one, where a body that would wait traps.
macro_rules! func_wrap_awaiting {
    ($linker:expr, $mode:expr, $name:literal, |$caller:ident $(, $arg:ident)+ $(,)?| $body:expr $(,)?) => {
        match $mode {
            $crate::call_mode::CallMode::Suspendable => $linker.func_wrap_async(
                "env",
                $name,
                |mut $caller: wasmtime::Caller<'_, HostState>,
                 ($($arg,)+): ($($crate::hostcalls::abi_i32!($arg),)+)| {
                    Box::new(async move { $crate::memory::finish(async { $body }.await) })
                },
            ),
            $crate::call_mode::CallMode::Synchronous => $linker.func_wrap(
                "env",
                $name,
                |mut $caller: wasmtime::Caller<'_, HostState>,
                 $($arg: $crate::hostcalls::abi_i32!($arg)),+|
                 -> $crate::memory::HostResult {
                    match $crate::call_mode::complete_now(async { $body }) {
                        Some(result) => $crate::memory::finish(result),
                        None => Err(wasmtime::format_err!(concat!(
                            $name,
                            " waited in a VM that cannot suspend"
                        ))),
                    }
                },
            ),
        }
    };
}
pub(crate) use {abi_i32, func_wrap_awaiting};

/// Defines every supported host function in `linker`, the awaiting ones for `mode`.
pub(crate) fn add_to_linker(
    linker: &mut Linker<HostState>,
    mode: CallMode,
) -> wasmtime::Result<()> {
    logging::add_to_linker(linker)?;
    context::add_to_linker(linker)?;
    buffers::add_to_linker(linker, mode)?;
    header_maps::add_to_linker(linker, mode)?;
    stream_control::add_to_linker(linker)?;
    grpc::add_to_linker(linker, mode)?;
    shared::add_to_linker(linker, mode)?;
    metrics::add_to_linker(linker)?;
    properties::add_to_linker(linker, mode)?;
    wasi::add_to_linker(linker)?;
    Ok(())
}

/// Gives every import of `module` the linker does not define a stand-in, so filters built against
/// newer SDKs still load: `env` functions return `UNIMPLEMENTED`, WASI functions return `ENOSYS`,
/// and anything else (or any import that returns no status) traps if called.
pub(crate) fn add_fallbacks(
    linker: &mut Linker<HostState>,
    module: &Module,
) -> wasmtime::Result<()> {
    for import in module.imports() {
        let ExternType::Func(ty) = import.ty() else {
            continue;
        };
        let (module_name, name) = (import.module(), import.name());
        let returns_status =
            ty.results().len() == 1 && matches!(ty.results().next(), Some(ValType::I32));
        let code = match module_name {
            "env" if returns_status => Some(Status::Unimplemented as i32),
            wasi::MODULE if returns_status => Some(wasi::ERRNO_NOSYS),
            _ => None,
        };
        let label = format!("{module_name}::{name}");
        // Defining fails for names the host already provides (shadowing is off): those are kept.
        let defined =
            linker.func_new(
                module_name,
                name,
                ty,
                move |_caller, _params, results| match code {
                    Some(code) => {
                        results[0] = Val::I32(code);
                        Ok(())
                    }
                    None => Err(wasmtime::format_err!(
                        "called {label}, which this host does not provide"
                    )),
                },
            );
        if defined.is_ok() {
            tracing::debug!(import = %format!("{module_name}::{name}"), "import not provided by the host; stubbed");
        }
    }
    Ok(())
}
