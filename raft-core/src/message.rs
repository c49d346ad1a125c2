//! The messages Raft nodes exchange. They derive serde so that a transport can
//! encode them however it likes; raft-core never encodes them itself.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::types::{Entry, Index, LogId, NodeId, SnapshotMeta, Term};

/// A message from one node to another.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    /// The sender.
    pub from: NodeId,
    /// The recipient.
    pub to: NodeId,
    /// The sender's term (for pre-votes: the term the sender would campaign in).
    pub term: Term,
    /// What the message says.
    pub body: MessageBody,
}

/// The kinds of messages, with their contents.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MessageBody {
    /// "Would you vote for me if I campaigned?" (Raft thesis §9.6). Changes no
    /// term on either side.
    PreVote(VoteRequest),
    /// The answer to a [`MessageBody::PreVote`].
    PreVoteResponse(VoteResponse),
    /// RequestVote (Raft paper §5.2).
    Vote(VoteRequest),
    /// The answer to a [`MessageBody::Vote`].
    VoteResponse(VoteResponse),
    /// AppendEntries (Raft paper §5.3).
    Append(AppendRequest),
    /// The answer to a [`MessageBody::Append`].
    AppendResponse(AppendResponse),
    /// A leader's periodic "I am still here", carrying the commit index and a
    /// round number that confirms leadership for reads.
    Heartbeat(Heartbeat),
    /// The answer to a [`MessageBody::Heartbeat`].
    HeartbeatResponse(HeartbeatResponse),
    /// One chunk of a snapshot (InstallSnapshot, Raft paper §7).
    Snapshot(SnapshotChunk),
    /// The answer to a [`MessageBody::Snapshot`] chunk.
    SnapshotResponse(SnapshotResponse),
    /// "Campaign now": the last step of a leadership transfer (Raft thesis §3.10).
    TimeoutNow,
    /// A follower asks the leader for a read index on behalf of its client.
    ReadIndex(ReadIndexRequest),
    /// The leader's answer to a [`MessageBody::ReadIndex`].
    ReadIndexResponse(ReadIndexResponse),
}

/// A vote or pre-vote request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VoteRequest {
    /// The candidate's last log entry, for the up-to-date check (§5.4.1).
    pub last_log: LogId,
    /// Set when the campaign follows a leadership transfer: voters then grant
    /// the vote even though they recently heard from a leader.
    pub transfer: bool,
}

/// A vote or pre-vote answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VoteResponse {
    /// Whether the vote was granted.
    pub granted: bool,
}

/// AppendEntries: entries following `prev`, and the leader's commit index.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppendRequest {
    /// The entry just before `entries`; the follower must hold it.
    pub prev: LogId,
    /// Entries to append after `prev`; empty for a probe.
    pub entries: Vec<Entry>,
    /// The leader's commit index.
    pub commit: Index,
}

/// The answer to an AppendEntries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum AppendResponse {
    /// The follower's log now matches the leader's up to `match_index`, and
    /// everything up to it is durable.
    Success {
        /// The highest index known to match the leader's log.
        match_index: Index,
    },
    /// The follower does not hold the request's `prev` entry.
    Rejected {
        /// The `prev.index` of the rejected request.
        rejected: Index,
        /// Fast backtracking: the follower's last entry at or below `rejected`
        /// whose term is at most the request's `prev.term`. The leader skips
        /// straight to it instead of probing one index at a time.
        hint: LogId,
    },
}

/// A leader's heartbeat.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Heartbeat {
    /// The leader's commit index, capped at what the follower is known to hold.
    pub commit: Index,
    /// The leader's heartbeat round; echoed back to confirm leadership.
    pub round: u64,
}

/// The answer to a heartbeat.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeartbeatResponse {
    /// The round of the heartbeat being answered.
    pub round: u64,
}

/// One chunk of a snapshot.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotChunk {
    /// The snapshot this chunk belongs to.
    pub meta: SnapshotMeta,
    /// Byte offset of `data` within the snapshot.
    pub offset: u64,
    /// The chunk's bytes.
    pub data: Bytes,
    /// Set on the last chunk.
    pub done: bool,
}

