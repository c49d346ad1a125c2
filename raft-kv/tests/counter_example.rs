//! The README's custom state machine example (`examples/counter.rs`) runs:
//! three nodes on RocksDB and QUIC elect a leader, apply three increments
//! and read the same total on every node.

use std::path::PathBuf;
use std::process::Command;

#[test]
fn the_counter_example_runs_and_all_nodes_agree() {
    // This test runs from <target>/debug/deps/; cargo test builds the
    // examples beside it.
    let exe = std::env::current_exe().expect("the test's own path");
    let example: PathBuf = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("the test runs from <target>/debug/deps")
        .join("examples/counter");
    assert!(
        example.is_file(),
        "expected the example at {} (cargo test builds it)",
        example.display()
    );
    let output = Command::new(&example)
        .output()
        .expect("running the example");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "the example failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    for line in [
        "add   5 -> 5",
        "add  -2 -> 3",
        "add  10 -> 13",
        "all three nodes agree",
    ] {
        assert!(stdout.contains(line), "missing {line:?} in:\n{stdout}");
    }
    assert_eq!(stdout.matches(" reads 13").count(), 3, "{stdout}");
}
