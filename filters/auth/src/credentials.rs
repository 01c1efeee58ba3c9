//! Finding the credential a request presents: an API key (header or query parameter) or a bearer
//! token (header with prefix, query parameter or cookie).

use crate::config::{ApiKeyConfig, TokenSource};
use filter_common::{is_malformed, query_param};

/// Read access to the request, so the search works on real requests and on test maps alike.
pub trait RequestView {
    /// First value of a request header (lowercase name); invalid UTF-8 arrives as U+FFFD
    /// (`filter_common::header_text`).
    fn header(&self, name: &str) -> Option<String>;
    /// `:path`, with the query string.
    fn path(&self) -> String;
    /// `:method`.
    fn method(&self) -> String;
}

/// Where a credential was found, so it can be removed before the request goes upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// A header.
    Header(String),
    /// A query parameter.
    Query(String),
    /// A cookie (left in place: removing one cookie from `Cookie` would alter the others).
    Cookie,
}

/// A credential and where it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    /// The credential's value.
    pub value: String,
    /// Where it was.
    pub location: Location,
}

/// The API key the request presents, if any: the header wins over the query parameter.
pub fn find_api_key(config: &ApiKeyConfig, request: &dyn RequestView) -> Option<Found> {
    if let Some(value) = request.header(&config.header) {
        return Some(Found {
            value,
            location: Location::Header(config.header.clone()),
        });
    }
    let param = config.query_parameter.as_deref()?;
    query_param(&request.path(), param).map(|value| Found {
        value,
        location: Location::Query(param.to_string()),
    })
}

/// The bearer token the request presents, from the first source that has one.
pub fn find_token(sources: &[TokenSource], request: &dyn RequestView) -> Option<Found> {
    sources.iter().find_map(|source| match source {
        TokenSource::Header { name, prefix } => {
            let value = request.header(name)?;
            // Invalid bytes may hide the prefix: the header is presented as a (malformed) token
            // rather than skipped, so it is refused instead of read as no credential.
            if is_malformed(&value) {
                return Some(Found {
                    value,
                    location: Location::Header(name.clone()),
                });
            }
            let token = strip_prefix_ignore_case(&value, prefix)?.trim();
            (!token.is_empty()).then(|| Found {
                value: token.to_string(),
                location: Location::Header(name.clone()),
            })
        }
        TokenSource::Query(name) => query_param(&request.path(), name)
            .filter(|v| !v.is_empty())
            .map(|value| Found {
                value,
                location: Location::Query(name.clone()),
            }),
        TokenSource::Cookie(name) => {
            cookie(request.header("cookie")?.as_str(), name).map(|v| Found {
                value: v.to_string(),
                location: Location::Cookie,
            })
        }
    })
}

fn strip_prefix_ignore_case<'a>(value: &'a str, prefix: &str) -> Option<&'a str> {
    let head = value.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &value[prefix.len()..])
}

fn cookie<'a>(header: &'a str, name: &str) -> Option<&'a str> {
    header.split(';').find_map(|pair| {
        let (key, value) = pair.trim().split_once('=')?;
        (key == name && !value.is_empty()).then_some(value.trim_matches('"'))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    /// A request made of a method, a path and headers.
    struct TestRequest {
        method: &'static str,
        path: String,
        headers: HashMap<String, String>,
    }

    impl TestRequest {
        fn get(path: &str, headers: &[(&str, &str)]) -> Self {
            Self {
                method: "GET",
                path: path.into(),
                headers: headers
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            }
        }
    }

    impl RequestView for TestRequest {
        fn header(&self, name: &str) -> Option<String> {
            self.headers.get(name).cloned()
        }
        fn path(&self) -> String {
            self.path.clone()
        }
        fn method(&self) -> String {
            self.method.into()
        }
    }

    fn sources() -> Vec<TokenSource> {
        vec![
            TokenSource::Header {
                name: "authorization".into(),
                prefix: "Bearer ".into(),
            },
            TokenSource::Query("access_token".into()),
            TokenSource::Cookie("session".into()),
        ]
    }

    #[test]
    fn tokens_are_found_in_order() {
        let header = TestRequest::get("/?access_token=q", &[("authorization", "bearer h")]);
        assert_eq!(
            find_token(&sources(), &header),
            Some(Found {
                value: "h".into(),
                location: Location::Header("authorization".into())
            })
        );
        let query = TestRequest::get("/?access_token=q", &[("authorization", "Basic x")]);
        assert_eq!(find_token(&sources(), &query).unwrap().value, "q");
        let cookie = TestRequest::get("/", &[("cookie", "a=1; session=c; b=2")]);
        assert_eq!(
            find_token(&sources(), &cookie),
            Some(Found {
                value: "c".into(),
                location: Location::Cookie
            })
        );
        let none = TestRequest::get("/", &[("authorization", "Bearer  ")]);
        assert_eq!(find_token(&sources(), &none), None);
    }

    #[test]
    fn malformed_credentials_are_found_not_skipped() {
        use filter_common::header_text;
        let hidden_prefix = header_text(b"Bea\xffrer abc".to_vec());
        let header = TestRequest::get("/", &[("authorization", &hidden_prefix)]);
        let found = find_token(&sources(), &header).unwrap();
        assert_eq!(found.location, Location::Header("authorization".into()));
        assert!(is_malformed(&found.value));
        let cookie = header_text(b"a=1; session=\xfe\xff".to_vec());
        let cookie = TestRequest::get("/", &[("cookie", &cookie)]);
        assert!(is_malformed(
            &find_token(&sources(), &cookie).unwrap().value
        ));
        let query = TestRequest::get("/?access_token=%FF", &[]);
        assert!(is_malformed(&find_token(&sources(), &query).unwrap().value));
    }
}
