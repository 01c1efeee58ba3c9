//! How a VM's guest calls run. A host call that may wait (shared data in a remote store) needs the
//! guest on a fiber that can suspend; a fiber per callback costs more than most filters' own code,
//! so VMs whose host calls can never wait (shared data in process memory) call the guest
//! synchronously, and the host calls written as futures are polled once.

use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

/// Whether a VM's guest runs on a suspendable fiber.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CallMode {
    /// Plain calls; no host call may wait.
    Synchronous,
    /// Calls on a fiber; host calls may wait without blocking the worker thread.
    Suspendable,
}

/// Runs a host call's future that cannot wait in a synchronous VM: `None` if it tried to.
pub(crate) fn complete_now<F: Future>(future: F) -> Option<F::Output> {
    match pin!(future).poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(output) => Some(output),
        Poll::Pending => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ready_future_completes_and_a_waiting_one_does_not() {
        assert_eq!(complete_now(async { 7 }), Some(7));
        assert_eq!(complete_now(std::future::pending::<()>()), None);
    }
}
