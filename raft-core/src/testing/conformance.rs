//! The storage conformance suite: what every [`LogRead`] store must do, as
//! checks any adapter runs against its own store.
//!
//! An adapter implements [`ConformanceStore`] (applying a [`LogWrite`],
//! saving a snapshot, and closing and reopening the store) and runs the
//! suite, either all at once with [`run_all`] or one test per check through
//! [`cases`] or the named functions, so a failure names its case:
//!
//! ```
//! use raft_core::MemLog;
//! use raft_core::testing::conformance;
//!
//! conformance::run_all(MemLog::new);
//! ```
//!
//! The cases: [`append`], [`overwrite_conflicting_suffix`],
//! [`compact_prefix`], [`range_reads_within_byte_budget`],
//! [`term_at_every_boundary`], [`hard_state_round_trip`],
//! [`received_snapshot_round_trip`], [`saved_snapshot_round_trip`] and
//! [`recovery_after_reopen`]. Each takes a fresh, empty store and panics
//! with a message naming what went wrong.
//!
//! Every write the suite makes has [`LogWrite::must_sync`] set, and
//! [`ConformanceStore::reopen`] closes the store cleanly, so after a reopen
//! everything written before must be there (compactions included). A
//! snapshot being received (chunks not yet installed) need not survive a
//! reopen; the suite never relies on it.

use std::panic::{AssertUnwindSafe, catch_unwind};

use bytes::Bytes;

use crate::error::StorageError;
use crate::mem_log::MemLog;
use crate::membership::Membership;
use crate::message::SnapshotChunk;
use crate::storage::{LogRead, LogWrite};
use crate::types::{Entry, EntryPayload, HardState, Index, LogId, SnapshotMeta, Term};

/// A store under test: a [`LogRead`] that can also apply writes.
pub trait ConformanceStore: LogRead + Sized {
    /// Applies one output batch's writes, in the documented order,
    /// atomically and durably (what `LogStore::persist` does).
    fn apply(&mut self, write: &LogWrite) -> Result<(), StorageError>;

    /// Saves a snapshot the host built (what `LogStore::save_snapshot`
    /// does). A snapshot no newer than the current one is ignored.
    fn save_snapshot(&mut self, meta: SnapshotMeta, data: Bytes) -> Result<(), StorageError>;

    /// Closes the store and opens it again from what it made durable, as a
    /// restarted node would. An in-memory store returns itself. Panics if the
    /// store cannot be reopened.
    fn reopen(self) -> Self;
}

impl ConformanceStore for MemLog {
    fn apply(&mut self, write: &LogWrite) -> Result<(), StorageError> {
        MemLog::apply(self, write)
    }

    fn save_snapshot(&mut self, meta: SnapshotMeta, data: Bytes) -> Result<(), StorageError> {
        MemLog::save_snapshot(self, meta, data);
        Ok(())
    }

    fn reopen(self) -> Self {
        self
    }
}

