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
use std::net::{SocketAddr, UdpSocket};
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
    /// stateright's time budget per key.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    stateright_budget: Duration,
    /// Internal: run stateright on one key's history (a JSON file) and print
    /// the verdict. The chaos program runs each key's check in such a child
    /// process, so that a search over its budget can be stopped.
    #[arg(long, hide = true)]
    stateright_file: Option<PathBuf>,
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
    config: PathBuf,
    log: PathBuf,
    child: Option<Child>,
    member: bool,
    paused: bool,
    /// Exited or killed (by us) and not restarted yet.
    down: bool,
}

struct Cluster {
    dir: PathBuf,
    bin: PathBuf,
    broken: Option<String>,
    reads: ReadMode,
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
        let text = format!(
            r#"node_id = {id}
cluster_id = "{CLUSTER}"
listen = "{addr}"
data_dir = {data:?}
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
            let problem = format!(
                "node {id} exited by itself ({status}); see {}",
                self.nodes[&id].log.display()
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

fn free_ports(n: u64) -> Result<Vec<SocketAddr>> {
    let sockets: Vec<UdpSocket> = (0..n)
        .map(|_| UdpSocket::bind("127.0.0.1:0"))
        .collect::<Result<_, _>>()?;
    Ok(sockets
        .iter()
        .map(|s| s.local_addr())
        .collect::<Result<_, _>>()?)
}

fn client_config(identity: &TlsIdentity, endpoints: Vec<String>) -> ClientConfig {
    let mut config = ClientConfig::new(endpoints, identity.clone());
    config.deadline = Duration::from_secs(4);
    config.attempt_timeout = Duration::from_millis(1500);
    config
}

/// What the nodes say, asked of each with a short timeout: the leader most
/// of them follow, and their statuses.
async fn leader(admin: &Client, cluster: &Cluster) -> Option<u64> {
    let mut votes: BTreeMap<u64, usize> = BTreeMap::new();
    for id in cluster.members() {
        let node = &cluster.nodes[&id];
        if node.down || node.paused {
            continue;
        }
        if let Ok(Ok(status)) = tokio::time::timeout(
            Duration::from_millis(800),
            admin.status_of(&node.addr.to_string()),
        )
        .await
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
}

async fn run_client(index: u64, client: Client, shared: Arc<Shared>, mut rng: Rng) {
    let mut counter = 0u64;
    // The last value this client saw per key (for compare-and-swap).
    let mut seen: BTreeMap<String, Option<String>> = BTreeMap::new();
    while !shared.stop.load(Ordering::Relaxed) {
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
            match &op {
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
            }
        };
        let result = tokio::time::timeout(Duration::from_secs(6), call).await;
        let complete_us = shared.history.now_us();
        let (outcome, result, error) = match result {
            Ok(Ok(r)) => (Outcome::Ok, r, None),
            Ok(Err(e)) => {
                // A read that failed had no effect; a write that failed may
                // have (unless the request was refused as invalid).
                let definite = matches!(op, Op::Get)
                    || matches!(
                        e,
                        ClientError::Kv(raft_kv::protocol::KvError::InvalidRequest(_))
                    );
                (
                    if definite {
                        Outcome::Fail
                    } else {
                        Outcome::Unknown
                    },
                    None,
                    Some(e.to_string()),
                )
            }
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

#[derive(Default)]
struct NemesisStats {
    attempted: BTreeMap<String, u64>,
    done: BTreeMap<String, u64>,
    /// Burst writes acknowledged: key -> value.
    burst_acked: BTreeMap<String, String>,
}

async fn set_faults_everywhere(
    admin: &Client,
    cluster: &Cluster,
    rules: &[FaultRule],
    history: &History,
) {
    for id in cluster.members() {
        let node = &cluster.nodes[&id];
        if node.down || node.paused {
            continue;
        }
        let result = tokio::time::timeout(
            Duration::from_secs(2),
            admin.set_faults(&node.addr.to_string(), rules.to_vec()),
        )
        .await;
        if !matches!(result, Ok(Ok(()))) {
            history.event(format!("set_faults on node {id} failed: {result:?}"));
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn nemesis_step(
    kind: Kind,
    rng: &mut Rng,
    cluster: &mut Cluster,
    admin: &Client,
    burst_config: &ClientConfig,
    shared: &Shared,
    stats: &mut NemesisStats,
    next_spare: &mut u64,
    burst_no: &mut u64,
) -> Result<()> {
    let history = &shared.history;
    let name = format!("{kind:?}").to_lowercase();
    *stats.attempted.entry(name.clone()).or_default() += 1;
    let members = cluster.members();
    let leader = leader(admin, cluster).await;
    let target = if rng.below(2) == 0 {
        leader.unwrap_or_else(|| rng.pick(&members))
    } else {
        rng.pick(&members)
    };
    let hold = rng.millis(1500, 4000);
    let mut done = true;
    match kind {
        Kind::Kill => {
            history.event(format!("nemesis: SIGKILL node {target} for {hold:?}"));
            cluster.kill(target);
            tokio::time::sleep(hold).await;
            cluster.spawn(target)?;
            history.event(format!("nemesis: restarted node {target}"));
        }
        Kind::Pause => {
            history.event(format!("nemesis: SIGSTOP node {target} for {hold:?}"));
            cluster.pause(target);
            tokio::time::sleep(hold).await;
            cluster.resume(target);
            history.event(format!("nemesis: SIGCONT node {target}"));
        }
        Kind::Partition => {
            let mut shuffled = members.clone();
            for i in (1..shuffled.len()).rev() {
                let j = rng.below(i as u64 + 1) as usize;
                shuffled.swap(i, j);
            }
            let minority_size = 1 + rng.below(((members.len() as u64 - 1) / 2).max(1)) as usize;
            let mut side: BTreeSet<u64> = shuffled.into_iter().take(minority_size).collect();
            if rng.below(2) == 0
                && let Some(l) = leader
                && !side.contains(&l)
            {
                // Cut the leader off with the minority.
                let first = *side.iter().next().expect("non-empty");
                side.remove(&first);
                side.insert(l);
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
            history.event(format!(
                "nemesis: partition {side:?} | {other:?} (leader {leader:?}) for {hold:?}"
            ));
            set_faults_everywhere(admin, cluster, &rules, history).await;
            tokio::time::sleep(hold).await;
            set_faults_everywhere(admin, cluster, &[], history).await;
            history.event("nemesis: healed the partition".into());
        }
        Kind::Membership => {
            let new_id = *next_spare;
            if !cluster.nodes.contains_key(&new_id) {
                history.event("nemesis: no spare node left; skipping a membership change".into());
                return Ok(());
            }
            history.event(format!("nemesis: remove node {target}"));
            let removed = tokio::time::timeout(Duration::from_secs(10), admin.remove(target)).await;
            history.event(format!("nemesis: remove node {target}: {removed:?}"));
            if !matches!(removed, Ok(Ok(_))) {
                // Did it happen anyway?
                let gone = match admin.members().await {
                    Ok(m) => !m.iter().any(|m| m.id == target),
                    Err(_) => false,
                };
                if !gone {
                    done = false;
                }
            }
            if done {
                cluster.nodes.get_mut(&target).expect("member").member = false;
                cluster.kill(target);
                *next_spare += 1;
                cluster.nodes.get_mut(&new_id).expect("spare").member = true;
                cluster.write_config(new_id, None)?;
                cluster.spawn(new_id)?;
                // An operator's client for the rest of the change knows the
                // members there are now: the shared admin client also lists
                // the removed and spare nodes, each costing a connect
                // timeout when the client goes looking for the leader.
                let mut config = burst_config.clone();
                config.endpoints = cluster
                    .members()
                    .iter()
                    .map(|&id| cluster.address(id))
                    .collect();
                let admin = &Client::connect(config).await?;
                let address = cluster.address(new_id);
                history.event(format!(
                    "nemesis: add node {new_id} at {address} as a learner"
                ));
                let deadline = Instant::now() + Duration::from_secs(20);
                let mut added = false;
                while Instant::now() < deadline && !added {
                    match tokio::time::timeout(
                        Duration::from_secs(6),
                        admin.add_learner(new_id, &address),
                    )
                    .await
                    {
                        Ok(Ok(_)) => added = true,
                        other => {
                            history.event(format!("nemesis: add_learner {new_id}: {other:?}"));
                            if let Ok(m) = admin.members().await
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
                    match tokio::time::timeout(Duration::from_secs(6), admin.promote(new_id)).await
                    {
                        Ok(Ok(_)) => promoted = true,
                        other => {
                            history.event(format!("nemesis: promote {new_id}: {other:?}"));
                            if let Ok(m) = admin.members().await
                                && m.iter().any(|m| m.id == new_id && m.voter)
                            {
                                promoted = true;
                            } else {
                                tokio::time::sleep(Duration::from_millis(300)).await;
                            }
                        }
                    }
                }
                history.event(format!(
                    "nemesis: node {new_id} added {added}, promoted {promoted}"
                ));
                done = added && promoted;
                if !done {
                    cluster
                        .problems
                        .push(format!("could not add node {new_id} back as a voter"));
                }
            }
        }
        Kind::Transfer => {
            let others: Vec<u64> = members
                .iter()
                .filter(|m| Some(**m) != leader)
                .copied()
                .collect();
            let to = rng.pick(&others);
            let result =
                tokio::time::timeout(Duration::from_secs(8), admin.transfer_leader(Some(to))).await;
            history.event(format!(
                "nemesis: transfer leadership {leader:?} -> {to}: {result:?}"
            ));
            done = matches!(result, Ok(Ok(_)));
        }
        Kind::Burst => {
            *burst_no += 1;
            let n = 400;
            history.event(format!("nemesis: burst of {n} writes (snapshots)"));
            let mut tasks = tokio::task::JoinSet::new();
            let burst = *burst_no;
            let mut futures = Vec::new();
            for i in 0..n {
                let key = format!("burst-{burst:02}-{i:04}");
                let value = format!("b{burst}-{i}");
                futures.push((key, value));
            }
            // 16 writers at a time.
            let chunks: Vec<Vec<(String, String)>> =
                futures.chunks(n / 16).map(|c| c.to_vec()).collect();
            let acked = Arc::new(Mutex::new(Vec::new()));
            for chunk in chunks {
                let acked = acked.clone();
                let config = burst_config.clone();
                tasks.spawn(async move {
                    let Ok(c) = Client::connect(config).await else {
                        return;
                    };
                    for (k, v) in chunk {
                        if let Ok(Ok(_)) = tokio::time::timeout(
                            Duration::from_secs(6),
                            c.put(k.clone(), v.clone()),
                        )
                        .await
                        {
                            acked.lock().unwrap().push((k, v));
                        }
                    }
                });
            }
            while tasks.join_next().await.is_some() {}
            let acked = std::mem::take(&mut *acked.lock().unwrap());
            history.event(format!(
                "nemesis: burst acknowledged {} writes",
                acked.len()
            ));
            stats.burst_acked.extend(acked);
        }
    }
    if done {
        *stats.done.entry(name).or_default() += 1;
    }
    Ok(())
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
                },
                consistency,
            )
            .await?;
        revision = revision.max(result.revision);
        let more = result.more;
        for kv in result.kvs {
            start = {
                let mut next = kv.key.to_vec();
                next.push(0);
                next.into()
            };
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
    cmd
}

async fn run(args: Args) -> Result<bool> {
    if args.nodes < 3 {
        bail!("--nodes must be at least 3 (a majority must survive one fault)");
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
    let ports = free_ports(total)?;
    let mut nodes = BTreeMap::new();
    for (i, addr) in ports.iter().enumerate() {
        let id = i as u64 + 1;
        nodes.insert(
            id,
            NodeProc {
                id,
                addr: *addr,
                config: dir.join(format!("node-{id}.toml")),
                log: dir.join(format!("node-{id}.log")),
                child: None,
                member: id <= args.nodes,
                paused: false,
                down: true,
            },
        );
    }
    let mut cluster = Cluster {
        dir: dir.clone(),
        bin,
        broken: args.broken.clone(),
        reads: args.reads,
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
        let issued = cluster.ca.issue_client(CLUSTER, "chaos")?;
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
    });
    shared
        .history
        .event(format!("cluster up after {:?}", started.elapsed()));
    let mut rng = Rng(seed);
    let mut clients = tokio::task::JoinSet::new();
    for i in 0..args.clients {
        // Each client starts at a different node, so reads are served by
        // followers (follower ReadIndex) as well as by the leader.
        let mut endpoints = initial_addresses.clone();
        endpoints.rotate_left((i % args.nodes) as usize);
        endpoints.extend(all_addresses[args.nodes as usize..].iter().cloned());
        let client = Client::connect(client_config(&client_identity, endpoints)).await?;
        let client_rng = Rng(rng.next());
        clients.spawn(run_client(i + 1, client, shared.clone(), client_rng));
    }

    // The nemesis: every kind once (in a seeded order), then seeded picks.
    let mut schedule: Vec<Kind> = KINDS.to_vec();
    for i in (1..schedule.len()).rev() {
        let j = rng.below(i as u64 + 1) as usize;
        schedule.swap(i, j);
    }
    let mut stats = NemesisStats::default();
    let mut next_spare = args.nodes + 1;
    let mut burst_no = 0;
    let end = shared.history.start + args.duration;
    let mut step = 0usize;
    tokio::time::sleep(rng.millis(500, 1500)).await;
    while Instant::now() < end {
        cluster.reap(&shared.history);
        // Every kind once in the seeded order; then a kind that has not
        // completed yet (a transfer to a lagging node may be refused), then
        // seeded picks.
        let not_done = KINDS
            .iter()
            .copied()
            .find(|k| !stats.done.contains_key(&format!("{k:?}").to_lowercase()));
        let kind = match (schedule.get(step), not_done) {
            (Some(kind), _) => *kind,
            (None, Some(kind)) => kind,
            (None, None) => rng.pick(&KINDS),
        };
        step += 1;
        if let Err(e) = nemesis_step(
            kind,
            &mut rng,
            cluster,
            &admin,
            &admin_config,
            &shared,
            &mut stats,
            &mut next_spare,
            &mut burst_no,
        )
        .await
        {
            shared
                .history
                .event(format!("nemesis {kind:?} failed: {e:#}"));
            cluster
                .problems
                .push(format!("nemesis {kind:?} failed: {e:#}"));
        }
        tokio::time::sleep(rng.millis(500, 2000)).await;
    }
    // Heal: resume paused nodes, restart dead members, lift partitions.
    shared.history.event("healing the cluster".into());
    for id in cluster.members() {
        if cluster.nodes[&id].paused {
            cluster.resume(id);
        }
    }
    cluster.reap(&shared.history);
    for id in cluster.members() {
        if cluster.nodes[&id].down {
            cluster.spawn(id)?;
        }
    }
    set_faults_everywhere(&admin, cluster, &[], &shared.history).await;
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
    let _ = writeln!(report, "nemesis attempted: {:?}", stats.attempted);
    let _ = writeln!(report, "nemesis completed: {:?}", stats.done);
    for kind in KINDS {
        let name = format!("{kind:?}").to_lowercase();
        if !stats.done.contains_key(&name) && !args.expect_violation {
            failures.push(format!("the nemesis never completed a {name}"));
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
