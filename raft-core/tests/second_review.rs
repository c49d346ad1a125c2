//! The four findings of the second outside review (issue 24, "raft-core:
//! four findings of a second outside review"), each replayed step by step.
//! Each test failed before its fix.

#![cfg(feature = "testing")]

use raft_core::testing::Cluster;
use raft_core::{
    AppendRequest, AppendResponse, ConfChange, HardState, Heartbeat, LogId, LogWrite, MemLog,
    Membership, Message, MessageBody, Node, Ready, Role, SnapshotPolicy, VoteRequest,
};

fn no_pre_vote_no_check_quorum(cfg: &mut raft_core::Config) {
    cfg.pre_vote = false;
    cfg.check_quorum = false;
    cfg.lease_reads = false;
}

/// A host that pipelines batches exactly as the `Ready` docs allow: a batch's
/// persisted messages leave once its own write is durable, which for an
/// empty write is at once. Writes are held (not durable) until `flush`.
#[derive(Default)]
struct PipeliningHost {
    held: Vec<Ready>,
    sent: Vec<Message>,
}

impl PipeliningHost {
    fn take(&mut self, node: &mut Node<MemLog>) {
        let mut ready = node.ready().unwrap();
        self.sent.append(&mut ready.messages);
        if ready.write.is_empty() {
            self.sent.append(&mut ready.persisted_messages);
        } else {
            self.held.push(ready);
        }
    }
}

/// Finding 1, votes. A candidate's vote request arrives twice while the
/// write recording the vote is in flight. The second grant rests on that
/// write; handed out with an empty write, a pipelining host sent it at
/// once, the node crashed before the first write was durable, forgot its
/// vote and granted another candidate the same term.
#[test]
fn a_repeated_vote_waits_for_the_write_that_records_it() {
    let mut c = Cluster::with_config(3, no_pre_vote_no_check_quorum);
    let last_log = c.node(2).last_log_id().unwrap();
    let request = |from| Message {
        from,
        to: 2,
        term: 2,
        body: MessageBody::Vote(VoteRequest {
            last_log,
            transfer: false,
        }),
    };
    let mut host = PipeliningHost::default();
    c.node_mut(2).step(request(1)).unwrap();
    host.take(c.node_mut(2));
    assert_eq!(host.held.len(), 1, "the vote is written");
    // The candidate asks again (a retry, or a duplicate on the wire).
    c.node_mut(2).step(request(1)).unwrap();
    let second = c.node_mut(2).ready().unwrap();
    assert_eq!(
        second.persisted_messages.len(),
        1,
        "the vote is granted again"
    );
    assert!(
        !second.write.is_empty() && second.write.must_sync,
        "a grant resting on an unacknowledged write comes with a synced write of its own"
    );
    // The pipelining host: the second batch's write is not durable either.
    host.held.push(second);
    // Crash before anything is durable, restart, and a second candidate asks.
    c.crash(2);
    c.restart(2);
    c.node_mut(2).step(request(3)).unwrap();
    while c.node(2).has_ready() {
        let mut ready = c.node_mut(2).ready().unwrap();
        let number = ready.number;
        c.node_mut(2)
            .store_mut()
            .apply_owned(std::mem::take(&mut ready.write))
            .unwrap();
        host.sent.append(&mut ready.persisted_messages);
        c.node_mut(2).on_persisted(number).unwrap();
    }
    let granted_to: Vec<u64> = host
        .sent
        .iter()
        .filter(|m| m.term == 2 && matches!(m.body, MessageBody::VoteResponse(r) if r.granted))
        .map(|m| m.to)
        .collect();
    let mut candidates = granted_to.clone();
    candidates.dedup();
    assert!(
        candidates.len() <= 1,
        "node 2 granted its term-2 vote to {granted_to:?}"
    );
}

