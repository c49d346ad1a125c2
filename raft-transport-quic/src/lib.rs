//! raft-transport-quic (see README.md).
