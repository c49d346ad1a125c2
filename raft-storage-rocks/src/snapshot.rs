//! Snapshot files: the current snapshot, the one being received in chunks,
//! and how a new one becomes current without a moment where neither is
//! durable.
//!
//! A snapshot's data lives in `snapshots/snapshot-<index>-<term>.snap`; its
//! metadata (and the file name) lives in RocksDB. A new file is written
//! under a temporary name, fsynced, renamed into place and the directory
//! fsynced; only then does RocksDB record it, and only after that is the old
//! file deleted. A crash at any point leaves either the old or the new
//! snapshot current, plus at worst an orphan file that the next open
//! removes. The data carries a CRC-32 per 64 KiB block (kept in the
//! metadata record), checked on every read, so a chunk sent to a follower
//! is never silently wrong.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use raft_core::{LogId, SnapshotMeta, StorageError};
use serde::{Deserialize, Serialize};

use crate::error::{corrupt, storage_io};

/// Bytes covered by one checksum.
pub(crate) const BLOCK: u64 = 64 * 1024;

/// The name of the snapshot being received.
const INCOMING: &str = "incoming.part";
/// How the names of host-built snapshots start before the rename (then the
/// index and a number unique in this process).
const BUILDING_PREFIX: &str = "building-";
/// The name of the write probe `open` uses.
pub(crate) const PROBE: &str = ".write-probe";

/// What RocksDB records about the current snapshot.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct SnapshotRecord {
    /// The snapshot's metadata, as the node gave it.
    pub(crate) meta: SnapshotMeta,
    /// The file holding the data, inside the snapshot directory.
    pub(crate) file: String,
    /// CRC-32 of each [`BLOCK`] of the data.
    pub(crate) block_crcs: Vec<u32>,
}

/// The checksums of data written front to back.
#[derive(Default)]
pub(crate) struct BlockCrcs {
    done: Vec<u32>,
    partial: crc32fast::Hasher,
    partial_len: u64,
}

impl BlockCrcs {
    pub(crate) fn update(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            let room = (BLOCK - self.partial_len) as usize;
            let (head, rest) = data.split_at(room.min(data.len()));
            self.partial.update(head);
            self.partial_len += head.len() as u64;
            if self.partial_len == BLOCK {
                self.done.push(std::mem::take(&mut self.partial).finalize());
                self.partial_len = 0;
            }
            data = rest;
        }
    }

    pub(crate) fn finish(mut self) -> Vec<u32> {
        if self.partial_len > 0 {
            self.done.push(self.partial.finalize());
        }
        self.done
    }
}

/// The current snapshot: its record and an open handle on its file (which
/// stays readable even after a newer snapshot replaced and deleted it, so a
/// reader never sees a half-replaced file).
pub(crate) struct CurrentSnapshot {
    pub(crate) record: SnapshotRecord,
    file: File,
    path: PathBuf,
}

impl CurrentSnapshot {
    /// Opens the file `record` names and checks its length.
    pub(crate) fn open(dir: &Path, record: SnapshotRecord) -> Result<Self, crate::Error> {
        let path = dir.join(&record.file);
        let file = File::open(&path).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => crate::Error::Corrupt {
                path: path.clone(),
                detail: format!(
                    "the current snapshot (index {}) has no data file",
                    record.meta.last.index
                ),
            },
            _ => crate::Error::from_io(&path, e),
        })?;
        let len = file
            .metadata()
            .map_err(|e| crate::Error::from_io(&path, e))?
            .len();
        let blocks = record.meta.size.div_ceil(BLOCK);
        if len != record.meta.size || blocks != record.block_crcs.len() as u64 {
            return Err(crate::Error::Corrupt {
                path,
                detail: format!(
                    "snapshot file is {len} bytes with {} checksums, but its metadata says {} bytes",
                    record.block_crcs.len(),
                    record.meta.size
                ),
            });
        }
        Ok(Self { record, file, path })
    }

    pub(crate) fn meta(&self) -> &SnapshotMeta {
        &self.record.meta
    }

    /// Up to `max_len` bytes from `offset`, every block they touch checked.
    pub(crate) fn read(&self, offset: u64, max_len: u64) -> Result<Bytes, StorageError> {
        let size = self.record.meta.size;
        let start = offset.min(size);
        let end = offset.saturating_add(max_len).min(size);
        if start >= end {
            return Ok(Bytes::new());
        }
        let first_block = start / BLOCK;
        let last_block = (end - 1) / BLOCK;
        let read_start = first_block * BLOCK;
        let read_end = ((last_block + 1) * BLOCK).min(size);
        let mut buf = vec![0; (read_end - read_start) as usize];
        self.file
            .read_exact_at(&mut buf, read_start)
            .map_err(|e| match e.kind() {
                io::ErrorKind::UnexpectedEof => corrupt(
                    &self.path,
                    "snapshot file is shorter than its recorded size",
                ),
                _ => storage_io(&self.path, "reading snapshot", &e),
            })?;
        for (i, block) in buf.chunks(BLOCK as usize).enumerate() {
            let number = first_block as usize + i;
            let computed = crc32fast::hash(block);
            if self.record.block_crcs.get(number) != Some(&computed) {
                return Err(corrupt(
                    &self.path,
                    &format!(
                        "snapshot block {number} (bytes {}..) fails its checksum",
                        number as u64 * BLOCK
                    ),
                ));
            }
        }
        let buf = Bytes::from(buf);
        Ok(buf.slice((start - read_start) as usize..(end - read_start) as usize))
    }
}