/// Finding 1, appends. A duplicate AppendEntries arrives while the write of
/// its entries is in flight: its `Success` rests on that write and must
/// wait for it, or the leader counts entries that are not durable.
#[test]
fn a_duplicate_append_is_acknowledged_only_behind_its_write() {
    let mut c = Cluster::with_config(3, no_pre_vote_no_check_quorum);
    c.elect(1);
    let last = c.node(2).last_log_id().unwrap();
    let entry = raft_core::Entry {
        term: c.node(1).term(),
        index: last.index + 1,
        payload: raft_core::EntryPayload::Command(bytes::Bytes::from_static(b"x")),
    };
    let append = Message {
        from: 1,
        to: 2,
        term: c.node(1).term(),
        body: MessageBody::Append(AppendRequest {
            prev: last,
            entries: vec![entry.clone()],
            commit: c.node(2).commit_index(),
        }),
    };
    let mut host = PipeliningHost::default();
    c.node_mut(2).step(append.clone()).unwrap();
    host.take(c.node_mut(2));
    assert_eq!(host.held.len(), 1, "the entry is written");
    c.node_mut(2).step(append).unwrap();
    host.take(c.node_mut(2));
    let early_acks: Vec<&Message> = host
        .sent
        .iter()
        .filter(|m| {
            matches!(m.body, MessageBody::AppendResponse(AppendResponse::Success { match_index })
                if match_index >= entry.index)
        })
        .collect();
    assert!(
        early_acks.is_empty(),
        "entry {} acknowledged before any write holding it is durable: {early_acks:?}",
        entry.index
    );
    assert_eq!(
        host.held.len(),
        2,
        "the acknowledgement waits behind a write"
    );
    assert!(host.held[1].write.must_sync);
}

/// Finding 2. With CheckQuorum off, a leader that removed itself and was
/// cut off before it heard the change commit kept leading its old term for
/// ever: the others drop everything a removed id says, term and all, so
/// nobody told it of the newer term, and its proposals hung.
#[test]
fn a_removed_leader_that_missed_the_commit_is_told_the_newer_term() {
    let mut c = Cluster::with_config(3, no_pre_vote_no_check_quorum);
    c.elect(1);
    c.propose_committed(b"x");
    c.run_ticks(2);
    c.stabilize();
    c.node_mut(1)
        .propose_membership(ConfChange::Remove { id: 1 })
        .unwrap();
    // The change reaches 2 and 3, but none of their answers reach 1.
    c.cut(2, 1);
    c.cut(3, 1);
    c.stabilize();
    assert!(c.node(2).membership().voters().iter().all(|&v| v != 1));
    c.isolate(1);
    // 2 and 3 elect a leader of a newer term and commit the change.
    for _ in 0..200 {
        c.run_ticks(1);
        if c.leaders().iter().any(|&l| l != 1) {
            break;
        }
    }
    let new_leader = *c.leaders().iter().find(|&&l| l != 1).expect("a new leader");
    c.propose(new_leader, b"y").unwrap();
    c.stabilize();
    c.run_ticks(3);
    c.stabilize();
    assert!(
        c.node(new_leader)
            .committed_membership()
            .is_some_and(|m| m.removed().contains(&1))
    );
    assert_eq!(c.node(1).role(), Role::Leader, "node 1 missed it all");
    assert!(c.node(1).term() < c.node(new_leader).term());
    c.heal();
    c.run_ticks(30);
    assert_ne!(
        c.node(1).role(),
        Role::Leader,
        "the removed node still leads term {} while node {new_leader} leads term {}",
        c.node(1).term(),
        c.node(new_leader).term()
    );
    assert!(c.node(1).term() >= c.node(new_leader).term());
    assert_eq!(c.leaders(), vec![new_leader]);
    assert!(c.node(new_leader).counters().messages_from_removed > 0);
}

