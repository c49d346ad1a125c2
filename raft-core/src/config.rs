//! Node configuration: timing in ticks, replication budgets, feature switches,
//! the RNG seed and the snapshot policy.

use crate::error::Error;
use crate::types::{Index, NodeId};

/// How a node behaves. Time is counted in ticks: the host calls
/// [`crate::Node::tick`] at a fixed interval of its choosing (100 ms is
/// typical for a WAN, 10–50 ms on a LAN).
#[derive(Clone, Debug)]
pub struct Config {
    /// This node's id (non-zero).
    pub id: NodeId,
    /// The minimum election timeout in ticks. Each follower waits a random
    /// number of ticks in `[election_ticks, 2 × election_ticks)` without
    /// hearing from a leader before it campaigns. A leader with
    /// [`Config::check_quorum`] steps down after this many ticks without
    /// hearing from a quorum.
    pub election_ticks: u64,
    /// Ticks between leader heartbeats. Must be less than `election_ticks`.
    pub heartbeat_ticks: u64,
    /// Run a pre-vote round before a real election (Raft thesis §9.6), so a
    /// node that was partitioned away cannot force a healthy leader out by
    /// inflating its term.
    pub pre_vote: bool,
    /// Leaders step down when they have not heard from a quorum within an
    /// election timeout, and followers that heard from a leader within an
    /// election timeout refuse to vote for others (Raft thesis §6.2, §4.2.3).
    pub check_quorum: bool,
    /// Allow [`crate::ReadPolicy::Lease`] reads: the leader serves reads
    /// without a heartbeat round for [`Config::lease_ticks`] ticks after the
    /// start of a heartbeat round a quorum of voters acknowledged. Requires
    /// `check_quorum`, and relies on the nodes' clocks: see
    /// [`Config::max_clock_drift`].
    pub lease_reads: bool,
    /// The drift between nodes' tick rates that lease reads tolerate: over
    /// any stretch of real time, every node counts at least
    /// `1 - max_clock_drift` times as many ticks as any other, give or take
    /// the one tick in progress. A host that derives ticks from a monotonic
    /// clock, and after a pause delivers the ticks it missed before any other
    /// input, stays within a bound of a few percent. The lease is shortened
    /// to match ([`Config::lease_ticks`]); beyond the bound a deposed leader
    /// may serve stale lease reads, which is why lease reads are opt-in.
    /// Default 0.1; must be in `[0, 1)`.
    pub max_clock_drift: f64,
    /// The byte budget of one AppendEntries message (entries'
    /// [`crate::Entry::budget_size`]). At least one entry is always sent.
    pub max_append_bytes: u64,
    /// The most entries one AppendEntries message carries.
    pub max_append_entries: usize,
    /// The most AppendEntries messages in flight to one follower in the
    /// replicate state (the pipelining window).
    pub max_inflight: usize,
    /// The byte budget of committed entries handed out in one output batch.
    pub max_apply_bytes: u64,
    /// The seed of the election-timeout RNG. Same seed and same inputs, same
    /// outputs.
    pub seed: u64,
    /// The index the host's state machine has already applied when the node
    /// starts (for durable state machines; 0 re-applies from the snapshot).
    pub applied: Index,
    /// When to snapshot, how much log to keep, how to ship snapshots.
    pub snapshot: SnapshotPolicy,
}

/// When the node asks for a snapshot and how it ships one.
#[derive(Clone, Debug)]
pub struct SnapshotPolicy {
    /// Ask for a snapshot once this many applied entries are in the log
    /// (0 disables automatic snapshots). After each compaction the threshold
    /// becomes `max(threshold, 1.5 × entries left)`, so a log that stays
    /// large does not trigger a snapshot for every new entry.
    pub threshold: u64,
    /// Besides `threshold` entries, wait until the entries applied since
    /// the newest snapshot hold at least this percentage of that
    /// snapshot's size in bytes. A snapshot writes the whole state, so
    /// without this a large state is written out again for every
    /// `threshold` small writes; with it, each byte written to the log
    /// costs at most `100 / log_share_percent` bytes of snapshot however
    /// large the state grows, and the log holds at most about this share
    /// of the state (plus `threshold` entries). 0 turns the rule off.
    pub log_share_percent: u64,
    /// Entries kept in the log below the snapshot after compaction, so that
    /// slightly lagging followers catch up from the log, not a snapshot.
    pub retention: u64,
    /// Bytes per snapshot chunk message.
    pub chunk_size: u64,
    /// Snapshot chunks in flight to one follower before acknowledgements.
    pub chunks_in_flight: u64,
}

