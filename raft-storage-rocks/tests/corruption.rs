//! Damaged data files: the store reports an error (at open or on the read
//! that touches the damage) and never returns wrong data.
//!
//! Each trial copies a pristine store, flips one bit somewhere in one file,
//! opens the copy and reads everything back. The outcome must be "open
//! failed", "a read failed", or "everything identical" (a bit in padding or
//! an unused part of a file); anything else is a failure. Set
//! `RAFT_CORRUPTION_SEED` to replay the positions of a failed run.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use raft_core::{
    Entry, EntryPayload, HardState, LogId, LogRead, LogWrite, Membership, SnapshotMeta,
    StorageError,
};
use raft_storage_rocks::{Error, RocksStore, StoreOptions};

const ENTRIES: u64 = 600;
const SNAPSHOT_INDEX: u64 = 300;
const SNAPSHOT_SIZE: usize = 200_000;

fn options(dir: &Path) -> StoreOptions {
    StoreOptions::new(dir, 1, "corruption")
}

fn entry(index: u64) -> Entry {
    let data: Vec<u8> = (0..150 + index % 100)
        .map(|i| (i as u8) ^ (index as u8).wrapping_mul(7))
        .collect();
    Entry {
        term: 1 + index / 200,
        index,
        payload: EntryPayload::Command(data.into()),
    }
}

fn hard_state() -> HardState {
    HardState {
        term: 4,
        vote: Some(1),
        commit: ENTRIES - 10,
    }
}

fn snapshot() -> (SnapshotMeta, Bytes) {
    let data: Vec<u8> = (0..SNAPSHOT_SIZE).map(|i| (i % 253) as u8).collect();
    let meta = SnapshotMeta {
        last: LogId::new(entry(SNAPSHOT_INDEX).term, SNAPSHOT_INDEX),
        membership: Membership::with_voters([(1, "n1".to_string())]),
        membership_index: 0,
        size: data.len() as u64,
    };
    (meta, data.into())
}

/// Writes the reference store: entries in batches, a hard state and a
/// snapshot; then closes it cleanly.
fn build(dir: &Path) {
    let store = RocksStore::open(options(dir)).unwrap();
    for first in (1..=ENTRIES).step_by(50) {
        let write = LogWrite {
            entries: (first..first + 50).map(entry).collect(),
            must_sync: true,
            ..LogWrite::default()
        };
        store.persist_blocking(&write).unwrap();
    }
    let write = LogWrite {
        hard_state: Some(hard_state()),
        must_sync: true,
        ..LogWrite::default()
    };
    store.persist_blocking(&write).unwrap();
    let (meta, data) = snapshot();
    store.save_snapshot_blocking(&meta, &data).unwrap();
}

fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for item in fs::read_dir(from).unwrap() {
        let item = item.unwrap();
        let target = to.join(item.file_name());
        if item.file_type().unwrap().is_dir() {
            copy_dir(&item.path(), &target);
        } else {
            fs::copy(item.path(), &target).unwrap();
        }
    }
}

fn files_ending(dir: &Path, suffix: &str) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap()
        .map(|item| item.unwrap().path())
        .filter(|path| path.to_string_lossy().ends_with(suffix))
        .filter(|path| fs::metadata(path).unwrap().len() > 0)
        .collect();
    files.sort();
    files
}

fn flip_bit(file: &Path, offset: u64, bit: u32) {
    let mut bytes = fs::read(file).unwrap();
    bytes[offset as usize] ^= 1 << bit;
    fs::write(file, bytes).unwrap();
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Outcome {
    OpenFailed,
    ReadFailed,
    Identical,
}

fn is_reported(error: &StorageError) -> bool {
    matches!(error, StorageError::Corrupt(_) | StorageError::Io(_))
}

/// Opens `dir` and reads everything; panics on any wrong answer.
fn check(dir: &Path, what: &str) -> Outcome {
    let store = match RocksStore::open(options(dir)) {
        Ok(store) => store,
        Err(Error::Corrupt { .. } | Error::Rocks { .. } | Error::Io { .. }) => {
            return Outcome::OpenFailed;
        }
        Err(other) => panic!("{what}: unexpected kind of open error: {other:?}"),
    };
    let mut outcome = Outcome::Identical;
    let mut failed = |error: StorageError| {
        assert!(is_reported(&error), "{what}: unexpected error {error:?}");
        outcome = Outcome::ReadFailed;
    };
    assert_eq!(store.first_index().unwrap(), 1, "{what}: first index");
    assert_eq!(store.last_index().unwrap(), ENTRIES, "{what}: last index");
    assert_eq!(
        store.hard_state().unwrap(),
        hard_state(),
        "{what}: hard state"
    );
    match store.entries(1, ENTRIES + 1, u64::MAX) {
        Ok(read) => {
            let expected: Vec<Entry> = (1..=ENTRIES).map(entry).collect();
            assert!(read == expected, "{what}: entries read back differ");
        }
        Err(e) => failed(e),
    }
    for index in 1..=ENTRIES {
        match store.term(index) {
            Ok(term) => assert_eq!(term, entry(index).term, "{what}: term({index})"),
            Err(e) => failed(e),
        }
    }
    let (meta, data) = snapshot();
    assert_eq!(
        store.snapshot_meta().unwrap(),
        Some(meta),
        "{what}: snapshot metadata"
    );
    match store.snapshot_chunk(SNAPSHOT_INDEX, 0, u64::MAX) {
        Ok(read) => assert!(read == data, "{what}: snapshot data differs"),
        Err(e) => failed(e),
    }
    outcome
}

fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn seed() -> u64 {
    let seed = std::env::var("RAFT_CORRUPTION_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
        });
    println!("corruption seed: {seed} (replay with RAFT_CORRUPTION_SEED={seed})");
    seed
}

