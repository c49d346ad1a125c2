//! The simulator can fail: deliberately broken node variants, built here in
//! test code on the simulator's interceptor hooks, are each caught within a
//! bounded number of seeds. (The mutations live only in this file; the node
//! has no switch that enables them.)

#![cfg(feature = "testing")]

use std::collections::BTreeMap;

use raft_core::quorum::majority_committed;
use raft_core::testing::{Interceptor, Sim, SimConfig};
use raft_core::{LogId, MemLog, Message, MessageBody, Node, NodeId, Ready, Term, VoteResponse};

/// Runs seeds until one fails; returns the failure text.
fn first_failure(
    max_seeds: u64,
    make: impl Fn() -> Box<dyn Interceptor>,
    nodes: usize,
) -> Option<String> {
    for seed in 0..max_seeds {
        let sim = Sim::new(SimConfig::new(seed, nodes));
        let sim = with_boxed(sim, make());
        if let Err(failure) = sim.run() {
            return Some(failure.to_string());
        }
    }
    None
}

fn with_boxed(sim: Sim, interceptor: Box<dyn Interceptor>) -> Sim {
    struct Boxed(Box<dyn Interceptor>);
    impl Interceptor for Boxed {
        fn on_step(&mut self, node: &Node<MemLog>, message: &Message) {
            self.0.on_step(node, message)
        }
        fn on_ready(&mut self, node: &Node<MemLog>, ready: &mut Ready) {
            self.0.on_ready(node, ready)
        }
        fn on_read(&mut self, node: &Node<MemLog>) -> Option<u64> {
            self.0.on_read(node)
        }
    }
    sim.with_interceptor(Boxed(interceptor))
}

/// A voter that grants a second vote in a term it already voted in, as long
/// as the candidate's log is up to date.
#[derive(Default)]
struct GrantsTwoVotes {
    /// (voter, candidate, term) -> candidate's last log entry.
    requests: BTreeMap<(NodeId, NodeId, Term), LogId>,
}

impl Interceptor for GrantsTwoVotes {
    fn on_step(&mut self, node: &Node<MemLog>, message: &Message) {
        if let MessageBody::Vote(req) = &message.body {
            self.requests
                .insert((node.id(), message.from, message.term), req.last_log);
        }
    }

    fn on_ready(&mut self, node: &Node<MemLog>, ready: &mut Ready) {
        let mine = node.last_log_id().unwrap_or_default();
        for m in ready.persisted_messages.iter_mut() {
            if let MessageBody::VoteResponse(VoteResponse { granted: false }) = m.body {
                let Some(last) = self.requests.get(&(node.id(), m.to, m.term)) else {
                    continue;
                };
                let up_to_date = (last.term, last.index) >= (mine.term, mine.index);
                if up_to_date && node.hard_state().vote.is_some_and(|v| v != m.to) {
                    m.body = MessageBody::VoteResponse(VoteResponse { granted: true });
                }
            }
        }
    }
}

/// A leader that tells followers an entry is committed as soon as a majority
/// holds it, whatever its term (the Raft paper's figure 8 bug).
struct CommitsByCounting;

impl Interceptor for CommitsByCounting {
    fn on_ready(&mut self, node: &Node<MemLog>, ready: &mut Ready) {
        if !node.is_leader() {
            return;
        }
        let status = node.status();
        let own = node.store().last_index_for_test();
        let matched: BTreeMap<NodeId, u64> = status
            .followers
            .iter()
            .map(|f| (f.id, f.match_index))
            .collect();
        let counted = majority_committed(node.membership().voters(), |id| {
            if id == node.id() {
                Some(own)
            } else {
                matched.get(&id).copied()
            }
        });
        if counted == u64::MAX || counted <= node.commit_index() {
            return;
        }
        for m in ready.messages.iter_mut() {
            match &mut m.body {
                MessageBody::Append(req) => req.commit = req.commit.max(counted),
                MessageBody::Heartbeat(hb) => {
                    let limit = matched.get(&m.to).copied().unwrap_or(0);
                    hb.commit = hb.commit.max(counted.min(limit));
                }
                _ => {}
            }
        }
    }
}

/// A node that sends votes and append acknowledgements before its writes
/// are durable.
struct AcksBeforePersisting;

impl Interceptor for AcksBeforePersisting {
    fn on_ready(&mut self, _node: &Node<MemLog>, ready: &mut Ready) {
        let early = std::mem::take(&mut ready.persisted_messages);
        ready.messages.extend(early);
    }
}

/// A leader that serves ReadIndex reads at its commit index without
/// confirming its leadership with a heartbeat round.
struct ReadsWithoutHeartbeat;

impl Interceptor for ReadsWithoutHeartbeat {
    fn on_read(&mut self, node: &Node<MemLog>) -> Option<u64> {
        node.is_leader().then(|| node.commit_index())
    }
}

trait LastIndexForTest {
    fn last_index_for_test(&self) -> u64;
}

impl LastIndexForTest for MemLog {
    fn last_index_for_test(&self) -> u64 {
        raft_core::LogRead::last_index(self).unwrap_or(0)
    }
}

/// Seeds each mutation gets; each is caught well within it (the first
/// failing seed is printed).
const BOUND: u64 = 500;

#[test]
fn double_vote_is_caught() {
    let failure = first_failure(BOUND, || Box::new(GrantsTwoVotes::default()), 5)
        .expect("a node granting two votes in a term went unnoticed");
    println!("caught: {failure}");
    assert!(failure.contains("election safety"), "{failure}");
}

#[test]
fn commit_by_counting_previous_term_is_caught() {
    let failure = first_failure(BOUND, || Box::new(CommitsByCounting), 5)
        .expect("a leader committing previous-term entries by counting went unnoticed");
    println!("caught: {failure}");
}

#[test]
fn acknowledging_before_persisting_is_caught() {
    let failure = first_failure(BOUND, || Box::new(AcksBeforePersisting), 5)
        .expect("a node acknowledging before persisting went unnoticed");
    println!("caught: {failure}");
}

#[test]
fn read_index_without_heartbeat_round_is_caught() {
    let failure = first_failure(BOUND, || Box::new(ReadsWithoutHeartbeat), 5)
        .expect("a leader serving reads without a heartbeat round went unnoticed");
    println!("caught: {failure}");
    assert!(failure.contains("linearizable read"), "{failure}");
}
