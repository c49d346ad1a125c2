//! The KV snapshot (`KvStateMachine::restore` through
//! `raft_core::adapters::StateMachine`): the bytes a follower receives from
//! the leader in snapshot chunks and restores its state from. Restoring
//! arbitrary bytes must give `Ok` or a typed error; a restored state must
//! keep working (reads, writes, watches) and must snapshot to bytes that
//! restore to the same state.
//!
//! The metadata's last entry is taken from the data's first two varints
//! (where a genuine snapshot records it), so the fuzzer gets past the
//! metadata check.

use std::sync::Arc;

use bytes::Bytes;
use raft_core::adapters::StateMachine;
use raft_core::{Entry, EntryPayload, LogId, SnapshotMeta};

use crate::protocol::{ReadOp, Selector, Session, WriteOp};
use crate::state_machine::{Command, KvStateMachine};
use crate::watch::WatchHub;

/// The check (see the module documentation).
pub fn check(data: &[u8]) {
    let last = postcard::take_from_bytes::<LogId>(data)
        .map(|(last, _)| last)
        .unwrap_or_default();
    let meta = SnapshotMeta {
        last,
        ..SnapshotMeta::default()
    };
    let hub = Arc::new(WatchHub::new(16));
    let _watcher = hub.subscribe(Selector::Prefix(Bytes::new()), 0, "fuzz");
    let mut sm = KvStateMachine::new(hub.clone());
    if let Err(error) = sm.restore(&meta, data) {
        let _ = error.to_string();
        return;
    }
    assert_eq!(sm.applied_index(), last.index);

    // The restored state snapshots and restores to itself.
    let first = (sm.snapshot())().expect("a restored state snapshots");
    let mut copy = KvStateMachine::new(Arc::new(WatchHub::new(16)));
    copy.restore(&meta, &first)
        .expect("a snapshot this state machine built restores");
    assert_eq!(copy.digest(), sm.digest());
    assert_eq!(
        (copy.snapshot())().expect("snapshots"),
        first,
        "snapshot bytes unstable"
    );

    // It keeps serving: reads, then writes to a key it holds and a new one.
    let all = sm
        .read(&ReadOp::Scan {
            start: Bytes::new(),
            end: None,
            limit: 16,
            revision: 0,
        })
        .expect("reads of the store do not fail");
    let _watch = hub.subscribe(Selector::Prefix(Bytes::new()), 0, "fuzz");
    let existing = all.kvs.first().map(|kv| kv.key.clone());
    let keys = existing
        .into_iter()
        .chain([Bytes::from_static(b"fuzz-new-key")]);
    let mut index = last.index;
    for (i, key) in keys.enumerate() {
        for op in [
            WriteOp::Put {
                key: key.clone(),
                value: Bytes::from_static(b"v"),
            },
            WriteOp::Cas {
                key: key.clone(),
                expected: Some(Bytes::from_static(b"v")),
                new: Some(Bytes::from_static(b"w")),
            },
            WriteOp::Delete { key: key.clone() },
        ] {
            let Some(next) = index.checked_add(1) else {
                return;
            };
            index = next;
            let command = Command {
                session: Session {
                    client_id: 0xf022 + i as u64,
                    sequence: index,
                    first_outstanding: index,
                },
                op,
                prev_kv: i % 2 == 0,
                owner: "fuzz".into(),
            };
            let out = sm.apply(&[Entry {
                term: last.term,
                index,
                payload: EntryPayload::Command(command.encode()),
            }]);
            assert_eq!(out.len(), 1);
        }
    }
}
