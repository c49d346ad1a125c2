//! Bytes a client identity holds in a node against a limit: what its
//! requests, answers or watch messages cost while they wait. Both client
//! ports use it: the etcd port for requests and answers
//! (`etcd/budget.rs`), the native port for watch messages
//! ([`crate::service`]).

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};

use bytes::Bytes;
use tokio::sync::Notify;

/// Bytes held against a limit, and a way to wait until they are below it.
pub(crate) struct Budget {
    used: AtomicUsize,
    limit: usize,
    freed: Notify,
}

impl Budget {
    pub(crate) fn new(limit: usize) -> Self {
        Self {
            used: AtomicUsize::new(0),
            limit,
            freed: Notify::new(),
        }
    }

    /// Takes `n` bytes if less than the limit is held now (so one item
    /// larger than the limit still passes, alone).
    pub(crate) fn try_take(&self, n: usize) -> bool {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                (used < self.limit).then_some(used + n)
            })
            .is_ok()
    }

    pub(crate) fn give(&self, n: usize) {
        if n > 0 {
            self.used.fetch_sub(n, Ordering::AcqRel);
            self.freed.notify_waiters();
        }
    }

    /// Takes `n` bytes once less than the limit is held.
    pub(crate) async fn take(&self, n: usize) {
        loop {
            let freed = self.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            if self.try_take(n) {
                return;
            }
            freed.await;
        }
    }

    /// Waits until less than the limit is held.
    pub(crate) async fn below_limit(&self) {
        self.take(0).await;
    }

    /// Bytes held now.
    pub(crate) fn used(&self) -> usize {
        self.used.load(Ordering::Acquire)
    }

    /// Counts `n` more bytes, whatever is held.
    pub(crate) fn add(&self, n: usize) {
        self.used.fetch_add(n, Ordering::AcqRel);
    }

    /// Whether the limit is held (or more).
    pub(crate) fn is_full(&self) -> bool {
        self.used() >= self.limit
    }

    /// `bytes`, counted until the last copy of them is dropped (a transport
    /// that sends them drops them once they are sent).
    pub(crate) fn hold(self: &Arc<Self>, bytes: Vec<u8>) -> Bytes {
        self.add(bytes.len());
        Bytes::from_owner(Held {
            bytes,
            budget: self.clone(),
        })
    }
}

/// Bytes counted against a budget until dropped.
struct Held {
    bytes: Vec<u8>,
    budget: Arc<Budget>,
}

impl AsRef<[u8]> for Held {
    fn as_ref(&self) -> &[u8] {
        &self.bytes
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.budget.give(self.bytes.len());
    }
}

/// Something kept per client identity while anyone holds it: the first to
/// ask for a name makes it, later ones share it, and it goes with the last
/// holder.
pub(crate) struct PerIdentity<T> {
    by_name: Mutex<HashMap<String, Weak<T>>>,
}

impl<T> Default for PerIdentity<T> {
    fn default() -> Self {
        Self {
            by_name: Mutex::new(HashMap::new()),
        }
    }
}

impl<T> PerIdentity<T> {
    /// The one of `name`, made by `make` if nobody holds it.
    pub(crate) fn get(&self, name: &str, make: impl FnOnce() -> T) -> Arc<T> {
        let mut by_name = self
            .by_name
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(held) = by_name.get(name).and_then(Weak::upgrade) {
            return held;
        }
        by_name.retain(|_, held| held.strong_count() > 0);
        let made = Arc::new(make());
        by_name.insert(name.to_owned(), Arc::downgrade(&made));
        made
    }
}
