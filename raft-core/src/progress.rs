//! What a leader knows about each follower: how much of the log it holds,
//! what is in flight to it, and how to send it more.

use std::collections::VecDeque;

use crate::types::Index;

/// How the leader is sending to a follower.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReplicationState {
    /// The leader does not know where the follower's log matches; it sends
    /// one AppendEntries at a time and waits for the answer.
    Probe,
    /// The follower's log matches; the leader streams entries optimistically,
    /// up to the inflight window.
    Replicate,
    /// The follower needs entries that were compacted; a snapshot is being
    /// sent.
    Snapshot,
}

/// A snapshot being shipped to one follower.
#[derive(Clone, Debug)]
pub(crate) struct SnapshotSend {
    /// The snapshot being sent.
    pub(crate) meta: crate::types::SnapshotMeta,
    /// Bytes the follower acknowledged durable.
    pub(crate) acked: u64,
    /// Bytes sent so far (acked..sent are in flight).
    pub(crate) sent: u64,
    /// The last chunk went out (and awaits its acknowledgement).
    pub(crate) done_sent: bool,
    /// Ticks since the last acknowledgement; on timeout the leader resends
    /// from `acked`.
    pub(crate) idle_ticks: u64,
}

#[derive(Clone, Debug)]
pub(crate) struct Progress {
    pub(crate) match_index: Index,
    pub(crate) next_index: Index,
    pub(crate) state: ReplicationState,
    /// In Probe: an AppendEntries is in flight; wait for its answer or the
    /// next heartbeat before sending another.
    pub(crate) probe_sent: bool,
    /// In Replicate: the last index of each AppendEntries in flight.
    pub(crate) inflight: VecDeque<Index>,
    /// The tick at which the leader last heard from it.
    pub(crate) last_active: u64,
    /// The latest heartbeat round it acknowledged.
    pub(crate) read_ack: u64,
    /// The commit index the last AppendEntries or heartbeat sent to it
    /// carried (for a heartbeat, capped at its match index).
    pub(crate) commit_sent: Index,
    pub(crate) snapshot: Option<SnapshotSend>,
}

impl Progress {
    pub(crate) fn new(next_index: Index) -> Self {
        Self {
            match_index: 0,
            next_index,
            state: ReplicationState::Probe,
            probe_sent: false,
            inflight: VecDeque::new(),
            last_active: 0,
            read_ack: 0,
            commit_sent: 0,
            snapshot: None,
        }
    }

    pub(crate) fn become_probe(&mut self) {
        if self.state == ReplicationState::Snapshot {
            self.snapshot = None;
        }
        self.state = ReplicationState::Probe;
        self.next_index = self.match_index + 1;
        self.probe_sent = false;
        self.inflight.clear();
    }

    pub(crate) fn become_replicate(&mut self) {
        self.state = ReplicationState::Replicate;
        self.next_index = self.match_index + 1;
        self.probe_sent = false;
        self.inflight.clear();
        self.snapshot = None;
    }

    /// Whether the leader should hold back AppendEntries to this follower.
    pub(crate) fn is_paused(&self, max_inflight: usize) -> bool {
        match self.state {
            ReplicationState::Probe => self.probe_sent,
            ReplicationState::Replicate => self.inflight.len() >= max_inflight,
            ReplicationState::Snapshot => true,
        }
    }

    /// Records the answer "matches up to `index`". Returns whether it was news.
    pub(crate) fn update_match(&mut self, index: Index) -> bool {
        let news = index > self.match_index;
        if news {
            self.match_index = index;
            self.probe_sent = false;
        }
        self.next_index = self.next_index.max(index.saturating_add(1));
        while self.inflight.front().is_some_and(|&last| last <= index) {
            self.inflight.pop_front();
        }
        news
    }

    /// Records that an AppendEntries ending at `last` was sent.
    pub(crate) fn sent_entries(&mut self, last: Option<Index>) {
        match self.state {
            ReplicationState::Replicate => {
                if let Some(last) = last {
                    self.next_index = last + 1;
                    self.inflight.push_back(last);
                }
            }
            ReplicationState::Probe => self.probe_sent = true,
            ReplicationState::Snapshot => {}
        }
    }
}
