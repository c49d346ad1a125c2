//! Time in the driver: ticks come from the monotonic clock and are handled
//! before client work, so a flood of requests cannot starve them (no missed
//! heartbeats, no spurious election, no lease outliving real time).

mod common;

use raft_transport_quic::Role;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use raft_kv::protocol::{Consistency, ReadOp};

/// 128 clients flood the leader with lease reads and writes for five
/// seconds (ten election timeouts of 500 ms, the timing the chaos runs use,
/// on a machine the flood keeps busy): the leader's heartbeats
/// keep flowing (no follower ever goes an election timeout without hearing
/// from it), nobody starts an election, and the term does not move.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_flood_of_requests_does_not_starve_ticks() {
    let cluster = common::TestCluster::start(3, |config| {
        config.raft.tick_ms = 50;
        config.raft.election_ticks = 10;
        config.raft.heartbeat_ticks = 2;
        config.raft.lease_reads = true;
    })
    .await;
    let client = cluster.client().await;
    client.put("warm", "up").await.unwrap();
    let status = |endpoint: String| {
        let client = &client;
        async move { client.status_of(&endpoint).await.unwrap() }
    };
    let mut leader = None;
    for endpoint in &cluster.endpoints {
        let s = status(endpoint.clone()).await;
        if s.raft.role == raft_core::Role::Leader {
            leader = Some((endpoint.clone(), s.raft.term));
        }
    }
    let (leader, term) = leader.expect("a leader after a write");
    let elections_before: u64 = {
        let mut total = 0;
        for endpoint in &cluster.endpoints {
            total += status(endpoint.clone())
                .await
                .raft
                .counters
                .elections_started;
        }
        total
    };

    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for i in 0..128u64 {
        // Four client identities of 32 connections each: one identity may
        // hold at most 128 connections to a node.
        let client = cluster
            .client_with_role(
                &format!("flood-{}", i % 4),
                Role::ReadWrite,
                vec![leader.clone()],
            )
            .await;
        let (stop, done) = (stop.clone(), done.clone());
        tasks.push(tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let key = Bytes::from(format!("flood/{}", (i * 7 + n) % 64));
                if n % 4 == 0 {
                    let _ = client.put(key, "x").await;
                } else {
                    let _ = client.read(ReadOp::Get { key }, Consistency::Lease).await;
                }
                n += 1;
                done.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    // Watch the followers while the flood runs.
    let watcher = cluster.client().await;
    let started = Instant::now();
    let mut worst_contact = 0;
    while started.elapsed() < Duration::from_secs(5) {
        for endpoint in &cluster.endpoints {
            if *endpoint == leader {
                continue;
            }
            if let Ok(s) = watcher.status_of(endpoint).await {
                worst_contact = worst_contact.max(s.raft.leader_contact_ticks);
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        task.await.unwrap();
    }
    let served = done.load(Ordering::Relaxed);
    assert!(served > 1000, "the flood was a flood ({served} requests)");

    let mut elections_after = 0;
    for endpoint in &cluster.endpoints {
        let s = status(endpoint.clone()).await;
        elections_after += s.raft.counters.elections_started;
        assert_eq!(
            s.raft.term, term,
            "{endpoint}: the term moved during the flood"
        );
    }
    assert_eq!(
        elections_after, elections_before,
        "an election started during the flood"
    );
    assert!(
        worst_contact < 10,
        "a follower went {worst_contact} ticks (an election timeout is 10) without hearing from the leader"
    );
    println!(
        "{served} requests in 5 s; followers heard from the leader at least every {worst_contact} ticks"
    );
    cluster.shutdown().await;
}

/// A leader whose driver stalls (as under SIGSTOP) past its lease, cut off
/// from the others, must not serve a lease read that queued during the
/// stall from the lease it held before: meanwhile the others elected a new
/// leader and took a write. Ticks are caught up from the monotonic clock
/// after the read is taken off the queue and before it is decided, so the
/// lease has run out by then.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_leader_paused_past_its_lease_serves_no_stale_read() {
    use raft_transport_quic::{Fault, FaultRule};
    let cluster = common::TestCluster::start(3, |config| {
        config.raft.tick_ms = 50;
        config.raft.election_ticks = 10;
        config.raft.heartbeat_ticks = 2;
        config.raft.lease_reads = true;
        config.enable_fault_injection = true;
    })
    .await;
    let client = cluster.client().await;
    client.put("k", "before").await.unwrap();
    let mut leader = None;
    for (i, endpoint) in cluster.endpoints.iter().enumerate() {
        let s = client.status_of(endpoint).await.unwrap();
        if s.raft.role == raft_core::Role::Leader {
            leader = Some((i, s.raft.id));
        }
    }
    let (index, leader_id) = leader.expect("a leader after a write");
    let leader_endpoint = cluster.endpoints[index].clone();
    // The leader's lease is fresh: a lease read through it works.
    let pinned = cluster.client_of(vec![leader_endpoint.clone()]).await;
    let read = || async {
        pinned
            .read(
                ReadOp::Get {
                    key: Bytes::from_static(b"k"),
                },
                Consistency::Lease,
            )
            .await
    };
    let value = read().await.unwrap().kvs.pop().unwrap().value;
    assert_eq!(value, Bytes::from_static(b"before"));

    // Cut the leader off from the others (both ways, on every node), and
    // stall its driver for ten election timeouts.
    let isolate = [
        FaultRule {
            from: Some(leader_id),
            to: None,
            fault: Fault::Partition,
        },
        FaultRule {
            from: None,
            to: Some(leader_id),
            fault: Fault::Partition,
        },
    ];
    for endpoint in &cluster.endpoints {
        client.set_faults(endpoint, isolate.to_vec()).await.unwrap();
    }
    let stall = Duration::from_secs(5);
    cluster.servers[index].stall_driver_for_test(stall).await;
    let stalled_at = Instant::now();
    // A lease read queues at the stalled leader...
    let queued = tokio::spawn(async move {
        let pinned = pinned;
        pinned
            .read(
                ReadOp::Get {
                    key: Bytes::from_static(b"k"),
                },
                Consistency::Lease,
            )
            .await
    });
    // ...while the others elect a new leader and take a write.
    let mut new_leader = None;
    while new_leader.is_none() && stalled_at.elapsed() < stall {
        for endpoint in cluster.endpoints.iter().filter(|e| **e != leader_endpoint) {
            if let Ok(s) = client.status_of(endpoint).await {
                if s.raft.role == raft_core::Role::Leader {
                    new_leader = Some(endpoint.clone());
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let new_leader = new_leader.expect("the others elected a leader during the stall");
    cluster
        .client_of(vec![new_leader])
        .await
        .put("k", "after")
        .await
        .unwrap();
    assert!(
        stalled_at.elapsed() < stall,
        "the new leader took the write while the old one was still stalled"
    );
    match queued.await.unwrap() {
        Ok(mut result) => {
            let value = result.kvs.pop().map(|kv| kv.value);
            assert_ne!(
                value,
                Some(Bytes::from_static(b"before")),
                "the old leader served a stale lease read after its lease ran out"
            );
        }
        Err(e) => println!("the old leader refused the lease read: {e}"),
    }
    cluster.shutdown().await;
}