/// Finding 3. A follower's snapshot request was outstanding when the
/// leader's snapshot was installed; the host's build of the older state then
/// failed with `SnapshotObsolete` and was discarded. Only
/// `on_snapshot_built` ended a request, so the node never asked again and
/// its log grew without bound.
#[test]
fn an_obsolete_build_does_not_stop_later_snapshots() {
    let mut c = Cluster::with_config(3, |cfg| {
        cfg.snapshot = SnapshotPolicy {
            threshold: 8,
            log_share_percent: 0,
            retention: 2,
            chunk_size: 1 << 12,
            chunks_in_flight: 2,
        };
    });
    c.elect(1);
    c.member_mut(3).auto_snapshot = false;
    for i in 0..12u8 {
        c.propose_committed(&[i]);
    }
    c.run_ticks(2);
    c.stabilize();
    // Node 3 asked for a snapshot; its host starts building one (of the
    // state applied now) and is slow.
    let building_at = c.member(3).machine.applied_index();
    assert!(building_at > 0);
    assert_eq!(c.node(3).counters().snapshots_built, 0);
    // Meanwhile node 3 falls behind the leader's compaction and gets the
    // leader's snapshot.
    c.isolate(3);
    for i in 0..40u8 {
        c.propose_committed(&[100 + i]);
    }
    c.heal();
    for _ in 0..20 {
        c.run_ticks(1);
        c.stabilize();
    }
    assert!(
        c.node(3).counters().snapshots_installed >= 1,
        "3 installed the leader's snapshot"
    );
    // The slow build ends now: obsolete, discarded.
    assert!(matches!(
        c.node(3).snapshot_meta_for(building_at, 10),
        Err(raft_core::Error::SnapshotObsolete { .. })
    ));
    // From now on node 3's host builds whatever is asked for.
    c.member_mut(3).auto_snapshot = true;
    for i in 0..40u8 {
        c.propose_committed(&[200 - i]);
    }
    c.run_ticks(2);
    c.stabilize();
    assert!(
        c.node(3).counters().snapshots_built >= 1,
        "node 3 snapshots again after the obsolete build"
    );
    let log_len = c.node(3).last_log_id().unwrap().index - c.node(3).first_index().unwrap();
    assert!(
        log_len < 40,
        "node 3's log was compacted (length {log_len})"
    );
}

/// Finding 4. A message of term `u64::MAX` was adopted like any other
/// term; then the node's next campaign computed `term + 1` (a panic with
/// overflow checks, a wrap to 0 without). Such a term is malformed now:
/// dropped before it changes anything, and counted.
#[test]
fn a_term_that_cannot_be_followed_is_malformed() {
    let mut c = Cluster::new(3);
    c.elect(1);
    let before = c.node(3).term();
    for body in [
        MessageBody::Heartbeat(Heartbeat {
            commit: 0,
            round: 1,
        }),
        MessageBody::Vote(VoteRequest {
            last_log: LogId::new(u64::MAX, u64::MAX),
            transfer: true,
        }),
    ] {
        c.node_mut(3)
            .step(Message {
                from: 2,
                to: 3,
                term: u64::MAX,
                body,
            })
            .unwrap();
    }
    assert_eq!(c.node(3).term(), before, "the term is not adopted");
    assert_eq!(c.node(3).counters().malformed_messages, 2);
    // The node goes on: it campaigns and the cluster elects as usual.
    c.isolate(1);
    c.run_ticks(100);
    let leader = c.leader().expect("a leader");
    assert!(c.node(leader).term() < u64::MAX);
}

/// Finding 4, the increment itself: a node at the last term a message may
/// carry has no term left to campaign in, and says so instead of
/// overflowing (or moving to a term every peer drops).
#[test]
fn a_node_at_the_last_term_does_not_campaign_past_it() {
    let mut store = MemLog::bootstrap(Membership::with_voters([(1, "node-1".to_string())]));
    store
        .apply_owned(LogWrite {
            hard_state: Some(HardState {
                term: u64::MAX - 1,
                vote: None,
                commit: 0,
            }),
            must_sync: true,
            ..LogWrite::default()
        })
        .unwrap();
    let mut node = Node::new(raft_core::Config::new(1), store).unwrap();
    node.campaign().unwrap();
    for _ in 0..50 {
        node.tick().unwrap();
    }
    assert_eq!(node.term(), u64::MAX - 1);
    assert_ne!(node.role(), Role::Leader);
}

