//! Assembling the Pingora server from a configuration: one proxy service per listener, the admin
//! listener, health checks, and graceful shutdown.

use crate::admin::{AdminApp, DrainWatcher, Draining};
use crate::config::{Config, ConfigError};
use crate::health::HealthChecker;
use crate::peer_identity::listener_settings;
use crate::proxy::Gateway;
use crate::runtime::Runtime;
use pingora::apps::HttpServerOptions;
use pingora::server::configuration::{Opt, ServerConf};
use pingora::server::Server;
use pingora::services::background::background_service;
use pingora::services::listening::Service;
use std::sync::Arc;

/// Loads the filters of `config` (compiling them and checking their configuration) on a
/// temporary runtime; this is also what `proxy validate` runs.
pub fn load(config: &Config) -> Result<Runtime, ConfigError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| ConfigError {
            field: "server".into(),
            message: format!("cannot start a runtime to load filters: {e}"),
        })?
        .block_on(Runtime::build(config))
}

/// Builds the server. Run it with [`Server::run_forever`].
pub fn build(config: &Config, runtime: Runtime) -> Result<Server, ConfigError> {
    runtime.shared_data.start();
    let runtime = Arc::new(runtime);
    let grace = config.server.shutdown_grace_period;
    let conf = ServerConf {
        threads: config.server.threads,
        // Pingora waits this long after SIGTERM while in-flight requests finish.
        grace_period_seconds: Some(grace.as_secs() + u64::from(grace.subsec_nanos() > 0)),
        graceful_shutdown_timeout_seconds: Some(1),
        upstream_keepalive_pool_size: 1024,
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(Opt::default(), conf);
    server.bootstrap();
    let server_conf = server.configuration.clone();

    for listener in &config.listeners {
        let gateway = Gateway::new(runtime.clone(), &listener.name, listener.tls.is_some());
        let mut service = pingora::proxy::http_proxy_service_with_name(
            &server_conf,
            gateway,
            &format!("listener {}", listener.name),
        );
        if listener.h2c {
            if let Some(proxy) = service.app_logic_mut() {
                let mut options = HttpServerOptions::default();
                options.h2c = true;
                proxy.server_options = Some(options);
            }
        }
        match &listener.tls {
            None => service.add_tcp(&listener.address),
            Some(tls) => {
                let client_ca = tls.client_ca.as_ref().map(|ca| config.resolve(ca));
                let settings = listener_settings(
                    &config.resolve(&tls.certificate),
                    &config.resolve(&tls.key),
                    client_ca.as_deref(),
                )
                .map_err(|message| ConfigError {
                    field: format!("listeners[{}].tls", listener.name),
                    message,
                })?;
                service.add_tls_with_settings(&listener.address, None, settings);
            }
        }
        server.add_service(service);
    }

    let draining = Arc::new(Draining::default());
    let mut admin = Service::new(
        "admin".to_string(),
        AdminApp::new(runtime.clone(), draining.clone()),
    );
    admin.add_tcp(&config.admin.address);
    server.add_service(admin);
    server.add_service(background_service("drain watcher", DrainWatcher(draining)));
    let checked: Vec<_> = runtime
        .clusters()
        .filter(|c| c.config.health_check.is_some())
        .cloned()
        .collect();
    if !checked.is_empty() {
        server.add_service(background_service(
            "health checks",
            HealthChecker::new(checked, runtime.metrics.clone()),
        ));
    }
    Ok(server)
}
