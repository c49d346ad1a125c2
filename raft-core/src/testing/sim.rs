//! The deterministic cluster simulator.
//!
//! N [`Node`]s in one thread; one seeded RNG chooses everything: which
//! message is delivered next (reordering), losses, duplicates, delays,
//! partitions (symmetric and one-way), crashes (which lose every write not yet
//! acknowledged durable) and restarts, ticks out of step, client proposals,
//! reads, membership changes, leadership transfers and snapshots. After every
//! step the [`Oracle`](super::oracle) checks the invariants; after the faults
//! heal, liveness is checked. A failing seed reports itself with the command
//! that replays it.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::hash::{Hash, Hasher};

use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::oracle::{Oracle, Violation};
use super::state_machine::{RegisterMachine, SetCommand};
use crate::config::{Config, SnapshotPolicy};
use crate::membership::{ConfChange, Membership};
use crate::message::Message;
use crate::node::{Node, ReadPolicy};
use crate::ready::Ready;
use crate::storage::LogWrite;
use crate::types::{Index, NodeId};
use crate::{Error, MemLog};

/// What a simulation does. [`SimConfig::new`] gives the default mix: every
/// fault and every feature on.
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// The seed of everything.
    pub seed: u64,
    /// Initial voters.
    pub nodes: usize,
    /// Extra node ids that membership changes may add (never re-added once
    /// removed).
    pub spare_nodes: usize,
    /// Steps of the fault phase.
    pub steps: usize,
    /// Probability that a sent message is lost.
    pub drop_rate: f64,
    /// Probability that a sent message is delivered twice.
    pub duplicate_rate: f64,
    /// Messages are delayed by up to this many ticks (reordering happens
    /// anyway: any deliverable message may go next).
    pub max_delay: u64,
    /// Per-step probability of a crash of a random node.
    pub crash_rate: f64,
    /// Per-step probability of a new partition.
    pub partition_rate: f64,
    /// Membership changes, leadership transfers, reads and snapshots.
    pub membership_changes: bool,
    /// Leadership transfers.
    pub transfers: bool,
    /// ReadIndex (and lease) reads.
    pub reads: bool,
    /// Lease reads among the reads (needs `reads`).
    pub lease_reads: bool,
    /// Snapshots and compaction (small threshold, tiny chunks).
    pub snapshots: bool,
    /// Ticks allowed, after healing, for a leader to appear and a proposal
    /// to commit.
    pub liveness_ticks: u64,
    /// Entries per AppendEntries (drawn per seed: small batches stress
    /// pipelining and expose previous-term entries one at a time).
    pub max_append_entries: usize,
    /// The pipelining window (drawn per seed).
    pub max_inflight: usize,
    /// The AppendEntries byte budget (drawn per seed).
    pub max_append_bytes: u64,
    /// PreVote on or off (drawn per seed: Raft is safe either way).
    pub pre_vote: bool,
    /// CheckQuorum on or off (drawn per seed; lease reads need it).
    pub check_quorum: bool,
}

impl SimConfig {
    /// Everything on, for `nodes` initial voters.
    pub fn new(seed: u64, nodes: usize) -> Self {
        // Replication parameters vary by seed, from a stream of their own so
        // that they do not perturb the main schedule.
        let mut params = ChaCha8Rng::seed_from_u64(seed ^ 0x005E_ED0F_C0FF_EE00);
        let max_append_entries = [1, 2, 8, 64][params.random_range(0..4)];
        let max_inflight = [1, 4, 16][params.random_range(0..3)];
        let max_append_bytes = [64, 512, 1 << 16][params.random_range(0..3)];
        let pre_vote = params.random_bool(0.7);
        let check_quorum = params.random_bool(0.7);
        Self {
            pre_vote,
            check_quorum,
            max_append_entries,
            max_inflight,
            max_append_bytes,
            seed,
            nodes,
            spare_nodes: 2,
            steps: 8000,
            drop_rate: 0.05,
            duplicate_rate: 0.02,
            max_delay: 2,
            crash_rate: 0.004,
            partition_rate: 0.004,
            membership_changes: true,
            transfers: true,
            reads: true,
            lease_reads: check_quorum,
            snapshots: true,
            liveness_ticks: 400,
        }
    }

    /// The node configuration the simulator gives node `id`.
    pub fn node_config(&self, id: NodeId, incarnation: u64) -> Config {
        let mut config = Config::new(id);
        config.election_ticks = 10;
        config.heartbeat_ticks = 2;
        config.lease_reads = self.lease_reads && self.check_quorum;
        config.pre_vote = self.pre_vote;
        config.check_quorum = self.check_quorum;
        config.max_append_entries = self.max_append_entries;
        config.max_append_bytes = self.max_append_bytes;
        config.max_inflight = self.max_inflight;
        config.seed = self.seed ^ (id << 32) ^ incarnation.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        config.snapshot = if self.snapshots {
            SnapshotPolicy {
                threshold: 24,
                retention: 6,
                chunk_size: 64,
                chunks_in_flight: 2,
            }
        } else {
            SnapshotPolicy {
                threshold: 0,
                ..SnapshotPolicy::default()
            }
        };
        config
    }
}

