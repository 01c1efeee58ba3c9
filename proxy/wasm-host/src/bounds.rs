//! What a guest can make the host hold, bounded: every size a guest passes is checked against
//! these before the host allocates for it. A call past a bound gets `BAD_ARGUMENT` (the Rust SDK
//! then panics, so the misbehaving filter traps and its VM is replaced); incoming data past a
//! bound fails the request, never the process.

/// Largest request or response body held for a filter (buffered while it pauses, or grown with
/// `proxy_set_buffer_bytes`). A request past it gets a 413, a response is reset.
pub const MAX_BODY_BYTES: usize = 16 << 20;

/// Largest header or trailer map a filter may build, in its encoded size.
pub const MAX_HEADER_MAP_BYTES: usize = 1 << 20;

/// Largest property path and value a filter may set.
pub const MAX_PROPERTY_PATH_BYTES: usize = 1 << 10;
/// Largest property value a filter may set.
pub const MAX_PROPERTY_BYTES: usize = 64 << 10;
/// Most properties one context may set.
pub const MAX_PROPERTIES: usize = 256;

/// Largest item a filter may put in a shared queue.
pub const MAX_QUEUE_ITEM_BYTES: usize = 1 << 20;
/// Most bytes one shared queue holds; older items are dropped beyond it.
pub const MAX_QUEUE_BYTES: usize = 16 << 20;

/// Largest request body a filter may send in one callout (`proxy_http_call`); the gateway caps
/// a callout's response body at the same size.
pub const MAX_CALLOUT_BODY_BYTES: usize = 4 << 20;
/// Most callouts one VM may have in flight, HTTP and gRPC counted apart; past it
/// `proxy_http_call` gets `BAD_ARGUMENT`, `proxy_grpc_call` and `proxy_grpc_stream`
/// `INTERNAL_FAILURE`.
pub const MAX_CALLOUTS_IN_FLIGHT: usize = 256;
/// Messages a gRPC stream queues for an upstream that is not reading; past it `proxy_grpc_send`
/// gets `BAD_ARGUMENT`.
pub const MAX_GRPC_QUEUED_MESSAGES: usize = 16;

/// Whether a guest-given length is within `max`.
pub(crate) fn within(len: i32, max: usize) -> bool {
    (len as u32 as usize) <= max
}
