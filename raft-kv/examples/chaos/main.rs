//! Chaos testing of raft-kv: real `raft-kv` processes on loopback, clients
//! doing get, put and compare-and-swap on a few contended keys, a seeded
//! nemesis (SIGKILL and restart, SIGSTOP/SIGCONT, partitions through the
//! transport's fault injection, membership changes, leader transfers, write
//! bursts that force snapshots), and at the end:
//!
//! - the history, key by key, judged linearizable by stateright's
//!   linearizability tester (and by the WGL search in `checker.rs`, which
//!   must agree);
//! - every acknowledged write is in the final state or may have been
//!   overwritten by a later write;
//! - every node converges to the same state (a digest of a full scan);
//! - no node panicked, logged an invariant failure or exited by itself.
//!
//! Run it with `cargo xtask chaos [--duration 60s] [--nodes 5] [--clients
//! 10] [--seed N]`; see README.md beside this file.

mod checker;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use clap::Parser;

use raft_kv::client::{Client, ClientConfig, ClientError};
use raft_kv::protocol::{Consistency, ReadOp};
use raft_transport_quic::{CertificateAuthority, Fault, FaultRule, TlsIdentity};

use checker::{CasOp, CasRegister, CasRet, Operation, Rng, Verdict};

mod etcd;

const CLUSTER: &str = "chaos";
/// Contended keys per epoch; a new set of keys every epoch keeps each key's
/// history small enough for stateright's tester.
const KEYS_PER_EPOCH: u64 = 6;
const EPOCH: Duration = Duration::from_secs(1);
/// Spare node ids (and ports) for members added by the nemesis.
const SPARES: u64 = 10;

#[derive(Parser, Debug, Clone)]
#[command(name = "chaos", about = "Chaos test of a raft-kv cluster of processes")]
struct Args {
    /// How long clients and nemesis run (e.g. 60s, 2m).
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    duration: Duration,
    /// Initial voters.
    #[arg(long, default_value_t = 5)]
    nodes: u64,
    /// Concurrent clients.
    #[arg(long, default_value_t = 10)]
    clients: u64,
    /// Seed of the nemesis schedule and the workload (random if unset).
    #[arg(long)]
    seed: Option<u64>,
    /// Where runs keep their files (a directory per run).
    #[arg(long, default_value = "target/chaos")]
    out: PathBuf,
    /// The raft-kv server binary (default: beside this program's directory).
    #[arg(long)]
    raft_kv: Option<PathBuf>,
    /// Keep the run's directory even when every check passes.
    #[arg(long)]
    keep: bool,
    /// TEST ONLY: start the nodes with a deliberate bug (`stale-reads`:
    /// linearizable reads skip ReadIndex).
    #[arg(long)]
    broken: Option<String>,
    /// Succeed only if the linearizability check finds a violation (to show
    /// the checker catches the `--broken` bug).
    #[arg(long)]
    expect_violation: bool,
    /// How clients read: `linearizable` (ReadIndex) or `lease` (the nodes
    /// run with lease reads on, and gets are served from the leader's lease;
    /// the SIGSTOP nemesis is what tests them).
    #[arg(long, value_enum, default_value_t = ReadMode::Linearizable)]
    reads: ReadMode,
    /// Let faults overlap: the nemesis starts faults while others are
    /// still in force (a kill during a partition, a pause during a
    /// membership change, a transfer while a node is down, ...), and the
    /// report lists each combination that ran.
    #[arg(long)]
    overlap: bool,
    /// How the clients reach the cluster: `native` (raft-kv's client
    /// library, exactly-once sessions) or `etcd` (the nodes serve etcd's v3
    /// API and the clients use the etcd-client crate through it; the
    /// nemesis still uses the native admin port).
    #[arg(long, value_enum, default_value_t = Api::Native)]
    api: Api,
    /// stateright's time budget per key.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    stateright_budget: Duration,
    /// Internal: run stateright on one key's history (a JSON file) and print
    /// the verdict. The chaos program runs each key's check in such a child
    /// process, so that a search over its budget can be stopped.
    #[arg(long, hide = true)]
    stateright_file: Option<PathBuf>,
}

/// How the chaos clients talk to the cluster.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Api {
    Native,
    Etcd,
}

