//! Route matching: the first route whose conditions all hold takes the request.

use crate::config::{ConfigError, HeaderMatch, PathMatch, RouteMatch};
use regex::Regex;

/// The parts of a request routes match on.
pub struct RequestFacts<'a> {
    /// The listener the request arrived on.
    pub listener: &'a str,
    /// Method, upper case.
    pub method: &'a str,
    /// Path without the query string.
    pub path: &'a str,
    /// Host without the port.
    pub host: &'a str,
    /// Header lookup (first value), case-insensitive name.
    pub header: &'a dyn Fn(&str) -> Option<&'a str>,
}

/// A compiled [`RouteMatch`].
#[derive(Debug)]
pub struct RouteMatcher {
    listeners: Vec<String>,
    path: Option<CompiledPath>,
    hosts: Vec<String>,
    methods: Vec<String>,
    headers: Vec<CompiledHeader>,
}

#[derive(Debug)]
enum CompiledPath {
    Prefix(String),
    Exact(String),
    Regex(Regex),
}

#[derive(Debug)]
struct CompiledHeader {
    name: String,
    condition: HeaderCondition,
}

#[derive(Debug)]
enum HeaderCondition {
    Exact(String),
    Regex(Regex),
    Present(bool),
}

impl RouteMatcher {
    /// Compiles the conditions; `field` names the `match` block in errors.
    pub fn compile(spec: &RouteMatch, field: &str) -> Result<Self, ConfigError> {
        let path = match &spec.path {
            None => None,
            Some(path) => Some(compile_path(path, &format!("{field}.path"))?),
        };
        let headers = spec
            .headers
            .iter()
            .enumerate()
            .map(|(i, h)| compile_header(h, &format!("{field}.headers[{i}]")))
            .collect::<Result<_, _>>()?;
        Ok(Self {
            listeners: spec.listeners.clone(),
            path,
            hosts: spec.hosts.iter().map(|h| h.to_ascii_lowercase()).collect(),
            methods: spec
                .methods
                .iter()
                .map(|m| m.to_ascii_uppercase())
                .collect(),
            headers,
        })
    }

    /// Whether the request satisfies every condition.
    pub fn matches(&self, request: &RequestFacts<'_>) -> bool {
        let path_ok = match &self.path {
            None => true,
            Some(CompiledPath::Prefix(p)) => request.path.starts_with(p.as_str()),
            Some(CompiledPath::Exact(p)) => request.path == p,
            Some(CompiledPath::Regex(r)) => r.is_match(request.path),
        };
        path_ok
            && (self.listeners.is_empty() || self.listeners.iter().any(|l| l == request.listener))
            && (self.hosts.is_empty()
                || self
                    .hosts
                    .iter()
                    .any(|h| h.eq_ignore_ascii_case(request.host)))
            && (self.methods.is_empty() || self.methods.iter().any(|m| m == request.method))
            && self.headers.iter().all(|h| {
                let value = (request.header)(&h.name);
                match &h.condition {
                    HeaderCondition::Present(want) => value.is_some() == *want,
                    HeaderCondition::Exact(v) => value == Some(v.as_str()),
                    HeaderCondition::Regex(r) => value.is_some_and(|v| r.is_match(v)),
                }
            })
    }
}

fn compile_path(spec: &PathMatch, field: &str) -> Result<CompiledPath, ConfigError> {
    match (&spec.prefix, &spec.exact, &spec.regex) {
        (Some(prefix), None, None) => Ok(CompiledPath::Prefix(prefix.clone())),
        (None, Some(exact), None) => Ok(CompiledPath::Exact(exact.clone())),
        (None, None, Some(regex)) => Ok(CompiledPath::Regex(anchored(
            regex,
            &format!("{field}.regex"),
        )?)),
        _ => Err(ConfigError {
            field: field.into(),
            message: "set exactly one of prefix, exact or regex".into(),
        }),
    }
}

