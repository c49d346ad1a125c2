//! The node's view of its log: durable entries read through [`LogRead`], plus
//! the entries and snapshot it has accepted but the host has not yet made
//! durable ("unstable"), and the commit and apply positions.

use crate::error::StorageError;
use crate::storage::LogRead;
use crate::types::{Entry, Index, LogId, SnapshotMeta, Term};

#[derive(Clone)]
pub(crate) struct RaftLog<S> {
    pub(crate) store: S,
    /// Entries not yet acknowledged durable, contiguous from `offset`. Storage
    /// is read only below `offset`: anything it holds at `offset` or above is
    /// stale and will be overwritten by the pending writes.
    unstable: Vec<Entry>,
    offset: Index,
    /// Unstable entries below this index were already handed to the host.
    in_progress: Index,
    /// A received snapshot to install, not yet durable.
    snapshot: Option<SnapshotMeta>,
    snapshot_in_progress: bool,
    /// The highest index known committed.
    pub(crate) committed: Index,
    /// The highest index handed to the host to apply.
    pub(crate) applying: Index,
    /// The highest index the host reported applied.
    pub(crate) applied: Index,
}

impl<S: LogRead> RaftLog<S> {
    pub(crate) fn new(store: S, committed: Index, applied: Index) -> Result<Self, StorageError> {
        let last = store.last_index()?;
        let first = store.first_index()?;
        let floor = first.saturating_sub(1);
        // What was applied (or is in the snapshot) was committed, even when
        // the stored commit index lags behind it (the host persists the
        // commit index lazily, and may have built a snapshot past it):
        // without this, entries after the stored commit index would be
        // handed out to apply a second time.
        let committed = committed.max(applied).clamp(floor, last);
        let applied = applied.clamp(floor, committed);
        Ok(Self {
            store,
            unstable: Vec::new(),
            offset: last + 1,
            in_progress: last + 1,
            snapshot: None,
            snapshot_in_progress: false,
            committed,
            applying: applied,
            applied,
        })
    }

    /// The first index whose entry can be read.
    pub(crate) fn first_index(&self) -> Result<Index, StorageError> {
        match &self.snapshot {
            Some(meta) => Ok(meta.last.index + 1),
            None => self.store.first_index(),
        }
    }

    pub(crate) fn last_index(&self) -> Index {
        if let Some(last) = self.unstable.last() {
            return last.index;
        }
        self.offset - 1
    }

    /// The last index that is durable (the host acknowledged it). While a
    /// received snapshot is pending, callers must not rely on it.
    pub(crate) fn persisted_index(&self) -> Index {
        self.offset - 1
    }

    pub(crate) fn last_log_id(&self) -> Result<LogId, StorageError> {
        let index = self.last_index();
        Ok(LogId::new(self.term(index)?, index))
    }

    pub(crate) fn term(&self, index: Index) -> Result<Term, StorageError> {
        if index >= self.offset {
            return match self.unstable.get((index - self.offset) as usize) {
                Some(entry) => Ok(entry.term),
                None => Err(StorageError::Unavailable(index)),
            };
        }
        if let Some(meta) = &self.snapshot {
            if index == meta.last.index {
                return Ok(meta.last.term);
            }
            if index < meta.last.index {
                return Err(StorageError::Compacted(index));
            }
        }
        if index == 0 {
            return Ok(0);
        }
        self.store.term(index)
    }

