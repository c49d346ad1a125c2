//! Test-only workspace member: `tests/` drives a raft-kv cluster's etcd v3
//! API with the Rust `etcd-client` crate. It lives apart so that nothing
//! else in the workspace depends on etcd-client (whose build needs `protoc`
//! and protobuf's well-known types: Debian's `protobuf-compiler` and
//! `libprotobuf-dev`, which `cargo xtask test` installs).
