//! What one client may cost a node: connections per client identity, the
//! request bytes one identity may have in the node, the time a started
//! request has to arrive, the answers waiting for a client that does not
//! read them, and the connection receive window of clients.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use common::*;
use raft_transport_quic::wire::{
    CLIENT_ALPN, CLOSE_TOO_MANY_CONNECTIONS, STREAM_KIND_CALLS, STREAM_KIND_SUBSCRIBE,
    STREAM_TOO_SLOW,
};
use raft_transport_quic::{
    ClientConnection, ClientConnector, ClientError, ClientHandler, ClientOptions, ClientRequest,
    QuicTransport, Response, Role, TlsIdentity, TransportConfig,
};
use tokio::sync::Semaphore;
use tokio::time::Instant;

/// `echo:<x>` answers `<x>`; a body starting with `hold` waits for a
/// permit of `gate`, while counting the requests and bytes held at once;
/// `big:<n>` answers n bytes, counting the answers produced.
struct Service {
    gate: Semaphore,
    holding: AtomicUsize,
    holding_bytes: AtomicUsize,
    most_holding_bytes: AtomicUsize,
    answered_big: AtomicUsize,
}

#[async_trait::async_trait]
impl ClientHandler for Service {
    async fn handle(&self, request: ClientRequest) -> Response {
        let body = request.body;
        if let Some(rest) = body.strip_prefix(b"echo:") {
            return Response::Unary(Bytes::copy_from_slice(rest));
        }
        if let Some(n) = body.strip_prefix(b"big:") {
            let n: usize = std::str::from_utf8(n).unwrap().parse().unwrap();
            self.answered_big.fetch_add(1, Ordering::SeqCst);
            return Response::Unary(Bytes::from(vec![7u8; n]));
        }
        if body.starts_with(b"hold") {
            let len = body.len();
            let bytes = self.holding_bytes.fetch_add(len, Ordering::SeqCst) + len;
            self.most_holding_bytes.fetch_max(bytes, Ordering::SeqCst);
            self.holding.fetch_add(1, Ordering::SeqCst);
            self.gate.acquire().await.unwrap().forget();
            self.holding.fetch_sub(1, Ordering::SeqCst);
            self.holding_bytes.fetch_sub(len, Ordering::SeqCst);
            return Response::Unary(Bytes::from_static(b"released"));
        }
        Response::Unary(body)
    }
}

async fn serve(
    ca: &raft_transport_quic::CertificateAuthority,
    adjust: impl FnOnce(&mut TransportConfig),
) -> (QuicTransport, Arc<Service>) {
    init_tracing();
    let service = Arc::new(Service {
        gate: Semaphore::new(0),
        holding: AtomicUsize::new(0),
        holding_bytes: AtomicUsize::new(0),
        most_holding_bytes: AtomicUsize::new(0),
        answered_big: AtomicUsize::new(0),
    });
    let mut cfg = config(1, CLUSTER, loopback());
    cfg.client_handler = Some(service.clone());
    adjust(&mut cfg);
    (start_with(ca, cfg).await, service)
}

fn client(ca: &raft_transport_quic::CertificateAuthority, name: &str) -> TlsIdentity {
    ca.client_identity(CLUSTER, name, Role::ReadWrite).unwrap()
}

async fn connect(identity: &TlsIdentity, node: &QuicTransport) -> ClientConnection {
    connect_with(identity, node, ClientOptions::default()).await
}

async fn connect_with(
    identity: &TlsIdentity,
    node: &QuicTransport,
    options: ClientOptions,
) -> ClientConnection {
    // One connector (socket) per connection, as separate processes would.
    let connector = ClientConnector::new(identity, options).unwrap();
    connector
        .connect_to(&node.local_addr().unwrap().to_string())
        .await
        .unwrap()
}

async fn within<T>(what: &str, future: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(DEADLINE, future)
        .await
        .unwrap_or_else(|_| panic!("{what}: nothing within {DEADLINE:?}"))
}

