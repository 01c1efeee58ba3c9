//! Waiting in a guest without outliving its deadline or its caller.
//!
//! An epoch deadline only fires while wasm runs; a guest asleep in WASI's `poll_oneoff` (Python's
//! `time.sleep`, QuickJS's `os.sleep` and `setTimeout`) runs no wasm and uses no fuel. So this
//! host's `poll_oneoff` sleeps itself, never past the execution's wall-clock deadline, and wakes at
//! once when the execution is cancelled (its caller went away). Running wasm is stopped the same
//! way by the epoch callback: [`Watch::check`] every tick.

use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use wasmtime::{Caller, Trap};
use wasmtime_wasi::HostMonotonicClock;

/// The guest was stopped because its caller went away.
#[derive(Debug, thiserror::Error)]
#[error("cancelled: the caller went away")]
pub struct Cancelled;

/// A cancellation flag that a sleeping guest wakes up for.
#[derive(Debug, Default)]
pub struct Cancel {
    cancelled: Mutex<bool>,
    wake: Condvar,
}

impl Cancel {
    /// Cancels the execution: a sleeping guest wakes now, a running one stops at the next tick.
    pub fn cancel(&self) {
        *self.cancelled.lock().unwrap_or_else(|e| e.into_inner()) = true;
        self.wake.notify_all();
    }

