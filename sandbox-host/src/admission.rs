//! The admission queue: at most `max_running` executions at once, at most `max_queued` waiting,
//! each waiting at most `queue_timeout`. Beyond that, callers are turned away at once (429) or
//! after the wait (503), so overload never turns into unbounded memory or threads.

use crate::config::ConcurrencySettings;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Why an execution was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    /// The queue is full.
    #[error("too many executions are waiting; retry later")]
    QueueFull,
    /// No slot freed up within the queue timeout.
    #[error("no execution slot freed up in time; retry later")]
    QueueTimeout,
}

/// Running and waiting executions.
pub struct Admission {
    running: Arc<Semaphore>,
    waiting: AtomicUsize,
    max_running: usize,
    max_queued: usize,
    queue_timeout: Duration,
}

/// A running execution's slot, released on drop.
pub struct Slot {
    _permit: OwnedSemaphorePermit,
}

/// One place in the queue, given up when dropped.
struct Queued<'a>(&'a AtomicUsize);

impl<'a> Queued<'a> {
    /// A place in the queue, and how many were waiting before it.
    fn join(waiting: &'a AtomicUsize) -> (Self, usize) {
        let ahead = waiting.fetch_add(1, Ordering::AcqRel);
        (Self(waiting), ahead)
    }
}

impl Drop for Queued<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Admission {
    /// An empty queue with these bounds.
    pub fn new(settings: &ConcurrencySettings) -> Self {
        let max_running = settings.max_running as usize;
        Self {
            running: Arc::new(Semaphore::new(max_running)),
            waiting: AtomicUsize::new(0),
            max_running,
            max_queued: settings.max_queued as usize,
            queue_timeout: Duration::from_millis(settings.queue_timeout_ms),
        }
    }

    /// A slot now, or after waiting in the queue.
    pub async fn admit(&self) -> Result<Slot, Rejection> {
        if let Ok(permit) = self.running.clone().try_acquire_owned() {
            return Ok(Slot { _permit: permit });
        }
        // Counted out on drop: a caller that goes away while queued leaves the queue too. The
        // count before joining decides, atomically, so concurrent callers never both overflow it.
        let (_queued, ahead) = Queued::join(&self.waiting);
        if ahead >= self.max_queued {
            return Err(Rejection::QueueFull);
        }
        let acquired =
            tokio::time::timeout(self.queue_timeout, self.running.clone().acquire_owned()).await;
        match acquired {
            Ok(Ok(permit)) => Ok(Slot { _permit: permit }),
            _ => Err(Rejection::QueueTimeout),
        }
    }

    /// Executions running now.
    pub fn running(&self) -> usize {
        self.max_running - self.running.available_permits()
    }

    /// Executions waiting now.
    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_full_queue_rejects_at_once_and_a_long_wait_times_out() {
        let admission = Admission::new(&ConcurrencySettings {
            max_running: 1,
            max_queued: 1,
            queue_timeout_ms: 50,
            ..ConcurrencySettings::default()
        });
        let slot = admission.admit().await.unwrap();
        let waiter = admission.admit();
        tokio::pin!(waiter);
        assert!(futures_poll_once(&mut waiter).await.is_none(), "queued");
        assert_eq!(admission.admit().await.err(), Some(Rejection::QueueFull));
        assert_eq!(waiter.await.err(), Some(Rejection::QueueTimeout));
        drop(slot);
        assert!(admission.admit().await.is_ok());
        assert_eq!((admission.running(), admission.waiting()), (0, 0));
    }

    #[tokio::test]
    async fn a_caller_that_goes_away_while_queued_leaves_the_queue() {
        let admission = Admission::new(&ConcurrencySettings {
            max_running: 1,
            max_queued: 1,
            queue_timeout_ms: 60_000,
            ..ConcurrencySettings::default()
        });
        let _slot = admission.admit().await.unwrap();
        for _ in 0..3 {
            let waiter = Box::pin(admission.admit());
            let mut waiter = waiter;
            assert!(futures_poll_once(&mut waiter).await.is_none(), "queued");
            assert_eq!(admission.waiting(), 1);
            drop(waiter);
            assert_eq!(admission.waiting(), 0, "its place is given up");
        }
    }

    /// Polls a future once; `None` when it is still pending.
    async fn futures_poll_once<F: std::future::Future + Unpin>(
        future: &mut F,
    ) -> Option<F::Output> {
        tokio::time::timeout(Duration::from_millis(10), future)
            .await
            .ok()
    }
}
