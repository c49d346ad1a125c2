//! What clients and nodes say to each other over ALPN `raft-client/2`: one
//! postcard-encoded [`Request`] per stream, answered by one [`Response`] (or,
//! for a watch, a stream of [`WatchMessage`]s).
//!
//! Every error a client can act on is a typed [`KvError`].

use std::collections::BTreeSet;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use raft_core::{NodeId, Status};
use raft_transport_quic::{Caller, Role};

/// Keys may be at most this long.
pub const MAX_KEY_LEN: usize = 4096;
/// Values may be at most this long.
pub const MAX_VALUE_LEN: usize = 4 << 20;
/// The most key-values one scan returns.
pub const MAX_SCAN_LIMIT: u32 = 10_000;
/// The most bytes of keys and values one scan returns (counting
/// [`SCAN_ENTRY_OVERHEAD`] more per key-value); a scan that reaches it stops
/// there with `more` set, and the client continues after the last key. A
/// single key-value is always returned, whatever its size (at most
/// [`MAX_KEY_LEN`] + [`MAX_VALUE_LEN`]). Without it, 10,000 keys of 4 MiB
/// values made a 40 GiB reply in memory before the frame limit refused it.
pub const MAX_SCAN_BYTES: usize = 8 << 20;
/// What each key-value of a scan reply counts for beyond its key and value
/// (revisions, version, lengths).
pub const SCAN_ENTRY_OVERHEAD: usize = 32;

/// A client's identity for exactly-once writes: a random id chosen by the
/// client, and a sequence number per write. A retried write carries the same
/// pair and is applied once; its first result is returned again. A session is
/// opened through the log ([`Request::OpenSession`]); its id is the index of
/// that log entry, so a node that knows no session of an id knows it expired
/// (Raft thesis §6.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    /// The session's id: the log index of the entry that opened it.
    pub client_id: u64,
    /// This write's sequence number (from 1, increasing).
    pub sequence: u64,
    /// The lowest sequence number whose result the client has not yet
    /// received: results below it may be forgotten.
    pub first_outstanding: u64,
}

/// A write to the key-value store.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum WriteOp {
    /// Set `key` to `value`.
    Put {
        /// The key.
        key: Bytes,
        /// The new value.
        value: Bytes,
    },
    /// Remove `key`.
    Delete {
        /// The key.
        key: Bytes,
    },
    /// Compare-and-swap: if the current value of `key` is `expected` (`None`:
    /// the key must not exist), set it to `new` (`None`: delete it).
    Cas {
        /// The key.
        key: Bytes,
        /// The value the key must hold (`None`: absent).
        expected: Option<Bytes>,
        /// The value to set (`None`: delete).
        new: Option<Bytes>,
    },
    /// Opens a client session (the log entry behind
    /// [`Request::OpenSession`]); not a write a client can send.
    OpenSession,
    /// An etcd-style transaction, applied atomically as one log entry.
    Txn(Txn),
    /// Grants a lease of `ttl` seconds: keys put with it are deleted when
    /// it expires or is revoked. `id` 0 lets the store choose one. The
    /// result's [`WriteResult::responses`] holds one
    /// [`TxnOpResult::LeaseGranted`].
    LeaseGrant {
        /// The lease id wanted (0: any).
        id: u64,
        /// Its time to live, in seconds (at least [`MIN_LEASE_TTL`], at most
        /// [`MAX_LEASE_TTL`]).
        ttl: u64,
    },
    /// Revokes a lease, deleting every key put with it.
    LeaseRevoke {
        /// The lease.
        id: u64,
    },
    /// The leader found the lease past its deadline: revoked as by
    /// [`WriteOp::LeaseRevoke`], answering `succeeded: false` when it is gone
    /// already. Written by the leader only, in no session; not a write a
    /// client can send.
    LeaseExpire {
        /// The lease.
        id: u64,
    },
    /// etcd's compaction: revisions before `revision` can no longer be read
    /// or watched from (answered [`KvError::Compacted`]); the history they
    /// need is let go. Refused below an earlier compaction or above the
    /// store's revision. Administrators only.
    Compact {
        /// The oldest revision still readable.
        revision: u64,
    },
    /// A member's client URLs (etcd's member attributes, which its member
    /// list answers): written by the member when its etcd port starts.
    /// Administrators (members are) only.
    PublishMember {
        /// The member.
        node: NodeId,
        /// Where clients reach its etcd port (`https://host:port`).
        client_urls: Vec<String>,
    },
    /// etcd's put with its options: checked as etcd checks a put outside a
    /// transaction (the lease must exist, then, to keep the value or the
    /// lease, the key).
    PutWith {
        /// The key.
        key: Bytes,
        /// The new value (empty with `ignore_value`).
        value: Bytes,
        /// The lease the key lives by (0: none).
        lease: u64,
        /// Keep the key's value.
        ignore_value: bool,
        /// Keep the key's lease.
        ignore_lease: bool,
    },
}

/// The shortest lease granted, in seconds (a shorter one is raised to it, as
/// etcd raises a TTL below its minimum): it must outlast an election, or a
/// leader change would expire leases whose holders did nothing wrong.
pub const MIN_LEASE_TTL: u64 = 2;
/// The longest lease, in seconds (etcd's limit).
pub const MAX_LEASE_TTL: u64 = 9_000_000_000;
/// The most leases the store holds at once; a grant beyond is refused with
/// [`KvError::LimitReached`].
pub const MAX_LEASES: usize = 100_000;
/// The most leases one client identity holds at once (a tenth of the
/// cluster's), so that one client cannot take every lease; a grant beyond
/// is refused with [`KvError::LimitReached`].
pub const MAX_LEASES_PER_CLIENT: usize = 10_000;

