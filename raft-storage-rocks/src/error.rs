//! Errors: [`Error`] for opening a store (each variant names the path and
//! what to do), and the mapping of runtime failures to
//! [`raft_core::StorageError`], the error of the read and write traits.

use std::io;
use std::path::{Path, PathBuf};

use raft_core::{NodeId, StorageError};

/// Why a store could not be opened. Every message names the data directory
/// and says what to do about it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The options are invalid (for example node id 0).
    #[error("invalid store options: {0}")]
    InvalidOptions(String),

    /// The data directory does not exist and
    /// [`crate::StoreOptions::create_if_missing`] is off.
    #[error(
        "data directory {path} does not exist; check the path, or enable create_if_missing to initialise a new node there"
    )]
    MissingDirectory {
        /// The data directory.
        path: PathBuf,
    },

    /// The data directory (or a file in it) cannot be written: permissions,
    /// ownership or a read-only mount.
    #[error(
        "data directory {path} is not writable ({source}); give the node's user write access to it, or mount it read-write"
    )]
    NotWritable {
        /// The directory or file that could not be written.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },

    /// The device holding the data directory has no space left.
    #[error(
        "no space left on the device holding {path}; free some space or grow the volume, then start the node again"
    )]
    DiskFull {
        /// The data directory.
        path: PathBuf,
    },

    /// Another running node (another process, or another handle in this
    /// process) has this data directory open.
    #[error(
        "data directory {path} is locked by a running node; stop that node first, or give this node its own data directory"
    )]
    Locked {
        /// The data directory.
        path: PathBuf,
    },

    /// The data directory was initialised by another node.
    #[error(
        "data directory {path} belongs to node {found}, not node {expected}; start node {expected} with its own data directory, or start node {found} here"
    )]
    WrongNode {
        /// The data directory.
        path: PathBuf,
        /// The node id this process was started as.
        expected: NodeId,
        /// The node id recorded in the directory.
        found: NodeId,
    },

    /// The data directory was initialised for another cluster.
    #[error(
        "data directory {path} belongs to cluster {found:?}, not cluster {expected:?}; point this node at a data directory of cluster {expected:?}, or move {path} aside to start a fresh node"
    )]
    WrongCluster {
        /// The data directory.
        path: PathBuf,
        /// The cluster id this process was started with.
        expected: String,
        /// The cluster id recorded in the directory.
        found: String,
    },

    /// The data directory was written by an incompatible version of this
    /// crate.
    #[error(
        "data directory {path} uses store format {found}, but this version reads format {supported}; run a matching version"
    )]
    UnsupportedFormat {
        /// The data directory.
        path: PathBuf,
        /// The format recorded in the directory.
        found: u32,
        /// The format this version reads and writes.
        supported: u32,
    },

    /// Stored data failed a checksum, could not be decoded, or is
    /// inconsistent.
    #[error(
        "corrupt data in {path}: {detail}; do not trust this copy: stop the node, move {path} aside, and re-add the node so it copies the log from a healthy replica"
    )]
    Corrupt {
        /// The file or directory holding the bad data.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },

    /// Another I/O error.
    #[error("I/O error on {path}: {source}")]
    Io {
        /// The file or directory involved.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },

    /// Another RocksDB error.
    #[error("RocksDB failed on {path}: {message}")]
    Rocks {
        /// The data directory.
        path: PathBuf,
        /// RocksDB's message.
        message: String,
    },
}

impl Error {
    /// Classifies an I/O error on `path` during open.
    pub(crate) fn from_io(path: &Path, source: io::Error) -> Self {
        let path = path.to_path_buf();
        match source.kind() {
            io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded => Error::DiskFull { path },
            io::ErrorKind::PermissionDenied | io::ErrorKind::ReadOnlyFilesystem => {
                Error::NotWritable { path, source }
            }
            _ => Error::Io { path, source },
        }
    }

    /// Classifies an error RocksDB reported while opening the database in
    /// `path`. RocksDB gives only a kind and a message; the message carries
    /// the operating system's error text.
    pub(crate) fn from_rocks(path: &Path, error: rocksdb::Error) -> Self {
        let path = path.to_path_buf();
        let message = error.clone().into_string();
        if is_lock_message(&message) {
            return Error::Locked { path };
        }
        if is_disk_full_message(&message) {
            return Error::DiskFull { path };
        }
        if message.contains("Permission denied") || message.contains("Read-only file system") {
            return Error::NotWritable {
                path,
                source: io::Error::other(message),
            };
        }
        if error.kind() == rocksdb::ErrorKind::Corruption {
            return Error::Corrupt {
                path,
                detail: message,
            };
        }
        Error::Rocks { path, message }
    }
}

impl From<Error> for StorageError {
    fn from(error: Error) -> Self {
        match error {
            Error::Corrupt { .. } => StorageError::Corrupt(error.to_string()),
            Error::DiskFull { .. } => StorageError::DiskFull(error.to_string()),
            other => StorageError::Io(other.to_string()),
        }
    }
}

/// RocksDB's message when another process holds the `LOCK` file (`flock`
/// fails with EAGAIN) or this process already has the database open.
fn is_lock_message(message: &str) -> bool {
    message.contains("lock hold by current process")
        || (message.contains("LOCK")
            && (message.contains("Resource temporarily unavailable") || message.contains("lock")))
}

fn is_disk_full_message(message: &str) -> bool {
    message.contains("No space left on device") || message.contains("Disk quota exceeded")
}

/// Maps an I/O error during a write or read of `path` to the trait error,
/// naming the path and what to do.
pub(crate) fn storage_io(path: &Path, what: &str, error: &io::Error) -> StorageError {
    match error.kind() {
        io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded => {
            disk_full(path, &error.to_string())
        }
        _ => StorageError::Io(format!("{what} {}: {error}", path.display())),
    }
}

/// Maps a RocksDB error during a write or read of the database in `path`.
pub(crate) fn storage_rocks(path: &Path, what: &str, error: rocksdb::Error) -> StorageError {
    let message = error.clone().into_string();
    if is_disk_full_message(&message) {
        return disk_full(path, &message);
    }
    match error.kind() {
        rocksdb::ErrorKind::Corruption => corrupt(path, &format!("{what}: {message}")),
        _ => StorageError::Io(format!("{what} in {}: {message}", path.display())),
    }
}

/// The error for a full disk.
pub(crate) fn disk_full(path: &Path, detail: &str) -> StorageError {
    StorageError::DiskFull(format!(
        "disk full: no space left on the device holding {} ({detail}); free some space or grow the volume, then restart the node",
        path.display()
    ))
}

/// What to do about corrupt data at runtime.
const CORRUPT_ADVICE: &str = "; stop the node, move its data directory aside, and re-add it so it copies the log from a healthy replica";

/// The error for bad data in `path`.
pub(crate) fn corrupt(path: &Path, detail: &str) -> StorageError {
    StorageError::Corrupt(format!("{}: {detail}{CORRUPT_ADVICE}", path.display()))
}

/// Turns a runtime error found while opening `path` into an open error,
/// without repeating the path and the advice [`Error::Corrupt`] carries.
pub(crate) fn open_error(path: &Path, error: StorageError) -> Error {
    match error {
        StorageError::Corrupt(message) => {
            let prefix = format!("{}: ", path.display());
            let detail = message.strip_suffix(CORRUPT_ADVICE).unwrap_or(&message);
            let detail = detail.strip_prefix(&prefix).unwrap_or(detail);
            Error::Corrupt {
                path: path.to_path_buf(),
                detail: detail.to_string(),
            }
        }
        other => Error::Rocks {
            path: path.to_path_buf(),
            message: other.to_string(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_error_kinds_map_to_typed_errors() {
        let path = Path::new("/data/raft");
        let full = Error::from_io(path, io::Error::from_raw_os_error(28)); // ENOSPC
        assert!(matches!(full, Error::DiskFull { .. }), "{full:?}");
        assert!(
            full.to_string().contains("/data/raft") && full.to_string().contains("free some space")
        );
        let denied = Error::from_io(path, io::Error::from_raw_os_error(13)); // EACCES
        assert!(matches!(denied, Error::NotWritable { .. }), "{denied:?}");
        let read_only = Error::from_io(path, io::Error::from_raw_os_error(30)); // EROFS
        assert!(
            matches!(read_only, Error::NotWritable { .. }),
            "{read_only:?}"
        );
        let other = Error::from_io(path, io::Error::from_raw_os_error(5)); // EIO
        assert!(matches!(other, Error::Io { .. }), "{other:?}");

        let write = storage_io(path, "writing", &io::Error::from_raw_os_error(28));
        assert!(
            matches!(&write, StorageError::DiskFull(m) if m.starts_with("disk full") && m.contains("/data/raft")),
            "{write:?}"
        );
    }

    #[test]
    fn open_errors_convert_to_storage_errors() {
        let corrupt = Error::Corrupt {
            path: "/d".into(),
            detail: "bad".into(),
        };
        assert!(matches!(
            StorageError::from(corrupt),
            StorageError::Corrupt(_)
        ));
        let locked = Error::Locked { path: "/d".into() };
        assert!(
            matches!(StorageError::from(locked), StorageError::Io(m) if m.contains("locked by a running node"))
        );
    }

    #[test]
    fn lock_messages_are_recognised() {
        assert!(is_lock_message(
            "IO error: While lock file: /tmp/x/db/LOCK: Resource temporarily unavailable"
        ));
        assert!(is_lock_message(
            "IO error: lock hold by current process, acquire time 1 acquiring thread 2: /tmp/x/db/LOCK: No locks available"
        ));
        assert!(!is_lock_message("IO error: No space left on device"));
    }
}
