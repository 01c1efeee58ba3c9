//! Keys of remote-JWKS providers: when to fetch, single-flight, and how long fetched keys last.
//!
//! Plain state over an injected clock; the wasm shell performs the fetch (`http_call`) the cache
//! asks for and reports the result back.

use crate::keys::KeySet;
use std::rc::Rc;

/// Least time between two fetches caused by unknown `kid`s or failures, so a stream of tokens
/// with random `kid`s cannot turn into a stream of JWKS requests.
pub const MIN_REFETCH_SECONDS: u64 = 10;

/// Fetch state of one provider's remote JWKS.
#[derive(Debug, Default)]
struct RemoteKeys {
    keys: Option<Rc<KeySet>>,
    fetched_at: u64,
    cache_seconds: u64,
    in_flight: bool,
    last_attempt: Option<u64>,
}

/// Remote key sets, indexed like the providers (`None` for providers with static keys).
#[derive(Debug, Default)]
pub struct JwksCache {
    providers: Vec<Option<RemoteKeys>>,
}

impl JwksCache {
    /// A cache for providers whose remote-JWKS lifetimes are given (`None`: static keys).
    pub fn new(cache_seconds: impl IntoIterator<Item = Option<u64>>) -> Self {
        Self {
            providers: cache_seconds
                .into_iter()
                .map(|ttl| {
                    ttl.map(|cache_seconds| RemoteKeys {
                        cache_seconds,
                        ..RemoteKeys::default()
                    })
                })
                .collect(),
        }
    }

    /// The fetched keys of `provider`, possibly past their lifetime.
    pub fn keys(&self, provider: usize) -> Option<Rc<KeySet>> {
        self.remote(provider)?.keys.clone()
    }

    /// Whether a request may wait for a (re)fetch of `provider`'s keys: one is running, or none
    /// was attempted in the last [`MIN_REFETCH_SECONDS`].
    pub fn may_wait(&self, provider: usize, now: u64) -> bool {
        self.remote(provider).is_some_and(|remote| {
            remote.in_flight
                || remote
                    .last_attempt
                    .is_none_or(|at| now.saturating_sub(at) >= MIN_REFETCH_SECONDS)
        })
    }

    /// Whether `provider`'s keys have outlived their lifetime and no fetch is running.
    pub fn is_stale(&self, provider: usize, now: u64) -> bool {
        self.remote(provider).is_some_and(|remote| {
            !remote.in_flight
                && remote.keys.is_some()
                && now.saturating_sub(remote.fetched_at) >= remote.cache_seconds
        })
    }

    /// Marks a fetch as started. Returns false when one is already running (join it instead).
    pub fn start_fetch(&mut self, provider: usize, now: u64) -> bool {
        let Some(remote) = self.remote_mut(provider) else {
            return false;
        };
        if remote.in_flight {
            return false;
        }
        remote.in_flight = true;
        remote.last_attempt = Some(now);
        true
    }

    /// Records a fetch's result. On failure the previous keys, if any, stay in use.
    pub fn finish_fetch(&mut self, provider: usize, result: Result<KeySet, String>, now: u64) {
        let Some(remote) = self.remote_mut(provider) else {
            return;
        };
        remote.in_flight = false;
        if let Ok(keys) = result {
            remote.keys = Some(Rc::new(keys));
            remote.fetched_at = now;
        }
    }

    fn remote(&self, provider: usize) -> Option<&RemoteKeys> {
        self.providers.get(provider)?.as_ref()
    }

    fn remote_mut(&mut self, provider: usize) -> Option<&mut RemoteKeys> {
        self.providers.get_mut(provider)?.as_mut()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> KeySet {
        KeySet::from_secret("0123456789abcdef0123456789abcdef")
    }

    #[test]
    fn fetches_are_single_flight_and_keys_expire() {
        let mut cache = JwksCache::new([None, Some(300)]);
        assert!(!cache.may_wait(0, 0), "static providers never fetch");
        assert!(cache.may_wait(1, 0));
        assert!(cache.start_fetch(1, 0));
        assert!(!cache.start_fetch(1, 0), "a second fetch joins the first");
        assert!(cache.may_wait(1, 1), "requests wait on the running fetch");
        cache.finish_fetch(1, Ok(keys()), 1);
        assert!(cache.keys(1).is_some());
        assert!(!cache.is_stale(1, 300));
        assert!(cache.is_stale(1, 301));
    }

    #[test]
    fn failures_and_unknown_kids_are_throttled() {
        let mut cache = JwksCache::new([Some(300)]);
        assert!(cache.start_fetch(0, 100));
        cache.finish_fetch(0, Err("refused".into()), 100);
        assert!(cache.keys(0).is_none());
        assert!(!cache.may_wait(0, 105));
        assert!(cache.may_wait(0, 100 + MIN_REFETCH_SECONDS));
        assert!(cache.start_fetch(0, 110));
        cache.finish_fetch(0, Ok(keys()), 110);
        assert!(cache.start_fetch(0, 200));
        cache.finish_fetch(0, Err("timeout".into()), 200);
        assert!(cache.keys(0).is_some(), "old keys survive a failed refresh");
    }
}
