//! Review finding: a removed node kept full peer rights with its old
//! certificate (certificates last two years, there is no revocation), and a
//! `Vote { transfer: true }` from it made the leader step down.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use raft_core::adapters::Transport;
use raft_core::{LogId, Message, MessageBody, Role, VoteRequest};
use raft_transport_quic::{QuicTransport, TlsIdentity, TransportConfig};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_removed_node_reconnecting_with_its_old_certificate_cannot_depose_the_leader() {
    let mut cluster = common::TestCluster::start(3, |_| {}).await;
    let client = cluster.client().await;
    client.put("k", "v").await.unwrap();
    // Node 3 must not lead: it is the one removed.
    let leader_of = |statuses: &[raft_kv::protocol::NodeStatus]| {
        statuses
            .iter()
            .find(|s| s.raft.role == Role::Leader)
            .map(|s| (s.raft.id, s.raft.term, s.address.clone()))
    };
    let status_of_all = || async {
        let mut all = Vec::new();
        for endpoint in &cluster.endpoints {
            if let Ok(status) = client.status_of(endpoint).await {
                all.push(status);
            }
        }
        all
    };
    if leader_of(&status_of_all().await).is_some_and(|(id, _, _)| id == 3) {
        client.transfer_leader(Some(1)).await.unwrap();
    }
    client.remove(3).await.unwrap();
    let removed = cluster.servers.remove(2);
    removed.shutdown().await.unwrap();
    let endpoints: Vec<String> = cluster.endpoints[..2].to_vec();
    let client = cluster.client_of(endpoints.clone()).await;
    client.put("k", "after removal").await.unwrap();
    let mut statuses = Vec::new();
    for endpoint in &endpoints {
        statuses.push(client.status_of(endpoint).await.unwrap());
    }
    let (leader, term, leader_address) = leader_of(&statuses).expect("a leader");

    // Node 3 comes back with its old certificate and asks the leader to
    // hand over, at a higher term and with a longer log.
    let dir = cluster.dir.path();
    let identity = TlsIdentity::from_pem_files(
        &dir.join("ca.pem"),
        &dir.join("node-3.pem"),
        &dir.join("node-3.key"),
    )
    .unwrap();
    let rogue = QuicTransport::start(
        TransportConfig::new(3, "test", "127.0.0.1:0".parse().unwrap()),
        &identity,
    )
    .await
    .unwrap();
    rogue.update_peers(&BTreeMap::from([(leader, leader_address.clone())]));
    // Ask for as long as five election timeouts (10 ticks of 20 ms).
    let until = Instant::now() + Duration::from_secs(1);
    while Instant::now() < until {
        let _ = rogue.send(Message {
            from: 3,
            to: leader,
            term: term + 1,
            body: MessageBody::Vote(VoteRequest {
                last_log: LogId::new(term + 1, 1_000_000),
                transfer: true,
            }),
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let status = client.status_of(&leader_address).await.unwrap();
    assert_eq!(
        status.raft.role,
        Role::Leader,
        "node {leader} keeps leading"
    );
    assert_eq!(status.raft.term, term, "and its term did not move");
    assert_eq!(
        rogue.connected_peers(),
        Vec::<u64>::new(),
        "refused at the door"
    );
    client.put("k", "still served").await.unwrap();
    rogue.shutdown().await;
    cluster.shutdown().await;
}
