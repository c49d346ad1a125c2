//! A hand-driven cluster for scenario tests: every step is explicit, the
//! network is perfect unless a test cuts, isolates or filters it, and writes
//! are durable as soon as a batch is performed (unless a test holds them).

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use bytes::Bytes;

use super::state_machine::RegisterMachine;
use crate::MemLog;
use crate::config::Config;
use crate::error::Error;
use crate::membership::Membership;
use crate::message::Message;
use crate::node::{Node, ReadPolicy, Role};
use crate::ready::ReadState;
use crate::types::{Entry, EntryPayload, Index, LogId, NodeId};

type Filter = Box<dyn FnMut(&Message) -> bool>;

/// One member of a [`Cluster`].
pub struct Member {
    /// The running node, or `None` while crashed.
    pub node: Option<Node<MemLog>>,
    disk: Option<MemLog>,
    config: Config,
    /// The state machine.
    pub machine: RegisterMachine,
    /// Commands applied, in order.
    pub applied: Vec<Entry>,
    /// Read results that came out, in order.
    pub reads: Vec<ReadState>,
    /// Whether snapshots are built as soon as asked for.
    pub auto_snapshot: bool,
}

/// A cluster of [`Node`]s over [`MemLog`]s, driven by hand.
pub struct Cluster {
    members: BTreeMap<NodeId, Member>,
    queue: VecDeque<Message>,
    cuts: BTreeSet<(NodeId, NodeId)>,
    filters: Vec<Filter>,
    /// Every message delivered, for assertions.
    pub delivered: Vec<Message>,
}

impl Cluster {
    /// `n` voters with ids `1..=n` and the default configuration.
    pub fn new(n: u64) -> Self {
        Self::with_config(n, |_| {})
    }

    /// `n` voters, each configuration adjusted by `adjust`.
    pub fn with_config(n: u64, adjust: impl Fn(&mut Config)) -> Self {
        let membership = Membership::with_voters((1..=n).map(|id| (id, format!("node-{id}"))));
        let mut cluster = Self::empty();
        for id in 1..=n {
            cluster.add_member(id, MemLog::bootstrap(membership.clone()), &adjust);
        }
        cluster
    }

    /// A cluster with no members yet.
    pub fn empty() -> Self {
        Self {
            members: BTreeMap::new(),
            queue: VecDeque::new(),
            cuts: BTreeSet::new(),
            filters: Vec::new(),
            delivered: Vec::new(),
        }
    }

    /// Starts node `id` on `store` (a prepared log, or an empty one for a
    /// node that will be added to the cluster).
    pub fn add_member(&mut self, id: NodeId, store: MemLog, adjust: impl Fn(&mut Config)) {
        let mut config = Config::new(id);
        config.snapshot.threshold = 0;
        adjust(&mut config);
        let node = Node::new(config.clone(), store).expect("valid configuration");
        self.members.insert(
            id,
            Member {
                node: Some(node),
                disk: None,
                config,
                machine: RegisterMachine::default(),
                applied: Vec::new(),
                reads: Vec::new(),
                auto_snapshot: true,
            },
        );
    }

    /// A member.
    pub fn member(&self, id: NodeId) -> &Member {
        &self.members[&id]
    }

    /// A member, mutably.
    pub fn member_mut(&mut self, id: NodeId) -> &mut Member {
        self.members.get_mut(&id).expect("known member")
    }

    /// A running node.
    pub fn node(&self, id: NodeId) -> &Node<MemLog> {
        self.members[&id].node.as_ref().expect("node is running")
    }

    /// A running node, mutably.
    pub fn node_mut(&mut self, id: NodeId) -> &mut Node<MemLog> {
        self.member_mut(id).node.as_mut().expect("node is running")
    }

    /// Ids of every member.
    pub fn ids(&self) -> Vec<NodeId> {
        self.members.keys().copied().collect()
    }

    /// The one running leader with the highest term, if any.
    pub fn leader(&self) -> Option<NodeId> {
        self.members
            .iter()
            .filter_map(|(id, m)| {
                m.node
                    .as_ref()
                    .filter(|n| n.role() == Role::Leader)
                    .map(|n| (n.term(), *id))
            })
            .max()
            .map(|(_, id)| id)
    }

