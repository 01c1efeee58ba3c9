//! `proxy_get_property` / `proxy_set_property` with Envoy's attribute names.
//!
//! Strings are returned as bytes, integers as 8-byte little-endian, booleans as one byte, and maps
//! (`request.headers`) in the ABI's map encoding, as Envoy does. Values a filter sets are kept per
//! context and read back first, so filters can pass data between phases and to each other.

use crate::abi::Status;
use crate::bounds::{self, MAX_PROPERTIES, MAX_PROPERTY_BYTES, MAX_PROPERTY_PATH_BYTES};
use crate::call_mode::CallMode;
use crate::headers::Headers;
use crate::hostcalls::func_wrap_awaiting;
use crate::memory::{encode_map, finish, read, return_bytes, Failure};
use crate::state::{HostState, StreamState};
use wasmtime::{Caller, Linker};

pub(super) fn add_to_linker(
    linker: &mut Linker<HostState>,
    mode: CallMode,
) -> wasmtime::Result<()> {
    func_wrap_awaiting!(
        linker,
        mode,
        "proxy_get_property",
        |caller, path, path_len, data_ptr, size_ptr| {
            get_property(&mut caller, (path, path_len), data_ptr, size_ptr).await
        }
    )?;
    linker.func_wrap(
        "env",
        "proxy_set_property",
        |mut caller: Caller<'_, HostState>,
         path: i32,
         path_len: i32,
         value: i32,
         value_len: i32|
         -> wasmtime::Result<i32> {
            finish((|| {
                if !bounds::within(path_len, MAX_PROPERTY_PATH_BYTES)
                    || !bounds::within(value_len, MAX_PROPERTY_BYTES)
                {
                    return Err(Status::BadArgument.into());
                }
                let path = read(&mut caller, path, path_len)?;
                let value = read(&mut caller, value, value_len)?;
                let state = caller.data_mut();
                let properties = match state.stream() {
                    Some(stream) => &mut stream.properties,
                    None => &mut state.root_properties,
                };
                if properties.len() >= MAX_PROPERTIES && !properties.contains_key(&path) {
                    return Err(Status::BadArgument.into());
                }
                properties.insert(path, value);
                Ok(())
            })())
        },
    )?;
    Ok(())
}

/// A property's value before encoding.
enum Value {
    Bytes(Vec<u8>),
    Int(i64),
    Bool(bool),
    Map(Headers),
}

impl Value {
    fn encode(self) -> Vec<u8> {
        match self {
            Value::Bytes(bytes) => bytes,
            Value::Int(n) => n.to_le_bytes().to_vec(),
            Value::Bool(b) => vec![u8::from(b)],
            Value::Map(headers) => encode_map(headers.iter()),
        }
    }
}

async fn get_property(
    caller: &mut Caller<'_, HostState>,
    (path, path_len): (i32, i32),
    data_ptr: i32,
    size_ptr: i32,
) -> Result<(), Failure> {
    let raw_path = read(caller, path, path_len)?;
    let value = lookup(caller.data_mut(), &raw_path).ok_or(Status::NotFound)?;
    return_bytes(caller, &value.encode(), data_ptr, size_ptr).await
}

fn lookup(state: &mut HostState, raw_path: &[u8]) -> Option<Value> {
    let set_by_filter = match state.stream() {
        Some(stream) => stream.properties.get(raw_path).cloned(),
        None => state.root_properties.get(raw_path).cloned(),
    };
    if let Some(value) = set_by_filter {
        return Some(Value::Bytes(value));
    }
    let text = String::from_utf8_lossy(raw_path);
    let segments: Vec<&str> = text.split('\0').collect();
    let spec = &state.plugin.spec;
    match segments.as_slice() {
        ["plugin_name"] => return Some(Value::Bytes(spec.name.clone().into_bytes())),
        ["plugin_root_id"] => return Some(Value::Bytes(spec.root_id.clone().into_bytes())),
        ["plugin_vm_id"] => return Some(Value::Bytes(spec.vm_id.clone().into_bytes())),
        _ => {}
    }
    stream_property(state.stream()?, &segments)
}

fn stream_property(stream: &StreamState, segments: &[&str]) -> Option<Value> {
    let request = &stream.request_headers;
    let header = |headers: &Headers, name: &str| headers.get(name).map(Value::Bytes);
    let path = || request.get_str(":path").unwrap_or_default();
    Some(match segments {
        ["request", "path"] => header(request, ":path")?,
        ["request", "url_path"] => Value::Bytes(
            path()
                .split('?')
                .next()
                .unwrap_or_default()
                .as_bytes()
                .to_vec(),
        ),
        ["request", "query"] => Value::Bytes(
            path()
                .split_once('?')
                .map(|(_, q)| q.as_bytes().to_vec())
                .unwrap_or_default(),
        ),
        ["request", "host"] => header(request, ":authority")?,
        ["request", "method"] => header(request, ":method")?,
        ["request", "scheme"] => header(request, ":scheme")?,
        ["request", "id"] => header(request, "x-request-id")?,
        ["request", "useragent"] => header(request, "user-agent")?,
        ["request", "referer"] => header(request, "referer")?,
        ["request", "protocol"] => Value::Bytes(stream.info.protocol.clone().into_bytes()),
        ["request", "headers"] => Value::Map(request.clone()),
        ["request", "headers", name] => header(request, name)?,
        ["response", "code"] => {
            Value::Int(stream.response_headers.get_str(":status")?.parse().ok()?)
        }
        ["response", "headers"] => Value::Map(stream.response_headers.clone()),
        ["response", "headers", name] => header(&stream.response_headers, name)?,
        ["response", "trailers"] => Value::Map(stream.response_trailers.clone()),
        ["source", "address"] => Value::Bytes(stream.info.source?.to_string().into_bytes()),
        ["source", "port"] => Value::Int(i64::from(stream.info.source?.port())),
        ["destination", "address"] => {
            Value::Bytes(stream.info.destination?.to_string().into_bytes())
        }
        ["destination", "port"] => Value::Int(i64::from(stream.info.destination?.port())),
        ["connection", "mtls"] => Value::Bool(stream.info.peer_certificate.is_some()),
        ["source", "principal"] => Value::Bytes(
            stream
                .info
                .peer_certificate
                .as_ref()?
                .principal()
                .as_bytes()
                .to_vec(),
        ),
        ["connection", "subject_peer_certificate"] => Value::Bytes(
            stream
                .info
                .peer_certificate
                .as_ref()?
                .subject
                .clone()
                .into_bytes(),
        ),
        ["connection", "uri_san_peer_certificate"] => Value::Bytes(
            stream
                .info
                .peer_certificate
                .as_ref()?
                .uri_sans
                .first()?
                .clone()
                .into_bytes(),
        ),
        ["connection", "dns_san_peer_certificate"] => Value::Bytes(
            stream
                .info
                .peer_certificate
                .as_ref()?
                .dns_sans
                .first()?
                .clone()
                .into_bytes(),
        ),
        ["xds", "route_name"] | ["route_name"] => {
            Value::Bytes(stream.info.route_name.clone()?.into_bytes())
        }
        ["xds", "cluster_name"] | ["cluster_name"] => {
            Value::Bytes(stream.info.cluster_name.clone()?.into_bytes())
        }
        _ => return None,
    })
}
