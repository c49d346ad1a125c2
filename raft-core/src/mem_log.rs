//! [`MemLog`]: an in-memory [`LogRead`] store, for tests, the simulator,
//! benchmarks, and hosts that keep their log elsewhere.

use std::collections::VecDeque;

use bytes::Bytes;

use crate::Membership;
use crate::error::StorageError;
use crate::storage::{LogRead, LogWrite};
use crate::types::{Entry, EntryPayload, HardState, Index, SnapshotMeta, Term};

/// A log, hard state and snapshot held in memory.
///
/// ```
/// use raft_core::{MemLog, LogRead};
/// let log = MemLog::bootstrap(raft_core::Membership::with_voters([(1, "n1".into())]));
/// assert_eq!(log.last_index().unwrap(), 1);
/// ```
#[derive(Clone, Debug, Default)]
pub struct MemLog {
    hard_state: HardState,
    /// Entries `offset..offset + entries.len()`.
    entries: VecDeque<Entry>,
    offset: Index,
    /// The term of the entry just before `offset` (0 at the start).
    prev_term: Term,
    snapshot: Option<(SnapshotMeta, Bytes)>,
    /// A snapshot being received: its metadata and the bytes so far.
    incoming: Option<(SnapshotMeta, Vec<u8>)>,
}

impl MemLog {
    /// An empty log (a node that will join an existing cluster).
    pub fn new() -> Self {
        Self {
            offset: 1,
            ..Self::default()
        }
    }

    /// A log holding [`crate::bootstrap_entry`] for `membership`: give one to
    /// every initial voter of a new cluster.
    pub fn bootstrap(membership: Membership) -> Self {
        let mut log = Self::new();
        log.entries.push_back(crate::bootstrap_entry(membership));
        log
    }

    /// Applies one output batch's writes, in the documented order.
    pub fn apply(&mut self, write: &LogWrite) -> Result<(), StorageError> {
        self.apply_owned(write.clone())
    }

    /// [`MemLog::apply`] for a write the caller no longer needs: entries are
    /// moved in, not copied.
    pub fn apply_owned(&mut self, write: LogWrite) -> Result<(), StorageError> {
        for chunk in &write.snapshot_chunks {
            let incoming = match &mut self.incoming {
                Some((meta, data)) if chunk.offset != 0 && meta.last == chunk.meta.last => data,
                _ => {
                    self.incoming = Some((chunk.meta.clone(), Vec::new()));
                    &mut self.incoming.as_mut().expect("just set").1
                }
            };
            if chunk.offset != incoming.len() as u64 {
                return Err(StorageError::Corrupt(format!(
                    "snapshot chunk at offset {} but {} bytes received",
                    chunk.offset,
                    incoming.len()
                )));
            }
            incoming.extend_from_slice(&chunk.data);
        }
        if let Some(meta) = &write.install_snapshot {
            let Some((incoming_meta, data)) = self.incoming.take() else {
                return Err(StorageError::Corrupt(
                    "install of a snapshot that was never received".into(),
                ));
            };
            if incoming_meta.last != meta.last || data.len() as u64 != meta.size {
                return Err(StorageError::Corrupt(format!(
                    "incoming snapshot is incomplete: {} of {} bytes",
                    data.len(),
                    meta.size
                )));
            }
            self.snapshot = Some((meta.clone(), Bytes::from(data)));
            self.entries.clear();
            self.offset = meta.last.index + 1;
            self.prev_term = meta.last.term;
        }
        if let Some(first) = write.entries.first() {
            if first.index < self.offset {
                return Err(StorageError::Corrupt(format!(
                    "append at {} below the first index {}",
                    first.index, self.offset
                )));
            }
            let keep = (first.index - self.offset) as usize;
            if keep > self.entries.len() {
                return Err(StorageError::Corrupt(format!(
                    "append at {} leaves a gap",
                    first.index
                )));
            }
            self.entries.truncate(keep);
            self.entries.extend(write.entries);
        }
        if let Some(hs) = write.hard_state {
            self.hard_state = hs;
        }
        if let Some(index) = write.compact_to {
            self.compact(index);
        }
        Ok(())
    }