/// The most client URLs a member publishes ([`WriteOp::PublishMember`]).
pub const MAX_CLIENT_URLS: usize = 8;
/// The longest client URL a member publishes.
pub const MAX_CLIENT_URL_LEN: usize = 512;

/// The most comparisons, and operations per branch, in a [`Txn`] (etcd's
/// default `--max-txn-ops`).
pub const MAX_TXN_OPS: usize = 128;

/// An etcd-style transaction: if every comparison holds, the `success`
/// operations run, else the `failure` ones, in order, each seeing the
/// effects of the ones before; all in one log entry, and one revision for
/// all its changes (as etcd's). The comparisons of nested transactions are
/// evaluated first, on the store as it was before, as etcd does.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Txn {
    /// What must hold.
    pub compares: Vec<Compare>,
    /// What runs when every comparison holds.
    pub success: Vec<TxnOp>,
    /// What runs otherwise.
    pub failure: Vec<TxnOp>,
}

/// Keys as etcd names them: `key` alone when `range_end` is empty, every
/// key from `key` on when it is `[0]`, else `key..range_end`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyRange {
    /// The (first) key.
    pub key: Bytes,
    /// The end, as etcd's `range_end`.
    pub range_end: Bytes,
}

impl KeyRange {
    /// The `start..end` of a scan, or `None` for the one key.
    pub fn bounds(&self) -> Option<(Bytes, Option<Bytes>)> {
        etcd_range_end(&self.range_end).map(|end| (self.key.clone(), end))
    }

    /// Whether `key` is one of these keys.
    pub fn contains(&self, key: &[u8]) -> bool {
        match self.bounds() {
            None => self.key == key,
            Some((start, end)) => key >= &start[..] && end.is_none_or(|end| key < &end[..]),
        }
    }
}

/// What etcd's `range_end` says: `None` for the key alone (empty),
/// `Some(None)` for every key from it on (`"\0"`), else `Some(Some(end))`,
/// the key after the last.
pub fn etcd_range_end(end: &[u8]) -> Option<Option<Bytes>> {
    match end {
        [] => None,
        [0] => Some(None),
        end => Some(Some(Bytes::copy_from_slice(end))),
    }
}

/// The smallest key greater than `key`: where a scan goes on after it, and
/// the end of a range of `key` alone.
pub fn key_after(key: &[u8]) -> Bytes {
    let mut next = Vec::with_capacity(key.len() + 1);
    next.extend_from_slice(key);
    next.push(0);
    Bytes::from(next)
}

/// One comparison of a [`Txn`]: every key of `keys` (a missing one counts
/// as version, create and mod revision 0, and fails a value comparison)
/// must compare as `result` with `target`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Compare {
    /// The key or keys compared.
    pub keys: KeyRange,
    /// What is compared, and with what.
    pub target: CompareTarget,
    /// How it must compare.
    pub result: CompareResult,
}

/// What a [`Compare`] looks at.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CompareTarget {
    /// The value.
    Value(Bytes),
    /// The version (writes since creation).
    Version(u64),
    /// The revision that created the key.
    CreateRevision(u64),
    /// The revision that last changed the key.
    ModRevision(u64),
    /// The lease the key was put with (0: none).
    Lease(u64),
}

/// How a [`Compare`] must come out.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CompareResult {
    /// `==`.
    Equal,
    /// `!=`.
    NotEqual,
    /// `<` (the key's is less).
    Less,
    /// `>` (the key's is greater).
    Greater,
}

/// One operation of a [`Txn`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TxnOp {
    /// Set a key.
    Put {
        /// The key.
        key: Bytes,
        /// The value.
        value: Bytes,
        /// Return the key as it was.
        prev_kv: bool,
        /// The lease the key lives by (0: none; it lives until deleted).
        lease: u64,
        /// Keep the key's value (etcd's `ignore_value`: `value` must be
        /// empty, and the key must exist before the transaction).
        ignore_value: bool,
        /// Keep the key's lease (etcd's `ignore_lease`: `lease` must be 0,
        /// and the key must exist before the transaction).
        ignore_lease: bool,
    },
    /// Remove the keys of a range.
    Delete {
        /// The keys.
        keys: KeyRange,
        /// Return them as they were.
        prev_kv: bool,
    },
    /// Read the keys of a range.
    Range {
        /// The keys.
        keys: KeyRange,
        /// The most to return (0: as many as a reply holds).
        limit: u32,
        /// The revision read at (0 or less: the transaction's own view): a
        /// past one reads the store as it was then. As etcd's (an `int64`):
        /// below the last compaction (-1 before any) it is refused.
        revision: i64,
    },
    /// A transaction inside this one (etcd's nested `RequestTxn`): its
    /// comparisons see the store as it was before the outer transaction,
    /// as etcd's do; its operations run in order with the outer ones.
    Txn(NestedTxn),
}

/// A transaction inside a transaction, at most [`MAX_TXN_DEPTH`] deep:
/// decoding refuses deeper nesting before it could exhaust the stack.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct NestedTxn(pub Box<Txn>);

/// The most transactions nested in one another (prost's decoding limit for
/// etcd's protobuf messages is 100 levels of messages, two per level).
pub const MAX_TXN_DEPTH: usize = 32;

