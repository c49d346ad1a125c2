//! Terms, elections (with PreVote), CheckQuorum and leadership transfer's
//! final step (TimeoutNow).

use super::{Node, Role};
use crate::error::Error;
use crate::message::{Message, MessageBody, VoteRequest, VoteResponse};
use crate::progress::Progress;
use crate::quorum::{self, VoteResult};
use crate::storage::LogRead;
use crate::types::{EntryPayload, NodeId, Term};

impl<S: LogRead> Node<S> {
    /// Whether this node may campaign: it is not installing a snapshot, and
    /// it is a voter in its configuration, or in the last one it knows
    /// committed while the latest (which removes or demotes it) is not known
    /// committed. Such a node may hold the only copy of the change: a leader
    /// that removed itself and then crashed, in a cluster of two, is the
    /// only node that can ever pass the change on. It campaigns like any
    /// other, counting only the votes of its latest configuration, and a
    /// leader outside its configuration steps down once the change commits
    /// (Raft thesis §4.2.2).
    pub(super) fn promotable(&self) -> bool {
        if self.log.pending_snapshot().is_some() {
            return false;
        }
        if self.membership().is_voter(self.id) {
            return true;
        }
        self.committed_membership()
            .is_some_and(|m| m != self.membership() && m.is_voter(self.id))
    }

    /// Whether this node currently refuses votes because it heard from a
    /// live leader within an election timeout (or leads itself).
    pub(super) fn in_lease(&self) -> bool {
        self.config.check_quorum
            && (self.role == Role::Leader || self.since_leader_contact < self.config.election_ticks)
    }

    /// Handles the term of an incoming message. Returns whether the message
    /// should be processed further.
    pub(super) fn step_term(&mut self, m: &Message) -> Result<bool, Error> {
        use MessageBody::*;
        if m.term > self.term {
            match &m.body {
                PreVote(_) => return Ok(true),
                PreVoteResponse(r) if r.granted => return Ok(true),
                Vote(req) if !req.transfer && self.in_lease() => {
                    // A disruptive candidate (e.g. a removed or partitioned
                    // node): ignore it while a leader is known to be alive.
                    return Ok(false);
                }
                Vote(_) => {
                    // The term moves on, but the election timer restarts
                    // only on a leader's message or a granted vote (Raft
                    // paper, Figure 2): a candidate that cannot win (a
                    // removed node that does not know it, with PreVote off)
                    // would otherwise restart every voter's timer with each
                    // campaign and always ask first, taking for ever a vote
                    // that a rightful candidate needs (varied seed 300,606).
                    let (elapsed, timeout) =
                        (self.election_elapsed, self.randomized_election_timeout);
                    self.become_follower(m.term, None);
                    self.election_elapsed = elapsed;
                    self.randomized_election_timeout = timeout;
                }
                Append(_) | Heartbeat(_) | Snapshot(_) => {
                    self.become_follower(m.term, Some(m.from))
                }
                _ => self.become_follower(m.term, None),
            }
            return Ok(true);
        }
        if m.term < self.term {
            match &m.body {
                Append(_) | Heartbeat(_) | Snapshot(_) => self.answer_stale_leader(m),
                PreVote(_) => self.send(
                    m.from,
                    PreVoteResponse(crate::message::VoteResponse { granted: false }),
                ),
                // A candidate of an older term is refused in our term, so
                // that it catches up (Raft paper, Figure 2: the answer
                // carries the current term "for the candidate to update
                // itself"). Silence let a candidate stay terms behind a
                // voter whose term a disruptive node kept raising, and
                // never win its vote.
                Vote(_) => self.send_after_persist(
                    m.from,
                    VoteResponse(crate::message::VoteResponse { granted: false }),
                ),
                _ => {}
            }
            return Ok(false);
        }
        Ok(true)
    }

    /// Answers a leader of an older term (an AppendEntries, heartbeat or
    /// snapshot chunk of a term below ours) with a rejection in our term, so
    /// that it steps down instead of disrupting us forever (needed with
    /// PreVote/CheckQuorum, which keep our term from rising, and for a
    /// removed leader, which nothing else tells).
    pub(super) fn answer_stale_leader(&mut self, m: &Message) {
        use MessageBody::*;
        if m.term < self.term && matches!(m.body, Append(_) | Heartbeat(_) | Snapshot(_)) {
            self.send(
                m.from,
                AppendResponse(crate::message::AppendResponse::Rejected {
                    rejected: 0,
                    hint: Default::default(),
                }),
            );
        }
    }

