//! Persistence scenarios (the MIT 6.824 "persist" tests, Raft paper §5.6
//! and figure 2's "persistent state"): nodes crash and restart, alone, in
//! groups and all at once, over an unreliable network, and nothing committed
//! is lost or reordered.

#![cfg(feature = "testing")]

use std::cell::RefCell;
use std::rc::Rc;

use raft_core::Entry;
use raft_core::testing::Cluster;
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Drops a share of all messages, decided by a seeded RNG (replacing any
/// earlier filter).
fn unreliable(c: &mut Cluster, seed: u64, loss: f64) {
    c.heal();
    let rng = Rc::new(RefCell::new(ChaCha8Rng::seed_from_u64(seed)));
    c.drop_if(move |_| rng.borrow_mut().random_bool(loss));
}

/// Runs until some node leads and `data` is committed there.
fn commit(c: &mut Cluster, data: &[u8]) -> bool {
    for _ in 0..500 {
        if let Some(leader) = c.leader() {
            if c.propose(leader, data).is_ok() {
                for _ in 0..60 {
                    c.tick_all();
                    if c.applied(leader).iter().any(|e| payload(e) == data) {
                        return true;
                    }
                    if c.leader() != Some(leader) {
                        break;
                    }
                }
            }
        }
        c.tick_all();
    }
    false
}

fn payload(e: &Entry) -> &[u8] {
    match &e.payload {
        raft_core::EntryPayload::Command(d) => d,
        _ => &[],
    }
}

/// Every running node applied exactly the committed sequence, in order, with
/// nothing missing (restarted nodes re-apply from their log).
fn assert_all_applied(c: &mut Cluster, committed: &[Vec<u8>]) {
    c.heal();
    c.run_ticks(30);
    for id in c.ids() {
        let applied: Vec<&[u8]> = c.applied(id).iter().map(payload).collect();
        let expected: Vec<&[u8]> = committed.iter().map(Vec::as_slice).collect();
        // Lost proposals (never acknowledged) may be in between; committed
        // ones must all be there, in order.
        let mut it = applied.iter();
        for want in &expected {
            assert!(
                it.any(|got| got == want),
                "node {id} lost or reordered {:?}",
                String::from_utf8_lossy(want)
            );
        }
    }
}

#[test]
fn crash_and_restart_all_nodes_repeatedly() {
    let mut c = Cluster::new(3);
    let mut committed = Vec::new();
    for round in 0..8u64 {
        unreliable(&mut c, round, 0.1);
        let data = format!("all round {round}").into_bytes();
        assert!(commit(&mut c, &data), "round {round}: commit");
        committed.push(data);
        for id in c.ids() {
            c.crash(id);
        }
        for id in c.ids() {
            c.restart(id);
        }
        c.heal();
    }
    assert_all_applied(&mut c, &committed);
}

#[test]
fn crash_and_restart_the_leader_repeatedly() {
    let mut c = Cluster::new(5);
    let mut committed = Vec::new();
    for round in 0..8u64 {
        unreliable(&mut c, 100 + round, 0.1);
        let data = format!("leader round {round}").into_bytes();
        assert!(commit(&mut c, &data), "round {round}: commit");
        committed.push(data);
        let leader = c.leader().expect("leader");
        c.crash(leader);
        c.run_ticks(5);
        c.restart(leader);
    }
    assert_all_applied(&mut c, &committed);
}

#[test]
fn crash_and_restart_a_minority_repeatedly() {
    let mut c = Cluster::new(5);
    let mut committed = Vec::new();
    for round in 0..8u64 {
        unreliable(&mut c, 200 + round, 0.15);
        let minority = [(round % 5) + 1, ((round + 2) % 5) + 1];
        for id in minority {
            c.crash(id);
        }
        let data = format!("minority round {round}").into_bytes();
        assert!(
            commit(&mut c, &data),
            "round {round}: a majority commits while two are down"
        );
        committed.push(data);
        for id in minority {
            c.restart(id);
        }
    }
    assert_all_applied(&mut c, &committed);
}

/// A vote survives a crash: a node that voted in a term and restarts does
/// not vote for someone else in that term (Raft paper figure 2, votedFor).
#[test]
fn vote_survives_restart() {
    let mut c = Cluster::new(3);
    c.isolate(3);
    c.elect(1);
    let term = c.node(1).term();
    assert_eq!(c.node(2).hard_state().vote, Some(1));
    c.crash(2);
    c.restart(2);
    assert_eq!(c.node(2).term(), term);
    assert_eq!(c.node(2).hard_state().vote, Some(1), "the vote was durable");
}
