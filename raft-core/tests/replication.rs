//! Log replication scenarios, each citing where the case comes from.

#![cfg(feature = "testing")]

use raft_core::testing::Cluster;
use raft_core::{
    Entry, EntryPayload, HardState, LogWrite, MemLog, Membership, MessageBody, Role,
    bootstrap_entry,
};

fn command_log(membership: &Membership, terms: &[u64]) -> MemLog {
    command_log_in_term(membership, terms, *terms.iter().max().expect("non-empty"))
}

/// A log with entries of the given terms, on a node that has seen `term`.
fn command_log_in_term(membership: &Membership, terms: &[u64], term: u64) -> MemLog {
    // terms[0] is the bootstrap configuration entry (term 1).
    assert_eq!(terms[0], 1);
    let mut log = MemLog::new();
    let mut entries = vec![bootstrap_entry(membership.clone())];
    for (i, &term) in terms.iter().enumerate().skip(1) {
        let index = i as u64 + 1;
        let payload = EntryPayload::Command(bytes::Bytes::from(format!("{index}/{term}")));
        entries.push(Entry {
            term,
            index,
            payload,
        });
    }
    log.apply(&LogWrite {
        entries,
        hard_state: Some(HardState {
            term,
            vote: None,
            commit: 0,
        }),
        must_sync: true,
        ..LogWrite::default()
    })
    .expect("write");
    log
}

/// Raft paper §5.3, figure 7: follower logs that diverge from the leader's
/// in six ways (missing entries, extra uncommitted entries, both). The
/// leader of term 8 brings every one in line with its own log.
#[test]
fn figure_7_every_divergent_follower_is_brought_in_line() {
    let membership = Membership::with_voters((1..=7).map(|id| (id, format!("node-{id}"))));
    let leader = [1, 1, 1, 4, 4, 5, 5, 6, 6, 6];
    let followers: [&[u64]; 6] = [
        &[1, 1, 1, 4, 4, 5, 5, 6, 6],          // (a) missing one entry
        &[1, 1, 1, 4],                         // (b) missing many
        &[1, 1, 1, 4, 4, 5, 5, 6, 6, 6, 6],    // (c) one extra uncommitted entry
        &[1, 1, 1, 4, 4, 5, 5, 6, 6, 6, 7, 7], // (d) extra entries of a later term
        &[1, 1, 1, 4, 4, 4, 4],                // (e) missing and extra
        &[1, 1, 1, 2, 2, 2, 3, 3, 3, 3, 3],    // (f) many extra of other terms
    ];
    let mut c = Cluster::empty();
    c.add_member(1, command_log(&membership, &leader), |_| {});
    for (i, log) in followers.iter().enumerate() {
        c.add_member(i as u64 + 2, command_log(&membership, log), |_| {});
    }
    // Everyone has seen term 7 (follower d holds term-7 entries).
    c.elect(1);
    assert!(c.node(1).term() >= 8);
    c.run_ticks(5);
    let expected = c.log_ids(1);
    assert_eq!(expected.len(), 11, "the leader's ten entries and its no-op");
    for id in 2..=7 {
        assert_eq!(c.log_ids(id), expected, "follower {id} matches the leader");
        assert_eq!(c.node(id).commit_index(), 11);
    }
}

/// Raft paper §5.4.2, figure 8: a leader must not commit an entry from an
/// earlier term by counting replicas; only entries of its own term commit
/// by counting (earlier ones then commit indirectly).
#[test]
fn figure_8_previous_term_entry_is_not_committed_by_counting() {
    let membership = Membership::with_voters((1..=5).map(|id| (id, format!("node-{id}"))));
    // (b) of figure 8: S1 and S2 hold index 2 from term 2; S5 holds index 2
    // from term 3; S3 and S4 hold only index 1.
    let mut c = Cluster::empty();
    let one_at_a_time = |cfg: &mut raft_core::Config| cfg.max_append_entries = 1;
    // Everyone has seen term 3 (S5's brief leadership).
    c.add_member(
        1,
        command_log_in_term(&membership, &[1, 2], 3),
        one_at_a_time,
    );
    c.add_member(
        2,
        command_log_in_term(&membership, &[1, 2], 3),
        one_at_a_time,
    );
    c.add_member(3, command_log_in_term(&membership, &[1], 3), one_at_a_time);
    c.add_member(4, command_log_in_term(&membership, &[1], 3), one_at_a_time);
    c.add_member(
        5,
        command_log_in_term(&membership, &[1, 3], 3),
        one_at_a_time,
    );
    // (c): S1 is elected (term 4, by S3 and S4) and replicates its term-2
    // entry to S3 and S4, but its own no-op (index 3, term 4) does not get
    // through to them. S2 and S5 are out of reach.
    c.isolate(5);
    c.isolate(2);
    let acked = std::rc::Rc::new(std::cell::RefCell::new(std::collections::BTreeSet::new()));
    let seen = acked.clone();
    c.drop_if(move |m| match &m.body {
        MessageBody::AppendResponse(raft_core::AppendResponse::Success { match_index })
            if *match_index >= 2 =>
        {
            seen.borrow_mut().insert(m.from);
            false
        }
        MessageBody::Append(req) => {
            req.entries.iter().any(|e| e.index >= 3) && seen.borrow().contains(&m.to)
        }
        _ => false,
    });
    c.elect(1);
    c.run_ticks(3);
    assert_eq!(c.node(1).term(), 4);
    assert_eq!(acked.borrow().len(), 2, "S3 and S4 acknowledged index 2");
    for id in [1, 3, 4] {
        assert_eq!(
            c.node(id).term_at(2).unwrap(),
            Some(2),
            "node {id} holds the term-2 entry"
        );
        assert_eq!(
            c.node(id).term_at(3).unwrap_or(None),
            if id == 1 { Some(4) } else { None }
        );
    }
    assert_eq!(
        c.node(1).commit_index(),
        0,
        "the term-2 entry is on a majority but must not commit by counting"
    );
    for id in 1..=5 {
        assert!(
            c.node(id).commit_index() < 2,
            "no node treats index 2 as committed"
        );
    }
    // (d): S1 crashes; S5 is elected by S2, S3, S4 (its last term 3 beats
    // their term 2) and overwrites index 2. That is only safe because index
    // 2 was never committed.
    c.crash(1);
    c.heal();
    c.run_ticks(12);
    c.elect(5);
    c.run_ticks(3);
    for id in 2..=5 {
        assert_eq!(
            c.node(id).term_at(2).unwrap(),
            Some(3),
            "node {id} now holds S5's entry"
        );
    }
    for id in 2..=5 {
        assert!(
            c.applied(id).iter().all(|e| !(e.index == 2 && e.term == 2)),
            "nobody applied the overwritten entry"
        );
    }
}

