//! One module per fuzz target. Each file is also compiled, with `#[path]`,
//! into the `tests/fuzz_corpus.rs` of the crate that owns the decoder, so
//! it names only `raft_core`, `raft_transport_quic`, std, and `crate::...`
//! modules every includer provides.

pub mod client_request;
pub mod client_response;
pub mod config_toml;
pub mod kv_command;
pub mod kv_snapshot;
pub mod node_step;
pub mod peer_frame;
pub mod peer_hello;
pub mod snapshot_record;
pub mod stored_record;
pub mod watch_message;
