//! Snapshot and compaction scenarios (Raft paper §7; TESTING.md layer 2).

#![cfg(feature = "testing")]

use bytes::Bytes;
use raft_core::testing::Cluster;
use raft_core::{
    Config, Error, LogId, MemLog, Membership, Message, MessageBody, Node, ReplicationState,
    SnapshotChunk, SnapshotMeta, next_snapshot_threshold,
};

fn snapshotting(cfg: &mut Config) {
    cfg.snapshot.threshold = 20;
    cfg.snapshot.retention = 5;
    cfg.snapshot.chunk_size = 100;
    cfg.snapshot.chunks_in_flight = 2;
}

/// The dynamic threshold (DESIGN.md): after compaction the next threshold is
/// max(initial, 1.5 × entries left), so a log that stays large does not
/// trigger a snapshot for every new entry.
#[test]
fn compaction_threshold_grows_with_what_remains() {
    assert_eq!(next_snapshot_threshold(100_000, 80_000), 120_000);
    assert_eq!(
        next_snapshot_threshold(100_000, 10_000),
        100_000,
        "never below the initial value"
    );
    assert_eq!(next_snapshot_threshold(100_000, 0), 100_000);
    assert_eq!(next_snapshot_threshold(100_000, 200_000), 300_000);
}

/// The same rule inside a node: with an applied index lagging far behind,
/// a compaction leaves many entries and the threshold rises; once the log
/// is short again it falls back to the initial value.
#[test]
fn node_threshold_rises_for_a_log_that_stays_large_and_returns() {
    let mut c = Cluster::with_config(1, |cfg| {
        cfg.snapshot.threshold = 100;
        cfg.snapshot.retention = 10;
    });
    c.elect(1);
    c.member_mut(1).auto_snapshot = false;
    for i in 0..100 {
        c.propose(1, format!("a{i}").as_bytes()).unwrap();
    }
    c.stabilize();
    // Snapshot at the applied index (102), then 80 more entries arrive before
    // the host reports the snapshot: 80 + 10 retained remain after compaction.
    let applied = c.node(1).applied_index();
    let data = c.member(1).machine.snapshot(0);
    let meta = c
        .node(1)
        .snapshot_meta_for(applied, data.len() as u64)
        .unwrap();
    for i in 0..80 {
        c.propose(1, format!("b{i}").as_bytes()).unwrap();
    }
    c.node_mut(1).store_mut().save_snapshot(meta.clone(), data);
    c.node_mut(1).on_snapshot_built(&meta).unwrap();
    assert_eq!(c.node(1).snapshot_threshold(), 135, "1.5 × 90 entries left");
    c.stabilize();
    c.snapshot(1);
    assert_eq!(
        c.node(1).snapshot_threshold(),
        100,
        "back to the initial value"
    );
}

/// Raft paper §7: a follower far behind the leader's first index receives a
/// snapshot in chunks; a lost chunk is resent and the transfer resumes from
/// the last acknowledged offset; the follower installs it and continues
/// with the log after it.
#[test]
fn far_behind_follower_gets_snapshot_in_chunks_with_a_lost_chunk_resent() {
    let mut c = Cluster::with_config(3, snapshotting);
    c.elect(1);
    c.isolate(3);
    for i in 0..60 {
        c.propose(1, format!("v{i}").as_bytes()).unwrap();
        c.stabilize();
    }
    assert!(
        c.node(1).first_index().unwrap() > 10,
        "the leader compacted its log"
    );
    // Lose the second chunk once.
    let lost = std::rc::Rc::new(std::cell::Cell::new(false));
    let flag = lost.clone();
    c.heal();
    c.drop_if(move |m| match &m.body {
        MessageBody::Snapshot(chunk) if chunk.offset > 0 && !flag.get() => {
            flag.set(true);
            true
        }
        _ => false,
    });
    c.run_ticks(30);
    assert!(lost.get(), "a chunk was lost");
    let chunks: Vec<u64> = c
        .delivered
        .iter()
        .filter_map(|m| match &m.body {
            MessageBody::Snapshot(chunk) if m.to == 3 => Some(chunk.offset),
            _ => None,
        })
        .collect();
    assert!(
        chunks.len() >= 3,
        "the snapshot went in several chunks: {chunks:?}"
    );
    let rejected = c
        .delivered
        .iter()
        .any(|m| matches!(&m.body, MessageBody::SnapshotResponse(r) if r.rejected));
    assert!(rejected, "the follower asked for the missing chunk again");
    assert_eq!(c.node(3).status().counters.snapshots_installed, 1);
    assert_eq!(
        c.member(3).machine,
        c.member(1).machine,
        "same state after install and catch-up"
    );
    // And it continues from the log after the snapshot.
    c.propose_committed(b"after");
    c.run_ticks(3);
    assert_eq!(c.member(3).machine, c.member(1).machine);
    let leader = c.node(1).status();
    let f3 = leader.followers.iter().find(|f| f.id == 3).unwrap();
    assert_eq!(f3.state, ReplicationState::Replicate);
}

