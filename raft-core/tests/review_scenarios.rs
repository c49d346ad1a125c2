//! The four protocol bugs an outside review found (issue "raft-core: four
//! protocol bugs found by an outside review…"), each replayed step by step
//! on the hand-driven cluster. Each test failed before its fix.

#![cfg(feature = "testing")]

use bytes::Bytes;
use raft_core::testing::Cluster;
use raft_core::{
    AppendResponse, ConfChange, Error, HeartbeatResponse, LogId, MemLog, Message, MessageBody,
    NodeId, ReadPolicy, Role, SnapshotResponse,
};

/// Every two running nodes agree on every index both hold committed.
fn assert_committed_prefixes_agree(c: &Cluster) {
    let ids: Vec<NodeId> = c
        .ids()
        .into_iter()
        .filter(|&id| c.member(id).node.is_some())
        .collect();
    for &a in &ids {
        for &b in &ids {
            let (na, nb) = (c.node(a), c.node(b));
            let upto = na.commit_index().min(nb.commit_index());
            let from = na.first_index().unwrap().max(nb.first_index().unwrap());
            for index in from..=upto {
                let (ta, tb) = (na.term_at(index).unwrap(), nb.term_at(index).unwrap());
                assert_eq!(
                    ta, tb,
                    "nodes {a} and {b} both committed index {index}, with terms {ta:?} and {tb:?}"
                );
            }
        }
    }
}

/// Bug 1 (safety). Raft thesis §4.1 with Ongaro's 2015 correction: a
/// configuration takes effect when appended, so a new leader may append a
/// change only once an entry of its own term has committed. Without the
/// rule, a change proposed the moment a leader is elected in a quiet
/// cluster commits alongside a rival change of the previous leader, and two
/// different entries are committed at one index.
#[test]
fn membership_change_waits_for_the_new_leaders_first_commit() {
    // PreVote and CheckQuorum only delay this schedule; they do not prevent it.
    let mut c = Cluster::with_config(4, |cfg| {
        cfg.pre_vote = false;
        cfg.check_quorum = false;
    });
    c.elect(1);
    c.add_member(5, MemLog::new(), |cfg| {
        cfg.pre_vote = false;
        cfg.check_quorum = false;
    });
    c.node_mut(1)
        .propose_membership(ConfChange::AddLearner {
            id: 5,
            address: "node-5".into(),
        })
        .unwrap();
    c.stabilize();
    c.propose_committed(b"settled");
    c.run_ticks(2);
    let k = c.node(1).last_log_id().unwrap().index;
    for id in 1..=5 {
        assert_eq!(c.node(id).commit_index(), k, "node {id} committed all of k");
    }

    // Leader 1 appends D = promote 5 at k+1; only 5 receives it.
    for to in [2, 3, 4] {
        c.cut(1, to);
    }
    let d = c
        .node_mut(1)
        .propose_membership(ConfChange::AddVoter {
            id: 5,
            address: None,
        })
        .unwrap();
    assert_eq!(d.index, k + 1);
    c.stabilize();
    assert_eq!(c.node(5).term_at(k + 1).unwrap(), Some(d.term));
    c.isolate(1);

    // Node 2 wins the next term with 2, 3 and 4 and at once proposes E =
    // remove 1; apart from its vote requests, its messages reach only 3.
    c.drop_if(|m| m.from == 2 && m.to >= 4 && !matches!(m.body, MessageBody::Vote(_)));
    c.elect(2);
    let e = c
        .node_mut(2)
        .propose_membership(ConfChange::Remove { id: 1 });
    c.stabilize();
    c.run_ticks(3);

    // Partition {2, 3} | {1, 4, 5}; node 1, whose configuration makes 5 a
    // voter, campaigns with 4 and 5.
    c.heal();
    c.partition(&[2, 3]);
    c.crash(1);
    c.restart(1);
    for _ in 0..5 {
        c.campaign(1);
        if c.node(1).role() == Role::Leader {
            break;
        }
    }
    c.run_ticks(3);

    assert_committed_prefixes_agree(&c);
    assert!(
        matches!(e, Err(Error::LeaderNotSettled { .. })),
        "a change proposed before the new leader's first commit is refused: {e:?}"
    );
}

/// Bug 2 (safety). A single voter becomes leader in the step that raises
/// its term; nothing of that term may leave before the term is durable, or
/// a crash lets it lead the same term twice with different entries.
#[test]
fn nothing_of_a_term_leaves_before_the_term_is_durable() {
    let mut c = Cluster::new(1);
    c.elect(1);
    c.add_member(2, MemLog::new(), |_| {});
    c.node_mut(1)
        .propose_membership(ConfChange::AddLearner {
            id: 2,
            address: "node-2".into(),
        })
        .unwrap();
    c.stabilize();
    c.propose_committed(b"before");
    c.run_ticks(2);

    // A restart makes 1 a follower; it campaigns for term T and (before the
    // fix) led it at once, and proposed X.
    c.crash(1);
    c.restart(1);
    c.node_mut(1).campaign().unwrap();
    if c.node(1).is_leader() {
        c.node_mut(1).propose(Bytes::from_static(b"X")).unwrap();
    }
    // The host sends what may leave before the write is durable...
    let ready = c.node_mut(1).ready().unwrap();
    for message in ready.messages {
        c.deliver(message);
    }
    // ...and crashes before the write (term T, its no-op, X) is durable.
    c.crash(1);
    c.stabilize(); // the learner persists whatever it received
    c.restart(1);

    // It wins term T (again, before the fix) and proposes Y.
    c.elect(1);
    c.node_mut(1).propose(Bytes::from_static(b"Y")).unwrap();
    c.stabilize();
    c.run_ticks(3);

    assert_eq!(
        c.applied(2),
        c.applied(1),
        "the learner applies exactly what the leader applies"
    );
    assert_committed_prefixes_agree(&c);
}

