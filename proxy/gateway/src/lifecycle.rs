//! Where the process is in its life, as the request path needs it.
//!
//! **Handing over** (an upgrade, from SIGQUIT on): responses carry `Connection: close`, so
//! keep-alive clients reconnect (to either process while both accept, then to the new one) instead
//! of finding their idle connection closed when the old process stops.
//!
//! There is no draining state for `/readyz`: once Pingora's graceful shutdown starts, every
//! listener stops accepting, the admin one included, so probes already fail (connection refused).

use async_trait::async_trait;
use pingora::server::{ExecutionPhase, ShutdownWatch};
use pingora::services::background::BackgroundService;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::broadcast;

/// The process's state, set by [`LifecycleWatcher`].
#[derive(Debug, Default)]
pub struct Lifecycle {
    handing_over: AtomicBool,
}

impl Lifecycle {
    /// True from the upgrade signal (SIGQUIT) on.
    pub fn is_handing_over(&self) -> bool {
        self.handing_over.load(Ordering::Acquire)
    }
}

/// Follows Pingora's execution phases into a [`Lifecycle`].
pub struct LifecycleWatcher {
    phases: Mutex<Option<broadcast::Receiver<ExecutionPhase>>>,
    lifecycle: Arc<Lifecycle>,
}

impl LifecycleWatcher {
    /// Follows `phases` (from `Server::watch_execution_phase`) into `lifecycle`.
    pub fn new(phases: broadcast::Receiver<ExecutionPhase>, lifecycle: Arc<Lifecycle>) -> Self {
        Self {
            phases: Mutex::new(Some(phases)),
            lifecycle,
        }
    }
}

#[async_trait]
impl BackgroundService for LifecycleWatcher {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let Some(mut phases) = self.phases.lock().expect("phases lock").take() else {
            return;
        };
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                phase = phases.recv() => match phase {
                    Ok(ExecutionPhase::GracefulUpgradeTransferringFds) => {
                        self.lifecycle.handing_over.store(true, Ordering::Release);
                        tracing::info!("handing the listeners to a new process; closing keep-alive connections after their next response");
                    }
                    Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                    Err(broadcast::error::RecvError::Closed) => return,
                },
            }
        }
    }
}