impl Default for SnapshotPolicy {
    fn default() -> Self {
        Self {
            threshold: 100_000,
            log_share_percent: 50,
            retention: 10_000,
            chunk_size: 1 << 20,
            chunks_in_flight: 4,
        }
    }
}

impl Config {
    /// A configuration with the defaults: election timeout 10 ticks,
    /// heartbeat every tick, PreVote and CheckQuorum on, lease reads off.
    pub fn new(id: NodeId) -> Self {
        Self {
            id,
            election_ticks: 10,
            heartbeat_ticks: 1,
            pre_vote: true,
            check_quorum: true,
            lease_reads: false,
            max_clock_drift: 0.1,
            max_append_bytes: 1 << 20,
            max_append_entries: 4096,
            max_inflight: 256,
            max_apply_bytes: 4 << 20,
            seed: id,
            applied: 0,
            snapshot: SnapshotPolicy::default(),
        }
    }

    /// How long a leader's lease lasts, in its own ticks, from the start of
    /// a heartbeat round that a quorum acknowledged:
    /// `floor(election_ticks × (1 − max_clock_drift)) − 1`.
    ///
    /// Why this is safe: a voter that acknowledged the round refuses votes
    /// for `election_ticks` of its own ticks after receiving it, which takes
    /// at least `election_ticks − 1` full tick periods of its clock; any new
    /// leader needs such a voter. Within the drift bound the leader counts
    /// at most `(election_ticks − 1) × (1 − max_clock_drift)` ticks in that
    /// time, and the lease is no longer than that.
    ///
    /// ```
    /// let mut config = raft_core::Config::new(1);
    /// config.election_ticks = 10;
    /// config.max_clock_drift = 0.1;
    /// assert_eq!(config.lease_ticks(), 8);
    /// config.max_clock_drift = 0.25;
    /// assert_eq!(config.lease_ticks(), 6);
    /// ```
    pub fn lease_ticks(&self) -> u64 {
        let scaled = (self.election_ticks as f64 * (1.0 - self.max_clock_drift)).floor();
        (scaled as u64).saturating_sub(1)
    }

    /// Checks the configuration for values that cannot work.
    pub fn validate(&self) -> Result<(), Error> {
        let fail = |why: &str| Err(Error::InvalidConfig(why.to_string()));
        if self.id == 0 {
            return fail("id must be non-zero");
        }
        if self.heartbeat_ticks == 0 {
            return fail("heartbeat_ticks must be at least 1");
        }
        if self.election_ticks <= self.heartbeat_ticks {
            return fail("election_ticks must be greater than heartbeat_ticks");
        }
        if self.lease_reads && !self.check_quorum {
            return fail("lease_reads requires check_quorum");
        }
        if !(0.0..1.0).contains(&self.max_clock_drift) {
            return fail("max_clock_drift must be at least 0 and below 1");
        }
        if self.lease_reads && self.election_ticks < 4 {
            return fail("lease_reads requires election_ticks of at least 4");
        }
        if self.lease_reads && self.lease_ticks() == 0 {
            return fail(
                "lease_reads with this max_clock_drift leaves no lease; raise election_ticks or lower max_clock_drift",
            );
        }
        if self.max_inflight == 0 || self.max_append_entries == 0 {
            return fail("max_inflight and max_append_entries must be at least 1");
        }
        if self.snapshot.chunk_size == 0 || self.snapshot.chunks_in_flight == 0 {
            return fail("snapshot.chunk_size and snapshot.chunks_in_flight must be at least 1");
        }
        Ok(())
    }
}
