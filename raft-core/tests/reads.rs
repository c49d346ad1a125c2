//! Linearizable read scenarios: ReadIndex and leases (Raft thesis §6.4).

#![cfg(feature = "testing")]

use raft_core::testing::Cluster;
use raft_core::{Config, Error, MessageBody, ReadPolicy, ReadState};

fn leases(cfg: &mut Config) {
    cfg.lease_reads = true;
}

fn read_result(c: &Cluster, id: u64, read: u64) -> Option<Result<u64, Error>> {
    c.member(id)
        .reads
        .iter()
        .find(|r: &&ReadState| r.id == read)
        .map(|r| r.result.clone())
}

/// ReadIndex on the leader: one heartbeat round confirms leadership; the
/// read index is the commit index when the read arrived, and the read comes
/// out once applied reaches it.
#[test]
fn read_index_on_the_leader_takes_one_heartbeat_round() {
    let mut c = Cluster::new(3);
    c.elect(1);
    c.propose_committed(b"x");
    let commit = c.node(1).commit_index();
    let before = c.delivered.len();
    c.read(1, 7, ReadPolicy::ReadIndex).unwrap();
    c.stabilize();
    assert_eq!(read_result(&c, 1, 7), Some(Ok(commit)));
    let heartbeats = c.delivered[before..]
        .iter()
        .filter(|m| matches!(m.body, MessageBody::Heartbeat(_)))
        .count();
    assert_eq!(heartbeats, 2, "one round to both followers");
    let appends = c.delivered[before..]
        .iter()
        .filter(|m| matches!(m.body, MessageBody::Append(_)))
        .count();
    assert_eq!(appends, 0, "nothing written to the log");
}

/// Reads that arrive while a round is unconfirmed wait for it and then
/// share the next round: one round in flight, not one per output batch.
#[test]
fn reads_arriving_during_a_round_share_the_next_one() {
    let heartbeats = |messages: &[raft_core::Message]| {
        messages
            .iter()
            .filter(|m| matches!(m.body, MessageBody::Heartbeat(_)))
            .count()
    };
    let mut c = Cluster::new(3);
    c.elect(1);
    c.propose_committed(b"x");
    c.read(1, 1, ReadPolicy::ReadIndex).unwrap();
    c.process_ready(1);
    let first_round = c.take_messages();
    assert_eq!(heartbeats(&first_round), 2, "a round for the first read");
    for read in 2..=5 {
        c.read(1, read, ReadPolicy::ReadIndex).unwrap();
        c.process_ready(1);
    }
    assert_eq!(
        heartbeats(&c.take_messages()),
        0,
        "no round while the first is unconfirmed"
    );
    for message in first_round {
        c.deliver(message);
    }
    let before = c.delivered.len();
    c.stabilize();
    let commit = c.node(1).commit_index();
    for read in 1..=5 {
        assert_eq!(read_result(&c, 1, read), Some(Ok(commit)), "read {read}");
    }
    assert_eq!(
        heartbeats(&c.delivered[before..]),
        2,
        "one more round served the four reads that waited"
    );
}

/// Followers obtain a read index from the leader and serve once their own
/// applied index reaches it.
#[test]
fn follower_read_goes_through_the_leader() {
    let mut c = Cluster::new(3);
    c.elect(1);
    c.propose_committed(b"x");
    c.read(2, 9, ReadPolicy::ReadIndex).unwrap();
    c.stabilize();
    let index = read_result(&c, 2, 9).expect("answered").expect("succeeded");
    assert_eq!(index, c.node(1).commit_index());
    assert!(c.node(2).applied_index() >= index);
}

/// A new leader serves no read until its own no-op has committed.
#[test]
fn new_leader_serves_no_read_before_its_noop_commits() {
    let mut c = Cluster::new(3);
    c.drop_if(|m| matches!(m.body, MessageBody::Append(_)));
    c.elect(1);
    c.read(1, 1, ReadPolicy::ReadIndex).unwrap();
    c.run_ticks(3);
    assert_eq!(
        read_result(&c, 1, 1),
        None,
        "held back: nothing of this term is committed"
    );
    c.heal();
    c.run_ticks(2);
    assert_eq!(read_result(&c, 1, 1), Some(Ok(c.node(1).commit_index())));
}

/// A deposed leader cannot confirm its leadership: its pending reads fail
/// instead of returning stale data.
#[test]
fn partitioned_leader_does_not_serve_read_index() {
    let mut c = Cluster::new(3);
    c.elect(1);
    c.isolate(1);
    c.read(1, 3, ReadPolicy::ReadIndex).unwrap();
    c.run_ticks(30);
    assert!(
        !matches!(read_result(&c, 1, 3), Some(Ok(_))),
        "never confirmed"
    );
    assert!(
        matches!(read_result(&c, 1, 3), Some(Err(Error::NotLeader { .. }))),
        "failed once it stepped down"
    );
}

