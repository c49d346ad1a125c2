//! Fairness of the inbound queue: one peer's flood must not delay the
//! messages of other peers on their way to `recv` (and so to the driver).
//! Positions in the receive order are measured, not speed.

mod common;

use std::time::{Duration, Instant};

use common::*;
use raft_core::Message;
use raft_transport_quic::TransportConfig;

/// How many of the flood's messages the driver may take before another
/// peer's heartbeat, once that heartbeat was sent. The driver below takes
/// one message per millisecond, so this leaves the heartbeat about a second
/// to cross loopback; a queue served in arrival order puts it behind the
/// whole queue (4096 messages by default).
const LIMIT: usize = 1000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooding_peer_does_not_delay_another_peers_heartbeats() {
    init_tracing();
    let ca = ca();
    let node = start(&ca, 1).await;
    let queue = TransportConfig::new(1, CLUSTER, loopback()).inbound_queue as u64;
    let flooder = RawPeer::new(&ca, 2, 1);
    let steady = RawPeer::new(&ca, 3, 1);
    let flood_connection = flooder.dial(&node).await.expect("node 1 accepts node 2");
    let steady_connection = steady.dial(&node).await.expect("node 1 accepts node 3");
    let mut steady_stream = send_frames(&steady_connection, &[heartbeat(3, 1, 0)])
        .await
        .unwrap();
    let first = recv_within(&node, DEADLINE).await.expect("delivered");
    assert_eq!((first.from, round_of(&first)), (3, Some(0)));

    // Node 2 floods node 1 with heartbeats, back to back, until flow
    // control holds it back.
    let flood = tokio::spawn(async move {
        let mut stream = flood_connection.open_uni().await.unwrap();
        let mut round = 0;
        loop {
            let batch: Vec<Message> = (round..round + 256).map(|r| heartbeat(2, 1, r)).collect();
            round += 256;
            if write_frames(&mut stream, &batch).await.is_err() {
                return;
            }
        }
    });
    // The inbound queue fills up with the flood.
    let deadline = Instant::now() + DEADLINE;
    while node.stats().messages_received < 1 + queue {
        assert!(
            Instant::now() < deadline,
            "the flood did not fill the queue"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // The driver takes one message per millisecond; meanwhile node 3 sends
    // a heartbeat now and then. Count the flood's messages taken between
    // sending each heartbeat and receiving it.
    let mut positions = Vec::new();
    for round in 1..=5 {
        for _ in 0..10 {
            let message = recv_within(&node, DEADLINE).await.expect("the flood");
            assert_eq!(message.from, 2);
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        write_frames(&mut steady_stream, &[heartbeat(3, 1, round)])
            .await
            .unwrap();
        let mut before = 0;
        loop {
            let message = recv_within(&node, DEADLINE).await.expect("messages arrive");
            if message.from == 3 {
                assert_eq!(round_of(&message), Some(round));
                break;
            }
            before += 1;
            assert!(
                before < LIMIT,
                "node 3's heartbeat {round} was still not delivered after {before} messages \
                 of the flooding node 2 (the positions of earlier ones: {positions:?})"
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        positions.push(before);
    }
    println!("node 3's heartbeats came after this many of node 2's messages: {positions:?}");
    flood.abort();
}

/// `recv` returns a queued message on its first poll (a driver may drain
/// what is already there with one poll per message, as raft-kv's does), and
/// dropping an unfinished `recv` loses nothing (it is cancel-safe).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recv_returns_a_queued_message_on_its_first_poll_and_is_cancel_safe() {
    use raft_core::adapters::Transport;
    use std::future::Future;
    use std::task::{Context, Poll, Waker};

    init_tracing();
    let ca = ca();
    let node = start(&ca, 1).await;
    let poll_once = |node: &raft_transport_quic::QuicTransport| {
        let mut cx = Context::from_waker(Waker::noop());
        let recv = std::pin::pin!(node.recv());
        match recv.poll(&mut cx) {
            Poll::Ready(message) => Some(message),
            Poll::Pending => None,
        }
    };
    // Nothing queued: pending; the call is dropped while waiting.
    assert!(poll_once(&node).is_none());
    // Messages to itself go through the same queue.
    node.send(heartbeat(1, 1, 1)).unwrap();
    node.send(heartbeat(1, 1, 2)).unwrap();
    for round in [1, 2] {
        let message = poll_once(&node).expect("ready at once").expect("a message");
        assert_eq!(round_of(&message), Some(round));
    }
    assert!(poll_once(&node).is_none());
    // The calls dropped while waiting took nothing: a later message arrives.
    node.send(heartbeat(1, 1, 3)).unwrap();
    let third = recv_within(&node, DEADLINE)
        .await
        .expect("the third message");
    assert_eq!(round_of(&third), Some(3));
}