/// Hooks for test-only broken variants of the node (mutation tests): they
/// see and may rewrite what a node does. The simulator itself never breaks
/// anything.
pub trait Interceptor {
    /// Called before a message is stepped into a node.
    fn on_step(&mut self, _node: &Node<MemLog>, _message: &Message) {}
    /// Called on every output batch before the simulator performs it.
    fn on_ready(&mut self, _node: &Node<MemLog>, _ready: &mut Ready) {}
    /// Called when a client asks `node` for a read; `Some(index)` answers the
    /// read with that read index without asking the node.
    fn on_read(&mut self, _node: &Node<MemLog>) -> Option<Index> {
        None
    }
}

/// What a simulation run did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SimStats {
    /// Steps taken (fault phase and liveness phase).
    pub steps: u64,
    /// Global ticks.
    pub ticks: u64,
    /// Proposals that committed (applied by the proposer's state machine as
    /// the entry it proposed).
    pub committed: u64,
    /// Proposals accepted by a leader.
    pub proposed: u64,
    /// Distinct (term, leader) pairs seen.
    pub elections: u64,
    /// Faults injected: lost, duplicated messages; crashes; partitions.
    pub faults: u64,
    /// Reads served and checked.
    pub reads: u64,
    /// Membership changes accepted.
    pub membership_changes: u64,
    /// Leadership transfers started.
    pub transfers: u64,
    /// Snapshots built and installed.
    pub snapshots: u64,
    /// A digest of the whole event trace: same seed, same trace.
    pub trace: u64,
}

/// A failed run: the seed, the step and the broken invariant.
#[derive(Clone, Debug)]
pub struct SimFailure {
    /// The seed that fails.
    pub seed: u64,
    /// The step at which it failed.
    pub step: u64,
    /// The broken invariant.
    pub violation: Violation,
    /// Initial voters, for the replay command.
    pub nodes: usize,
}

impl std::fmt::Display for SimFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "seed {} failed at step {}: {}\n  replay: cargo xtask sim --seeds 1 --start {} --nodes {}",
            self.seed, self.step, self.violation, self.seed, self.nodes
        )
    }
}

/// A write handed to "disk" but not yet durable.
struct PendingWrite {
    number: u64,
    write: LogWrite,
    persisted_messages: Vec<Message>,
}

/// A client read in flight: the commit index known when it was invoked.
#[derive(Clone, Copy)]
struct PendingRead {
    committed_at_invocation: Index,
}

struct SimNode {
    node: Option<Node<MemLog>>,
    /// The durable store while the node is down.
    disk: Option<MemLog>,
    pending: VecDeque<PendingWrite>,
    machine: RegisterMachine,
    reads: BTreeMap<u64, PendingRead>,
    /// Read answers decided by an interceptor: (read id, index).
    forced_reads: Vec<(u64, Index)>,
    incarnation: u64,
    ticked_this_round: bool,
    snapshot_due: bool,
}

struct InFlight {
    deliver_at: u64,
    message: Message,
}

/// The simulator.
pub struct Sim {
    config: SimConfig,
    rng: ChaCha8Rng,
    nodes: BTreeMap<NodeId, SimNode>,
    in_flight: Vec<InFlight>,
    /// One-way cuts: messages from .0 to .1 are lost.
    cuts: BTreeSet<(NodeId, NodeId)>,
    now: u64,
    oracle: Oracle,
    stats: SimStats,
    trace: std::collections::hash_map::DefaultHasher,
    interceptor: Option<Box<dyn Interceptor>>,
    /// Proposals in flight: log position -> value.
    proposals: BTreeMap<(u64, u64), u64>,
    next_value: u64,
    next_read: u64,
    /// Ids of spare nodes never yet added.
    spares: Vec<NodeId>,
    faults_on: bool,
    /// (term, leader) pairs already seen, and a leader scheduled to crash
    /// soon after its election: (node, term, steps left).
    seen_leaders: BTreeSet<(u64, NodeId)>,
    doomed: Option<(NodeId, u64, u32)>,
}

type StepResult = Result<(), Violation>;

