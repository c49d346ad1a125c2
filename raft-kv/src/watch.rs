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
//!
//! Memory is bounded in bytes: the history ([`WATCH_HISTORY_BYTES`]), each
//! watcher's queue ([`WATCHER_QUEUE_BYTES`]: a watcher further behind is cut
//! off and resumes from its last revision), each message
//! ([`WATCH_MESSAGE_BYTES`]) and the watches of one client
//! ([`MAX_WATCHES_PER_CLIENT`]). A replay is read from the history a message
//! at a time as the watcher takes them, never queued whole.
//!
//! The history also serves reads at a past revision ([`WatchHub::as_of`]):
//! every event carries the key as it was before, so the state at a revision
//! the history still reaches back to is the state now with the changes
//! since undone.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::sync::mpsc;

use crate::protocol::{EventKind, KeyValue, KvError, Selector, WatchEvent, WatchMessage};

/// The most bytes of events a node keeps for replay (each event counted by
/// [`event_bytes`]); beyond it, or beyond the hub's event capacity, the
/// oldest are dropped and a watch from before them answers `Compacted`.
pub const WATCH_HISTORY_BYTES: u64 = 64 << 20;
/// The most bytes of events waiting for one watcher to take them; a watcher
/// further behind is cut off with [`KvError::LimitReached`] (it resumes from
/// its last revision). One message always fits.
pub const WATCHER_QUEUE_BYTES: u64 = 8 << 20;
/// The most bytes of events in one message (one event always fits).
pub const WATCH_MESSAGE_BYTES: u64 = 1 << 20;
/// Watches one client identity may have open on a node at once.
pub const MAX_WATCHES_PER_CLIENT: usize = 256;
/// Messages buffered per watcher (besides the bytes bound).
const WATCHER_BUFFER: usize = 1024;
/// History events looked at per replay step (the hub's lock is held for
/// one step).
const REPLAY_STEP: usize = 4096;

/// What an event counts for against the byte bounds: its key, its value and
/// a fixed part (revisions, kind, lengths), and the same again for the
/// key-value as it was, when it carries one.
pub fn event_bytes(event: &WatchEvent) -> u64 {
    let kv_bytes = |kv: &KeyValue| (kv.key.len() + kv.value.len()) as u64 + 48;
    kv_bytes(&event.kv) + event.prev.as_ref().map_or(0, kv_bytes)
}

fn message_bytes(message: &WatchMessage) -> u64 {
    match message {
        WatchMessage::Events(events) => events.iter().map(event_bytes).sum(),
        _ => 0,
    }
}

/// What a live watcher and its entry in the hub share.
#[derive(Default)]
struct Queue {
    /// Bytes of events sent and not yet taken.
    bytes: AtomicU64,
    /// Set when the hub cut the watcher off for falling behind.
    cut_off: AtomicBool,
    /// The store's revision through which the hub has queued every event
    /// for this watcher (set after the events themselves).
    through: AtomicU64,
}

struct Subscriber {
    selector: Selector,
    tx: mpsc::Sender<WatchMessage>,
    queue: Arc<Queue>,
    /// The next revision this watcher expects.
    next: u64,
}

impl Subscriber {
    /// Queues `message`; false if the watcher is gone or too far behind.
    fn send(&self, message: WatchMessage) -> bool {
        let bytes = message_bytes(&message);
        let queued = self.queue.bytes.load(Ordering::Relaxed);
        if queued > 0 && queued + bytes > WATCHER_QUEUE_BYTES {
            return self.cut_off();
        }
        self.queue.bytes.fetch_add(bytes, Ordering::Relaxed);
        match self.tx.try_send(message) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => self.cut_off(),
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }

    fn cut_off(&self) -> bool {
        tracing::warn!(
            "a watcher fell too far behind and was cut off; it can resume from its last revision"
        );
        self.queue.cut_off.store(true, Ordering::Relaxed);
        false
    }
}

