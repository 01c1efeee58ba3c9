//! Assembling the Pingora server from a configuration: one proxy service per listener, the admin
//! listener, health checks, reloads, graceful shutdown and the upgrade handover.

use crate::admin::AdminApp;
use crate::cluster::NameLookup;
use crate::config::{Config, ConfigError};
use crate::connection_limit::ConnectionLimit;
use crate::health::HealthChecker;
use crate::lifecycle::{Lifecycle, LifecycleWatcher};
use crate::peer_identity::listener_settings;
use crate::proxy::Gateway;
use crate::reload::{FileStamps, ReloadTrigger, Reloader};
use crate::state::GatewayState;
use pingora::apps::HttpServerOptions;
use pingora::server::configuration::{Opt, ServerConf};
use pingora::server::Server;
use pingora::services::background::background_service;
use pingora::services::listening::Service;
use request_tracing::TraceExport;
use std::path::Path;
use std::sync::Arc;

/// Tries, a second apart, that each side of an upgrade waits for the other.
const UPGRADE_WAIT_TRIES: usize = 30;

/// Loads the filters of `config` (compiling them and checking their configuration); this is also
/// what `proxy validate` runs. Their root VMs tick on the offload runtime from then on, with or
/// without traffic, as in Envoy.
pub fn load(config: &Config, lookup: NameLookup) -> Result<GatewayState, ConfigError> {
    crate::offload::run_persistently(GatewayState::build(config, lookup))
}

/// Builds the server for `config`, read from `config_path` (which reloads read again) when its
/// files were as `read` says; `trace_export` says whether requests' spans are exported. With
/// `upgrade`, the listeners are taken over from the running process that is sent SIGQUIT, instead
/// of bound. Run it with [`Server::run_forever`].
pub fn build(
    config_path: &Path,
    config: &Config,
    read: FileStamps,
    state: GatewayState,
    upgrade: bool,
    trace_export: Arc<TraceExport>,
) -> Result<Server, ConfigError> {
    state.shared_data.start();
    let state = Arc::new(state);
    let grace = config.server.process.shutdown_grace_period;
    let upgrade_socket = config.resolve(&config.server.process.upgrade_socket);
    if let Some(dir) = upgrade_socket.parent() {
        crate::private_dir::ensure_private(dir).map_err(|e| {
            ConfigError::new("server.upgrade_socket", format!("unsafe directory: {e}"))
        })?;
    }
    let admin_token = admin_token(config)?;
    let conf = ServerConf {
        threads: config.server.process.threads.get(),
        // Pingora waits this long after SIGTERM while in-flight requests finish.
        grace_period_seconds: Some(grace.as_secs() + u64::from(grace.subsec_nanos() > 0)),
        graceful_shutdown_timeout_seconds: Some(1),
        upstream_keepalive_pool_size: 1024,
        upgrade_sock: upgrade_socket.to_string_lossy().into_owned(),
        // Either side of an upgrade waits up to 30 s (1 s per try) for the other: the new process
        // may still be compiling filters when the old one gets SIGQUIT.
        upgrade_sock_connect_accept_max_retries: Some(UPGRADE_WAIT_TRIES),
        ..ServerConf::default()
    };
    let opt = Opt {
        upgrade,
        ..Opt::default()
    };
    let mut server = Server::new_with_opt_and_conf(opt, conf);
    // With `upgrade`, this waits for the old process's listening sockets.
    server.bootstrap();
    let server_conf = server.configuration.clone();

    let lifecycle = Arc::new(Lifecycle::default());
    server.add_service(background_service(
        "lifecycle",
        LifecycleWatcher::new(server.watch_execution_phase(), lifecycle.clone()),
    ));
    for listener in &config.listeners {
        let gateway = Gateway::new(
            state.clone(),
            &listener.name,
            listener.tls.is_some(),
            lifecycle.clone(),
            trace_export.clone(),
        );
        let mut proxy = pingora::proxy::http_proxy(&server_conf, gateway);
        if listener.h2c {
            let mut options = HttpServerOptions::default();
            options.h2c = true;
            proxy.server_options = Some(options);
        }
        let (open, refused) = state.metrics.listener_connections(&listener.name);
        let mut service = Service::new(
            format!("listener {}", listener.name),
            ConnectionLimit::new(proxy, listener.max_connections.get(), open, refused),
        );
        match &listener.tls {
            None => service.add_tcp(&listener.address.to_string()),
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
                service.add_tls_with_settings(&listener.address.to_string(), None, settings);
            }
        }
        server.add_service(service);
    }

    let reloader = Arc::new(Reloader::new(
        config_path.to_path_buf(),
        config.clone(),
        read,
        state.clone(),
    ));
    let mut admin = Service::new(
        "admin".to_string(),
        AdminApp::new(state.clone(), reloader.clone(), admin_token),
    );
    admin.add_tcp(&config.admin.address.to_string());
    server.add_service(admin);
    server.add_service(background_service(
        "health checks",
        HealthChecker::new(state.clone()),
    ));
    server.add_service(background_service(
        "configuration reloads",
        ReloadTrigger::new(reloader, config.server.process.reload.clone()),
    ));
    Ok(server)
}

/// The admin bearer token from `admin.bearer_token_env`; warns when the admin listener is
/// reachable beyond loopback without one.
fn admin_token(config: &Config) -> Result<Option<String>, ConfigError> {
    let Some(name) = &config.admin.bearer_token_env else {
        if !config.admin.address.0.ip().is_loopback() {
            tracing::warn!(
                address = %config.admin.address,
                "the admin listener is not on loopback and has no bearer token"
            );
        }
        return Ok(None);
    };
    match std::env::var(name) {
        Ok(token) if token.len() >= 16 => Ok(Some(token)),
        _ => Err(ConfigError::new(
            "admin.bearer_token_env",
            format!("{name} must hold a token of at least 16 bytes"),
        )),
    }
}
