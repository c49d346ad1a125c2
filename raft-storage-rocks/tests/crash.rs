//! Crash safety with a real process: a child process appends batches (and
//! now and then saves a snapshot) and reports on stdout each write the store
//! acknowledged; the test kills it with SIGKILL at random moments, reopens
//! the store, and checks that every acknowledged write is there with
//! identical bytes and that nothing half-written is visible.
//!
//! The child is this test binary again, started with `CHILD_ENV` set and
//! filtered to the `crash_child` test, which does nothing in a normal run.
//!
//! Set `RAFT_CRASH_SEED` to replay the kill timings of a failed run (the
//! seed is printed at the start).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use raft_core::{
    Entry, EntryPayload, HardState, Index, LogId, LogRead, LogWrite, Membership, SnapshotMeta, Term,
};
use raft_storage_rocks::{RocksStore, StoreOptions};

const CHILD_ENV: &str = "RAFT_ROCKS_CRASH_CHILD";
const ROUNDS: usize = 60;

fn options(dir: &Path) -> StoreOptions {
    StoreOptions::new(dir, 7, "crash-test")
}

/// The payload of the entry at `index` written in `term`: its length and
/// bytes depend on both, so a stale or misplaced entry is caught.
fn payload(index: Index, term: Term) -> Bytes {
    let mut state =
        index.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ term.wrapping_mul(0xD1B5_4A32_D192_ED03);
    let len = 16 + (state % 300) as usize;
    let mut data = Vec::with_capacity(len);
    while data.len() < len {
        state = splitmix(state);
        data.extend_from_slice(&state.to_le_bytes());
    }
    data.truncate(len);
    Bytes::from(data)
}

fn snapshot_data(index: Index) -> Bytes {
    let len = 50_000 + (index % 7) as usize * 20_000;
    Bytes::from(
        (0..len)
            .map(|i| (i as u64 ^ index.wrapping_mul(31)) as u8)
            .collect::<Vec<u8>>(),
    )
}

fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The child: appends batches until killed, one line per event on stdout.
#[test]
fn crash_child() {
    let Ok(spec) = std::env::var(CHILD_ENV) else {
        return;
    };
    let (dir, term) = spec.split_once('|').expect("child spec is DIR|TERM");
    let term: Term = term.parse().expect("term");
    let store = RocksStore::open(options(Path::new(dir))).expect("child: open");
    let mut out = std::io::stdout().lock();
    let mut last = store.last_index().expect("last index");
    // The test harness has printed "test crash_child ... " without a line
    // end: start on a fresh line.
    writeln!(out, "\nopen {last}")
        .and_then(|_| out.flush())
        .expect("stdout");
    let mut rng = splitmix(term ^ last);
    let mut batches = 0u64;
    loop {
        rng = splitmix(rng);
        let count = 1 + rng % 48;
        let entries: Vec<Entry> = (last + 1..=last + count)
            .map(|index| Entry {
                term,
                index,
                payload: EntryPayload::Command(payload(index, term)),
            })
            .collect();
        let first = last + 1;
        last += count;
        let write = LogWrite {
            entries,
            hard_state: Some(HardState {
                term,
                vote: Some(7),
                commit: last,
            }),
            must_sync: true,
            ..LogWrite::default()
        };
        writeln!(out, "begin {first} {last} {term}")
            .and_then(|_| out.flush())
            .expect("stdout");
        store.persist_blocking(&write).expect("child: persist");
        writeln!(out, "ack {last}")
            .and_then(|_| out.flush())
            .expect("stdout");
        batches += 1;
        if batches % 16 == 0 {
            let data = snapshot_data(last);
            let meta = SnapshotMeta {
                last: LogId::new(term, last),
                membership: Membership::with_voters([(7, "n7".to_string())]),
                membership_index: 0,
                size: data.len() as u64,
            };
            writeln!(out, "snapshot-begin {last}")
                .and_then(|_| out.flush())
                .expect("stdout");
            store
                .save_snapshot_blocking(&meta, &data)
                .expect("child: save snapshot");
            writeln!(out, "snapshot-ack {last}")
                .and_then(|_| out.flush())
                .expect("stdout");
        }
    }
}

/// What the parent learned from one child's stdout.
#[derive(Default, Debug)]
struct Report {
    opened_at: Option<Index>,
    /// Batches begun: first, last, term.
    begun: Vec<(Index, Index, Term)>,
    acked: Option<Index>,
    snapshot_acked: Option<Index>,
}

