//! Log replication: AppendEntries with byte budgets, pipelining and fast
//! backtracking; heartbeats; the commit rule.

use super::{Node, Role};
use crate::error::{Error, StorageError};
use crate::message::{AppendRequest, AppendResponse, Heartbeat, HeartbeatResponse, MessageBody};
use crate::progress::ReplicationState;
use crate::quorum;
use crate::storage::LogRead;
use crate::types::{Entry, EntryPayload, Index, LogId, NodeId, Term};

/// Why an AppendEntries from the leader of `term` cannot be genuine, if it
/// cannot: its entries must carry the indexes `prev.index + 1`, `+ 2`, ...,
/// with terms that never decrease (from `prev.term` on) and are not above
/// the message's term. A leader never sends anything else; a message that
/// breaks this is corrupt or hostile, and storing it would break the log.
pub(super) fn malformed_append(term: Term, req: &AppendRequest) -> Option<String> {
    if req.prev.term > term {
        return Some(format!(
            "prev {:?} has a term above the message's term {term}",
            req.prev
        ));
    }
    let mut last = req.prev;
    for (i, entry) in req.entries.iter().enumerate() {
        let expected = req.prev.index.checked_add(i as Index + 1);
        if Some(entry.index) != expected {
            return Some(format!(
                "entry {i} has index {} where prev {:?} requires {}",
                entry.index,
                req.prev,
                expected.map_or_else(|| "an index past u64::MAX".into(), |e| e.to_string())
            ));
        }
        if entry.term < last.term || entry.term > term {
            return Some(format!(
                "entry {} has term {} after term {} in a message of term {term}",
                entry.index, entry.term, last.term
            ));
        }
        last = entry.log_id();
    }
    None
}

impl<S: LogRead> Node<S> {
    // ----- follower side ---------------------------------------------------

    pub(super) fn handle_append(&mut self, from: NodeId, req: AppendRequest) -> Result<(), Error> {
        self.accept_leader(from);
        self.counters.appends_received += 1;
        let committed = self.log.committed;
        if req.prev.index < committed {
            // Everything up to our commit index matches the leader already
            // (committed entries are in every later leader's log).
            self.send_after_persist(
                from,
                MessageBody::AppendResponse(AppendResponse::Success {
                    match_index: committed,
                }),
            );
            return Ok(());
        }
        if !self.log.matches(req.prev)? {
            let hint_index = req.prev.index.min(self.log.last_index());
            let hint = self.find_conflict_by_term(hint_index, req.prev.term)?;
            self.send_after_persist(
                from,
                MessageBody::AppendResponse(AppendResponse::Rejected {
                    rejected: req.prev.index,
                    hint,
                }),
            );
            return Ok(());
        }
        let last_new = req.prev.index + req.entries.len() as Index;
        self.append_from_leader(req.entries)?;
        self.log.commit_to(req.commit.min(last_new));
        self.send_after_persist(
            from,
            MessageBody::AppendResponse(AppendResponse::Success {
                match_index: last_new,
            }),
        );
        Ok(())
    }

    /// Appends the leader's entries after the matching `prev`, skipping the
    /// ones we already hold and truncating at the first conflict.
    fn append_from_leader(&mut self, entries: Vec<Entry>) -> Result<(), Error> {
        let mut conflict = None;
        let last = self.log.last_index();
        for (i, entry) in entries.iter().enumerate() {
            // Past our last entry nothing can conflict: append from here.
            if entry.index > last || self.log.term_if_present(entry.index)? != Some(entry.term) {
                conflict = Some(i);
                break;
            }
        }
        let Some(start) = conflict else { return Ok(()) };
        let first = entries[start].index;
        if first <= self.log.committed {
            // The leader is trying to overwrite a committed entry: a safety
            // violation somewhere. Refuse rather than corrupt the log.
            return Err(Error::Storage(StorageError::Corrupt(format!(
                "leader {:?} tried to overwrite committed entry {first}",
                self.leader
            ))));
        }
        if first <= self.log.last_index() {
            self.truncate_configs(first);
        }
        let new: Vec<Entry> = entries.into_iter().skip(start).collect();
        for entry in &new {
            if let EntryPayload::Membership(m) = &entry.payload {
                self.push_config(entry.index, m.clone());
            }
        }
        self.log.truncate_and_append(new);
        Ok(())
    }

    /// The largest index `<= index` whose term is `<= term` (or the first
    /// readable position), for fast backtracking.
    pub(super) fn find_conflict_by_term(
        &self,
        mut index: Index,
        term: Term,
    ) -> Result<LogId, Error> {
        loop {
            match self.log.term_if_present(index)? {
                Some(t) if t > term => index -= 1,
                Some(t) => return Ok(LogId::new(t, index)),
                None => return Ok(LogId::new(0, index)),
            }
            if index == 0 {
                return Ok(LogId::new(0, 0));
            }
        }
    }

    /// A message from the leader of our term arrived.
    pub(super) fn accept_leader(&mut self, from: NodeId) {
        if self.role != Role::Follower {
            let term = self.term;
            self.become_follower(term, Some(from));
        }
        self.leader = Some(from);
        self.election_elapsed = 0;
        self.since_leader_contact = 0;
    }

