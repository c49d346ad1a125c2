//! Typed errors. Every variant says what happened and what the caller can do.

use crate::types::{Index, NodeId};

/// Errors returned by [`crate::Node`] operations.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// Only the leader takes proposals, reads and configuration changes. Retry
    /// on the leader named by `leader_hint`, or wait for an election if it is
    /// `None`.
    #[error("this node is not the leader{}", match .leader_hint { Some(id) => format!("; try node {id}"), None => "; no leader is known yet, retry after an election".to_string() })]
    NotLeader {
        /// The leader this node currently believes in, if any.
        leader_hint: Option<NodeId>,
    },
    /// This node heard from a live leader within the election timeout (or
    /// just started, with lease reads on), so it refuses votes to other
    /// candidates and may not vote for itself either: that leader's lease
    /// may still hold. Retry after an election timeout, or move leadership
    /// with `transfer_leader` on the leader.
    #[error("a leader{} was heard from within the election timeout; its lease may still hold, so this node will not campaign now: retry later or transfer leadership from the leader", match .leader_hint { Some(id) => format!(" (node {id})"), None => String::new() })]
    InLease {
        /// The leader this node heard from, if it knows it.
        leader_hint: Option<NodeId>,
    },
    /// The leader is handing leadership to another node and takes no
    /// proposals meanwhile; retry on the new leader shortly.
    #[error("leadership is being transferred to node {target}; retry on it shortly")]
    TransferInProgress {
        /// The node leadership is moving to.
        target: NodeId,
    },
    /// A configuration change is already in the log but not yet committed;
    /// only one change may be in flight. Retry once it commits.
    #[error("configuration change at index {pending_index} is not committed yet; retry once it is")]
    ConfigChangeInProgress {
        /// The index of the uncommitted change (or, for a leader elected in
        /// this term, of the last entry of the previous terms).
        pending_index: Index,
    },
    /// This node was just elected and has not yet committed the first entry
    /// of its term; configuration changes wait for it (Raft thesis §4.1).
    /// It usually takes one round trip to a quorum: retry in a moment.
    #[error(
        "the leader of term {term} has not committed its first entry (index {index}) yet; membership changes wait for it, retry in a moment"
    )]
    LeaderNotSettled {
        /// The leader's term.
        term: crate::types::Term,
        /// The index of the term's first entry (the leader's no-op).
        index: Index,
    },
    /// The requested configuration change is invalid.
    #[error("invalid configuration change: {0}")]
    ConfChange(#[from] ConfChangeError),
    /// Leadership transfer needs a target other than this node.
    #[error("node {0} is already the leader; pick another node to transfer leadership to")]
    TransferToSelf(NodeId),
    /// Leadership can only go to a voter of the current configuration.
    #[error(
        "node {0} is not a voter of the current configuration; promote it before transferring leadership to it"
    )]
    TransferToNonVoter(NodeId),
    /// A lease read was asked for but [`crate::Config::lease_reads`] is off.
    #[error(
        "lease reads are disabled; enable Config::lease_reads (with check_quorum) or use a ReadIndex read"
    )]
    LeaseReadsDisabled,
    /// The host built a snapshot at `index`, but the node already has (or is
    /// installing) a snapshot at `newest` covering it. Discard the new one.
    #[error(
        "snapshot at index {index} is obsolete: a snapshot at {newest} already covers it; discard it"
    )]
    SnapshotObsolete {
        /// The index of the snapshot the host built.
        index: Index,
        /// The index of the newer snapshot.
        newest: Index,
    },
    /// The configuration is invalid.
    #[error("invalid raft configuration: {0}")]
    InvalidConfig(String),
    /// Reading the log failed. The node cannot continue safely: the host
    /// should stop it and fix the storage.
    #[error("storage: {0}")]
    Storage(#[from] StorageError),
}

/// Why a configuration change was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfChangeError {
    /// The change would leave no voter, and nobody could ever commit again.
    #[error("removed all voters; keep at least one voter")]
    NoVotersLeft,
    /// More than one voter would be added or removed at once, which could
    /// let two disjoint majorities exist. Make one change at a time.
    #[error(
        "more than one voter changed without entering joint config; change one voter at a time"
    )]
    MoreThanOneVoterChanged,
    /// Node id 0 is reserved.
    #[error("node id 0 is reserved; use ids from 1")]
    InvalidNodeId,
    /// The change refers to a node that is not a member.
    #[error("node {0} is not a member of the configuration")]
    NotAMember(NodeId),
    /// The id belonged to a member that was removed; ids are never reused
    /// (see [`crate::Membership::removed`]). Give the new node a new id.
    #[error(
        "node id {0} was removed from this cluster and is never reused; start the new node with a new id and an empty data directory"
    )]
    IdRemoved(NodeId),
    /// The change would not change anything.
    #[error("the configuration already has that shape; nothing to change")]
    NoChange,
}

/// Errors from a [`crate::LogRead`] implementation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StorageError {
    /// The requested entry was compacted into a snapshot.
    #[error("log entry {0} was compacted into a snapshot")]
    Compacted(Index),
    /// The requested entry is beyond the end of the log.
    #[error("log entry {0} is not in the log yet")]
    Unavailable(Index),
    /// The snapshot being read was replaced by a newer one.
    #[error("snapshot {0} was replaced by a newer snapshot")]
    SnapshotChanged(Index),
    /// Stored data failed a checksum or could not be decoded. Restore the
    /// node from a healthy replica (remove its data directory and re-add it).
    #[error("corrupt data in storage: {0}")]
    Corrupt(String),
    /// The disk holding the data is full. Free space or grow the volume,
    /// then restart the node; acknowledged data is intact.
    #[error("{0}")]
    DiskFull(String),
    /// The storage device failed.
    #[error("storage I/O failed: {0}")]
    Io(String),
}