    /// Whether this node would give `from` its vote for `term` now: the one
    /// rule behind real votes and pre-votes, so that a pre-vote is granted
    /// exactly where the vote would be (Raft thesis §9.6).
    ///
    /// While a live leader holds it ([`Self::in_lease`]) it votes for no
    /// one, in any term, unless leadership is being handed over: a leader's
    /// lease rests on that promise. (A node can reach a candidate's term
    /// without a vote request, from any message of that term; the promise
    /// must hold there too.) Otherwise a vote for a higher term first moves
    /// the node to that term, and in its own term it votes once.
    fn would_vote(&self, from: NodeId, term: Term, req: &VoteRequest) -> Result<bool, Error> {
        if term < self.term || (!req.transfer && self.in_lease()) {
            return Ok(false);
        }
        let free = term > self.term
            || self.vote == Some(from)
            || (self.vote.is_none() && self.leader.is_none());
        Ok(free && self.log.is_up_to_date(req.last_log)?)
    }

    pub(super) fn handle_vote_request(
        &mut self,
        from: NodeId,
        term: Term,
        req: VoteRequest,
        pre_vote: bool,
    ) -> Result<(), Error> {
        let granted = self.would_vote(from, term, &req)?;
        if pre_vote {
            // A granted pre-vote answers in the campaign's term so that the
            // candidate counts it; a refusal carries our own term.
            let reply_term = if granted { term } else { self.term };
            self.messages.push(Message {
                from: self.id,
                to: from,
                term: reply_term,
                body: MessageBody::PreVoteResponse(VoteResponse { granted }),
            });
        } else {
            if granted {
                self.vote = Some(from);
                self.election_elapsed = 0;
            }
            // The vote must be durable before it leaves (Raft paper §5.2).
            self.send_after_persist(from, MessageBody::VoteResponse(VoteResponse { granted }));
        }
        Ok(())
    }

    pub(super) fn handle_vote_response(
        &mut self,
        from: NodeId,
        term: Term,
        granted: bool,
        pre_vote: bool,
    ) -> Result<(), Error> {
        let expected = if pre_vote {
            Role::PreCandidate
        } else {
            Role::Candidate
        };
        if self.role != expected {
            return Ok(());
        }
        if pre_vote && Some(term) != self.term.checked_add(1) && granted {
            return Ok(());
        }
        self.votes.entry(from).or_insert(granted);
        match self.poll() {
            VoteResult::Won => {
                if pre_vote {
                    self.start_campaign(false, false)?;
                } else {
                    self.become_leader()?;
                }
            }
            VoteResult::Lost => {
                let term = self.term;
                self.become_follower(term, None);
            }
            VoteResult::Pending => {}
        }
        Ok(())
    }

    /// A candidate that wins on its own vote becomes leader once that vote
    /// (its term) is durable.
    pub(super) fn maybe_win_alone(&mut self) -> Result<(), Error> {
        if self.role == Role::Candidate
            && self.durable_term >= self.term
            && self.vote == Some(self.id)
            && self.poll() == VoteResult::Won
        {
            self.become_leader()?;
        }
        Ok(())
    }

    fn poll(&self) -> VoteResult {
        quorum::majority_vote(self.membership().voters(), |id| {
            self.votes.get(&id).copied()
        })
    }

    pub(super) fn tick_election(&mut self) -> Result<(), Error> {
        self.election_elapsed += 1;
        self.since_leader_contact = self.since_leader_contact.saturating_add(1);
        if self.promotable() && self.election_elapsed >= self.randomized_election_timeout {
            self.election_elapsed = 0;
            self.start_campaign(self.config.pre_vote, false)?;
        }
        Ok(())
    }

    /// Starts an election (or a pre-vote round).
    pub(super) fn start_campaign(&mut self, pre_vote: bool, transfer: bool) -> Result<(), Error> {
        if !self.promotable() {
            return Ok(());
        }
        // The campaign's term must be one a message may carry (below
        // `Term::MAX`, see `Node::step`): a node cannot campaign past it.
        let Some(next_term) = self.term.checked_add(1).filter(|&t| t < Term::MAX) else {
            tracing::error!(
                id = self.id,
                term = self.term,
                "no term left to campaign in"
            );
            return Ok(());
        };
        let term = if pre_vote {
            let term = self.term;
            self.reset(term);
            self.role = Role::PreCandidate;
            next_term
        } else {
            let term = next_term;
            self.reset(term);
            self.role = Role::Candidate;
            self.vote = Some(self.id);
            self.counters.elections_started += 1;
            term
        };
        tracing::debug!(id = self.id, term, pre_vote, "campaigning");
        self.votes.insert(self.id, true);
        if self.poll() == VoteResult::Won {
            // A single-voter cluster. It wins on its own vote, which counts
            // only once durable (`on_persisted` completes the election): a
            // voter that led a term it then forgot in a crash could lead the
            // same term again, with other entries.
            return if pre_vote {
                self.start_campaign(false, transfer)
            } else {
                self.maybe_win_alone()
            };
        }
        let req = VoteRequest {
            last_log: self.log.last_log_id()?,
            transfer,
        };
        let voters: Vec<NodeId> = self
            .membership()
            .voters()
            .iter()
            .copied()
            .filter(|&v| v != self.id)
            .collect();
        for to in voters {
            let body = if pre_vote {
                MessageBody::PreVote(req)
            } else {
                MessageBody::Vote(req)
            };
            let message = Message {
                from: self.id,
                to,
                term,
                body,
            };
            if pre_vote {
                self.messages.push(message);
            } else {
                // Our own vote must be durable before we ask for others'.
                self.persisted_messages.push(message);
            }
        }
        Ok(())
    }

