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
use crate::types::{Entry, Index, NodeId};
use crate::{Error, MemLog};

/// The shape of a simulated cluster: how many voters it starts with, and
/// whether it grows from one node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shape {
    /// `n` bootstrapped voters.
    Voters(usize),
    /// One bootstrapped voter; learners are added and promoted until the
    /// cluster has three voters (then it changes like any other).
    Grown,
}

impl Shape {
    /// The shape of the default test mix for `seed`: mostly 3 and 5 voters,
    /// and clusters of 1, 2 and 7 voters and grown clusters.
    pub fn mixed(seed: u64) -> Self {
        match seed % 10 {
            0 => Shape::Voters(1),
            1 => Shape::Grown,
            2 => Shape::Voters(2),
            3 => Shape::Voters(7),
            4..=6 => Shape::Voters(3),
            _ => Shape::Voters(5),
        }
    }

    /// The bootstrapped voters.
    pub fn voters(self) -> usize {
        match self {
            Shape::Voters(n) => n.max(1),
            Shape::Grown => 1,
        }
    }
}

impl std::fmt::Display for Shape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Shape::Voters(n) => write!(f, "{n}"),
            Shape::Grown => write!(f, "grown"),
        }
    }
}

/// What a simulation does. [`SimConfig::new`] gives the default mix: every
/// fault and every feature on.
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// The seed of everything.
    pub seed: u64,
    /// What `cargo xtask sim --nodes` calls this mix (for the replay
    /// command of a failure).
    pub label: String,
    /// The cluster's shape.
    pub shape: Shape,
    /// Initial voters.
    pub nodes: usize,
    /// Extra node ids that membership changes may add.
    pub spare_nodes: usize,
    /// Membership changes add learners and promote them while the cluster
    /// has fewer voters than this.
    pub grow_to: usize,
    /// The most voters promotions and direct additions may reach.
    pub max_voters: usize,
    /// Steps of the fault phase.
    pub steps: usize,
    /// Probability that a sent message is lost.
    pub drop_rate: f64,
    /// Probability that a sent message is delivered twice.
    pub duplicate_rate: f64,
    /// Probability that a peer's answer (to AppendEntries, a snapshot chunk
    /// or a heartbeat) is followed by a forged copy with out-of-range
    /// indices or rounds, or a stale term.
    pub bad_answer_rate: f64,
    /// Messages are delayed by up to this many ticks (reordering happens
    /// anyway: any deliverable message may go next).
    pub max_delay: u64,
    /// Per-step probability of a crash of a random node.
    pub crash_rate: f64,
    /// Per-step probability of a new partition.
    pub partition_rate: f64,
    /// Per-step probability that a node is paused (no ticks, no messages,
    /// no output) for up to three election timeouts.
    pub pause_rate: f64,
    /// Whether a paused node, on resuming, gets the ticks it missed before
    /// anything else (a host deriving ticks from a monotonic clock). Without
    /// it, a pause is clock drift beyond any bound.
    pub pause_catch_up: bool,
    /// The spread of the nodes' tick rates: a node's tick period is drawn
    /// from `[1, 1 / (1 - tick_drift)]` nominal ticks, so any node counts at
    /// least `1 - tick_drift` times the ticks of another.
    pub tick_drift: f64,
    /// The drift bound the nodes' leases assume
    /// ([`Config::max_clock_drift`]); at least `tick_drift` unless a test
    /// shows what happens beyond the bound.
    pub lease_drift_bound: f64,
    /// Membership changes, leadership transfers, reads and snapshots.
    pub membership_changes: bool,
    /// Removed ids are offered for re-adding (the leader must refuse:
    /// ids are never reused, see [`crate::Membership::removed`]).
    pub readd_removed: bool,
    /// Probability that a newly elected leader is asked for a membership
    /// change at once.
    pub change_after_election: f64,
    /// Per-step probability that clients go quiet for a while (no
    /// proposals): everything commits, and the next leader is elected in a
    /// quiet cluster, where a change proposed at once used to be accepted
    /// before the leader's first commit.
    pub quiet_rate: f64,
    /// Partitions last at least this many ticks before a random heal
    /// (drawn per seed: flapping networks and lasting splits both).
    pub min_partition_ticks: u64,
    /// Probability that clients go quiet after a membership change is
    /// accepted (so that the next leader may find everything committed).
    pub quiet_after_change: f64,
    /// Probability that a change proposed the moment a leader was elected
    /// is followed by a split that leaves the leader a bare majority of its
    /// configuration.
    pub split_after_early_change: f64,
    /// Probability that a leader, right after a heartbeat answer (which may
    /// extend its lease), is cut off from every other node (with lease reads
    /// on): the moment a lease must end on time.
    pub cut_after_round: f64,
    /// Probability that a leader, right after accepting a membership change,
    /// is cut off from all but a minority of the voters (so the change may
    /// linger uncommitted on a minority while a new leader is elected).
    pub isolate_after_change: f64,
    /// Leadership transfers.
    pub transfers: bool,
    /// ReadIndex (and lease) reads.
    pub reads: bool,
    /// Lease reads among the reads (needs `reads`).
    pub lease_reads: bool,
    /// Snapshots and compaction (small threshold, tiny chunks).
    pub snapshots: bool,
    /// Snapshot chunk size in bytes (drawn per seed; a snapshot is a few
    /// hundred bytes, so small chunks mean many chunks in flight).
    pub snapshot_chunk: u64,
    /// Committed entries are applied in a later step than the one they come
    /// out in (a state machine behind the log).
    pub deferred_apply: bool,
    /// The state machine is durable: it survives crashes (a node restarts
    /// with `Config::applied` set to what it applied).
    pub durable_machine: bool,
    /// The other host calls: `campaign`, `report_unreachable`, `status`.
    pub host_calls: bool,
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
    /// [`Config::election_ticks`] of every node (10 unless the mix varies it).
    pub election_ticks: u64,
    /// [`Config::heartbeat_ticks`] of every node (2 unless the mix varies it).
    pub heartbeat_ticks: u64,
    /// The hosts pipeline batches as far as the [`Ready`] contract allows:
    /// a batch whose write is empty sends its persisted messages at once,
    /// ahead of earlier batches' writes still in flight. (Otherwise such a
    /// batch waits in the queue behind them, as raft-kv's writer does.)
    pub pipelined_host: bool,
    /// Forged messages include messages of term `u64::MAX`, which no term
    /// can follow (the node must drop them as malformed).
    pub forge_max_term: bool,
}

impl SimConfig {
    /// Everything on, for `nodes` initial voters.
    pub fn new(seed: u64, nodes: usize) -> Self {
        Self::with_shape(seed, Shape::Voters(nodes))
    }

    /// A fault mix aimed at leases: three voters whose clocks drift as far
    /// as the bound allows, leaders cut off right after a heartbeat answer
    /// and kept apart for a while, and clients reading from the old leader
    /// until its lease runs out. (Membership changes and transfers are off:
    /// they end leases early.)
    pub fn lease_focus(seed: u64) -> Self {
        let mut config = Self::with_shape(seed, Shape::Voters(3));
        config.label = "lease".into();
        config.check_quorum = true;
        config.lease_reads = true;
        config.tick_drift = config.lease_drift_bound;
        config.membership_changes = false;
        config.transfers = false;
        config.cut_after_round = 0.02;
        config.crash_rate = 0.001;
        config.pause_rate = 0.0005;
        config
    }

    /// A fault mix aimed at membership changes: four voters (so that a
    /// change can move the majority), frequent changes, a change proposed
    /// the moment a leader is elected, and leaders cut off with a minority
    /// right after a change.
    pub fn membership_focus(seed: u64) -> Self {
        let mut config = Self::with_shape(seed, Shape::Voters(4));
        config.label = "membership".into();
        config.change_after_election = 0.9;
        config.isolate_after_change = 0.6;
        config.quiet_rate = 0.05;
        config.quiet_after_change = 0.8;
        config.min_partition_ticks = 20;
        config.split_after_early_change = 1.0;
        config.max_voters = 5;
        config.transfers = false;
        config
    }

