//! Watches: changes pushed to subscribers in commit order, replayable from a
//! recent revision.
//!
//! The state machine publishes every applied batch of changes here. The hub
//! keeps a bounded history so a watcher can start (or resume after a
//! reconnect) from a past revision. Registration and publication share one
//! lock, so a watcher sees history and live events without a gap or a
//! duplicate. When a node restores a snapshot its history is gone: watchers
//! that would miss events are told `Compacted` instead of being fed old or
//! partial changes.

use std::collections::VecDeque;
use std::sync::Mutex;

use tokio::sync::mpsc;

use crate::protocol::{KvError, Selector, WatchEvent, WatchMessage};

/// Messages buffered per watcher before it counts as too slow and is cut
/// off (it can resume from its last revision).
const WATCHER_BUFFER: usize = 1024;

struct Subscriber {
    selector: Selector,
    tx: mpsc::Sender<WatchMessage>,
    /// The next revision this watcher expects.
    next: u64,
}

struct Inner {
    history: VecDeque<WatchEvent>,
    /// Every event at or above this revision is in `history` (or yet to come).
    floor: u64,
    /// The latest revision.
    revision: u64,
    subscribers: Vec<Subscriber>,
}

/// The watch registry of one node.
pub struct WatchHub {
    inner: Mutex<Inner>,
    capacity: usize,
}

impl WatchHub {
    /// A hub keeping the last `capacity` events for replay.
    pub fn new(capacity: usize) -> Self {
        Self {
            inner: Mutex::new(Inner {
                history: VecDeque::new(),
                floor: 1,
                revision: 0,
                subscribers: Vec::new(),
            }),
            capacity: capacity.max(1),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves consistent data (every
        // mutation is a single push or retain): keep going.
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Registers a watcher from `start_revision` (0: from the next change).
    /// The receiver gets `Started`, then history, then live events.
    pub fn subscribe(
        &self,
        selector: Selector,
        start_revision: u64,
    ) -> Result<mpsc::Receiver<WatchMessage>, KvError> {
        let mut inner = self.lock();
        let start = if start_revision == 0 {
            inner.revision.saturating_add(1)
        } else {
            start_revision
        };
        if start < inner.floor {
            return Err(KvError::Compacted {
                requested: start,
                oldest: inner.floor,
            });
        }
        let (tx, rx) = mpsc::channel(WATCHER_BUFFER);
        let _ = tx.try_send(WatchMessage::Started {
            revision: inner.revision,
        });
        let past: Vec<WatchEvent> = inner
            .history
            .iter()
            .filter(|e| e.revision >= start && selector.matches(&e.kv.key))
            .cloned()
            .collect();
        for chunk in past.chunks(256) {
            if tx.try_send(WatchMessage::Events(chunk.to_vec())).is_err() {
                return Err(KvError::InvalidRequest(
                    "too much history to replay at once; watch from a later revision".into(),
                ));
            }
        }
        let next = start.max(inner.revision.saturating_add(1));
        inner.subscribers.push(Subscriber { selector, tx, next });
        Ok(rx)
    }

    /// Publishes the changes of one applied batch; `revision` is the store's
    /// revision after it.
    pub fn publish(&self, events: Vec<WatchEvent>, revision: u64) {
        let mut inner = self.lock();
        inner.revision = revision;
        inner.subscribers.retain_mut(|sub| {
            let mine: Vec<WatchEvent> =
                events.iter().filter(|e| e.revision >= sub.next && sub.selector.matches(&e.kv.key)).cloned().collect();
            sub.next = revision.saturating_add(1);
            if mine.is_empty() {
                return !sub.tx.is_closed();
            }
            match sub.tx.try_send(WatchMessage::Events(mine)) {
                Ok(()) => true,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    tracing::warn!("a watcher fell too far behind and was cut off; it can resume from its last revision");
                    false
                }
                Err(mpsc::error::TrySendError::Closed(_)) => false,
            }
        });
        inner.history.extend(events);
        while inner.history.len() > self.capacity {
            inner.history.pop_front();
        }
        if let Some(first) = inner.history.front() {
            inner.floor = inner.floor.max(first.revision);
        }
    }

    /// The state was replaced by a snapshot at `revision`: history is gone,
    /// and watchers that would miss changes are told so and dropped.
    pub fn reset(&self, revision: u64) {
        let mut inner = self.lock();
        inner.history.clear();
        inner.floor = revision.saturating_add(1);
        let old = inner.revision;
        inner.revision = revision;
        inner.subscribers.retain(|sub| {
            if sub.next <= revision || old > revision {
                let _ = sub.tx.try_send(WatchMessage::Compacted {
                    revision: revision.saturating_add(1),
                });
                false
            } else {
                true
            }
        });
    }

    /// The number of active watchers.
    pub fn watchers(&self) -> usize {
        self.lock().subscribers.len()
    }
}
