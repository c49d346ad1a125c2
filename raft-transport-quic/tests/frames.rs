//! Hostile frames: malformed, oversized, truncated and misaddressed frames
//! are rejected (that stream closes with an error code) and the endpoint
//! keeps serving the same peer on new streams, other peers, and clients.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use common::*;
use raft_transport_quic::wire::{
    MAX_HELLO_SIZE, PEER_ALPN, PROTOCOL_VERSION, PeerHello, STREAM_BAD_FRAME, STREAM_KIND_CALLS,
    STREAM_KIND_SUBSCRIBE,
};
use raft_transport_quic::{
    ClientConnector, ClientError, ClientHandler, ClientOptions, ClientRequest, QuicTransport,
    Response, Role, frame, node_server_name,
};

const MAX: usize = 64 * 1024;

/// A peer connection made by hand as node 2, past the hello.
async fn raw_peer(
    ca: &raft_transport_quic::CertificateAuthority,
    node: &QuicTransport,
) -> (quinn::Endpoint, quinn::Connection) {
    let identity = identity(ca, CLUSTER, 2);
    let endpoint = raw_endpoint(Some(&identity), &identity, PEER_ALPN);
    let connection = connection_outcome(
        &endpoint,
        node.local_addr().unwrap(),
        &node_server_name(CLUSTER, 1),
    )
    .await
    .unwrap();
    let (mut send, mut recv) = connection.open_bi().await.unwrap();
    let hello = PeerHello {
        version: PROTOCOL_VERSION,
        cluster_id: CLUSTER.into(),
        node_id: 2,
        incarnation: 1,
    };
    send.write_all(&frame::encode(&hello, MAX_HELLO_SIZE).unwrap())
        .await
        .unwrap();
    send.finish().unwrap();
    let reply: PeerHello = frame::read_value(&mut recv, MAX_HELLO_SIZE)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(reply.node_id, 1);
    (endpoint, connection)
}

/// Writes `bytes` on a new stream and waits for the node to stop it with
/// the bad-frame code.
async fn expect_stopped(connection: &quinn::Connection, bytes: &[u8]) {
    let mut send = connection.open_uni().await.unwrap();
    let _ = send.write_all(bytes).await;
    let stopped = tokio::time::timeout(DEADLINE, send.stopped())
        .await
        .expect("the node reacts");
    assert_eq!(stopped.unwrap(), Some(STREAM_BAD_FRAME.into()));
}

