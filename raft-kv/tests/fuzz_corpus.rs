//! Replays the fuzz corpora of the client-facing decoders as ordinary
//! tests: every saved input of `fuzz/corpus/<target>/` and
//! `fuzz/regressions/<target>/` runs through the same check as the fuzz
//! target (the check files live in `fuzz/src/checks/` and are compiled in
//! here; they reach this crate as `crate::protocol` and so on). See
//! fuzz/README.md for running the fuzzers themselves.
//!
//! - `client_request`, `client_response`, `watch_message`: client frames.
//! - `kv_command`: log entries applied by the KV state machine.
//! - `kv_snapshot`: snapshot data restored by the KV state machine.
//! - `config_toml`: the node configuration file.

use raft_kv::{config, protocol, state_machine, watch};

#[path = "../../fuzz/src/replay.rs"]
#[allow(dead_code)]
mod replay;

#[path = "../../fuzz/src/checks/client_request.rs"]
mod client_request;
#[path = "../../fuzz/src/checks/client_response.rs"]
mod client_response;
#[path = "../../fuzz/src/checks/config_toml.rs"]
mod config_toml;
#[path = "../../fuzz/src/checks/kv_command.rs"]
mod kv_command;
#[path = "../../fuzz/src/checks/kv_snapshot.rs"]
mod kv_snapshot;
#[path = "../../fuzz/src/checks/watch_message.rs"]
mod watch_message;

/// This crate's directory: the one cargo names when it runs the test (a
/// target directory shared between checkouts may hold a test binary built
/// in another checkout), else the one it was built in.
fn dir() -> String {
    std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").into())
}

macro_rules! replay_tests {
    ($($target:ident: $corpus:ident, $regressions:ident;)*) => {$(
        #[test]
        fn $corpus() {
            replay::corpus(&dir(), stringify!($target), $target::check);
        }

        #[test]
        fn $regressions() {
            replay::regressions(&dir(), stringify!($target), $target::check);
        }
    )*};
}

replay_tests! {
    client_request: client_request_corpus, client_request_regressions;
    client_response: client_response_corpus, client_response_regressions;
    watch_message: watch_message_corpus, watch_message_regressions;
    kv_command: kv_command_corpus, kv_command_regressions;
    kv_snapshot: kv_snapshot_corpus, kv_snapshot_regressions;
    config_toml: config_toml_corpus, config_toml_regressions;
}

/// The imports above are what the check files reach as `crate::...`.
#[test]
fn modules_the_checks_use_exist() {
    let _ = (
        config::NodeConfig::from_toml,
        protocol::decode::<protocol::Request>,
        state_machine::MAX_SESSIONS,
        watch::WatchHub::new,
    );
}
