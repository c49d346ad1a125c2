//! The chaos checker can fail: a short chaos run against nodes started with
//! a deliberate, test-only bug (linearizable reads served from local state
//! without ReadIndex, see `raft_kv::server::BROKEN_MODE_ENV`) must be judged
//! not linearizable.
//!
//! Runs the chaos program (`examples/chaos`, built by `cargo test` with the
//! `raft-kv` binary beside it) as a process.

use std::path::PathBuf;
use std::process::Command;

fn built(relative: &str) -> PathBuf {
    // This test runs from <target>/debug/deps/.
    let exe = std::env::current_exe().expect("the test's own path");
    let debug = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("the test runs from <target>/debug/deps");
    debug.join(relative)
}

#[test]
fn chaos_run_catches_stale_linearizable_reads() {
    let chaos = built("examples/chaos");
    let server = built("raft-kv");
    assert!(
        chaos.is_file() && server.is_file(),
        "expected the chaos program at {} and raft-kv at {}: build with \
         `cargo build --workspace --all-targets --all-features` (cargo test does)",
        chaos.display(),
        server.display()
    );
    let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("chaos-broken");
    let output = Command::new(&chaos)
        .args([
            "--duration",
            "25s",
            "--nodes",
            "3",
            "--clients",
            "8",
            "--seed",
            "7",
            "--broken",
            "stale-reads",
            "--expect-violation",
            "--raft-kv",
        ])
        .arg(&server)
        .arg("--out")
        .arg(&out)
        .output()
        .expect("starting the chaos program");
    // The summary (the per-key verdicts are in the run's report.txt).
    let stderr = String::from_utf8_lossy(&output.stderr);
    for line in stderr.lines().filter(|l| !l.starts_with("chaos: key ")) {
        eprintln!("{line}");
    }
    assert!(
        output.status.success(),
        "the chaos checker did not report the stale reads of the broken mode as a \
         linearizability violation ({}); see the output above and the files under {}",
        output.status,
        out.display()
    );
}
