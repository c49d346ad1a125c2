//! The output batch: everything a node wants done, and in which order.

use crate::error::Error;
use crate::message::Message;
use crate::storage::LogWrite;
use crate::types::{Entry, Index};

/// One output batch of a [`crate::Node`]. Perform it in this order:
///
/// 1. Send [`Ready::messages`]. They need nothing durable (a leader's
///    AppendEntries may leave before its own fsync, Raft thesis §10.2.1).
/// 2. Apply [`Ready::write`] to storage, atomically; fsync if
///    [`LogWrite::must_sync`]. If it installs a snapshot, restore the state
///    machine from it.
/// 3. Send [`Ready::persisted_messages`]: votes, append acknowledgements and
///    the like, which promise durable state.
/// 4. Call [`crate::Node::on_persisted`] with [`Ready::number`].
/// 5. Apply [`Ready::committed_entries`] in order, then call
///    [`crate::Node::on_applied`].
/// 6. Serve [`Ready::read_states`] from the state machine.
/// 7. If [`Ready::snapshot_due`], build a snapshot (now or in the
///    background) and report it with [`crate::Node::on_snapshot_built`].
///
/// Steps 2–5 of consecutive batches may be pipelined as long as writes reach
/// storage in batch order (a write durable means every earlier batch's write
/// is durable too) and every batch's persisted messages leave only after its
/// write is durable. A batch with an empty write may send its persisted
/// messages at once: the node hands one out only when every earlier batch
/// was acknowledged with [`crate::Node::on_persisted`]. Persisted messages
/// that rest on a write not yet acknowledged (a vote granted again, a
/// duplicate AppendEntries answered) come with a write of the hard state
/// again and [`LogWrite::must_sync`], so they wait for it.
///
/// ```
/// use raft_core::{Config, MemLog, Message, MessageBody, Node, VoteRequest, LogId};
///
/// let mut node = Node::new(Config::new(2), MemLog::new()).unwrap();
/// let request = Message {
///     from: 1,
///     to: 2,
///     term: 1,
///     body: MessageBody::Vote(VoteRequest { last_log: LogId::default(), transfer: false }),
/// };
/// node.step(request.clone()).unwrap();
/// let first = node.ready().unwrap(); // writes the vote; not yet durable
/// node.step(request).unwrap(); // the candidate asks again
/// let second = node.ready().unwrap();
/// // The vote is granted again, but only behind a synced write of its own.
/// assert_eq!(second.persisted_messages.len(), 1);
/// assert!(second.write.must_sync && second.write.hard_state.is_some());
/// # let _ = first;
/// ```
#[derive(Debug, Default)]
#[must_use = "a Ready must be performed and acknowledged"]
pub struct Ready {
    /// The batch's sequence number, for [`crate::Node::on_persisted`].
    pub number: u64,
    /// What to write to storage.
    pub write: LogWrite,
    /// Messages to send now.
    pub messages: Vec<crate::Message>,
    /// Messages to send only once `write` is durable.
    pub persisted_messages: Vec<Message>,
    /// Committed entries to apply, in log order. They are already durable
    /// locally.
    pub committed_entries: Vec<Entry>,
    /// Reads that became safe to serve: the state machine has applied at
    /// least up to their index.
    pub read_states: Vec<ReadState>,
    /// The snapshot policy asks for a snapshot of the state machine.
    pub snapshot_due: bool,
}

/// The outcome of a [`crate::Node::read_index`] request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReadState {
    /// The id given to `read_index`.
    pub id: u64,
    /// The read index (the state machine has applied at least this far), or
    /// why the read could not be confirmed.
    pub result: Result<Index, Error>,
}
