//! The values every part of Raft talks about: node ids, terms, log entries, hard
//! state and snapshot metadata.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::membership::Membership;

/// Identifies one replica. `0` is never a valid id (it means "none" on the wire of
/// some other Raft implementations, so we refuse it to avoid confusion).
pub type NodeId = u64;
/// A Raft term: a logical epoch with at most one leader.
pub type Term = u64;
/// A position in the replicated log; the first entry has index 1.
pub type Index = u64;

/// The position of one log entry: its index and the term it was created in.
/// Two logs that hold an entry with the same `LogId` are identical up to it
/// (the log matching property).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct LogId {
    /// The term of the leader that created the entry.
    pub term: Term,
    /// The entry's index in the log.
    pub index: Index,
}

impl LogId {
    /// A log position.
    pub const fn new(term: Term, index: Index) -> Self {
        Self { term, index }
    }
}

/// One log entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// The term of the leader that appended the entry.
    pub term: Term,
    /// The entry's position in the log.
    pub index: Index,
    /// What the entry carries.
    pub payload: EntryPayload,
}

/// What a log entry carries.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum EntryPayload {
    /// The empty entry a new leader appends so that it can commit entries of
    /// earlier terms (Raft paper §5.4.2, §8). The state machine skips it.
    Noop,
    /// An application command, opaque to Raft.
    Command(Bytes),
    /// A new cluster configuration. It takes effect as soon as it is in a log,
    /// committed or not (Raft thesis §4.1).
    Membership(Membership),
}

impl Entry {
    /// The entry's [`LogId`].
    pub fn log_id(&self) -> LogId {
        LogId::new(self.term, self.index)
    }

    /// Bytes this entry counts for against the replication byte budget: its
    /// payload plus a fixed overhead for index, term and framing.
    pub fn budget_size(&self) -> u64 {
        const OVERHEAD: u64 = 24;
        OVERHEAD
            + match &self.payload {
                EntryPayload::Noop => 0,
                EntryPayload::Command(data) => data.len() as u64,
                EntryPayload::Membership(m) => 16 * (m.voters().len() + m.learners().len()) as u64,
            }
    }
}

/// The state a node must persist before it answers messages: its term, the
/// candidate it voted for in that term, and (lazily) the commit index.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HardState {
    /// The latest term this node has seen.
    pub term: Term,
    /// The candidate this node voted for in `term`, if any.
    pub vote: Option<NodeId>,
    /// The highest index known committed. Persisting it is an optimisation
    /// (it spares re-discovering the commit after a restart); it may lag.
    pub commit: Index,
}

/// Describes a snapshot: the last entry it covers and the configuration in
/// force at that entry.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotMeta {
    /// The last log entry included in the snapshot.
    pub last: LogId,
    /// The cluster configuration as of `last`, with the index of the entry that
    /// introduced it.
    pub membership: Membership,
    /// Index of the log entry that introduced `membership` (0 for a bootstrap
    /// configuration).
    pub membership_index: Index,
    /// Size of the snapshot data in bytes.
    pub size: u64,
}
