//! `cargo xtask`: the project's automation, as plain Rust.
//!
//! - `cargo xtask test`: checks system packages, then runs fmt, clippy and the
//!   whole test suite (what CI runs).
//! - `cargo xtask sim --seeds N [--start S] [--nodes K|grown|mix] [--jobs J]`:
//!   the deterministic simulator over any range of seeds.
//! - `cargo xtask cluster [--nodes 3] [--detach] [--debug]`, `cluster spawn
//!   ID`, `cluster stop`: a local cluster of raft-kv processes (see
//!   `cluster.rs`).
//! - `cargo xtask mutants [--only NAME] [--list]`: each of raft-core's
//!   safety rules broken on purpose, each caught by the simulator (see
//!   `mutants.rs`).
//! - `cargo xtask chaos [--duration 60s] [--nodes 5] [--clients 10] [--seed
//!   N] [--reads lease] [--overlap]`: real processes, a nemesis (with
//!   `--overlap`, faults that overlap) and a linearizability check (see
//!   `chaos.rs`).
//! - `cargo xtask bench [--quick]`: raft-kv beside etcd, the report in
//!   target/bench (see `bench.rs`).
//! - `cargo xtask etcd-diff [--ops N] [--seed S] [--nodes K] [--dir D]`:
//!   raft-kv's etcd API against a real etcd, answer by answer
//!   (`etcd-client-tests/src/diff`).
//! - `cargo xtask env`: the exports that let a plain `cargo` reuse the
//!   RocksDB library xtask compiles once per machine (see `rocksdb.rs`).

mod bench;
mod chaos;
mod cluster;
mod mutants;
mod rocksdb;
mod system;

