//! The WASI preview1 calls that proxy-wasm SDK guests import. Filters get no files, environment,
//! arguments or network: stdout and stderr go to the log, the clocks and randomness are real.

use crate::memory::{read, write_u32, write_u64};
use crate::state::HostState;
use std::time::{Instant, SystemTime, UNIX_EPOCH};
use wasmtime::{Caller, Linker};

/// The WASI preview1 import module.
pub(crate) const MODULE: &str = "wasi_snapshot_preview1";
/// `ENOSYS`: the function is not provided.
pub(crate) const ERRNO_NOSYS: i32 = 52;
const ERRNO_SUCCESS: i32 = 0;
const ERRNO_BADF: i32 = 8;
const ERRNO_FAULT: i32 = 21;
const ERRNO_INVAL: i32 = 28;
/// Most bytes one `fd_write` takes (a log line is cut at 16 KiB anyway).
pub(crate) const MAX_STDIO_WRITE: usize = 64 << 10;

pub(super) fn add_to_linker(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    linker.func_wrap(
        MODULE,
        "fd_write",
        |mut caller: Caller<'_, HostState>,
         fd: i32,
         iovs: i32,
         iovs_len: i32,
         written_ptr: i32|
         -> i32 {
            if !(1..=2).contains(&fd) {
                return ERRNO_BADF;
            }
            // Iovecs may all point at the same large region: the total, not each vector, is
            // capped. A short write is reported, as POSIX allows; writers retry the rest.
            let Ok(vectors) = read(&mut caller, iovs, iovs_len.saturating_mul(8)) else {
                return ERRNO_FAULT;
            };
            let mut bytes = Vec::new();
            for iov in vectors.chunks_exact(8) {
                let ptr = i32::from_le_bytes(iov[0..4].try_into().expect("4 bytes"));
                let len = u32::from_le_bytes(iov[4..8].try_into().expect("4 bytes"));
                let room = (MAX_STDIO_WRITE - bytes.len()) as u32;
                let Ok(chunk) = read(&mut caller, ptr, len.min(room) as i32) else {
                    return ERRNO_FAULT;
                };
                bytes.extend_from_slice(&chunk);
                if bytes.len() == MAX_STDIO_WRITE {
                    break;
                }
            }
            super::logging::write_stdio(caller.data_mut(), fd as usize, &bytes);
            match write_u32(&mut caller, written_ptr, bytes.len() as u32) {
                Ok(()) => ERRNO_SUCCESS,
                Err(_) => ERRNO_FAULT,
            }
        },
    )?;
    linker.func_wrap(
        MODULE,
        "clock_time_get",
        |mut caller: Caller<'_, HostState>, clock: i32, _precision: i64, out: i32| -> i32 {
            let nanos = match clock {
                0 => SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .unwrap_or_default()
                    .as_nanos() as u64,
                1 => monotonic_nanos(),
                _ => return ERRNO_INVAL,
            };
            match write_u64(&mut caller, out, nanos) {
                Ok(()) => ERRNO_SUCCESS,
                Err(_) => ERRNO_FAULT,
            }
        },
    )?;
    linker.func_wrap(
        MODULE,
        "random_get",
        |mut caller: Caller<'_, HostState>, buf: i32, len: i32| -> i32 {
            // Filled in place: the length is the guest's, so nothing is allocated for it.
            let Some(memory) = caller.data().memory else {
                return ERRNO_FAULT;
            };
            let data = memory.data_mut(&mut caller);
            let start = buf as u32 as usize;
            let Some(target) = start
                .checked_add(len as u32 as usize)
                .and_then(|end| data.get_mut(start..end))
            else {
                return ERRNO_FAULT;
            };
            match getrandom::fill(target) {
                Ok(()) => ERRNO_SUCCESS,
                Err(_) => ERRNO_NOSYS,
            }
        },
    )?;
    for (sizes, values) in [
        ("environ_sizes_get", "environ_get"),
        ("args_sizes_get", "args_get"),
    ] {
        linker.func_wrap(
            MODULE,
            sizes,
            |mut caller: Caller<'_, HostState>, count: i32, size: i32| -> i32 {
                match write_u32(&mut caller, count, 0)
                    .and_then(|()| write_u32(&mut caller, size, 0))
                {
                    Ok(()) => ERRNO_SUCCESS,
                    Err(_) => ERRNO_FAULT,
                }
            },
        )?;
        linker.func_wrap(
            MODULE,
            values,
            |_caller: Caller<'_, HostState>, _ptrs: i32, _buf: i32| -> i32 { ERRNO_SUCCESS },
        )?;
    }
    linker.func_wrap(
        MODULE,
        "sched_yield",
        |_caller: Caller<'_, HostState>| -> i32 { ERRNO_SUCCESS },
    )?;
    linker.func_wrap(
        MODULE,
        "proc_exit",
        |_caller: Caller<'_, HostState>, code: i32| -> wasmtime::Result<()> {
            Err(wasmtime::format_err!("filter called proc_exit({code})"))
        },
    )?;
    Ok(())
}

fn monotonic_nanos() -> u64 {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_nanos() as u64
}
