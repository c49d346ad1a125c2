//! Runs the deterministic cluster simulator over a range of seeds:
//! `cargo xtask sim --seeds N [--start S] [--nodes K]` calls this.

use std::process::ExitCode;
use std::time::Instant;

use raft_core::testing::{Sim, SimConfig, SimStats};

fn main() -> ExitCode {
    let mut seeds = 100u64;
    let mut start = 0u64;
    let mut nodes = 5usize;
    let mut verbose = false;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = |name: &str| -> u64 {
            match args.next().and_then(|v| v.parse().ok()) {
                Some(v) => v,
                None => {
                    eprintln!("{name} needs a number");
                    std::process::exit(2);
                }
            }
        };
        match arg.as_str() {
            "--seeds" => seeds = value("--seeds"),
            "--start" => start = value("--start"),
            "--nodes" => nodes = value("--nodes") as usize,
            "--verbose" => verbose = true,
            other => {
                eprintln!(
                    "unknown argument {other}; usage: sim --seeds N [--start S] [--nodes K] [--verbose]"
                );
                return ExitCode::from(2);
            }
        }
    }
    if nodes == 0 {
        eprintln!("--nodes must be at least 1");
        return ExitCode::from(2);
    }
    let began = Instant::now();
    let mut total = SimStats::default();
    let mut failures = Vec::new();
    for seed in start..start + seeds {
        match Sim::new(SimConfig::new(seed, nodes)).run() {
            Ok(stats) => {
                if verbose {
                    println!("seed {seed}: {stats}");
                }
                total.steps += stats.steps;
                total.ticks += stats.ticks;
                total.proposed += stats.proposed;
                total.committed += stats.committed;
                total.elections += stats.elections;
                total.faults += stats.faults;
                total.reads += stats.reads;
                total.membership_changes += stats.membership_changes;
                total.transfers += stats.transfers;
                total.snapshots += stats.snapshots;
            }
            Err(failure) => {
                eprintln!("{failure}");
                failures.push(failure);
            }
        }
    }
    println!(
        "sim: seeds {seeds} (start {start}, nodes {nodes}) steps {} proposals committed {} elections {} faults {} reads {} membership changes {} transfers {} snapshots {} violations {} in {:.1}s",
        total.steps,
        total.committed,
        total.elections,
        total.faults,
        total.reads,
        total.membership_changes,
        total.transfers,
        total.snapshots,
        failures.len(),
        began.elapsed().as_secs_f64()
    );
    if failures.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
