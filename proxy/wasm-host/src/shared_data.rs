//! Process-wide shared data with compare-and-swap, shared by every VM of a `vm_id`.
//!
//! The store is behind [`SharedDataBackend`], whose calls are asynchronous so a networked backend
//! (the `shared-data-redis` crate) never blocks a worker. [`MemorySharedData`] is the default:
//! bounded by entry count and bytes, evicting the least recently used keys.

use crate::abi::Status;
use lru::LruCache;
use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;

/// A boxed future returned by backends.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A value and its CAS version (never 0).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedValue {
    /// The stored bytes.
    pub value: Vec<u8>,
    /// Version to pass back to `set` for compare-and-swap.
    pub cas: u32,
}

/// The backend cannot answer (a remote store is unreachable or too slow) and its policy is to
/// refuse rather than fall back: the host fails the request that needed the data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("shared data is unavailable")]
pub struct Unavailable;

/// Where shared data lives. Keys are namespaced by `vm_id`, as in Envoy.
pub trait SharedDataBackend: Send + Sync {
    /// True when every call completes without waiting (no network): VMs then call their guests
    /// synchronously, which is much cheaper than a fiber per callback.
    fn answers_immediately(&self) -> bool {
        false
    }
    /// The value of `key`, or `None`.
    fn get<'a>(
        &'a self,
        vm_id: &'a str,
        key: &'a [u8],
    ) -> BoxFuture<'a, Result<Option<SharedValue>, Unavailable>>;
    /// Stores `value` if `cas` is 0, matches the current version, or the key is absent; an empty
    /// value deletes the key. Returns `Status::Ok` or `Status::CasMismatch`.
    fn set<'a>(
        &'a self,
        vm_id: &'a str,
        key: &'a [u8],
        value: &'a [u8],
        cas: u32,
    ) -> BoxFuture<'a, Result<Status, Unavailable>>;
}

/// Limits of the in-memory backend.
#[derive(Debug, Clone, Copy)]
pub struct MemoryLimits {
    /// Most keys kept at once.
    pub max_entries: usize,
    /// Most bytes (keys plus values) kept at once.
    pub max_bytes: usize,
}

impl Default for MemoryLimits {
    fn default() -> Self {
        Self {
            max_entries: 100_000,
            max_bytes: 64 << 20,
        }
    }
}

/// The default backend: one process-wide LRU map with a byte budget.
pub struct MemorySharedData {
    inner: Mutex<MemoryInner>,
    limits: MemoryLimits,
}

struct MemoryInner {
    entries: LruCache<(String, Vec<u8>), SharedValue>,
    bytes: usize,
    next_cas: u32,
}

impl MemorySharedData {
    /// An empty store with these limits.
    pub fn new(limits: MemoryLimits) -> Self {
        Self {
            inner: Mutex::new(MemoryInner {
                entries: LruCache::unbounded(),
                bytes: 0,
                next_cas: 1,
            }),
            limits,
        }
    }

    /// Number of keys held (all vm_ids).
    pub fn len(&self) -> usize {
        self.inner.lock().expect("shared data lock").entries.len()
    }

    /// True when no key is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// [`SharedDataBackend::get`], answered at once.
    pub fn get_now(&self, vm_id: &str, key: &[u8]) -> Option<SharedValue> {
        let mut inner = self.inner.lock().expect("shared data lock");
        inner
            .entries
            .get(&(vm_id.to_string(), key.to_vec()))
            .cloned()
    }

    /// [`SharedDataBackend::set`], answered at once.
    pub fn set_now(&self, vm_id: &str, key: &[u8], value: &[u8], cas: u32) -> Status {
        let mut inner = self.inner.lock().expect("shared data lock");
        let map_key = (vm_id.to_string(), key.to_vec());
        if let Some(current) = inner.entries.peek(&map_key) {
            if cas != 0 && cas != current.cas {
                return Status::CasMismatch;
            }
        }
        if let Some(old) = inner.entries.pop(&map_key) {
            inner.bytes -= entry_size(&map_key, &old.value);
        }
        if value.is_empty() {
            return Status::Ok;
        }
        let version = inner.next_cas;
        inner.next_cas = inner.next_cas.checked_add(1).unwrap_or(1);
        inner.bytes += entry_size(&map_key, value);
        inner.entries.put(
            map_key,
            SharedValue {
                value: value.to_vec(),
                cas: version,
            },
        );
        while inner.entries.len() > self.limits.max_entries || inner.bytes > self.limits.max_bytes {
            let Some((evicted_key, evicted)) = inner.entries.pop_lru() else {
                break;
            };
            inner.bytes -= entry_size(&evicted_key, &evicted.value);
        }
        Status::Ok
    }
}

fn entry_size(key: &(String, Vec<u8>), value: &[u8]) -> usize {
    key.0.len() + key.1.len() + value.len()
}

impl SharedDataBackend for MemorySharedData {
    fn answers_immediately(&self) -> bool {
        true
    }

    fn get<'a>(
        &'a self,
        vm_id: &'a str,
        key: &'a [u8],
    ) -> BoxFuture<'a, Result<Option<SharedValue>, Unavailable>> {
        let value = self.get_now(vm_id, key);
        Box::pin(std::future::ready(Ok(value)))
    }

    fn set<'a>(
        &'a self,
        vm_id: &'a str,
        key: &'a [u8],
        value: &'a [u8],
        cas: u32,
    ) -> BoxFuture<'a, Result<Status, Unavailable>> {
        let status = self.set_now(vm_id, key, value, cas);
        Box::pin(std::future::ready(Ok(status)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(max_entries: usize, max_bytes: usize) -> MemorySharedData {
        MemorySharedData::new(MemoryLimits {
            max_entries,
            max_bytes,
        })
    }

    #[test]
    fn compare_and_swap() {
        let s = store(10, 1000);
        assert_eq!(s.set_now("vm", b"k", b"1", 0), Status::Ok);
        let first = s.get_now("vm", b"k").unwrap();
        assert_eq!(s.set_now("vm", b"k", b"2", first.cas), Status::Ok);
        assert_eq!(s.set_now("vm", b"k", b"3", first.cas), Status::CasMismatch);
        let second = s.get_now("vm", b"k").unwrap();
        assert_eq!(second.value, b"2");
        assert_ne!(second.cas, first.cas);
        assert_eq!(
            s.get_now("other-vm", b"k"),
            None,
            "vm_ids are separate namespaces"
        );
    }

    #[test]
    fn empty_value_deletes() {
        let s = store(10, 1000);
        s.set_now("vm", b"k", b"1", 0);
        assert_eq!(s.set_now("vm", b"k", b"", 0), Status::Ok);
        assert_eq!(s.get_now("vm", b"k"), None);
        assert!(s.is_empty());
    }

    #[test]
    fn bounded_by_entries_and_bytes() {
        let s = store(2, 1000);
        s.set_now("v", b"a", b"1", 0);
        s.set_now("v", b"b", b"1", 0);
        s.get_now("v", b"a");
        s.set_now("v", b"c", b"1", 0);
        assert!(
            s.get_now("v", b"b").is_none(),
            "least recently used is evicted"
        );
        assert!(s.get_now("v", b"a").is_some());
        let s = store(100, 10);
        s.set_now("v", b"a", b"12345", 0);
        s.set_now("v", b"b", b"12345", 0);
        assert_eq!(s.len(), 1);
        assert!(s.get_now("v", b"b").is_some());
    }
}
