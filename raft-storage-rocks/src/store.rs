//! [`RocksStore`]: the log, hard state and snapshot metadata in RocksDB,
//! snapshot data in files beside it.
//!
//! On disk, under the data directory:
//!
//! - `db/`: RocksDB with three column families: `entries` (key: the index,
//!   8 bytes big-endian; value: the sealed [`Entry`]), `hard_state` (one
//!   record) and `meta` (the store's identity, the [`LogId`] just before the
//!   first entry, and the current snapshot's record).
//! - `snapshots/`: the current snapshot's data, and transiently a snapshot
//!   being received or written.
//!
//! Every value is sealed with a CRC-32 ([`crate::codec`]). Every output
//! batch becomes one RocksDB `WriteBatch`, written with one fsync.
//!
//! Concurrency: writes are serialised by the `writer` mutex. Reads take no
//! lock while they read RocksDB: they look up the range in `state`, which a
//! writer replaces only after its batch is in RocksDB. A reader that finds a
//! key missing inside the range it saw may have raced a batch that deleted
//! it (compaction, truncation, snapshot install); it then waits for the
//! writer and reads again, and only a key still missing is corruption.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use async_trait::async_trait;
use bytes::Bytes;
use raft_core::adapters::LogStore;
use raft_core::{
    Entry, HardState, Index, LogId, LogRead, LogWrite, Membership, NodeId, SnapshotChunk,
    SnapshotMeta, StorageError, Term,
};
use rocksdb::{
    ColumnFamilyDescriptor, DB, DBRecoveryMode, Options, ReadOptions, WriteBatch, WriteOptions,
};
use serde::{Deserialize, Serialize};

use crate::codec::{index_key, key_index, seal, seal_into, unseal, unseal_entry_position};
use crate::error::{Error, corrupt, open_error, storage_rocks};
use crate::snapshot::{CurrentSnapshot, Incoming, PROBE, SnapshotDir, SnapshotRecord};

/// The on-disk format this version reads and writes.
const FORMAT: u32 = 1;

const CF_ENTRIES: &str = "entries";
const CF_HARD_STATE: &str = "hard_state";
const CF_META: &str = "meta";

/// Written into the data directory after a clean close (WAL synced, no
/// write in flight) and removed on open. Its presence lets the next open
/// treat any damage to the WAL as corruption; without it (after a crash) a
/// torn last WAL record is expected and dropped.
const CLEAN_SHUTDOWN: &str = "clean-shutdown";

const KEY_HARD_STATE: &[u8] = b"hard_state";
const KEY_IDENTITY: &[u8] = b"identity";
const KEY_LOG_START: &[u8] = b"log_start";
const KEY_SNAPSHOT: &[u8] = b"snapshot";

/// When the store fsyncs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SyncPolicy {
    /// fsync every batch the node marks [`LogWrite::must_sync`], and every
    /// snapshot file. An acknowledged write survives a power loss. The
    /// default; the only safe choice for a real cluster.
    #[default]
    Durable,
    /// Never fsync. A killed process loses nothing (the kernel has the
    /// writes), but a power loss or kernel crash may lose acknowledged
    /// writes, which can break Raft's safety. For tests and throwaway
    /// clusters only.
    NoSync,
}

/// How to open a [`RocksStore`].
#[derive(Clone, Debug)]
pub struct StoreOptions {
    path: PathBuf,
    node_id: NodeId,
    cluster_id: String,
    sync: SyncPolicy,
    create_if_missing: bool,
}

impl StoreOptions {
    /// A store for node `node_id` of cluster `cluster_id` in the data
    /// directory `path`. A directory is bound to the first node and cluster
    /// that open it; opening it as another fails with
    /// [`Error::WrongNode`] or [`Error::WrongCluster`].
    pub fn new(path: impl Into<PathBuf>, node_id: NodeId, cluster_id: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            node_id,
            cluster_id: cluster_id.into(),
            sync: SyncPolicy::Durable,
            create_if_missing: true,
        }
    }

    /// When to fsync ([`SyncPolicy::Durable`] unless changed).
    pub fn sync(mut self, policy: SyncPolicy) -> Self {
        self.sync = policy;
        self
    }

    /// Whether to create the data directory if it does not exist (on by
    /// default). Turn it off for a node that must find its existing data,
    /// so a mistyped path fails with [`Error::MissingDirectory`] instead of
    /// starting an empty node.
    pub fn create_if_missing(mut self, create: bool) -> Self {
        self.create_if_missing = create;
        self
    }
}

/// Who a data directory belongs to, written on first open.
#[derive(Debug, Serialize, Deserialize)]
struct Identity {
    format: u32,
    node_id: NodeId,
    cluster_id: String,
}

/// What readers see: the log's range and the small records, cached.
#[derive(Clone)]
struct State {
    /// The first entry in the log.
    first: Index,
    /// The entry just before `first` (compacted, or the snapshot's last).
    prev: LogId,
    /// The last entry in the log (`prev` when the log is empty).
    last: LogId,
    hard_state: HardState,
    snapshot: Option<Arc<CurrentSnapshot>>,
}

