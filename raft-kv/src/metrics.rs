//! Metrics through the `metrics` facade, exported for Prometheus, and the
//! HTTP endpoint that serves them beside a health check.
//!
//! Every metric has HELP text (`describe`); latencies and sizes are
//! Prometheus histograms with fixed buckets, so they aggregate across nodes;
//! process metrics (CPU seconds, resident memory, open files) are read from
//! `/proc` at each scrape.

use std::net::SocketAddr;
use std::sync::Arc;

use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use raft_core::{LogRead, Node, Role};

/// Buckets for durations, in seconds: 50 µs to 10 s, about ×2.5 apart.
const SECONDS_BUCKETS: &[f64] = &[
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0, 10.0,
];
/// Buckets for counts (entries per write, batches per fsync): powers of 2.
const COUNT_BUCKETS: &[f64] = &[
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 2048.0, 4096.0,
];

/// HELP text and units of every metric this crate records.
fn describe() {
    describe_gauge!("raft_term", "The node's current Raft term.");
    describe_gauge!(
        "raft_commit_index",
        "The highest log index known committed."
    );
    describe_gauge!(
        "raft_applied_index",
        "The highest log index applied to the state machine."
    );
    describe_gauge!(
        "raft_apply_lag",
        "Committed entries not yet applied (commit index minus applied index)."
    );
    describe_gauge!("raft_is_leader", "1 if this node is the leader, else 0.");
    describe_gauge!(
        "raft_leader_id",
        "The node id of the leader this node knows (0: none)."
    );
    describe_gauge!(
        "raft_proposals_pending",
        "Proposals and membership changes waiting to commit on this node."
    );
    describe_gauge!(
        "raft_last_log_index",
        "The index of the last entry in the log."
    );
    describe_gauge!(
        "raft_first_log_index",
        "The index of the first entry still in the log (after compaction)."
    );
    describe_gauge!("raft_voters", "Voting members in the configuration.");
    describe_gauge!(
        "raft_follower_lag",
        "Entries a follower is behind the leader's log (on the leader, per peer)."
    );
    describe_gauge!(
        "raft_follower_match_index",
        "The highest index known replicated on a follower (on the leader, per peer)."
    );
    describe_gauge!(
        "raft_peer_rtt_seconds",
        Unit::Seconds,
        "Round-trip time to a peer (QUIC's smoothed estimate), per peer."
    );
    for (name, help) in [
        (
            "raft_elections_started_total",
            "Elections this node started.",
        ),
        ("raft_elections_won_total", "Elections this node won."),
        (
            "raft_proposals_total",
            "Commands proposed on this node as leader.",
        ),
        ("raft_appends_sent_total", "AppendEntries messages sent."),
        (
            "raft_appends_received_total",
            "AppendEntries messages received.",
        ),
        ("raft_snapshots_built_total", "Snapshots this node built."),
        (
            "raft_snapshots_installed_total",
            "Snapshots this node installed from a leader.",
        ),
        (
            "raft_snapshots_sent_total",
            "Snapshots this node sent to followers.",
        ),
        (
            "raft_read_index_requests_total",
            "Reads served through ReadIndex.",
        ),
        (
            "raft_lease_reads_total",
            "Reads served from the leader's lease.",
        ),
        (
            "raft_leader_transfers_total",
            "Leadership transfers this node started.",
        ),
        (
            "raft_malformed_messages_total",
            "Peer messages dropped as malformed (a bug or a hostile peer).",
        ),
        (
            "raft_out_of_range_answers_total",
            "Peer answers dropped because they named log positions never sent.",
        ),
        (
            "raft_messages_from_removed_total",
            "Peer messages dropped because their sender was removed from the cluster.",
        ),
        (
            "kv_requests_total",
            "Client requests answered, by kind and outcome.",
        ),
    ] {
        describe_counter!(name, help);
    }
    describe_histogram!(
        "kv_request_seconds",
        Unit::Seconds,
        "Time to answer a client request, by kind."
    );
    describe_histogram!(
        "raft_log_write_seconds",
        Unit::Seconds,
        "Time to make a group of output batches durable (writes and one fsync)."
    );
    describe_histogram!(
        "raft_log_write_entries",
        Unit::Count,
        "Log entries per durable write group."
    );
    describe_histogram!(
        "raft_log_write_batches",
        Unit::Count,
        "Output batches covered by one fsync (group commit)."
    );
    describe_counter!(
        "process_cpu_seconds_total",
        Unit::Seconds,
        "User and system CPU time of the raft-kv process."
    );
    describe_gauge!(
        "process_resident_memory_bytes",
        Unit::Bytes,
        "Resident memory of the raft-kv process."
    );
    describe_gauge!(
        "process_open_fds",
        "Open file descriptors of the raft-kv process."
    );
    describe_gauge!(
        "process_start_time_seconds",
        Unit::Seconds,
        "When the process started, in seconds since the Unix epoch."
    );
}