/// Also looked at: snapshot resume was keyed by the snapshot's last log
/// position only. Two leaders may each ship a snapshot ending at one
/// position with different bytes; a chunk of the second leader's snapshot
/// at the offset the first one's transfer had reached was appended to the
/// first one's bytes, and the stitched snapshot installed. A transfer now
/// resumes only with chunks of the same sender, term and snapshot.
#[test]
fn a_snapshot_transfer_resumes_only_with_the_same_snapshot() {
    let mut c = Cluster::with_config(3, no_pre_vote_no_check_quorum);
    let membership = c.node(3).membership().clone();
    let meta = raft_core::SnapshotMeta {
        last: LogId::new(2, 10),
        membership,
        membership_index: 1,
        size: 8,
    };
    let chunk = |from, term, offset: u64, data: &'static [u8], done| Message {
        from,
        to: 3,
        term,
        body: MessageBody::Snapshot(raft_core::SnapshotChunk {
            meta: meta.clone(),
            offset,
            data: bytes::Bytes::from_static(data),
            done,
        }),
    };
    let answers = |c: &mut Cluster| -> Vec<raft_core::SnapshotResponse> {
        let mut out = Vec::new();
        while c.node(3).has_ready() {
            let mut ready = c.node_mut(3).ready().unwrap();
            let number = ready.number;
            c.node_mut(3)
                .store_mut()
                .apply_owned(std::mem::take(&mut ready.write))
                .unwrap();
            c.node_mut(3).on_persisted(number).unwrap();
            for m in ready.messages.into_iter().chain(ready.persisted_messages) {
                if let MessageBody::SnapshotResponse(r) = m.body {
                    out.push(r);
                }
            }
        }
        out
    };
    // Leader 1 of term 2 sends the first half of its snapshot.
    c.node_mut(3).step(chunk(1, 2, 0, b"AAAA", false)).unwrap();
    assert_eq!(answers(&mut c)[0].next_offset, 4);
    // Leader 2 of term 3, with its own snapshot ending at the same
    // position, sends its second half (its first was lost).
    c.node_mut(3).step(chunk(2, 3, 4, b"bbbb", true)).unwrap();
    let answer = answers(&mut c);
    assert_eq!(
        c.node(3).counters().snapshots_installed,
        0,
        "bytes of two snapshots were stitched together and installed"
    );
    assert!(
        answer[0].rejected && answer[0].next_offset == 0,
        "{answer:?}"
    );
    // From the start, leader 2's snapshot goes through.
    c.node_mut(3).step(chunk(2, 3, 0, b"bbbb", false)).unwrap();
    answers(&mut c);
    c.node_mut(3).step(chunk(2, 3, 4, b"bbbb", true)).unwrap();
    answers(&mut c);
    assert_eq!(c.node(3).counters().snapshots_installed, 1);
    let (_, data) = c.node(3).store().snapshot().unwrap();
    assert_eq!(&data[..], b"bbbbbbbb");
}

/// A store whose reads of entries fail on demand.
struct FailingStore {
    inner: MemLog,
    fail_entries: std::cell::Cell<bool>,
}

impl raft_core::LogRead for FailingStore {
    fn hard_state(&self) -> Result<HardState, raft_core::StorageError> {
        self.inner.hard_state()
    }
    fn snapshot_meta(&self) -> Result<Option<raft_core::SnapshotMeta>, raft_core::StorageError> {
        self.inner.snapshot_meta()
    }
    fn first_index(&self) -> Result<u64, raft_core::StorageError> {
        self.inner.first_index()
    }
    fn last_index(&self) -> Result<u64, raft_core::StorageError> {
        self.inner.last_index()
    }
    fn term(&self, index: u64) -> Result<u64, raft_core::StorageError> {
        self.inner.term(index)
    }
    fn entries(
        &self,
        low: u64,
        high: u64,
        max_bytes: u64,
    ) -> Result<Vec<raft_core::Entry>, raft_core::StorageError> {
        if self.fail_entries.get() {
            return Err(raft_core::StorageError::Unavailable(low));
        }
        self.inner.entries(low, high, max_bytes)
    }
    fn snapshot_chunk(
        &self,
        index: u64,
        offset: u64,
        max_len: u64,
    ) -> Result<bytes::Bytes, raft_core::StorageError> {
        self.inner.snapshot_chunk(index, offset, max_len)
    }
}