/// What only the writer touches.
struct Writer {
    incoming: Option<Incoming>,
    /// Set after a write failed part-way: the store refuses further writes,
    /// because after a failed fsync nobody knows what is on disk.
    failed: Option<String>,
}

struct Inner {
    path: PathBuf,
    node_id: NodeId,
    cluster_id: String,
    sync: SyncPolicy,
    db: DB,
    snapshots: SnapshotDir,
    state: RwLock<State>,
    writer: Mutex<Writer>,
    /// Orders concurrent async `persist` calls: a fair (FIFO) lock taken
    /// before the blocking work is handed to tokio's blocking pool.
    order: Arc<tokio::sync::Mutex<()>>,
}

/// A durable Raft log store on RocksDB.
///
/// Implements [`LogRead`] (the node reads through it) and [`LogStore`] (the
/// driver writes output batches through it). It is a cheap handle: clone it
/// to give the node one copy and the driver another; all clones share one
/// database. Reads may run on one thread while a write runs on another.
///
/// See the crate documentation for an example.
#[derive(Clone)]
pub struct RocksStore {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for RocksStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RocksStore")
            .field("path", &self.inner.path)
            .field("node_id", &self.inner.node_id)
            .field("cluster_id", &self.inner.cluster_id)
            .finish_non_exhaustive()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock cannot leave RocksDB half-written (its
    // batches are atomic); the `failed` flag covers failed writes.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl RocksStore {
    /// Opens (or creates) the store described by `options`, recovering the
    /// log, hard state and snapshot after a crash.
    pub fn open(options: StoreOptions) -> Result<Self, Error> {
        let StoreOptions {
            path,
            node_id,
            cluster_id,
            sync,
            create_if_missing,
        } = options;
        if node_id == 0 {
            return Err(Error::InvalidOptions(
                "node id 0 is reserved; use ids from 1".into(),
            ));
        }
        prepare_directory(&path, create_if_missing)?;
        let db_path = path.join("db");
        let snapshot_path = path.join("snapshots");
        for dir in [&db_path, &snapshot_path] {
            create_private_dir(dir).map_err(|e| Error::from_io(dir, e))?;
        }
        warn_if_readable_by_others(&path);
        probe_writable(&snapshot_path).map_err(|e| Error::from_io(&path, e))?;

        let marker = path.join(CLEAN_SHUTDOWN);
        let clean = marker.exists();
        let db = open_db(&db_path, clean).map_err(|e| Error::from_rocks(&path, e))?;
        let inner = Inner::load(path, node_id, cluster_id, sync, db, snapshot_path)?;
        if clean {
            // Durably gone before the first write, or a crash with a torn
            // WAL tail would look like corruption at the next open.
            std::fs::remove_file(&marker).map_err(|e| Error::from_io(&marker, e))?;
            crate::snapshot::sync_dir(&inner.path).map_err(|e| Error::from_io(&inner.path, e))?;
        }
        let state = inner.state();
        tracing::info!(
            path = %inner.path.display(),
            node_id,
            clean_shutdown = clean,
            first_index = state.first,
            last_index = state.last.index,
            snapshot = state.snapshot.as_ref().map(|s| s.meta().last.index),
            "opened log store"
        );
        Ok(Self {
            inner: Arc::new(inner),
        })
    }

    /// The data directory.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// The node this store belongs to.
    pub fn node_id(&self) -> NodeId {
        self.inner.node_id
    }

    /// The cluster this store belongs to.
    pub fn cluster_id(&self) -> &str {
        &self.inner.cluster_id
    }

    /// Writes [`raft_core::bootstrap_entry`] for `membership` if the store is
    /// empty (a brand-new initial voter), durably. Returns whether it wrote
    /// it; a store that already holds anything is left alone, so calling
    /// this on every start is safe.
    pub fn bootstrap(&self, membership: Membership) -> Result<bool, StorageError> {
        let state = self.inner.state();
        if state.last.index != 0
            || state.snapshot.is_some()
            || state.hard_state != HardState::default()
        {
            return Ok(false);
        }
        let write = LogWrite {
            entries: vec![raft_core::bootstrap_entry(membership)],
            must_sync: true,
            ..LogWrite::default()
        };
        self.persist_blocking(&write)?;
        Ok(true)
    }

    /// Applies one output batch's writes atomically and, when
    /// [`LogWrite::must_sync`] is set, durably, blocking the calling thread.
    /// Call it from a thread that may block (not an async worker); the
    /// [`LogStore::persist`] impl does that for you.
    ///
    /// Snapshot chunks go to a file first; an incoming snapshot does not
    /// survive a restart (the node asks its leader again from offset 0).
    /// Installing one fsyncs and renames its file, then records it in the
    /// same RocksDB batch as the rest. After an I/O failure the store
    /// refuses further writes: restart the node.
    pub fn persist_blocking(&self, write: &LogWrite) -> Result<(), StorageError> {
        self.inner.persist(write)
    }

    /// Saves a snapshot the host built, durably: the data goes to a
    /// temporary file that is fsynced and renamed into place, then RocksDB
    /// records it, then the previous snapshot file is deleted. A snapshot no
    /// newer than the current one is ignored. Blocks the calling thread.
    pub fn save_snapshot_blocking(
        &self,
        meta: &SnapshotMeta,
        data: &[u8],
    ) -> Result<(), StorageError> {
        self.inner.save_snapshot(meta, data)
    }

    /// The current snapshot with its data (every block checked), for
    /// restoring a state machine. Blocks the calling thread.
    pub fn load_snapshot_blocking(&self) -> Result<Option<(SnapshotMeta, Bytes)>, StorageError> {
        let Some(snapshot) = self.inner.state().snapshot else {
            return Ok(None);
        };
        let data = snapshot.read(0, snapshot.meta().size)?;
        Ok(Some((snapshot.meta().clone(), data)))
    }
}

/// Checks or creates the data directory, with errors that say which.
fn prepare_directory(path: &Path, create_if_missing: bool) -> Result<(), Error> {
    match std::fs::metadata(path) {
        Ok(meta) if meta.is_dir() => Ok(()),
        Ok(_) => Err(Error::Io {
            path: path.to_path_buf(),
            source: std::io::Error::other(
                "exists but is not a directory; choose another data directory",
            ),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if !create_if_missing {
                return Err(Error::MissingDirectory {
                    path: path.to_path_buf(),
                });
            }
            create_private_dir(path).map_err(|e| Error::from_io(path, e))
        }
        Err(e) => Err(Error::from_io(path, e)),
    }
}

/// Creates `path` and its missing parents, readable by their owner only
/// (mode 0700 on Unix, as etcd makes its data directory).
fn create_private_dir(path: &Path) -> std::io::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder.create(path)
}

/// Warns (as etcd does) when the data directory, or a directory or file in
/// it, can be read by other users: it holds every key and value.
fn warn_if_readable_by_others(path: &Path) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let open = |p: &Path| {
            std::fs::symlink_metadata(p)
                .ok()
                .map(|m| m.permissions().mode() & 0o777)
                .filter(|mode| mode & 0o077 != 0)
        };
        if let Some(mode) = open(path) {
            tracing::warn!(
                path = %path.display(),
                "the data directory has permissions {mode:o}; the recommended permission is 700, \
                 so that other users cannot read the data: chmod 700 {}",
                path.display()
            );
        }
        let mut exposed = Vec::new();
        let mut dirs = vec![path.to_path_buf()];
        while let Some(dir) = dirs.pop() {
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries.flatten() {
                let p = entry.path();
                if entry.file_type().is_ok_and(|t| t.is_dir()) {
                    dirs.push(p.clone());
                }
                if open(&p).is_some() {
                    exposed.push(p);
                }
            }
        }
        if let Some(first) = exposed.first() {
            tracing::warn!(
                path = %path.display(),
                "{} files or directories in the data directory can be read by other users \
                 (e.g. {}); make them 600 (700 for directories), and start the node with umask \
                 077 (the raft-kv binary sets it)",
                exposed.len(),
                first.display()
            );
        }
    }
    #[cfg(not(unix))]
    let _ = path;
}