/// How the chaos clients read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum ReadMode {
    /// Linearizable reads confirmed with a heartbeat round (ReadIndex).
    Linearizable,
    /// Lease reads.
    Lease,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (number, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: u64 = number
        .parse()
        .map_err(|_| format!("{s:?} is not a duration like 60s, 2m or 500ms"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        _ => Err(format!("{s:?}: unit must be ms, s or m")),
    }
}

// ----------------------------------------------------------------- history

#[derive(Clone, Debug)]
enum Outcome {
    Ok,
    Fail,
    Unknown,
}

#[derive(Clone, Debug)]
enum Op {
    Get,
    Put(String),
    Cas {
        expected: Option<String>,
        new: String,
    },
}

#[derive(Clone, Debug)]
struct Record {
    client: u64,
    key: String,
    op: Op,
    invoke_us: u64,
    complete_us: u64,
    outcome: Outcome,
    /// Get: the value read. Cas: whether it swapped ("true"/"false").
    result: Option<String>,
    error: Option<String>,
}

impl Record {
    fn to_json(&self) -> serde_json::Value {
        let (f, value, expected) = match &self.op {
            Op::Get => ("get", None, None),
            Op::Put(v) => ("put", Some(v.clone()), None),
            Op::Cas { expected, new } => ("cas", Some(new.clone()), Some(expected.clone())),
        };
        serde_json::json!({
            "client": self.client,
            "f": f,
            "key": self.key,
            "value": value,
            "expected": expected,
            "invoke_us": self.invoke_us,
            "complete_us": self.complete_us,
            "outcome": match self.outcome { Outcome::Ok => "ok", Outcome::Fail => "fail", Outcome::Unknown => "unknown" },
            "result": self.result,
            "error": self.error,
        })
    }
}

struct History {
    start: Instant,
    records: Mutex<Vec<Record>>,
    events: Mutex<Vec<String>>,
}

impl History {
    fn now_us(&self) -> u64 {
        self.start.elapsed().as_micros() as u64
    }
    fn event(&self, text: String) {
        let line = format!("{:>8.3}s {text}", self.start.elapsed().as_secs_f64());
        eprintln!("chaos: {line}");
        self.events.lock().unwrap().push(line);
    }
}

// ----------------------------------------------------------------- cluster

struct NodeProc {
    id: u64,
    addr: SocketAddr,
    /// Where it serves etcd's API (with `--api etcd`).
    etcd: SocketAddr,
    config: PathBuf,
    log: PathBuf,
    child: Option<Child>,
    member: bool,
    /// A voter (a member added by the nemesis is a learner until promoted).
    voter: bool,
    paused: bool,
    /// Exited or killed (by us) and not restarted yet.
    down: bool,
    /// The partition (the nemesis fault) whose fault rules the node has, if
    /// any: a node starts without rules.
    rules: Option<u64>,
    /// How many times the node was started.
    incarnation: u64,
}

struct Cluster {
    dir: PathBuf,
    bin: PathBuf,
    broken: Option<String>,
    reads: ReadMode,
    api: Api,
    nodes: BTreeMap<u64, NodeProc>,
    ca_pem: String,
    ca: CertificateAuthority,
    problems: Vec<String>,
}

impl Cluster {
    fn address(&self, id: u64) -> String {
        self.nodes[&id].addr.to_string()
    }

    fn members(&self) -> Vec<u64> {
        self.nodes
            .values()
            .filter(|n| n.member)
            .map(|n| n.id)
            .collect()
    }

    fn write_config(&self, id: u64, initial: Option<&[u64]>) -> Result<()> {
        let node = &self.nodes[&id];
        let cert = self.ca.issue_node(CLUSTER, id, ["127.0.0.1"])?;
        let cert_path = self.dir.join(format!("node-{id}.pem"));
        let key_path = self.dir.join(format!("node-{id}.key"));
        cert.save(&cert_path, &key_path)?;
        let start = match initial {
            Some(ids) => format!(
                "initial_cluster = [{}]",
                ids.iter()
                    .map(|i| format!("\"{i}={}\"", self.nodes[i].addr))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            None => "join = true".to_string(),
        };
        let etcd = match self.api {
            Api::Etcd => format!("etcd_listen = \"{}\"\n", node.etcd),
            Api::Native => String::new(),
        };
        let text = format!(
            r#"node_id = {id}
cluster_id = "{CLUSTER}"
listen = "{addr}"
{etcd}data_dir = {data:?}
{start}
enable_fault_injection = true
request_timeout_ms = 3000

[tls]
ca = {ca:?}
cert = {cert:?}
key = {key:?}

[raft]
tick_ms = 50
election_ticks = 10
heartbeat_ticks = 2
lease_reads = {lease}

[snapshot]
threshold = 200
retention = 50
chunk_size = 4096
"#,
            addr = node.addr,
            lease = self.reads == ReadMode::Lease,
            data = self.dir.join(format!("node-{id}")).display().to_string(),
            ca = self.dir.join("ca.pem").display().to_string(),
            cert = cert_path.display().to_string(),
            key = key_path.display().to_string(),
        );
        std::fs::write(&node.config, text)?;
        Ok(())
    }

    fn spawn(&mut self, id: u64) -> Result<()> {
        let bin = self.bin.clone();
        let broken = self.broken.clone();
        let node = self.nodes.get_mut(&id).expect("known node");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&node.log)?;
        let mut cmd = Command::new(&bin);
        cmd.arg("--config")
            .arg(&node.config)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .env("RUST_LOG", "info,quinn=warn,rustls=warn")
            .env("RUST_BACKTRACE", "1")
            .env("NO_COLOR", "1");
        if let Some(mode) = &broken {
            cmd.env(raft_kv::server::BROKEN_MODE_ENV, mode);
        }
        // Nodes die with this program, however it ends.
        #[cfg(target_os = "linux")]
        {
            use std::os::unix::process::CommandExt;
            // SAFETY: prctl is async-signal-safe; nothing else runs between
            // fork and exec.
            unsafe {
                cmd.pre_exec(|| {
                    libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                    Ok(())
                });
            }
        }
        node.child = Some(
            cmd.spawn()
                .with_context(|| format!("starting {}", bin.display()))?,
        );
        node.down = false;
        node.paused = false;
        node.rules = None;
        node.incarnation += 1;
        Ok(())
    }

    fn signal(&mut self, id: u64, signal: i32) {
        if let Some(child) = &self.nodes[&id].child {
            // SAFETY: kill(2) on a child process we started and have not
            // reaped.
            unsafe {
                libc::kill(child.id() as i32, signal);
            }
        }
    }

    fn kill(&mut self, id: u64) {
        if self.nodes[&id].paused {
            self.signal(id, libc::SIGCONT);
        }
        self.signal(id, libc::SIGKILL);
        let node = self.nodes.get_mut(&id).expect("known node");
        if let Some(mut child) = node.child.take() {
            let _ = child.wait();
        }
        node.down = true;
        node.paused = false;
    }

    fn pause(&mut self, id: u64) {
        self.signal(id, libc::SIGSTOP);
        self.nodes.get_mut(&id).expect("known node").paused = true;
    }

    fn resume(&mut self, id: u64) {
        self.signal(id, libc::SIGCONT);
        self.nodes.get_mut(&id).expect("known node").paused = false;
    }

    /// Notes nodes that exited without being killed, and restarts members.
    fn reap(&mut self, history: &History) {
        let mut exited = Vec::new();
        for node in self.nodes.values_mut() {
            if let Some(child) = &mut node.child
                && let Ok(Some(status)) = child.try_wait()
            {
                exited.push((node.id, status));
                node.child = None;
                node.down = true;
            }
        }
        for (id, status) in exited {
            // The log's last lines say why; a CI run keeps only what was
            // printed.
            let log = &self.nodes[&id].log;
            let text = std::fs::read_to_string(log).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            let tail = lines[lines.len().saturating_sub(5)..].join("\n    ");
            let problem = format!(
                "node {id} exited by itself ({status}); see {}; its log ends:\n    {tail}",
                log.display()
            );
            history.event(problem.clone());
            self.problems.push(problem);
            if self.nodes[&id].member
                && let Err(e) = self.spawn(id)
            {
                self.problems.push(format!("restarting node {id}: {e:#}"));
            }
        }
    }

    fn stop_all(&mut self) {
        let ids: Vec<u64> = self.nodes.keys().copied().collect();
        for id in ids {
            if self.nodes[&id].child.is_some() {
                self.kill(id);
            }
        }
    }
}

/// Loopback addresses outside the ephemeral range: a node added or restarted
/// late in the run must still find its port free, though clients have bound
/// thousands of ephemeral ports meanwhile.
fn free_ports(n: u64) -> Result<Vec<SocketAddr>> {
    (0..n)
        .map(|_| {
            let port = raft_transport_quic::free_loopback_port()?;
            Ok(SocketAddr::from(([127, 0, 0, 1], port)))
        })
        .collect()
}

fn client_config(identity: &TlsIdentity, endpoints: Vec<String>) -> ClientConfig {
    let mut config = ClientConfig::new(endpoints, identity.clone());
    config.deadline = Duration::from_secs(4);
    config.attempt_timeout = Duration::from_millis(1500);
    config
}

/// What the nodes say, asked of each with a short timeout: the leader most
/// of them follow.
async fn leader_among(admin: &Client, nodes: &[(u64, String)]) -> Option<u64> {
    let mut votes: BTreeMap<u64, usize> = BTreeMap::new();
    for (_, address) in nodes {
        if let Ok(Ok(status)) =
            tokio::time::timeout(Duration::from_millis(800), admin.status_of(address)).await
            && let Some(l) = status.raft.leader
        {
            *votes.entry(l).or_default() += 1;
        }
    }
    votes.into_iter().max_by_key(|(_, n)| *n).map(|(id, _)| id)
}

// ---------------------------------------------------------------- workload

struct Shared {
    history: History,
    stop: AtomicBool,
    /// How gets read.
    consistency: Consistency,
    /// The members' addresses, and how many times the nemesis changed them.
    members: Mutex<(u64, Vec<String>)>,
    /// With `--api etcd`: each node's etcd address by its native address,
    /// and what an etcd client presents.
    etcd: Option<(BTreeMap<String, SocketAddr>, etcd::EtcdTls)>,
}

/// A chaos client's connection: raft-kv's client, or an etcd client (one
/// per chaos client: their sizes do not matter).
#[allow(clippy::large_enum_variant)]
enum Conn {
    Native(Client),
    Etcd(etcd_client::Client),
}

/// A client doing `get`, `put` and compare-and-swap until told to stop.
///
/// After each membership change it starts over with a new `Client` whose
/// endpoints are the members there are now (rotated, so that clients start
/// at different nodes), as an operator would reconfigure it: a `Client`
/// goes through its endpoints from the first on every call that has no
/// leader to go to, and an endpoint whose node was removed (and stopped)
/// costs an attempt timeout, so a client whose first endpoints are all gone
/// would spend each call's deadline on them and never reach the cluster.
async fn run_client(index: u64, config: ClientConfig, shared: Arc<Shared>, mut rng: Rng) {
    let mut counter = 0u64;
    // The last value this client saw per key (for compare-and-swap).
    let mut seen: BTreeMap<String, Option<String>> = BTreeMap::new();
    let mut client: Option<(u64, Conn)> = None;
    while !shared.stop.load(Ordering::Relaxed) {
        let (generation, mut endpoints) = shared.members.lock().unwrap().clone();
        if client.as_ref().is_none_or(|(g, _)| *g != generation) {
            let first = (index - 1) as usize % endpoints.len().max(1);
            endpoints.rotate_left(first);
            let connected = match &shared.etcd {
                Some((etcd_of, tls)) => {
                    let etcd: Vec<SocketAddr> = endpoints
                        .iter()
                        .filter_map(|a| etcd_of.get(a).copied())
                        .collect();
                    etcd::connect(tls, &etcd).await.map(Conn::Etcd)
                }
                None => {
                    let mut config = config.clone();
                    config.endpoints = endpoints;
                    Client::connect(config)
                        .await
                        .map(Conn::Native)
                        .map_err(|e| e.to_string())
                }
            };
            match connected {
                Ok(c) => client = Some((generation, c)),
                Err(e) => {
                    shared
                        .history
                        .event(format!("client {index}: cannot connect: {e}"));
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                }
            }
        }
        let conn = &client.as_ref().expect("connected").1;
        let epoch = shared.history.start.elapsed().as_millis() as u64 / EPOCH.as_millis() as u64;
        let key = format!("e{epoch:03}-k{}", rng.below(KEYS_PER_EPOCH));
        counter += 1;
        let unique = format!("c{index}-{counter}");
        let dice = rng.below(100);
        let op = if dice < 40 {
            Op::Get
        } else if dice < 70 {
            Op::Put(unique)
        } else {
            Op::Cas {
                expected: seen.get(&key).cloned().flatten(),
                new: unique,
            }
        };
        let invoke_us = shared.history.now_us();
        let call = async {
            let client = match conn {
                Conn::Native(client) => client,
                Conn::Etcd(client) => return etcd::perform(client, &op, &key).await,
            };
            let answer = match &op {
                Op::Get => client
                    .read(
                        ReadOp::Get {
                            key: key.clone().into(),
                        },
                        shared.consistency,
                    )
                    .await
                    .map(|mut r| {
                        r.kvs
                            .pop()
                            .map(|kv| String::from_utf8_lossy(&kv.value).into_owned())
                    }),
                Op::Put(v) => client.put(key.clone(), v.clone()).await.map(|_| None),
                Op::Cas { expected, new } => client
                    .cas(
                        key.clone(),
                        expected.clone().map(Bytes::from),
                        Some(Bytes::from(new.clone())),
                    )
                    .await
                    .map(|r| {
                        Some(if r.succeeded {
                            "true".to_string()
                        } else {
                            String::from_utf8_lossy(
                                &r.previous.map(|p| p.value).unwrap_or_default(),
                            )
                            .into_owned()
                                + "\u{0}false"
                        })
                    }),
            };
            // A read that failed had no effect; a write that failed may
            // have (unless the request was refused as invalid).
            answer.map_err(|e| {
                let definite = matches!(op, Op::Get)
                    || matches!(
                        e,
                        ClientError::Kv(raft_kv::protocol::KvError::InvalidRequest(_))
                    );
                (definite, e.to_string())
            })
        };
        let result = tokio::time::timeout(Duration::from_secs(6), call).await;
        let complete_us = shared.history.now_us();
        let (outcome, result, error) = match result {
            Ok(Ok(r)) => (Outcome::Ok, r, None),
            Ok(Err((definite, e))) => (
                if definite {
                    Outcome::Fail
                } else {
                    Outcome::Unknown
                },
                None,
                Some(e),
            ),
            Err(_) => (
                if matches!(op, Op::Get) {
                    Outcome::Fail
                } else {
                    Outcome::Unknown
                },
                None,
                Some("client-side timeout".into()),
            ),
        };
        // Remember what the key holds, as far as this client knows.
        let mut result_value = result.clone();
        if let (Outcome::Ok, Op::Cas { new, .. }) = (&outcome, &op) {
            match result.as_deref() {
                Some("true") => {
                    seen.insert(key.clone(), Some(new.clone()));
                }
                Some(other) => {
                    let previous = other.trim_end_matches("\u{0}false");
                    seen.insert(
                        key.clone(),
                        (!previous.is_empty()).then(|| previous.to_string()),
                    );
                    result_value = Some("false".into());
                }
                None => {}
            }
        }
        match (&outcome, &op) {
            (Outcome::Ok, Op::Get) => {
                seen.insert(key.clone(), result.clone());
            }
            (Outcome::Ok, Op::Put(v)) => {
                seen.insert(key.clone(), Some(v.clone()));
            }
            _ => {}
        }
        shared.history.records.lock().unwrap().push(Record {
            client: index,
            key,
            op,
            invoke_us,
            complete_us,
            outcome,
            result: result_value,
            error,
        });
    }
}

// ----------------------------------------------------------------- nemesis

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Kill,
    Pause,
    Partition,
    Membership,
    Transfer,
    Burst,
}

const KINDS: [Kind; 6] = [
    Kind::Kill,
    Kind::Pause,
    Kind::Partition,
    Kind::Membership,
    Kind::Transfer,
    Kind::Burst,
];

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Kill => "kill",
            Kind::Pause => "pause",
            Kind::Partition => "partition",
            Kind::Membership => "membership",
            Kind::Transfer => "transfer",
            Kind::Burst => "burst",
        }
    }
}

/// What an `--overlap` run must show at least once: (a fault, a fault
/// already in force when it took effect). A kill during a partition, a
/// pause during a membership change, a leadership transfer while a node is
/// down.
const REQUIRED_OVERLAPS: [(Kind, Kind); 3] = [
    (Kind::Kill, Kind::Partition),
    (Kind::Pause, Kind::Membership),
    (Kind::Transfer, Kind::Kill),
];

/// At most this many faults in progress at once (with `--overlap`).
const MAX_FAULTS: usize = 3;

/// How the report names a fault that took effect while another was in
/// force: "kill during partition", "transfer while down" (a kill holds its
/// node down).
fn overlap_name(later: Kind, earlier: Kind) -> String {
    if earlier == Kind::Kill {
        format!("{} while down", later.name())
    } else {
        format!("{} during {}", later.name(), earlier.name())
    }
}

#[derive(Default)]
struct NemesisStats {
    /// Faults that took effect (a target was chosen and the fault began).
    attempted: BTreeMap<String, u64>,
    /// Faults that completed (a transfer or a membership change can fail).
    done: BTreeMap<String, u64>,
    /// Faults not begun: no node could take them without costing the
    /// cluster its quorum, or no spare node was left.
    skipped: BTreeMap<String, u64>,
    /// Completed faults that took effect while another was in force, by
    /// [`overlap_name`].
    overlaps: BTreeMap<String, u64>,
    /// The same for faults that did not complete (a transfer refused, a
    /// membership change that could not finish).
    overlaps_failed: BTreeMap<String, u64>,
    /// Burst writes acknowledged: key -> value.
    burst_acked: BTreeMap<String, String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Started, not in force yet (looking for the leader, choosing a node).
    Starting,
    /// In force since then.
    Active(Instant),
    Over,
}

struct FaultEntry {
    kind: Kind,
    phase: Phase,
    /// Nodes whose process this fault owns (killed, stopped, being removed
    /// or added): no other fault touches them until it ends.
    holds: BTreeSet<u64>,
    /// The voter a membership change is removing (not counted in quorums
    /// while the change is in progress).
    removing: Option<u64>,
    /// The faults in force when this one took effect.
    earlier: BTreeSet<u64>,
}

