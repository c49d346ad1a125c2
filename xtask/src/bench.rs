//! `cargo xtask bench`: raft-kv beside etcd in one run (BENCHMARKS.md).
//!
//! 1. Builds raft-kv and raft-cli (release) and `raft-bench` (bench/, a
//!    workspace of its own: etcd's gRPC client and the plotting crates).
//! 2. W1 (puts at each client count) and W2 (linearizable gets at 256
//!    clients; lease reads, labelled) with `raft-cli bench` on a fresh
//!    3-node cluster of ours.
//! 3. The same on a 3-member etcd cluster from Debian's `etcd-server` with
//!    mutual TLS on client and peer traffic (certificates from a CA made by
//!    `raft-cli certs`), then on a plaintext one for reference, with
//!    `raft-bench etcd`.
//! 4. W3 (raft-core alone, `cargo bench -p raft-core --bench w3`) unless
//!    `--quick`.
//! 5. Memory (part of W4): every server's resident set sampled from /proc
//!    while it is idle after its start and during each measured window
//!    (the peak, per node), for both systems.
//! 6. With `--w4` (several minutes more): a follower restarted on a log of
//!    1,000,000 entries (time until it answers, and until it has applied
//!    them all again), a node added to a cluster holding about 1 GiB of
//!    state (time until the snapshot is installed and it caught up), and
//!    W1 at 256 clients over 10,000,000 keys written first against the same
//!    over W1's key count (the preload stops when the machine's free memory
//!    falls under 2 GiB, and the report says how far it got).
//! 7. `target/bench/report.md` (table, ratios, targets, date, machine,
//!    commit), `throughput.png` and `p99.png`; every JSON line in
//!    `results.jsonl`.
//!
//! Every workload uses 256 B values, 2 s of warm-up and a 10 s window
//! (`--quick`: 1 s and 3 s, three client counts, 10,000 keys: under two
//! minutes once built).

use std::fs::File;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Args;

use crate::cluster::{self, net, process};

/// Debian packages the bench needs beyond the build's: etcd, protoc and
/// protobuf's well-known types for the etcd-client crate, a font for the
/// plots.
const PACKAGES: &[&str] = &[
    "etcd-server",
    "protobuf-compiler",
    "libprotobuf-dev",
    "fonts-dejavu-core",
];

/// `cargo xtask bench`.
#[derive(Args, Debug)]
pub(crate) struct BenchArgs {
    /// A short run: 1, 64 and 256 clients, 1 s warm-up, 3 s windows,
    /// 10,000 keys, no W3.
    #[arg(long)]
    quick: bool,
    /// W1 client counts (default 1,16,64,256,1024).
    #[arg(long, value_delimiter = ',', value_name = "N,...")]
    clients: Option<Vec<usize>>,
    /// Measured seconds per configuration (default 10; 3 with --quick).
    #[arg(long, value_name = "SECS")]
    duration: Option<u64>,
    /// Only raft-kv (no etcd).
    #[arg(long)]
    no_etcd: bool,
    /// Where results.jsonl, report.md and the plots go (default
    /// target/bench).
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// Also W4: a restart on 1,000,000 log entries, a snapshot catch-up
    /// from 4,000,000 keys, and W1 at 256 clients over 10,000,000 keys
    /// against W1's own key count (about 15 minutes more; the 10 M preload
    /// stops when free memory falls under 2 GiB and the report says how far
    /// it got).
    #[arg(long)]
    w4: bool,
}

/// The shape of one run.
struct Plan {
    clients: Vec<usize>,
    warmup: u64,
    duration: u64,
    keys: u64,
    /// Clients of W2.
    readers: usize,
}

impl Plan {
    fn of(args: &BenchArgs) -> Self {
        let (clients, warmup, duration, keys) = if args.quick {
            (vec![1, 64, 256], 1, 3, 10_000)
        } else {
            (vec![1, 16, 64, 256, 1024], 2, 10, 100_000)
        };
        Plan {
            clients: args.clients.clone().unwrap_or(clients),
            warmup,
            duration: args.duration.unwrap_or(duration),
            keys,
            readers: 256,
        }
    }

    /// The arguments both load generators share.
    fn load_args(&self, op: &str, clients: usize) -> Vec<String> {
        self.load_args_over(op, clients, self.keys)
    }

