//! Roles from client certificates (review findings: any certificate chained
//! to the CA could write, change membership, move the leader and inject
//! faults; a forwarded request presented the forwarding node's certificate,
//! so a role check would have been bypassed through a follower).

mod common;

use bytes::Bytes;
use raft_kv::ClientError;
use raft_kv::protocol::{
    self, AdminOp, Consistency, KvError, Principal, ReadOp, Request, Response, Selector,
};
use raft_transport_quic::{ClientConnector, ClientOptions, Role};

fn denied(result: Result<impl std::fmt::Debug, ClientError>, needed: Role) {
    match result {
        Err(ClientError::Kv(KvError::PermissionDenied { needed: n, role })) => {
            assert_eq!(n, needed);
            assert_eq!(role, Role::ReadOnly);
        }
        other => panic!("expected PermissionDenied for {needed}, got {other:?}"),
    }
}

/// A leader transfer forwarded on behalf of `name` with `role`.
fn forwarded_transfer(name: &str, role: Role) -> Request {
    Request::Forwarded {
        principal: Principal {
            name: name.into(),
            role,
        },
        request: Box::new(Request::Admin {
            op: AdminOp::TransferLeader { to: None },
            forwarded: true,
        }),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_read_only_certificate_reads_and_watches_but_cannot_write_or_administer() {
    let cluster = common::TestCluster::start(3, |_| {}).await;
    let admin = cluster.client().await;
    admin.put("k", "v").await.unwrap();
    let follower = cluster.follower_endpoint(&admin).await;
    // Through every node, and through a follower alone (which forwards).
    for endpoints in [cluster.endpoints.clone(), vec![follower]] {
        let reader = cluster
            .client_with_role("reader", Role::ReadOnly, endpoints)
            .await;
        assert_eq!(reader.get("k").await.unwrap().unwrap().value, "v");
        let scan = reader.scan_prefix("", 10).await.unwrap();
        assert_eq!(scan.kvs.len(), 1);
        let mut watch = reader
            .watch(Selector::Prefix(Bytes::new()), 1)
            .await
            .unwrap();
        assert_eq!(watch.next().await.unwrap()[0].kv.key, "k");

        denied(reader.put("k", "w").await, Role::ReadWrite);
        denied(reader.delete("k").await, Role::ReadWrite);
        denied(reader.transfer_leader(None).await, Role::Admin);
        denied(reader.add_learner(9, "127.0.0.1:1").await, Role::Admin);
        denied(reader.remove(3).await, Role::Admin);
        let any = cluster.endpoints[0].clone();
        denied(reader.set_faults(&any, Vec::new()).await, Role::Admin);
    }
    assert_eq!(admin.get("k").await.unwrap().unwrap().value, "v");
    // A readwrite certificate writes but does not administer.
    let writer = cluster
        .client_with_role("writer", Role::ReadWrite, cluster.endpoints.clone())
        .await;
    writer.put("k", "w").await.unwrap();
    match writer.transfer_leader(None).await {
        Err(ClientError::Kv(KvError::PermissionDenied { needed, role })) => {
            assert_eq!((needed, role), (Role::Admin, Role::ReadWrite));
        }
        other => panic!("a readwrite certificate moved the leader: {other:?}"),
    }
    cluster.shutdown().await;
}

/// A client cannot claim to be a node forwarding for an administrator:
/// only a member node's certificate is trusted with a forwarded principal.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_client_cannot_present_a_forwarded_request() {
    let cluster = common::TestCluster::start(3, |_| {}).await;
    let identity = cluster
        .ca
        .client_identity("test", "mallory", Role::ReadOnly)
        .unwrap();
    let connector = ClientConnector::new(&identity, ClientOptions::default()).unwrap();
    let forged = forwarded_transfer("admin", Role::Admin);
    for endpoint in &cluster.endpoints {
        let connection = connector.connect_to(endpoint).await.unwrap();
        let bytes = connection
            .request(&protocol::encode(&forged))
            .await
            .unwrap();
        match protocol::decode::<Response>(&bytes).unwrap() {
            Response::Error(KvError::Forbidden(why)) => assert!(why.contains("mallory"), "{why}"),
            other => panic!("a forged forwarded request at {endpoint}: {other:?}"),
        }
        // Its own reads still work.
        let read = Request::Read {
            op: ReadOp::Get { key: "k".into() },
            consistency: Consistency::Linearizable,
            forwarded: false,
        };
        let bytes = connection.request(&protocol::encode(&read)).await.unwrap();
        assert!(!matches!(
            protocol::decode::<Response>(&bytes).unwrap(),
            Response::Error(KvError::Forbidden(_) | KvError::PermissionDenied { .. })
        ),);
    }
    cluster.shutdown().await;
}

/// A node certificate counts only while its node is a member: one of a
/// node that is not (never added, or removed) is refused on the client
/// port, forwarding included.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_certificate_of_a_non_member_is_refused() {
    let cluster = common::TestCluster::start(3, |_| {}).await;
    let stranger = cluster.ca.node_identity("test", 9, ["127.0.0.1"]).unwrap();
    let connector = ClientConnector::new(&stranger, ClientOptions::default()).unwrap();
    let connection = connector.connect_to(&cluster.endpoints[0]).await.unwrap();
    for request in [Request::Status, forwarded_transfer("admin", Role::Admin)] {
        let bytes = connection
            .request(&protocol::encode(&request))
            .await
            .unwrap();
        // Refused either way: on its own behalf as forbidden; what it
        // forwards as unavailable, so that a client still sending to a
        // removed node retries at the leader that refused it.
        match protocol::decode::<Response>(&bytes).unwrap() {
            Response::Error(KvError::Forbidden(why)) if matches!(request, Request::Status) => {
                assert!(why.contains("node 9 is not a member"), "{why}")
            }
            Response::Error(KvError::Unavailable(why))
                if matches!(request, Request::Forwarded { .. }) =>
            {
                assert!(why.contains("node 9 is not a member"), "{why}")
            }
            other => panic!("a non-member node's {request:?}: {other:?}"),
        }
    }
    // A member's certificate is trusted with a forwarded principal.
    let member = cluster.ca.node_identity("test", 2, ["127.0.0.1"]).unwrap();
    let connector = ClientConnector::new(&member, ClientOptions::default()).unwrap();
    let connection = connector.connect_to(&cluster.endpoints[0]).await.unwrap();
    let bytes = connection
        .request(&protocol::encode(&forwarded_transfer(
            "reader",
            Role::ReadOnly,
        )))
        .await
        .unwrap();
    match protocol::decode::<Response>(&bytes).unwrap() {
        Response::Error(KvError::PermissionDenied { needed, role }) => {
            assert_eq!((needed, role), (Role::Admin, Role::ReadOnly))
        }
        other => panic!("a member forwarding for a reader: {other:?}"),
    }
    cluster.shutdown().await;
}