/// Writes, syncs and deletes a small file, so that an unwritable directory
/// or a full disk is reported as such before RocksDB reports it less
/// clearly.
fn probe_writable(dir: &Path) -> std::io::Result<()> {
    use std::io::Write;
    let path = dir.join(PROBE);
    let result = (|| {
        let mut file = std::fs::File::create(&path)?;
        file.write_all(&[0; 4096])?;
        file.sync_all()
    })();
    let _ = std::fs::remove_file(&path);
    result
}

/// Opens RocksDB. After a clean shutdown the WAL must be intact
/// (`AbsoluteConsistency`: any damage fails the open). After a crash a torn
/// last record (a write that was never acknowledged) is expected and
/// dropped, but any other damage still fails the open
/// (`TolerateCorruptedTailRecords`; RocksDB's default, `PointInTime`,
/// would silently cut the log short at the damage instead).
fn open_db(path: &Path, clean_shutdown: bool) -> Result<DB, rocksdb::Error> {
    // No fallocate: on ext4 a preallocated WAL is made of unwritten extents,
    // and converting them at every fdatasync cost a large share of the
    // synced write rate (benches/append.rs). Not settable through the typed
    // API, hence the options string.
    let mut options = Options::default().get_options_from_string("allow_fallocate=false")?;
    options.create_if_missing(true);
    options.create_missing_column_families(true);
    options.set_wal_recovery_mode(if clean_shutdown {
        DBRecoveryMode::AbsoluteConsistency
    } else {
        DBRecoveryMode::TolerateCorruptedTailRecords
    });
    options.set_paranoid_checks(true);
    // fdatasync, not fsync.
    options.set_use_fsync(false);
    options.set_max_total_wal_size(256 << 20);
    options.set_bytes_per_sync(1 << 20);
    options.set_keep_log_file_num(4);
    options.set_max_log_file_size(4 << 20);
    let cf_options = || {
        let mut cf = Options::default();
        cf.set_compression_type(rocksdb::DBCompressionType::None);
        cf
    };
    let families = [CF_ENTRIES, CF_HARD_STATE, CF_META]
        .map(|name| ColumnFamilyDescriptor::new(name, cf_options()));
    DB::open_cf_descriptors(&options, path, families)
}

