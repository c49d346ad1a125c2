//! A point-in-time view of a node for operators and metrics.

use serde::{Deserialize, Serialize};

use crate::membership::Membership;
use crate::node::Role;
use crate::progress::ReplicationState;
use crate::types::{Index, LogId, NodeId, Term};

/// A node's state, as [`crate::Node::status`] reports it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Status {
    /// This node's id.
    pub id: NodeId,
    /// Its role.
    pub role: Role,
    /// Its current term.
    pub term: Term,
    /// Whom it voted for in `term`.
    pub vote: Option<NodeId>,
    /// The leader it follows, if known.
    pub leader: Option<NodeId>,
    /// Its commit index.
    pub commit: Index,
    /// Its applied index.
    pub applied: Index,
    /// Its last log entry.
    pub last_log: LogId,
    /// Its first readable log index.
    pub first_index: Index,
    /// The configuration in force.
    pub membership: Membership,
    /// Whether it is a voter in that configuration.
    pub is_voter: bool,
    /// The target of a leadership transfer in progress.
    pub transfer_target: Option<NodeId>,
    /// Ticks since this node last heard from a leader (or stopped leading,
    /// or started). Below the election timeout it refuses votes for other
    /// candidates when CheckQuorum is on: the promise a leader's lease rests
    /// on.
    #[serde(default)]
    pub leader_contact_ticks: u64,
    /// Replication state per follower (leaders only).
    pub followers: Vec<FollowerStatus>,
    /// Event counters since the node started.
    pub counters: Counters,
}

/// What a leader knows about one follower.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct FollowerStatus {
    /// The follower's id.
    pub id: NodeId,
    /// Whether it is a learner.
    pub is_learner: bool,
    /// The highest index known to match the leader's log.
    pub match_index: Index,
    /// The next index the leader will send.
    pub next_index: Index,
    /// AppendEntries messages in flight.
    pub inflight: usize,
    /// How the leader is replicating to it.
    pub state: ReplicationState,
    /// Entries it is behind the leader's last index.
    pub lag: u64,
    /// Whether it answered within the last election timeout.
    pub recent_active: bool,
    /// While a snapshot is being sent: (bytes acknowledged, total bytes).
    pub snapshot_bytes_acked: Option<(u64, u64)>,
}

/// Event counters.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    /// Elections this node started (real votes, not pre-votes).
    pub elections_started: u64,
    /// Elections it won.
    pub elections_won: u64,
    /// Proposals it accepted as leader (commands and configuration changes).
    pub proposals: u64,
    /// AppendEntries messages it sent.
    pub appends_sent: u64,
    /// AppendEntries messages it received.
    pub appends_received: u64,
    /// Snapshots the host built for it.
    pub snapshots_built: u64,
    /// Snapshots it installed from a leader.
    pub snapshots_installed: u64,
    /// Snapshot transfers it started as leader.
    pub snapshots_sent: u64,
    /// ReadIndex requests it handled.
    pub read_index_requests: u64,
    /// Reads it served from its lease.
    pub lease_reads: u64,
    /// Leadership transfers it started.
    pub leader_transfers: u64,
    /// Peer messages it dropped as malformed (an AppendEntries whose
    /// entries are not contiguous after `prev`, a snapshot chunk outside
    /// its snapshot, ...); each is logged at warn level.
    #[serde(default)]
    pub malformed_messages: u64,
    /// Answers from peers that it dropped as out of range: replication
    /// answers beyond its log, heartbeat acknowledgements of rounds it never
    /// sent. No genuine peer sends them; each is logged at warn level.
    #[serde(default)]
    pub out_of_range_answers: u64,
    /// Peer messages it dropped because their sender was removed from the
    /// cluster by a committed configuration (a removed node's certificate
    /// still opens connections; its votes must not depose a leader).
    #[serde(default)]
    pub messages_from_removed: u64,
}
