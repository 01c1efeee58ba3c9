//! Shared data in Redis, so rate limits and caches hold across proxy replicas.
//!
//! [`RedisSharedData`] implements the wasm host's [`SharedDataBackend`] with the memory backend's
//! semantics (compare-and-swap versions, empty value deletes, `vm_id` namespaces), so filters run
//! unchanged. Keys expire by prefix ([`ExpiryRules`]). While Redis is unreachable or slow, calls
//! follow the [`UnavailablePolicy`]: process-local state (fail-open) or a 503 (fail-closed); the
//! link reconnects with backoff meanwhile.
//!
//! Layout: key encoding and the CAS script in `commands`, connection handling in `link`.

mod commands;
mod link;
mod settings;
mod stats;

pub use settings::{ExpiryRules, RedisSettings, Topology, UnavailablePolicy};
pub use stats::{Stats, StatsSnapshot};

use link::{Link, LinkError};
use proxy_wasm_host::abi::Status;
use proxy_wasm_host::{BoxFuture, MemorySharedData, SharedDataBackend, SharedValue, Unavailable};
use std::sync::Arc;

/// A Redis-backed [`SharedDataBackend`].
pub struct RedisSharedData {
    link: Link,
    settings: RedisSettings,
    fallback: MemorySharedData,
    stats: Arc<Stats>,
}

impl RedisSharedData {
    /// Checks the settings and starts the I/O thread. Connecting happens on first use, or
    /// earlier with [`RedisSharedData::connect`].
    pub fn new(settings: RedisSettings) -> Result<Self, redis::RedisError> {
        Self::build(settings, None)
    }

    /// As [`RedisSharedData::new`], with Redis I/O on `runtime` instead of a thread of its own.
    /// The runtime's threads must never block (the proxy's filter runtime): callers running there
    /// then reach Redis without a hop to another thread.
    pub fn on_runtime(
        settings: RedisSettings,
        runtime: tokio::runtime::Handle,
    ) -> Result<Self, redis::RedisError> {
        Self::build(settings, Some(runtime))
    }

    fn build(
        settings: RedisSettings,
        runtime: Option<tokio::runtime::Handle>,
    ) -> Result<Self, redis::RedisError> {
        let stats = Arc::new(Stats::default());
        Ok(Self {
            link: Link::new(&settings, stats.clone(), runtime)?,
            fallback: MemorySharedData::new(settings.fallback_limits),
            settings,
            stats,
        })
    }

    /// Connects now (bounded by the connect timeout); false if Redis is not reachable yet, in
    /// which case calls follow the unavailable policy until a reconnection succeeds.
    pub async fn connect(&self) -> bool {
        self.link.connect().await
    }

    /// Starts connecting without waiting (at start-up).
    pub fn connect_in_background(&self) {
        self.link.connect_in_background();
    }

    /// The backend's counters.
    pub fn stats(&self) -> StatsSnapshot {
        self.stats.snapshot()
    }

    /// Applies the unavailable policy to a failed call.
    fn unavailable<T>(
        &self,
        error: &LinkError,
        local: impl FnOnce() -> T,
    ) -> Result<T, Unavailable> {
        tracing::debug!(%error, "shared-data call not answered by Redis");
        match self.settings.on_unavailable {
            UnavailablePolicy::FailOpen => {
                Stats::count(&self.stats.fallback_operations);
                Ok(local())
            }
            UnavailablePolicy::FailClosed => {
                Stats::count(&self.stats.refused_operations);
                Err(Unavailable)
            }
        }
    }
}

impl SharedDataBackend for RedisSharedData {
    fn get<'a>(
        &'a self,
        vm_id: &'a str,
        key: &'a [u8],
    ) -> BoxFuture<'a, Result<Option<SharedValue>, Unavailable>> {
        Box::pin(async move {
            let redis_key = commands::redis_key(&self.settings.key_prefix, vm_id, key);
            let result = self
                .link
                .run(|mut conn| async move { commands::get(&mut conn, &redis_key).await })
                .await;
            result.or_else(|error| self.unavailable(&error, || self.fallback.get_now(vm_id, key)))
        })
    }

    fn set<'a>(
        &'a self,
        vm_id: &'a str,
        key: &'a [u8],
        value: &'a [u8],
        cas: u32,
    ) -> BoxFuture<'a, Result<Status, Unavailable>> {
        Box::pin(async move {
            let redis_key = commands::redis_key(&self.settings.key_prefix, vm_id, key);
            let ttl = self.settings.expiry.ttl_for(key);
            let owned_value = value.to_vec();
            let result = self
                .link
                .run(|mut conn| async move {
                    commands::set(&mut conn, &redis_key, &owned_value, cas, ttl).await
                })
                .await;
            result.or_else(|error| {
                self.unavailable(&error, || self.fallback.set_now(vm_id, key, value, cas))
            })
        })
    }
}
