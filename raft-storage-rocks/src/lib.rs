//! A durable, crash-safe Raft log store on RocksDB for [`raft_core`].
//!
//! [`RocksStore`] implements raft-core's read trait ([`raft_core::LogRead`])
//! and its async log store interface ([`raft_core::adapters::LogStore`]): a
//! driver hands it each output batch's [`raft_core::LogWrite`] and it
//! applies the batch atomically with one fsync, keeps snapshots as files,
//! and recovers everything after a crash. It knows nothing of the driver,
//! the transport or the state machine.
//!
//! # Layout
//!
//! - [`RocksStore`], [`StoreOptions`], [`SyncPolicy`]: the store and how to
//!   open it.
//! - [`Error`]: why opening failed, with the path and what to do. Runtime
//!   failures are [`raft_core::StorageError`]s.
//! - `store`: RocksDB layout, reads, the atomic batch write.
//! - `snapshot`: snapshot files (temp file, fsync, rename, directory fsync)
//!   and their per-block checksums.
//! - `codec`: keys and checksummed values.
//!
//! # Guarantees
//!
//! - One output batch is one RocksDB `WriteBatch` written with one fsync:
//!   after a crash all of it or none of it is visible.
//! - Every stored value carries a CRC-32, snapshot files a CRC-32 per 64
//!   KiB block; RocksDB checks its own block and WAL checksums. Damage is
//!   reported as [`raft_core::StorageError::Corrupt`] (or
//!   [`Error::Corrupt`] when opening), never returned as data.
//! - A data directory belongs to one node of one cluster; a second process
//!   cannot open it while the first runs.
//!
//! The README has a complete example of a node driven over this store.

#![warn(missing_docs, unreachable_pub)]

mod codec;
mod error;
mod snapshot;
mod store;

pub use error::Error;
pub use store::{RocksStore, StoreOptions, SyncPolicy};

#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
