//! Where the process is in its life, as the request path and the admin endpoints need it.
//!
//! - **Handing over** (an upgrade, from SIGQUIT on): responses carry `Connection: close`, so
//!   keep-alive clients reconnect (to either process while both accept, then to the new one)
//!   instead of finding their idle connection closed when the old process stops.
//! - **Draining** (once Pingora's graceful shutdown starts): `/readyz` fails while in-flight
//!   requests finish, so load balancers stop sending new ones.

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
    draining: AtomicBool,
}

impl Lifecycle {
    /// True from the upgrade signal (SIGQUIT) on.
    pub fn is_handing_over(&self) -> bool {
        self.handing_over.load(Ordering::Acquire)
    }

    /// True once the graceful shutdown has started.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }
}

/// Follows Pingora's execution phases and shutdown into a [`Lifecycle`].
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
        let phases = self.phases.lock().expect("phases lock").take();
        let handing_over = async {
            let Some(mut phases) = phases else { return };
            loop {
                match phases.recv().await {
                    Ok(ExecutionPhase::GracefulUpgradeTransferringFds) => {
                        self.lifecycle.handing_over.store(true, Ordering::Release);
                        tracing::info!("handing the listeners to a new process; closing keep-alive connections after their next response");
                    }
                    Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                    Err(broadcast::error::RecvError::Closed) => return,
                }
            }
        };
        tokio::select! {
            () = handing_over => {
                let _ = shutdown.changed().await;
            }
            _ = shutdown.changed() => {}
        }
        self.lifecycle.draining.store(true, Ordering::Release);
    }
}
