//! Replays the fuzz corpora of the peer decoders as ordinary tests: every
//! saved input of `fuzz/corpus/<target>/` and `fuzz/regressions/<target>/`
//! runs through the same check as the fuzz target (the check files live in
//! `fuzz/src/checks/` and are compiled in here). See fuzz/README.md for
//! running the fuzzers themselves.
//!
//! - `peer_frame`: frames read with `frame::read` and decoded as
//!   `raft_core::Message` (snapshot chunks included).
//! - `peer_hello`: the hello that opens a peer connection.
//! - `node_step`: decoded messages, from hostile peers, stepped into a
//!   `raft_core::Node` (here rather than in raft-core, whose dependencies
//!   do not include postcard, the wire format).

#[path = "../../fuzz/src/replay.rs"]
#[allow(dead_code)]
mod replay;

#[path = "../../fuzz/src/checks/node_step.rs"]
#[allow(dead_code)]
mod node_step;
#[path = "../../fuzz/src/checks/peer_frame.rs"]
mod peer_frame;
#[path = "../../fuzz/src/checks/peer_hello.rs"]
mod peer_hello;

/// This crate's directory: the one cargo names when it runs the test (a
/// target directory shared between checkouts may hold a test binary built
/// in another checkout), else the one it was built in.
fn dir() -> String {
    std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").into())
}

#[test]
fn peer_frame_corpus() {
    replay::corpus(&dir(), "peer_frame", peer_frame::check);
}

#[test]
fn peer_frame_regressions() {
    replay::regressions(&dir(), "peer_frame", peer_frame::check);
}

#[test]
fn peer_hello_corpus() {
    replay::corpus(&dir(), "peer_hello", peer_hello::check);
}

#[test]
fn peer_hello_regressions() {
    replay::regressions(&dir(), "peer_hello", peer_hello::check);
}

#[test]
fn node_step_corpus() {
    replay::corpus(&dir(), "node_step", node_step::check);
}

#[test]
fn node_step_regressions() {
    replay::regressions(&dir(), "node_step", node_step::check);
}
