//! Fuzz finding F3 (fuzz/README.md): a node restarted from a store whose
//! snapshot is past the stored commit index (the commit index is persisted
//! lazily; the host may build a snapshot of everything it applied before the
//! hard state catches up) handed out the entries between the two to apply a
//! second time. What is in the snapshot (or reported applied) is committed:
//! the restarted node hands out entries after it, in order, once each.

use bytes::Bytes;
use raft_core::{
    AppendRequest, Config, Entry, EntryPayload, HardState, LogId, LogWrite, MemLog, Membership,
    Message, MessageBody, Node, SnapshotMeta,
};

fn membership() -> Membership {
    Membership::with_voters((1..=3).map(|id| (id, format!("node-{id}"))))
}

/// Entries 1..=5 of term 1, a stored commit index of 3 and a snapshot at 4.
fn store() -> MemLog {
    let mut store = MemLog::bootstrap(membership());
    let entries = (2..=5)
        .map(|index| Entry {
            term: 1,
            index,
            payload: EntryPayload::Command(Bytes::from(format!("command {index}"))),
        })
        .collect();
    store
        .apply(&LogWrite {
            entries,
            hard_state: Some(HardState {
                term: 1,
                vote: None,
                commit: 3,
            }),
            must_sync: true,
            ..LogWrite::default()
        })
        .unwrap();
    store.save_snapshot(
        SnapshotMeta {
            last: LogId::new(1, 4),
            membership: membership(),
            membership_index: 1,
            size: 1,
        },
        Bytes::from_static(b"s"),
    );
    store
}

/// Restarts on `store` (reporting `applied` in the configuration) and lets
/// the leader commit everything; returns the indexes handed out to apply.
fn applied_after_restart(applied: u64) -> Vec<u64> {
    let mut config = Config::new(1);
    config.applied = applied;
    let mut node = Node::new(config, store()).unwrap();
    assert!(node.commit_index() >= 4, "{}", node.commit_index());
    node.step(Message {
        from: 2,
        to: 1,
        term: 1,
        body: MessageBody::Append(AppendRequest {
            prev: LogId::new(1, 5),
            entries: Vec::new(),
            commit: 5,
        }),
    })
    .unwrap();
    let mut handed_out = Vec::new();
    while node.has_ready() {
        let ready = node.ready().unwrap();
        node.store_mut().apply(&ready.write).unwrap();
        node.on_persisted(ready.number).unwrap();
        handed_out.extend(ready.committed_entries.iter().map(|e| e.index));
        if let Some(last) = ready.committed_entries.last() {
            node.on_applied(last.index).unwrap();
        }
    }
    handed_out
}

#[test]
fn entries_in_the_snapshot_are_not_applied_again() {
    assert_eq!(applied_after_restart(0), vec![5]);
}

#[test]
fn entries_the_host_reports_applied_are_not_applied_again() {
    // The host's state machine was at 5 already (it applied past the
    // snapshot before the crash, and persists its applied index).
    assert_eq!(applied_after_restart(5), Vec::<u64>::new());
}
