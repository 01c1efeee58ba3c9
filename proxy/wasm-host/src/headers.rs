//! An ordered header list with proxy-wasm semantics (pseudo-headers allowed, names lower-case).

/// Ordered `(name, value)` pairs. Names are stored lower-case; values are bytes.
///
/// Request headers carry `:method`, `:path`, `:authority` and `:scheme` and response headers carry
/// `:status`, as in Envoy, so filters written for Envoy see the same map here.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Headers {
    pairs: Vec<(String, Vec<u8>)>,
}

impl Headers {
    /// An empty list.
    pub fn new() -> Self {
        Self::default()
    }

    /// Builds a list from pairs, lower-casing names.
    pub fn from_pairs<N: AsRef<str>, V: AsRef<[u8]>>(
        pairs: impl IntoIterator<Item = (N, V)>,
    ) -> Self {
        let mut headers = Self::new();
        for (name, value) in pairs {
            headers.add(name.as_ref(), value.as_ref());
        }
        headers
    }

    /// Number of pairs.
    pub fn len(&self) -> usize {
        self.pairs.len()
    }

    /// True when there are no pairs.
    pub fn is_empty(&self) -> bool {
        self.pairs.is_empty()
    }

    /// The pairs in order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = (&str, &[u8])> + Clone + '_ {
        self.pairs.iter().map(|(n, v)| (n.as_str(), v.as_slice()))
    }

    /// The first value of `name`; several values are joined with `,` as Envoy does.
    pub fn get(&self, name: &str) -> Option<Vec<u8>> {
        let mut values = self
            .pairs
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name));
        let mut joined = values.next()?.1.clone();
        for (_, value) in values {
            joined.push(b',');
            joined.extend_from_slice(value);
        }
        Some(joined)
    }

    /// The value of `name` as UTF-8 text, if present and valid.
    pub fn get_str(&self, name: &str) -> Option<String> {
        self.get(name).and_then(|v| String::from_utf8(v).ok())
    }

    /// Appends a pair.
    pub fn add(&mut self, name: &str, value: &[u8]) {
        self.pairs.push((name.to_ascii_lowercase(), value.to_vec()));
    }

    /// Replaces every value of `name` with one value (adds it when absent).
    pub fn replace(&mut self, name: &str, value: &[u8]) {
        self.remove(name);
        self.add(name, value);
    }

    /// Removes every value of `name`.
    pub fn remove(&mut self, name: &str) {
        self.pairs.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
    }

    /// Total size of names and values, for limits.
    pub fn byte_size(&self) -> usize {
        self.pairs.iter().map(|(n, v)| n.len() + v.len()).sum()
    }
}

/// True when `name` and `value` can be sent on the wire: a header name is a non-empty token (a
/// leading `:` allowed for pseudo-headers), and a value holds no CR, LF or NUL (header injection).
pub fn is_valid_header(name: &[u8], value: &[u8]) -> bool {
    let token = name.strip_prefix(b":").unwrap_or(name);
    let is_token_char = |b: &u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(b);
    !token.is_empty()
        && token.iter().all(is_token_char)
        && !value.iter().any(|b| matches!(b, b'\r' | b'\n' | 0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_case_insensitive_and_stored_lower_case() {
        let mut h = Headers::from_pairs([("X-A", "1"), ("x-a", "2"), ("b", "3")]);
        assert_eq!(h.get("x-A").unwrap(), b"1,2");
        h.replace("X-a", b"9");
        assert_eq!(
            h.iter().collect::<Vec<_>>(),
            vec![("b", &b"3"[..]), ("x-a", &b"9"[..])]
        );
        h.remove("B");
        assert_eq!(h.len(), 1);
    }

    #[test]
    fn header_validation() {
        assert!(is_valid_header(b":path", b"/x"));
        assert!(is_valid_header(b"x-id", b"a b"));
        assert!(!is_valid_header(b"", b"x"));
        assert!(!is_valid_header(b"bad name", b"x"));
        assert!(!is_valid_header(b"x", b"a\r\nevil: 1"));
        assert!(!is_valid_header(b"x", b"a\0"));
    }
}
