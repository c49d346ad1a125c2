//! The async interfaces a driver is generic over: a durable log store, a
//! transport and a state machine. raft-core only defines them; there is no
//! runtime behind them here. raft-storage-rocks implements [`LogStore`],
//! raft-transport-quic implements [`Transport`], raft-kv's driver is generic
//! over all three, and the `testing` feature has in-memory versions.

use std::collections::{BTreeMap, BTreeSet};

use async_trait::async_trait;
use bytes::Bytes;

use crate::error::StorageError;
use crate::message::Message;
use crate::storage::{LogRead, LogWrite};
use crate::types::{Entry, Index, LogId, NodeId, SnapshotMeta};

/// A durable log store: writes output batches, holds snapshots, and is read
/// by the node through [`LogRead`].
#[async_trait]
pub trait LogStore: LogRead + Send + Sync + 'static {
    /// Applies one batch's writes atomically, in the documented order, and
    /// makes them durable (fsync) when [`LogWrite::must_sync`] is set. Once
    /// this returns `Ok`, reads reflect the write.
    async fn persist(&self, write: LogWrite) -> Result<(), StorageError>;

    /// Saves a snapshot the host built, durably. Older snapshots may be
    /// deleted only after this one is durable.
    async fn save_snapshot(&self, meta: SnapshotMeta, data: Bytes) -> Result<(), StorageError>;

    /// The current snapshot with its data, to restore a state machine from.
    async fn load_snapshot(&self) -> Result<Option<(SnapshotMeta, Bytes)>, StorageError>;
}

/// Why a message could not be queued.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransportError {
    /// No address is known for the peer; it is not (or no longer) a member.
    #[error("no address known for node {0}; is it a member?")]
    UnknownPeer(NodeId),
    /// The peer's send queue is full (it is slow or unreachable). The driver
    /// tells the node with [`crate::Node::report_unreachable`]; Raft resends.
    #[error("send queue to node {0} is full; the peer is slow or unreachable")]
    Unreachable(NodeId),
    /// The transport was shut down.
    #[error("the transport is shut down")]
    Closed,
}

/// Carries messages between nodes.
#[async_trait]
pub trait Transport: Send + Sync + 'static {
    /// Queues `message` for its recipient without waiting for the network.
    fn send(&self, message: Message) -> Result<(), TransportError>;

    /// Tells the transport where the members are (after a configuration
    /// change): node id to the address stored in the configuration.
    fn update_peers(&self, peers: &BTreeMap<NodeId, String>);

    /// Tells the transport which ids a committed configuration removed
    /// ([`Membership::removed`](crate::Membership::removed); they are never
    /// members again): it should close their connections, refuse new ones
    /// and drop what they send. The node drops their messages anyway; the
    /// default does nothing more.
    fn update_removed(&self, removed: &BTreeSet<NodeId>) {
        let _ = removed;
    }

    /// The next message addressed to this node; `None` once shut down.
    async fn recv(&self) -> Option<Message>;
}

/// Why a state machine operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("state machine: {0}")]
pub struct StateMachineError(pub String);

/// Serialises a state machine's state as of one index, off the apply path
/// (see [`StateMachine::snapshot`]).
pub type SnapshotBuilder = Box<dyn FnOnce() -> Result<Bytes, StateMachineError> + Send>;

/// The application replicated by Raft.
///
/// Drivers call it from the thread that owns the node, so applying must be
/// deterministic and should be quick; building the snapshot data happens
/// elsewhere (see [`StateMachine::snapshot`]).
pub trait StateMachine: Send + 'static {
    /// What applying one command produces for the client that proposed it.
    type Output: Send + 'static;

    /// Applies committed entries in log order (no-op and configuration
    /// entries included, so the state machine can track its applied index),
    /// returning the output of each command entry with its position.
    fn apply(&mut self, entries: &[Entry]) -> Vec<(LogId, Self::Output)>;

    /// The index of the last entry applied.
    fn applied_index(&self) -> Index;

    /// Captures the state as of [`StateMachine::applied_index`] (cheaply,
    /// e.g. by cloning a persistent data structure) and returns a builder
    /// that serialises it; the driver runs the builder on another thread
    /// while applying goes on.
    fn snapshot(&self) -> SnapshotBuilder;

    /// Replaces the state with a snapshot's.
    fn restore(&mut self, meta: &SnapshotMeta, data: &[u8]) -> Result<(), StateMachineError>;
}