/// A snapshot being received from the leader, chunk by chunk.
pub(crate) struct Incoming {
    pub(crate) last: LogId,
    file: File,
    pub(crate) len: u64,
    crcs: BlockCrcs,
}

/// `options` creating files readable by their owner only (0600 on Unix).
fn private(options: &mut OpenOptions) -> &mut OpenOptions {
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options
}

/// A host-built snapshot written and fsynced under a temporary name.
pub(crate) struct Staged {
    tmp: PathBuf,
    current: CurrentSnapshot,
}

/// The snapshot directory.
pub(crate) struct SnapshotDir {
    pub(crate) path: PathBuf,
    /// Whether to fsync files and the directory.
    pub(crate) sync: bool,
    /// Snapshots staged so far (each gets a file name of its own).
    pub(crate) builds: AtomicU64,
}

impl SnapshotDir {
    /// The file name of the snapshot ending at `last`.
    fn file_name(last: LogId) -> String {
        format!("snapshot-{:020}-{:020}.snap", last.index, last.term)
    }

    /// Starts receiving a new snapshot, discarding any partial one.
    pub(crate) fn start_incoming(&self, last: LogId) -> Result<Incoming, StorageError> {
        let path = self.path.join(INCOMING);
        let file = private(
            OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(true),
        )
        .open(&path)
        .map_err(|e| storage_io(&path, "creating incoming snapshot", &e))?;
        Ok(Incoming {
            last,
            file,
            len: 0,
            crcs: BlockCrcs::default(),
        })
    }

    /// Appends a chunk to the incoming snapshot.
    pub(crate) fn append_incoming(
        &self,
        incoming: &mut Incoming,
        data: &[u8],
    ) -> Result<(), StorageError> {
        incoming
            .file
            .write_all(data)
            .map_err(|e| storage_io(&self.path.join(INCOMING), "writing incoming snapshot", &e))?;
        incoming.len += data.len() as u64;
        incoming.crcs.update(data);
        Ok(())
    }

    /// Makes the fully received snapshot durable under its final name.
    pub(crate) fn finish_incoming(
        &self,
        incoming: Incoming,
        meta: &SnapshotMeta,
    ) -> Result<CurrentSnapshot, StorageError> {
        let from = self.path.join(INCOMING);
        let name = Self::file_name(meta.last);
        let to = self.path.join(&name);
        if self.sync {
            incoming
                .file
                .sync_all()
                .map_err(|e| storage_io(&from, "syncing incoming snapshot", &e))?;
        }
        fs::rename(&from, &to).map_err(|e| storage_io(&to, "renaming snapshot into place", &e))?;
        self.sync_dir()?;
        let record = SnapshotRecord {
            meta: meta.clone(),
            file: name,
            block_crcs: incoming.crcs.finish(),
        };
        Ok(CurrentSnapshot {
            record,
            file: incoming.file,
            path: to,
        })
    }

