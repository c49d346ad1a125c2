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
    EventKind, KeyValue, KvError, MAX_KEY_LEN, MAX_LEASE_TTL, MAX_LEASES, MAX_LEASES_PER_CLIENT,
    MAX_SCAN_BYTES, MAX_SCAN_LIMIT, MAX_VALUE_LEN, MIN_LEASE_TTL, ReadOp, ReadResult,
    SCAN_ENTRY_OVERHEAD, Session, TxnOpResult, WatchEvent, WriteOp, WriteResult,
};
use crate::watch::WatchHub;

/// The most client sessions remembered; the least recently used is
/// forgotten first (deterministically: by the log index of its last write).
pub const MAX_SESSIONS: usize = 100_000;
/// The most unacknowledged results remembered per session.
pub const MAX_RESULTS_PER_SESSION: usize = 1024;
/// The most bytes of results one session keeps (a result is counted by
/// `result_bytes`); the oldest results are forgotten first. Room for two
/// results carrying the largest previous value.
pub const MAX_SESSION_RESULT_BYTES: u64 = 2 * (MAX_VALUE_LEN + MAX_KEY_LEN) as u64 + 4096;
/// The most bytes all sessions together keep: their results plus
/// [`SESSION_OVERHEAD_BYTES`] each. Beyond it the least recently written
/// sessions are forgotten, as beyond [`MAX_SESSIONS`].
pub const MAX_SESSIONS_BYTES: u64 = 256 << 20;
/// What a session costs before any result (its id, counters, owner name of
/// at most 63 bytes and place in the eviction index), counted against
/// [`MAX_SESSIONS_BYTES`].
pub const SESSION_OVERHEAD_BYTES: u64 = 192;
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
    /// Whether the result carries the key as it was before the write.
    pub prev_kv: bool,
    /// The identity it was written for ([`Principal::name`]): a session
    /// belongs to whoever opened it, and only its owner may write in it.
    ///
    /// [`Principal::name`]: crate::protocol::Principal::name
    pub owner: String,
}

impl Command {
    /// The command that opens a client session for `owner` (its id becomes
    /// the index of the entry that carries it).
    pub fn open_session(owner: String) -> Self {
        Self::outside_sessions(WriteOp::OpenSession, owner)
    }

    /// A command applied in no session (opening one, or the leader's lease
    /// expiry): never answered from a kept result, written by `owner`.
    pub fn outside_sessions(op: WriteOp, owner: String) -> Self {
        Self {
            session: Session {
                client_id: 0,
                sequence: 0,
                first_outstanding: 0,
            },
            op,
            prev_kv: false,
            owner,
        }
    }

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
    /// What `results` hold, by [`result_bytes`] (recomputed on restore).
    #[serde(skip)]
    bytes: u64,
    /// Whose it is ([`Command::owner`]).
    owner: String,
}

/// A lease: its time to live and the keys put with it. Its deadline is not
/// here: only the leader keeps deadlines (see [`crate::lease`]), and a
/// lease ends for every replica when the leader's expiry is applied.
#[derive(Clone, Debug, Default)]
struct LeaseState {
    /// Seconds granted.
    ttl: u64,
    /// The keys that live by it.
    keys: imbl::OrdSet<Bytes>,
    /// Who granted it ([`Command::owner`]): only it, or an administrator,
    /// may keep it alive or revoke it; leases are counted per owner.
    owner: String,
    /// The log index of its grant: tells a lease from an earlier one that
    /// had the same id (the leader's deadlines are kept per grant).
    granted: Index,
}

/// The bytes a kept result is counted as: the previous key-value it carries
/// and a fixed part.
fn result_bytes(result: &WriteResult) -> u64 {
    let kv_bytes = |kv: &KeyValue| (kv.key.len() + kv.value.len()) as u64 + 24;
    let responses: u64 = result
        .responses
        .iter()
        .map(|response| {
            let mut bytes = 16;
            response.for_each_kv(&mut |kv| bytes += kv_bytes(kv));
            bytes
        })
        .sum();
    32 + result.previous.as_ref().map_or(0, kv_bytes) + responses
}

/// The replicated key-value store.
#[derive(Clone)]
pub struct KvStateMachine {
    data: OrdMap<Bytes, KeyValue>,
    /// Leases by id.
    leases: OrdMap<u64, LeaseState>,
    sessions: OrdMap<u64, SessionState>,
    /// The sessions by the index of their last write, least recent first:
    /// eviction takes the first in O(log n).
    by_last_write: imbl::OrdSet<(Index, u64)>,
    /// What all sessions hold, counted against [`MAX_SESSIONS_BYTES`].
    sessions_bytes: u64,
    /// The revision of the last write ([`FIRST_REVISION`] before any).
    revision: u64,
    /// Each member's client URLs, as it published them.
    members: OrdMap<u64, Vec<String>>,
    /// The last compaction's revision (`None`: none yet, where etcd's is
    /// -1, so that it compacts at 0 once): revisions before it are no
    /// longer read or watched from ([`WriteOp::Compact`]).
    compacted: Option<u64>,
    applied: LogId,
    watch: Arc<WatchHub>,
    /// Past states kept for scans paging at one revision.
    views: ScanViews,
    /// The cost of this batch's writes to kept states (see
    /// [`SCAN_VIEWS_PINNED_BYTES`]).
    written: u64,
    /// The revision the write being applied took with its first change:
    /// every change of one write (a transaction, a range delete, a lease's
    /// keys) shares it, as in etcd.
    write_revision: Option<u64>,
}

/// What a snapshot holds.
#[derive(Serialize, Deserialize)]
struct SnapshotData {
    applied: LogId,
    revision: u64,
    data: Vec<KeyValue>,
    sessions: Vec<(u64, SessionState)>,
    /// Leases as (id, seconds granted, owner); their keys are the keys
    /// whose `lease` names them.
    leases: Vec<(u64, u64, String, Index)>,
    /// The last compaction's revision.
    compacted: Option<u64>,
    /// Each member's client URLs.
    members: Vec<(u64, Vec<String>)>,
}

/// [`SnapshotData`] as encoded from the live maps (the same encoding).
#[derive(Serialize)]
struct SnapshotView<'a> {
    applied: LogId,
    revision: u64,
    data: Seq<'a, Bytes, KeyValue>,
    sessions: Seq<'a, u64, SessionState>,
    leases: Seq<'a, u64, LeaseState>,
    compacted: Option<u64>,
    members: Vec<(u64, Vec<String>)>,
}

/// A map encoded as the sequence of its values (`data`) or of its pairs
/// (`sessions`), in key order, as a `Vec` of them would be.
struct Seq<'a, K, V>(&'a OrdMap<K, V>);

impl Serialize for Seq<'_, Bytes, KeyValue> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(ExactLen(self.0.len(), self.0.values()))
    }
}

impl Serialize for Seq<'_, u64, SessionState> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(ExactLen(self.0.len(), self.0.iter()))
    }
}

impl Serialize for Seq<'_, u64, LeaseState> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let pairs = self
            .0
            .iter()
            .map(|(id, lease)| (*id, lease.ttl, &lease.owner, lease.granted));
        serializer.collect_seq(ExactLen(self.0.len(), pairs))
    }
}

/// An iterator that states its length (postcard writes a sequence's length
/// first, so it must be known).
struct ExactLen<I>(usize, I);

impl<I: Iterator> Iterator for ExactLen<I> {
    type Item = I::Item;
    fn next(&mut self) -> Option<I::Item> {
        let item = self.1.next()?;
        self.0 = self.0.saturating_sub(1);
        Some(item)
    }
    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.0, Some(self.0))
    }
}

