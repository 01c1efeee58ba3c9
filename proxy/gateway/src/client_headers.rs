//! Client request headers the gateway does not pass on as sent: its reserved namespace (identity
//! headers that only its filters may set), hop-by-hop headers (RFC 9110 §7.6.1), and
//! `X-Forwarded-*` from peers that are not trusted proxies.

use ipnet::IpNet;
use pingora::http::RequestHeader;
use serde::Deserialize;
use std::net::IpAddr;

/// Header names that belong to the gateway (`server.reserved_headers`): removed from every client
/// request before routing and filters, so a filter that sets one is the only source of its value.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(try_from = "ReservedHeadersFile")]
pub struct ReservedHeaders {
    /// Names starting with any of these are reserved.
    prefixes: Vec<String>,
    /// These names are reserved.
    names: Vec<String>,
}

/// `server.reserved_headers` as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct ReservedHeadersFile {
    prefixes: Vec<String>,
    names: Vec<String>,
}

impl Default for ReservedHeadersFile {
    fn default() -> Self {
        Self {
            prefixes: vec![gateway_contract::headers::RESERVED_PREFIX.into()],
            names: Vec::new(),
        }
    }
}

impl Default for ReservedHeaders {
    fn default() -> Self {
        ReservedHeadersFile::default()
            .try_into()
            .expect("the default is valid")
    }
}

impl TryFrom<ReservedHeadersFile> for ReservedHeaders {
    type Error = String;

    fn try_from(file: ReservedHeadersFile) -> Result<Self, String> {
        let lower = |entries: Vec<String>, what: &str| {
            entries
                .into_iter()
                .map(|entry| {
                    let valid = !entry.is_empty()
                        && entry
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
                    if valid {
                        Ok(canonical(&entry))
                    } else {
                        Err(format!("{what} {entry:?} is not a header name"))
                    }
                })
                .collect::<Result<Vec<_>, _>>()
        };
        Ok(Self {
            prefixes: lower(file.prefixes, "prefix")?,
            names: lower(file.names, "name")?,
        })
    }
}

/// Lower case with `_` read as `-`: `X_Gateway_Scopes` is the same header as `x-gateway-scopes`
/// to every framework that maps one onto the other (CGI, WSGI, many others).
fn canonical(name: &str) -> String {
    name.bytes()
        .map(|b| char::from(canonical_byte(b)))
        .collect()
}

fn canonical_byte(b: u8) -> u8 {
    if b == b'_' {
        b'-'
    } else {
        b.to_ascii_lowercase()
    }
}

impl ReservedHeaders {
    /// Whether `name` (any case, `_` or `-`) is in the reserved namespace. Compared byte by byte
    /// against the canonical entries, without allocating: it runs for every header of every
    /// request.
    pub fn contains(&self, name: &str) -> bool {
        let name = name.as_bytes();
        let starts_with = |entry: &String| {
            name.len() >= entry.len()
                && name
                    .iter()
                    .zip(entry.as_bytes())
                    .all(|(&b, &e)| canonical_byte(b) == e)
        };
        self.names
            .iter()
            .any(|n| n.len() == name.len() && starts_with(n))
            || self.prefixes.iter().any(starts_with)
    }

    /// Removes every reserved header from the request; returns how many names were removed.
    pub fn strip(&self, request: &mut RequestHeader) -> usize {
        let reserved: Vec<http::HeaderName> = request
            .headers
            .keys()
            .filter(|name| self.contains(name.as_str()))
            .cloned()
            .collect();
        for name in &reserved {
            request.remove_header(name);
        }
        reserved.len()
    }
}

/// Removes hop-by-hop headers: those named in `Connection`, `Connection` itself, `Keep-Alive`,
/// `Proxy-*`, `TE` (except `TE: trailers`, which gRPC needs end to end), and `Upgrade` unless
/// the route lets the connection be upgraded (then `Connection: upgrade` stays too).
pub fn strip_hop_by_hop(request: &mut RequestHeader, allow_upgrade: bool) {
    let listed: Vec<String> = request
        .headers
        .get_all(http::header::CONNECTION)
        .iter()
        // As bytes: a value with one invalid byte still names the headers it lists.
        .flat_map(|v| v.as_bytes().split(|&b| b == b','))
        .map(|token| String::from_utf8_lossy(token.trim_ascii()).to_ascii_lowercase())
        .filter(|token| !token.is_empty())
        .collect();
    let upgrading = allow_upgrade && listed.iter().any(|t| t == "upgrade");
    let te_trailers_only = request
        .headers
        .get_all(http::header::TE)
        .iter()
        .all(|v| v.as_bytes().eq_ignore_ascii_case(b"trailers"));
    let hop_by_hop: Vec<http::HeaderName> = request
        .headers
        .keys()
        .filter(|name| {
            let name = name.as_str();
            match name {
                "upgrade" => !upgrading,
                "connection" => !upgrading,
                "te" => !te_trailers_only,
                "keep-alive" => true,
                _ => name.starts_with("proxy-") || listed.iter().any(|t| t == name),
            }
        })
        .cloned()
        .collect();
    for name in &hop_by_hop {
        request.remove_header(name);
    }
    if upgrading {
        let _ = request.insert_header(http::header::CONNECTION, "upgrade");
    }
}

