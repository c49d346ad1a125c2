//! The Raft state machine of one replica: [`Node`].
//!
//! Inputs arrive through `tick`, `step`, `propose`, `propose_membership`,
//! `read_index`, `transfer_leader` and the acknowledgements `on_persisted`,
//! `on_applied`, `on_snapshot_built`, `report_unreachable`. Outputs leave
//! through [`Node::ready`] as one [`Ready`] batch.

mod election;
mod membership;
mod reads;
mod replication;
mod snapshot;

use std::collections::{BTreeMap, VecDeque};

use bytes::Bytes;
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::config::Config;
use crate::error::Error;
use crate::log::RaftLog;
use crate::membership::{ConfChange, Membership};
use crate::message::{Message, MessageBody, SnapshotChunk};
use crate::progress::Progress;
use crate::ready::{ReadState, Ready};
use crate::status::{Counters, FollowerStatus, Status};
use crate::storage::{LogRead, LogWrite};
use crate::types::{Entry, EntryPayload, HardState, Index, LogId, NodeId, Term};

pub use reads::ReadPolicy;
pub use snapshot::next_snapshot_threshold;

/// The role a node plays in its current term.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum Role {
    /// Follows a leader (or waits for one). Learners are always followers.
    Follower,
    /// Asks whether it could win an election, without changing its term.
    PreCandidate,
    /// Campaigns for votes in a new term.
    Candidate,
    /// Leads the cluster for its term.
    Leader,
}

/// An in-progress leadership transfer.
#[derive(Clone, Copy, Debug)]
struct Transfer {
    target: NodeId,
    elapsed: u64,
}

/// Writes handed to the host in one [`Ready`], not yet acknowledged durable.
#[derive(Clone, Copy, Debug)]
struct PendingPersist {
    number: u64,
    last_entry: Option<LogId>,
    installed_snapshot: Option<Index>,
    /// The term of the hard state the batch writes, if it writes one.
    term: Option<Term>,
}

/// One Raft replica, sans I/O.
///
/// See the crate documentation for the host loop and the durability
/// contract.
///
/// With the `testing` feature a node over a cloneable store can be cloned,
/// so that the simulator can ask a copy what the node would do; a host never
/// runs two copies of one replica.
#[cfg_attr(feature = "testing", derive(Clone))]
pub struct Node<S: LogRead> {
    id: NodeId,
    config: Config,
    rng: ChaCha8Rng,
    log: RaftLog<S>,

    term: Term,
    vote: Option<NodeId>,
    role: Role,
    leader: Option<NodeId>,
    /// The hard state last handed to the host.
    emitted_hard_state: HardState,
    /// The highest term the host acknowledged durable. A node leads a term
    /// only once it is durable (see `maybe_win_alone`): a crash could
    /// otherwise let it lead the same term twice, with other entries.
    durable_term: Term,

    /// Configurations found in the log, oldest first; the last is in force.
    configs: Vec<(Index, Membership)>,

    /// Ticks since this node last reset its election timer.
    election_elapsed: u64,
    /// Ticks since this node last heard from a leader (or started, or stopped
    /// leading). While below `election_ticks` it refuses to vote (with
    /// CheckQuorum), which is what makes leader leases safe.
    since_leader_contact: u64,
    heartbeat_elapsed: u64,
    randomized_election_timeout: u64,
    /// Ticks since the node started; the clock of leases.
    now: u64,

    /// Per-member replication progress (leader only; self excluded).
    progress: BTreeMap<NodeId, Progress>,
    votes: BTreeMap<NodeId, bool>,
    /// The index of the latest configuration entry a leader appended: no
    /// change may be proposed until it commits.
    pending_conf_index: Index,
    /// The index of this leader's first entry of its term (its no-op): no
    /// configuration change until it commits (Raft thesis §4.1, with
    /// Ongaro's 2015 correction for single-server changes).
    term_start_index: Index,
    transfer: Option<Transfer>,
    /// Set once this leader sent TimeoutNow in its term: from then on its
    /// lease cannot be trusted.
    lease_revoked: bool,
    /// Followers whose AppendEntries must go out at the next `ready`.
    need_append: bool,
    /// The commit index last sent to followers.
    broadcast_commit: Index,
    /// Followers owed the commit index at once: a read of theirs was
    /// answered with an index above the commit index they were told.
    commit_notices: Vec<NodeId>,

    reads: reads::Reads,