/// Flips `trials` random bits in files of `template`'s `db/` ending with
/// `suffix`, each in a fresh copy, and tallies the outcomes.
fn flip_trials(template: &Path, suffix: &str, trials: usize) -> BTreeMap<Outcome, usize> {
    flip_trials_where(template, suffix, trials, false)
}

/// As [`flip_trials`]; with `crashed`, the copy looks like the store
/// crashed (no clean-shutdown marker) and bits are flipped only before the
/// WAL's last 32 KiB block, the part a torn write can never touch.
fn flip_trials_where(
    template: &Path,
    suffix: &str,
    trials: usize,
    crashed: bool,
) -> BTreeMap<Outcome, usize> {
    let files = files_ending(&template.join("db"), suffix);
    assert!(
        !files.is_empty(),
        "the reference store has no {suffix} file"
    );
    let mut rng = seed();
    let mut outcomes = BTreeMap::new();
    for trial in 0..trials {
        rng = splitmix(rng);
        let file = &files[(rng % files.len() as u64) as usize];
        let len = fs::metadata(file).unwrap().len();
        rng = splitmix(rng);
        let limit = if crashed { len / 32768 * 32768 } else { len };
        assert!(limit > 0, "the WAL is shorter than one block");
        let offset = rng % limit;
        let bit = (rng >> 40) as u32 % 8;
        let copy = tempfile::tempdir().unwrap();
        copy_dir(template, copy.path());
        let damaged = copy.path().join("db").join(file.file_name().unwrap());
        flip_bit(&damaged, offset, bit);
        if crashed {
            fs::remove_file(copy.path().join("clean-shutdown")).unwrap();
        }
        let what = format!(
            "trial {trial}: bit {bit} of byte {offset} of {} ({len} bytes)",
            damaged.file_name().unwrap().to_string_lossy()
        );
        *outcomes.entry(check(copy.path(), &what)).or_insert(0) += 1;
    }
    println!("{suffix}: {outcomes:?}");
    outcomes
}

#[test]
fn flipped_bits_in_the_wal_are_reported() {
    let tmp = tempfile::tempdir().unwrap();
    let template = tmp.path().join("template");
    build(&template);
    // Everything is still in the write-ahead log (no flush yet).
    assert!(files_ending(&template.join("db"), ".sst").is_empty());
    let copy = tmp.path().join("copy");
    copy_dir(&template, &copy);
    assert_eq!(check(&copy, "the undamaged store"), Outcome::Identical);

    let outcomes = flip_trials(&template, ".log", 40);
    // After a clean shutdown any damage to the WAL fails the open; only a
    // bit in the zero padding at the end of a 32 KiB block goes unnoticed.
    let reported = outcomes.get(&Outcome::OpenFailed).copied().unwrap_or(0)
        + outcomes.get(&Outcome::ReadFailed).copied().unwrap_or(0);
    assert!(reported >= 36, "too few WAL flips reported: {outcomes:?}");

    // After a crash a torn last record is expected, but damage anywhere
    // before the last block still fails the open.
    let outcomes = flip_trials_where(&template, ".log", 20, true);
    let reported = outcomes.get(&Outcome::OpenFailed).copied().unwrap_or(0)
        + outcomes.get(&Outcome::ReadFailed).copied().unwrap_or(0);
    assert!(
        reported >= 18,
        "too few WAL flips reported after a crash: {outcomes:?}"
    );
}

#[test]
fn flipped_bits_in_sst_files_are_reported() {
    let tmp = tempfile::tempdir().unwrap();
    let template = tmp.path().join("template");
    build(&template);
    // Reopening replays the WAL into table files.
    drop(RocksStore::open(options(&template)).unwrap());
    assert!(!files_ending(&template.join("db"), ".sst").is_empty());
    assert_eq!(check(&template, "the undamaged store"), Outcome::Identical);

    let outcomes = flip_trials(&template, ".sst", 40);
    let reported = outcomes.get(&Outcome::OpenFailed).copied().unwrap_or(0)
        + outcomes.get(&Outcome::ReadFailed).copied().unwrap_or(0);
    assert!(reported >= 20, "too few SST flips reported: {outcomes:?}");
}