    /// Whether [`Cancel::cancel`] was called.
    pub fn is_cancelled(&self) -> bool {
        *self.cancelled.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sleeps until `until`; returns false, early, if cancelled.
    fn sleep_until(&self, until: Instant) -> bool {
        let mut cancelled = self.cancelled.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if *cancelled {
                return false;
            }
            let now = Instant::now();
            if now >= until {
                return true;
            }
            cancelled = self
                .wake
                .wait_timeout(cancelled, until - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
}

/// What bounds one execution in time: its wall-clock deadline and its cancellation.
#[derive(Debug, Clone)]
pub struct Watch {
    /// When the guest's monotonic clock reads 0.
    pub started: Instant,
    /// The wall-clock deadline.
    pub deadline: Instant,
    /// Set when the caller goes away.
    pub cancel: Arc<Cancel>,
}

impl Watch {
    /// An error that stops the guest if it must stop now: `Trap::Interrupt` past the deadline
    /// (reported as a timeout), [`Cancelled`] when cancelled.
    pub fn check(&self) -> wasmtime::Result<()> {
        if self.cancel.is_cancelled() {
            return Err(Cancelled.into());
        }
        if Instant::now() >= self.deadline {
            return Err(Trap::Interrupt.into());
        }
        Ok(())
    }

    /// The guest's monotonic clock, reading from `started` (so absolute monotonic timeouts can be
    /// compared with it).
    pub fn monotonic_clock(&self) -> GuestMonotonicClock {
        GuestMonotonicClock {
            started: self.started,
        }
    }
}

/// The monotonic clock a guest reads: nanoseconds since its execution started.
pub struct GuestMonotonicClock {
    started: Instant,
}

impl HostMonotonicClock for GuestMonotonicClock {
    fn resolution(&self) -> u64 {
        1
    }

    fn now(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }
}

/// Size of a WASI preview 1 `subscription`.
const SUBSCRIPTION_BYTES: usize = 48;
/// Size of a WASI preview 1 `event`.
const EVENT_BYTES: usize = 32;
/// Most subscriptions one call may pass (a bound on the events written back).
const MAX_SUBSCRIPTIONS: usize = 4096;
const EVENTTYPE_CLOCK: u8 = 0;
const SUBCLOCKFLAGS_ABSTIME: u16 = 1;
const CLOCK_REALTIME: u32 = 0;
const CLOCK_MONOTONIC: u32 = 1;
const ERRNO_SUCCESS: i32 = 0;
const ERRNO_FAULT: i32 = 21;
const ERRNO_INVAL: i32 = 28;

/// One decoded subscription.
struct Subscription {
    userdata: u64,
    kind: u8,
    /// For clocks: how long from now until it fires.
    wait: Option<Duration>,
}

/// The state a guest's store lends to [`poll_oneoff`].
pub trait Watched {
    /// The execution's watch.
    fn watch(&self) -> &Watch;
}

/// `poll_oneoff(in, out, nsubscriptions, nevents_ptr)`: file descriptors are always ready here
/// (stdin is a memory pipe, stdout and stderr are capped buffers, mounts are files), so only clock
/// subscriptions wait, and never past the deadline or a cancellation.
pub fn poll_oneoff<T: Watched>(
    mut caller: Caller<'_, T>,
    subscriptions: i32,
    events: i32,
    count: i32,
    nevents_ptr: i32,
) -> wasmtime::Result<i32> {
    let watch = caller.data().watch().clone();
    watch.check()?;
    let Some(memory) = caller.get_export("memory").and_then(|e| e.into_memory()) else {
        return Ok(ERRNO_FAULT);
    };
    let count = count as u32 as usize;
    if count == 0 || count > MAX_SUBSCRIPTIONS {
        return Ok(ERRNO_INVAL);
    }
    let subs = {
        let data = memory.data(&caller);
        let Some(bytes) = slice(data, subscriptions, count * SUBSCRIPTION_BYTES) else {
            return Ok(ERRNO_FAULT);
        };
        let started = watch.started;
        match bytes
            .chunks_exact(SUBSCRIPTION_BYTES)
            .map(|raw| decode(raw, started))
            .collect::<Option<Vec<_>>>()
        {
            Some(subs) => subs,
            None => return Ok(ERRNO_INVAL),
        }
    };
    let any_fd = subs.iter().any(|s| s.kind != EVENTTYPE_CLOCK);
    let shortest = subs.iter().filter_map(|s| s.wait).min();
    let waited = match (any_fd, shortest) {
        (false, Some(wait)) => {
            let wake_at = Instant::now() + wait;
            if wake_at > watch.deadline {
                watch.cancel.sleep_until(watch.deadline);
                watch.check()?;
                return Err(Trap::Interrupt.into());
            }
            if !watch.cancel.sleep_until(wake_at) {
                return Err(Cancelled.into());
            }
            wait
        }
        _ => Duration::ZERO,
    };
    let fired: Vec<&Subscription> = subs
        .iter()
        .filter(|s| s.kind != EVENTTYPE_CLOCK || s.wait.is_some_and(|w| w <= waited))
        .collect();
    let data = memory.data_mut(&mut caller);
    let Some(out) = slice_mut(data, events, fired.len() * EVENT_BYTES) else {
        return Ok(ERRNO_FAULT);
    };
    for (event, sub) in out.chunks_exact_mut(EVENT_BYTES).zip(&fired) {
        event.fill(0);
        event[0..8].copy_from_slice(&sub.userdata.to_le_bytes());
        event[10] = sub.kind;
    }
    let Some(nevents) = slice_mut(data, nevents_ptr, 4) else {
        return Ok(ERRNO_FAULT);
    };
    nevents.copy_from_slice(&(fired.len() as u32).to_le_bytes());
    Ok(ERRNO_SUCCESS)
}

/// Decodes a subscription; `None` for an unknown tag or clock.
fn decode(raw: &[u8], started: Instant) -> Option<Subscription> {
    let u64_at = |at: usize| u64::from_le_bytes(raw[at..at + 8].try_into().expect("8 bytes"));
    let userdata = u64_at(0);
    let kind = raw[8];
    if kind > 2 {
        return None;
    }
    if kind != EVENTTYPE_CLOCK {
        return Some(Subscription {
            userdata,
            kind,
            wait: None,
        });
    }
    let clock = u32::from_le_bytes(raw[16..20].try_into().expect("4 bytes"));
    if clock > 3 {
        return None; // realtime, monotonic, process and thread CPU time are all there are
    }
    let timeout = Duration::from_nanos(u64_at(24));
    let flags = u16::from_le_bytes(raw[40..42].try_into().expect("2 bytes"));
    let wait = if flags & SUBCLOCKFLAGS_ABSTIME == 0 {
        timeout
    } else {
        let now = match clock {
            CLOCK_REALTIME => SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default(),
            CLOCK_MONOTONIC => started.elapsed(),
            _ => return None,
        };
        timeout.saturating_sub(now)
    };
    Some(Subscription {
        userdata,
        kind,
        wait: Some(wait),
    })
}

fn slice(data: &[u8], ptr: i32, len: usize) -> Option<&[u8]> {
    let start = ptr as u32 as usize;
    data.get(start..start.checked_add(len)?)
}

fn slice_mut(data: &mut [u8], ptr: i32, len: usize) -> Option<&mut [u8]> {
    let start = ptr as u32 as usize;
    data.get_mut(start..start.checked_add(len)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn clock_subscription(userdata: u64, clock: u32, timeout_ns: u64, flags: u16) -> Vec<u8> {
        let mut raw = vec![0u8; SUBSCRIPTION_BYTES];
        raw[0..8].copy_from_slice(&userdata.to_le_bytes());
        raw[8] = EVENTTYPE_CLOCK;
        raw[16..20].copy_from_slice(&clock.to_le_bytes());
        raw[24..32].copy_from_slice(&timeout_ns.to_le_bytes());
        raw[40..42].copy_from_slice(&flags.to_le_bytes());
        raw
    }

    #[test]
    fn relative_and_absolute_clocks_decode_to_a_wait_from_now() {
        let started = Instant::now() - Duration::from_secs(2);
        let relative = decode(
            &clock_subscription(7, CLOCK_MONOTONIC, 5_000_000, 0),
            started,
        )
        .expect("valid");
        assert_eq!(
            (relative.userdata, relative.wait),
            (7, Some(Duration::from_millis(5)))
        );
        let absolute = decode(
            &clock_subscription(8, CLOCK_MONOTONIC, 3_000_000_000, SUBCLOCKFLAGS_ABSTIME),
            started,
        )
        .expect("valid");
        let wait = absolute.wait.expect("a clock");
        assert!(wait <= Duration::from_secs(1) && wait > Duration::from_millis(900));
        let past = decode(
            &clock_subscription(9, CLOCK_REALTIME, 1, SUBCLOCKFLAGS_ABSTIME),
            started,
        )
        .expect("valid");
        assert_eq!(past.wait, Some(Duration::ZERO));
        assert!(decode(&clock_subscription(1, 9, 1, 0), started).is_none());
    }

    #[test]
    fn a_cancel_wakes_a_sleeper_at_once() {
        let cancel = Arc::new(Cancel::default());
        let sleeper = {
            let cancel = cancel.clone();
            std::thread::spawn(move || {
                let started = Instant::now();
                let slept_through = cancel.sleep_until(started + Duration::from_secs(30));
                (slept_through, started.elapsed())
            })
        };
        std::thread::sleep(Duration::from_millis(50));
        cancel.cancel();
        let (slept_through, took) = sleeper.join().expect("sleeper");
        assert!(!slept_through);
        assert!(took < Duration::from_secs(5), "{took:?}");
    }
}