    /// `Some(term)` if the entry at `index` exists and is readable, `None` if
    /// compacted or absent. Storage failures propagate.
    pub(crate) fn term_if_present(&self, index: Index) -> Result<Option<Term>, StorageError> {
        match self.term(index) {
            Ok(term) => Ok(Some(term)),
            Err(StorageError::Compacted(_) | StorageError::Unavailable(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub(crate) fn matches(&self, id: LogId) -> Result<bool, StorageError> {
        Ok(self.term_if_present(id.index)? == Some(id.term))
    }

    /// Whether a candidate whose last entry is `last` is at least as
    /// up to date as this log (Raft paper §5.4.1).
    pub(crate) fn is_up_to_date(&self, last: LogId) -> Result<bool, StorageError> {
        let mine = self.last_log_id()?;
        Ok(last.term > mine.term || (last.term == mine.term && last.index >= mine.index))
    }

    /// Entries in `low..high`, within `max_bytes` (at least one).
    pub(crate) fn entries(
        &self,
        low: Index,
        high: Index,
        max_bytes: u64,
    ) -> Result<Vec<Entry>, StorageError> {
        let high = high.min(self.last_index() + 1);
        if low >= high {
            return Ok(Vec::new());
        }
        if low < self.first_index()? {
            return Err(StorageError::Compacted(low));
        }
        let mut out = Vec::new();
        let mut budget = max_bytes;
        if low < self.offset {
            let stored_high = high.min(self.offset);
            out = self.store.entries(low, stored_high, max_bytes)?;
            if out.is_empty() || out.last().map(|e| e.index + 1) != Some(stored_high) {
                // Budget exhausted inside stored entries (or the store
                // returned a short read): stop here.
                return Ok(out);
            }
            let used: u64 = out.iter().map(Entry::budget_size).sum();
            budget = budget.saturating_sub(used);
        }
        let start = low.max(self.offset);
        for index in start..high {
            let entry = &self.unstable[(index - self.offset) as usize];
            let size = entry.budget_size();
            if !out.is_empty() && size > budget {
                break;
            }
            budget = budget.saturating_sub(size);
            out.push(entry.clone());
        }
        Ok(out)
    }

    /// Appends entries after `entries[0].index - 1`, dropping any conflicting
    /// suffix. The caller guarantees the entries are contiguous and the one
    /// before them is in the log.
    pub(crate) fn truncate_and_append(&mut self, entries: Vec<Entry>) {
        let Some(first) = entries.first() else { return };
        let after = first.index;
        if after == self.offset + self.unstable.len() as Index {
            self.unstable.extend(entries);
        } else if after <= self.offset {
            // Replaces everything unstable, and the stored suffix from `after`.
            self.offset = after;
            self.in_progress = after;
            self.unstable = entries;
        } else {
            self.unstable.truncate((after - self.offset) as usize);
            self.in_progress = self.in_progress.min(after);
            self.unstable.extend(entries);
        }
    }

    /// Appends one entry at the end (leader proposals).
    pub(crate) fn push(&mut self, entry: Entry) {
        debug_assert_eq!(entry.index, self.last_index() + 1);
        self.unstable.push(entry);
    }

    /// Entries accepted but not yet handed to the host for persisting.
    pub(crate) fn take_unpersisted(&mut self) -> Vec<Entry> {
        let start = self.in_progress.max(self.offset);
        let end = self.offset + self.unstable.len() as Index;
        if start >= end {
            return Vec::new();
        }
        self.in_progress = end;
        self.unstable[(start - self.offset) as usize..].to_vec()
    }

    pub(crate) fn has_unpersisted(&self) -> bool {
        self.in_progress.max(self.offset) < self.offset + self.unstable.len() as Index
            || (self.snapshot.is_some() && !self.snapshot_in_progress)
    }

    pub(crate) fn take_snapshot_to_install(&mut self) -> Option<SnapshotMeta> {
        if self.snapshot_in_progress {
            return None;
        }
        let meta = self.snapshot.clone()?;
        self.snapshot_in_progress = true;
        Some(meta)
    }

    /// The host made entries up to `last` durable.
    pub(crate) fn stable_to(&mut self, last: LogId) {
        if last.index < self.offset {
            return;
        }
        let Some(entry) = self.unstable.get((last.index - self.offset) as usize) else {
            return;
        };
        if entry.term != last.term {
            // Replaced since; the newer write is still pending.
            return;
        }
        let n = (last.index + 1 - self.offset) as usize;
        self.unstable.drain(..n);
        self.offset = last.index + 1;
        self.in_progress = self.in_progress.max(self.offset);
    }

    /// The host made the snapshot with last index `index` durable.
    pub(crate) fn stable_snapshot_to(&mut self, index: Index) {
        if self
            .snapshot
            .as_ref()
            .is_some_and(|m| m.last.index == index)
            && self.snapshot_in_progress
        {
            self.snapshot = None;
            self.snapshot_in_progress = false;
        }
    }

    /// Replaces the whole log by a received snapshot.
    pub(crate) fn restore(&mut self, meta: SnapshotMeta) {
        let index = meta.last.index;
        self.unstable.clear();
        self.offset = index + 1;
        self.in_progress = index + 1;
        self.snapshot = Some(meta);
        self.snapshot_in_progress = false;
        self.committed = index;
        self.applying = index;
    }

    pub(crate) fn pending_snapshot(&self) -> Option<&SnapshotMeta> {
        self.snapshot.as_ref()
    }

    pub(crate) fn commit_to(&mut self, index: Index) {
        if index > self.committed {
            self.committed = index.min(self.last_index());
        }
    }

    /// Committed, durable entries not yet handed out for applying.
    pub(crate) fn next_to_apply(&mut self, max_bytes: u64) -> Result<Vec<Entry>, StorageError> {
        if self.snapshot.is_some() {
            return Ok(Vec::new());
        }
        let high = self.committed.min(self.persisted_index()) + 1;
        let low = self.applying + 1;
        if low >= high {
            return Ok(Vec::new());
        }
        let entries = self.entries(low, high, max_bytes)?;
        if let Some(last) = entries.last() {
            self.applying = last.index;
        }
        Ok(entries)
    }

    pub(crate) fn has_next_to_apply(&self) -> bool {
        self.snapshot.is_none() && self.applying < self.committed.min(self.persisted_index())
    }

    pub(crate) fn applied_to(&mut self, index: Index) {
        if index > self.applied {
            self.applied = index.min(self.applying);
        }
    }
}