struct Inner {
    history: VecDeque<WatchEvent>,
    /// What `history` holds, by [`event_bytes`].
    history_bytes: u64,
    /// Every event at or above this revision is in `history` (or yet to come).
    floor: u64,
    /// The latest revision.
    revision: u64,
    subscribers: Vec<Subscriber>,
    /// Open watches by client identity.
    open: HashMap<String, usize>,
}

/// The watch registry of one node.
pub struct WatchHub {
    inner: Mutex<Inner>,
    capacity: usize,
}

/// One step of a replay.
enum Replayed {
    /// Events from the history (maybe none), more to come.
    Events(Vec<WatchEvent>),
    /// The history is replayed; these last events, then live ones.
    Live(Vec<WatchEvent>, mpsc::Receiver<WatchMessage>, Arc<Queue>),
    /// The history the watcher needs is gone.
    Compacted(u64),
}

impl WatchHub {
    /// A hub keeping the last `capacity` events (and at most
    /// [`WATCH_HISTORY_BYTES`]) for replay.
    pub fn new(capacity: usize) -> Self {
        Self {
            inner: Mutex::new(Inner {
                history: VecDeque::new(),
                history_bytes: 0,
                floor: 1,
                revision: 0,
                subscribers: Vec::new(),
                open: HashMap::new(),
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

    /// Registers a watcher for `owner` (a client identity) from
    /// `start_revision` (0: from the next change). The watcher yields
    /// `Started`, then history, then live events.
    pub fn subscribe(
        self: &Arc<Self>,
        selector: Selector,
        start_revision: u64,
        owner: &str,
    ) -> Result<Watcher, KvError> {
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
        let open = inner.open.entry(owner.to_string()).or_default();
        if *open >= MAX_WATCHES_PER_CLIENT {
            return Err(KvError::LimitReached(format!(
                "{owner} has {MAX_WATCHES_PER_CLIENT} watches open on this node, the most one client may; \
                 cancel some, or watch a common prefix with one"
            )));
        }
        *open += 1;
        Ok(Watcher {
            hub: self.clone(),
            owner: owner.to_string(),
            selector,
            started: Some(inner.revision),
            next: start,
            live: None,
            ended: false,
        })
    }

    /// One replay step for a watcher wanting `selector` from `next`.
    fn replay(&self, selector: &Selector, next: &mut u64) -> Replayed {
        let mut inner = self.lock();
        if *next < inner.floor {
            return Replayed::Compacted(inner.floor);
        }
        let from = inner.history.partition_point(|e| e.revision < *next);
        let mut events = Vec::new();
        let mut bytes = 0;
        let mut last: Option<u64> = None;
        let mut stopped = false;
        for (looked, event) in inner.history.iter().skip(from).enumerate() {
            // One write's changes share a revision: a step ends only between
            // revisions, so `next` never skips the rest of one.
            let boundary = last.is_some_and(|revision| revision != event.revision);
            if boundary && looked >= REPLAY_STEP {
                stopped = true;
                break;
            }
            if selector.matches(&event.kv.key) {
                if boundary
                    && !events.is_empty()
                    && bytes + event_bytes(event) > WATCH_MESSAGE_BYTES
                {
                    return Replayed::Events(events);
                }
                bytes += event_bytes(event);
                events.push(event.clone());
            }
            last = Some(event.revision);
            *next = event.revision + 1;
        }
        if stopped {
            return Replayed::Events(events);
        }
        // The history holds every change up to the hub's revision: a
        // revision without one (the empty store's first) has nothing to
        // replay.
        *next = (*next).max(inner.revision + 1);
        // Caught up, under the lock that publication takes: live events
        // follow without a gap or a duplicate.
        let (tx, rx) = mpsc::channel(WATCHER_BUFFER);
        let queue = Arc::new(Queue::default());
        queue.through.store(inner.revision, Ordering::Release);
        inner.subscribers.push(Subscriber {
            selector: selector.clone(),
            tx,
            queue: queue.clone(),
            next: *next,
        });
        Replayed::Live(events, rx, queue)
    }

    /// Publishes the changes of one applied batch; `revision` is the store's
    /// revision after it.
    pub fn publish(&self, events: Vec<WatchEvent>, revision: u64) {
        let mut inner = self.lock();
        inner.revision = revision;
        inner.subscribers.retain_mut(|sub| {
            let mut message = Vec::new();
            let mut bytes = 0;
            for event in &events {
                if event.revision < sub.next || !sub.selector.matches(&event.kv.key) {
                    continue;
                }
                if !message.is_empty() && bytes + event_bytes(event) > WATCH_MESSAGE_BYTES {
                    if !sub.send(WatchMessage::Events(std::mem::take(&mut message))) {
                        return false;
                    }
                    bytes = 0;
                }
                bytes += event_bytes(event);
                message.push(event.clone());
            }
            sub.next = revision.saturating_add(1);
            let kept = if message.is_empty() {
                !sub.tx.is_closed()
            } else {
                sub.send(WatchMessage::Events(message))
            };
            sub.queue.through.store(revision, Ordering::Release);
            kept
        });
        for event in events {
            inner.history_bytes += event_bytes(&event);
            inner.history.push_back(event);
        }
        while inner.history.len() > self.capacity || inner.history_bytes > WATCH_HISTORY_BYTES {
            let Some(dropped) = inner.history.pop_front() else {
                break;
            };
            inner.history_bytes -= event_bytes(&dropped);
            inner.floor = inner.floor.max(dropped.revision + 1);
        }
    }

    /// etcd's compaction at `revision`: changes before it are let go, and a
    /// watch from before it is answered `Compacted`.
    ///
    /// As etcd's compaction, which keeps each key's version at the
    /// compaction's revision but not a deletion there: a watch from that
    /// revision sees its puts, not its deletes (nor a put of a key the same
    /// write then deleted).
    pub fn compact(&self, revision: u64) {
        let mut inner = self.lock();
        while inner
            .history
            .front()
            .is_some_and(|event| event.revision < revision)
        {
            if let Some(dropped) = inner.history.pop_front() {
                inner.history_bytes -= event_bytes(&dropped);
            }
        }
        let at: Vec<&WatchEvent> = inner
            .history
            .iter()
            .take_while(|event| event.revision == revision)
            .collect();
        let last_delete: HashMap<&Bytes, usize> = at
            .iter()
            .enumerate()
            .filter(|(_, e)| e.kind == EventKind::Delete)
            .map(|(i, e)| (&e.kv.key, i))
            .collect();
        let drop: Vec<bool> = at
            .iter()
            .enumerate()
            .map(|(i, e)| {
                e.kind == EventKind::Delete || last_delete.get(&e.kv.key).is_some_and(|d| *d > i)
            })
            .collect();
        if drop.iter().any(|d| *d) {
            let mut i = 0;
            let mut freed = 0;
            inner.history.retain(|event| {
                let keep = !drop.get(i).copied().unwrap_or(false);
                i += 1;
                if !keep {
                    freed += event_bytes(event);
                }
                keep
            });
            inner.history_bytes -= freed;
        }
        inner.floor = inner.floor.max(revision);
    }

    /// The store it serves starts empty at `revision` (the store's first
    /// write takes the next): what a watch from now starts after.
    pub fn begin_at(&self, revision: u64) {
        let mut inner = self.lock();
        if inner.history.is_empty() {
            inner.revision = inner.revision.max(revision);
        }
    }

    /// The state was replaced by a snapshot at `revision`: history is gone,
    /// and watchers that would miss changes are told so and dropped.
    pub fn reset(&self, revision: u64) {
        let mut inner = self.lock();
        inner.history.clear();
        inner.history_bytes = 0;
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
                sub.queue.through.store(revision, Ordering::Release);
                true
            }
        });
    }

    /// What the keys of `start..end` (`end` `None`: to the last key) that
    /// changed after `revision` held at `revision`, from the history: each
    /// such key with its key-value then (`None`: it did not exist). Keys
    /// not in the answer are as they are now. `None` when the history no
    /// longer holds every change after `revision` (it is bounded): that
    /// revision can no longer be read here.
    pub fn as_of(
        &self,
        revision: u64,
        start: &[u8],
        end: Option<&[u8]>,
    ) -> Option<BTreeMap<Bytes, Option<KeyValue>>> {
        let inner = self.lock();
        if revision.saturating_add(1) < inner.floor || revision > inner.revision {
            return None;
        }
        let from = inner.history.partition_point(|e| e.revision <= revision);
        let mut then = BTreeMap::new();
        for event in inner.history.iter().skip(from) {
            let key = &event.kv.key;
            if key.as_ref() < start || end.is_some_and(|end| key.as_ref() >= end) {
                continue;
            }
            // The first change after `revision` knows what was there.
            then.entry(key.clone())
                .or_insert_with(|| event.prev.clone());
        }
        Some(then)
    }

    /// The store's revision as of the last batch published (or reset).
    pub fn revision(&self) -> u64 {
        self.lock().revision
    }

    /// The number of live watchers (past their replay).
    pub fn watchers(&self) -> usize {
        self.lock().subscribers.len()
    }

    /// The bytes of events kept for replay.
    pub fn history_bytes(&self) -> u64 {
        self.lock().history_bytes
    }
}

/// One watch: `Started`, then the history asked for, then live events, as
/// [`WatchMessage`]s. Dropping it ends the watch.
pub struct Watcher {
    hub: Arc<WatchHub>,
    owner: String,
    selector: Selector,
    /// The revision to announce in `Started`, until it is taken.
    started: Option<u64>,
    /// The next revision to replay (before `live`).
    next: u64,
    live: Option<(mpsc::Receiver<WatchMessage>, Arc<Queue>)>,
    ended: bool,
}

impl Watcher {
    /// The next message; `None` once the watch has ended (after a
    /// `Compacted` or an error message, or when the node stops).
    /// Cancel-safe.
    pub async fn next(&mut self) -> Option<WatchMessage> {
        if let Some(message) = self.step() {
            return message;
        }
        let (rx, _) = self.live.as_mut()?;
        let message = rx.recv().await;
        self.taken(message)
    }

