//! The snapshot record and the snapshot file behind it
//! (raft-storage-rocks `snapshot.rs`): RocksDB holds the current snapshot's
//! metadata, file name and one CRC-32 per 64 KiB block; the store opens the
//! file the record names and checks every block it reads. A hostile record
//! must give an error, never a panic, and never wrong data: a read that
//! succeeds returns exactly the file's bytes.
//!
//! Input: a control byte; an offset and a length (postcard varints); then a
//! snapshot record (with a correct checksum prepended when the control
//! byte's high bit is set). With bit 0 set the known-good record is read
//! instead. The record's file name is replaced by the fixture's (the check
//! must not open arbitrary paths); everything else is the fuzzer's.

use std::path::PathBuf;
use std::sync::OnceLock;

use raft_core::{LogId, SnapshotMeta};

use crate::codec::unseal;
use crate::snapshot::{BLOCK, BlockCrcs, CurrentSnapshot, SnapshotDir, SnapshotRecord};

/// A snapshot file written once per process.
struct Fixture {
    dir: PathBuf,
    data: Vec<u8>,
    record: SnapshotRecord,
}

fn fixture_dir(pid: u32) -> PathBuf {
    std::env::temp_dir().join(format!("raft-fuzz-snapshot-{pid}"))
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        remove_stale_fixtures();
        let dir = fixture_dir(std::process::id());
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create the fixture directory");
        let data: Vec<u8> = (0..2 * BLOCK + 1000).map(|i| (i * 7 % 251) as u8).collect();
        let meta = SnapshotMeta {
            last: LogId::new(3, 100),
            size: data.len() as u64,
            ..SnapshotMeta::default()
        };
        let snapshots = SnapshotDir {
            path: dir.clone(),
            sync: false,
            builds: Default::default(),
        };
        let staged = snapshots
            .stage(&meta, &data)
            .expect("write the fixture snapshot");
        let current = snapshots
            .commit(staged)
            .expect("put the fixture snapshot in place");
        Fixture {
            dir,
            data,
            record: current.record.clone(),
        }
    })
}

/// Removes fixtures left by processes that have exited (libFuzzer exits
/// without running destructors).
fn remove_stale_fixtures() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix("raft-fuzz-snapshot-"))
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// The fixture's snapshot record, postcard-encoded, and its size (for the
/// seed corpus).
pub fn fixture_record() -> (Vec<u8>, u64) {
    let record = &fixture().record;
    let body = postcard::to_stdvec(record).expect("the record encodes");
    (body, record.meta.size)
}

/// Removes this process's fixture (for tests; fuzzers just exit).
pub fn cleanup() {
    let _ = std::fs::remove_dir_all(fixture_dir(std::process::id()));
}

/// The check (see the module documentation).
pub fn check(data: &[u8]) {
    let Some((&control, rest)) = data.split_first() else {
        return;
    };
    let Ok(((offset, max_len), record)) = postcard::take_from_bytes::<(u64, u64)>(rest) else {
        return;
    };
    check_block_crcs(record, control);
    let fixture = fixture();
    let record = if control & 1 != 0 {
        fixture.record.clone()
    } else {
        let sealed = if control & 0x80 != 0 {
            let mut sealed = crc32fast::hash(record).to_le_bytes().to_vec();
            sealed.extend_from_slice(record);
            sealed
        } else {
            record.to_vec()
        };
        match unseal::<SnapshotRecord>(&sealed) {
            Ok(mut record) => {
                record.file = fixture.record.file.clone();
                record
            }
            Err(error) => {
                assert!(!error.is_empty());
                return;
            }
        }
    };
    let size = record.meta.size;
    let crcs = record.block_crcs.len() as u64;
    let snapshot = match CurrentSnapshot::open(&fixture.dir, record) {
        Ok(snapshot) => {
            assert_eq!(
                size,
                fixture.data.len() as u64,
                "opened with the wrong size"
            );
            assert_eq!(
                crcs,
                size.div_ceil(BLOCK),
                "opened with the wrong checksum count"
            );
            snapshot
        }
        Err(_) => return,
    };
    let _ = snapshot.meta();
    match snapshot.read(offset, max_len) {
        Ok(bytes) => {
            let start = offset.min(size) as usize;
            let end = offset.saturating_add(max_len).min(size) as usize;
            assert_eq!(
                &bytes[..],
                &fixture.data[start..end.max(start)],
                "wrong data read"
            );
        }
        Err(error) => {
            let _ = error.to_string();
        }
    }
}

/// Block checksums do not depend on how the data was split.
fn check_block_crcs(data: &[u8], control: u8) {
    let step = 1 + (control >> 1) as usize;
    let mut whole = BlockCrcs::default();
    whole.update(data);
    let mut pieces = BlockCrcs::default();
    for piece in data.chunks(step) {
        pieces.update(piece);
    }
    let whole = whole.finish();
    assert_eq!(pieces.finish(), whole);
    assert_eq!(whole.len() as u64, (data.len() as u64).div_ceil(BLOCK));
}