thread_local! {
    /// How deep the [`NestedTxn`] being decoded on this thread is.
    static DECODING_DEPTH: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

impl<'de> Deserialize<'de> for NestedTxn {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let depth = DECODING_DEPTH.with(|d| {
            d.set(d.get() + 1);
            d.get()
        });
        struct Leave;
        impl Drop for Leave {
            fn drop(&mut self) {
                DECODING_DEPTH.with(|d| d.set(d.get().saturating_sub(1)));
            }
        }
        let _leave = Leave;
        if depth > MAX_TXN_DEPTH {
            return Err(serde::de::Error::custom(format!(
                "transactions are nested at most {MAX_TXN_DEPTH} deep"
            )));
        }
        Txn::deserialize(deserializer).map(|txn| NestedTxn(Box::new(txn)))
    }
}

/// What one [`TxnOp`] did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TxnOpResult {
    /// A put: the key before it, if asked.
    Put {
        /// The key as it was.
        previous: Option<KeyValue>,
    },
    /// A delete: how many keys it removed, and them if asked.
    Delete {
        /// Keys removed.
        deleted: u64,
        /// The keys as they were, if asked.
        previous: Vec<KeyValue>,
    },
    /// A read.
    Range {
        /// The keys found (at most a reply's worth).
        kvs: Vec<KeyValue>,
        /// Whether more were left.
        more: bool,
    },
    /// A nested transaction: whether its comparisons held, and what the
    /// operations of the branch they chose did.
    Txn {
        /// Whether every comparison held.
        succeeded: bool,
        /// One result per operation of the branch that ran.
        responses: Vec<TxnOpResult>,
    },
    /// The answer to a [`WriteOp::LeaseGrant`] (not an operation of a
    /// transaction).
    LeaseGranted {
        /// The lease's id.
        id: u64,
        /// Its time to live, in seconds.
        ttl: u64,
    },
}

impl TxnOpResult {
    /// Whether the operation changed the store (a put, a delete of at
    /// least one key, a nested transaction that did either).
    pub fn changes(&self) -> bool {
        match self {
            TxnOpResult::Put { .. } => true,
            TxnOpResult::Delete { deleted, .. } => *deleted > 0,
            TxnOpResult::Txn { responses, .. } => responses.iter().any(Self::changes),
            TxnOpResult::Range { .. } | TxnOpResult::LeaseGranted { .. } => false,
        }
    }

    /// Calls `f` with every key-value the result carries (those of nested
    /// transactions too).
    pub fn for_each_kv(&self, f: &mut dyn FnMut(&KeyValue)) {
        match self {
            TxnOpResult::Put { previous } => previous.iter().for_each(f),
            TxnOpResult::Delete { previous, .. } => previous.iter().for_each(f),
            TxnOpResult::Range { kvs, .. } => kvs.iter().for_each(f),
            TxnOpResult::Txn { responses, .. } => {
                for response in responses {
                    response.for_each_kv(f);
                }
            }
            TxnOpResult::LeaseGranted { .. } => {}
        }
    }
}

impl WriteOp {
    /// The key written (empty for [`WriteOp::OpenSession`]).
    pub fn key(&self) -> &Bytes {
        static NONE: Bytes = Bytes::from_static(b"");
        match self {
            WriteOp::Put { key, .. }
            | WriteOp::PutWith { key, .. }
            | WriteOp::Delete { key }
            | WriteOp::Cas { key, .. } => key,
            WriteOp::OpenSession
            | WriteOp::Txn(_)
            | WriteOp::LeaseGrant { .. }
            | WriteOp::LeaseRevoke { .. }
            | WriteOp::LeaseExpire { .. }
            | WriteOp::Compact { .. }
            | WriteOp::PublishMember { .. } => &NONE,
        }
    }
}

/// A read of the key-value store.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ReadOp {
    /// One key.
    Get {
        /// The key.
        key: Bytes,
    },
    /// Keys in `start..end` (`end: None`: to the end), in key order, at most
    /// `limit` of them.
    ///
    /// A scan that stops with `more` is continued page by page at the
    /// revision of its first page: the next page asks from just after the
    /// last key returned, with `revision` set to the first reply's. A node
    /// keeps the state a paged scan reads for a while
    /// ([`MAX_SCAN_VIEWS`](crate::state_machine::MAX_SCAN_VIEWS),
    /// [`SCAN_VIEWS_PINNED_BYTES`](crate::state_machine::SCAN_VIEWS_PINNED_BYTES));
    /// a page asked after it was let go is answered [`KvError::Compacted`]
    /// and the scan starts again.
    Scan {
        /// The first key.
        start: Bytes,
        /// The key after the last (exclusive), or `None` for no bound.
        end: Option<Bytes>,
        /// The most key-values to return.
        limit: u32,
        /// The revision to read at: 0 for the latest, or the `revision` of
        /// an earlier page of this scan.
        revision: u64,
    },
}

impl ReadOp {
    /// A scan of every key starting with `prefix`.
    pub fn prefix(prefix: impl Into<Bytes>, limit: u32) -> Self {
        let start: Bytes = prefix.into();
        let end = prefix_end(&start);
        ReadOp::Scan {
            start,
            end,
            limit,
            revision: 0,
        }
    }
}

/// The smallest key greater than every key starting with `prefix`, or `None`
/// if there is none (the prefix is all 0xFF, or empty).
pub fn prefix_end(prefix: &[u8]) -> Option<Bytes> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xFF {
            end.push(last + 1);
            return Some(end.into());
        }
    }
    None
}

/// How fresh a read must be.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Consistency {
    /// Linearizable: reflects every write acknowledged before the read began
    /// (ReadIndex: one heartbeat round, nothing written to the log).
    #[default]
    Linearizable,
    /// Linearizable while the leader's lease holds (no round trip); relies on
    /// bounded clock drift. Served by the leader only.
    Lease,
    /// Whatever the node has applied: fast, possibly stale.
    Stale,
}