    snapshots: snapshot::SnapshotState,

    messages: Vec<Message>,
    persisted_messages: Vec<Message>,
    read_states: Vec<ReadState>,
    pending_chunks: Vec<SnapshotChunk>,
    ready_number: u64,
    pending_persists: VecDeque<PendingPersist>,

    counters: Counters,
}

impl<S: LogRead> Node<S> {
    /// Starts a node from whatever `store` holds: a new node (empty store),
    /// or a restarted one (hard state, snapshot and log are recovered).
    ///
    /// A new cluster is bootstrapped by writing [`crate::bootstrap_entry`] to
    /// the store of every initial voter before starting them; a node that will
    /// join an existing cluster starts with an empty store and waits to be
    /// added.
    pub fn new(config: Config, store: S) -> Result<Self, Error> {
        config.validate()?;
        let hard_state = store.hard_state()?;
        let snapshot = store.snapshot_meta()?;
        let applied = config
            .applied
            .max(snapshot.as_ref().map_or(0, |s| s.last.index));
        let log = RaftLog::new(store, hard_state.commit, applied)?;
        let mut configs = Vec::new();
        if let Some(meta) = &snapshot {
            configs.push((meta.membership_index, meta.membership.clone()));
        }
        // Configurations after the snapshot are in the log: scan it.
        let first = log.first_index()?;
        let last = log.last_index();
        let mut next = first;
        while next <= last {
            let batch = log.entries(next, last + 1, 8 << 20)?;
            if batch.is_empty() {
                break;
            }
            for entry in batch {
                // A store that skips or repeats indexes cannot be trusted
                // (and would make this scan go round forever).
                if entry.index != next {
                    return Err(Error::Storage(crate::error::StorageError::Corrupt(
                        format!(
                            "the log holds entry {} where entry {next} belongs",
                            entry.index
                        ),
                    )));
                }
                next += 1;
                if let EntryPayload::Membership(m) = entry.payload {
                    configs.retain(|(index, _)| *index < entry.index);
                    configs.push((entry.index, m));
                }
            }
        }
        let mut node = Node {
            id: config.id,
            rng: ChaCha8Rng::seed_from_u64(config.seed),
            log,
            term: hard_state.term,
            vote: hard_state.vote,
            role: Role::Follower,
            leader: None,
            emitted_hard_state: hard_state,
            durable_term: hard_state.term,
            configs,
            election_elapsed: 0,
            // With lease reads on, a (re)started node refuses votes for an
            // election timeout: it may have acknowledged a leader's lease
            // just before it crashed.
            since_leader_contact: if config.lease_reads {
                0
            } else {
                config.election_ticks
            },
            heartbeat_elapsed: 0,
            randomized_election_timeout: config.election_ticks,
            now: 0,
            progress: BTreeMap::new(),
            votes: BTreeMap::new(),
            pending_conf_index: 0,
            term_start_index: 0,
            transfer: None,
            lease_revoked: false,
            need_append: false,
            broadcast_commit: 0,
            commit_notices: Vec::new(),
            reads: reads::Reads::default(),
            snapshots: snapshot::SnapshotState::new(&config.snapshot),
            messages: Vec::new(),
            persisted_messages: Vec::new(),
            read_states: Vec::new(),
            pending_chunks: Vec::new(),
            ready_number: 0,
            pending_persists: VecDeque::new(),
            counters: Counters::default(),
            config,
        };
        if let Some(meta) = &snapshot {
            node.snapshots.on_installed(meta.last.index, meta.size);
        }
        node.reset_randomized_timeout();
        Ok(node)
    }