    /// [`Plan::load_args`] over `keys` keys.
    fn load_args_over(&self, op: &str, clients: usize, keys: u64) -> Vec<String> {
        [
            "--op",
            op,
            "--clients",
            &clients.to_string(),
            "--duration",
            &self.duration.to_string(),
            "--warmup",
            &self.warmup.to_string(),
            "--keys",
            &keys.to_string(),
            "--value-size",
            "256",
        ]
        .map(String::from)
        .to_vec()
    }
}

pub(crate) fn run(args: &BenchArgs) -> Result<()> {
    crate::system::ready_to_build()?;
    crate::system::ensure(PACKAGES)?;
    let plan = Plan::of(args);
    let root = crate::workspace_root();
    let out = match &args.out {
        Some(dir) => std::env::current_dir()?.join(dir),
        None => root.join("target/bench"),
    };
    std::fs::create_dir_all(&out).with_context(|| format!("cannot create {}", out.display()))?;
    let bin_dir = cluster::build("release")?;
    let raft_bench = build_raft_bench()?;
    let results_path = out.join("results.jsonl");
    let mut results = Results::create(&results_path)?;
    let started = Instant::now();

    ours(&plan, &bin_dir, &out.join("raft-kv"), &mut results)?;
    if !args.no_etcd {
        for tls in [true, false] {
            etcd(&plan, &bin_dir, &raft_bench, &out, tls, &mut results)?;
        }
    }
    if !args.quick {
        w3(&mut results)?;
    }
    if args.w4 {
        w4_restart(
            &bin_dir,
            &out.join("w4-restart"),
            RESTART_ENTRIES,
            &mut results,
        )?;
        w4_catch_up(
            &bin_dir,
            &out.join("w4-catch-up"),
            CATCH_UP_KEYS,
            &mut results,
        )?;
        for keys in [plan.keys, SCALE_KEYS] {
            w4_puts_over(&plan, &bin_dir, &out.join("w4-scale"), keys, &mut results)?;
        }
    }
    eprintln!(
        "xtask: bench: measured in {:.0} s; writing the report",
        started.elapsed().as_secs_f64()
    );
    let mut report = Command::new(&raft_bench);
    report
        .arg("report")
        .arg("--results")
        .arg(&results_path)
        .arg("--out")
        .arg(&out)
        .arg(format!("--header={}", header(&plan, args.quick)));
    crate::step("raft-bench report", report)?;
    let text = std::fs::read_to_string(out.join("report.md"))?;
    println!("{text}");
    eprintln!(
        "xtask: bench: {} (plots: throughput.png, p99.png beside it)",
        out.join("report.md").display()
    );
    Ok(())
}

/// Builds `raft-bench` (its own workspace) into the main target directory.
fn build_raft_bench() -> Result<PathBuf> {
    let target = cluster::target_directory()?;
    let mut cmd = crate::cargo();
    cmd.args(["build", "--release", "--manifest-path", "bench/Cargo.toml"])
        .arg("--target-dir")
        .arg(&target);
    crate::step("build raft-bench", cmd)?;
    Ok(target.join("release/raft-bench"))
}

/// The run's JSON lines, each tagged with the system it measured.
struct Results {
    file: File,
}

impl Results {
    fn create(path: &Path) -> Result<Self> {
        let file =
            File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
        Ok(Self { file })
    }

    /// Adds `"system": system` to the JSON line `line` and records it.
    fn add(&mut self, system: &str, line: &str) -> Result<()> {
        self.add_with_rss(system, line, None)
    }

    /// [`Results::add`], with the servers' peak resident set per node.
    fn add_with_rss(&mut self, system: &str, line: &str, rss_mib: Option<f64>) -> Result<()> {
        let line = line.trim();
        let Some(rest) = line.strip_prefix('{') else {
            bail!("{system}: expected a JSON line, got {line:?}");
        };
        let rss = rss_mib.map_or(String::new(), |mib| format!("\"rss_mib\":{mib:.1},"));
        let tagged = format!("{{\"system\":\"{system}\",{rss}{rest}");
        eprintln!("xtask: bench: {tagged}");
        writeln!(self.file, "{tagged}")?;
        Ok(())
    }
}