/// Which keys a watch follows.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Selector {
    /// One key.
    Key(Bytes),
    /// Every key starting with the prefix.
    Prefix(Bytes),
    /// Every key in `start..end` (`end: None`: to the end).
    Range {
        /// The first key.
        start: Bytes,
        /// The key after the last, if any.
        end: Option<Bytes>,
    },
}

impl Selector {
    /// Whether `key` is selected.
    pub fn matches(&self, key: &[u8]) -> bool {
        match self {
            Selector::Key(k) => k.as_ref() == key,
            Selector::Prefix(p) => key.starts_with(p),
            Selector::Range { start, end } => {
                key >= start.as_ref() && end.as_ref().is_none_or(|end| key < end.as_ref())
            }
        }
    }
}

/// Cluster administration.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum AdminOp {
    /// Add a node as a learner (it receives the log but does not vote).
    AddLearner {
        /// The new node's id.
        id: NodeId,
        /// Where it listens (`host:port`).
        address: String,
    },
    /// Make a learner a voter.
    Promote {
        /// The learner.
        id: NodeId,
    },
    /// Remove a node (voter or learner), the leader included.
    Remove {
        /// The node.
        id: NodeId,
    },
    /// Hand leadership to `to`, or to the most up-to-date voter.
    TransferLeader {
        /// The target, or `None` to let the leader pick.
        to: Option<NodeId>,
    },
}

/// A client request.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Request {
    /// A write, with its session for exactly-once application.
    Write {
        /// The client's session.
        session: Session,
        /// The write.
        op: WriteOp,
        /// Whether the answer carries the key as it was before the write
        /// ([`WriteResult::previous`]; etcd's `prev_kv`).
        prev_kv: bool,
        /// Set when a follower forwarded the request: the receiver does not
        /// forward it again.
        forwarded: bool,
    },
    /// Opens a session for exactly-once writes; the answer is
    /// [`Response::SessionOpened`]. The client library does this before its
    /// first write.
    OpenSession {
        /// Set when a follower forwarded the request.
        forwarded: bool,
    },
    /// A read.
    Read {
        /// The read.
        op: ReadOp,
        /// How fresh it must be.
        consistency: Consistency,
        /// Set by a node that forwards the read (a lease read to the
        /// leader): a forwarded read is never forwarded again, so two nodes
        /// with stale views of the leader cannot bounce it between them.
        forwarded: bool,
    },
    /// Follow changes to keys from `start_revision` on (0: from now). The
    /// answer is a stream of [`WatchMessage`]s.
    Watch {
        /// The keys.
        selector: Selector,
        /// The first revision wanted (0: only future changes).
        start_revision: u64,
    },
    /// A question about leases, answered by the leader (which alone keeps
    /// their deadlines).
    Lease {
        /// The question.
        op: LeaseOp,
        /// Set when already forwarded once.
        forwarded: bool,
    },
    /// Cluster administration (forwarded to the leader).
    Admin {
        /// The operation.
        op: AdminOp,
        /// Set when already forwarded once.
        forwarded: bool,
    },
    /// This node's status.
    Status,
    /// Test-only fault injection between nodes (refused unless the node was
    /// started with fault injection enabled).
    SetFaults {
        /// The rules, replacing the current ones (empty: heal everything).
        rules: Vec<raft_transport_quic::FaultRule>,
    },
    /// A request a member node forwards on behalf of `principal` (its own
    /// client). Nodes trust the principal only from a member node's
    /// certificate; from anyone else this is refused.
    Forwarded {
        /// Whom the request acts for.
        principal: Principal,
        /// The request (not itself a `Forwarded`).
        request: Box<Request>,
    },
}

impl Request {
    /// The role a request needs: writes `readwrite`; membership, leader
    /// transfer and fault injection `admin`; everything else `readonly`.
    pub fn needs(&self) -> Role {
        match self {
            Request::Write {
                op: WriteOp::Compact { .. } | WriteOp::PublishMember { .. },
                ..
            } => Role::Admin,
            Request::Write { .. }
            | Request::OpenSession { .. }
            | Request::Lease {
                op: LeaseOp::KeepAlive { .. },
                ..
            } => Role::ReadWrite,
            Request::Lease { .. } => Role::ReadOnly,
            Request::Admin { .. } | Request::SetFaults { .. } => Role::Admin,
            Request::Read { .. } | Request::Watch { .. } | Request::Status => Role::ReadOnly,
            Request::Forwarded { request, .. } => request.needs(),
        }
    }
}

/// What a [`Request::Lease`] asks the leader.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum LeaseOp {
    /// Start the lease's time to live over.
    KeepAlive {
        /// The lease.
        id: u64,
    },
    /// How long the lease has left, and (with `keys`) the keys put with it.
    TimeToLive {
        /// The lease.
        id: u64,
        /// Whether to list its keys.
        keys: bool,
    },
    /// The ids of every lease.
    List,
}

/// The leader's answer to a [`Request::Lease`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum LeaseAnswer {
    /// The lease's time to live started over; `ttl` 0 when it is gone
    /// (expired or revoked).
    KeptAlive {
        /// The lease.
        id: u64,
        /// Its time to live, in seconds (0: gone).
        ttl: u64,
    },
    /// What is left of a lease; `remaining` -1 when it is gone.
    TimeToLive {
        /// The lease.
        id: u64,
        /// Whole seconds left (-1: gone).
        remaining: i64,
        /// The time to live it was granted, in seconds.
        granted: u64,
        /// Its keys, if asked.
        keys: Vec<Bytes>,
    },
    /// The ids of every lease.
    List(Vec<u64>),
}

