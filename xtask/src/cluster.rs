//! `cargo xtask cluster`: a local raft-kv cluster of processes on loopback.
//!
//! - `cargo xtask cluster [--nodes 3] [--debug] [--detach]` checks system
//!   packages, builds `raft-kv` and `raft-cli`, creates certificates (with
//!   `raft-cli certs`), configurations and data directories under
//!   `target/cluster/`, picks free loopback ports, starts the nodes and waits
//!   until every node knows the leader. In the foreground it streams the
//!   nodes' logs prefixed with `[node-N]` and stops every node cleanly on
//!   Ctrl-C; with `--detach` it returns once the leader is known.
//! - `cargo xtask cluster spawn ID` starts one more node, empty and waiting
//!   to be added with `raft-cli add-node`.
//! - `cargo xtask cluster stop` stops every node of the cluster.
//!
//! `target/cluster/cli.env` holds the settings raft-cli reads, so
//! `. target/cluster/cli.env && raft-cli status` works.
//!
//! xtask links no raft crate: it drives cargo and the built binaries as
//! processes.

/// Like eprintln!, but a closed stderr (say, a pipe whose reader quit on
/// Ctrl-C) does not panic: xtask must still stop the nodes.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

/// Like println!, without the panic on a closed stdout.
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

/// Like print!, without the panic on a closed stdout.
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = write!(std::io::stdout(), $($arg)*);
    }};
}

pub(crate) mod net;
pub(crate) mod process;
mod state;

use std::fs::File;
use std::io::{BufRead, BufReader, IsTerminal, Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};

use net::Ports;
use state::{NodeRecord, State, config_path, log_path};

/// The cluster id in every certificate and configuration.
const CLUSTER_ID: &str = "local";
/// The client certificate's name (`<dir>/admin.pem`).
const CLIENT_NAME: &str = "admin";
/// The read-only client certificate beside it (`reader.pem`, `reader.key`):
/// `RAFT_CERT=$dir/reader.pem RAFT_KEY=$dir/reader.key raft-cli get k`.
const READER_NAME: &str = "reader";
/// How long nodes get to stop after SIGTERM before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(10);
/// How long a spawned node gets to answer on its health endpoint.
const SPAWN_TIMEOUT: Duration = Duration::from_secs(30);
/// Milliseconds per Raft tick in the generated configurations.
const TICK_MS: u64 = 50;

/// `cargo xtask cluster` and its subcommands.
#[derive(Args, Debug)]
#[command(args_conflicts_with_subcommands = true)]
pub(crate) struct ClusterArgs {
    #[command(subcommand)]
    action: Option<Action>,
    #[command(flatten)]
    start: StartArgs,
    /// The cluster's directory (certificates, configurations, data, logs,
    /// cli.env). Default: target/cluster in the workspace.
    #[arg(long, global = true, value_name = "DIR")]
    dir: Option<PathBuf>,
}

#[derive(Args, Debug)]
struct StartArgs {
    /// How many nodes to start (ids 1..=N).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=15))]
    nodes: u64,
    /// Return once a leader is elected and leave the nodes running (logs
    /// in DIR/node-N.log); stop them with `cargo xtask cluster stop`.
    #[arg(long)]
    detach: bool,
    /// Build and run debug binaries (quicker to build), same as `--profile dev`.
    #[arg(long, conflicts_with = "profile")]
    debug: bool,
    /// The cargo profile to build and run.
    #[arg(long, default_value = "release", value_name = "NAME")]
    profile: String,
    /// Do not build: run raft-kv and raft-cli from this directory.
    #[arg(long, value_name = "DIR", conflicts_with_all = ["debug", "profile"])]
    bin_dir: Option<PathBuf>,
    /// Seconds to wait for every node to know the leader.
    #[arg(long, default_value_t = 60, value_name = "SECS")]
    timeout: u64,
    /// Let leaders serve lease reads (`[raft] lease_reads = true`; they
    /// rely on bounded clock drift, see raft-kv's README).
    #[arg(long)]
    lease_reads: bool,
    /// Log entries between snapshots (`[snapshot] threshold`; the node's
    /// default is 100,000). A small one shows snapshots and compaction at
    /// work within seconds.
    #[arg(long, value_name = "ENTRIES")]
    snapshot_threshold: Option<u64>,
}

#[derive(Subcommand, Debug)]
enum Action {
    /// Start one more node (empty, with `join = true`) for the running
    /// cluster, and print the `raft-cli add-node` command that adds it.
    Spawn {
        /// The new node's id (not used in the cluster yet).
        #[arg(value_parser = clap::value_parser!(u64).range(1..))]
        id: u64,
    },
    /// Stop every node of the cluster (SIGTERM, then SIGKILL after 10 s).
    Stop,
}

/// Where the cluster lives, and how to refer to it in messages.
struct Cluster {
    /// Absolute.
    dir: PathBuf,
    /// ` --dir DIR` when not the default, for the commands we print.
    dir_flag: String,
}

impl Cluster {
    fn new(dir: Option<PathBuf>) -> Result<Self> {
        let cwd = std::env::current_dir().context("cannot read the current directory")?;
        Ok(match dir {
            Some(dir) => {
                let dir = cwd.join(dir);
                let dir_flag = format!(" --dir {}", shell_quote(&shown(&dir)));
                Cluster { dir, dir_flag }
            }
            None => Cluster {
                dir: crate::workspace_root().join("target").join("cluster"),
                dir_flag: String::new(),
            },
        })
    }

    /// `cargo xtask cluster <sub>` with `--dir` when needed.
    fn command(&self, sub: &str) -> String {
        let sub = if sub.is_empty() {
            String::new()
        } else {
            format!(" {sub}")
        };
        format!("cargo xtask cluster{sub}{}", self.dir_flag)
    }

