//! The W3C `traceparent` header: parsing what a caller sent, and the value for the next hop.

/// A W3C trace context hop: the trace id is kept (or started) and this service's span becomes
/// the parent of what it calls.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceContext {
    /// 32 lowercase hex digits.
    pub trace_id: String,
    /// This service's span id: 16 lowercase hex digits.
    pub span_id: String,
    /// Trace flags (the sampled bit): 2 lowercase hex digits.
    pub flags: String,
}

impl TraceContext {
    /// Continues the caller's `traceparent`, or starts a trace when it is absent or malformed.
    pub fn continue_or_start(caller_value: Option<&[u8]>) -> Self {
        let span_id = random_hex(8);
        if let Some(caller) = caller_value.and_then(TraceParent::parse) {
            return Self {
                trace_id: caller.trace_id.to_owned(),
                span_id,
                flags: caller.flags.to_owned(),
            };
        }
        Self {
            trace_id: random_hex(16),
            span_id,
            flags: "01".into(),
        }
    }

    /// The `traceparent` header value to send to the next hop.
    pub fn header_value(&self) -> String {
        format!("00-{}-{}-{}", self.trace_id, self.span_id, self.flags)
    }
}

/// The fields of a valid `traceparent`, in lowercase hex.
pub(crate) struct TraceParent<'a> {
    pub trace_id: &'a str,
    pub parent_id: &'a str,
    pub flags: &'a str,
}

impl<'a> TraceParent<'a> {
    /// Parses `00-<trace-id>-<parent-id>-<flags>` as the W3C recommendation does; `None` when
    /// malformed, so the caller starts a trace instead.
    pub fn parse(value: &'a [u8]) -> Option<Self> {
        parse_traceparent(value)
    }
}

fn parse_traceparent(value: &[u8]) -> Option<TraceParent<'_>> {
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
    valid.then_some(TraceParent {
        trace_id,
        parent_id: parent,
        flags,
    })
}

fn random_hex(bytes: usize) -> String {
    let mut hex = uuid::Uuid::new_v4().simple().to_string();
    hex.truncate(bytes * 2);
    hex
}

#[cfg(test)]
mod tests {
    use super::*;

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
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            b"00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            b"ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            &[0xff, 0xfe],
        ] {
            let hop = TraceContext::continue_or_start(Some(bad));
            assert_ne!(hop.trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
            assert_eq!(hop.trace_id.len(), 32);
            assert_eq!(hop.flags, "01");
        }
    }
}
