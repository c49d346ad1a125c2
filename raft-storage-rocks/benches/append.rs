//! Append throughput with fsync on, beside the raw fsync rate of the same
//! disk.
//!
//! `cargo bench -p raft-storage-rocks --bench append`. The store and the raw
//! fsync file live in one temporary directory under `RAFT_BENCH_DIR` (or
//! the system temporary directory), so both measure the same disk. Each
//! measurement runs for `RAFT_BENCH_SECONDS` (default 3) seconds.
//!
//! - raw fsync: append 4 KiB to a file and `fdatasync` it, in a loop (what
//!   a write-ahead log does per commit).
//! - the store: `persist_blocking` of batches of 1, 16 and 256 entries with
//!   256-byte payloads, `must_sync` set (one RocksDB write batch and one
//!   fsync each), under the default, durable sync policy.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use bytes::Bytes;
use raft_core::{Entry, EntryPayload, HardState, LogWrite};
use raft_storage_rocks::{RocksStore, StoreOptions};

const PAYLOAD: usize = 256;

fn seconds() -> Duration {
    let secs = std::env::var("RAFT_BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse::<f64>().ok())
        .unwrap_or(3.0);
    Duration::from_secs_f64(secs)
}

/// fsyncs per second: 4 KiB appended and `fdatasync`ed per iteration.
fn raw_fsync_rate(dir: &Path, run: Duration) -> f64 {
    let path = dir.join("raw-fsync");
    let mut file = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(&path)
        .expect("creating the fsync probe file");
    let block = [0xA5u8; 4096];
    let started = Instant::now();
    let mut syncs = 0u64;
    while started.elapsed() < run {
        file.write_all(&block).expect("write");
        file.sync_data().expect("fdatasync");
        syncs += 1;
    }
    let rate = syncs as f64 / started.elapsed().as_secs_f64();
    let _ = std::fs::remove_file(&path);
    rate
}

struct Measured {
    entries_per_sec: f64,
    mib_per_sec: f64,
    batches_per_sec: f64,
}

fn store_rate(dir: &Path, batch: u64, run: Duration) -> Measured {
    let store = RocksStore::open(StoreOptions::new(
        dir.join(format!("store-{batch}")),
        1,
        "bench",
    ))
    .expect("opening the store");
    let payload = Bytes::from(vec![0x5Au8; PAYLOAD]);
    let mut next = 1u64;
    let mut batches = 0u64;
    let started = Instant::now();
    while started.elapsed() < run {
        let entries: Vec<Entry> = (next..next + batch)
            .map(|index| Entry {
                term: 1,
                index,
                payload: EntryPayload::Command(payload.clone()),
            })
            .collect();
        next += batch;
        // A follower's batch: entries and a commit-index update.
        let write = LogWrite {
            entries,
            hard_state: Some(HardState {
                term: 1,
                vote: Some(1),
                commit: next - 1,
            }),
            must_sync: true,
            ..LogWrite::default()
        };
        store.persist_blocking(&write).expect("persist");
        batches += 1;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let entries = (next - 1) as f64;
    Measured {
        entries_per_sec: entries / elapsed,
        mib_per_sec: entries * PAYLOAD as f64 / elapsed / (1024.0 * 1024.0),
        batches_per_sec: batches as f64 / elapsed,
    }
}

fn main() {
    // `cargo bench` passes `--bench`; a test run (`cargo test --benches`)
    // does not: keep that quick.
    let benchmarking = std::env::args().any(|a| a == "--bench");
    let run = if benchmarking {
        seconds()
    } else {
        Duration::from_millis(200)
    };
    let base = std::env::var_os("RAFT_BENCH_DIR")
        .map(Into::into)
        .unwrap_or_else(std::env::temp_dir);
    let tmp = tempfile::tempdir_in(&base).expect("temporary directory");
    let dir = tmp.path();
    println!("directory: {}", dir.display());

    let raw = raw_fsync_rate(dir, run);
    println!("raw fsync (4 KiB append + fdatasync): {raw:>12.0} fsyncs/s");
    let mut at_256 = 0.0;
    for batch in [1u64, 16, 256] {
        let m = store_rate(dir, batch, run);
        println!(
            "batch {batch:>3} x {PAYLOAD} B, fsync on:   {:>12.0} entries/s {:>8.1} MiB/s {:>8.0} batches/s",
            m.entries_per_sec, m.mib_per_sec, m.batches_per_sec
        );
        if batch == 256 {
            at_256 = m.entries_per_sec;
        }
    }
    let ratio = at_256 / (raw * 256.0);
    println!(
        "batch 256 reaches {ratio:.2} x (raw fsync rate x 256 = {:.0} entries/s); the target is 0.50",
        raw * 256.0
    );
}
