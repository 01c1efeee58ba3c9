//! The old process's side of an upgrade. Once it starts handing its listening sockets to a new
//! process, its responses carry `Connection: close`, so keep-alive clients reconnect (to either
//! process while both accept, then to the new one) instead of finding their idle connection closed
//! when the old process stops.

use async_trait::async_trait;
use pingora::server::{ExecutionPhase, ShutdownWatch};
use pingora::services::background::BackgroundService;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::broadcast;

/// Whether this process is handing its listeners over to a new one.
#[derive(Debug, Default)]
pub struct HandingOver(AtomicBool);

impl HandingOver {
    /// True from the upgrade signal (SIGQUIT) on.
    pub fn is_set(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

/// Sets [`HandingOver`] when Pingora starts an upgrade.
pub struct HandoverWatcher {
    phases: Mutex<Option<broadcast::Receiver<ExecutionPhase>>>,
    handing_over: Arc<HandingOver>,
}

impl HandoverWatcher {
    /// Follows `phases` (from `Server::watch_execution_phase`) and sets `handing_over`.
    pub fn new(
        phases: broadcast::Receiver<ExecutionPhase>,
        handing_over: Arc<HandingOver>,
    ) -> Self {
        Self {
            phases: Mutex::new(Some(phases)),
            handing_over,
        }
    }
}

#[async_trait]
impl BackgroundService for HandoverWatcher {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let Some(mut phases) = self.phases.lock().expect("phases lock").take() else {
            return;
        };
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                phase = phases.recv() => match phase {
                    Ok(ExecutionPhase::GracefulUpgradeTransferringFds) => {
                        self.handing_over.0.store(true, Ordering::Release);
                        tracing::info!("handing the listeners to a new process; closing keep-alive connections after their next response");
                    }
                    Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                    Err(broadcast::error::RecvError::Closed) => return,
                },
            }
        }
    }
}