/// The partition in force.
struct Partition {
    side: BTreeSet<u64>,
    rules: Vec<FaultRule>,
    /// The fault that made it: a node whose rules are this fault's is in
    /// sync.
    fault: u64,
}

/// What the nemesis changes, behind one lock (never held across an await).
struct World<'c> {
    cluster: &'c mut Cluster,
    stats: NemesisStats,
    faults: BTreeMap<u64, FaultEntry>,
    next_fault: u64,
    partition: Option<Partition>,
    next_spare: u64,
    burst_no: u64,
    /// Nodes whose membership change had an outcome the nemesis could not
    /// learn (a remove that timed out, an add that was not confirmed).
    uncertain: BTreeSet<u64>,
}

impl World<'_> {
    fn in_force(&self) -> impl Iterator<Item = &FaultEntry> {
        self.faults.values().filter(|f| f.phase != Phase::Over)
    }

    fn held(&self) -> BTreeSet<u64> {
        self.in_force()
            .flat_map(|f| f.holds.iter().copied())
            .collect()
    }

    /// The voters that count in a quorum: not being removed (nor
    /// `also_removing`).
    fn voters(&self, also_removing: Option<u64>) -> BTreeSet<u64> {
        let removing: BTreeSet<u64> = self.in_force().filter_map(|f| f.removing).collect();
        self.cluster
            .nodes
            .values()
            .filter(|n| {
                n.member && n.voter && !removing.contains(&n.id) && Some(n.id) != also_removing
            })
            .map(|n| n.id)
            .collect()
    }

    /// Members that are down, stopped or cut off from the majority.
    fn impaired(&self) -> BTreeSet<u64> {
        self.cluster
            .nodes
            .values()
            .filter(|n| {
                n.member
                    && (n.down
                        || n.paused
                        || self
                            .partition
                            .as_ref()
                            .is_some_and(|p| p.side.contains(&n.id)))
            })
            .map(|n| n.id)
            .collect()
    }

    /// Whether a majority of the voters stays up and connected with `extra`
    /// impaired as well (and `removing` on its way out).
    fn fits(&self, extra: &BTreeSet<u64>, removing: Option<u64>) -> bool {
        let voters = self.voters(removing);
        let out = self
            .impaired()
            .union(extra)
            .filter(|id| voters.contains(id))
            .count();
        !voters.is_empty() && out <= (voters.len() - 1) / 2
    }

    /// Nodes a kill or a pause may take: running members no other fault
    /// holds, whose loss leaves a majority.
    fn process_targets(&self) -> Vec<u64> {
        let held = self.held();
        self.cluster
            .nodes
            .values()
            .filter(|n| {
                n.member
                    && n.child.is_some()
                    && !n.paused
                    && !held.contains(&n.id)
                    && self.fits(&BTreeSet::from([n.id]), None)
            })
            .map(|n| n.id)
            .collect()
    }

    /// Voters a membership change may remove (the rest keeping a majority).
    fn membership_targets(&self) -> Vec<u64> {
        let held = self.held();
        self.cluster
            .nodes
            .values()
            .filter(|n| {
                n.member
                    && n.voter
                    && n.child.is_some()
                    && !n.paused
                    && !held.contains(&n.id)
                    && self.fits(&BTreeSet::new(), Some(n.id))
            })
            .map(|n| n.id)
            .collect()
    }

    /// Voters up, running and on the majority's side, held by no fault.
    fn healthy_voters(&self) -> Vec<u64> {
        let impaired = self.impaired();
        let held = self.held();
        self.voters(None)
            .into_iter()
            .filter(|id| !impaired.contains(id) && !held.contains(id))
            .collect()
    }

    /// Whether a fault of this kind could start now (with `--overlap`).
    fn admits(&self, kind: Kind) -> bool {
        let in_force: Vec<Kind> = self.in_force().map(|f| f.kind).collect();
        if in_force.len() >= MAX_FAULTS {
            return false;
        }
        match kind {
            Kind::Kill | Kind::Pause => !self.process_targets().is_empty(),
            // One change at a time (raft-kv allows one), one partition at a
            // time (a node has one set of fault rules), one burst.
            Kind::Membership => {
                !in_force.contains(&kind)
                    && self.cluster.nodes.contains_key(&self.next_spare)
                    && !self.membership_targets().is_empty()
            }
            Kind::Partition | Kind::Transfer | Kind::Burst => !in_force.contains(&kind),
        }
    }

    fn phase(&self, id: u64) -> Phase {
        self.faults.get(&id).map_or(Phase::Over, |f| f.phase)
    }

    fn start(&mut self, kind: Kind) -> u64 {
        let id = self.next_fault;
        self.next_fault += 1;
        self.faults.insert(
            id,
            FaultEntry {
                kind,
                phase: Phase::Starting,
                holds: BTreeSet::new(),
                removing: None,
                earlier: BTreeSet::new(),
            },
        );
        id
    }

    /// The fault takes effect; returns the faults already in force, for the
    /// log.
    fn begin(&mut self, id: u64, holds: BTreeSet<u64>) -> String {
        let earlier: BTreeSet<u64> = self
            .faults
            .iter()
            .filter(|(i, f)| **i != id && matches!(f.phase, Phase::Active(_)))
            .map(|(i, _)| *i)
            .collect();
        let text = self.describe(&earlier);
        let entry = self.faults.get_mut(&id).expect("a started fault");
        entry.phase = Phase::Active(Instant::now());
        entry.holds = holds;
        entry.earlier = earlier;
        *self
            .stats
            .attempted
            .entry(entry.kind.name().into())
            .or_default() += 1;
        text
    }

    fn skip(&mut self, id: u64) {
        let entry = self.faults.get_mut(&id).expect("a started fault");
        entry.phase = Phase::Over;
        *self
            .stats
            .skipped
            .entry(entry.kind.name().into())
            .or_default() += 1;
    }

    /// The fault ends: counts it, and the overlaps it took part in as the
    /// later fault. Returns those, for the log.
    fn finish(&mut self, id: u64, done: bool) -> String {
        let kind = self.faults[&id].kind;
        let mut earlier = self.faults[&id].earlier.clone();
        if kind == Kind::Transfer {
            // A transfer takes effect when it returns: it overlapped the
            // faults that were in force from its start to its end.
            earlier.retain(|e| matches!(self.faults[e].phase, Phase::Active(_)));
        }
        for e in &earlier {
            let name = overlap_name(kind, self.faults[e].kind);
            let counts = if done {
                &mut self.stats.overlaps
            } else {
                &mut self.stats.overlaps_failed
            };
            *counts.entry(name).or_default() += 1;
        }
        if done {
            *self.stats.done.entry(kind.name().into()).or_default() += 1;
        }
        self.faults.get_mut(&id).expect("a started fault").phase = Phase::Over;
        self.describe(&earlier)
    }

    fn describe(&self, ids: &BTreeSet<u64>) -> String {
        if ids.is_empty() {
            return String::new();
        }
        let list: Vec<String> = ids
            .iter()
            .map(|i| format!("#{i} {}", self.faults[i].kind.name()))
            .collect();
        format!(" [while {}]", list.join(", "))
    }
}

fn shuffle<T>(rng: &mut Rng, items: &mut [T]) {
    for i in (1..items.len()).rev() {
        let j = rng.below(i as u64 + 1) as usize;
        items.swap(i, j);
    }
}

/// The leader half the time (if it is a candidate), else any candidate.
fn pick_target(rng: &mut Rng, leader: Option<u64>, candidates: &[u64]) -> Option<u64> {
    if candidates.is_empty() {
        return None;
    }
    let prefer_leader = rng.below(2) == 0;
    match leader {
        Some(l) if prefer_leader && candidates.contains(&l) => Some(l),
        _ => Some(rng.pick(candidates)),
    }
}

fn leader_note(target: u64, leader: Option<u64>) -> &'static str {
    if Some(target) == leader {
        " (the leader)"
    } else {
        ""
    }
}

/// The nemesis: its faults run as futures polled together by [`Running`]
/// (they borrow this, so they are not spawned tasks).
struct Nemesis<'a> {
    world: Mutex<World<'a>>,
    admin: &'a Client,
    admin_config: &'a ClientConfig,
    history: &'a History,
    /// For the members' addresses.
    shared: &'a Shared,
    /// One fault-rule synchronisation at a time, so that a node's rules are
    /// the last ones sent to it.
    sync_lock: tokio::sync::Mutex<()>,
}

impl<'a> Nemesis<'a> {
    fn world(&self) -> std::sync::MutexGuard<'_, World<'a>> {
        self.world.lock().expect("the nemesis lock")
    }

    fn event(&self, text: String) {
        self.history.event(format!("nemesis: {text}"));
    }

    fn phase(&self, id: u64) -> Phase {
        self.world().phase(id)
    }

    /// An operator's client that knows the members there are now (see
    /// run_client): the shared admin client also lists removed nodes.
    async fn operator(&self) -> Result<Client> {
        let mut config = self.admin_config.clone();
        config.endpoints = self.shared.members.lock().unwrap().1.clone();
        Ok(Client::connect(config).await?)
    }

    /// The running members (not stopped), with their addresses.
    fn reachable(&self) -> Vec<(u64, String)> {
        let w = self.world();
        w.cluster
            .members()
            .into_iter()
            .filter(|id| {
                let n = &w.cluster.nodes[id];
                !n.down && !n.paused
            })
            .map(|id| (id, w.cluster.address(id)))
            .collect()
    }

    async fn leader(&self) -> Option<u64> {
        leader_among(self.admin, &self.reachable()).await
    }

    /// Gives every running node the fault rules of the partition in force
    /// (none without one). Returns the nodes that could not be reached.
    async fn sync_faults(&self) -> Vec<u64> {
        let _one_at_a_time = self.sync_lock.lock().await;
        let (want, rules, todo) = {
            let w = self.world();
            let want = w.partition.as_ref().map(|p| p.fault);
            let rules = w
                .partition
                .as_ref()
                .map(|p| p.rules.clone())
                .unwrap_or_default();
            let todo: Vec<(u64, String, u64)> = w
                .cluster
                .nodes
                .values()
                .filter(|n| n.child.is_some() && !n.paused && n.rules != want)
                .map(|n| (n.id, n.addr.to_string(), n.incarnation))
                .collect();
            (want, rules, todo)
        };
        let mut failed = Vec::new();
        for (id, address, incarnation) in todo {
            let result = tokio::time::timeout(
                Duration::from_secs(2),
                self.admin.set_faults(&address, rules.clone()),
            )
            .await;
            if matches!(result, Ok(Ok(()))) {
                let mut w = self.world();
                let node = w.cluster.nodes.get_mut(&id).expect("known node");
                // A node restarted meanwhile starts without rules.
                if node.incarnation == incarnation {
                    node.rules = want;
                }
            } else {
                failed.push(id);
            }
        }
        failed
    }