    /// The next message if one is ready now.
    pub fn try_next(&mut self) -> Option<WatchMessage> {
        if let Some(message) = self.step() {
            return message;
        }
        let (rx, _) = self.live.as_mut()?;
        match rx.try_recv() {
            Ok(message) => self.taken(Some(message)),
            Err(mpsc::error::TryRecvError::Empty) => None,
            Err(mpsc::error::TryRecvError::Disconnected) => self.taken(None),
        }
    }

    /// The revision through which every event of this watch has been taken
    /// from it (etcd's watch progress): `Some` once it is live with nothing
    /// waiting to be taken, `None` while it replays, has events queued, or
    /// has ended.
    pub fn synced_through(&self) -> Option<u64> {
        if self.ended || self.started.is_some() {
            return None;
        }
        let (rx, queue) = self.live.as_ref()?;
        // Read before looking at the queue: events queued up to it are
        // already in the queue then.
        let through = queue.through.load(Ordering::Acquire);
        rx.is_empty().then_some(through)
    }

    /// Everything up to the live queue: `Some(answer)` when it decides the
    /// next message, `None` when it comes from the live queue.
    fn step(&mut self) -> Option<Option<WatchMessage>> {
        if self.ended {
            return Some(None);
        }
        if let Some(revision) = self.started.take() {
            return Some(Some(WatchMessage::Started { revision }));
        }
        while self.live.is_none() {
            match self.hub.replay(&self.selector, &mut self.next) {
                Replayed::Events(events) if events.is_empty() => continue,
                Replayed::Events(events) => return Some(Some(WatchMessage::Events(events))),
                Replayed::Live(events, rx, queue) => {
                    self.live = Some((rx, queue));
                    if !events.is_empty() {
                        return Some(Some(WatchMessage::Events(events)));
                    }
                }
                Replayed::Compacted(revision) => {
                    self.ended = true;
                    return Some(Some(WatchMessage::Compacted { revision }));
                }
            }
        }
        None
    }