/// The answer to a snapshot chunk.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotResponse {
    /// The snapshot being answered about (its last index).
    pub snapshot_index: Index,
    /// The offset the follower expects next; everything before it is durable.
    pub next_offset: u64,
    /// Set when the chunk was not the one expected (a chunk was lost, or the
    /// follower restarted): the leader resumes from `next_offset`.
    pub rejected: bool,
    /// Set once the whole snapshot is installed; the follower's log now
    /// matches up to `snapshot_index`.
    pub installed: bool,
}

/// A follower's request for a read index.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadIndexRequest {
    /// The follower's identifier for the read, echoed back.
    pub id: u64,
}

/// The leader's answer to a [`ReadIndexRequest`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadIndexResponse {
    /// The identifier from the request.
    pub id: u64,
    /// The read index, or `None` when the leader could not confirm its
    /// leadership (it was deposed or is transferring leadership).
    pub index: Option<Index>,
}

/// The kind of a message, without its contents: for metrics, logs and
/// transports that route kinds differently.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum MessageKind {
    /// [`MessageBody::PreVote`]
    PreVote,
    /// [`MessageBody::PreVoteResponse`]
    PreVoteResponse,
    /// [`MessageBody::Vote`]
    Vote,
    /// [`MessageBody::VoteResponse`]
    VoteResponse,
    /// [`MessageBody::Append`]
    Append,
    /// [`MessageBody::AppendResponse`]
    AppendResponse,
    /// [`MessageBody::Heartbeat`]
    Heartbeat,
    /// [`MessageBody::HeartbeatResponse`]
    HeartbeatResponse,
    /// [`MessageBody::Snapshot`]
    Snapshot,
    /// [`MessageBody::SnapshotResponse`]
    SnapshotResponse,
    /// [`MessageBody::TimeoutNow`]
    TimeoutNow,
    /// [`MessageBody::ReadIndex`]
    ReadIndex,
    /// [`MessageBody::ReadIndexResponse`]
    ReadIndexResponse,
}

impl MessageKind {
    /// Whether a transport should carry this kind on the bulk replication
    /// lane (appends and their answers) rather than the latency-sensitive
    /// control lane. Snapshot chunks are [`MessageKind::is_snapshot`].
    pub fn is_replication(self) -> bool {
        matches!(self, MessageKind::Append | MessageKind::AppendResponse)
    }

    /// Whether this kind carries snapshot data and may be large.
    pub fn is_snapshot(self) -> bool {
        matches!(self, MessageKind::Snapshot)
    }
}

impl Message {
    /// The kind of this message.
    pub fn kind(&self) -> MessageKind {
        self.body.kind()
    }
}

impl MessageBody {
    /// The kind of this message body.
    pub fn kind(&self) -> MessageKind {
        match self {
            MessageBody::PreVote(_) => MessageKind::PreVote,
            MessageBody::PreVoteResponse(_) => MessageKind::PreVoteResponse,
            MessageBody::Vote(_) => MessageKind::Vote,
            MessageBody::VoteResponse(_) => MessageKind::VoteResponse,
            MessageBody::Append(_) => MessageKind::Append,
            MessageBody::AppendResponse(_) => MessageKind::AppendResponse,
            MessageBody::Heartbeat(_) => MessageKind::Heartbeat,
            MessageBody::HeartbeatResponse(_) => MessageKind::HeartbeatResponse,
            MessageBody::Snapshot(_) => MessageKind::Snapshot,
            MessageBody::SnapshotResponse(_) => MessageKind::SnapshotResponse,
            MessageBody::TimeoutNow => MessageKind::TimeoutNow,
            MessageBody::ReadIndex(_) => MessageKind::ReadIndex,
            MessageBody::ReadIndexResponse(_) => MessageKind::ReadIndexResponse,
        }
    }
}