impl Inner {
    /// Reads the identity, log range, hard state and snapshot.
    fn load(
        path: PathBuf,
        node_id: NodeId,
        cluster_id: String,
        sync: SyncPolicy,
        db: DB,
        snapshot_path: PathBuf,
    ) -> Result<Self, Error> {
        let corrupt_at = |detail: String| Error::Corrupt {
            path: path.join("db"),
            detail,
        };
        let get = |cf: &str, key: &[u8]| -> Result<Option<Vec<u8>>, Error> {
            let Some(handle) = db.cf_handle(cf) else {
                return Err(corrupt_at(format!("column family {cf} is missing")));
            };
            db.get_cf(&handle, key)
                .map_err(|e| Error::from_rocks(&path, e))
        };

        match get(CF_META, KEY_IDENTITY)? {
            Some(raw) => {
                let identity: Identity =
                    unseal(&raw).map_err(|e| corrupt_at(format!("identity record: {e}")))?;
                if identity.format != FORMAT {
                    return Err(Error::UnsupportedFormat {
                        path,
                        found: identity.format,
                        supported: FORMAT,
                    });
                }
                if identity.cluster_id != cluster_id {
                    return Err(Error::WrongCluster {
                        path,
                        expected: cluster_id,
                        found: identity.cluster_id,
                    });
                }
                if identity.node_id != node_id {
                    return Err(Error::WrongNode {
                        path,
                        expected: node_id,
                        found: identity.node_id,
                    });
                }
            }
            None => {
                let occupied = get(CF_META, KEY_LOG_START)?.is_some()
                    || get(CF_META, KEY_SNAPSHOT)?.is_some()
                    || get(CF_HARD_STATE, KEY_HARD_STATE)?.is_some();
                if occupied {
                    return Err(corrupt_at(
                        "the store holds data but no identity record".into(),
                    ));
                }
                let identity = Identity {
                    format: FORMAT,
                    node_id,
                    cluster_id: cluster_id.clone(),
                };
                let raw = seal(&identity).map_err(corrupt_at)?;
                let meta = db
                    .cf_handle(CF_META)
                    .ok_or_else(|| corrupt_at("column family meta is missing".into()))?;
                let mut options = WriteOptions::default();
                options.set_sync(true);
                db.put_cf_opt(&meta, KEY_IDENTITY, raw, &options)
                    .map_err(|e| Error::from_rocks(&path, e))?;
                if sync == SyncPolicy::Durable {
                    // The directory entries RocksDB just created.
                    crate::snapshot::sync_dir(&path.join("db"))
                        .map_err(|e| Error::from_io(&path, e))?;
                    crate::snapshot::sync_dir(&path).map_err(|e| Error::from_io(&path, e))?;
                }
            }
        }

        let prev: LogId = match get(CF_META, KEY_LOG_START)? {
            Some(raw) => unseal(&raw).map_err(|e| corrupt_at(format!("log start record: {e}")))?,
            None => LogId::default(),
        };
        let hard_state: HardState = match get(CF_HARD_STATE, KEY_HARD_STATE)? {
            Some(raw) => unseal(&raw).map_err(|e| corrupt_at(format!("hard state record: {e}")))?,
            None => HardState::default(),
        };
        let record: Option<SnapshotRecord> = match get(CF_META, KEY_SNAPSHOT)? {
            Some(raw) => {
                Some(unseal(&raw).map_err(|e| corrupt_at(format!("snapshot record: {e}")))?)
            }
            None => None,
        };

        let snapshots = SnapshotDir {
            path: snapshot_path,
            sync: sync == SyncPolicy::Durable,
            builds: AtomicU64::new(0),
        };
        snapshots.remove_all_but(record.as_ref().map(|r| r.file.as_str()))?;
        let snapshot = match record {
            Some(record) => Some(Arc::new(CurrentSnapshot::open(&snapshots.path, record)?)),
            None => None,
        };

        let mut inner = Inner {
            path,
            node_id,
            cluster_id,
            sync,
            db,
            snapshots,
            state: RwLock::new(State {
                first: prev.index + 1,
                prev,
                last: prev,
                hard_state,
                snapshot,
            }),
            writer: Mutex::new(Writer {
                incoming: None,
                failed: None,
            }),
            order: Arc::new(tokio::sync::Mutex::new(())),
        };
        let last = inner
            .find_last(prev)
            .map_err(|e| open_error(&inner.path, e))?;
        inner
            .state
            .get_mut()
            .unwrap_or_else(|p| p.into_inner())
            .last = last;
        Ok(inner)
    }