/// Records one durable write group: its duration, entries and batches.
pub(crate) fn record_log_write(seconds: f64, entries: usize, batches: usize) {
    metrics::histogram!("raft_log_write_seconds").record(seconds);
    metrics::histogram!("raft_log_write_entries").record(entries as f64);
    metrics::histogram!("raft_log_write_batches").record(batches as f64);
}

/// Records each connected peer's round-trip time.
pub(crate) fn record_peer_rtts(rtts: &[(raft_core::NodeId, std::time::Duration)]) {
    for (peer, rtt) in rtts {
        metrics::gauge!("raft_peer_rtt_seconds", "peer" => peer.to_string()).set(rtt.as_secs_f64());
    }
}

/// This process's `/proc/self/stat` fields from the third on (after the
/// command name, which may hold spaces), and the clock ticks per second.
fn process_stat() -> Option<(Vec<String>, f64)> {
    // SAFETY: sysconf reads a system constant and has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    (ticks > 0).then(|| {
        (
            rest.split_whitespace().map(str::to_string).collect(),
            ticks as f64,
        )
    })
}

/// The field numbered `n` (from 1, as in proc(5)) of [`process_stat`].
fn stat_field(fields: &[String], n: usize) -> Option<f64> {
    fields.get(n - 3).and_then(|f| f.parse::<f64>().ok())
}

/// User plus system CPU seconds from [`process_stat`]'s fields.
fn cpu_seconds(fields: &[String], ticks: f64) -> Option<f64> {
    Some((stat_field(fields, 14)? + stat_field(fields, 15)?) / ticks)
}

/// CPU time (user + system) this process has used, in seconds, at the
/// kernel's clock-tick resolution; None where /proc is not available.
pub(crate) fn process_cpu_seconds() -> Option<f64> {
    let (fields, ticks) = process_stat()?;
    cpu_seconds(&fields, ticks)
}

/// Records the process's CPU time, memory and open files from `/proc`
/// (nothing where `/proc` is missing).
fn record_process() {
    // SAFETY: sysconf reads a system constant and has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if let Some((fields, ticks)) = process_stat() {
        let field = |n: usize| stat_field(&fields, n);
        if let Some(cpu) = cpu_seconds(&fields, ticks) {
            metrics::counter!("process_cpu_seconds_total").absolute(cpu as u64);
        }
        if let (Some(rss), true) = (field(24), page > 0) {
            metrics::gauge!("process_resident_memory_bytes").set(rss * page as f64);
        }
        let boot = std::fs::read_to_string("/proc/stat").ok().and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("btime "))
                .and_then(|v| v.trim().parse::<f64>().ok())
        });
        if let (Some(start), Some(boot)) = (field(22), boot) {
            metrics::gauge!("process_start_time_seconds").set(boot + start / ticks);
        }
    }
    if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
        metrics::gauge!("process_open_fds").set(fds.count() as f64);
    }
}

/// Records the node's gauges and counters (called after every batch).
pub(crate) fn record_raft<S: LogRead>(node: &Node<S>, proposals_pending: usize) {
    metrics::gauge!("raft_apply_lag")
        .set(node.commit_index().saturating_sub(node.applied_index()) as f64);
    metrics::gauge!("raft_proposals_pending").set(proposals_pending as f64);
    metrics::gauge!("raft_term").set(node.term() as f64);
    metrics::gauge!("raft_commit_index").set(node.commit_index() as f64);
    metrics::gauge!("raft_applied_index").set(node.applied_index() as f64);
    metrics::gauge!("raft_is_leader").set(if node.role() == Role::Leader {
        1.0
    } else {
        0.0
    });
    metrics::gauge!("raft_leader_id").set(node.leader().unwrap_or(0) as f64);
}

