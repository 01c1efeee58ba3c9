//! The connection to Redis: made on demand, dropped on failure, made again after an exponential
//! backoff. Calls while the link is down or backing off fail at once, so a dead Redis never makes
//! requests wait; one call at a time pays for a reconnection attempt, bounded by its timeout.
//!
//! All Redis I/O runs on a runtime whose threads never block, never the caller's: Pingora's workers
//! are single-threaded runtimes, and one of them may be blocked in a synchronous hook waiting for
//! the very operation its runtime would otherwise have to drive. That is the link's own thread, or
//! a runtime the embedder gives (the proxy's filter runtime, where the callers already are).

use crate::settings::{RedisSettings, Topology};
use crate::stats::Stats;
use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::{AsyncConnectionConfig, Cmd, IntoConnectionInfo, Pipeline, RedisError, RedisFuture};
use redis::{RedisResult, Value};
use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

/// Why an operation got no answer from Redis.
#[derive(Debug, thiserror::Error)]
pub(crate) enum LinkError {
    /// No connection (down, backing off, or another call is reconnecting).
    #[error("not connected to Redis")]
    Down,
    /// The operation timed out.
    #[error("Redis did not answer in time")]
    Timeout,
    /// The connection failed during the operation.
    #[error("Redis connection failed: {0}")]
    Connection(RedisError),
    /// Redis answered with an error.
    #[error("Redis refused the operation: {0}")]
    Server(RedisError),
}

/// A connection to a server or a cluster; cheap to clone (both multiplex one socket per node).
#[derive(Clone)]
pub(crate) enum Conn {
    Single(MultiplexedConnection),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

// One per backend, built once: the size difference between variants costs nothing.
#[allow(clippy::large_enum_variant)]
enum Target {
    Single(redis::Client),
    Cluster(ClusterClient),
}

struct LinkState {
    conn: Option<Conn>,
    connecting: bool,
    failures: u32,
    retry_at: Option<Instant>,
    ever_connected: bool,
}

struct Shared {
    target: Target,
    state: Mutex<LinkState>,
    operation_timeout: Duration,
    connect_timeout: Duration,
    min_backoff: Duration,
    max_backoff: Duration,
    stats: Arc<Stats>,
    /// Where Redis is, without credentials, for log lines.
    display: String,
}

/// The link to Redis and the runtime its I/O runs on.
pub(crate) struct Link {
    shared: Arc<Shared>,
    io: IoRuntime,
}

/// Where the link's I/O runs.
enum IoRuntime {
    /// The link's own thread, shut down with it (`None` once shut down).
    Own(Option<tokio::runtime::Runtime>),
    /// A runtime the embedder runs, whose threads never block.
    Given(tokio::runtime::Handle),
}

impl Link {
    /// Checks the URLs; I/O runs on `runtime`, or on a thread of its own when `None`. Connects on
    /// first use.
    pub(crate) fn new(
        settings: &RedisSettings,
        stats: Arc<Stats>,
        runtime: Option<tokio::runtime::Handle>,
    ) -> RedisResult<Self> {
        let (target, display) = match &settings.topology {
            Topology::Single(url) => {
                let mut info = url.as_str().into_connection_info()?;
                let display = redacted(url);
                let mut redis = info.redis_settings().clone();
                if let Some(user) = &settings.username {
                    redis = redis.set_username(user);
                }
                if let Some(password) = &settings.password {
                    redis = redis.set_password(password);
                }
                info = info.set_redis_settings(redis);
                let client = match tls_certificates(settings) {
                    Some(certificates) => redis::Client::build_with_tls(info, certificates)?,
                    None => redis::Client::open(info)?,
                };
                (Target::Single(client), display)
            }
            Topology::Cluster(nodes) => {
                let mut builder = ClusterClient::builder(nodes.iter().map(String::as_str))
                    .connection_timeout(settings.connect_timeout)
                    .response_timeout(settings.operation_timeout)
                    .retries(0);
                if let Some(user) = &settings.username {
                    builder = builder.username(user);
                }
                if let Some(password) = &settings.password {
                    builder = builder.password(password);
                }
                let display = nodes.iter().map(|n| redacted(n)).collect::<Vec<_>>();
                (Target::Cluster(builder.build()?), display.join(","))
            }
        };
        let io = match runtime {
            Some(handle) => IoRuntime::Given(handle),
            None => IoRuntime::Own(Some(
                tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(1)
                    .thread_name("redis-io")
                    .enable_all()
                    .build()?,
            )),
        };
        Ok(Self {
            shared: Arc::new(Shared {
                target,
                state: Mutex::new(LinkState {
                    conn: None,
                    connecting: false,
                    failures: 0,
                    retry_at: None,
                    ever_connected: false,
                }),
                operation_timeout: settings.operation_timeout,
                connect_timeout: settings.connect_timeout,
                min_backoff: settings.min_backoff,
                max_backoff: settings.max_backoff,
                stats,
                display,
            }),
            io,
        })
    }

    fn io(&self) -> &tokio::runtime::Handle {
        match &self.io {
            IoRuntime::Own(runtime) => runtime.as_ref().expect("present until dropped").handle(),
            IoRuntime::Given(handle) => handle,
        }
    }

    /// Connects now and waits for the outcome (at most the connect timeout).
    pub(crate) async fn connect(&self) -> bool {
        self.shared.connection(self.io()).await.is_ok()
    }

    /// Starts connecting without waiting, so the first requests find a connection.
    pub(crate) fn connect_in_background(&self) {
        let (shared, io) = (self.shared.clone(), self.io().clone());
        self.io().spawn(async move { shared.connection(&io).await });
    }