    fn file(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

pub(crate) fn run(args: ClusterArgs) -> Result<()> {
    let cluster = Cluster::new(args.dir)?;
    match args.action {
        None => start(&cluster, &args.start),
        Some(Action::Spawn { id }) => spawn(&cluster, id),
        Some(Action::Stop) => stop(&cluster),
    }
}

// ---------------------------------------------------------------- start

/// For `cargo xtask bench`: a fresh cluster of `nodes` nodes from the
/// binaries in `bin_dir`, detached, with lease reads allowed, in `dir` (a
/// stopped one there is replaced). Returns the environment that points raft-cli at it.
pub(crate) fn start_detached(
    dir: &Path,
    nodes: u64,
    bin_dir: &Path,
    snapshot_threshold: Option<u64>,
) -> Result<Vec<(&'static str, String)>> {
    let cluster = Cluster::new(Some(dir.to_path_buf()))?;
    start(
        &cluster,
        &StartArgs {
            nodes,
            detach: true,
            debug: false,
            profile: "release".into(),
            bin_dir: Some(bin_dir.to_path_buf()),
            timeout: 60,
            lease_reads: true,
            snapshot_threshold,
        },
    )?;
    let state = State::load(&cluster.dir)?.context("the cluster left no state file")?;
    let endpoints: Vec<String> = state.nodes.iter().map(|n| n.listen.to_string()).collect();
    let file = |name: &str| cluster.file(name).display().to_string();
    Ok(vec![
        ("RAFT_ENDPOINTS", endpoints.join(",")),
        ("RAFT_CA", file("ca.pem")),
        ("RAFT_CERT", file(&format!("{CLIENT_NAME}.pem"))),
        ("RAFT_KEY", file(&format!("{CLIENT_NAME}.key"))),
    ])
}

/// Stops the cluster in `dir` (see `cargo xtask cluster stop`).
pub(crate) fn stop_in(dir: &Path) -> Result<()> {
    stop(&Cluster::new(Some(dir.to_path_buf()))?)
}

/// The nodes recorded for the cluster in `dir`: ids, pids and addresses.
pub(crate) fn nodes_in(dir: &Path) -> Result<Vec<NodeRecord>> {
    Ok(State::load(dir)?
        .with_context(|| format!("no cluster in {}", dir.display()))?
        .nodes)
}

/// Starts node `id` for the running cluster in `dir`, waiting to join (see
/// `cargo xtask cluster spawn`); returns its client address and its
/// metrics address.
pub(crate) fn spawn_in(dir: &Path, id: u64) -> Result<(SocketAddr, SocketAddr)> {
    spawn(&Cluster::new(Some(dir.to_path_buf()))?, id)?;
    let state = State::load(dir)?.context("the cluster left no state file")?;
    let node = state
        .node(id)
        .context("the spawned node is not in the state file")?;
    Ok((node.listen, node.metrics))
}

/// Stops node `id` of the cluster in `dir` (SIGTERM, waiting up to
/// [`STOP_GRACE`] for it to exit) and starts it again on its data and
/// configuration; returns once it is started, with its metrics address.
pub(crate) fn restart_in(dir: &Path, id: u64) -> Result<SocketAddr> {
    let state = State::load(dir)?.with_context(|| format!("no cluster in {}", dir.display()))?;
    let node = *state
        .node(id)
        .with_context(|| format!("node {id} is not in the cluster in {}", dir.display()))?;
    process::signal(node.pid, libc::SIGTERM);
    let deadline = Instant::now() + STOP_GRACE;
    while process::node_alive(node.pid, &config_path(dir, id)) {
        if Instant::now() >= deadline {
            bail!(
                "node-{id} (pid {}) did not stop within {} s",
                node.pid,
                STOP_GRACE.as_secs()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let child = spawn_node(&state.bin_dir, dir, id, Output::LogFile)?;
    let mut state = State::load(dir)?.unwrap_or(state);
    if let Some(record) = state.nodes.iter_mut().find(|n| n.id == id) {
        record.pid = child.child.id();
    }
    state.save(dir)?;
    Ok(node.metrics)
}

fn start(cluster: &Cluster, args: &StartArgs) -> Result<()> {
    let dir = &cluster.dir;
    // Refuse early, before a long build, if a cluster runs there.
    let stale = check_dir(cluster)?;
    let bin_dir = binaries(args)?;
    if stale {
        say!(
            "xtask: {} holds a stopped cluster: removing it and starting a fresh one",
            shown(dir)
        );
        std::fs::remove_dir_all(dir)
            .with_context(|| format!("cannot remove the stale cluster in {}", dir.display()))?;
    }
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;

    let ids: Vec<u64> = (1..=args.nodes).collect();
    let mut state = State {
        bin_dir: bin_dir.clone(),
        supervisor: (!args.detach).then(std::process::id),
        nodes: Vec::new(),
    };
    // Written first: it marks the directory as ours.
    state.save(dir)?;

    say!("xtask: creating certificates in {}", shown(dir));
    certs_ca(&bin_dir, dir, CLUSTER_ID)?;
    for &id in &ids {
        certs_node(&bin_dir, dir, id, CLUSTER_ID)?;
    }
    certs_client(&bin_dir, dir, CLIENT_NAME, "admin", CLUSTER_ID)?;
    certs_client(&bin_dir, dir, READER_NAME, "readonly", CLUSTER_ID)?;

    let ports = net::free_ports(ids.len())?;
    let initial: Vec<String> = ids
        .iter()
        .zip(&ports)
        .map(|(id, p)| format!("{id}={}", p.listen))
        .collect();
    for (&id, p) in ids.iter().zip(&ports) {
        write_config(
            dir,
            id,
            p,
            Membership::Initial(&initial),
            args.lease_reads,
            args.snapshot_threshold,
        )?;
    }
    write_cli_env(cluster, &bin_dir, &ports)?;

    let interrupted = install_signal_flag()?;
    let output = if args.detach {
        Output::LogFile
    } else {
        Output::Stream
    };
    let mut children: Vec<NodeChild> = Vec::new();
    say!(
        "xtask: starting {} node{} of cluster {CLUSTER_ID:?}",
        ids.len(),
        if ids.len() == 1 { "" } else { "s" }
    );
    for (&id, p) in ids.iter().zip(&ports) {
        let child = match spawn_node(&bin_dir, dir, id, output) {
            Ok(child) => child,
            Err(e) => {
                stop_children(dir, &mut children, &interrupted);
                return Err(e);
            }
        };
        state.nodes.push(NodeRecord {
            id,
            pid: child.child.id(),
            listen: p.listen,
            metrics: p.metrics,
            initial: true,
        });
        children.push(child);
        state.save(dir)?;
    }

    let deadline = Duration::from_secs(args.timeout);
    let leader = match wait_for_leader(dir, &state.nodes, &mut children, &interrupted, deadline) {
        Ok(leader) => leader,
        Err(e) => {
            stop_children(dir, &mut children, &interrupted);
            return Err(e);
        }
    };
    print_summary(cluster, &state, &leader, args.detach);
    if args.detach {
        // The nodes run on in their own process group, logging to files.
        drop(children);
        return Ok(());
    }
    supervise(cluster, children, &interrupted)
}

/// Whether `dir` holds a stopped cluster to replace; fails if a cluster
/// runs there or if the directory is not one of ours.
fn check_dir(cluster: &Cluster) -> Result<bool> {
    let dir = &cluster.dir;
    if !dir.exists() {
        return Ok(false);
    }
    match State::load(dir)? {
        Some(state) => {
            let live = state.live_nodes(dir);
            if let Some(pid) = state.live_supervisor() {
                bail!(
                    "a cluster is already running in {} (supervised by `cargo xtask cluster`, pid {pid}); \
                     use it (`. {}/cli.env && raft-cli status`) or stop it first with `{}`",
                    shown(dir),
                    shown(dir),
                    cluster.command("stop")
                );
            }
            if !live.is_empty() {
                let list: Vec<String> = live
                    .iter()
                    .map(|n| format!("node-{} pid {}", n.id, n.pid))
                    .collect();
                bail!(
                    "a cluster is already running in {} ({}); use it (`. {}/cli.env && raft-cli status`) \
                     or stop it first with `{}`",
                    shown(dir),
                    list.join(", "),
                    shown(dir),
                    cluster.command("stop")
                );
            }
            Ok(true)
        }
        None => {
            let empty = std::fs::read_dir(dir)
                .with_context(|| format!("cannot read {}", dir.display()))?
                .next()
                .is_none();
            if empty {
                Ok(false)
            } else {
                bail!(
                    "{} exists but was not made by `cargo xtask cluster` (it has no {}); \
                     remove it or choose another directory with --dir",
                    shown(dir),
                    state::FILE
                )
            }
        }
    }
}

// ---------------------------------------------------------------- build

/// Checks system packages, builds raft-kv and raft-cli, and returns the
/// directory they are in.
fn binaries(args: &StartArgs) -> Result<PathBuf> {
    let bin_dir = match &args.bin_dir {
        Some(dir) => std::env::current_dir()?.join(dir),
        None => {
            let profile = if args.debug { "dev" } else { &args.profile };
            build(profile)?
        }
    };
    for name in ["raft-kv", "raft-cli"] {
        let path = bin_dir.join(name);
        if !path.is_file() {
            bail!(
                "{} not found; build it (`cargo build --release -p raft-kv -p raft-cli`) or drop --bin-dir",
                path.display()
            );
        }
    }
    Ok(bin_dir)
}

pub(crate) fn build(profile: &str) -> Result<PathBuf> {
    crate::system::ready_to_build()?;
    let mut cmd = crate::cargo();
    cmd.arg("build");
    match profile {
        "release" => {
            say!("xtask: building release binaries (--debug builds quicker debug binaries)");
            cmd.args(["--release", "-p", "raft-kv", "-p", "raft-cli"]);
        }
        // The feature set of `cargo test --workspace --all-features` (dev
        // dependencies included, as with --examples), so that the test
        // suite's artifacts are reused rather than RocksDB rebuilt.
        "dev" => {
            cmd.args(["--workspace", "--all-features", "--bins", "--examples"]);
        }
        other => {
            cmd.args(["--profile", other, "-p", "raft-kv", "-p", "raft-cli"]);
        }
    }
    crate::step("build", cmd)?;
    let sub = match profile {
        "dev" | "test" => "debug",
        "release" | "bench" => "release",
        other => other,
    };
    Ok(target_directory()?.join(sub))
}

/// The cargo target directory (honours CARGO_TARGET_DIR and cargo config).
pub(crate) fn target_directory() -> Result<PathBuf> {
    let out = crate::cargo()
        .args(["metadata", "--format-version", "1", "--no-deps"])
        .current_dir(crate::workspace_root())
        .stderr(Stdio::inherit())
        .output()
        .context("cannot run `cargo metadata`")?;
    if !out.status.success() {
        bail!("`cargo metadata` failed ({})", out.status);
    }
    let text = String::from_utf8_lossy(&out.stdout);
    json_string_field(&text, "target_directory")
        .map(PathBuf::from)
        .context("`cargo metadata` printed no target_directory")
}

/// The string value of the first `"key":` in a JSON text (enough for
/// cargo metadata's top-level `target_directory`).
fn json_string_field(json: &str, key: &str) -> Option<String> {
    let pattern = format!("\"{key}\":");
    let start = json.find(&pattern)? + pattern.len();
    let rest = json[start..].trim_start().strip_prefix('"')?;
    let mut out = String::new();
    let mut chars = rest.chars();
    loop {
        match chars.next()? {
            '"' => return Some(out),
            '\\' => match chars.next()? {
                'n' => out.push('\n'),
                't' => out.push('\t'),
                'r' => out.push('\r'),
                'b' => out.push('\u{8}'),
                'f' => out.push('\u{c}'),
                'u' => {
                    let hex: String = chars.by_ref().take(4).collect();
                    out.push(char::from_u32(u32::from_str_radix(&hex, 16).ok()?)?);
                }
                other => out.push(other),
            },
            c => out.push(c),
        }
    }
}

// ---------------------------------------------------------------- files

/// Runs `raft-cli <args> <dir> <more>`, failing with its output.
fn raft_cli(bin_dir: &Path, args: &[&str], dir: &Path, more: &[&str]) -> Result<()> {
    let program = bin_dir.join("raft-cli");
    let out = Command::new(&program)
        .args(args)
        .arg(dir)
        .args(more)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run {}", program.display()))?;
    if !out.status.success() {
        bail!(
            "`raft-cli {} {} {}` failed ({}):\n{}{}\nraft-cli makes the cluster's certificates; \
             check that it is up to date (`cargo build -p raft-cli`)",
            args.join(" "),
            dir.display(),
            more.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr).trim_end()
        );
    }
    Ok(())
}

/// Where the CA of the certificates in `dir` lives: a directory of its own,
/// so its key never sits beside the keys nodes and clients are given.
pub(crate) fn ca_dir(dir: &Path) -> PathBuf {
    dir.join("ca")
}

/// A CA for cluster `cluster` in [`ca_dir`] (`ca.pem`, `ca.key`).
pub(crate) fn certs_ca(bin_dir: &Path, dir: &Path, cluster: &str) -> Result<()> {
    raft_cli(
        bin_dir,
        &["certs", "ca", "--dir"],
        &ca_dir(dir),
        &["--cluster", cluster],
    )
}

/// A client certificate `<name>.pem` / `<name>.key` with `role` (and
/// `ca.pem`) in `dir`, from the CA in [`ca_dir`].
pub(crate) fn certs_client(
    bin_dir: &Path,
    dir: &Path,
    name: &str,
    role: &str,
    cluster: &str,
) -> Result<()> {
    let ca = ca_dir(dir);
    raft_cli(
        bin_dir,
        &["certs", "client", "--dir"],
        dir,
        &[
            "--ca-dir",
            &ca.display().to_string(),
            "--name",
            name,
            "--role",
            role,
            "--cluster",
            cluster,
        ],
    )
}

/// Node `id`'s certificate (server and client use, for 127.0.0.1 and
/// localhost) in `dir`, from the CA in [`ca_dir`].
pub(crate) fn certs_node(bin_dir: &Path, dir: &Path, id: u64, cluster: &str) -> Result<()> {
    let id = id.to_string();
    let ca = ca_dir(dir);
    raft_cli(
        bin_dir,
        &["certs", "node", "--dir"],
        dir,
        &[
            "--ca-dir",
            &ca.display().to_string(),
            "--id",
            &id,
            "--address",
            "127.0.0.1",
            "--address",
            "localhost",
            "--cluster",
            cluster,
        ],
    )
}

enum Membership<'a> {
    /// Bootstrap with these voters (`id=host:port`).
    Initial(&'a [String]),
    /// Start empty and wait for `raft-cli add-node`.
    Join,
}

fn write_config(
    dir: &Path,
    id: u64,
    ports: &Ports,
    membership: Membership,
    lease_reads: bool,
    snapshot_threshold: Option<u64>,
) -> Result<()> {
    let data_dir = dir.join(format!("node-{id}"));
    std::fs::create_dir_all(&data_dir)
        .with_context(|| format!("cannot create {}", data_dir.display()))?;
    let membership = match membership {
        Membership::Initial(voters) => format!(
            "initial_cluster = [{}]",
            voters
                .iter()
                .map(|v| toml_string(v))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        Membership::Join => "join = true".to_string(),
    };
    let text = format!(
        "# Node {id} of the local cluster, written by `cargo xtask cluster`.\n\
         node_id = {id}\n\
         cluster_id = {cluster}\n\
         listen = {listen}\n\
         data_dir = {data}\n\
         {membership}\n\
         metrics_listen = {metrics}\n\
         etcd_listen = {etcd}\n\
         \n\
         [tls]\n\
         ca = {ca}\n\
         cert = {cert}\n\
         key = {key}\n\
         deny_list = {deny}\n\
         \n\
         [raft]\n\
         tick_ms = {TICK_MS}\n\
         lease_reads = {lease_reads}\n{snapshot}",
        snapshot = snapshot_threshold.map_or(String::new(), |n| {
            format!("\n[snapshot]\nthreshold = {n}\n")
        }),
        cluster = toml_string(CLUSTER_ID),
        listen = toml_string(&ports.listen.to_string()),
        data = toml_string(&data_dir.display().to_string()),
        metrics = toml_string(&ports.metrics.to_string()),
        etcd = toml_string(&ports.etcd.to_string()),
        ca = toml_string(&dir.join("ca.pem").display().to_string()),
        cert = toml_string(&dir.join(format!("node-{id}.pem")).display().to_string()),
        key = toml_string(&dir.join(format!("node-{id}.key")).display().to_string()),
        deny = toml_string(&deny_list(dir)?.display().to_string()),
    );
    let path = config_path(dir, id);
    std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))
}

/// The cluster's deny list (revoked certificates, which every node rereads
/// when it changes), created empty.
fn deny_list(dir: &Path) -> Result<PathBuf> {
    let path = dir.join("denied.txt");
    if !path.exists() {
        std::fs::write(
            &path,
            "# Revoked certificates, one SHA-256 fingerprint per line; the nodes reread this file\n\
             # when it changes. Add one with:  raft-cli certs fingerprint FILE.pem >> denied.txt\n",
        )
        .with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(path)
}

/// `cli.env`: what raft-cli reads, as shell variables, and the binaries
/// first on PATH.
fn write_cli_env(cluster: &Cluster, bin_dir: &Path, ports: &[Ports]) -> Result<()> {
    let dir = &cluster.dir;
    let endpoints: Vec<String> = ports.iter().map(|p| p.listen.to_string()).collect();
    let path = cluster.file("cli.env");
    let text = format!(
        "# The local cluster's client settings, written by `cargo xtask cluster`.\n\
         # Use them with:  . {env} && raft-cli status\n\
         export PATH={bin}:\"$PATH\"\n\
         export RAFT_ENDPOINTS={endpoints}\n\
         export RAFT_CA={ca}\n\
         export RAFT_CERT={cert}\n\
         export RAFT_KEY={key}\n\
         # etcdctl (v3 API) against the same cluster:  etcdctl member list\n\
         export ETCDCTL_API=3\n\
         export ETCDCTL_ENDPOINTS={etcd}\n\
         export ETCDCTL_CACERT={ca}\n\
         export ETCDCTL_CERT={cert}\n\
         export ETCDCTL_KEY={key}\n",
        env = shown(&path),
        bin = shell_quote(&bin_dir.display().to_string()),
        endpoints = shell_quote(&endpoints.join(",")),
        etcd = shell_quote(
            &ports
                .iter()
                .map(|p| format!("https://{}", p.etcd))
                .collect::<Vec<_>>()
                .join(",")
        ),
        ca = shell_quote(&dir.join("ca.pem").display().to_string()),
        cert = shell_quote(&dir.join(format!("{CLIENT_NAME}.pem")).display().to_string()),
        key = shell_quote(&dir.join(format!("{CLIENT_NAME}.key")).display().to_string()),
    );
    std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))
}

fn toml_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Single-quotes `s` for sh when it needs quoting.
fn shell_quote(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._-:,=+@%".contains(c))
    {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

/// A path as the user should type it: relative to the current directory
/// when inside it.
fn shown(path: &Path) -> String {
    std::env::current_dir()
        .ok()
        .and_then(|cwd| path.strip_prefix(cwd).ok().map(Path::to_path_buf))
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or_else(|| path.to_path_buf())
        .display()
        .to_string()
}

// ---------------------------------------------------------------- nodes

#[derive(Clone, Copy, PartialEq)]
enum Output {
    /// Piped to xtask, which prints each line prefixed and copies it to
    /// node-N.log.
    Stream,
    /// Straight to node-N.log.
    LogFile,
}

struct NodeChild {
    id: u64,
    child: Child,
    exited: Option<ExitStatus>,
}

impl NodeChild {
    fn poll(&mut self) -> Option<ExitStatus> {
        if self.exited.is_none() {
            if let Ok(Some(status)) = self.child.try_wait() {
                self.exited = Some(status);
            }
        }
        self.exited
    }
}

fn spawn_node(bin_dir: &Path, dir: &Path, id: u64, output: Output) -> Result<NodeChild> {
    use std::os::unix::process::CommandExt;

    let program = bin_dir.join("raft-kv");
    let log = log_path(dir, id);
    let file = File::options()
        .create(true)
        .append(true)
        .open(&log)
        .with_context(|| format!("cannot open {}", log.display()))?;
    let mut cmd = Command::new(&program);
    cmd.arg("--config")
        .arg(config_path(dir, id))
        .current_dir(dir)
        .stdin(Stdio::null())
        // Its own process group: a Ctrl-C in the terminal reaches xtask
        // only, which stops the nodes in order; detached nodes outlive it.
        .process_group(0);
    let colour = output == Output::Stream
        && std::io::stdout().is_terminal()
        && std::env::var_os("NO_COLOR").is_none();
    if !colour {
        cmd.env("NO_COLOR", "1");
    }
    match output {
        Output::Stream => {
            cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        }
        Output::LogFile => {
            let err = file.try_clone().context("cannot duplicate the log file")?;
            cmd.stdout(file).stderr(err);
        }
    }
    let mut child = cmd
        .spawn()
        .with_context(|| format!("cannot start {}", program.display()))?;
    if output == Output::Stream {
        let file = Arc::new(std::sync::Mutex::new(
            File::options().append(true).open(&log)?,
        ));
        let prefix = node_prefix(id, colour);
        if let Some(out) = child.stdout.take() {
            stream_lines(out, prefix.clone(), file.clone());
        }
        if let Some(err) = child.stderr.take() {
            stream_lines(err, prefix, file);
        }
    }
    Ok(NodeChild {
        id,
        child,
        exited: None,
    })
}

fn node_prefix(id: u64, colour: bool) -> String {
    if colour {
        const COLOURS: [u8; 6] = [36, 33, 35, 32, 34, 31];
        format!(
            "\x1b[{}m[node-{id}]\x1b[0m ",
            COLOURS[(id as usize - 1) % COLOURS.len()]
        )
    } else {
        format!("[node-{id}] ")
    }
}

/// Copies each line of `reader` to stdout, prefixed, and to the log file
/// (without colour codes), on a thread of its own.
fn stream_lines(
    reader: impl Read + Send + 'static,
    prefix: String,
    file: Arc<std::sync::Mutex<File>>,
) {
    std::thread::spawn(move || {
        let mut reader = BufReader::new(reader);
        let mut line = Vec::new();
        loop {
            line.clear();
            match reader.read_until(b'\n', &mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
            let text = String::from_utf8_lossy(&line);
            let text = text.trim_end_matches(['\n', '\r']);
            if let Ok(mut f) = file.lock() {
                let _ = writeln!(f, "{}", strip_ansi(text));
            }
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "{prefix}{text}");
            let _ = out.flush();
        }
    });
}

/// Removes ANSI escape sequences (`ESC [ ... letter`).
fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\x1b' && chars.peek() == Some(&'[') {
            chars.next();
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Waits until every node reports on `/health` that it knows a leader;
/// fails early if a node exits, on Ctrl-C, or after `timeout`.
fn wait_for_leader(
    dir: &Path,
    nodes: &[NodeRecord],
    children: &mut [NodeChild],
    interrupted: &AtomicBool,
    timeout: Duration,
) -> Result<net::Health> {
    say!(
        "xtask: waiting for a leader (up to {} s)...",
        timeout.as_secs()
    );
    let started = Instant::now();
    loop {
        if interrupted.load(Ordering::SeqCst) {
            bail!("interrupted while waiting for a leader; the nodes were stopped");
        }
        for child in children.iter_mut() {
            if let Some(status) = child.poll() {
                // Let the log streams catch up.
                std::thread::sleep(Duration::from_millis(300));
                bail!(
                    "node-{} exited during startup ({status}); the end of its log ({}):\n{}",
                    child.id,
                    shown(&log_path(dir, child.id)),
                    process::tail(&log_path(dir, child.id), 20)
                );
            }
        }
        let health: Vec<Option<net::Health>> =
            nodes.iter().map(|n| net::health(n.metrics)).collect();
        if health
            .iter()
            .all(|h| h.as_ref().is_some_and(|h| h.knows_leader()))
        {
            let leader = health
                .into_iter()
                .flatten()
                .next()
                .expect("at least one node");
            say!(
                "xtask: every node knows the leader after {:.1} s",
                started.elapsed().as_secs_f64()
            );
            return Ok(leader);
        }
        if started.elapsed() >= timeout {
            let report: Vec<String> = nodes
                .iter()
                .zip(&health)
                .map(|(n, h)| match h {
                    Some(h) => format!("    node-{}: HTTP {} {}", n.id, h.status, h.body),
                    None => format!(
                        "    node-{}: no answer on http://{}/health",
                        n.id, n.metrics
                    ),
                })
                .collect();
            bail!(
                "no leader known to every node after {} s:\n{}\nthe nodes' logs are in {}/node-N.log; \
                 a slow machine may need a longer --timeout",
                timeout.as_secs(),
                report.join("\n"),
                shown(dir)
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn print_summary(cluster: &Cluster, state: &State, leader: &net::Health, detach: bool) {
    let dir = shown(&cluster.dir);
    let mut out = String::new();
    let leader_text = match (leader.leader(), leader.term()) {
        (Some(l), Some(t)) => format!("; node {l} is the leader (term {t})"),
        (Some(l), None) => format!("; node {l} is the leader"),
        _ => String::new(),
    };
    out.push_str(&format!(
        "\nLocal cluster {CLUSTER_ID:?} is up: {} node{}{leader_text}.\n",
        state.nodes.len(),
        if state.nodes.len() == 1 { "" } else { "s" }
    ));
    for n in &state.nodes {
        out.push_str(&format!(
            "    node-{}  {}  pid {:<7}  http://{}/metrics\n",
            n.id, n.listen, n.pid, n.metrics
        ));
    }
    out.push_str(&format!(
        "Files in {dir}/: certificates, node-N.toml, data in node-N/, logs in node-N.log, cli.env.\n\n"
    ));
    let next = state.nodes.iter().map(|n| n.id).max().unwrap_or(0) + 1;
    out.push_str(&format!(
        "Try this{}:\n\
         \x20   . {dir}/cli.env        # raft-cli's settings, and the binaries on PATH\n\
         \x20   raft-cli status\n\
         \x20   raft-cli put hello world\n\
         \x20   raft-cli get hello\n\
         \x20   {}      # one more node; it prints the add-node command\n\
         \x20   raft-cli add-node {next} 127.0.0.1:PORT\n\
         \x20   {}\n",
        if detach { "" } else { " in another terminal" },
        cluster.command(&format!("spawn {next}")),
        cluster.command("stop"),
    ));
    if detach {
        out.push_str(&format!(
            "\nThe nodes run in the background; stop them with `{}`.\n",
            cluster.command("stop")
        ));
    } else {
        out.push_str("\nPress Ctrl-C to stop every node.\n");
    }
    out!("{out}");
    let _ = std::io::stdout().flush();
}

// ---------------------------------------------------------------- stopping

/// SIGINT, SIGTERM and SIGHUP set the returned flag instead of killing xtask.
fn install_signal_flag() -> Result<Arc<AtomicBool>> {
    let flag = Arc::new(AtomicBool::new(false));
    for signal in [
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGHUP,
    ] {
        signal_hook::flag::register(signal, flag.clone())
            .context("cannot install the Ctrl-C handler")?;
    }
    Ok(flag)
}

/// Runs until Ctrl-C (or `cluster stop`), then stops every node.
fn supervise(
    cluster: &Cluster,
    mut children: Vec<NodeChild>,
    interrupted: &AtomicBool,
) -> Result<()> {
    let colour = std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let mut followed: Vec<u64> = Vec::new();
    for round in 0u64.. {
        // Nodes added by `cluster spawn` log to files: follow them too.
        if round % 10 == 0 {
            for n in spawned_nodes(cluster, &children) {
                if !followed.contains(&n.id) {
                    followed.push(n.id);
                    follow_log(&cluster.dir, n, node_prefix(n.id, colour));
                }
            }
        }
        if interrupted.swap(false, Ordering::SeqCst) {
            say!("\nxtask: stopping every node (press Ctrl-C again to kill them at once)");
            let spawned = spawned_nodes(cluster, &children);
            let ok = stop_all(&cluster.dir, &mut children, &spawned, interrupted);
            if !ok {
                bail!("some nodes could not be stopped; see above");
            }
            say!(
                "xtask: all nodes stopped; data and logs stay in {}",
                shown(&cluster.dir)
            );
            return Ok(());
        }
        let mut running = 0;
        for child in children.iter_mut() {
            if child.exited.is_none() {
                match child.poll() {
                    Some(status) => say!(
                        "xtask: node-{} exited ({status}); {}",
                        child.id,
                        if status.success() {
                            "it was stopped"
                        } else {
                            "see its log above"
                        }
                    ),
                    None => running += 1,
                }
            }
        }
        if running == 0 {
            let spawned = spawned_nodes(cluster, &children);
            if spawned.is_empty() {
                if children
                    .iter()
                    .all(|c| c.exited.is_some_and(|s| s.success()))
                {
                    say!("xtask: every node has stopped");
                    return Ok(());
                }
                bail!(
                    "every node has exited, not all cleanly; the logs are in {}",
                    shown(&cluster.dir)
                );
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    unreachable!("the loop only returns")
}

/// Prints the lines a detached node appends to its log, prefixed, until
/// the node has exited and the whole log is printed.
fn follow_log(dir: &Path, node: NodeRecord, prefix: String) {
    let log = log_path(dir, node.id);
    let config = config_path(dir, node.id);
    std::thread::spawn(move || {
        let Ok(file) = File::open(&log) else {
            return;
        };
        let mut reader = BufReader::new(file);
        let mut line = Vec::new();
        loop {
            match reader.read_until(b'\n', &mut line) {
                Ok(0) | Err(_) => {
                    if !process::node_alive(node.pid, &config) {
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(200));
                    continue;
                }
                Ok(_) if !line.ends_with(b"\n") => continue,
                Ok(_) => {}
            }
            let text = String::from_utf8_lossy(&line);
            outln!("{prefix}{}", text.trim_end_matches(['\n', '\r']));
            line.clear();
        }
    });
}

/// Nodes started by `cluster spawn` (not our children) that still run.
fn spawned_nodes(cluster: &Cluster, children: &[NodeChild]) -> Vec<NodeRecord> {
    match State::load(&cluster.dir) {
        Ok(Some(state)) => state
            .live_nodes(&cluster.dir)
            .into_iter()
            .filter(|n| !children.iter().any(|c| c.id == n.id))
            .cloned()
            .collect(),
        _ => Vec::new(),
    }
}

/// Stops our children after a failed start (errors are reported by the caller).
fn stop_children(dir: &Path, children: &mut [NodeChild], interrupted: &AtomicBool) {
    if children.is_empty() {
        return;
    }
    say!("xtask: stopping the nodes started so far");
    stop_all(dir, children, &[], interrupted);
}

/// SIGTERM to every node, up to [`STOP_GRACE`] to exit (cut short by
/// another Ctrl-C), then SIGKILL. Reports each node; false if one is
/// still running at the end.
fn stop_all(
    dir: &Path,
    children: &mut [NodeChild],
    others: &[NodeRecord],
    interrupted: &AtomicBool,
) -> bool {
    for c in children.iter_mut() {
        if c.poll().is_none() {
            process::signal(c.child.id(), libc::SIGTERM);
        }
    }
    for n in others {
        process::signal(n.pid, libc::SIGTERM);
    }
    let other_alive = |n: &NodeRecord| process::node_alive(n.pid, &config_path(dir, n.id));
    let deadline = Instant::now() + STOP_GRACE;
    while Instant::now() < deadline && !interrupted.load(Ordering::SeqCst) {
        let children_done = children.iter_mut().all(|c| c.poll().is_some());
        if children_done && !others.iter().any(other_alive) {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut ok = true;
    for c in children.iter_mut() {
        match c.poll() {
            Some(status) if status.success() => say!("xtask: node-{} stopped", c.id),
            Some(status) => say!("xtask: node-{} exited ({status})", c.id),
            None => {
                let _ = c.child.kill();
                let status = c.child.wait();
                c.exited = status.as_ref().ok().copied();
                say!(
                    "xtask: node-{} did not stop in time: killed ({})",
                    c.id,
                    status
                        .map(|s| s.to_string())
                        .unwrap_or_else(|e| e.to_string())
                );
            }
        }
    }
    for n in others {
        if other_alive(n) {
            process::signal(n.pid, libc::SIGKILL);
            let left = process::wait_all(&[n.pid], Duration::from_secs(5), |_| other_alive(n));
            if left.is_empty() {
                say!(
                    "xtask: node-{} (pid {}) did not stop in time: killed",
                    n.id,
                    n.pid
                );
            } else {
                say!("xtask: node-{} (pid {}) is still running", n.id, n.pid);
                ok = false;
            }
        } else {
            say!("xtask: node-{} (pid {}) stopped", n.id, n.pid);
        }
    }
    ok
}

// ---------------------------------------------------------------- spawn

fn spawn(cluster: &Cluster, id: u64) -> Result<()> {
    let dir = &cluster.dir;
    let start_hint = format!(
        "start one with `cargo xtask cluster --detach{}`",
        cluster.dir_flag
    );
    let state = State::load(dir)?
        .with_context(|| format!("there is no cluster in {}; {start_hint}", shown(dir)))?;
    if state.live_nodes(dir).is_empty() {
        bail!("the cluster in {} is not running; {start_hint}", shown(dir));
    }
    if state.node(id).is_some() || dir.join(format!("node-{id}")).exists() {
        let used: Vec<String> = state.nodes.iter().map(|n| n.id.to_string()).collect();
        bail!(
            "node {id} already exists in the cluster in {} (ids in use: {}); pick another id",
            shown(dir),
            used.join(", ")
        );
    }
    let bin_dir = state.bin_dir.clone();
    certs_node(&bin_dir, dir, id, CLUSTER_ID)?;
    let ports = net::free_ports(1)?[0];
    // As the cluster's first node does.
    let lease_reads = state.nodes.first().is_some_and(|n| {
        std::fs::read_to_string(config_path(dir, n.id))
            .is_ok_and(|c| c.lines().any(|l| l.trim() == "lease_reads = true"))
    });
    write_config(dir, id, &ports, Membership::Join, lease_reads, None)?;
    let mut child = spawn_node(&bin_dir, dir, id, Output::LogFile)?;
    let pid = child.child.id();
    // Re-read: another command may have changed the state meanwhile.
    let mut state = State::load(dir)?.unwrap_or(state);
    state.nodes.push(NodeRecord {
        id,
        pid,
        listen: ports.listen,
        metrics: ports.metrics,
        initial: false,
    });
    state.save(dir)?;

    // It cannot know a leader before it is added: wait until it answers.
    let started = Instant::now();
    loop {
        if let Some(status) = child.poll() {
            bail!(
                "node-{id} exited during startup ({status}); the end of its log ({}):\n{}",
                shown(&log_path(dir, id)),
                process::tail(&log_path(dir, id), 20)
            );
        }
        if net::health(ports.metrics).is_some() {
            break;
        }
        if started.elapsed() >= SPAWN_TIMEOUT {
            process::signal(pid, libc::SIGKILL);
            let _ = child.child.wait();
            bail!(
                "node-{id} did not answer on http://{}/health within {} s; it was killed. The end of its log:\n{}",
                ports.metrics,
                SPAWN_TIMEOUT.as_secs(),
                process::tail(&log_path(dir, id), 20)
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    outln!(
        "node-{id} runs (pid {pid}, {}, log in {}) and waits to join. Add it to the cluster with:\n\
         \x20   . {}/cli.env\n\
         \x20   raft-cli add-node {id} {}",
        ports.listen,
        shown(&log_path(dir, id)),
        shown(dir),
        ports.listen
    );
    Ok(())
}

// ---------------------------------------------------------------- stop

fn stop(cluster: &Cluster) -> Result<()> {
    let dir = &cluster.dir;
    let Some(state) = State::load(dir)? else {
        outln!("no cluster in {}: nothing to stop", shown(dir));
        return Ok(());
    };
    let live: Vec<NodeRecord> = state.live_nodes(dir).into_iter().cloned().collect();
    let supervisor = state.live_supervisor();
    if live.is_empty() && supervisor.is_none() {
        outln!(
            "the cluster in {} is not running: nothing to stop",
            shown(dir)
        );
        return Ok(());
    }
    if let Some(pid) = supervisor {
        // It stops its nodes itself; we stop them too, in case it cannot.
        process::signal(pid, libc::SIGTERM);
    }
    for n in &live {
        process::signal(n.pid, libc::SIGTERM);
    }
    let alive = |pid: u32| {
        live.iter()
            .find(|n| n.pid == pid)
            .is_some_and(|n| process::node_alive(n.pid, &config_path(dir, n.id)))
    };
    let pids: Vec<u32> = live.iter().map(|n| n.pid).collect();
    let stubborn = process::wait_all(&pids, STOP_GRACE, alive);
    for &pid in &stubborn {
        process::signal(pid, libc::SIGKILL);
    }
    let left = process::wait_all(&stubborn, Duration::from_secs(5), alive);
    for n in &live {
        let how = if left.contains(&n.pid) {
            "is STILL RUNNING"
        } else if stubborn.contains(&n.pid) {
            "did not stop within 10 s: killed"
        } else {
            "stopped"
        };
        outln!("node-{} (pid {}) {how}", n.id, n.pid);
    }
    if let Some(pid) = supervisor {
        // Let the foreground `cargo xtask cluster` finish its report.
        let left = process::wait_all(&[pid], STOP_GRACE, process::xtask_alive);
        if left.is_empty() {
            outln!("the foreground `cargo xtask cluster` (pid {pid}) has exited");
        }
    }
    if !left.is_empty() {
        bail!(
            "{} node(s) could not be stopped (pids {:?}); kill them by hand",
            left.len(),
            left
        );
    }
    outln!(
        "the cluster in {} is stopped; its data and logs stay there until the next `{}`",
        shown(dir),
        cluster.command("")
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_field() {
        let json = r#"{"packages":[],"target_directory":"/a/b \"c\"\\d\u00e9","version":1}"#;
        assert_eq!(
            json_string_field(json, "target_directory").unwrap(),
            "/a/b \"c\"\\dé"
        );
        assert!(json_string_field(json, "workspace_root").is_none());
    }

    #[test]
    fn quoting() {
        assert_eq!(shell_quote("/a/b-c.d"), "/a/b-c.d");
        assert_eq!(shell_quote("/a b/it's"), "'/a b/it'\\''s'");
        assert_eq!(toml_string("C:\\x\"y"), "\"C:\\\\x\\\"y\"");
    }

    #[test]
    fn strips_colours() {
        assert_eq!(
            strip_ansi("\x1b[2m2026\x1b[0m \x1b[32m INFO\x1b[0m hi"),
            "2026  INFO hi"
        );
    }
}
