//! Linearizable reads without writing to the log: ReadIndex (Raft thesis
//! §6.4) and, as an opt-in, leader leases (§6.4.1).
//!
//! A leader confirms it still leads with one heartbeat round: reads asked for
//! before a round starts are confirmed once a quorum of voters has answered
//! that round (or a later one). The read index is the commit index when the
//! read arrived; a read is served once the host has applied that far.

use std::collections::VecDeque;

use super::{Node, Role};
use crate::Message;
use crate::error::Error;
use crate::message::{MessageBody, ReadIndexRequest, ReadIndexResponse};
use crate::quorum;
use crate::ready::ReadState;
use crate::storage::LogRead;
use crate::types::{Index, NodeId};

/// How a read is confirmed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum ReadPolicy {
    /// Confirm leadership with a heartbeat round (ReadIndex). Always safe.
    #[default]
    ReadIndex,
    /// Serve from the leader's lease when it holds one, without a round trip;
    /// fall back to ReadIndex otherwise. Needs [`crate::Config::lease_reads`]
    /// and relies on bounded clock drift between nodes.
    Lease,
}

/// A read waiting for something: (read id, who asked, read index).
#[derive(Clone, Copy, Debug)]
struct PendingRead {
    id: u64,
    from: NodeId,
    index: Index,
    round: u64,
}

#[derive(Clone, Default)]
pub(super) struct Reads {
    /// The latest heartbeat round started.
    round: u64,
    /// (round, tick it was sent) of rounds not yet confirmed.
    rounds: VecDeque<(u64, u64)>,
    /// The highest round confirmed by a quorum of voters.
    confirmed: u64,
    /// The tick until which this leader's lease holds.
    lease_until: u64,
    /// Whether the leader has committed an entry of its own term yet; reads
    /// wait for it (Raft thesis §6.4, step 1).
    term_committed: bool,
    waiting_commit: Vec<(u64, NodeId)>,
    unsent: Vec<PendingRead>,
    pending: VecDeque<PendingRead>,
    /// Confirmed reads of this node's clients: (id, index), served once
    /// applied reaches the index.
    ready: Vec<(u64, Index)>,
}

const MAX_TRACKED_ROUNDS: usize = 1024;

impl Reads {
    /// The latest heartbeat round started.
    pub(super) fn round(&self) -> u64 {
        self.round
    }

    /// Whether reads wait for a round and one may start now: one round is
    /// in flight at a time, and reads that arrive meanwhile wait for it to
    /// end and then share the next, so a steady stream of reads costs one
    /// round per round trip rather than one per output batch. (A round whose
    /// answers are lost does not hold reads back for long: the next
    /// heartbeat tick starts a round that takes them.)
    pub(super) fn wants_round(&self) -> bool {
        !self.unsent.is_empty() && self.rounds.is_empty()
    }

    pub(super) fn has_ready(&self, applied: Index) -> bool {
        self.ready.iter().any(|(_, index)| *index <= applied)
    }

    pub(super) fn collect_ready(&mut self, applied: Index, out: &mut Vec<ReadState>) {
        self.ready.retain(|&(id, index)| {
            if index <= applied {
                out.push(ReadState {
                    id,
                    result: Ok(index),
                });
                false
            } else {
                true
            }
        });
    }

    /// Starts a heartbeat round at tick `now`; reads not yet in a round join it.
    pub(super) fn next_round(&mut self, now: u64) -> u64 {
        self.round += 1;
        self.rounds.push_back((self.round, now));
        if self.rounds.len() > MAX_TRACKED_ROUNDS {
            self.rounds.pop_front();
        }
        let round = self.round;
        for mut read in self.unsent.drain(..) {
            read.round = round;
            self.pending.push_back(read);
        }
        round
    }

    pub(super) fn on_term_commit(&mut self, committed: Index) {
        if self.term_committed {
            return;
        }
        self.term_committed = true;
        for (id, from) in self.waiting_commit.drain(..) {
            self.unsent.push(PendingRead {
                id,
                from,
                index: committed,
                round: 0,
            });
        }
    }

    /// Fails every read that is not yet confirmed (leadership changed). Reads
    /// already confirmed stay valid: their index was safe when confirmed.
    pub(super) fn fail_all(
        &mut self,
        leader_hint: Option<NodeId>,
        read_states: &mut Vec<ReadState>,
        messages: &mut Vec<Message>,
        me: NodeId,
        term: u64,
    ) {
        let waiting = self.waiting_commit.drain(..);
        let others = self
            .unsent
            .drain(..)
            .chain(self.pending.drain(..))
            .map(|r| (r.id, r.from));
        for (id, from) in waiting.chain(others).collect::<Vec<_>>() {
            if from == me {
                read_states.push(ReadState {
                    id,
                    result: Err(Error::NotLeader { leader_hint }),
                });
            } else {
                messages.push(Message {
                    from: me,
                    to: from,
                    term,
                    body: MessageBody::ReadIndexResponse(ReadIndexResponse { id, index: None }),
                });
            }
        }
        self.term_committed = false;
        self.rounds.clear();
        self.lease_until = 0;
        self.confirmed = 0;
    }
}