/// Snapshots and compaction under load: every node compacts repeatedly while
/// proposals keep flowing, and all state machines agree.
#[test]
fn compaction_under_load() {
    let mut c = Cluster::with_config(3, snapshotting);
    c.elect(1);
    for i in 0..300 {
        c.propose(1, format!("load {i}").as_bytes()).unwrap();
        if i % 7 == 0 {
            c.tick_all();
        }
    }
    c.run_ticks(10);
    for id in 1..=3 {
        let status = c.node(id).status();
        assert!(
            status.counters.snapshots_built >= 5,
            "node {id} snapshotted repeatedly: {:?}",
            status.counters
        );
        assert!(
            status.first_index > 250,
            "node {id} compacted: first index {}",
            status.first_index
        );
        assert_eq!(c.member(id).machine, c.member(1).machine);
    }
}

/// A node restarts from its snapshot plus the log after it.
#[test]
fn restart_from_a_snapshot() {
    let mut c = Cluster::with_config(3, snapshotting);
    c.elect(1);
    for i in 0..50 {
        c.propose(1, format!("x{i}").as_bytes()).unwrap();
        c.stabilize();
    }
    // Followers learn the last commit index with the next message: a tick.
    c.run_ticks(1);
    let before = c.member(2).machine.clone();
    assert!(
        c.node(2).store().snapshot().is_some(),
        "node 2 has a snapshot"
    );
    c.crash(2);
    c.restart(2);
    c.run_ticks(3);
    assert_eq!(
        c.member(2).machine,
        before,
        "snapshot plus log replay restore the state"
    );
    assert!(c.node(2).first_index().unwrap() > 1);
}

/// A follower that receives snapshot chunks from leader 1 in term 2.
fn follower() -> Node<MemLog> {
    let membership = Membership::with_voters([(1, "n1".to_string()), (2, "n2".to_string())]);
    Node::new(Config::new(2), MemLog::bootstrap(membership)).unwrap()
}

fn chunk(index: u64, offset: u64, data: &'static [u8], size: u64, done: bool) -> Message {
    let membership = Membership::with_voters([(1, "n1".to_string()), (2, "n2".to_string())]);
    let meta = SnapshotMeta {
        last: LogId::new(2, index),
        membership,
        membership_index: 1,
        size,
    };
    Message {
        from: 1,
        to: 2,
        term: 2,
        body: MessageBody::Snapshot(SnapshotChunk {
            meta,
            offset,
            data: Bytes::from_static(data),
            done,
        }),
    }
}

/// Found by the simulator (seed 3713): the first chunk of a newer snapshot
/// arriving after the last chunk of another, before the install was
/// written, ended up in the same batch ahead of the install and corrupted
/// it. The follower now ignores new chunks until the install is durable
/// (the leader resends them).
#[test]
fn new_snapshot_chunks_wait_for_a_pending_install() {
    let mut node = follower();
    node.step(chunk(50, 0, b"first snapshot", 14, true))
        .unwrap();
    node.step(chunk(80, 0, b"second", 12, false)).unwrap();
    let ready = node.ready().unwrap();
    assert_eq!(
        ready.write.snapshot_chunks.len(),
        1,
        "only the first snapshot's chunk is written"
    );
    assert_eq!(
        ready.write.install_snapshot.as_ref().map(|m| m.last.index),
        Some(50)
    );
    node.store_mut()
        .apply(&ready.write)
        .expect("the write is consistent");
    node.on_persisted(ready.number).unwrap();
    // Once installed, the newer snapshot is accepted.
    node.step(chunk(80, 0, b"second", 12, false)).unwrap();
    let ready = node.ready().unwrap();
    assert_eq!(ready.write.snapshot_chunks.len(), 1);
    assert!(ready.write.install_snapshot.is_none());
}

/// Found by the simulator (seed 6526): the host built a snapshot of an index
/// that an incoming snapshot was about to replace, and the node failed with
/// a storage error. It now refuses the host's snapshot as obsolete.
#[test]
fn host_snapshot_older_than_a_pending_install_is_refused() {
    let mut node = follower();
    node.step(chunk(50, 0, b"snapshot", 8, true)).unwrap();
    let result = node.snapshot_meta_for(0, 10);
    assert!(
        matches!(
            result,
            Err(Error::SnapshotObsolete {
                index: 0,
                newest: 50
            })
        ),
        "{result:?}"
    );
    let ready = node.ready().unwrap();
    node.store_mut().apply(&ready.write).unwrap();
    node.on_persisted(ready.number).unwrap();
    assert_eq!(node.applied_index(), 50);
    let result = node.snapshot_meta_for(50, 10);
    assert!(
        matches!(result, Err(Error::SnapshotObsolete { .. })),
        "{result:?}"
    );
}
