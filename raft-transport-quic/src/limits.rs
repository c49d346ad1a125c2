//! What one client identity may cost a node: how many connections it may
//! have open, and how many bytes of its requests may be in the node at
//! once (one budget over all its connections and streams).
//!
//! A client identity is the name its certificate carries (whatever the
//! role), or the node id of a node certificate connecting as a client. Its
//! entry lives while it has a connection open, or a request of a closed
//! connection still holds some of its budget (so that reconnecting does not
//! bring a fresh budget while the old requests are still in the node).

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use tokio::sync::{AcquireError, OwnedSemaphorePermit, Semaphore};

use crate::caller::Caller;

/// The identity a connection counts under.
pub(crate) fn identity_key(caller: &Caller) -> String {
    match caller {
        Caller::Node(id) => format!("node {id}"),
        Caller::Client { name, .. } => format!("client {name}"),
    }
}

struct Identity {
    connections: u32,
    /// Held by the identity's connections and by its requests in the node.
    budget: Weak<Semaphore>,
}

type Identities = Arc<Mutex<HashMap<String, Identity>>>;

fn lock(identities: &Identities) -> MutexGuard<'_, HashMap<String, Identity>> {
    identities
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The open client identities of a transport.
pub(crate) struct ClientLimits {
    identities: Identities,
    max_connections: u32,
    budget_bytes: usize,
}

impl ClientLimits {
    pub(crate) fn new(max_connections: u32, budget_bytes: usize) -> Self {
        Self {
            identities: Identities::default(),
            max_connections,
            budget_bytes,
        }
    }

    /// Counts one more connection of `key`, or says how many it already
    /// has open when that is the limit.
    pub(crate) fn admit(&self, key: String) -> Result<ClientSlot, u32> {
        let mut identities = lock(&self.identities);
        // Forget identities whose last connection and requests are gone.
        identities
            .retain(|_, identity| identity.connections > 0 || identity.budget.strong_count() > 0);
        let identity = identities.entry(key.clone()).or_insert_with(|| Identity {
            connections: 0,
            budget: Weak::new(),
        });
        if identity.connections >= self.max_connections {
            return Err(identity.connections);
        }
        let semaphore = identity.budget.upgrade().unwrap_or_else(|| {
            let semaphore = Arc::new(Semaphore::new(self.budget_bytes));
            identity.budget = Arc::downgrade(&semaphore);
            semaphore
        });
        identity.connections += 1;
        Ok(ClientSlot {
            identities: self.identities.clone(),
            budget: RequestBudget {
                semaphore,
                total: self.budget_bytes,
            },
            key,
        })
    }
}

/// One open connection of a client identity; dropping it (when the
/// connection is done) uncounts it, and forgets the identity with its last
/// connection unless requests still hold some of its budget (then the next
/// admission forgets it once they are gone).
pub(crate) struct ClientSlot {
    identities: Identities,
    key: String,
    budget: RequestBudget,
}

impl ClientSlot {
    /// The request budget the identity's connections share.
    pub(crate) fn budget(&self) -> &RequestBudget {
        &self.budget
    }
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        let mut identities = lock(&self.identities);
        if let Some(identity) = identities.get_mut(&self.key) {
            identity.connections = identity.connections.saturating_sub(1);
            // Only this slot holds the budget: no request of the identity
            // is left in the node.
            if identity.connections == 0 && Arc::strong_count(&self.budget.semaphore) == 1 {
                identities.remove(&self.key);
            }
        }
    }
}

/// Waiting for budget; kept across polls so the wait keeps its place in
/// the (fair, first come first served) queue.
pub(crate) type Acquiring =
    Pin<Box<dyn Future<Output = Result<OwnedSemaphorePermit, AcquireError>> + Send>>;

/// Bytes of requests one client identity may have in the node at once.
#[derive(Clone)]
pub(crate) struct RequestBudget {
    semaphore: Arc<Semaphore>,
    total: usize,
}

impl RequestBudget {
    /// What a request of `bytes` takes: all of them, but never more than
    /// the whole budget (so a request can always be admitted eventually).
    fn permits(&self, bytes: usize) -> u32 {
        bytes.min(self.total).min(u32::MAX as usize) as u32
    }

    /// Takes `bytes` of the budget now, if they are free.
    pub(crate) fn try_take(&self, bytes: usize) -> Option<OwnedSemaphorePermit> {
        self.semaphore
            .clone()
            .try_acquire_many_owned(self.permits(bytes))
            .ok()
    }

    /// Waits for `bytes` of the budget.
    pub(crate) fn take(&self, bytes: usize) -> Acquiring {
        Box::pin(
            self.semaphore
                .clone()
                .acquire_many_owned(self.permits(bytes)),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_are_counted_per_identity_and_forgotten_with_the_last() {
        let limits = ClientLimits::new(2, 100);
        let a1 = limits.admit("client a".into()).unwrap();
        let a2 = limits.admit("client a".into()).unwrap();
        assert_eq!(limits.admit("client a".into()).err(), Some(2));
        let _b = limits.admit("client b".into()).unwrap();
        // The connections of one identity share one budget.
        let taken = a1.budget().try_take(60).unwrap();
        assert!(a2.budget().try_take(60).is_none());
        assert!(a2.budget().try_take(40).is_some());
        drop(a1);
        let a3 = limits.admit("client a".into()).unwrap();
        drop((a2, a3));
        // A request of a closed connection still holds budget: the identity
        // is remembered with it, and a new connection shares it.
        assert!(lock(&limits.identities).contains_key("client a"));
        let again = limits.admit("client a".into()).unwrap();
        assert!(again.budget().try_take(50).is_none());
        drop(taken);
        drop(again);
        assert!(!lock(&limits.identities).contains_key("client a"));
        // A request larger than the whole budget takes all of it.
        let a = limits.admit("client a".into()).unwrap();
        assert!(a.budget().try_take(1000).is_some());
    }
}