    pub(super) fn handle_heartbeat(&mut self, from: NodeId, hb: Heartbeat) -> Result<(), Error> {
        self.accept_leader(from);
        self.log.commit_to(hb.commit);
        // Heartbeat answers carry no durability promise: send at once.
        self.send(
            from,
            MessageBody::HeartbeatResponse(HeartbeatResponse { round: hb.round }),
        );
        Ok(())
    }

    // ----- leader side -----------------------------------------------------

    pub(super) fn handle_append_response(
        &mut self,
        from: NodeId,
        resp: AppendResponse,
    ) -> Result<(), Error> {
        if self.role != Role::Leader {
            return Ok(());
        }
        let last = self.log.last_index();
        let problem = match resp {
            AppendResponse::Success { match_index } if match_index > last => Some(format!(
                "it claims to match up to index {match_index}, beyond our last index {last}"
            )),
            AppendResponse::Rejected { rejected, hint }
                if rejected > last || hint.index > rejected || hint.term > self.term =>
            {
                Some(format!(
                    "it rejects index {rejected} with hint {hint:?}; our last index is {last}, our term {}",
                    self.term
                ))
            }
            _ => None,
        };
        if let Some(problem) = problem {
            self.drop_out_of_range_answer(from, "AppendResponse", &problem);
            return Ok(());
        }
        let now = self.now;
        let Some(pr) = self.progress.get_mut(&from) else {
            return Ok(());
        };
        pr.last_active = now;
        match resp {
            AppendResponse::Success { match_index } => {
                let answers_probe =
                    pr.state == ReplicationState::Probe && match_index + 1 >= pr.next_index;
                let news = pr.update_match(match_index);
                let snapshot_done = pr.state == ReplicationState::Snapshot
                    && pr
                        .snapshot
                        .as_ref()
                        .is_some_and(|s| pr.match_index >= s.meta.last.index);
                if answers_probe || snapshot_done {
                    pr.become_replicate();
                }
                if news {
                    self.maybe_commit()?;
                    self.maybe_send_timeout_now(from)?;
                }
                self.need_append = true;
            }
            AppendResponse::Rejected { rejected, hint } => {
                if rejected == 0 {
                    // A stale-term answer; the term step already handled it.
                    return Ok(());
                }
                let stale = match pr.state {
                    ReplicationState::Replicate => rejected <= pr.match_index,
                    ReplicationState::Probe => rejected + 1 != pr.next_index,
                    ReplicationState::Snapshot => true,
                };
                if stale {
                    return Ok(());
                }
                // Skip every entry of a term the follower cannot hold.
                let next = if hint.term > 0 {
                    let conflict = self.find_conflict_by_term(hint.index, hint.term)?;
                    conflict.index
                } else {
                    hint.index
                };
                let pr = self.progress.get_mut(&from).expect("checked above");
                pr.become_probe();
                pr.next_index = next.min(rejected).max(pr.match_index) + 1;
                self.need_append = true;
            }
        }
        Ok(())
    }

    pub(super) fn handle_heartbeat_response(
        &mut self,
        from: NodeId,
        resp: HeartbeatResponse,
    ) -> Result<(), Error> {
        if self.role != Role::Leader {
            return Ok(());
        }
        if resp.round > self.reads.round() {
            let problem = format!(
                "it acknowledges heartbeat round {}, but the latest round sent is {}",
                resp.round,
                self.reads.round()
            );
            self.drop_out_of_range_answer(from, "HeartbeatResponse", &problem);
            return Ok(());
        }
        let max_inflight = self.config.max_inflight;
        let last = self.log.last_index();
        let now = self.now;
        let Some(pr) = self.progress.get_mut(&from) else {
            return Ok(());
        };
        pr.last_active = now;
        pr.read_ack = pr.read_ack.max(resp.round);
        match pr.state {
            ReplicationState::Probe => pr.probe_sent = false,
            ReplicationState::Replicate if pr.inflight.len() >= max_inflight => {
                // Messages may have been lost; free a slot so we make progress.
                pr.inflight.pop_front();
            }
            _ => {}
        }
        let behind = pr.match_index < last;
        if self.membership().is_voter(from) {
            self.advance_reads();
        }
        if behind {
            self.send_append(from, true)?;
        }
        Ok(())
    }

    /// An answer from a peer that no genuine peer could send (it refers to
    /// log positions or rounds this leader never sent): dropped before it
    /// changes anything, logged and counted in
    /// [`crate::Counters::out_of_range_answers`].
    pub(super) fn drop_out_of_range_answer(&mut self, from: NodeId, kind: &str, problem: &str) {
        self.counters.out_of_range_answers += 1;
        tracing::warn!(
            id = self.id,
            from,
            term = self.term,
            "dropped an out-of-range {kind}: {problem}"
        );
    }

