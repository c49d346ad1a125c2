//! The client API: request/response, concurrent requests, server-push
//! streams (watches), cancellation, and a failing handler.

mod common;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use raft_transport_quic::wire::STREAM_HANDLER_FAILED;
use raft_transport_quic::{
    ClientConnection, ClientConnector, ClientError, ClientHandler, ClientOptions, ClientRequest,
    PushClosed, QuicTransport, Response, push_channel,
};
use tokio::sync::mpsc;

/// `echo:<x>` answers `<x>`; `count:<n>` pushes n items then ends;
/// `forever` pushes until the client leaves, then reports on `gone`;
/// `panic` panics.
struct Service {
    gone: mpsc::UnboundedSender<PushClosed>,
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
        Response::Unary(Bytes::from_static(b"unknown"))
    }
}

async fn setup() -> (
    QuicTransport,
    ClientConnector,
    ClientConnection,
    mpsc::UnboundedReceiver<PushClosed>,
) {
    init_tracing();
    let ca = ca();
    let (gone, gone_rx) = mpsc::unbounded_channel();
    let mut cfg = config(1, CLUSTER, loopback());
    cfg.client_handler = Some(Arc::new(Service { gone }));
    let node = start_with(&ca, cfg).await;
    let identity = ca.client_identity(CLUSTER, "alice").unwrap();
    let connector = ClientConnector::new(&identity, ClientOptions::default()).unwrap();
    let connection = connector
        .connect_to(&node.local_addr().unwrap().to_string())
        .await
        .unwrap();
    (node, connector, connection, gone_rx)
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
