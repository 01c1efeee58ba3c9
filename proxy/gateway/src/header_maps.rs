//! Pingora's request and response headers as the proxy-wasm host sees them (a `Headers` map with
//! pseudo-headers first, `host` as `:authority`, as in Envoy), and filter changes written back.

use pingora::http::{RequestHeader, ResponseHeader};
use pingora::{Error, ErrorType};
use proxy_wasm_host::Headers;

/// The request's headers as filters see them, with pseudo-headers first (`host` becomes
/// `:authority`).
pub fn request_to_filters(request: &RequestHeader, tls: bool) -> Headers {
    let authority = request
        .uri
        .authority()
        .map(|a| a.as_str().to_string())
        .or_else(|| {
            request
                .headers
                .get(http::header::HOST)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        })
        .unwrap_or_default();
    let path = request
        .uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_string();
    let mut headers = Headers::from_pairs([
        (":method", request.method.as_str().as_bytes()),
        (":path", path.as_bytes()),
        (":authority", authority.as_bytes()),
        (":scheme", if tls { &b"https"[..] } else { b"http" }),
    ]);
    // As in Envoy, `host` is carried as `:authority` only.
    for (name, value) in &request.headers {
        if name != http::header::HOST {
            headers.add(name.as_str(), value.as_bytes());
        }
    }
    headers
}

/// Writes filter changes back to the request (method, path, authority and headers).
pub fn apply_to_request(request: &mut RequestHeader, headers: &Headers) -> pingora::Result<()> {
    if let Some(method) = headers.get(":method") {
        if method != request.method.as_str().as_bytes() {
            let method = http::Method::from_bytes(&method).map_err(|_| {
                Error::explain(ErrorType::InternalError, "a filter set an invalid :method")
            })?;
            request.set_method(method);
        }
    }
    if let Some(path) = headers.get_str(":path") {
        if request.uri.path_and_query().map(|p| p.as_str()) != Some(path.as_str()) {
            let uri = path.parse::<http::Uri>().map_err(|_| {
                Error::explain(ErrorType::InternalError, "a filter set an invalid :path")
            })?;
            request.set_uri(uri);
        }
    }
    let names: Vec<http::HeaderName> = request.headers.keys().cloned().collect();
    for name in names {
        request.remove_header(&name);
    }
    for (name, value) in headers.iter() {
        match name {
            ":authority" if !value.is_empty() => {
                request.insert_header(http::header::HOST, value.to_vec())?;
            }
            "host" => {}
            _ if name.starts_with(':') => {}
            _ => {
                request.append_header(name.to_string(), value.to_vec())?;
            }
        }
    }
    Ok(())
}

/// The response's headers as filters see them, `:status` first.
pub fn response_to_filters(response: &ResponseHeader) -> Headers {
    let status = response.status.as_u16().to_string();
    let mut headers = Headers::from_pairs([(":status", status.as_bytes())]);
    for (name, value) in &response.headers {
        headers.add(name.as_str(), value.as_bytes());
    }
    headers
}

/// Writes filter changes back to the response (status and headers).
pub fn apply_to_response(response: &mut ResponseHeader, headers: &Headers) -> pingora::Result<()> {
    if let Some(status) = headers
        .get_str(":status")
        .and_then(|s| s.parse::<u16>().ok())
    {
        if status != response.status.as_u16() {
            response.set_status(status)?;
        }
    }
    let names: Vec<http::HeaderName> = response.headers.keys().cloned().collect();
    for name in names {
        response.remove_header(&name);
    }
    for (name, value) in headers.iter() {
        if !name.starts_with(':') {
            response.append_header(name.to_string(), value.to_vec())?;
        }
    }
    Ok(())
}
