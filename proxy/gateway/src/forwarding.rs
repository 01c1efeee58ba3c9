//! Headers a gateway adds on the way upstream: `x-request-id`, W3C `traceparent`, and
//! `X-Forwarded-For` / `-Proto`.

use std::net::IpAddr;

/// The client's `x-request-id` when it is usable as sent (`gateway_contract`), else a new UUID.
pub fn request_id(client_value: Option<&[u8]>) -> String {
    match client_value.and_then(gateway_contract::usable_request_id) {
        Some(id) => id.to_owned(),
        None => uuid::Uuid::new_v4().to_string(),
    }
}

/// A W3C trace context hop: the trace id is kept (or started) and this proxy becomes the parent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceContext {
    /// 32 lowercase hex digits.
    pub trace_id: String,
    /// The span id this proxy forwards as parent.
    pub span_id: String,
    /// Trace flags (sampled bit).
    pub flags: String,
}

impl TraceContext {
    /// Continues the client's `traceparent`, or starts a trace when it is absent or malformed.
    pub fn continue_or_start(client_value: Option<&[u8]>) -> Self {
        let span_id = random_hex(8);
        if let Some((trace_id, flags)) = client_value.and_then(parse_traceparent) {
            return Self {
                trace_id,
                span_id,
                flags,
            };
        }
        Self {
            trace_id: random_hex(16),
            span_id,
            flags: "01".into(),
        }
    }

    /// The `traceparent` header value to send upstream.
    pub fn header_value(&self) -> String {
        format!("00-{}-{}-{}", self.trace_id, self.span_id, self.flags)
    }
}

/// Parses `00-<trace-id>-<parent-id>-<flags>`; returns the trace id and flags.
fn parse_traceparent(value: &[u8]) -> Option<(String, String)> {
    let text = std::str::from_utf8(value).ok()?.trim();
    let mut parts = text.split('-');
    let (version, trace_id, parent, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let hex = |s: &str, len: usize| {
        s.len() == len && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    };
    // Version 00 has exactly four fields; later versions may append more.
    let valid = hex(version, 2)
        && version != "ff"
        && (version != "00" || parts.next().is_none())
        && hex(trace_id, 32)
        && trace_id.bytes().any(|b| b != b'0')
        && hex(parent, 16)
        && parent.bytes().any(|b| b != b'0')
        && hex(flags, 2);
    valid.then(|| (trace_id.to_string(), flags.to_string()))
}

fn random_hex(bytes: usize) -> String {
    let uuid = uuid::Uuid::new_v4();
    let mut hex = uuid.simple().to_string();
    hex.truncate(bytes * 2);
    hex
}

/// The `X-Forwarded-For` value: the connecting address, appended to the client's list when the
/// client is a trusted proxy. An untrusted client's list is dropped, so the leftmost address an
/// upstream reads is one the gateway saw.
pub fn forwarded_for(
    existing: Option<&[u8]>,
    client: Option<IpAddr>,
    client_trusted: bool,
) -> Option<String> {
    let existing = existing
        .filter(|_| client_trusted)
        .and_then(|v| std::str::from_utf8(v).ok())
        .map(str::trim)
        .filter(|v| !v.is_empty());
    match (existing, client) {
        (Some(list), Some(ip)) => Some(format!("{list}, {ip}")),
        (None, Some(ip)) => Some(ip.to_string()),
        (Some(list), None) => Some(list.to_string()),
        (None, None) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_id_is_kept_when_sane() {
        assert_eq!(request_id(Some(b"abc-123")), "abc-123");
        for bad in [&b""[..], b"has space", &[b'a'; 200], b"bad\nline"] {
            let generated = request_id(Some(bad));
            assert_eq!(generated.len(), 36, "{bad:?} replaced by a UUID");
        }
        assert_ne!(request_id(None), request_id(None));
    }

    #[test]
    fn traceparent_keeps_the_trace_and_replaces_the_parent() {
        let incoming = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let hop = TraceContext::continue_or_start(Some(incoming));
        assert_eq!(hop.trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_ne!(hop.span_id, "00f067aa0ba902b7");
        assert_eq!(hop.flags, "01");
        let value = hop.header_value();
        assert!(parse_traceparent(value.as_bytes()).is_some(), "{value}");
    }

    #[test]
    fn malformed_traceparent_starts_a_new_trace() {
        for bad in [
            &b"garbage"[..],
            b"00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            b"00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            b"ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
        ] {
            let hop = TraceContext::continue_or_start(Some(bad));
            assert_ne!(hop.trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
            assert_eq!(hop.trace_id.len(), 32);
        }
    }

    #[test]
    fn forwarded_for_appends_the_peer_to_a_trusted_proxys_list_only() {
        let ip: IpAddr = "10.0.0.7".parse().unwrap();
        assert_eq!(forwarded_for(None, Some(ip), false).unwrap(), "10.0.0.7");
        assert_eq!(
            forwarded_for(Some(b"1.2.3.4"), Some(ip), true).unwrap(),
            "1.2.3.4, 10.0.0.7"
        );
        assert_eq!(
            forwarded_for(Some(b"6.6.6.6"), Some(ip), false).unwrap(),
            "10.0.0.7",
            "a forged list from an untrusted client is replaced"
        );
    }
}