    /// Runs `op` on a connection within the operation timeout.
    pub(crate) async fn run<T, F, Fut>(&self, op: F) -> Result<T, LinkError>
    where
        F: FnOnce(Conn) -> Fut,
        Fut: Future<Output = RedisResult<T>> + Send + 'static,
        T: Send + 'static,
    {
        let deadline = Instant::now() + self.shared.operation_timeout;
        let conn = tokio::time::timeout_at(deadline, self.shared.connection(self.io()))
            .await
            .map_err(|_| LinkError::Timeout)??;
        Stats::count(&self.shared.stats.operations);
        let task = self.io().spawn(op(conn));
        match tokio::time::timeout_at(deadline, task).await {
            Err(_) => {
                Stats::count(&self.shared.stats.timeouts);
                self.shared.mark_down("operation timed out");
                Err(LinkError::Timeout)
            }
            Ok(Err(_)) => Err(LinkError::Down),
            Ok(Ok(Ok(value))) => Ok(value),
            Ok(Ok(Err(error))) if is_link_failure(&error) => {
                let stats = &self.shared.stats;
                Stats::count(if error.is_timeout() {
                    &stats.timeouts
                } else {
                    &stats.connection_errors
                });
                self.shared.mark_down(&error.to_string());
                Err(LinkError::Connection(error))
            }
            Ok(Ok(Err(error))) => {
                Stats::count(&self.shared.stats.server_errors);
                Err(LinkError::Server(error))
            }
        }
    }
}

impl Shared {
    /// The live connection, or a fresh one when the backoff allows.
    async fn connection(self: &Arc<Self>, io: &tokio::runtime::Handle) -> Result<Conn, LinkError> {
        let attempt = {
            let mut state = self.state.lock().expect("link state lock");
            if let Some(conn) = &state.conn {
                return Ok(conn.clone());
            }
            let backing_off = state.retry_at.is_some_and(|at| Instant::now() < at);
            if state.connecting || backing_off {
                return Err(LinkError::Down);
            }
            state.connecting = true;
            // The attempt finishes (and records its outcome) even if this caller gives up.
            let shared = self.clone();
            io.spawn(async move { shared.connect().await })
        };
        attempt.await.ok().flatten().ok_or(LinkError::Down)
    }

    async fn connect(&self) -> Option<Conn> {
        let attempt = async {
            match &self.target {
                Target::Single(client) => {
                    let config = AsyncConnectionConfig::new()
                        .set_connection_timeout(Some(self.connect_timeout))
                        .set_response_timeout(Some(self.operation_timeout));
                    client
                        .get_multiplexed_async_connection_with_config(&config)
                        .await
                        .map(Conn::Single)
                }
                Target::Cluster(client) => client.get_async_connection().await.map(Conn::Cluster),
            }
        };
        let outcome = tokio::time::timeout(self.connect_timeout, attempt).await;
        let mut state = self.state.lock().expect("link state lock");
        state.connecting = false;
        match outcome {
            Ok(Ok(conn)) => {
                if state.ever_connected {
                    Stats::count(&self.stats.reconnects);
                    tracing::info!(redis = %self.display, "reconnected to Redis");
                } else {
                    tracing::info!(redis = %self.display, "connected to Redis");
                }
                state.ever_connected = true;
                state.failures = 0;
                state.retry_at = None;
                state.conn = Some(conn.clone());
                self.stats.connected.store(true, Ordering::Relaxed);
                Some(conn)
            }
            Ok(Err(error)) => {
                Stats::count(&self.stats.connection_errors);
                self.back_off(&mut state, &error.to_string());
                None
            }
            Err(_) => {
                Stats::count(&self.stats.connection_errors);
                self.back_off(&mut state, "connection attempt timed out");
                None
            }
        }
    }

    fn mark_down(&self, reason: &str) {
        let mut state = self.state.lock().expect("link state lock");
        // Only the first failure of a connection starts a backoff; its other calls fail alike.
        if state.conn.take().is_some() {
            self.back_off(&mut state, reason);
        }
    }

    fn back_off(&self, state: &mut LinkState, reason: &str) {
        self.stats.connected.store(false, Ordering::Relaxed);
        state.failures = state.failures.saturating_add(1);
        let wait = self
            .min_backoff
            .saturating_mul(1 << state.failures.saturating_sub(1).min(16))
            .min(self.max_backoff);
        state.retry_at = Some(Instant::now() + wait);
        tracing::warn!(
            redis = %self.display,
            reason,
            retry_in_ms = wait.as_millis() as u64,
            "Redis unavailable; shared data follows the unavailable policy"
        );
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        // The owner may be inside another runtime, where a blocking shutdown would panic.
        if let IoRuntime::Own(runtime) = &mut self.io {
            if let Some(io) = runtime.take() {
                io.shutdown_background();
            }
        }
    }
}

/// Errors that mean the connection is unusable, as opposed to Redis refusing one command.
fn is_link_failure(error: &RedisError) -> bool {
    error.is_io_error()
        || error.is_timeout()
        || error.is_connection_dropped()
        || error.is_connection_refusal()
        || error.is_unrecoverable_error()
}

/// The private CA to verify `rediss://` servers with, if the settings name one.
fn tls_certificates(settings: &RedisSettings) -> Option<redis::TlsCertificates> {
    settings
        .root_certificates
        .as_ref()
        .map(|pem| redis::TlsCertificates {
            client_tls: None,
            root_cert: Some(pem.clone()),
        })
}

/// The URL without its password, for logs.
fn redacted(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}://***@{}", &url[..scheme], &url[at + 1..])
        }
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_logged_without_credentials() {
        assert_eq!(
            redacted("redis://user:secret@10.0.0.1:6379/0"),
            "redis://***@10.0.0.1:6379/0"
        );
        assert_eq!(redacted("redis://127.0.0.1:6379"), "redis://127.0.0.1:6379");
    }
}