impl<S: LogRead> Node<S> {
    /// Asks for a linearizable read. When it is safe, a [`ReadState`] with
    /// this `id` and a read index comes out of [`Node::ready`], by which time
    /// the host has applied at least up to that index: serve the read from
    /// the state machine then. On a follower the request goes to the leader.
    ///
    /// Errors: [`Error::NotLeader`] when no leader is known (or, for lease
    /// reads, this node is not the leader); [`Error::LeaseReadsDisabled`].
    pub fn read_index(&mut self, id: u64, policy: ReadPolicy) -> Result<(), Error> {
        if policy == ReadPolicy::Lease {
            if !self.config.lease_reads {
                return Err(Error::LeaseReadsDisabled);
            }
            if self.role != Role::Leader {
                return Err(Error::NotLeader {
                    leader_hint: self.leader,
                });
            }
            if self.lease_valid() && self.reads.term_committed {
                self.counters.lease_reads += 1;
                self.reads.ready.push((id, self.log.committed));
                return Ok(());
            }
        }
        self.counters.read_index_requests += 1;
        match self.role {
            Role::Leader => {
                self.leader_read(id, self.id);
                Ok(())
            }
            _ => match self.leader {
                Some(leader) => {
                    self.send(leader, MessageBody::ReadIndex(ReadIndexRequest { id }));
                    Ok(())
                }
                None => Err(Error::NotLeader { leader_hint: None }),
            },
        }
    }

    /// Whether this leader holds a lease: a quorum answered a heartbeat round
    /// started less than [`crate::Config::lease_ticks`] ticks ago, so no
    /// other leader can have been elected since (voters refuse votes for an
    /// election timeout after hearing from a leader).
    pub(super) fn lease_valid(&self) -> bool {
        self.role == Role::Leader
            && !self.lease_revoked
            && self.transfer.is_none()
            && self.now < self.reads.lease_until
    }

    fn leader_read(&mut self, id: u64, from: NodeId) {
        if self.reads.term_committed {
            let index = self.log.committed;
            self.reads.unsent.push(PendingRead {
                id,
                from,
                index,
                round: 0,
            });
        } else {
            self.reads.waiting_commit.push((id, from));
        }
    }

    /// Starts a heartbeat round for reads that are waiting for one (see
    /// [`Reads::wants_round`]).
    pub(super) fn start_read_round(&mut self) {
        if self.reads.wants_round() {
            self.broadcast_heartbeat();
        }
    }

    pub(super) fn handle_read_index_request(&mut self, from: NodeId, id: u64) {
        if self.role == Role::Leader {
            self.counters.read_index_requests += 1;
            self.leader_read(id, from);
        } else {
            self.send(
                from,
                MessageBody::ReadIndexResponse(ReadIndexResponse { id, index: None }),
            );
        }
    }

    pub(super) fn handle_read_index_response(&mut self, _from: NodeId, resp: ReadIndexResponse) {
        match resp.index {
            Some(index) => self.reads.ready.push((resp.id, index)),
            None => self.read_states.push(ReadState {
                id: resp.id,
                result: Err(Error::NotLeader {
                    leader_hint: self.leader,
                }),
            }),
        }
    }

    /// Releases reads whose round a quorum of voters has confirmed.
    pub(super) fn advance_reads(&mut self) {
        if self.role != Role::Leader {
            return;
        }
        let me = self.id;
        let own = self.reads.round;
        let confirmed = quorum::majority_committed(self.membership().voters(), |id| {
            if id == me {
                Some(own)
            } else {
                self.progress.get(&id).map(|p| p.read_ack)
            }
        });
        if confirmed == u64::MAX || confirmed <= self.reads.confirmed {
            return;
        }
        self.reads.confirmed = confirmed;
        while let Some(&(round, sent)) = self.reads.rounds.front() {
            if round > confirmed {
                break;
            }
            self.reads.rounds.pop_front();
            if round == confirmed {
                let lease = self.config.lease_ticks();
                self.reads.lease_until = self.reads.lease_until.max(sent + lease);
            }
        }
        while let Some(read) = self.reads.pending.front().copied() {
            if read.round > confirmed {
                break;
            }
            self.reads.pending.pop_front();
            if read.from == me {
                self.reads.ready.push((read.id, read.index));
            } else {
                // It applies up to the commit index it was told: if that is
                // below the read's index, tell it the current one now.
                if self
                    .progress
                    .get(&read.from)
                    .is_some_and(|pr| pr.commit_sent < read.index)
                {
                    self.commit_notices.push(read.from);
                }
                self.send(
                    read.from,
                    MessageBody::ReadIndexResponse(ReadIndexResponse {
                        id: read.id,
                        index: Some(read.index),
                    }),
                );
            }
        }
    }
}