    /// Writes a host-built snapshot to a file of its own, fsynced, not yet
    /// current: the slow part, done without holding the store's writer, so
    /// log writes go on meanwhile. [`SnapshotDir::commit`] puts it in place.
    pub(crate) fn stage(&self, meta: &SnapshotMeta, data: &[u8]) -> Result<Staged, StorageError> {
        let build = self.builds.fetch_add(1, Ordering::Relaxed);
        let tmp = self.path.join(format!(
            "{BUILDING_PREFIX}{:020}-{build}.tmp",
            meta.last.index
        ));
        let written = (|| {
            let mut file = private(OpenOptions::new().read(true).write(true).create_new(true))
                .open(&tmp)
                .map_err(|e| storage_io(&tmp, "creating snapshot file", &e))?;
            file.write_all(data)
                .map_err(|e| storage_io(&tmp, "writing snapshot", &e))?;
            if self.sync {
                file.sync_all()
                    .map_err(|e| storage_io(&tmp, "syncing snapshot", &e))?;
            }
            Ok(file)
        })();
        let file = match written {
            Ok(file) => file,
            Err(e) => {
                // Nothing current changed: the partial file goes, the store
                // stays usable.
                let _ = fs::remove_file(&tmp);
                return Err(e);
            }
        };
        let mut crcs = BlockCrcs::default();
        crcs.update(data);
        let name = Self::file_name(meta.last);
        Ok(Staged {
            tmp,
            current: CurrentSnapshot {
                record: SnapshotRecord {
                    meta: meta.clone(),
                    file: name.clone(),
                    block_crcs: crcs.finish(),
                },
                file,
                path: self.path.join(name),
            },
        })
    }

    /// Renames a staged snapshot to its final name, durably.
    pub(crate) fn commit(&self, staged: Staged) -> Result<CurrentSnapshot, StorageError> {
        let to = &staged.current.path;
        fs::rename(&staged.tmp, to)
            .map_err(|e| storage_io(to, "renaming snapshot into place", &e))?;
        self.sync_dir()?;
        Ok(staged.current)
    }

    /// Drops a staged snapshot that will not become current.
    pub(crate) fn discard(&self, staged: Staged) {
        if let Err(e) = fs::remove_file(&staged.tmp) {
            tracing::warn!(path = %staged.tmp.display(), error = %e, "could not delete an unused snapshot file; delete it by hand");
        }
    }

    /// Makes renames in the directory durable.
    fn sync_dir(&self) -> Result<(), StorageError> {
        if self.sync {
            sync_dir(&self.path)
                .map_err(|e| storage_io(&self.path, "syncing snapshot directory", &e))?;
        }
        Ok(())
    }

    /// Deletes a snapshot file that is no longer current.
    pub(crate) fn remove(&self, name: &str) {
        let path = self.path.join(name);
        if let Err(e) = fs::remove_file(&path) {
            if e.kind() != io::ErrorKind::NotFound {
                tracing::warn!(path = %path.display(), error = %e, "could not delete an old snapshot; delete it by hand");
            }
        }
    }

    /// Deletes every file except `keep`: partial downloads, unfinished
    /// builds, and snapshots a crash left behind before RocksDB recorded
    /// them (or after it recorded a newer one).
    pub(crate) fn remove_all_but(&self, keep: Option<&str>) -> Result<(), crate::Error> {
        let entries = fs::read_dir(&self.path).map_err(|e| crate::Error::from_io(&self.path, e))?;
        for entry in entries {
            let entry = entry.map_err(|e| crate::Error::from_io(&self.path, e))?;
            let name = entry.file_name();
            if Some(name.to_string_lossy().as_ref()) == keep {
                continue;
            }
            tracing::debug!(file = ?name, "removing a snapshot file that is not current");
            self.remove(&name.to_string_lossy());
        }
        Ok(())
    }
}

/// fsyncs a directory, so that renames and creations in it survive a crash.
pub(crate) fn sync_dir(path: &Path) -> io::Result<()> {
    File::open(path)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_checksums_do_not_depend_on_how_data_was_split() {
        let data: Vec<u8> = (0..(3 * BLOCK + 100))
            .map(|i| (i * 7 % 251) as u8)
            .collect();
        let mut whole = BlockCrcs::default();
        whole.update(&data);
        let whole = whole.finish();
        assert_eq!(whole.len(), 4);
        let mut pieces = BlockCrcs::default();
        for piece in data.chunks(10_000) {
            pieces.update(piece);
        }
        assert_eq!(pieces.finish(), whole);
        assert_eq!(
            whole[1],
            crc32fast::hash(&data[BLOCK as usize..2 * BLOCK as usize])
        );
    }
}