impl Sim {
    /// A simulator for `config`.
    pub fn new(config: SimConfig) -> Self {
        let voters: Vec<NodeId> = (1..=config.nodes as NodeId).collect();
        let membership =
            Membership::with_voters(voters.iter().map(|&id| (id, format!("sim-{id}"))));
        let mut nodes = BTreeMap::new();
        for id in 1..=(config.nodes + config.spare_nodes) as NodeId {
            let store = if voters.contains(&id) {
                MemLog::bootstrap(membership.clone())
            } else {
                MemLog::new()
            };
            let node = Node::new(config.node_config(id, 0), store).expect("valid simulator config");
            nodes.insert(
                id,
                SimNode {
                    node: Some(node),
                    disk: None,
                    pending: VecDeque::new(),
                    machine: RegisterMachine::default(),
                    reads: BTreeMap::new(),
                    forced_reads: Vec::new(),
                    incarnation: 0,
                    ticked_this_round: false,
                    snapshot_due: false,
                },
            );
        }
        let spares = ((config.nodes + 1)..=(config.nodes + config.spare_nodes))
            .map(|i| i as NodeId)
            .collect();
        Sim {
            rng: ChaCha8Rng::seed_from_u64(config.seed),
            config,
            nodes,
            in_flight: Vec::new(),
            cuts: BTreeSet::new(),
            now: 0,
            oracle: Oracle::default(),
            stats: SimStats::default(),
            trace: std::collections::hash_map::DefaultHasher::new(),
            interceptor: None,
            proposals: BTreeMap::new(),
            next_value: 1,
            next_read: 1,
            spares,
            faults_on: true,
            seen_leaders: BTreeSet::new(),
            doomed: None,
        }
    }

    /// Installs a test-only interceptor (a deliberately broken node variant).
    pub fn with_interceptor(mut self, interceptor: impl Interceptor + 'static) -> Self {
        self.interceptor = Some(Box::new(interceptor));
        self
    }

    /// Runs the fault phase, heals everything and checks liveness.
    pub fn run(mut self) -> Result<SimStats, SimFailure> {
        let result = self.run_phases();
        self.stats.elections = self.oracle.elections;
        self.stats.trace = self.trace.finish();
        match result {
            Ok(()) => Ok(self.stats),
            Err(violation) => Err(SimFailure {
                seed: self.config.seed,
                step: self.stats.steps,
                violation,
                nodes: self.config.nodes,
            }),
        }
    }

    fn run_phases(&mut self) -> StepResult {
        for _ in 0..self.config.steps {
            self.step()?;
        }
        self.heal()?;
        self.check_liveness()
    }

    fn trace(&mut self, event: impl Hash) {
        event.hash(&mut self.trace);
    }

    fn live_ids(&self) -> Vec<NodeId> {
        self.nodes
            .iter()
            .filter(|(_, n)| n.node.is_some())
            .map(|(id, _)| *id)
            .collect()
    }

    fn pick<T: Copy>(&mut self, items: &[T]) -> Option<T> {
        if items.is_empty() {
            None
        } else {
            Some(items[self.rng.random_range(0..items.len())])
        }
    }

    fn chance(&mut self, p: f64) -> bool {
        p > 0.0 && self.rng.random_bool(p.min(1.0))
    }

    /// One step of the fault phase: one randomly chosen action.
    fn step(&mut self) -> StepResult {
        self.stats.steps += 1;
        let roll = self.rng.random_range(0..1000u32);
        match roll {
            0..150 => self.tick_one()?,
            150..500 => self.deliver_one()?,
            500..720 => self.ready_one()?,
            720..880 => self.persist_one()?,
            880..940 => self.propose_one()?,
            940..965 => {
                if self.config.reads {
                    self.read_one()?
                }
            }
            965..975 => {
                if self.config.snapshots {
                    self.build_snapshot_one()?
                }
            }
            975..982 => {
                if self.config.membership_changes {
                    self.change_membership()?
                }
            }
            982..985 => {
                if self.config.transfers {
                    self.transfer_one()?
                }
            }
            _ => self.inject_fault()?,
        }
        self.doom_new_leaders();
        self.check()
    }

    /// Leaders crash shortly after their election now and then, with entries
    /// of earlier terms still on their way: how logs diverge in the hard
    /// cases (Raft paper, figure 8).
    fn doom_new_leaders(&mut self) {
        if let Some((id, term, left)) = self.doomed {
            if left == 0 {
                self.doomed = None;
                let still = self.nodes[&id]
                    .node
                    .as_ref()
                    .is_some_and(|n| n.is_leader() && n.term() == term);
                if still {
                    self.crash(id);
                }
            } else {
                self.doomed = Some((id, term, left - 1));
            }
        }
        for id in self.leaders() {
            let term = self.nodes[&id].node.as_ref().expect("live leader").term();
            if self.seen_leaders.insert((term, id)) && self.doomed.is_none() && self.chance(0.15) {
                let left = self.rng.random_range(5..80);
                self.doomed = Some((id, term, left));
            }
        }
    }