/// Rewrites one record through RocksDB itself, so that RocksDB's own
/// checksums are valid and only the store's per-record CRC can notice.
fn rewrite_record(dir: &Path, family: &str, key: &[u8], damage: impl FnOnce(&mut Vec<u8>)) {
    let families = ["entries", "hard_state", "meta"];
    let db = rocksdb::DB::open_cf(&rocksdb::Options::default(), dir.join("db"), families).unwrap();
    let cf = db.cf_handle(family).unwrap();
    let mut value = db.get_cf(cf, key).unwrap().expect("record to damage");
    damage(&mut value);
    db.put_cf(cf, key, value).unwrap();
}

#[test]
fn a_record_damaged_behind_rocksdbs_back_is_reported() {
    let tmp = tempfile::tempdir().unwrap();
    let template = tmp.path().join("template");
    build(&template);

    // A payload byte of entry 5.
    let dir = tmp.path().join("entry");
    copy_dir(&template, &dir);
    rewrite_record(&dir, "entries", &5u64.to_be_bytes(), |value| {
        let last = value.len() - 1;
        value[last] ^= 0x10;
    });
    let store = RocksStore::open(options(&dir)).unwrap();
    let error = store.entries(1, 10, u64::MAX).unwrap_err();
    assert!(
        matches!(&error, StorageError::Corrupt(m) if m.contains("entry 5") && m.contains("checksum")),
        "{error:?}"
    );
    assert!(matches!(store.term(5), Err(StorageError::Corrupt(_))));
    assert_eq!(
        store.entries(6, 10, u64::MAX).unwrap(),
        (6..10).map(entry).collect::<Vec<_>>()
    );
    drop(store);

    // The last entry is checked at open.
    let dir = tmp.path().join("last");
    copy_dir(&template, &dir);
    rewrite_record(&dir, "entries", &ENTRIES.to_be_bytes(), |value| {
        value[6] ^= 1
    });
    let error = RocksStore::open(options(&dir)).unwrap_err();
    assert!(
        matches!(&error, Error::Corrupt { detail, .. } if detail.contains(&format!("entry {ENTRIES}"))),
        "{error:?}"
    );

    // An entry stored under the wrong key.
    let dir = tmp.path().join("moved");
    copy_dir(&template, &dir);
    let mut moved = Vec::new();
    rewrite_record(&dir, "entries", &8u64.to_be_bytes(), |value| {
        moved = value.clone()
    });
    rewrite_record(&dir, "entries", &9u64.to_be_bytes(), |value| *value = moved);
    let store = RocksStore::open(options(&dir)).unwrap();
    let error = store.entries(9, 10, u64::MAX).unwrap_err();
    assert!(
        matches!(&error, StorageError::Corrupt(m) if m.contains("key 9 holds entry 8")),
        "{error:?}"
    );
    drop(store);

    // The hard state and the identity are checked at open.
    for (family, key) in [
        ("hard_state", &b"hard_state"[..]),
        ("meta", &b"identity"[..]),
    ] {
        let dir = tmp.path().join(family);
        copy_dir(&template, &dir);
        rewrite_record(&dir, family, key, |value| value[0] ^= 0x80);
        let error = RocksStore::open(options(&dir)).unwrap_err();
        assert!(
            matches!(&error, Error::Corrupt { .. }),
            "{family}: {error:?}"
        );
        assert!(error.to_string().contains("healthy replica"), "{error}");
    }
}

#[test]
fn a_damaged_snapshot_file_is_reported() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("store");
    build(&dir);
    let files = files_ending(&dir.join("snapshots"), ".snap");
    assert_eq!(files.len(), 1, "{files:?}");
    flip_bit(&files[0], 100_000, 3);

    let store = RocksStore::open(options(&dir)).unwrap();
    let (_, data) = snapshot();
    // The first 64 KiB block is intact; the second is not.
    assert!(store.snapshot_chunk(SNAPSHOT_INDEX, 0, 65_536).unwrap() == data.slice(..65_536));
    let error = store
        .snapshot_chunk(SNAPSHOT_INDEX, 90_000, 20_000)
        .unwrap_err();
    assert!(
        matches!(&error, StorageError::Corrupt(m) if m.contains("block 1")),
        "{error:?}"
    );
    assert!(matches!(
        store.load_snapshot_blocking(),
        Err(StorageError::Corrupt(_))
    ));
    drop(store);

    // A truncated snapshot file fails the open.
    let file = fs::OpenOptions::new().write(true).open(&files[0]).unwrap();
    file.set_len(150_000).unwrap();
    let error = RocksStore::open(options(&dir)).unwrap_err();
    assert!(
        matches!(&error, Error::Corrupt { detail, .. } if detail.contains("150000 bytes")),
        "{error:?}"
    );
}