    pub(super) fn become_follower(&mut self, term: Term, leader: Option<NodeId>) {
        let was_leader = self.role == Role::Leader;
        self.reset(term);
        self.role = Role::Follower;
        self.leader = leader;
        if was_leader || leader.is_some() {
            // Either we just stopped leading (our lease may still be counted
            // on by no one, but our followers' may) or we heard from a leader.
            self.since_leader_contact = 0;
        }
    }

    pub(super) fn become_leader(&mut self) -> Result<(), Error> {
        let term = self.term;
        self.reset(term);
        self.role = Role::Leader;
        self.leader = Some(self.id);
        self.counters.elections_won += 1;
        tracing::debug!(id = self.id, term, "became leader");
        let last = self.log.last_index();
        // No configuration change until the no-op below commits, and with
        // it everything from earlier terms.
        self.pending_conf_index = last;
        self.term_start_index = last + 1;
        let members: Vec<NodeId> = self
            .membership()
            .members()
            .filter(|&m| m != self.id)
            .collect();
        for id in members {
            let mut pr = Progress::new(last + 1);
            pr.last_active = self.now;
            self.progress.insert(id, pr);
        }
        self.broadcast_commit = 0;
        self.commit_notices.clear();
        self.append_entry(EntryPayload::Noop);
        Ok(())
    }

    pub(super) fn tick_leader(&mut self) -> Result<(), Error> {
        self.heartbeat_elapsed += 1;
        self.election_elapsed += 1;
        if let Some(transfer) = self.transfer.as_mut() {
            transfer.elapsed += 1;
            if transfer.elapsed >= self.config.election_ticks {
                tracing::info!(
                    id = self.id,
                    target = transfer.target,
                    "leadership transfer timed out; resuming"
                );
                self.transfer = None;
            }
        }
        if self.election_elapsed >= self.config.election_ticks {
            self.election_elapsed = 0;
        }
        if self.config.check_quorum && !self.quorum_active() {
            tracing::info!(
                id = self.id,
                term = self.term,
                "lost contact with a quorum; stepping down"
            );
            let term = self.term;
            self.become_follower(term, None);
            return Ok(());
        }
        self.tick_snapshot_sends()?;
        if self.heartbeat_elapsed >= self.config.heartbeat_ticks {
            self.heartbeat_elapsed = 0;
            self.broadcast_heartbeat();
        }
        self.send_owed_commits()
    }

    /// CheckQuorum: has a quorum of voters answered within the last
    /// election timeout?
    fn quorum_active(&self) -> bool {
        let me = self.id;
        let window = self.config.election_ticks;
        quorum::majority_vote(self.membership().voters(), |id| {
            Some(
                id == me
                    || self
                        .progress
                        .get(&id)
                        .is_some_and(|p| self.now.saturating_sub(p.last_active) < window),
            )
        }) == VoteResult::Won
    }

    pub(super) fn handle_timeout_now(&mut self, from: NodeId) -> Result<(), Error> {
        if self.leader == Some(from) && self.role == Role::Follower {
            tracing::info!(
                id = self.id,
                from,
                "leadership transferred to us; campaigning"
            );
            self.start_campaign(false, true)?;
        }
        Ok(())
    }

    /// Starts handing leadership to `target` (Raft thesis §3.10): no new
    /// proposals, bring the target up to date, then tell it to campaign. If
    /// it has not won within an election timeout, this leader resumes.
    pub fn transfer_leader(&mut self, target: NodeId) -> Result<(), Error> {
        if self.role != Role::Leader {
            return Err(Error::NotLeader {
                leader_hint: self.leader,
            });
        }
        if target == self.id {
            return Err(Error::TransferToSelf(target));
        }
        if !self.membership().is_voter(target) {
            return Err(Error::TransferToNonVoter(target));
        }
        if self.transfer.is_some_and(|t| t.target == target) {
            return Ok(());
        }
        self.counters.leader_transfers += 1;
        self.transfer = Some(super::Transfer { target, elapsed: 0 });
        self.maybe_send_timeout_now(target)
    }

    /// Sends TimeoutNow if `to` is the transfer target and fully caught up;
    /// otherwise makes sure entries flow to it.
    pub(super) fn maybe_send_timeout_now(&mut self, to: NodeId) -> Result<(), Error> {
        if self.transfer.map(|t| t.target) != Some(to) {
            return Ok(());
        }
        let last = self.log.last_index();
        if self
            .progress
            .get(&to)
            .is_some_and(|p| p.match_index == last)
        {
            self.lease_revoked = true;
            self.send(to, MessageBody::TimeoutNow);
        } else {
            self.need_append = true;
        }
        Ok(())
    }
}
