//! A token bucket in its GCRA form: the whole state is one instant, the bucket's "theoretical
//! arrival time" (TAT), so it fits one shared-data value and updates with a single
//! compare-and-swap. Integer nanoseconds throughout: no drift, no float rounding.

/// The shape of a bucket: how fast it refills and how much it holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BucketShape {
    /// Nanoseconds to refill one request.
    pub interval_ns: u64,
    /// Requests the bucket holds when full.
    pub capacity: u64,
}

/// What taking one request from a bucket gave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Take {
    /// Allowed; store `tat` as the new state.
    Allowed {
        /// New state.
        tat: u64,
        /// Requests left.
        remaining: u64,
        /// Seconds until the bucket is full again.
        reset_seconds: u64,
    },
    /// Refused; the state is unchanged.
    Refused {
        /// Seconds until one request is allowed again (at least 1).
        retry_after_seconds: u64,
        /// Seconds until the bucket is full again.
        reset_seconds: u64,
    },
}

impl BucketShape {
    /// A bucket allowing `requests` per `period_seconds`, holding `capacity`.
    pub fn new(requests: u64, period_seconds: u64, capacity: u64) -> Self {
        let period_ns = u128::from(period_seconds) * 1_000_000_000;
        let interval_ns = (period_ns / u128::from(requests.max(1))).max(1);
        Self {
            interval_ns: u64::try_from(interval_ns).unwrap_or(u64::MAX),
            capacity: capacity.max(1),
        }
    }

    fn depth_ns(self) -> u128 {
        u128::from(self.interval_ns) * u128::from(self.capacity)
    }

    /// Takes one request at `now_ns` from a bucket in state `tat` (`None`: never used, full).
    pub fn take(self, tat: Option<u64>, now_ns: u64) -> Take {
        let start = u128::from(tat.unwrap_or(now_ns).max(now_ns));
        let next = start + u128::from(self.interval_ns);
        let now = u128::from(now_ns);
        let depth = self.depth_ns();
        if next - now > depth {
            return Take::Refused {
                retry_after_seconds: ceil_seconds(next - now - depth).max(1),
                reset_seconds: ceil_seconds(start - now),
            };
        }
        Take::Allowed {
            tat: u64::try_from(next).unwrap_or(u64::MAX),
            remaining: u64::try_from((depth - (next - now)) / u128::from(self.interval_ns))
                .unwrap_or(u64::MAX),
            reset_seconds: ceil_seconds(next - now),
        }
    }

    /// Whether a bucket in state `tat` is full at `now_ns`, i.e. the same as no bucket: its key
    /// can be deleted.
    pub fn is_full(tat: u64, now_ns: u64) -> bool {
        tat <= now_ns
    }
}

fn ceil_seconds(ns: u128) -> u64 {
    u64::try_from(ns.div_ceil(1_000_000_000)).unwrap_or(u64::MAX)
}

/// Encodes a bucket state for shared data.
pub fn encode(tat: u64) -> [u8; 8] {
    tat.to_le_bytes()
}

/// Decodes a bucket state; anything else (an empty, deleted value) reads as a full bucket.
pub fn decode(bytes: &[u8]) -> Option<u64> {
    Some(u64::from_le_bytes(bytes.try_into().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: u64 = 1_000_000_000;

    /// Takes `n` requests at `now`, threading the state; returns how many were allowed.
    fn burst(shape: BucketShape, tat: &mut Option<u64>, now: u64, n: usize) -> usize {
        let mut allowed = 0;
        for _ in 0..n {
            if let Take::Allowed { tat: next, .. } = shape.take(*tat, now) {
                *tat = Some(next);
                allowed += 1;
            }
        }
        allowed
    }

    #[test]
    fn a_burst_gets_exactly_the_capacity() {
        let shape = BucketShape::new(100, 3600, 100);
        let mut tat = None;
        assert_eq!(burst(shape, &mut tat, 1000 * SECOND, 1000), 100);
    }

    #[test]
    fn refills_at_the_configured_rate() {
        let shape = BucketShape::new(10, 1, 10);
        let mut tat = None;
        let t0 = 50 * SECOND;
        assert_eq!(burst(shape, &mut tat, t0, 20), 10);
        assert_eq!(burst(shape, &mut tat, t0 + SECOND / 2, 20), 5);
        assert_eq!(
            burst(shape, &mut tat, t0 + 10 * SECOND, 20),
            10,
            "never above capacity"
        );
    }

    #[test]
    fn reports_remaining_reset_and_retry_after() {
        let shape = BucketShape::new(60, 60, 3);
        let now = 7 * SECOND;
        let Take::Allowed {
            tat,
            remaining,
            reset_seconds,
        } = shape.take(None, now)
        else {
            panic!()
        };
        assert_eq!((remaining, reset_seconds), (2, 1));
        let Take::Allowed { tat, remaining, .. } = shape.take(Some(tat), now) else {
            panic!()
        };
        assert_eq!(remaining, 1);
        let Take::Allowed {
            tat,
            remaining,
            reset_seconds,
        } = shape.take(Some(tat), now)
        else {
            panic!()
        };
        assert_eq!((remaining, reset_seconds), (0, 3));
        assert_eq!(
            shape.take(Some(tat), now),
            Take::Refused {
                retry_after_seconds: 1,
                reset_seconds: 3
            }
        );
        assert!(!BucketShape::is_full(tat, now));
        assert!(BucketShape::is_full(tat, now + 3 * SECOND));
    }

    #[test]
    fn state_round_trips_and_empty_means_full() {
        assert_eq!(decode(&encode(42)), Some(42));
        assert_eq!(decode(b""), None);
    }
}
