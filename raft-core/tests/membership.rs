//! Membership change scenarios (Raft thesis §4.1–4.2; TESTING.md layer 2).

#![cfg(feature = "testing")]

use raft_core::testing::Cluster;
use raft_core::{ConfChange, Error, MemLog, Role};

fn add_learner(c: &mut Cluster, leader: u64, id: u64) {
    c.add_member(id, MemLog::new(), |_| {});
    c.node_mut(leader)
        .propose_membership(ConfChange::AddLearner {
            id,
            address: format!("node-{id}"),
        })
        .unwrap();
    c.stabilize();
}

/// Raft thesis §4.2.1: a new server joins as a learner (non-voting), catches
/// up on the log, and is then promoted to voter.
#[test]
fn add_learner_catch_up_and_promote() {
    let mut c = Cluster::new(3);
    c.elect(1);
    for i in 0..30 {
        c.propose(1, format!("before {i}").as_bytes()).unwrap();
    }
    c.stabilize();
    add_learner(&mut c, 1, 4);
    assert!(c.node(1).membership().is_learner(4));
    assert!(
        !c.node(1).membership().is_voter(4),
        "a learner does not vote"
    );
    c.run_ticks(3);
    // Caught up: same state as the leader.
    assert_eq!(c.member(4).machine, c.member(1).machine);
    let lag = c
        .node(1)
        .status()
        .followers
        .iter()
        .find(|f| f.id == 4)
        .unwrap()
        .lag;
    assert_eq!(lag, 0);
    // A learner never campaigns.
    // (It heard from the leader just now, so it refuses outright.)
    let campaign = c.node_mut(4).campaign();
    assert!(
        matches!(campaign, Ok(()) | Err(Error::InLease { .. })),
        "{campaign:?}"
    );
    assert_eq!(c.node(4).role(), Role::Follower);
    c.node_mut(1)
        .propose_membership(ConfChange::AddVoter {
            id: 4,
            address: None,
        })
        .unwrap();
    c.stabilize();
    c.run_ticks(2);
    for id in 1..=4 {
        assert!(
            c.node(id).membership().is_voter(4),
            "node {id} sees 4 as a voter"
        );
    }
    // Four voters: a commit needs three.
    c.isolate(2);
    c.isolate(3);
    c.propose(1, b"needs three").unwrap();
    c.run_ticks(2);
    assert!(c.applied(1).iter().all(|e| e.payload
        != raft_core::EntryPayload::Command(bytes::Bytes::from_static(b"needs three"))));
    c.heal();
    c.run_ticks(2);
    assert_eq!(
        c.applied(1).last().map(|e| e.payload.clone()),
        Some(raft_core::EntryPayload::Command(bytes::Bytes::from_static(
            b"needs three"
        )))
    );
}

/// Raft thesis §4.2.2: the leader can remove itself; it keeps managing the
/// cluster until the change commits (not counting itself), then steps down
/// and never campaigns again; the others elect a new leader.
#[test]
fn remove_the_leader() {
    let mut c = Cluster::new(3);
    c.elect(1);
    c.node_mut(1)
        .propose_membership(ConfChange::Remove { id: 1 })
        .unwrap();
    c.stabilize();
    assert_eq!(
        c.node(1).role(),
        Role::Follower,
        "stepped down once the removal committed"
    );
    assert!(!c.node(1).membership().contains(1));
    c.run_ticks(50);
    let leader = c.leader().expect("the remaining two elect a leader");
    assert!([2, 3].contains(&leader));
    assert_eq!(
        c.node(1).role(),
        Role::Follower,
        "the removed node never campaigns"
    );
    c.propose_committed(b"after removal");
    c.run_ticks(2);
    for id in [2, 3] {
        assert_eq!(c.node(id).membership().voters().len(), 2);
    }
}

/// TESTING.md: remove a node while it is partitioned. It never learns of
/// its removal, yet it cannot disrupt the cluster when the partition heals
/// (PreVote and leader stickiness).
#[test]
fn remove_a_partitioned_node_which_then_cannot_disrupt() {
    let mut c = Cluster::new(3);
    c.elect(1);
    c.isolate(3);
    c.node_mut(1)
        .propose_membership(ConfChange::Remove { id: 3 })
        .unwrap();
    c.stabilize();
    assert!(!c.node(1).membership().contains(3));
    assert!(
        c.node(3).membership().contains(3),
        "node 3 never heard of its removal"
    );
    c.run_ticks(100);
    let term = c.node(1).term();
    c.heal();
    c.run_ticks(100);
    assert_eq!(c.leader(), Some(1), "the cluster's leader is undisturbed");
    assert_eq!(
        c.node(1).term(),
        term,
        "no term inflation from the removed node"
    );
    c.propose_committed(b"still fine");
}