/// Bug 3 (robustness). A leader must not trust the indices in replication
/// answers: an answer beyond its log (up to `u64::MAX`) is dropped and
/// counted, the commit index does not move, and the node keeps working.
#[test]
fn answers_beyond_the_log_are_dropped_and_counted() {
    let mut c = Cluster::new(3);
    c.elect(1);
    c.propose_committed(b"a");
    c.isolate(3); // a single real copy besides the leader's would suffice
    let term = c.node(1).term();
    let commit = c.node(1).commit_index();
    c.propose(1, b"only on 1 and 2").unwrap();
    c.isolate(2);
    c.stabilize();
    let last = c.node(1).last_log_id().unwrap().index;
    assert_eq!(c.node(1).commit_index(), commit);

    let forged = [
        MessageBody::AppendResponse(AppendResponse::Success {
            match_index: last + 1,
        }),
        MessageBody::AppendResponse(AppendResponse::Success {
            match_index: last + 1000,
        }),
        MessageBody::AppendResponse(AppendResponse::Success {
            match_index: u64::MAX,
        }),
        MessageBody::AppendResponse(AppendResponse::Rejected {
            rejected: u64::MAX,
            hint: LogId::new(u64::MAX, u64::MAX),
        }),
        MessageBody::AppendResponse(AppendResponse::Rejected {
            rejected: last + 5,
            hint: LogId::new(term, last + 5),
        }),
        MessageBody::SnapshotResponse(SnapshotResponse {
            snapshot_index: last + 7,
            next_offset: u64::MAX,
            rejected: false,
            installed: true,
        }),
        MessageBody::SnapshotResponse(SnapshotResponse {
            snapshot_index: u64::MAX,
            next_offset: u64::MAX,
            rejected: true,
            installed: false,
        }),
        MessageBody::HeartbeatResponse(HeartbeatResponse { round: u64::MAX }),
    ];
    let before = c.node(1).status().counters.out_of_range_answers;
    for (i, body) in forged.into_iter().enumerate() {
        c.node_mut(1)
            .step(Message {
                from: 3,
                to: 1,
                term,
                body,
            })
            .unwrap();
        while c.node(1).has_ready() {
            c.process_ready(1); // panics if ready() fails
        }
        assert_eq!(
            c.node(1).commit_index(),
            commit,
            "forged answer {i} moved the commit index"
        );
        assert_eq!(
            c.node(1).status().counters.out_of_range_answers,
            before + i as u64 + 1,
            "forged answer {i} is counted"
        );
    }
    // A forged heartbeat round confirms no read.
    c.read(1, 77, ReadPolicy::ReadIndex).unwrap();
    c.stabilize();
    assert!(c.member(1).reads.iter().all(|r| r.id != 77));

    // The real answers still work.
    c.heal();
    c.run_ticks(3);
    assert!(c.node(1).is_leader());
    assert!(c.node(1).commit_index() >= last);
    assert!(
        c.member(1)
            .reads
            .iter()
            .any(|r| r.id == 77 && r.result.is_ok())
    );
}

/// Bug 4 (liveness). With lease reads on, a node that just restarted knows
/// no leader but refuses votes for an election timeout; it must refuse the
/// pre-vote too, or the pre-candidate raises its term anyway and disrupts
/// a healthy leader (PreVote exists to prevent exactly that; Raft thesis
/// §9.6).
#[test]
fn pre_vote_is_refused_where_the_vote_would_be() {
    let mut c = Cluster::with_config(3, |cfg| cfg.lease_reads = true);
    // Nodes that just started refuse votes for an election timeout: let
    // them elect a leader on their own.
    for _ in 0..100 {
        c.tick_all();
        if c.leader().is_some() {
            break;
        }
    }
    let leader = c.leader().expect("a leader");
    let (asker, restarted) = match leader {
        1 => (2, 3),
        2 => (3, 1),
        _ => (1, 2),
    };
    c.propose_committed(b"x");
    let term = c.node(leader).term();
    c.crash(restarted);
    c.restart(restarted);
    // The asker hears nothing from the leader for a while (a one-way cut),
    // and asks the others whether it could win.
    c.cut(leader, asker);
    for _ in 0..10 {
        c.tick(asker);
    }
    c.node_mut(asker).campaign().unwrap();
    c.stabilize();
    assert_eq!(
        c.node(asker).term(),
        term,
        "node {asker} raised its term although the real vote would be refused"
    );
    c.heal();
    c.run_ticks(5);
    assert_eq!(c.leader(), Some(leader), "the healthy leader stays");
    assert_eq!(c.node(leader).term(), term);
}