fn parse(lines: &[String]) -> Report {
    let mut report = Report::default();
    for line in lines {
        let words: Vec<&str> = line.split_whitespace().collect();
        let number = |i: usize| words.get(i).and_then(|w| w.parse::<u64>().ok());
        match (words.first().copied(), number(1), number(2), number(3)) {
            (Some("open"), Some(last), _, _) => report.opened_at = Some(last),
            (Some("begin"), Some(first), Some(last), Some(term)) => {
                report.begun.push((first, last, term))
            }
            (Some("ack"), Some(last), _, _) => report.acked = Some(last),
            (Some("snapshot-ack"), Some(index), _, _) => report.snapshot_acked = Some(index),
            _ => {}
        }
    }
    report
}

/// When to kill a child.
#[derive(Clone, Copy, Debug)]
enum Kill {
    /// This long after starting it: often while it opens (and recovers) the
    /// store.
    AfterSpawn(Duration),
    /// This long after it reported the store open: mid-stream.
    AfterOpen(Duration),
}

/// Runs one child until it is killed, returning its complete stdout lines.
fn run_child(dir: &Path, term: Term, kill: Kill) -> Vec<String> {
    let exe = std::env::current_exe().expect("test binary path");
    let mut child = Command::new(exe)
        .args(["--exact", "crash_child", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, format!("{}|{term}", dir.display()))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning the child");
    let stdout = child.stdout.take().expect("piped stdout");
    let (lines_tx, lines_rx) = std::sync::mpsc::channel::<String>();
    let reader = std::thread::spawn(move || {
        let mut reader = BufReader::new(stdout);
        let mut line = String::new();
        // Only whole lines count: a line cut by the kill is dropped.
        while reader.read_line(&mut line).map(|n| n > 0).unwrap_or(false) {
            if line.ends_with('\n') && lines_tx.send(line.trim_end().to_string()).is_err() {
                break;
            }
            line.clear();
        }
    });
    let mut lines = Vec::new();
    match kill {
        Kill::AfterSpawn(delay) => std::thread::sleep(delay),
        Kill::AfterOpen(delay) => {
            let deadline = Instant::now() + Duration::from_secs(20);
            while !lines.iter().any(|l: &String| l.starts_with("open ")) {
                let left = deadline.saturating_duration_since(Instant::now());
                match lines_rx.recv_timeout(left) {
                    Ok(line) => lines.push(line),
                    Err(_) => break,
                }
            }
            std::thread::sleep(delay);
        }
    }
    child.kill().expect("SIGKILL");
    let status = child.wait().expect("wait");
    reader.join().expect("reader thread");
    lines.extend(lines_rx.try_iter());
    if status.signal() != Some(9) {
        let mut stderr = String::new();
        if let Some(mut err) = child.stderr.take() {
            let _ = std::io::Read::read_to_string(&mut err, &mut stderr);
        }
        panic!(
            "the child ended by itself ({status}) before it was killed:\n{}\n{stderr}",
            lines.join("\n")
        );
    }
    lines
}

/// The parent's record of what must (or may) be in the log.
struct Expected {
    /// The term of each index's entry, for indexes `1..=terms.len()`.
    terms: Vec<Term>,
    /// The highest index whose write was acknowledged.
    acked: Index,
    /// The highest acknowledged snapshot.
    snapshot_acked: Index,
}

fn verify_entries(store: &RocksStore, expected: &Expected, low: Index, high: Index) {
    let mut next = low;
    while next <= high {
        let batch = store
            .entries(next, high + 1, 1 << 20)
            .unwrap_or_else(|e| panic!("reading entries from {next}: {e}"));
        assert!(!batch.is_empty(), "no entries read at {next}");
        for entry in batch {
            assert_eq!(entry.index, next, "entries out of order");
            let term = expected.terms[(next - 1) as usize];
            assert_eq!(entry.term, term, "entry {next} has the wrong term");
            assert_eq!(
                entry.payload,
                EntryPayload::Command(payload(next, term)),
                "entry {next} has the wrong bytes"
            );
            next += 1;
        }
    }
}

#[test]
fn acknowledged_writes_survive_sigkill() {
    if std::env::var(CHILD_ENV).is_ok() {
        return;
    }
    let seed = std::env::var("RAFT_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
        });
    println!("crash test seed: {seed} (replay the kill timings with RAFT_CRASH_SEED={seed})");
    let started = Instant::now();
    let tmp = tempfile::tempdir().expect("temporary directory");
    let dir: PathBuf = tmp.path().join("store");
    let mut rng = seed;
    let mut expected = Expected {
        terms: Vec::new(),
        acked: 0,
        snapshot_acked: 0,
    };
    let mut stats = BTreeMap::<&str, usize>::new();

    for round in 0..ROUNDS {
        let term = round as Term + 1;
        rng = splitmix(rng);
        // Mostly mid-stream, sometimes while the child is still opening the
        // store (and recovering from the previous kill).
        let kill = match rng % 5 {
            0 => Kill::AfterSpawn(Duration::from_millis((rng >> 8) % 60)),
            _ => Kill::AfterOpen(Duration::from_millis((rng >> 8) % 80)),
        };
        let lines = run_child(&dir, term, kill);
        let report = parse(&lines);
        *stats
            .entry(if report.opened_at.is_some() {
                "killed mid-stream"
            } else {
                "killed while opening"
            })
            .or_default() += 1;
        if let Some(opened_at) = report.opened_at {
            assert_eq!(
                opened_at as usize,
                expected.terms.len(),
                "round {round}: the child saw another last index"
            );
        }

        // Record what the child began, then drop what did not survive.
        for &(first, last, term) in &report.begun {
            assert_eq!(
                first as usize,
                expected.terms.len() + 1,
                "round {round}: batches are contiguous"
            );
            expected.terms.extend((first..=last).map(|_| term));
        }
        expected.acked = expected.acked.max(report.acked.unwrap_or(0));
        expected.snapshot_acked = expected
            .snapshot_acked
            .max(report.snapshot_acked.unwrap_or(0));

        let store = RocksStore::open(options(&dir))
            .unwrap_or_else(|e| panic!("round {round}: reopening after SIGKILL: {e}"));
        let last = store.last_index().expect("last index");
        // Nothing acknowledged is lost, and the last entry closes a whole
        // batch: the one in flight at the kill is all there or not at all.
        assert!(
            last >= expected.acked,
            "round {round}: acknowledged entry {} lost (last index {last})",
            expected.acked
        );
        let boundary = last == 0
            || report.begun.iter().any(|&(_, end, _)| end == last)
            || last == report.opened_at.unwrap_or(0);
        let previous_boundary = report.begun.is_empty() && last as usize == expected.terms.len();
        assert!(
            boundary || previous_boundary,
            "round {round}: last index {last} is not the end of a batch: {report:?}"
        );
        assert!(
            last as usize <= expected.terms.len(),
            "round {round}: last index {last} was never written"
        );
        if (last as usize) < expected.terms.len() {
            *stats.entry("in-flight batch lost").or_default() += 1;
        } else if report
            .begun
            .last()
            .is_some_and(|&(_, end, _)| report.acked != Some(end))
        {
            *stats.entry("in-flight batch kept").or_default() += 1;
        }
        expected.terms.truncate(last as usize);

        // The hard state is written in the same batch as the entries.
        let hard_state = store.hard_state().expect("hard state");
        assert_eq!(
            hard_state.commit, last,
            "round {round}: the hard state and the log disagree"
        );
        if last > 0 {
            assert_eq!(
                hard_state.term,
                expected.terms[(last - 1) as usize],
                "round {round}: hard state term"
            );
        }

        // The new entries, and a sample of older ones.
        let from = report.opened_at.unwrap_or(last).min(last) + 1;
        if from <= last {
            verify_entries(&store, &expected, from, last);
        }
        for _ in 0..20 {
            rng = splitmix(rng);
            if last > 0 {
                let index = 1 + rng % last;
                verify_entries(&store, &expected, index, index);
            }
        }

        // The snapshot is whole: the acknowledged one or a newer one.
        if let Some(meta) = store.snapshot_meta().expect("snapshot meta") {
            assert!(
                meta.last.index >= expected.snapshot_acked,
                "round {round}: acknowledged snapshot lost"
            );
            let (loaded, data) = store
                .load_snapshot_blocking()
                .expect("loading the snapshot")
                .expect("a snapshot");
            assert_eq!(loaded, meta);
            assert!(
                data == snapshot_data(meta.last.index),
                "round {round}: snapshot {} has wrong data",
                meta.last.index
            );
        } else {
            assert_eq!(
                expected.snapshot_acked, 0,
                "round {round}: acknowledged snapshot lost"
            );
        }
        expected.acked = last;
        drop(store);
    }

    // Finally, every entry.
    let store = RocksStore::open(options(&dir)).expect("final reopen");
    let last = store.last_index().expect("last index");
    verify_entries(&store, &expected, 1, last);
    println!(
        "{ROUNDS} SIGKILLs, {last} entries verified, {:?} in {:.1?}",
        stats,
        started.elapsed()
    );
    assert!(last > 0, "the children never wrote anything");
}
