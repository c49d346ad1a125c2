//! The Raft consensus protocol as a deterministic, sans-IO state machine.
//!
//! raft-core decides; the host does. A [`Node`] takes inputs (ticks of
//! logical time, messages from peers, proposals, reads, acknowledgements) and
//! hands out its outputs as one batch, a [`Ready`]: what to write, what to
//! send, what to apply. It reads no clock (time is [`Node::tick`]), draws
//! randomness only from a seed in its [`Config`], starts no thread and does no
//! I/O. The same seed and the same inputs give the same outputs, bit for bit,
//! which is what makes the deterministic [simulator](crate#testing) possible.
//!
//! # Layout
//!
//! - [`Node`]: one replica. Elections with PreVote and CheckQuorum,
//!   replication with batching, pipelining and fast backtracking, membership
//!   changes one server at a time, ReadIndex and lease reads, leadership
//!   transfer, snapshots with chunked shipping and log compaction.
//! - [`Ready`] and [`LogWrite`]: the output batch and its writes.
//! - [`LogRead`]: the small read-only storage trait the node reads through;
//!   [`MemLog`] implements it in memory.
//! - [`Message`]: what nodes send each other (serde, encoding left to the
//!   transport).
//! - [`Membership`], [`ConfChange`]: configurations and changes to them.
//! - [`quorum`]: majority and joint quorum arithmetic.
//! - [`Status`]: a view for operators and metrics.
//! - [`adapters`]: the async traits a driver is generic over (log store,
//!   transport, state machine); interfaces only.
//! - `testing` (feature `testing`): the deterministic cluster simulator, the
//!   storage conformance suite and in-memory adapters.
//!
//! # The host loop
//!
//! ```
//! use bytes::Bytes;
//! use raft_core::{Config, EntryPayload, MemLog, Membership, Node};
//!
//! // Three voters; every node's store starts with the same bootstrap entry.
//! let membership = Membership::with_voters((1..=3).map(|id| (id, format!("node-{id}"))));
//! let mut nodes: Vec<Node<MemLog>> = (1..=3)
//!     .map(|id| Node::new(Config::new(id), MemLog::bootstrap(membership.clone())).unwrap())
//!     .collect();
//!
//! let mut wire = Vec::new(); // messages in flight
//! let mut applied = vec![Vec::new(); 3]; // each node's state machine
//! let mut proposed = None;
//! for _ in 0..200 {
//!     for node in nodes.iter_mut() {
//!         node.tick().unwrap();
//!     }
//!     // Deliver everything sent so far.
//!     for message in std::mem::take(&mut wire) {
//!         let to: &mut Node<MemLog> = &mut nodes[(message_to(&message) - 1) as usize];
//!         to.step(message).unwrap();
//!     }
//!     for (i, node) in nodes.iter_mut().enumerate() {
//!         if node.is_leader() && proposed.is_none() {
//!             proposed = Some(node.propose(Bytes::from_static(b"x = 1")).unwrap());
//!         }
//!         while node.has_ready() {
//!             let ready = node.ready().unwrap();
//!             // 1. Messages that need nothing durable go out at once.
//!             wire.extend(ready.messages);
//!             // 2. Make the batch's writes durable (here: in memory).
//!             node.store_mut().apply(&ready.write).unwrap();
//!             // 3. Now the messages that promise durable state may leave.
//!             wire.extend(ready.persisted_messages);
//!             // 4. Acknowledge the write.
//!             node.on_persisted(ready.number).unwrap();
//!             // 5. Apply committed entries, then acknowledge.
//!             for entry in &ready.committed_entries {
//!                 if let EntryPayload::Command(data) = &entry.payload {
//!                     applied[i].push((entry.log_id(), data.clone()));
//!                 }
//!             }
//!             if let Some(last) = ready.committed_entries.last() {
//!                 node.on_applied(last.index).unwrap();
//!             }
//!         }
//!     }
//! }
//! // Every node applied the proposal, at the position the leader promised.
//! let proposed = proposed.unwrap();
//! for log in &applied {
//!     assert_eq!(log, &vec![(proposed, Bytes::from_static(b"x = 1"))]);
//! }
//! # fn message_to(m: &raft_core::Message) -> u64 { m.to }
//! ```
//!
//! # The durability contract
//!
//! What must be on disk before which message leaves:
//!
//! - A vote (granted or not) leaves only after the term and vote it reflects
//!   are durable: they are in [`Ready::persisted_messages`], and the batch's
//!   [`LogWrite::hard_state`] holds them. A node that forgot its vote in a
//!   crash could vote twice in a term.
//! - A candidate asks for votes only after its own vote for itself is durable
//!   (its requests are also persisted messages). A single voter, which wins
//!   on its own vote, becomes leader only once that vote is durable (when
//!   [`Node::on_persisted`] acknowledges it): so a node never leads a term
//!   it could forget in a crash, and nothing it says as leader of a term
//!   leaves before the term is durable.
//! - A follower acknowledges appended entries (and snapshot chunks) only
//!   after they are durable: the leader counts the acknowledgement towards a
//!   commit quorum.
//! - A leader may send AppendEntries before its own entries are durable
//!   (Raft thesis §10.2.1): they are in [`Ready::messages`]. The leader counts
//!   itself towards a quorum only for entries acknowledged with
//!   [`Node::on_persisted`].
//! - Committed entries are handed out for applying only once they are durable
//!   locally, so a state machine never runs ahead of its own log.
//! - The commit index in the hard state may be persisted lazily; losing it
//!   only means rediscovering it after a restart.
//! - Compaction ([`LogWrite::compact_to`]) may be lost in a crash; it is
//!   repeated or superseded.
//! - A batch's persisted messages rest on its own write and every earlier
//!   one. A host that pipelines batches may send them once the batch's own
//!   write is durable (writes reach storage in batch order), and at once
//!   for a batch with an empty write: the node hands out persisted messages
//!   with an empty write only when every earlier batch was acknowledged,
//!   and otherwise writes the hard state again with
//!   [`LogWrite::must_sync`] (a vote granted again, a duplicate
//!   AppendEntries answered, while the write they promise is in flight).
//!
//! The simulator checks this contract: it crashes nodes at random moments and
//! throws away every write not yet acknowledged as durable; some of its hosts
//! pipeline batches as far as the contract allows.
//!
//! # Membership changes
//!
//! One server at a time, with learners ([`ConfChange`]); a configuration is
//! in force as soon as it is in the log. A new leader accepts a change only
//! after the first entry of its term commits ([`Error::LeaderNotSettled`]),
//! and only one change is uncommitted at a time
//! ([`Error::ConfigChangeInProgress`]). Removed ids are never reused
//! ([`Membership::removed`]): a replacement node gets a new id.
//!
//! # Leases
//!
//! With [`Config::lease_reads`], a leader serves reads without a round trip
//! for [`Config::lease_ticks`] of its ticks after the start of a heartbeat
//! round that a quorum acknowledged. This rests on a promise of the voters,
//! kept with [`Config::check_quorum`]: a node that heard from a leader
//! within the election timeout votes for no one, in any term, and does not
//! campaign ([`Error::InLease`]); and on the clocks: no node counts fewer
//! than `1 - max_clock_drift` times the ticks of another. A host that
//! derives ticks from a monotonic clock and, after a pause, delivers the
//! ticks it missed before any other input keeps to that.
//!
//! # Bootstrapping
//!
//! A new cluster starts with [`bootstrap_entry`] at index 1 of every initial
//! voter's log (as [`MemLog::bootstrap`] does). A node that will join an
//! existing cluster starts empty; it receives the log (or a snapshot) once the
//! leader adds it as a learner.