/// A key and its value, with its history counters (etcd's shape).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyValue {
    /// The key.
    pub key: Bytes,
    /// The value.
    pub value: Bytes,
    /// The revision of the write that created the key.
    pub create_revision: u64,
    /// The revision of the write that last changed it.
    pub mod_revision: u64,
    /// How many times it was written since it was created.
    pub version: u64,
    /// The lease the key lives by (0: none).
    pub lease: u64,
}

/// The result of a write.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WriteResult {
    /// The store's revision after the write (unchanged by a failed CAS or a
    /// delete of a missing key).
    pub revision: u64,
    /// Whether the write changed the store: a CAS swapped, a delete removed
    /// a key; a put always does.
    pub succeeded: bool,
    /// For a CAS that did not swap: the key's current value (`None`: absent).
    /// For a write asked with `prev_kv`: the key before the write. Otherwise
    /// `None`.
    pub previous: Option<KeyValue>,
    /// For a [`Txn`]: what each operation of the branch that ran did
    /// (`succeeded` says which branch). Empty for other writes.
    pub responses: Vec<TxnOpResult>,
}

/// The result of a read.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadResult {
    /// The store's revision the read reflects.
    pub revision: u64,
    /// The key-values found, in key order.
    pub kvs: Vec<KeyValue>,
    /// Whether a scan stopped at its limit with more keys left.
    pub more: bool,
}

/// What happened to a key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum EventKind {
    /// Created or changed.
    Put,
    /// Deleted.
    Delete,
}

/// One change, as watchers see it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WatchEvent {
    /// The revision of the write.
    pub revision: u64,
    /// Put or delete.
    pub kind: EventKind,
    /// The key-value after the write (for a delete: the key, an empty value
    /// and the delete's revision).
    pub kv: KeyValue,
    /// The key-value before the write (`None` for a key it created): etcd's
    /// `prev_kv`. Its value is shared with what the store held, not copied.
    pub prev: Option<KeyValue>,
}

/// One frame of a watch stream.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum WatchMessage {
    /// The watch is registered; events from `revision + 1` on will follow
    /// (after any history requested).
    Started {
        /// The store's revision when the watch started.
        revision: u64,
    },
    /// Changes, in commit order.
    Events(Vec<WatchEvent>),
    /// The requested revisions are no longer available on this node (its
    /// history was compacted, or it restored a snapshot): re-read the keys,
    /// then watch from `revision`.
    Compacted {
        /// The oldest revision this node can still replay from.
        revision: u64,
    },
    /// The watch ended with an error.
    Error(KvError),
}

/// One member, as `Members` reports it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// Its id.
    pub id: NodeId,
    /// Its address.
    pub address: String,
    /// Whether it votes.
    pub voter: bool,
}

/// What an admin request returns.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum AdminResult {
    /// The change committed; the members are now these.
    Members(Vec<Member>),
    /// Leadership moved to this node.
    LeaderTransferred(NodeId),
}

/// A node's status, for `raft-cli status` and health checks.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct NodeStatus {
    /// The node's address.
    pub address: String,
    /// The store's revision on this node.
    pub revision: u64,
    /// Raft's view.
    pub raft: Status,
    /// CPU time (user and system) the node's process has used, in seconds,
    /// where the platform reports it (Linux: `/proc/self/stat`, 10 ms
    /// resolution). Two readings bracket a benchmark's window.
    pub cpu_seconds: Option<f64>,
    /// When the node's certificate expires, in seconds since the Unix
    /// epoch (`raft-cli status` warns [`CERTIFICATE_WARNING_DAYS`] ahead).
    pub certificate_expires: Option<i64>,
    /// What the node's data directory holds on disk, in bytes (the log,
    /// its state and snapshots; etcd's `dbSize`), where it could be read.
    pub data_bytes: Option<u64>,
}

/// How many days before a node's certificate expires the node and
/// `raft-cli status` start warning.
pub const CERTIFICATE_WARNING_DAYS: i64 = 30;

/// Whole days from `from` to `to` (Unix seconds), rounded down: negative
/// when `to` is earlier.
pub fn whole_days(from: i64, to: i64) -> i64 {
    (to - from).div_euclid(86_400)
}

/// The time now in Unix seconds (0 if the clock is before 1970).
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// A response.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Response {
    /// A write was applied.
    Write(WriteResult),
    /// A session was opened.
    SessionOpened {
        /// Its id, for [`Session::client_id`].
        client_id: u64,
    },
    /// A read.
    Read(ReadResult),
    /// An admin operation completed.
    Admin(AdminResult),
    /// The leader answered a lease question.
    Lease(LeaseAnswer),
    /// A node's status.
    Status(Box<NodeStatus>),
    /// Fault rules were set.
    FaultsSet,
    /// The request failed.
    Error(KvError),
    /// A follower passed the request on to the leader, which answered
    /// `response`. `leader` is the leader's client address: send the next
    /// request there and save the hop.
    Forwarded {
        /// The leader's client address.
        leader: String,
        /// The leader's answer.
        response: Box<Response>,
    },
}

