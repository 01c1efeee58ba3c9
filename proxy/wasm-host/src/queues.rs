//! Process-wide shared queues: registered by one VM (per `vm_id` and name), fed by any.

use crate::abi::Status;
use crate::bounds::{MAX_QUEUE_BYTES, MAX_QUEUE_ITEM_BYTES};
use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use tokio::sync::mpsc::UnboundedSender;

/// Most items a queue holds; an enqueue beyond it drops the oldest item.
pub const MAX_QUEUE_ITEMS: usize = 10_000;

/// A VM's root context that wants `on_queue_ready` for a queue.
#[derive(Clone)]
pub(crate) struct QueueSubscriber {
    pub(crate) notify: UnboundedSender<u32>,
}

#[derive(Default)]
struct Queue {
    items: VecDeque<Vec<u8>>,
    /// Bytes in `items`.
    bytes: usize,
    subscribers: Vec<QueueSubscriber>,
}

/// All shared queues of the process.
#[derive(Default)]
pub struct SharedQueues {
    inner: Mutex<QueuesInner>,
}

#[derive(Default)]
struct QueuesInner {
    ids: HashMap<(String, String), u32>,
    queues: HashMap<u32, Queue>,
}

impl SharedQueues {
    /// Registers (or re-registers) queue `name` of `vm_id`; the subscriber is told of new items.
    pub(crate) fn register(&self, vm_id: &str, name: &str, subscriber: QueueSubscriber) -> u32 {
        let mut inner = self.inner.lock().expect("queues lock");
        let next_id = inner.ids.len() as u32 + 1;
        let id = *inner
            .ids
            .entry((vm_id.to_string(), name.to_string()))
            .or_insert(next_id);
        let queue = inner.queues.entry(id).or_default();
        queue.subscribers.retain(|s| !s.notify.is_closed());
        queue.subscribers.push(subscriber);
        id
    }

    /// The id of an already registered queue.
    pub(crate) fn resolve(&self, vm_id: &str, name: &str) -> Option<u32> {
        let inner = self.inner.lock().expect("queues lock");
        inner
            .ids
            .get(&(vm_id.to_string(), name.to_string()))
            .copied()
    }

    /// Appends an item and wakes the subscribers.
    pub(crate) fn enqueue(&self, id: u32, item: Vec<u8>) -> Status {
        let mut inner = self.inner.lock().expect("queues lock");
        let Some(queue) = inner.queues.get_mut(&id) else {
            return Status::NotFound;
        };
        if item.len() > MAX_QUEUE_ITEM_BYTES {
            return Status::BadArgument;
        }
        while queue.items.len() >= MAX_QUEUE_ITEMS || queue.bytes + item.len() > MAX_QUEUE_BYTES {
            let Some(dropped) = queue.items.pop_front() else {
                break;
            };
            queue.bytes -= dropped.len();
        }
        queue.bytes += item.len();
        queue.items.push_back(item);
        queue.subscribers.retain(|s| s.notify.send(id).is_ok());
        Status::Ok
    }

    /// Takes the oldest item: `Ok(None)` when empty, `Err(NotFound)` for an unknown queue.
    pub(crate) fn dequeue(&self, id: u32) -> Result<Option<Vec<u8>>, Status> {
        let mut inner = self.inner.lock().expect("queues lock");
        let queue = inner.queues.get_mut(&id).ok_or(Status::NotFound)?;
        let item = queue.items.pop_front();
        queue.bytes -= item.as_ref().map_or(0, Vec::len);
        Ok(item)
    }
}