    fn check(&mut self) -> StepResult {
        let disks: BTreeMap<NodeId, &MemLog> = self
            .nodes
            .iter()
            .filter_map(|(id, n)| {
                n.node
                    .as_ref()
                    .map(|node| node.store())
                    .or(n.disk.as_ref())
                    .map(|d| (*id, d))
            })
            .collect();
        let nodes = self.nodes.values().filter_map(|n| n.node.as_ref());
        self.oracle.check_nodes(nodes, &disks)
    }

    // ----- time and network --------------------------------------------------

    /// Ticks one node that has not ticked in this round; when all have, the
    /// global clock advances. Nodes thus tick at different moments but never
    /// drift apart by more than one tick.
    fn tick_one(&mut self) -> StepResult {
        let waiting: Vec<NodeId> = self
            .nodes
            .iter()
            .filter(|(_, n)| n.node.is_some() && !n.ticked_this_round)
            .map(|(id, _)| *id)
            .collect();
        match self.pick(&waiting) {
            Some(id) => {
                let sim_node = self.nodes.get_mut(&id).expect("picked");
                sim_node.ticked_this_round = true;
                let node = sim_node.node.as_mut().expect("live");
                node.tick().map_err(|e| storage_violation(id, e))?;
                self.trace(("tick", id));
            }
            None => {
                self.now += 1;
                self.stats.ticks += 1;
                for n in self.nodes.values_mut() {
                    n.ticked_this_round = false;
                }
            }
        }
        Ok(())
    }

    fn send(&mut self, message: Message) {
        if self.cuts.contains(&(message.from, message.to)) {
            return;
        }
        if self.faults_on && self.chance(self.config.drop_rate) {
            self.stats.faults += 1;
            return;
        }
        let copies = if self.faults_on && self.chance(self.config.duplicate_rate) {
            self.stats.faults += 1;
            2
        } else {
            1
        };
        for _ in 0..copies {
            let delay = if self.config.max_delay > 0 {
                self.rng.random_range(0..=self.config.max_delay)
            } else {
                0
            };
            self.in_flight.push(InFlight {
                deliver_at: self.now + delay,
                message: message.clone(),
            });
        }
    }

    fn deliver_one(&mut self) -> StepResult {
        let deliverable: Vec<usize> = (0..self.in_flight.len())
            .filter(|&i| self.in_flight[i].deliver_at <= self.now)
            .collect();
        let Some(i) = self.pick(&deliverable) else {
            return Ok(());
        };
        let InFlight { message, .. } = self.in_flight.swap_remove(i);
        self.deliver(message)
    }

    fn deliver(&mut self, message: Message) -> StepResult {
        if self.cuts.contains(&(message.from, message.to)) {
            return Ok(());
        }
        let to = message.to;
        let Some(sim_node) = self.nodes.get_mut(&to) else {
            return Ok(());
        };
        let Some(node) = sim_node.node.as_mut() else {
            return Ok(());
        };
        self.trace
            .write_u64(message.from ^ (to << 8) ^ (message.term << 16));
        message.kind().hash(&mut self.trace);
        if let Some(interceptor) = self.interceptor.as_mut() {
            interceptor.on_step(node, &message);
        }
        node.step(message).map_err(|e| storage_violation(to, e))
    }

    // ----- output batches and durability ---------------------------------------

    fn ready_one(&mut self) -> StepResult {
        let ready_ids: Vec<NodeId> = self
            .nodes
            .iter()
            .filter(|(_, n)| n.node.as_ref().is_some_and(|node| node.has_ready()))
            .map(|(id, _)| *id)
            .collect();
        match self.pick(&ready_ids) {
            Some(id) => self.process_ready(id),
            None => Ok(()),
        }
    }