#![warn(missing_docs, unreachable_pub)]

pub mod adapters;
mod config;
mod error;
mod log;
mod mem_log;
mod membership;
mod message;
mod node;
mod progress;
pub mod quorum;
mod ready;
mod status;
mod storage;
#[cfg(feature = "testing")]
pub mod testing;
mod types;

pub use config::{Config, SnapshotPolicy};
pub use error::{ConfChangeError, Error, StorageError};
pub use mem_log::MemLog;
pub use membership::{ConfChange, Membership};
pub use message::{
    AppendRequest, AppendResponse, Heartbeat, HeartbeatResponse, Message, MessageBody, MessageKind,
    ReadIndexRequest, ReadIndexResponse, SnapshotChunk, SnapshotResponse, VoteRequest,
    VoteResponse,
};
pub use node::{Node, ReadPolicy, Role, next_snapshot_threshold};
pub use progress::ReplicationState;
pub use ready::{ReadState, Ready};
pub use status::{Counters, FollowerStatus, Status};
pub use storage::{LogRead, LogWrite};
pub use types::{Entry, EntryPayload, HardState, Index, LogId, NodeId, SnapshotMeta, Term};

/// The entry every initial voter of a new cluster holds at index 1: the
/// initial configuration, written before the node first starts.
/// It is committed by the first leader's no-op entry.
pub fn bootstrap_entry(membership: Membership) -> Entry {
    Entry {
        term: 1,
        index: 1,
        payload: EntryPayload::Membership(membership),
    }
}
