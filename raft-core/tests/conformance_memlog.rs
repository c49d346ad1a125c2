//! The storage conformance suite against [`MemLog`], the in-memory reference
//! store. One test per case, so a failure names it.

use raft_core::MemLog;
use raft_core::testing::conformance;

#[test]
fn append() {
    conformance::append(MemLog::new());
}

#[test]
fn overwrite_conflicting_suffix() {
    conformance::overwrite_conflicting_suffix(MemLog::new());
}

#[test]
fn compact_prefix() {
    conformance::compact_prefix(MemLog::new());
}

#[test]
fn range_reads_within_byte_budget() {
    conformance::range_reads_within_byte_budget(MemLog::new());
}

#[test]
fn term_at_every_boundary() {
    conformance::term_at_every_boundary(MemLog::new());
}

#[test]
fn hard_state_round_trip() {
    conformance::hard_state_round_trip(MemLog::new());
}

#[test]
fn received_snapshot_round_trip() {
    conformance::received_snapshot_round_trip(MemLog::new());
}

#[test]
fn saved_snapshot_round_trip() {
    conformance::saved_snapshot_round_trip(MemLog::new());
}

#[test]
fn recovery_after_reopen() {
    conformance::recovery_after_reopen(MemLog::new());
}

#[test]
fn every_case_is_run_above() {
    // Keeps this file in step with the suite: a new case must get a test.
    let names: Vec<&str> = conformance::cases::<MemLog>()
        .into_iter()
        .map(|(name, _)| name)
        .collect();
    let this_file = include_str!("conformance_memlog.rs");
    for name in names {
        assert!(
            this_file.contains(&format!("fn {name}()")),
            "conformance case {name} has no test here"
        );
    }
}
