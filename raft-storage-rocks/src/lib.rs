//! raft-storage-rocks (see README.md).
