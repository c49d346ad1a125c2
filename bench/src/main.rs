//! `raft-bench`: the etcd side of `cargo xtask bench`, and its report.
//!
//! - `raft-bench etcd --endpoints URL,... [--cacert F --cert F --key F]
//!   --clients C --op put|get --pids P,...`: the closed loop of `raft-cli
//!   bench` against etcd; prints one JSON line.
//! - `raft-bench report --results FILE --out DIR`: report.md and the plots
//!   from a run's JSON lines.

mod etcd;
mod report;
mod stats;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// mimalloc, as raft-cli and raft-kv use: the two load generators run with
/// the same allocator.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "raft-bench",
    about = "etcd load and the report of `cargo xtask bench`"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Closed-loop load against etcd; prints one JSON line.
    Etcd(etcd::EtcdArgs),
    /// Writes report.md, throughput.png and p99.png from a run's JSON lines.
    Report(report::ReportArgs),
}

fn main() -> ExitCode {
    let outcome = match Cli::parse().command {
        Command::Etcd(args) => tokio::runtime::Runtime::new()
            .map_err(anyhow::Error::from)
            .and_then(|rt| rt.block_on(etcd::run(args)))
            .map(|line| println!("{line}")),
        Command::Report(args) => report::run(args).map(|path| println!("{}", path.display())),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("raft-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}
