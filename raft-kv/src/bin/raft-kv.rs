//! The `raft-kv` server: one node of a replicated key-value cluster.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use raft_kv::Server;
use raft_kv::config::{LogFormat, NodeConfig, RaftSettings, SnapshotSettings, TlsFiles};

/// mimalloc rather than glibc's malloc: the request path allocates from
/// many threads at once, where glibc's arenas spent about a tenth of a
/// node's CPU in a profile of puts at 256 clients.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// One node of a raft-kv cluster. Settings come from --config (TOML) and the
/// flags below, which override it.
#[derive(Parser, Debug)]
#[command(name = "raft-kv", version, about)]
struct Args {
    /// A TOML configuration file.
    #[arg(long, env = "RAFT_KV_CONFIG")]
    config: Option<PathBuf>,
    /// This node's id.
    #[arg(long)]
    node_id: Option<u64>,
    /// The cluster's name.
    #[arg(long)]
    cluster_id: Option<String>,
    /// Address to listen on (UDP), e.g. 127.0.0.1:7001.
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Address others reach this node at (default: --listen).
    #[arg(long)]
    advertise: Option<String>,
    /// Data directory.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Initial voters to bootstrap a new cluster: id=host:port, comma separated.
    #[arg(long, value_delimiter = ',')]
    initial_cluster: Vec<String>,
    /// Start empty and wait to be added with `raft-cli add-node`.
    #[arg(long)]
    join: bool,
    /// Cluster CA certificate (PEM).
    #[arg(long)]
    ca: Option<PathBuf>,
    /// This node's certificate (PEM).
    #[arg(long)]
    cert: Option<PathBuf>,
    /// This node's private key (PEM).
    #[arg(long)]
    key: Option<PathBuf>,
    /// Revoked certificates: SHA-256 fingerprints, one per line (`raft-cli
    /// certs fingerprint`); reread when the file changes.
    #[arg(long)]
    deny_list: Option<PathBuf>,
    /// Milliseconds per Raft tick.
    #[arg(long)]
    tick_ms: Option<u64>,
    /// Election timeout in ticks.
    #[arg(long)]
    election_ticks: Option<u64>,
    /// Log entries that trigger a snapshot (0: never).
    #[arg(long)]
    snapshot_threshold: Option<u64>,
    /// Entries kept below a snapshot.
    #[arg(long)]
    snapshot_retention: Option<u64>,
    /// Serve /metrics and /health over HTTP on this address.
    #[arg(long)]
    metrics_listen: Option<SocketAddr>,
    /// Serve etcd's v3 gRPC API (TLS, client certificates) on this TCP
    /// address, e.g. 127.0.0.1:2379, for etcdctl and etcd client libraries.
    #[arg(long)]
    etcd_listen: Option<SocketAddr>,
    /// Log format.
    #[arg(long, value_enum)]
    log_format: Option<LogFormat>,
    /// Allow lease reads (needs bounded clock drift).
    #[arg(long)]
    lease_reads: bool,
    /// Accept fault-injection requests (tests only).
    #[arg(long)]
    enable_fault_injection: bool,
}

fn merge(args: Args) -> anyhow::Result<NodeConfig> {
    let mut config = match &args.config {
        Some(path) => NodeConfig::load(path)?,
        None => {
            let missing = |what: &str| {
                anyhow::anyhow!("--{what} is required (or give --config with a TOML file)")
            };
            NodeConfig {
                node_id: args.node_id.ok_or_else(|| missing("node-id"))?,
                cluster_id: args.cluster_id.clone().unwrap_or_else(|| "local".into()),
                listen: args.listen.ok_or_else(|| missing("listen"))?,
                advertise: None,
                data_dir: args.data_dir.clone().ok_or_else(|| missing("data-dir"))?,
                initial_cluster: Vec::new(),
                join: false,
                tls: TlsFiles {
                    ca: args.ca.clone().ok_or_else(|| missing("ca"))?,
                    cert: args.cert.clone().ok_or_else(|| missing("cert"))?,
                    key: args.key.clone().ok_or_else(|| missing("key"))?,
                    deny_list: None,
                },
                raft: RaftSettings::default(),
                snapshot: SnapshotSettings::default(),
                etcd_listen: None,
                metrics_listen: None,
                log_format: LogFormat::Human,
                enable_fault_injection: false,
                request_timeout_ms: 5_000,
            }
        }
    };
    if let Some(v) = args.node_id {
        config.node_id = v;
    }
    if let Some(v) = args.cluster_id {
        config.cluster_id = v;
    }
    if let Some(v) = args.listen {
        config.listen = v;
    }
    if let Some(v) = args.advertise {
        config.advertise = Some(v);
    }
    if let Some(v) = args.data_dir {
        config.data_dir = v;
    }
    if !args.initial_cluster.is_empty() {
        config.initial_cluster = args.initial_cluster;
    }
    if args.join {
        config.join = true;
    }
    if let Some(v) = args.ca {
        config.tls.ca = v;
    }
    if let Some(v) = args.cert {
        config.tls.cert = v;
    }
    if let Some(v) = args.key {
        config.tls.key = v;
    }
    if let Some(v) = args.deny_list {
        config.tls.deny_list = Some(v);
    }
    if let Some(v) = args.tick_ms {
        config.raft.tick_ms = v;
    }
    if let Some(v) = args.election_ticks {
        config.raft.election_ticks = v;
    }
    if let Some(v) = args.snapshot_threshold {
        config.snapshot.threshold = v;
    }
    if let Some(v) = args.snapshot_retention {
        config.snapshot.retention = v;
    }
    if let Some(v) = args.metrics_listen {
        config.metrics_listen = Some(v);
    }
    if let Some(v) = args.etcd_listen {
        config.etcd_listen = Some(v);
    }
    if let Some(v) = args.log_format {
        config.log_format = v;
    }
    if args.lease_reads {
        config.raft.lease_reads = true;
    }
    if args.enable_fault_injection {
        config.enable_fault_injection = true;
    }
    config.validate()?;
    Ok(config)
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,quinn=warn,rustls=warn"));
    // Colours only on a terminal: log files and pipes get plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr())
        && std::env::var_os("NO_COLOR").is_none();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Human => builder.with_target(false).init(),
        LogFormat::Json => builder.json().init(),
    }
}

async fn run(config: NodeConfig) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    // Handlers first: a signal that arrives while the node starts still
    // shuts it down cleanly once it has started.
    let mut int = signal(SignalKind::interrupt())?;
    let mut term = signal(SignalKind::terminate())?;
    let server = Server::start(config).await?;
    let failed = server.failed();
    tokio::select! {
        _ = int.recv() => tracing::info!("SIGINT: shutting down"),
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
        error = failed => {
            // Nothing can be served any more: exit non-zero rather than
            // stay connected to peers this node never answers.
            let _ = server.shutdown().await;
            anyhow::bail!(
                "the node stopped: {error}; see the log above, fix the cause (storage, disk) and restart it"
            );
        }
    }
    server.shutdown().await.map_err(anyhow::Error::msg)
}

fn main() -> ExitCode {
    // Everything the node creates (RocksDB's files, snapshots, logs) is
    // readable by its owner only: the data holds every key and value.
    // SAFETY: umask(2) only sets this process's file mode mask.
    unsafe {
        libc::umask(0o077);
    }
    let args = Args::parse();
    let config = match merge(args) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("raft-kv: {e:#}");
            return ExitCode::from(2);
        }
    };
    init_logging(config.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("raft-kv: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("raft-kv: {e:#}");
            ExitCode::FAILURE
        }
    }
}
