//! Request paths normalised before routing, filters and the upstream, so that policy matched on a
//! path prefix cannot be stepped around with `/api/%61dmin`, `/api//admin` or `/api/x/../admin`,
//! which most upstream frameworks would serve as `/api/admin`.
//!
//! What Envoy does with `normalize_path`, `merge_slashes` and `path_with_escaped_slashes_action`,
//! on by default: percent-encoded unreserved characters are decoded (RFC 3986 §6.2.2.2), other
//! escapes get upper-case hex, dot segments are removed (§5.2.4), repeated slashes merged, and an
//! encoded `/` or `\` is refused (or kept, per configuration). The query string is left alone.

use serde::Deserialize;
use std::borrow::Cow;

/// How request paths are normalised (`server.paths`).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct PathSettings {
    /// Decode escaped unreserved characters and remove `.` and `..` segments.
    pub normalize: bool,
    /// Merge repeated slashes: `/a//b` → `/a/b`.
    pub merge_slashes: bool,
    /// What an encoded `/` or `\` (`%2F`, `%5C`) in the path gets.
    pub escaped_slashes: EscapedSlashes,
}

impl Default for PathSettings {
    fn default() -> Self {
        Self {
            normalize: true,
            merge_slashes: true,
            escaped_slashes: EscapedSlashes::Reject,
        }
    }
}

/// Treatment of `%2F` and `%5C` in paths.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum EscapedSlashes {
    /// 400: an upstream that decodes them would see a different path than routes and filters.
    Reject,
    /// Forward them encoded (for APIs that carry identifiers with slashes in one segment).
    Keep,
}

/// Why a path was refused (the client gets a 400).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PathRejection {
    /// The path does not start with `/` (and is not `*`).
    #[error("the path must start with /")]
    NotAbsolute,
    /// A `%` not followed by two hex digits.
    #[error("the path has an invalid percent-encoding")]
    BadEscape,
    /// An encoded `/` or `\` while `escaped_slashes` is `reject`.
    #[error("the path has an encoded slash or backslash")]
    EscapedSlash,
}