/// Errors a client can act on. Each says what to do.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum KvError {
    /// No leader is known yet (an election is under way): retry shortly.
    #[error("no leader is elected yet; retry in a moment")]
    NoLeader,
    /// This node is not the leader; the leader is `leader` at `address`.
    #[error("node is not the leader; the leader is node {leader} at {address}")]
    NotLeader {
        /// The leader's id.
        leader: NodeId,
        /// The leader's address.
        address: String,
    },
    /// Another membership change is not committed yet: retry when it is.
    #[error("a membership change is in progress; retry once it has committed")]
    ConfigChangeInProgress,
    /// Leadership is being handed over: retry shortly (on the new leader).
    #[error("leadership is being transferred; retry in a moment")]
    TransferInProgress,
    /// The request did not complete in time; a write may or may not have
    /// been applied (retrying with the same session is safe).
    #[error(
        "the request timed out; it may or may not have taken effect (retrying with the same session is safe)"
    )]
    Timeout,
    /// The node could not reach the leader (or a node could not be
    /// reached): retry; a write may or may not have taken effect (retrying
    /// with the same session is safe).
    #[error("unavailable: {0}; retry (with the same session a retried write is safe)")]
    Unavailable(String),
    /// The node is shutting down: use another node.
    #[error("the node is shutting down; use another node")]
    ShuttingDown,
    /// The leader lost leadership before the request committed; a write may
    /// or may not have been applied (retrying with the same session is safe).
    #[error(
        "leadership was lost before the request completed; retry (with the same session it is safe)"
    )]
    LeadershipLost,
    /// The request is invalid (too large, bad arguments...).
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// The membership change is not allowed.
    #[error("membership change refused: {0}")]
    MembershipChange(String),
    /// A leadership transfer is not allowed.
    #[error("leadership transfer refused: {0}")]
    Transfer(String),
    /// The write's session expired (the cluster keeps a bounded number of
    /// sessions and results, forgetting the least recently used), or its
    /// result was discarded. The write was not applied now; an earlier
    /// attempt of it may have been. The client opens a new session for its
    /// next write.
    #[error(
        "the client session expired (too many sessions, or its result was discarded): this write was not applied now, but an earlier attempt of it may have been; check, then retry (a new session is opened)"
    )]
    SessionExpired,
    /// The requested watch revision is compacted on this node.
    #[error(
        "revision {requested} is compacted; the oldest available is {oldest}; re-read and watch from there"
    )]
    Compacted {
        /// The revision asked for.
        requested: u64,
        /// The oldest revision still available.
        oldest: u64,
    },
    /// Fault injection is not enabled on this node.
    #[error(
        "fault injection is not enabled on this node (start it with --enable-fault-injection, tests only)"
    )]
    FaultInjectionDisabled,
    /// The node failed internally (storage): it needs attention.
    #[error("internal error on the node: {0}")]
    Internal(String),
    /// The leader was elected moments ago and has not yet committed the
    /// first entry of its term; membership changes wait for that (Raft
    /// thesis §4.1). It takes a round trip: retry in a moment.
    #[error(
        "the leader was just elected and has not committed its first entry yet; membership changes wait for it, retry in a moment"
    )]
    LeaderNotSettled,
    /// The certificate's role does not allow this request.
    #[error(
        "permission denied: this needs the {needed} role and the certificate in use has {role}; \
         use a certificate issued with `raft-cli certs client --name NAME --role {needed}` \
         (`cargo xtask cluster` writes admin.pem beside cli.env)"
    )]
    PermissionDenied {
        /// The role the request needs.
        needed: Role,
        /// The role the caller has.
        role: Role,
    },
    /// The caller may not make this request whatever its role: a client
    /// presenting a forwarded request, a node that is not a member, a write
    /// in another client's session.
    #[error("refused: {0}")]
    Forbidden(String),
    /// A limit on what one client may hold on a node was reached (watches
    /// open at once, a watch's queue of events not yet taken): the message
    /// says which and what to do.
    #[error("limit reached: {0}")]
    LimitReached(String),
    /// The lease does not exist (it expired, was revoked, or never was).
    #[error("lease {id:x} not found (it expired, was revoked, or never existed); grant a new one")]
    LeaseNotFound {
        /// The lease.
        id: u64,
    },
    /// A lease with the requested id exists already.
    #[error(
        "lease {id:x} exists already; grant with another id, or with 0 to let the cluster choose"
    )]
    LeaseExists {
        /// The lease.
        id: u64,
    },
    /// A read or compaction named a revision the store has not reached
    /// (etcd's `ErrFutureRev`).
    #[error(
        "revision {requested} is ahead of the store's ({current}); read at revision 0 (the latest) \
         or at one an answer reported"
    )]
    FutureRevision {
        /// The revision asked for.
        requested: u64,
        /// The store's revision when it was asked.
        current: u64,
    },
}

/// Whom a request acts for: the client whose certificate presented it, or
/// the client a member node forwarded it for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Principal {
    /// The identity sessions are keyed by: a client's certificate name, or
    /// `node N` for a member node acting on its own behalf.
    pub name: String,
    /// What it may do.
    pub role: Role,
}

impl Principal {
    /// Who `caller` acts as on its own behalf: a client by its certificate,
    /// a node as an administrator (its certificate already holds a
    /// member's rights over the log).
    pub fn of(caller: &Caller) -> Self {
        match caller {
            Caller::Client { name, role } => Self {
                name: name.clone(),
                role: *role,
            },
            Caller::Node(id) => Self {
                name: format!("node {id}"),
                role: Role::Admin,
            },
        }
    }
}

/// Encodes a value with postcard.
pub fn encode<T: Serialize>(value: &T) -> Bytes {
    // Serialising our own in-memory types cannot fail.
    Bytes::from(postcard::to_stdvec(value).unwrap_or_default())
}

/// Decodes a value with postcard.
pub fn decode<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, KvError> {
    postcard::from_bytes(bytes)
        .map_err(|e| KvError::InvalidRequest(format!("undecodable message: {e}")))
}

