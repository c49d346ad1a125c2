//! The checks behind the fuzz targets, one module per target in
//! [`checks`]. Each `check(data)` must never panic on any input; where a
//! decode → encode → decode round trip is meaningful it asserts it.
//!
//! The same check files are compiled into each crate's
//! `tests/fuzz_corpus.rs` (with `#[path]`), which replays `corpus/<target>/`
//! and `regressions/<target>/` under `cargo test`. So a check names what it
//! tests by public paths (`raft_core::...`, `raft_transport_quic::...`) or,
//! for code that is private to its crate or whose crate links RocksDB, by
//! `crate::protocol`, `crate::codec`, ...: the includer puts those modules at
//! its root.
//!
//! raft-kv links RocksDB (through raft-storage-rocks), and the storage codec
//! is `pub(crate)`: instead of linking those crates, this library compiles
//! their self-contained modules from source, below.

#![allow(clippy::all)]

// raft-kv: the client protocol, the KV state machine (and the watch hub it
// publishes to), the node configuration file.
#[path = "../../raft-kv/src/config.rs"]
pub mod config;
#[path = "../../raft-kv/src/protocol.rs"]
pub mod protocol;
#[path = "../../raft-kv/src/state_machine.rs"]
pub mod state_machine;
#[path = "../../raft-kv/src/watch.rs"]
pub mod watch;

// raft-storage-rocks: the record codec and the snapshot files. `snapshot.rs`
// reports errors through `crate::error` and `crate::Error`: a stand-in with
// the same signatures replaces the real module, which needs RocksDB.
#[path = "../../raft-storage-rocks/src/codec.rs"]
#[allow(dead_code)]
pub mod codec;
#[path = "storage_error_stub.rs"]
pub mod error;
#[path = "../../raft-storage-rocks/src/snapshot.rs"]
#[allow(dead_code)]
pub mod snapshot;
pub use error::Error;

pub mod checks;
pub mod known;
pub mod replay;
pub mod seeds;
