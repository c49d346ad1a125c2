//! A client whose first endpoints are dead still reaches the cluster. Each
//! dead endpoint costs an attempt timeout; the client used to start every
//! call that knew no leader at the first endpoint, so with more dead
//! endpoints at the head of its list than fit in one call's deadline, no
//! call ever got through (seen in a chaos run once every initial member had
//! been removed). Endpoints whose last attempt failed are now tried last.
//!
//! A client that reached a follower sends its next requests to the leader:
//! the follower's forwarded answer names it.

mod common;

use std::net::UdpSocket;
use std::time::Duration;

use common::TestCluster;
use raft_kv::{Client, ClientConfig};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dead_endpoints_at_the_head_of_the_list_are_tried_last() {
    let cluster = TestCluster::start(3, |_| {}).await;
    cluster.client().await.put("k", "v").await.unwrap();

    // Black holes: bound UDP ports that never answer, so a connection
    // attempt waits out its timeout.
    let holes: Vec<UdpSocket> = (0..3)
        .map(|_| UdpSocket::bind("127.0.0.1:0").unwrap())
        .collect();
    let mut endpoints: Vec<String> = holes
        .iter()
        .map(|h| h.local_addr().unwrap().to_string())
        .collect();
    endpoints.extend(cluster.endpoints.iter().cloned());
    let mut config = ClientConfig::new(endpoints, cluster.client_identity.clone());
    config.attempt_timeout = Duration::from_secs(1);
    // Room for two attempts, not for the three dead endpoints ahead of the
    // live ones.
    config.deadline = Duration::from_millis(2_500);
    let client = Client::connect(config).await.unwrap();

    let mut outcomes = Vec::new();
    for _ in 0..3 {
        outcomes.push(client.get("k").await.map(|kv| kv.map(|kv| kv.value)));
    }
    assert!(
        outcomes.iter().skip(1).all(|o| o.is_ok()),
        "once the first call has found the head of the list dead, calls get through: {outcomes:?}"
    );
    assert_eq!(
        outcomes[2].as_ref().unwrap().as_deref(),
        Some(&b"v"[..]),
        "{outcomes:?}"
    );
    drop(holes);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_forwarded_answer_sends_the_next_request_to_the_leader() {
    let mut cluster = TestCluster::start(3, |_| {}).await;
    let any = cluster.client().await;
    any.put("k", "v").await.unwrap();
    let leader = any
        .status_of(&cluster.endpoints[0])
        .await
        .unwrap()
        .raft
        .leader
        .expect("a leader after a write");
    let follower = (1..=3u64).find(|id| *id != leader).unwrap();

    // A client that knows only the follower: its write is forwarded.
    let mut config = ClientConfig::new(
        vec![cluster.endpoints[follower as usize - 1].clone()],
        cluster.client_identity.clone(),
    );
    config.attempt_timeout = Duration::from_secs(1);
    config.deadline = Duration::from_secs(3);
    let client = Client::connect(config).await.unwrap();
    client.put("k", "via the follower").await.unwrap();

    // With the follower gone, the client still writes: it went to the
    // leader directly since the forwarded answer.
    cluster
        .servers
        .remove(follower as usize - 1)
        .shutdown()
        .await
        .unwrap();
    let written = client.put("k", "at the leader").await;
    assert!(
        written.is_ok(),
        "the client kept writing to the follower it first reached: {written:?}"
    );
    assert_eq!(
        client.get("k").await.unwrap().unwrap().value,
        &b"at the leader"[..]
    );
    cluster.shutdown().await;
}