// ----- rules added while fixing the four (each also has a mutant in
// `cargo xtask mutants`) -------------------------------------------------------

/// Ids are never reused: a removed node's old incarnation is still named by
/// configurations in logs and by stale nodes, and a node re-added under it
/// with an empty store would replay them as it catches up (the simulator
/// found it electing itself under the bootstrap configuration).
#[test]
fn removed_ids_are_never_reused() {
    let mut c = Cluster::new(3);
    c.elect(1);
    c.propose_committed(b"x");
    c.node_mut(1)
        .propose_membership(ConfChange::Remove { id: 3 })
        .unwrap();
    c.stabilize();
    c.run_ticks(2);
    assert!(c.node(1).membership().removed().contains(&3));
    for change in [
        ConfChange::AddLearner {
            id: 3,
            address: "node-3".into(),
        },
        ConfChange::AddVoter {
            id: 3,
            address: Some("node-3".into()),
        },
    ] {
        assert_eq!(
            c.node_mut(1).propose_membership(change),
            Err(Error::ConfChange(raft_core::ConfChangeError::IdRemoved(3)))
        );
    }
    // A new id is welcome.
    c.add_member(4, MemLog::new(), |_| {});
    c.node_mut(1)
        .propose_membership(ConfChange::AddLearner {
            id: 4,
            address: "node-4".into(),
        })
        .unwrap();
}

/// A node that heard from a live leader within the election timeout votes
/// for no one, in any term. It can reach a candidate's term without a vote
/// request (any message of that term moves it there); the lease's promise
/// must hold there too.
#[test]
fn a_node_in_lease_votes_in_no_term() {
    let mut c = Cluster::with_config(3, |cfg| {
        cfg.lease_reads = true;
        cfg.pre_vote = false;
    });
    for _ in 0..100 {
        c.tick_all();
        if c.leader().is_some() {
            break;
        }
    }
    let leader = c.leader().expect("a leader");
    let (voter, candidate) = match leader {
        1 => (2, 3),
        2 => (3, 1),
        _ => (1, 2),
    };
    c.run_ticks(3);
    let term = c.node(leader).term();
    // The candidate, cut off from everyone, campaigns in term + 1 with the
    // same log as everyone else.
    c.isolate(candidate);
    for _ in 0..40 {
        c.tick(candidate);
        if c.node(candidate).term() > term {
            break;
        }
    }
    let candidate_term = c.node(candidate).term();
    assert!(candidate_term > term);
    c.take_messages();
    // A stale answer carries its term to the voter...
    c.heal();
    c.deliver(Message {
        from: candidate,
        to: voter,
        term: candidate_term,
        body: MessageBody::AppendResponse(AppendResponse::Rejected {
            rejected: 0,
            hint: LogId::default(),
        }),
    });
    assert_eq!(c.node(voter).term(), candidate_term);
    // ...and then the vote request of that very term arrives.
    c.deliver(Message {
        from: candidate,
        to: voter,
        term: candidate_term,
        body: MessageBody::Vote(raft_core::VoteRequest {
            last_log: c.node(candidate).last_log_id().unwrap(),
            transfer: false,
        }),
    });
    assert_ne!(
        c.node(voter).hard_state().vote,
        Some(candidate),
        "a node that heard from the leader just now voted for another"
    );
}

/// `campaign` follows the vote rule: a node that would refuse its vote to
/// others because a leader's lease may hold does not vote for itself.
#[test]
fn campaign_is_refused_while_a_leader_is_heard() {
    let mut c = Cluster::new(3);
    c.elect(1);
    c.run_ticks(2);
    assert_eq!(
        c.node_mut(2).campaign(),
        Err(Error::InLease {
            leader_hint: Some(1)
        })
    );
    // An election timeout without the leader, and it may.
    c.isolate(2);
    for _ in 0..10 {
        c.tick(2);
    }
    assert!(c.node_mut(2).campaign().is_ok());
}

/// A leader that removed itself and crashed before anyone received the
/// change holds the only copy of it. In a cluster of two, the other voter
/// cannot win (the removed node's log is ahead and it refuses its vote), so
/// the removed node must still campaign, under its latest configuration,
/// until the change commits (Raft thesis §4.2.2).
#[test]
fn a_removed_leader_holding_the_only_copy_still_campaigns() {
    let mut c = Cluster::new(2);
    c.elect(1);
    c.propose_committed(b"x");
    c.run_ticks(2);
    c.drop_if(|m| m.from == 1 && matches!(m.body, MessageBody::Append(_)));
    c.node_mut(1)
        .propose_membership(ConfChange::Remove { id: 1 })
        .unwrap();
    c.stabilize();
    c.crash(1);
    c.restart(1);
    c.heal();
    c.run_ticks(100);
    let leader = c.leader().expect("the cluster has a leader again");
    assert_eq!(leader, 2, "node 2 leads the configuration without node 1");
    assert!(!c.node(2).membership().contains(1));
}