    /// Every running node that believes it leads.
    pub fn leaders(&self) -> Vec<NodeId> {
        self.members
            .iter()
            .filter(|(_, m)| m.node.as_ref().is_some_and(|n| n.role() == Role::Leader))
            .map(|(id, _)| *id)
            .collect()
    }

    // ----- network ---------------------------------------------------------

    /// Cuts both directions between `id` and everyone else.
    pub fn isolate(&mut self, id: NodeId) {
        for other in self.ids() {
            if other != id {
                self.cuts.insert((id, other));
                self.cuts.insert((other, id));
            }
        }
    }

    /// Cuts the direction `from -> to`.
    pub fn cut(&mut self, from: NodeId, to: NodeId) {
        self.cuts.insert((from, to));
    }

    /// Splits the cluster into `side` and the rest.
    pub fn partition(&mut self, side: &[NodeId]) {
        for a in self.ids() {
            for b in self.ids() {
                if side.contains(&a) != side.contains(&b) {
                    self.cuts.insert((a, b));
                }
            }
        }
    }

    /// Removes every cut and filter.
    pub fn heal(&mut self) {
        self.cuts.clear();
        self.filters.clear();
    }

    /// Drops every message for which `filter` returns `true`, until healed.
    pub fn drop_if(&mut self, filter: impl FnMut(&Message) -> bool + 'static) {
        self.filters.push(Box::new(filter));
    }

    fn blocked(&mut self, m: &Message) -> bool {
        self.cuts.contains(&(m.from, m.to)) || self.filters.iter_mut().any(|f| f(m))
    }

    // ----- driving ---------------------------------------------------------

    /// Ticks one node once.
    pub fn tick(&mut self, id: NodeId) {
        if let Some(node) = self.member_mut(id).node.as_mut() {
            node.tick().expect("tick");
        }
    }

    /// Ticks every running node once, then delivers until quiet.
    pub fn tick_all(&mut self) {
        for id in self.ids() {
            self.tick(id);
        }
        self.stabilize();
    }

    /// Ticks every running node `n` times, stabilizing after each round.
    pub fn run_ticks(&mut self, n: u64) {
        for _ in 0..n {
            self.tick_all();
        }
    }

    /// Makes `id` campaign now, then delivers until quiet.
    pub fn campaign(&mut self, id: NodeId) {
        self.node_mut(id).campaign().expect("campaign");
        self.stabilize();
    }

    /// Elects `id`: makes it campaign (up to a few times, as a real node
    /// would after a lost round) and checks that it won.
    pub fn elect(&mut self, id: NodeId) {
        for _ in 0..5 {
            self.campaign(id);
            if self.node(id).role() == Role::Leader {
                break;
            }
        }
        assert_eq!(
            self.node(id).role(),
            Role::Leader,
            "node {id} should have won the election"
        );
    }

    /// Performs every node's output batches and delivers every message until
    /// nothing moves.
    pub fn stabilize(&mut self) {
        for _ in 0..100_000 {
            let mut moved = false;
            for id in self.ids() {
                while self.members[&id]
                    .node
                    .as_ref()
                    .is_some_and(|n| n.has_ready())
                {
                    self.process_ready(id);
                    moved = true;
                }
            }
            while let Some(message) = self.queue.pop_front() {
                moved = true;
                self.deliver(message);
            }
            if !moved {
                return;
            }
        }
        panic!("the cluster did not stabilize");
    }

    /// Delivers one message now (if not blocked).
    pub fn deliver(&mut self, message: Message) {
        if self.blocked(&message) {
            return;
        }
        let to = message.to;
        let Some(node) = self.members.get_mut(&to).and_then(|m| m.node.as_mut()) else {
            return;
        };
        self.delivered.push(message.clone());
        node.step(message).expect("step");
    }

    /// Takes the messages waiting to be delivered, for tests that reorder or
    /// inspect them.
    pub fn take_messages(&mut self) -> Vec<Message> {
        self.queue.drain(..).collect()
    }

