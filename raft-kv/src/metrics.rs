//! Metrics through the `metrics` facade, exported for Prometheus, and the
//! HTTP endpoint that serves them beside a health check.

use std::net::SocketAddr;
use std::sync::Arc;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use raft_core::{LogRead, Node, Role};

/// Records the node's gauges and counters (called after every batch).
pub(crate) fn record_raft<S: LogRead>(node: &Node<S>) {
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
/// `GET /metrics` and `GET /health` on `address` from a background thread.
pub fn serve(address: SocketAddr, health: Arc<dyn Health>) -> Result<SocketAddr, String> {
    let handle = recorder()?;
    let server = tiny_http::Server::http(address).map_err(|e| {
        format!(
            "cannot listen for metrics on {address}: {e}; pick another --metrics-listen address"
        )
    })?;
    let bound = server.server_addr().to_ip().unwrap_or(address);
    std::thread::Builder::new()
        .name("metrics-http".into())
        .spawn(move || {
            for request in server.incoming_requests() {
                let (status, body, content_type) = match request.url() {
                    "/metrics" => (200, handle.render(), "text/plain; version=0.0.4"),
                    "/health" => {
                        let (ok, detail) = health.health();
                        (if ok { 200 } else { 503 }, detail, "text/plain")
                    }
                    _ => (
                        404,
                        "not found: try /metrics or /health\n".to_string(),
                        "text/plain",
                    ),
                };
                let header = tiny_http::Header::from_bytes("Content-Type", content_type).ok();
                let mut response = tiny_http::Response::from_string(body).with_status_code(status);
                if let Some(header) = header {
                    response = response.with_header(header);
                }
                let _ = request.respond(response);
            }
        })
        .map_err(|e| format!("cannot start the metrics thread: {e}"))?;
    Ok(bound)
}

fn recorder() -> Result<PrometheusHandle, String> {
    static HANDLE: std::sync::OnceLock<Result<PrometheusHandle, String>> =
        std::sync::OnceLock::new();
    HANDLE
        .get_or_init(|| {
            PrometheusBuilder::new()
                .install_recorder()
                .map_err(|e| format!("cannot install the metrics recorder: {e}"))
        })
        .clone()
}
