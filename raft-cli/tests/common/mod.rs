//! A harness for end-to-end tests with real processes: `raft-kv` nodes as
//! child processes on loopback, driven by the `raft-cli` binary (and by
//! raft-kv's client library where a test needs many operations).
//!
//! Every cluster lives in its own temporary directory with its own ports,
//! so tests run in parallel. Each node's output goes to `node-N.log` there;
//! when a test fails, the tail of every node's log is printed. Children are
//! killed when the cluster is dropped, so a failing test leaks no process.

#![allow(dead_code)] // each test file uses a different part of the harness

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::Read;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use raft_kv::config::{LogFormat, NodeConfig, RaftSettings, SnapshotSettings, TlsFiles};
use raft_kv::{Client, ClientConfig};
use serde_json::Value;

/// The cluster id every test cluster uses.
pub const CLUSTER_ID: &str = "e2e";
/// How long a single raft-cli invocation may take before the test fails.
pub const CLI_TIMEOUT: Duration = Duration::from_secs(90);
/// How long to wait for the cluster to reach a state (leader elected, node
/// caught up...). Generous: the machine is shared and the builds are debug.
pub const SETTLE: Duration = Duration::from_secs(120);

/// The raft-cli binary under test.
pub fn raft_cli() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_raft-cli"))
}

/// The raft-kv server binary, built next to raft-cli.
pub fn raft_kv() -> PathBuf {
    let path = raft_cli().with_file_name(format!("raft-kv{}", std::env::consts::EXE_SUFFIX));
    assert!(
        path.exists(),
        "the raft-kv server binary is missing at {}: run `cargo build -p raft-kv` (or \
         `cargo build --workspace --all-targets --all-features`, or `cargo xtask test`) first",
        path.display()
    );
    path
}

/// A free loopback address whose port no client is given meanwhile (outside
/// the ephemeral range), so a node restarted on it finds it free.
pub fn free_address() -> SocketAddr {
    let port = raft_transport_quic::free_loopback_port().expect("a free port on loopback");
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// Node settings a test may change.
#[derive(Clone, Debug)]
pub struct Options {
    /// Milliseconds per tick.
    pub tick_ms: u64,
    /// Log entries that trigger a snapshot.
    pub snapshot_threshold: u64,
    /// Entries kept below a snapshot.
    pub snapshot_retention: u64,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            tick_ms: 30,
            snapshot_threshold: 100_000,
            snapshot_retention: 1_000,
        }
    }
}

/// One node: its address, files and process.
pub struct Node {
    /// Its id.
    pub id: u64,
    /// Where it listens.
    pub address: SocketAddr,
    /// Its TOML config.
    pub config: PathBuf,
    /// Its stdout and stderr, across restarts.
    pub log: PathBuf,
    /// The running process, if any.
    child: Option<Child>,
}

/// What a raft-cli run returned.
#[derive(Debug)]
pub struct CliOutput {
    /// The arguments, for messages.
    pub args: Vec<String>,
    /// Its exit status.
    pub status: ExitStatus,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

impl CliOutput {
    /// Panics with the whole output unless the command succeeded.
    pub fn assert_success(&self) -> &Self {
        assert!(self.status.success(), "raft-cli failed: {self}");
        self
    }

    /// The exit code.
    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }

    /// Stdout as JSON.
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("raft-cli printed no JSON ({e}): {self}"))
    }
}

impl std::fmt::Display for CliOutput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "`raft-cli {}` exited with {}\n--- stdout ---\n{}--- stderr ---\n{}",
            self.args.join(" "),
            self.status,
            self.stdout,
            self.stderr
        )
    }
}

/// Runs `command`, capturing its output; kills it and panics after `timeout`.
pub fn run_with_timeout(command: Command, timeout: Duration, args: Vec<String>) -> CliOutput {
    run_raw(command, timeout, args, None).into()
}

impl From<RawOutput> for CliOutput {
    fn from(raw: RawOutput) -> Self {
        CliOutput {
            args: raw.args,
            status: raw.status,
            stdout: String::from_utf8_lossy(&raw.stdout).into_owned(),
            stderr: raw.stderr,
        }
    }
}

/// What a raft-cli run printed, its standard output as bytes.
pub struct RawOutput {
    /// The arguments, for messages.
    pub args: Vec<String>,
    /// Its exit status.
    pub status: ExitStatus,
    /// Standard output, byte for byte.
    pub stdout: Vec<u8>,
    /// Standard error.
    pub stderr: String,
}

