//! Keys a root context revisits on its tick to delete what has expired, a bounded number per tick.

use std::collections::{HashSet, VecDeque};
use std::rc::Rc;

/// Most keys one tick visits. Each visit is a shared-data call (a Redis round trip with that
/// backend) made on the worker thread, so an unbounded sweep of tens of thousands of keys would
/// stall the worker's requests; at this bound a full pass over 65,536 keys takes 64 ticks.
pub const KEYS_PER_TICK: usize = 1024;

/// Keys to revisit, in visiting order: each tick takes keys from the front and puts the ones that
/// stay at the back, so the next tick continues where this one stopped.
pub struct Sweep {
    order: VecDeque<Rc<str>>,
    members: HashSet<Rc<str>>,
    capacity: usize,
}

impl Sweep {
    /// An empty set holding at most `capacity` keys; keys beyond it are not tracked.
    pub fn new(capacity: usize) -> Self {
        Self {
            order: VecDeque::new(),
            members: HashSet::new(),
            capacity,
        }
    }

    /// Tracks `key` unless it already is or the set is full.
    pub fn insert(&mut self, key: &str) {
        if self.members.len() >= self.capacity || self.members.contains(key) {
            return;
        }
        let key: Rc<str> = Rc::from(key);
        self.members.insert(Rc::clone(&key));
        self.order.push_back(key);
    }

    /// Number of keys tracked.
    pub fn len(&self) -> usize {
        self.order.len()
    }

    /// True when no key is tracked.
    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    /// Visits up to `limit` keys, least recently visited first, each at most once; a key for which
    /// `gone` returns true is no longer tracked. Returns how many keys were visited.
    pub fn tick(&mut self, limit: usize, mut gone: impl FnMut(&str) -> bool) -> usize {
        let visits = limit.min(self.order.len());
        for _ in 0..visits {
            let Some(key) = self.order.pop_front() else {
                break;
            };
            if gone(&key) {
                self.members.remove(&key);
            } else {
                self.order.push_back(key);
            }
        }
        visits
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sweep_is_spread_over_ticks_and_drops_expired_keys() {
        let mut sweep = Sweep::new(100);
        for i in 0..10 {
            sweep.insert(&format!("k{i}"));
        }
        sweep.insert("k3");
        assert_eq!(sweep.len(), 10, "a key is tracked once");

        // Even keys have expired. 10 keys at 4 per tick: ceil(10 / 4) = 3 ticks visit them all.
        let expired = |key: &str| key[1..].parse::<u32>().unwrap() % 2 == 0;
        let mut ticks: Vec<Vec<String>> = Vec::new();
        for _ in 0..3 {
            let mut seen = Vec::new();
            let visited = sweep.tick(4, |key| {
                seen.push(key.to_string());
                expired(key)
            });
            assert_eq!(visited, seen.len());
            ticks.push(seen);
        }
        let distinct: HashSet<&String> = ticks.iter().flatten().collect();
        assert_eq!(distinct.len(), 10);
        assert_eq!(ticks[0], ["k0", "k1", "k2", "k3"]);
        assert_eq!(ticks[1], ["k4", "k5", "k6", "k7"]);
        // The third tick finishes the pass and, with room left, goes on to the keys that stayed.
        assert_eq!(ticks[2], ["k8", "k9", "k1", "k3"]);
        assert_eq!(sweep.len(), 5, "the expired keys are gone");

        // The next tick continues where this one stopped; a tick visits a key at most once.
        let mut seen = Vec::new();
        let visited = sweep.tick(100, |key| {
            seen.push(key.to_string());
            true
        });
        assert_eq!(visited, 5);
        assert_eq!(seen, ["k5", "k7", "k9", "k1", "k3"]);
        assert!(sweep.is_empty());
    }

    #[test]
    fn keys_beyond_capacity_are_not_tracked() {
        let mut sweep = Sweep::new(2);
        for key in ["a", "b", "c"] {
            sweep.insert(key);
        }
        assert_eq!(sweep.len(), 2);
        sweep.tick(1, |_| true);
        sweep.insert("c");
        assert_eq!(sweep.len(), 2, "room freed by expiry is reused");
    }
}
