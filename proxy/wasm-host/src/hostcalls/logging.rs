//! `proxy_log`, `proxy_get_log_level`, and guest stdout/stderr, all into `tracing` with the plugin's name.

use crate::abi::log_level_from_tracing;
use crate::memory::{finish, read, write_u32, HostResult};
use crate::state::HostState;
use wasmtime::{Caller, Linker};

pub(super) fn add_to_linker(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    linker.func_wrap(
        "env",
        "proxy_log",
        |mut caller: Caller<'_, HostState>, level: i32, ptr: i32, len: i32| -> HostResult {
            finish((|| {
                let message = read(&mut caller, ptr, len)?;
                emit(caller.data_mut(), level, &String::from_utf8_lossy(&message));
                Ok(())
            })())
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_get_log_level",
        |mut caller: Caller<'_, HostState>, level_ptr: i32| -> HostResult {
            let level = log_level_from_tracing(tracing::level_filters::LevelFilter::current());
            finish(write_u32(&mut caller, level_ptr, level as u32).map_err(Into::into))
        },
    )?;
    Ok(())
}

/// Emits one guest log line at the ABI `level` (trace 0 … critical 5).
pub(crate) fn emit(state: &mut HostState, level: i32, message: &str) {
    let plugin = state.plugin_name();
    let context = state.effective_context;
    match level {
        0 => tracing::trace!(target: "wasm", plugin, context, "{message}"),
        1 => tracing::debug!(target: "wasm", plugin, context, "{message}"),
        2 => tracing::info!(target: "wasm", plugin, context, "{message}"),
        3 => tracing::warn!(target: "wasm", plugin, context, "{message}"),
        _ => {
            tracing::error!(target: "wasm", plugin, context, "{message}");
            state.last_error_log = Some(message.to_string());
        }
    }
}

/// Appends WASI output for `fd` 1 or 2, logging each complete line (stdout at info, stderr at warn).
pub(crate) fn write_stdio(state: &mut HostState, fd: usize, bytes: &[u8]) {
    const MAX_LINE: usize = 16 << 10;
    let level = if fd == 1 { 2 } else { 3 };
    state.stdio_lines[fd - 1].extend_from_slice(bytes);
    while let Some(end) = state.stdio_lines[fd - 1].iter().position(|&b| b == b'\n') {
        let line: Vec<u8> = state.stdio_lines[fd - 1].drain(..=end).collect();
        emit(
            state,
            level,
            String::from_utf8_lossy(&line[..end]).trim_end(),
        );
    }
    if state.stdio_lines[fd - 1].len() > MAX_LINE {
        let line = std::mem::take(&mut state.stdio_lines[fd - 1]);
        emit(state, level, &String::from_utf8_lossy(&line));
    }
}

/// Logs any partial stdout/stderr line left when a callback returns (a panic message has no newline).
pub(crate) fn flush_stdio(state: &mut HostState) {
    for fd in 1..=2 {
        if !state.stdio_lines[fd - 1].is_empty() {
            let line = std::mem::take(&mut state.stdio_lines[fd - 1]);
            emit(
                state,
                if fd == 1 { 2 } else { 3 },
                String::from_utf8_lossy(&line).trim_end(),
            );
        }
    }
}