    /// The widest configuration space, for the shape of the default mix
    /// ([`Shape::mixed`]): PreVote and CheckQuorum each on or off (never
    /// both off), election timeouts of 4, 5, 6 or 10 ticks with heartbeats every
    /// 1, 2 or `election − 1` ticks, hosts that pipeline batches
    /// ([`SimConfig::pipelined_host`]) and forged messages of term
    /// `u64::MAX`. `cargo xtask sim --nodes varied`.
    pub fn varied(seed: u64) -> Self {
        let mut config = Self::with_shape(seed, Shape::mixed(seed));
        config.label = "varied".into();
        // A stream of its own, so that the draws above stay as they are.
        let mut params = ChaCha8Rng::seed_from_u64(seed ^ 0x0BAD_5EED_0F0F_1234);
        // Each off in a third of the seeds, never both: with neither, a
        // node removed by a change not yet committed (so nobody drops its
        // messages yet) raises every term faster than a leader can commit
        // the change, and liveness cannot be promised (Raft thesis §4.2.3;
        // seed 13,176 of this mix showed it with both off).
        (config.pre_vote, config.check_quorum) = match params.random_range(0..6u8) {
            0..=1 => (false, true),
            2..=3 => (true, false),
            _ => (true, true),
        };
        config.lease_reads = config.check_quorum;
        config.election_ticks = [4, 5, 6, 10][params.random_range(0..4)];
        config.heartbeat_ticks = [1, 2, config.election_ticks - 1][params.random_range(0..3)];
        config.pipelined_host = params.random_bool(0.7);
        config.forge_max_term = true;
        config
    }

    /// Everything on, for a cluster of the given shape.
    pub fn with_shape(seed: u64, shape: Shape) -> Self {
        // Replication parameters vary by seed, from a stream of their own so
        // that they do not perturb the main schedule.
        let mut params = ChaCha8Rng::seed_from_u64(seed ^ 0x005E_ED0F_C0FF_EE00);
        let max_append_entries = [1, 2, 8, 64][params.random_range(0..4)];
        let max_inflight = [1, 4, 16][params.random_range(0..3)];
        let max_append_bytes = [64, 512, 1 << 16][params.random_range(0..3)];
        // PreVote and CheckQuorum are each off now and then, never both:
        // with neither, nothing keeps a removed server that missed its
        // removal from disrupting the cluster forever (Raft thesis §4.2.3),
        // and liveness after healing cannot be promised.
        let (pre_vote, check_quorum) = match params.random_range(0..10u8) {
            0..=1 => (false, true),
            2..=3 => (true, false),
            _ => (true, true),
        };
        let tick_drift = [0.0, 0.05, 0.2][params.random_range(0..3)];
        let deferred_apply = params.random_bool(0.5);
        let durable_machine = params.random_bool(0.3);
        // Fault intensity varies too: calm runs get further (a grown
        // cluster grows, logs get long), stormy ones break more.
        let storm = [0.25, 0.5, 1.0][params.random_range(0..3)];
        let snapshot_chunk = [64, 128, 1 << 12][params.random_range(0..3)];
        let nodes = shape.voters();
        let (spare_nodes, grow_to) = match shape {
            Shape::Grown => (4, 3),
            Shape::Voters(n) if n < 3 => (2, 0),
            Shape::Voters(_) => (2, 0),
        };
        Self {
            label: shape.to_string(),
            pre_vote,
            check_quorum,
            max_append_entries,
            max_inflight,
            max_append_bytes,
            seed,
            shape,
            nodes,
            spare_nodes,
            grow_to,
            max_voters: (nodes + 2).clamp(3, 7),
            steps: 8000,
            drop_rate: 0.05,
            duplicate_rate: 0.02,
            bad_answer_rate: 0.002,
            max_delay: 2,
            crash_rate: 0.004 * storm,
            partition_rate: 0.004 * storm,
            pause_rate: 0.0005 * storm,
            pause_catch_up: true,
            tick_drift,
            lease_drift_bound: 0.2,
            membership_changes: true,
            readd_removed: true,
            change_after_election: 0.3,
            isolate_after_change: 0.3,
            cut_after_round: 0.01 * storm,
            quiet_rate: 0.001,
            quiet_after_change: 0.1,
            min_partition_ticks: [0, 0, 15][params.random_range(0..3)],
            split_after_early_change: 0.5,
            transfers: true,
            reads: true,
            lease_reads: check_quorum,
            snapshots: true,
            snapshot_chunk,
            deferred_apply,
            durable_machine,
            host_calls: true,
            liveness_ticks: 1000,
            election_ticks: 10,
            heartbeat_ticks: 2,
            pipelined_host: false,
            forge_max_term: false,
        }
    }

    /// The node configuration the simulator gives node `id`.
    pub fn node_config(&self, id: NodeId, incarnation: u64) -> Config {
        let mut config = Config::new(id);
        config.election_ticks = self.election_ticks;
        config.heartbeat_ticks = self.heartbeat_ticks;
        config.lease_reads = self.lease_reads && self.check_quorum;
        config.max_clock_drift = self.lease_drift_bound;
        config.pre_vote = self.pre_vote;
        config.check_quorum = self.check_quorum;
        config.max_append_entries = self.max_append_entries;
        config.max_append_bytes = self.max_append_bytes;
        config.max_inflight = self.max_inflight;
        config.seed = self.seed ^ (id << 32) ^ incarnation.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        config.snapshot = if self.snapshots {
            SnapshotPolicy {
                threshold: 24,
                log_share_percent: 50,
                retention: 6,
                chunk_size: self.snapshot_chunk,
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
    /// Faults injected: lost, duplicated and forged messages; crashes;
    /// partitions; pauses.
    pub faults: u64,
    /// Reads served and checked.
    pub reads: u64,
    /// Of those, reads served from a leader's lease.
    pub lease_reads: u64,
    /// Membership changes accepted.
    pub membership_changes: u64,
    /// Of those, changes proposed the moment a leader was elected.
    pub changes_after_election: u64,
    /// Attempts to re-add a removed id (each refused, as it must be).
    pub readds: u64,
    /// Leadership transfers started.
    pub transfers: u64,
    /// Snapshots built and installed.
    pub snapshots: u64,
    /// Forged out-of-range or stale answers delivered.
    pub bad_answers: u64,
    /// Nodes paused and resumed.
    pub pauses: u64,
    /// Pre-votes checked against the vote the node would cast.
    pub pre_votes_checked: u64,
    /// Runs whose committed configuration had three or more voters at some
    /// point (for a grown cluster: it grew).
    pub reached_three_voters: u64,
    /// A digest of the whole event trace: same seed, same trace.
    pub trace: u64,
}

impl SimStats {
    /// Adds another run's figures (the trace digests are combined).
    pub fn add(&mut self, other: &SimStats) {
        self.steps += other.steps;
        self.ticks += other.ticks;
        self.committed += other.committed;
        self.proposed += other.proposed;
        self.elections += other.elections;
        self.faults += other.faults;
        self.reads += other.reads;
        self.lease_reads += other.lease_reads;
        self.membership_changes += other.membership_changes;
        self.changes_after_election += other.changes_after_election;
        self.readds += other.readds;
        self.transfers += other.transfers;
        self.snapshots += other.snapshots;
        self.bad_answers += other.bad_answers;
        self.pauses += other.pauses;
        self.pre_votes_checked += other.pre_votes_checked;
        self.reached_three_voters += other.reached_three_voters;
        self.trace ^= other.trace;
    }
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
    /// The mix's label, for the replay command.
    pub label: String,
}

impl std::fmt::Display for SimFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "seed {} failed at step {}: {}\n  replay: cargo xtask sim --seeds 1 --start {} --nodes {} --events",
            self.seed, self.step, self.violation, self.seed, self.label
        )
    }
}