    fn process_ready(&mut self, id: NodeId) -> StepResult {
        let sim_node = self.nodes.get_mut(&id).expect("known node");
        let node = sim_node.node.as_mut().expect("live node");
        let mut ready = node.ready().map_err(|e| storage_violation(id, e))?;
        if let Some(interceptor) = self.interceptor.as_mut() {
            interceptor.on_ready(node, &mut ready);
        }
        ("ready", id, ready.number).hash(&mut self.trace);
        // Log matching: check the entries as they are written.
        if let Some(first) = ready.write.entries.first() {
            let prev_term = if first.index == 1 {
                0
            } else {
                node.term_at(first.index - 1)
                    .map_err(|e| storage_violation(id, e))?
                    .unwrap_or(0)
            };
            self.oracle
                .on_written(id, &ready.write.entries, prev_term)?;
        }
        // Committed entries are durable already: apply them now.
        let mut applied_to = None;
        for entry in &ready.committed_entries {
            self.oracle.on_applied(id, entry)?;
            sim_node.machine.apply(entry);
            applied_to = Some(entry.index);
            if let crate::EntryPayload::Command(data) = &entry.payload {
                if let Some(value) = self.proposals.remove(&(entry.term, entry.index)) {
                    if SetCommand::decode(data).map(|c| c.value) == Some(value) {
                        self.stats.committed += 1;
                    }
                }
            }
        }
        if let Some(index) = applied_to {
            node.on_applied(index)
                .map_err(|e| storage_violation(id, e))?;
        }
        let served = sim_node.machine.applied_index();
        for read in &ready.read_states {
            if let Some(pending) = sim_node.reads.remove(&read.id) {
                if let Ok(index) = read.result {
                    if served < index {
                        return Err(Violation::new(
                            "read served before apply",
                            format!("read {} index {index} but applied {served}", read.id),
                        ));
                    }
                    self.oracle
                        .check_read(id, read.id, pending.committed_at_invocation, served)?;
                    self.stats.reads += 1;
                }
            }
        }
        for (read_id, index) in std::mem::take(&mut sim_node.forced_reads) {
            if let Some(pending) = sim_node.reads.remove(&read_id) {
                if served >= index {
                    self.oracle
                        .check_read(id, read_id, pending.committed_at_invocation, served)?;
                    self.stats.reads += 1;
                } else {
                    sim_node.forced_reads.push((read_id, index));
                    sim_node.reads.insert(read_id, pending);
                }
            }
        }
        if ready.snapshot_due {
            sim_node.snapshot_due = true;
        }
        let messages = std::mem::take(&mut ready.messages);
        let number = ready.number;
        if !ready.write.is_empty() || !ready.persisted_messages.is_empty() {
            sim_node.pending.push_back(PendingWrite {
                number,
                write: std::mem::take(&mut ready.write),
                persisted_messages: std::mem::take(&mut ready.persisted_messages),
            });
        }
        for message in messages {
            self.send(message);
        }
        Ok(())
    }

    /// The oldest pending write of a random node becomes durable.
    fn persist_one(&mut self) -> StepResult {
        let ids: Vec<NodeId> = self
            .nodes
            .iter()
            .filter(|(_, n)| n.node.is_some() && !n.pending.is_empty())
            .map(|(id, _)| *id)
            .collect();
        match self.pick(&ids) {
            Some(id) => self.persist_next(id),
            None => Ok(()),
        }
    }

    fn persist_next(&mut self, id: NodeId) -> StepResult {
        let sim_node = self.nodes.get_mut(&id).expect("known node");
        let Some(pending) = sim_node.pending.pop_front() else {
            return Ok(());
        };
        let node = sim_node.node.as_mut().expect("live node");
        let installs = pending.write.install_snapshot.is_some();
        node.store_mut()
            .apply_owned(pending.write)
            .map_err(|e| storage_violation(id, e.into()))?;
        if installs {
            let (_, data) = node
                .store()
                .snapshot()
                .cloned()
                .expect("installed snapshot is stored");
            sim_node.machine = RegisterMachine::restore(&data).ok_or_else(|| {
                Violation::new(
                    "snapshot",
                    format!("node {id} received an undecodable snapshot"),
                )
            })?;
        }
        node.on_persisted(pending.number)
            .map_err(|e| storage_violation(id, e))?;
        self.trace(("persist", id, pending.number));
        for message in pending.persisted_messages {
            self.send(message);
        }
        Ok(())
    }

    fn build_snapshot_one(&mut self) -> StepResult {
        let ids: Vec<NodeId> = self
            .nodes
            .iter()
            .filter(|(_, n)| n.node.is_some() && n.snapshot_due)
            .map(|(id, _)| *id)
            .collect();
        let Some(id) = self.pick(&ids) else {
            return Ok(());
        };
        let sim_node = self.nodes.get_mut(&id).expect("known node");
        sim_node.snapshot_due = false;
        let node = sim_node.node.as_mut().expect("live node");
        let index = sim_node.machine.applied_index();
        if index == 0 || index != node.applied_index() {
            return Ok(());
        }
        let data = sim_node.machine.snapshot(100);
        let meta = match node.snapshot_meta_for(index, data.len() as u64) {
            Ok(meta) => meta,
            Err(Error::SnapshotObsolete { .. }) => return Ok(()),
            Err(e) => return Err(storage_violation(id, e)),
        };
        node.store_mut().save_snapshot(meta.clone(), data);
        node.on_snapshot_built(&meta)
            .map_err(|e| storage_violation(id, e))?;
        self.stats.snapshots += 1;
        self.trace(("snapshot", id, index));
        Ok(())
    }

    // ----- clients -------------------------------------------------------------

    fn leaders(&self) -> Vec<NodeId> {
        self.nodes
            .iter()
            .filter(|(_, n)| n.node.as_ref().is_some_and(|node| node.is_leader()))
            .map(|(id, _)| *id)
            .collect()
    }

