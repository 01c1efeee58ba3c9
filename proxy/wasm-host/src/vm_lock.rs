//! The lock around a VM: exclusive, never queueing, and free of wake-ups when uncontended.

use std::cell::UnsafeCell;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use tokio::sync::Notify;

/// Holds a value (a VM) for one task at a time.
///
/// A queued waiter of a fair lock is handed the lock when it is released, and must then be polled
/// to use it. The gateway blocks a worker thread in Pingora's synchronous response-body hook while
/// another thread runs the filter; had a task of that blocked thread been queued, the lock would
/// pass to it and nobody could take it again. Here waiters are only woken on release and then race
/// to take it, so no claim is left behind, and a callback waiting on a remote shared-data backend
/// does not keep its waiters spinning. The usual case, a free VM, costs one atomic exchange and no
/// wake-up.
pub(crate) struct VmLock<T> {
    locked: AtomicBool,
    /// Tasks waiting in [`VmLock::lock`]; an unlock with none skips the wake-up.
    waiters: AtomicUsize,
    /// Signalled on unlock when tasks are waiting.
    released: Notify,
    value: UnsafeCell<T>,
}

// SAFETY: the value is reached only through a `VmGuard`, and `locked` admits one guard at a time,
// so sharing the lock hands the value to one thread at a time, as a mutex does.
unsafe impl<T: Send> Sync for VmLock<T> {}

impl<T> VmLock<T> {
    /// An unlocked lock around `value`.
    pub(crate) fn new(value: T) -> Self {
        Self {
            locked: AtomicBool::new(false),
            waiters: AtomicUsize::new(0),
            released: Notify::new(),
            value: UnsafeCell::new(value),
        }
    }

    /// Waits until the value is free and takes it.
    pub(crate) async fn lock(&self) -> VmGuard<'_, T> {
        if let Some(guard) = self.try_lock() {
            return guard;
        }
        let _waiting = Waiting::join(&self.waiters);
        loop {
            let released = self.released.notified();
            tokio::pin!(released);
            // Registered (and counted) before trying, so a release in between wakes this task.
            released.as_mut().enable();
            if let Some(guard) = self.try_lock() {
                return guard;
            }
            released.await;
        }
    }

    /// Whether a guard exists now (a hint: it may change at once).
    pub(crate) fn is_locked(&self) -> bool {
        self.locked.load(Ordering::Relaxed)
    }

    /// Takes the value if it is free.
    pub(crate) fn try_lock(&self) -> Option<VmGuard<'_, T>> {
        // A guard is made only on success: dropping one unlocks.
        let acquired = self
            .locked
            .compare_exchange(false, true, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok();
        if acquired {
            Some(VmGuard { lock: self })
        } else {
            None
        }
    }
}

/// Counts a task as waiting for the lock until it stops waiting (or is cancelled).
struct Waiting<'a>(&'a AtomicUsize);

impl<'a> Waiting<'a> {
    fn join(waiters: &'a AtomicUsize) -> Self {
        waiters.fetch_add(1, Ordering::SeqCst);
        Self(waiters)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The locked value; dropping it unlocks and wakes the tasks waiting.
pub(crate) struct VmGuard<'a, T> {
    lock: &'a VmLock<T>,
}

impl<T> std::ops::Deref for VmGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: this guard holds `locked`, so no other reference to the value exists.
        unsafe { &*self.lock.value.get() }
    }
}

impl<T> std::ops::DerefMut for VmGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: as in `deref`; `&mut self` makes this the only use of the guard.
        unsafe { &mut *self.lock.value.get() }
    }
}

impl<T> Drop for VmGuard<'_, T> {
    fn drop(&mut self) {
        self.lock.locked.store(false, Ordering::SeqCst);
        // Sequentially consistent with `Waiting::join` and `try_lock`: either this sees the
        // waiter, or the waiter's next try sees the lock free.
        if self.lock.waiters.load(Ordering::SeqCst) > 0 {
            self.lock.released.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn a_held_lock_cannot_be_taken_and_a_failed_try_leaves_it_held() {
        let lock = VmLock::new(1);
        let guard = lock.try_lock().expect("free");
        assert!(lock.try_lock().is_none());
        assert!(lock.try_lock().is_none(), "a failed try must not unlock");
        drop(guard);
        assert!(lock.try_lock().is_some());
    }

    #[test]
    fn tasks_on_several_threads_never_hold_it_together() {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(4)
            .build()
            .unwrap();
        // Each task reads, yields while holding the lock, and writes back: any overlap loses an
        // increment.
        let lock = Arc::new(VmLock::new(0u64));
        let tasks: Vec<_> = (0..16)
            .map(|_| {
                let lock = lock.clone();
                runtime.spawn(async move {
                    for _ in 0..500 {
                        let mut guard = lock.lock().await;
                        let seen = *guard;
                        tokio::task::yield_now().await;
                        *guard = seen + 1;
                    }
                })
            })
            .collect();
        runtime.block_on(async {
            for task in tasks {
                task.await.unwrap();
            }
        });
        assert_eq!(*lock.try_lock().unwrap(), 16 * 500);
    }
}
