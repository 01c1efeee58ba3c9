//! The proxy's configuration file: serde types, parsing with field paths, and semantic checks.
//!
//! Every error names the field it is about (`routes[1].cluster: ...`), so a refused file says
//! what to fix. Relative paths (filters, TLS files) are resolved against the file's directory.
//!
//! One module per section: `process` (server, reloads, logging, admin, listeners), `routes`,
//! `clusters`, `filters`, `shared_data`; `values` holds the value types they share (addresses,
//! endpoints, header names, paths, durations, counts), each of which checks itself as it is read,
//! so a field's error comes from its type. This file has the whole file's type, loading, and the
//! checks that need more than one field: references between sections, unique names and
//! addresses, and files that must exist.
//!
//! Naming: a `…Config` is an item the gateway builds something from (a route, a cluster, a
//! filter); a `…Settings` is a section used as it is read.

pub use crate::client_headers::{ReservedHeaders, TrustedProxies};
pub use crate::path_normalization::{EscapedSlashes, PathSettings};
pub use gateway_contract::ConfigError;
use serde::Deserialize;
use std::collections::HashSet;
use std::path::{Path, PathBuf};

mod clusters;
mod filters;
mod process;
mod routes;
mod shared_data;
mod values;

pub use clusters::*;
pub use filters::*;
pub use process::*;
pub use routes::*;
pub use shared_data::*;
use values::expand_env;
pub use values::{
    parse_duration, value_bytes, Address, AtLeastOne, EndpointAddress, HeaderName, NonZeroDuration,
    UrlPath,
};

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Process-wide settings.
    #[serde(default)]
    pub server: ServerSettings,
    /// Logging.
    #[serde(default)]
    pub logging: LoggingSettings,
    /// The admin listener (`/healthz`, `/readyz`, `/metrics`).
    #[serde(default)]
    pub admin: AdminSettings,
    /// Where client traffic arrives.
    pub listeners: Vec<ListenerConfig>,
    /// Named filter chains that routes refer to.
    #[serde(default)]
    pub filter_chains: Vec<FilterChainConfig>,
    /// Routes, matched in order; the first match wins.
    pub routes: Vec<RouteConfig>,
    /// Upstream clusters.
    pub clusters: Vec<ClusterConfig>,
    /// Where filters' shared data (rate-limit buckets, cache entries) lives.
    #[serde(default)]
    pub shared_data: SharedDataSettings,
    /// Directory the file was read from; relative paths are resolved against it.
    #[serde(skip)]
    pub base_dir: PathBuf,
}

