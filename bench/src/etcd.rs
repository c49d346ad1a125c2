//! The etcd side of a side-by-side run: the closed loop of `raft-cli
//! bench` (same keys, values, warm-up and window, clients sharing
//! connections) against an etcd cluster, through the etcd-client crate.
//!
//! Requests go to the leader (found with `Status` on every endpoint), as
//! etcd's own benchmark tool does when given the leader's endpoint. Server
//! CPU comes from `/proc/<pid>/stat` of the members' processes, read when
//! the window opens and after it closes.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use etcd_client::{Certificate, Client, ConnectOptions, Identity, TlsOptions};
use hdrhistogram::Histogram;

use crate::stats::{self, KeyPicker, Outcome};

/// What to run.
#[derive(clap::Args, Debug)]
pub struct EtcdArgs {
    /// The members' client URLs, comma-separated
    /// (`https://127.0.0.1:2379,...`).
    #[arg(long, value_delimiter = ',', required = true)]
    endpoints: Vec<String>,
    /// The CA certificate (PEM); with --cert and --key, mutual TLS.
    #[arg(long, requires_all = ["cert", "key"])]
    cacert: Option<std::path::PathBuf>,
    /// The client certificate (PEM).
    #[arg(long, requires = "cacert")]
    cert: Option<std::path::PathBuf>,
    /// The client key (PEM).
    #[arg(long, requires = "cacert")]
    key: Option<std::path::PathBuf>,
    /// Concurrent closed-loop clients.
    #[arg(long, default_value_t = 16)]
    clients: usize,
    /// gRPC connections the clients share (default min(clients, 100)).
    #[arg(long)]
    conns: Option<usize>,
    /// `put` or `get` (a linearizable Range).
    #[arg(long, default_value = "put")]
    op: String,
    /// Measured seconds.
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// Seconds of load before the window, not counted.
    #[arg(long, default_value_t = 2)]
    warmup: u64,
    /// The key space (keys `bench/00000000` on).
    #[arg(long, default_value_t = 100_000)]
    keys: u64,
    /// Value size in bytes.
    #[arg(long, default_value_t = 256)]
    value_size: usize,
    /// The members' process ids, comma-separated, for their CPU time.
    #[arg(long, value_delimiter = ',')]
    pids: Vec<u32>,
}

async fn connect(args: &EtcdArgs, endpoints: &[String]) -> Result<Client> {
    let mut options = ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(5))
        .with_timeout(Duration::from_secs(30));
    if let (Some(ca), Some(cert), Some(key)) = (&args.cacert, &args.cert, &args.key) {
        let read = |p: &std::path::Path| {
            std::fs::read(p).with_context(|| format!("cannot read {}", p.display()))
        };
        options = options.with_tls(
            TlsOptions::new()
                .ca_certificate(Certificate::from_pem(read(ca)?))
                .identity(Identity::from_pem(read(cert)?, read(key)?)),
        );
    }
    Client::connect(endpoints, Some(options))
        .await
        .with_context(|| format!("cannot connect to etcd at {endpoints:?}"))
}

/// The leader's endpoint: the member whose status names itself as leader.
/// Retries until one does (the cluster may still be electing).
async fn leader_endpoint(args: &EtcdArgs) -> Result<String> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        for endpoint in &args.endpoints {
            let Ok(mut client) = connect(args, std::slice::from_ref(endpoint)).await else {
                continue;
            };
            if let Ok(status) = client.status().await {
                let me = status.header().map(|h| h.member_id());
                if status.leader() != 0 && Some(status.leader()) == me {
                    return Ok(endpoint.clone());
                }
            }
        }
        if Instant::now() > deadline {
            bail!(
                "no etcd member at {:?} reported itself leader within 60 s",
                args.endpoints
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn bench_key(index: u64) -> String {
    format!("bench/{index:08}")
}

/// Runs the load and returns the JSON line.
pub async fn run(args: EtcdArgs) -> Result<serde_json::Value> {
    if args.clients == 0 || args.duration == 0 || args.keys == 0 {
        bail!("--clients, --duration and --keys must be at least 1");
    }
    let write = match args.op.as_str() {
        "put" => true,
        "get" => false,
        other => bail!("--op is put or get, not {other}"),
    };
    let conns = args.conns.unwrap_or(args.clients.min(100));
    if conns == 0 || conns > args.clients {
        bail!("--conns must be between 1 and --clients ({})", args.clients);
    }
    let leader = leader_endpoint(&args).await?;
    let mut connections = Vec::with_capacity(conns);
    for _ in 0..conns {
        connections.push(connect(&args, std::slice::from_ref(&leader)).await?);
    }
    let value = vec![b'x'; args.value_size];
    connections[0]
        .put(bench_key(0), value.clone(), None)
        .await
        .context("the first put to etcd failed")?;
    if !write {
        preload(&connections, args.keys, &value).await?;
    }

    let warmup = Duration::from_secs(args.warmup);
    let started = Instant::now();
    let window = started + warmup;
    let deadline = window + Duration::from_secs(args.duration);
    let failed = Arc::new(AtomicU64::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for worker in 0..args.clients {
        let mut kv = connections[worker % conns].kv_client();
        let (failed, value, keys) = (failed.clone(), value.clone(), args.keys);
        tasks.spawn(async move {
            let mut latencies = stats::histogram();
            let mut picker = KeyPicker::new(worker as u64 + 1);
            while Instant::now() < deadline {
                let key = bench_key(picker.next(keys));
                let begun = Instant::now();
                let ok = if write {
                    kv.put(key, value.clone(), None).await.is_ok()
                } else {
                    kv.get(key, None).await.is_ok()
                };
                if begun < window {
                    continue;
                }
                if ok {
                    latencies.saturating_record(begun.elapsed().as_micros() as u64);
                } else {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
            }
            latencies
        });
    }
    let pids = args.pids.clone();
    let cpu_at_window = tokio::spawn(async move {
        tokio::time::sleep_until(window.into()).await;
        stats::cpu_seconds(&pids)
    });
    let mut merged: Histogram<u64> = stats::histogram();
    while let Some(joined) = tasks.join_next().await {
        if let Ok(latencies) = joined {
            let _ = merged.add(&latencies);
        }
    }
    let secs = Instant::now()
        .saturating_duration_since(window)
        .as_secs_f64();
    let cpu = match (
        cpu_at_window.await.ok().flatten(),
        stats::cpu_seconds(&args.pids),
    ) {
        (Some(start), Some(end)) if !args.pids.is_empty() => Some((end - start).max(0.0)),
        _ => None,
    };
    let workload = if write { "put" } else { "get-linearizable" };
    Ok(Outcome {
        workload: workload.to_string(),
        clients: args.clients,
        latencies: merged,
        errors: failed.load(Ordering::Relaxed),
        secs,
        server_cpu_secs: cpu,
    }
    .json())
}

/// Writes every key once so that reads find values.
async fn preload(connections: &[Client], keys: u64, value: &[u8]) -> Result<()> {
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..64 {
        let connection = &connections[i % connections.len()];
        let (mut kv, next, value) = (connection.kv_client(), next.clone(), value.to_vec());
        tasks.spawn(async move {
            loop {
                let index = next.fetch_add(1, Ordering::Relaxed);
                if index >= keys {
                    return Ok::<(), etcd_client::Error>(());
                }
                kv.put(bench_key(index), value.clone(), None).await?;
            }
        });
    }
    while let Some(joined) = tasks.join_next().await {
        joined
            .context("a preload task panicked")?
            .context("preloading etcd failed")?;
    }
    Ok(())
}
