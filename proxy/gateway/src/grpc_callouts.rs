//! The transport of filters' gRPC callouts (`proxy_grpc_call`, `proxy_grpc_stream`): one HTTP/2
//! stream per call on the cluster's connections, the filter's messages written as they come while
//! the upstream's are read, and everything that can fail answered as a gRPC status the way a gRPC
//! client would see it.

use crate::cluster::Cluster;
use crate::grpc::{self, DecodeError, MessageDecoder};
use bytes::Bytes;
use pingora::connectors::http::Connector;
use pingora::http::RequestHeader;
use pingora::protocols::http::client::HttpSession;
use pingora::protocols::http::v2::client::Http2Session;
use proxy_wasm_host::bounds::MAX_CALLOUT_BODY_BYTES;
use proxy_wasm_host::{GrpcCallout, GrpcChannels, GrpcEvent, GrpcOutgoing, GrpcStatus, Headers};
use std::pin::pin;
use tokio::sync::mpsc;

/// Largest message accepted from an upstream: gRPC's usual default, and what a filter may send.
const MAX_MESSAGE_BYTES: usize = MAX_CALLOUT_BODY_BYTES;

/// Request headers a filter's metadata may not set: the call's own framing and routing.
const RESERVED_METADATA: [&str; 7] = [
    "content-type",
    "te",
    "grpc-timeout",
    "host",
    "connection",
    "content-length",
    "transfer-encoding",
];

/// Runs one call on `cluster` until it closes, reporting to `channels.events`.
pub async fn run(
    connector: &Connector,
    cluster: &Cluster,
    call: GrpcCallout,
    channels: GrpcChannels,
) {
    let GrpcChannels { outgoing, events } = channels;
    let exchange = exchange(connector, cluster, &call, outgoing, &events);
    let status = match call.timeout {
        Some(timeout) => tokio::time::timeout(timeout, exchange)
            .await
            .unwrap_or_else(|_| {
                GrpcStatus::new(GrpcStatus::DEADLINE_EXCEEDED, "the call's deadline passed")
            }),
        None => exchange.await,
    };
    if status.code != GrpcStatus::OK && status.code != GrpcStatus::CANCELLED {
        tracing::debug!(
            cluster = cluster.config.name,
            path = call.path.as_str(),
            code = status.code,
            message = status.message,
            "filter gRPC call failed"
        );
    }
    let _ = events.send(GrpcEvent::Close(status)).await;
}

/// The call's exchange; its status is the call's (the upstream's `grpc-status`, or how it failed).
async fn exchange(
    connector: &Connector,
    cluster: &Cluster,
    call: &GrpcCallout,
    outgoing: mpsc::Receiver<GrpcOutgoing>,
    events: &mpsc::Sender<GrpcEvent>,
) -> GrpcStatus {
    let unavailable = |what: &str| GrpcStatus::new(GrpcStatus::UNAVAILABLE, what);
    let Some(endpoint) = cluster.select(None, None) else {
        return unavailable("no healthy endpoint");
    };
    let mut peer = cluster.peer(&endpoint, None);
    // A stream lasts as long as its context; a unary call's deadline is the outer timeout.
    peer.options.read_timeout = call.timeout;
    let session = match connector.get_http_session(&peer).await {
        Ok((session, _reused)) => session,
        Err(error) => return unavailable(&format!("connecting failed: {error}")),
    };
    let HttpSession::H2(mut session) = session else {
        return unavailable("the cluster did not speak HTTP/2");
    };
    let header = match request_header(cluster, call) {
        Ok(header) => header,
        Err(error) => return GrpcStatus::new(GrpcStatus::INTERNAL, error.to_string()),
    };
    if let Err(error) = session.write_request_header(Box::new(header), false) {
        return unavailable(&format!("sending the call failed: {error}"));
    }
    let Some(mut body) = session.take_request_body_writer() else {
        return GrpcStatus::new(GrpcStatus::INTERNAL, "no request stream");
    };
    let writer = async move {
        let mut outgoing = outgoing;
        while let Some(message) = outgoing.recv().await {
            let framed = message
                .message
                .map_or_else(Bytes::new, |m| Bytes::from(grpc::frame(&m)));
            let sent = pingora::protocols::http::v2::write_body(
                &mut body,
                framed,
                message.end_stream,
                None,
            )
            .await;
            if sent.is_err() || message.end_stream {
                break;
            }
        }
        // The filter's side is done (or gone); the response may still be coming.
        std::future::pending::<()>().await;
    };
    let status = {
        let reader = read_response(&mut session, events);
        let (mut writer, mut reader) = (pin!(writer), pin!(reader));
        tokio::select! {
            status = &mut reader => status,
            () = &mut writer => unreachable!("the writer waits once done"),
        }
    };
    // The HTTP/2 connection goes back to the pool for the next call (this stream is over).
    let idle = Some(cluster.config.timeouts.idle);
    connector
        .release_http_session(HttpSession::H2(session), &peer, idle)
        .await;
    status
}