    /// The last entry, checking that the log starts right after `prev`.
    fn find_last(&self, prev: LogId) -> Result<LogId, StorageError> {
        let cf = self.cf(CF_ENTRIES)?;
        let mut iter = self.db.raw_iterator_cf(&cf);
        iter.seek_to_last();
        let last = match (iter.key(), iter.value()) {
            (Some(key), Some(value)) => Some(self.check_position(key, value)?),
            _ => None,
        };
        iter.status()
            .map_err(|e| storage_rocks(&self.path, "reading the last entry", e))?;
        let Some((last_term, last_index)) = last else {
            return Ok(prev);
        };
        if last_index <= prev.index {
            // Nothing after the compacted prefix: an empty log. (Entries at
            // or below `prev` are deleted in the same batch that moves it.)
            return Err(corrupt(
                &self.path,
                &format!(
                    "entry {last_index} is stored but the log was compacted up to {}",
                    prev.index
                ),
            ));
        }
        iter.seek(index_key(prev.index + 1));
        let first = match (iter.key(), iter.value()) {
            (Some(key), Some(value)) => self.check_position(key, value)?.1,
            _ => last_index,
        };
        iter.status()
            .map_err(|e| storage_rocks(&self.path, "reading the first entry", e))?;
        if first != prev.index + 1 {
            return Err(corrupt(
                &self.path,
                &format!(
                    "the log should start at entry {} but starts at {first}",
                    prev.index + 1
                ),
            ));
        }
        Ok(LogId::new(last_term, last_index))
    }

    /// Checks a stored entry's key, checksum and recorded index.
    fn check_position(&self, key: &[u8], value: &[u8]) -> Result<(Term, Index), StorageError> {
        let index = key_index(key).map_err(|e| corrupt(&self.path, &e))?;
        let (term, stored_index) = unseal_entry_position(value)
            .map_err(|e| corrupt(&self.path, &format!("entry {index}: {e}")))?;
        if stored_index != index {
            return Err(corrupt(
                &self.path,
                &format!("key {index} holds entry {stored_index}"),
            ));
        }
        Ok((term, index))
    }

    fn cf(&self, name: &str) -> Result<&rocksdb::ColumnFamily, StorageError> {
        self.db
            .cf_handle(name)
            .ok_or_else(|| corrupt(&self.path, &format!("column family {name} is missing")))
    }

