//! gRPC callouts: `proxy_grpc_call` (unary), `proxy_grpc_stream`, `proxy_grpc_send`,
//! `proxy_grpc_cancel`, `proxy_grpc_close`, and `proxy_get_status` in their callbacks. The calls
//! start once the callback that opened them returns (`PluginVm::start_grpc_calls`). Statuses are
//! the ones the SDK accepts: `PARSE_FAILURE` for an unknown cluster or malformed names and
//! metadata (as Envoy answers for an unknown cluster), `INTERNAL_FAILURE` past a limit.

use crate::abi::Status;
use crate::bounds::{
    within, MAX_CALLOUTS_IN_FLIGHT, MAX_CALLOUT_BODY_BYTES, MAX_GRPC_QUEUED_MESSAGES,
    MAX_HEADER_MAP_BYTES,
};
use crate::call_mode::CallMode;
use crate::callout::{GrpcCallout, GrpcMethodPath, GrpcOutgoing};
use crate::headers::{is_valid_header, Headers};
use crate::hostcalls::func_wrap_awaiting;
use crate::memory::{decode_map, finish, read, return_bytes, write_u32, Failure, HostResult};
use crate::state::{GrpcCallState, HostState, PendingGrpcCall};
use std::time::Duration;
use tokio::sync::mpsc;
use wasmtime::{Caller, Linker};

/// Deadline of a unary call whose filter passed 0 (Envoy would wait without one; a bounded wait
/// keeps a silent upstream from holding the call forever).
const DEFAULT_GRPC_TIMEOUT: Duration = Duration::from_secs(30);

