//! Loopback throughput of the peer transport: messages/s and MiB/s for
//! 256 B and 64 KiB AppendEntries payloads, one at a time (send, wait for
//! the answer, repeat) and pipelined (send as fast as the bounded queue
//! allows). Prints results; asserts nothing.
//!
//! Run: `cargo bench -p raft-transport-quic --bench throughput`

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use raft_core::adapters::{Transport, TransportError};
use raft_core::{AppendRequest, AppendResponse, Entry, EntryPayload, LogId, Message, MessageBody};
use raft_transport_quic::{CertificateAuthority, QuicTransport, TransportConfig};

const CLUSTER: &str = "bench";
const RUN_FOR: Duration = Duration::from_secs(3);

fn append(index: u64, payload: &Bytes) -> Message {
    Message {
        from: 1,
        to: 2,
        term: 1,
        body: MessageBody::Append(AppendRequest {
            prev: LogId::new(1, index.saturating_sub(1)),
            entries: vec![Entry {
                term: 1,
                index,
                payload: EntryPayload::Command(payload.clone()),
            }],
            commit: 0,
        }),
    }
}

async fn node(ca: &CertificateAuthority, id: u64) -> QuicTransport {
    let config = TransportConfig::new(id, CLUSTER, "127.0.0.1:0".parse().unwrap());
    let identity = ca.node_identity(CLUSTER, id, ["127.0.0.1"]).unwrap();
    QuicTransport::start(config, &identity).await.unwrap()
}

async fn send(node: &QuicTransport, message: Message) {
    loop {
        match node.send(message.clone()) {
            Ok(()) => return,
            // The queue is full: the pipeline is as deep as it goes. A
            // driver would report the peer unreachable and carry on; here
            // we wait a moment rather than spin on the two cores.
            Err(TransportError::Unreachable(_)) => {
                tokio::time::sleep(Duration::from_millis(1)).await
            }
            Err(error) => panic!("{error}"),
        }
    }
}

fn report(label: &str, messages: u64, payload: usize, elapsed: Duration) {
    let secs = elapsed.as_secs_f64();
    println!(
        "{label:<28} {:>10.0} messages/s {:>9.1} MiB/s   ({messages} messages in {elapsed:.2?})",
        messages as f64 / secs,
        (messages as f64 * payload as f64) / secs / (1024.0 * 1024.0),
    );
}

/// Send one append, wait for its answer, repeat.
async fn one_at_a_time(
    a: &QuicTransport,
    b: &Arc<QuicTransport>,
    payload: &Bytes,
) -> (u64, Duration) {
    let responder = {
        let b = b.clone();
        tokio::spawn(async move {
            while let Some(message) = b.recv().await {
                let MessageBody::Append(request) = message.body else {
                    continue;
                };
                let index = request.entries.last().map_or(0, |e| e.index);
                let answer = Message {
                    from: 2,
                    to: 1,
                    term: 1,
                    body: MessageBody::AppendResponse(AppendResponse::Success {
                        match_index: index,
                    }),
                };
                let _ = b.send(answer);
            }
        })
    };
    let started = Instant::now();
    let mut index = 0;
    while started.elapsed() < RUN_FOR {
        index += 1;
        send(a, append(index, payload)).await;
        loop {
            let answer = a.recv().await.expect("answer");
            if matches!(answer.body, MessageBody::AppendResponse(AppendResponse::Success { match_index }) if match_index == index)
            {
                break;
            }
        }
    }
    let elapsed = started.elapsed();
    responder.abort();
    (index, elapsed)
}

/// Send appends back to back; time until the last one arrives.
async fn pipelined(a: &QuicTransport, b: &Arc<QuicTransport>, payload: &Bytes) -> (u64, Duration) {
    let (sent_tx, mut sent_rx) = tokio::sync::watch::channel(None::<u64>);
    let counter = {
        let b = b.clone();
        tokio::spawn(async move {
            let mut received = 0u64;
            loop {
                if let Some(total) = *sent_rx.borrow_and_update() {
                    if received >= total {
                        return (received, Instant::now());
                    }
                }
                tokio::select! {
                    message = b.recv() => { if message.is_some() { received += 1 } }
                    _ = sent_rx.changed() => {}
                }
            }
        })
    };
    let started = Instant::now();
    let mut index = 0;
    while started.elapsed() < RUN_FOR {
        index += 1;
        send(a, append(index, payload)).await;
    }
    let _ = sent_tx.send(Some(index));
    let (received, finished) = counter.await.unwrap();
    (received, finished - started)
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let ca = CertificateAuthority::generate("bench CA").unwrap();
        let a = node(&ca, 1).await;
        let b = Arc::new(node(&ca, 2).await);
        let peers = BTreeMap::from([
            (1, a.local_addr().unwrap().to_string()),
            (2, b.local_addr().unwrap().to_string()),
        ]);
        a.update_peers(&peers);
        b.update_peers(&peers);

        println!("raft-transport-quic loopback throughput (2 endpoints, mutual TLS, one process)");
        for size in [256usize, 64 * 1024] {
            let payload = Bytes::from(vec![0xab; size]);
            let label = if size == 256 { "256 B" } else { "64 KiB" };
            // Warm up the connection (and let both nodes settle on one).
            let _ = one_at_a_time_for(&a, &b, &payload, Duration::from_millis(300)).await;
            let (messages, elapsed) = one_at_a_time(&a, &b, &payload).await;
            report(&format!("{label}, one at a time"), messages, size, elapsed);
            let (messages, elapsed) = pipelined(&a, &b, &payload).await;
            report(&format!("{label}, pipelined"), messages, size, elapsed);
        }
    });
}

async fn one_at_a_time_for(
    a: &QuicTransport,
    b: &Arc<QuicTransport>,
    payload: &Bytes,
    duration: Duration,
) -> u64 {
    let deadline = Instant::now() + duration;
    let mut sent = 0;
    while Instant::now() < deadline {
        sent += 1;
        send(a, append(sent, payload)).await;
        let _ = tokio::time::timeout(Duration::from_secs(5), b.recv()).await;
    }
    sent
}