    fn state(&self) -> State {
        self.state.read().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

impl Drop for Inner {
    /// The last handle is gone, so no write is in flight: sync the WAL and
    /// leave the clean-shutdown marker (RocksDB closes right after).
    fn drop(&mut self) {
        if lock(&self.writer).failed.is_some() {
            return;
        }
        if let Err(e) = self.db.flush_wal(true) {
            tracing::warn!(path = %self.path.display(), error = %e, "could not sync the WAL on close");
            return;
        }
        let marker = self.path.join(CLEAN_SHUTDOWN);
        let written = std::fs::File::create(&marker)
            .and_then(|file| file.sync_all())
            .and_then(|()| crate::snapshot::sync_dir(&self.path));
        if let Err(e) = written {
            tracing::warn!(path = %marker.display(), error = %e, "could not record the clean shutdown");
        }
    }
}

/// A write the node asked for that cannot be applied (a gap, a chunk at the
/// wrong offset): a bug in the caller, not damage on disk.
fn invalid(detail: String) -> StorageError {
    StorageError::Corrupt(format!("invalid write: {detail}"))
}

impl Inner {
    // ----- reads -------------------------------------------------------------

    /// The position stored under `index`, or `None` if the key is absent.
    fn read_position(&self, index: Index) -> Result<Option<(Term, Index)>, StorageError> {
        let cf = self.cf(CF_ENTRIES)?;
        let key = index_key(index);
        match self.db.get_pinned_cf(cf, key) {
            Ok(Some(value)) => self.check_position(&key, &value).map(Some),
            Ok(None) => Ok(None),
            Err(e) => Err(storage_rocks(
                &self.path,
                &format!("reading entry {index}"),
                e,
            )),
        }
    }

    fn term(&self, index: Index) -> Result<Term, StorageError> {
        if let Some(term) = self.try_term(&self.state(), index)? {
            return Ok(term);
        }
        // The key vanished inside the range we saw: maybe a batch deleted it
        // and its state is not published yet. Under the writer lock RocksDB
        // and `state` agree.
        let _writer = lock(&self.writer);
        self.try_term(&self.state(), index)?.ok_or_else(|| {
            corrupt(
                &self.path,
                &format!("entry {index} is missing from the log"),
            )
        })
    }

    fn try_term(&self, state: &State, index: Index) -> Result<Option<Term>, StorageError> {
        if index == 0 {
            return Ok(Some(0));
        }
        if index == state.prev.index {
            return Ok(Some(state.prev.term));
        }
        if let Some(snapshot) = &state.snapshot {
            if snapshot.meta().last.index == index {
                return Ok(Some(snapshot.meta().last.term));
            }
        }
        if index < state.first {
            return Err(StorageError::Compacted(index));
        }
        if index > state.last.index {
            return Err(StorageError::Unavailable(index));
        }
        if index == state.last.index {
            return Ok(Some(state.last.term));
        }
        Ok(self.read_position(index)?.map(|(term, _)| term))
    }

    fn entries(&self, low: Index, high: Index, max_bytes: u64) -> Result<Vec<Entry>, StorageError> {
        if let Some(entries) = self.try_entries(&self.state(), low, high, max_bytes)? {
            return Ok(entries);
        }
        let _writer = lock(&self.writer);
        self.try_entries(&self.state(), low, high, max_bytes)?
            .ok_or_else(|| corrupt(&self.path, &format!("entries {low}..{high} have a gap")))
    }

    /// `None` if a key in the range is absent.
    fn try_entries(
        &self,
        state: &State,
        low: Index,
        high: Index,
        max_bytes: u64,
    ) -> Result<Option<Vec<Entry>>, StorageError> {
        if low < state.first {
            return Err(StorageError::Compacted(low));
        }
        if high > state.last.index + 1 {
            return Err(StorageError::Unavailable(high - 1));
        }
        if low >= high {
            return Ok(Some(Vec::new()));
        }
        let mut options = ReadOptions::default();
        options.set_iterate_upper_bound(index_key(high));
        let mut iter = self.db.raw_iterator_cf_opt(self.cf(CF_ENTRIES)?, options);
        iter.seek(index_key(low));
        let mut out = Vec::with_capacity((high - low).min(1024) as usize);
        let mut used = 0u64;
        let mut expected = low;
        while expected < high {
            let (Some(key), Some(value)) = (iter.key(), iter.value()) else {
                iter.status()
                    .map_err(|e| storage_rocks(&self.path, "reading entries", e))?;
                return Ok(None);
            };
            let index = key_index(key).map_err(|e| corrupt(&self.path, &e))?;
            if index != expected {
                return Ok(None);
            }
            let entry: Entry =
                unseal(value).map_err(|e| corrupt(&self.path, &format!("entry {index}: {e}")))?;
            if entry.index != index {
                return Err(corrupt(
                    &self.path,
                    &format!("key {index} holds entry {}", entry.index),
                ));
            }
            used = used.saturating_add(entry.budget_size());
            if !out.is_empty() && used > max_bytes {
                break;
            }
            out.push(entry);
            expected += 1;
            iter.next();
        }
        iter.status()
            .map_err(|e| storage_rocks(&self.path, "reading entries", e))?;
        Ok(Some(out))
    }

    // ----- writes ------------------------------------------------------------

    /// Runs `f` under the writer lock; an I/O failure makes the store refuse
    /// every later write.
    fn guarded(
        &self,
        f: impl FnOnce(&mut Writer) -> Result<(), StorageError>,
    ) -> Result<(), StorageError> {
        let mut writer = lock(&self.writer);
        if let Some(reason) = &writer.failed {
            return Err(StorageError::Io(format!(
                "{}: the store refuses writes after an earlier failure ({reason}); fix the cause, then restart the node",
                self.path.display()
            )));
        }
        let result = f(&mut writer);
        if let Err(StorageError::Io(reason) | StorageError::DiskFull(reason)) = &result {
            tracing::error!(path = %self.path.display(), %reason, "write failed; refusing further writes");
            writer.failed = Some(reason.clone());
        }
        result
    }

    fn persist(&self, write: &LogWrite) -> Result<(), StorageError> {
        self.guarded(|writer| self.persist_locked(writer, write))
    }

    fn persist_locked(&self, writer: &mut Writer, write: &LogWrite) -> Result<(), StorageError> {
        let old = self.state();
        let mut next = old.clone();
        let mut batch = WriteBatch::default();
        let mut sync = write.must_sync;
        let mut retired = None;
        let entries_cf = self.cf(CF_ENTRIES)?;
        let meta_cf = self.cf(CF_META)?;
        let encode_error = |e: String| StorageError::Io(format!("{}: {e}", self.path.display()));

        // 1. Chunks of a snapshot being received go to the incoming file.
        for chunk in &write.snapshot_chunks {
            self.write_chunk(writer, chunk)?;
        }

        // 2. The fully received snapshot becomes current; the log restarts
        //    after it.
        if let Some(meta) = &write.install_snapshot {
            let Some(incoming) = writer.incoming.take() else {
                return Err(invalid(
                    "install of a snapshot that was never received".into(),
                ));
            };
            if incoming.last != meta.last || incoming.len != meta.size {
                return Err(invalid(format!(
                    "incoming snapshot is incomplete: {} of {} bytes (of snapshot {:?}, installing {:?})",
                    incoming.len, meta.size, incoming.last, meta.last
                )));
            }
            let current = self.snapshots.finish_incoming(incoming, meta)?;
            batch.put_cf(
                meta_cf,
                KEY_SNAPSHOT,
                seal(&current.record).map_err(encode_error)?,
            );
            batch.delete_range_cf(entries_cf, index_key(0), index_key(Index::MAX));
            batch.put_cf(
                meta_cf,
                KEY_LOG_START,
                seal(&meta.last).map_err(encode_error)?,
            );
            retired = old
                .snapshot
                .as_ref()
                .map(|s| s.record.file.clone())
                .filter(|f| *f != current.record.file);
            next.first = meta.last.index + 1;
            next.prev = meta.last;
            next.last = meta.last;
            next.snapshot = Some(Arc::new(current));
            // The old snapshot file is deleted below: the new one must be
            // recorded durably first.
            sync = true;
        }

        // 3. Entries replace any stored suffix from their first index.
        if let (Some(first), Some(last)) = (write.entries.first(), write.entries.last()) {
            if first.index < next.first {
                return Err(invalid(format!(
                    "append at {} below the first index {}",
                    first.index, next.first
                )));
            }
            if first.index > next.last.index + 1 {
                return Err(invalid(format!(
                    "append at {} leaves a gap after {}",
                    first.index, next.last.index
                )));
            }
            let mut value = Vec::with_capacity(512);
            for (offset, entry) in write.entries.iter().enumerate() {
                if entry.index != first.index + offset as Index {
                    return Err(invalid(format!(
                        "entry {} follows entry {}",
                        entry.index,
                        first.index + offset as Index - 1
                    )));
                }
                value.clear();
                seal_into(entry, &mut value).map_err(encode_error)?;
                batch.put_cf(entries_cf, index_key(entry.index), &value);
            }
            if last.index < next.last.index {
                batch.delete_range_cf(
                    entries_cf,
                    index_key(last.index + 1),
                    index_key(next.last.index + 1),
                );
            }
            next.last = last.log_id();
        }

        // 4. Hard state.
        if let Some(hard_state) = write.hard_state {
            batch.put_cf(
                self.cf(CF_HARD_STATE)?,
                KEY_HARD_STATE,
                seal(&hard_state).map_err(encode_error)?,
            );
            next.hard_state = hard_state;
        }

        // 5. Compaction: drop a prefix, remembering the last dropped entry.
        if let Some(compact_to) = write.compact_to {
            let upto = compact_to.min(next.last.index);
            if upto >= next.first {
                let term = if upto == next.last.index {
                    next.last.term
                } else if let Some(entry) = write.entries.iter().find(|e| e.index == upto) {
                    entry.term
                } else {
                    self.read_position(upto)?
                        .ok_or_else(|| {
                            corrupt(&self.path, &format!("entry {upto} is missing from the log"))
                        })?
                        .0
                };
                let prev = LogId::new(term, upto);
                batch.delete_range_cf(entries_cf, index_key(next.first), index_key(upto + 1));
                batch.put_cf(meta_cf, KEY_LOG_START, seal(&prev).map_err(encode_error)?);
                next.first = upto + 1;
                next.prev = prev;
            }
        }

        if !batch.is_empty() {
            let mut options = WriteOptions::default();
            options.set_sync(sync && self.sync == SyncPolicy::Durable);
            self.db
                .write_opt(batch, &options)
                .map_err(|e| storage_rocks(&self.path, "writing a batch", e))?;
        }
        *self.state.write().unwrap_or_else(|p| p.into_inner()) = next;
        if let Some(file) = retired {
            self.snapshots.remove(&file);
        }
        Ok(())
    }

    fn write_chunk(&self, writer: &mut Writer, chunk: &SnapshotChunk) -> Result<(), StorageError> {
        let continues = matches!(&writer.incoming, Some(incoming) if chunk.offset != 0 && incoming.last == chunk.meta.last);
        if !continues {
            writer.incoming = None;
            if chunk.offset != 0 {
                return Err(invalid(format!(
                    "snapshot chunk at offset {} of a snapshot not being received (it starts at offset 0)",
                    chunk.offset
                )));
            }
        }
        let incoming = match &mut writer.incoming {
            Some(incoming) => incoming,
            none => none.insert(self.snapshots.start_incoming(chunk.meta.last)?),
        };
        if chunk.offset != incoming.len {
            return Err(invalid(format!(
                "snapshot chunk at offset {} but {} bytes received",
                chunk.offset, incoming.len
            )));
        }
        self.snapshots.append_incoming(incoming, &chunk.data)
    }

    /// Saves a host-built snapshot: the file is written and fsynced without
    /// the writer (log writes go on meanwhile); only putting it in place and
    /// recording it take the writer.
    fn save_snapshot(&self, meta: &SnapshotMeta, data: &[u8]) -> Result<(), StorageError> {
        let newer_exists = |store: &Self| {
            store
                .state()
                .snapshot
                .as_ref()
                .is_some_and(|s| s.meta().last.index >= meta.last.index)
        };
        if newer_exists(self) {
            return Ok(());
        }
        if data.len() as u64 != meta.size {
            return Err(invalid(format!(
                "snapshot data is {} bytes but its metadata says {}",
                data.len(),
                meta.size
            )));
        }
        let staged = self.snapshots.stage(meta, data)?;
        let mut staged = Some(staged);
        let result = self.guarded(|_writer| {
            if newer_exists(self) {
                // One installed from the leader meanwhile.
                return Ok(());
            }
            let old = self.state();
            let staged = staged.take().expect("staged once");
            let current = self.snapshots.commit(staged)?;
            let record = seal(&current.record)
                .map_err(|e| StorageError::Io(format!("{}: {e}", self.path.display())))?;
            let mut options = WriteOptions::default();
            options.set_sync(self.sync == SyncPolicy::Durable);
            self.db
                .put_cf_opt(self.cf(CF_META)?, KEY_SNAPSHOT, record, &options)
                .map_err(|e| storage_rocks(&self.path, "recording a snapshot", e))?;
            let retired = old
                .snapshot
                .as_ref()
                .map(|s| s.record.file.clone())
                .filter(|f| *f != current.record.file);
            self.state
                .write()
                .unwrap_or_else(|p| p.into_inner())
                .snapshot = Some(Arc::new(current));
            if let Some(file) = retired {
                self.snapshots.remove(&file);
            }
            Ok(())
        });
        if let Some(unused) = staged {
            self.snapshots.discard(unused);
        }
        result
    }
}

impl LogRead for RocksStore {
    fn hard_state(&self) -> Result<HardState, StorageError> {
        Ok(self.inner.state().hard_state)
    }

    fn snapshot_meta(&self) -> Result<Option<SnapshotMeta>, StorageError> {
        Ok(self.inner.state().snapshot.map(|s| s.meta().clone()))
    }

    fn first_index(&self) -> Result<Index, StorageError> {
        Ok(self.inner.state().first)
    }

    fn last_index(&self) -> Result<Index, StorageError> {
        let state = self.inner.state();
        Ok(state
            .last
            .index
            .max(state.snapshot.map_or(0, |s| s.meta().last.index)))
    }

    fn term(&self, index: Index) -> Result<Term, StorageError> {
        self.inner.term(index)
    }

    fn entries(&self, low: Index, high: Index, max_bytes: u64) -> Result<Vec<Entry>, StorageError> {
        self.inner.entries(low, high, max_bytes)
    }

    fn snapshot_chunk(
        &self,
        snapshot_index: Index,
        offset: u64,
        max_len: u64,
    ) -> Result<Bytes, StorageError> {
        match self.inner.state().snapshot {
            Some(snapshot) if snapshot.meta().last.index == snapshot_index => {
                snapshot.read(offset, max_len)
            }
            _ => Err(StorageError::SnapshotChanged(snapshot_index)),
        }
    }
}

#[async_trait]
impl LogStore for RocksStore {
    async fn persist(&self, write: LogWrite) -> Result<(), StorageError> {
        // Taken in call order and held until the blocking write is done (even
        // if this future is dropped), so batches reach RocksDB in order.
        let turn = self.inner.order.clone().lock_owned().await;
        let inner = self.inner.clone();
        blocking(move || {
            let _turn = turn;
            inner.persist(&write)
        })
        .await
    }

    async fn save_snapshot(&self, meta: SnapshotMeta, data: Bytes) -> Result<(), StorageError> {
        // Not in the log writes' call order: a snapshot is of applied
        // state, ordered against them by the writer alone, and writing
        // its file must not hold back the batches behind it.
        let inner = self.inner.clone();
        blocking(move || inner.save_snapshot(&meta, &data)).await
    }

    async fn load_snapshot(&self) -> Result<Option<(SnapshotMeta, Bytes)>, StorageError> {
        let store = self.clone();
        blocking(move || store.load_snapshot_blocking()).await
    }
}

/// Runs blocking storage work on tokio's blocking pool (or inline outside a
/// runtime), so async workers never wait on an fsync.
async fn blocking<T, F>(work: F) -> Result<T, StorageError>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, StorageError> + Send + 'static,
{
    match tokio::runtime::Handle::try_current() {
        Ok(runtime) => match runtime.spawn_blocking(work).await {
            Ok(result) => result,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(e) => Err(StorageError::Io(format!(
                "the storage task was cancelled: {e}"
            ))),
        },
        Err(_) => work(),
    }
}
