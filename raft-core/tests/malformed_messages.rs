//! Messages no genuine peer sends (fuzz finding F2, fuzz/README.md): the
//! node drops them with a warning, counts them, and goes on; nothing about
//! it changes (log, term, commit). And a store whose log skips indexes
//! makes `Node::new` fail instead of hang.

use bytes::Bytes;
use raft_core::{
    AppendRequest, Config, Entry, EntryPayload, Error, HardState, LogId, LogRead, LogWrite, MemLog,
    Membership, Message, MessageBody, Node, SnapshotChunk, SnapshotMeta, StorageError,
};

fn membership() -> Membership {
    Membership::with_voters((1..=3).map(|id| (id, format!("node-{id}"))))
}

fn entry(term: u64, index: u64) -> Entry {
    Entry {
        term,
        index,
        payload: EntryPayload::Command(Bytes::from(format!("{index}/{term}"))),
    }
}

/// Node 1, a follower that holds entries 1..=3 (terms 1, 2, 2) and has
/// committed 2, in term 2.
fn follower() -> Node<MemLog> {
    let mut node = Node::new(Config::new(1), MemLog::bootstrap(membership())).unwrap();
    step(
        &mut node,
        2,
        MessageBody::Append(AppendRequest {
            prev: LogId::new(1, 1),
            entries: vec![entry(2, 2), entry(2, 3)],
            commit: 2,
        }),
    )
    .unwrap();
    drain(&mut node);
    assert_eq!(node.status().last_log, LogId::new(2, 3));
    assert_eq!(node.commit_index(), 2);
    node
}

fn step(node: &mut Node<MemLog>, term: u64, body: MessageBody) -> Result<(), Error> {
    node.step(Message {
        from: 2,
        to: 1,
        term,
        body,
    })
}

/// The host loop: persist, acknowledge, apply.
fn drain(node: &mut Node<MemLog>) {
    while node.has_ready() {
        let ready = node.ready().unwrap();
        node.store_mut().apply(&ready.write).unwrap();
        node.on_persisted(ready.number).unwrap();
        if let Some(last) = ready.committed_entries.last() {
            node.on_applied(last.index).unwrap();
        }
    }
}

/// Steps `body` into the follower and checks it was dropped as malformed:
/// `Ok`, counted, and nothing changed, not even the term.
fn assert_dropped(term: u64, body: MessageBody) {
    let mut node = follower();
    let before = node.status();
    step(&mut node, term, body.clone()).unwrap_or_else(|e| panic!("{body:?}: {e}"));
    assert!(
        !node.has_ready(),
        "{body:?} produced output: {:?}",
        node.ready().unwrap()
    );
    let after = node.status();
    assert_eq!(
        after.counters.malformed_messages,
        before.counters.malformed_messages + 1,
        "{body:?} was not counted as malformed"
    );
    assert_eq!(after.last_log, before.last_log, "{body:?}");
    assert_eq!(after.term, before.term, "{body:?}");
    assert_eq!(after.commit, before.commit, "{body:?}");
    assert_eq!(after.leader, before.leader, "{body:?}");
    assert_eq!(
        node.store().entries(1, 4, u64::MAX).unwrap(),
        before_entries(),
        "{body:?} changed the log"
    );
}

fn before_entries() -> Vec<Entry> {
    let mut entries = vec![raft_core::bootstrap_entry(membership())];
    entries.extend([entry(2, 2), entry(2, 3)]);
    entries
}

fn append(prev: LogId, entries: Vec<Entry>, commit: u64) -> MessageBody {
    MessageBody::Append(AppendRequest {
        prev,
        entries,
        commit,
    })
}

#[test]
fn append_with_entries_not_after_prev_is_dropped() {
    // Gaps, repeats, going backwards, not starting right after prev; in the
    // current term and in a later one (whose term must not be adopted).
    for term in [2, 3] {
        for entries in [
            vec![entry(2, 5)],
            vec![entry(2, 4), entry(2, 6)],
            vec![entry(2, 4), entry(2, 4)],
            vec![entry(2, 5), entry(2, 4)],
            vec![entry(2, 3)],
            vec![entry(2, 2), entry(2, 3)],
        ] {
            assert_dropped(term, append(LogId::new(2, 3), entries, 4));
        }
    }
    // prev.index + 1 overflowing.
    assert_dropped(2, append(LogId::new(2, u64::MAX), vec![entry(2, 0)], 0));
}