    fn propose_one(&mut self) -> StepResult {
        // Clients mostly find the leader; sometimes they ask whoever.
        let leaders = self.leaders();
        let candidates = if !leaders.is_empty() && self.chance(0.9) {
            leaders
        } else {
            self.live_ids()
        };
        let Some(id) = self.pick(&candidates) else {
            return Ok(());
        };
        self.propose_at(id);
        Ok(())
    }

    fn propose_at(&mut self, id: NodeId) -> bool {
        let value = self.next_value;
        let key = self.rng.random_range(0..8u8);
        let node = self
            .nodes
            .get_mut(&id)
            .and_then(|n| n.node.as_mut())
            .expect("live node");
        match node.propose(SetCommand { key, value }.encode(16)) {
            Ok(position) => {
                self.next_value += 1;
                self.proposals
                    .insert((position.term, position.index), value);
                self.stats.proposed += 1;
                self.trace(("propose", id, position.index));
                true
            }
            Err(_) => false,
        }
    }

    fn read_one(&mut self) -> StepResult {
        let live = self.live_ids();
        let Some(id) = self.pick(&live) else {
            return Ok(());
        };
        let policy = if self.config.lease_reads && self.chance(0.3) {
            ReadPolicy::Lease
        } else {
            ReadPolicy::ReadIndex
        };
        let read_id = self.next_read;
        self.next_read += 1;
        let committed_at_invocation = self.oracle.max_commit;
        let sim_node = self.nodes.get_mut(&id).expect("known node");
        let node = sim_node.node.as_mut().expect("live node");
        if let Some(interceptor) = self.interceptor.as_mut() {
            if let Some(index) = interceptor.on_read(node) {
                sim_node.reads.insert(
                    read_id,
                    PendingRead {
                        committed_at_invocation,
                    },
                );
                sim_node.forced_reads.push((read_id, index));
                return Ok(());
            }
        }
        if node.read_index(read_id, policy).is_ok() {
            sim_node.reads.insert(
                read_id,
                PendingRead {
                    committed_at_invocation,
                },
            );
            self.trace(("read", id, read_id));
        }
        Ok(())
    }

    // ----- membership and leadership -------------------------------------------

    fn change_membership(&mut self) -> StepResult {
        let leaders = self.leaders();
        let Some(leader) = self.pick(&leaders) else {
            return Ok(());
        };
        let node = self.nodes[&leader].node.as_ref().expect("live leader");
        let membership = node.membership().clone();
        let voters: Vec<NodeId> = membership.voters().iter().copied().collect();
        let learners: Vec<NodeId> = membership.learners().iter().copied().collect();
        let roll = self.rng.random_range(0..4u8);
        let change = match roll {
            0 if !self.spares.is_empty() => {
                let id = self.spares[0];
                Some(ConfChange::AddLearner {
                    id,
                    address: format!("sim-{id}"),
                })
            }
            1 if !learners.is_empty() => {
                let id = self.pick(&learners).expect("non-empty");
                Some(ConfChange::AddVoter { id, address: None })
            }
            2 if voters.len() > 3 => {
                let others: Vec<NodeId> = voters.iter().copied().filter(|&v| v != leader).collect();
                self.pick(&others).map(|id| ConfChange::Remove { id })
            }
            3 if voters.len() > 3 => Some(ConfChange::Remove { id: leader }),
            _ => None,
        };
        let Some(change) = change else { return Ok(()) };
        let node = self
            .nodes
            .get_mut(&leader)
            .and_then(|n| n.node.as_mut())
            .expect("live leader");
        if node.propose_membership(change.clone()).is_ok() {
            if let ConfChange::AddLearner { id, .. } = change {
                self.spares.retain(|&s| s != id);
            }
            self.stats.membership_changes += 1;
            self.trace(("membership", leader));
        }
        Ok(())
    }

    fn transfer_one(&mut self) -> StepResult {
        let leaders = self.leaders();
        let Some(leader) = self.pick(&leaders) else {
            return Ok(());
        };
        let voters: Vec<NodeId> = self.nodes[&leader]
            .node
            .as_ref()
            .expect("live")
            .membership()
            .voters()
            .iter()
            .copied()
            .filter(|&v| v != leader)
            .collect();
        let Some(target) = self.pick(&voters) else {
            return Ok(());
        };
        let node = self
            .nodes
            .get_mut(&leader)
            .and_then(|n| n.node.as_mut())
            .expect("live leader");
        if node.transfer_leader(target).is_ok() {
            self.stats.transfers += 1;
            self.trace(("transfer", leader, target));
        }
        Ok(())
    }

    // ----- faults ----------------------------------------------------------------

