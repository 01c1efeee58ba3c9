//! gRPC calls through the gateway: recognising them, the status a refused one gets (a gRPC status
//! in a trailers-only response instead of a JSON body, as Envoy answers them), and their deadline.

use pingora::http::RequestHeader;
use std::time::Duration;

/// The content type of gRPC responses the gateway writes itself.
pub const CONTENT_TYPE: &str = "application/grpc";

/// Whether a request is a gRPC call: `content-type` is `application/grpc`, alone or with a codec
/// (`application/grpc+proto`) or parameters.
pub fn is_grpc(request: &RequestHeader) -> bool {
    request
        .headers
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|value| {
            let value = value.as_bytes();
            value.len() >= CONTENT_TYPE.len()
                && value[..CONTENT_TYPE.len()].eq_ignore_ascii_case(CONTENT_TYPE.as_bytes())
                && matches!(value.get(CONTENT_TYPE.len()), None | Some(b'+' | b';'))
        })
}

/// A gRPC status code (0 to 16).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GrpcStatus(u32);

impl GrpcStatus {
    /// `UNKNOWN` (2).
    pub const UNKNOWN: Self = Self(2);
    /// `DEADLINE_EXCEEDED` (4): what an upstream timeout is for a gRPC caller.
    pub const DEADLINE_EXCEEDED: Self = Self(4);
    /// `PERMISSION_DENIED` (7).
    pub const PERMISSION_DENIED: Self = Self(7);
    /// `UNIMPLEMENTED` (12).
    pub const UNIMPLEMENTED: Self = Self(12);
    /// `INTERNAL` (13).
    pub const INTERNAL: Self = Self(13);
    /// `UNAVAILABLE` (14).
    pub const UNAVAILABLE: Self = Self(14);
    /// `UNAUTHENTICATED` (16).
    pub const UNAUTHENTICATED: Self = Self(16);

    /// The code, when it is one of gRPC's.
    pub fn new(code: u32) -> Option<Self> {
        (code <= 16).then_some(Self(code))
    }

    /// The status a gRPC caller gets for a refusal with this HTTP status: Envoy's mapping
    /// (`Grpc::Utility::httpToGrpcStatus`), so a filter's refusal reads the same in both.
    pub fn from_http(status: u16) -> Self {
        match status {
            400 => Self::INTERNAL,
            401 => Self::UNAUTHENTICATED,
            403 => Self::PERMISSION_DENIED,
            404 => Self::UNIMPLEMENTED,
            429 | 502..=504 => Self::UNAVAILABLE,
            _ => Self::UNKNOWN,
        }
    }

    /// The number sent in `grpc-status`.
    pub fn code(self) -> u32 {
        self.0
    }
}

/// A `grpc-message` value: the text percent-encoded as the gRPC spec asks (every byte outside
/// printable ASCII, and `%` itself), so any body fits in a header.
pub fn encode_message(message: &[u8]) -> String {
    let mut encoded = String::with_capacity(message.len());
    for &byte in message {
        if (0x20..=0x7e).contains(&byte) && byte != b'%' {
            encoded.push(char::from(byte));
        } else {
            encoded.push_str(&format!("%{byte:02X}"));
        }
    }
    encoded
}

/// The text of a `grpc-message` value: percent-decoded, and any byte sequence that is not UTF-8
/// replaced, so whatever an upstream sends reads as text.
pub fn decode_message(value: &[u8]) -> String {
    let mut decoded = Vec::with_capacity(value.len());
    let mut at = 0;
    while at < value.len() {
        let hex = value
            .get(at + 1..at + 3)
            .and_then(|digits| u8::from_str_radix(std::str::from_utf8(digits).ok()?, 16).ok());
        match (value[at], hex) {
            (b'%', Some(byte)) => {
                decoded.push(byte);
                at += 3;
            }
            (byte, _) => {
                decoded.push(byte);
                at += 1;
            }
        }
    }
    String::from_utf8_lossy(&decoded).into_owned()
}

/// A `grpc-timeout` value for `timeout`, in milliseconds (rounded up, so a deadline is never
/// shortened), or in seconds past what 8 digits of milliseconds can say.
pub fn encode_timeout(timeout: Duration) -> String {
    let millis = timeout.as_nanos().div_ceil(1_000_000);
    if millis < 100_000_000 {
        format!("{millis}m")
    } else {
        format!("{}S", timeout.as_secs().min(99_999_999))
    }
}

/// Splits a stream of bytes into gRPC messages. A compressed message (none was asked for) or one
/// past `max_bytes` is an error before its bytes are buffered.
pub struct MessageDecoder {
    buffered: Vec<u8>,
    max_bytes: usize,
}

/// Why a response's bytes are not gRPC messages the gateway accepts.
#[derive(Debug, PartialEq, Eq)]
pub enum DecodeError {
    /// The flag byte says compressed (or is not a flag).
    Compressed,
    /// The length prefix is past the limit.
    TooLarge(usize),
}

impl MessageDecoder {
    /// A decoder for messages of at most `max_bytes`.
    pub fn new(max_bytes: usize) -> Self {
        Self {
            buffered: Vec::new(),
            max_bytes,
        }
    }

