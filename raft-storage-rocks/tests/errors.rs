//! Typed errors that name the path and the fix: a data directory of another
//! node or cluster, a database locked by a running node, a missing or
//! unwritable directory, a full disk.
//!
//! The read-only and full-disk cases need a small filesystem of their own:
//! the test re-runs this binary inside a private mount namespace
//! (`unshare`) with a tmpfs mounted over a temporary directory. Where that
//! is not possible (no `unshare`, no permission) the test says so and
//! passes; the mapping of the operating system's errors is also covered by
//! unit tests in `src/error.rs`.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use raft_core::{Entry, EntryPayload, LogRead, LogWrite, StorageError};
use raft_storage_rocks::{Error, RocksStore, StoreOptions};

const CHILD_ENV: &str = "RAFT_ROCKS_ERRORS_CHILD";

fn open(dir: &Path, node_id: u64, cluster: &str) -> Result<RocksStore, Error> {
    RocksStore::open(StoreOptions::new(dir, node_id, cluster))
}

fn entries(first: u64, count: u64, size: usize) -> Vec<Entry> {
    (first..first + count)
        .map(|index| Entry {
            term: 1,
            index,
            payload: EntryPayload::Command(vec![index as u8; size].into()),
        })
        .collect()
}

fn append(store: &RocksStore, first: u64, count: u64, size: usize) -> Result<(), StorageError> {
    store.persist_blocking(&LogWrite {
        entries: entries(first, count, size),
        must_sync: true,
        ..LogWrite::default()
    })
}

#[test]
fn another_node_id_is_refused_with_the_path_and_the_fix() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    drop(open(&dir, 1, "prod").unwrap());
    let error = open(&dir, 2, "prod").unwrap_err();
    assert!(
        matches!(&error, Error::WrongNode { expected: 2, found: 1, path } if path == &dir),
        "{error:?}"
    );
    let message = error.to_string();
    assert!(
        message.contains(&dir.display().to_string())
            && message.contains("node 1")
            && message.contains("own data directory"),
        "{message}"
    );
    // The rightful owner still opens it.
    drop(open(&dir, 1, "prod").unwrap());
}

#[test]
fn another_cluster_is_refused_with_the_path_and_the_fix() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    drop(open(&dir, 1, "prod").unwrap());
    let error = open(&dir, 1, "staging").unwrap_err();
    assert!(
        matches!(&error, Error::WrongCluster { expected, found, .. } if expected == "staging" && found == "prod"),
        "{error:?}"
    );
    assert!(
        error.to_string().contains(&dir.display().to_string()),
        "{error}"
    );
}

#[test]
fn a_second_open_in_the_same_process_is_locked() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let store = open(&dir, 1, "prod").unwrap();
    let error = open(&dir, 1, "prod").unwrap_err();
    assert!(
        matches!(&error, Error::Locked { path } if path == &dir),
        "{error:?}"
    );
    assert!(
        error.to_string().contains("locked by a running node"),
        "{error}"
    );
    drop(store);
    drop(open(&dir, 1, "prod").unwrap());
}

/// Child role: holds the store open until killed.
#[test]
fn hold_lock_child() {
    let Ok(spec) = std::env::var(CHILD_ENV) else {
        return;
    };
    let Some(dir) = spec.strip_prefix("hold:") else {
        return;
    };
    let _store = open(Path::new(dir), 1, "prod").expect("child: open");
    println!("\nready");
    std::io::stdout().flush().unwrap();
    std::thread::sleep(Duration::from_secs(120));
}

#[test]
fn a_store_open_in_another_process_is_locked() {
    if std::env::var(CHILD_ENV).is_ok() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "hold_lock_child",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, format!("hold:{}", dir.display()))
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    while !line.contains("ready") {
        line.clear();
        let read = std::io::BufRead::read_line(&mut stdout, &mut line).unwrap();
        assert!(read > 0, "the child exited before opening the store");
    }
    let result = open(&dir, 1, "prod");
    child.kill().unwrap();
    child.wait().unwrap();
    let error = result.unwrap_err();
    assert!(
        matches!(&error, Error::Locked { path } if path == &dir),
        "{error:?}"
    );
    // Once the other node is gone (killed), the store opens.
    drop(open(&dir, 1, "prod").unwrap());
}

#[test]
fn a_missing_directory_is_reported_unless_creation_is_asked_for() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("no").join("such").join("dir");
    let error =
        RocksStore::open(StoreOptions::new(&dir, 1, "prod").create_if_missing(false)).unwrap_err();
    assert!(
        matches!(&error, Error::MissingDirectory { path } if path == &dir),
        "{error:?}"
    );
    assert!(
        error.to_string().contains(&dir.display().to_string()),
        "{error}"
    );
    assert!(!dir.exists());
    drop(open(&dir, 1, "prod").unwrap());
    assert!(dir.is_dir(), "created by default");
    // An existing store opens with creation off.
    drop(RocksStore::open(StoreOptions::new(&dir, 1, "prod").create_if_missing(false)).unwrap());
}

#[test]
fn a_file_in_place_of_the_directory_and_node_id_zero_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("file");
    std::fs::write(&file, b"not a directory").unwrap();
    let error = open(&file, 1, "prod").unwrap_err();
    assert!(
        matches!(&error, Error::Io { path, .. } if path == &file),
        "{error:?}"
    );
    assert!(error.to_string().contains("not a directory"), "{error}");
    let error = open(&tmp.path().join("data"), 0, "prod").unwrap_err();
    assert!(matches!(error, Error::InvalidOptions(_)), "{error:?}");
}

