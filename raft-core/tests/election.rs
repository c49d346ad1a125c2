//! Leader election scenarios, each citing where the case comes from.

#![cfg(feature = "testing")]

use raft_core::testing::Cluster;
use raft_core::{MessageBody, Role};

/// Raft paper §5.2: a cluster elects a leader, and with a healthy network
/// the term stays stable (heartbeats suppress new elections).
#[test]
fn initial_election_and_stable_term() {
    let mut c = Cluster::new(3);
    for _ in 0..50 {
        c.tick_all();
        if c.leader().is_some() {
            break;
        }
    }
    let leader = c.leader().expect("a leader within 50 ticks");
    let term = c.node(leader).term();
    c.run_ticks(200);
    assert_eq!(c.leader(), Some(leader), "the leader stays");
    for id in c.ids() {
        assert_eq!(c.node(id).term(), term, "node {id} term is stable");
        assert_eq!(c.node(id).leader(), Some(leader));
    }
}

/// Raft paper §5.2 and the MIT 6.824 "re-election" test: when the leader is
/// lost, the rest elect a new one in a higher term; when the old leader
/// returns it follows.
#[test]
fn re_election_after_leader_is_lost() {
    let mut c = Cluster::new(3);
    c.elect(1);
    let term = c.node(1).term();
    c.isolate(1);
    c.run_ticks(60);
    let leaders = c.leaders();
    let new = *leaders
        .iter()
        .find(|&&id| id != 1)
        .expect("a new leader among 2 and 3");
    assert!(c.node(new).term() > term);
    c.heal();
    c.run_ticks(30);
    assert_eq!(
        c.leaders(),
        vec![new],
        "the old leader stepped down and follows"
    );
    assert_eq!(c.node(1).leader(), Some(new));
}

/// Raft paper §5.2: without a quorum no leader can be elected.
#[test]
fn no_quorum_means_no_leader() {
    let mut c = Cluster::new(5);
    c.elect(1);
    c.crash(1);
    c.crash(2);
    c.crash(3);
    c.run_ticks(300);
    assert!(c.leaders().is_empty(), "two of five cannot elect a leader");
}

/// Raft thesis §9.6 (PreVote): a node partitioned away does not inflate its
/// term, and when it rejoins it does not disrupt the healthy leader.
#[test]
fn rejoining_node_does_not_disrupt_with_pre_vote() {
    let mut c = Cluster::new(3);
    c.elect(1);
    let term = c.node(1).term();
    c.isolate(3);
    c.run_ticks(200);
    assert_eq!(c.node(3).term(), term, "pre-votes do not raise the term");
    assert_ne!(c.node(3).role(), Role::Leader);
    c.heal();
    c.run_ticks(20);
    assert_eq!(c.leader(), Some(1), "the leader is undisturbed");
    assert_eq!(c.node(1).term(), term);
    assert_eq!(c.node(3).leader(), Some(1));
}

/// The same case without PreVote shows what it prevents: the rejoining node
/// forces a new election with its inflated term (Raft thesis §9.6).
#[test]
fn rejoining_node_disrupts_without_pre_vote() {
    let mut c = Cluster::with_config(3, |cfg| {
        cfg.pre_vote = false;
        cfg.check_quorum = false;
    });
    c.elect(1);
    let term = c.node(1).term();
    c.isolate(3);
    c.run_ticks(200);
    assert!(
        c.node(3).term() > term + 3,
        "without pre-vote the term climbs"
    );
    c.heal();
    c.run_ticks(40);
    let leader = c.leader().expect("a leader again");
    assert!(
        c.node(leader).term() > term,
        "the cluster was forced into a new term"
    );
}

/// Raft thesis §6.2 (CheckQuorum): a leader cut off from a quorum steps down
/// within an election timeout.
#[test]
fn partitioned_leader_steps_down() {
    let mut c = Cluster::new(5);
    c.elect(1);
    c.partition(&[1, 2]);
    let election = c.node(1).config().election_ticks;
    c.run_ticks(election + 1);
    assert_eq!(
        c.node(1).role(),
        Role::Follower,
        "the minority leader stepped down"
    );
    c.run_ticks(60);
    let leader = c.leader().expect("the majority elected a leader");
    assert!([3, 4, 5].contains(&leader));
}

/// Raft paper §5.4.1: a node whose log is behind cannot win an election.
#[test]
fn stale_log_cannot_win() {
    let mut c = Cluster::new(3);
    c.elect(1);
    c.isolate(3);
    c.propose_committed(b"only on 1 and 2");
    c.heal();
    // Node 3 missed the entry; with heartbeats cut it campaigns.
    c.isolate(3);
    c.heal();
    c.crash(1);
    // Node 3 has heard nothing from a leader for an election timeout.
    for _ in 0..10 {
        c.tick(3);
    }
    c.node_mut(3).campaign().unwrap();
    c.drop_if(|m| matches!(m.body, MessageBody::Append(_) | MessageBody::Heartbeat(_)));
    c.stabilize();
    assert_ne!(
        c.node(3).role(),
        Role::Leader,
        "node 2 refuses a candidate missing a committed entry"
    );
}
