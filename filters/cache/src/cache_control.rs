//! `Cache-Control` directives (RFC 9111) that the cache acts on.

/// The directives of one `Cache-Control` header.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct CacheControl {
    /// `no-store`.
    pub no_store: bool,
    /// `no-cache`.
    pub no_cache: bool,
    /// `private`.
    pub private: bool,
    /// `public`.
    pub public: bool,
    /// `max-age`.
    pub max_age: Option<u64>,
    /// `s-maxage` (shared caches, which this is).
    pub s_maxage: Option<u64>,
    /// `stale-if-error`.
    pub stale_if_error: Option<u64>,
}

impl CacheControl {
    /// Parses a header value; unknown directives are ignored, malformed numbers too.
    pub fn parse(value: &str) -> Self {
        let mut cc = Self::default();
        for directive in value.split(',') {
            let (name, argument) = match directive.split_once('=') {
                Some((n, a)) => (n.trim(), Some(a.trim().trim_matches('"'))),
                None => (directive.trim(), None),
            };
            let seconds = || argument.and_then(|a| a.parse::<u64>().ok());
            match name.to_ascii_lowercase().as_str() {
                "no-store" => cc.no_store = true,
                "no-cache" => cc.no_cache = true,
                "private" => cc.private = true,
                "public" => cc.public = true,
                "max-age" => cc.max_age = seconds(),
                "s-maxage" => cc.s_maxage = seconds(),
                "stale-if-error" => cc.stale_if_error = seconds(),
                _ => {}
            }
        }
        cc
    }

    /// Freshness a shared cache gives the response: `s-maxage`, else `max-age`.
    pub fn shared_max_age(&self) -> Option<u64> {
        self.s_maxage.or(self.max_age)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_directives_that_matter() {
        let cc = CacheControl::parse("public, max-age=60, S-MAXAGE=\"120\", stale-if-error=300");
        assert!(cc.public && !cc.no_store);
        assert_eq!(cc.shared_max_age(), Some(120));
        assert_eq!(cc.stale_if_error, Some(300));
        let cc = CacheControl::parse("no-store,private , no-cache, max-age=abc");
        assert!(cc.no_store && cc.private && cc.no_cache);
        assert_eq!(cc.max_age, None);
        assert_eq!(CacheControl::parse(""), CacheControl::default());
    }
}
