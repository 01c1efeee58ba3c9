//! Reloading the configuration while serving: on SIGHUP, or when the configuration file or a file
//! it loads (a filter's `.wasm` or `configuration_file`) changes.
//!
//! The new file is parsed and checked and its filters loaded beside the serving ones; only then do
//! new requests switch to it, while requests in flight finish on the old generation. A file that
//! fails any of this, or that changes a setting only a restart can apply, is refused with a logged
//! reason, and the old configuration keeps serving.

use crate::config::{Config, ReloadSettings};
use crate::state::GatewayState;
use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime, UNIX_EPOCH};
use tokio::signal::unix::{signal, SignalKind};

/// What started a reload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Trigger {
    /// SIGHUP.
    Signal,
    /// A watched file changed.
    FileChange,
}

/// The result of the last reload, for the admin `/config` endpoint.
#[derive(Debug, Clone, Serialize)]
pub struct ReloadReport {
    /// What started it.
    pub trigger: Trigger,
    /// Whether new requests now use the new configuration.
    pub applied: bool,
    /// Why it was refused.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// When it finished, in milliseconds since the Unix epoch.
    pub finished_at_ms: u128,
    /// How long reading, checking and loading the new configuration took.
    pub duration_ms: f64,
}

/// Size, modification time and inode of a configuration file and the files it loads, following
/// symbolic links (so a Kubernetes ConfigMap's swapped `..data` link counts as a change).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileStamps(Vec<Option<(u64, SystemTime, u64)>>);

impl FileStamps {
    /// Stamps `config_path` and the files `config` loads, as they are now.
    pub fn of(config_path: &Path, config: &Config) -> Self {
        Self::read(config_path, &config.referenced_files())
    }

    fn read(config_path: &Path, files: &[PathBuf]) -> Self {
        use std::os::unix::fs::MetadataExt;
        let stamp = |path: &Path| {
            let meta = std::fs::metadata(path).ok()?;
            Some((meta.len(), meta.modified().ok()?, meta.ino()))
        };
        Self(
            std::iter::once(config_path)
                .chain(files.iter().map(PathBuf::as_path))
                .map(stamp)
                .collect(),
        )
    }
}

/// Reloads one configuration file into a [`GatewayState`].
pub struct Reloader {
    path: PathBuf,
    gateway: Arc<GatewayState>,
    state: Mutex<ReloaderState>,
}

struct ReloaderState {
    /// The configuration serving new requests.
    serving: Config,
    /// The files the last parsed configuration loads, even a refused one, so that fixing a file
    /// only it names triggers the next attempt.
    watched: Vec<PathBuf>,
    /// The watched files as they were when the configuration was last read; a change after that
    /// moment (even while its filters were compiling) triggers the next reload.
    read: FileStamps,
    last: Option<ReloadReport>,
}

impl Reloader {
    /// Reloads `path` into `gateway`. `serving` was loaded from it when the files were as
    /// `read` says (taken right after parsing, before compiling filters).
    pub fn new(
        path: PathBuf,
        serving: Config,
        read: FileStamps,
        gateway: Arc<GatewayState>,
    ) -> Self {
        let watched = serving.referenced_files();
        Self {
            path,
            gateway,
            state: Mutex::new(ReloaderState {
                serving,
                watched,
                read,
                last: None,
            }),
        }
    }

    /// The configuration file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The last reload's result, if any.
    pub fn last_report(&self) -> Option<ReloadReport> {
        self.state().last.clone()
    }

    /// Loads the file again and, if it is valid, serves it to new requests. Returns the
    /// generation now serving, or why the file was refused.
    pub async fn reload(&self, trigger: Trigger) -> Result<u64, String> {
        let started = Instant::now();
        let result = self.try_reload().await;
        let duration_ms = started.elapsed().as_secs_f64() * 1000.0;
        let report = ReloadReport {
            trigger,
            applied: result.is_ok(),
            error: result.as_ref().err().cloned(),
            finished_at_ms: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default()
                .as_millis(),
            duration_ms,
        };
        match &result {
            Ok(generation) => tracing::info!(
                config = %self.path.display(),
                ?trigger,
                generation,
                duration_ms,
                "configuration reloaded; new requests use it"
            ),
            Err(reason) => tracing::error!(
                config = %self.path.display(),
                ?trigger,
                reason,
                duration_ms,
                "configuration reload refused; the previous configuration keeps serving"
            ),
        }
        self.gateway.metrics.config_reload(result.is_ok());
        self.state().last = Some(report);
        result
    }

    async fn try_reload(&self) -> Result<u64, String> {
        let invalid = |e| format!("{}: invalid configuration: {e}", self.path.display());
        let before = self.current_stamps();
        let config = match Config::from_file(&self.path) {
            Ok(config) => config,
            Err(error) => {
                self.state().read = before;
                return Err(invalid(error));
            }
        };
        let serving = {
            let mut state = self.state();
            state.watched = config.referenced_files();
            state.read = FileStamps::read(&self.path, &state.watched);
            state.serving.clone()
        };
        let fixed = restart_only_changes(&serving, &config);
        if !fixed.is_empty() {
            return Err(format!(
                "{}: {} changed; only a restart applies that (see `proxy run --upgrade`)",
                self.path.display(),
                fixed.join(", ")
            ));
        }
        let generation = self.gateway.prepare(&config).await.map_err(invalid)?;
        let number = generation.number;
        self.gateway.install(generation);
        self.state().serving = config;
        Ok(number)
    }