impl SnapshotData {
    /// Checks what a state built by writes always satisfies, so a corrupt
    /// (or hostile) snapshot is refused at restore instead of breaking the
    /// store later: the revision leaves room for writes, and every key's
    /// revisions and version are consistent with it.
    fn validate(&self) -> Result<(), String> {
        if let Some(compacted) = self.compacted
            && compacted > self.revision
        {
            return Err(format!(
                "compacted at revision {compacted} beyond its revision {}",
                self.revision
            ));
        }
        if self.revision > MAX_REVISION {
            return Err(format!(
                "revision {} is above the highest possible ({MAX_REVISION})",
                self.revision
            ));
        }
        let leases: std::collections::BTreeSet<u64> =
            self.leases.iter().map(|(id, _, _, _)| *id).collect();
        if let Some((id, ttl, _, _)) = self.leases.iter().find(|(id, ttl, _, _)| {
            *id == 0 || *id > i64::MAX as u64 || *ttl == 0 || *ttl > MAX_LEASE_TTL
        }) {
            return Err(format!("lease {id} has time to live {ttl}"));
        }
        if let Some(kv) = self
            .data
            .iter()
            .find(|kv| kv.lease != 0 && !leases.contains(&kv.lease))
        {
            return Err(format!(
                "key {:?} names lease {}, which does not exist",
                kv.key, kv.lease
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

/// The key-values of `data` in `start..end`, at most `limit` of them and
/// `max_bytes` together (but always one), and whether more follow.
fn scan(
    data: &OrdMap<Bytes, KeyValue>,
    start: &Bytes,
    end: Option<&Bytes>,
    limit: u32,
    max_bytes: usize,
) -> (Vec<KeyValue>, bool) {
    page(
        data.range(start.clone()..).map(|(_, kv)| kv),
        end,
        limit,
        max_bytes,
    )
}

/// [`scan`] of the state at a past revision: `data` (the state now) with
/// the keys in `then` as they were at that revision (`None`: absent then).
fn scan_as_of(
    data: &OrdMap<Bytes, KeyValue>,
    then: &BTreeMap<Bytes, Option<KeyValue>>,
    start: &Bytes,
    end: Option<&Bytes>,
    limit: u32,
    max_bytes: usize,
) -> (Vec<KeyValue>, bool) {
    let mut now = data.range(start.clone()..).peekable();
    let mut past = then.range(start.clone()..).peekable();
    // The two in key order; a key in `then` is taken from there.
    let merged = std::iter::from_fn(move || {
        loop {
            let (from_past, same) = match (now.peek(), past.peek()) {
                (None, None) => return None,
                (Some(_), None) => (false, false),
                (None, Some(_)) => (true, false),
                (Some((a, _)), Some((b, _))) => (b <= a, a == b),
            };
            if same {
                // The key as it was replaces it as it is.
                now.next();
            }
            if from_past {
                if let Some((_, Some(kv))) = past.next() {
                    return Some(kv);
                }
            } else {
                return now.next().map(|(_, kv)| kv);
            }
        }
    });
    page(merged, end, limit, max_bytes)
}

/// The key-values of `kvs` (in key order) before `end`, at most `limit` of
/// them and `max_bytes` together (but always one), and whether more follow.
fn page<'a>(
    kvs: impl Iterator<Item = &'a KeyValue>,
    end: Option<&Bytes>,
    limit: u32,
    max_bytes: usize,
) -> (Vec<KeyValue>, bool) {
    let limit = limit.clamp(1, MAX_SCAN_LIMIT) as usize;
    let mut kvs_out = Vec::new();
    let mut bytes = 0;
    for kv in kvs {
        let key = &kv.key;
        if end.is_some_and(|end| key >= end) {
            break;
        }
        // At least one key-value, however large (a value fits a reply);
        // beyond that, the count and the bytes bound it.
        let size = kv.key.len() + kv.value.len() + SCAN_ENTRY_OVERHEAD;
        if kvs_out.len() == limit || (!kvs_out.is_empty() && bytes + size > max_bytes) {
            return (kvs_out, true);
        }
        bytes += size;
        kvs_out.push(kv.clone());
    }
    (kvs_out, false)
}

/// The revision of an empty store (etcd's: its first write takes 2).
pub const FIRST_REVISION: u64 = 1;

/// The most past states a node keeps for scans that page at one revision;
/// beyond it the oldest is let go.
pub const MAX_SCAN_VIEWS: usize = 64;
/// The most memory kept states may hold beyond the live state: what the
/// writes since the oldest kept state replaced (keys and values overwritten
/// or deleted) plus [`VIEW_WRITE_COST`] per write. Beyond it the oldest is
/// let go, and a page asked of it is answered `Compacted`. At a few
/// thousand writes a second a kept state lasts seconds, long enough for a
/// client to page through.
pub const SCAN_VIEWS_PINNED_BYTES: u64 = 64 << 20;
/// What one write costs a kept state beyond the bytes it replaces: the map
/// nodes it copies (a path of a B-tree of 16-key nodes: about 2 KiB per
/// leaf and 650 bytes per inner node, 5 levels at a million keys; counted
/// high).
pub const VIEW_WRITE_COST: u64 = 8 << 10;

/// Past states kept for paged scans: each an O(1) clone of the key map,
/// sharing every node the writes since did not copy.
#[derive(Clone, Default)]
struct ScanViews {
    inner: Arc<std::sync::Mutex<ViewsInner>>,
}

#[derive(Default)]
struct ViewsInner {
    /// By revision: the state, and `written` when it was kept.
    views: BTreeMap<u64, (OrdMap<Bytes, KeyValue>, u64)>,
    /// The cost of every write so far (bytes replaced plus
    /// [`VIEW_WRITE_COST`] each).
    written: u64,
}

impl ScanViews {
    fn lock(&self) -> std::sync::MutexGuard<'_, ViewsInner> {
        // Every mutation leaves the map consistent: keep going after a panic.
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Keeps `data` as the state at `revision`.
    fn keep(&self, revision: u64, data: &OrdMap<Bytes, KeyValue>) {
        let mut inner = self.lock();
        let written = inner.written;
        inner
            .views
            .entry(revision)
            .or_insert_with(|| (data.clone(), written));
        while inner.views.len() > MAX_SCAN_VIEWS {
            inner.views.pop_first();
        }
    }

    /// The state kept at `revision`, if it still is.
    fn get(&self, revision: u64) -> Option<OrdMap<Bytes, KeyValue>> {
        self.lock()
            .views
            .get(&revision)
            .map(|(data, _)| data.clone())
    }

    /// Counts writes of `cost` (only while a state is kept) and lets go the
    /// oldest states while they hold more than [`SCAN_VIEWS_PINNED_BYTES`].
    fn written(&self, cost: u64) {
        let mut inner = self.lock();
        if inner.views.is_empty() {
            return;
        }
        inner.written += cost;
        let written = inner.written;
        while let Some((_, (_, at))) = inner.views.first_key_value()
            && written - at > SCAN_VIEWS_PINNED_BYTES
        {
            inner.views.pop_first();
        }
    }

    /// The live state was replaced (a snapshot was restored): no past state
    /// is kept.
    fn clear(&self) {
        self.lock().views.clear();
    }
}

/// The branch a transaction takes, and those of the transactions nested
/// in it (in order), decided before any of it runs.
struct TxnPath {
    holds: bool,
    nested: Vec<TxnPath>,
}

/// The store as a transaction found it (an O(1) clone of the key map), for
/// its reads at the revision before it.
struct TxnBase {
    data: OrdMap<Bytes, KeyValue>,
    revision: u64,
}

impl KvStateMachine {
    /// An empty store publishing changes to `watch`. As etcd's, it is at
    /// revision 1 before its first write (which takes revision 2).
    pub fn new(watch: Arc<WatchHub>) -> Self {
        watch.begin_at(FIRST_REVISION);
        Self {
            data: OrdMap::new(),
            leases: OrdMap::new(),
            sessions: OrdMap::new(),
            by_last_write: imbl::OrdSet::new(),
            sessions_bytes: 0,
            revision: FIRST_REVISION,
            compacted: None,
            members: OrdMap::new(),
            applied: LogId::default(),
            watch,
            views: ScanViews::default(),
            written: 0,
            write_revision: None,
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
            ReadOp::Scan {
                start,
                end,
                limit,
                revision,
            } => {
                let page = |data: &OrdMap<Bytes, KeyValue>, revision| {
                    let (kvs, more) = scan(data, start, end.as_ref(), *limit, MAX_SCAN_BYTES);
                    ReadResult {
                        revision,
                        kvs,
                        more,
                    }
                };
                self.check_revision(*revision)?;
                if *revision == 0 || *revision == self.revision {
                    let result = page(&self.data, self.revision);
                    if result.more {
                        // Later pages read this same state.
                        self.views.keep(self.revision, &self.data);
                    }
                    return Ok(result);
                }
                let (kvs, more) = self.scan_past(
                    &self.data,
                    self.revision,
                    *revision,
                    start,
                    end.as_ref(),
                    *limit,
                    MAX_SCAN_BYTES,
                )?;
                Ok(ReadResult {
                    revision: *revision,
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
        self.compacted.hash(&mut h);
        for (id, urls) in &self.members {
            (id, urls).hash(&mut h);
        }
        for (k, kv) in &self.data {
            k.hash(&mut h);
            kv.value.hash(&mut h);
            kv.mod_revision.hash(&mut h);
            kv.lease.hash(&mut h);
        }
        for (id, lease) in &self.leases {
            id.hash(&mut h);
            lease.ttl.hash(&mut h);
            lease.owner.hash(&mut h);
        }
        h.finish()
    }

    /// Every lease, as (id, seconds granted), in id order.
    pub fn leases(&self) -> Vec<(u64, u64)> {
        self.leases
            .iter()
            .map(|(id, lease)| (*id, lease.ttl))
            .collect()
    }

    /// Each member's client URLs, as it published them.
    pub fn member_urls(&self) -> BTreeMap<u64, Vec<String>> {
        self.members
            .iter()
            .map(|(id, urls)| (*id, urls.clone()))
            .collect()
    }

    /// Who granted lease `id`, if it exists.
    pub fn lease_owner(&self, id: u64) -> Option<&str> {
        self.leases.get(&id).map(|lease| lease.owner.as_str())
    }

    /// Every lease as (id, seconds granted, index of its grant).
    pub fn lease_grants(&self) -> Vec<(u64, u64, Index)> {
        self.leases
            .iter()
            .map(|(id, lease)| (*id, lease.ttl, lease.granted))
            .collect()
    }

    /// The index of lease `id`'s grant, if it exists.
    pub fn lease_granted(&self, id: u64) -> Option<Index> {
        self.leases.get(&id).map(|lease| lease.granted)
    }

    /// A lease's seconds granted and its keys, if it exists.
    pub fn lease(&self, id: u64) -> Option<(u64, Vec<Bytes>)> {
        self.leases
            .get(&id)
            .map(|lease| (lease.ttl, lease.keys.iter().cloned().collect()))
    }

    fn apply_command(
        &mut self,
        index: Index,
        data: &[u8],
        events: &mut Vec<WatchEvent>,
    ) -> Result<WriteResult, KvError> {
        let command: Command = crate::protocol::decode(data)?;
        // Each write takes at most one new revision.
        self.write_revision = None;
        if command.op == WriteOp::OpenSession {
            // The session's id is this entry's index: unique, and known to
            // every replica.
            let state = SessionState {
                owner: command.owner,
                ..SessionState::default()
            };
            self.touch_session(index, state, index);
            return Ok(self.bare_result(true));
        }
        if let WriteOp::LeaseExpire { id } = command.op {
            // The leader's decision, in no session: applying it twice (two
            // expiries proposed before the first applied) finds it gone.
            return Ok(self
                .revoke(id, events)
                .unwrap_or_else(|_| self.bare_result(false)));
        }
        let session = command.session;
        if let Some(state) = self.sessions.get(&session.client_id)
            && state.owner != command.owner
        {
            return Err(KvError::Forbidden(format!(
                "session {} belongs to another client; write in a session of your own",
                session.client_id
            )));
        }
        // A session this store does not know was evicted (ids are the
        // indices of the entries that opened them): a retried write of it may
        // have been applied already, so it is not applied again.
        let Some(mut state) = self.sessions.remove(&session.client_id) else {
            return Err(KvError::SessionExpired);
        };
        self.by_last_write
            .remove(&(state.last_index, session.client_id));
        self.sessions_bytes -= SESSION_OVERHEAD_BYTES + state.bytes;
        // Results the client no longer waits for are released.
        let released = state.results.split_off(&session.first_outstanding);
        for result in std::mem::replace(&mut state.results, released).values() {
            state.bytes -= result_bytes(result);
        }
        state.floor = state.floor.max(session.first_outstanding);
        let result = if let Some(previous) = state.results.get(&session.sequence) {
            // A retry of a write already applied: answer as the first time.
            Ok(previous.clone())
        } else if session.sequence < state.floor {
            Err(KvError::SessionExpired)
        } else {
            let before = self.revision;
            let leases_before = self.leases.len();
            let compacted_before = self.compacted;
            let result = self.execute(command.op, command.prev_kv, index, &command.owner, events);
            // A write that changed nothing (a CAS that did not swap, a
            // delete of a missing key, an error) is not kept: a retry
            // evaluates it again, which is safe because the first evaluation
            // had no effect; so a failed CAS keeps no copy of the current
            // value it answers with. A lease granted or revoked changed the
            // store though no revision was taken.
            if let Ok(result) = &result
                && (self.revision != before
                    || self.leases.len() != leases_before
                    || self.compacted != compacted_before)
            {
                state.bytes += result_bytes(result);
                state.results.insert(session.sequence, result.clone());
                while state.results.len() > MAX_RESULTS_PER_SESSION
                    || state.bytes > MAX_SESSION_RESULT_BYTES
                {
                    let Some((seq, dropped)) = state.results.pop_first() else {
                        break;
                    };
                    state.bytes -= result_bytes(&dropped);
                    state.floor = state.floor.max(seq + 1);
                }
            }
            result
        };
        self.touch_session(session.client_id, state, index);
        result
    }

    /// Stores a session as written at `index`, evicting the least recently
    /// written sessions beyond [`MAX_SESSIONS`] or [`MAX_SESSIONS_BYTES`].
    fn touch_session(&mut self, id: u64, mut state: SessionState, index: Index) {
        state.last_index = index;
        self.sessions_bytes += SESSION_OVERHEAD_BYTES + state.bytes;
        self.sessions.insert(id, state);
        self.by_last_write.insert((index, id));
        while self.sessions.len() > MAX_SESSIONS || self.sessions_bytes > MAX_SESSIONS_BYTES {
            let Some((_, oldest)) = self.by_last_write.remove_min() else {
                break;
            };
            if let Some(evicted) = self.sessions.remove(&oldest) {
                self.sessions_bytes -= SESSION_OVERHEAD_BYTES + evicted.bytes;
            }
        }
    }

    /// The revision of a change of the write being applied: the next
    /// revision for its first change, the same for the others.
    fn change_revision(&mut self) -> u64 {
        if self.write_revision.is_none() {
            self.revision += 1;
            self.write_revision = Some(self.revision);
        }
        self.revision
    }

    /// A result that carries nothing but the store's revision and whether
    /// the write took effect.
    fn bare_result(&self, succeeded: bool) -> WriteResult {
        WriteResult {
            revision: self.revision,
            succeeded,
            previous: None,
            responses: Vec::new(),
        }
    }

    /// Applies one write; `previous` is kept in the result only with
    /// `prev_kv` (and for a CAS that did not swap).
    fn execute(
        &mut self,
        op: WriteOp,
        prev_kv: bool,
        index: Index,
        owner: &str,
        events: &mut Vec<WatchEvent>,
    ) -> Result<WriteResult, KvError> {
        if self.revision >= MAX_REVISION {
            // Unreachable from a valid history (restore refuses such a
            // snapshot), but a write must never overflow the revision.
            return Err(KvError::InvalidRequest(format!(
                "the store is at its last revision ({MAX_REVISION})"
            )));
        }
        let mut result = match op {
            WriteOp::Put { key, value } => self.put(key, value, 0, events),
            WriteOp::Delete { key } => self.delete(key, events),
            WriteOp::Cas { key, expected, new } => {
                let current = self.data.get(&key).cloned();
                if current.as_ref().map(|kv| &kv.value) != expected.as_ref() {
                    return Ok(WriteResult {
                        revision: self.revision,
                        succeeded: false,
                        previous: current,
                        responses: Vec::new(),
                    });
                }
                match new {
                    Some(value) => self.put(key, value, 0, events),
                    // The comparison held, so the CAS succeeded even when it
                    // deleted a key that was already absent.
                    None => WriteResult {
                        succeeded: true,
                        ..self.delete(key, events)
                    },
                }
            }
            WriteOp::PutWith {
                key,
                value,
                lease,
                ignore_value,
                ignore_lease,
            } => {
                if lease != 0 && !self.leases.contains_key(&lease) {
                    return Err(KvError::LeaseNotFound { id: lease });
                }
                if (ignore_value || ignore_lease) && !self.data.contains_key(&key) {
                    return Err(KvError::InvalidRequest(
                        crate::protocol::KEY_NOT_FOUND.into(),
                    ));
                }
                let (value, lease) = self.kept(&key, value, lease, ignore_value, ignore_lease);
                self.put(key, value, lease, events)
            }
            WriteOp::Txn(txn) => return self.transaction(txn, events),
            WriteOp::LeaseGrant { id, ttl } => return self.grant(id, ttl, index, owner),
            WriteOp::LeaseRevoke { id } => return self.revoke(id, events),
            WriteOp::Compact { revision } => return self.compact(revision),
            WriteOp::PublishMember { node, client_urls } => {
                self.members.insert(node, client_urls);
                self.bare_result(true)
            }
            // Handled before a session is looked up.
            WriteOp::OpenSession | WriteOp::LeaseExpire { .. } => self.bare_result(true),
        };
        if !prev_kv {
            result.previous = None;
        }
        Ok(result)
    }

    /// Runs a transaction as etcd does: first the branch every
    /// transaction (nested ones too) takes, from its comparisons on the
    /// store as it is; then the checks of what will run (a put that keeps
    /// the value or lease needs the key, a put's lease must exist; then a
    /// read's revision must be neither compacted nor ahead), any failing
    /// before anything changes; then the operations in order.
    fn transaction(
        &mut self,
        txn: crate::protocol::Txn,
        events: &mut Vec<WatchEvent>,
    ) -> Result<WriteResult, KvError> {
        let path = self.path(&txn);
        self.check_puts(&txn, &path)?;
        self.check_reads(&txn, &path)?;
        let before = TxnBase {
            data: self.data.clone(),
            revision: self.revision,
        };
        // The reads of one transaction hold one reply's worth together.
        let mut read_budget = MAX_SCAN_BYTES;
        let first_event = events.len();
        let responses = self.run_branch(txn, &path, &before, &mut read_budget, events)?;
        // As etcd's: an event's previous key-value is the key as it was at
        // the revision before (before the transaction, for a key it
        // changes twice), and a put that creates the key has none.
        for event in &mut events[first_event..] {
            let creates =
                event.kind == EventKind::Put && event.kv.create_revision == event.kv.mod_revision;
            event.prev = if creates {
                None
            } else {
                before.data.get(&event.kv.key).cloned()
            };
        }
        Ok(WriteResult {
            revision: self.revision,
            succeeded: path.holds,
            previous: None,
            responses,
        })
    }

    /// The value and lease a put with etcd's `ignore_value` and
    /// `ignore_lease` writes: the key's own where it keeps them (and the key
    /// exists), else the ones given.
    fn kept(
        &self,
        key: &Bytes,
        value: Bytes,
        lease: u64,
        ignore_value: bool,
        ignore_lease: bool,
    ) -> (Bytes, u64) {
        match self.data.get(key) {
            Some(kv) => (
                if ignore_value {
                    kv.value.clone()
                } else {
                    value
                },
                if ignore_lease { kv.lease } else { lease },
            ),
            None => (value, lease),
        }
    }

    /// Which branch `txn` and the transactions nested in the branch it
    /// takes run (etcd's `compareToPath`).
    fn path(&self, txn: &crate::protocol::Txn) -> TxnPath {
        let holds = txn.compares.iter().all(|c| self.compare(c));
        let branch = if holds { &txn.success } else { &txn.failure };
        TxnPath {
            holds,
            nested: branch
                .iter()
                .filter_map(|op| match op {
                    crate::protocol::TxnOp::Txn(nested) => Some(self.path(&nested.0)),
                    _ => None,
                })
                .collect(),
        }
    }

    /// The operations `path` runs, with the path of each nested
    /// transaction among them.
    fn each_op<'a>(
        txn: &'a crate::protocol::Txn,
        path: &'a TxnPath,
        visit: &mut dyn FnMut(&'a crate::protocol::TxnOp) -> Result<(), KvError>,
    ) -> Result<(), KvError> {
        let branch = if path.holds {
            &txn.success
        } else {
            &txn.failure
        };
        let mut nested = path.nested.iter();
        for op in branch {
            if let crate::protocol::TxnOp::Txn(inner) = op
                && let Some(inner_path) = nested.next()
            {
                Self::each_op(&inner.0, inner_path, visit)?;
            } else {
                visit(op)?;
            }
        }
        Ok(())
    }

    /// etcd's checks of the puts that will run, on the store before them.
    fn check_puts(&self, txn: &crate::protocol::Txn, path: &TxnPath) -> Result<(), KvError> {
        Self::each_op(txn, path, &mut |op| {
            if let crate::protocol::TxnOp::Put {
                key,
                lease,
                ignore_value,
                ignore_lease,
                ..
            } = op
            {
                if (*ignore_value || *ignore_lease) && !self.data.contains_key(key) {
                    return Err(KvError::InvalidRequest(
                        crate::protocol::KEY_NOT_FOUND.into(),
                    ));
                }
                if *lease != 0 && !self.leases.contains_key(lease) {
                    return Err(KvError::LeaseNotFound { id: *lease });
                }
            }
            Ok(())
        })
    }

    /// etcd's checks of the reads at a revision that will run.
    fn check_reads(&self, txn: &crate::protocol::Txn, path: &TxnPath) -> Result<(), KvError> {
        Self::each_op(txn, path, &mut |op| match op {
            // etcd's first revision is its last compaction's, -1 before any.
            crate::protocol::TxnOp::Range { revision, .. }
                if *revision != 0 && *revision < self.compacted.map_or(-1, |c| c as i64) =>
            {
                Err(KvError::Compacted {
                    requested: (*revision).max(0) as u64,
                    oldest: self.compacted.unwrap_or(0),
                })
            }
            crate::protocol::TxnOp::Range { revision, .. } => {
                self.check_revision(u64::try_from(*revision).unwrap_or(0))
            }
            _ => Ok(()),
        })
    }

    /// Whether the store can be read at `revision` (0: the latest).
    fn check_revision(&self, revision: u64) -> Result<(), KvError> {
        if revision > self.revision {
            return Err(KvError::FutureRevision {
                requested: revision,
                current: self.revision,
            });
        }
        if let Some(compacted) = self.compacted
            && revision != 0
            && revision < compacted
        {
            return Err(KvError::Compacted {
                requested: revision,
                oldest: compacted,
            });
        }
        Ok(())
    }

    /// Runs the branch `path` chose of `txn`.
    fn run_branch(
        &mut self,
        txn: crate::protocol::Txn,
        path: &TxnPath,
        before: &TxnBase,
        read_budget: &mut usize,
        events: &mut Vec<WatchEvent>,
    ) -> Result<Vec<TxnOpResult>, KvError> {
        use crate::protocol::TxnOp;
        let branch = if path.holds { txn.success } else { txn.failure };
        let mut nested = path.nested.iter();
        let mut responses = Vec::with_capacity(branch.len());
        for op in branch {
            responses.push(match op {
                TxnOp::Put {
                    key,
                    value,
                    prev_kv,
                    lease,
                    ignore_value,
                    ignore_lease,
                } => {
                    let (value, lease) = self.kept(&key, value, lease, ignore_value, ignore_lease);
                    let previous = self.put(key, value, lease, events).previous;
                    TxnOpResult::Put {
                        previous: previous.filter(|_| prev_kv),
                    }
                }
                TxnOp::Delete { keys, prev_kv } => {
                    let mut previous = Vec::new();
                    let mut deleted = 0;
                    for key in self.keys_of(&keys) {
                        if let Some(kv) = self.delete(key, events).previous {
                            deleted += 1;
                            if prev_kv {
                                previous.push(kv);
                            }
                        }
                    }
                    TxnOpResult::Delete { deleted, previous }
                }
                TxnOp::Range {
                    keys,
                    limit,
                    revision,
                } => {
                    let revision = u64::try_from(revision).unwrap_or(0);
                    let (start, end) = keys.bounds().unwrap_or_else(|| {
                        (
                            keys.key.clone(),
                            Some(crate::protocol::key_after(&keys.key)),
                        )
                    });
                    let limit = if limit == 0 { MAX_SCAN_LIMIT } else { limit };
                    let (kvs, more) = if *read_budget == 0 {
                        // Spent: nothing more is read, only whether there was.
                        (Vec::new(), true)
                    } else if revision == 0 {
                        // The transaction's own view (check_reads refused a
                        // revision past the one before it).
                        scan(&self.data, &start, end.as_ref(), limit, *read_budget)
                    } else {
                        self.scan_past(
                            &before.data,
                            before.revision,
                            revision,
                            &start,
                            end.as_ref(),
                            limit,
                            *read_budget,
                        )?
                    };
                    let used: usize = kvs
                        .iter()
                        .map(|kv| kv.key.len() + kv.value.len() + SCAN_ENTRY_OVERHEAD)
                        .sum();
                    *read_budget = read_budget.saturating_sub(used);
                    TxnOpResult::Range { kvs, more }
                }
                TxnOp::Txn(inner) => {
                    let Some(inner_path) = nested.next() else {
                        return Err(KvError::Internal("a nested transaction has no path".into()));
                    };
                    let responses =
                        self.run_branch(*inner.0, inner_path, before, read_budget, events)?;
                    TxnOpResult::Txn {
                        succeeded: inner_path.holds,
                        responses,
                    }
                }
            });
        }
        Ok(responses)
    }

    /// A page of `data` (the store at `now`) as it was at the earlier
    /// `revision`: from a state kept for paged scans, else from the watch
    /// history's record of what changed since; `Compacted` when neither
    /// reaches back.
    #[allow(clippy::too_many_arguments)]
    fn scan_past(
        &self,
        data: &OrdMap<Bytes, KeyValue>,
        now: u64,
        revision: u64,
        start: &Bytes,
        end: Option<&Bytes>,
        limit: u32,
        max_bytes: usize,
    ) -> Result<(Vec<KeyValue>, bool), KvError> {
        if revision == now {
            return Ok(scan(data, start, end, limit, max_bytes));
        }
        if let Some(kept) = self.views.get(revision) {
            return Ok(scan(&kept, start, end, limit, max_bytes));
        }
        match self.watch.as_of(revision, start, end.map(|e| &e[..])) {
            Some(then) => Ok(scan_as_of(data, &then, start, end, limit, max_bytes)),
            None => Err(KvError::Compacted {
                requested: revision,
                oldest: now,
            }),
        }
    }

    /// Grants a lease; `id` 0 takes the log index of the grant (or the next
    /// free id above it), so every replica chooses the same.
    fn grant(
        &mut self,
        id: u64,
        ttl: u64,
        index: Index,
        owner: &str,
    ) -> Result<WriteResult, KvError> {
        if self.leases.len() >= MAX_LEASES {
            return Err(KvError::LimitReached(format!(
                "the cluster holds {MAX_LEASES} leases, its most; revoke leases no longer used"
            )));
        }
        let owned = self.leases.values().filter(|l| l.owner == owner).count();
        if owned >= MAX_LEASES_PER_CLIENT {
            return Err(KvError::LimitReached(format!(
                "client {owner} holds {MAX_LEASES_PER_CLIENT} leases, the most one client may; \
                 revoke leases it no longer uses"
            )));
        }
        let id = if id == 0 {
            let mut id = index.max(1);
            while self.leases.contains_key(&id) {
                id += 1;
            }
            id
        } else if self.leases.contains_key(&id) {
            return Err(KvError::LeaseExists { id });
        } else {
            id
        };
        let ttl = ttl.clamp(MIN_LEASE_TTL, MAX_LEASE_TTL);
        self.leases.insert(
            id,
            LeaseState {
                ttl,
                keys: imbl::OrdSet::new(),
                owner: owner.to_owned(),
                granted: index,
            },
        );
        Ok(WriteResult {
            revision: self.revision,
            succeeded: true,
            previous: None,
            responses: vec![TxnOpResult::LeaseGranted { id, ttl }],
        })
    }

    /// etcd's compaction at `revision`: refused at or below an earlier one
    /// (it is compacted already) and above the store's revision.
    fn compact(&mut self, revision: u64) -> Result<WriteResult, KvError> {
        if let Some(compacted) = self.compacted
            && revision <= compacted
        {
            return Err(KvError::Compacted {
                requested: revision,
                oldest: compacted,
            });
        }
        if revision > self.revision {
            return Err(KvError::FutureRevision {
                requested: revision,
                current: self.revision,
            });
        }
        self.compacted = Some(revision);
        self.watch.compact(revision);
        Ok(self.bare_result(true))
    }

    /// Ends a lease, deleting its keys (each delete its own revision).
    fn revoke(&mut self, id: u64, events: &mut Vec<WatchEvent>) -> Result<WriteResult, KvError> {
        let Some(lease) = self.leases.remove(&id) else {
            return Err(KvError::LeaseNotFound { id });
        };
        for key in lease.keys {
            self.delete(key, events);
        }
        Ok(self.bare_result(true))
    }

    /// Moves `key` from the lease it lived by to `lease` (either may be 0).
    fn attach(&mut self, key: &Bytes, from: u64, to: u64) {
        if from == to {
            return;
        }
        if from != 0
            && let Some(lease) = self.leases.get_mut(&from)
        {
            lease.keys.remove(key);
        }
        if to != 0
            && let Some(lease) = self.leases.get_mut(&to)
        {
            lease.keys.insert(key.clone());
        }
    }

    /// The keys a range names that exist now.
    fn keys_of(&self, keys: &crate::protocol::KeyRange) -> Vec<Bytes> {
        match keys.bounds() {
            None => vec![keys.key.clone()],
            Some((start, end)) => self
                .data
                .range(start..)
                .map(|(key, _)| key)
                .take_while(|key| end.as_ref().is_none_or(|end| *key < end))
                .cloned()
                .collect(),
        }
    }

    /// Whether a transaction's comparison holds.
    fn compare(&self, compare: &crate::protocol::Compare) -> bool {
        use crate::protocol::{CompareResult, CompareTarget};
        use std::cmp::Ordering;
        let one = |kv: Option<&KeyValue>| {
            let ordering = match (&compare.target, kv) {
                // A missing key fails every value comparison (as in etcd).
                (CompareTarget::Value(_), None) => return false,
                (CompareTarget::Value(value), Some(kv)) => kv.value.as_ref().cmp(value.as_ref()),
                (CompareTarget::Version(v), kv) => kv.map_or(0, |kv| kv.version).cmp(v),
                (CompareTarget::CreateRevision(r), kv) => {
                    kv.map_or(0, |kv| kv.create_revision).cmp(r)
                }
                (CompareTarget::ModRevision(r), kv) => kv.map_or(0, |kv| kv.mod_revision).cmp(r),
                (CompareTarget::Lease(lease), kv) => kv.map_or(0, |kv| kv.lease).cmp(lease),
            };
            match compare.result {
                CompareResult::Equal => ordering == Ordering::Equal,
                CompareResult::NotEqual => ordering != Ordering::Equal,
                CompareResult::Less => ordering == Ordering::Less,
                CompareResult::Greater => ordering == Ordering::Greater,
            }
        };
        match compare.keys.bounds() {
            None => one(self.data.get(&compare.keys.key)),
            Some(_) => {
                let keys = self.keys_of(&compare.keys);
                if keys.is_empty() {
                    return one(None);
                }
                keys.iter().all(|key| one(self.data.get(key)))
            }
        }
    }

    /// Sets `key`, living by `lease` (0: none; the caller checked that it
    /// exists).
    fn put(
        &mut self,
        key: Bytes,
        value: Bytes,
        lease: u64,
        events: &mut Vec<WatchEvent>,
    ) -> WriteResult {
        self.change_revision();
        let previous = self.data.get(&key).cloned();
        self.attach(&key, previous.as_ref().map_or(0, |p| p.lease), lease);
        self.written += VIEW_WRITE_COST
            + previous
                .as_ref()
                .map_or(0, |p| (p.key.len() + p.value.len()) as u64);
        let kv = KeyValue {
            key: key.clone(),
            value,
            create_revision: previous
                .as_ref()
                .map_or(self.revision, |p| p.create_revision),
            mod_revision: self.revision,
            version: previous.as_ref().map_or(1, |p| p.version + 1),
            lease,
        };
        events.push(WatchEvent {
            revision: self.revision,
            kind: EventKind::Put,
            kv: kv.clone(),
            prev: previous.clone(),
        });
        self.data.insert(key, kv);
        WriteResult {
            revision: self.revision,
            succeeded: true,
            previous,
            responses: Vec::new(),
        }
    }

    fn delete(&mut self, key: Bytes, events: &mut Vec<WatchEvent>) -> WriteResult {
        let Some(previous) = self.data.remove(&key) else {
            return self.bare_result(false);
        };
        self.attach(&key, previous.lease, 0);
        self.change_revision();
        self.written += VIEW_WRITE_COST + (previous.key.len() + previous.value.len()) as u64;
        events.push(WatchEvent {
            revision: self.revision,
            kind: EventKind::Delete,
            kv: KeyValue {
                key,
                value: Bytes::new(),
                create_revision: 0,
                mod_revision: self.revision,
                version: 0,
                lease: 0,
            },
            prev: Some(previous.clone()),
        });
        WriteResult {
            revision: self.revision,
            succeeded: true,
            previous: Some(previous),
            responses: Vec::new(),
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
        if self.written > 0 {
            self.views.written(std::mem::take(&mut self.written));
        }
        outputs
    }

    fn applied_index(&self) -> Index {
        self.applied.index
    }

    fn snapshot(&self) -> SnapshotBuilder {
        let (data, sessions, leases, revision, applied, sessions_bytes) = (
            self.data.clone(),
            self.sessions.clone(),
            self.leases.clone(),
            self.revision,
            self.applied,
            self.sessions_bytes,
        );
        let compacted = self.compacted;
        let members: Vec<(u64, Vec<String>)> = self
            .members
            .iter()
            .map(|(id, urls)| (*id, urls.clone()))
            .collect();
        Box::new(move || {
            // Encoded straight from the maps into a buffer sized up front:
            // no copy of the state and no regrowing (the buffer is as large
            // as the state, gigabytes for a large one).
            let snapshot = SnapshotView {
                applied,
                revision,
                data: Seq(&data),
                sessions: Seq(&sessions),
                leases: Seq(&leases),
                compacted,
                members,
            };
            let estimate = data
                .values()
                .map(|kv| kv.key.len() + kv.value.len() + 40)
                .sum::<usize>()
                + sessions_bytes as usize
                + leases.len() * 20
                + 64;
            postcard::to_extend(&snapshot, Vec::with_capacity(estimate))
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
        self.leases = snapshot
            .leases
            .iter()
            .map(|(id, ttl, owner, granted)| {
                let lease = LeaseState {
                    ttl: *ttl,
                    keys: imbl::OrdSet::new(),
                    owner: owner.clone(),
                    granted: *granted,
                };
                (*id, lease)
            })
            .collect();
        for kv in &snapshot.data {
            if let Some(lease) = self.leases.get_mut(&kv.lease) {
                lease.keys.insert(kv.key.clone());
            }
        }
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
        self.sessions_bytes = 0;
        self.sessions = snapshot
            .sessions
            .into_iter()
            .map(|(id, mut state)| {
                state.bytes = state.results.values().map(result_bytes).sum();
                self.sessions_bytes += SESSION_OVERHEAD_BYTES + state.bytes;
                (id, state)
            })
            .collect();
        self.revision = snapshot.revision;
        self.compacted = snapshot.compacted;
        self.members = snapshot.members.iter().cloned().collect();
        self.applied = snapshot.applied;
        // Watchers must not be fed history they can no longer get in order.
        self.watch.reset(self.revision);
        self.views.clear();
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
            payload: EntryPayload::Command(
                Command {
                    session,
                    op,
                    prev_kv: true,
                    owner: "tester".into(),
                }
                .encode(),
            ),
        }
    }

    fn open_session(index: Index) -> Entry {
        Entry {
            term: 1,
            index,
            payload: EntryPayload::Command(Command::open_session("tester".into()).encode()),
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

    fn range_of(key: &str, range_end: &[u8]) -> crate::protocol::KeyRange {
        crate::protocol::KeyRange {
            key: Bytes::copy_from_slice(key.as_bytes()),
            range_end: Bytes::copy_from_slice(range_end),
        }
    }

    fn result_of(out: Vec<(LogId, Result<WriteResult, KvError>)>) -> WriteResult {
        out.into_iter()
            .next()
            .expect("one result")
            .1
            .expect("applied")
    }

    /// etcd's transactions: the comparisons choose the branch; each
    /// operation sees the ones before it; a missing key has version 0 and
    /// fails value comparisons; a range comparison holds for every key; a
    /// retried transaction applies once.
    #[test]
    fn transactions_compare_then_run_one_branch() {
        use crate::protocol::{Compare, CompareResult, CompareTarget, Txn, TxnOp, TxnOpResult};
        let mut sm = store();
        sm.apply(&[entry(1, 7, 1, put("a/1", "x"))]);
        sm.apply(&[entry(2, 7, 2, put("a/2", "x"))]);
        let compare = |key: &str, end: &[u8], target, result| Compare {
            keys: range_of(key, end),
            target,
            result,
        };
        let txn = Txn {
            compares: vec![
                compare(
                    "a/",
                    b"a0",
                    CompareTarget::Value(Bytes::from_static(b"x")),
                    CompareResult::Equal,
                ),
                compare(
                    "missing",
                    b"",
                    CompareTarget::Version(0),
                    CompareResult::Equal,
                ),
                compare(
                    "a/1",
                    b"",
                    CompareTarget::ModRevision(2),
                    CompareResult::Equal,
                ),
            ],
            success: vec![
                TxnOp::Put {
                    key: Bytes::from_static(b"a/3"),
                    value: Bytes::from_static(b"y"),
                    prev_kv: false,
                    lease: 0,
                    ignore_value: false,
                    ignore_lease: false,
                },
                TxnOp::Range {
                    keys: range_of("a/", b"a0"),
                    limit: 0,
                    revision: 0,
                },
                TxnOp::Delete {
                    keys: range_of("a/", b"a0"),
                    prev_kv: true,
                },
            ],
            failure: vec![TxnOp::Put {
                key: Bytes::from_static(b"failed"),
                value: Bytes::from_static(b"1"),
                prev_kv: false,
                lease: 0,
                ignore_value: false,
                ignore_lease: false,
            }],
        };
        let first = result_of(sm.apply(&[entry(3, 7, 3, WriteOp::Txn(txn.clone()))]));
        assert!(first.succeeded);
        assert_eq!(
            first.revision, 4,
            "a put and three deletes: one revision, the transaction's (as etcd)"
        );
        let TxnOpResult::Range { kvs, more } = &first.responses[1] else {
            panic!()
        };
        assert_eq!(
            (kvs.len(), *more),
            (3, false),
            "the range saw the put before it"
        );
        let TxnOpResult::Delete { deleted, previous } = &first.responses[2] else {
            panic!()
        };
        assert_eq!((*deleted, previous.len()), (3, 3));
        assert!(sm.data.is_empty());
        // The same entry again (a client retry): applied once, same answer.
        let again = result_of(sm.apply(&[entry(4, 7, 3, WriteOp::Txn(txn.clone()))]));
        assert_eq!(again, first);
        assert_eq!(sm.revision(), 4);
        // Now a/1 is missing: its value comparison fails, the other branch runs.
        let second = result_of(sm.apply(&[entry(5, 7, 4, WriteOp::Txn(txn.clone()))]));
        assert!(!second.succeeded);
        assert!(sm.data.contains_key(&Bytes::from_static(b"failed")));
        // Its retry too applies once: the branch that ran changed the store,
        // though the comparison failed.
        let revision = sm.revision();
        let retried = result_of(sm.apply(&[entry(6, 7, 4, WriteOp::Txn(txn))]));
        assert_eq!((retried, sm.revision()), (second, revision));
        // Less and greater compare the key's side with the given one.
        let lesser = Txn {
            compares: vec![compare(
                "failed",
                b"",
                CompareTarget::CreateRevision(9),
                CompareResult::Less,
            )],
            ..Txn::default()
        };
        assert!(result_of(sm.apply(&[entry(7, 7, 5, WriteOp::Txn(lesser))])).succeeded);
    }

    /// A transaction's reads hold one reply's worth of bytes together, not
    /// one per read: 128 reads of a large range would otherwise build a
    /// gigabyte on every replica.
    #[test]
    fn the_reads_of_a_transaction_are_bounded_together() {
        use crate::protocol::{Txn, TxnOp, TxnOpResult};
        let mut sm = store();
        let value = "v".repeat(1 << 20);
        for i in 0..20u64 {
            sm.apply(&[entry(i + 1, 7, i + 1, put(&format!("big/{i:02}"), &value))]);
        }
        let read = TxnOp::Range {
            keys: range_of("big/", b"big0"),
            limit: 0,
            revision: 0,
        };
        let txn = Txn {
            success: vec![read; 10],
            ..Txn::default()
        };
        let write = TxnOp::Put {
            key: Bytes::from_static(b"w"),
            value: Bytes::from_static(b"1"),
            prev_kv: false,
            lease: 0,
            ignore_value: false,
            ignore_lease: false,
        };
        let mut txn = txn;
        txn.success.push(write);
        let result = result_of(sm.apply(&[entry(21, 7, 21, WriteOp::Txn(txn))]));
        let read: usize = result
            .responses
            .iter()
            .map(|r| match r {
                TxnOpResult::Range { kvs, .. } => kvs.iter().map(|kv| kv.value.len()).sum(),
                _ => 0,
            })
            .sum();
        assert!(
            read <= MAX_SCAN_BYTES + MAX_VALUE_LEN,
            "{read} bytes read by one transaction"
        );
        assert!(
            matches!(&result.responses[9], TxnOpResult::Range { kvs, more: true } if kvs.is_empty())
        );
    }

    #[test]
    fn retried_write_applies_once() {
        let mut sm = store();
        let first = sm.apply(&[entry(1, 7, 1, put("k", "a"))]);
        // The same session and sequence again (a client retry that also got
        // committed): same answer, no second write.
        let again = sm.apply(&[entry(2, 7, 1, put("k", "a"))]);
        assert_eq!(first[0].1, again[0].1);
        assert_eq!(sm.revision(), 2);
        let next = sm.apply(&[entry(3, 7, 2, put("k", "b"))]);
        assert_eq!(next[0].1.as_ref().unwrap().revision, 3);
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

    fn leased_put(key: &str, lease: u64) -> WriteOp {
        WriteOp::Txn(crate::protocol::Txn {
            success: vec![crate::protocol::TxnOp::Put {
                key: Bytes::copy_from_slice(key.as_bytes()),
                value: Bytes::from_static(b"v"),
                prev_kv: false,
                lease,
                ignore_value: false,
                ignore_lease: false,
            }],
            ..crate::protocol::Txn::default()
        })
    }

    fn granted(result: &WriteResult) -> (u64, u64) {
        match result.responses.as_slice() {
            [TxnOpResult::LeaseGranted { id, ttl }] => (*id, *ttl),
            other => panic!("not a grant: {other:?}"),
        }
    }

    fn keys_of_lease(sm: &KvStateMachine, id: u64) -> Vec<String> {
        let mut keys: Vec<String> = sm
            .lease(id)
            .expect("the lease exists")
            .1
            .iter()
            .map(|k| String::from_utf8_lossy(k).into_owned())
            .collect();
        keys.sort();
        keys
    }

    /// Leases as etcd has them: a grant takes no revision; keys put with a
    /// lease live by it; a put without one, or a delete, detaches the key;
    /// a revoke deletes the keys still attached, each a delete event; a put
    /// naming a missing lease changes nothing.
    /// Outside review (etcd exactness): a transaction, a range delete and a
    /// lease revoke each took one revision per key they changed, so a read
    /// at a revision in between showed a state that never existed. Now one
    /// write takes one revision, as in etcd: every key it changes carries
    /// it, and its watch events share it.
    #[test]
    fn one_write_takes_one_revision() {
        use crate::protocol::{Txn, TxnOp};
        let mut sm = store();
        let hub = sm.watch.clone();
        for (i, key) in ["a/1", "a/2", "a/3"].iter().enumerate() {
            let i = i as u64;
            result_of(sm.apply(&[entry(1 + i, 1, 1 + i, put(key, "v"))]));
        }
        assert_eq!(sm.revision(), 4);
        let rename = Txn {
            compares: Vec::new(),
            success: vec![
                TxnOp::Delete {
                    keys: range_of("a/1", b""),
                    prev_kv: false,
                },
                TxnOp::Put {
                    key: Bytes::from_static(b"b"),
                    value: Bytes::from_static(b"moved"),
                    prev_kv: false,
                    lease: 0,
                    ignore_value: false,
                    ignore_lease: false,
                },
                TxnOp::Put {
                    key: Bytes::from_static(b"c"),
                    value: Bytes::from_static(b"new"),
                    prev_kv: false,
                    lease: 0,
                    ignore_value: false,
                    ignore_lease: false,
                },
            ],
            failure: Vec::new(),
        };
        let renamed = result_of(sm.apply(&[entry(4, 1, 4, WriteOp::Txn(rename))]));
        assert_eq!(renamed.revision, 5, "one revision for the transaction");
        let b = sm
            .read(&ReadOp::Get {
                key: Bytes::from_static(b"b"),
            })
            .unwrap();
        let c = sm
            .read(&ReadOp::Get {
                key: Bytes::from_static(b"c"),
            })
            .unwrap();
        assert_eq!((b.kvs[0].mod_revision, c.kvs[0].mod_revision), (5, 5));
        assert_eq!((b.kvs[0].create_revision, b.kvs[0].version), (5, 1));
        // The state at revision 4 is the one before the transaction: no
        // revision shows half of it.
        let before = sm
            .read(&ReadOp::Scan {
                start: Bytes::new(),
                end: None,
                limit: 100,
                revision: 4,
            })
            .unwrap();
        let keys: Vec<_> = before.kvs.iter().map(|kv| kv.key.clone()).collect();
        assert_eq!(keys, ["a/1", "a/2", "a/3"]);
        // Its events share its revision, and a watch from revision 5 sees
        // them all.
        let mut watcher = hub
            .subscribe(crate::protocol::Selector::Prefix(Bytes::new()), 5, "t")
            .unwrap();
        let mut seen = Vec::new();
        while let Some(message) = watcher.try_next() {
            if let crate::protocol::WatchMessage::Events(events) = message {
                seen.extend(events.into_iter().map(|e| (e.revision, e.kv.key)));
            }
        }
        assert_eq!(
            seen,
            [
                (5, Bytes::from_static(b"a/1")),
                (5, Bytes::from_static(b"b")),
                (5, Bytes::from_static(b"c"))
            ]
        );
        // A range delete of two keys: one revision.
        let deleted = result_of(sm.apply(&[entry(
            5,
            1,
            5,
            WriteOp::Txn(Txn {
                compares: Vec::new(),
                success: vec![TxnOp::Delete {
                    keys: range_of("a/", b"a0"),
                    prev_kv: false,
                }],
                failure: Vec::new(),
            }),
        )]));
        assert_eq!(deleted.revision, 6);
        // A lease revoked with two keys: one revision.
        let lease = granted(&result_of(sm.apply(&[entry(
            6,
            1,
            6,
            WriteOp::LeaseGrant { id: 0, ttl: 60 },
        )])))
        .0;
        result_of(sm.apply(&[entry(7, 1, 7, leased_put("l/1", lease))]));
        result_of(sm.apply(&[entry(8, 1, 8, leased_put("l/2", lease))]));
        assert_eq!(sm.revision(), 8);
        let revoked = result_of(sm.apply(&[entry(9, 1, 9, WriteOp::LeaseRevoke { id: lease })]));
        assert_eq!(revoked.revision, 9, "both keys deleted at one revision");
        // A write that changes nothing takes no revision.
        let nothing = sm.apply(&[entry(
            10,
            1,
            10,
            WriteOp::Delete {
                key: Bytes::from_static(b"gone"),
            },
        )]);
        assert_eq!(nothing[0].1.as_ref().unwrap().revision, 9);
    }

    /// One client identity holds at most [`MAX_LEASES_PER_CLIENT`] leases
    /// (an outside review: one identity took all 100,000 and every other
    /// identity's grant was refused); another identity still gets one, and
    /// a lease remembers its owner, in snapshots too.
    #[test]
    fn leases_are_counted_per_owner() {
        let mut sm = KvStateMachine::new(Arc::new(WatchHub::new(100)));
        let open = |index: Index, owner: &str| Entry {
            term: 1,
            index,
            payload: EntryPayload::Command(Command::open_session(owner.into()).encode()),
        };
        let grant = |index: Index, session: Index, seq: u64, owner: &str| Entry {
            term: 1,
            index,
            payload: EntryPayload::Command(
                Command {
                    session: Session {
                        client_id: session,
                        sequence: seq,
                        first_outstanding: seq,
                    },
                    op: WriteOp::LeaseGrant { id: 0, ttl: 60 },
                    prev_kv: false,
                    owner: owner.into(),
                }
                .encode(),
            ),
        };
        sm.apply(&[open(1, "greedy"), open(2, "other")]);
        let mut index = 3;
        let entries: Vec<Entry> = (1..=MAX_LEASES_PER_CLIENT as u64 + 1)
            .map(|seq| {
                index += 1;
                grant(index, 1, seq, "greedy")
            })
            .collect();
        let out = sm.apply(&entries);
        assert!(out[..MAX_LEASES_PER_CLIENT].iter().all(|(_, r)| r.is_ok()));
        match &out[MAX_LEASES_PER_CLIENT].1 {
            Err(KvError::LimitReached(message)) => {
                assert!(message.contains("client greedy holds"), "{message}")
            }
            other => panic!("a grant past the per-client limit: {other:?}"),
        }
        assert_eq!(sm.leases().len(), MAX_LEASES_PER_CLIENT);
        let out = sm.apply(&[grant(index + 1, 2, 1, "other")]);
        let id = granted(out[0].1.as_ref().unwrap()).0;
        assert_eq!(sm.lease_owner(id), Some("other"));
        let data = (sm.snapshot())().unwrap();
        let meta = SnapshotMeta {
            last: LogId::new(1, index + 1),
            ..SnapshotMeta::default()
        };
        let mut restored = KvStateMachine::new(Arc::new(WatchHub::new(100)));
        restored.restore(&meta, &data).unwrap();
        assert_eq!(restored.lease_owner(id), Some("other"));
        assert_eq!(restored.digest(), sm.digest());
    }

    #[test]
    fn leases_are_granted_hold_keys_and_take_them_when_revoked() {
        let mut sm = store();
        let hub = sm.watch.clone();
        let mut watcher = hub
            .subscribe(crate::protocol::Selector::Prefix(Bytes::new()), 0, "t")
            .unwrap();
        let grant = result_of(sm.apply(&[entry(1, 1, 1, WriteOp::LeaseGrant { id: 0, ttl: 1 })]));
        // The store chose the grant's log index, and raised the TTL.
        assert_eq!(granted(&grant), (OFFSET + 1, MIN_LEASE_TTL));
        assert_eq!(grant.revision, FIRST_REVISION, "a grant takes no revision");
        let lease = OFFSET + 1;
        for (i, key) in ["a", "b", "c", "d"].iter().enumerate() {
            let i = i as u64;
            result_of(sm.apply(&[entry(2 + i, 1, 2 + i, leased_put(key, lease))]));
        }
        assert_eq!(keys_of_lease(&sm, lease), ["a", "b", "c", "d"]);
        let kv = sm
            .read(&ReadOp::Get {
                key: Bytes::from_static(b"a"),
            })
            .unwrap();
        assert_eq!(kv.kvs[0].lease, lease);
        // "b" is put again without the lease, "c" deleted: both detached.
        result_of(sm.apply(&[entry(6, 1, 6, put("b", "kept"))]));
        result_of(sm.apply(&[entry(
            7,
            1,
            7,
            WriteOp::Delete {
                key: Bytes::from_static(b"c"),
            },
        )]));
        assert_eq!(keys_of_lease(&sm, lease), ["a", "d"]);
        // A put naming a lease that does not exist fails, changing nothing.
        let before = (sm.revision(), sm.digest());
        let out = sm.apply(&[entry(8, 1, 8, leased_put("x", 999))]);
        assert_eq!(out[0].1, Err(KvError::LeaseNotFound { id: 999 }));
        assert_eq!((sm.revision(), sm.digest()), before);
        // Granting an id in use is refused.
        let out = sm.apply(&[entry(9, 1, 9, WriteOp::LeaseGrant { id: lease, ttl: 5 })]);
        assert_eq!(out[0].1, Err(KvError::LeaseExists { id: lease }));
        // Revoked: "a" and "d" go, each with a delete event, both at one
        // revision (as etcd); "b" stays.
        while watcher.try_next().is_some() {}
        let revision = sm.revision();
        let revoke = result_of(sm.apply(&[entry(10, 1, 10, WriteOp::LeaseRevoke { id: lease })]));
        assert_eq!(revoke.revision, revision + 1);
        assert!(sm.lease(lease).is_none());
        assert!(sm.leases().is_empty());
        let mut deleted = Vec::new();
        while let Some(message) = watcher.try_next() {
            if let crate::protocol::WatchMessage::Events(events) = message {
                for event in events {
                    assert_eq!(event.kind, EventKind::Delete);
                    deleted.push(event.kv.key);
                }
            }
        }
        assert_eq!(
            deleted,
            [Bytes::from_static(b"a"), Bytes::from_static(b"d")]
        );
        let get = |key: &'static [u8]| {
            sm.read(&ReadOp::Get {
                key: Bytes::from_static(key),
            })
            .unwrap()
            .kvs
        };
        assert!(get(b"a").is_empty());
        assert_eq!(get(b"b")[0].value, Bytes::from_static(b"kept"));
        // Revoking it again: not found.
        let out = sm.apply(&[entry(11, 1, 11, WriteOp::LeaseRevoke { id: lease })]);
        assert_eq!(out[0].1, Err(KvError::LeaseNotFound { id: lease }));
    }

    /// A scan at a past revision that no paged scan kept is read from the
    /// watch history (etcd's `get --rev`): keys changed since as they were,
    /// keys created since absent, keys deleted since present, paged at that
    /// revision; once the history no longer reaches back, `Compacted`.
    #[test]
    fn a_scan_reads_a_past_revision_from_the_history() {
        let mut sm = KvStateMachine::new(Arc::new(WatchHub::new(8)));
        sm.apply(&[open_session(1)]);
        let mut index = 0;
        let mut write = |sm: &mut KvStateMachine, op: WriteOp| {
            index += 1;
            result_of(sm.apply(&[entry(index, 1, index, op)]));
        };
        for key in ["a", "b", "c"] {
            write(&mut sm, put(key, "1"));
        }
        let del = |key: &'static str| WriteOp::Delete {
            key: Bytes::from_static(key.as_bytes()),
        };
        // Revisions 5 to 9.
        write(&mut sm, put("b", "2"));
        write(&mut sm, del("c"));
        write(&mut sm, put("d", "1"));
        write(&mut sm, put("a", "2"));
        write(&mut sm, put("a", "3"));
        let at = |sm: &KvStateMachine, revision: u64, start: &str, limit: u32| {
            sm.read(&ReadOp::Scan {
                start: Bytes::copy_from_slice(start.as_bytes()),
                end: None,
                limit,
                revision,
            })
            .map(|r| {
                assert_eq!(r.revision, revision);
                let kvs: Vec<String> = r
                    .kvs
                    .iter()
                    .map(|kv| {
                        format!(
                            "{}={}@{}",
                            String::from_utf8_lossy(&kv.key),
                            String::from_utf8_lossy(&kv.value),
                            kv.mod_revision
                        )
                    })
                    .collect();
                (kvs, r.more)
            })
        };
        assert_eq!(at(&sm, 4, "", 10).unwrap().0, ["a=1@2", "b=1@3", "c=1@4"]);
        assert_eq!(at(&sm, 6, "", 10).unwrap().0, ["a=1@2", "b=2@5"]);
        assert_eq!(at(&sm, 8, "", 10).unwrap().0, ["a=2@8", "b=2@5", "d=1@7"]);
        assert_eq!(at(&sm, 9, "", 10).unwrap().0, ["a=3@9", "b=2@5", "d=1@7"]);
        // Paged at the past revision.
        assert_eq!(
            at(&sm, 4, "", 2).unwrap(),
            (vec!["a=1@2".into(), "b=1@3".into()], true)
        );
        assert_eq!(at(&sm, 4, "b\0", 2).unwrap(), (vec!["c=1@4".into()], false));
        // The history (8 events) moves past revision 5: revision 4 is gone.
        for _ in 0..8 {
            write(&mut sm, put("e", "x"));
        }
        assert!(matches!(
            at(&sm, 4, "", 10),
            Err(KvError::Compacted { requested: 4, .. })
        ));
        assert_eq!(at(&sm, 9, "", 10).unwrap().0, ["a=3@9", "b=2@5", "d=1@7"]);
    }

    /// Every event carries the key as it was before the write (etcd's
    /// `prev_kv` on watches): none for a key created, the old value for an
    /// overwrite, the deleted key-value for a delete.
    #[test]
    fn events_carry_the_key_as_it_was() {
        let mut sm = store();
        let mut watcher = sm
            .watch
            .subscribe(crate::protocol::Selector::Prefix(Bytes::new()), 0, "t")
            .unwrap();
        sm.apply(&[entry(1, 1, 1, put("k", "a"))]);
        sm.apply(&[entry(2, 1, 2, put("k", "b"))]);
        sm.apply(&[entry(
            3,
            1,
            3,
            WriteOp::Delete {
                key: Bytes::from_static(b"k"),
            },
        )]);
        let mut prevs = Vec::new();
        while let Some(message) = watcher.try_next() {
            if let crate::protocol::WatchMessage::Events(events) = message {
                prevs.extend(
                    events
                        .into_iter()
                        .map(|e| e.prev.map(|p| (p.value, p.mod_revision))),
                );
            }
        }
        assert_eq!(
            prevs,
            [
                None,
                Some((Bytes::from_static(b"a"), 2)),
                Some((Bytes::from_static(b"b"), 3))
            ]
        );
    }

    /// A grant retried in its session answers the first grant's lease: one
    /// lease, not two.
    #[test]
    fn a_retried_grant_grants_once() {
        let mut sm = store();
        let first = result_of(sm.apply(&[entry(1, 1, 1, WriteOp::LeaseGrant { id: 0, ttl: 30 })]));
        let again = result_of(sm.apply(&[entry(2, 1, 1, WriteOp::LeaseGrant { id: 0, ttl: 30 })]));
        assert_eq!(granted(&first), granted(&again));
        assert_eq!(sm.leases(), vec![(OFFSET + 1, 30)]);
    }

    /// The leader's expiry is applied in no session, and applying it twice
    /// (two expiries written before the first applied) is harmless.
    #[test]
    fn an_expiry_needs_no_session_and_applies_once() {
        let mut sm = store();
        result_of(sm.apply(&[entry(1, 1, 1, WriteOp::LeaseGrant { id: 42, ttl: 10 })]));
        result_of(sm.apply(&[entry(2, 1, 2, leased_put("k", 42))]));
        let expire = |index| Entry {
            term: 1,
            index: OFFSET + index,
            payload: EntryPayload::Command(
                Command::outside_sessions(WriteOp::LeaseExpire { id: 42 }, "node 1".into())
                    .encode(),
            ),
        };
        let first = result_of(sm.apply(&[expire(3)]));
        assert!(first.succeeded);
        assert!(sm.is_empty() && sm.leases().is_empty());
        let revision = sm.revision();
        let second = result_of(sm.apply(&[expire(4)]));
        assert!(!second.succeeded);
        assert_eq!(sm.revision(), revision);
        // Clients cannot write an expiry.
        assert!(crate::protocol::validate_write(&WriteOp::LeaseExpire { id: 42 }).is_err());
    }

    /// Leases and the keys attached to them come back from a snapshot; a
    /// snapshot whose key names a missing lease is refused.
    #[test]
    fn leases_survive_a_snapshot() {
        let mut sm = store();
        result_of(sm.apply(&[entry(1, 1, 1, WriteOp::LeaseGrant { id: 9, ttl: 60 })]));
        result_of(sm.apply(&[entry(2, 1, 2, leased_put("a", 9))]));
        result_of(sm.apply(&[entry(3, 1, 3, put("b", "v"))]));
        let data = (sm.snapshot())().unwrap();
        let meta = SnapshotMeta {
            last: LogId::new(1, OFFSET + 3),
            ..SnapshotMeta::default()
        };
        let mut restored = KvStateMachine::new(Arc::new(WatchHub::new(100)));
        restored.restore(&meta, &data).unwrap();
        assert_eq!(restored.digest(), sm.digest());
        assert_eq!(restored.leases(), vec![(9, 60)]);
        assert_eq!(keys_of_lease(&restored, 9), ["a"]);
        // Revoking on the restored store deletes the key.
        restored.apply(&[open_session(OFFSET + 4)]);
        let revoke = Entry {
            term: 1,
            index: OFFSET + 5,
            payload: EntryPayload::Command(
                Command {
                    session: Session {
                        client_id: OFFSET + 4,
                        sequence: 1,
                        first_outstanding: 1,
                    },
                    op: WriteOp::LeaseRevoke { id: 9 },
                    prev_kv: false,
                    owner: "tester".into(),
                }
                .encode(),
            ),
        };
        result_of(restored.apply(&[revoke]));
        assert_eq!(restored.len(), 1);

        let orphan = SnapshotData {
            applied: meta.last,
            revision: 1,
            data: vec![KeyValue {
                key: Bytes::from_static(b"a"),
                value: Bytes::from_static(b"v"),
                create_revision: 1,
                mod_revision: 1,
                version: 1,
                lease: 5,
            }],
            sessions: Vec::new(),
            leases: Vec::new(),
            compacted: None,
            members: Vec::new(),
        };
        let bytes = postcard::to_stdvec(&orphan).unwrap();
        let mut refused = KvStateMachine::new(Arc::new(WatchHub::new(100)));
        assert!(refused.restore(&meta, &bytes).is_err());
    }

    /// The snapshot is encoded straight from the maps; it must be exactly
    /// the encoding of [`SnapshotData`] that restore decodes, sessions
    /// included.
    #[test]
    fn snapshot_is_encoded_as_snapshot_data() {
        let mut sm = store();
        for i in 0..40u64 {
            let client = 1 + i % 3;
            sm.apply(&[entry(
                i + 1,
                client,
                i / 3 + 1,
                put(&format!("k{i}"), "value"),
            )]);
        }
        let data = (sm.snapshot())().unwrap();
        let decoded: SnapshotData = postcard::from_bytes(&data).unwrap();
        assert!(!decoded.data.is_empty());
        assert!(!decoded.sessions.is_empty());
        assert_eq!(postcard::to_stdvec(&decoded).unwrap(), data.to_vec());
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
                sessions: vec![(
                    1,
                    SessionState {
                        owner: "tester".into(),
                        ..SessionState::default()
                    },
                )],
                leases: Vec::new(),
                compacted: None,
                members: Vec::new(),
            })
            .unwrap()
        };
        let kv = |create: u64, modified: u64, version: u64| KeyValue {
            key: Bytes::from_static(b"x"),
            value: Bytes::from_static(b"v"),
            create_revision: create,
            mod_revision: modified,
            version,
            lease: 0,
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
        assert_eq!(sm.revision(), 2);
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
        assert_eq!(sm.revision(), 2, "the retried write was not applied again");
        // A session that never existed fares the same.
        let stranger = Entry {
            index: next + MAX_SESSIONS as u64 + 1,
            ..entry(1, 424_242, 1, put("k", "b"))
        };
        assert_eq!(sm.apply(&[stranger])[0].1, Err(KvError::SessionExpired));
        assert_eq!(sm.revision(), 2);
    }

    /// Review finding: scans capped the count (10,000) but not the bytes,
    /// and the whole reply was built before the frame limit refused it
    /// (10,000 values of 4 MiB: 40 GiB). A reply stops at MAX_SCAN_BYTES
    /// with `more`, and paging after the last key reads everything.
    #[test]
    fn scan_replies_are_bounded_in_bytes_and_page_through_everything() {
        let mut sm = store();
        let value = "v".repeat(3 << 20);
        for i in 0..5u64 {
            sm.apply(&[entry(i + 1, 1, i + 1, put(&format!("big{i}"), &value))]);
        }
        let mut start = Bytes::from_static(b"big");
        let mut pages = Vec::new();
        loop {
            let page = sm
                .read(&ReadOp::Scan {
                    start: start.clone(),
                    end: Some(Bytes::from_static(b"bih")),
                    limit: MAX_SCAN_LIMIT,
                    revision: 0,
                })
                .unwrap();
            let bytes: usize = page
                .kvs
                .iter()
                .map(|kv| kv.key.len() + kv.value.len() + SCAN_ENTRY_OVERHEAD)
                .sum();
            assert!(bytes <= MAX_SCAN_BYTES, "{bytes} bytes in one reply");
            assert!(crate::protocol::encode(&page).len() < 16 << 20);
            pages.push(page.kvs.len());
            let Some(last) = page.kvs.last() else { break };
            start = crate::protocol::key_after(&last.key);
            if !page.more {
                break;
            }
        }
        assert_eq!(pages, [2, 2, 1], "pages of at most 8 MiB");
    }

    fn page(sm: &KvStateMachine, start: &str, revision: u64) -> Result<ReadResult, KvError> {
        sm.read(&ReadOp::Scan {
            start: Bytes::copy_from_slice(start.as_bytes()),
            end: Some(Bytes::from_static(b"l")),
            limit: 2,
            revision,
        })
    }

    fn keys(result: &ReadResult) -> Vec<String> {
        result
            .kvs
            .iter()
            .map(|kv| {
                format!(
                    "{}={}",
                    String::from_utf8_lossy(&kv.key),
                    String::from_utf8_lossy(&kv.value)
                )
            })
            .collect()
    }

    /// etcd's transaction semantics the differential run against etcd
    /// holds raft-kv to (each failed before): nested transactions, whose
    /// comparisons see the store before the outer one ran; a read at a past
    /// revision inside a transaction (refused below the compaction, -1
    /// before any); puts that keep the value or the lease (the key must
    /// exist, checked before the lease); a watch event's previous
    /// key-value is the key at the revision before, none for a put that
    /// creates it.
    #[test]
    fn transactions_nest_read_the_past_and_keep_values_as_etcd_does() {
        use crate::protocol::{CompareResult, CompareTarget, KEY_NOT_FOUND, NestedTxn, Txn, TxnOp};
        let mut sm = store();
        sm.apply(&[open_session(OFFSET + 1)]);
        let mut seq = 0;
        let mut write = |sm: &mut KvStateMachine, op: WriteOp| {
            seq += 1;
            let out = sm.apply(&[entry(OFFSET + 1 + seq, OFFSET + 1, seq, op)]);
            out.into_iter().next().unwrap().1
        };
        let put_op = |key: &'static str, value: &'static str| TxnOp::Put {
            key: Bytes::from_static(key.as_bytes()),
            value: Bytes::from_static(value.as_bytes()),
            prev_kv: false,
            lease: 0,
            ignore_value: false,
            ignore_lease: false,
        };
        let version_is = |key: &'static str, version: u64| crate::protocol::Compare {
            keys: range_of(key, b""),
            target: CompareTarget::Version(version),
            result: CompareResult::Equal,
        };
        write(&mut sm, put("a", "1")).unwrap(); // revision 2
        // The nested comparison (b absent) holds though the outer
        // transaction puts b before it: compared first, on the store before.
        let nested = Txn {
            compares: vec![],
            success: vec![
                put_op("b", "1"),
                TxnOp::Txn(NestedTxn(Box::new(Txn {
                    compares: vec![version_is("b", 0)],
                    success: vec![put_op("c", "1")],
                    failure: vec![],
                }))),
                TxnOp::Range {
                    keys: range_of("a", b"\0"),
                    limit: 0,
                    revision: 2,
                },
            ],
            failure: vec![],
        };
        let result = write(&mut sm, WriteOp::Txn(nested)).unwrap();
        assert_eq!(result.revision, 3, "one revision for the whole");
        assert!(matches!(
            &result.responses[1],
            TxnOpResult::Txn { succeeded: true, responses } if responses.len() == 1
        ));
        // The read at revision 2 sees the store before the transaction.
        match &result.responses[2] {
            TxnOpResult::Range { kvs, .. } => {
                let keys: Vec<&[u8]> = kvs.iter().map(|kv| &kv.key[..]).collect();
                assert_eq!(keys, [b"a"]);
            }
            other => panic!("expected a range, got {other:?}"),
        }
        // Past and future revisions inside a transaction.
        let read_at = |revision: i64| {
            WriteOp::Txn(Txn {
                success: vec![TxnOp::Range {
                    keys: range_of("a", b""),
                    limit: 0,
                    revision,
                }],
                ..Txn::default()
            })
        };
        assert!(matches!(
            write(&mut sm, read_at(-3)),
            Err(KvError::Compacted { .. })
        ));
        assert!(write(&mut sm, read_at(-1)).is_ok(), "-1: nothing compacted");
        assert!(matches!(
            write(&mut sm, read_at(9)),
            Err(KvError::FutureRevision { .. })
        ));
        write(&mut sm, WriteOp::Compact { revision: 0 }).unwrap();
        assert!(matches!(
            write(&mut sm, WriteOp::Compact { revision: 0 }),
            Err(KvError::Compacted { .. })
        ));
        assert!(matches!(
            write(&mut sm, read_at(-1)),
            Err(KvError::Compacted { .. })
        ));
        // A put that keeps the value: the key must exist; outside a
        // transaction the lease is checked first (etcd's order).
        let keep = |key: &'static str, lease: u64| WriteOp::PutWith {
            key: Bytes::from_static(key.as_bytes()),
            value: Bytes::new(),
            lease,
            ignore_value: true,
            ignore_lease: false,
        };
        assert_eq!(
            write(&mut sm, keep("missing", 0)),
            Err(KvError::InvalidRequest(KEY_NOT_FOUND.into()))
        );
        assert_eq!(
            write(&mut sm, keep("missing", 77)),
            Err(KvError::LeaseNotFound { id: 77 })
        );
        write(&mut sm, keep("a", 0)).unwrap();
        assert_eq!(sm.data[&Bytes::from_static(b"a")].value, "1");
        assert_eq!(sm.data[&Bytes::from_static(b"a")].version, 2);
        // Events: a key deleted and put again in one transaction; the put
        // creates it anew, so it carries no previous key-value.
        let mut watcher = sm
            .watch
            .subscribe(crate::protocol::Selector::Prefix(Bytes::new()), 0, "t")
            .unwrap();
        let again = Txn {
            success: vec![
                TxnOp::Delete {
                    keys: range_of("a", b"\0"),
                    prev_kv: false,
                },
                put_op("a", "2"),
            ],
            ..Txn::default()
        };
        write(&mut sm, WriteOp::Txn(again)).unwrap();
        let mut prevs = Vec::new();
        while let Some(message) = watcher.try_next() {
            if let crate::protocol::WatchMessage::Events(events) = message {
                prevs.extend(
                    events
                        .into_iter()
                        .map(|e| (e.kind, e.kv.key, e.prev.map(|p| p.value))),
                );
            }
        }
        let delete_a = prevs
            .iter()
            .find(|(kind, key, _)| *kind == EventKind::Delete && key == "a");
        assert_eq!(delete_a.unwrap().2, Some(Bytes::from_static(b"1")));
        let put_a = prevs
            .iter()
            .find(|(kind, key, _)| *kind == EventKind::Put && key == "a");
        assert_eq!(put_a.unwrap().2, None);
    }

    /// Review finding: a scan paged by a continuation key read each page at
    /// the latest state, so a key written or deleted between pages was seen
    /// half-way. Every page of a scan reads the revision of its first.
    #[test]
    fn a_paged_scan_reads_every_page_at_the_revision_of_the_first() {
        let mut sm = store();
        for (i, key) in ["k1", "k2", "k3", "k4", "k5"].into_iter().enumerate() {
            let i = i as u64 + 1;
            sm.apply(&[entry(i, 1, i, put(key, "old"))]);
        }
        let first = page(&sm, "k", 0).unwrap();
        assert_eq!(keys(&first), ["k1=old", "k2=old"]);
        assert!(first.more);
        let at = first.revision;
        // Between pages: an overwrite, a delete and a new key in the rest.
        sm.apply(&[entry(6, 1, 6, put("k3", "new"))]);
        sm.apply(&[entry(
            7,
            1,
            7,
            WriteOp::Delete {
                key: Bytes::from_static(b"k4"),
            },
        )]);
        sm.apply(&[entry(8, 1, 8, put("k35", "new"))]);
        let second = page(&sm, "k2\0", at).unwrap();
        assert_eq!(second.revision, at);
        assert_eq!(keys(&second), ["k3=old", "k4=old"]);
        let third = page(&sm, "k4\0", at).unwrap();
        assert_eq!(keys(&third), ["k5=old"]);
        assert!(!third.more);
        // A scan from the latest revision sees the writes.
        assert_eq!(keys(&page(&sm, "k2\0", 0).unwrap()), ["k3=new", "k35=new"]);
        // A revision never reached is refused (etcd's future revision).
        assert!(matches!(
            page(&sm, "k", sm.revision() + 1),
            Err(KvError::FutureRevision { .. })
        ));
    }

    /// The states kept for paged scans are bounded: once the writes since
    /// one replaced more than [`SCAN_VIEWS_PINNED_BYTES`], it is let go and
    /// its next page answers `Compacted`; at most [`MAX_SCAN_VIEWS`] are
    /// kept; a restored snapshot lets them all go.
    #[test]
    fn states_kept_for_paged_scans_are_bounded() {
        let mut sm = store();
        for (i, key) in ["k1", "k2", "k3"].into_iter().enumerate() {
            let i = i as u64 + 1;
            sm.apply(&[entry(i, 1, i, put(key, "v"))]);
        }
        let at = page(&sm, "k", 0).unwrap().revision;
        // Overwrites of a 1 MiB value: each pins the value it replaces.
        let big = "x".repeat(1 << 20);
        let mut index = 4;
        let mut writes = 0;
        while page(&sm, "k2\0", at).is_ok() {
            sm.apply(&[entry(index, 1, index, put("z", &big))]);
            index += 1;
            writes += 1;
            assert!(writes < 100, "the kept state was never let go");
        }
        let replaced = (writes - 1) * ((1 << 20) + 1);
        assert!(
            replaced <= SCAN_VIEWS_PINNED_BYTES + (1 << 20) + VIEW_WRITE_COST * writes,
            "{writes} writes"
        );
        assert!(matches!(
            page(&sm, "k2\0", at),
            Err(KvError::Compacted { requested, .. }) if requested == at
        ));
        // At most MAX_SCAN_VIEWS kept: one per revision a paged scan began at.
        for _ in 0..MAX_SCAN_VIEWS + 10 {
            assert!(page(&sm, "k", 0).unwrap().more);
            sm.apply(&[entry(index, 1, index, put("k1", "w"))]);
            index += 1;
        }
        assert_eq!(sm.views.lock().views.len(), MAX_SCAN_VIEWS);
        let snapshot = (sm.snapshot())().unwrap();
        let meta = SnapshotMeta {
            last: sm.applied,
            ..SnapshotMeta::default()
        };
        sm.restore(&meta, &snapshot).unwrap();
        assert!(sm.views.lock().views.is_empty());
    }

    /// Review finding: sessions were keyed by the client-chosen id alone,
    /// so one client could write in (and expire or replay results of)
    /// another's session. A session belongs to the identity that opened it.
    #[test]
    fn only_the_owner_writes_in_a_session() {
        let mut sm = store();
        let theirs = |index: Index, owner: &str| Entry {
            index: OFFSET + index,
            payload: EntryPayload::Command(
                Command {
                    session: Session {
                        client_id: 1,
                        sequence: 1,
                        first_outstanding: 1,
                    },
                    op: put("k", "stolen"),
                    prev_kv: false,
                    owner: owner.into(),
                }
                .encode(),
            ),
            term: 1,
        };
        let out = sm.apply(&[theirs(1, "mallory")]);
        assert!(matches!(&out[0].1, Err(KvError::Forbidden(_))), "{out:?}");
        assert_eq!(sm.revision(), FIRST_REVISION, "nothing applied");
        // The session is untouched: its owner still writes in it.
        let out = sm.apply(&[theirs(2, "tester")]);
        assert!(out[0].1.as_ref().unwrap().succeeded);
    }

    fn session_entry(index: Index, client: u64, seq: u64, first: u64, op: WriteOp) -> Entry {
        Entry {
            index,
            payload: EntryPayload::Command(
                Command {
                    session: Session {
                        client_id: client,
                        sequence: seq,
                        first_outstanding: first,
                    },
                    op,
                    prev_kv: true,
                    owner: "tester".into(),
                }
                .encode(),
            ),
            ..entry(0, 0, 0, put("k", "v"))
        }
    }

    /// Review finding: one 120 KB value and 600 failed CAS calls (each from
    /// a new `raft-cli` process, so a new session that never acknowledges)
    /// made a 72 MB snapshot, a copy of the value per failed CAS. A CAS that
    /// did not swap changed nothing, so its result is not kept: a retry
    /// evaluates it again.
    #[test]
    fn a_failed_cas_keeps_no_copy_of_the_value() {
        let mut sm = store();
        let big = Bytes::from(vec![b'x'; 120_000]);
        sm.apply(&[entry(1, 1, 1, put("k", ""))]);
        sm.apply(&[session_entry(
            OFFSET + 2,
            1,
            2,
            2,
            WriteOp::Put {
                key: Bytes::from_static(b"k"),
                value: big.clone(),
            },
        )]);
        let mut index = OFFSET + 10;
        let cas = WriteOp::Cas {
            key: Bytes::from_static(b"k"),
            expected: Some(Bytes::from_static(b"other")),
            new: Some(Bytes::from_static(b"y")),
        };
        for _ in 0..600 {
            let id = index;
            sm.apply(&[open_session(index)]);
            let out = sm.apply(&[session_entry(index + 1, id, 1, 1, cas.clone())]);
            let result = out[0].1.as_ref().unwrap();
            assert!(!result.succeeded);
            assert_eq!(result.previous.as_ref().unwrap().value, big);
            index += 2;
        }
        let snapshot = (sm.snapshot())().unwrap();
        assert!(
            snapshot.len() < 2 * big.len(),
            "a {} byte snapshot for one {} byte value",
            snapshot.len(),
            big.len()
        );
        // A retry of a failed CAS is evaluated again: the key now holds what
        // it expected, so it swaps (once: the swap is kept).
        let last = index - 2;
        sm.apply(&[session_entry(
            index,
            1,
            3,
            3,
            WriteOp::Put {
                key: Bytes::from_static(b"k"),
                value: Bytes::from_static(b"other"),
            },
        )]);
        let revision = sm.revision();
        for at in [index + 1, index + 2] {
            let out = sm.apply(&[session_entry(at, last, 1, 1, cas.clone())]);
            assert!(out[0].1.as_ref().unwrap().succeeded);
            assert_eq!(sm.revision(), revision + 1, "the swap applied once");
        }
    }

    /// Sessions hold at most [`MAX_SESSION_RESULT_BYTES`] each and
    /// [`MAX_SESSIONS_BYTES`] together; beyond that the oldest results, then
    /// the least recently written sessions, are forgotten, and a retry of
    /// what was forgotten is refused with `SessionExpired`, never applied
    /// again. The count survives a snapshot.
    #[test]
    fn session_memory_is_bounded_in_bytes() {
        let mut sm = store();
        let big = Bytes::from(vec![b'x'; MAX_VALUE_LEN]);
        let put_big = |key: &str| WriteOp::Put {
            key: Bytes::copy_from_slice(key.as_bytes()),
            value: big.clone(),
        };
        // One session that never acknowledges (first outstanding stays 1),
        // overwriting a big value: each result carries the previous value.
        for seq in 1..=5 {
            sm.apply(&[session_entry(OFFSET + seq, 7, seq, 1, put_big("k"))]);
        }
        let state = &sm.sessions[&7];
        assert!(state.bytes <= MAX_SESSION_RESULT_BYTES, "{}", state.bytes);
        assert_eq!(state.results.len(), 2, "room for two big results");
        let revision = sm.revision();
        let out = sm.apply(&[session_entry(OFFSET + 6, 7, 2, 1, put_big("k"))]);
        assert_eq!(out[0].1, Err(KvError::SessionExpired));
        let out = sm.apply(&[session_entry(OFFSET + 7, 7, 5, 1, put_big("k"))]);
        assert!(out[0].1.as_ref().unwrap().previous.is_some());
        assert_eq!(sm.revision(), revision, "no write applied twice");

        // Many sessions each keeping a big previous value: the total stays
        // under the bound by forgetting the least recently written.
        let mut index = OFFSET + 100;
        let mut ids = Vec::new();
        for i in 0..80 {
            let id = index;
            ids.push(id);
            let key = format!("s{i}");
            sm.apply(&[
                open_session(index),
                session_entry(index + 1, id, 1, 1, put_big(&key)),
                session_entry(index + 2, id, 2, 2, put(&key, "small")),
            ]);
            index += 3;
            assert!(
                sm.sessions_bytes <= MAX_SESSIONS_BYTES,
                "{}",
                sm.sessions_bytes
            );
        }
        assert!(
            !sm.sessions.contains_key(&ids[0]),
            "the oldest was forgotten"
        );
        assert!(sm.sessions.contains_key(&ids[79]));
        let revision = sm.revision();
        let out = sm.apply(&[session_entry(index, ids[0], 2, 2, put("s0", "small"))]);
        assert_eq!(out[0].1, Err(KvError::SessionExpired));
        let out = sm.apply(&[session_entry(index + 1, ids[79], 2, 2, put("s79", "small"))]);
        assert_eq!(
            out[0].1.as_ref().unwrap().previous.as_ref().unwrap().value,
            big
        );
        assert_eq!(sm.revision(), revision, "no write applied twice");

        let data = (sm.snapshot())().unwrap();
        let mut restored = KvStateMachine::new(Arc::new(WatchHub::new(100)));
        let meta = SnapshotMeta {
            last: sm.applied,
            ..SnapshotMeta::default()
        };
        restored.restore(&meta, &data).unwrap();
        assert_eq!(restored.sessions_bytes, sm.sessions_bytes);
    }
}
