//! A stand-in for raft-storage-rocks's `error` module (which needs RocksDB),
//! with the signatures `snapshot.rs` uses, so that module compiles alone in
//! the fuzz targets and the storage replay test. The messages do not matter
//! here; only that errors are returned, not panics.

#![allow(dead_code)]

use std::io;
use std::path::{Path, PathBuf};

use raft_core::StorageError;

/// Stands in for `raft_storage_rocks::Error`.
#[derive(Debug)]
pub enum Error {
    /// Bad data.
    Corrupt {
        /// Where.
        path: PathBuf,
        /// What.
        detail: String,
    },
    /// Another I/O error.
    Io {
        /// Where.
        path: PathBuf,
        /// The operating system's error.
        source: io::Error,
    },
}

impl Error {
    /// Stands in for `Error::from_io`.
    pub fn from_io(path: &Path, source: io::Error) -> Self {
        Error::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// Stands in for `error::corrupt`.
pub fn corrupt(path: &Path, detail: &str) -> StorageError {
    StorageError::Corrupt(format!("{}: {detail}", path.display()))
}

/// Stands in for `error::storage_io`.
pub fn storage_io(path: &Path, what: &str, error: &io::Error) -> StorageError {
    StorageError::Io(format!("{what} {}: {error}", path.display()))
}
