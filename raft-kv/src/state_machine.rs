//! The KV state machine: keys and values with etcd-style revisions, and
//! per-client sessions so a retried write applies exactly once.
//!
//! The state lives in memory in persistent (structurally shared) maps, so a
//! snapshot is an O(1) clone that is serialised off the apply path; the
//! snapshot data is stored durably by the log store. (ARCHITECTURE.md says
//! why.)

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use imbl::OrdMap;
use serde::{Deserialize, Serialize};

use raft_core::adapters::{SnapshotBuilder, StateMachine, StateMachineError};
use raft_core::{Entry, EntryPayload, Index, LogId, SnapshotMeta};

use crate::protocol::{
    EventKind, KeyValue, KvError, MAX_SCAN_LIMIT, ReadOp, ReadResult, Session, WatchEvent, WriteOp,
    WriteResult,
};
use crate::watch::WatchHub;

/// The most client sessions remembered; the least recently used is
/// forgotten first (deterministically: by the log index of its last write).
pub const MAX_SESSIONS: usize = 100_000;
/// The most unacknowledged results remembered per session.
pub const MAX_RESULTS_PER_SESSION: usize = 1024;
/// The highest revision the store reaches (etcd's revisions are `i64`s too).
/// Billions of years of writes away; a snapshot claiming more is corrupt.
pub const MAX_REVISION: u64 = i64::MAX as u64;

/// A write as it travels through the log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Command {
    /// Who wrote it.
    pub session: Session,
    /// What to write.
    pub op: WriteOp,
}