impl Config {
    /// Reads, parses and checks a configuration file.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigError::new(path.display().to_string(), format!("cannot read: {e}"))
        })?;
        let base_dir = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."))
            .to_path_buf();
        Self::parse(&text, base_dir)
    }

    /// Parses and checks configuration text; relative paths resolve against `base_dir`.
    /// `${NAME}` is replaced by the environment variable `NAME` first.
    pub fn parse(text: &str, base_dir: PathBuf) -> Result<Self, ConfigError> {
        let text = expand_env(text, |name| std::env::var(name).ok())?;
        let deserializer = serde_yaml_ng::Deserializer::from_str(&text);
        let mut config: Config = serde_path_to_error::deserialize(deserializer).map_err(|e| {
            ConfigError::from_yaml(&e.path().to_string(), &e.inner().to_string(), "(file)")
        })?;
        config.base_dir = base_dir;
        config.check()?;
        Ok(config)
    }

    /// Resolves a path from the file against the file's directory.
    pub fn resolve(&self, path: &Path) -> PathBuf {
        self.base_dir.join(path)
    }

    /// The plugin configuration bytes for a filter (inline value or file).
    pub fn plugin_configuration(
        &self,
        filter: &FilterConfig,
        field: &str,
    ) -> Result<Vec<u8>, ConfigError> {
        if let Some(file) = &filter.configuration_file {
            let path = self.resolve(file);
            return std::fs::read(&path).map_err(|e| {
                ConfigError::new(
                    format!("{field}.configuration_file"),
                    format!("cannot read {}: {e}", path.display()),
                )
            });
        }
        Ok(value_bytes(filter.configuration.as_ref()))
    }

    /// The files a reload reads again besides the configuration itself: each filter's `.wasm`
    /// and `configuration_file`, and each cluster's TLS files, resolved.
    pub fn referenced_files(&self) -> Vec<PathBuf> {
        let filters = self
            .filter_chains
            .iter()
            .flat_map(|chain| &chain.filters)
            .flat_map(|filter| std::iter::once(&filter.wasm).chain(&filter.configuration_file));
        let upstream_tls = self
            .clusters
            .iter()
            .filter_map(|cluster| cluster.tls.as_ref())
            .flat_map(|tls| [&tls.ca, &tls.client_certificate, &tls.client_key])
            .flatten();
        filters
            .chain(upstream_tls)
            .map(|path| self.resolve(path))
            .collect()
    }

    /// Everything only a restart applies; a reload compares it with the serving one.
    pub fn process(&self) -> ProcessSettings<'_> {
        ProcessSettings {
            listeners: &self.listeners,
            admin: &self.admin,
            shared_data: &self.shared_data,
            server: &self.server.process,
            logging: &self.logging.output,
        }
    }

    /// The filter chain a route refers to.
    pub fn filter_chain(&self, name: &str) -> Option<&FilterChainConfig> {
        self.filter_chains.iter().find(|c| c.name == name)
    }

    fn check_upstream_tls(&self, tls: &UpstreamTls, field: &str) -> Result<(), ConfigError> {
        if tls.client_certificate.is_some() != tls.client_key.is_some() {
            return Err(ConfigError::new(
                field,
                "set client_certificate and client_key together",
            ));
        }
        let files = [
            ("ca", &tls.ca),
            ("client_certificate", &tls.client_certificate),
            ("client_key", &tls.client_key),
        ];
        for (name, file) in files {
            if let Some(file) = file {
                self.check_file(file, &format!("{field}.{name}"))?;
            }
        }
        Ok(())
    }

    /// The checks that need more than one field; each field checked itself as it was read.
    fn check(&self) -> Result<(), ConfigError> {
        if self.listeners.is_empty() {
            return Err(ConfigError::new(
                "listeners",
                "at least one listener is needed",
            ));
        }
        let mut addresses = HashSet::new();
        unique_names(self.listeners.iter().map(|l| &l.name), "listeners")?;
        for (i, listener) in self.listeners.iter().enumerate() {
            let field = format!("listeners[{i}]");
            if !addresses.insert(listener.address) {
                return Err(ConfigError::new(
                    format!("{field}.address"),
                    format!("{} is used by another listener", listener.address),
                ));
            }
            if let Some(tls) = &listener.tls {
                self.check_file(&tls.certificate, &format!("{field}.tls.certificate"))?;
                self.check_file(&tls.key, &format!("{field}.tls.key"))?;
                if let Some(ca) = &tls.client_ca {
                    self.check_file(ca, &format!("{field}.tls.client_ca"))?;
                }
            }
        }
        if let Some(ca) = &self.shared_data.redis.tls.ca {
            self.check_file(ca, "shared_data.redis.tls.ca")?;
        }
        unique_names(self.clusters.iter().map(|c| &c.name), "clusters")?;
        for (i, cluster) in self.clusters.iter().enumerate() {
            if let Some(tls) = &cluster.tls {
                self.check_upstream_tls(tls, &format!("clusters[{i}].tls"))?;
            }
            if let Some(check) = &cluster.health_check {
                let field = format!("clusters[{i}].health_check");
                match check.probe() {
                    None => {
                        return Err(ConfigError::new(field, "set either path or grpc"));
                    }
                    Some(HealthProbe::Grpc(_)) if cluster.protocol != UpstreamProtocol::Http2 => {
                        return Err(ConfigError::new(
                            format!("{field}.grpc"),
                            "gRPC health checks need the cluster's protocol: http2",
                        ));
                    }
                    Some(_) => {}
                }
            }
        }
        unique_names(self.filter_chains.iter().map(|c| &c.name), "filter_chains")?;
        for (i, chain) in self.filter_chains.iter().enumerate() {
            let field = format!("filter_chains[{i}]");
            unique_names(
                chain.filters.iter().map(|f| &f.name),
                &format!("{field}.filters"),
            )?;
            for (j, filter) in chain.filters.iter().enumerate() {
                let field = format!("{field}.filters[{j}]");
                self.check_file(&filter.wasm, &format!("{field}.wasm"))?;
                if filter.configuration.is_some() && filter.configuration_file.is_some() {
                    return Err(ConfigError::new(
                        field,
                        "set either configuration or configuration_file, not both",
                    ));
                }
                if let Some(file) = &filter.configuration_file {
                    self.check_file(file, &format!("{field}.configuration_file"))?;
                }
            }
        }
        if self.routes.is_empty() {
            return Err(ConfigError::new("routes", "at least one route is needed"));
        }
        unique_names(self.routes.iter().map(|r| &r.name), "routes")?;
        for (i, route) in self.routes.iter().enumerate() {
            let field = format!("routes[{i}]");
            if !self.clusters.iter().any(|c| c.name == route.cluster) {
                return Err(ConfigError::new(
                    format!("{field}.cluster"),
                    format!("no cluster is named {:?}", route.cluster),
                ));
            }
            if let Some(chain) = &route.filter_chain {
                if self.filter_chain(chain).is_none() {
                    return Err(ConfigError::new(
                        format!("{field}.filter_chain"),
                        format!("no filter chain is named {chain:?}"),
                    ));
                }
            }
            if let Some(unknown) = route
                .matcher
                .listeners
                .iter()
                .find(|name| !self.listeners.iter().any(|l| &&l.name == name))
            {
                return Err(ConfigError::new(
                    format!("{field}.match.listeners"),
                    format!("no listener is named {unknown:?}"),
                ));
            }
        }
        Ok(())
    }

    fn check_file(&self, path: &Path, field: &str) -> Result<(), ConfigError> {
        let resolved = self.resolve(path);
        if resolved.is_file() {
            Ok(())
        } else {
            Err(ConfigError::new(
                field,
                format!("no such file: {}", resolved.display()),
            ))
        }
    }
}