    async fn sync_faults_within(&self, limit: Duration) -> Vec<u64> {
        let deadline = Instant::now() + limit;
        loop {
            let failed = self.sync_faults().await;
            if failed.is_empty() || Instant::now() >= deadline {
                return failed;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Beside the faults: restarts members that exited by themselves, and
    /// gives nodes that were down or stopped when the partition changed
    /// its rules once they run again.
    async fn background(&self) {
        loop {
            self.world().cluster.reap(self.history);
            self.sync_faults().await;
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// One fault, from its start to its end (the bookkeeping of
    /// [`World::begin`] and [`World::finish`] is done inside).
    async fn fault(&self, id: u64, kind: Kind, mut rng: Rng, hold: Duration) {
        let result = match kind {
            Kind::Kill | Kind::Pause => self.kill_or_pause(id, kind, &mut rng, hold).await,
            Kind::Partition => self.partition(id, &mut rng, hold).await,
            Kind::Membership => self.membership(id, &mut rng, hold).await,
            Kind::Transfer => self.transfer(id, &mut rng).await,
            Kind::Burst => self.burst(id).await,
        };
        if let Err(e) = result {
            self.event(format!("#{id} {} failed: {e:#}", kind.name()));
            let mut w = self.world();
            w.cluster
                .problems
                .push(format!("nemesis {kind:?} failed: {e:#}"));
            match w.phase(id) {
                Phase::Starting => w.skip(id),
                Phase::Active(_) => {
                    w.finish(id, false);
                }
                Phase::Over => {}
            }
        }
    }

    fn skipped(&self, id: u64, kind: Kind, why: &str) {
        self.world().skip(id);
        self.event(format!("#{id} {} skipped: {why}", kind.name()));
    }

    async fn kill_or_pause(
        &self,
        id: u64,
        kind: Kind,
        rng: &mut Rng,
        hold: Duration,
    ) -> Result<()> {
        let leader = self.leader().await;
        let target = {
            let mut w = self.world();
            let Some(target) = pick_target(rng, leader, &w.process_targets()) else {
                drop(w);
                self.skipped(id, kind, "no node can stop without costing the quorum");
                return Ok(());
            };
            let signal = if kind == Kind::Kill {
                w.cluster.kill(target);
                "SIGKILL"
            } else {
                w.cluster.pause(target);
                "SIGSTOP"
            };
            let during = w.begin(id, BTreeSet::from([target]));
            self.event(format!(
                "#{id} {} start: {signal} node {target}{} for {hold:?}{during}",
                kind.name(),
                leader_note(target, leader)
            ));
            target
        };
        tokio::time::sleep(hold).await;
        let mut w = self.world();
        let what = if kind == Kind::Kill {
            w.cluster.spawn(target)?;
            "restarted"
        } else {
            w.cluster.resume(target);
            "SIGCONT"
        };
        w.finish(id, true);
        self.event(format!("#{id} {} end: {what} node {target}", kind.name()));
        Ok(())
    }

    async fn partition(&self, id: u64, rng: &mut Rng, hold: Duration) -> Result<()> {
        let leader = self.leader().await;
        let (side, other) = {
            let mut w = self.world();
            if w.partition.is_some() {
                drop(w);
                self.skipped(id, Kind::Partition, "another partition is in force");
                return Ok(());
            }
            let members = w.cluster.members();
            let mut shuffled = members.clone();
            shuffle(rng, &mut shuffled);
            let minority_size = 1 + rng.below(((members.len() as u64 - 1) / 2).max(1)) as usize;
            // Cut the leader off with the minority half the time.
            let mut candidates = Vec::new();
            if rng.below(2) == 0
                && let Some(l) = leader
                && members.contains(&l)
            {
                candidates.push(l);
            }
            candidates.extend(shuffled);
            let mut side = BTreeSet::new();
            for c in candidates {
                if side.len() >= minority_size {
                    break;
                }
                let mut with = side.clone();
                with.insert(c);
                if w.fits(&with, None) {
                    side = with;
                }
            }
            if side.is_empty() {
                drop(w);
                self.skipped(
                    id,
                    Kind::Partition,
                    "no node can be cut off without costing the quorum",
                );
                return Ok(());
            }
            let other: Vec<u64> = members
                .iter()
                .filter(|m| !side.contains(m))
                .copied()
                .collect();
            let mut rules = Vec::new();
            for a in &side {
                for b in &other {
                    rules.push(FaultRule {
                        from: Some(*a),
                        to: Some(*b),
                        fault: Fault::Partition,
                    });
                    rules.push(FaultRule {
                        from: Some(*b),
                        to: Some(*a),
                        fault: Fault::Partition,
                    });
                }
            }
            w.partition = Some(Partition {
                side: side.clone(),
                rules,
                fault: id,
            });
            (side, other)
        };
        // In force once the nodes have the rules.
        let failed = self.sync_faults_within(Duration::from_secs(3)).await;
        let during = self.world().begin(id, BTreeSet::new());
        self.event(format!(
            "#{id} partition start: {side:?} | {other:?} (leader {leader:?}) for {hold:?}{during}"
        ));
        if !failed.is_empty() {
            self.event(format!(
                "#{id} partition: nodes {failed:?} get the rules once they answer"
            ));
        }
        tokio::time::sleep(hold).await;
        self.world().partition = None;
        let failed = self.sync_faults_within(Duration::from_secs(3)).await;
        if !failed.is_empty() {
            self.event(format!(
                "#{id} partition: nodes {failed:?} lose the rules once they answer"
            ));
        }
        self.world().finish(id, true);
        self.event(format!("#{id} partition end: healed"));
        Ok(())
    }

    /// The members as the leader sees them: (id, voter).
    async fn leader_members(&self) -> Option<Vec<(u64, bool)>> {
        let leader = self.leader().await?;
        let address = self.world().cluster.address(leader);
        let status = tokio::time::timeout(Duration::from_secs(2), self.admin.status_of(&address))
            .await
            .ok()?
            .ok()?;
        let m = &status.raft.membership;
        Some(
            m.addresses()
                .keys()
                .map(|id| (*id, m.is_voter(*id)))
                .collect(),
        )
    }

    async fn membership(&self, id: u64, rng: &mut Rng, hold: Duration) -> Result<()> {
        let leader = self.leader().await;
        let (target, new_id) = {
            let mut w = self.world();
            let new_id = w.next_spare;
            if !w.cluster.nodes.contains_key(&new_id) {
                drop(w);
                self.skipped(id, Kind::Membership, "no spare node left");
                return Ok(());
            }
            let Some(target) = pick_target(rng, leader, &w.membership_targets()) else {
                drop(w);
                self.skipped(
                    id,
                    Kind::Membership,
                    "no voter can leave without costing the quorum",
                );
                return Ok(());
            };
            let during = w.begin(id, BTreeSet::from([target, new_id]));
            w.faults.get_mut(&id).expect("begun").removing = Some(target);
            self.event(format!(
                "#{id} membership start: remove node {target}{}, then add node {new_id}{during}",
                leader_note(target, leader)
            ));
            (target, new_id)
        };
        let operator = self.operator().await?;
        let removed = tokio::time::timeout(Duration::from_secs(10), operator.remove(target)).await;
        self.event(format!(
            "#{id} membership: remove node {target}: {removed:?}"
        ));
        let mut gone = matches!(removed, Ok(Ok(_)));
        if !gone {
            // Did it happen anyway? Ask the leader for a while.
            let deadline = Instant::now() + Duration::from_secs(3);
            while Instant::now() < deadline {
                if let Some(m) = self.leader_members().await {
                    gone = !m.iter().any(|(m, _)| *m == target);
                    if gone {
                        break;
                    }
                }
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        }
        if !gone {
            let mut w = self.world();
            w.uncertain.insert(target);
            w.finish(id, false);
            self.event(format!(
                "#{id} membership end: node {target} stays a member (its removal was not confirmed)"
            ));
            return Ok(());
        }
        let endpoints: Vec<String> = {
            let mut w = self.world();
            let node = w.cluster.nodes.get_mut(&target).expect("member");
            node.member = false;
            node.voter = false;
            w.cluster.kill(target);
            w.next_spare += 1;
            let spare = w.cluster.nodes.get_mut(&new_id).expect("spare");
            spare.member = true;
            spare.voter = false;
            w.cluster.write_config(new_id, None)?;
            w.cluster.spawn(new_id)?;
            w.cluster
                .members()
                .iter()
                .map(|&id| w.cluster.address(id))
                .collect()
        };
        // The clients follow (see run_client).
        {
            let mut members = self.shared.members.lock().unwrap();
            *members = (members.0 + 1, endpoints.clone());
        }
        // An operator's client for the rest of the change knows the members
        // there are now: the shared admin client also lists the removed and
        // spare nodes, each costing a connect timeout when the client goes
        // looking for the leader.
        let mut config = self.admin_config.clone();
        config.endpoints = endpoints;
        let admin = &Client::connect(config).await?;
        let address = self.world().cluster.address(new_id);
        self.event(format!(
            "#{id} membership: add node {new_id} at {address} as a learner"
        ));
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut added = false;
        while Instant::now() < deadline && !added {
            match tokio::time::timeout(Duration::from_secs(6), admin.add_learner(new_id, &address))
                .await
            {
                Ok(Ok(_)) => added = true,
                other => {
                    self.event(format!("#{id} membership: add_learner {new_id}: {other:?}"));
                    if let Ok(Ok(m)) =
                        tokio::time::timeout(Duration::from_secs(3), admin.members()).await
                        && m.iter().any(|m| m.id == new_id)
                    {
                        added = true;
                    } else {
                        tokio::time::sleep(Duration::from_millis(300)).await;
                    }
                }
            }
        }
        let mut promoted = false;
        tokio::time::sleep(hold).await;
        while added && Instant::now() < deadline + Duration::from_secs(10) && !promoted {
            match tokio::time::timeout(Duration::from_secs(6), admin.promote(new_id)).await {
                Ok(Ok(_)) => promoted = true,
                other => {
                    self.event(format!("#{id} membership: promote {new_id}: {other:?}"));
                    if let Ok(Ok(m)) =
                        tokio::time::timeout(Duration::from_secs(3), admin.members()).await
                        && m.iter().any(|m| m.id == new_id && m.voter)
                    {
                        promoted = true;
                    } else {
                        tokio::time::sleep(Duration::from_millis(300)).await;
                    }
                }
            }
        }
        let done = added && promoted;
        let mut w = self.world();
        if promoted {
            w.cluster.nodes.get_mut(&new_id).expect("member").voter = true;
        } else {
            w.uncertain.insert(new_id);
            w.cluster
                .problems
                .push(format!("could not add node {new_id} back as a voter"));
        }
        w.finish(id, done);
        self.event(format!(
            "#{id} membership end: node {target} removed, node {new_id} added {added}, promoted {promoted}"
        ));
        Ok(())
    }

    async fn transfer(&self, id: u64, rng: &mut Rng) -> Result<()> {
        // A transfer needs a leader: give an election (after a kill of the
        // leader, say) a moment.
        let deadline = Instant::now() + Duration::from_secs(3);
        let leader = loop {
            let leader = self.leader().await;
            if leader.is_some() || Instant::now() >= deadline {
                break leader;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        let to = {
            let mut w = self.world();
            let others: Vec<u64> = w
                .healthy_voters()
                .into_iter()
                .filter(|v| Some(*v) != leader)
                .collect();
            if others.is_empty() {
                drop(w);
                self.skipped(id, Kind::Transfer, "no voter to move leadership to");
                return Ok(());
            }
            let to = rng.pick(&others);
            let during = w.begin(id, BTreeSet::new());
            self.event(format!(
                "#{id} transfer start: leadership {leader:?} -> {to}{during}"
            ));
            to
        };
        let operator = self.operator().await?;
        let result =
            tokio::time::timeout(Duration::from_secs(8), operator.transfer_leader(Some(to))).await;
        let during = self.world().finish(id, matches!(result, Ok(Ok(_))));
        self.event(format!(
            "#{id} transfer end: leadership {leader:?} -> {to}: {result:?}{during}"
        ));
        Ok(())
    }

    async fn burst(&self, id: u64) -> Result<()> {
        let n = 400;
        // The writers know the members there are now (see run_client).
        let mut config = self.admin_config.clone();
        config.endpoints = self.shared.members.lock().unwrap().1.clone();
        let burst = {
            let mut w = self.world();
            w.burst_no += 1;
            let during = w.begin(id, BTreeSet::new());
            self.event(format!("#{id} burst start: {n} writes (snapshots){during}"));
            w.burst_no
        };
        let mut tasks = tokio::task::JoinSet::new();
        let writes: Vec<(String, String)> = (0..n)
            .map(|i| (format!("burst-{burst:02}-{i:04}"), format!("b{burst}-{i}")))
            .collect();
        // 16 writers at a time.
        let acked = Arc::new(Mutex::new(Vec::new()));
        for chunk in writes.chunks(n / 16) {
            let chunk = chunk.to_vec();
            let acked = acked.clone();
            let config = config.clone();
            tasks.spawn(async move {
                let Ok(c) = Client::connect(config).await else {
                    return;
                };
                for (k, v) in chunk {
                    if let Ok(Ok(_)) =
                        tokio::time::timeout(Duration::from_secs(6), c.put(k.clone(), v.clone()))
                            .await
                    {
                        acked.lock().unwrap().push((k, v));
                    }
                }
            });
        }
        while tasks.join_next().await.is_some() {}
        let acked = std::mem::take(&mut *acked.lock().unwrap());
        let count = acked.len();
        let mut w = self.world();
        w.stats.burst_acked.extend(acked);
        w.finish(id, true);
        self.event(format!("#{id} burst end: {count} writes acknowledged"));
        Ok(())
    }
}

type FaultFuture<'a> = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + 'a>>;

/// The faults in progress, polled together with the nemesis's background
/// chores whenever the scheduler waits.
struct Running<'a> {
    faults: Vec<FaultFuture<'a>>,
    background: FaultFuture<'a>,
}

impl Running<'_> {
    fn poll_all(&mut self, cx: &mut std::task::Context<'_>) {
        // The background loop never ends.
        let _ = self.background.as_mut().poll(cx);
        self.faults.retain_mut(|f| f.as_mut().poll(cx).is_pending());
    }

    /// Runs the faults in progress for `d`.
    async fn run_for(&mut self, d: Duration) {
        let sleep = tokio::time::sleep(d);
        tokio::pin!(sleep);
        std::future::poll_fn(|cx| {
            self.poll_all(cx);
            sleep.as_mut().poll(cx)
        })
        .await;
    }

    /// Runs the faults in progress until they have all ended.
    async fn run_until_idle(&mut self) {
        std::future::poll_fn(|cx| {
            self.poll_all(cx);
            if self.faults.is_empty() {
                std::task::Poll::Ready(())
            } else {
                std::task::Poll::Pending
            }
        })
        .await;
    }
}

/// What the overlapping scheduler starts next.
#[derive(Clone, Copy, Debug)]
enum Plan {
    One(Kind),
    /// `first`, then `then` a seeded moment after `first` takes effect.
    /// `required`: one of [`REQUIRED_OVERLAPS`], started when no other fault
    /// is in progress (so that it has the room it needs).
    Two {
        first: Kind,
        then: Kind,
        required: bool,
    },
}

/// A second fault waiting for its moment.
struct Follow {
    after: u64,
    kind: Kind,
    offset: Duration,
    hold: Duration,
}

/// Runs the nemesis until `end`, lets every fault end, then heals the
/// cluster: every member running, no fault rules left.
async fn run_nemesis(nemesis: &Nemesis<'_>, overlap: bool, rng: &mut Rng, end: Instant) {
    let mut running = Running {
        faults: Vec::new(),
        background: Box::pin(nemesis.background()),
    };
    running.run_for(rng.millis(500, 1500)).await;
    if overlap {
        overlapping(nemesis, rng, end, &mut running).await;
    } else {
        one_at_a_time(nemesis, rng, end, &mut running).await;
    }
    running.run_until_idle().await;
    drop(running);

    nemesis.history.event("healing the cluster".into());
    {
        let mut w = nemesis.world();
        w.cluster.reap(nemesis.history);
        for id in w.cluster.members() {
            // Every fault ended, so none of this should be needed.
            if w.cluster.nodes[&id].paused {
                nemesis.event(format!("node {id} was left stopped; SIGCONT"));
                w.cluster.resume(id);
            }
            if w.cluster.nodes[&id].down {
                nemesis.event(format!("node {id} was left down; restarting it"));
                if let Err(e) = w.cluster.spawn(id) {
                    w.cluster
                        .problems
                        .push(format!("restarting node {id}: {e:#}"));
                }
            }
        }
        w.partition = None;
    }
    let failed = nemesis.sync_faults_within(Duration::from_secs(30)).await;
    if !failed.is_empty() {
        nemesis.world().cluster.problems.push(format!(
            "could not lift the fault rules of nodes {failed:?}"
        ));
    }
}

/// One fault at a time: every kind once in a seeded order; then a kind
/// that has not completed yet (a transfer can be refused), then seeded
/// picks.
async fn one_at_a_time<'n>(
    nemesis: &'n Nemesis<'_>,
    rng: &mut Rng,
    end: Instant,
    running: &mut Running<'n>,
) {
    let mut schedule: Vec<Kind> = KINDS.to_vec();
    shuffle(rng, &mut schedule);
    let mut step = 0usize;
    while Instant::now() < end {
        let not_done = {
            let w = nemesis.world();
            KINDS
                .iter()
                .copied()
                .find(|k| !w.stats.done.contains_key(k.name()))
        };
        let kind = match (schedule.get(step), not_done) {
            (Some(kind), _) => *kind,
            (None, Some(kind)) => kind,
            (None, None) => rng.pick(&KINDS),
        };
        step += 1;
        let id = nemesis.world().start(kind);
        let hold = rng.millis(1500, 4000);
        running
            .faults
            .push(Box::pin(nemesis.fault(id, kind, Rng(rng.next()), hold)));
        running.run_until_idle().await;
        running.run_for(rng.millis(500, 2000)).await;
    }
}

/// Faults that overlap. First the required combinations (each started when
/// nothing else runs, its second fault a seeded moment into the first) and
/// a burst, in a seeded order; then, while a required combination has not
/// happened, it again; then any kind that has not completed; then seeded
/// picks, one or two faults at a time, every 0.3-1.5 s, whatever is still
/// in progress: up to [`MAX_FAULTS`] at once, within the quorum budget
/// ([`World::fits`]).
async fn overlapping<'n>(
    nemesis: &'n Nemesis<'_>,
    rng: &mut Rng,
    end: Instant,
    running: &mut Running<'n>,
) {
    let mut plan: Vec<Plan> = REQUIRED_OVERLAPS
        .iter()
        .map(|&(later, earlier)| Plan::Two {
            first: earlier,
            then: later,
            required: true,
        })
        .collect();
    plan.push(Plan::One(Kind::Burst));
    shuffle(rng, &mut plan);
    let mut plan: std::collections::VecDeque<Plan> = plan.into();
    let mut follows: Vec<Follow> = Vec::new();
    let mut next = Instant::now();
    while Instant::now() < end {
        let now = Instant::now();
        // Second faults whose moment has come.
        let mut due = Vec::new();
        follows.retain(|f| match nemesis.phase(f.after) {
            Phase::Starting => true,
            Phase::Active(since) if now < since + f.offset => true,
            Phase::Active(_) => {
                due.push((f.after, f.kind, f.hold));
                false
            }
            Phase::Over => {
                nemesis.event(format!(
                    "#{} ended before the {} planned with it",
                    f.after,
                    f.kind.name()
                ));
                false
            }
        });
        for (after, kind, hold) in due {
            let id = {
                let mut w = nemesis.world();
                if !w.admits(kind) {
                    drop(w);
                    nemesis.event(format!(
                        "no room for the {} planned with #{after}",
                        kind.name()
                    ));
                    continue;
                }
                w.start(kind)
            };
            running
                .faults
                .push(Box::pin(nemesis.fault(id, kind, Rng(rng.next()), hold)));
        }

        if now >= next {
            let planned = plan.front().copied();
            let choice = planned.unwrap_or_else(|| {
                let w = nemesis.world();
                let missing = REQUIRED_OVERLAPS
                    .iter()
                    .find(|(later, earlier)| {
                        !w.stats
                            .overlaps
                            .contains_key(&overlap_name(*later, *earlier))
                    })
                    .copied();
                let not_done = KINDS
                    .iter()
                    .copied()
                    .find(|k| !w.stats.done.contains_key(k.name()));
                match (missing, not_done) {
                    (Some((later, earlier)), _) => Plan::Two {
                        first: earlier,
                        then: later,
                        required: true,
                    },
                    (None, Some(kind)) => Plan::One(kind),
                    (None, None) => {
                        let kind = rng.pick(&KINDS);
                        if rng.chance(50) {
                            // Two of a kind only where two can run at once.
                            let then: Vec<Kind> = KINDS
                                .into_iter()
                                .filter(|k| *k != kind || matches!(k, Kind::Kill | Kind::Pause))
                                .collect();
                            Plan::Two {
                                first: kind,
                                then: rng.pick(&then),
                                required: false,
                            }
                        } else {
                            Plan::One(kind)
                        }
                    }
                }
            });
            let (first, room) = {
                let w = nemesis.world();
                let (first, quiet) = match choice {
                    Plan::One(kind) => (kind, true),
                    Plan::Two {
                        first, required, ..
                    } => (first, !required || w.in_force().next().is_none()),
                };
                (first, quiet && w.admits(first))
            };
            // A required combination waits for the faults in progress to
            // end (nothing else starts meanwhile); a seeded pick that does
            // not fit is dropped.
            let random = planned.is_none()
                && matches!(
                    choice,
                    Plan::One(_)
                        | Plan::Two {
                            required: false,
                            ..
                        }
                );
            if room {
                if planned.is_some() {
                    plan.pop_front();
                }
                let hold = match choice {
                    Plan::Two { .. } if matches!(first, Kind::Kill | Kind::Partition) => {
                        rng.millis(2500, 4500)
                    }
                    _ => rng.millis(1500, 4000),
                };
                let id = nemesis.world().start(first);
                running
                    .faults
                    .push(Box::pin(nemesis.fault(id, first, Rng(rng.next()), hold)));
                if let Plan::Two { then, .. } = choice {
                    let offset = match first {
                        Kind::Kill | Kind::Pause | Kind::Partition => {
                            rng.millis(100, hold.as_millis() as u64 / 3)
                        }
                        Kind::Membership | Kind::Burst => rng.millis(100, 1500),
                        Kind::Transfer => rng.millis(0, 50),
                    };
                    nemesis.event(format!(
                        "#{id} {}, then a {} {offset:?} after it takes effect",
                        first.name(),
                        then.name()
                    ));
                    follows.push(Follow {
                        after: id,
                        kind: then,
                        offset,
                        hold: rng.millis(1500, 4000),
                    });
                }
                next = now + rng.millis(300, 1500);
            } else if random {
                next = now + rng.millis(100, 500);
            } else {
                next = now + Duration::from_millis(200);
            }
        }
        let wake = next.min(end).min(now + Duration::from_millis(100));
        running
            .run_for(wake.saturating_duration_since(Instant::now()))
            .await;
    }
}

// ------------------------------------------------------------------ checks

fn value_of(record: &Record) -> Option<&String> {
    match &record.op {
        Op::Get => None,
        Op::Put(v) => Some(v),
        Op::Cas { new, .. } => Some(new),
    }
}

/// Whether the operation may have written its value: an acknowledged put
/// or swapping CAS, or a write with an unknown outcome.
fn may_have_written(record: &Record) -> bool {
    match (&record.outcome, &record.op) {
        (_, Op::Get) | (Outcome::Fail, _) => false,
        (Outcome::Unknown, _) | (Outcome::Ok, Op::Put(_)) => true,
        (Outcome::Ok, Op::Cas { .. }) => record.result.as_deref() == Some("true"),
    }
}

fn to_operation(record: &Record) -> Option<Operation<CasOp, CasRet>> {
    let op = match &record.op {
        Op::Get => CasOp::Read,
        Op::Put(v) => CasOp::Write(v.clone()),
        Op::Cas { expected, new } => CasOp::Cas {
            expected: expected.clone(),
            new: Some(new.clone()),
        },
    };
    let ret = match record.outcome {
        Outcome::Fail => return None,
        Outcome::Unknown => None,
        Outcome::Ok => Some(match &record.op {
            Op::Get => CasRet::ReadOk(record.result.clone()),
            Op::Put(_) => CasRet::WriteOk,
            Op::Cas { .. } => {
                if record.result.as_deref() == Some("true") {
                    CasRet::CasOk
                } else {
                    CasRet::CasFail
                }
            }
        }),
    };
    Some(Operation {
        process: record.client,
        op,
        ret,
        invoke: record.invoke_us,
        complete: record.complete_us,
    })
}

struct KeyReport {
    key: String,
    ops: usize,
    unknown: usize,
    wgl: Verdict,
    wgl_time: Duration,
    stateright: Option<Result<bool, String>>,
    stateright_time: Duration,
    /// How many operations stateright judged (fewer than `ops` when it
    /// judged the prefix that shows a violation).
    stateright_ops: usize,
}

/// The part of `history` up to time `t`: operations invoked by then, those
/// still running at `t` with an unknown outcome. If the whole history is
/// linearizable, so is this prefix (take a linearization of the whole and
/// drop the operations invoked after `t`: every operation of the prefix
/// with a known result is linearized before `t`, hence before them; the
/// rest may take effect late or never). So a prefix that is not
/// linearizable proves the whole is not, and is far cheaper for
/// stateright's exhaustive search to refute.
fn prefix_until(history: &[Operation<CasOp, CasRet>], t: u64) -> Vec<Operation<CasOp, CasRet>> {
    history
        .iter()
        .filter(|o| o.invoke <= t)
        .map(|o| {
            let mut o = o.clone();
            if o.complete > t {
                o.ret = None;
            }
            o
        })
        .collect()
}

fn history_to_json(history: &[Operation<CasOp, CasRet>]) -> serde_json::Value {
    let ops: Vec<serde_json::Value> = history
        .iter()
        .map(|o| {
            let (f, a, b) = match &o.op {
                CasOp::Read => ("read", None, None),
                CasOp::Write(v) => ("write", Some(v.clone()), None),
                CasOp::Cas { expected, new } => ("cas", expected.clone(), new.clone()),
            };
            let ret = o.ret.as_ref().map(|r| match r {
                CasRet::ReadOk(v) => serde_json::json!({"read": v}),
                CasRet::WriteOk => serde_json::json!("write-ok"),
                CasRet::CasOk => serde_json::json!("cas-ok"),
                CasRet::CasFail => serde_json::json!("cas-fail"),
            });
            serde_json::json!({"process": o.process, "f": f, "a": a, "b": b, "ret": ret,
                "invoke": o.invoke, "complete": o.complete})
        })
        .collect();
    serde_json::Value::Array(ops)
}

fn history_from_json(value: &serde_json::Value) -> Option<Vec<Operation<CasOp, CasRet>>> {
    let text = |v: &serde_json::Value| v.as_str().map(str::to_string);
    value
        .as_array()?
        .iter()
        .map(|o| {
            let op = match o["f"].as_str()? {
                "read" => CasOp::Read,
                "write" => CasOp::Write(text(&o["a"])?),
                "cas" => CasOp::Cas {
                    expected: text(&o["a"]),
                    new: text(&o["b"]),
                },
                _ => return None,
            };
            let ret = match &o["ret"] {
                serde_json::Value::Null => None,
                serde_json::Value::String(s) => Some(match s.as_str() {
                    "write-ok" => CasRet::WriteOk,
                    "cas-ok" => CasRet::CasOk,
                    "cas-fail" => CasRet::CasFail,
                    _ => return None,
                }),
                r => Some(CasRet::ReadOk(text(&r["read"]))),
            };
            Some(Operation {
                process: o["process"].as_u64()?,
                op,
                ret,
                invoke: o["invoke"].as_u64()?,
                complete: o["complete"].as_u64()?,
            })
        })
        .collect()
}

/// The child side of [`stateright_in_child`]: prints `linearizable`, `not
/// linearizable` or `error: ...`.
fn stateright_child(path: &Path) -> ExitCode {
    let verdict = std::fs::read_to_string(path)
        .map_err(|e| e.to_string())
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).map_err(|e| e.to_string()))
        .and_then(|v| {
            let h =
                history_from_json(&v["ops"]).ok_or_else(|| "malformed history file".to_string())?;
            let inits: Vec<Option<String>> = match v["inits"].as_array() {
                Some(a) => a.iter().map(|s| s.as_str().map(str::to_string)).collect(),
                None => vec![None],
            };
            // Deep recursion: one frame per operation linearized.
            std::thread::Builder::new()
                .stack_size(512 << 20)
                .spawn(move || {
                    // Linearizable from some initial state?
                    for init in inits {
                        if checker::check_stateright(CasRegister(init), &h)? {
                            return Ok(true);
                        }
                    }
                    Ok(false)
                })
                .map_err(|e| e.to_string())?
                .join()
                .map_err(|_| "stateright panicked".to_string())?
        });
    match verdict {
        Ok(true) => println!("linearizable"),
        Ok(false) => println!("not linearizable"),
        Err(e) => println!("error: {e}"),
    }
    ExitCode::SUCCESS
}

/// stateright's verdict on `history`, computed in a child process that is
/// killed after `budget` (`None`: undecided).
fn stateright_in_child(
    dir: &Path,
    name: &str,
    history: &[Operation<CasOp, CasRet>],
    inits: &[Option<String>],
    budget: Duration,
) -> Option<Result<bool, String>> {
    let path = dir.join(format!("{name}.json"));
    let file = serde_json::json!({"ops": history_to_json(history), "inits": inits});
    std::fs::write(&path, file.to_string()).ok()?;
    let mut child = Command::new(std::env::current_exe().ok()?)
        .arg("--stateright-file")
        .arg(&path)
        .stdout(Stdio::piped())
        .spawn()
        .ok()?;
    let started = Instant::now();
    let verdict = loop {
        match child.try_wait() {
            Ok(Some(_)) => {
                let mut out = String::new();
                use std::io::Read as _;
                child.stdout.take()?.read_to_string(&mut out).ok()?;
                let out = out.trim();
                break match out {
                    "linearizable" => Some(Ok(true)),
                    "not linearizable" => Some(Ok(false)),
                    other => Some(Err(other.to_string())),
                };
            }
            Ok(None) if started.elapsed() < budget => std::thread::sleep(Duration::from_millis(10)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
        }
    };
    let _ = std::fs::remove_file(&path);
    verdict
}

/// Asks stateright to confirm that `history` (which the WGL search found
/// not linearizable, stuck at an operation that completed at `t`) is not
/// linearizable, on a small window of it: the prefix up to `t` (see
/// [`prefix_until`]), from a quiescent point on (a time no operation
/// spans, so everything before it is linearized before everything after
/// it). The window is judged from every state the part before the point
/// could leave (absent, or any value written there, a superset of the
/// reachable states): if it is linearizable from none of them, the history
/// is not linearizable. Returns the verdict and the window's size.
fn stateright_refutes(
    dir: &Path,
    key: &str,
    history: &[Operation<CasOp, CasRet>],
    t: u64,
    budget: Duration,
) -> (Option<Result<bool, String>>, usize) {
    let mut prefix = prefix_until(history, t);
    prefix.sort_by_key(|o| o.invoke);
    // Quiescent splits: index i such that every operation before i
    // completed before operation i was invoked.
    let mut splits = vec![0];
    let mut reach = 0u64;
    for (i, o) in prefix.iter().enumerate() {
        if i > 0 && reach < o.invoke {
            splits.push(i);
        }
        reach = reach.max(if o.ret.is_some() {
            o.complete
        } else {
            u64::MAX
        });
    }
    let started = Instant::now();
    let mut last = (None, prefix.len());
    // From the latest split back, a few tries within the budget.
    for &split in splits.iter().rev().take(12) {
        let remaining = budget.saturating_sub(started.elapsed());
        if remaining.is_zero() {
            break;
        }
        let mut inits: Vec<Option<String>> = vec![None];
        if split > 0 {
            for o in &prefix[..split] {
                match &o.op {
                    CasOp::Write(v) => inits.push(Some(v.clone())),
                    CasOp::Cas { new, .. } => inits.push(new.clone()),
                    CasOp::Read => {}
                }
            }
        }
        inits.dedup();
        let window = &prefix[split..];
        let verdict = stateright_in_child(dir, key, window, &inits, remaining.min(budget / 2));
        if matches!(verdict, Some(Ok(false))) {
            return (verdict, window.len());
        }
        last = (verdict, window.len());
    }
    last
}

fn check_key(key: &str, records: &[&Record], budget: Duration, dir: &Path) -> KeyReport {
    let history: Vec<Operation<CasOp, CasRet>> =
        records.iter().filter_map(|r| to_operation(r)).collect();
    let unknown = history.iter().filter(|o| o.ret.is_none()).count();
    let started = Instant::now();
    let wgl = checker::check_wgl(CasRegister::default(), &history, Duration::from_secs(120));
    let wgl_time = started.elapsed();
    let started = Instant::now();
    let (mut stateright, mut stateright_ops) = (None, history.len());
    if let Verdict::NotLinearizable(failure) = &wgl
        && let Some(stuck) = history.get(failure.stuck_at)
    {
        (stateright, stateright_ops) =
            stateright_refutes(dir, key, &history, stuck.complete, budget);
    }
    if !matches!(stateright, Some(Ok(false))) {
        // Judge the whole history.
        stateright_ops = history.len();
        stateright = stateright_in_child(dir, key, &history, &[None], budget);
    }
    let stateright_time = started.elapsed();
    KeyReport {
        key: key.to_string(),
        ops: history.len(),
        unknown,
        wgl,
        wgl_time,
        stateright,
        stateright_time,
        stateright_ops,
    }
}

/// The members the cluster ended with, as its leader says. Where they
/// differ from the nemesis's count only by membership changes whose outcome
/// it could not learn (a remove that timed out and took effect later), the
/// leader's list is adopted; any other difference is a problem.
async fn reconcile_membership(
    admin: &Client,
    cluster: &mut Cluster,
    history: &History,
    uncertain: &BTreeSet<u64>,
) {
    let deadline = Instant::now() + Duration::from_secs(20);
    let actual: BTreeSet<u64> = loop {
        let nodes: Vec<(u64, String)> = cluster
            .members()
            .into_iter()
            .filter(|id| cluster.nodes[id].child.is_some())
            .map(|id| (id, cluster.address(id)))
            .collect();
        if let Some(l) = leader_among(admin, &nodes).await
            && cluster.nodes.contains_key(&l)
            && let Ok(Ok(status)) =
                tokio::time::timeout(Duration::from_secs(2), admin.status_of(&cluster.address(l)))
                    .await
            && status.raft.leader == Some(l)
        {
            break status.raft.membership.addresses().keys().copied().collect();
        }
        if Instant::now() > deadline {
            cluster
                .problems
                .push("no leader told the final membership within 20 s".into());
            return;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    let ours: BTreeSet<u64> = cluster.members().into_iter().collect();
    if actual == ours {
        return;
    }
    history.event(format!(
        "membership: the nemesis counted {ours:?}, the leader has {actual:?}"
    ));
    for id in ours.difference(&actual) {
        if uncertain.contains(id) {
            history.event(format!(
                "membership: node {id} left after all (its change's outcome was unknown); stopping it"
            ));
            cluster.nodes.get_mut(id).expect("known node").member = false;
            cluster.kill(*id);
        } else {
            cluster.problems.push(format!(
                "node {id} is not a member, though the nemesis never removed it"
            ));
        }
    }
    for id in actual.difference(&ours) {
        cluster.problems.push(format!(
            "node {id} is a member, though the nemesis removed it or never added it"
        ));
    }
}

fn digest(kvs: &[(Bytes, Bytes, u64)]) -> u64 {
    // FNV-1a over (key, value, mod revision).
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |bytes: &[u8]| {
        for b in bytes {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    };
    for (k, v, r) in kvs {
        eat(&(k.len() as u64).to_le_bytes());
        eat(k);
        eat(&(v.len() as u64).to_le_bytes());
        eat(v);
        eat(&r.to_le_bytes());
    }
    h
}

/// Every key-value on one node (or, linearizably, on the cluster).
async fn scan_all(
    client: &Client,
    consistency: Consistency,
) -> Result<(u64, Vec<(Bytes, Bytes, u64)>)> {
    let mut out = Vec::new();
    let mut start = Bytes::new();
    let mut revision = 0;
    loop {
        let result = client
            .read(
                ReadOp::Scan {
                    start: start.clone(),
                    end: None,
                    limit: 5000,
                    revision: 0,
                },
                consistency,
            )
            .await?;
        revision = revision.max(result.revision);
        let more = result.more;
        for kv in result.kvs {
            start = raft_kv::protocol::key_after(&kv.key);
            out.push((kv.key, kv.value, kv.mod_revision));
        }
        if !more {
            return Ok((revision, out));
        }
    }
}

// -------------------------------------------------------------------- main

fn main() -> ExitCode {
    let args = Args::parse();
    if let Some(path) = &args.stateright_file {
        return stateright_child(path);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .expect("tokio runtime");
    match runtime.block_on(run(args)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("chaos: error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn rerun_command(args: &Args, seed: u64) -> String {
    let mut cmd = format!(
        "cargo xtask chaos --duration {}s --nodes {} --clients {} --seed {seed}",
        args.duration.as_secs(),
        args.nodes,
        args.clients
    );
    if let Some(b) = &args.broken {
        let _ = write!(cmd, " --broken {b}");
    }
    if args.expect_violation {
        cmd.push_str(" --expect-violation");
    }
    if args.reads == ReadMode::Lease {
        cmd.push_str(" --reads lease");
    }
    if args.overlap {
        cmd.push_str(" --overlap");
    }
    if args.api == Api::Etcd {
        cmd.push_str(" --api etcd");
    }
    cmd
}

async fn run(args: Args) -> Result<bool> {
    if args.nodes < 3 {
        bail!("--nodes must be at least 3 (a majority must survive one fault)");
    }
    if args.overlap && args.nodes < 4 {
        bail!(
            "--overlap needs at least 4 nodes (with 3, a second fault during a membership change costs the quorum)"
        );
    }
    let seed = args.seed.unwrap_or_else(rand::random);
    let bin = match &args.raft_kv {
        Some(p) => p.clone(),
        None => std::env::current_exe()?
            .parent()
            .and_then(Path::parent)
            .context("cannot locate the target directory")?
            .join("raft-kv"),
    };
    if !bin.is_file() {
        bail!(
            "the raft-kv binary is missing at {}: build it first (cargo build --workspace --all-targets --all-features) or pass --raft-kv",
            bin.display()
        );
    }
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    let dir = std::path::absolute(args.out.join(format!("seed-{seed}-{stamp}")))?;
    std::fs::create_dir_all(&dir)?;
    eprintln!(
        "chaos: seed {seed}, {} nodes, {} clients, {:?}; files in {}",
        args.nodes,
        args.clients,
        args.duration,
        dir.display()
    );
    eprintln!("chaos: rerun with: {}", rerun_command(&args, seed));

    let ca = CertificateAuthority::generate("raft-kv chaos CA")?;
    ca.save(&dir.join("ca.pem"), &dir.join("ca.key"))?;
    let ca_pem = ca.cert_pem().to_string();
    let total = args.nodes + SPARES;
    let ports = free_ports(2 * total)?;
    let mut nodes = BTreeMap::new();
    for (i, pair) in ports.chunks(2).enumerate() {
        let id = i as u64 + 1;
        nodes.insert(
            id,
            NodeProc {
                id,
                addr: pair[0],
                etcd: pair[1],
                config: dir.join(format!("node-{id}.toml")),
                log: dir.join(format!("node-{id}.log")),
                child: None,
                member: id <= args.nodes,
                voter: id <= args.nodes,
                paused: false,
                down: true,
                rules: None,
                incarnation: 0,
            },
        );
    }
    let mut cluster = Cluster {
        dir: dir.clone(),
        bin,
        broken: args.broken.clone(),
        reads: args.reads,
        api: args.api,
        nodes,
        ca_pem,
        ca,
        problems: Vec::new(),
    };
    let initial: Vec<u64> = (1..=args.nodes).collect();
    for id in &initial {
        cluster.write_config(*id, Some(&initial))?;
    }
    for id in &initial {
        cluster.spawn(*id)?;
    }
    let result = drive(&args, seed, &dir, &mut cluster).await;
    cluster.stop_all();
    let passed = match result {
        Ok(passed) => passed,
        Err(e) => {
            eprintln!("chaos: the run failed: {e:#}");
            false
        }
    };
    let success = passed;
    if success && !args.keep {
        let _ = std::fs::remove_dir_all(&dir);
    } else {
        eprintln!(
            "chaos: kept the history, node logs and report in {}",
            dir.display()
        );
    }
    if !success {
        eprintln!("chaos: rerun with: {}", rerun_command(&args, seed));
    }
    Ok(success)
}

/// Runs the workload and the nemesis, then checks. `Ok(true)` if the run
/// passed (with `--expect-violation`: if the violation was found).
async fn drive(args: &Args, seed: u64, dir: &Path, cluster: &mut Cluster) -> Result<bool> {
    let client_identity = {
        let issued = cluster
            .ca
            .issue_client(CLUSTER, "chaos", raft_transport_quic::Role::Admin)?;
        issued.identity(&cluster.ca_pem)?
    };
    let all_addresses: Vec<String> = cluster.nodes.values().map(|n| n.addr.to_string()).collect();
    let initial_addresses: Vec<String> = all_addresses[..args.nodes as usize].to_vec();
    let mut admin_config = client_config(&client_identity, all_addresses.clone());
    admin_config.deadline = Duration::from_secs(8);
    let admin = Client::connect(admin_config.clone()).await?;

    // Wait for a leader that serves writes.
    let started = Instant::now();
    loop {
        match tokio::time::timeout(Duration::from_secs(5), admin.put("chaos-ready", "1")).await {
            Ok(Ok(_)) => break,
            other => {
                if started.elapsed() > Duration::from_secs(60) {
                    bail!("the cluster did not accept a write within 60 s: {other:?}");
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }

    let shared = Arc::new(Shared {
        history: History {
            start: Instant::now(),
            records: Mutex::new(Vec::new()),
            events: Mutex::new(Vec::new()),
        },
        stop: AtomicBool::new(false),
        consistency: match args.reads {
            ReadMode::Linearizable => Consistency::Linearizable,
            ReadMode::Lease => Consistency::Lease,
        },
        members: Mutex::new((0, initial_addresses.clone())),
        etcd: match args.api {
            Api::Native => None,
            Api::Etcd => {
                let issued = cluster.ca.issue_client(
                    CLUSTER,
                    "chaos-etcd",
                    raft_transport_quic::Role::ReadWrite,
                )?;
                let etcd_of = cluster
                    .nodes
                    .values()
                    .map(|n| (n.addr.to_string(), n.etcd))
                    .collect();
                let tls = etcd::EtcdTls {
                    ca_pem: cluster.ca_pem.clone(),
                    cert_pem: issued.cert_pem().to_string(),
                    key_pem: issued.key_pem().to_string(),
                };
                Some((etcd_of, tls))
            }
        },
    });
    shared
        .history
        .event(format!("cluster up after {:?}", started.elapsed()));
    let mut rng = Rng(seed);
    let mut clients = tokio::task::JoinSet::new();
    for i in 0..args.clients {
        // Each client starts at a different node (run_client rotates the
        // members' addresses), and every other client stays with the node
        // it reached rather than moving to the leader, so reads are served
        // by followers (follower ReadIndex) as well as by the leader.
        let mut config = client_config(&client_identity, Vec::new());
        config.prefer_leader = i % 2 == 0;
        let client_rng = Rng(rng.next());
        clients.spawn(run_client(i + 1, config, shared.clone(), client_rng));
    }

    // The nemesis (one fault at a time, or overlapping ones), then the
    // cluster healed: every member running, no fault rules.
    let nemesis = Nemesis {
        world: Mutex::new(World {
            cluster,
            stats: NemesisStats::default(),
            faults: BTreeMap::new(),
            next_fault: 1,
            partition: None,
            next_spare: args.nodes + 1,
            burst_no: 0,
            uncertain: BTreeSet::new(),
        }),
        admin: &admin,
        admin_config: &admin_config,
        history: &shared.history,
        shared: &shared,
        sync_lock: tokio::sync::Mutex::new(()),
    };
    let end = shared.history.start + args.duration;
    run_nemesis(&nemesis, args.overlap, &mut rng, end).await;
    let World {
        cluster,
        stats,
        uncertain,
        ..
    } = nemesis.world.into_inner().expect("the nemesis lock");
    // From now on, the admin client knows the members there are now.
    let admin = {
        let mut config = admin_config.clone();
        config.endpoints = shared.members.lock().unwrap().1.clone();
        Client::connect(config).await?
    };
    shared.stop.store(true, Ordering::Relaxed);
    while clients.join_next().await.is_some() {}
    shared.history.event("clients stopped".into());

    // Final reads: one linearizable read of every key, after every client
    // operation ended (part of the history the checker judges).
    let records = shared.history.records.lock().unwrap().clone();
    let keys: BTreeSet<String> = records.iter().map(|r| r.key.clone()).collect();
    let mut finals = Vec::new();
    let final_deadline = Instant::now() + Duration::from_secs(60);
    for key in &keys {
        loop {
            let invoke_us = shared.history.now_us();
            match admin.get(key.clone()).await {
                Ok(kv) => {
                    finals.push(Record {
                        client: 0,
                        key: key.clone(),
                        op: Op::Get,
                        invoke_us,
                        complete_us: shared.history.now_us(),
                        outcome: Outcome::Ok,
                        result: kv.map(|kv| String::from_utf8_lossy(&kv.value).into_owned()),
                        error: None,
                    });
                    break;
                }
                Err(e) if Instant::now() < final_deadline => {
                    shared
                        .history
                        .event(format!("final read of {key}: {e}; retrying"));
                    tokio::time::sleep(Duration::from_millis(300)).await;
                }
                Err(e) => bail!("the cluster did not serve the final reads: {e}"),
            }
        }
    }
    let mut all = records.clone();
    all.extend(finals.iter().cloned());

    // Keep the history before judging it.
    {
        let mut file = std::io::BufWriter::new(std::fs::File::create(dir.join("history.jsonl"))?);
        for r in &all {
            writeln!(file, "{}", r.to_json())?;
        }
        let events = shared.history.events.lock().unwrap().join("\n");
        std::fs::write(dir.join("nemesis.log"), events + "\n")?;
    }

    let mut report = String::new();
    let mut failures: Vec<String> = Vec::new();
    let ok_ops = records
        .iter()
        .filter(|r| matches!(r.outcome, Outcome::Ok))
        .count();
    let unknown_ops = records
        .iter()
        .filter(|r| matches!(r.outcome, Outcome::Unknown))
        .count();
    let _ = writeln!(
        report,
        "seed {seed}: {} operations ({ok_ops} ok, {unknown_ops} unknown, {} failed) on {} keys, plus {} final reads",
        records.len(),
        records.len() - ok_ops - unknown_ops,
        keys.len(),
        finals.len()
    );
    // Why writes ended unknown, most frequent first: each one widens what
    // the checker must consider.
    let mut why: BTreeMap<String, usize> = BTreeMap::new();
    for record in records
        .iter()
        .filter(|r| matches!(r.outcome, Outcome::Unknown))
    {
        let error = record.error.as_deref().unwrap_or("?");
        *why.entry(error.chars().take(120).collect()).or_default() += 1;
    }
    let mut why: Vec<(String, usize)> = why.into_iter().collect();
    why.sort_by_key(|(_, count)| std::cmp::Reverse(*count));
    for (error, count) in why.iter().take(5) {
        let _ = writeln!(report, "  unknown x{count}: {error}");
    }
    let _ = writeln!(
        report,
        "nemesis ({}): attempted {:?}",
        if args.overlap {
            "overlapping faults"
        } else {
            "one fault at a time"
        },
        stats.attempted
    );
    let _ = writeln!(report, "nemesis completed: {:?}", stats.done);
    if !stats.skipped.is_empty() {
        let _ = writeln!(
            report,
            "nemesis skipped (no node could take it without costing the quorum, or no spare left): {:?}",
            stats.skipped
        );
    }
    for kind in KINDS {
        let name = kind.name();
        if !stats.done.contains_key(name) && !args.expect_violation {
            failures.push(format!("the nemesis never completed a {name}"));
        }
    }
    if args.overlap {
        let _ = writeln!(report, "overlapping faults that ran:");
        for (name, n) in &stats.overlaps {
            let _ = writeln!(report, "  {name}: {n}");
        }
        if !stats.overlaps_failed.is_empty() {
            let _ = writeln!(
                report,
                "overlapping faults attempted, the later one failed (refused or not confirmed): {:?}",
                stats.overlaps_failed
            );
        }
        for (later, earlier) in REQUIRED_OVERLAPS {
            let name = overlap_name(later, earlier);
            if !stats.overlaps.contains_key(&name) && !args.expect_violation {
                failures.push(format!("the nemesis never ran a {name}"));
            }
        }
    }

    // 1. Linearizability, key by key.
    let mut by_key: BTreeMap<&str, Vec<&Record>> = BTreeMap::new();
    for r in &all {
        by_key.entry(&r.key).or_default().push(r);
    }
    let check_started = Instant::now();
    let mut violations = Vec::new();
    let mut largest = 0;
    let mut stateright_undecided = 0;
    let mut max_wgl = Duration::ZERO;
    let mut max_sr = Duration::ZERO;
    for (key, records) in &by_key {
        let k = check_key(key, records, args.stateright_budget, dir);
        largest = largest.max(k.ops);
        max_wgl = max_wgl.max(k.wgl_time);
        max_sr = max_sr.max(k.stateright_time);
        let sr = match &k.stateright {
            Some(Ok(true)) => "linearizable".to_string(),
            Some(Ok(false)) => "NOT linearizable".to_string(),
            Some(Err(e)) => format!("malformed history: {e}"),
            None => {
                stateright_undecided += 1;
                format!("undecided within {:?}", args.stateright_budget)
            }
        };
        let line = format!(
            "key {}: {} ops ({} unknown); stateright on {} ops: {sr} ({:?}); wgl: {} ({:?})",
            k.key,
            k.ops,
            k.unknown,
            k.stateright_ops,
            k.stateright_time,
            match &k.wgl {
                Verdict::Linearizable => "linearizable".to_string(),
                Verdict::NotLinearizable(f) =>
                    format!("NOT linearizable (stuck at op {})", f.stuck_at),
                Verdict::Undecided(s) => format!("undecided: {s}"),
            },
            k.wgl_time
        );
        eprintln!("chaos: {line}");
        report.push_str(&line);
        report.push('\n');
        if let Verdict::NotLinearizable(failure) = &k.wgl {
            // The operation no linearization could place, to start reading
            // history.jsonl from.
            let ops: Vec<&&Record> = records
                .iter()
                .filter(|r| !matches!(r.outcome, Outcome::Fail))
                .collect();
            if let Some(r) = ops.get(failure.stuck_at) {
                let line = format!("  no linearization can place: {}", r.to_json());
                eprintln!("chaos: {line}");
                report.push_str(&line);
                report.push('\n');
            }
        }
        let sr_bad = matches!(k.stateright, Some(Ok(false)));
        let wgl_bad = matches!(k.wgl, Verdict::NotLinearizable(_));
        if let Some(Err(e)) = &k.stateright {
            failures.push(format!(
                "key {}: stateright refused the history: {e}",
                k.key
            ));
        }
        if let (Some(Ok(sr_ok)), Verdict::Linearizable | Verdict::NotLinearizable(_)) =
            (&k.stateright, &k.wgl)
            && *sr_ok != k.wgl.is_linearizable()
        {
            failures.push(format!(
                "key {}: the checkers disagree (stateright {sr_ok}, wgl {:?})",
                k.key, k.wgl
            ));
        }
        if matches!(k.wgl, Verdict::Undecided(_)) && k.stateright.is_none() {
            failures.push(format!("key {}: no checker could decide", k.key));
        }
        if sr_bad || wgl_bad {
            violations.push(k.key.clone());
        }
    }
    let _ = writeln!(
        report,
        "linearizability: {} keys, largest {largest} ops, checked in {:?} (slowest key: stateright {max_sr:?}, wgl {max_wgl:?}); stateright undecided on {stateright_undecided} keys",
        by_key.len(),
        check_started.elapsed()
    );
    if violations.is_empty() {
        let _ = writeln!(report, "linearizable: yes");
    } else {
        let _ = writeln!(
            report,
            "linearizable: NO, violations on keys {violations:?}"
        );
    }

    // 2. Acknowledged writes survive (or were overwritten by a write that
    // may have come later).
    let mut lost = Vec::new();
    for f in &finals {
        let key_records: Vec<&Record> = records.iter().filter(|r| r.key == f.key).collect();
        let final_writer = f.result.as_ref().and_then(|v| {
            key_records
                .iter()
                .find(|r| value_of(r) == Some(v) && may_have_written(r))
        });
        if f.result.is_some() && final_writer.is_none() {
            lost.push(format!(
                "{}: final value {:?} was never written",
                f.key, f.result
            ));
            continue;
        }
        for r in &key_records {
            let acked_write = matches!(r.outcome, Outcome::Ok)
                && match &r.op {
                    Op::Put(_) => true,
                    Op::Cas { .. } => r.result.as_deref() == Some("true"),
                    Op::Get => false,
                };
            if !acked_write || value_of(r) == f.result.as_ref() {
                continue;
            }
            let overwritten = match final_writer {
                Some(w) => !matches!(w.outcome, Outcome::Ok) || w.complete_us > r.invoke_us,
                None => false,
            };
            if !overwritten {
                lost.push(format!(
                    "{}: acknowledged write {:?} by client {} is lost (final value {:?})",
                    r.key,
                    value_of(r),
                    r.client,
                    f.result
                ));
            }
        }
    }
    let (final_revision, final_scan) = scan_all(&admin, Consistency::Linearizable).await?;
    let final_map: BTreeMap<Bytes, Bytes> = final_scan
        .iter()
        .map(|(k, v, _)| (k.clone(), v.clone()))
        .collect();
    for (k, v) in &stats.burst_acked {
        if final_map.get(k.as_bytes()).map(|b| b.as_ref()) != Some(v.as_bytes()) {
            lost.push(format!(
                "burst write {k}={v} was acknowledged but is missing"
            ));
        }
    }
    let _ = writeln!(
        report,
        "acknowledged writes: {} burst writes and every contended key checked; {} lost",
        stats.burst_acked.len(),
        lost.len()
    );
    for l in &lost {
        let _ = writeln!(report, "  LOST {l}");
    }
    failures.extend(lost.iter().cloned());

    // 3. Convergence: every member reaches the same revision and state.
    reconcile_membership(&admin, cluster, &shared.history, &uncertain).await;
    let members = cluster.members();
    let converge_deadline = Instant::now() + Duration::from_secs(60);
    let mut digests: BTreeMap<u64, (u64, u64)> = BTreeMap::new();
    loop {
        digests.clear();
        for id in &members {
            let address = cluster.address(*id);
            let mut config = client_config(&client_identity, vec![address]);
            config.deadline = Duration::from_secs(3);
            let client = Client::connect(config).await?;
            if let Ok(Ok((revision, kvs))) = tokio::time::timeout(
                Duration::from_secs(5),
                scan_all(&client, Consistency::Stale),
            )
            .await
            {
                digests.insert(*id, (revision, digest(&kvs)));
            }
        }
        let distinct: BTreeSet<(u64, u64)> = digests.values().copied().collect();
        if digests.len() == members.len()
            && distinct.len() == 1
            && distinct
                .iter()
                .next()
                .is_some_and(|(r, _)| *r >= final_revision)
        {
            break;
        }
        if Instant::now() > converge_deadline {
            failures.push(format!(
                "the nodes did not converge within 60 s: (revision, digest) per node {digests:?}"
            ));
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let _ = writeln!(
        report,
        "convergence: members {members:?}, (revision, digest) {digests:?}"
    );

    // 4. No panic, no invariant failure, no unexpected exit.
    cluster.reap(&shared.history);
    failures.append(&mut cluster.problems);
    for node in cluster.nodes.values() {
        let Ok(log) = std::fs::read_to_string(&node.log) else {
            continue;
        };
        for line in log.lines() {
            let lower = line.to_lowercase();
            if lower.contains("panicked") || lower.contains("invariant") {
                failures.push(format!("node {} logged: {line}", node.id));
                break;
            }
        }
    }

    let violated = !violations.is_empty();
    for f in &failures {
        let _ = writeln!(report, "FAILED: {f}");
    }
    let passed = if args.expect_violation {
        let _ = writeln!(
            report,
            "expected a violation (broken mode {:?}): {}",
            args.broken,
            if violated { "found" } else { "NOT found" }
        );
        violated
    } else {
        !violated && failures.is_empty()
    };
    let _ = writeln!(report, "result: {}", if passed { "PASS" } else { "FAIL" });
    std::fs::write(dir.join("report.txt"), &report)?;
    // The per-key lines were printed as they came; the rest is the summary.
    for line in report.lines().filter(|l| !l.starts_with("key ")) {
        eprintln!("chaos: {line}");
    }
    Ok(passed)
}
