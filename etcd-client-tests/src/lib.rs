//! Test-only workspace member: raft-kv's etcd v3 API driven by the Rust
//! `etcd-client` crate. `tests/` runs scenarios against a raft-kv cluster;
//! [`diff`] compares raft-kv's answers with a real etcd's (the `etcd-diff`
//! binary, `cargo xtask etcd-diff`). It lives apart so that nothing else in
//! the workspace depends on etcd-client (whose build needs `protoc` and
//! protobuf's well-known types: Debian's `protobuf-compiler` and
//! `libprotobuf-dev`, which `cargo xtask test` installs).

pub mod diff;
