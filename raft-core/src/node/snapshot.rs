//! Snapshots: when to ask the host for one, compaction with a retention tail
//! and a growing threshold, chunked shipping to followers with resume, and
//! installing a received one.

use super::Node;
use crate::config::SnapshotPolicy;
use crate::error::{Error, StorageError};
use crate::message::{MessageBody, SnapshotChunk, SnapshotResponse};
use crate::progress::{ReplicationState, SnapshotSend};
use crate::storage::LogRead;
use crate::types::{Index, LogId, NodeId, SnapshotMeta, Term};

/// The snapshot threshold after a compaction left `remaining` entries in the
/// log: `max(initial, 1.5 × remaining)`. A log that stays large (apply lags,
/// or the retention tail is long) then does not trigger a snapshot for every
/// new entry.
pub fn next_snapshot_threshold(initial: u64, remaining: u64) -> u64 {
    initial.max(remaining.saturating_mul(3) / 2)
}

/// A snapshot being received from the leader.
#[derive(Clone, Debug)]
struct Incoming {
    /// Whose snapshot it is: the sender and its term, the snapshot's last
    /// entry and size. Two leaders may each send a snapshot ending at one
    /// position, with different bytes (another serialization of the same
    /// state): a transfer resumes only with chunks of the very same
    /// snapshot, so bytes of two snapshots are never stitched together.
    from: NodeId,
    term: Term,
    last: LogId,
    size: u64,
    next_offset: u64,
}

impl Incoming {
    fn is_of(&self, from: NodeId, term: Term, meta: &SnapshotMeta) -> bool {
        self.from == from && self.term == term && self.last == meta.last && self.size == meta.size
    }
}

#[derive(Clone)]
pub(super) struct SnapshotState {
    initial_threshold: u64,
    retention: u64,
    log_share_percent: u64,
    /// The size in bytes of the newest snapshot this node has.
    newest_size: u64,
    /// Bytes of the entries handed out for applying since then
    /// ([`Entry::budget_size`](crate::Entry::budget_size)).
    applied_bytes: u64,
    /// Current threshold, in log entries.
    pub(super) threshold: u64,
    /// A snapshot was asked for and not yet reported built.
    requested: bool,
    /// The request still has to go out in a `Ready`.
    due: bool,
    compact_to: Option<Index>,
    /// The last index of the newest snapshot this node has.
    last_index: Index,
    incoming: Option<Incoming>,
}

impl SnapshotState {
    pub(super) fn new(policy: &SnapshotPolicy) -> Self {
        Self {
            initial_threshold: policy.threshold,
            retention: policy.retention,
            log_share_percent: policy.log_share_percent,
            newest_size: 0,
            applied_bytes: 0,
            threshold: policy.threshold,
            requested: false,
            due: false,
            compact_to: None,
            last_index: 0,
            incoming: None,
        }
    }

    pub(super) fn has_ready(&self) -> bool {
        self.due || self.compact_to.is_some()
    }

    pub(super) fn take_due(&mut self) -> bool {
        std::mem::take(&mut self.due)
    }

    pub(super) fn take_compaction(&mut self) -> Option<Index> {
        self.compact_to.take()
    }

    /// Counts `bytes` of entries handed out for applying.
    pub(super) fn count_applying(&mut self, bytes: u64) {
        self.applied_bytes = self.applied_bytes.saturating_add(bytes);
    }

    /// Whether the entries applied since the newest snapshot hold the
    /// policy's share of its size (a large state is not written out again
    /// for a few small writes).
    fn enough_written(&self) -> bool {
        self.applied_bytes.saturating_mul(100)
            >= self.newest_size.saturating_mul(self.log_share_percent)
    }

    /// Asks for a snapshot when the log (entries `first..=last`) is long
    /// enough, enough bytes were written since the newest snapshot, and the
    /// policy says it is time. Entries the newest snapshot
    /// lets go do not count: after a snapshot the compaction reaches the
    /// store only with a later write, and until then the log still looks
    /// long (counting them asked for a second snapshot right after each).
    pub(super) fn maybe_request(&mut self, applied: Index, first: Index, last: Index) {
        let compacted = first
            .saturating_sub(1)
            .max(self.last_index.saturating_sub(self.retention));
        let log_len = last.saturating_sub(compacted);
        if self.threshold > 0
            && !self.requested
            && log_len >= self.threshold
            && applied > self.last_index
            && self.enough_written()
        {
            self.requested = true;
            self.due = true;
        }
    }