/// Review finding: a removed node keeps its certificate, so it can still
/// reach the others; a `Vote { transfer: true }` at a higher term made the
/// leader step down (a transfer vote bypasses leader stickiness). Once its
/// removal is committed, nothing a removed node says counts.
#[test]
fn a_removed_node_cannot_depose_the_leader_with_a_transfer_vote() {
    use raft_core::{LogId, Message, MessageBody, VoteRequest};
    let mut c = Cluster::new(3);
    c.elect(1);
    c.node_mut(1)
        .propose_membership(ConfChange::Remove { id: 3 })
        .unwrap();
    c.stabilize();
    c.run_ticks(3);
    for id in [1, 2] {
        assert!(
            c.node(id)
                .committed_membership()
                .unwrap()
                .removed()
                .contains(&3),
            "node {id} knows the removal is committed"
        );
    }
    let term = c.node(1).term();
    let last = c.node(1).last_log_id().unwrap();
    for to in [1, 2] {
        c.deliver(Message {
            from: 3,
            to,
            term: term + 1,
            body: MessageBody::Vote(VoteRequest {
                last_log: LogId::new(last.term + 1, last.index + 100),
                transfer: true,
            }),
        });
    }
    c.stabilize();
    assert_eq!(c.leader(), Some(1), "the leader keeps leading");
    assert_eq!(c.node(1).term(), term, "its term did not move");
    assert_eq!(c.node(2).term(), term);
    for id in [1, 2] {
        assert_eq!(c.node(id).status().counters.messages_from_removed, 1);
    }
    c.propose_committed(b"still leading");
}

/// Raft thesis §4.1: only one change at a time; a second change while one
/// is uncommitted is refused with ConfigChangeInProgress.
#[test]
fn second_change_while_one_is_in_flight_is_refused() {
    let mut c = Cluster::new(3);
    c.elect(1);
    c.isolate(2);
    c.isolate(3);
    c.add_member(4, MemLog::new(), |_| {});
    let first = c
        .node_mut(1)
        .propose_membership(ConfChange::AddLearner {
            id: 4,
            address: "node-4".into(),
        })
        .unwrap();
    let second = c
        .node_mut(1)
        .propose_membership(ConfChange::Remove { id: 2 });
    assert_eq!(
        second,
        Err(Error::ConfigChangeInProgress {
            pending_index: first.index
        })
    );
    c.heal();
    c.stabilize();
    c.run_ticks(2);
    assert!(
        c.node_mut(1)
            .propose_membership(ConfChange::Remove { id: 2 })
            .is_ok(),
        "allowed once the first committed"
    );
}

/// A new leader may not change the configuration before it has committed an
/// entry of its own term (Ongaro, raft-dev 2015, the single-server change
/// bug fix).
#[test]
fn new_leader_changes_configuration_only_after_its_first_commit() {
    // The leader's no-op never reaches anyone, so nothing of its term commits.
    let mut c = Cluster::new(3);
    c.drop_if(|m| matches!(m.body, raft_core::MessageBody::Append(_)));
    c.elect(1);
    let result = c
        .node_mut(1)
        .propose_membership(ConfChange::Remove { id: 3 });
    assert!(
        matches!(result, Err(Error::LeaderNotSettled { index: 2, .. })),
        "{result:?}"
    );
    c.heal();
    c.run_ticks(2);
    assert!(
        c.node_mut(1)
            .propose_membership(ConfChange::Remove { id: 3 })
            .is_ok()
    );
}

/// Invalid changes get clear errors.
#[test]
fn invalid_changes_are_refused() {
    let mut c = Cluster::new(3);
    c.elect(1);
    assert!(matches!(
        c.node_mut(2)
            .propose_membership(ConfChange::Remove { id: 3 }),
        Err(Error::NotLeader {
            leader_hint: Some(1)
        })
    ));
    assert!(matches!(
        c.node_mut(1)
            .propose_membership(ConfChange::Remove { id: 9 }),
        Err(Error::ConfChange(_))
    ));
    assert!(matches!(
        c.node_mut(1).propose_membership(ConfChange::AddVoter {
            id: 2,
            address: None
        }),
        Err(Error::ConfChange(_))
    ));
    assert!(matches!(
        c.node_mut(1).propose_membership(ConfChange::AddLearner {
            id: 0,
            address: String::new()
        }),
        Err(Error::ConfChange(_))
    ));
}
