//! raft-core's storage conformance suite against [`RocksStore`]; "reopen"
//! closes the database and opens the directory again.

use bytes::Bytes;
use raft_core::testing::conformance::{self, ConformanceStore};
use raft_core::{Entry, HardState, Index, LogRead, LogWrite, SnapshotMeta, StorageError, Term};
use raft_storage_rocks::{RocksStore, StoreOptions};
use tempfile::TempDir;

/// A store in its own temporary directory.
struct Harness {
    store: RocksStore,
    dir: TempDir,
}

fn options(dir: &TempDir) -> StoreOptions {
    StoreOptions::new(dir.path().join("node-1"), 1, "conformance")
}

fn fresh() -> Harness {
    let dir = tempfile::tempdir().expect("temporary directory");
    let store =
        RocksStore::open(options(&dir)).unwrap_or_else(|e| panic!("opening a new store: {e}"));
    Harness { store, dir }
}

impl LogRead for Harness {
    fn hard_state(&self) -> Result<HardState, StorageError> {
        self.store.hard_state()
    }
    fn snapshot_meta(&self) -> Result<Option<SnapshotMeta>, StorageError> {
        self.store.snapshot_meta()
    }
    fn first_index(&self) -> Result<Index, StorageError> {
        self.store.first_index()
    }
    fn last_index(&self) -> Result<Index, StorageError> {
        self.store.last_index()
    }
    fn term(&self, index: Index) -> Result<Term, StorageError> {
        self.store.term(index)
    }
    fn entries(&self, low: Index, high: Index, max_bytes: u64) -> Result<Vec<Entry>, StorageError> {
        self.store.entries(low, high, max_bytes)
    }
    fn snapshot_chunk(
        &self,
        snapshot_index: Index,
        offset: u64,
        max_len: u64,
    ) -> Result<Bytes, StorageError> {
        self.store.snapshot_chunk(snapshot_index, offset, max_len)
    }
}

impl ConformanceStore for Harness {
    fn apply(&mut self, write: &LogWrite) -> Result<(), StorageError> {
        self.store.persist_blocking(write)
    }

    fn save_snapshot(&mut self, meta: SnapshotMeta, data: Bytes) -> Result<(), StorageError> {
        self.store.save_snapshot_blocking(&meta, &data)
    }

    fn reopen(self) -> Self {
        let Harness { store, dir } = self;
        drop(store);
        let store =
            RocksStore::open(options(&dir)).unwrap_or_else(|e| panic!("reopening the store: {e}"));
        Harness { store, dir }
    }
}

#[test]
fn append() {
    conformance::append(fresh());
}

#[test]
fn overwrite_conflicting_suffix() {
    conformance::overwrite_conflicting_suffix(fresh());
}

#[test]
fn compact_prefix() {
    conformance::compact_prefix(fresh());
}

#[test]
fn range_reads_within_byte_budget() {
    conformance::range_reads_within_byte_budget(fresh());
}

#[test]
fn term_at_every_boundary() {
    conformance::term_at_every_boundary(fresh());
}

#[test]
fn hard_state_round_trip() {
    conformance::hard_state_round_trip(fresh());
}

#[test]
fn received_snapshot_round_trip() {
    conformance::received_snapshot_round_trip(fresh());
}

#[test]
fn saved_snapshot_round_trip() {
    conformance::saved_snapshot_round_trip(fresh());
}

#[test]
fn recovery_after_reopen() {
    conformance::recovery_after_reopen(fresh());
}

#[test]
fn every_case_is_run_above() {
    let this_file = include_str!("conformance.rs");
    for (name, _) in conformance::cases::<Harness>() {
        assert!(
            this_file.contains(&format!("fn {name}()")),
            "conformance case {name} has no test here"
        );
    }
}