/// The resident set of process `pid` in KiB, from /proc.
fn rss_kib(pid: u32) -> Option<u64> {
    proc_kib(&format!("/proc/{pid}/status"), "VmRSS")
}

/// The field `name` of a /proc file of `name: N kB` lines, in KiB.
fn proc_kib(path: &str, name: &str) -> Option<u64> {
    std::fs::read_to_string(path)
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

/// The servers' resident set now, in MiB per server (their mean).
fn rss_now(pids: &[u32]) -> f64 {
    let total: u64 = pids.iter().filter_map(|p| rss_kib(*p)).sum();
    total as f64 / 1024.0 / pids.len().max(1) as f64
}

/// Samples the servers' resident set every 200 ms while a load runs.
struct RssPeak {
    stop: Arc<AtomicBool>,
    sampler: std::thread::JoinHandle<f64>,
}

impl RssPeak {
    fn start(pids: Vec<u32>) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let sampler = std::thread::spawn(move || {
            let mut peak = 0.0f64;
            while !stopping.load(Ordering::Relaxed) {
                peak = peak.max(rss_now(&pids));
                std::thread::sleep(Duration::from_millis(200));
            }
            peak
        });
        Self { stop, sampler }
    }

    /// The highest mean resident set per server seen, in MiB.
    fn finish(self) -> f64 {
        self.stop.store(true, Ordering::Relaxed);
        self.sampler.join().unwrap_or(0.0)
    }
}

/// An idle line for the report: the servers' resident set once started.
fn idle_line(pids: &[u32]) -> String {
    // Settled: the start's allocations done, nothing asked yet.
    std::thread::sleep(Duration::from_secs(2));
    format!(
        "{{\"rss_mib\":{:.1},\"workload\":\"idle\",\"clients\":0,\"ops\":0,\"secs\":0,\"ops_per_sec\":0}}",
        rss_now(pids)
    )
}

/// The node processes of a cluster `cargo xtask cluster` started in `dir`.
fn cluster_pids(dir: &Path) -> Result<Vec<u32>> {
    Ok(cluster::nodes_in(dir)?.iter().map(|n| n.pid).collect())
}

/// Runs a load generator while sampling the servers' memory; returns the
/// last line it printed and the peak resident set per server.
fn measure_with_rss(cmd: Command, what: &str, pids: &[u32]) -> Result<(String, f64)> {
    let peak = RssPeak::start(pids.to_vec());
    let line = measure(cmd, what);
    let peak = peak.finish();
    Ok((line?, peak))
}

/// Runs a load generator and returns the last line it printed.
fn measure(mut cmd: Command, what: &str) -> Result<String> {
    cmd.stdin(Stdio::null()).stderr(Stdio::inherit());
    let output = cmd
        .output()
        .with_context(|| format!("cannot run the load for {what}"))?;
    if !output.status.success() {
        bail!("the load for {what} failed ({})", output.status);
    }
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .rfind(|l| l.trim_start().starts_with('{'))
        .map(str::to_string)
        .with_context(|| format!("the load for {what} printed no JSON line"))
}

/// A new 3-node cluster of ours in `dir` (one left there from an earlier
/// run is stopped and its data removed), running in the background; the
/// environment raft-cli needs for it.
fn fresh_cluster(
    dir: &Path,
    bin_dir: &Path,
    snapshot_threshold: Option<u64>,
) -> Result<Vec<(&'static str, String)>> {
    if dir.exists() {
        cluster::stop_in(dir)?;
        std::fs::remove_dir_all(dir).with_context(|| format!("cannot remove {}", dir.display()))?;
    }
    cluster::start_detached(dir, 3, bin_dir, snapshot_threshold)
}

/// W1 and W2 on a fresh cluster of ours.
fn ours(plan: &Plan, bin_dir: &Path, dir: &Path, results: &mut Results) -> Result<()> {
    let env = fresh_cluster(dir, bin_dir, None)?;
    let outcome = (|| {
        let pids = cluster_pids(dir)?;
        results.add("raft-kv", &idle_line(&pids))?;
        let workloads = plan
            .clients
            .iter()
            .map(|c| ("put", *c, "linearizable"))
            .chain([
                ("get", plan.readers, "linearizable"),
                ("get", plan.readers, "lease"),
            ]);
        for (op, clients, consistency) in workloads {
            let mut cmd = Command::new(bin_dir.join("raft-cli"));
            cmd.envs(env.iter().map(|(k, v)| (k, v)))
                .args(["--output", "json", "bench"])
                .args(plan.load_args(op, clients))
                .args(["--consistency", consistency]);
            let what = format!("raft-kv {op} ({consistency}) at {clients} clients");
            eprintln!("xtask: bench: {what}");
            let (line, rss) = measure_with_rss(cmd, &what, &pids)?;
            results.add_with_rss("raft-kv", &line, Some(rss))?;
        }
        Ok(())
    })();
    let stopped = cluster::stop_in(dir);
    outcome.and(stopped)
}