    /// This node has a snapshot of `size` bytes up to `index` (installed
    /// from the leader, or found at start).
    pub(super) fn on_installed(&mut self, index: Index, size: u64) {
        if index > self.last_index {
            self.last_index = index;
            self.newest_size = size;
            self.applied_bytes = 0;
        }
    }

    /// This node built a snapshot of `size` bytes up to `index`.
    fn on_built(&mut self, index: Index, size: u64) {
        self.requested = false;
        self.on_installed(index, size);
    }
}

impl<S: LogRead> Node<S> {
    /// The metadata for a snapshot of the state machine as of `index`
    /// (which the host must have applied), `size` bytes long. Hosts call this
    /// when they build a snapshot, then save the data and the metadata
    /// durably, then call [`Node::on_snapshot_built`].
    pub fn snapshot_meta_for(&self, index: Index, size: u64) -> Result<SnapshotMeta, Error> {
        if index > self.log.applied {
            return Err(Error::InvalidConfig(format!(
                "snapshot index {index} is beyond the applied index {}; snapshot only applied state",
                self.log.applied
            )));
        }
        let newest = self
            .snapshots
            .last_index
            .max(self.log.pending_snapshot().map_or(0, |m| m.last.index));
        if index <= newest {
            return Err(Error::SnapshotObsolete { index, newest });
        }
        let term = self.log.term(index)?;
        let (membership_index, membership) = self.config_at(index).unwrap_or_default();
        Ok(SnapshotMeta {
            last: LogId::new(term, index),
            membership,
            membership_index,
            size,
        })
    }

    /// The host saved a snapshot durably. The node compacts its log up to
    /// the snapshot minus the retention tail (through the next `Ready`).
    pub fn on_snapshot_built(&mut self, meta: &SnapshotMeta) -> Result<(), Error> {
        if meta.last.index <= self.snapshots.last_index {
            self.snapshots.requested = false;
            return Ok(());
        }
        self.snapshots.on_built(meta.last.index, meta.size);
        self.counters.snapshots_built += 1;
        let compact = meta.last.index.saturating_sub(self.snapshots.retention);
        let first = self.log.first_index()?;
        let compacted_to = if compact >= first {
            self.snapshots.compact_to = Some(compact);
            compact
        } else {
            first - 1
        };
        let remaining = self.log.last_index().saturating_sub(compacted_to);
        self.snapshots.threshold =
            next_snapshot_threshold(self.snapshots.initial_threshold, remaining);
        self.prune_configs(compacted_to);
        Ok(())
    }

    /// The current snapshot threshold (entries in the log that trigger a
    /// snapshot request).
    pub fn snapshot_threshold(&self) -> u64 {
        self.snapshots.threshold
    }

    // ----- follower side ---------------------------------------------------

    /// Why a snapshot chunk from the leader of `term` cannot be genuine, if
    /// it cannot: its bytes must lie within the snapshot's size and the
    /// last chunk must end exactly there; the snapshot cannot end at an
    /// entry of a later term, nor hold a configuration from after its end.
    pub(super) fn malformed_chunk(term: Term, chunk: &SnapshotChunk) -> Option<String> {
        let meta = &chunk.meta;
        if meta.last.term > term || meta.membership_index > meta.last.index {
            return Some(format!(
                "snapshot ending at {:?} with its configuration from index {} \
                 in a message of term {term}",
                meta.last, meta.membership_index
            ));
        }
        match chunk.offset.checked_add(chunk.data.len() as u64) {
            Some(end) if end <= meta.size && chunk.done == (end == meta.size) => None,
            end => Some(format!(
                "chunk at offset {} of {} bytes{} ends at {end:?} in a snapshot of {} bytes",
                chunk.offset,
                chunk.data.len(),
                if chunk.done { " (the last)" } else { "" },
                meta.size
            )),
        }
    }