    /// Drops entries up to and including `index`.
    pub fn compact(&mut self, index: Index) {
        while self.offset <= index {
            match self.entries.pop_front() {
                Some(entry) => {
                    self.prev_term = entry.term;
                    self.offset += 1;
                }
                None => break,
            }
        }
    }

    /// Saves a snapshot the host built.
    pub fn save_snapshot(&mut self, meta: SnapshotMeta, data: Bytes) {
        if self
            .snapshot
            .as_ref()
            .is_some_and(|(m, _)| m.last.index >= meta.last.index)
        {
            return;
        }
        self.snapshot = Some((meta, data));
    }

    /// The current snapshot and its data.
    pub fn snapshot(&self) -> Option<&(SnapshotMeta, Bytes)> {
        self.snapshot.as_ref()
    }

    /// All configurations stored in the log, with their indexes.
    pub fn memberships(&self) -> impl Iterator<Item = (Index, &Membership)> {
        self.entries.iter().filter_map(|e| match &e.payload {
            EntryPayload::Membership(m) => Some((e.index, m)),
            _ => None,
        })
    }

    fn last(&self) -> Index {
        let last_entry = self.offset + self.entries.len() as Index - 1;
        last_entry.max(self.snapshot.as_ref().map_or(0, |(m, _)| m.last.index))
    }
}

impl LogRead for MemLog {
    fn hard_state(&self) -> Result<HardState, StorageError> {
        Ok(self.hard_state)
    }

    fn snapshot_meta(&self) -> Result<Option<SnapshotMeta>, StorageError> {
        Ok(self.snapshot.as_ref().map(|(m, _)| m.clone()))
    }

    fn first_index(&self) -> Result<Index, StorageError> {
        Ok(self.offset)
    }

    fn last_index(&self) -> Result<Index, StorageError> {
        Ok(self.last())
    }

    fn term(&self, index: Index) -> Result<Term, StorageError> {
        if index == 0 {
            return Ok(0);
        }
        if index + 1 == self.offset {
            return Ok(self.prev_term);
        }
        if let Some((meta, _)) = &self.snapshot {
            if index == meta.last.index {
                return Ok(meta.last.term);
            }
        }
        if index < self.offset {
            return Err(StorageError::Compacted(index));
        }
        match self.entries.get((index - self.offset) as usize) {
            Some(entry) => Ok(entry.term),
            None => Err(StorageError::Unavailable(index)),
        }
    }

    fn entries(&self, low: Index, high: Index, max_bytes: u64) -> Result<Vec<Entry>, StorageError> {
        if low < self.offset {
            return Err(StorageError::Compacted(low));
        }
        if high > self.offset + self.entries.len() as Index {
            return Err(StorageError::Unavailable(high - 1));
        }
        let mut out = Vec::with_capacity((high - low) as usize);
        let mut used = 0;
        for entry in self
            .entries
            .range((low - self.offset) as usize..(high - self.offset) as usize)
        {
            used += entry.budget_size();
            if !out.is_empty() && used > max_bytes {
                break;
            }
            out.push(entry.clone());
        }
        Ok(out)
    }

    fn snapshot_chunk(
        &self,
        snapshot_index: Index,
        offset: u64,
        max_len: u64,
    ) -> Result<Bytes, StorageError> {
        match &self.snapshot {
            Some((meta, data)) if meta.last.index == snapshot_index => {
                let start = (offset as usize).min(data.len());
                let end = (offset.saturating_add(max_len) as usize).min(data.len());
                Ok(data.slice(start..end))
            }
            _ => Err(StorageError::SnapshotChanged(snapshot_index)),
        }
    }
}
