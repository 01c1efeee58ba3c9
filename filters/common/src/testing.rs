//! Test support for the filters' native tests.

use crate::SharedStore;
use std::cell::RefCell;
use std::collections::HashMap;

/// In-memory shared data with versions, behaving like the hosts' (Envoy's and ours): an empty
/// value deletes, `cas` 0 writes unconditionally.
#[derive(Default)]
pub struct MemoryStore {
    data: RefCell<HashMap<String, (Vec<u8>, u32)>>,
    version: RefCell<u32>,
    conflicts: RefCell<usize>,
}

impl MemoryStore {
    /// Makes the next `n` writes fail with a version mismatch, as a concurrent writer would.
    pub fn fail_next_writes(&self, n: usize) {
        *self.conflicts.borrow_mut() = n;
    }

    /// Whether `key` holds a value.
    pub fn contains(&self, key: &str) -> bool {
        self.data.borrow().contains_key(key)
    }

    /// Number of keys held.
    pub fn len(&self) -> usize {
        self.data.borrow().len()
    }

    /// True when no key is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl SharedStore for MemoryStore {
    fn get(&self, key: &str) -> (Option<Vec<u8>>, Option<u32>) {
        match self.data.borrow().get(key) {
            Some((value, cas)) => (Some(value.clone()), Some(*cas)),
            None => (None, None),
        }
    }

    fn set(&self, key: &str, value: &[u8], cas: u32) -> bool {
        {
            let mut conflicts = self.conflicts.borrow_mut();
            if *conflicts > 0 {
                *conflicts -= 1;
                return false;
            }
        }
        let mut data = self.data.borrow_mut();
        if cas != 0 && data.get(key).is_some_and(|(_, current)| *current != cas) {
            return false;
        }
        if value.is_empty() {
            data.remove(key);
            return true;
        }
        let mut version = self.version.borrow_mut();
        *version += 1;
        data.insert(key.to_string(), (value.to_vec(), *version));
        true
    }
}
