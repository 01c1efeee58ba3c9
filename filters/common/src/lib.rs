//! Helpers shared by the gateway's proxy-wasm filters.
//!
//! Everything here is plain Rust so it unit-tests natively; the filters' thin
//! wasm shells call into it.

#[cfg(target_arch = "wasm32")]
pub mod host;
pub mod sse;
pub mod sweep;
pub mod testing;

use serde::de::DeserializeOwned;

pub use gateway_contract::ConfigError;

/// How errors about the plugin configuration as a whole name it.
const WHOLE_CONFIGURATION: &str = "plugin configuration";

/// Parses a JSON plugin configuration. Errors name the field (`rules[2].scopes`); an empty
/// configuration is refused with `expected`, a description of what should be there.
pub fn parse_config<T: DeserializeOwned>(bytes: &[u8], expected: &str) -> Result<T, ConfigError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(ConfigError::new(
            WHOLE_CONFIGURATION,
            format!("plugin configuration is empty; expected {expected}"),
        ));
    }
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(&mut deserializer).map_err(|e| {
        let field = e.path().to_string();
        let field = if field == "." || field == "?" {
            WHOLE_CONFIGURATION.to_string()
        } else {
            field
        };
        ConfigError::new(field, redact_values(&e.into_inner().to_string()))
    })
}

/// Checks the name of a configured entry (a limit, a budget): non-empty, without `|` (it separates
/// the parts of shared-data keys) or NUL, and not used by an `earlier` entry.
pub fn check_entry_name<'a>(
    field: &str,
    name: &str,
    mut earlier: impl Iterator<Item = &'a str>,
) -> Result<(), ConfigError> {
    if name.is_empty() || name.contains(['\0', '|']) {
        return Err(ConfigError::new(
            format!("{field}.name"),
            "must be non-empty, without '|' or NUL",
        ));
    }
    if earlier.any(|other| other == name) {
        return Err(ConfigError::new(
            format!("{field}.name"),
            format!("{name:?} is used by another entry"),
        ));
    }
    Ok(())
}

/// Checks a configured request header name (a key taken from a header): not empty, and not a
/// pseudo-header.
pub fn check_header_name(field: &str, name: &str) -> Result<(), ConfigError> {
    if name.is_empty() || name.starts_with(':') {
        return Err(ConfigError::new(
            field,
            format!("{name:?} is not a request header name"),
        ));
    }
    Ok(())
}

/// A serde error message with the values it quotes taken out: configurations hold API keys and
/// secrets, and their errors are logged. serde quotes values in double quotes (`invalid type:
/// string "sk-…", expected …`) and names fields and variants in backticks, which are kept.
fn redact_values(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut parts = message.split('"');
    if let Some(first) = parts.next() {
        out.push_str(first);
    }
    let mut inside = true;
    for part in parts {
        out.push('"');
        out.push_str(if inside { "…" } else { part });
        inside = !inside;
    }
    out
}

/// Request headers copied while their phase runs: Envoy lets a filter read them only until that
/// phase continues (later reads are `BAD_ARGUMENT`), so a filter that decides from the body keeps
/// this copy for what it needs of the headers.
#[derive(Debug, Clone, Default)]
pub struct HeaderSnapshot(Vec<(String, Vec<u8>)>);

impl HeaderSnapshot {
    /// A copy of `pairs` (lowercase names, as both hosts give them).
    pub fn new(pairs: Vec<(String, Vec<u8>)>) -> Self {
        Self(pairs)
    }

    /// The first value of header `name`, as text ([`header_text`]).
    pub fn header(&self, name: &str) -> Option<String> {
        let (_, value) = self.0.iter().find(|(n, _)| n == name)?;
        Some(header_text(value.clone()))
    }
}

/// Shared data as filters use it: values with a compare-and-swap version. The host implements it
/// in `host::HostSharedData`; tests use an in-memory map.
pub trait SharedStore {
    /// The value of `key` and its version, if set. A deleted key may read as an empty value.
    fn get(&self, key: &str) -> (Option<Vec<u8>>, Option<u32>);
    /// Stores `value` if the version still is `cas` (0: unconditionally); an empty value deletes.
    /// Returns false on a version mismatch or a refused write.
    fn set(&self, key: &str, value: &[u8], cas: u32) -> bool;
}