use std::process::{Command, ExitCode};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "cargo xtask",
    about = "Project automation: tests, simulation, local clusters"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Check system packages, then run cargo fmt --check, clippy -D warnings
    /// and the whole test suite. This is what CI runs.
    Test {
        /// Skip fmt and clippy (the tests only).
        #[arg(long)]
        no_lint: bool,
    },
    /// Run the deterministic cluster simulator over a range of seeds.
    Sim {
        /// How many seeds to run.
        #[arg(long, default_value_t = 1000)]
        seeds: u64,
        /// The first seed.
        #[arg(long, default_value_t = 0)]
        start: u64,
        /// The cluster shape: a number of initial voters, `grown` (one
        /// bootstrapped voter, grown by adding learners and promoting them)
        /// or `mix` (the default test mix of 1, 2, 3, 5, 7 voters and grown
        /// clusters).
        #[arg(long, default_value = "5")]
        nodes: String,
        /// Seeds run in parallel (threads); defaults to the CPUs available.
        #[arg(long)]
        jobs: Option<usize>,
        /// Print one line per seed.
        #[arg(long)]
        verbose: bool,
        /// Print every event of every run (for replaying one seed).
        #[arg(long)]
        events: bool,
    },
    /// Start a local cluster: build raft-kv and raft-cli, create
    /// certificates, configurations and data under target/cluster/, start
    /// the nodes on loopback and wait for a leader. Foreground (logs
    /// streamed, Ctrl-C stops every node) unless --detach. Also `cluster
    /// spawn ID` (one more node, for `raft-cli add-node`) and `cluster stop`.
    Cluster(cluster::ClusterArgs),
    /// Chaos test: start raft-kv processes, run concurrent clients while a
    /// seeded nemesis kills, pauses, partitions, changes membership, moves
    /// the leader and forces snapshots; then check the history is
    /// linearizable, no acknowledged write is lost and the nodes converge.
    Chaos(chaos::ChaosArgs),
    /// Mutation tests: break each of raft-core's safety rules on purpose
    /// (in a patched copy of the crate) and show that the simulator catches
    /// every broken rule within a named range of seeds.
    Mutants(mutants::MutantsArgs),
    /// raft-kv beside etcd (TLS on both, plus plaintext etcd for
    /// reference): W1 puts and W2 gets on fresh 3-node clusters, W3
    /// (raft-core alone); writes target/bench/report.md and PNG plots.
    Bench(bench::BenchArgs),
    /// Differential test: the same seeded random operations sent to a real
    /// etcd (Debian's etcd-server) and to raft-kv's etcd port, every answer
    /// compared; a difference is shrunk and printed with its seed. Options
    /// after `--` go to the etcd-diff binary (`--ops`, `--seed`, `--nodes`,
    /// `--case-len`, `--dir`).
    EtcdDiff {
        /// Passed to etcd-diff (see `cargo xtask etcd-diff -- --help`).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Print the shell exports that point a plain `cargo` at the RocksDB
    /// library xtask compiled for this machine (building it first if there
    /// is none): `eval "$(cargo xtask env)"`.
    Env,
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Cmd::Test { no_lint } => test(no_lint),
        Cmd::Cluster(args) => cluster::run(args),
        Cmd::Chaos(args) => chaos::run(&args, true),
        Cmd::Mutants(args) => mutants::run(&args),
        Cmd::Bench(args) => bench::run(&args),
        Cmd::EtcdDiff { args } => {
            system::ready_to_build()?;
            system::ensure(system::TEST_PACKAGES)?;
            let mut cmd = cargo();
            cmd.args([
                "run",
                "--release",
                "-q",
                "-p",
                "etcd-client-tests",
                "--bin",
                "etcd-diff",
                "--",
            ]);
            cmd.args(args);
            step("etcd-diff", cmd)
        }
        Cmd::Env => {
            system::ready_to_build()?;
            for (name, value) in rocksdb::env() {
                println!("export {name}={}", value.display());
            }
            Ok(())
        }
        Cmd::Sim {
            seeds,
            start,
            nodes,
            jobs,
            verbose,
            events,
        } => {
            let jobs = jobs.unwrap_or_else(|| {
                std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
            });
            let mut args = vec![
                "--seeds".to_string(),
                seeds.to_string(),
                "--start".to_string(),
                start.to_string(),
                "--nodes".to_string(),
                nodes,
                "--jobs".to_string(),
                jobs.to_string(),
            ];
            if verbose {
                args.push("--verbose".into());
            }
            if events {
                args.push("--events".into());
            }
            let mut cmd = cargo();
            cmd.args([
                "run",
                "--release",
                "-q",
                "-p",
                "raft-core",
                "--features",
                "testing",
                "--example",
                "sim",
                "--",
            ]);
            cmd.args(args);
            step("simulator", cmd)
        }
    }
}

/// A cargo command with the environment a user's own `cargo` would have.
///
/// `cargo run` (which `cargo xtask` is) sets `CARGO_PKG_NAME`,
/// `CARGO_MANIFEST_DIR` and friends for xtask. Some build scripts (ring's)
/// ask to rerun when those change, so passing them on would rebuild them,
/// and everything above them, whenever a user alternates `cargo xtask test`
/// with a plain `cargo test`.
fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    for (name, _) in std::env::vars_os() {
        let Some(name) = name.to_str() else { continue };
        if name.starts_with("CARGO_PKG_")
            || name.starts_with("CARGO_MANIFEST_")
            || matches!(
                name,
                "CARGO_CRATE_NAME" | "CARGO_BIN_NAME" | "CARGO_PRIMARY_PACKAGE"
            )
        {
            cmd.env_remove(name);
        }
    }
    cmd.envs(rocksdb::env());
    cmd
}

/// Runs a command in the workspace root, failing with its name.
fn step(name: &str, mut cmd: Command) -> Result<()> {
    cmd.current_dir(workspace_root());
    let args: Vec<_> = cmd.get_args().map(|a| a.to_string_lossy()).collect();
    eprintln!(
        "xtask: {name}: {} {}",
        cmd.get_program().to_string_lossy(),
        args.join(" ")
    );
    let status = cmd
        .status()
        .with_context(|| format!("could not start {name}"))?;
    if !status.success() {
        bail!("{name} failed ({status})");
    }
    Ok(())
}

