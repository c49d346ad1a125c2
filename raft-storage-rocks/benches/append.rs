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

/// fsyncs per second: `size` bytes appended and `fdatasync`ed per
/// iteration.
fn raw_fsync_rate(dir: &Path, size: usize, run: Duration) -> f64 {
    let path = dir.join("raw-fsync");
    let mut file = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(&path)
        .expect("creating the fsync probe file");
    let block = vec![0xA5u8; size];
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

    // The disk is shared (other processes' writes slow fsyncs down), so the
    // raw rate is taken before and after, and the higher one counts.
    let raw_before = raw_fsync_rate(dir, 4096, run);
    println!("raw fsync (4 KiB append + fdatasync):    {raw_before:>12.0} fsyncs/s");
    let mut at_256 = 0.0;
    let batches: Vec<u64> = std::env::var("RAFT_BENCH_BATCHES")
        .ok()
        .map(|list| {
            list.split(',')
                .filter_map(|b| b.trim().parse().ok())
                .collect()
        })
        .unwrap_or_else(|| vec![1, 16, 256]);
    for batch in batches {
        let m = store_rate(dir, batch, run);
        println!(
            "batch {batch:>3} x {PAYLOAD} B, fsync on:   {:>12.0} entries/s {:>8.1} MiB/s {:>8.0} batches/s",
            m.entries_per_sec, m.mib_per_sec, m.batches_per_sec
        );
        if batch == 256 {
            at_256 = m.entries_per_sec;
        }
    }
    let raw_after = raw_fsync_rate(dir, 4096, run);
    println!("raw fsync again (4 KiB):                 {raw_after:>12.0} fsyncs/s");
    // What the disk does when each fsync carries as many bytes as a
    // 256-entry batch puts in RocksDB's WAL (about 280 B per entry).
    let batch_bytes = 256 * 280;
    let raw_large = raw_fsync_rate(dir, batch_bytes, run);
    println!(
        "raw fsync ({} KiB append + fdatasync):   {raw_large:>12.0} fsyncs/s {:>8.1} MiB/s",
        batch_bytes / 1024,
        raw_large * batch_bytes as f64 / (1024.0 * 1024.0)
    );
    let raw = raw_before.max(raw_after);
    if at_256 > 0.0 {
        println!(
            "batch 256: {at_256:.0} entries/s = {:.2} x (raw 4 KiB fsync rate x 256 = {:.0} entries/s), target 0.50; \
             {:.2} x the raw rate of {} KiB fsyncs",
            at_256 / (raw * 256.0),
            raw * 256.0,
            at_256 / 256.0 / raw_large,
            batch_bytes / 1024
        );
    }
}