impl Command {
    /// The log entry payload.
    pub fn encode(&self) -> Bytes {
        crate::protocol::encode(self)
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
struct SessionState {
    /// Results not yet known to be received, by sequence number.
    results: BTreeMap<u64, WriteResult>,
    /// Results below this sequence number were discarded.
    floor: u64,
    /// The log index of the session's last write (for eviction).
    last_index: Index,
}

/// The replicated key-value store.
#[derive(Clone)]
pub struct KvStateMachine {
    data: OrdMap<Bytes, KeyValue>,
    sessions: OrdMap<u64, SessionState>,
    /// The sessions by the index of their last write, least recent first:
    /// eviction takes the first in O(log n).
    by_last_write: imbl::OrdSet<(Index, u64)>,
    /// The revision of the last write (0 before any).
    revision: u64,
    applied: LogId,
    watch: Arc<WatchHub>,
}

/// What a snapshot holds.
#[derive(Serialize, Deserialize)]
struct SnapshotData {
    applied: LogId,
    revision: u64,
    data: Vec<KeyValue>,
    sessions: Vec<(u64, SessionState)>,
}

impl SnapshotData {
    /// Checks what a state built by writes always satisfies, so a corrupt
    /// (or hostile) snapshot is refused at restore instead of breaking the
    /// store later: the revision leaves room for writes, and every key's
    /// revisions and version are consistent with it.
    fn validate(&self) -> Result<(), String> {
        if self.revision > MAX_REVISION {
            return Err(format!(
                "revision {} is above the highest possible ({MAX_REVISION})",
                self.revision
            ));
        }
        for kv in &self.data {
            if kv.create_revision == 0
                || kv.create_revision > kv.mod_revision
                || kv.mod_revision > self.revision
                || kv.version == 0
                || kv.version > kv.mod_revision
            {
                return Err(format!(
                    "key {:?} has create revision {}, mod revision {}, version {} \
                     in a store at revision {}",
                    kv.key, kv.create_revision, kv.mod_revision, kv.version, self.revision
                ));
            }
        }
        Ok(())
    }
}

impl KvStateMachine {
    /// An empty store publishing changes to `watch`.
    pub fn new(watch: Arc<WatchHub>) -> Self {
        Self {
            data: OrdMap::new(),
            sessions: OrdMap::new(),
            by_last_write: imbl::OrdSet::new(),
            revision: 0,
            applied: LogId::default(),
            watch,
        }
    }

    /// The revision of the last write.
    pub fn revision(&self) -> u64 {
        self.revision
    }

    /// The number of keys.
    pub fn len(&self) -> usize {
        self.data.len()
    }

    /// Whether the store is empty.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// Serves a read from the current state.
    pub fn read(&self, op: &ReadOp) -> Result<ReadResult, KvError> {
        match op {
            ReadOp::Get { key } => Ok(ReadResult {
                revision: self.revision,
                kvs: self.data.get(key).cloned().into_iter().collect(),
                more: false,
            }),
            ReadOp::Scan { start, end, limit } => {
                let limit = (*limit).clamp(1, MAX_SCAN_LIMIT) as usize;
                let mut kvs = Vec::new();
                let mut more = false;
                let range = self.data.range(start.clone()..);
                for (key, kv) in range {
                    if end.as_ref().is_some_and(|end| key >= end) {
                        break;
                    }
                    if kvs.len() == limit {
                        more = true;
                        break;
                    }
                    kvs.push(kv.clone());
                }
                Ok(ReadResult {
                    revision: self.revision,
                    kvs,
                    more,
                })
            }
        }
    }

    /// A digest of the whole state (keys, values, revisions), to compare
    /// replicas.
    pub fn digest(&self) -> u64 {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        self.revision.hash(&mut h);
        for (k, kv) in &self.data {
            k.hash(&mut h);
            kv.value.hash(&mut h);
            kv.mod_revision.hash(&mut h);
        }
        h.finish()
    }

    fn apply_command(
        &mut self,
        index: Index,
        data: &[u8],
        events: &mut Vec<WatchEvent>,
    ) -> Result<WriteResult, KvError> {
        let command: Command = crate::protocol::decode(data)?;
        if command.op == WriteOp::OpenSession {
            // The session's id is this entry's index: unique, and known to
            // every replica.
            self.touch_session(index, SessionState::default(), index);
            return Ok(WriteResult {
                revision: self.revision,
                succeeded: true,
                previous: None,
            });
        }
        let session = command.session;
        // A session this store does not know was evicted (ids are the
        // indices of the entries that opened them): a retried write of it may
        // have been applied already, so it is not applied again.
        let Some(mut state) = self.sessions.remove(&session.client_id) else {
            return Err(KvError::SessionExpired);
        };
        self.by_last_write
            .remove(&(state.last_index, session.client_id));
        state.results = state.results.split_off(&session.first_outstanding);
        state.floor = state.floor.max(session.first_outstanding);
        let result = if let Some(previous) = state.results.get(&session.sequence) {
            // A retry of a write already applied: answer as the first time.
            Ok(previous.clone())
        } else if session.sequence < state.floor {
            Err(KvError::SessionExpired)
        } else {
            match self.execute(command.op, events) {
                Ok(result) => {
                    state.results.insert(session.sequence, result.clone());
                    while state.results.len() > MAX_RESULTS_PER_SESSION {
                        if let Some((seq, _)) = state.results.pop_first() {
                            state.floor = state.floor.max(seq + 1);
                        }
                    }
                    Ok(result)
                }
                Err(e) => Err(e),
            }
        };
        self.touch_session(session.client_id, state, index);
        result
    }

    /// Stores a session as written at `index`, evicting the least recently
    /// written sessions beyond [`MAX_SESSIONS`].
    fn touch_session(&mut self, id: u64, mut state: SessionState, index: Index) {
        state.last_index = index;
        self.sessions.insert(id, state);
        self.by_last_write.insert((index, id));
        while self.sessions.len() > MAX_SESSIONS {
            let Some((_, oldest)) = self.by_last_write.remove_min() else {
                break;
            };
            self.sessions.remove(&oldest);
        }
    }

    fn execute(
        &mut self,
        op: WriteOp,
        events: &mut Vec<WatchEvent>,
    ) -> Result<WriteResult, KvError> {
        if self.revision >= MAX_REVISION {
            // Unreachable from a valid history (restore refuses such a
            // snapshot), but a write must never overflow the revision.
            return Err(KvError::InvalidRequest(format!(
                "the store is at its last revision ({MAX_REVISION})"
            )));
        }
        Ok(match op {
            WriteOp::Put { key, value } => self.put(key, value, events),
            WriteOp::Delete { key } => self.delete(key, events),
            WriteOp::Cas { key, expected, new } => {
                let current = self.data.get(&key).cloned();
                if current.as_ref().map(|kv| &kv.value) != expected.as_ref() {
                    return Ok(WriteResult {
                        revision: self.revision,
                        succeeded: false,
                        previous: current,
                    });
                }
                match new {
                    Some(value) => self.put(key, value, events),
                    None => self.delete(key, events),
                }
            }
            // Handled before a session is looked up.
            WriteOp::OpenSession => WriteResult {
                revision: self.revision,
                succeeded: true,
                previous: None,
            },
        })
    }

    fn put(&mut self, key: Bytes, value: Bytes, events: &mut Vec<WatchEvent>) -> WriteResult {
        self.revision += 1;
        let previous = self.data.get(&key).cloned();
        let kv = KeyValue {
            key: key.clone(),
            value,
            create_revision: previous
                .as_ref()
                .map_or(self.revision, |p| p.create_revision),
            mod_revision: self.revision,
            version: previous.as_ref().map_or(1, |p| p.version + 1),
        };
        events.push(WatchEvent {
            revision: self.revision,
            kind: EventKind::Put,
            kv: kv.clone(),
        });
        self.data.insert(key, kv);
        WriteResult {
            revision: self.revision,
            succeeded: true,
            previous,
        }
    }

    fn delete(&mut self, key: Bytes, events: &mut Vec<WatchEvent>) -> WriteResult {
        let Some(previous) = self.data.remove(&key) else {
            return WriteResult {
                revision: self.revision,
                succeeded: true,
                previous: None,
            };
        };
        self.revision += 1;
        events.push(WatchEvent {
            revision: self.revision,
            kind: EventKind::Delete,
            kv: KeyValue {
                key,
                value: Bytes::new(),
                create_revision: 0,
                mod_revision: self.revision,
                version: 0,
            },
        });
        WriteResult {
            revision: self.revision,
            succeeded: true,
            previous: Some(previous),
        }
    }
}

impl StateMachine for KvStateMachine {
    type Output = Result<WriteResult, KvError>;

    fn apply(&mut self, entries: &[Entry]) -> Vec<(LogId, Self::Output)> {
        let mut outputs = Vec::new();
        let mut events = Vec::new();
        for entry in entries {
            if entry.index <= self.applied.index {
                continue;
            }
            if let EntryPayload::Command(data) = &entry.payload {
                let result = self.apply_command(entry.index, data, &mut events);
                outputs.push((entry.log_id(), result));
            }
            self.applied = entry.log_id();
        }
        if !events.is_empty() {
            self.watch.publish(events, self.revision);
        }
        outputs
    }

    fn applied_index(&self) -> Index {
        self.applied.index
    }

    fn snapshot(&self) -> SnapshotBuilder {
        let (data, sessions, revision, applied) = (
            self.data.clone(),
            self.sessions.clone(),
            self.revision,
            self.applied,
        );
        Box::new(move || {
            let snapshot = SnapshotData {
                applied,
                revision,
                data: data.values().cloned().collect(),
                sessions: sessions.iter().map(|(id, s)| (*id, s.clone())).collect(),
            };
            postcard::to_stdvec(&snapshot)
                .map(Bytes::from)
                .map_err(|e| StateMachineError(format!("cannot encode the snapshot: {e}")))
        })
    }

    fn restore(&mut self, meta: &SnapshotMeta, data: &[u8]) -> Result<(), StateMachineError> {
        let snapshot: SnapshotData = postcard::from_bytes(data).map_err(|e| {
            StateMachineError(format!("snapshot {} is undecodable: {e}", meta.last.index))
        })?;
        if snapshot.applied != meta.last {
            return Err(StateMachineError(format!(
                "snapshot data covers {:?} but its metadata says {:?}",
                snapshot.applied, meta.last
            )));
        }
        snapshot.validate().map_err(|problem| {
            StateMachineError(format!(
                "snapshot {} is corrupt: {problem}",
                meta.last.index
            ))
        })?;
        self.data = snapshot
            .data
            .into_iter()
            .map(|kv| (kv.key.clone(), kv))
            .collect();
        self.by_last_write = snapshot
            .sessions
            .iter()
            .map(|(id, s)| (s.last_index, *id))
            .collect();
        self.sessions = snapshot.sessions.into_iter().collect();
        self.revision = snapshot.revision;
        self.applied = snapshot.applied;
        // Watchers must not be fed history they can no longer get in order.
        self.watch.reset(self.revision);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Test writes are at log index `OFFSET + index`, after the entries
    /// that open sessions 1 and 7 (`store`).
    const OFFSET: Index = 100;

    fn entry(index: Index, client: u64, seq: u64, op: WriteOp) -> Entry {
        let session = Session {
            client_id: client,
            sequence: seq,
            first_outstanding: seq,
        };
        Entry {
            term: 1,
            index: OFFSET + index,
            payload: EntryPayload::Command(Command { session, op }.encode()),
        }
    }

    fn open_session(index: Index) -> Entry {
        let session = Session {
            client_id: 0,
            sequence: 0,
            first_outstanding: 0,
        };
        Entry {
            term: 1,
            index,
            payload: EntryPayload::Command(
                Command {
                    session,
                    op: WriteOp::OpenSession,
                }
                .encode(),
            ),
        }
    }

    /// A store with sessions 1 and 7 open.
    fn store() -> KvStateMachine {
        let mut sm = KvStateMachine::new(Arc::new(WatchHub::new(100)));
        sm.apply(&[open_session(1), open_session(7)]);
        sm
    }

    fn put(key: &str, value: &str) -> WriteOp {
        WriteOp::Put {
            key: Bytes::copy_from_slice(key.as_bytes()),
            value: Bytes::copy_from_slice(value.as_bytes()),
        }
    }

    #[test]
    fn retried_write_applies_once() {
        let mut sm = store();
        let first = sm.apply(&[entry(1, 7, 1, put("k", "a"))]);
        // The same session and sequence again (a client retry that also got
        // committed): same answer, no second write.
        let again = sm.apply(&[entry(2, 7, 1, put("k", "a"))]);
        assert_eq!(first[0].1, again[0].1);
        assert_eq!(sm.revision(), 1);
        let next = sm.apply(&[entry(3, 7, 2, put("k", "b"))]);
        assert_eq!(next[0].1.as_ref().unwrap().revision, 2);
    }

    #[test]
    fn cas_compares_and_swaps() {
        let mut sm = store();
        sm.apply(&[entry(1, 1, 1, put("k", "a"))]);
        let cas = |expected: Option<&str>, new: Option<&str>| WriteOp::Cas {
            key: Bytes::from_static(b"k"),
            expected: expected.map(|v| Bytes::copy_from_slice(v.as_bytes())),
            new: new.map(|v| Bytes::copy_from_slice(v.as_bytes())),
        };
        let failed = sm.apply(&[entry(2, 1, 2, cas(Some("x"), Some("b")))]);
        let failed = failed[0].1.as_ref().unwrap();
        assert!(!failed.succeeded);
        assert_eq!(
            failed.previous.as_ref().unwrap().value,
            Bytes::from_static(b"a")
        );
        let swapped = sm.apply(&[entry(3, 1, 3, cas(Some("a"), Some("b")))]);
        assert!(swapped[0].1.as_ref().unwrap().succeeded);
        let deleted = sm.apply(&[entry(4, 1, 4, cas(Some("b"), None))]);
        assert!(deleted[0].1.as_ref().unwrap().succeeded);
        let created = sm.apply(&[entry(5, 1, 5, cas(None, Some("c")))]);
        assert!(created[0].1.as_ref().unwrap().succeeded);
        assert_eq!(
            sm.read(&ReadOp::Get {
                key: Bytes::from_static(b"k")
            })
            .unwrap()
            .kvs[0]
                .version,
            1
        );
    }

    #[test]
    fn snapshot_round_trip() {
        let mut sm = store();
        for i in 0..50u64 {
            sm.apply(&[entry(i + 1, 1, i + 1, put(&format!("key{i:02}"), "v"))]);
        }
        let data = (sm.snapshot())().unwrap();
        let meta = SnapshotMeta {
            last: LogId::new(1, OFFSET + 50),
            ..SnapshotMeta::default()
        };
        let mut restored = KvStateMachine::new(Arc::new(WatchHub::new(100)));
        restored.restore(&meta, &data).unwrap();
        assert_eq!(restored.digest(), sm.digest());
        let scan = restored
            .read(&ReadOp::prefix(Bytes::from_static(b"key1"), 5))
            .unwrap();
        assert_eq!(scan.kvs.len(), 5);
        assert!(scan.more);
    }

    /// Fuzz finding F1 (fuzz/README.md): a snapshot at revision u64::MAX
    /// (or one below) restored, and the next write panicked with an add
    /// overflow. Such a snapshot is corrupt: restore refuses it, and the
    /// store is unchanged.
    #[test]
    fn snapshot_with_impossible_revision_is_refused() {
        let mut sm = store();
        sm.apply(&[entry(1, 1, 1, put("k", "a"))]);
        let digest = sm.digest();
        let meta = SnapshotMeta {
            last: LogId::new(1, OFFSET + 7),
            ..SnapshotMeta::default()
        };
        let corrupt = |revision: u64, kvs: Vec<KeyValue>| {
            postcard::to_stdvec(&SnapshotData {
                applied: meta.last,
                revision,
                data: kvs,
                sessions: vec![(1, SessionState::default())],
            })
            .unwrap()
        };
        let kv = |create: u64, modified: u64, version: u64| KeyValue {
            key: Bytes::from_static(b"x"),
            value: Bytes::from_static(b"v"),
            create_revision: create,
            mod_revision: modified,
            version,
        };
        for data in [
            corrupt(u64::MAX, Vec::new()),
            corrupt(u64::MAX - 1, Vec::new()),
            corrupt(MAX_REVISION + 1, Vec::new()),
            // Keys whose revisions or version the store's revision
            // cannot have produced.
            corrupt(5, vec![kv(1, 6, 1)]),
            corrupt(5, vec![kv(4, 3, 1)]),
            corrupt(5, vec![kv(0, 3, 1)]),
            corrupt(5, vec![kv(1, 3, 0)]),
            corrupt(5, vec![kv(1, 3, u64::MAX)]),
        ] {
            let error = sm.restore(&meta, &data).unwrap_err();
            assert!(error.0.contains("corrupt"), "{error:?}");
            assert_eq!(sm.digest(), digest);
            assert_eq!(sm.applied_index(), OFFSET + 1);
        }
        // The highest valid revision restores; the next write is refused
        // with a typed error instead of overflowing.
        sm.restore(&meta, &corrupt(MAX_REVISION, vec![kv(1, 3, 2)]))
            .unwrap();
        let out = sm.apply(&[entry(8, 1, 1, put("k", "b"))]);
        assert!(
            matches!(out[0].1, Err(KvError::InvalidRequest(_))),
            "{out:?}"
        );
        assert_eq!(sm.revision(), MAX_REVISION);
        assert_eq!(sm.applied_index(), OFFSET + 8);
    }

    /// Raft thesis §6.3: a session the store no longer knows expired, and a
    /// write of it is refused, never applied a second time. Here session 1
    /// wrote, then enough sessions opened to evict it, then its write came
    /// again (a client retry after a lost answer).
    #[test]
    fn an_evicted_session_is_refused_not_applied_twice() {
        let mut sm = store();
        sm.apply(&[entry(1, 1, 1, put("k", "a"))]);
        assert_eq!(sm.revision(), 1);
        let next = OFFSET + 2;
        let opens: Vec<Entry> = (0..MAX_SESSIONS as u64)
            .map(|i| open_session(next + i))
            .collect();
        sm.apply(&opens);
        assert_eq!(sm.sessions.len(), MAX_SESSIONS);
        assert!(
            !sm.sessions.contains_key(&1),
            "the oldest session was evicted"
        );
        let retry = Entry {
            index: next + MAX_SESSIONS as u64,
            ..entry(1, 1, 1, put("k", "a"))
        };
        let out = sm.apply(&[retry]);
        assert_eq!(out[0].1, Err(KvError::SessionExpired));
        assert_eq!(sm.revision(), 1, "the retried write was not applied again");
        // A session that never existed fares the same.
        let stranger = Entry {
            index: next + MAX_SESSIONS as u64 + 1,
            ..entry(1, 424_242, 1, put("k", "b"))
        };
        assert_eq!(sm.apply(&[stranger])[0].1, Err(KvError::SessionExpired));
        assert_eq!(sm.revision(), 1);
    }
}