pub(super) fn add_to_linker(
    linker: &mut Linker<HostState>,
    mode: CallMode,
) -> wasmtime::Result<()> {
    linker.func_wrap(
        "env",
        "proxy_grpc_call",
        |mut caller: Caller<'_, HostState>,
         upstream: i32,
         upstream_len: i32,
         service: i32,
         service_len: i32,
         method: i32,
         method_len: i32,
         metadata: i32,
         metadata_len: i32,
         message: i32,
         message_len: i32,
         timeout_ms: i32,
         token_ptr: i32|
         -> HostResult {
            finish((|| {
                if !within(message_len, MAX_CALLOUT_BODY_BYTES) {
                    return Err(Status::InternalFailure.into());
                }
                let target = Target::read(
                    &mut caller,
                    (upstream, upstream_len),
                    (service, service_len),
                    (method, method_len),
                    (metadata, metadata_len),
                )?;
                let message = read(&mut caller, message, message_len)?;
                let timeout = match timeout_ms as u32 {
                    0 => DEFAULT_GRPC_TIMEOUT,
                    ms => Duration::from_millis(u64::from(ms)),
                };
                let first = GrpcOutgoing {
                    message: Some(message),
                    end_stream: true,
                };
                open(&mut caller, target, Some(timeout), Some(first), token_ptr)
            })())
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_grpc_stream",
        |mut caller: Caller<'_, HostState>,
         upstream: i32,
         upstream_len: i32,
         service: i32,
         service_len: i32,
         method: i32,
         method_len: i32,
         metadata: i32,
         metadata_len: i32,
         token_ptr: i32|
         -> HostResult {
            finish((|| {
                let target = Target::read(
                    &mut caller,
                    (upstream, upstream_len),
                    (service, service_len),
                    (method, method_len),
                    (metadata, metadata_len),
                )?;
                open(&mut caller, target, None, None, token_ptr)
            })())
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_grpc_send",
        |mut caller: Caller<'_, HostState>,
         token: i32,
         message: i32,
         message_len: i32,
         end_stream: i32|
         -> HostResult {
            finish(send(
                &mut caller,
                token as u32,
                (message, message_len),
                end_stream != 0,
            ))
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_grpc_cancel",
        |mut caller: Caller<'_, HostState>, token: i32| -> HostResult {
            // Dropping the call's state aborts its transport; no callback follows, as in Envoy.
            let removed = caller.data_mut().grpc_calls.remove(&(token as u32));
            Ok(if removed.is_some() {
                Status::Ok
            } else {
                Status::NotFound
            }
            .into())
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_grpc_close",
        |mut caller: Caller<'_, HostState>, token: i32| -> HostResult {
            finish(close(caller.data_mut(), token as u32))
        },
    )?;
    func_wrap_awaiting!(
        linker,
        mode,
        "proxy_get_status",
        |caller, code_ptr, message_ptr, message_len_ptr| {
            get_status(&mut caller, code_ptr, message_ptr, message_len_ptr).await
        }
    )?;
    Ok(())
}

/// Where a call goes, read and checked before anything is queued.
struct Target {
    cluster: String,
    path: GrpcMethodPath,
    metadata: Headers,
}

impl Target {
    fn read(
        caller: &mut Caller<'_, HostState>,
        upstream: (i32, i32),
        service: (i32, i32),
        method: (i32, i32),
        metadata: (i32, i32),
    ) -> Result<Self, Failure> {
        let name_bytes = GrpcMethodPath::MAX_NAME_BYTES;
        if !within(metadata.1, MAX_HEADER_MAP_BYTES)
            || !within(upstream.1, name_bytes)
            || !within(service.1, name_bytes)
            || !within(method.1, name_bytes)
        {
            return Err(Status::ParseFailure.into());
        }
        if caller.data().grpc_calls.len() >= MAX_CALLOUTS_IN_FLIGHT {
            return Err(Status::InternalFailure.into());
        }
        let text = |bytes: Vec<u8>| String::from_utf8(bytes).map_err(|_| Status::ParseFailure);
        let cluster = text(read(caller, upstream.0, upstream.1)?)?;
        let service = text(read(caller, service.0, service.1)?)?;
        let method = text(read(caller, method.0, method.1)?)?;
        let path = GrpcMethodPath::new(&service, &method).ok_or(Status::ParseFailure)?;
        let mut headers = Headers::new();
        for (name, value) in decode_map(&read(caller, metadata.0, metadata.1)?)? {
            if !is_valid_header(&name, &value) || name.starts_with(b":") {
                return Err(Status::ParseFailure.into());
            }
            headers.add(&String::from_utf8_lossy(&name), &value);
        }
        if !caller
            .data()
            .plugin
            .services
            .callouts
            .has_grpc_cluster(&cluster)
        {
            let plugin = caller.data().plugin_name().to_string();
            tracing::warn!(target: "wasm", plugin, cluster, "gRPC call to an unknown cluster, or one that does not speak HTTP/2");
            return Err(Status::ParseFailure.into());
        }
        Ok(Self {
            cluster,
            path,
            metadata: headers,
        })
    }
}

/// Registers a call (a unary one with its message queued) and hands the guest its token.
fn open(
    caller: &mut Caller<'_, HostState>,
    target: Target,
    timeout: Option<Duration>,
    first: Option<GrpcOutgoing>,
    token_ptr: i32,
) -> Result<(), Failure> {
    let state = caller.data_mut();
    state.next_callout_token = state.next_callout_token.wrapping_add(1).max(1);
    let token = state.next_callout_token;
    write_u32(caller, token_ptr, token)?;
    let (sender, outgoing) = mpsc::channel(MAX_GRPC_QUEUED_MESSAGES);
    let is_stream = first.is_none();
    if let Some(first) = first {
        sender
            .try_send(first)
            .map_err(|_| Status::InternalFailure)?;
    }
    let state = caller.data_mut();
    let context_id = state.effective_context;
    state.grpc_calls.insert(
        token,
        GrpcCallState {
            context_id,
            is_stream,
            outgoing: is_stream.then_some(sender),
            task: None,
        },
    );
    state.new_grpc_calls.push(PendingGrpcCall {
        token,
        cluster: target.cluster,
        call: GrpcCallout {
            path: target.path,
            initial_metadata: target.metadata,
            timeout,
        },
        outgoing,
    });
    Ok(())
}

fn send(
    caller: &mut Caller<'_, HostState>,
    token: u32,
    (message, message_len): (i32, i32),
    end_stream: bool,
) -> Result<(), Failure> {
    if !within(message_len, MAX_CALLOUT_BODY_BYTES) {
        return Err(Status::BadArgument.into());
    }
    let message = read(caller, message, message_len)?;
    let call = caller
        .data_mut()
        .grpc_calls
        .get_mut(&token)
        .ok_or(Status::NotFound)?;
    // A unary call, or a stream the guest half-closed, takes no more messages.
    let sender = call.outgoing.as_ref().ok_or(Status::BadArgument)?;
    // Full: the upstream is not reading; the guest may retry after its next message arrives.
    sender
        .try_send(GrpcOutgoing {
            message: Some(message),
            end_stream,
        })
        .map_err(|_| Status::BadArgument)?;
    if end_stream {
        call.outgoing = None;
    }
    Ok(())
}

/// Half-closes a stream (the upstream may still answer), or cancels a unary call, as Envoy does.
fn close(state: &mut HostState, token: u32) -> Result<(), Failure> {
    let call = state.grpc_calls.get_mut(&token).ok_or(Status::NotFound)?;
    let end = GrpcOutgoing {
        message: None,
        end_stream: true,
    };
    let half_closed = match call.outgoing.take() {
        Some(sender) => call.is_stream && sender.try_send(end).is_ok(),
        None => call.is_stream,
    };
    // A unary call is cancelled; so is a stream with no room left for its end marker.
    if !half_closed {
        state.grpc_calls.remove(&token);
    }
    Ok(())
}

/// The status of the gRPC call being delivered (`proxy_on_grpc_close`, or OK with a unary
/// response); elsewhere OK with no message.
async fn get_status(
    caller: &mut Caller<'_, HostState>,
    code_ptr: i32,
    message_ptr: i32,
    message_len_ptr: i32,
) -> Result<(), Failure> {
    let status = caller.data().grpc_delivery.status.clone();
    let code = status.as_ref().map_or(0, |s| s.code);
    write_u32(caller, code_ptr, code)?;
    match status {
        Some(status) if !status.message.is_empty() => {
            return_bytes(
                caller,
                status.message.as_bytes(),
                message_ptr,
                message_len_ptr,
            )
            .await
        }
        _ => {
            write_u32(caller, message_ptr, 0)?;
            write_u32(caller, message_len_ptr, 0)?;
            Ok(())
        }
    }
}