fn unique_names<'a>(
    names: impl Iterator<Item = &'a String>,
    field: &str,
) -> Result<(), ConfigError> {
    let mut seen = HashSet::new();
    for (i, name) in names.enumerate() {
        if name.is_empty() {
            return Err(ConfigError::new(
                format!("{field}[{i}].name"),
                "must not be empty",
            ));
        }
        if !seen.insert(name) {
            return Err(ConfigError::new(
                format!("{field}[{i}].name"),
                format!("{name:?} is used twice"),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const MINIMAL: &str = "
listeners: [{name: public, address: 127.0.0.1:8080}]
routes: [{name: all, cluster: app}]
clusters: [{name: app, endpoints: [127.0.0.1:9000]}]
";

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, PathBuf::from("."))
    }

    #[test]
    fn minimal_file_gets_defaults() {
        let config = parse(MINIMAL).unwrap();
        assert_eq!(config.server.process.threads.get(), 2);
        assert_eq!(config.clusters[0].load_balancing, LoadBalancing::RoundRobin);
        assert_eq!(config.clusters[0].timeouts.connect, Duration::from_secs(2));
        assert_eq!(
            config.routes[0].upstream_errors,
            UpstreamErrors::PassThrough
        );
    }

    #[test]
    fn errors_name_the_field() {
        let bad_lb = MINIMAL.replace(
            "endpoints: [127.0.0.1:9000]",
            "endpoints: [127.0.0.1:9000], load_balancing: fastest",
        );
        let err = parse(&bad_lb).unwrap_err();
        assert_eq!(err.field, "clusters[0].load_balancing");
        assert!(err.message.contains("fastest"), "{err}");

        let bad_endpoint = MINIMAL.replace("127.0.0.1:9000", "nowhere");
        assert_eq!(
            parse(&bad_endpoint).unwrap_err().to_string(),
            "clusters[0].endpoints[0]: \"nowhere\" is neither ip:port nor a DNS name and port \
             (name:port)"
        );

        let unknown_cluster = MINIMAL.replace("cluster: app", "cluster: ghost");
        assert_eq!(
            parse(&unknown_cluster).unwrap_err().field,
            "routes[0].cluster"
        );

        let typo = MINIMAL.replace("name: all,", "name: all, clustr: x,");
        let err = parse(&typo).unwrap_err();
        assert_eq!(err.field, "routes[0].clustr");
        assert!(err.message.contains("clustr"), "{err}");
    }

    #[test]
    fn endpoints_are_addresses_or_dns_names() {
        assert_eq!(
            "10.0.0.1:80".parse::<EndpointAddress>().unwrap(),
            EndpointAddress::Address("10.0.0.1:80".parse().unwrap())
        );
        assert_eq!(
            "Billing.default.svc.cluster.local.:8080"
                .parse::<EndpointAddress>()
                .unwrap(),
            EndpointAddress::Name {
                name: "billing.default.svc.cluster.local".into(),
                port: 8080
            }
        );
        for bad in [
            "billing",
            "billing:0",
            "billing:http",
            "-x:80",
            "a..b:80",
            "a_b:80",
        ] {
            assert!(bad.parse::<EndpointAddress>().is_err(), "{bad}");
        }
    }

    #[test]
    fn bad_regex_and_duration_are_refused() {
        let regex = MINIMAL.replace(
            "cluster: app}",
            "cluster: app, match: {path: {regex: '(['}}}",
        );
        assert_eq!(
            parse(&regex).unwrap_err().field,
            "routes[0].match.path.regex"
        );
        let timeout = MINIMAL.replace("cluster: app}", "cluster: app, timeout: 5 parsecs}");
        let err = parse(&timeout).unwrap_err();
        assert_eq!(err.field, "routes[0].timeout");
    }

    #[test]
    fn value_types_refuse_bad_values_naming_the_field() {
        let cluster = |extra: &str| {
            MINIMAL.replace(
                "endpoints: [127.0.0.1:9000]",
                &format!("endpoints: [127.0.0.1:9000], {extra}"),
            )
        };
        let cases = [
            (
                MINIMAL.replace("[127.0.0.1:9000]", "[]"),
                "clusters[0].endpoints: at least one endpoint is needed",
            ),
            (
                format!("{MINIMAL}server: {{threads: 0}}"),
                "server.threads: must be at least 1",
            ),
            (
                format!("{MINIMAL}server: {{reload: {{poll_interval: 10ms}}}}"),
                "server.reload.poll_interval: must be at least 100ms",
            ),
            (
                format!("{MINIMAL}admin: {{address: nowhere}}"),
                "admin.address: \"nowhere\" is not an address of the form ip:port",
            ),
            (
                cluster("health_check: {path: healthz}"),
                "clusters[0].health_check.path: must start with /",
            ),
            (
                cluster("health_check: {path: /healthz, interval: 0s}"),
                "clusters[0].health_check.interval: must be positive",
            ),
            (
                cluster("health_check: {interval: 1s}"),
                "clusters[0].health_check: set either path or grpc",
            ),
            (
                cluster("protocol: http2, health_check: {path: /healthz, grpc: {}}"),
                "clusters[0].health_check: set either path or grpc",
            ),
            (
                cluster("health_check: {grpc: {service: a.B}}"),
                "clusters[0].health_check.grpc: gRPC health checks need the cluster's protocol: http2",
            ),
            (
                cluster("load_balancing: {consistent_hash: {header: 'x y'}}"),
                "clusters[0].load_balancing.consistent_hash.header: \"x y\" is not a valid header \
                 name",
            ),
            (
                MINIMAL.replace(
                    "cluster: app}",
                    "cluster: app, match: {headers: [{name: 'a b', present: true}]}}",
                ),
                "routes[0].match.headers[0].name: \"a b\" is not a valid header name",
            ),
        ];
        for (text, expected) in cases {
            assert_eq!(parse(&text).unwrap_err().to_string(), expected, "{text}");
        }
    }

    #[test]
    fn missing_wasm_file_is_refused() {
        let text = format!(
            "{MINIMAL}filter_chains: [{{name: c, filters: [{{name: f, wasm: /nonexistent.wasm}}]}}]"
        );
        let err = parse(&text).unwrap_err();
        assert_eq!(err.field, "filter_chains[0].filters[0].wasm");
    }

    #[test]
    fn upstream_client_certificate_needs_its_key_and_existing_files() {
        let with_tls = |tls: &str| {
            MINIMAL.replace(
                "endpoints: [127.0.0.1:9000]",
                &format!("endpoints: [127.0.0.1:9000], tls: {tls}"),
            )
        };
        let file = concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml");
        let lone = parse(&with_tls(&format!("{{client_certificate: {file}}}"))).unwrap_err();
        assert_eq!(
            lone.to_string(),
            "clusters[0].tls: set client_certificate and client_key together"
        );
        let missing = parse(&with_tls("{ca: /nonexistent/ca.pem}")).unwrap_err();
        assert_eq!(missing.field, "clusters[0].tls.ca");
        let config = parse(&with_tls(&format!("{{ca: {file}}}"))).unwrap();
        assert_eq!(
            config.referenced_files(),
            [PathBuf::from(file)],
            "a reload reads upstream TLS files again"
        );
    }

    #[test]
    fn plugin_configuration_is_json_or_a_string() {
        assert_eq!(
            value_bytes(Some(&serde_json::json!({"a": 1}))),
            br#"{"a":1}"#
        );
        assert_eq!(
            value_bytes(Some(&serde_json::json!("raw text"))),
            b"raw text"
        );
        assert!(value_bytes(None).is_empty());
    }

    #[test]
    fn environment_variables_are_expanded() {
        let lookup = |name: &str| (name == "DIR").then(|| "/opt/wasm".to_string());
        assert_eq!(
            expand_env("wasm: ${DIR}/auth.wasm", lookup).unwrap(),
            "wasm: /opt/wasm/auth.wasm"
        );
        let err = expand_env("wasm: ${MISSING}/auth.wasm", lookup).unwrap_err();
        assert!(err.message.contains("MISSING"), "{err}");
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("10").is_err());
        assert!(parse_duration("10 lightyears").is_err());
    }
}