    pub(super) fn handle_snapshot_chunk(
        &mut self,
        from: NodeId,
        chunk: SnapshotChunk,
    ) -> Result<(), Error> {
        self.accept_leader(from);
        let last = chunk.meta.last;
        let respond = |node: &mut Self, next_offset, rejected, installed| {
            node.send_after_persist(
                from,
                MessageBody::SnapshotResponse(SnapshotResponse {
                    snapshot_index: last.index,
                    next_offset,
                    rejected,
                    installed,
                }),
            );
        };
        if last.index <= self.log.committed || self.log.matches(last)? {
            // We hold everything it covers already.
            if self.log.matches(last)? {
                self.log.commit_to(last.index);
            }
            self.snapshots.incoming = None;
            respond(self, chunk.meta.size, false, true);
            return Ok(());
        }
        if self.log.pending_snapshot().is_some() {
            // A snapshot is being installed; its write must complete before
            // a new transfer starts. The leader resends after a pause.
            return Ok(());
        }
        let term = self.term;
        let expected = match &self.snapshots.incoming {
            Some(inc) if inc.is_of(from, term, &chunk.meta) => inc.next_offset,
            _ => 0,
        };
        if chunk.offset != expected && chunk.offset != 0 {
            respond(self, expected, true, false);
            return Ok(());
        }
        let next_offset = chunk.offset + chunk.data.len() as u64;
        if chunk.done {
            self.snapshots.incoming = None;
            let meta = chunk.meta.clone();
            self.pending_chunks.push(chunk);
            self.install_snapshot(meta);
            respond(self, next_offset, false, true);
        } else {
            self.snapshots.incoming = Some(Incoming {
                from,
                term,
                last,
                size: chunk.meta.size,
                next_offset,
            });
            self.pending_chunks.push(chunk);
            respond(self, next_offset, false, false);
        }
        Ok(())
    }

    fn install_snapshot(&mut self, meta: SnapshotMeta) {
        tracing::info!(
            id = self.id,
            index = meta.last.index,
            term = meta.last.term,
            "installing snapshot"
        );
        self.counters.snapshots_installed += 1;
        self.reset_configs(meta.membership_index, meta.membership.clone());
        // A snapshot the host may be building now is older than this one:
        // its build ends in `SnapshotObsolete` and is never reported, so the
        // request ends here (else the node would never ask again).
        self.snapshots.requested = false;
        self.snapshots.on_installed(meta.last.index, meta.size);
        self.log.restore(meta);
    }

    // ----- leader side -----------------------------------------------------

    /// The follower needs compacted entries: ship the current snapshot.
    pub(super) fn start_snapshot_send(&mut self, to: NodeId) -> Result<(), Error> {
        let Some(meta) = self.log.store.snapshot_meta()? else {
            return Err(Error::Storage(StorageError::Corrupt(
                "log entries were compacted but the store has no snapshot".into(),
            )));
        };
        let Some(pr) = self.progress.get_mut(&to) else {
            return Ok(());
        };
        tracing::debug!(
            id = self.id,
            to,
            index = meta.last.index,
            size = meta.size,
            "sending snapshot"
        );
        pr.state = ReplicationState::Snapshot;
        pr.inflight.clear();
        pr.probe_sent = false;
        pr.snapshot = Some(SnapshotSend {
            meta,
            acked: 0,
            sent: 0,
            done_sent: false,
            idle_ticks: 0,
        });
        self.counters.snapshots_sent += 1;
        self.send_snapshot_chunks(to)
    }

    fn send_snapshot_chunks(&mut self, to: NodeId) -> Result<(), Error> {
        let chunk_size = self.config.snapshot.chunk_size;
        let window = chunk_size.saturating_mul(self.config.snapshot.chunks_in_flight);
        loop {
            let Some(send) = self.progress.get(&to).and_then(|p| p.snapshot.as_ref()) else {
                return Ok(());
            };
            if send.done_sent || send.sent - send.acked >= window {
                return Ok(());
            }
            let (meta, offset) = (send.meta.clone(), send.sent);
            let data = match self
                .log
                .store
                .snapshot_chunk(meta.last.index, offset, chunk_size)
            {
                Ok(data) => data,
                Err(StorageError::SnapshotChanged(_)) => return self.start_snapshot_send(to),
                Err(e) => return Err(e.into()),
            };
            let end = offset + data.len() as u64;
            let done = end >= meta.size;
            if !done && data.is_empty() {
                return Err(Error::Storage(StorageError::Corrupt(format!(
                    "snapshot {} is shorter than its recorded size {}",
                    meta.last.index, meta.size
                ))));
            }
            let send = self
                .progress
                .get_mut(&to)
                .and_then(|p| p.snapshot.as_mut())
                .expect("checked above");
            send.sent = end;
            send.done_sent = done;
            self.send(
                to,
                MessageBody::Snapshot(SnapshotChunk {
                    meta,
                    offset,
                    data,
                    done,
                }),
            );
        }
    }

