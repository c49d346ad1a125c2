//! Hostile peers against one `raft_core::Node` (over `raft_core::MemLog`):
//! whatever messages arrive (votes, appends, heartbeats, snapshot chunks,
//! read-index traffic, with any terms, indexes, memberships and snapshot
//! metadata), the node answers `Ok` or a typed error and never panics. The
//! host loop around it is the one in raft-core's crate documentation:
//! persist each `Ready`'s writes to the `MemLog`, acknowledge them, apply
//! committed entries, build snapshots when asked.
//!
//! Input: one byte of configuration flags, then a sequence of
//! postcard-encoded [`Op`]s. Peers' messages are addressed to the node and
//! their senders mapped into the cluster (unless flag 0x80 asks for raw
//! ids); with flag 0x10 their terms are made relative to the node's (stale,
//! current, next), so the fuzzer need not guess terms. [`Op::Reply`]
//! answers one of the node's own messages as a peer would, which lets the
//! fuzzer drive the node to leadership, replication and snapshot sending.
//!
//! Checks besides "no panic": the term never decreases; the commit index
//! never decreases while the node runs; committed entries come out in
//! order, without gaps, and only up to the commit index; every message the
//! node sends is from itself; a node always quiesces (`has_ready` turns
//! false).

use bytes::Bytes;
use raft_core::{
    AppendResponse, ConfChange, Config, EntryPayload, Error, HeartbeatResponse, Index, MemLog,
    Membership, Message, MessageBody, Node, NodeId, ReadIndexResponse, ReadPolicy,
    SnapshotResponse, VoteResponse,
};
use serde::{Deserialize, Serialize};

/// This node's id.
pub const ID: NodeId = 1;
/// At most this many operations per input.
const MAX_OPS: usize = 256;
/// `ready()` rounds after which a node that still has output is stuck.
const MAX_READY_ROUNDS: usize = 1000;

/// One input to the node or its host.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Op {
    /// A message from a peer.
    Step(Message),
    /// `n % 32 + 1` ticks.
    Tick(u8),
    /// `Node::campaign`.
    Campaign,
    /// `Node::propose`.
    Propose(Bytes),
    /// `Node::propose_membership`.
    ProposeMembership(ConfChange),
    /// `Node::read_index`.
    ReadIndex {
        /// The read's id.
        id: u64,
        /// A lease read rather than ReadIndex.
        lease: bool,
    },
    /// `Node::transfer_leader`.
    TransferLeader(NodeId),
    /// `Node::report_unreachable`.
    ReportUnreachable(NodeId),
    /// The peer a message went to answers it: the `pick`-th most recent
    /// message the node sent, positively if `accept`.
    Reply {
        /// Which message (counted from the most recent).
        pick: u16,
        /// Grant, succeed, install; or refuse, reject.
        accept: bool,
    },
    /// A crash and restart: a new node from what the `MemLog` holds.
    Restart,
}

/// The configuration flags (the input's first byte).
pub mod flags {
    /// `Config::pre_vote`.
    pub const PRE_VOTE: u8 = 0x01;
    /// `Config::check_quorum`.
    pub const CHECK_QUORUM: u8 = 0x02;
    /// `Config::lease_reads` (with `check_quorum`).
    pub const LEASE_READS: u8 = 0x04;
    /// Snapshot every few entries, in small chunks.
    pub const SMALL_SNAPSHOTS: u8 = 0x08;
    /// Peers' terms relative to the node's.
    pub const RELATIVE_TERMS: u8 = 0x10;
    /// Five voters instead of three.
    pub const FIVE_VOTERS: u8 = 0x20;
    /// The node starts empty (it joins an existing cluster).
    pub const JOINING: u8 = 0x40;
    /// Peers' `from` and `to` as decoded.
    pub const RAW_IDS: u8 = 0x80;
}

/// The host: the node, what it sent, and what its state machine applied.
struct Host {
    node: Node<MemLog>,
    config: Config,
    sent: Vec<Message>,
    /// The last index the state machine applied (or restored).
    applied: Index,
    term: u64,
    commit: Index,
}

/// Why an input ends early: the host would stop the node.
struct Halt;

