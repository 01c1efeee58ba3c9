//! proxy-wasm ABI v0.2.1 constants, named as in the spec.

/// Result of a host call, as the guest sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(i32)]
pub enum Status {
    Ok = 0,
    NotFound = 1,
    BadArgument = 2,
    SerializationFailure = 3,
    ParseFailure = 4,
    InvalidMemoryAccess = 6,
    Empty = 7,
    CasMismatch = 8,
    InternalFailure = 10,
    Unimplemented = 12,
}

impl From<Status> for i32 {
    fn from(status: Status) -> i32 {
        status as i32
    }
}

/// What a filter callback asks the host to do with the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Continue,
    Pause,
}

impl Action {
    /// Decodes a callback's return value; anything but 1 continues, as in Envoy.
    pub fn from_i32(value: i32) -> Self {
        if value == 1 {
            Action::Pause
        } else {
            Action::Continue
        }
    }
}

/// Buffers a guest can read (and some of which it can write).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BufferType {
    HttpRequestBody,
    HttpResponseBody,
    DownstreamData,
    UpstreamData,
    HttpCallResponseBody,
    GrpcReceiveBuffer,
    VmConfiguration,
    PluginConfiguration,
    CallData,
}

impl BufferType {
    /// Decodes the ABI value.
    pub fn from_i32(value: i32) -> Option<Self> {
        Some(match value {
            0 => Self::HttpRequestBody,
            1 => Self::HttpResponseBody,
            2 => Self::DownstreamData,
            3 => Self::UpstreamData,
            4 => Self::HttpCallResponseBody,
            5 => Self::GrpcReceiveBuffer,
            6 => Self::VmConfiguration,
            7 => Self::PluginConfiguration,
            8 => Self::CallData,
            _ => return None,
        })
    }
}

/// Header maps a guest can read and write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MapType {
    HttpRequestHeaders,
    HttpRequestTrailers,
    HttpResponseHeaders,
    HttpResponseTrailers,
    GrpcReceiveInitialMetadata,
    GrpcReceiveTrailingMetadata,
    HttpCallResponseHeaders,
    HttpCallResponseTrailers,
}

impl MapType {
    /// Decodes the ABI value.
    pub fn from_i32(value: i32) -> Option<Self> {
        Some(match value {
            0 => Self::HttpRequestHeaders,
            1 => Self::HttpRequestTrailers,
            2 => Self::HttpResponseHeaders,
            3 => Self::HttpResponseTrailers,
            4 => Self::GrpcReceiveInitialMetadata,
            5 => Self::GrpcReceiveTrailingMetadata,
            6 => Self::HttpCallResponseHeaders,
            7 => Self::HttpCallResponseTrailers,
            _ => return None,
        })
    }
}

/// Stream directions for `proxy_continue_stream` / `proxy_close_stream`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamType {
    HttpRequest,
    HttpResponse,
    Downstream,
    Upstream,
}

impl StreamType {
    /// Decodes the ABI value.
    pub fn from_i32(value: i32) -> Option<Self> {
        Some(match value {
            0 => Self::HttpRequest,
            1 => Self::HttpResponse,
            2 => Self::Downstream,
            3 => Self::Upstream,
            _ => return None,
        })
    }
}

/// Kinds of metric a guest can define.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricType {
    Counter,
    Gauge,
    Histogram,
}

impl MetricType {
    /// Decodes the ABI value.
    pub fn from_i32(value: i32) -> Option<Self> {
        Some(match value {
            0 => Self::Counter,
            1 => Self::Gauge,
            2 => Self::Histogram,
            _ => return None,
        })
    }
}

/// Log levels: trace 0, debug 1, info 2, warn 3, error 4, critical 5.
pub fn log_level_from_tracing(level: tracing::level_filters::LevelFilter) -> i32 {
    use tracing::level_filters::LevelFilter;
    match level {
        LevelFilter::TRACE => 0,
        LevelFilter::DEBUG => 1,
        LevelFilter::INFO => 2,
        LevelFilter::WARN => 3,
        LevelFilter::ERROR => 4,
        _ => 5,
    }
}