    pub(super) fn handle_snapshot_response(
        &mut self,
        from: NodeId,
        resp: SnapshotResponse,
    ) -> Result<(), Error> {
        if self.role != super::Role::Leader {
            return Ok(());
        }
        let last = self.log.last_index();
        if resp.snapshot_index > last {
            let problem = format!(
                "it answers for a snapshot ending at {}, beyond our last index {last}",
                resp.snapshot_index
            );
            self.drop_out_of_range_answer(from, "SnapshotResponse", &problem);
            return Ok(());
        }
        let now = self.now;
        let Some(pr) = self.progress.get_mut(&from) else {
            return Ok(());
        };
        pr.last_active = now;
        let current = pr.snapshot.as_ref().map(|s| s.meta.last.index);
        if resp.installed {
            let news = pr.update_match(resp.snapshot_index);
            if pr.state == ReplicationState::Snapshot && pr.match_index >= current.unwrap_or(0) {
                pr.become_probe();
            }
            self.need_append = true;
            if news {
                self.maybe_commit()?;
                self.maybe_send_timeout_now(from)?;
            }
            return Ok(());
        }
        if pr.state != ReplicationState::Snapshot || current != Some(resp.snapshot_index) {
            return Ok(());
        }
        let send = pr.snapshot.as_mut().expect("snapshot state has a send");
        send.idle_ticks = 0;
        if resp.rejected {
            // A chunk was lost or the follower restarted: resume from where it is.
            send.acked = resp.next_offset.min(send.meta.size);
            send.sent = send.acked;
            send.done_sent = false;
        } else {
            send.acked = send.acked.max(resp.next_offset).min(send.sent);
        }
        self.send_snapshot_chunks(from)
    }

    /// Resends unacknowledged chunks after a quiet spell.
    pub(super) fn tick_snapshot_sends(&mut self) -> Result<(), Error> {
        let timeout = (self.config.election_ticks / 2).max(2);
        let mut resend = Vec::new();
        for (id, pr) in self.progress.iter_mut() {
            if let Some(send) = pr.snapshot.as_mut() {
                send.idle_ticks += 1;
                if send.idle_ticks >= timeout {
                    send.idle_ticks = 0;
                    send.sent = send.acked;
                    send.done_sent = false;
                    resend.push(*id);
                }
            }
        }
        for id in resend {
            self.send_snapshot_chunks(id)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> SnapshotPolicy {
        SnapshotPolicy {
            threshold: 100,
            retention: 10,
            ..SnapshotPolicy::default()
        }
    }

    #[test]
    fn no_second_snapshot_before_the_compaction_lands() {
        let mut s = SnapshotState::new(&policy());
        s.maybe_request(99, 1, 99);
        assert!(!s.take_due(), "99 entries are below the threshold");
        s.maybe_request(100, 1, 100);
        assert!(s.take_due());
        // The snapshot at 100 is built; the log is compacted to 90 with a
        // later write, so the store still starts at 1 for a while.
        s.requested = false;
        s.last_index = 100;
        s.compact_to = Some(90);
        for applied in 101..=150 {
            s.maybe_request(applied, 1, applied);
            assert!(!s.take_due(), "asked again at {applied} before compacting");
        }
        // Once 100 entries lie beyond the compaction point, it is time.
        s.maybe_request(190, 1, 190);
        assert!(s.take_due());
    }

    #[test]
    fn a_large_state_waits_for_its_share_of_writes() {
        let mut s = SnapshotState::new(&policy());
        // A snapshot of 10,000 bytes at 100 (installed, or found at start).
        s.on_installed(100, 10_000);
        // 100 entries later the log is long enough, but 100 entries of 24
        // bytes are 2,400 bytes: under half the snapshot.
        s.count_applying(2_400);
        s.maybe_request(200, 1, 200);
        assert!(
            !s.take_due(),
            "asked for a 10,000-byte snapshot after 2,400 bytes"
        );
        s.count_applying(2_599);
        s.maybe_request(300, 1, 300);
        assert!(!s.take_due(), "4,999 bytes are still under half");
        s.count_applying(1);
        s.maybe_request(301, 1, 301);
        assert!(s.take_due(), "5,000 bytes are half the snapshot: time");
        // The next snapshot counts from zero again.
        s.on_built(301, 20_000);
        s.count_applying(9_999);
        s.maybe_request(500, 1, 500);
        assert!(!s.take_due());
        s.count_applying(1);
        s.maybe_request(501, 1, 501);
        assert!(s.take_due());
    }

    #[test]
    fn the_share_rule_can_be_turned_off() {
        let mut s = SnapshotState::new(&SnapshotPolicy {
            log_share_percent: 0,
            ..policy()
        });
        s.on_installed(100, 1 << 30);
        s.maybe_request(200, 1, 200);
        assert!(s.take_due());
    }
}