impl PathSettings {
    /// The normalised form of `path_and_query` (a request target such as `/a/./b?x=1`); borrowed
    /// when it is already normal.
    pub fn normalize<'a>(&self, path_and_query: &'a str) -> Result<Cow<'a, str>, PathRejection> {
        let (path, query) = match path_and_query.find('?') {
            Some(i) => path_and_query.split_at(i),
            None => (path_and_query, ""),
        };
        if path == "*" {
            return Ok(Cow::Borrowed(path_and_query));
        }
        if !path.starts_with('/') {
            return Err(PathRejection::NotAbsolute);
        }
        let unescaped = self.unescape(path)?;
        // Most paths are already normal: nothing to decode, merge or resolve.
        let has_dot_segment = self.normalize && path.contains("/.");
        let has_empty_segment = self.merge_slashes && path.contains("//");
        if matches!(unescaped, Cow::Borrowed(_)) && !has_dot_segment && !has_empty_segment {
            return Ok(Cow::Borrowed(path_and_query));
        }
        let mut segments: Vec<&str> = Vec::new();
        // The first element is the empty segment before the leading slash.
        let mut parts = unescaped.split('/').skip(1).peekable();
        while let Some(segment) = parts.next() {
            let last = parts.peek().is_none();
            match segment {
                "." | ".." if self.normalize => {
                    if segment == ".." {
                        // Pop the previous segment (never above the root).
                        segments.pop();
                    }
                    if last {
                        segments.push(""); // `/a/b/..` → `/a/`: the directory itself
                    }
                }
                "" if self.merge_slashes && !last => {}
                _ => segments.push(segment),
            }
        }
        let mut normal = String::with_capacity(path_and_query.len());
        for segment in &segments {
            normal.push('/');
            normal.push_str(segment);
        }
        if normal.is_empty() {
            normal.push('/');
        }
        if normal == path {
            return Ok(Cow::Borrowed(path_and_query));
        }
        normal.push_str(query);
        Ok(Cow::Owned(normal))
    }

    /// Decodes escaped unreserved characters and upper-cases the hex of the other escapes.
    fn unescape<'a>(&self, path: &'a str) -> Result<Cow<'a, str>, PathRejection> {
        if !path.contains('%') {
            return Ok(Cow::Borrowed(path));
        }
        let bytes = path.as_bytes();
        // Bytes, not chars: only ASCII escapes are replaced (by ASCII), so UTF-8 stays valid.
        let mut out = Vec::with_capacity(path.len());
        let mut i = 0;
        while i < bytes.len() {
            if bytes[i] != b'%' {
                out.push(bytes[i]);
                i += 1;
                continue;
            }
            let byte = bytes
                .get(i + 1..i + 3)
                .and_then(|hex| std::str::from_utf8(hex).ok())
                .and_then(|hex| u8::from_str_radix(hex, 16).ok())
                .ok_or(PathRejection::BadEscape)?;
            match byte {
                b'/' | b'\\' if self.escaped_slashes == EscapedSlashes::Reject => {
                    return Err(PathRejection::EscapedSlash)
                }
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~'
                    if self.normalize =>
                {
                    out.push(byte)
                }
                _ => out.extend_from_slice(format!("%{byte:02X}").as_bytes()),
            }
            i += 3;
        }
        String::from_utf8(out)
            .map(Cow::Owned)
            .map_err(|_| PathRejection::BadEscape)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn normal(path: &str) -> Result<String, PathRejection> {
        PathSettings::default().normalize(path).map(Cow::into_owned)
    }

    #[test]
    fn bypass_attempts_on_a_prefix_normalise_to_the_protected_path() {
        for path in [
            "/api/%61dmin/x",
            "/api//admin/x",
            "/api/./admin/x",
            "/api/x/../admin/x",
            "/api/%2e/admin/x",
            "/api/x/%2E%2E/admin/x",
            "//api///admin/x",
            "/../api/admin/x",
        ] {
            assert_eq!(normal(path).as_deref(), Ok("/api/admin/x"), "{path}");
        }
    }

    #[test]
    fn normal_paths_are_borrowed_unchanged() {
        let settings = PathSettings::default();
        for path in [
            "/",
            "/a/b",
            "/a/b/",
            "/a?x=1&y=/../",
            "*",
            "/a%20b",
            "/%E2%82%AC",
        ] {
            assert!(
                matches!(settings.normalize(path), Ok(Cow::Borrowed(p)) if p == path),
                "{path}"
            );
        }
    }

    #[test]
    fn dot_segments_keep_the_trailing_slash_and_stop_at_the_root() {
        assert_eq!(normal("/a/b/..").as_deref(), Ok("/a/"));
        assert_eq!(normal("/a/.").as_deref(), Ok("/a/"));
        assert_eq!(normal("/..").as_deref(), Ok("/"));
        assert_eq!(normal("/a/../../..").as_deref(), Ok("/"));
        assert_eq!(normal("/a/..b/.c").as_deref(), Ok("/a/..b/.c"));
    }

    #[test]
    fn query_strings_are_left_alone() {
        assert_eq!(
            normal("/a//b?next=/x/../y").as_deref(),
            Ok("/a/b?next=/x/../y")
        );
    }

    #[test]
    fn other_escapes_are_kept_with_upper_case_hex() {
        assert_eq!(normal("/a%20b%3f").as_deref(), Ok("/a%20b%3F"));
    }

    #[test]
    fn escaped_slashes_and_bad_escapes_are_refused() {
        for path in ["/a%2Fb", "/a%2fb", "/a%5Cb", "/a%5c..%5cb"] {
            assert_eq!(normal(path), Err(PathRejection::EscapedSlash), "{path}");
        }
        for path in ["/a%", "/a%2", "/a%zz", "/a%é"] {
            assert_eq!(normal(path), Err(PathRejection::BadEscape), "{path}");
        }
        assert_eq!(normal("a/b"), Err(PathRejection::NotAbsolute));
    }

    #[test]
    fn escaped_slashes_may_be_kept() {
        let settings = PathSettings {
            escaped_slashes: EscapedSlashes::Keep,
            ..PathSettings::default()
        };
        assert_eq!(settings.normalize("/a/%2f..").unwrap(), "/a/%2F..");
    }

    #[test]
    fn each_step_can_be_turned_off() {
        let settings = PathSettings {
            normalize: false,
            merge_slashes: false,
            escaped_slashes: EscapedSlashes::Keep,
        };
        for path in ["/a//b/../%61", "/a/./b"] {
            assert_eq!(settings.normalize(path).unwrap(), path);
        }
        let merge_only = PathSettings {
            normalize: false,
            ..PathSettings::default()
        };
        assert_eq!(merge_only.normalize("/a//./b").unwrap(), "/a/./b");
    }
}