/// Records the node's counters, log bounds and per-follower replication
/// (called every few seconds: building a status allocates).
pub(crate) fn record_status(status: &raft_core::Status) {
    metrics::gauge!("raft_last_log_index").set(status.last_log.index as f64);
    metrics::gauge!("raft_first_log_index").set(status.first_index as f64);
    metrics::gauge!("raft_voters").set(status.membership.voters().len() as f64);
    let c = &status.counters;
    for (name, value) in [
        ("raft_elections_started_total", c.elections_started),
        ("raft_elections_won_total", c.elections_won),
        ("raft_proposals_total", c.proposals),
        ("raft_appends_sent_total", c.appends_sent),
        ("raft_appends_received_total", c.appends_received),
        ("raft_snapshots_built_total", c.snapshots_built),
        ("raft_snapshots_installed_total", c.snapshots_installed),
        ("raft_snapshots_sent_total", c.snapshots_sent),
        ("raft_read_index_requests_total", c.read_index_requests),
        ("raft_lease_reads_total", c.lease_reads),
        ("raft_leader_transfers_total", c.leader_transfers),
        ("raft_malformed_messages_total", c.malformed_messages),
        ("raft_out_of_range_answers_total", c.out_of_range_answers),
        ("raft_messages_from_removed_total", c.messages_from_removed),
    ] {
        metrics::counter!(name).absolute(value);
    }
    for follower in &status.followers {
        let peer = follower.id.to_string();
        metrics::gauge!("raft_follower_lag", "peer" => peer.clone()).set(follower.lag as f64);
        metrics::gauge!("raft_follower_match_index", "peer" => peer)
            .set(follower.match_index as f64);
    }
}

/// Counts one client request of `kind` and its outcome.
pub(crate) fn record_request(kind: &'static str, ok: bool, seconds: f64) {
    metrics::counter!("kv_requests_total", "kind" => kind, "outcome" => if ok { "ok" } else { "error" }).increment(1);
    metrics::histogram!("kv_request_seconds", "kind" => kind).record(seconds);
}

/// The node's health as the health endpoint reports it.
pub trait Health: Send + Sync + 'static {
    /// `(healthy, detail)`: healthy means the node runs and knows a leader.
    fn health(&self) -> (bool, String);
}

/// Installs the Prometheus recorder (once per process) and serves
/// `GET /metrics` and `GET /health` on `address`, on the current tokio
/// runtime: every HTTP connection has a task of its own, so a slow or
/// stuck scraper never holds up `/health` for the others. `refresh` runs
/// before each scrape, to record what is read on demand.
pub fn serve(
    address: SocketAddr,
    health: Arc<dyn Health>,
    refresh: Arc<dyn Fn() + Send + Sync>,
) -> Result<SocketAddr, String> {
    use axum::http::{StatusCode, header};
    use axum::routing::get;
    let handle = recorder()?;
    let cannot_listen = |e: std::io::Error| {
        format!(
            "cannot listen for metrics on {address}: {e}; pick another --metrics-listen address"
        )
    };
    let listener = std::net::TcpListener::bind(address).map_err(cannot_listen)?;
    listener.set_nonblocking(true).map_err(cannot_listen)?;
    let bound = listener.local_addr().map_err(cannot_listen)?;
    let listener = tokio::net::TcpListener::from_std(listener).map_err(cannot_listen)?;
    let text = |status: StatusCode, content_type: &'static str, body: String| {
        (status, [(header::CONTENT_TYPE, content_type)], body)
    };
    let app = axum::Router::new()
        .route(
            "/metrics",
            get(move || async move {
                record_process();
                refresh();
                text(StatusCode::OK, "text/plain; version=0.0.4", handle.render())
            }),
        )
        .route(
            "/health",
            get(move || async move {
                let (ok, detail) = health.health();
                let status = if ok {
                    StatusCode::OK
                } else {
                    StatusCode::SERVICE_UNAVAILABLE
                };
                text(status, "text/plain", detail)
            }),
        )
        .fallback(move || async move {
            text(
                StatusCode::NOT_FOUND,
                "text/plain",
                "not found: try /metrics or /health\n".to_string(),
            )
        });
    let listener = Bounded {
        listener,
        open: Arc::new(std::sync::atomic::AtomicUsize::new(0)),
    };
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!("the metrics endpoint stopped: {e}");
        }
    });
    Ok(bound)
}