    /// Adds `bytes`; returns the messages now complete.
    pub fn push(&mut self, bytes: &[u8]) -> Result<Vec<Vec<u8>>, DecodeError> {
        self.buffered.extend_from_slice(bytes);
        let mut messages = Vec::new();
        while let Some(header) = self.buffered.first_chunk::<5>() {
            if header[0] != 0 {
                return Err(DecodeError::Compressed);
            }
            let length = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
            if length > self.max_bytes {
                return Err(DecodeError::TooLarge(length));
            }
            if self.buffered.len() < 5 + length {
                break;
            }
            messages.push(self.buffered[5..5 + length].to_vec());
            self.buffered.drain(..5 + length);
        }
        Ok(messages)
    }

    /// Whether bytes of an unfinished message are left (a response that ends here is truncated).
    pub fn has_partial(&self) -> bool {
        !self.buffered.is_empty()
    }
}

/// The deadline a `grpc-timeout` value gives: at most 8 digits and a unit (`H`, `M`, `S`, `m`
/// for milliseconds, `u`, `n`); anything else is no deadline for the gateway, and the service
/// decides what it makes of it.
pub fn timeout(value: &[u8]) -> Option<Duration> {
    let (&unit, digits) = value.split_last()?;
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let amount: u64 = std::str::from_utf8(digits).ok()?.parse().ok()?;
    Some(match unit {
        b'H' => Duration::from_secs(amount * 3600),
        b'M' => Duration::from_secs(amount * 60),
        b'S' => Duration::from_secs(amount),
        b'm' => Duration::from_millis(amount),
        b'u' => Duration::from_micros(amount),
        b'n' => Duration::from_nanos(amount),
        _ => return None,
    })
}

/// A gRPC request's deadline (`grpc-timeout`), if it sent one.
pub fn deadline(request: &RequestHeader) -> Option<Duration> {
    if !is_grpc(request) {
        return None;
    }
    timeout(request.headers.get("grpc-timeout")?.as_bytes())
}

/// The path of the standard health check method.
pub const HEALTH_CHECK_PATH: &str = "/grpc.health.v1.Health/Check";

/// A framed `grpc.health.v1.HealthCheckRequest` for `service` ("" asks about the server).
pub fn health_check_request(service: &str) -> Vec<u8> {
    // Field 1 (`service`), length-delimited: tag 0x0a, a varint length, the bytes.
    let mut message = Vec::with_capacity(service.len() + 3);
    if !service.is_empty() {
        message.push(0x0a);
        let mut length = service.len();
        while length >= 0x80 {
            message.push((length as u8 & 0x7f) | 0x80);
            length >>= 7;
        }
        message.push(length as u8);
        message.extend_from_slice(service.as_bytes());
    }
    frame(&message)
}

/// One uncompressed gRPC message on the wire: a zero flag byte, the length, the message.
/// Messages the gateway frames are bounded far below 4 GiB (health checks, filters' callouts).
pub fn frame(message: &[u8]) -> Vec<u8> {
    let length = u32::try_from(message.len()).expect("framed messages are bounded");
    let mut framed = Vec::with_capacity(message.len() + 5);
    framed.push(0);
    framed.extend_from_slice(&length.to_be_bytes());
    framed.extend_from_slice(message);
    framed
}

