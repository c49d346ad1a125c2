//! Runs the deterministic cluster simulator over a range of seeds:
//! `cargo xtask sim --seeds N [--start S] [--nodes K|grown|mix] [--jobs J]`
//! calls this. Seeds are independent, so `--jobs` runs them on several
//! threads (the simulator itself is single-threaded and deterministic: a
//! seed's outcome does not depend on the thread that ran it).

use std::process::ExitCode;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use raft_core::testing::{Shape, Sim, SimConfig, SimFailure, SimStats};

/// Which shapes and fault mixes a run covers.
#[derive(Clone, Copy)]
enum Mix {
    One(Shape),
    /// The default test mix: the shape follows from the seed.
    Mixed,
    /// `SimConfig::lease_focus`.
    Lease,
    /// `SimConfig::membership_focus`.
    Membership,
    /// `SimConfig::varied`: PreVote and CheckQuorum each on or off, election
    /// and heartbeat ticks varied, pipelining hosts.
    Varied,
}

impl Mix {
    fn config(self, seed: u64) -> SimConfig {
        match self {
            Mix::One(shape) => SimConfig::with_shape(seed, shape),
            Mix::Mixed => SimConfig::with_shape(seed, Shape::mixed(seed)),
            Mix::Lease => SimConfig::lease_focus(seed),
            Mix::Membership => SimConfig::membership_focus(seed),
            Mix::Varied => SimConfig::varied(seed),
        }
    }
}

fn main() -> ExitCode {
    let mut seeds = 100u64;
    let mut start = 0u64;
    let mut mix = Mix::One(Shape::Voters(5));
    let mut nodes_arg = "5".to_string();
    let mut jobs = 1usize;
    let mut verbose = false;
    let mut events = false;
    let mut first_failure = false;
    let mut args = std::env::args().skip(1);
    let usage = "usage: sim --seeds N [--start S] [--nodes K|grown|mix|lease|membership|varied] [--jobs J] [--verbose] [--events] [--first-failure]";
    while let Some(arg) = args.next() {
        let mut value = |name: &str| -> String {
            args.next().unwrap_or_else(|| {
                eprintln!("{name} needs a value; {usage}");
                std::process::exit(2);
            })
        };
        let number = |name: &str, v: String| -> u64 {
            v.parse().unwrap_or_else(|_| {
                eprintln!("{name} needs a number, not {v:?}; {usage}");
                std::process::exit(2);
            })
        };
        match arg.as_str() {
            "--seeds" => seeds = number("--seeds", value("--seeds")),
            "--start" => start = number("--start", value("--start")),
            "--jobs" => jobs = number("--jobs", value("--jobs")).max(1) as usize,
            "--nodes" => {
                nodes_arg = value("--nodes");
                mix = match nodes_arg.as_str() {
                    "grown" => Mix::One(Shape::Grown),
                    "mix" => Mix::Mixed,
                    "lease" => Mix::Lease,
                    "membership" => Mix::Membership,
                    "varied" => Mix::Varied,
                    n => match n.parse::<usize>() {
                        Ok(k) if k >= 1 => Mix::One(Shape::Voters(k)),
                        _ => {
                            eprintln!(
                                "--nodes takes a number of voters (1 or more), grown or mix; {usage}"
                            );
                            return ExitCode::from(2);
                        }
                    },
                };
            }
            "--verbose" => verbose = true,
            "--events" => events = true,
            "--first-failure" => first_failure = true,
            other => {
                eprintln!("unknown argument {other}; {usage}");
                return ExitCode::from(2);
            }
        }
    }
    let began = Instant::now();
    let next = AtomicU64::new(start);
    let end = start + seeds;
    let total = Mutex::new(SimStats::default());
    let failures: Mutex<Vec<SimFailure>> = Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for _ in 0..jobs {
            scope.spawn(|| {
                let mut mine = SimStats::default();
                loop {
                    let seed = next.fetch_add(1, Ordering::Relaxed);
                    if seed >= end {
                        break;
                    }
                    if first_failure && !failures.lock().expect("no panics").is_empty() {
                        break;
                    }
                    let config = mix.config(seed);
                    if events {
                        eprintln!("seed {seed}: {config:?}");
                    }
                    let mut sim = Sim::new(config);
                    if events {
                        sim = sim.print_events();
                    }
                    match sim.run() {
                        Ok(stats) => {
                            if verbose {
                                println!("seed {seed}: {stats}");
                            }
                            mine.add(&stats);
                        }
                        Err(failure) => {
                            eprintln!("{failure}");
                            failures.lock().expect("no panics").push(failure);
                        }
                    }
                }
                total.lock().expect("no panics").add(&mine);
            });
        }
    });
    let total = total.into_inner().expect("no panics");
    let failures = failures.into_inner().expect("no panics");
    println!(
        "sim: seeds {seeds} (start {start}, nodes {nodes_arg}) {total} violations {} in {:.1}s",
        failures.len(),
        began.elapsed().as_secs_f64()
    );
    if failures.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