/// Review finding: certificates last two years and nothing could revoke
/// one. A node's deny list (`deny_list`, SHA-256 fingerprints from `raft-cli
/// certs fingerprint`) is reread while it runs: a client whose certificate
/// is added loses its open connection and cannot connect again, while other
/// clients are served; a malformed file keeps the list in force.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_certificate_added_to_the_deny_list_is_shut_out_while_the_node_runs() {
    let lists = tempfile::tempdir().unwrap();
    let deny = lists.path().join("denied.txt");
    std::fs::write(&deny, "# revoked certificates\n").unwrap();
    let path = deny.clone();
    let cluster =
        common::TestCluster::start(1, move |c| c.tls.deny_list = Some(path.clone())).await;
    let mallory_cert = cluster
        .ca
        .issue_client("test", "mallory", Role::ReadWrite)
        .unwrap();
    let connect = |cert: &raft_transport_quic::IssuedCert| {
        let identity = cert.identity(cluster.ca.cert_pem()).unwrap();
        let mut config = raft_kv::ClientConfig::new(cluster.endpoints.clone(), identity);
        config.deadline = std::time::Duration::from_secs(2);
        raft_kv::Client::connect(config)
    };
    let mallory = connect(&mallory_cert).await.unwrap();
    mallory.put("k", "v").await.unwrap();
    let others = cluster.client().await;
    // An open watch of the certificate ends with it (as on the etcd port,
    // raft-kv/tests/port_abuse.rs).
    let mut watching = mallory
        .watch(raft_kv::protocol::Selector::Prefix("w/".into()), 0)
        .await
        .unwrap();

    let line =
        raft_transport_quic::certificate_fingerprint(mallory_cert.cert_pem().as_bytes()).unwrap();
    std::fs::write(
        &deny,
        format!("# revoked certificates\n{line}  # mallory\n"),
    )
    .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while mallory.get("k").await.is_ok() {
        assert!(
            std::time::Instant::now() < deadline,
            "the denied client is still served"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    others.put("w/after", "revoked").await.unwrap();
    let watched = tokio::time::timeout(std::time::Duration::from_secs(30), watching.next())
        .await
        .expect("the revoked watch ends");
    assert!(
        watched.is_err(),
        "a revoked certificate's watch still receives events: {watched:?}"
    );
    // A new connection with the same certificate is refused too, saying so.
    let again = connect(&mallory_cert).await.unwrap();
    let refusal = again.put("k", "w").await.unwrap_err().to_string();
    assert!(refusal.contains("refused"), "{refusal}");
    assert_eq!(
        others.get("k").await.unwrap().unwrap().value,
        Bytes::from_static(b"v")
    );

    // A broken file leaves the list as it was.
    std::fs::write(&deny, format!("{line}\nnot a fingerprint\n")).unwrap();
    tokio::time::sleep(raft_kv::config::DENY_LIST_POLL * 2).await;
    assert!(mallory.get("k").await.is_err());
    assert!(others.get("k").await.is_ok());
    cluster.shutdown().await;
}