/// One named check.
pub type Case<S> = (&'static str, fn(S));

/// Every check, with its name.
pub fn cases<S: ConformanceStore>() -> Vec<Case<S>> {
    vec![
        ("append", append::<S>),
        (
            "overwrite_conflicting_suffix",
            overwrite_conflicting_suffix::<S>,
        ),
        ("compact_prefix", compact_prefix::<S>),
        (
            "range_reads_within_byte_budget",
            range_reads_within_byte_budget::<S>,
        ),
        ("term_at_every_boundary", term_at_every_boundary::<S>),
        ("hard_state_round_trip", hard_state_round_trip::<S>),
        (
            "received_snapshot_round_trip",
            received_snapshot_round_trip::<S>,
        ),
        ("saved_snapshot_round_trip", saved_snapshot_round_trip::<S>),
        ("recovery_after_reopen", recovery_after_reopen::<S>),
    ]
}

/// Runs every check, each on a fresh store from `new_store`, and panics
/// naming every check that failed.
pub fn run_all<S: ConformanceStore>(mut new_store: impl FnMut() -> S) {
    let mut failed = Vec::new();
    for (name, check) in cases::<S>() {
        let store = new_store();
        if catch_unwind(AssertUnwindSafe(|| check(store))).is_err() {
            failed.push(name);
        }
    }
    assert!(
        failed.is_empty(),
        "storage conformance checks failed: {failed:?} (see the panic messages above)"
    );
}

// ----- helpers -----------------------------------------------------------------

/// A command entry whose payload size and bytes depend on its position, so
/// entries are told apart and sizes vary.
fn command(term: Term, index: Index) -> Entry {
    let len = (index * 37 + term * 11) % 300 + 1;
    let data: Vec<u8> = (0..len)
        .map(|i| (i as u8).wrapping_mul(31) ^ (index as u8) ^ ((term as u8) << 4))
        .collect();
    Entry {
        term,
        index,
        payload: EntryPayload::Command(Bytes::from(data)),
    }
}

/// Entries `low..=high` of one term; every seventh is a no-op and every
/// eleventh a configuration, so all payload kinds are stored.
fn entries(term: Term, low: Index, high: Index) -> Vec<Entry> {
    (low..=high)
        .map(|index| match index % 11 {
            _ if index % 7 == 0 => Entry {
                term,
                index,
                payload: EntryPayload::Noop,
            },
            0 => Entry {
                term,
                index,
                payload: EntryPayload::Membership(membership(index)),
            },
            _ => command(term, index),
        })
        .collect()
}

fn membership(seed: u64) -> Membership {
    Membership::with_voters((1..=3).map(|id| (id, format!("node-{id}.seed-{seed}:7000"))))
}

fn snapshot_data(len: usize, seed: u8) -> Bytes {
    Bytes::from(
        (0..len)
            .map(|i| (i % 251) as u8 ^ seed)
            .collect::<Vec<u8>>(),
    )
}

fn snapshot_meta(last: LogId, data: &Bytes) -> SnapshotMeta {
    SnapshotMeta {
        last,
        membership: membership(last.index),
        membership_index: last.index / 2,
        size: data.len() as u64,
    }
}

fn must_apply<S: ConformanceStore>(store: &mut S, write: LogWrite, what: &str) {
    if let Err(e) = store.apply(&write) {
        panic!("{what}: the store refused a valid write: {e}");
    }
}

fn append_entries<S: ConformanceStore>(store: &mut S, new: Vec<Entry>) {
    let what = format!("append {}..={}", new[0].index, new[new.len() - 1].index);
    must_apply(
        store,
        LogWrite {
            entries: new,
            must_sync: true,
            ..LogWrite::default()
        },
        &what,
    );
}

fn compact<S: ConformanceStore>(store: &mut S, index: Index) {
    must_apply(
        store,
        LogWrite {
            compact_to: Some(index),
            must_sync: true,
            ..LogWrite::default()
        },
        "compact",
    );
}

fn write_chunk<S: ConformanceStore>(
    store: &mut S,
    meta: &SnapshotMeta,
    data: &Bytes,
    offset: usize,
    len: usize,
) {
    let end = (offset + len).min(data.len());
    let chunk = SnapshotChunk {
        meta: meta.clone(),
        offset: offset as u64,
        data: data.slice(offset..end),
        done: end == data.len(),
    };
    must_apply(
        store,
        LogWrite {
            snapshot_chunks: vec![chunk],
            must_sync: true,
            ..LogWrite::default()
        },
        "snapshot chunk",
    );
}

fn first<S: LogRead>(store: &S) -> Index {
    store
        .first_index()
        .unwrap_or_else(|e| panic!("first_index failed: {e}"))
}

fn last<S: LogRead>(store: &S) -> Index {
    store
        .last_index()
        .unwrap_or_else(|e| panic!("last_index failed: {e}"))
}

fn term<S: LogRead>(store: &S, index: Index) -> Term {
    store
        .term(index)
        .unwrap_or_else(|e| panic!("term({index}) failed: {e}"))
}

fn read<S: LogRead>(store: &S, low: Index, high: Index) -> Vec<Entry> {
    store
        .entries(low, high, u64::MAX)
        .unwrap_or_else(|e| panic!("entries({low}, {high}) failed: {e}"))
}

fn assert_range<S: LogRead>(store: &S, expected_first: Index, expected_last: Index, what: &str) {
    assert_eq!(first(store), expected_first, "{what}: first_index");
    assert_eq!(last(store), expected_last, "{what}: last_index");
}

/// Checks that the log holds exactly `expected`, entry for entry, with
/// matching terms.
fn assert_log<S: LogRead>(store: &S, expected: &[Entry], what: &str) {
    let (Some(head), Some(tail)) = (expected.first(), expected.last()) else {
        return;
    };
    let got = read(store, head.index, tail.index + 1);
    assert_eq!(
        got.len(),
        expected.len(),
        "{what}: number of entries read back"
    );
    for (got, want) in got.iter().zip(expected) {
        assert_eq!(got, want, "{what}: entry {} differs", want.index);
        assert_eq!(
            term(store, want.index),
            want.term,
            "{what}: term({})",
            want.index
        );
    }
}

fn assert_compacted<T: std::fmt::Debug>(result: Result<T, StorageError>, what: &str) {
    assert!(
        matches!(result, Err(StorageError::Compacted(_))),
        "{what}: expected Compacted, got {result:?}"
    );
}

fn assert_unavailable<T: std::fmt::Debug>(result: Result<T, StorageError>, what: &str) {
    assert!(
        matches!(result, Err(StorageError::Unavailable(_))),
        "{what}: expected Unavailable, got {result:?}"
    );
}

/// Everything a reader can observe, to compare a store before and after a
/// reopen.
#[derive(Debug, PartialEq)]
struct Observed {
    first: Index,
    last: Index,
    hard_state: HardState,
    snapshot: Option<SnapshotMeta>,
    snapshot_data: Option<Bytes>,
    entries: Vec<Entry>,
    terms: Vec<(Index, Result<Term, StorageError>)>,
}

fn observe<S: LogRead>(store: &S) -> Observed {
    let first = first(store);
    let last = last(store);
    let snapshot = store
        .snapshot_meta()
        .unwrap_or_else(|e| panic!("snapshot_meta failed: {e}"));
    let snapshot_data = snapshot.as_ref().map(|meta| {
        store
            .snapshot_chunk(meta.last.index, 0, meta.size)
            .unwrap_or_else(|e| panic!("reading snapshot {} failed: {e}", meta.last.index))
    });
    let entries = if last >= first {
        read(store, first, last + 1)
    } else {
        Vec::new()
    };
    let low = first.saturating_sub(2);
    let terms = (low..=last + 1)
        .map(|index| (index, store.term(index)))
        .collect();
    Observed {
        first,
        last,
        hard_state: store
            .hard_state()
            .unwrap_or_else(|e| panic!("hard_state failed: {e}")),
        snapshot,
        snapshot_data,
        entries,
        terms,
    }
}

// ----- the checks ----------------------------------------------------------------

/// An empty store, then appends in several writes: every entry reads back
/// identical, with its term; nothing answers beyond the end; an append that
/// would leave a gap is refused.
pub fn append<S: ConformanceStore>(mut store: S) {
    assert_range(&store, 1, 0, "empty store");
    assert_eq!(term(&store, 0), 0, "empty store: term(0)");
    assert_unavailable(store.term(1), "empty store: term(1)");
    assert_eq!(read(&store, 1, 1), Vec::new(), "empty store: entries(1, 1)");
    assert_unavailable(store.entries(1, 2, u64::MAX), "empty store: entries(1, 2)");
    assert_eq!(
        store.hard_state().ok(),
        Some(HardState::default()),
        "empty store: hard state"
    );
    assert_eq!(
        store.snapshot_meta().ok(),
        Some(None),
        "empty store: snapshot"
    );

    let mut log = entries(1, 1, 3);
    append_entries(&mut store, log.clone());
    assert_range(&store, 1, 3, "after appending 1..=3");
    assert_log(&store, &log, "after appending 1..=3");

    let more = entries(2, 4, 40);
    log.extend(more.iter().cloned());
    append_entries(&mut store, more);
    assert_range(&store, 1, 40, "after appending 4..=40");
    assert_log(&store, &log, "after appending 4..=40");
    assert_unavailable(store.term(41), "term past the end");
    assert_unavailable(store.entries(1, 42, u64::MAX), "entries past the end");

    // One large entry.
    let big = Entry {
        term: 2,
        index: 41,
        payload: EntryPayload::Command(snapshot_data(256 * 1024, 7)),
    };
    log.push(big.clone());
    append_entries(&mut store, vec![big]);
    assert_log(&store, &log, "after a 256 KiB entry");

    let gap = store.apply(&LogWrite {
        entries: entries(2, 43, 44),
        must_sync: true,
        ..LogWrite::default()
    });
    assert!(
        gap.is_err(),
        "an append at 43 after last index 41 leaves a gap and must be refused"
    );
    assert_range(&store, 1, 41, "after a refused append");
    assert_log(&store, &log, "after a refused append");
}

/// Entries at an index already stored replace that entry and everything
/// after it (Raft paper §5.3), whether the new suffix is shorter, longer or
/// starts at the first entry; the replaced entries never come back.
pub fn overwrite_conflicting_suffix<S: ConformanceStore>(mut store: S) {
    let mut log = entries(1, 1, 10);
    append_entries(&mut store, log.clone());

    // Shorter suffix: 6..=8 of term 2 replace 6..=10 of term 1.
    log.truncate(5);
    log.extend(entries(2, 6, 8));
    append_entries(&mut store, entries(2, 6, 8));
    assert_range(&store, 1, 8, "after overwriting 6..=10 with 6..=8");
    assert_log(&store, &log, "after overwriting 6..=10 with 6..=8");
    assert_unavailable(store.term(9), "term(9) after the suffix was cut at 8");
    assert_unavailable(
        store.entries(1, 10, u64::MAX),
        "entries(1, 10) after the suffix was cut at 8",
    );

    // Appending again must not resurrect the old entries 9 and 10.
    log.extend(entries(2, 9, 12));
    append_entries(&mut store, entries(2, 9, 12));
    assert_log(&store, &log, "after appending 9..=12 over the cut suffix");

    // Only the last entry.
    log.truncate(11);
    log.extend(entries(3, 12, 12));
    append_entries(&mut store, entries(3, 12, 12));
    assert_range(&store, 1, 12, "after overwriting the last entry");
    assert_log(&store, &log, "after overwriting the last entry");

    // Longer suffix from the middle.
    log.truncate(2);
    log.extend(entries(4, 3, 30));
    append_entries(&mut store, entries(4, 3, 30));
    assert_range(&store, 1, 30, "after overwriting 3..=12 with 3..=30");
    assert_log(&store, &log, "after overwriting 3..=12 with 3..=30");

    // Everything, from the first entry.
    log = entries(5, 1, 2);
    append_entries(&mut store, log.clone());
    assert_range(&store, 1, 2, "after overwriting from the first entry");
    assert_log(&store, &log, "after overwriting from the first entry");
    assert_unavailable(
        store.term(3),
        "term(3) after overwriting from the first entry",
    );

    let store = store.reopen();
    assert_range(&store, 1, 2, "after reopening");
    assert_log(&store, &log, "after reopening");
    assert_unavailable(store.term(3), "term(3) after reopening");
}

/// Compaction drops a prefix: the first index moves up, the entry just
/// before it still answers `term`, older ones are `Compacted`; compacting
/// below the first index changes nothing; compacting the whole log leaves
/// an empty log that continues after it.
pub fn compact_prefix<S: ConformanceStore>(mut store: S) {
    let mut log = entries(1, 1, 4);
    log.extend(entries(2, 5, 10));
    append_entries(&mut store, log.clone());

    compact(&mut store, 4);
    assert_range(&store, 5, 10, "after compacting to 4");
    assert_eq!(term(&store, 4), 1, "term of the last compacted entry");
    assert_compacted(store.term(3), "term(3) after compacting to 4");
    assert_compacted(
        store.entries(4, 6, u64::MAX),
        "entries(4, 6) after compacting to 4",
    );
    assert_log(&store, &log[4..], "after compacting to 4");

    compact(&mut store, 3);
    assert_range(
        &store,
        5,
        10,
        "after compacting to 3, below the first index",
    );

    // Compaction in the same batch as an append and a hard state: applied
    // after them.
    let more = entries(3, 11, 12);
    log.extend(more.iter().cloned());
    let hard_state = HardState {
        term: 3,
        vote: Some(1),
        commit: 9,
    };
    must_apply(
        &mut store,
        LogWrite {
            entries: more,
            hard_state: Some(hard_state),
            compact_to: Some(7),
            must_sync: true,
            ..LogWrite::default()
        },
        "append, hard state and compact in one batch",
    );
    assert_range(&store, 8, 12, "after compacting to 7 with an append");
    assert_eq!(term(&store, 7), 2, "term(7), the last compacted entry");
    assert_compacted(store.term(6), "term(6) after compacting to 7");
    assert_eq!(
        store.hard_state().ok(),
        Some(hard_state),
        "hard state written with a compaction"
    );
    assert_log(&store, &log[7..], "after compacting to 7");

    // The whole log.
    compact(&mut store, 12);
    assert_range(&store, 13, 12, "after compacting everything");
    assert_eq!(
        term(&store, 12),
        3,
        "term of the last entry after compacting everything"
    );
    assert_eq!(
        read(&store, 13, 13),
        Vec::new(),
        "entries(13, 13) of an empty log"
    );
    assert_unavailable(store.term(13), "term(13) of an empty log");
    assert_compacted(
        store.entries(12, 13, u64::MAX),
        "entries(12, 13) after compacting everything",
    );

    // The log continues after the compacted prefix.
    log = entries(3, 13, 15);
    append_entries(&mut store, log.clone());
    assert_range(&store, 13, 15, "after appending past a fully compacted log");
    assert_log(&store, &log, "after appending past a fully compacted log");
    assert_eq!(
        term(&store, 12),
        3,
        "term(12) after appending past a fully compacted log"
    );

    let store = store.reopen();
    assert_range(&store, 13, 15, "after reopening");
    assert_eq!(term(&store, 12), 3, "term(12) after reopening");
    assert_compacted(store.term(11), "term(11) after reopening");
    assert_log(&store, &log, "after reopening");
}

/// `entries(low, high, max_bytes)` returns the longest prefix of the range
/// whose [`Entry::budget_size`] total fits the budget, but always at least
/// one entry; errors for ranges below the first or beyond the last index.
pub fn range_reads_within_byte_budget<S: ConformanceStore>(mut store: S) {
    let log = entries(1, 1, 30);
    append_entries(&mut store, log.clone());

    for (low, high) in [(1, 31), (5, 9), (30, 31), (12, 29)] {
        let range = &log[(low - 1) as usize..(high - 1) as usize];
        let what = format!("entries({low}, {high})");
        assert_eq!(
            read(&store, low, high),
            range.to_vec(),
            "{what} with no budget limit"
        );
        let one = store
            .entries(low, high, 0)
            .unwrap_or_else(|e| panic!("{what} with budget 0 failed: {e}"));
        assert_eq!(
            one,
            range[..1].to_vec(),
            "{what} with budget 0 returns exactly one entry"
        );
        let mut total = 0;
        for (k, entry) in range.iter().enumerate() {
            total += entry.budget_size();
            let exact = store
                .entries(low, high, total)
                .unwrap_or_else(|e| panic!("{what} failed: {e}"));
            assert_eq!(
                exact,
                range[..=k].to_vec(),
                "{what} with a budget of exactly {} entries",
                k + 1
            );
            let short = store
                .entries(low, high, total - 1)
                .unwrap_or_else(|e| panic!("{what} failed: {e}"));
            assert_eq!(
                short,
                range[..k.max(1)].to_vec(),
                "{what} with a budget one byte short of {} entries",
                k + 1
            );
        }
    }
    assert_eq!(read(&store, 7, 7), Vec::new(), "an empty range");
    assert_unavailable(
        store.entries(25, 32, u64::MAX),
        "a range past the last index",
    );

    compact(&mut store, 10);
    assert_compacted(
        store.entries(10, 12, u64::MAX),
        "a range starting at a compacted index",
    );
    assert_compacted(
        store.entries(1, 31, 0),
        "a range starting at a compacted index, budget 0",
    );
    assert_eq!(
        read(&store, 11, 31),
        log[10..].to_vec(),
        "the range after the compacted prefix"
    );
    let budget: u64 = log[10..13].iter().map(Entry::budget_size).sum();
    let got = store
        .entries(11, 31, budget)
        .unwrap_or_else(|e| panic!("entries(11, 31) failed: {e}"));
    assert_eq!(
        got,
        log[10..13].to_vec(),
        "a budget of three entries after compaction"
    );
}

/// `term` at every boundary: 0, the first and last entries, one past the
/// end, the last compacted entry and the one before it, a saved snapshot's
/// index inside the log, and an installed snapshot's index with an empty
/// log and with entries after it. The answers survive a reopen.
pub fn term_at_every_boundary<S: ConformanceStore>(mut store: S) {
    assert_eq!(term(&store, 0), 0, "term(0) of an empty store");
    assert_unavailable(store.term(1), "term(1) of an empty store");

    let mut log = entries(1, 1, 2);
    log.extend(entries(2, 3, 4));
    log.extend(entries(3, 5, 6));
    append_entries(&mut store, log.clone());
    for entry in &log {
        assert_eq!(
            term(&store, entry.index),
            entry.term,
            "term({})",
            entry.index
        );
    }
    assert_eq!(term(&store, 0), 0, "term(0)");
    assert_unavailable(store.term(7), "term one past the last entry");

    // A snapshot inside the log, then compaction short of it (a retention
    // tail).
    let data = snapshot_data(1000, 1);
    store
        .save_snapshot(snapshot_meta(LogId::new(2, 4), &data), data)
        .unwrap_or_else(|e| panic!("saving a snapshot at 4 failed: {e}"));
    compact(&mut store, 3);
    assert_eq!(term(&store, 0), 0, "term(0) after compaction");
    assert_compacted(store.term(2), "term(2), before the last compacted entry");
    assert_eq!(term(&store, 3), 2, "term(3), the last compacted entry");
    assert_eq!(
        term(&store, 4),
        2,
        "term(4), the snapshot's index, the first entry"
    );
    assert_eq!(term(&store, 6), 3, "term(6), the last entry");
    assert_unavailable(store.term(7), "term(7) after compaction");

    // An installed snapshot past the log: the log is empty after it.
    let data = snapshot_data(500, 2);
    let meta = snapshot_meta(LogId::new(5, 10), &data);
    write_chunk(&mut store, &meta, &data, 0, data.len());
    must_apply(
        &mut store,
        LogWrite {
            install_snapshot: Some(meta),
            must_sync: true,
            ..LogWrite::default()
        },
        "install",
    );
    assert_range(&store, 11, 10, "after installing a snapshot at 10");
    assert_eq!(
        term(&store, 10),
        5,
        "term at the installed snapshot's index"
    );
    assert_compacted(store.term(9), "term(9), below the installed snapshot");
    assert_compacted(store.term(6), "term(6), an entry the snapshot replaced");
    assert_compacted(store.term(3), "term(3), the old last compacted entry");
    assert_unavailable(store.term(11), "term(11), after the installed snapshot");

    // Entries after the snapshot.
    log = entries(6, 11, 12);
    append_entries(&mut store, log.clone());
    assert_eq!(
        term(&store, 10),
        5,
        "term at the snapshot's index with entries after it"
    );
    assert_eq!(
        term(&store, 11),
        6,
        "term(11), the first entry after the snapshot"
    );
    assert_eq!(term(&store, 12), 6, "term(12), the last entry");
    assert_unavailable(store.term(13), "term(13)");

    let store = store.reopen();
    assert_range(&store, 11, 12, "after reopening");
    assert_eq!(term(&store, 0), 0, "term(0) after reopening");
    assert_compacted(store.term(9), "term(9) after reopening");
    assert_eq!(
        term(&store, 10),
        5,
        "term at the snapshot's index after reopening"
    );
    assert_eq!(term(&store, 12), 6, "term(12) after reopening");
    assert_unavailable(store.term(13), "term(13) after reopening");
}

/// The hard state reads back as written, alone or with entries; a write
/// without one keeps the previous one; it survives a reopen.
pub fn hard_state_round_trip<S: ConformanceStore>(mut store: S) {
    assert_eq!(
        store.hard_state().ok(),
        Some(HardState::default()),
        "hard state of an empty store"
    );

    let first = HardState {
        term: 1,
        vote: None,
        commit: 0,
    };
    must_apply(
        &mut store,
        LogWrite {
            hard_state: Some(first),
            must_sync: true,
            ..LogWrite::default()
        },
        "hard state",
    );
    assert_eq!(
        store.hard_state().ok(),
        Some(first),
        "hard state written alone"
    );

    let voted = HardState {
        term: 2,
        vote: Some(3),
        commit: 0,
    };
    must_apply(
        &mut store,
        LogWrite {
            entries: entries(2, 1, 5),
            hard_state: Some(voted),
            must_sync: true,
            ..LogWrite::default()
        },
        "hard state with entries",
    );
    assert_eq!(
        store.hard_state().ok(),
        Some(voted),
        "hard state written with entries"
    );

    append_entries(&mut store, entries(2, 6, 7));
    assert_eq!(
        store.hard_state().ok(),
        Some(voted),
        "hard state after a write without one"
    );

    let committed = HardState {
        term: 2,
        vote: Some(3),
        commit: 7,
    };
    must_apply(
        &mut store,
        LogWrite {
            hard_state: Some(committed),
            must_sync: true,
            ..LogWrite::default()
        },
        "commit",
    );
    let mut store = store.reopen();
    assert_eq!(
        store.hard_state().ok(),
        Some(committed),
        "hard state after reopening"
    );
    let large = HardState {
        term: u64::MAX - 1,
        vote: Some(u64::MAX),
        commit: 7,
    };
    must_apply(
        &mut store,
        LogWrite {
            hard_state: Some(large),
            must_sync: true,
            ..LogWrite::default()
        },
        "large values",
    );
    let store = store.reopen();
    assert_eq!(
        store.hard_state().ok(),
        Some(large),
        "hard state with extreme values after reopening"
    );
}

/// A snapshot received in chunks (across several writes, spanning several
/// 64 KiB blocks) and installed with entries after it: the metadata, the
/// data read back in chunks of any size and offset, and the log replaced.
/// A partial download restarted at offset 0 is discarded; chunks at the
/// wrong offset and installs of incomplete data are refused.
pub fn received_snapshot_round_trip<S: ConformanceStore>(mut store: S) {
    append_entries(&mut store, entries(1, 1, 5));
    let data = snapshot_data(200_000, 3);
    let meta = snapshot_meta(LogId::new(3, 20), &data);

    write_chunk(&mut store, &meta, &data, 0, 70_000);
    // Two chunks in one write.
    let chunks = [(70_000, 60_000), (130_000, 50_000)]
        .map(|(offset, len)| SnapshotChunk {
            meta: meta.clone(),
            offset,
            data: data.slice(offset as usize..(offset + len) as usize),
            done: false,
        })
        .to_vec();
    must_apply(
        &mut store,
        LogWrite {
            snapshot_chunks: chunks,
            must_sync: true,
            ..LogWrite::default()
        },
        "two chunks",
    );
    let wrong = SnapshotChunk {
        meta: meta.clone(),
        offset: 190_000,
        data: data.slice(190_000..),
        done: true,
    };
    let refused = store.apply(&LogWrite {
        snapshot_chunks: vec![wrong],
        must_sync: true,
        ..LogWrite::default()
    });
    assert!(
        refused.is_err(),
        "a chunk at offset 190000 after 180000 bytes must be refused"
    );

    // The download was broken by the refused chunk: start over, and finish
    // it in the batch that installs it, as a node does.
    write_chunk(&mut store, &meta, &data, 0, 100_000);
    let last_chunk = SnapshotChunk {
        meta: meta.clone(),
        offset: 100_000,
        data: data.slice(100_000..),
        done: true,
    };
    let after = entries(3, 21, 22);
    let hard_state = HardState {
        term: 3,
        vote: None,
        commit: 20,
    };
    must_apply(
        &mut store,
        LogWrite {
            snapshot_chunks: vec![last_chunk],
            install_snapshot: Some(meta.clone()),
            entries: after.clone(),
            hard_state: Some(hard_state),
            must_sync: true,
            ..LogWrite::default()
        },
        "last chunk, install, entries and hard state in one batch",
    );
    let check = |store: &S, what: &str| {
        assert_eq!(
            store.snapshot_meta().ok(),
            Some(Some(meta.clone())),
            "{what}: snapshot metadata"
        );
        assert_range(store, 21, 22, what);
        assert_eq!(
            store.term(20).ok(),
            Some(3),
            "{what}: term at the snapshot's index"
        );
        assert_compacted(
            store.term(5),
            &format!("{what}: term(5), an entry the snapshot replaced"),
        );
        assert_compacted(
            store.entries(20, 22, u64::MAX),
            &format!("{what}: entries from the snapshot's index"),
        );
        assert_log(store, &after, what);
        assert_eq!(
            store.hard_state().ok(),
            Some(hard_state),
            "{what}: hard state"
        );
        for (offset, len) in [
            (0, 200_000),
            (0, 1),
            (65_535, 2),
            (65_536, 65_536),
            (1_000, 150_000),
            (199_999, 10),
            (0, 1 << 40),
        ] {
            let got = store.snapshot_chunk(20, offset, len).unwrap_or_else(|e| {
                panic!("{what}: snapshot_chunk(20, {offset}, {len}) failed: {e}")
            });
            let end = (offset + len).min(200_000) as usize;
            assert!(
                got == data.slice(offset as usize..end),
                "{what}: snapshot bytes {offset}..{end} differ"
            );
        }
        for offset in [200_000, 300_000] {
            let got = store
                .snapshot_chunk(20, offset, 10)
                .unwrap_or_else(|e| panic!("{what}: chunk at {offset}: {e}"));
            assert!(
                got.is_empty(),
                "{what}: a chunk at or past the end ({offset}) is empty"
            );
        }
        let changed = store.snapshot_chunk(19, 0, 10);
        assert!(
            matches!(changed, Err(StorageError::SnapshotChanged(19))),
            "{what}: a chunk of a snapshot that is not current: expected SnapshotChanged(19), got {changed:?}"
        );
    };
    check(&store, "after installing");

    // A partial download of a newer snapshot, abandoned and restarted with
    // other data: only the second one counts.
    let stale = snapshot_data(90_000, 9);
    let newer = snapshot_data(80_000, 4);
    let newer_meta = snapshot_meta(LogId::new(4, 40), &newer);
    write_chunk(&mut store, &newer_meta, &stale, 0, 50_000);
    write_chunk(&mut store, &newer_meta, &newer, 0, 80_000);
    let store = store.reopen();
    check(
        &store,
        "after reopening with an incoming snapshot not yet installed",
    );
    let mut store = store;
    // The download may not have survived the reopen; a node restarts it.
    write_chunk(&mut store, &newer_meta, &newer, 0, 80_000);
    must_apply(
        &mut store,
        LogWrite {
            install_snapshot: Some(newer_meta.clone()),
            must_sync: true,
            ..LogWrite::default()
        },
        "install the newer snapshot",
    );
    assert_eq!(
        store.snapshot_meta().ok(),
        Some(Some(newer_meta.clone())),
        "the newer snapshot is current"
    );
    assert_range(&store, 41, 40, "after installing the newer snapshot");
    let got = store
        .snapshot_chunk(40, 0, u64::MAX)
        .unwrap_or_else(|e| panic!("reading the newer snapshot: {e}"));
    assert!(
        got == newer,
        "the newer snapshot holds the restarted download's data"
    );
    assert!(
        matches!(
            store.snapshot_chunk(20, 0, 10),
            Err(StorageError::SnapshotChanged(20))
        ),
        "the old snapshot is gone"
    );

    let never = snapshot_meta(LogId::new(5, 50), &newer);
    let refused = store.apply(&LogWrite {
        install_snapshot: Some(never),
        must_sync: true,
        ..LogWrite::default()
    });
    assert!(
        refused.is_err(),
        "installing a snapshot that was never received must be refused"
    );
    let partial = snapshot_data(1000, 5);
    let partial_meta = snapshot_meta(LogId::new(5, 60), &partial);
    write_chunk(&mut store, &partial_meta, &partial, 0, 600);
    let refused = store.apply(&LogWrite {
        install_snapshot: Some(partial_meta),
        must_sync: true,
        ..LogWrite::default()
    });
    assert!(
        refused.is_err(),
        "installing a snapshot with 600 of 1000 bytes received must be refused"
    );

    let store = store.reopen();
    assert_eq!(
        store.snapshot_meta().ok(),
        Some(Some(newer_meta)),
        "the newer snapshot after reopening"
    );
    let got = store
        .snapshot_chunk(40, 0, u64::MAX)
        .unwrap_or_else(|e| panic!("reading after reopening: {e}"));
    assert!(got == newer, "the newer snapshot's data after reopening");
}

/// A snapshot the host built and saved: read back whole and in chunks; the
/// log is untouched until compacted; an older snapshot is ignored; a newer
/// one replaces it; all of it survives a reopen.
pub fn saved_snapshot_round_trip<S: ConformanceStore>(mut store: S) {
    let log = entries(2, 1, 10);
    append_entries(&mut store, log.clone());
    let data = snapshot_data(150_000, 6);
    let meta = snapshot_meta(LogId::new(2, 8), &data);
    store
        .save_snapshot(meta.clone(), data.clone())
        .unwrap_or_else(|e| panic!("saving a snapshot failed: {e}"));
    assert_eq!(
        store.snapshot_meta().ok(),
        Some(Some(meta.clone())),
        "saved snapshot metadata"
    );
    assert_range(&store, 1, 10, "the log after saving a snapshot");
    assert_log(&store, &log, "the log after saving a snapshot");
    let got = store
        .snapshot_chunk(8, 0, u64::MAX)
        .unwrap_or_else(|e| panic!("reading the saved snapshot: {e}"));
    assert!(got == data, "the saved snapshot's data");
    let got = store
        .snapshot_chunk(8, 70_000, 70_000)
        .unwrap_or_else(|e| panic!("reading a chunk: {e}"));
    assert!(
        got == data.slice(70_000..140_000),
        "a chunk of the saved snapshot"
    );

    compact(&mut store, 6);
    assert_range(&store, 7, 10, "after compacting to 6 behind the snapshot");
    assert_eq!(term(&store, 8), 2, "term at the snapshot's index");

    let older = snapshot_data(10, 1);
    store
        .save_snapshot(snapshot_meta(LogId::new(2, 5), &older), older)
        .unwrap_or_else(|e| panic!("saving an older snapshot failed: {e}"));
    assert_eq!(
        store.snapshot_meta().ok(),
        Some(Some(meta)),
        "an older snapshot is ignored"
    );

    let newer = snapshot_data(70_000, 8);
    let newer_meta = snapshot_meta(LogId::new(2, 10), &newer);
    store
        .save_snapshot(newer_meta.clone(), newer.clone())
        .unwrap_or_else(|e| panic!("saving a newer snapshot: {e}"));
    assert_eq!(
        store.snapshot_meta().ok(),
        Some(Some(newer_meta.clone())),
        "a newer snapshot replaces it"
    );
    assert!(
        matches!(
            store.snapshot_chunk(8, 0, 10),
            Err(StorageError::SnapshotChanged(8))
        ),
        "the replaced snapshot"
    );

    let store = store.reopen();
    assert_eq!(
        store.snapshot_meta().ok(),
        Some(Some(newer_meta)),
        "the snapshot after reopening"
    );
    let got = store
        .snapshot_chunk(10, 0, u64::MAX)
        .unwrap_or_else(|e| panic!("reading after reopening: {e}"));
    assert!(got == newer, "the snapshot's data after reopening");
    assert_range(&store, 7, 10, "the log after reopening");
    assert_log(&store, &log[6..], "the log after reopening");
}

/// Everything a reader can see is the same after closing and reopening:
/// an empty store, and a store after appends, overwrites, hard states, a
/// saved snapshot, compaction and an installed snapshot; and it keeps
/// working after the reopen.
pub fn recovery_after_reopen<S: ConformanceStore>(store: S) {
    let before = observe(&store);
    let mut store = store.reopen();
    assert_eq!(observe(&store), before, "an empty store after reopening");

    append_entries(&mut store, entries(1, 1, 30));
    must_apply(
        &mut store,
        LogWrite {
            entries: entries(2, 25, 35),
            hard_state: Some(HardState {
                term: 2,
                vote: Some(2),
                commit: 20,
            }),
            must_sync: true,
            ..LogWrite::default()
        },
        "overwrite with hard state",
    );
    let data = snapshot_data(100_000, 2);
    store
        .save_snapshot(snapshot_meta(LogId::new(1, 20), &data), data)
        .unwrap_or_else(|e| panic!("saving a snapshot failed: {e}"));
    compact(&mut store, 15);
    let before = observe(&store);
    let mut store = store.reopen();
    assert_eq!(
        observe(&store),
        before,
        "after appends, an overwrite, a snapshot and compaction"
    );

    append_entries(&mut store, entries(3, 36, 40));
    must_apply(
        &mut store,
        LogWrite {
            hard_state: Some(HardState {
                term: 3,
                vote: None,
                commit: 38,
            }),
            must_sync: true,
            ..LogWrite::default()
        },
        "hard state",
    );
    let before = observe(&store);
    let mut store = store.reopen();
    assert_eq!(
        observe(&store),
        before,
        "after writes made since the last reopen"
    );

    let data = snapshot_data(130_000, 5);
    let meta = snapshot_meta(LogId::new(4, 60), &data);
    write_chunk(&mut store, &meta, &data, 0, 64 * 1024);
    write_chunk(&mut store, &meta, &data, 64 * 1024, data.len());
    must_apply(
        &mut store,
        LogWrite {
            install_snapshot: Some(meta),
            entries: entries(4, 61, 63),
            must_sync: true,
            ..LogWrite::default()
        },
        "install with entries",
    );
    let before = observe(&store);
    let store = store.reopen();
    assert_eq!(
        observe(&store),
        before,
        "after installing a received snapshot"
    );
    let store = store.reopen();
    assert_eq!(
        observe(&store),
        before,
        "after a second reopen with no writes in between"
    );
}
