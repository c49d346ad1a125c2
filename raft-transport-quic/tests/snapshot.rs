//! A 64 MiB snapshot streams in 1 MiB chunks, with backpressure, while
//! heartbeats keep flowing on their own stream. Prints the heartbeat delay
//! during the transfer (informational: no performance assertion).

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use raft_core::adapters::{Transport, TransportError};
use raft_core::{LogId, Message, MessageBody, SnapshotChunk, SnapshotMeta};

const CHUNK: usize = 1 << 20;
const CHUNKS: usize = 64;

fn chunk(i: usize) -> Message {
    let meta = SnapshotMeta {
        last: LogId::new(3, 1000),
        size: (CHUNK * CHUNKS) as u64,
        ..Default::default()
    };
    Message {
        from: 1,
        to: 2,
        term: 3,
        body: MessageBody::Snapshot(SnapshotChunk {
            meta,
            offset: (i * CHUNK) as u64,
            data: Bytes::from(vec![i as u8; CHUNK]),
            done: i + 1 == CHUNKS,
        }),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_64_mib_snapshot_streams_while_heartbeats_keep_flowing() {
    init_tracing();
    let ca = ca();
    let a = Arc::new(start(&ca, 1).await);
    let b = Arc::new(start(&ca, 2).await);
    connect_all(&[&a, &b]);
    wait_linked(&a, &b).await;

    let sent_at: Arc<Mutex<HashMap<u64, Instant>>> = Arc::default();
    let transfer_done = Arc::new(tokio::sync::Notify::new());

    // The receiver drains everything, like a driver would.
    let receiver = {
        let b = b.clone();
        let sent_at = sent_at.clone();
        tokio::spawn(async move {
            let mut idle_delays = Vec::new(); // before the first chunk
            let mut delays = Vec::new(); // during the transfer
            let mut next_offset = 0u64;
            let mut finished_at = None;
            while finished_at.is_none() || delays.len() < 5 {
                let message = recv_within(&b, DEADLINE)
                    .await
                    .expect("the transfer stalled");
                match message.body {
                    MessageBody::Heartbeat(heartbeat) => {
                        let sent = sent_at.lock().unwrap()[&heartbeat.round];
                        if next_offset == 0 {
                            idle_delays.push(sent.elapsed());
                        } else if finished_at.is_none() {
                            delays.push(sent.elapsed());
                        }
                    }
                    MessageBody::Snapshot(chunk) => {
                        // One ordered stream: chunks arrive complete and in order.
                        assert_eq!(chunk.offset, next_offset);
                        let i = (chunk.offset as usize) / CHUNK;
                        assert!(
                            chunk.data[..] == vec![i as u8; CHUNK][..],
                            "chunk {i} corrupted"
                        );
                        next_offset += chunk.data.len() as u64;
                        if chunk.done {
                            finished_at = Some(Instant::now());
                        }
                    }
                    other => panic!("unexpected {other:?}"),
                }
            }
            (next_offset, idle_delays, delays, finished_at.unwrap())
        })
    };

    // Heartbeats every 10 ms until the transfer ends.
    let heartbeats = {
        let a = a.clone();
        let sent_at = sent_at.clone();
        let transfer_done = transfer_done.clone();
        tokio::spawn(async move {
            let mut round = 0;
            loop {
                sent_at.lock().unwrap().insert(round, Instant::now());
                a.send(heartbeat(1, 2, round))
                    .expect("heartbeats never find their queue full");
                round += 1;
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(10)) => {}
                    _ = transfer_done.notified() => return round,
                }
            }
        })
    };

    // A quiet moment first, for a baseline heartbeat delay.
    tokio::time::sleep(Duration::from_millis(200)).await;

    // The snapshot: a full queue means "slow down" (backpressure).
    let started = Instant::now();
    let mut pushed_back = 0;
    for i in 0..CHUNKS {
        let message = chunk(i);
        loop {
            match a.send(message.clone()) {
                Ok(()) => break,
                Err(TransportError::Unreachable(2)) => {
                    pushed_back += 1;
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                Err(error) => panic!("{error}"),
            }
        }
    }
    let (bytes, mut idle_delays, mut delays, finished_at) = receiver.await.unwrap();
    transfer_done.notify_one();
    let rounds = heartbeats.await.unwrap();
    assert_eq!(bytes, (CHUNK * CHUNKS) as u64);
    assert!(!delays.is_empty());

    let elapsed = finished_at - started;
    delays.sort();
    idle_delays.sort();
    let median = delays[delays.len() / 2];
    let max = *delays.last().unwrap();
    let idle_median = idle_delays
        .get(idle_delays.len() / 2)
        .copied()
        .unwrap_or_default();
    println!(
        "snapshot: {} MiB in {elapsed:.2?} ({:.1} MiB/s, {pushed_back} pushbacks); {} heartbeats during the transfer \
         ({rounds} sent in all): delay median {median:.2?}, max {max:.2?} (median {idle_median:.2?} before the transfer)",
        CHUNKS,
        CHUNKS as f64 / elapsed.as_secs_f64(),
        delays.len(),
    );
}