    fn inject_fault(&mut self) -> StepResult {
        let roll = self.rng.random_range(0..100u32);
        let crashed: Vec<NodeId> = self
            .nodes
            .iter()
            .filter(|(_, n)| n.node.is_none())
            .map(|(id, _)| *id)
            .collect();
        if roll < 30 {
            if let Some(id) = self.pick(&crashed) {
                return self.restart(id);
            }
        }
        if roll < 45 && !self.cuts.is_empty() {
            self.cuts.clear();
            self.trace("heal");
            return Ok(());
        }
        // Fault actions are 15 in 1000 steps; scale to per-step rates.
        let crash_p = self.config.crash_rate / 0.015;
        let partition_p = self.config.partition_rate / 0.015;
        if self.chance(crash_p.min(1.0)) {
            // Prefer nodes with writes in flight: crashing them exercises the
            // durability contract (what was sent must survive).
            let writing: Vec<NodeId> = self
                .nodes
                .iter()
                .filter(|(_, n)| n.node.is_some() && !n.pending.is_empty())
                .map(|(id, _)| *id)
                .collect();
            // Leaders too: a leader crashing right after it appended entries
            // is how logs diverge in the hard cases (Raft paper, figure 8).
            let leaders = self.leaders();
            let victims = if !leaders.is_empty() && self.chance(0.4) {
                leaders
            } else if !writing.is_empty() && self.chance(0.6) {
                writing
            } else {
                self.live_ids()
            };
            if let Some(id) = self.pick(&victims) {
                self.crash(id);
            }
        } else if self.chance(partition_p.min(1.0)) {
            self.partition();
        }
        Ok(())
    }

    fn crash(&mut self, id: NodeId) {
        let sim_node = self.nodes.get_mut(&id).expect("known node");
        let node = sim_node.node.take().expect("live node");
        // Everything not acknowledged durable is lost.
        sim_node.pending.clear();
        sim_node.reads.clear();
        sim_node.forced_reads.clear();
        sim_node.snapshot_due = false;
        sim_node.disk = Some(node.into_store());
        self.stats.faults += 1;
        self.trace(("crash", id));
    }

    fn restart(&mut self, id: NodeId) -> StepResult {
        let sim_node = self.nodes.get_mut(&id).expect("known node");
        let store = sim_node.disk.take().expect("crashed node has a disk");
        sim_node.incarnation += 1;
        let machine = match store.snapshot() {
            Some((_, data)) => RegisterMachine::restore(data).ok_or_else(|| {
                Violation::new("snapshot", format!("node {id} has an undecodable snapshot"))
            })?,
            None => RegisterMachine::default(),
        };
        let mut config = self.config.node_config(id, sim_node.incarnation);
        config.applied = machine.applied_index();
        sim_node.machine = machine;
        let node = Node::new(config, store).map_err(|e| storage_violation(id, e))?;
        sim_node.node = Some(node);
        self.oracle.on_restart(id);
        self.trace(("restart", id));
        Ok(())
    }

    fn partition(&mut self) {
        let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
        self.stats.faults += 1;
        if self.chance(0.5) {
            // Symmetric: split into two sides.
            let side: BTreeSet<NodeId> = ids
                .iter()
                .copied()
                .filter(|_| self.rng.random_bool(0.5))
                .collect();
            for &a in &ids {
                for &b in &ids {
                    if side.contains(&a) != side.contains(&b) {
                        self.cuts.insert((a, b));
                    }
                }
            }
            self.trace(("partition", side.iter().sum::<u64>()));
        } else if let (Some(a), Some(b)) = (self.pick(&ids), self.pick(&ids)) {
            // One-way: a can no longer reach b.
            if a != b {
                self.cuts.insert((a, b));
                self.trace(("cut", a, b));
            }
        }
    }

    // ----- healing and liveness ---------------------------------------------------

    fn heal(&mut self) -> StepResult {
        self.faults_on = false;
        self.cuts.clear();
        let crashed: Vec<NodeId> = self
            .nodes
            .iter()
            .filter(|(_, n)| n.node.is_none())
            .map(|(id, _)| *id)
            .collect();
        for id in crashed {
            self.restart(id)?;
        }
        self.check()
    }

