//! Refused handshakes: no certificate, another CA, wrong ALPN, another
//! cluster, a certificate that names another node, a client certificate
//! posing as a peer.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use raft_core::adapters::Transport;
use raft_transport_quic::wire::{
    CLOSE_CLUSTER_MISMATCH, CLOSE_IDENTITY_MISMATCH, CLOSE_VERSION_MISMATCH, MAX_HELLO_SIZE,
    PEER_ALPN, PROTOCOL_VERSION, PeerHello, STREAM_KIND_SUBSCRIBE,
};
use raft_transport_quic::{
    ClientConnector, ClientError, ClientHandler, ClientOptions, ClientRequest, QuicTransport,
    Response, Role, TlsIdentity, frame, node_server_name,
};

struct Echo;

#[async_trait::async_trait]
impl ClientHandler for Echo {
    async fn handle(&self, request: ClientRequest) -> Response {
        Response::Unary(request.body)
    }
}

async fn serving_node(ca: &raft_transport_quic::CertificateAuthority) -> QuicTransport {
    let mut cfg = config(1, CLUSTER, loopback());
    cfg.client_handler = Some(std::sync::Arc::new(Echo));
    start_with(ca, cfg).await
}

/// Whether a request over a hand-built connection fails. In TLS 1.3 the
/// client may finish its side of the handshake before the server rejects
/// its certificate, so the refusal can surface at connect or at first use.
async fn raw_request_fails(endpoint: &quinn::Endpoint, node: &QuicTransport) -> String {
    let addr = node.local_addr().unwrap();
    let connection = match connection_outcome(endpoint, addr, "127.0.0.1").await {
        Ok(connection) => connection,
        Err(refused) => return refused,
    };
    let attempt = async {
        let (mut send, mut recv) = connection.open_bi().await.map_err(|e| e.to_string())?;
        send.write_all(&[STREAM_KIND_SUBSCRIBE])
            .await
            .map_err(|e| e.to_string())?;
        send.write_all(&frame::encode_raw(b"hello", 1024).unwrap())
            .await
            .map_err(|e| e.to_string())?;
        let _ = send.finish();
        frame::read(&mut recv, 1024)
            .await
            .map_err(|e| e.to_string())
    };
    match tokio::time::timeout(DEADLINE, attempt).await {
        Ok(Ok(response)) => panic!("the node answered a refused client: {response:?}"),
        Ok(Err(refused)) => refused,
        Err(_) => panic!("no refusal within the deadline"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_with_a_cluster_certificate_is_served() {
    init_tracing();
    let ca = ca();
    let node = serving_node(&ca).await;
    let identity = ca.client_identity(CLUSTER, "alice", Role::Admin).unwrap();
    let connector = ClientConnector::new(&identity, ClientOptions::default()).unwrap();
    let connection = connector
        .connect_to(&node.local_addr().unwrap().to_string())
        .await
        .unwrap();
    assert_eq!(
        connection.request(b"ping").await.unwrap(),
        Bytes::from_static(b"ping")
    );
    // The same client through a hand-built endpoint: the control case for the refusals below.
    let endpoint = raw_endpoint(Some(&identity), &identity, b"raft-client/2");
    let connection = connection_outcome(&endpoint, node.local_addr().unwrap(), "127.0.0.1")
        .await
        .unwrap();
    let (mut send, mut recv) = connection.open_bi().await.unwrap();
    send.write_all(&[STREAM_KIND_SUBSCRIBE]).await.unwrap();
    send.write_all(&frame::encode_raw(b"raw", 1024).unwrap())
        .await
        .unwrap();
    send.finish().unwrap();
    assert_eq!(
        frame::read(&mut recv, 1024).await.unwrap().unwrap(),
        Bytes::from_static(b"raw")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_without_a_certificate_is_refused() {
    init_tracing();
    let ca = ca();
    let node = serving_node(&ca).await;
    let trust = ca
        .client_identity(CLUSTER, "anonymous", Role::Admin)
        .unwrap();
    let endpoint = raw_endpoint(None, &trust, b"raft-client/2");
    let refused = raw_request_fails(&endpoint, &node).await;
    println!("no certificate: {refused}");
    wait_refusals(&node, 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_with_a_certificate_from_another_ca_is_refused() {
    init_tracing();
    let ca = ca();
    let node = serving_node(&ca).await;
    let rogue_ca = common::ca();
    let rogue = rogue_ca
        .client_identity(CLUSTER, "mallory", Role::Admin)
        .unwrap();
    // It trusts the real CA (so it would accept the node) but presents a rogue certificate.
    let endpoint = raw_endpoint(
        Some(&rogue),
        &ca.client_identity(CLUSTER, "x", Role::Admin).unwrap(),
        b"raft-client/2",
    );
    let refused = raw_request_fails(&endpoint, &node).await;
    println!("another CA: {refused}");
    wait_refusals(&node, 1).await;

    // The crate's own connector, with the rogue identity, fails too (it
    // does not even trust the node).
    let connector = ClientConnector::new(&rogue, ClientOptions::default()).unwrap();
    let outcome = match connector
        .connect_to(&node.local_addr().unwrap().to_string())
        .await
    {
        Ok(connection) => connection.request(b"ping").await.map(|_| ()),
        Err(error) => Err(error),
    };
    assert!(
        matches!(outcome, Err(ClientError::Connection(_))),
        "{outcome:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_with_the_wrong_alpn_is_refused() {
    init_tracing();
    let ca = ca();
    let node = serving_node(&ca).await;
    let identity = ca.client_identity(CLUSTER, "alice", Role::Admin).unwrap();
    let endpoint = raw_endpoint(Some(&identity), &identity, b"h3");
    let refused = raw_request_fails(&endpoint, &node).await;
    println!("wrong ALPN: {refused}");
    assert!(
        refused.contains("no_application_protocol")
            || refused.contains("NoApplicationProtocol")
            || refused.contains("120"),
        "{refused}"
    );
    wait_refusals(&node, 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_without_a_client_handler_refuses_clients() {
    init_tracing();
    let ca = ca();
    let node = start(&ca, 1).await;
    let identity = ca.client_identity(CLUSTER, "alice", Role::Admin).unwrap();
    let connector = ClientConnector::new(&identity, ClientOptions::default()).unwrap();
    let connection = connector
        .connect_to(&node.local_addr().unwrap().to_string())
        .await
        .unwrap();
    let outcome = connection.request(b"ping").await;
    // The node closes the connection with its reason; the client sees it
    // as the connection's failure, or as its request's write failing on
    // the closed connection (whichever it notices first).
    assert!(
        matches!(
            outcome,
            Err(ClientError::Connection(_) | ClientError::Write(_))
        ) && format!("{outcome:?}").contains("this node serves no clients"),
        "{outcome:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_of_another_cluster_is_refused() {
    init_tracing();
    let ca = ca();
    let a = start(&ca, 1).await;
    // Same CA, but certificates and configuration of cluster "other".
    let stranger = start_with(&ca, config(2, "other", loopback())).await;
    let peers = BTreeMap::from([
        (1, a.local_addr().unwrap().to_string()),
        (2, stranger.local_addr().unwrap().to_string()),
    ]);
    a.update_peers(&peers);
    stranger.update_peers(&peers);
    let deadline = Instant::now() + Duration::from_secs(2);
    while Instant::now() < deadline {
        let _ = a.send(heartbeat(1, 2, 0));
        let _ = stranger.send(heartbeat(2, 1, 0));
        assert!(recv_within(&a, Duration::from_millis(50)).await.is_none());
        assert!(
            recv_within(&stranger, Duration::from_millis(50))
                .await
                .is_none()
        );
    }
    assert!(a.connected_peers().is_empty() && stranger.connected_peers().is_empty());
    assert!(
        a.stats().connections_refused >= 1,
        "node 1 refused node 2's attempts"
    );
}

/// Opens a peer connection by hand with `identity` and sends `hello`;
/// returns the acceptor's hello or the close code that refused us.
async fn hand_made_hello(
    node: &QuicTransport,
    identity: &TlsIdentity,
    hello: PeerHello,
) -> Result<PeerHello, u64> {
    let endpoint = raw_endpoint(Some(identity), identity, PEER_ALPN);
    let server_name = node_server_name(CLUSTER, node.node_id());
    let connection = connection_outcome(&endpoint, node.local_addr().unwrap(), &server_name)
        .await
        .unwrap();
    let (mut send, mut recv) = connection.open_bi().await.unwrap();
    send.write_all(&frame::encode(&hello, MAX_HELLO_SIZE).unwrap())
        .await
        .unwrap();
    send.finish().unwrap();
    let reply = frame::read_value::<PeerHello, _>(&mut recv, MAX_HELLO_SIZE).await;
    match reply {
        Ok(Some(reply)) => Ok(reply),
        _ => match tokio::time::timeout(DEADLINE, connection.closed())
            .await
            .unwrap()
        {
            quinn::ConnectionError::ApplicationClosed(close) => {
                println!("refused: {}", String::from_utf8_lossy(&close.reason));
                Err(close.error_code.into_inner())
            }
            other => panic!("unexpected close: {other}"),
        },
    }
}

fn hello(cluster: &str, node_id: u64, version: u32) -> PeerHello {
    PeerHello {
        version,
        cluster_id: cluster.into(),
        node_id,
        incarnation: 7,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_hellos_are_checked() {
    init_tracing();
    let ca = ca();
    let node = start(&ca, 1).await;
    let node2 = identity(&ca, CLUSTER, 2);

    // The control case: a correct hello is answered.
    let reply = hand_made_hello(&node, &node2, hello(CLUSTER, 2, PROTOCOL_VERSION))
        .await
        .unwrap();
    assert_eq!((reply.node_id, reply.cluster_id.as_str()), (1, CLUSTER));

    // Another cluster id in the hello.
    let other_cluster = identity(&ca, "other", 2);
    assert_eq!(
        hand_made_hello(&node, &other_cluster, hello("other", 2, PROTOCOL_VERSION)).await,
        Err(CLOSE_CLUSTER_MISMATCH.into())
    );
    // Another protocol version.
    assert_eq!(
        hand_made_hello(&node, &node2, hello(CLUSTER, 2, PROTOCOL_VERSION + 1)).await,
        Err(CLOSE_VERSION_MISMATCH.into())
    );
    // Node 2's certificate claiming to be node 3.
    assert_eq!(
        hand_made_hello(&node, &node2, hello(CLUSTER, 3, PROTOCOL_VERSION)).await,
        Err(CLOSE_IDENTITY_MISMATCH.into())
    );
    // A certificate of cluster "other" claiming cluster "test".
    assert_eq!(
        hand_made_hello(&node, &other_cluster, hello(CLUSTER, 2, PROTOCOL_VERSION)).await,
        Err(CLOSE_IDENTITY_MISMATCH.into())
    );
    // A client certificate posing as a peer.
    let client = ca.client_identity(CLUSTER, "mallory", Role::Admin).unwrap();
    assert_eq!(
        hand_made_hello(&node, &client, hello(CLUSTER, 2, PROTOCOL_VERSION)).await,
        Err(CLOSE_IDENTITY_MISMATCH.into())
    );
    assert!(node.stats().connections_refused >= 5);
}

async fn wait_refusals(node: &QuicTransport, at_least: u64) {
    let deadline = Instant::now() + DEADLINE;
    while node.stats().connections_refused < at_least {
        assert!(
            Instant::now() < deadline,
            "the node did not record the refusal"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_refuses_to_start_with_another_nodes_certificate_or_a_bad_config() {
    init_tracing();
    let ca = ca();
    let wrong = identity(&ca, CLUSTER, 2);
    let started = QuicTransport::start(config(1, CLUSTER, loopback()), &wrong).await;
    assert!(
        matches!(
            started,
            Err(raft_transport_quic::StartError::WrongCertificate(_))
        ),
        "{started:?}"
    );
    let client = ca.client_identity(CLUSTER, "alice", Role::Admin).unwrap();
    assert!(
        QuicTransport::start(config(1, CLUSTER, loopback()), &client)
            .await
            .is_err()
    );
    let mut bad = config(1, CLUSTER, loopback());
    bad.max_frame_size = 0;
    let started = QuicTransport::start(bad, &identity(&ca, CLUSTER, 1)).await;
    assert!(
        matches!(started, Err(raft_transport_quic::StartError::Config(_))),
        "{started:?}"
    );
}

/// Review finding: a removed node keeps its certificate (valid for two
/// years) and with it full peer rights. Once the transport is told a node
/// was removed, its connections are closed, new ones are refused at the
/// hello, and it gets nothing through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_node_is_shut_out_with_its_old_certificate() {
    init_tracing();
    let ca = ca();
    let a = start(&ca, 1).await;
    let b = start(&ca, 2).await;
    connect_all(&[&a, &b]);
    send_eventually(&b, heartbeat(2, 1, 0)).await;
    assert!(
        recv_within(&a, DEADLINE).await.is_some(),
        "a member gets through"
    );

    // Node 2 is removed; node 1 learns it (its own peers no longer list 2,
    // and the removal is committed).
    a.update_peers(&BTreeMap::new());
    a.update_removed(&BTreeSet::from([2]));
    let refused_before = a.stats().connections_refused;
    // Node 2 still knows node 1 and keeps trying, with its old certificate.
    let deadline = Instant::now() + DEADLINE;
    while a.stats().connections_refused == refused_before {
        assert!(
            Instant::now() < deadline,
            "node 2 never tried again, or was let in"
        );
        let _ = b.send(heartbeat(2, 1, 1));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Refused at the hello: nothing it sent reached node 1.
    assert!(recv_within(&a, Duration::from_millis(300)).await.is_none());
    assert!(a.connected_peers().is_empty());
}