/// Clock units per nominal tick: node tick periods are drawn in these units.
const TICK: u64 = 1000;

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
    /// Committed entries handed out but not yet applied.
    to_apply: VecDeque<Entry>,
    reads: BTreeMap<u64, PendingRead>,
    /// Read answers decided by an interceptor: (read id, index).
    forced_reads: Vec<(u64, Index)>,
    incarnation: u64,
    /// The node's tick period in clock units, and when it ticks next.
    period: u64,
    next_tick: u64,
    /// While paused: the clock at which it resumes.
    paused_until: Option<u64>,
    snapshot_due: bool,
}

impl SimNode {
    fn running(&self) -> bool {
        self.node.is_some() && self.paused_until.is_none()
    }
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
    /// The clock, in units of 1/TICK of a nominal tick.
    clock: u64,
    oracle: Oracle,
    stats: SimStats,
    trace: std::collections::hash_map::DefaultHasher,
    interceptor: Option<Box<dyn Interceptor>>,
    /// Proposals in flight: log position -> value.
    proposals: BTreeMap<(u64, u64), u64>,
    next_value: u64,
    next_read: u64,
    /// Ids never yet added.
    spares: Vec<NodeId>,
    faults_on: bool,
    /// (term, leader) pairs already seen, and a leader scheduled to crash
    /// soon after its election: (node, term, steps left).
    seen_leaders: BTreeSet<(u64, NodeId)>,
    doomed: Option<(NodeId, u64, u32)>,
    print_events: bool,
    /// Steps left in a quiet period (no client proposals).
    quiet_steps: u32,
    /// When the current partition was made.
    cuts_since: u64,
}

type StepResult = Result<(), Violation>;

