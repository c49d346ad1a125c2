//! `etcd-diff`: raft-kv's etcd API against a real etcd, operation by
//! operation (`cargo xtask etcd-diff` runs it). Exits 1 with the shortest
//! sequence found when the two answer differently.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use etcd_client_tests::diff::{self, Setup};

#[derive(Parser)]
#[command(
    about = "Sends the same random operations to raft-kv's etcd API and to a real etcd \
                   (the `etcd` binary, Debian's etcd-server) and compares every answer"
)]
struct Args {
    /// The run's seed (every case's operations follow from it).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Operations in all.
    #[arg(long, default_value_t = 10_000)]
    ops: usize,
    /// Operations per case (each case starts both servers afresh).
    #[arg(long, default_value_t = 1_000)]
    case_len: usize,
    /// raft-kv nodes.
    #[arg(long, default_value_t = 3)]
    nodes: u64,
    /// Where the servers keep their data (e.g. /dev/shm for speed).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Runs spent shrinking a difference.
    #[arg(long, default_value_t = 60)]
    shrink_attempts: usize,
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("error")),
        )
        .init();
    let args = Args::parse();
    let setup = Setup {
        nodes: args.nodes,
        dir: args.dir,
    };
    match diff::run(
        &setup,
        args.seed,
        args.ops,
        args.case_len,
        args.shrink_attempts,
    )
    .await
    {
        Ok(report) => {
            println!(
                "etcd-diff: seed {}: {} operations in {} cases, {:.0} s ({:.0} operations/s)",
                args.seed,
                report.ops,
                report.cases,
                report.seconds,
                report.ops as f64 / report.seconds
            );
            match report.mismatch {
                None => {
                    println!("etcd-diff: 0 mismatches");
                    ExitCode::SUCCESS
                }
                Some(found) => {
                    println!("{found}");
                    ExitCode::FAILURE
                }
            }
        }
        Err(e) => {
            eprintln!("etcd-diff: {e:#}");
            ExitCode::from(2)
        }
    }
}
