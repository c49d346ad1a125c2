//! A replicated key-value service: raft-core for consensus,
//! raft-storage-rocks for durability, raft-transport-quic for the network.
//!
//! # Layout
//!
//! - [`driver`]: the task that owns a raft-core node and performs its output
//!   batches; generic over raft-core's log store, transport and state
//!   machine traits, so another project can run its own state machine on it.
//! - [`state_machine`]: the built-in KV state machine (put, get, delete,
//!   compare-and-swap, scans; revisions; exactly-once client sessions).
//! - [`watch`]: change notifications in commit order, resumable from a
//!   revision.
//! - [`lease`]: lease deadlines, kept by the leader, which writes each
//!   lease's expiry to the log.
//! - [`protocol`]: what clients and nodes send each other, and the typed
//!   errors clients act on.
//! - [`service`]: serves client requests on a node and forwards writes and
//!   admin requests to the leader.
//! - [`client`]: the client library.
//! - [`config`], [`server`]: a whole node from a TOML file; the `raft-kv`
//!   binary is a thin shell around [`server::Server`].
//! - [`metrics`]: Prometheus metrics and the health endpoint.
//! - `etcd`: etcd's v3 gRPC API as a second front door (`etcd_listen`).

//!
//! # Features
//!
//! - `server` (default): everything above; links RocksDB (its C++ sources
//!   need clang and a long first build).
//! - `client`: [`client`] and [`protocol`] only, for applications that talk
//!   to a cluster: no RocksDB, no C++ compiler.
//!
//! ```toml
//! raft-kv = { path = "...", default-features = false, features = ["client"] }
//! ```

#![warn(missing_docs, unreachable_pub)]

#[cfg(feature = "server")]
mod budget;
pub mod client;
#[cfg(feature = "server")]
pub mod config;
#[cfg(feature = "server")]
pub mod driver;
#[cfg(feature = "server")]
mod etcd;
#[cfg(feature = "server")]
pub mod lease;
#[cfg(feature = "server")]
pub mod metrics;
pub mod protocol;
#[cfg(feature = "server")]
pub mod server;
#[cfg(feature = "server")]
pub mod service;
#[cfg(feature = "server")]
pub mod state_machine;
#[cfg(feature = "server")]
pub mod watch;

pub use client::{Client, ClientConfig, ClientError};
#[cfg(feature = "server")]
pub use config::NodeConfig;
#[cfg(feature = "server")]
pub use server::Server;