/// A header value the host handed over as bytes, as text. Bytes that are not UTF-8 (obs-text is
/// legal on the wire) become U+FFFD, which no API key, base64url token, number or directive the
/// filters act on contains: a malformed value is refused or ignored instead of trapping the VM,
/// as the SDK's `String` accessors would.
pub fn header_text(bytes: Vec<u8>) -> String {
    match String::from_utf8(bytes) {
        Ok(text) => text,
        Err(err) => String::from_utf8_lossy(err.as_bytes()).into_owned(),
    }
}

/// Whether a value read through [`header_text`] (or [`query_param`]) had invalid bytes. A value
/// that really contained U+FFFD reads as malformed too, which only errs on the side of refusing.
pub fn is_malformed(text: &str) -> bool {
    text.contains(char::REPLACEMENT_CHARACTER)
}

/// Returns the value of query parameter `name` in a request path such as `/a?b=1&c=2`.
///
/// The value is percent-decoded; `+` is not treated as a space (API keys and tokens never contain it
/// as a space). Decoded bytes that are not UTF-8 become U+FFFD, as in [`header_text`].
pub fn query_param(path: &str, name: &str) -> Option<String> {
    let query = path.split_once('?')?.1;
    let query = query.split('#').next().unwrap_or_default();
    query.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        (percent_decode(key) == name).then(|| percent_decode(value))
    })
}

/// Removes every occurrence of query parameter `name` from a request path, keeping the others in order.
pub fn remove_query_param(path: &str, name: &str) -> String {
    let Some((base, query)) = path.split_once('?') else {
        return path.to_string();
    };
    let kept: Vec<&str> = query
        .split('&')
        .filter(|pair| {
            let key = pair.split_once('=').map_or(*pair, |(k, _)| k);
            percent_decode(key) != name
        })
        .collect();
    if kept.is_empty() {
        base.to_string()
    } else {
        format!("{base}?{}", kept.join("&"))
    }
}

fn percent_decode(input: &str) -> String {
    let bytes = input.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let Some(byte) = hex_byte(bytes[i + 1], bytes[i + 2]) {
                out.push(byte);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex_byte(high: u8, low: u8) -> Option<u8> {
    let digit = |c: u8| (c as char).to_digit(16);
    Some((digit(high)? * 16 + digit(low)?) as u8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configuration_errors_never_quote_the_values() {
        #[derive(Debug, serde::Deserialize)]
        #[allow(dead_code)]
        struct Keys {
            keys: Vec<u64>,
        }
        let error = parse_config::<Keys>(br#"{"keys": ["sk-live-secret"]}"#, "keys").unwrap_err();
        assert_eq!(error.field, "keys[0]");
        assert!(
            !error.message.contains("sk-live-secret"),
            "{}",
            error.message
        );
        assert!(error.message.contains("invalid type"), "{}", error.message);
        let missing = parse_config::<Keys>(br#"{"kes": []}"#, "keys").unwrap_err();
        assert!(
            missing.message.contains("`keys`"),
            "field names stay: {}",
            missing.message
        );
    }

    #[test]
    fn query_param_finds_and_decodes() {
        assert_eq!(
            query_param("/a?x=1&key=a%2Fb", "key").as_deref(),
            Some("a/b")
        );
        assert_eq!(query_param("/a?key", "key").as_deref(), Some(""));
        assert_eq!(query_param("/a?x=1", "key"), None);
        assert_eq!(query_param("/a", "key"), None);
        assert_eq!(query_param("/a?key=v#frag", "key").as_deref(), Some("v"));
        assert_eq!(query_param("/a?key=%zz", "key").as_deref(), Some("%zz"));
        assert_eq!(query_param("/a?key=%4", "key").as_deref(), Some("%4"));
    }

    #[test]
    fn invalid_header_bytes_become_a_malformed_value() {
        assert_eq!(header_text(b"abc".to_vec()), "abc");
        assert!(!is_malformed(&header_text("caf\u{e9}".as_bytes().to_vec())));
        let bad = header_text(b"k\xff\xfe".to_vec());
        assert!(bad.starts_with('k') && is_malformed(&bad));
        assert!(is_malformed(&header_text(vec![0xc3])), "truncated sequence");
        assert!(is_malformed(&query_param("/a?key=%FF", "key").unwrap()));
    }

    #[test]
    fn remove_query_param_keeps_others() {
        assert_eq!(remove_query_param("/a?x=1&key=2&y=3", "key"), "/a?x=1&y=3");
        assert_eq!(remove_query_param("/a?key=2", "key"), "/a");
        assert_eq!(remove_query_param("/a", "key"), "/a");
        assert_eq!(remove_query_param("/a?k%65y=2", "key"), "/a");
    }
}
