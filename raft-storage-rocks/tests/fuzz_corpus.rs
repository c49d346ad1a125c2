//! Replays the fuzz corpora of the storage decoders as ordinary tests:
//! every saved input of `fuzz/corpus/<target>/` and
//! `fuzz/regressions/<target>/` runs through the same check as the fuzz
//! target. See fuzz/README.md for running the fuzzers themselves.
//!
//! - `stored_record`: records read back from RocksDB (`codec.rs`).
//! - `snapshot_record`: the current snapshot's record and the file it
//!   names (`snapshot.rs`).
//!
//! Both modules are crate-private, so they are compiled in here from
//! `src/` (as the fuzz targets do, which must not link RocksDB), with the
//! fuzz crate's stand-in for `error.rs`. Their own unit tests run here a
//! second time.

#[path = "../src/codec.rs"]
#[allow(dead_code)]
mod codec;
#[path = "../../fuzz/src/storage_error_stub.rs"]
mod error;
#[path = "../src/snapshot.rs"]
#[allow(dead_code)]
mod snapshot;
use error::Error;

#[path = "../../fuzz/src/replay.rs"]
#[allow(dead_code)]
mod replay;

#[path = "../../fuzz/src/checks/snapshot_record.rs"]
#[allow(dead_code)]
mod snapshot_record;
#[path = "../../fuzz/src/checks/stored_record.rs"]
mod stored_record;

/// This crate's directory: the one cargo names when it runs the test (a
/// target directory shared between checkouts may hold a test binary built
/// in another checkout), else the one it was built in.
fn dir() -> String {
    std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").into())
}

#[test]
fn stored_record_corpus() {
    replay::corpus(&dir(), "stored_record", stored_record::check);
}

#[test]
fn stored_record_regressions() {
    replay::regressions(&dir(), "stored_record", stored_record::check);
}

/// One test for both, so the snapshot file the check reads (one per
/// process) is removed only after both ran.
#[test]
fn snapshot_record_corpus_and_regressions() {
    replay::corpus(&dir(), "snapshot_record", snapshot_record::check);
    replay::regressions(&dir(), "snapshot_record", snapshot_record::check);
    snapshot_record::cleanup();
}