    /// Performs one output batch of `id`: send, persist, apply.
    pub fn process_ready(&mut self, id: NodeId) {
        let member = self.members.get_mut(&id).expect("known member");
        let node = member.node.as_mut().expect("running");
        let ready = node.ready().expect("ready");
        self.queue.extend(ready.messages);
        let installs = ready.write.install_snapshot.is_some();
        node.store_mut()
            .apply_owned(ready.write)
            .expect("apply write");
        if installs {
            let (_, data) = node.store().snapshot().cloned().expect("snapshot stored");
            member.machine = RegisterMachine::restore(&data).expect("decodable snapshot");
        }
        self.queue.extend(ready.persisted_messages);
        node.on_persisted(ready.number).expect("on_persisted");
        for entry in &ready.committed_entries {
            member.machine.apply(entry);
            if matches!(entry.payload, EntryPayload::Command(_)) {
                member.applied.push(entry.clone());
            }
        }
        if let Some(last) = ready.committed_entries.last() {
            node.on_applied(last.index).expect("on_applied");
        }
        member.reads.extend(ready.read_states);
        if ready.snapshot_due && member.auto_snapshot {
            Self::build_snapshot(member);
        }
    }

    /// Builds a snapshot of `id`'s state machine now.
    pub fn snapshot(&mut self, id: NodeId) {
        Self::build_snapshot(self.member_mut(id));
    }

    fn build_snapshot(member: &mut Member) {
        let node = member.node.as_mut().expect("running");
        let index = member.machine.applied_index();
        let data = member.machine.snapshot(200);
        let meta = match node.snapshot_meta_for(index, data.len() as u64) {
            Ok(meta) => meta,
            Err(Error::SnapshotObsolete { .. }) => return,
            Err(e) => panic!("snapshot_meta_for: {e}"),
        };
        node.store_mut().save_snapshot(meta.clone(), data);
        node.on_snapshot_built(&meta).expect("on_snapshot_built");
    }

    /// Proposes a command at `id`.
    pub fn propose(&mut self, id: NodeId, data: &[u8]) -> Result<LogId, Error> {
        self.node_mut(id).propose(Bytes::copy_from_slice(data))
    }

    /// Proposes at the leader and stabilizes; panics without a leader.
    pub fn propose_committed(&mut self, data: &[u8]) -> LogId {
        let leader = self.leader().expect("a leader");
        let id = self
            .propose(leader, data)
            .expect("leader accepts the proposal");
        self.stabilize();
        id
    }

    /// Asks `id` for a read.
    pub fn read(&mut self, id: NodeId, read_id: u64, policy: ReadPolicy) -> Result<(), Error> {
        self.node_mut(id).read_index(read_id, policy)
    }

    /// Crashes `id`: it stops, its durable state stays.
    pub fn crash(&mut self, id: NodeId) {
        let member = self.member_mut(id);
        if let Some(node) = member.node.take() {
            member.disk = Some(node.into_store());
        }
        self.queue.retain(|m| m.to != id && m.from != id);
    }

    /// Restarts a crashed node from its durable state.
    pub fn restart(&mut self, id: NodeId) {
        let member = self.member_mut(id);
        let store = member.disk.take().expect("crashed node");
        member.machine = match store.snapshot() {
            Some((_, data)) => RegisterMachine::restore(data).expect("decodable snapshot"),
            None => RegisterMachine::default(),
        };
        member.applied.clear();
        let mut config = member.config.clone();
        config.applied = member.machine.applied_index();
        member.node = Some(Node::new(config, store).expect("restart"));
    }

    /// The committed entries of `id` (payload commands), as applied.
    pub fn applied(&self, id: NodeId) -> &[Entry] {
        &self.members[&id].applied
    }

    /// The terms of `id`'s log from its first index to its last.
    pub fn log_terms(&self, id: NodeId) -> Vec<u64> {
        let node = self.node(id);
        let first = node.first_index().expect("first index");
        let last = node.last_log_id().expect("last").index;
        (first..=last)
            .map(|i| node.term_at(i).expect("term").unwrap_or(0))
            .collect()
    }

    /// The (index, term) pairs of `id`'s whole log.
    pub fn log_ids(&self, id: NodeId) -> Vec<LogId> {
        let node = self.node(id);
        let first = node.first_index().expect("first index");
        let last = node.last_log_id().expect("last").index;
        (first..=last)
            .map(|i| LogId::new(node.term_at(i).expect("term").unwrap_or(0), i))
            .collect()
    }

    /// The highest commit index among running nodes.
    pub fn max_commit(&self) -> Index {
        self.members
            .values()
            .filter_map(|m| m.node.as_ref())
            .map(|n| n.commit_index())
            .max()
            .unwrap_or(0)
    }
}
