//! Route matching: the first route whose conditions all hold takes the request.

use crate::config::{HeaderCondition, PathMatch, RouteMatch};

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

impl RouteMatch {
    /// Whether the request satisfies every condition.
    pub fn matches(&self, request: &RequestFacts<'_>) -> bool {
        let path_ok = match &self.path {
            None => true,
            Some(PathMatch::Prefix(p)) => request.path.starts_with(p.as_str()),
            Some(PathMatch::Exact(p)) => request.path == p,
            Some(PathMatch::Regex(r)) => r.is_match(request.path),
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
                let value = (request.header)(h.name.as_str());
                match &h.condition {
                    HeaderCondition::Present(want) => value.is_some() == *want,
                    HeaderCondition::Exact(v) => value == Some(v.as_str()),
                    HeaderCondition::Regex(r) => value.is_some_and(|v| r.is_match(v)),
                }
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matcher(yaml: &str) -> RouteMatch {
        serde_yaml_ng::from_str(yaml).unwrap()
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
        let text = "
listeners: [{name: public, address: 127.0.0.1:8080}]
routes: [{name: all, cluster: app, match: {headers: [{name: a, exact: b, present: true}]}}]
clusters: [{name: app, endpoints: [127.0.0.1:9000]}]
";
        let err = crate::config::Config::parse(text, ".".into()).unwrap_err();
        assert_eq!(err.field, "routes[0].match.headers[0]");
    }
}