/// Also looked at: a storage error inside `ready()` came after the batch's
/// writes were taken out of the node, so they were lost: the node counted
/// them as handed out, and a later acknowledgement marked entries durable
/// that no store ever held. The fallible read comes first now.
#[test]
fn a_storage_error_in_ready_loses_no_write() {
    let membership = Membership::with_voters((1..=3).map(|id| (id, format!("node-{id}"))));
    let store = FailingStore {
        inner: MemLog::bootstrap(membership),
        fail_entries: std::cell::Cell::new(false),
    };
    let mut node = Node::new(raft_core::Config::new(2), store).unwrap();
    let append = |prev: LogId, index, commit| Message {
        from: 1,
        to: 2,
        term: 2,
        body: MessageBody::Append(AppendRequest {
            prev,
            entries: vec![raft_core::Entry {
                term: 2,
                index,
                payload: raft_core::EntryPayload::Noop,
            }],
            commit,
        }),
    };
    let perform = |node: &mut Node<FailingStore>, ready: Ready| {
        node.store_mut().inner.apply_owned(ready.write).unwrap();
        node.on_persisted(ready.number).unwrap();
    };
    node.step(append(LogId::new(1, 1), 2, 1)).unwrap();
    let ready = node.ready().unwrap();
    perform(&mut node, ready);
    // Entry 3 arrives, with a commit index that makes entry 2 applicable.
    node.step(append(LogId::new(2, 2), 3, 2)).unwrap();
    node.store().fail_entries.set(true);
    assert!(node.ready().is_err(), "reading committed entries fails");
    node.store().fail_entries.set(false);
    let ready = node.ready().unwrap();
    assert_eq!(
        ready
            .write
            .entries
            .iter()
            .map(|e| e.index)
            .collect::<Vec<_>>(),
        vec![3],
        "entry 3 is still to be written after the failed call"
    );
    perform(&mut node, ready);
    assert_eq!(
        raft_core::LogRead::last_index(&node.store().inner).unwrap(),
        3
    );
}

/// Found by the simulator in the new configuration space (seed 7,635 of
/// the varied mix, PreVote off): a voter ignored vote requests of an older
/// term without a word, so a candidate whose term fell behind (a removed
/// node that did not know kept raising the voter's term) never caught up
/// and never won. The refusal carries the voter's term (Raft paper,
/// Figure 2) and, like every vote answer, leaves once that term is durable.
#[test]
fn a_candidate_of_an_older_term_is_refused_in_the_newer_term() {
    let mut c = Cluster::with_config(3, no_pre_vote_no_check_quorum);
    c.elect(1);
    let term = c.node(2).term();
    let last_log = c.node(3).last_log_id().unwrap();
    c.node_mut(2)
        .step(Message {
            from: 3,
            to: 2,
            term: term - 1,
            body: MessageBody::Vote(VoteRequest {
                last_log,
                transfer: false,
            }),
        })
        .unwrap();
    let ready = c.node_mut(2).ready().unwrap();
    let refusal: Vec<&Message> = ready
        .persisted_messages
        .iter()
        .filter(|m| m.to == 3 && matches!(m.body, MessageBody::VoteResponse(r) if !r.granted))
        .collect();
    assert_eq!(refusal.len(), 1, "the candidate is answered");
    assert_eq!(refusal[0].term, term);
}

/// Found by the simulator in the new configuration space (seed 300,606 of
/// the varied mix: PreVote off, election timeout 4 ticks). A node removed by
/// a change not yet committed, which does not know it, campaigned again and
/// again; every vote request restarted each voter's election timer, so it
/// always asked first and took, term after term, the vote of a new voter
/// that the rightful candidate needed. A refused vote request moves the
/// term on but leaves the election timer running (Raft paper, Figure 2: the
/// timer restarts on a leader's AppendEntries or a granted vote).
#[test]
fn a_refused_vote_request_does_not_restart_the_election_timer() {
    let mut c = Cluster::with_config(3, no_pre_vote_no_check_quorum);
    c.elect(1);
    c.propose_committed(b"x");
    let base = c.node(3).clone();
    let ticks_to_campaign = |mut node: Node<MemLog>, vote_at: Option<u64>| -> u64 {
        for t in 1..1000 {
            if vote_at == Some(t) {
                let term = node.term() + 5;
                node.step(Message {
                    from: 2,
                    to: 3,
                    term,
                    body: MessageBody::Vote(VoteRequest {
                        last_log: LogId::default(),
                        transfer: false,
                    }),
                })
                .unwrap();
                assert_eq!(node.term(), term, "the term moves on");
                assert_eq!(
                    node.hard_state().vote,
                    None,
                    "a candidate behind is refused"
                );
            }
            node.tick().unwrap();
            if node.role() == Role::Candidate {
                return t;
            }
        }
        panic!("node 3 never campaigned");
    };
    let undisturbed = ticks_to_campaign(base.clone(), None);
    assert!(undisturbed > 1);
    let disturbed = ticks_to_campaign(base, Some(undisturbed - 1));
    assert_eq!(
        disturbed, undisturbed,
        "the refused request restarted the election timer"
    );
}
