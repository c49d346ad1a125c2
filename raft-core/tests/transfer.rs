//! Leadership transfer scenarios (Raft thesis §3.10; TESTING.md layer 2).

#![cfg(feature = "testing")]

use raft_core::testing::Cluster;
use raft_core::{Error, MemLog, MessageBody, Role};

/// To an up-to-date node: it receives TimeoutNow at once and wins.
#[test]
fn transfer_to_an_up_to_date_node() {
    let mut c = Cluster::new(3);
    c.elect(1);
    c.propose_committed(b"x");
    let term = c.node(1).term();
    c.node_mut(1).transfer_leader(3).unwrap();
    c.stabilize();
    assert_eq!(c.leader(), Some(3));
    assert_eq!(c.node(3).term(), term + 1);
    assert_eq!(c.node(1).role(), Role::Follower);
    c.propose_committed(b"on the new leader");
}

/// To a lagging node: the leader stops taking proposals, brings the target
/// up to date first, then sends TimeoutNow.
#[test]
fn transfer_to_a_lagging_node() {
    let mut c = Cluster::new(3);
    c.elect(1);
    c.isolate(3);
    for i in 0..20 {
        c.propose(1, format!("v{i}").as_bytes()).unwrap();
    }
    c.stabilize();
    c.node_mut(1).transfer_leader(3).unwrap();
    assert_eq!(
        c.propose(1, b"refused"),
        Err(Error::TransferInProgress { target: 3 }),
        "no proposals meanwhile"
    );
    c.stabilize();
    assert_eq!(c.leader(), Some(1), "not yet: the target is unreachable");
    c.heal();
    c.run_ticks(3);
    assert_eq!(c.leader(), Some(3), "caught up, then took over");
    let timeout_now_at = c
        .delivered
        .iter()
        .position(|m| matches!(m.body, MessageBody::TimeoutNow))
        .unwrap();
    let caught_up = c.delivered[..timeout_now_at].iter().any(|m| {
        m.to == 3 && matches!(&m.body, MessageBody::Append(req) if !req.entries.is_empty())
    });
    assert!(caught_up, "entries reached the target before TimeoutNow");
    assert_eq!(
        c.member(3).machine.applied_index(),
        c.member(1).machine.applied_index()
    );
}

/// To a dead node: after an election timeout without success the old
/// leader resumes taking proposals.
#[test]
fn transfer_to_a_dead_node_times_out_and_the_leader_resumes() {
    let mut c = Cluster::new(3);
    c.elect(1);
    c.crash(3);
    c.node_mut(1).transfer_leader(3).unwrap();
    assert!(matches!(
        c.propose(1, b"x"),
        Err(Error::TransferInProgress { .. })
    ));
    let election = c.node(1).config().election_ticks;
    c.run_ticks(election);
    assert_eq!(c.leader(), Some(1));
    assert!(c.node(1).status().transfer_target.is_none());
    c.propose_committed(b"resumed");
}

/// Refused targets: itself, a learner, an unknown node; and only leaders
/// transfer.
#[test]
fn transfer_to_self_learner_or_unknown_is_refused() {
    let mut c = Cluster::new(3);
    c.elect(1);
    c.add_member(4, MemLog::new(), |_| {});
    c.node_mut(1)
        .propose_membership(raft_core::ConfChange::AddLearner {
            id: 4,
            address: "node-4".into(),
        })
        .unwrap();
    c.stabilize();
    assert_eq!(
        c.node_mut(1).transfer_leader(1),
        Err(Error::TransferToSelf(1))
    );
    assert_eq!(
        c.node_mut(1).transfer_leader(4),
        Err(Error::TransferToNonVoter(4))
    );
    assert_eq!(
        c.node_mut(1).transfer_leader(9),
        Err(Error::TransferToNonVoter(9))
    );
    assert_eq!(
        c.node_mut(2).transfer_leader(3),
        Err(Error::NotLeader {
            leader_hint: Some(1)
        })
    );
}
