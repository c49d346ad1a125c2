//! Certificate revocation: a certificate on the deny list is refused on
//! every path (client connections, peers connecting, peers we dial), and
//! replacing the list closes the open connections it now denies.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use raft_core::adapters::Transport;
use raft_transport_quic::wire::CLOSE_DENIED;
use raft_transport_quic::{
    CertificateAuthority, ClientConnection, ClientConnector, ClientError, ClientHandler,
    ClientOptions, ClientRequest, DenyList, Fingerprint, QuicTransport, Response, Role,
    TlsIdentity, TransportConfig,
};

struct Echo;

#[async_trait::async_trait]
impl ClientHandler for Echo {
    async fn handle(&self, request: ClientRequest) -> Response {
        Response::Unary(request.body)
    }
}

fn fingerprint(identity: &TlsIdentity) -> Fingerprint {
    Fingerprint::of_der(identity.chain()[0].as_ref())
}

fn deny_config(id: u64, deny_list: &DenyList) -> TransportConfig {
    let mut cfg = config(id, CLUSTER, loopback());
    cfg.client_handler = Some(Arc::new(Echo));
    cfg.deny_list = Some(deny_list.clone());
    cfg
}

async fn start_as(identity: &TlsIdentity, config: TransportConfig) -> QuicTransport {
    QuicTransport::start(config, identity).await.unwrap()
}

async fn connect(identity: &TlsIdentity, node: &QuicTransport) -> ClientConnection {
    ClientConnector::new(identity, ClientOptions::default())
        .unwrap()
        .connect_to(&node.local_addr().unwrap().to_string())
        .await
        .unwrap()
}

fn assert_denied(outcome: &Result<Bytes, ClientError>) {
    match outcome {
        Err(ClientError::Refused { code, reason }) => {
            assert_eq!(*code, CLOSE_DENIED);
            assert!(reason.contains("deny list"), "{reason}");
        }
        other => panic!("expected a refusal for a revoked certificate, got {other:?}"),
    }
}

async fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + DEADLINE;
    while !condition() {
        assert!(Instant::now() < deadline, "{what}: not within {DEADLINE:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_denied_client_certificate_is_refused() {
    init_tracing();
    let ca = ca();
    let alice = ca.client_identity(CLUSTER, "alice", Role::Admin).unwrap();
    // Alice's certificate is revoked; a new one issued to the same name is not.
    let alice_again = ca.client_identity(CLUSTER, "alice", Role::Admin).unwrap();
    let deny_list = DenyList::new([fingerprint(&alice)]);
    let node = start_with(&ca, deny_config(1, &deny_list)).await;

    let refused = tokio::time::timeout(DEADLINE, connect(&alice, &node).await.request(b"hi"))
        .await
        .unwrap();
    println!("{}", refused.as_ref().unwrap_err());
    assert_denied(&refused);
    assert_eq!(node.stats().connections_denied, 1);
    // Refused at the door: it never became a client connection.
    assert_eq!(node.stats().client_connections, 0);
    assert_eq!(
        connect(&alice_again, &node)
            .await
            .request(b"hi")
            .await
            .unwrap(),
        "hi"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_denied_node_cannot_connect_as_a_peer_either_way() {
    init_tracing();
    let ca = ca();
    let node2 = identity(&ca, CLUSTER, 2);
    let deny_list = DenyList::new([fingerprint(&node2)]);
    let node = start_with(&ca, deny_config(1, &deny_list)).await;
    let raw = RawPeer::with_identity(&node2, 2, 1);

    // Node 2 dials node 1: refused right after the handshake.
    let refused = raw.dial(&node).await.unwrap_err();
    println!("node 2 dialing: {refused}");
    assert!(refused.contains("deny list"), "{refused}");
    assert_eq!(node.stats().connections_denied, 1);
    // Refused right after the handshake, before any hello.
    assert_eq!(node.stats().peer_connections, 0);

    // Node 1 dials node 2: it checks the certificate the server presents,
    // and closes before sending its hello; then backs off.
    node.update_peers(&BTreeMap::from([
        (1, node.local_addr().unwrap().to_string()),
        (2, raw.addr().to_string()),
    ]));
    let watch = Duration::from_secs(2);
    let started = Instant::now();
    let mut attempts = 0;
    while let Ok(Some(incoming)) = tokio::time::timeout(
        watch.saturating_sub(started.elapsed()),
        raw.endpoint.accept(),
    )
    .await
    {
        let Ok(connection) = incoming.await else {
            continue;
        };
        attempts += 1;
        let hello_stream = tokio::time::timeout(DEADLINE, connection.accept_bi())
            .await
            .unwrap();
        match hello_stream {
            Err(quinn::ConnectionError::ApplicationClosed(close)) => {
                assert_eq!(close.error_code, CLOSE_DENIED.into());
            }
            other => panic!("node 1 went on with a denied peer: {other:?}"),
        }
    }
    println!("node 1 dialed the denied node {attempts} times in {watch:?}");
    assert!(attempts >= 1, "node 1 never dialed node 2");
    // Backoff (20 ms doubling to 300 ms in these tests), not a tight loop.
    assert!(attempts < 40, "{attempts} dials in {watch:?}");
    assert!(node.stats().connections_denied > 1);
    assert!(node.connected_peers().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replacing_the_deny_list_closes_open_connections() {
    init_tracing();
    let ca = ca();
    let deny_list = DenyList::default();
    let node = start_with(&ca, deny_config(1, &deny_list)).await;
    let node2_identity = identity(&ca, CLUSTER, 2);
    let node2 = start_as(&node2_identity, config(2, CLUSTER, loopback())).await;
    let node3 = start(&ca, 3).await;
    connect_all(&[&node, &node2, &node3]);
    wait_linked(&node2, &node).await;
    wait_linked(&node, &node2).await;
    wait_linked(&node3, &node).await;
    let alice = ca.client_identity(CLUSTER, "alice", Role::Admin).unwrap();
    let bob = ca.client_identity(CLUSTER, "bob", Role::Admin).unwrap();
    let alice_connection = connect(&alice, &node).await;
    let bob_connection = connect(&bob, &node).await;
    assert_eq!(alice_connection.request(b"before").await.unwrap(), "before");

    // Alice's and node 2's certificates are revoked: the file is edited
    // and reloaded, as an operator would.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("deny.txt");
    std::fs::write(
        &path,
        format!(
            "# revoked\n{}\n{}  # node 2\n",
            fingerprint(&alice),
            fingerprint(&node2_identity)
                .to_string()
                .replace(':', "")
                .to_lowercase()
        ),
    )
    .unwrap();
    assert_eq!(deny_list.reload_from(&path).unwrap(), 2);

    // Alice's open connection is closed.
    let deadline = Instant::now() + DEADLINE;
    let outcome = loop {
        let outcome = alice_connection.request(b"after").await;
        if outcome.is_err() || Instant::now() > deadline {
            break outcome;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_denied(&outcome);
    // Node 2's connection is closed, and node 2 stays out.
    wait_until("node 1 drops node 2", || {
        !node.connected_peers().contains(&2)
    })
    .await;
    let until = Instant::now() + Duration::from_secs(1);
    while Instant::now() < until {
        let _ = node2.send(heartbeat(2, 1, 7));
        assert!(!node.connected_peers().contains(&2), "node 2 got back in");
        if let Some(message) = recv_within(&node, Duration::from_millis(50)).await {
            assert_ne!(message.from, 2, "a message from the denied node 2 arrived");
        }
    }
    assert!(node.stats().connections_denied >= 2);
    // Everyone else is untouched.
    assert_eq!(bob_connection.request(b"bob").await.unwrap(), "bob");
    assert!(node.connected_peers().contains(&3));
    wait_linked(&node3, &node).await;

    // Taking them off the list lets them in again.
    deny_list.replace([]);
    assert_eq!(
        connect(&alice, &node).await.request(b"back").await.unwrap(),
        "back"
    );
    wait_linked(&node2, &node).await;
}

/// Fingerprints written with or without colons, in either case, name the
/// same certificate; a malformed line is named by its number.
#[test]
fn deny_list_files_accept_both_spellings_and_name_a_bad_line() {
    let ca = CertificateAuthority::generate("test CA").unwrap();
    let issued = ca.issue_client(CLUSTER, "alice", Role::Admin).unwrap();
    let with_colons =
        raft_transport_quic::certificate_fingerprint(issued.cert_pem().as_bytes()).unwrap();
    let plain = with_colons.replace(':', "").to_lowercase();
    let fingerprint: Fingerprint = with_colons.parse().unwrap();
    assert_eq!(plain.parse::<Fingerprint>().unwrap(), fingerprint);
    for text in [with_colons.clone(), plain.clone()] {
        assert!(DenyList::parse(&text).unwrap().contains(&fingerprint));
    }
    let error = DenyList::parse(&format!("{plain}\n# fine\n\n{}\n", &plain[2..])).unwrap_err();
    assert!(
        matches!(
            error,
            raft_transport_quic::DenyListError::Malformed { line: 4, .. }
        ),
        "{error:?}"
    );
    println!("{error}");
}
