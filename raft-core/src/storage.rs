//! How raft-core sees storage: a small synchronous read trait ([`LogRead`]) and
//! the writes it asks for ([`LogWrite`]), which leave only through the output
//! batch ([`crate::Ready`]).

use bytes::Bytes;

use crate::error::StorageError;
use crate::message::SnapshotChunk;
use crate::types::{Entry, HardState, Index, SnapshotMeta, Term};

/// Read access to a node's durable log, hard state and snapshot.
///
/// The node reads through this trait; it never writes. Everything it wants
/// written comes out of [`crate::Node::ready`] as a [`LogWrite`], and the host
/// acknowledges it with [`crate::Node::on_persisted`]. Reads must reflect every
/// write the host has completed.
///
/// Index ranges: the log holds entries `first_index()..=last_index()`. After
/// compaction the entries up to the snapshot may be gone; `term()` still
/// answers for the snapshot's last index. With no entries at all,
/// `last_index()` is the snapshot's last index (or 0) and `first_index()` is
/// one more.
pub trait LogRead {
    /// The last persisted hard state (all zero for a new node).
    fn hard_state(&self) -> Result<HardState, StorageError>;

    /// The newest durable snapshot, if any.
    fn snapshot_meta(&self) -> Result<Option<SnapshotMeta>, StorageError>;

    /// The index of the first entry still in the log.
    fn first_index(&self) -> Result<Index, StorageError>;

    /// The index of the last entry in the log, or of the snapshot if the log
    /// holds no entries after it.
    fn last_index(&self) -> Result<Index, StorageError>;

    /// The term of the entry at `index`. Answers for `first_index() - 1`
    /// too (the last compacted entry, or the snapshot's last entry), and for
    /// 0 (term 0). Fails with [`StorageError::Compacted`] below that and
    /// [`StorageError::Unavailable`] above `last_index()`.
    fn term(&self, index: Index) -> Result<Term, StorageError>;

    /// Entries in `low..high`, stopping once their total
    /// [`Entry::budget_size`] would exceed `max_bytes`, but always returning at
    /// least one entry when the range is not empty.
    fn entries(&self, low: Index, high: Index, max_bytes: u64) -> Result<Vec<Entry>, StorageError>;

    /// Up to `max_len` bytes of the current snapshot's data, starting at
    /// `offset`. Fails with [`StorageError::SnapshotChanged`] when the current
    /// snapshot is no longer the one whose last index is `snapshot_index`.
    fn snapshot_chunk(
        &self,
        snapshot_index: Index,
        offset: u64,
        max_len: u64,
    ) -> Result<Bytes, StorageError>;
}

impl<T: LogRead + ?Sized> LogRead for std::sync::Arc<T> {
    fn hard_state(&self) -> Result<HardState, StorageError> {
        (**self).hard_state()
    }
    fn snapshot_meta(&self) -> Result<Option<SnapshotMeta>, StorageError> {
        (**self).snapshot_meta()
    }
    fn first_index(&self) -> Result<Index, StorageError> {
        (**self).first_index()
    }
    fn last_index(&self) -> Result<Index, StorageError> {
        (**self).last_index()
    }
    fn term(&self, index: Index) -> Result<Term, StorageError> {
        (**self).term(index)
    }
    fn entries(&self, low: Index, high: Index, max_bytes: u64) -> Result<Vec<Entry>, StorageError> {
        (**self).entries(low, high, max_bytes)
    }
    fn snapshot_chunk(
        &self,
        snapshot_index: Index,
        offset: u64,
        max_len: u64,
    ) -> Result<Bytes, StorageError> {
        (**self).snapshot_chunk(snapshot_index, offset, max_len)
    }
}

/// The writes of one output batch. The host applies them in the order of the
/// fields below, atomically (after a crash either all of them or none are
/// visible, except `compact_to`, which may be lost), and durably before it
/// calls [`crate::Node::on_persisted`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LogWrite {
    /// Chunks of a snapshot being received from the leader, in order: write
    /// each chunk's `data` at its `offset` of the incoming snapshot (offset 0
    /// starts a new one, discarding any partial one).
    pub snapshot_chunks: Vec<SnapshotChunk>,
    /// Install the fully received incoming snapshot: it becomes the current
    /// snapshot, and every log entry is discarded (the log continues after
    /// `last.index`). The host restores its state machine from it before it
    /// applies any later committed entry.
    pub install_snapshot: Option<SnapshotMeta>,
    /// Entries to append. Entries already stored at `entries[0].index` and
    /// above are deleted first (they conflict with the leader's log).
    pub entries: Vec<Entry>,
    /// The hard state to persist.
    pub hard_state: Option<HardState>,
    /// The host may delete log entries up to and including this index: a
    /// durable snapshot covers them. Losing this in a crash is harmless.
    pub compact_to: Option<Index>,
    /// Whether the host must fsync before acknowledging. It is false only
    /// when the batch holds nothing but a commit-index update or a
    /// compaction, which are safe to lose.
    pub must_sync: bool,
}

impl LogWrite {
    /// Whether there is nothing to write.
    pub fn is_empty(&self) -> bool {
        self.snapshot_chunks.is_empty()
            && self.install_snapshot.is_none()
            && self.entries.is_empty()
            && self.hard_state.is_none()
            && self.compact_to.is_none()
    }
}