/// Runs `command` with `stdin` (or none), killing it after `timeout`.
pub fn run_raw(
    mut command: Command,
    timeout: Duration,
    args: Vec<String>,
    stdin: Option<Vec<u8>>,
) -> RawOutput {
    command
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command.spawn().expect("start raft-cli");
    if let (Some(bytes), Some(mut pipe)) = (stdin, child.stdin.take()) {
        std::thread::spawn(move || {
            use std::io::Write;
            // raft-cli may stop reading early (a value too large): ignore
            // the broken pipe.
            let _ = pipe.write_all(&bytes);
        });
    }
    let mut stdout = child.stdout.take().expect("piped stdout");
    let mut stderr = child.stderr.take().expect("piped stderr");
    let out = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = stdout.read_to_end(&mut s);
        s
    });
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for raft-cli") {
            break status;
        }
        if started.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "`raft-cli {}` did not finish within {timeout:?}; stderr so far:\n{}",
                args.join(" "),
                err.join().unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    RawOutput {
        args,
        status,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    }
}

/// Polls `check` every 200 ms until it returns `Some`, or panics after
/// `timeout` with `what` and the last reason `check` gave.
pub fn wait_for<T>(
    what: &str,
    timeout: Duration,
    mut check: impl FnMut() -> Result<T, String>,
) -> T {
    let started = Instant::now();
    loop {
        match check() {
            Ok(value) => return value,
            Err(reason) => {
                if started.elapsed() > timeout {
                    panic!("timed out after {timeout:?} waiting for {what}: {reason}");
                }
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A cluster of raft-kv processes in a temporary directory.
pub struct Cluster {
    /// The directory: certificates, configs, data, logs.
    pub dir: tempfile::TempDir,
    /// A runtime for raft-kv's client library.
    pub runtime: tokio::runtime::Runtime,
    /// Node settings.
    pub options: Options,
    nodes: BTreeMap<u64, Node>,
    /// The voters the cluster was bootstrapped with.
    initial: Vec<(u64, SocketAddr)>,
}

impl Cluster {
    /// Creates certificates (with `raft-cli certs`) and starts nodes
    /// `1..=size`, bootstrapping a new cluster; does not wait for a leader.
    pub fn start(size: u64, options: Options) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("raft-cli-e2e-")
            .tempdir()
            .expect("temporary directory");
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("tokio runtime");
        let mut cluster = Self {
            dir,
            runtime,
            options,
            nodes: BTreeMap::new(),
            initial: Vec::new(),
        };
        cluster.certs(&["ca", "--cluster", CLUSTER_ID]);
        cluster.certs(&[
            "client",
            "--name",
            "admin",
            "--role",
            "admin",
            "--cluster",
            CLUSTER_ID,
        ]);
        cluster.initial = (1..=size).map(|id| (id, free_address())).collect();
        for (id, address) in cluster.initial.clone() {
            cluster.prepare_node(id, address, false);
            cluster.start_node(id);
        }
        cluster
    }

    /// Runs `raft-cli certs ARGS --dir <cluster dir>`.
    pub fn certs(&self, args: &[&str]) {
        let mut full = vec!["certs".to_string()];
        full.extend(args.iter().map(|a| a.to_string()));
        full.push("--dir".into());
        full.push(self.dir.path().display().to_string());
        let mut command = Command::new(raft_cli());
        command.args(&full);
        run_with_timeout(command, CLI_TIMEOUT, full).assert_success();
    }

    /// Writes the certificate and config of node `id`.
    fn prepare_node(&mut self, id: u64, address: SocketAddr, join: bool) {
        let dir = self.dir.path().to_path_buf();
        self.certs(&[
            "node",
            "--id",
            &id.to_string(),
            "--address",
            &address.ip().to_string(),
            "--cluster",
            CLUSTER_ID,
        ]);
        let config = NodeConfig {
            node_id: id,
            cluster_id: CLUSTER_ID.into(),
            listen: address,
            advertise: None,
            data_dir: dir.join(format!("data-{id}")),
            initial_cluster: if join {
                Vec::new()
            } else {
                self.initial
                    .iter()
                    .map(|(i, a)| format!("{i}={a}"))
                    .collect()
            },
            join,
            tls: TlsFiles {
                ca: dir.join("ca.pem"),
                cert: dir.join(format!("node-{id}.pem")),
                key: dir.join(format!("node-{id}.key")),
                deny_list: None,
            },
            raft: RaftSettings {
                tick_ms: self.options.tick_ms,
                ..RaftSettings::default()
            },
            snapshot: SnapshotSettings {
                threshold: self.options.snapshot_threshold,
                retention: self.options.snapshot_retention,
                chunk_size: 64 * 1024,
            },
            etcd_listen: None,
            metrics_listen: None,
            log_format: LogFormat::Human,
            enable_fault_injection: false,
            request_timeout_ms: 5_000,
        };
        let path = dir.join(format!("node-{id}.toml"));
        std::fs::write(
            &path,
            toml::to_string(&config).expect("a node config serialises"),
        )
        .expect("write the node config");
        self.nodes.insert(
            id,
            Node {
                id,
                address,
                config: path,
                log: dir.join(format!("node-{id}.log")),
                child: None,
            },
        );
    }

    /// Prepares and starts node `id` with `--join` (empty, waiting to be
    /// added); returns its address.
    pub fn start_joining_node(&mut self, id: u64) -> String {
        self.prepare_node(id, free_address(), true);
        self.start_node(id);
        self.address(id)
    }

    /// Starts (or restarts) node `id`'s process.
    pub fn start_node(&mut self, id: u64) {
        let node = self.nodes.get_mut(&id).expect("a prepared node");
        assert!(node.child.is_none(), "node {id} already runs");
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&node.log)
            .expect("open the node's log");
        let err = log.try_clone().expect("clone the log handle");
        let child = Command::new(raft_kv())
            .arg("--config")
            .arg(&node.config)
            .env(
                "RUST_LOG",
                std::env::var("E2E_RUST_LOG")
                    .unwrap_or_else(|_| "info,quinn=warn,rustls=warn".into()),
            )
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            .spawn()
            .expect("start raft-kv");
        node.child = Some(child);
    }

    /// SIGKILLs node `id` and reaps it.
    pub fn kill(&mut self, id: u64) {
        let node = self.nodes.get_mut(&id).expect("a node");
        if let Some(mut child) = node.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERMs node `id` and waits for it to exit (SIGKILL after 30 s).
    /// Returns whether it exited by itself, successfully.
    pub fn terminate(&mut self, id: u64) -> bool {
        let node = self.nodes.get_mut(&id).expect("a node");
        let Some(mut child) = node.child.take() else {
            return false;
        };
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status();
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(30) {
            if let Ok(Some(status)) = child.try_wait() {
                return status.success();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
        false
    }

    /// Whether node `id`'s process runs.
    pub fn is_running(&mut self, id: u64) -> bool {
        match self.nodes.get_mut(&id).and_then(|n| n.child.as_mut()) {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Node `id`'s address.
    pub fn address(&self, id: u64) -> String {
        self.nodes[&id].address.to_string()
    }

    /// The ids of every node the harness knows.
    pub fn ids(&self) -> Vec<u64> {
        self.nodes.keys().copied().collect()
    }

    /// Comma-separated addresses of `ids`.
    pub fn endpoints_of(&self, ids: &[u64]) -> String {
        ids.iter()
            .map(|id| self.address(*id))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Comma-separated addresses of every node.
    pub fn endpoints(&self) -> String {
        self.endpoints_of(&self.ids())
    }

    /// The admin client's certificate files: (ca, cert, key).
    pub fn client_files(&self) -> (PathBuf, PathBuf, PathBuf) {
        let dir = self.dir.path();
        (
            dir.join("ca.pem"),
            dir.join("admin.pem"),
            dir.join("admin.key"),
        )
    }

    /// Runs raft-cli against every node with `stdin` as its input.
    pub fn cli_with_stdin(&self, args: &[&str], stdin: &[u8]) -> CliOutput {
        let (command, full) = self.command(&self.endpoints(), args);
        run_raw(command, CLI_TIMEOUT, full, Some(stdin.to_vec())).into()
    }

    /// Runs raft-cli against every node, keeping its output as bytes.
    pub fn cli_raw(&self, args: &[&str]) -> RawOutput {
        let (command, full) = self.command(&self.endpoints(), args);
        run_raw(command, CLI_TIMEOUT, full, None)
    }

    /// Runs raft-cli against `endpoints` with the admin certificate.
    pub fn cli_at(&self, endpoints: &str, args: &[&str]) -> CliOutput {
        let (command, full) = self.command(endpoints, args);
        run_with_timeout(command, CLI_TIMEOUT, full)
    }

    /// Runs raft-cli against `endpoints` with the client certificate
    /// `<name>.pem` (made with [`Cluster::certs`]).
    pub fn cli_as(&self, name: &str, endpoints: &str, args: &[&str]) -> CliOutput {
        let dir = self.dir.path();
        let files = (
            dir.join("ca.pem"),
            dir.join(format!("{name}.pem")),
            dir.join(format!("{name}.key")),
        );
        let (command, full) = self.command_with(files, endpoints, args);
        run_with_timeout(command, CLI_TIMEOUT, full)
    }

    /// The raft-cli command for `args` against `endpoints`, with the admin
    /// certificate and no settings from the environment.
    fn command(&self, endpoints: &str, args: &[&str]) -> (Command, Vec<String>) {
        self.command_with(self.client_files(), endpoints, args)
    }

    /// [`Cluster::command`] with the certificate files `(ca, cert, key)`.
    fn command_with(
        &self,
        (ca, cert, key): (PathBuf, PathBuf, PathBuf),
        endpoints: &str,
        args: &[&str],
    ) -> (Command, Vec<String>) {
        let mut full: Vec<String> = vec![
            "--endpoints".into(),
            endpoints.into(),
            "--ca".into(),
            ca.display().to_string(),
            "--cert".into(),
            cert.display().to_string(),
            "--key".into(),
            key.display().to_string(),
        ];
        full.extend(args.iter().map(|a| a.to_string()));
        let mut command = Command::new(raft_cli());
        command.args(&full);
        // The environment must not leak settings into the test.
        for var in [
            "RAFT_ENDPOINTS",
            "RAFT_CA",
            "RAFT_CERT",
            "RAFT_KEY",
            "RAFT_CLI_CONFIG",
        ] {
            command.env_remove(var);
        }
        (command, full)
    }

    /// Runs raft-cli against every node.
    pub fn cli(&self, args: &[&str]) -> CliOutput {
        self.cli_at(&self.endpoints(), args)
    }

    /// Runs raft-cli with `--output json` against every node; panics unless
    /// it succeeds.
    pub fn cli_json(&self, args: &[&str]) -> Value {
        let mut full = args.to_vec();
        full.extend(["--output", "json"]);
        let output = self.cli(&full);
        output.assert_success();
        output.json()
    }

    /// `raft-cli status --output json` against `ids` (any reachable one
    /// leads the way to the others).
    pub fn status_at(&self, ids: &[u64]) -> Result<Vec<Value>, String> {
        let output = self.cli_at(&self.endpoints_of(ids), &["status", "--output", "json"]);
        if !output.status.success() {
            return Err(output.to_string());
        }
        match output.json() {
            Value::Array(rows) => Ok(rows),
            other => Err(format!("status is not an array: {other}")),
        }
    }

    /// Waits until exactly one of `voters` leads, every one of them answers
    /// and agrees on the term, and returns the leader's id.
    pub fn wait_for_leader(&self, voters: &[u64]) -> u64 {
        wait_for(
            &format!("one leader among nodes {voters:?}, all of them healthy"),
            SETTLE,
            || {
                let rows = self.status_at(voters)?;
                let leaders: Vec<u64> = rows
                    .iter()
                    .filter(|r| r["role"] == "leader")
                    .filter_map(|r| r["id"].as_u64())
                    .collect();
                let summary = || {
                    rows.iter()
                        .map(|r| format!("{}:{}/{}", r["id"], r["role"], r["health"]))
                        .collect::<Vec<_>>()
                        .join(" ")
                };
                if leaders.len() != 1 {
                    return Err(format!("leaders {leaders:?} in {}", summary()));
                }
                for id in voters {
                    let Some(row) = rows.iter().find(|r| r["id"].as_u64() == Some(*id)) else {
                        return Err(format!("node {id} is not listed: {}", summary()));
                    };
                    if row["health"] != "ok" {
                        return Err(format!("node {id} is not healthy: {}", summary()));
                    }
                }
                // Members outside `voters` (stopped, removed) do not count.
                let terms: std::collections::BTreeSet<String> = rows
                    .iter()
                    .filter(|r| r["id"].as_u64().is_some_and(|id| voters.contains(&id)))
                    .map(|r| r["term"].to_string())
                    .collect();
                if terms.len() != 1 {
                    return Err(format!("terms differ: {terms:?}"));
                }
                Ok(leaders[0])
            },
        )
    }

    /// A client-library connection to `ids` with the admin certificate.
    pub fn client(&self, ids: &[u64]) -> Client {
        let (ca, cert, key) = self.client_files();
        let endpoints = ids.iter().map(|id| self.address(*id)).collect();
        let mut config =
            ClientConfig::from_files(endpoints, &ca, &cert, &key).expect("client identity");
        config.deadline = Duration::from_secs(30);
        self.runtime
            .block_on(Client::connect(config))
            .expect("client")
    }

    /// Runs a future on the harness's runtime.
    pub fn block_on<F: std::future::Future>(&self, future: F) -> F::Output {
        self.runtime.block_on(future)
    }

    /// The last `lines` lines of node `id`'s log.
    pub fn log_tail(&self, id: u64, lines: usize) -> String {
        let mut text = String::new();
        if let Ok(mut file) = File::open(&self.nodes[&id].log) {
            let _ = file.read_to_string(&mut text);
        }
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// The directory's path.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for node in self.nodes.values_mut() {
            if let Some(mut child) = node.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        if std::thread::panicking() {
            if std::env::var_os("E2E_KEEP").is_some() {
                self.dir.disable_cleanup(true);
                eprintln!("kept the cluster's files in {}", self.dir.path().display());
            }
            for id in self.ids() {
                eprintln!(
                    "===== node {id} log (last 60 lines) =====\n{}",
                    self.log_tail(id, 60)
                );
            }
        }
    }
}