/// Lease reads: served without a round trip while the lease holds.
#[test]
fn lease_read_needs_no_round_trip() {
    let mut c = Cluster::with_config(3, leases);
    c.run_ticks(12);
    c.elect(1);
    c.run_ticks(2);
    let before = c.delivered.len();
    c.read(1, 5, ReadPolicy::Lease).unwrap();
    c.process_ready(1);
    assert_eq!(read_result(&c, 1, 5), Some(Ok(c.node(1).commit_index())));
    assert_eq!(c.delivered.len(), before, "no messages needed");
}

/// TESTING.md: a partitioned leader stops serving lease reads. Its lease,
/// shorter than the election timeout that followers wait before voting for
/// someone else, runs out; from then on it serves none (it falls back to
/// ReadIndex, which cannot complete, and then steps down), while the
/// majority elects a new leader and moves on.
#[test]
fn partitioned_leader_stops_serving_lease_reads() {
    let mut c = Cluster::with_config(3, leases);
    c.run_ticks(12);
    c.elect(1);
    c.run_ticks(2);
    c.isolate(1);
    let election = c.node(1).config().election_ticks;
    let mut served = Vec::new();
    for tick in 0..(3 * election) {
        let read = 100 + tick;
        if c.read(1, read, ReadPolicy::Lease).is_ok() {
            c.process_ready(1);
            if matches!(read_result(&c, 1, read), Some(Ok(_))) {
                served.push(tick);
            }
        }
        c.tick_all();
    }
    assert!(
        !served.is_empty(),
        "the lease served reads right after the partition"
    );
    assert!(
        served.iter().all(|&t| t < election - 2),
        "lease reads only within the lease (< {} ticks): served at {served:?}",
        election - 2
    );
    for tick in 0..(3 * election) {
        assert!(!matches!(read_result(&c, 1, 100 + tick), Some(Ok(_))) || served.contains(&tick));
    }
    let new = c.leader().expect("a new leader");
    assert_ne!(new, 1);
    c.propose_committed(b"newer write");
    assert!(c.node(1).commit_index() < c.node(new).commit_index());
}

/// Lease reads must be enabled, and only leaders serve them.
#[test]
fn lease_reads_are_opt_in() {
    let mut c = Cluster::new(3);
    c.elect(1);
    assert_eq!(
        c.read(1, 1, ReadPolicy::Lease),
        Err(Error::LeaseReadsDisabled)
    );
    let mut c = Cluster::with_config(3, leases);
    c.run_ticks(12);
    c.elect(1);
    assert!(matches!(
        c.read(2, 1, ReadPolicy::Lease),
        Err(Error::NotLeader {
            leader_hint: Some(1)
        })
    ));
    let mut bad = Config::new(1);
    bad.lease_reads = true;
    bad.check_quorum = false;
    assert!(bad.validate().is_err(), "lease reads require CheckQuorum");
}

/// A follower's read answered with an index above the commit index the
/// follower was told (its round's heartbeat went out while the entry was
/// still on its way to it) brings that commit index along at once, so the
/// follower serves without waiting for a tick. (The leader no longer sends
/// an empty AppendEntries each time its commit index moves.)
#[test]
fn a_follower_read_answered_above_its_commit_gets_the_commit_index_at_once() {
    let mut c = Cluster::new(3);
    c.elect(1);
    c.propose_committed(b"a");
    let x = c.propose(1, b"x").unwrap();
    c.process_ready(1);
    let appends = c.take_messages();
    // Node `to` stores what `appends` carry for it and its acknowledgement
    // reaches the leader.
    let append_and_acknowledge = |c: &mut Cluster, to: u64| {
        for m in appends.iter().filter(|m| m.to == to) {
            c.deliver(m.clone());
        }
        c.process_ready(to);
        for m in c.take_messages() {
            c.deliver(m);
        }
        c.process_ready(1);
    };
    // Node 3 stores x and acknowledges it: x commits with nodes 1 and 3.
    append_and_acknowledge(&mut c, 3);
    assert_eq!(c.node(1).commit_index(), x.index);
    let held: Vec<_> = c.take_messages();
    // Node 2 asks for a read before x reached it: the round's heartbeat
    // can only tell it a commit index up to what it holds.
    c.read(2, 7, ReadPolicy::ReadIndex).unwrap();
    c.process_ready(2);
    for m in c.take_messages() {
        c.deliver(m);
    }
    c.process_ready(1);
    let round = c.take_messages();
    // x reaches node 2 and its acknowledgement the leader before the
    // round's heartbeat does: nothing else goes to node 2 afterwards.
    append_and_acknowledge(&mut c, 2);
    for m in held.into_iter().chain(round).chain(c.take_messages()) {
        c.deliver(m);
    }
    c.stabilize();
    assert_eq!(read_result(&c, 2, 7), Some(Ok(x.index)));
    assert!(c.node(2).applied_index() >= x.index);
}