async fn raw_client(identity: &TlsIdentity, node: &QuicTransport) -> quinn::Connection {
    let endpoint = raw_endpoint(Some(identity), identity, CLIENT_ALPN);
    let addr: SocketAddr = node.local_addr().unwrap();
    connection_outcome(&endpoint, addr, "127.0.0.1")
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_identity_has_a_limited_number_of_connections() {
    let ca = ca();
    let (node, _) = serve(&ca, |c| c.max_connections_per_client = 3).await;
    let alice = client(&ca, "alice");
    let mut open = Vec::new();
    for i in 0..3 {
        let connection = connect(&alice, &node).await;
        let echo = format!("echo:{i}");
        assert_eq!(
            connection.request(echo.as_bytes()).await.unwrap(),
            Bytes::from(i.to_string())
        );
        open.push(connection);
    }
    // A fourth connection with the same certificate is closed right after
    // the handshake, with a reason that says what to do.
    let fourth = connect(&alice, &node).await;
    let refused = within("the refusal", fourth.request(b"echo:4")).await;
    match &refused {
        Err(ClientError::Refused { code, reason }) => {
            assert_eq!(*code, CLOSE_TOO_MANY_CONNECTIONS);
            assert!(
                reason.contains("close some connections or use another client certificate"),
                "{reason}"
            );
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    println!("{}", refused.unwrap_err());
    // The same name with another role is the same client.
    let alice_admin = ca.client_identity(CLUSTER, "alice", Role::Admin).unwrap();
    let refused = within(
        "the refusal",
        connect(&alice_admin, &node).await.request(b"x"),
    )
    .await;
    assert!(
        matches!(refused, Err(ClientError::Refused { code, .. }) if code == CLOSE_TOO_MANY_CONNECTIONS),
        "{refused:?}"
    );
    assert_eq!(node.stats().client_connections_over_limit, 2);
    // Another identity is not affected.
    let bob = connect(&client(&ca, "bob"), &node).await;
    assert_eq!(bob.request(b"echo:bob").await.unwrap(), "bob");
    // The existing connections still work.
    assert_eq!(open[0].request(b"echo:still").await.unwrap(), "still");

    // Once one closes, alice may connect again.
    open.pop().unwrap().close();
    let deadline = Instant::now() + DEADLINE;
    loop {
        let again = connect(&alice, &node).await;
        match within("an answer", again.request(b"echo:again")).await {
            Ok(answer) => {
                assert_eq!(answer, "again");
                break;
            }
            Err(ClientError::Refused { .. }) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(error) => panic!("alice could not connect again: {error}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_requests_of_one_identity_share_a_byte_budget() {
    const BUDGET: usize = 4 << 20;
    const REQUEST: usize = 1 << 20;
    let ca = ca();
    let (node, service) = serve(&ca, |c| {
        c.max_frame_size = 2 << 20;
        c.max_client_request_bytes = BUDGET;
    })
    .await;
    let alice = client(&ca, "alice");
    // Two connections of one identity, eight 1 MiB requests each, that the
    // handler holds: at most three (1 MiB and 16 bytes of frame each) fit in
    // the budget.
    let connections = [connect(&alice, &node).await, connect(&alice, &node).await];
    let mut body = vec![0u8; REQUEST];
    body[..4].copy_from_slice(b"hold");
    let body = Bytes::from(body);
    let requests: Vec<_> = (0..16)
        .map(|i| {
            let connection = connections[i % 2].clone();
            let body = body.clone();
            tokio::spawn(async move { connection.request(&body).await })
        })
        .collect();
    let deadline = Instant::now() + DEADLINE;
    while service.holding.load(Ordering::SeqCst) < 3 {
        assert!(
            Instant::now() < deadline,
            "requests never reached the handler"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Given time, no more arrive: the rest wait in the client.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let most = service.most_holding_bytes.load(Ordering::SeqCst);
    println!(
        "held at once: {} requests, {most} bytes (budget {BUDGET})",
        service.holding.load(Ordering::SeqCst)
    );
    assert!(most <= BUDGET, "{most} bytes held at once");

    // Another identity is served meanwhile; alice is not.
    let bob = connect(&client(&ca, "bob"), &node).await;
    assert_eq!(
        within("bob's answer", bob.request(b"echo:bob"))
            .await
            .unwrap(),
        "bob"
    );
    let blocked = tokio::time::timeout(
        Duration::from_millis(300),
        connections[0].request(b"echo:alice"),
    )
    .await;
    assert!(blocked.is_err(), "alice's budget is used up: {blocked:?}");

    // Released, everything is answered, and the budget was never exceeded.
    service.gate.add_permits(16);
    for request in requests {
        let answer = within("an answer", request).await.unwrap().unwrap();
        assert_eq!(answer, "released");
    }
    assert_eq!(
        within("alice's answer", connections[0].request(b"echo:alice"))
            .await
            .unwrap(),
        "alice"
    );
    let most = service.most_holding_bytes.load(Ordering::SeqCst);
    assert!(most <= BUDGET, "{most} bytes held at once");
}

/// Opens a raw stream of `kind`, writes `bytes` and waits for the node to
/// reset it; returns the code.
async fn reset_code(connection: &quinn::Connection, bytes: &[u8]) -> quinn::ReadError {
    let (mut send, mut recv) = connection.open_bi().await.unwrap();
    send.write_all(bytes).await.unwrap();
    let mut sink = Vec::new();
    let outcome = within("the reset", async {
        loop {
            match recv.read_chunk(usize::MAX, true).await {
                Ok(Some(chunk)) => sink.extend_from_slice(&chunk.bytes),
                Ok(None) => panic!("the stream ended without a reset"),
                Err(error) => return error,
            }
        }
    })
    .await;
    drop(send);
    outcome
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_that_stops_halfway_is_reset_and_its_budget_released() {
    const MAX: usize = 1 << 20;
    let ca = ca();
    let (node, _) = serve(&ca, |c| {
        c.max_frame_size = MAX;
        // One request of the largest size takes all of it.
        c.max_client_request_bytes = MAX;
        c.client_request_timeout = Duration::from_millis(300);
    })
    .await;
    let alice = client(&ca, "alice");
    let raw = raw_client(&alice, &node).await;
    let served = connect(&alice, &node).await;
    let too_slow = quinn::ReadError::Reset(STREAM_TOO_SLOW.into());

    // A calls stream: a request whose length says 1 MiB, and 100 bytes.
    let mut calls = BytesMut::new();
    calls.put_u8(STREAM_KIND_CALLS);
    calls.put_u32(12 + MAX as u32);
    calls.put_u64(1);
    calls.put_u32(0);
    calls.put_slice(&[1; 100]);
    assert_eq!(reset_code(&raw, &calls).await, too_slow);
    assert_eq!(node.stats().client_requests_too_slow, 1);
    // Its budget is back: a request of the same identity goes through.
    assert_eq!(
        within("an answer", served.request(b"echo:after calls"))
            .await
            .unwrap(),
        "after calls"
    );

    // A subscription: the same, and one that never even sends its length.
    let mut subscribe = BytesMut::new();
    subscribe.put_u8(STREAM_KIND_SUBSCRIBE);
    subscribe.put_u32(MAX as u32);
    subscribe.put_slice(&[2; 100]);
    assert_eq!(reset_code(&raw, &subscribe).await, too_slow);
    assert_eq!(
        reset_code(&raw, &[STREAM_KIND_SUBSCRIBE, 0, 0]).await,
        too_slow
    );
    assert_eq!(node.stats().client_requests_too_slow, 3);
    assert_eq!(
        within("an answer", served.request(b"echo:after subscribe"))
            .await
            .unwrap(),
        "after subscribe"
    );

    // A calls stream idle between requests is fine.
    let (mut send, mut recv) = raw.open_bi().await.unwrap();
    let mut first = BytesMut::new();
    first.put_u8(STREAM_KIND_CALLS);
    call_frame(&mut first, 1, b"echo:one");
    send.write_all(&first).await.unwrap();
    assert_eq!(
        within("an answer", read_answers(&mut recv, 1)).await[0].2,
        "one"
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut second = BytesMut::new();
    call_frame(&mut second, 2, b"echo:two");
    send.write_all(&second).await.unwrap();
    assert_eq!(
        within("an answer", read_answers(&mut recv, 1)).await[0].2,
        "two"
    );
    assert_eq!(node.stats().client_requests_too_slow, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_are_not_produced_faster_than_the_client_reads_them() {
    const CALLS: usize = 100;
    let ca = ca();
    let (node, service) = serve(&ca, |_| {}).await;
    let alice = client(&ca, "alice");
    let raw = raw_client(&alice, &node).await;
    // A hundred calls, each answered with 1 MiB, and nobody reading.
    let (mut send, mut recv) = raw.open_bi().await.unwrap();
    let mut calls = BytesMut::new();
    calls.put_u8(STREAM_KIND_CALLS);
    for id in 0..CALLS as u64 {
        call_frame(&mut calls, id, format!("big:{}", 1 << 20).as_bytes());
    }
    send.write_all(&calls).await.unwrap();
    let deadline = Instant::now() + DEADLINE;
    while service.answered_big.load(Ordering::SeqCst) == 0 {
        assert!(Instant::now() < deadline, "no call reached the handler");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let produced = service.answered_big.load(Ordering::SeqCst);
    println!("answers produced while the client read none: {produced} of {CALLS}");
    assert!(
        produced < CALLS / 4,
        "{produced} answers of 1 MiB produced for a client that reads none"
    );
    // Once the client reads, every answer comes (writing never stopped).
    let answers = within("every answer", read_answers(&mut recv, CALLS)).await;
    assert!(
        answers
            .iter()
            .all(|(_, status, body)| *status == 0 && body.len() == 1 << 20)
    );
    assert_eq!(service.answered_big.load(Ordering::SeqCst), CALLS);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_connection_has_a_small_receive_window() {
    const WINDOW: u32 = 1 << 20;
    let ca = ca();
    let (node, service) = serve(&ca, |c| {
        c.client_receive_window = WINDOW;
        c.max_calls_in_flight = 1;
    })
    .await;
    let alice = client(&ca, "alice");
    let raw = raw_client(&alice, &node).await;
    // One held call fills the stream's only slot: the node reads no more
    // of it, and what the client sends next stays unread.
    let (mut send, _recv) = raw.open_bi().await.unwrap();
    let mut first = BytesMut::new();
    first.put_u8(STREAM_KIND_CALLS);
    call_frame(&mut first, 1, b"hold");
    send.write_all(&first).await.unwrap();
    let deadline = Instant::now() + DEADLINE;
    while service.holding.load(Ordering::SeqCst) == 0 {
        assert!(
            Instant::now() < deadline,
            "the call never reached the handler"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Write until flow control stops the writer.
    let chunk = vec![0u8; 64 << 10];
    let mut written = 0usize;
    while let Ok(result) =
        tokio::time::timeout(Duration::from_secs(1), send.write_all(&chunk)).await
    {
        result.unwrap();
        written += chunk.len();
        assert!(written < 64 << 20, "flow control never stopped the client");
    }
    println!("unread bytes the node accepted: {written}");
    // The stream window (8 MiB) would allow more; the connection's does not.
    assert!(
        written <= WINDOW as usize + (64 << 10),
        "{written} bytes accepted with a {WINDOW}-byte window"
    );
    service.gate.add_permits(1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_of_the_largest_size_goes_through_with_the_default_limits() {
    let ca = ca();
    let (node, _) = serve(&ca, |_| {}).await;
    let connection = connect(&client(&ca, "alice"), &node).await;
    let max = raft_transport_quic::frame::DEFAULT_MAX_FRAME_SIZE;
    let body = Bytes::from((0..max).map(|i| i as u8).collect::<Vec<_>>());
    let answer = within("the answer", connection.request(&body))
        .await
        .unwrap();
    assert!(answer == body, "the 16 MiB echo differs");
    let mut pushed = within("the subscription", connection.subscribe(&body))
        .await
        .unwrap();
    let item = within("the item", pushed.next()).await.unwrap().unwrap();
    assert!(item == body, "the 16 MiB pushed echo differs");
}
