//! `proxy_get_buffer_bytes`, `proxy_set_buffer_bytes`, `proxy_get_buffer_status`.

use crate::abi::{BufferType, Status};
use crate::bounds::{self, MAX_BODY_BYTES};
use crate::call_mode::CallMode;
use crate::hostcalls::func_wrap_awaiting;
use crate::memory::{finish, read, return_bytes, write_u32, Failure, HostResult};
use crate::state::HostState;
use wasmtime::{Caller, Linker};

pub(super) fn add_to_linker(
    linker: &mut Linker<HostState>,
    mode: CallMode,
) -> wasmtime::Result<()> {
    func_wrap_awaiting!(
        linker,
        mode,
        "proxy_get_buffer_bytes",
        |caller, buffer, start, max, data_ptr, size_ptr| {
            get_buffer_bytes(&mut caller, buffer, start, max, data_ptr, size_ptr).await
        }
    )?;
    linker.func_wrap(
        "env",
        "proxy_set_buffer_bytes",
        |mut caller: Caller<'_, HostState>,
         buffer: i32,
         start: i32,
         size: i32,
         data: i32,
         len: i32|
         -> HostResult {
            finish(set_buffer_bytes(
                &mut caller,
                buffer,
                start,
                size,
                data,
                len,
            ))
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_get_buffer_status",
        |mut caller: Caller<'_, HostState>,
         buffer: i32,
         size_ptr: i32,
         flags_ptr: i32|
         -> HostResult {
            finish((|| {
                let size = buffer_len(caller.data_mut(), buffer)?;
                write_u32(&mut caller, size_ptr, size as u32)?;
                write_u32(&mut caller, flags_ptr, 0)?;
                Ok(())
            })())
        },
    )?;
    Ok(())
}

/// A read-only view of a buffer, or `NOT_FOUND` when it does not exist in this context.
fn buffer(state: &mut HostState, buffer: i32) -> Result<&[u8], Status> {
    let kind = BufferType::from_i32(buffer).ok_or(Status::BadArgument)?;
    match kind {
        BufferType::VmConfiguration => Ok(&state.plugin.spec.vm_configuration),
        BufferType::PluginConfiguration => Ok(&state.plugin.spec.plugin_configuration),
        BufferType::HttpCallResponseBody => state
            .callout_response
            .as_ref()
            .map(|r| r.body.as_slice())
            .ok_or(Status::NotFound),
        BufferType::GrpcReceiveBuffer => state
            .grpc_delivery
            .message
            .as_deref()
            .ok_or(Status::NotFound),
        BufferType::HttpRequestBody | BufferType::HttpResponseBody => {
            body_mut(state, kind).map(|body| &body[..])
        }
        _ => Err(Status::NotFound),
    }
}

fn body_mut(state: &mut HostState, kind: BufferType) -> Result<&mut Vec<u8>, Status> {
    let stream = state.stream().ok_or(Status::NotFound)?;
    Ok(match kind {
        BufferType::HttpRequestBody => &mut stream.request_body,
        _ => &mut stream.response_body,
    })
}

fn buffer_len(state: &mut HostState, kind: i32) -> Result<usize, Status> {
    buffer(state, kind).map(<[u8]>::len)
}

async fn get_buffer_bytes(
    caller: &mut Caller<'_, HostState>,
    kind: i32,
    start: i32,
    max: i32,
    data_ptr: i32,
    size_ptr: i32,
) -> Result<(), Failure> {
    let (start, max) = (start as u32 as usize, max as u32 as usize);
    let slice = {
        let bytes = buffer(caller.data_mut(), kind)?;
        if start >= bytes.len() {
            // Nothing there: OK with a null pointer, which the SDK reads as "no data".
            None
        } else {
            let end = start.saturating_add(max).min(bytes.len());
            Some(bytes[start..end].to_vec())
        }
    };
    match slice {
        Some(bytes) => return_bytes(caller, &bytes, data_ptr, size_ptr).await,
        None => {
            write_u32(caller, data_ptr, 0)?;
            write_u32(caller, size_ptr, 0)?;
            Ok(())
        }
    }
}

/// Replaces `size` bytes at `start` with the data: start 0 size 0 prepends, start = length appends,
/// start 0 size = length replaces (the SDK's conventions).
fn set_buffer_bytes(
    caller: &mut Caller<'_, HostState>,
    kind: i32,
    start: i32,
    size: i32,
    data: i32,
    len: i32,
) -> Result<(), Failure> {
    if !bounds::within(len, MAX_BODY_BYTES) {
        return Err(Status::BadArgument.into());
    }
    let kind = BufferType::from_i32(kind).ok_or(Status::BadArgument)?;
    if !matches!(
        kind,
        BufferType::HttpRequestBody | BufferType::HttpResponseBody
    ) {
        return Err(Status::NotFound.into());
    }
    let current = body_mut(caller.data_mut(), kind)?.len();
    let start = (start as u32 as usize).min(current);
    let end = start.saturating_add(size as u32 as usize).min(current);
    if current - (end - start) + len as u32 as usize > MAX_BODY_BYTES {
        return Err(Status::BadArgument.into());
    }
    let bytes = read(caller, data, len)?;
    body_mut(caller.data_mut(), kind)?.splice(start..end, bytes);
    Ok(())
}