    // ----- accessors -------------------------------------------------------

    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.id
    }

    /// The current term.
    pub fn term(&self) -> Term {
        self.term
    }

    /// The current role.
    pub fn role(&self) -> Role {
        self.role
    }

    /// Whether this node is the leader.
    pub fn is_leader(&self) -> bool {
        self.role == Role::Leader
    }

    /// The leader this node believes in for the current term.
    pub fn leader(&self) -> Option<NodeId> {
        self.leader
    }

    /// The configuration in force: the latest one in the log, committed or not.
    pub fn membership(&self) -> &Membership {
        static EMPTY: std::sync::OnceLock<Membership> = std::sync::OnceLock::new();
        self.configs
            .last()
            .map_or_else(|| EMPTY.get_or_init(Membership::default), |(_, m)| m)
    }

    /// The latest configuration known to be committed.
    pub fn committed_membership(&self) -> Option<&Membership> {
        self.configs
            .iter()
            .rev()
            .find(|(index, _)| *index <= self.log.committed)
            .map(|(_, m)| m)
    }

    /// The hard state as this node sees it now (possibly not yet durable).
    pub fn hard_state(&self) -> HardState {
        HardState {
            term: self.term,
            vote: self.vote,
            commit: self.log.committed,
        }
    }

    /// The highest index known committed.
    pub fn commit_index(&self) -> Index {
        self.log.committed
    }

    /// The highest index the host reported applied.
    pub fn applied_index(&self) -> Index {
        self.log.applied
    }

    /// The last entry of the log (including entries not yet durable).
    pub fn last_log_id(&self) -> Result<LogId, Error> {
        Ok(self.log.last_log_id()?)
    }

    /// The log's first readable index.
    pub fn first_index(&self) -> Result<Index, Error> {
        Ok(self.log.first_index()?)
    }

    /// Entries in `low..high` as this node sees its log, within `max_bytes`.
    pub fn entries(&self, low: Index, high: Index, max_bytes: u64) -> Result<Vec<Entry>, Error> {
        Ok(self.log.entries(low, high, max_bytes)?)
    }

    /// The term of the entry at `index`, if present.
    pub fn term_at(&self, index: Index) -> Result<Option<Term>, Error> {
        Ok(self.log.term_if_present(index)?)
    }

    /// The store this node reads from.
    pub fn store(&self) -> &S {
        &self.log.store
    }

    /// Mutable access to the store, for hosts that write through it directly
    /// (an in-memory log); writes must follow the [`Ready`] contract.
    pub fn store_mut(&mut self) -> &mut S {
        &mut self.log.store
    }

    /// Stops the node and returns its store.
    pub fn into_store(self) -> S {
        self.log.store
    }

    /// The configuration this node runs with.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The node's event counters (cheaper than [`Node::status`]).
    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// A snapshot of this node's state for operators and metrics.
    pub fn status(&self) -> Status {
        let last = self.log.last_log_id().unwrap_or_default();
        let membership = self.membership();
        let followers = if self.is_leader() {
            self.progress
                .iter()
                .map(|(id, pr)| FollowerStatus {
                    id: *id,
                    is_learner: membership.is_learner(*id),
                    match_index: pr.match_index,
                    next_index: pr.next_index,
                    inflight: pr.inflight.len(),
                    state: pr.state,
                    lag: last.index.saturating_sub(pr.match_index),
                    recent_active: self.now.saturating_sub(pr.last_active)
                        < self.config.election_ticks,
                    snapshot_bytes_acked: pr.snapshot.as_ref().map(|s| (s.acked, s.meta.size)),
                })
                .collect()
        } else {
            Vec::new()
        };
        Status {
            id: self.id,
            role: self.role,
            term: self.term,
            vote: self.vote,
            leader: self.leader,
            commit: self.log.committed,
            applied: self.log.applied,
            last_log: last,
            first_index: self.log.first_index().unwrap_or(0),
            membership: membership.clone(),
            is_voter: membership.is_voter(self.id),
            transfer_target: self.transfer.map(|t| t.target),
            leader_contact_ticks: self.since_leader_contact,
            followers,
            counters: self.counters.clone(),
        }
    }

    // ----- inputs ------------------------------------------------------------

    /// Advances logical time by one tick.
    pub fn tick(&mut self) -> Result<(), Error> {
        self.now += 1;
        if self.role == Role::Leader {
            self.tick_leader()
        } else {
            self.tick_election()
        }
    }

    /// Starts an election now (a pre-vote round first, with
    /// [`Config::pre_vote`]), as if the election timeout had elapsed. Voters
    /// apply their usual rules. Useful for a fast first election and in tests.
    ///
    /// Refused with [`Error::InLease`] while this node would refuse its
    /// vote to any other candidate because it heard from a live leader
    /// within the election timeout (with [`Config::check_quorum`]; a node
    /// that just started counts as having heard from one when lease reads
    /// are on): its vote for itself would break that leader's lease. Move
    /// leadership with [`Node::transfer_leader`] on the leader instead.
    pub fn campaign(&mut self) -> Result<(), Error> {
        if self.role == Role::Leader {
            return Ok(());
        }
        if self.in_lease() {
            return Err(Error::InLease {
                leader_hint: self.leader,
            });
        }
        self.start_campaign(self.config.pre_vote, false)
    }

    /// Proposes a command. On the leader, returns the position the entry will
    /// have; the command is committed when an entry with that exact
    /// [`LogId`] comes out in [`Ready::committed_entries`]. If an entry with
    /// another term shows up at that index, the proposal was lost.
    pub fn propose(&mut self, data: Bytes) -> Result<LogId, Error> {
        self.check_can_propose()?;
        self.counters.proposals += 1;
        Ok(self.append_entry(EntryPayload::Command(data)))
    }

    /// Proposes a configuration change (one server at a time). Fails with
    /// [`Error::LeaderNotSettled`] until this leader has committed the first
    /// entry of its term, and with [`Error::ConfigChangeInProgress`] while
    /// another change is uncommitted; both clear on their own, so retry.
    pub fn propose_membership(&mut self, change: ConfChange) -> Result<LogId, Error> {
        self.check_can_propose()?;
        if self.term_start_index > self.log.committed {
            // A configuration takes effect when appended: a new leader that
            // appended one before its term's first commit could hold a
            // configuration that a rival leader of an earlier term, with an
            // uncommitted change of its own, never saw; both could commit.
            return Err(Error::LeaderNotSettled {
                term: self.term,
                index: self.term_start_index,
            });
        }
        if self.pending_conf_index > self.log.committed {
            return Err(Error::ConfigChangeInProgress {
                pending_index: self.pending_conf_index,
            });
        }
        let next = self
            .membership()
            .apply_changes(std::slice::from_ref(&change))?;
        if &next == self.membership() {
            return Err(crate::error::ConfChangeError::NoChange.into());
        }
        match change {
            ConfChange::Remove { id } if !self.membership().contains(id) => {
                return Err(crate::error::ConfChangeError::NotAMember(id).into());
            }
            ConfChange::AddLearner { id, .. } | ConfChange::AddVoter { id, .. }
                if self.membership().removed().contains(&id) =>
            {
                return Err(crate::error::ConfChangeError::IdRemoved(id).into());
            }
            _ => {}
        }
        self.counters.proposals += 1;
        let id = self.append_entry(EntryPayload::Membership(next));
        self.pending_conf_index = id.index;
        Ok(id)
    }

    fn check_can_propose(&self) -> Result<(), Error> {
        if self.role != Role::Leader {
            return Err(Error::NotLeader {
                leader_hint: self.leader,
            });
        }
        if let Some(t) = self.transfer {
            return Err(Error::TransferInProgress { target: t.target });
        }
        Ok(())
    }

    /// Appends an entry to the leader's own log.
    fn append_entry(&mut self, payload: EntryPayload) -> LogId {
        let index = self.log.last_index() + 1;
        let entry = Entry {
            term: self.term,
            index,
            payload,
        };
        let id = entry.log_id();
        let config = match &entry.payload {
            EntryPayload::Membership(m) => Some(m.clone()),
            _ => None,
        };
        self.log.push(entry);
        if let Some(m) = config {
            self.push_config(index, m);
        }
        self.need_append = true;
        id
    }

    /// Feeds a message from another node.
    pub fn step(&mut self, message: Message) -> Result<(), Error> {
        if message.to != self.id || message.from == self.id {
            return Ok(());
        }
        let malformed = if message.term == Term::MAX {
            // No term can follow it: adopting it would end elections for
            // good (the next campaign's term cannot be counted).
            Some(format!(
                "term {} cannot be followed by another",
                message.term
            ))
        } else {
            match &message.body {
                MessageBody::Append(req) => replication::malformed_append(message.term, req),
                MessageBody::Snapshot(chunk) => Self::malformed_chunk(message.term, chunk),
                _ => None,
            }
        };
        if self
            .committed_membership()
            .is_some_and(|m| m.removed().contains(&message.from))
        {
            // A node removed by a committed configuration is never a member
            // again (ids are not reused): nothing it says counts, not even
            // its term. Only a committed removal counts, as an uncommitted
            // one may still be replaced by a log where the node stays.
            self.counters.messages_from_removed += 1;
            tracing::debug!(
                id = self.id,
                from = message.from,
                kind = ?message.kind(),
                "dropped a message from a removed node"
            );
            if malformed.is_none() && message.term < self.term {
                // But a removed node that still leads an older term (it
                // removed itself and missed the commit) is told the newer
                // term, as any stale leader is, so that it steps down: with
                // CheckQuorum off nothing else would ever stop it leading.
                self.answer_stale_leader(&message);
            }
            return Ok(());
        }
        if let Some(problem) = malformed {
            // Dropped before it can change anything (not even the term): a
            // corrupt or hostile message is no reason to stop the node.
            self.counters.malformed_messages += 1;
            tracing::warn!(
                id = self.id,
                from = message.from,
                term = message.term,
                kind = ?message.kind(),
                "dropped a malformed message: {problem}"
            );
            return Ok(());
        }
        if !self.step_term(&message)? {
            return Ok(());
        }
        let from = message.from;
        match message.body {
            MessageBody::PreVote(req) => self.handle_vote_request(from, message.term, req, true),
            MessageBody::Vote(req) => self.handle_vote_request(from, message.term, req, false),
            MessageBody::PreVoteResponse(resp) => {
                self.handle_vote_response(from, message.term, resp.granted, true)
            }
            MessageBody::VoteResponse(resp) => {
                self.handle_vote_response(from, message.term, resp.granted, false)
            }
            MessageBody::Append(req) => self.handle_append(from, req),
            MessageBody::AppendResponse(resp) => self.handle_append_response(from, resp),
            MessageBody::Heartbeat(hb) => self.handle_heartbeat(from, hb),
            MessageBody::HeartbeatResponse(resp) => self.handle_heartbeat_response(from, resp),
            MessageBody::Snapshot(chunk) => self.handle_snapshot_chunk(from, chunk),
            MessageBody::SnapshotResponse(resp) => self.handle_snapshot_response(from, resp),
            MessageBody::TimeoutNow => self.handle_timeout_now(from),
            MessageBody::ReadIndex(req) => {
                self.handle_read_index_request(from, req.id);
                Ok(())
            }
            MessageBody::ReadIndexResponse(resp) => {
                self.handle_read_index_response(from, resp);
                Ok(())
            }
        }
    }

    /// Tells the node that `peer` could not be reached (its transport queue
    /// is full or the connection is down): stop streaming to it and probe.
    pub fn report_unreachable(&mut self, peer: NodeId) {
        if let Some(pr) = self.progress.get_mut(&peer) {
            match pr.state {
                crate::ReplicationState::Replicate => pr.become_probe(),
                crate::ReplicationState::Snapshot => {
                    if let Some(send) = pr.snapshot.as_mut() {
                        send.sent = send.acked;
                    }
                }
                crate::ReplicationState::Probe => pr.probe_sent = false,
            }
        }
    }

    // ----- output ------------------------------------------------------------

    /// Whether [`Node::ready`] has anything to hand out.
    pub fn has_ready(&self) -> bool {
        !self.messages.is_empty()
            || !self.persisted_messages.is_empty()
            || self.log.has_unpersisted()
            || !self.pending_chunks.is_empty()
            || self.hard_state_must_sync()
            || self.log.has_next_to_apply()
            || !self.read_states.is_empty()
            || self.reads.has_ready(self.log.applied)
            || self.snapshots.has_ready()
            || (self.role == Role::Leader
                && (self.need_append
                    || self.reads.wants_round()
                    || !self.commit_notices.is_empty()
                    || self.broadcast_commit < self.log.committed))
    }

    fn hard_state_must_sync(&self) -> bool {
        self.term != self.emitted_hard_state.term || self.vote != self.emitted_hard_state.vote
    }

    /// Takes the next output batch. The host must perform it as the crate
    /// documentation describes and acknowledge it with
    /// [`Node::on_persisted`].
    ///
    /// A storage error (reading committed entries) is returned before
    /// anything is taken: the writes, messages and the batch number stay in
    /// the node for the next call. (A host should still stop a node whose
    /// storage fails, see [`Error::Storage`].)
    pub fn ready(&mut self) -> Result<Ready, Error> {
        if self.role == Role::Leader {
            self.flush_leader()?;
        }
        // The one read that can fail comes before anything is taken: a
        // storage error then leaves every write in the node, to be handed
        // out by the next call, rather than lost between the two.
        let committed_entries = self.log.next_to_apply(self.config.max_apply_bytes)?;
        self.ready_number += 1;
        let number = self.ready_number;

        let snapshot_chunks = std::mem::take(&mut self.pending_chunks);
        let install_snapshot = self.log.take_snapshot_to_install();
        let entries = self.log.take_unpersisted();
        let hard_state = self.hard_state();
        // Persisted messages may rest on an earlier batch's write (a vote
        // granted again, a duplicate append acknowledged): while one is not
        // acknowledged durable, the batch writes the hard state again and
        // syncs, so that its own write being durable means every earlier
        // one is (writes reach storage in batch order) and a host may send
        // its persisted messages as soon as its own write is durable.
        let behind_earlier_write =
            !self.persisted_messages.is_empty() && !self.pending_persists.is_empty();
        let must_sync = !snapshot_chunks.is_empty()
            || install_snapshot.is_some()
            || !entries.is_empty()
            || self.hard_state_must_sync()
            || behind_earlier_write;
        // A commit-only change rides along with the next synced write.
        let hard_state =
            if must_sync && (hard_state != self.emitted_hard_state || behind_earlier_write) {
                self.emitted_hard_state = hard_state;
                Some(hard_state)
            } else {
                None
            };
        let compact_to = self.snapshots.take_compaction();
        let write = LogWrite {
            snapshot_chunks,
            install_snapshot,
            entries,
            hard_state,
            compact_to,
            must_sync,
        };
        if !write.is_empty() {
            self.pending_persists.push_back(PendingPersist {
                number,
                last_entry: write.entries.last().map(Entry::log_id),
                installed_snapshot: write.install_snapshot.as_ref().map(|m| m.last.index),
                term: write.hard_state.as_ref().map(|h| h.term),
            });
        }

        self.snapshots
            .count_applying(committed_entries.iter().map(Entry::budget_size).sum());
        self.reads
            .collect_ready(self.log.applied, &mut self.read_states);
        let read_states = std::mem::take(&mut self.read_states);
        let snapshot_due = self.snapshots.take_due();

        Ok(Ready {
            number,
            write,
            messages: std::mem::take(&mut self.messages),
            persisted_messages: std::mem::take(&mut self.persisted_messages),
            committed_entries,
            read_states,
            snapshot_due,
        })
    }

    /// Acknowledges that the writes of every [`Ready`] up to `number` are
    /// durable (and, for an installed snapshot, that the state machine was
    /// restored from it).
    pub fn on_persisted(&mut self, number: u64) -> Result<(), Error> {
        let mut leader_progress = false;
        while let Some(p) = self.pending_persists.front().copied() {
            if p.number > number {
                break;
            }
            self.pending_persists.pop_front();
            if let Some(term) = p.term {
                self.durable_term = self.durable_term.max(term);
            }
            if let Some(index) = p.installed_snapshot {
                self.log.stable_snapshot_to(index);
                self.log.applied_to(index);
            }
            if let Some(last) = p.last_entry {
                self.log.stable_to(last);
                leader_progress = true;
            }
        }
        if leader_progress && self.role == Role::Leader {
            self.maybe_commit()?;
        }
        self.maybe_win_alone()?;
        Ok(())
    }

    /// Acknowledges that the host applied committed entries up to `index`.
    pub fn on_applied(&mut self, index: Index) -> Result<(), Error> {
        self.log.applied_to(index);
        self.snapshots.maybe_request(
            self.log.applied,
            self.log.first_index()?,
            self.log.last_index(),
        );
        Ok(())
    }

    // ----- shared helpers ----------------------------------------------------

    fn send(&mut self, to: NodeId, body: MessageBody) {
        self.messages.push(Message {
            from: self.id,
            to,
            term: self.term,
            body,
        });
    }

    fn send_after_persist(&mut self, to: NodeId, body: MessageBody) {
        self.persisted_messages.push(Message {
            from: self.id,
            to,
            term: self.term,
            body,
        });
    }

    fn reset_randomized_timeout(&mut self) {
        let min = self.config.election_ticks;
        self.randomized_election_timeout = self.rng.random_range(min..2 * min);
    }

    /// Resets per-term state when the role or term changes.
    fn reset(&mut self, term: Term) {
        if self.term != term {
            self.term = term;
            self.vote = None;
            self.lease_revoked = false;
        }
        self.leader = None;
        self.election_elapsed = 0;
        self.heartbeat_elapsed = 0;
        self.reset_randomized_timeout();
        self.votes.clear();
        self.transfer = None;
        self.progress.clear();
        self.need_append = false;
        let hint = self.leader;
        self.reads.fail_all(
            hint,
            &mut self.read_states,
            &mut self.messages,
            self.id,
            self.term,
        );
    }
}
