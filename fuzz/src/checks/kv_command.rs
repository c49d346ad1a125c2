//! The KV log command (`raft_kv::state_machine::Command`): the bytes of a
//! committed log entry, decoded and applied by the state machine on every
//! node. A replica must answer any entry with a result (a typed error for
//! an undecodable one), never panic, and stay deterministic.
//!
//! Input: a sequence of postcard-encoded commands, applied one entry each;
//! the whole input is also applied as one entry. Checks: commands survive
//! encode → decode; two replicas fed the same entries (one through a
//! snapshot halfway) end with the same state.

use std::sync::Arc;

use bytes::Bytes;
use raft_core::adapters::StateMachine;
use raft_core::{Entry, EntryPayload, LogId, SnapshotMeta};

use crate::protocol::{self, ReadOp, Selector};
use crate::state_machine::{Command, KvStateMachine};
use crate::watch::WatchHub;

/// At most this many commands per input.
const MAX_COMMANDS: usize = 256;

/// The check (see the module documentation).
pub fn check(data: &[u8]) {
    let mut entries = vec![Entry {
        term: 1,
        index: 1,
        payload: EntryPayload::Command(Bytes::copy_from_slice(data)),
    }];
    let mut rest = data;
    while entries.len() <= MAX_COMMANDS {
        let Ok((command, tail)) = postcard::take_from_bytes::<Command>(rest) else {
            break;
        };
        rest = tail;
        let encoded = command.encode();
        let again: Command = protocol::decode(&encoded).expect("a re-encoded command decodes");
        assert_eq!(
            again, command,
            "decode → encode → decode changed the command"
        );
        entries.push(Entry {
            term: 1,
            index: entries.len() as u64 + 1,
            payload: EntryPayload::Command(encoded),
        });
    }

    let hub = Arc::new(WatchHub::new(64));
    let mut watcher = hub
        .subscribe(Selector::Prefix(Bytes::new()), 0, "fuzz")
        .expect("a watch from now is always possible");
    let mut sm = KvStateMachine::new(hub.clone());
    let half = entries.len() / 2;
    let mut results = sm.apply(&entries[..half]);
    let snapshot = (sm.snapshot())().expect("a snapshot encodes");
    results.extend(sm.apply(&entries[half..]));
    assert_eq!(results.len(), entries.len(), "one result per command entry");
    assert_eq!(sm.applied_index(), entries.len() as u64);
    while watcher.try_next().is_some() {}

    // Re-applying is a no-op.
    let digest = sm.digest();
    assert!(sm.apply(&entries).is_empty());
    assert_eq!(sm.digest(), digest);

    // A replica that restored the snapshot taken halfway and applied the
    // rest agrees.
    let mut replica = KvStateMachine::new(Arc::new(WatchHub::new(64)));
    let last = half
        .checked_sub(1)
        .map_or(LogId::default(), |i| entries[i].log_id());
    let meta = SnapshotMeta {
        last,
        ..SnapshotMeta::default()
    };
    replica
        .restore(&meta, &snapshot)
        .expect("a snapshot this state machine built restores");
    let replayed = replica.apply(&entries[half..]);
    assert_eq!(
        &replayed[..],
        &results[half..],
        "replicas answered differently"
    );
    assert_eq!(replica.digest(), digest, "replicas diverged");
    assert_eq!(replica.revision(), sm.revision());

    let all = sm
        .read(&ReadOp::Scan {
            start: Bytes::new(),
            end: None,
            limit: u32::MAX,
            revision: 0,
        })
        .expect("reads of the store do not fail");
    assert_eq!(
        all.kvs.len(),
        sm.len().min(protocol::MAX_SCAN_LIMIT as usize)
    );
}