/// The check (see the module documentation).
pub fn check(data: &[u8]) {
    let Some((&flag_byte, mut rest)) = data.split_first() else {
        return;
    };
    let voters: u64 = if flag_byte & flags::FIVE_VOTERS != 0 {
        5
    } else {
        3
    };
    let mut config = Config::new(ID);
    config.pre_vote = flag_byte & flags::PRE_VOTE != 0;
    config.check_quorum = flag_byte & (flags::CHECK_QUORUM | flags::LEASE_READS) != 0;
    config.lease_reads = flag_byte & flags::LEASE_READS != 0;
    if flag_byte & flags::SMALL_SNAPSHOTS != 0 {
        config.snapshot.threshold = 4;
        config.snapshot.retention = 1;
        config.snapshot.chunk_size = 16;
        config.snapshot.chunks_in_flight = 2;
    }
    let store = if flag_byte & flags::JOINING != 0 {
        MemLog::new()
    } else {
        MemLog::bootstrap(Membership::with_voters(
            (1..=voters).map(|id| (id, format!("node-{id}"))),
        ))
    };
    let node = Node::new(config.clone(), store).expect("a valid configuration starts");
    let mut host = Host {
        node,
        config,
        sent: Vec::new(),
        applied: 0,
        term: 0,
        commit: 0,
    };
    for _ in 0..MAX_OPS {
        let Ok((op, tail)) = postcard::take_from_bytes::<Op>(rest) else {
            break;
        };
        rest = tail;
        let trace = trace().then(|| format!("{op:?}"));
        let halted = host.run(op, flag_byte, voters).is_err();
        if let Some(op) = trace {
            eprintln!(
                "{op} -> {:?} term {} commit {} applied {}{}; last sent {:?}",
                host.node.role(),
                host.node.term(),
                host.node.commit_index(),
                host.applied,
                if halted { " (halted)" } else { "" },
                host.sent
                    .iter()
                    .rev()
                    .take(3)
                    .map(|m| (m.to, m.kind()))
                    .collect::<Vec<_>>()
            );
        }
        if halted {
            break;
        }
    }
}

/// Whether to print each operation and the node's state after it
/// (`RAFT_FUZZ_TRACE=1`, when writing seeds).
fn trace() -> bool {
    static TRACE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *TRACE.get_or_init(|| std::env::var_os("RAFT_FUZZ_TRACE").is_some())
}

impl Host {
    fn run(&mut self, op: Op, flag_byte: u8, voters: u64) -> Result<(), Halt> {
        let result = match op {
            Op::Step(mut message) => {
                if flag_byte & flags::RAW_IDS == 0 {
                    message.to = ID;
                    // Ids in the cluster (and one outside it) stay as
                    // they are; others are folded into that range.
                    if !(1..=voters + 1).contains(&message.from) {
                        message.from = 1 + message.from % (voters + 1);
                    }
                }
                if flag_byte & flags::RELATIVE_TERMS != 0 {
                    message.term = self.relative_term(message.term);
                }
                self.node.step(message)
            }
            Op::Tick(n) => (0..n % 32 + 1).try_for_each(|_| self.node.tick()),
            Op::Campaign => self.node.campaign(),
            Op::Propose(data) => self.node.propose(data).map(drop),
            Op::ProposeMembership(change) => self.node.propose_membership(change).map(drop),
            Op::ReadIndex { id, lease } => {
                let policy = if lease {
                    ReadPolicy::Lease
                } else {
                    ReadPolicy::ReadIndex
                };
                self.node.read_index(id, policy)
            }
            Op::TransferLeader(target) => self.node.transfer_leader(target),
            Op::ReportUnreachable(peer) => {
                self.node.report_unreachable(peer);
                Ok(())
            }
            Op::Reply { pick, accept } => match self.reply(pick, accept) {
                Some(reply) => self.node.step(reply),
                None => Ok(()),
            },
            Op::Restart => {
                let store = self.node.store().clone();
                match Node::new(self.config.clone(), store) {
                    Ok(node) => {
                        self.node = node;
                        self.applied = self
                            .node
                            .store()
                            .snapshot()
                            .map_or(0, |(meta, _)| meta.last.index);
                        self.commit = 0;
                        self.sent.clear();
                        Ok(())
                    }
                    Err(error) => {
                        // Only storage the node cannot trust stops a restart.
                        assert!(matches!(error, Error::Storage(_)), "{error}");
                        return Err(Halt);
                    }
                }
            }
        };
        Self::outcome(result)?;
        self.drain()
    }

    /// A term near the node's: one behind, the same, or one ahead.
    fn relative_term(&self, raw: u64) -> u64 {
        let term = self.node.term();
        match raw % 4 {
            0 => term.saturating_sub(1),
            1 | 2 => term,
            _ => term.saturating_add(1),
        }
    }