/// Writes `bytes` on a new stream, ends it, and waits until the node has
/// counted one more rejected frame.
async fn expect_rejected_at_end(
    node: &QuicTransport,
    connection: &quinn::Connection,
    bytes: &[u8],
) {
    let before = node.stats().frames_rejected;
    let mut send = connection.open_uni().await.unwrap();
    send.write_all(bytes).await.unwrap();
    send.finish().unwrap();
    let deadline = Instant::now() + DEADLINE;
    while node.stats().frames_rejected == before {
        assert!(
            Instant::now() < deadline,
            "the truncated frame was not rejected"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_peer_frames_are_rejected_and_the_node_keeps_serving() {
    init_tracing();
    let ca = ca();
    let mut cfg = config(1, CLUSTER, loopback());
    cfg.max_frame_size = MAX;
    let node = start_with(&ca, cfg).await;
    let other = start(&ca, 3).await;
    connect_all(&[&node, &other]);
    wait_linked(&other, &node).await;

    let (_endpoint, raw) = raw_peer(&ca, &node).await;

    // Garbage that postcard cannot decode as a Message.
    expect_stopped(&raw, &frame::encode_raw(&[0xff; 32], MAX).unwrap()).await;
    // An oversized length prefix (nothing is allocated for it).
    expect_stopped(&raw, &((MAX as u32) + 1).to_be_bytes()).await;
    expect_stopped(&raw, &u32::MAX.to_be_bytes()).await;
    // A truncated frame: the prefix announces 100 bytes, 10 come, then the end.
    let mut truncated = BytesMut::new();
    truncated.put_u32(100);
    truncated.put_slice(&[0; 10]);
    expect_rejected_at_end(&node, &raw, &truncated).await;
    // A well-formed message that claims another sender (node 3) is refused.
    expect_stopped(&raw, &frame::encode(&heartbeat(3, 1, 99), MAX).unwrap()).await;
    // A valid frame followed by garbage: the valid one is delivered first.
    let mut mixed = BytesMut::new();
    frame::encode_into(&heartbeat(2, 1, 7), MAX, &mut mixed).unwrap();
    mixed.put_slice(&frame::encode_raw(b"\xff\xff\xff", MAX).unwrap());
    expect_stopped(&raw, &mixed).await;
    let delivered = recv_within(&node, DEADLINE)
        .await
        .expect("the valid frame before the bad one");
    assert_eq!((delivered.from, round_of(&delivered)), (2, Some(7)));
    assert!(node.stats().frames_rejected >= 6);

    // The same connection still works on a new stream...
    let mut send = raw.open_uni().await.unwrap();
    send.write_all(&frame::encode(&heartbeat(2, 1, 8), MAX).unwrap())
        .await
        .unwrap();
    let message = recv_within(&node, DEADLINE)
        .await
        .expect("a good frame after bad ones");
    assert_eq!((message.from, round_of(&message)), (2, Some(8)));
    // ...and other peers were never disturbed.
    wait_linked(&other, &node).await;
    wait_linked(&node, &other).await;
}

struct Echo;

#[async_trait::async_trait]
impl ClientHandler for Echo {
    async fn handle(&self, request: ClientRequest) -> Response {
        Response::Unary(request.body)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_client_frames_are_rejected_and_the_node_keeps_serving() {
    init_tracing();
    let ca = ca();
    let mut cfg = config(1, CLUSTER, loopback());
    cfg.max_frame_size = MAX;
    cfg.client_handler = Some(Arc::new(Echo));
    let node = start_with(&ca, cfg).await;
    let identity = ca.client_identity(CLUSTER, "alice", Role::Admin).unwrap();
    // The client allows bigger frames than the node: the node must refuse.
    let mut options = ClientOptions::default();
    options.max_frame_size = 4 * MAX;
    let connector = ClientConnector::new(&identity, options).unwrap();
    let connection = connector
        .connect_to(&node.local_addr().unwrap().to_string())
        .await
        .unwrap();

    let oversized = connection.request(&vec![7u8; 2 * MAX]).await;
    assert!(
        matches!(oversized, Err(ClientError::Reset { code }) if code == u64::from(STREAM_BAD_FRAME)),
        "{oversized:?}"
    );

    // A truncated subscription request on a raw stream of the same kind
    // of connection.
    let endpoint = raw_endpoint(Some(&identity), &identity, b"raft-client/2");
    let raw = connection_outcome(&endpoint, node.local_addr().unwrap(), "127.0.0.1")
        .await
        .unwrap();
    let (mut send, mut recv) = raw.open_bi().await.unwrap();
    send.write_all(&[STREAM_KIND_SUBSCRIBE, 0, 0, 0, 50, 1, 2, 3])
        .await
        .unwrap();
    send.finish().unwrap();
    let outcome = frame::read(&mut recv, MAX).await;
    assert!(outcome.is_err(), "{outcome:?}");

    // A stream of no known kind is reset.
    let (mut send, mut recv) = raw.open_bi().await.unwrap();
    send.write_all(&[0, 0, 0, 5, 1, 2, 3, 4, 5]).await.unwrap();
    send.finish().unwrap();
    let outcome = frame::read(&mut recv, MAX).await;
    assert!(outcome.is_err(), "{outcome:?}");

    // On a raw calls stream: a good call is answered, an oversized one is
    // refused by id without its bytes being kept, the next is answered,
    // and a length too short for the call header closes the stream.
    let (mut send, mut recv) = raw.open_bi().await.unwrap();
    let mut calls = BytesMut::new();
    calls.put_u8(STREAM_KIND_CALLS);
    for (id, body) in [
        (7u64, vec![1u8; 10]),
        (8, vec![2; MAX + 1]),
        (9, vec![3; 5]),
    ] {
        call_frame(&mut calls, id, &body);
    }
    send.write_all(&calls).await.unwrap();
    let mut answers: Vec<(u64, u32, Vec<u8>)> = read_answers(&mut recv, 3)
        .await
        .into_iter()
        .map(|(id, status, body)| (id, status, body.to_vec()))
        .collect();
    answers.sort();
    assert_eq!(
        answers,
        vec![
            (7, 0, vec![1; 10]),
            (8, STREAM_BAD_FRAME, Vec::new()),
            (9, 0, vec![3; 5])
        ]
    );
    send.write_all(&[0, 0, 0, 3, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0])
        .await
        .unwrap();
    let end = recv.read_chunk(usize::MAX, true).await;
    assert!(
        matches!(end, Err(quinn::ReadError::Reset(code)) if code == STREAM_BAD_FRAME.into()),
        "{end:?}"
    );

    // The node keeps answering.
    assert_eq!(
        connection.request(b"still there?").await.unwrap(),
        Bytes::from_static(b"still there?")
    );
    assert!(node.stats().frames_rejected >= 2);
}