/// Whether a framed `grpc.health.v1.HealthCheckResponse` says SERVING (`status`, field 1, is 1).
/// Anything else, a malformed or compressed answer included, is not serving.
pub fn is_serving(framed: &[u8]) -> bool {
    let Some((&0, rest)) = framed.split_first() else {
        return false;
    };
    let Some((length, message)) = rest.split_first_chunk::<4>() else {
        return false;
    };
    if usize::try_from(u32::from_be_bytes(*length)).ok() != Some(message.len()) {
        return false;
    }
    // The one field a health response has; the last occurrence wins, as in protobuf.
    let mut status = 0;
    let mut at = 0;
    while at < message.len() {
        match (message[at], message.get(at + 1)) {
            (0x08, Some(&value)) if value < 0x80 => status = value,
            _ => return false,
        }
        at += 2;
    }
    status == 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_split_across_and_within_chunks() {
        let mut wire = frame(b"first");
        wire.extend(frame(b""));
        wire.extend(frame(b"third"));
        let mut decoder = MessageDecoder::new(16);
        let (a, b) = wire.split_at(7);
        assert_eq!(decoder.push(a).unwrap(), Vec::<Vec<u8>>::new());
        assert!(decoder.has_partial());
        let messages = decoder.push(b).unwrap();
        assert_eq!(messages, vec![b"first".to_vec(), vec![], b"third".to_vec()]);
        assert!(!decoder.has_partial());
    }

    #[test]
    fn compressed_and_oversized_messages_are_refused_before_buffering() {
        let mut decoder = MessageDecoder::new(16);
        assert_eq!(
            decoder.push(&[1, 0, 0, 0, 1, b'x']),
            Err(DecodeError::Compressed)
        );
        let mut decoder = MessageDecoder::new(16);
        // Only the prefix has arrived: the 4 GiB it announces is refused now.
        assert_eq!(
            decoder.push(&[0, 0xff, 0xff, 0xff, 0xff]),
            Err(DecodeError::TooLarge(u32::MAX as usize))
        );
    }

    #[test]
    fn grpc_messages_decode_to_text_whatever_the_bytes() {
        assert_eq!(decode_message(b"denied%20by%20test"), "denied by test");
        assert_eq!(decode_message(b"50%"), "50%");
        assert_eq!(decode_message(b"%zz%C3%A9"), "%zz\u{e9}");
        assert_eq!(decode_message(b"%FF"), "\u{fffd}");
        assert_eq!(
            decode_message(encode_message("ünïcode %".as_bytes()).as_bytes()),
            "ünïcode %"
        );
    }

    #[test]
    fn timeouts_encode_in_milliseconds_rounded_up() {
        assert_eq!(encode_timeout(Duration::from_millis(250)), "250m");
        assert_eq!(encode_timeout(Duration::from_micros(1)), "1m");
        assert_eq!(encode_timeout(Duration::from_secs(200_000)), "200000S");
        assert_eq!(
            timeout(encode_timeout(Duration::from_millis(1500)).as_bytes()),
            Some(Duration::from_millis(1500))
        );
    }

    fn request(content_type: &str) -> RequestHeader {
        let mut request = RequestHeader::build("POST", b"/pkg.Service/Method", None).unwrap();
        request.insert_header("content-type", content_type).unwrap();
        request
    }

    #[test]
    fn grpc_content_types_are_recognised() {
        for yes in [
            "application/grpc",
            "application/grpc+proto",
            "Application/GRPC;x=1",
        ] {
            assert!(is_grpc(&request(yes)), "{yes}");
        }
        for no in [
            "application/grpc-web",
            "application/json",
            "application/grp",
            "text/plain",
        ] {
            assert!(!is_grpc(&request(no)), "{no}");
        }
        let bare = RequestHeader::build("POST", b"/", None).unwrap();
        assert!(!is_grpc(&bare));
    }

    #[test]
    fn http_statuses_map_as_envoy_maps_them() {
        let codes: Vec<u32> = [400, 401, 403, 404, 413, 429, 500, 502, 503, 504]
            .into_iter()
            .map(|s| GrpcStatus::from_http(s).code())
            .collect();
        assert_eq!(codes, [13, 16, 7, 12, 2, 14, 2, 14, 14, 14]);
        assert_eq!(GrpcStatus::new(16), Some(GrpcStatus::UNAUTHENTICATED));
        assert_eq!(GrpcStatus::new(17), None);
    }

    #[test]
    fn messages_are_percent_encoded() {
        assert_eq!(encode_message(b"plain text"), "plain text");
        assert_eq!(encode_message("50% \u{e9}\n".as_bytes()), "50%25 %C3%A9%0A");
    }

    #[test]
    fn timeouts_parse_like_grpc_servers_read_them() {
        assert_eq!(timeout(b"100m"), Some(Duration::from_millis(100)));
        assert_eq!(timeout(b"2S"), Some(Duration::from_secs(2)));
        assert_eq!(timeout(b"1H"), Some(Duration::from_secs(3600)));
        assert_eq!(
            timeout(b"99999999n"),
            Some(Duration::from_nanos(99_999_999))
        );
        for bad in [
            &b""[..],
            b"m",
            b"123456789m",
            b"10x",
            b"-1S",
            b"1.5S",
            b"\xff",
        ] {
            assert_eq!(timeout(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn health_messages_are_framed_protobuf() {
        assert_eq!(health_check_request(""), [0, 0, 0, 0, 0]);
        assert_eq!(
            health_check_request("a.B"),
            [0, 0, 0, 0, 5, 0x0a, 3, b'a', b'.', b'B']
        );
        let long = "s".repeat(200);
        assert_eq!(&health_check_request(&long)[5..8], [0x0a, 0xc8, 0x01]);
        assert!(is_serving(&[0, 0, 0, 0, 2, 0x08, 1]));
        for not in [
            &[0, 0, 0, 0, 2, 0x08, 2][..], // NOT_SERVING
            &[0, 0, 0, 0, 0],              // UNKNOWN (the default)
            &[1, 0, 0, 0, 2, 0x08, 1],     // compressed
            &[0, 0, 0, 0, 9, 0x08, 1],     // shorter than it says
            &[0, 0, 0, 0, 2, 0x10, 1],     // another field
            &[0, 0, 0],
            &[],
        ] {
            assert!(!is_serving(not), "{not:?}");
        }
    }

    #[test]
    fn only_grpc_calls_have_deadlines() {
        let mut call = request("application/grpc");
        call.insert_header("grpc-timeout", "5S").unwrap();
        assert_eq!(deadline(&call), Some(Duration::from_secs(5)));
        let mut plain = request("application/json");
        plain.insert_header("grpc-timeout", "5S").unwrap();
        assert_eq!(deadline(&plain), None);
    }
}
