//! raft-kv (see README.md).
