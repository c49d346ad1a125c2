//! What a client sees when leadership moves under its requests.

mod common;

use std::time::{Duration, Instant};

use raft_kv::{Client, ClientConfig, ClientError};
use raft_transport_quic::{Fault, FaultRule};

/// A leader that steps down (here: cut off from the others, CheckQuorum)
/// fails the writes it was waiting on at once, saying it no longer leads,
/// instead of letting them wait out the request timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pending_writes_fail_at_once_when_the_leader_steps_down() {
    let cluster = common::TestCluster::start(3, |config| {
        config.raft.tick_ms = 50;
        config.raft.election_ticks = 10;
        config.raft.heartbeat_ticks = 2;
        config.enable_fault_injection = true;
        // Long, so that waiting it out would show.
        config.request_timeout_ms = 20_000;
    })
    .await;
    let client = cluster.client().await;
    client.put("k", "1").await.unwrap();
    let mut leader = None;
    for (i, endpoint) in cluster.endpoints.iter().enumerate() {
        let s = client.status_of(endpoint).await.unwrap();
        if s.raft.role == raft_core::Role::Leader {
            leader = Some((i, s.raft.id));
        }
    }
    let (index, leader_id) = leader.expect("a leader after a write");
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
    // A write through the cut-off leader cannot commit; it steps down after
    // an election timeout (0.5 s) without a quorum.
    let mut config = ClientConfig::new(
        vec![cluster.endpoints[index].clone()],
        cluster.client_identity.clone(),
    );
    config.deadline = Duration::from_secs(4);
    config.attempt_timeout = Duration::from_secs(10);
    let pinned = Client::connect(config).await.unwrap();
    let started = Instant::now();
    let result = pinned.put("k", "2").await;
    let elapsed = started.elapsed();
    match result {
        Err(ClientError::Deadline(_, last)) => assert!(
            last.contains("no leader") || last.contains("not the leader"),
            "the write waited instead of failing with NotLeader: {last} (after {elapsed:?})"
        ),
        other => {
            panic!("the write through a deposed leader ended with {other:?} after {elapsed:?}")
        }
    }
    cluster.shutdown().await;
}

/// Forwarding cannot loop: a node forwards a lease read (only the leader
/// serves those) once, marked as forwarded, and a forwarded read that
/// reaches a node that does not lead is answered with an error instead of
/// being forwarded again. Two nodes with stale views of the leader, each
/// believing the other leads, would otherwise bounce it between them.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_forwarded_read_is_never_forwarded_again() {
    use raft_kv::protocol::{self, Consistency, ReadOp, Request, Response};
    use raft_transport_quic::{ClientConnector, ClientOptions};
    let cluster = common::TestCluster::start(3, |config| {
        config.raft.lease_reads = true;
    })
    .await;
    let client = cluster.client().await;
    client.put("k", "v").await.unwrap();
    let mut follower = None;
    for endpoint in &cluster.endpoints {
        let s = client.status_of(endpoint).await.unwrap();
        if s.raft.role != raft_core::Role::Leader {
            follower = Some(endpoint.clone());
        }
    }
    let follower = follower.expect("a follower");
    let connector =
        ClientConnector::new(&cluster.client_identity, ClientOptions::default()).unwrap();
    let connection = connector.connect_to(&follower).await.unwrap();
    let ask = |forwarded: bool| {
        let connection = connection.clone();
        async move {
            let request = Request::Read {
                op: ReadOp::Get { key: "k".into() },
                consistency: Consistency::Lease,
                forwarded,
            };
            let bytes = connection
                .request(&protocol::encode(&request))
                .await
                .unwrap();
            protocol::decode::<Response>(&bytes).unwrap()
        }
    };
    // From a client: the follower forwards it to the leader, which serves
    // it, and names the leader in the answer.
    match ask(false).await {
        Response::Forwarded { response, .. } if matches!(*response, Response::Read(ref r) if r.kvs.len() == 1) =>
            {}
        other => panic!("a lease read through a follower: {other:?}"),
    }
    // Already forwarded: the follower says who leads and goes no further.
    match ask(true).await {
        Response::Error(raft_kv::protocol::KvError::NotLeader { .. }) => {}
        other => panic!("a forwarded lease read at a follower: {other:?}"),
    }
    cluster.shutdown().await;
}
