//! The deterministic simulator over thousands of seeds (TESTING.md layer 1).
//! A failure prints the seed and the command that replays it.

#![cfg(feature = "testing")]

use raft_core::testing::{Sim, SimConfig};

fn run_range(start: u64, count: u64, nodes: usize) {
    let mut failures = Vec::new();
    let mut committed = 0;
    let mut steps = 0;
    for seed in start..start + count {
        let config = SimConfig::new(seed, nodes);
        assert!(config.steps >= 1000, "every seed runs at least 1,000 steps");
        match Sim::new(config).run() {
            Ok(stats) => {
                committed += stats.committed;
                steps += stats.steps;
            }
            Err(failure) => failures.push(failure.to_string()),
        }
    }
    println!(
        "seeds {start}..{}: {nodes} nodes, {steps} steps, {committed} proposals committed",
        start + count
    );
    assert!(
        failures.is_empty(),
        "{} failing seeds:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert!(committed > count * 5, "the simulation makes progress");
}

// 2,000 seeds in the default run, split so the test harness runs them in
// parallel.
#[test]
fn five_nodes_seeds_0_to_700() {
    run_range(0, 700, 5);
}

#[test]
fn five_nodes_seeds_700_to_1400() {
    run_range(700, 700, 5);
}

#[test]
fn three_nodes_seeds_0_to_600() {
    run_range(0, 600, 3);
}

/// The same seed gives the same event trace, bit for bit.
#[test]
fn same_seed_same_trace() {
    for seed in [0, 7, 4242] {
        let a = Sim::new(SimConfig::new(seed, 5))
            .run()
            .expect("seed passes");
        let b = Sim::new(SimConfig::new(seed, 5))
            .run()
            .expect("seed passes");
        assert_eq!(a, b, "seed {seed} replays identically");
    }
    let a = Sim::new(SimConfig::new(1, 5)).run().expect("seed passes");
    let b = Sim::new(SimConfig::new(2, 5)).run().expect("seed passes");
    assert_ne!(a.trace, b.trace, "different seeds, different traces");
}

/// Seeds that once failed, kept as tests. (The simulator's schedule has
/// changed since, so each bug also has a targeted scenario test in
/// `snapshots.rs`.)
#[test]
fn regression_seeds() {
    for (seed, nodes) in [(3713, 5), (6526, 5), (10257, 5), (10469, 5), (1998, 3)] {
        if let Err(failure) = Sim::new(SimConfig::new(seed, nodes)).run() {
            panic!("{failure}");
        }
    }
}