/// Connections the metrics endpoint holds at once; one more is closed as
/// soon as it is accepted.
const MAX_METRICS_CONNECTIONS: usize = 256;

/// How long a metrics connection may wait for the client's next bytes, and
/// how long it may live: a scrape takes milliseconds.
const METRICS_IDLE: std::time::Duration = std::time::Duration::from_secs(15);
const METRICS_LIFETIME: std::time::Duration = std::time::Duration::from_secs(60);

/// The metrics port's listener: a stranger cannot hold more than
/// [`MAX_METRICS_CONNECTIONS`] file descriptors with it, nor any for long.
struct Bounded {
    listener: tokio::net::TcpListener,
    open: Arc<std::sync::atomic::AtomicUsize>,
}

impl axum::serve::Listener for Bounded {
    type Io = BoundedIo;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (BoundedIo, SocketAddr) {
        use std::sync::atomic::Ordering;
        loop {
            let (io, address) = match self.listener.accept().await {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::debug!("metrics endpoint: cannot accept a connection: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            };
            let taken = self
                .open
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                    (n < MAX_METRICS_CONNECTIONS).then_some(n + 1)
                })
                .is_ok();
            if !taken {
                // Closed at once.
                continue;
            }
            let now = tokio::time::Instant::now();
            return (
                BoundedIo {
                    io,
                    open: self.open.clone(),
                    idle: Box::pin(tokio::time::sleep(METRICS_IDLE)),
                    ends: Box::pin(tokio::time::sleep_until(now + METRICS_LIFETIME)),
                },
                address,
            );
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }
}

/// A metrics connection: its reads end when the client is silent for
/// [`METRICS_IDLE`] or the connection is [`METRICS_LIFETIME`] old; its
/// place is given back when it is dropped.
struct BoundedIo {
    io: tokio::net::TcpStream,
    open: Arc<std::sync::atomic::AtomicUsize>,
    idle: std::pin::Pin<Box<tokio::time::Sleep>>,
    ends: std::pin::Pin<Box<tokio::time::Sleep>>,
}

impl Drop for BoundedIo {
    fn drop(&mut self) {
        self.open.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }
}

impl tokio::io::AsyncRead for BoundedIo {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        use std::task::Poll;
        let this = &mut *self;
        match std::pin::Pin::new(&mut this.io).poll_read(cx, buf) {
            Poll::Ready(result) => {
                let deadline = tokio::time::Instant::now() + METRICS_IDLE;
                this.idle.as_mut().reset(deadline);
                Poll::Ready(result)
            }
            // Silent too long, or lived long enough: end of stream, and
            // hyper closes the connection.
            Poll::Pending
                if this.idle.as_mut().poll(cx).is_ready()
                    || this.ends.as_mut().poll(cx).is_ready() =>
            {
                Poll::Ready(Ok(()))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

impl tokio::io::AsyncWrite for BoundedIo {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

fn recorder() -> Result<PrometheusHandle, String> {
    static HANDLE: std::sync::OnceLock<Result<PrometheusHandle, String>> =
        std::sync::OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let handle = PrometheusBuilder::new()
                .set_buckets(SECONDS_BUCKETS)
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Full("raft_log_write_entries".into()),
                        COUNT_BUCKETS,
                    )
                })
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Full("raft_log_write_batches".into()),
                        COUNT_BUCKETS,
                    )
                })
                .map_err(|e| format!("cannot configure the metrics buckets: {e}"))?
                .install_recorder()
                .map_err(|e| format!("cannot install the metrics recorder: {e}"))?;
            describe();
            Ok(handle)
        })
        .clone()
}