fn compile_header(spec: &HeaderMatch, field: &str) -> Result<CompiledHeader, ConfigError> {
    let conditions = [
        spec.exact.is_some(),
        spec.regex.is_some(),
        spec.present.is_some(),
    ];
    if conditions.iter().filter(|set| **set).count() != 1 {
        return Err(ConfigError {
            field: field.into(),
            message: "set exactly one of exact, regex or present".into(),
        });
    }
    let condition = if let Some(v) = &spec.exact {
        HeaderCondition::Exact(v.clone())
    } else if let Some(r) = &spec.regex {
        HeaderCondition::Regex(anchored(r, &format!("{field}.regex"))?)
    } else {
        HeaderCondition::Present(spec.present.unwrap_or(true))
    };
    Ok(CompiledHeader {
        name: spec.name.to_ascii_lowercase(),
        condition,
    })
}

/// Compiles a regex that must match the whole input, as in Envoy's `safe_regex`.
fn anchored(pattern: &str, field: &str) -> Result<Regex, ConfigError> {
    Regex::new(&format!("^(?:{pattern})$")).map_err(|e| ConfigError {
        field: field.into(),
        message: format!("invalid regular expression: {e}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matcher(yaml: &str) -> RouteMatcher {
        let spec: RouteMatch = serde_yaml_ng::from_str(yaml).unwrap();
        RouteMatcher::compile(&spec, "match").unwrap()
    }

    fn facts<'a>(
        method: &'a str,
        path: &'a str,
        host: &'a str,
        header: &'a dyn Fn(&str) -> Option<&'a str>,
    ) -> RequestFacts<'a> {
        RequestFacts {
            listener: "public",
            method,
            path,
            host,
            header,
        }
    }

    #[test]
    fn listener_condition() {
        let none = |_: &str| None;
        let inbound = matcher("listeners: [inbound]");
        let request = |listener| RequestFacts {
            listener,
            ..facts("GET", "/", "a", &none)
        };
        assert!(inbound.matches(&request("inbound")));
        assert!(!inbound.matches(&request("outbound")));
        assert!(
            matcher("{}").matches(&request("outbound")),
            "no condition: any listener"
        );
    }

    #[test]
    fn path_conditions() {
        let none = |_: &str| None;
        let prefix = matcher("path: {prefix: /v1/}");
        assert!(prefix.matches(&facts("GET", "/v1/x", "a", &none)));
        assert!(!prefix.matches(&facts("GET", "/v2/x", "a", &none)));
        let exact = matcher("path: {exact: /healthz}");
        assert!(exact.matches(&facts("GET", "/healthz", "a", &none)));
        assert!(!exact.matches(&facts("GET", "/healthz/x", "a", &none)));
        let regex = matcher(r"path: {regex: '/users/\d+'}");
        assert!(regex.matches(&facts("GET", "/users/42", "a", &none)));
        assert!(!regex.matches(&facts("GET", "/users/42/x", "a", &none)));
    }

    #[test]
    fn host_method_and_header_conditions() {
        let m = matcher(
            "{hosts: [api.example.com], methods: [post], headers: [{name: X-Tenant, exact: acme}, {name: x-debug, present: false}]}",
        );
        let tenant = |name: &str| (name == "x-tenant").then_some("acme");
        assert!(m.matches(&facts("POST", "/", "API.example.com", &tenant)));
        assert!(!m.matches(&facts("GET", "/", "api.example.com", &tenant)));
        assert!(!m.matches(&facts("POST", "/", "other.example.com", &tenant)));
        let none = |_: &str| None;
        assert!(!m.matches(&facts("POST", "/", "api.example.com", &none)));
        let debug = |name: &str| match name {
            "x-tenant" => Some("acme"),
            "x-debug" => Some("1"),
            _ => None,
        };
        assert!(!m.matches(&facts("POST", "/", "api.example.com", &debug)));
    }

    #[test]
    fn header_needs_exactly_one_condition() {
        let spec: RouteMatch =
            serde_yaml_ng::from_str("headers: [{name: a, exact: b, present: true}]").unwrap();
        let err = RouteMatcher::compile(&spec, "routes[0].match").unwrap_err();
        assert_eq!(err.field, "routes[0].match.headers[0]");
    }
}