    /// The watched files as they are now.
    fn current_stamps(&self) -> FileStamps {
        let watched = self.state().watched.clone();
        FileStamps::read(&self.path, &watched)
    }

    /// The watched files as they were when the configuration was last read.
    fn read_stamps(&self) -> FileStamps {
        self.state().read.clone()
    }

    fn state(&self) -> std::sync::MutexGuard<'_, ReloaderState> {
        self.state.lock().expect("reloader state lock")
    }
}

/// The settings a running process cannot change that `new` changes, by their path in the file.
fn restart_only_changes(serving: &Config, new: &Config) -> Vec<String> {
    serving.process().changed_fields(&new.process())
}

/// Set by a SIGHUP that arrives before [`ReloadTrigger`] listens; it reloads once when it starts.
static HANGUP_WHILE_STARTING: AtomicBool = AtomicBool::new(false);

/// Replaces SIGHUP's default action (ending the process) for the life of the process, so that a
/// SIGHUP arriving while the proxy starts (compiling filters can take seconds) is not fatal, and
/// remembers it: once the proxy serves, [`ReloadTrigger`] applies it and handles later ones.
/// A listener of its own is needed because a runtime's signal driver hands a signal only to the
/// listeners that exist when it sees it (the filters load on a runtime that may see it first).
pub fn survive_early_hangups() -> std::io::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()?;
    // Tokio installs its handler once per signal and never removes it.
    let mut hangups = {
        let _entered = runtime.enter();
        signal(SignalKind::hangup())?
    };
    std::thread::Builder::new()
        .name("early-sighup".into())
        .spawn(move || {
            runtime.block_on(async move {
                while hangups.recv().await.is_some() {
                    HANGUP_WHILE_STARTING.store(true, Ordering::Release);
                }
            })
        })
        .map(drop)
}

/// Triggers reloads: SIGHUP always, file changes when `server.reload.watch` is set.
pub struct ReloadTrigger {
    reloader: Arc<Reloader>,
    settings: ReloadSettings,
}

impl ReloadTrigger {
    /// Watches for `reloader`'s triggers under `settings`.
    pub fn new(reloader: Arc<Reloader>, settings: ReloadSettings) -> Self {
        Self { reloader, settings }
    }
}

#[async_trait]
impl BackgroundService for ReloadTrigger {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut hangup = match signal(SignalKind::hangup()) {
            Ok(hangup) => hangup,
            Err(error) => {
                tracing::error!(%error, "cannot handle SIGHUP; reload on signal is off");
                return;
            }
        };
        // Listening now: a SIGHUP from here on reaches `hangup`; one before it is the flag's.
        if HANGUP_WHILE_STARTING.swap(false, Ordering::AcqRel) {
            let _ = self.reloader.reload(Trigger::Signal).await;
        }
        let mut poll = tokio::time::interval(self.settings.poll_interval);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut changing = None;
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = hangup.recv() => {
                    let _ = self.reloader.reload(Trigger::Signal).await;
                    changing = None;
                }
                _ = poll.tick(), if self.settings.watch => {
                    let now = self.reloader.current_stamps();
                    if now == self.reloader.read_stamps() {
                        changing = None;
                    } else if changing.as_ref() == Some(&now) {
                        // Unchanged for a whole period: the writer is done.
                        changing = None;
                        let _ = self.reloader.reload(Trigger::FileChange).await;
                    } else {
                        changing = Some(now);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::restart_only_changes;
    use crate::config::Config;

    fn parse(extra: &str) -> Config {
        let text = format!(
            "
listeners: [{{name: public, address: 127.0.0.1:8080}}]
routes: [{{name: all, cluster: app}}]
clusters: [{{name: app, endpoints: [127.0.0.1:9000]}}]
{extra}"
        );
        Config::parse(&text, ".".into()).expect("valid")
    }

    #[test]
    fn routes_clusters_and_limits_reload_but_listeners_and_threads_need_a_restart() {
        let base = parse("");
        assert!(restart_only_changes(&base, &base).is_empty());
        let reloadable =
            parse("server: {max_request_body_bytes: 10}\nlogging: {access_log: false}");
        assert!(restart_only_changes(&base, &reloadable).is_empty());
        let mut moved = base.clone();
        moved.listeners[0].address = "127.0.0.1:8081".parse().unwrap();
        assert_eq!(restart_only_changes(&base, &moved), ["listeners"]);
        let threads = parse("server: {threads: 4}\nlogging: {level: debug}");
        assert_eq!(
            restart_only_changes(&base, &threads),
            ["server.threads", "logging.level"]
        );
    }
}