    fn taken(&mut self, message: Option<WatchMessage>) -> Option<WatchMessage> {
        let (_, queue) = self.live.as_ref()?;
        match message {
            Some(message) => {
                queue
                    .bytes
                    .fetch_sub(message_bytes(&message), Ordering::Relaxed);
                if matches!(message, WatchMessage::Compacted { .. }) {
                    self.ended = true;
                }
                Some(message)
            }
            None => {
                self.ended = true;
                queue.cut_off.load(Ordering::Relaxed).then(|| {
                    WatchMessage::Error(KvError::LimitReached(format!(
                        "the watch fell more than {} MiB of events behind and was cut off; \
                         resume it from the revision after the last event received",
                        WATCHER_QUEUE_BYTES >> 20
                    )))
                })
            }
        }
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        let mut inner = self.hub.lock();
        if let Some(open) = inner.open.get_mut(&self.owner) {
            *open -= 1;
            if *open == 0 {
                inner.open.remove(&self.owner);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: usize = 1 << 20;

    fn event(revision: u64, key: &str, value_len: usize) -> WatchEvent {
        WatchEvent {
            revision,
            kind: EventKind::Put,
            kv: KeyValue {
                key: Bytes::copy_from_slice(key.as_bytes()),
                value: Bytes::from(vec![b'v'; value_len]),
                create_revision: revision,
                mod_revision: revision,
                version: 1,
                lease: 0,
            },
            prev: None,
        }
    }

    /// Publishes `count` writes of `value_len` bytes to `key`, one batch
    /// each, after the hub's current revision.
    fn publish(hub: &WatchHub, key: &str, count: u64, value_len: usize) {
        for _ in 0..count {
            let revision = hub.lock().revision + 1;
            hub.publish(vec![event(revision, key, value_len)], revision);
        }
    }

    /// Compacting at a revision keeps its puts but not its deletes, as
    /// etcd's compaction does (the differential run found a watch from the
    /// compaction's revision given a delete there that etcd no longer has).
    #[test]
    fn compaction_at_a_revision_keeps_its_puts_not_its_deletes() {
        let hub = Arc::new(WatchHub::new(100));
        let delete = |revision, key: &str| WatchEvent {
            kind: EventKind::Delete,
            ..event(revision, key, 1)
        };
        hub.publish(vec![event(2, "a", 1)], 2);
        hub.publish(vec![delete(3, "a"), event(3, "b", 1)], 3);
        hub.publish(vec![event(4, "c", 1)], 4);
        hub.compact(3);
        let mut watcher = hub
            .subscribe(Selector::Prefix(Bytes::new()), 3, "t")
            .unwrap();
        let mut seen = Vec::new();
        while let Some(message) = watcher.try_next() {
            if let WatchMessage::Events(events) = message {
                seen.extend(events.into_iter().map(|e| (e.revision, e.kv.key)));
            }
        }
        assert_eq!(
            seen,
            [(3, Bytes::from_static(b"b")), (4, Bytes::from_static(b"c"))]
        );
        assert!(
            hub.subscribe(Selector::Prefix(Bytes::new()), 2, "t")
                .is_err()
        );
    }

    /// A watch from the empty store's revision (etcd's 1, which no change
    /// carries) is live at once. Found by the differential run against
    /// etcd: its replay found no event at that revision, said "more to
    /// come" and was asked again for ever, one core spinning.
    #[test]
    fn a_watch_from_a_revision_without_changes_goes_live() {
        let hub = Arc::new(WatchHub::new(100));
        hub.begin_at(1);
        let mut watcher = hub
            .subscribe(Selector::Prefix(Bytes::new()), 1, "t")
            .unwrap();
        assert!(matches!(
            watcher.try_next(),
            Some(WatchMessage::Started { revision: 1 })
        ));
        assert!(watcher.try_next().is_none(), "nothing to replay");
        hub.publish(vec![event(2, "k", 1)], 2);
        match watcher.try_next() {
            Some(WatchMessage::Events(events)) => assert_eq!(events[0].revision, 2),
            other => panic!("expected the live event, got {other:?}"),
        }
    }

    /// One write's changes share a revision (a range delete of thousands
    /// of keys): a watcher replaying from it gets every one of them, though
    /// they span more than one replay step (before, a step that ended
    /// inside the revision skipped the rest of it).
    #[test]
    fn a_replay_never_splits_a_revision() {
        let hub = Arc::new(WatchHub::new(10_000));
        hub.publish(vec![event(1, "before", 1)], 1);
        let many = REPLAY_STEP + 100;
        let events: Vec<_> = (0..many)
            .map(|i| event(2, &format!("k/{i:05}"), 1))
            .collect();
        hub.publish(events, 2);
        hub.publish(vec![event(3, "after", 1)], 3);
        let mut watcher = hub
            .subscribe(Selector::Prefix(Bytes::new()), 2, "t")
            .unwrap();
        let mut seen = Vec::new();
        while let Some(message) = watcher.try_next() {
            if let WatchMessage::Events(events) = message {
                seen.extend(events.into_iter().map(|e| e.revision));
            }
        }
        assert_eq!(seen.len(), many + 1, "every change of revision 2, then 3");
        assert_eq!(seen.iter().filter(|r| **r == 2).count(), many);
        assert_eq!(seen.last(), Some(&3));
    }

    fn everything() -> Selector {
        Selector::Prefix(Bytes::new())
    }

    /// Drains what is ready: the events' revisions, and the last message if
    /// it was not events.
    fn drain(watcher: &mut Watcher) -> (Vec<u64>, Option<WatchMessage>) {
        let mut revisions = Vec::new();
        while let Some(message) = watcher.try_next() {
            match message {
                WatchMessage::Events(events) => {
                    assert!(
                        events.len() == 1
                            || events.iter().map(event_bytes).sum::<u64>() <= WATCH_MESSAGE_BYTES,
                        "a message above {WATCH_MESSAGE_BYTES} bytes"
                    );
                    revisions.extend(events.iter().map(|e| e.revision));
                }
                WatchMessage::Started { .. } => {}
                other => return (revisions, Some(other)),
            }
        }
        (revisions, None)
    }

    /// Watch progress (etcd's progress requests and notifications): a
    /// watcher is synced through a revision only once it has taken every
    /// event up to it; writes to keys it does not watch move it on too.
    #[test]
    fn a_watcher_is_synced_only_once_it_took_everything() {
        let hub = Arc::new(WatchHub::new(1_000));
        publish(&hub, "a", 3, 10);
        let mut watcher = hub
            .subscribe(Selector::Prefix(Bytes::from_static(b"b")), 1, "c")
            .unwrap();
        // Not started, not replayed: not synced.
        assert_eq!(watcher.synced_through(), None);
        assert!(matches!(
            watcher.try_next(),
            Some(WatchMessage::Started { .. })
        ));
        // The replay finds nothing for "b" and goes live at revision 3.
        assert!(watcher.try_next().is_none());
        assert_eq!(watcher.synced_through(), Some(3));
        // Writes elsewhere move it on; a write it watches is waiting until
        // taken.
        publish(&hub, "a", 2, 10);
        assert_eq!(watcher.synced_through(), Some(5));
        publish(&hub, "b", 1, 10);
        assert_eq!(watcher.synced_through(), None);
        assert_eq!(drain(&mut watcher).0, [6]);
        assert_eq!(watcher.synced_through(), Some(6));
    }

    /// Review finding: the history was capped in events, not bytes
    /// (100,000 events of 4 MiB values is 400 GB). It holds at most
    /// WATCH_HISTORY_BYTES; a watch from before what it holds is told
    /// `Compacted`.
    #[test]
    fn the_history_is_bounded_in_bytes() {
        let hub = Arc::new(WatchHub::new(100_000));
        publish(&hub, "k", 100, MIB);
        let kept = hub.history_bytes();
        assert!(kept <= WATCH_HISTORY_BYTES, "{kept} bytes of history");
        assert!(
            kept > WATCH_HISTORY_BYTES - 2 * MIB as u64,
            "{kept} bytes of history"
        );
        assert!(matches!(
            hub.subscribe(everything(), 1, "c"),
            Err(KvError::Compacted { requested: 1, .. })
        ));
    }

    /// Review finding: replay queued the whole history up front in messages
    /// of 256 events (a replay of more than 1,024 messages was refused, and
    /// 256 events of 4 MiB made one message of 1 GiB). A replay is read a
    /// message of at most WATCH_MESSAGE_BYTES at a time as the watcher takes
    /// them, however long it is, and live events follow without a gap.
    #[test]
    fn a_long_replay_comes_in_bounded_messages_as_it_is_taken() {
        let hub = Arc::new(WatchHub::new(1_000_000));
        publish(&hub, "big", 40, MIB / 2);
        publish(&hub, "small", 300_000, 1);
        let mut watcher = hub.subscribe(everything(), 1, "c").unwrap();
        publish(&hub, "late", 3, 10);
        let (revisions, end) = drain(&mut watcher);
        assert_eq!(end, None);
        assert_eq!(revisions, (1..=300_043).collect::<Vec<_>>());
        publish(&hub, "live", 2, 10);
        assert_eq!(drain(&mut watcher).0, [300_044, 300_045]);
    }

    /// Review finding: a watcher that does not read was cut off only after
    /// 1,024 queued messages of any size. It is cut off once
    /// WATCHER_QUEUE_BYTES wait for it, with a typed error, while a watcher
    /// that reads gets everything.
    #[test]
    fn a_watcher_that_does_not_read_is_cut_off_at_its_byte_bound() {
        let hub = Arc::new(WatchHub::new(1000));
        let mut slow = hub.subscribe(everything(), 0, "slow").unwrap();
        let mut reader = hub.subscribe(everything(), 0, "reader").unwrap();
        // Both become live.
        assert_eq!(drain(&mut slow), (vec![], None));
        let mut got = Vec::new();
        for _ in 0..20 {
            publish(&hub, "k", 1, MIB);
            got.extend(drain(&mut reader).0);
        }
        assert_eq!(got, (1..=20).collect::<Vec<_>>());
        let (revisions, end) = drain(&mut slow);
        let queued = revisions.len() as u64 * (MIB as u64 + 49);
        assert!(
            queued <= WATCHER_QUEUE_BYTES,
            "{queued} bytes queued for one watcher"
        );
        assert!(!revisions.is_empty());
        assert!(
            matches!(end, Some(WatchMessage::Error(KvError::LimitReached(_)))),
            "{end:?}"
        );
        assert_eq!(hub.watchers(), 1);
    }

    /// Review finding: the number of watches was unbounded. One client may
    /// hold MAX_WATCHES_PER_CLIENT on a node; another client is not
    /// affected, and a watch ended frees its place.
    #[test]
    fn watches_per_client_are_bounded() {
        let hub = Arc::new(WatchHub::new(10));
        let mut mine: Vec<Watcher> = (0..MAX_WATCHES_PER_CLIENT)
            .map(|_| hub.subscribe(everything(), 0, "greedy").unwrap())
            .collect();
        assert!(matches!(
            hub.subscribe(everything(), 0, "greedy"),
            Err(KvError::LimitReached(_))
        ));
        assert!(hub.subscribe(everything(), 0, "other").is_ok());
        mine.pop();
        assert!(hub.subscribe(everything(), 0, "greedy").is_ok());
    }

    /// A batch of changes is split into messages of at most
    /// WATCH_MESSAGE_BYTES (one event always fits).
    #[test]
    fn a_large_batch_is_split_into_bounded_messages() {
        let hub = Arc::new(WatchHub::new(1000));
        let mut watcher = hub.subscribe(everything(), 0, "c").unwrap();
        assert_eq!(drain(&mut watcher), (vec![], None));
        let batch: Vec<WatchEvent> = (1..=6).map(|r| event(r, "k", 400 << 10)).collect();
        hub.publish(batch, 6);
        let mut sizes = Vec::new();
        while let Some(WatchMessage::Events(events)) = watcher.try_next() {
            sizes.push(events.len());
        }
        assert_eq!(sizes, [2, 2, 2]);
    }
}