impl Sim {
    /// A simulator for `config`.
    pub fn new(config: SimConfig) -> Self {
        let voters: Vec<NodeId> = (1..=config.nodes as NodeId).collect();
        let membership =
            Membership::with_voters(voters.iter().map(|&id| (id, format!("sim-{id}"))));
        let mut rng = ChaCha8Rng::seed_from_u64(config.seed);
        let mut nodes = BTreeMap::new();
        for id in 1..=(config.nodes + config.spare_nodes) as NodeId {
            let store = if voters.contains(&id) {
                MemLog::bootstrap(membership.clone())
            } else {
                MemLog::new()
            };
            let node = Node::new(config.node_config(id, 0), store).expect("valid simulator config");
            let period = draw_period(&mut rng, config.tick_drift);
            let next_tick = rng.random_range(0..period);
            nodes.insert(
                id,
                SimNode {
                    node: Some(node),
                    disk: None,
                    pending: VecDeque::new(),
                    machine: RegisterMachine::default(),
                    to_apply: VecDeque::new(),
                    reads: BTreeMap::new(),
                    forced_reads: Vec::new(),
                    incarnation: 0,
                    period,
                    next_tick,
                    paused_until: None,
                    snapshot_due: false,
                },
            );
        }
        let spares = ((config.nodes + 1)..=(config.nodes + config.spare_nodes))
            .map(|i| i as NodeId)
            .collect();
        Sim {
            rng,
            config,
            nodes,
            in_flight: Vec::new(),
            cuts: BTreeSet::new(),
            clock: 0,
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
            print_events: false,
            quiet_steps: 0,
            cuts_since: 0,
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
        self.stats.reached_three_voters = u64::from(self.oracle.peak_voters >= 3);
        self.stats.trace = self.trace.finish();
        match result {
            Ok(()) => Ok(self.stats),
            Err(violation) => Err(SimFailure {
                seed: self.config.seed,
                step: self.stats.steps,
                violation,
                label: self.config.label.clone(),
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

    fn trace(&mut self, event: impl Hash + std::fmt::Debug) {
        if self.print_events {
            eprintln!(
                "{:>6} t{:>5} {event:?}",
                self.stats.steps,
                self.clock / TICK
            );
        }
        event.hash(&mut self.trace);
    }

    /// Prints every event of the run to stderr (for replaying a failing
    /// seed by hand).
    pub fn print_events(mut self) -> Self {
        eprintln!("{:?}", self.config);
        self.print_events = true;
        self
    }

    /// Nodes that are up and not paused.
    fn live_ids(&self) -> Vec<NodeId> {
        self.ids_where(|n| n.running())
    }

    /// The ids of the nodes for which `f` holds.
    fn ids_where(&self, f: impl Fn(&SimNode) -> bool) -> Vec<NodeId> {
        self.nodes
            .iter()
            .filter(|(_, n)| f(n))
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

    fn node_mut(&mut self, id: NodeId) -> &mut Node<MemLog> {
        self.nodes
            .get_mut(&id)
            .and_then(|n| n.node.as_mut())
            .expect("live node")
    }

    /// One step of the fault phase: one randomly chosen action.
    fn step(&mut self) -> StepResult {
        self.stats.steps += 1;
        self.resume_due()?;
        if self.quiet_steps > 0 {
            self.quiet_steps -= 1;
        } else if self.chance(self.config.quiet_rate) {
            self.quiet_steps = self.rng.random_range(100..800);
            self.trace(("quiet", self.quiet_steps));
        }
        let roll = self.rng.random_range(0..1000u32);
        match roll {
            0..150 => self.tick_one()?,
            150..480 => self.deliver_one()?,
            480..690 => self.ready_one()?,
            690..840 => self.persist_one()?,
            840..870 => self.apply_one()?,
            870..915 => {
                // A cluster that is still growing changes often.
                if self.oracle.committed_voters() < self.config.grow_to && self.chance(0.2) {
                    self.change_membership()?
                } else {
                    self.propose_one()?
                }
            }
            915..925 => {
                if self.config.membership_changes {
                    self.change_membership()?
                }
            }
            925..950 => {
                if self.config.reads {
                    self.read_one()?
                }
            }
            950..960 => {
                if self.config.snapshots {
                    self.build_snapshot_one()?
                }
            }
            960..968 => {
                if self.config.membership_changes {
                    self.change_membership()?
                }
            }
            968..971 => {
                // A transfer holds back proposals until it completes or
                // times out: now and then, not all the time.
                if self.config.transfers && self.chance(0.3) {
                    self.transfer_one()?
                }
            }
            971..978 => {
                if self.config.host_calls {
                    self.host_call()?
                }
            }
            _ => self.inject_fault()?,
        }
        self.on_new_leaders()?;
        self.check()
    }

    /// New leaders: now and then one crashes shortly after its election,
    /// with entries of earlier terms still on their way (how logs diverge
    /// in the hard cases, Raft paper figure 8), and now and then one is asked
    /// for a membership change at once (Raft thesis §4.1: it must wait for
    /// the first commit of its term).
    fn on_new_leaders(&mut self) -> StepResult {
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
            if !self.seen_leaders.insert((term, id)) {
                continue;
            }
            self.trace(("leader", id, term));
            if self.doomed.is_none() && self.chance(0.15) {
                let left = self.rng.random_range(5..80);
                self.doomed = Some((id, term, left));
            }
            if self.config.membership_changes
                && self.chance(self.config.change_after_election)
                && self.change_membership_at(id)?
            {
                self.stats.changes_after_election += 1;
                if self.chance(self.config.split_after_early_change) {
                    self.partition_minimal_quorum(id);
                }
            }
        }
        Ok(())
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

    /// Ticks one node whose tick is due; when none is, the clock moves on to
    /// the next due tick. Each node ticks at its own rate (see
    /// [`SimConfig::tick_drift`]), at moments interleaved at random with
    /// everything else.
    fn tick_one(&mut self) -> StepResult {
        let clock = self.clock;
        let due: Vec<NodeId> = self.ids_where(|n| n.running() && n.next_tick <= clock);
        match self.pick(&due) {
            Some(id) => {
                // Clients of a leader read right up to its next tick: the
                // last moment of each tick is where a lease that is too long
                // shows.
                let leads = self.nodes[&id].node.as_ref().is_some_and(|n| n.is_leader());
                if leads && self.config.lease_reads && self.chance(0.3) {
                    self.read_with(id, ReadPolicy::Lease)?;
                }
                self.tick_node(id)
            }
            None => {
                let next = self
                    .nodes
                    .values()
                    .filter(|n| n.running())
                    .map(|n| n.next_tick)
                    .min()
                    .unwrap_or(self.clock + TICK);
                self.advance_clock(next.max(self.clock + 1));
                Ok(())
            }
        }
    }

    fn advance_clock(&mut self, to: u64) {
        if to > self.clock {
            self.stats.ticks += to / TICK - self.clock / TICK;
            self.clock = to;
        }
    }

    fn tick_node(&mut self, id: NodeId) -> StepResult {
        let sim_node = self.nodes.get_mut(&id).expect("known node");
        sim_node.next_tick += sim_node.period;
        let node = sim_node.node.as_mut().expect("live");
        node.tick().map_err(|e| storage_violation(id, e))?;
        self.trace(("tick", id));
        Ok(())
    }

    /// Resumes paused nodes whose pause is over. With
    /// [`SimConfig::pause_catch_up`] a resumed node first gets every tick it
    /// missed, before any message or client request; its clients' reads,
    /// queued during the pause, then arrive.
    fn resume_due(&mut self) -> StepResult {
        let clock = self.clock;
        let due: Vec<NodeId> =
            self.ids_where(|n| n.paused_until.is_some_and(|until| until <= clock));
        for id in due {
            self.resume(id)?;
            if self.config.reads && self.nodes[&id].running() {
                for _ in 0..self.rng.random_range(0..3) {
                    self.read_at(id)?;
                }
            }
        }
        Ok(())
    }

    fn resume(&mut self, id: NodeId) -> StepResult {
        let clock = self.clock;
        let catch_up = self.config.pause_catch_up;
        let sim_node = self.nodes.get_mut(&id).expect("known node");
        if sim_node.paused_until.take().is_none() {
            return Ok(());
        }
        if catch_up {
            while self.nodes[&id].next_tick <= clock {
                self.tick_node(id)?;
            }
        } else {
            let sim_node = self.nodes.get_mut(&id).expect("known node");
            sim_node.next_tick = clock + sim_node.period;
        }
        self.trace(("resume", id));
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
            self.enqueue(message.clone());
        }
        if self.faults_on && self.chance(self.config.bad_answer_rate) {
            if let Some(forged) = self.forge_answer(&message) {
                self.stats.faults += 1;
                self.stats.bad_answers += 1;
                self.enqueue(forged);
            }
        }
    }

    fn enqueue(&mut self, message: Message) {
        let delay = if self.config.max_delay > 0 {
            self.rng.random_range(0..=self.config.max_delay * TICK)
        } else {
            0
        };
        self.in_flight.push(InFlight {
            deliver_at: self.clock + delay,
            message,
        });
    }

    /// A copy of a peer's answer that no genuine peer could send: indices
    /// beyond any log in the simulation (up to `u64::MAX`), heartbeat rounds
    /// never started, or an older term.
    fn forge_answer(&mut self, genuine: &Message) -> Option<Message> {
        use crate::message::{AppendResponse, HeartbeatResponse, MessageBody, SnapshotResponse};
        const FAR: u64 = 1 << 40;
        let huge = if self.chance(0.5) {
            u64::MAX
        } else {
            FAR + self.rng.random_range(0..FAR)
        };
        let mut forged = genuine.clone();
        if self.config.forge_max_term && self.chance(0.1) {
            // A term no term can follow: malformed, dropped and counted.
            forged.term = u64::MAX;
            return Some(forged);
        }
        if self.chance(0.2) {
            // A stale term: dropped before its contents matter.
            forged.term = forged.term.saturating_sub(self.rng.random_range(1..3));
            return Some(forged);
        }
        forged.body = match &genuine.body {
            MessageBody::AppendResponse(_) => match self.rng.random_range(0..3u8) {
                0 => MessageBody::AppendResponse(AppendResponse::Success { match_index: huge }),
                1 => MessageBody::AppendResponse(AppendResponse::Rejected {
                    rejected: huge,
                    hint: crate::types::LogId::new(huge, huge),
                }),
                _ => MessageBody::AppendResponse(AppendResponse::Rejected {
                    rejected: huge,
                    hint: crate::types::LogId::new(0, 1),
                }),
            },
            MessageBody::SnapshotResponse(r) => MessageBody::SnapshotResponse(SnapshotResponse {
                snapshot_index: huge,
                next_offset: huge,
                rejected: r.rejected,
                installed: !r.installed,
            }),
            MessageBody::HeartbeatResponse(_) => {
                MessageBody::HeartbeatResponse(HeartbeatResponse { round: huge })
            }
            _ => return None,
        };
        Some(forged)
    }

    fn deliver_one(&mut self) -> StepResult {
        let clock = self.clock;
        let deliverable: Vec<usize> = (0..self.in_flight.len())
            .filter(|&i| {
                let f = &self.in_flight[i];
                f.deliver_at <= clock
                    && self
                        .nodes
                        .get(&f.message.to)
                        .is_none_or(|n| n.paused_until.is_none())
            })
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
        if self.print_events {
            eprintln!(
                "{:>6} t{:>5} deliver {} -> {} term {} {:?}",
                self.stats.steps,
                self.clock / TICK,
                message.from,
                to,
                message.term,
                message.body
            );
        }
        if let crate::message::MessageBody::PreVote(_) = &message.body {
            check_pre_vote_agrees(node, &message)?;
            self.stats.pre_votes_checked += 1;
        }
        if let Some(interceptor) = self.interceptor.as_mut() {
            interceptor.on_step(node, &message);
        }
        let acknowledges_round = node.is_leader()
            && matches!(
                message.body,
                crate::message::MessageBody::HeartbeatResponse(_)
            );
        // The lease's promise, checked where it is kept: a node that heard
        // from a leader within an election timeout (CheckQuorum) grants no
        // vote, in any term, unless leadership is being handed over.
        let bound_voter = match &message.body {
            crate::message::MessageBody::Vote(req) if !req.transfer && self.config.check_quorum => {
                let status = node.status();
                let election_ticks = node.config().election_ticks;
                (status.role == crate::node::Role::Leader
                    || status.leader_contact_ticks < election_ticks)
                    .then_some((message.from, status.vote, status.term))
            }
            _ => None,
        };
        node.step(message).map_err(|e| storage_violation(to, e))?;
        if let Some((candidate, vote_before, term_before)) = bound_voter {
            let hard = node.hard_state();
            let newly = hard.vote == Some(candidate)
                && (vote_before != Some(candidate) || hard.term != term_before);
            if newly {
                return Err(Violation::new(
                    "lease: no vote while a leader is heard",
                    format!(
                        "node {to} granted its vote to {candidate} in term {} within an election timeout of hearing from a leader",
                        hard.term
                    ),
                ));
            }
        }
        if acknowledges_round
            && self.faults_on
            && self.config.lease_reads
            && self.chance(self.config.cut_after_round)
        {
            // The leader has just (perhaps) extended its lease: cut it off
            // from everyone now, with clocks at their worst, and its clients
            // keep reading from it until the lease runs out.
            let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
            for other in ids {
                if other != to {
                    self.cuts.insert((to, other));
                    self.cuts.insert((other, to));
                }
            }
            self.skew_clocks();
            self.stats.faults += 1;
            self.cuts_since = self.clock;
            self.trace(("cut after round", to));
        }
        Ok(())
    }

    // ----- output batches and durability ---------------------------------------

    fn ready_one(&mut self) -> StepResult {
        let ready_ids: Vec<NodeId> =
            self.ids_where(|n| n.running() && n.node.as_ref().is_some_and(|node| node.has_ready()));
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
        // A leader's own new configurations, checked once the batch is out.
        let new_configs: Vec<Entry> = if node.is_leader() {
            ready
                .write
                .entries
                .iter()
                .filter(|e| {
                    e.term == node.term() && matches!(e.payload, crate::EntryPayload::Membership(_))
                })
                .cloned()
                .collect()
        } else {
            Vec::new()
        };
        // Committed entries are durable already: apply them now, or queue
        // them for a later step.
        sim_node
            .to_apply
            .extend(std::mem::take(&mut ready.committed_entries));
        if !self.config.deferred_apply || !self.faults_on {
            self.apply_queued(id, usize::MAX)?;
        }
        let sim_node = self.nodes.get_mut(&id).expect("known node");
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
        let mut messages = std::mem::take(&mut ready.messages);
        let number = ready.number;
        if self.config.pipelined_host && ready.write.is_empty() {
            // Its own (empty) write is durable: the contract lets its
            // persisted messages leave now, whatever is still in flight.
            messages.append(&mut ready.persisted_messages);
        }
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
        for config in new_configs {
            self.check_concurrent_configs(id, &config)?;
        }
        Ok(())
    }

    /// Membership changes never let two disjoint majorities exist (Raft
    /// thesis §4.1): when a leader appends a configuration that could still
    /// commit, every other configuration in any log that could still commit
    /// is at most one voter away from it. (A configuration could still
    /// commit if it is not committed and its log agrees with everything
    /// committed so far.) Two such configurations two changes apart are how
    /// a change proposed before a new leader's first commit goes wrong,
    /// long before both commit.
    fn check_concurrent_configs(&self, leader: NodeId, config: &Entry) -> StepResult {
        use crate::LogRead;
        let crate::EntryPayload::Membership(proposed) = &config.payload else {
            return Ok(());
        };
        let max_commit = self.oracle.max_commit;
        let committed_term = self.oracle.committed_at(max_commit).map(|(t, _)| t);
        // A log view: live nodes through the node (unstable entries too),
        // crashed ones through their disk.
        let term_in = |id: NodeId, index: Index| -> Option<u64> {
            let n = &self.nodes[&id];
            match (&n.node, &n.disk) {
                (Some(node), _) => node.term_at(index).ok().flatten(),
                (None, Some(disk)) => disk.term(index).ok(),
                _ => None,
            }
        };
        let viable = |id: NodeId| -> bool {
            max_commit == 0 || committed_term.is_none() || term_in(id, max_commit) == committed_term
        };
        if !viable(leader) {
            return Ok(());
        }
        for (&id, n) in &self.nodes {
            if !viable(id) {
                continue;
            }
            let entries = match (&n.node, &n.disk) {
                (Some(node), _) => {
                    let last = node.last_log_id().map_or(0, |l| l.index);
                    node.entries(max_commit + 1, last + 1, u64::MAX)
                        .unwrap_or_default()
                }
                (None, Some(disk)) => {
                    let last = disk.last_index().unwrap_or(0);
                    disk.entries(max_commit + 1, last + 1, u64::MAX)
                        .unwrap_or_default()
                }
                _ => Vec::new(),
            };
            for other in entries {
                let crate::EntryPayload::Membership(m) = &other.payload else {
                    continue;
                };
                if other.log_id() == config.log_id() {
                    continue;
                }
                let apart = m.voters().symmetric_difference(proposed.voters()).count();
                if apart > 1 {
                    return Err(Violation::new(
                        "no two disjoint majorities",
                        format!(
                            "leader {leader} appended configuration {:?} (voters {:?}) while node {id} holds configuration {:?} (voters {:?}), {apart} voters apart, and neither is committed or ruled out",
                            config.log_id(),
                            proposed.voters(),
                            other.log_id(),
                            m.voters()
                        ),
                    ));
                }
            }
        }
        Ok(())
    }

    /// A node whose state machine lags applies some of what it was handed.
    fn apply_one(&mut self) -> StepResult {
        let ids: Vec<NodeId> = self.ids_where(|n| n.running() && !n.to_apply.is_empty());
        let Some(id) = self.pick(&ids) else {
            return Ok(());
        };
        let queued = self.nodes[&id].to_apply.len();
        let count = self.rng.random_range(1..=queued);
        self.apply_queued(id, count)
    }

    /// Applies up to `count` queued committed entries of `id` and tells the
    /// node.
    fn apply_queued(&mut self, id: NodeId, count: usize) -> StepResult {
        let sim_node = self.nodes.get_mut(&id).expect("known node");
        let mut applied_to = None;
        for _ in 0..count {
            let Some(entry) = sim_node.to_apply.pop_front() else {
                break;
            };
            if entry.index <= sim_node.machine.applied_index() {
                // Covered by a snapshot installed meanwhile.
                continue;
            }
            self.oracle.on_applied(id, &entry)?;
            sim_node.machine.apply(&entry);
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
            let node = sim_node.node.as_mut().expect("live node");
            node.on_applied(index)
                .map_err(|e| storage_violation(id, e))?;
            self.trace(("apply", id, index));
        }
        Ok(())
    }

    /// The oldest pending write of a random node becomes durable.
    fn persist_one(&mut self) -> StepResult {
        let ids: Vec<NodeId> = self.ids_where(|n| n.running() && !n.pending.is_empty());
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
            sim_node.to_apply.clear();
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
        let ids: Vec<NodeId> = self.ids_where(|n| n.running() && n.snapshot_due);
        let Some(id) = self.pick(&ids) else {
            return Ok(());
        };
        self.build_snapshot(id)
    }

    fn build_snapshot(&mut self, id: NodeId) -> StepResult {
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
        self.ids_where(|n| n.running() && n.node.as_ref().is_some_and(|node| node.is_leader()))
    }

    fn propose_one(&mut self) -> StepResult {
        if self.quiet_steps > 0 {
            return Ok(());
        }
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
        let node = self.node_mut(id);
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
        // Clients mostly find the leader; sometimes they ask whoever.
        let leaders = self.leaders();
        let candidates = if !leaders.is_empty() && self.chance(0.6) {
            leaders
        } else {
            self.live_ids()
        };
        let Some(id) = self.pick(&candidates) else {
            return Ok(());
        };
        self.read_at(id)
    }

    /// A client read at `id`: a lease read now and then (when enabled),
    /// otherwise ReadIndex. A lease read served at once is judged on the spot:
    /// no leader of a later term may exist (the lease's promise), besides
    /// the linearizability check every read gets.
    fn read_at(&mut self, id: NodeId) -> StepResult {
        let policy = if self.config.lease_reads && self.chance(0.5) {
            ReadPolicy::Lease
        } else {
            ReadPolicy::ReadIndex
        };
        self.read_with(id, policy)
    }

    fn read_with(&mut self, id: NodeId, policy: ReadPolicy) -> StepResult {
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
        let lease_reads_before = node.counters().lease_reads;
        if node.read_index(read_id, policy).is_ok() {
            sim_node.reads.insert(
                read_id,
                PendingRead {
                    committed_at_invocation,
                },
            );
            if node.counters().lease_reads > lease_reads_before {
                self.stats.lease_reads += 1;
                self.oracle.check_lease_read(id, node.term())?;
                self.check_lease_quorum(id)?;
            }
            self.trace(("read", id, read_id));
        }
        Ok(())
    }

    /// A lease rests on voters that promised to refuse every candidate: a
    /// voter is bound while it leads or has heard from a leader within an
    /// election timeout by its own clock (a paused node's clock runs on; a
    /// crashed one cannot vote, and refuses votes for an election timeout
    /// when it restarts). When `leader` serves a
    /// lease read, the unbound voters must not be able to form a majority of
    /// its configuration, nor of its last committed one.
    fn check_lease_quorum(&self, leader: NodeId) -> StepResult {
        let node = self.nodes[&leader].node.as_ref().expect("live leader");
        let term = node.term();
        let election_ticks = self.config.node_config(leader, 0).election_ticks;
        let bound = |j: NodeId| -> bool {
            if j == leader {
                return true;
            }
            let Some(sim_node) = self.nodes.get(&j) else {
                return false;
            };
            let Some(other) = sim_node.node.as_ref() else {
                return true;
            };
            // A leader votes for no one; nor does a follower that heard from
            // a leader (in any term) within an election timeout by its own
            // clock, or just started, unless it has voted for another node
            // in a later term already. A node campaigning has voted for
            // itself. (Had it heard from a newer leader, the lease would be
            // broken already; that is checked apart.)
            match other.role() {
                crate::node::Role::Leader => return true,
                crate::node::Role::Candidate | crate::node::Role::PreCandidate => return false,
                crate::node::Role::Follower => {}
            }
            if other.term() > term && other.hard_state().vote.is_some_and(|v| v != leader) {
                return false;
            }
            let missed = match sim_node.paused_until {
                Some(_) if sim_node.next_tick <= self.clock => {
                    (self.clock - sim_node.next_tick) / sim_node.period + 1
                }
                _ => 0,
            };
            other.status().leader_contact_ticks + missed < election_ticks
        };
        let mut configs = vec![node.membership().clone()];
        if let Some(committed) = node.committed_membership() {
            if committed != node.membership() {
                configs.push(committed.clone());
            }
        }
        for config in configs {
            let voters = config.voters();
            let unbound: Vec<NodeId> = voters.iter().copied().filter(|&j| !bound(j)).collect();
            if unbound.len() > voters.len() / 2 {
                let why: Vec<String> = unbound
                    .iter()
                    .map(|j| match self.nodes.get(j).and_then(|n| n.node.as_ref()) {
                        Some(n) => format!(
                            "{j}: term {} {:?}, {} ticks since a leader",
                            n.term(),
                            n.role(),
                            n.status().leader_contact_ticks
                        ),
                        None => format!("{j}: unknown"),
                    })
                    .collect();
                return Err(Violation::new(
                    "lease",
                    format!(
                        "node {leader}, leader of term {term}, served a lease read while voters {unbound:?} of {voters:?}, a majority, were free to elect another leader ({})",
                        why.join("; ")
                    ),
                ));
            }
        }
        Ok(())
    }

    // ----- membership and leadership -------------------------------------------

    fn change_membership(&mut self) -> StepResult {
        let leaders = self.leaders();
        if let Some(leader) = self.pick(&leaders) {
            self.change_membership_at(leader)?;
        }
        Ok(())
    }

    /// Proposes a random membership change at `leader`: every operation the
    /// API offers. Returns whether the leader accepted it.
    fn change_membership_at(&mut self, leader: NodeId) -> Result<bool, Violation> {
        let membership = self.nodes[&leader]
            .node
            .as_ref()
            .expect("live leader")
            .membership()
            .clone();
        let voters: Vec<NodeId> = membership.voters().iter().copied().collect();
        let learners: Vec<NodeId> = membership.learners().iter().copied().collect();
        let others: Vec<NodeId> = voters.iter().copied().filter(|&v| v != leader).collect();
        let readdable: Vec<NodeId> = if self.config.readd_removed {
            self.oracle
                .removed
                .keys()
                .copied()
                .filter(|id| !membership.contains(*id))
                .collect()
        } else {
            Vec::new()
        };
        let room = voters.len() < self.config.max_voters;
        let growing = voters.len() < self.config.grow_to;
        let roll = if growing && self.chance(0.8) {
            self.rng.random_range(0..2u8)
        } else {
            self.rng.random_range(0..9u8)
        };
        let address = |id: NodeId| format!("sim-{id}");
        let (change, readd) = match roll {
            // A new learner: a spare id, or (refused) a removed one.
            0 | 7 => {
                let fresh = self.spares.first().copied();
                let readd = self.pick(&readdable);
                match (fresh, readd) {
                    (Some(id), _) if roll == 0 || readd.is_none() => (
                        Some(ConfChange::AddLearner {
                            id,
                            address: address(id),
                        }),
                        None,
                    ),
                    (_, Some(id)) => (
                        Some(ConfChange::AddLearner {
                            id,
                            address: address(id),
                        }),
                        Some(id),
                    ),
                    _ => (None, None),
                }
            }
            // Promote a learner.
            1 if room && !learners.is_empty() => {
                let id = self.pick(&learners).expect("non-empty");
                (Some(ConfChange::AddVoter { id, address: None }), None)
            }
            // Add a voter directly: a spare, or (refused) a removed id.
            2 if room => {
                let fresh = self.spares.first().copied();
                let readd = self.pick(&readdable);
                match (fresh, readd) {
                    (Some(id), _) => (
                        Some(ConfChange::AddVoter {
                            id,
                            address: Some(address(id)),
                        }),
                        None,
                    ),
                    (None, Some(id)) => (
                        Some(ConfChange::AddVoter {
                            id,
                            address: Some(address(id)),
                        }),
                        Some(id),
                    ),
                    _ => (None, None),
                }
            }
            // Remove a voter other than the leader.
            3 if !others.is_empty() => {
                let id = self.pick(&others).expect("non-empty");
                (Some(ConfChange::Remove { id }), None)
            }
            // Remove a learner.
            4 if !learners.is_empty() => {
                let id = self.pick(&learners).expect("non-empty");
                (Some(ConfChange::Remove { id }), None)
            }
            // Remove the leader itself.
            5 if voters.len() > 1 => (Some(ConfChange::Remove { id: leader }), None),
            // Demote a voter to learner.
            6 if !others.is_empty() => {
                let id = self.pick(&others).expect("non-empty");
                (
                    Some(ConfChange::AddLearner {
                        id,
                        address: address(id),
                    }),
                    None,
                )
            }
            _ => (None, None),
        };
        let Some(change) = change else {
            return Ok(false);
        };
        let node = self.node_mut(leader);
        let result = node.propose_membership(change.clone());
        if let Some(id) = readd {
            // Ids are never reused: the leader must refuse. Should it accept,
            // the operator goes on as for any new node: the node with that id
            // starts over with an empty store (and what follows shows why
            // ids are never reused).
            self.stats.readds += 1;
            if result.is_ok() {
                self.wipe(id)?;
            }
            return Ok(false);
        }
        if let Err(e) = result {
            if self.print_events {
                eprintln!("{:>6} refused {change:?}: {e}", self.stats.steps);
            }
            return Ok(false);
        }
        let id = change.node();
        if self.spares.contains(&id) {
            self.spares.retain(|&s| s != id);
        }
        self.stats.membership_changes += 1;
        self.trace(("membership", leader, id));
        if self.faults_on && self.chance(self.config.isolate_after_change) {
            self.isolate_with_minority(leader, &membership);
            if id != leader && membership.contains(id) && !self.cuts.is_empty() {
                // The change reaches the node it is about.
                self.cuts.remove(&(leader, id));
                self.cuts.remove(&(id, leader));
            }
        }
        if self.faults_on && self.chance(self.config.quiet_after_change) {
            self.quiet_steps = self.quiet_steps.max(self.rng.random_range(200..800));
        }
        Ok(true)
    }

    /// Drift at its worst, within the bound: leaders' clocks run at the
    /// slowest rate, everyone else's at the fastest. (Just as a leader is
    /// cut off, this is when a lease that counts on its own clock too long
    /// outlives the promises of its voters.)
    fn skew_clocks(&mut self) {
        if self.config.tick_drift <= 0.0 {
            return;
        }
        let slowest = (TICK as f64 / (1.0 - self.config.tick_drift)).floor() as u64;
        let leaders = self.leaders();
        for (id, sim_node) in self.nodes.iter_mut() {
            sim_node.period = if leaders.contains(id) { slowest } else { TICK };
        }
        self.trace("skew clocks");
    }

    /// Splits the cluster (replacing any partition) so that `leader` keeps
    /// exactly a majority of the voters of its latest configuration; every
    /// other node is on the other side. What the leader commits then lives
    /// on a bare quorum, and the other side may hold a rival history.
    fn partition_minimal_quorum(&mut self, leader: NodeId) {
        let Some(node) = self.nodes[&leader].node.as_ref() else {
            return;
        };
        let mut others: Vec<NodeId> = node
            .membership()
            .voters()
            .iter()
            .copied()
            .filter(|&v| v != leader)
            .collect();
        let majority = node.membership().voters().len() / 2 + 1;
        let mut side = BTreeSet::from([leader]);
        while side.len() < majority && !others.is_empty() {
            let i = self.rng.random_range(0..others.len());
            side.insert(others.swap_remove(i));
        }
        self.cuts.clear();
        let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
        for &a in &ids {
            for &b in &ids {
                if side.contains(&a) != side.contains(&b) {
                    self.cuts.insert((a, b));
                }
            }
        }
        self.stats.faults += 1;
        self.cuts_since = self.clock;
        self.trace(("minimal quorum", leader, side.len()));
    }

    /// Cuts `leader` off from all but a minority of the voters of
    /// `membership` (and from every other node): what it appended last
    /// reaches only that minority, where it may linger uncommitted while the
    /// rest elect a new leader.
    fn isolate_with_minority(&mut self, leader: NodeId, membership: &Membership) {
        let mut voters: Vec<NodeId> = membership
            .voters()
            .iter()
            .copied()
            .filter(|&v| v != leader)
            .collect();
        let keep = self
            .rng
            .random_range(0..=voters.len().saturating_sub(1) / 2);
        let mut reachable = BTreeSet::new();
        for _ in 0..keep {
            let i = self.rng.random_range(0..voters.len());
            reachable.insert(voters.swap_remove(i));
        }
        for &learner in membership.learners() {
            if self.chance(0.5) {
                reachable.insert(learner);
            }
        }
        let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
        for other in ids {
            if other != leader && !reachable.contains(&other) {
                self.cuts.insert((leader, other));
                self.cuts.insert((other, leader));
            }
        }
        self.stats.faults += 1;
        self.cuts_since = self.clock;
        self.trace(("isolate", leader, reachable.len()));
    }

    /// Replaces `id`'s store and state machine by empty ones.
    fn wipe(&mut self, id: NodeId) -> StepResult {
        if self.nodes[&id].node.is_some() {
            self.crash(id);
        }
        let sim_node = self.nodes.get_mut(&id).expect("known node");
        sim_node.disk = Some(MemLog::new());
        sim_node.machine = RegisterMachine::default();
        self.trace(("wipe", id));
        self.restart(id)
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
        if self.node_mut(leader).transfer_leader(target).is_ok() {
            self.stats.transfers += 1;
            self.trace(("transfer", leader, target));
        }
        Ok(())
    }

    /// The host calls not covered elsewhere: an early `campaign`, a
    /// `report_unreachable` from the transport (usually about a peer that is
    /// cut off), and `status`, which must agree with the accessors.
    fn host_call(&mut self) -> StepResult {
        let live = self.live_ids();
        let Some(id) = self.pick(&live) else {
            return Ok(());
        };
        match self.rng.random_range(0..10u8) {
            0..=2 => match self.node_mut(id).campaign() {
                Ok(()) | Err(Error::InLease { .. }) => self.trace(("campaign", id)),
                Err(e) => return Err(storage_violation(id, e)),
            },
            3..=6 => {
                let cut: Vec<NodeId> = self
                    .cuts
                    .iter()
                    .filter(|(from, _)| *from == id)
                    .map(|(_, to)| *to)
                    .collect();
                let all: Vec<NodeId> = self.nodes.keys().copied().filter(|&p| p != id).collect();
                let peer = if !cut.is_empty() && self.chance(0.8) {
                    self.pick(&cut)
                } else {
                    self.pick(&all)
                };
                if let Some(peer) = peer {
                    self.node_mut(id).report_unreachable(peer);
                    self.trace(("unreachable", id, peer));
                }
            }
            _ => {
                let node = self.nodes[&id].node.as_ref().expect("live");
                let status = node.status();
                let last = node.last_log_id().map_err(|e| storage_violation(id, e))?;
                if status.commit != node.commit_index()
                    || status.term != node.term()
                    || status.role != node.role()
                    || status.last_log != last
                    || status.applied != node.applied_index()
                {
                    return Err(Violation::new(
                        "status",
                        format!("node {id}: status {status:?} disagrees with its accessors"),
                    ));
                }
            }
        }
        Ok(())
    }

    // ----- faults ----------------------------------------------------------------

    fn inject_fault(&mut self) -> StepResult {
        let roll = self.rng.random_range(0..100u32);
        let crashed: Vec<NodeId> = self.ids_where(|n| n.node.is_none());
        if roll < 30 {
            if let Some(id) = self.pick(&crashed) {
                return self.restart(id);
            }
        }
        let settled = self.clock >= self.cuts_since + self.config.min_partition_ticks * TICK;
        if roll < 36 && !self.cuts.is_empty() && settled {
            self.cuts.clear();
            self.trace("heal");
            return Ok(());
        }
        // Fault actions are 22 in 1000 steps; scale to per-step rates.
        let crash_p = self.config.crash_rate / 0.022;
        let partition_p = self.config.partition_rate / 0.022;
        let pause_p = self.config.pause_rate / 0.022;
        if self.chance(crash_p.min(1.0)) {
            // Prefer nodes with writes in flight: crashing them exercises the
            // durability contract (what was sent must survive).
            let writing: Vec<NodeId> =
                self.ids_where(|n| n.node.is_some() && !n.pending.is_empty());
            // Leaders too: a leader crashing right after it appended entries
            // is how logs diverge in the hard cases (Raft paper, figure 8).
            let leaders = self.leaders();
            let victims = if !leaders.is_empty() && self.chance(0.4) {
                leaders
            } else if !writing.is_empty() && self.chance(0.6) {
                writing
            } else {
                self.ids_where(|n| n.node.is_some())
            };
            if let Some(id) = self.pick(&victims) {
                self.crash(id);
            }
        } else if self.chance(partition_p.min(1.0)) {
            let leaders = self.leaders();
            match self.pick(&leaders) {
                Some(leader) if self.chance(0.3) => self.partition_minimal_quorum(leader),
                Some(leader) if self.chance(0.3) => {
                    let membership = self.nodes[&leader]
                        .node
                        .as_ref()
                        .expect("live leader")
                        .membership()
                        .clone();
                    self.isolate_with_minority(leader, &membership);
                }
                _ => self.partition(),
            }
            if self.chance(0.5) {
                self.skew_clocks();
            }
        } else if self.chance(pause_p.min(1.0)) {
            // Leaders mostly: a paused leader whose lease outlives the pause
            // is the case leases must survive.
            let leaders = self.leaders();
            let victims = if !leaders.is_empty() && self.chance(0.6) {
                leaders
            } else {
                self.live_ids()
            };
            if let Some(id) = self.pick(&victims) {
                let ticks = self.rng.random_range(1..=30);
                let until = self.clock + ticks * TICK + self.rng.random_range(0..TICK);
                self.nodes.get_mut(&id).expect("known").paused_until = Some(until);
                self.stats.faults += 1;
                self.stats.pauses += 1;
                self.trace(("pause", id, ticks));
            }
        }
        Ok(())
    }

    fn crash(&mut self, id: NodeId) {
        let durable_machine = self.config.durable_machine;
        let sim_node = self.nodes.get_mut(&id).expect("known node");
        let node = sim_node.node.take().expect("live node");
        // Everything not acknowledged durable is lost; so is a state machine
        // that lives in memory, and whatever it had yet to apply.
        sim_node.pending.clear();
        sim_node.to_apply.clear();
        sim_node.reads.clear();
        sim_node.forced_reads.clear();
        sim_node.snapshot_due = false;
        sim_node.paused_until = None;
        if !durable_machine {
            sim_node.machine = RegisterMachine::default();
        }
        sim_node.disk = Some(node.into_store());
        self.stats.faults += 1;
        self.trace(("crash", id));
    }

    fn restart(&mut self, id: NodeId) -> StepResult {
        let period = draw_period(&mut self.rng, self.config.tick_drift);
        let phase = self.rng.random_range(0..period);
        let durable_machine = self.config.durable_machine;
        let sim_node = self.nodes.get_mut(&id).expect("known node");
        let store = sim_node.disk.take().expect("crashed node has a disk");
        sim_node.incarnation += 1;
        sim_node.period = period;
        sim_node.next_tick = self.clock + phase;
        let snapshot_index = store.snapshot().map_or(0, |(meta, _)| meta.last.index);
        if !durable_machine || sim_node.machine.applied_index() < snapshot_index {
            sim_node.machine = match store.snapshot() {
                Some((_, data)) => RegisterMachine::restore(data).ok_or_else(|| {
                    Violation::new("snapshot", format!("node {id} has an undecodable snapshot"))
                })?,
                None => RegisterMachine::default(),
            };
        }
        let mut config = self.config.node_config(id, sim_node.incarnation);
        config.applied = sim_node.machine.applied_index();
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
            self.cuts_since = self.clock;
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
        let paused: Vec<NodeId> = self.ids_where(|n| n.paused_until.is_some());
        for id in paused {
            self.resume(id)?;
        }
        let crashed: Vec<NodeId> = self.ids_where(|n| n.node.is_none());
        for id in crashed {
            self.restart(id)?;
        }
        let ids: Vec<NodeId> = self.live_ids();
        for id in ids {
            self.apply_queued(id, usize::MAX)?;
        }
        self.check()
    }

    /// Runs the healed cluster in lock step: every tick, every node ticks,
    /// every message is delivered, every batch is performed and persisted.
    fn run_round(&mut self) -> StepResult {
        self.advance_clock(self.clock + TICK);
        for id in self.live_ids() {
            self.stats.steps += 1;
            let node = self.node_mut(id);
            node.tick().map_err(|e| storage_violation(id, e))?;
        }
        for _ in 0..50 {
            let mut progress = false;
            let messages: Vec<InFlight> = std::mem::take(&mut self.in_flight);
            for flight in messages {
                if flight.deliver_at <= self.clock {
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
                    self.build_snapshot(id)?;
                }
            }
            if !progress {
                break;
            }
        }
        Ok(())
    }

    /// Liveness: once faults heal, a leader is elected and a proposal made
    /// after healing commits within a bounded number of ticks.
    fn check_liveness(&mut self) -> StepResult {
        let deadline = self.clock / TICK + self.config.liveness_ticks;
        let mut proposal: Option<(NodeId, (u64, u64), u64)> = None;
        while self.clock / TICK < deadline {
            self.run_round()?;
            let now = self.clock / TICK;
            if let Some((_, (term, index), _)) = proposal {
                match self.oracle.committed_at(index) {
                    Some((t, _)) if t == term => return Ok(()),
                    // Another entry won that position: the proposal was lost.
                    Some(_) => proposal = None,
                    None => {}
                }
            }
            if proposal.is_some_and(|(_, _, at)| now > at + 3 * 20) {
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
                        proposal = Some((leader, position, now));
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
                    "{}:{:?}/t{}/c{}/last{}/voters{:?}",
                    n.id(),
                    n.role(),
                    n.term(),
                    n.commit_index(),
                    n.last_log_id().map_or(0, |l| l.index),
                    n.membership().voters()
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

/// A node's tick period: within `[TICK, TICK / (1 - drift)]`, at either end
/// of the range two times in three (the extremes are where leases break).
fn draw_period(rng: &mut ChaCha8Rng, drift: f64) -> u64 {
    let slowest = (TICK as f64 / (1.0 - drift)).floor() as u64;
    match rng.random_range(0..3u8) {
        0 => TICK,
        1 => slowest,
        _ => rng.random_range(TICK..=slowest),
    }
}

/// PreVote's promise (Raft thesis §9.6): a node grants a pre-vote exactly
/// where it would grant the real vote. Asked of copies of the node, so the
/// node itself is untouched.
fn check_pre_vote_agrees(node: &Node<MemLog>, pre_vote: &Message) -> StepResult {
    use crate::message::MessageBody;
    let MessageBody::PreVote(req) = &pre_vote.body else {
        return Ok(());
    };
    let answer = |message: Message| -> Result<bool, Violation> {
        let mut copy = node.clone();
        copy.step(message)
            .map_err(|e| storage_violation(node.id(), e))?;
        let ready = copy.ready().map_err(|e| storage_violation(node.id(), e))?;
        Ok(ready
            .messages
            .iter()
            .chain(&ready.persisted_messages)
            .any(|m| {
                m.to == pre_vote.from
                    && matches!(
                        m.body,
                        MessageBody::PreVoteResponse(r) | MessageBody::VoteResponse(r) if r.granted
                    )
            }))
    };
    let pre = answer(pre_vote.clone())?;
    let vote = answer(Message {
        body: MessageBody::Vote(*req),
        ..pre_vote.clone()
    })?;
    if pre != vote {
        return Err(Violation::new(
            "pre-vote agrees with vote",
            format!(
                "node {} (term {}, role {:?}, leader {:?}) answers a pre-vote from {} for term {} with granted={pre}, but the real vote with granted={vote}",
                node.id(),
                node.term(),
                node.role(),
                node.leader(),
                pre_vote.from,
                pre_vote.term
            ),
        ));
    }
    Ok(())
}

fn storage_violation(id: NodeId, e: Error) -> Violation {
    Violation::new("node error", format!("node {id}: {e}"))
}

/// Runs seeds `start..start + count` of one shape with the default mix;
/// returns the summed statistics or the first failure.
pub fn run_seeds(start: u64, count: u64, shape: Shape) -> Result<SimStats, SimFailure> {
    let mut total = SimStats::default();
    for seed in start..start + count {
        let stats = Sim::new(SimConfig::with_shape(seed, shape)).run()?;
        total.add(&stats);
    }
    Ok(total)
}

impl std::fmt::Display for SimStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "steps {} ticks {} proposals {} committed {} elections {} faults {} reads {} (lease {}) membership changes {} (after election {}, re-adds {}) transfers {} snapshots {} bad answers {} pauses {} pre-votes checked {} runs with 3+ voters {}",
            self.steps,
            self.ticks,
            self.proposed,
            self.committed,
            self.elections,
            self.faults,
            self.reads,
            self.lease_reads,
            self.membership_changes,
            self.changes_after_election,
            self.readds,
            self.transfers,
            self.snapshots,
            self.bad_answers,
            self.pauses,
            self.pre_votes_checked,
            self.reached_three_voters
        )
    }
}
