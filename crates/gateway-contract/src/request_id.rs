//! Which client-sent request ids are kept.

/// Longest request id kept; a longer one is replaced.
pub const MAX_REQUEST_ID_BYTES: usize = 128;

/// The id in `value` when it is usable as sent (non-empty printable ASCII of at most
/// `MAX_REQUEST_ID_BYTES`); `None` means the receiver makes a new one.
pub fn usable_request_id(value: &[u8]) -> Option<&str> {
    if value.is_empty()
        || value.len() > MAX_REQUEST_ID_BYTES
        || !value.iter().all(u8::is_ascii_graphic)
    {
        return None;
    }
    // Printable ASCII is UTF-8.
    std::str::from_utf8(value).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn printable_bounded_ids_are_kept_and_others_are_not() {
        assert_eq!(usable_request_id(b"req-1"), Some("req-1"));
        let longest = "a".repeat(MAX_REQUEST_ID_BYTES);
        assert_eq!(
            usable_request_id(longest.as_bytes()),
            Some(longest.as_str())
        );
        for unusable in [&b""[..], b"has space", b"\xff\xfe", b"line\nbreak"] {
            assert_eq!(usable_request_id(unusable), None, "{unusable:?}");
        }
        assert_eq!(
            usable_request_id("a".repeat(MAX_REQUEST_ID_BYTES + 1).as_bytes()),
            None
        );
    }
}