/// Runs the child `role` of this binary in a private mount namespace with a
/// tmpfs mounted (with `mount_options`) on `dir`. `None` if the namespace
/// or the mount cannot be made here.
fn in_mount_namespace(dir: &Path, mount_options: &str, role: &str) -> Option<Output> {
    let exe = std::env::current_exe().unwrap();
    let script = r#"mount -t tmpfs -o "$1" tmpfs "$2" || exit 97; exec "$3" --exact "$4" --nocapture --test-threads=1"#;
    for flags in [&["-U", "-r", "-m"][..], &["-m"][..]] {
        let output = Command::new("unshare")
            .args(flags)
            .args(["sh", "-c", script, "sh", mount_options])
            .arg(dir)
            .arg(&exe)
            .arg(role)
            .env(CHILD_ENV, dir)
            .output();
        match output {
            Ok(output) if String::from_utf8_lossy(&output.stdout).contains("child started") => {
                return Some(output);
            }
            Ok(output) => eprintln!(
                "unshare {flags:?} could not run the child ({}): {}",
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            ),
            Err(e) => eprintln!("unshare is not available: {e}"),
        }
    }
    None
}

fn assert_child_passed(output: &Output) {
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success() && stdout.contains("child passed"),
        "the child failed:\n{stdout}\n{stderr}"
    );
}

/// Child role, on a read-only tmpfs.
#[test]
fn read_only_child() {
    let Ok(dir) = std::env::var(CHILD_ENV) else {
        return;
    };
    println!("\nchild started");
    let error = open(&Path::new(&dir).join("store"), 1, "prod").unwrap_err();
    assert!(matches!(&error, Error::NotWritable { .. }), "{error:?}");
    assert!(error.to_string().contains("not writable"), "{error}");
    println!("{error}\nchild passed");
}

#[test]
fn an_unwritable_directory_is_reported() {
    if std::env::var(CHILD_ENV).is_ok() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("ro");
    std::fs::create_dir(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o555)).unwrap();
    if std::fs::write(dir.join("probe"), b"x").is_err() {
        // Permissions apply (not root): no namespace needed.
        let error = open(&dir.join("store"), 1, "prod").unwrap_err();
        assert!(
            matches!(&error, Error::NotWritable { path, .. } if path.starts_with(&dir)),
            "{error:?}"
        );
        return;
    }
    // Root ignores permissions: use a read-only mount instead.
    std::fs::remove_file(dir.join("probe")).unwrap();
    match in_mount_namespace(&dir, "ro,size=1m", "read_only_child") {
        Some(output) => assert_child_passed(&output),
        None => eprintln!("skipped: no read-only filesystem can be made here"),
    }
}

/// Child role, on a 16 MiB tmpfs: fill it through the store.
#[test]
fn disk_full_child() {
    let Ok(dir) = std::env::var(CHILD_ENV) else {
        return;
    };
    println!("\nchild started");
    let dir = Path::new(&dir);
    let store_dir = dir.join("store");
    let store = open(&store_dir, 1, "prod").expect("open on an empty tmpfs");
    let mut acked = 0;
    let error = loop {
        match append(&store, acked + 1, 64, 4096) {
            Ok(()) => acked += 64,
            Err(e) => break e,
        }
        assert!(acked < 64 * 10_000, "a 16 MiB filesystem never filled up");
    };
    println!("filled after {acked} entries: {error}");
    assert!(
        matches!(&error, StorageError::DiskFull(m) if m.starts_with("disk full") && m.contains(&store_dir.display().to_string())),
        "{error:?}"
    );
    // No further write is attempted after a failed one.
    let again = append(&store, acked + 1, 1, 10).unwrap_err();
    assert!(
        matches!(&again, StorageError::Io(m) if m.contains("refuses writes")),
        "{again:?}"
    );
    drop(store);

    // Opening on a full disk says so.
    let filler = dir.join("filler");
    {
        let mut file = std::fs::File::create(&filler).unwrap();
        while file.write_all(&[0; 65536]).is_ok() {}
        let _ = file.sync_all();
    }
    let error = open(&store_dir, 1, "prod").unwrap_err();
    assert!(matches!(&error, Error::DiskFull { .. }), "{error:?}");
    assert!(error.to_string().contains("free some space"), "{error}");
    println!("{error}");

    // With space again (RocksDB needs room to recover), every acknowledged
    // entry is there.
    std::fs::remove_file(&filler).unwrap();
    let grown = Command::new("mount")
        .args(["-o", "remount,size=64m"])
        .arg(dir)
        .status();
    if !grown.is_ok_and(|status| status.success()) {
        println!("could not grow the filesystem; skipping the recovery check\nchild passed");
        return;
    }
    let store = open(&store_dir, 1, "prod").expect("reopen after freeing space");
    assert!(
        store.last_index().unwrap() >= acked,
        "acknowledged entries lost"
    );
    let read = store.entries(1, acked + 1, u64::MAX).unwrap();
    assert_eq!(read, entries(1, acked, 4096));
    println!("child passed");
}

#[test]
fn a_full_disk_is_reported() {
    if std::env::var(CHILD_ENV).is_ok() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("small");
    std::fs::create_dir(&dir).unwrap();
    match in_mount_namespace(&dir, "size=16m", "disk_full_child") {
        Some(output) => {
            println!("{}", String::from_utf8_lossy(&output.stdout));
            assert_child_passed(&output);
        }
        None => eprintln!(
            "skipped: no small filesystem can be made here (the error mapping is unit-tested)"
        ),
    }
}
