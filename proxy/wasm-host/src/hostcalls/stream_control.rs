//! Stream control: `proxy_continue_stream`, `proxy_close_stream`, `proxy_send_local_response`, and
//! HTTP callouts (`proxy_http_call`), which resume the stream from `on_http_call_response`.

use crate::abi::{Status, StreamType};
use crate::bounds::{within, MAX_CALLOUTS_IN_FLIGHT, MAX_CALLOUT_BODY_BYTES, MAX_HEADER_MAP_BYTES};
use crate::callout::CalloutRequest;
use crate::headers::{is_valid_header, Headers};
use crate::memory::{decode_map, finish, read, read_string, write_u32, Failure, HostResult};
use crate::state::{HostState, PendingCallout};
use crate::types::LocalResponse;
use std::time::Duration;
use wasmtime::{Caller, Linker};

/// Timeout used when a filter passes 0 to `proxy_http_call`.
pub const DEFAULT_CALLOUT_TIMEOUT: Duration = Duration::from_secs(60);

pub(super) fn add_to_linker(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    linker.func_wrap(
        "env",
        "proxy_continue_stream",
        |mut caller: Caller<'_, HostState>, stream: i32| -> HostResult {
            if let Some(state) = caller.data_mut().stream() {
                match StreamType::from_i32(stream) {
                    Some(StreamType::HttpResponse) => state.resume_response = true,
                    _ => state.resume_request = true,
                }
                state.wake.notify_one();
            }
            Ok(Status::Ok.into())
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_close_stream",
        |mut caller: Caller<'_, HostState>, _stream: i32| -> HostResult {
            if let Some(state) = caller.data_mut().stream() {
                state.close = true;
                state.wake.notify_one();
            }
            Ok(Status::Ok.into())
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_send_local_response",
        |mut caller: Caller<'_, HostState>,
         status: i32,
         details: i32,
         details_len: i32,
         body: i32,
         body_len: i32,
         headers: i32,
         headers_len: i32,
         grpc_status: i32|
         -> HostResult {
            finish(send_local_response(
                &mut caller,
                status,
                (details, details_len),
                (body, body_len),
                (headers, headers_len),
                grpc_status,
            ))
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_http_call",
        |mut caller: Caller<'_, HostState>,
         upstream: i32,
         upstream_len: i32,
         headers: i32,
         headers_len: i32,
         body: i32,
         body_len: i32,
         trailers: i32,
         trailers_len: i32,
         timeout_ms: i32,
         token_ptr: i32|
         -> HostResult {
            finish(http_call(
                &mut caller,
                (upstream, upstream_len),
                (headers, headers_len),
                (body, body_len),
                (trailers, trailers_len),
                timeout_ms as u32,
                token_ptr,
            ))
        },
    )?;
    Ok(())
}

fn read_headers(
    caller: &mut Caller<'_, HostState>,
    (ptr, len): (i32, i32),
) -> Result<Headers, Status> {
    let pairs = decode_map(&read(caller, ptr, len)?)?;
    let mut headers = Headers::new();
    for (name, value) in pairs {
        if !is_valid_header(&name, &value) {
            return Err(Status::BadArgument);
        }
        headers.add(&String::from_utf8_lossy(&name), &value);
    }
    Ok(headers)
}

fn send_local_response(
    caller: &mut Caller<'_, HostState>,
    status: i32,
    details: (i32, i32),
    body: (i32, i32),
    headers: (i32, i32),
    grpc_status: i32,
) -> Result<(), Failure> {
    let details = String::from_utf8_lossy(&read(caller, details.0, details.1)?).into_owned();
    let body = read(caller, body.0, body.1)?;
    // Invalid headers in a local response are dropped rather than failing the call (the SDK
    // accepts only OK here).
    let pairs = decode_map(&read(caller, headers.0, headers.1)?)?;
    let headers = Headers::from_pairs(
        pairs
            .iter()
            .filter(|(n, v)| is_valid_header(n, v) && !n.starts_with(b":"))
            .map(|(n, v)| (String::from_utf8_lossy(n).into_owned(), v.clone())),
    );
    let status = u16::try_from(status)
        .ok()
        .filter(|s| (200..=599).contains(s))
        .unwrap_or(500);
    match caller.data_mut().stream() {
        Some(stream) => {
            stream.local_response = Some(LocalResponse {
                status,
                headers,
                body,
                details,
                // The SDKs pass -1 for "none"; gRPC's codes are 0 to 16.
                grpc_status: u32::try_from(grpc_status).ok().filter(|code| *code <= 16),
            });
            stream.wake.notify_one();
        }
        None => {
            let plugin = caller.data().plugin_name().to_string();
            tracing::warn!(target: "wasm", plugin, "send_local_response outside an HTTP context; ignored");
        }
    }
    Ok(())
}

fn http_call(
    caller: &mut Caller<'_, HostState>,
    upstream: (i32, i32),
    headers: (i32, i32),
    body: (i32, i32),
    trailers: (i32, i32),
    timeout_ms: u32,
    token_ptr: i32,
) -> Result<(), Failure> {
    // Sizes and the number in flight are checked before anything is copied out of the guest.
    if !within(headers.1, MAX_HEADER_MAP_BYTES)
        || !within(trailers.1, MAX_HEADER_MAP_BYTES)
        || !within(body.1, MAX_CALLOUT_BODY_BYTES)
        || caller.data().callouts_in_flight >= MAX_CALLOUTS_IN_FLIGHT
    {
        return Err(Status::BadArgument.into());
    }
    let cluster = read_string(caller, upstream.0, upstream.1)?;
    let headers = read_headers(caller, headers)?;
    let body = read(caller, body.0, body.1)?;
    let trailers = read_headers(caller, trailers)?;
    if !caller.data().plugin.services.callouts.has_cluster(&cluster) {
        let plugin = caller.data().plugin_name().to_string();
        tracing::warn!(target: "wasm", plugin, cluster, "http_call to an unknown cluster");
        return Err(Status::BadArgument.into());
    }
    // Envoy refuses callouts without these pseudo-headers; so do we.
    if [":method", ":path", ":authority"]
        .iter()
        .any(|h| headers.get(h).is_none())
    {
        return Err(Status::BadArgument.into());
    }
    let timeout = match timeout_ms {
        0 => DEFAULT_CALLOUT_TIMEOUT,
        ms => Duration::from_millis(u64::from(ms)),
    };
    let state = caller.data_mut();
    state.next_callout_token = state.next_callout_token.wrapping_add(1).max(1);
    let token = state.next_callout_token;
    let context_id = state.effective_context;
    write_u32(caller, token_ptr, token)?;
    let state = caller.data_mut();
    state.callouts_in_flight += 1;
    state.new_callouts.push(PendingCallout {
        token,
        context_id,
        cluster,
        request: CalloutRequest {
            headers,
            body,
            trailers,
            timeout,
        },
    });
    Ok(())
}
