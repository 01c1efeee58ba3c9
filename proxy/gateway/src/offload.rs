//! Running an async filter phase from Pingora's synchronous response-body hook.
//!
//! Pingora 0.9 calls `response_body_filter` synchronously (made async upstream after 0.9). A filter
//! callback normally finishes in one poll: VMs trap rather than yield at their deadline and the
//! in-memory shared data answers at once. Only a callback that waits (a filter pausing the
//! response body for an `http_call`) is moved to a small offload runtime, so the worker thread
//! blocks on it instead of deadlocking on its own reactor.
//!
//! With shared data in Redis, every callback may wait, holding its VM's lock. Were such a
//! callback polled by a worker thread, and that thread blocked in the response-body hook on a
//! callback needing the same VM, neither could proceed. So with a remote backend every filter
//! phase runs on the offload runtime ([`filter_phase`]): whatever holds a VM lock is always polled
//! by a thread that never blocks.

use futures::FutureExt;
use std::future::Future;
use std::sync::OnceLock;

/// Runs `future` to completion: inline when it completes in one poll, otherwise on the offload
/// runtime while this thread waits.
pub fn block_on<T: Send + 'static>(future: impl Future<Output = T> + Send + 'static) -> T {
    let runtime = offload_runtime();
    let mut future = Box::pin(future);
    {
        // Timers and tasks the first poll creates belong to the offload runtime, which keeps
        // running while this worker thread waits.
        let _context = runtime.enter();
        if let Some(output) = (&mut future).now_or_never() {
            return output;
        }
    }
    let (done, result) = std::sync::mpsc::sync_channel(1);
    runtime.spawn(async move {
        let _ = done.send(future.await);
    });
    result
        .recv()
        .expect("the offload runtime runs every task to completion")
}

/// Runs a filter phase: inline, or on the offload runtime when `offloaded` (callbacks may wait on
/// a remote shared-data backend). A panic in the phase resumes here.
pub async fn filter_phase<T: Send + 'static>(
    offloaded: bool,
    future: impl Future<Output = T> + Send + 'static,
) -> T {
    if !offloaded {
        return future.await;
    }
    match offload_runtime().spawn(future).await {
        Ok(output) => output,
        Err(error) => std::panic::resume_unwind(error.into_panic()),
    }
}

/// Runs the end of a stream's filters, which nothing waits for: inline, or when `offloaded` on
/// the offload runtime without this task waiting (a hop back to the worker would only delay its
/// next request).
pub async fn finish_phase(offloaded: bool, future: impl Future<Output = ()> + Send + 'static) {
    if offloaded {
        offload_runtime().spawn(future);
    } else {
        future.await;
    }
}

/// Runs `future` on the offload runtime from a thread outside any runtime, returning its output.
/// Tasks it spawns (filters' root-context ticks) keep running there afterwards.
pub fn run_persistently<T>(future: impl Future<Output = T>) -> T {
    offload_runtime().block_on(future)
}

/// The offload runtime, for work that must run where no thread blocks (Redis I/O).
pub fn runtime_handle() -> tokio::runtime::Handle {
    offload_runtime().handle().clone()
}

fn offload_runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .thread_name("filter-offload")
            .enable_all()
            .build()
            .expect("cannot start the filter offload runtime")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_futures_run_inline_and_waiting_ones_on_the_offload_runtime() {
        assert_eq!(block_on(async { 7 }), 7);
        let waited = block_on(async {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            std::thread::current().name().map(str::to_string)
        });
        assert_eq!(waited.as_deref(), Some("filter-offload"));
    }
}