fn workspace_root() -> std::path::PathBuf {
    // `cargo run` sets CARGO_MANIFEST_DIR at run time: trust it over the
    // compile-time value, which belongs to whichever checkout last built
    // the xtask binary in a shared target directory.
    let manifest_dir = std::env::var_os("CARGO_MANIFEST_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| env!("CARGO_MANIFEST_DIR").into());
    manifest_dir
        .parent()
        .expect("xtask is in the workspace")
        .to_path_buf()
}

/// The client side builds alone, without RocksDB: raft-kv's `client`
/// feature and raft-cli (which uses it).
fn client_without_rocksdb() -> Result<()> {
    let client = [
        "-p",
        "raft-kv",
        "--no-default-features",
        "--features",
        "client",
    ];
    let mut build = cargo();
    build.arg("build").args(client);
    step("raft-kv client feature alone", build)?;
    for package in [&client[..], &["-p", "raft-cli"][..]] {
        let output = cargo()
            .arg("tree")
            .args(package)
            .args(["-e", "normal,build", "--prefix", "none"])
            .current_dir(workspace_root())
            .output()
            .context("could not run cargo tree")?;
        if !output.status.success() {
            bail!(
                "cargo tree {} failed: {}",
                package.join(" "),
                String::from_utf8_lossy(&output.stderr)
            );
        }
        let tree = String::from_utf8_lossy(&output.stdout);
        if let Some(line) = tree.lines().find(|l| {
            ["rocksdb", "raft-storage-rocks", "clang-sys"]
                .iter()
                .any(|c| l.contains(c))
        }) {
            bail!(
                "`cargo tree {}` pulls in {line}: the client side must build without RocksDB",
                package.join(" ")
            );
        }
    }
    eprintln!("xtask: the raft-kv client feature and raft-cli build without RocksDB");
    Ok(())
}

fn test(no_lint: bool) -> Result<()> {
    system::ready_to_build()?;
    system::ensure(system::TEST_PACKAGES)?;
    // etcdctl checks the etcd API; its test says so and skips without it.
    if let Err(e) = system::ensure(&["etcd-client"]) {
        eprintln!("xtask: etcdctl is not available, the etcd API test will skip it: {e:#}");
    }
    if !no_lint {
        let mut fmt = cargo();
        fmt.args(["fmt", "--all", "--check"]);
        step("cargo fmt --check", fmt)?;
        let mut clippy = cargo();
        clippy.args([
            "clippy",
            "--workspace",
            "--all-targets",
            "--all-features",
            "--",
            "-D",
            "warnings",
        ]);
        step("cargo clippy", clippy)?;
        let mut doc = cargo();
        doc.args(["doc", "--workspace", "--no-deps", "--all-features"])
            .env("RUSTDOCFLAGS", "-D warnings");
        step("cargo doc", doc)?;
    }
    client_without_rocksdb()?;
    let mut test = cargo();
    test.args(["test", "--workspace", "--all-features", "--no-fail-fast"]);
    step("cargo test", test)?;
    eprintln!("xtask: mutation tests (cargo xtask mutants)");
    mutants::run(&mutants::MutantsArgs::default())?;
    // cargo test built the chaos program and the raft-kv binary. The runs
    // let faults overlap (one fault at a time remains `cargo xtask chaos`
    // without --overlap, and cargo test's broken-mode chaos run).
    chaos::run(&chaos::ChaosArgs::for_ci("linearizable", true), false)?;
    chaos::run(&chaos::ChaosArgs::for_ci("lease", true), false)?;
    // The etcd front door under the same faults, its clients the
    // etcd-client crate.
    chaos::run(
        &chaos::ChaosArgs::for_ci("linearizable", true).through("etcd"),
        false,
    )
}