/// Checks a write's sizes.
pub fn validate_write(op: &WriteOp) -> Result<(), KvError> {
    match op {
        WriteOp::OpenSession => {
            return Err(KvError::InvalidRequest(
                "a session is opened with Request::OpenSession, not written".into(),
            ));
        }
        WriteOp::LeaseExpire { .. } => {
            return Err(KvError::InvalidRequest(
                "leases expire by the leader's clock; revoke one with LeaseRevoke".into(),
            ));
        }
        WriteOp::LeaseGrant { ttl, .. } if *ttl > MAX_LEASE_TTL => {
            return Err(KvError::InvalidRequest(format!(
                "a lease lives at most {MAX_LEASE_TTL} seconds, {ttl} were asked"
            )));
        }
        WriteOp::LeaseGrant { id, .. } | WriteOp::LeaseRevoke { id } if *id > i64::MAX as u64 => {
            return Err(KvError::InvalidRequest(format!(
                "lease ids are at most {} (etcd's are int64)",
                i64::MAX
            )));
        }
        WriteOp::LeaseGrant { .. } | WriteOp::LeaseRevoke { .. } => return Ok(()),
        WriteOp::Compact { revision } if *revision > i64::MAX as u64 => {
            return Err(KvError::InvalidRequest(format!(
                "a compaction names a revision from 0 to {}, not {revision}",
                i64::MAX
            )));
        }
        WriteOp::Compact { .. } => return Ok(()),
        WriteOp::PublishMember { client_urls, .. } => {
            if client_urls.len() > MAX_CLIENT_URLS
                || client_urls.iter().any(|url| url.len() > MAX_CLIENT_URL_LEN)
            {
                return Err(KvError::InvalidRequest(format!(
                    "a member publishes at most {MAX_CLIENT_URLS} client URLs of at most \
                     {MAX_CLIENT_URL_LEN} bytes each"
                )));
            }
            return Ok(());
        }
        // etcd's checks of a put, in its order.
        WriteOp::PutWith { key, .. } if key.is_empty() => {
            return Err(KvError::InvalidRequest(EMPTY_KEY.into()));
        }
        WriteOp::PutWith {
            value,
            ignore_value: true,
            ..
        } if !value.is_empty() => {
            return Err(KvError::InvalidRequest(
                "etcdserver: value is provided".into(),
            ));
        }
        WriteOp::PutWith {
            lease,
            ignore_lease: true,
            ..
        } if *lease != 0 => {
            return Err(KvError::InvalidRequest(
                "etcdserver: lease is provided".into(),
            ));
        }
        _ => {}
    }
    if let WriteOp::Txn(txn) = op {
        return validate_txn(txn);
    }
    let key = op.key();
    if key.is_empty() || key.len() > MAX_KEY_LEN {
        return Err(KvError::InvalidRequest(format!(
            "keys must be 1 to {MAX_KEY_LEN} bytes, got {}",
            key.len()
        )));
    }
    let value_len = match op {
        WriteOp::Put { value, .. } | WriteOp::PutWith { value, .. } => value.len(),
        WriteOp::Delete { .. } => 0,
        WriteOp::Cas { expected, new, .. } => expected
            .as_ref()
            .map_or(0, Bytes::len)
            .max(new.as_ref().map_or(0, Bytes::len)),
        WriteOp::OpenSession
        | WriteOp::Txn(_)
        | WriteOp::LeaseGrant { .. }
        | WriteOp::LeaseRevoke { .. }
        | WriteOp::LeaseExpire { .. }
        | WriteOp::Compact { .. }
        | WriteOp::PublishMember { .. } => 0,
    };
    if value_len > MAX_VALUE_LEN {
        return Err(KvError::InvalidRequest(format!(
            "values may be at most {MAX_VALUE_LEN} bytes, got {value_len}"
        )));
    }
    Ok(())
}

/// etcd's answer to a transaction that changes one key twice.
pub const DUPLICATE_KEY: &str = "etcdserver: duplicate key given in txn request";
/// etcd's answer to a transaction with more than [`MAX_TXN_OPS`]
/// comparisons or operations in a branch.
pub const TOO_MANY_OPS: &str = "etcdserver: too many operations in txn request";
/// etcd's answer to an operation with an empty key.
pub const EMPTY_KEY: &str = "etcdserver: key is not provided";
/// etcd's answer to a put with `ignore_value` or `ignore_lease` of a key
/// that does not exist.
pub const KEY_NOT_FOUND: &str = "etcdserver: key not found";

/// Checks a transaction as etcd's front end does, in its order: at most
/// [`MAX_TXN_OPS`] comparisons and operations per branch, no empty key, a
/// put with `ignore_value` or `ignore_lease` gives no value or lease, the
/// same for nested transactions (at most [`MAX_TXN_DEPTH`] deep); then no
/// key changed twice (etcd's `checkIntervals`). Keys and values within
/// raft-kv's size limits.
fn validate_txn(txn: &Txn) -> Result<(), KvError> {
    check_txn(txn, 1)?;
    check_intervals(&txn.success)?;
    check_intervals(&txn.failure)?;
    Ok(())
}