/// The MIT 6.824 "backup" test and Raft paper §5.3 (fast backtracking
/// optimisation): a follower whose log diverged by 50+ entries is brought in
/// line in a few round trips, not one per entry.
#[test]
fn follower_diverged_by_many_entries_catches_up_fast() {
    let mut c = Cluster::with_config(5, |cfg| cfg.max_append_entries = 1000);
    c.elect(1);
    c.propose_committed(b"base");
    // Leader 1 with followers 2 cut off accumulates 60 uncommitted entries.
    c.partition(&[1, 2]);
    c.drop_if(|m| m.to == 2 && m.from == 1);
    for i in 0..60 {
        c.propose(1, format!("lost {i}").as_bytes()).unwrap();
    }
    c.stabilize();
    // Meanwhile 2 was elsewhere; the majority side moves on with 60 others.
    c.heal();
    c.partition(&[3, 4, 5]);
    c.crash(1);
    c.run_ticks(40);
    let leader = c.leader().expect("the majority side elects a leader");
    assert!([3, 4, 5].contains(&leader));
    for i in 0..60 {
        c.propose(leader, format!("kept {i}").as_bytes()).unwrap();
    }
    c.stabilize();
    // Node 1 comes back with 60 conflicting entries.
    c.heal();
    c.restart(1);
    let before = c.delivered.len();
    c.run_ticks(10);
    let rejections = c.delivered[before..]
        .iter()
        .filter(|m| {
            m.from == 1
                && matches!(
                    m.body,
                    MessageBody::AppendResponse(raft_core::AppendResponse::Rejected { .. })
                )
        })
        .count();
    assert_eq!(
        c.log_ids(1),
        c.log_ids(leader),
        "node 1's log now matches the leader's"
    );
    assert!(
        rejections <= 3,
        "fast backtracking: {rejections} rejected probes for 60 divergent entries"
    );
    assert_eq!(c.node(leader).role(), Role::Leader);
}

/// Raft paper §5.3: a leader batches entries, and followers in the
/// replicate state receive them pipelined (several messages in flight).
#[test]
fn batching_and_pipelining() {
    let mut c = Cluster::with_config(3, |cfg| {
        cfg.max_append_entries = 16;
        cfg.max_inflight = 4;
    });
    c.elect(1);
    c.propose_committed(b"warm up");
    for i in 0..100 {
        c.propose(1, format!("cmd {i}").as_bytes()).unwrap();
    }
    // One batch of output: several AppendEntries per follower, each capped.
    c.process_ready(1);
    let appends: Vec<_> = c
        .take_messages()
        .into_iter()
        .filter(|m| m.to == 2)
        .filter_map(|m| match m.body {
            MessageBody::Append(req) => Some(req.entries.len()),
            _ => None,
        })
        .collect();
    assert_eq!(
        appends,
        vec![16, 16, 16, 16],
        "four messages in flight of 16 entries each"
    );
    c.run_ticks(5);
    for id in 1..=3 {
        assert_eq!(c.applied(id).len(), 101, "node {id} applied everything");
    }
}

/// A new commit index travels with the next AppendEntries or heartbeat, or
/// at the next tick: no empty AppendEntries per move of the commit index,
/// which under a light load doubled the messages per command. Followers
/// still learn it within a tick.
#[test]
fn the_commit_index_rides_with_the_next_message_or_tick() {
    // Heartbeats far apart, so that the tick below sends none.
    let mut c = Cluster::with_config(3, |cfg| {
        cfg.heartbeat_ticks = 5;
        cfg.election_ticks = 20;
    });
    c.elect(1);
    c.propose_committed(b"a");
    c.run_ticks(1);
    let before = c.delivered.len();
    let x = c.propose(1, b"x").unwrap();
    c.stabilize();
    assert_eq!(c.node(1).commit_index(), x.index);
    let appends = c.delivered[before..]
        .iter()
        .filter(|m| matches!(m.body, MessageBody::Append(_)))
        .count();
    assert_eq!(appends, 2, "one AppendEntries per follower, none empty");
    // The next command carries it.
    let y = c.propose(1, b"y").unwrap();
    c.stabilize();
    for id in [2, 3] {
        assert!(c.node(id).commit_index() >= x.index, "node {id}");
    }
    // With nothing else to send, a tick tells them.
    let before = c.delivered.len();
    c.run_ticks(1);
    assert!(
        !c.delivered[before..]
            .iter()
            .any(|m| matches!(m.body, MessageBody::Heartbeat(_))),
        "no heartbeat in this tick: the commit index came on its own"
    );
    for id in [2, 3] {
        assert_eq!(c.node(id).commit_index(), y.index, "node {id}");
        assert_eq!(c.node(id).applied_index(), y.index, "node {id}");
    }
}