    /// A peer's natural answer to one of the node's messages.
    fn reply(&self, pick: u16, accept: bool) -> Option<Message> {
        let len = self.sent.len();
        if len == 0 {
            return None;
        }
        let sent = &self.sent[len - 1 - pick as usize % len];
        let body = match &sent.body {
            MessageBody::PreVote(_) => {
                MessageBody::PreVoteResponse(VoteResponse { granted: accept })
            }
            MessageBody::Vote(_) => MessageBody::VoteResponse(VoteResponse { granted: accept }),
            MessageBody::Append(request) => MessageBody::AppendResponse(if accept {
                AppendResponse::Success {
                    match_index: request
                        .prev
                        .index
                        .saturating_add(request.entries.len() as u64),
                }
            } else {
                // A follower that lost its log: the leader must go back to
                // the start, or send a snapshot.
                AppendResponse::Rejected {
                    rejected: request.prev.index,
                    hint: raft_core::LogId::default(),
                }
            }),
            MessageBody::Heartbeat(heartbeat) => {
                MessageBody::HeartbeatResponse(HeartbeatResponse {
                    round: heartbeat.round,
                })
            }
            MessageBody::Snapshot(chunk) => MessageBody::SnapshotResponse(SnapshotResponse {
                snapshot_index: chunk.meta.last.index,
                next_offset: if accept {
                    chunk.offset.saturating_add(chunk.data.len() as u64)
                } else {
                    0
                },
                rejected: !accept,
                installed: accept && chunk.done,
            }),
            MessageBody::ReadIndex(request) => MessageBody::ReadIndexResponse(ReadIndexResponse {
                id: request.id,
                index: accept.then_some(self.node.commit_index()),
            }),
            // Answers and TimeoutNow get no answer.
            _ => return None,
        };
        Some(Message {
            from: sent.to,
            to: ID,
            term: sent.term,
            body,
        })
    }

    /// Typed errors are fine; a storage error stops the node, as a host
    /// would.
    fn outcome(result: Result<(), Error>) -> Result<(), Halt> {
        match result {
            Ok(()) => Ok(()),
            Err(error) => {
                let _ = error.to_string();
                match error {
                    Error::Storage(_) => Err(Halt),
                    _ => Ok(()),
                }
            }
        }
    }

    /// The host loop of raft-core's crate documentation, until the node has
    /// nothing more to hand out.
    fn drain(&mut self) -> Result<(), Halt> {
        let mut rounds = 0;
        while self.node.has_ready() {
            rounds += 1;
            assert!(
                rounds <= MAX_READY_ROUNDS,
                "has_ready() stays true after {MAX_READY_ROUNDS} ready() calls"
            );
            let ready = match self.node.ready() {
                Ok(ready) => ready,
                Err(error) => return Self::outcome(Err(error)),
            };
            self.record_sent(&ready.messages);
            // A write the MemLog refuses is corrupt input reaching storage:
            // the host stops, as it would on a real store error.
            if self.node.store_mut().apply(&ready.write).is_err() {
                return Err(Halt);
            }
            if let Some(meta) = &ready.write.install_snapshot {
                // The state machine restores the snapshot.
                self.applied = meta.last.index;
            }
            self.record_sent(&ready.persisted_messages);
            Self::outcome(self.node.on_persisted(ready.number))?;

            let commit = self.node.commit_index();
            for entry in &ready.committed_entries {
                assert_eq!(
                    entry.index,
                    self.applied + 1,
                    "committed entries out of order or with a gap"
                );
                assert!(entry.index <= commit, "an uncommitted entry handed out");
                if let EntryPayload::Membership(membership) = &entry.payload {
                    let _ = membership.voters().len();
                }
                self.applied = entry.index;
            }
            if let Some(last) = ready.committed_entries.last() {
                Self::outcome(self.node.on_applied(last.index))?;
            }
            if ready.snapshot_due {
                self.build_snapshot()?;
            }
            self.check_progress();
        }
        self.check_progress();
        Ok(())
    }

    /// The host snapshots its state machine as of what it applied.
    fn build_snapshot(&mut self) -> Result<(), Halt> {
        let data = Bytes::from(self.applied.to_le_bytes().repeat(5));
        match self.node.snapshot_meta_for(self.applied, data.len() as u64) {
            Ok(meta) => {
                self.node.store_mut().save_snapshot(meta.clone(), data);
                Self::outcome(self.node.on_snapshot_built(&meta))
            }
            Err(error) => Self::outcome(Err(error)),
        }
    }

    fn record_sent(&mut self, messages: &[Message]) {
        for message in messages {
            assert_eq!(message.from, ID, "a message not from this node");
            let _ = message.kind();
        }
        self.sent.extend_from_slice(messages);
        if self.sent.len() > 256 {
            self.sent.drain(..self.sent.len() - 128);
        }
    }

    fn check_progress(&mut self) {
        let term = self.node.term();
        assert!(
            term >= self.term,
            "term went back from {} to {term}",
            self.term
        );
        self.term = term;
        let commit = self.node.commit_index();
        assert!(
            commit >= self.commit,
            "commit index went back from {} to {commit}",
            self.commit
        );
        self.commit = commit;
        let _ = self.node.status();
    }
}
