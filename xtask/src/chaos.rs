//! `cargo xtask chaos`: builds the workspace and runs the chaos program
//! (`raft-kv/examples/chaos`): real raft-kv processes, concurrent clients, a
//! seeded nemesis, and a linearizability check of the history (see
//! `raft-kv/examples/chaos/README.md`).

use std::path::PathBuf;
use std::process::Command;

use anyhow::{Result, bail};
use clap::Args;

/// Flags of `cargo xtask chaos`, passed on to the chaos program.
#[derive(Args, Debug, Clone)]
pub(crate) struct ChaosArgs {
    /// How long clients and nemesis run (e.g. 60s, 2m).
    #[arg(long, default_value = "60s")]
    pub(crate) duration: String,
    /// Initial voters.
    #[arg(long, default_value_t = 5)]
    pub(crate) nodes: u64,
    /// Concurrent clients.
    #[arg(long, default_value_t = 10)]
    pub(crate) clients: u64,
    /// Seed of the nemesis schedule and workload (random if unset; a failing
    /// run prints the command that reruns it).
    #[arg(long)]
    pub(crate) seed: Option<u64>,
    /// Keep the run's files (history, node logs, report) even if it passes.
    #[arg(long)]
    pub(crate) keep: bool,
    /// TEST ONLY: run nodes with a deliberate bug (`stale-reads`).
    #[arg(long, hide = true)]
    pub(crate) broken: Option<String>,
    /// Pass only if the checker finds a violation (with --broken).
    #[arg(long, hide = true)]
    pub(crate) expect_violation: bool,
    /// How clients read: `linearizable` (ReadIndex) or `lease` (nodes run
    /// with lease reads on; the SIGSTOP nemesis tests the lease).
    #[arg(long, default_value = "linearizable")]
    pub(crate) reads: String,
    /// Let faults overlap (a kill during a partition, a pause during a
    /// membership change, a transfer while a node is down, ...); the report
    /// lists each combination that ran.
    #[arg(long)]
    pub(crate) overlap: bool,
    /// How the clients reach the cluster: `native` (raft-kv's client) or
    /// `etcd` (the etcd-client crate through the nodes' etcd v3 API).
    #[arg(long, default_value = "native")]
    pub(crate) api: String,
}

impl ChaosArgs {
    /// The 60-second, 5-node runs of `cargo xtask test`: with ReadIndex
    /// reads, or with lease reads; with overlapping faults or not.
    pub(crate) fn for_ci(reads: &str, overlap: bool) -> Self {
        Self {
            duration: "60s".into(),
            nodes: 5,
            clients: 10,
            seed: None,
            keep: false,
            broken: None,
            expect_violation: false,
            reads: reads.into(),
            overlap,
            api: "native".into(),
        }
    }

    /// The same run, its clients going through `api`.
    pub(crate) fn through(mut self, api: &str) -> Self {
        self.api = api.into();
        self
    }
}

fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => {
            let dir = PathBuf::from(dir);
            if dir.is_absolute() {
                dir
            } else {
                crate::workspace_root().join(dir)
            }
        }
        None => crate::workspace_root().join("target"),
    }
}

/// Builds everything (the same build as the test suite's, so nothing is
/// rebuilt twice), then runs the chaos program.
pub(crate) fn run(args: &ChaosArgs, build: bool) -> Result<()> {
    if build {
        crate::system::ready_to_build()?;
        crate::system::ensure(crate::system::TEST_PACKAGES)?;
        let mut cmd = crate::cargo();
        cmd.args(["build", "--workspace", "--all-targets", "--all-features"]);
        crate::step("cargo build", cmd)?;
    }
    let program = target_dir().join("debug/examples/chaos");
    if !program.is_file() {
        bail!(
            "the chaos program is missing at {} after the build",
            program.display()
        );
    }
    let mut cmd = Command::new(program);
    cmd.args([
        "--duration",
        &args.duration,
        "--nodes",
        &args.nodes.to_string(),
        "--clients",
        &args.clients.to_string(),
        "--out",
        &target_dir().join("chaos").display().to_string(),
    ]);
    if let Some(seed) = args.seed {
        cmd.args(["--seed", &seed.to_string()]);
    }
    if args.keep {
        cmd.arg("--keep");
    }
    if let Some(mode) = &args.broken {
        cmd.args(["--broken", mode]);
    }
    if args.expect_violation {
        cmd.arg("--expect-violation");
    }
    cmd.args(["--reads", &args.reads, "--api", &args.api]);
    if args.overlap {
        cmd.arg("--overlap");
    }
    crate::step("chaos", cmd)
}