/// W4: entries in the log of the restarted follower.
const RESTART_ENTRIES: u64 = 1_000_000;
/// W4: keys of 256 B (with their 14 B names, about 1 GiB) in the state
/// that a new node receives as a snapshot.
const CATCH_UP_KEYS: u64 = 4_000_000;
/// W4: keys in the store for W1 at scale (compared with W1's own count).
const SCALE_KEYS: u64 = 10_000_000;
/// W4: clients of W1 at scale.
const SCALE_CLIENTS: usize = 256;
/// W4: the scale preload stops when the machine has less memory available
/// than this (KiB), before the kernel's OOM killer would act.
const MEMORY_FLOOR_KIB: u64 = 2 << 20;
/// W4: how long a step may take before the run gives up.
const W4_DEADLINE: Duration = Duration::from_secs(900);

/// Writes keys `bench/00000000`.. once each through `raft-cli bench`'s
/// preload (1,024 writers over 100 connections).
fn preload(bin_dir: &Path, env: &[(&str, String)], keys: u64) -> Result<()> {
    let (cmd, what) = preload_command(bin_dir, env, keys);
    eprintln!("xtask: bench: W4: {what}");
    measure(cmd, &what).map(|_| ())
}

/// [`preload`], stopped if the machine's available memory falls under
/// [`MEMORY_FLOOR_KIB`] (three nodes on one machine hold the state three
/// times); `Ok(None)` once every key is written, `Ok(Some(peak))` if it was
/// stopped, with the servers' peak resident set per server in MiB.
fn preload_within_memory(
    bin_dir: &Path,
    env: &[(&str, String)],
    keys: u64,
    pids: &[u32],
) -> Result<Option<f64>> {
    let (mut cmd, what) = preload_command(bin_dir, env, keys);
    eprintln!(
        "xtask: bench: W4: {what} (stopped if free memory falls under {} GiB)",
        MEMORY_FLOOR_KIB >> 20
    );
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| format!("cannot run the load for {what}"))?;
    let mut peak = 0.0f64;
    loop {
        if let Some(status) = child.try_wait()? {
            if !status.success() {
                bail!("the load for {what} failed ({status})");
            }
            return Ok(None);
        }
        peak = peak.max(rss_now(pids));
        if available_memory_kib().is_some_and(|kib| kib < MEMORY_FLOOR_KIB) {
            let _ = child.kill();
            let _ = child.wait();
            return Ok(Some(peak));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// What /proc/meminfo calls MemAvailable, in KiB.
fn available_memory_kib() -> Option<u64> {
    proc_kib("/proc/meminfo", "MemAvailable")
}

/// The preload's command and a description of it.
fn preload_command(bin_dir: &Path, env: &[(&str, String)], keys: u64) -> (Command, String) {
    let mut cmd = Command::new(bin_dir.join("raft-cli"));
    cmd.envs(env.iter().map(|(k, v)| (k, v)))
        .args([
            "--output",
            "json",
            "bench",
            "--op",
            "get",
            "--clients",
            "1024",
        ])
        .args(["--duration", "1", "--warmup", "0", "--value-size", "256"])
        .arg("--keys")
        .arg(keys.to_string());
    (cmd, format!("preloading {keys} keys"))
}

/// Polls `check` every 100 ms until it holds; the time it took.
fn wait_until(what: &str, mut check: impl FnMut() -> bool) -> Result<Duration> {
    let started = Instant::now();
    while !check() {
        if started.elapsed() > W4_DEADLINE {
            bail!(
                "W4: {what} did not happen within {} s",
                W4_DEADLINE.as_secs()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(started.elapsed())
}

/// The nodes of the cluster in `dir`: (id, metrics address).
fn cluster_metrics(dir: &Path) -> Result<Vec<(u64, std::net::SocketAddr)>> {
    Ok(cluster::nodes_in(dir)?
        .iter()
        .map(|n| (n.id, n.metrics))
        .collect())
}

fn metric(address: std::net::SocketAddr, name: &str) -> u64 {
    net::metric(address, name).map_or(0, |v| v as u64)
}

/// W4: a follower restarted on a log of `entries` entries (snapshots off
/// meanwhile, so the whole log is replayed).
fn w4_restart(bin_dir: &Path, dir: &Path, entries: u64, results: &mut Results) -> Result<()> {
    let env = fresh_cluster(dir, bin_dir, Some(entries * 10))?;
    let outcome = (|| {
        preload(bin_dir, &env, entries)?;
        let nodes = cluster_metrics(dir)?;
        let leader = net::health(nodes[0].1)
            .and_then(|h| h.leader())
            .context("W4: no leader known")?;
        let &(follower, follower_metrics) = nodes
            .iter()
            .find(|(id, _)| *id != leader)
            .context("W4: no follower")?;
        let leader_metrics = nodes.iter().find(|(id, _)| *id == leader).map(|n| n.1);
        let commit = metric(
            leader_metrics.context("W4: no leader")?,
            "raft_commit_index",
        );
        wait_until("the follower applying everything", || {
            metric(follower_metrics, "raft_applied_index") >= commit
        })?;
        // No snapshot was taken, so the log starts at 1 and holds every
        // entry applied (the log-bound gauges are refreshed only every few
        // seconds; the applied index at once).
        let log = metric(follower_metrics, "raft_applied_index");
        eprintln!("xtask: bench: W4: restarting node-{follower} on a log of {log} entries");
        let restarted = Instant::now();
        cluster::restart_in(dir, follower)?;
        wait_until("the restarted follower answering", || {
            net::health(follower_metrics).is_some_and(|h| h.knows_leader())
        })?;
        let serving = restarted.elapsed();
        wait_until("the restarted follower applying its log again", || {
            metric(follower_metrics, "raft_applied_index") >= commit
        })?;
        let caught_up = restarted.elapsed();
        results.add(
            "raft-kv",
            &format!(
                "{{\"workload\":\"w4-restart\",\"clients\":0,\"ops\":0,\"secs\":{:.2},\
                 \"ops_per_sec\":0,\"entries\":{log},\"serving_secs\":{:.2},\"caught_up_secs\":{:.2}}}",
                caught_up.as_secs_f64(),
                serving.as_secs_f64(),
                caught_up.as_secs_f64()
            ),
        )
    })();
    finish_w4(dir, outcome)
}

/// Stops a W4 cluster and removes its data (gigabytes) once measured;
/// after a failure the data stays for a look.
fn finish_w4(dir: &Path, outcome: Result<()>) -> Result<()> {
    let stopped = cluster::stop_in(dir);
    if outcome.is_ok() && stopped.is_ok() {
        std::fs::remove_dir_all(dir).with_context(|| format!("cannot remove {}", dir.display()))?;
    }
    outcome.and(stopped)
}

/// W4: a node added to a cluster holding `keys` keys of 256 B, caught up
/// by a snapshot (one is taken at the end of the preload, and the log
/// compacted, so nothing else can bring it up to date).
fn w4_catch_up(bin_dir: &Path, dir: &Path, keys: u64, results: &mut Results) -> Result<()> {
    // One snapshot, once nearly every key is in.
    let env = fresh_cluster(dir, bin_dir, Some(keys - keys / 100))?;
    let outcome = (|| {
        preload(bin_dir, &env, keys)?;
        let nodes = cluster_metrics(dir)?;
        eprintln!("xtask: bench: W4: waiting for every node's snapshot and compaction");
        wait_until("every node compacting its log", || {
            nodes
                .iter()
                .all(|(_, m)| metric(*m, "raft_first_log_index") > 1)
        })?;
        let snapshot_bytes = snapshot_size(dir, nodes[0].0);
        let leader = net::health(nodes[0].1)
            .and_then(|h| h.leader())
            .context("W4: no leader known")?;
        let leader_metrics = nodes
            .iter()
            .find(|(id, _)| *id == leader)
            .map(|n| n.1)
            .context("W4: no leader")?;
        let (listen, joiner_metrics) = cluster::spawn_in(dir, 4)?;
        let commit = metric(leader_metrics, "raft_commit_index");
        eprintln!(
            "xtask: bench: W4: adding node-4 to a state of {:.0} MiB (snapshot file)",
            snapshot_bytes as f64 / (1 << 20) as f64
        );
        let added = Instant::now();
        let mut cmd = Command::new(bin_dir.join("raft-cli"));
        cmd.envs(env.iter().map(|(k, v)| (k, v)))
            .args(["add-node", "--learner", "4"])
            .arg(listen.to_string());
        crate::step("raft-cli add-node 4", cmd)?;
        wait_until("node-4 catching up", || {
            metric(joiner_metrics, "raft_applied_index") >= commit
        })?;
        let caught_up = added.elapsed();
        results.add(
            "raft-kv",
            &format!(
                "{{\"workload\":\"w4-catch-up\",\"clients\":0,\"ops\":0,\"secs\":{:.2},\
                 \"ops_per_sec\":0,\"keys\":{keys},\"snapshot_bytes\":{snapshot_bytes},\"caught_up_secs\":{:.2}}}",
                caught_up.as_secs_f64(),
                caught_up.as_secs_f64()
            ),
        )
    })();
    finish_w4(dir, outcome)
}

/// W4: W1's puts at [`SCALE_CLIENTS`] clients over `keys` keys, every one
/// of them written first (a fresh cluster with the default snapshot
/// policy, so snapshots of the whole state happen as they would).
fn w4_puts_over(
    plan: &Plan,
    bin_dir: &Path,
    dir: &Path,
    keys: u64,
    results: &mut Results,
) -> Result<()> {
    let env = fresh_cluster(dir, bin_dir, None)?;
    let outcome = (|| {
        let pids = cluster_pids(dir)?;
        if let Some(peak) = preload_within_memory(bin_dir, &env, keys, &pids)? {
            // How far it got: the leader's applied index counts the keys
            // written (and a few sessions).
            let written = cluster_metrics(dir)?
                .iter()
                .map(|(_, m)| metric(*m, "raft_applied_index"))
                .max()
                .unwrap_or(0);
            eprintln!(
                "xtask: bench: W4: stopped the preload at about {written} keys: free memory fell under {} GiB",
                MEMORY_FLOOR_KIB >> 20
            );
            return results.add(
                "raft-kv",
                &format!(
                    "{{\"rss_mib\":{peak:.1},\"workload\":\"w4-put\",\"keys\":{keys},\"clients\":{SCALE_CLIENTS},\
                     \"ops\":0,\"secs\":0,\"ops_per_sec\":0,\"stopped_at_keys\":{written},\
                     \"memory_floor_mib\":{}}}",
                    MEMORY_FLOOR_KIB >> 10
                ),
            );
        }
        let mut cmd = Command::new(bin_dir.join("raft-cli"));
        cmd.envs(env.iter().map(|(k, v)| (k, v)))
            .args(["--output", "json", "bench"])
            .args(plan.load_args_over("put", SCALE_CLIENTS, keys));
        let what = format!("W4: puts at {SCALE_CLIENTS} clients over {keys} keys");
        eprintln!("xtask: bench: {what}");
        let (line, rss) = measure_with_rss(cmd, &what, &pids)?;
        let from = "\"workload\":\"put\"";
        if !line.contains(from) {
            bail!("{what}: the load printed no put workload: {line}");
        }
        let line = line.replacen(from, &format!("\"workload\":\"w4-put\",\"keys\":{keys}"), 1);
        results.add_with_rss("raft-kv", &line, Some(rss))
    })();
    finish_w4(dir, outcome)
}

/// The size of the largest file under node `id`'s data directory whose
/// name says snapshot.
fn snapshot_size(dir: &Path, id: u64) -> u64 {
    fn walk(path: &Path, best: &mut u64) {
        let Ok(entries) = std::fs::read_dir(path) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                walk(&path, best);
            } else if path.to_string_lossy().contains("snap")
                && let Ok(meta) = entry.metadata()
            {
                *best = (*best).max(meta.len());
            }
        }
    }
    let mut best = 0;
    walk(&dir.join(format!("node-{id}")), &mut best);
    best
}

/// An etcd cluster of three members on loopback.
struct Etcd {
    children: Vec<Child>,
    endpoints: Vec<String>,
}

impl Etcd {
    fn pids(&self) -> String {
        self.children
            .iter()
            .map(|c| c.id().to_string())
            .collect::<Vec<_>>()
            .join(",")
    }

    fn stop(mut self) {
        for child in &self.children {
            process::signal(child.id(), libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        for child in &mut self.children {
            while Instant::now() < deadline && matches!(child.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Certificates for the TLS cluster, from a CA of its own: a node
/// certificate per member (server and client use, for 127.0.0.1) and a
/// client certificate.
fn etcd_certs(bin_dir: &Path, dir: &Path) -> Result<()> {
    const CLUSTER: &str = "etcd-bench";
    cluster::certs_ca(bin_dir, dir, CLUSTER)?;
    for id in 1..=3 {
        cluster::certs_node(bin_dir, dir, id, CLUSTER)?;
    }
    cluster::certs_client(bin_dir, dir, "bench", "readwrite", CLUSTER)
}

fn start_etcd(dir: &Path, tls: bool) -> Result<Etcd> {
    let ports = net::free_tcp_ports(6)?;
    let scheme = if tls { "https" } else { "http" };
    let url = |port: u16| format!("{scheme}://127.0.0.1:{port}");
    let initial: Vec<String> = (0..3)
        .map(|i| format!("m{}={}", i + 1, url(ports[3 + i])))
        .collect();
    let mut etcd = Etcd {
        children: Vec::new(),
        endpoints: (0..3).map(|i| url(ports[i])).collect(),
    };
    for i in 0..3 {
        let name = format!("m{}", i + 1);
        let log = File::create(dir.join(format!("{name}.log")))?;
        let mut cmd = Command::new("etcd");
        cmd.arg("--name")
            .arg(&name)
            .arg("--data-dir")
            .arg(dir.join(&name))
            .arg("--listen-client-urls")
            .arg(url(ports[i]))
            .arg("--advertise-client-urls")
            .arg(url(ports[i]))
            .arg("--listen-peer-urls")
            .arg(url(ports[3 + i]))
            .arg("--initial-advertise-peer-urls")
            .arg(url(ports[3 + i]))
            .arg("--initial-cluster")
            .arg(initial.join(","))
            .args([
                "--initial-cluster-state",
                "new",
                "--initial-cluster-token",
                "bench",
                "--logger",
                "zap",
                "--log-level",
                "warn",
            ])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        if tls {
            let file = |f: String| dir.join(f).display().to_string();
            let (cert, key) = (
                file(format!("node-{}.pem", i + 1)),
                file(format!("node-{}.key", i + 1)),
            );
            cmd.args(["--cert-file", &cert, "--key-file", &key])
                .args(["--trusted-ca-file", &file("ca.pem".into())])
                .arg("--client-cert-auth")
                .args(["--peer-cert-file", &cert, "--peer-key-file", &key])
                .args(["--peer-trusted-ca-file", &file("ca.pem".into())])
                .arg("--peer-client-cert-auth");
        }
        match cmd.spawn() {
            Ok(child) => etcd.children.push(child),
            Err(e) => {
                etcd.stop();
                return Err(e)
                    .context("cannot start etcd; install it with `apt-get install etcd-server`");
            }
        }
    }
    Ok(etcd)
}

/// W1 and W2 on etcd, with TLS or without.
fn etcd(
    plan: &Plan,
    bin_dir: &Path,
    raft_bench: &Path,
    out: &Path,
    tls: bool,
    results: &mut Results,
) -> Result<()> {
    let system = if tls { "etcd-tls" } else { "etcd-plaintext" };
    let dir = out.join(system);
    if dir.exists() {
        std::fs::remove_dir_all(&dir)
            .with_context(|| format!("cannot remove {}", dir.display()))?;
    }
    std::fs::create_dir_all(&dir)?;
    if tls {
        etcd_certs(bin_dir, &dir)?;
    }
    eprintln!(
        "xtask: bench: starting a 3-member etcd cluster ({system}) in {}",
        dir.display()
    );
    let etcd = start_etcd(&dir, tls)?;
    let outcome = (|| {
        let pids: Vec<u32> = etcd.children.iter().map(|c| c.id()).collect();
        results.add(system, &idle_line(&pids))?;
        let workloads = plan
            .clients
            .iter()
            .map(|c| ("put", *c))
            .chain([("get", plan.readers)]);
        for (op, clients) in workloads {
            let mut cmd = Command::new(raft_bench);
            cmd.arg("etcd")
                .arg("--endpoints")
                .arg(etcd.endpoints.join(","))
                .arg("--pids")
                .arg(etcd.pids())
                .args(plan.load_args(op, clients));
            if tls {
                cmd.arg("--cacert")
                    .arg(dir.join("ca.pem"))
                    .arg("--cert")
                    .arg(dir.join("bench.pem"))
                    .arg("--key")
                    .arg(dir.join("bench.key"));
            }
            let what = format!("{system} {op} at {clients} clients");
            eprintln!("xtask: bench: {what}");
            let (line, rss) = measure_with_rss(cmd, &what, &pids)?;
            results.add_with_rss(system, &line, Some(rss))?;
        }
        Ok(())
    })();
    etcd.stop();
    if outcome.is_err() {
        for i in 1..=3 {
            eprintln!(
                "xtask: bench: the end of etcd member m{i}'s log:\n{}",
                process::tail(&dir.join(format!("m{i}.log")), 10)
            );
        }
    }
    outcome
}

/// W3: raft-core alone.
fn w3(results: &mut Results) -> Result<()> {
    let mut cmd = crate::cargo();
    cmd.current_dir(crate::workspace_root()).args([
        "bench",
        "-q",
        "-p",
        "raft-core",
        "--bench",
        "w3",
        "--",
        "--secs",
        "3",
    ]);
    cmd.stdin(Stdio::null()).stderr(Stdio::inherit());
    eprintln!("xtask: bench: W3 (cargo bench -p raft-core --bench w3)");
    let output = cmd.output().context("cannot run cargo bench")?;
    if !output.status.success() {
        bail!(
            "cargo bench -p raft-core --bench w3 failed ({})",
            output.status
        );
    }
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        if line.trim_start().starts_with('{') {
            results.add("raft-core", line)?;
        }
    }
    Ok(())
}

/// Date, machine, commit and settings, for the report's header.
fn header(plan: &Plan, quick: bool) -> String {
    let run = |program: &str, args: &[&str]| {
        Command::new(program)
            .args(args)
            .current_dir(crate::workspace_root())
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_else(|| "unknown".into())
    };
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|m| m.trim_start_matches([' ', '\t', ':']).to_string())
        .unwrap_or_else(|| "unknown CPU".into());
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let memory = proc_kib("/proc/meminfo", "MemTotal").map_or("unknown".into(), |kb| {
        format!("{:.0} GiB", kb as f64 / 1024.0 / 1024.0)
    });
    let dirty = !run("git", &["status", "--porcelain", "--untracked-files=no"]).is_empty();
    let etcd_version = run("etcd", &["--version"]);
    format!(
        "- date: {date}\n- machine: {cpus} CPUs ({model}), {memory}, load average before the run: {load}\n\
         - commit: {commit}{dirty}\n- etcd: {etcd}\n\
         - settings: {warmup} s warm-up, {duration} s window, {keys} keys, 256 B values, \
         clients sharing min(clients, 100) connections, requests to the leader{quick}",
        date = run("date", &["-u", "+%Y-%m-%d %H:%M UTC"]),
        load = std::fs::read_to_string("/proc/loadavg")
            .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
            .unwrap_or_default(),
        commit = run("git", &["rev-parse", "--short", "HEAD"]),
        dirty = if dirty {
            " (with uncommitted changes)"
        } else {
            ""
        },
        etcd = etcd_version.lines().next().unwrap_or("unknown"),
        warmup = plan.warmup,
        duration = plan.duration,
        keys = plan.keys,
        quick = if quick { " (--quick)" } else { "" },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_fields_are_read_in_kib_by_their_whole_name() {
        let total = proc_kib("/proc/meminfo", "MemTotal").expect("MemTotal");
        assert!(total > 0);
        assert!(available_memory_kib().is_some_and(|kib| kib <= total));
        assert_eq!(proc_kib("/proc/meminfo", "MemTot"), None);
        assert!(rss_kib(std::process::id()).is_some_and(|kib| kib > 0));
    }
}