    /// Leader work deferred to `ready`: AppendEntries to every follower that
    /// needs some, batched, and a heartbeat round for pending reads.
    ///
    /// A new commit index travels with the next AppendEntries or heartbeat,
    /// or at the next tick if none goes out before (`send_owed_commits`):
    /// not in an empty AppendEntries of its own
    /// each time it moves, which under a light load doubled the messages
    /// and their acknowledgements per command. A follower whose read was
    /// answered with a higher index is told at once.
    pub(super) fn flush_leader(&mut self) -> Result<(), Error> {
        let commit_changed = self.broadcast_commit < self.log.committed;
        if self.need_append || commit_changed {
            self.need_append = false;
            let peers: Vec<NodeId> = self.progress.keys().copied().collect();
            for to in peers {
                while self.send_append(to, false)? {
                    if self.progress[&to].state != ReplicationState::Replicate {
                        break;
                    }
                }
            }
            self.broadcast_commit = self.log.committed;
        }
        for to in std::mem::take(&mut self.commit_notices) {
            if self.owes_commit(to) {
                self.send_append(to, true)?;
            }
        }
        self.start_read_round();
        Ok(())
    }

    /// Whether `to` was told a lower commit index than it could apply.
    pub(super) fn owes_commit(&self, to: NodeId) -> bool {
        self.progress
            .get(&to)
            .is_some_and(|pr| pr.commit_sent < self.log.committed.min(pr.match_index))
    }

    /// Each tick: followers not told the commit index they could apply
    /// since it moved get it now.
    pub(super) fn send_owed_commits(&mut self) -> Result<(), Error> {
        let peers: Vec<NodeId> = self.progress.keys().copied().collect();
        for to in peers {
            if self.owes_commit(to) {
                self.send_append(to, true)?;
            }
        }
        Ok(())
    }

    /// Sends one AppendEntries (or starts a snapshot) to `to` unless it is
    /// paused. With `allow_empty`, sends even with no new entries (a probe or
    /// commit update). Returns whether a message with entries went out.
    pub(super) fn send_append(&mut self, to: NodeId, allow_empty: bool) -> Result<bool, Error> {
        let Some(pr) = self.progress.get(&to) else {
            return Ok(false);
        };
        if pr.is_paused(self.config.max_inflight) {
            return Ok(false);
        }
        let next = pr.next_index;
        let prev_index = next - 1;
        let Some(prev_term) = self.log.term_if_present(prev_index)? else {
            self.start_snapshot_send(to)?;
            return Ok(false);
        };
        let last = self.log.last_index();
        let mut entries = if next <= last {
            match self
                .log
                .entries(next, last + 1, self.config.max_append_bytes)
            {
                Ok(entries) => entries,
                Err(StorageError::Compacted(_)) => {
                    self.start_snapshot_send(to)?;
                    return Ok(false);
                }
                Err(e) => return Err(e.into()),
            }
        } else {
            Vec::new()
        };
        if entries.is_empty() && !allow_empty {
            return Ok(false);
        }
        entries.truncate(self.config.max_append_entries);
        let last_sent = entries.last().map(|e| e.index);
        let has_entries = last_sent.is_some();
        let commit = self.log.committed;
        let pr = self.progress.get_mut(&to).expect("checked above");
        pr.sent_entries(last_sent);
        pr.commit_sent = commit;
        self.counters.appends_sent += 1;
        self.send(
            to,
            MessageBody::Append(AppendRequest {
                prev: LogId::new(prev_term, prev_index),
                entries,
                commit,
            }),
        );
        Ok(has_entries)
    }

    pub(super) fn broadcast_heartbeat(&mut self) {
        let round = self.reads.next_round(self.now);
        let peers: Vec<(NodeId, Index)> = self
            .progress
            .iter()
            .map(|(id, pr)| (*id, pr.match_index))
            .collect();
        for (to, match_index) in peers {
            let commit = self.log.committed.min(match_index);
            if let Some(pr) = self.progress.get_mut(&to) {
                pr.commit_sent = commit;
            }
            self.send(to, MessageBody::Heartbeat(Heartbeat { commit, round }));
        }
        // A single-voter cluster confirms its rounds by itself.
        self.advance_reads();
    }

    /// Advances the commit index to what a quorum of voters holds, if that
    /// entry is from the current term (Raft paper §5.4.2).
    pub(super) fn maybe_commit(&mut self) -> Result<(), Error> {
        let me = self.id;
        let own = self.log.persisted_index();
        let index = quorum::majority_committed(self.membership().voters(), |id| {
            if id == me {
                Some(own)
            } else {
                self.progress.get(&id).map(|p| p.match_index)
            }
        });
        if index == Index::MAX || index <= self.log.committed {
            return Ok(());
        }
        if self.log.term_if_present(index)? != Some(self.term) {
            return Ok(());
        }
        self.log.commit_to(index);
        self.on_commit_advanced()?;
        Ok(())
    }

    /// Things that wait for the commit index of a leader.
    fn on_commit_advanced(&mut self) -> Result<(), Error> {
        self.reads.on_term_commit(self.log.committed);
        self.advance_reads();
        self.maybe_step_down_after_removal();
        Ok(())
    }
}
