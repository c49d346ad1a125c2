//! The client API: request/response, concurrent requests on one calls
//! stream and their limit, server-push streams (watches), cancellation, and
//! a failing handler.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use common::*;
use raft_transport_quic::wire::STREAM_HANDLER_FAILED;
use raft_transport_quic::{
    ClientConnection, ClientConnector, ClientError, ClientHandler, ClientOptions, ClientRequest,
    PushClosed, QuicTransport, Response, Role, push_channel,
};
use tokio::sync::{Semaphore, mpsc};

/// `echo:<x>` answers `<x>`; `count:<n>` pushes n items then ends;
/// `forever` pushes until the client leaves, then reports on `gone`;
/// `panic` panics; `hold` waits for a permit of `gate`, counting how many
/// wait at once.
struct Service {
    gone: mpsc::UnboundedSender<PushClosed>,
    gate: Arc<Semaphore>,
    holding: Arc<AtomicUsize>,
    most_holding: Arc<AtomicUsize>,
}

#[async_trait::async_trait]
impl ClientHandler for Service {
    async fn handle(&self, request: ClientRequest) -> Response {
        let text = String::from_utf8_lossy(&request.body).into_owned();
        if let Some(rest) = text.strip_prefix("echo:") {
            return Response::Unary(Bytes::from(rest.to_owned()));
        }
        if let Some(n) = text.strip_prefix("count:") {
            let n: u32 = n.parse().unwrap_or(0);
            let (sender, stream) = push_channel(4);
            tokio::spawn(async move {
                for i in 0..n {
                    if sender
                        .send(Bytes::from(format!("event {i}")))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
            });
            return Response::Stream(stream);
        }
        if text == "forever" {
            let (sender, stream) = push_channel(1);
            let gone = self.gone.clone();
            tokio::spawn(async move {
                let mut i = 0u64;
                loop {
                    i += 1;
                    if let Err(closed) = sender.send(Bytes::from(i.to_string())).await {
                        let _ = gone.send(closed);
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            });
            return Response::Stream(stream);
        }
        if text == "panic" {
            panic!("the handler panics on purpose");
        }
        if text == "hold" {
            let now = self.holding.fetch_add(1, Ordering::SeqCst) + 1;
            self.most_holding.fetch_max(now, Ordering::SeqCst);
            let permit = self.gate.acquire().await.unwrap();
            permit.forget();
            self.holding.fetch_sub(1, Ordering::SeqCst);
            return Response::Unary(Bytes::from_static(b"released"));
        }
        Response::Unary(Bytes::from_static(b"unknown"))
    }
}

struct Held {
    gate: Arc<Semaphore>,
    holding: Arc<AtomicUsize>,
    most_holding: Arc<AtomicUsize>,
}

async fn setup() -> (
    QuicTransport,
    ClientConnector,
    ClientConnection,
    mpsc::UnboundedReceiver<PushClosed>,
) {
    let (node, connector, connection, gone, _) = setup_with(1024).await;
    (node, connector, connection, gone)
}

async fn setup_with(
    max_calls_in_flight: u32,
) -> (
    QuicTransport,
    ClientConnector,
    ClientConnection,
    mpsc::UnboundedReceiver<PushClosed>,
    Held,
) {
    init_tracing();
    let ca = ca();
    let (gone, gone_rx) = mpsc::unbounded_channel();
    let held = Held {
        gate: Arc::new(Semaphore::new(0)),
        holding: Arc::default(),
        most_holding: Arc::default(),
    };
    let mut cfg = config(1, CLUSTER, loopback());
    cfg.max_calls_in_flight = max_calls_in_flight;
    cfg.client_handler = Some(Arc::new(Service {
        gone,
        gate: held.gate.clone(),
        holding: held.holding.clone(),
        most_holding: held.most_holding.clone(),
    }));
    let node = start_with(&ca, cfg).await;
    let identity = ca.client_identity(CLUSTER, "alice", Role::Admin).unwrap();
    let connector = ClientConnector::new(&identity, ClientOptions::default()).unwrap();
    let connection = connector
        .connect_to(&node.local_addr().unwrap().to_string())
        .await
        .unwrap();
    (node, connector, connection, gone_rx, held)
}

async fn wait_holding(held: &Held, n: usize) {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while held.holding.load(Ordering::SeqCst) < n {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{n} requests never got to the handler together"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_share_one_stream_and_a_slow_one_holds_back_none() {
    let (node, _connector, connection, _, held) = setup_with(1024).await;
    let slow = {
        let connection = connection.clone();
        tokio::spawn(async move { connection.request(b"hold").await })
    };
    wait_holding(&held, 1).await;
    let requests: Vec<_> = (0..200)
        .map(|i| {
            let connection = connection.clone();
            tokio::spawn(async move { connection.request(format!("echo:{i}").as_bytes()).await })
        })
        .collect();
    for (i, request) in requests.into_iter().enumerate() {
        assert_eq!(request.await.unwrap().unwrap(), Bytes::from(i.to_string()));
    }
    assert!(!slow.is_finished(), "the slow request is still held");
    held.gate.add_permits(1);
    assert_eq!(
        slow.await.unwrap().unwrap(),
        Bytes::from_static(b"released")
    );
    // 202 requests, one stream.
    assert_eq!(node.stats().client_streams, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_calls_stream_runs_at_most_its_limit_at_once() {
    let (_node, _connector, connection, _, held) = setup_with(4).await;
    let requests: Vec<_> = (0..12)
        .map(|_| {
            let connection = connection.clone();
            tokio::spawn(async move { connection.request(b"hold").await })
        })
        .collect();
    wait_holding(&held, 4).await;
    // The others wait in the client (QUIC flow control): given time, no
    // fifth request reaches the handler.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(held.most_holding.load(Ordering::SeqCst), 4);
    held.gate.add_permits(12);
    for request in requests {
        assert_eq!(
            request.await.unwrap().unwrap(),
            Bytes::from_static(b"released")
        );
    }
    assert_eq!(held.most_holding.load(Ordering::SeqCst), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abandoned_call_does_not_disturb_the_next() {
    let (_node, _connector, connection, _, held) = setup_with(1024).await;
    let abandoned =
        tokio::time::timeout(Duration::from_millis(50), connection.request(b"hold")).await;
    assert!(
        abandoned.is_err(),
        "the held request cannot be answered yet"
    );
    held.gate.add_permits(1);
    // Its late answer is dropped; the next call gets its own.
    assert_eq!(
        connection.request(b"echo:next").await.unwrap(),
        Bytes::from_static(b"next")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_are_answered_concurrently() {
    let (_node, _connector, connection, _) = setup().await;
    assert_eq!(
        connection.request(b"echo:hi").await.unwrap(),
        Bytes::from_static(b"hi")
    );
    let requests = (0..64).map(|i| {
        let connection = connection.clone();
        tokio::spawn(async move { connection.request(format!("echo:{i}").as_bytes()).await })
    });
    for (i, request) in requests.enumerate() {
        assert_eq!(request.await.unwrap().unwrap(), Bytes::from(i.to_string()));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_stream_delivers_every_item_in_order_then_ends() {
    let (_node, _connector, connection, _) = setup().await;
    let mut watch = connection.subscribe(b"count:25").await.unwrap();
    for i in 0..25 {
        assert_eq!(
            watch.next().await.unwrap(),
            Some(Bytes::from(format!("event {i}")))
        );
    }
    assert_eq!(watch.next().await.unwrap(), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pusher_learns_when_the_client_goes_away() {
    let (_node, _connector, connection, mut gone) = setup().await;
    let mut watch = connection.subscribe(b"forever").await.unwrap();
    for _ in 0..3 {
        assert!(watch.next().await.unwrap().is_some());
    }
    drop(watch);
    let closed = tokio::time::timeout(DEADLINE, gone.recv())
        .await
        .expect("the sender notices");
    assert_eq!(closed, Some(PushClosed));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_handler_fails_only_its_request() {
    let (_node, _connector, connection, _) = setup().await;
    let failed = connection.request(b"panic").await;
    assert!(
        matches!(failed, Err(ClientError::Reset { code }) if code == u64::from(STREAM_HANDLER_FAILED)),
        "{failed:?}"
    );
    assert_eq!(
        connection.request(b"echo:ok").await.unwrap(),
        Bytes::from_static(b"ok")
    );
}