    /// Runs the healed cluster in lock step: every tick, every node ticks,
    /// every message is delivered, every batch is performed and persisted.
    fn run_round(&mut self) -> StepResult {
        self.now += 1;
        self.stats.ticks += 1;
        for id in self.live_ids() {
            self.stats.steps += 1;
            let node = self
                .nodes
                .get_mut(&id)
                .and_then(|n| n.node.as_mut())
                .expect("live");
            node.tick().map_err(|e| storage_violation(id, e))?;
        }
        for _ in 0..50 {
            let mut progress = false;
            let messages: Vec<InFlight> = std::mem::take(&mut self.in_flight);
            for flight in messages {
                if flight.deliver_at <= self.now {
                    progress = true;
                    self.stats.steps += 1;
                    self.deliver(flight.message)?;
                    self.check()?;
                } else {
                    self.in_flight.push(flight);
                }
            }
            for id in self.live_ids() {
                while self.nodes[&id].node.as_ref().is_some_and(|n| n.has_ready()) {
                    progress = true;
                    self.stats.steps += 1;
                    self.process_ready(id)?;
                    self.check()?;
                }
                while !self.nodes[&id].pending.is_empty() {
                    progress = true;
                    self.persist_next(id)?;
                    self.check()?;
                }
                if self.nodes[&id].snapshot_due {
                    self.build_snapshot_at(id)?;
                }
            }
            if !progress {
                break;
            }
        }
        Ok(())
    }

    fn build_snapshot_at(&mut self, id: NodeId) -> StepResult {
        // Reuse the random-step builder on exactly this node.
        let others: Vec<NodeId> = self
            .nodes
            .iter()
            .filter(|(other, n)| **other != id && n.snapshot_due)
            .map(|(o, _)| *o)
            .collect();
        for other in &others {
            self.nodes.get_mut(other).expect("known").snapshot_due = false;
        }
        self.build_snapshot_one()?;
        for other in others {
            self.nodes.get_mut(&other).expect("known").snapshot_due = true;
        }
        Ok(())
    }

    /// Liveness: once faults heal, a leader is elected and a proposal made
    /// after healing commits within a bounded number of ticks.
    fn check_liveness(&mut self) -> StepResult {
        let deadline = self.now + self.config.liveness_ticks;
        let mut proposal: Option<(NodeId, (u64, u64), u64)> = None;
        while self.now < deadline {
            self.run_round()?;
            if let Some((_, (term, index), _)) = proposal {
                match self.oracle.committed_at(index) {
                    Some((t, _)) if t == term => return Ok(()),
                    // Another entry won that position: the proposal was lost.
                    Some(_) => proposal = None,
                    None => {}
                }
            }
            if proposal.is_some_and(|(_, _, at)| self.now > at + 3 * 20) {
                // The proposer lost leadership before committing it.
                proposal = None;
            }
            if proposal.is_none() {
                let leaders = self.leaders();
                if let Some(&leader) = leaders.last() {
                    let before = self.next_value;
                    if self.propose_at(leader) {
                        let position = self
                            .proposals
                            .iter()
                            .find(|(_, v)| **v == before)
                            .map(|(p, _)| *p)
                            .expect("just proposed");
                        proposal = Some((leader, position, self.now));
                    }
                }
            }
        }
        let status: Vec<String> = self
            .nodes
            .values()
            .filter_map(|n| n.node.as_ref())
            .map(|n| {
                format!(
                    "{}:{:?}/t{}/c{}",
                    n.id(),
                    n.role(),
                    n.term(),
                    n.commit_index()
                )
            })
            .collect();
        Err(Violation::new(
            "liveness",
            format!(
                "no proposal committed within {} ticks after healing (proposal {proposal:?}); nodes {}",
                self.config.liveness_ticks,
                status.join(" ")
            ),
        ))
    }

    /// The simulated nodes that are up.
    pub fn nodes(&self) -> impl Iterator<Item = &Node<MemLog>> {
        self.nodes.values().filter_map(|n| n.node.as_ref())
    }
}

fn storage_violation(id: NodeId, e: Error) -> Violation {
    Violation::new("node error", format!("node {id}: {e}"))
}

/// Runs seeds `start..start + count` with `nodes` initial voters and the
/// default mix; returns the summed statistics or the first failure.
pub fn run_seeds(start: u64, count: u64, nodes: usize) -> Result<SimStats, SimFailure> {
    let mut total = SimStats::default();
    for seed in start..start + count {
        let stats = Sim::new(SimConfig::new(seed, nodes)).run()?;
        total.steps += stats.steps;
        total.ticks += stats.ticks;
        total.committed += stats.committed;
        total.proposed += stats.proposed;
        total.elections += stats.elections;
        total.faults += stats.faults;
        total.reads += stats.reads;
        total.membership_changes += stats.membership_changes;
        total.transfers += stats.transfers;
        total.snapshots += stats.snapshots;
        total.trace ^= stats.trace;
    }
    Ok(total)
}

impl std::fmt::Display for SimStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "steps {} ticks {} proposals {} committed {} elections {} faults {} reads {} membership changes {} transfers {} snapshots {}",
            self.steps,
            self.ticks,
            self.proposed,
            self.committed,
            self.elections,
            self.faults,
            self.reads,
            self.membership_changes,
            self.transfers,
            self.snapshots
        )
    }
}
