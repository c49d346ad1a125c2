//! Time in the driver: ticks come from the monotonic clock and are handled
//! before client work, so a flood of requests cannot starve them (no missed
//! heartbeats, no spurious election, no lease outliving real time).

mod common;

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
        let client = cluster.client_of(vec![leader.clone()]).await;
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