#[test]
fn append_with_impossible_terms_is_dropped() {
    for (term, prev, entries) in [
        // Terms going down after prev, or within the entries.
        (3, LogId::new(2, 3), vec![entry(1, 4)]),
        (3, LogId::new(2, 3), vec![entry(3, 4), entry(2, 5)]),
        // Entries (or prev) from a term after the message's.
        (2, LogId::new(2, 3), vec![entry(3, 4)]),
        (2, LogId::new(3, 3), vec![]),
    ] {
        assert_dropped(term, append(prev, entries, 4));
    }
}

#[test]
fn snapshot_chunk_outside_its_snapshot_is_dropped() {
    let meta = |size| SnapshotMeta {
        last: LogId::new(2, 10),
        membership: membership(),
        membership_index: 1,
        size,
    };
    let chunk = |size, offset, data: &'static [u8], done| {
        MessageBody::Snapshot(SnapshotChunk {
            meta: meta(size),
            offset,
            data: Bytes::from_static(data),
            done,
        })
    };
    for body in [
        // Past the snapshot's end.
        chunk(4, 0, b"12345", false),
        chunk(4, 0, b"12345", true),
        chunk(4, u64::MAX, b"1", false),
        // The last chunk ends before the snapshot does, or a chunk that
        // ends it is not marked last.
        chunk(8, 0, b"1234", true),
        chunk(4, 0, b"1234", false),
        // A snapshot ending in a later term than the message's, or holding
        // a configuration from after its end.
        MessageBody::Snapshot(SnapshotChunk {
            meta: SnapshotMeta {
                last: LogId::new(3, 10),
                ..meta(4)
            },
            offset: 0,
            data: Bytes::from_static(b"1234"),
            done: true,
        }),
        MessageBody::Snapshot(SnapshotChunk {
            meta: SnapshotMeta {
                membership_index: 11,
                ..meta(4)
            },
            offset: 0,
            data: Bytes::from_static(b"1234"),
            done: true,
        }),
    ] {
        assert_dropped(2, body);
    }
    // The well-formed chunk is taken.
    let mut node = follower();
    step(&mut node, 2, chunk(4, 0, b"1234", true)).unwrap();
    drain(&mut node);
    assert_eq!(node.status().counters.malformed_messages, 0);
    assert_eq!(node.status().last_log, LogId::new(2, 10));
}

#[test]
fn well_formed_append_is_taken() {
    let mut node = follower();
    step(
        &mut node,
        3,
        append(LogId::new(2, 3), vec![entry(2, 4), entry(3, 5)], 5),
    )
    .unwrap();
    drain(&mut node);
    let status = node.status();
    assert_eq!(status.counters.malformed_messages, 0);
    assert_eq!(status.last_log, LogId::new(3, 5));
    assert_eq!(status.commit, 5);
}

/// A store whose log skips an index (as one holding F2's entries did): a
/// restart is refused with a storage error; it used to loop forever.
#[test]
fn restart_on_a_log_with_a_gap_fails() {
    let mut store = MemLog::new();
    store
        .apply(&LogWrite {
            entries: vec![raft_core::bootstrap_entry(membership()), entry(1, 3)],
            hard_state: Some(HardState {
                term: 1,
                vote: None,
                commit: 0,
            }),
            must_sync: true,
            ..LogWrite::default()
        })
        .unwrap();
    match Node::new(Config::new(1), store) {
        Err(Error::Storage(StorageError::Corrupt(message))) => {
            assert!(message.contains("entry 3"), "{message}")
        }
        Err(other) => panic!("unexpected error {other}"),
        Ok(_) => panic!("a log with a gap was accepted"),
    }
}