/// Reads the response: its metadata and messages go to `events` as they arrive.
async fn read_response(session: &mut Http2Session, events: &mpsc::Sender<GrpcEvent>) -> GrpcStatus {
    let failed = |what: &str, error: &pingora::Error| {
        GrpcStatus::new(GrpcStatus::UNAVAILABLE, format!("{what}: {error}"))
    };
    if let Err(error) = session.read_response_header().await {
        return failed("reading the response failed", &error);
    }
    let head = session.response_header().expect("read above");
    let http_status = head.status.as_u16();
    let headers = metadata(head.headers.iter());
    // A response without gRPC in it (a proxy's error page) reads as its HTTP status, as in
    // every gRPC client.
    let is_grpc = head
        .headers
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(grpc::CONTENT_TYPE.as_bytes()));
    if http_status != 200 || !is_grpc {
        if let Some(status) = status_of(&headers) {
            return status;
        }
        let code = grpc::GrpcStatus::from_http(http_status).code();
        return GrpcStatus::new(code, format!("the upstream answered HTTP {http_status}"));
    }
    // Trailers-only: the status is among the headers.
    if let Some(status) = status_of(&headers) {
        let _ = events.send(GrpcEvent::TrailingMetadata(headers)).await;
        return status;
    }
    if events
        .send(GrpcEvent::InitialMetadata(headers))
        .await
        .is_err()
    {
        return GrpcStatus::new(GrpcStatus::CANCELLED, "cancelled");
    }
    let mut decoder = MessageDecoder::new(MAX_MESSAGE_BYTES);
    loop {
        let chunk = match session.read_response_body().await {
            Ok(Some(chunk)) => chunk,
            Ok(None) => break,
            Err(error) => return failed("reading the response failed", &error),
        };
        let messages = match decoder.push(&chunk) {
            Ok(messages) => messages,
            Err(DecodeError::Compressed) => {
                return GrpcStatus::new(
                    GrpcStatus::INTERNAL,
                    "a compressed message (none was asked for)",
                )
            }
            Err(DecodeError::TooLarge(size)) => {
                return GrpcStatus::new(
                    GrpcStatus::RESOURCE_EXHAUSTED,
                    format!("a {size}-byte message, past the {MAX_MESSAGE_BYTES}-byte limit"),
                )
            }
        };
        for message in messages {
            if events.send(GrpcEvent::Message(message)).await.is_err() {
                return GrpcStatus::new(GrpcStatus::CANCELLED, "cancelled");
            }
        }
    }
    if decoder.has_partial() {
        return GrpcStatus::new(GrpcStatus::INTERNAL, "the response ended inside a message");
    }
    let trailers = match session.read_trailers().await {
        Ok(trailers) => trailers.map(|t| metadata(t.iter())).unwrap_or_default(),
        Err(error) => return failed("reading the trailers failed", &error),
    };
    let status = status_of(&trailers).unwrap_or_else(|| {
        GrpcStatus::new(
            GrpcStatus::INTERNAL,
            "the response ended without a grpc-status",
        )
    });
    let _ = events.send(GrpcEvent::TrailingMetadata(trailers)).await;
    status
}

/// Headers or trailers as metadata.
fn metadata<'a>(
    pairs: impl Iterator<Item = (&'a http::HeaderName, &'a http::HeaderValue)>,
) -> Headers {
    let mut metadata = Headers::new();
    for (name, value) in pairs {
        metadata.add(name.as_str(), value.as_bytes());
    }
    metadata
}

/// The status in `metadata` (`grpc-status`, `grpc-message`), if it has one. A code that is not
/// gRPC's reads as UNKNOWN, as gRPC clients read it.
fn status_of(metadata: &Headers) -> Option<GrpcStatus> {
    let code = metadata.get("grpc-status")?;
    let code = std::str::from_utf8(&code)
        .ok()
        .and_then(|c| c.parse::<u32>().ok())
        .filter(|c| *c <= 16)
        .unwrap_or(2);
    let message = metadata
        .get("grpc-message")
        .map(|m| grpc::decode_message(&m))
        .unwrap_or_default();
    Some(GrpcStatus::new(code, message))
}

/// `POST /{service}/{method}` to the cluster (its name is the authority, as Envoy's gRPC client
/// sends), with the filter's metadata except the headers that frame and route the call.
fn request_header(cluster: &Cluster, call: &GrpcCallout) -> pingora::Result<RequestHeader> {
    let mut header = RequestHeader::build("POST", call.path.as_str().as_bytes(), None)?;
    header.insert_header(http::header::HOST, cluster.config.name.as_str())?;
    header.insert_header(http::header::CONTENT_TYPE, grpc::CONTENT_TYPE)?;
    header.insert_header(http::header::TE, "trailers")?;
    if let Some(timeout) = call.timeout {
        header.insert_header("grpc-timeout", grpc::encode_timeout(timeout))?;
    }
    for (name, value) in call.initial_metadata.iter() {
        if RESERVED_METADATA
            .iter()
            .any(|reserved| name.eq_ignore_ascii_case(reserved))
        {
            continue;
        }
        header.append_header(name.to_string(), value.to_vec())?;
    }
    Ok(header)
}
