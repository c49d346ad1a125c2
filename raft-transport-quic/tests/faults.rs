//! The fault-injection seam: partitions (both ways, one way, isolation),
//! drops and delays between named nodes, changed at runtime, and off by
//! default.

mod common;

use std::time::{Duration, Instant};

use common::*;
use raft_core::adapters::Transport;
use raft_transport_quic::{FaultInjector, QuicTransport};

async fn pair(faults_on_1: Option<FaultInjector>) -> (QuicTransport, QuicTransport) {
    init_tracing();
    let ca = ca();
    let mut cfg = config(1, CLUSTER, loopback());
    cfg.fault_injector = faults_on_1;
    let a = start_with(&ca, cfg).await;
    let b = start(&ca, 2).await;
    connect_all(&[&a, &b]);
    wait_linked(&a, &b).await;
    wait_linked(&b, &a).await;
    (a, b)
}

/// Sends a few heartbeats and says whether any arrived.
async fn passes(from: &QuicTransport, to: &QuicTransport) -> bool {
    for round in 0..5 {
        let _ = from.send(heartbeat(from.node_id(), to.node_id(), round));
    }
    let arrived = recv_within(to, Duration::from_millis(300)).await.is_some();
    while recv_within(to, Duration::from_millis(50)).await.is_some() {}
    arrived
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_are_off_unless_configured() {
    let (a, b) = pair(None).await;
    assert!(a.fault_injector().is_none());
    assert!(passes(&a, &b).await && passes(&b, &a).await);
    assert_eq!(a.stats().messages_dropped_by_faults, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitions_are_set_and_healed_at_runtime() {
    let faults = FaultInjector::new();
    let (a, b) = pair(Some(faults.clone())).await;

    // One node's injector cuts both directions: outgoing at the sender,
    // incoming at the receiver.
    faults.partition(1, 2);
    assert!(!passes(&a, &b).await);
    assert!(!passes(&b, &a).await);
    faults.heal_between(1, 2);
    assert!(passes(&a, &b).await && passes(&b, &a).await);

    faults.partition_one_way(1, 2);
    assert!(!passes(&a, &b).await);
    assert!(passes(&b, &a).await);
    faults.heal();

    faults.isolate(1);
    assert!(!passes(&a, &b).await && !passes(&b, &a).await);
    faults.heal();
    assert!(passes(&a, &b).await && passes(&b, &a).await);
    assert!(a.stats().messages_dropped_by_faults > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drops_and_delays_apply_between_named_nodes() {
    let faults = FaultInjector::new();
    let (a, b) = pair(Some(faults.clone())).await;

    faults.drop_messages(1, 2, 1.0);
    assert!(!passes(&a, &b).await);
    faults.heal();

    let delay = Duration::from_millis(300);
    faults.delay(1, 2, delay);
    let sent = Instant::now();
    a.send(heartbeat(1, 2, 42)).unwrap();
    let message = recv_within(&b, DEADLINE).await.expect("delayed, not lost");
    assert_eq!(round_of(&message), Some(42));
    // A lower bound only: the message must not arrive before the delay.
    assert!(
        sent.elapsed() >= delay,
        "arrived after {:?}",
        sent.elapsed()
    );
    assert!(passes(&b, &a).await, "the reverse direction is not delayed");
}
