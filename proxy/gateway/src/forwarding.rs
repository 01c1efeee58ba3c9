//! Headers a gateway adds on the way upstream: `x-request-id` and `X-Forwarded-For` / `-Proto`
//! (W3C `traceparent` is `request_tracing`'s).

use std::net::IpAddr;

/// The client's `x-request-id` when it is usable as sent (`gateway_contract`), else a new UUID.
pub fn request_id(client_value: Option<&[u8]>) -> String {
    match client_value.and_then(gateway_contract::usable_request_id) {
        Some(id) => id.to_owned(),
        None => uuid::Uuid::new_v4().to_string(),
    }
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
