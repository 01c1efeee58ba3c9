//! Header maps: size, pairs, get/set/add/replace/remove, for request and response headers and
//! trailers and for HTTP callout responses.

use crate::abi::{MapType, Status};
use crate::bounds::{self, MAX_HEADER_MAP_BYTES};
use crate::call_mode::CallMode;
use crate::headers::{is_valid_header, Headers};
use crate::hostcalls::func_wrap_awaiting;
use crate::memory::{
    decode_map, encode_map, finish, read, read_string, return_bytes, write_u32, Failure, HostResult,
};
use crate::state::HostState;
use wasmtime::{Caller, Linker};

pub(super) fn add_to_linker(
    linker: &mut Linker<HostState>,
    mode: CallMode,
) -> wasmtime::Result<()> {
    linker.func_wrap(
        "env",
        "proxy_get_header_map_size",
        |mut caller: Caller<'_, HostState>, map: i32, size_ptr: i32| -> HostResult {
            finish((|| {
                let size = map_ref(caller.data_mut(), map)?.map_or(0, encoded_size);
                write_u32(&mut caller, size_ptr, size as u32)?;
                Ok(())
            })())
        },
    )?;
    func_wrap_awaiting!(
        linker,
        mode,
        "proxy_get_header_map_pairs",
        |caller, map, data_ptr, size_ptr| {
            let encoded = map_ref(caller.data_mut(), map)?
                .map_or_else(|| encode_map(std::iter::empty()), |h| encode_map(h.iter()));
            return_bytes(&mut caller, &encoded, data_ptr, size_ptr).await
        }
    )?;
    linker.func_wrap(
        "env",
        "proxy_set_header_map_pairs",
        |mut caller: Caller<'_, HostState>, map: i32, data: i32, len: i32| -> HostResult {
            finish((|| {
                if !bounds::within(len, MAX_HEADER_MAP_BYTES) {
                    return Err(Status::BadArgument.into());
                }
                let pairs = decode_map(&read(&mut caller, data, len)?)?;
                let plugin = caller.data().plugin_name().to_string();
                let mut headers = Headers::new();
                for (name, value) in pairs {
                    if is_valid_header(&name, &value) {
                        headers.add(&String::from_utf8_lossy(&name), &value);
                    } else {
                        tracing::warn!(target: "wasm", plugin, "filter set an invalid header; dropped");
                    }
                }
                if let Some(target) = map_mut(caller.data_mut(), map)? {
                    *target = headers;
                }
                Ok(())
            })())
        },
    )?;
    func_wrap_awaiting!(
        linker,
        mode,
        "proxy_get_header_map_value",
        |caller, map, key, key_len, data_ptr, size_ptr| {
            let name = read_string(&mut caller, key, key_len)?;
            let value = map_ref(caller.data_mut(), map)?
                .and_then(|h| h.get(&name))
                .ok_or(Status::NotFound)?;
            return_bytes(&mut caller, &value, data_ptr, size_ptr).await
        }
    )?;
    let writers: [(&str, HeaderWrite); 2] = [
        ("proxy_add_header_map_value", Headers::add),
        ("proxy_replace_header_map_value", Headers::replace),
    ];
    for (name, write) in writers {
        linker.func_wrap(
            "env",
            name,
            move |mut caller: Caller<'_, HostState>,
                  map: i32,
                  key: i32,
                  key_len: i32,
                  value: i32,
                  value_len: i32|
                  -> HostResult {
                finish(modify(
                    &mut caller,
                    map,
                    key,
                    key_len,
                    Some((value, value_len)),
                    write,
                ))
            },
        )?;
    }
    linker.func_wrap(
        "env",
        "proxy_remove_header_map_value",
        |mut caller: Caller<'_, HostState>, map: i32, key: i32, key_len: i32| -> HostResult {
            finish(modify(
                &mut caller,
                map,
                key,
                key_len,
                None,
                |h, name, _| h.remove(name),
            ))
        },
    )?;
    Ok(())
}

/// `Headers::add` or `Headers::replace`.
type HeaderWrite = fn(&mut Headers, &str, &[u8]);

fn encoded_size(headers: &Headers) -> usize {
    4 + headers
        .iter()
        .map(|(n, v)| 8 + n.len() + v.len() + 2)
        .sum::<usize>()
}

/// The map a guest names: `Ok(None)` when it does not exist in this context (read as empty, writes
/// ignored, as the SDK accepts only OK from most map calls), `BAD_ARGUMENT` for an unknown type
/// and, as in Envoy, for request or response headers once their phase has continued (they have
/// gone on; a filter that needs them later keeps a copy).
fn map_ref(state: &mut HostState, map: i32) -> Result<Option<&Headers>, Status> {
    map_mut(state, map).map(|m| m.map(|h| &*h))
}

fn map_mut(state: &mut HostState, map: i32) -> Result<Option<&mut Headers>, Status> {
    let kind = MapType::from_i32(map).ok_or(Status::BadArgument)?;
    Ok(match kind {
        MapType::HttpCallResponseHeaders => state.callout_response.as_mut().map(|r| &mut r.headers),
        MapType::HttpCallResponseTrailers => {
            state.callout_response.as_mut().map(|r| &mut r.trailers)
        }
        MapType::GrpcReceiveInitialMetadata => state.grpc_delivery.initial_metadata.as_mut(),
        MapType::GrpcReceiveTrailingMetadata => state.grpc_delivery.trailing_metadata.as_mut(),
        MapType::HttpRequestHeaders => match state.stream() {
            Some(s) if s.request_headers_gone && !s.ending => return Err(Status::BadArgument),
            stream => stream.map(|s| &mut s.request_headers),
        },
        MapType::HttpRequestTrailers => state.stream().map(|s| &mut s.request_trailers),
        MapType::HttpResponseHeaders => match state.stream() {
            Some(s) if s.response_headers_gone && !s.ending => return Err(Status::BadArgument),
            stream => stream.map(|s| &mut s.response_headers),
        },
        MapType::HttpResponseTrailers => state.stream().map(|s| &mut s.response_trailers),
    })
}

fn modify(
    caller: &mut Caller<'_, HostState>,
    map: i32,
    key: i32,
    key_len: i32,
    value: Option<(i32, i32)>,
    apply: impl FnOnce(&mut Headers, &str, &[u8]),
) -> Result<(), Failure> {
    let value_len = value.map_or(0, |(_, len)| len);
    if !bounds::within(key_len, MAX_HEADER_MAP_BYTES)
        || !bounds::within(value_len, MAX_HEADER_MAP_BYTES)
    {
        return Err(Status::BadArgument.into());
    }
    let grown = map_ref(caller.data_mut(), map)?.map_or(0, encoded_size)
        + (key_len as u32 as usize)
        + (value_len as u32 as usize)
        + 10;
    if grown > MAX_HEADER_MAP_BYTES {
        return Err(Status::BadArgument.into());
    }
    let name = read_string(caller, key, key_len)?;
    let value = match value {
        Some((ptr, len)) => read(caller, ptr, len)?,
        None => Vec::new(),
    };
    if !is_valid_header(name.as_bytes(), &value) {
        let plugin = caller.data().plugin_name().to_string();
        tracing::warn!(target: "wasm", plugin, header = %name.escape_debug(), "filter set an invalid header; ignored");
        return Ok(());
    }
    if let Some(headers) = map_mut(caller.data_mut(), map)? {
        apply(headers, &name, &value);
    }
    Ok(())
}