fn check_txn(txn: &Txn, depth: usize) -> Result<(), KvError> {
    let etcd = |message: &str| Err(KvError::InvalidRequest(message.into()));
    if txn
        .compares
        .len()
        .max(txn.success.len())
        .max(txn.failure.len())
        > MAX_TXN_OPS
    {
        return etcd(TOO_MANY_OPS);
    }
    if depth > MAX_TXN_DEPTH {
        return Err(KvError::InvalidRequest(format!(
            "transactions are nested at most {MAX_TXN_DEPTH} deep"
        )));
    }
    let check_key = |key: &Bytes| {
        if key.is_empty() {
            return etcd(EMPTY_KEY);
        }
        if key.len() > MAX_KEY_LEN {
            return Err(KvError::InvalidRequest(format!(
                "keys must be 1 to {MAX_KEY_LEN} bytes, got {}",
                key.len()
            )));
        }
        Ok(())
    };
    let check_range = |keys: &KeyRange| {
        check_key(&keys.key)?;
        if keys.range_end.len() > MAX_KEY_LEN {
            return Err(KvError::InvalidRequest(format!(
                "a range end is at most {MAX_KEY_LEN} bytes"
            )));
        }
        Ok(())
    };
    let check_value = |value: &Bytes| {
        if value.len() > MAX_VALUE_LEN {
            return Err(KvError::InvalidRequest(format!(
                "values may be at most {MAX_VALUE_LEN} bytes, got {}",
                value.len()
            )));
        }
        Ok(())
    };
    for compare in &txn.compares {
        check_range(&compare.keys)?;
        if let CompareTarget::Value(value) = &compare.target {
            check_value(value)?;
        }
    }
    for op in txn.success.iter().chain(&txn.failure) {
        match op {
            TxnOp::Put {
                key,
                value,
                lease,
                ignore_value,
                ignore_lease,
                ..
            } => {
                check_key(key)?;
                if *ignore_value && !value.is_empty() {
                    return etcd("etcdserver: value is provided");
                }
                if *ignore_lease && *lease != 0 {
                    return etcd("etcdserver: lease is provided");
                }
                check_value(value)?;
            }
            TxnOp::Delete { keys, .. } | TxnOp::Range { keys, .. } => check_range(keys)?,
            TxnOp::Txn(nested) => check_txn(&nested.0, depth + 1)?,
        }
    }
    Ok(())
}

/// etcd's rule that one revision holds at most one change of a key: in a
/// branch, no key is put twice nor put inside a range a delete of the
/// branch (or of a transaction nested in it) names, where the two branches
/// of a nested transaction may each put a key (only one runs). As etcd's
/// interval check, a delete to the end of the key space (`range_end` of
/// `[0]`) conflicts with no put. Returns the branch's puts and deletes.
fn check_intervals(ops: &[TxnOp]) -> Result<(BTreeSet<Bytes>, Vec<KeyRange>), KvError> {
    let duplicate = || Err(KvError::InvalidRequest(DUPLICATE_KEY.into()));
    let hits = |deletes: &[KeyRange], key: &Bytes| {
        deletes
            .iter()
            .any(|d| d.range_end.as_ref() != [0] && d.contains(key))
    };
    let mut deletes: Vec<KeyRange> = ops
        .iter()
        .filter_map(|op| match op {
            TxnOp::Delete { keys, .. } => Some(keys.clone()),
            _ => None,
        })
        .collect();
    let mut puts = BTreeSet::new();
    for op in ops {
        let TxnOp::Txn(nested) = op else { continue };
        let (puts_then, deletes_then) = check_intervals(&nested.0.success)?;
        let (puts_else, deletes_else) = check_intervals(&nested.0.failure)?;
        for key in &puts_then {
            if puts.contains(key) || hits(&deletes, key) {
                return duplicate();
            }
            puts.insert(key.clone());
        }
        for key in puts_else {
            if (puts.contains(&key) && !puts_then.contains(&key)) || hits(&deletes, &key) {
                return duplicate();
            }
            puts.insert(key);
        }
        deletes.extend(deletes_then);
        deletes.extend(deletes_else);
    }
    for op in ops {
        if let TxnOp::Put { key, .. } = op {
            if puts.contains(key) || hits(&deletes, key) {
                return duplicate();
            }
            puts.insert(key.clone());
        }
    }
    Ok((puts, deletes))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(key: &'static str) -> TxnOp {
        TxnOp::Put {
            key: Bytes::from_static(key.as_bytes()),
            value: Bytes::from_static(b"v"),
            prev_kv: false,
            lease: 0,
            ignore_value: false,
            ignore_lease: false,
        }
    }

    fn delete(key: &'static str, range_end: &'static [u8]) -> TxnOp {
        TxnOp::Delete {
            keys: KeyRange {
                key: Bytes::from_static(key.as_bytes()),
                range_end: Bytes::from_static(range_end),
            },
            prev_kv: false,
        }
    }

    /// etcd refuses a transaction whose branch changes one key twice (two
    /// puts, or a put inside a range it deletes): one revision holds one
    /// change of a key. The two branches are checked apart.
    #[test]
    fn a_transaction_that_changes_a_key_twice_is_refused_as_etcd_does() {
        let refused = |success: Vec<TxnOp>| {
            validate_write(&WriteOp::Txn(Txn {
                compares: Vec::new(),
                success,
                failure: vec![put("a")],
            }))
        };
        let duplicate = Err(KvError::InvalidRequest(DUPLICATE_KEY.into()));
        assert_eq!(refused(vec![put("a"), put("a")]), duplicate);
        assert_eq!(refused(vec![delete("a/", b"a0"), put("a/1")]), duplicate);
        assert_eq!(refused(vec![put("k"), delete("k", b"")]), duplicate);
        assert_eq!(refused(vec![put("a"), delete("b", b"")]), Ok(()));
        assert_eq!(refused(vec![put("a/"), delete("a/1", b"a/9")]), Ok(()));
    }
}