/// Peers whose `X-Forwarded-*` headers are believed (`server.trusted_proxies`): load balancers
/// in front of the gateway. Empty by default: every client is untrusted.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(try_from = "Vec<String>")]
pub struct TrustedProxies(Vec<IpNet>);

impl TryFrom<Vec<String>> for TrustedProxies {
    type Error = String;

    fn try_from(entries: Vec<String>) -> Result<Self, String> {
        entries
            .iter()
            .map(|entry| {
                entry
                    .parse::<IpNet>()
                    .or_else(|_| entry.parse::<IpAddr>().map(IpNet::from))
                    .map_err(|_| format!("{entry:?} is not an address or CIDR range"))
            })
            .collect::<Result<_, _>>()
            .map(Self)
    }
}

impl TrustedProxies {
    /// Whether `peer` is a trusted proxy.
    pub fn trusts(&self, peer: Option<IpAddr>) -> bool {
        peer.is_some_and(|ip| self.0.iter().any(|net| net.contains(&ip)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(headers: &[(&str, &str)]) -> RequestHeader {
        let mut request = RequestHeader::build("GET", b"/", None).unwrap();
        for (name, value) in headers {
            request.append_header(name.to_string(), *value).unwrap();
        }
        request
    }

    fn names(request: &RequestHeader) -> Vec<String> {
        let mut names: Vec<String> = request.headers.keys().map(|n| n.to_string()).collect();
        names.sort();
        names
    }

    #[test]
    fn reserved_names_are_stripped_with_underscore_look_alikes() {
        let reserved = ReservedHeaders::default();
        let mut forged = request(&[
            ("x-gateway-identity", "admin"),
            ("X_Gateway_Scopes", "admin"),
            ("x-gateway-tenant", "a"),
            ("x-gateway-tenant", "b"),
            ("x-gatewayish", "kept"),
            ("accept", "*/*"),
        ]);
        assert_eq!(reserved.strip(&mut forged), 3);
        assert_eq!(names(&forged), ["accept", "x-gatewayish"]);
    }

    #[test]
    fn reserved_names_can_be_listed() {
        let reserved: ReservedHeaders =
            serde_json::from_str(r#"{"prefixes": ["x-gateway-"], "names": ["X-User_ID"]}"#)
                .unwrap();
        assert!(reserved.contains("x_user-id"));
        assert!(!reserved.contains("x-user"));
        let bad = serde_json::from_str::<ReservedHeaders>(r#"{"names": ["bad name"]}"#);
        assert!(bad.unwrap_err().to_string().contains("not a header name"));
    }

    #[test]
    fn hop_by_hop_headers_are_not_forwarded() {
        let mut hop = request(&[
            ("connection", "close, X-Secret"),
            ("x-secret", "s"),
            ("keep-alive", "timeout=5"),
            ("proxy-authorization", "Basic x"),
            ("te", "gzip"),
            ("upgrade", "websocket"),
            ("accept", "*/*"),
        ]);
        strip_hop_by_hop(&mut hop, false);
        assert_eq!(names(&hop), ["accept"]);
    }

    #[test]
    fn a_connection_value_with_invalid_bytes_still_names_its_headers() {
        let mut hop = request(&[("x-secret", "s"), ("accept", "*/*")]);
        hop.append_header(
            "connection",
            http::HeaderValue::from_bytes(b"X-Secret, \xff\xfe").unwrap(),
        )
        .unwrap();
        strip_hop_by_hop(&mut hop, false);
        assert_eq!(names(&hop), ["accept"]);
    }

    #[test]
    fn te_trailers_and_allowed_upgrades_pass() {
        let mut grpc = request(&[("te", "trailers")]);
        strip_hop_by_hop(&mut grpc, false);
        assert_eq!(names(&grpc), ["te"]);
        let mut websocket = request(&[
            ("connection", "Upgrade, keep-alive"),
            ("upgrade", "websocket"),
        ]);
        strip_hop_by_hop(&mut websocket, true);
        assert_eq!(names(&websocket), ["connection", "upgrade"]);
        assert_eq!(websocket.headers["connection"], "upgrade");
    }

    #[test]
    fn trusted_proxies_parse_ranges_and_addresses() {
        let trusted =
            TrustedProxies::try_from(vec!["10.0.0.0/8".to_string(), "::1".to_string()]).unwrap();
        assert!(trusted.trusts(Some("10.1.2.3".parse().unwrap())));
        assert!(trusted.trusts(Some("::1".parse().unwrap())));
        assert!(!trusted.trusts(Some("11.0.0.1".parse().unwrap())));
        assert!(!trusted.trusts(None));
        assert!(TrustedProxies::try_from(vec!["10.0.0.0/33".to_string()]).is_err());
    }
}
