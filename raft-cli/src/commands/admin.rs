//! Cluster commands: status, members, add-node, remove-node, transfer-leader.
//!
//! The membership and the followers' lag come from the leader's status
//! when a leader is known (it is the authority on both); every member is
//! then asked for its own status, concurrently, with a short deadline so
//! that a dead node costs seconds, not the full --timeout.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::bail;
use raft_core::{Membership, ReplicationState, Role};
use raft_kv::Client;
use raft_kv::protocol::{CERTIFICATE_WARNING_DAYS, Member, NodeStatus, unix_now, whole_days};
use serde_json::{Value, json};

use super::{Context, Outcome, explain};
use crate::output::{Table, cell, members_json, members_table};

/// How long probing one node may take (capped by --timeout).
const PROBE_DEADLINE: Duration = Duration::from_secs(5);
/// How long one probe attempt may take.
const PROBE_ATTEMPT: Duration = Duration::from_secs(3);
/// A follower this many entries behind is reported as "behind".
const BEHIND_ENTRIES: u64 = 1000;

/// A client for probing nodes that may be down.
async fn probe_client(context: &Context) -> anyhow::Result<Arc<Client>> {
    Ok(Arc::new(
        context.client_with(PROBE_DEADLINE, PROBE_ATTEMPT).await?,
    ))
}

/// The cluster as one node sees it, preferably the leader.
struct ClusterView {
    /// The status of the node the view comes from.
    source: NodeStatus,
    /// Statuses fetched on the way, by address.
    fetched: BTreeMap<String, NodeStatus>,
}

impl ClusterView {
    fn membership(&self) -> &Membership {
        &self.source.raft.membership
    }

    fn leader(&self) -> Option<&NodeStatus> {
        (self.source.raft.role == Role::Leader).then_some(&self.source)
    }

    fn members(&self) -> Vec<Member> {
        let m = self.membership();
        m.addresses()
            .iter()
            .map(|(id, address)| Member {
                id: *id,
                address: address.clone(),
                voter: m.is_voter(*id),
            })
            .collect()
    }
}

/// Asks the endpoints for their status and follows the leader hint; the
/// leader's view if one is reachable, else the first reachable node's.
async fn cluster_view(probe: &Client) -> Result<ClusterView, raft_kv::ClientError> {
    let mut fetched = BTreeMap::new();
    let mut first: Option<NodeStatus> = None;
    let mut last_error = None;
    for endpoint in probe.endpoints().to_vec() {
        let status = match probe.status_of(&endpoint).await {
            Ok(status) => status,
            Err(e) => {
                last_error = Some(e);
                continue;
            }
        };
        fetched.insert(endpoint.clone(), status.clone());
        if status.raft.role == Role::Leader {
            return Ok(ClusterView {
                source: status,
                fetched,
            });
        }
        let leader_address = status
            .raft
            .leader
            .and_then(|id| status.raft.membership.address(id))
            .map(str::to_string);
        if first.is_none() {
            first = Some(status);
        }
        if let Some(address) = leader_address {
            if let Ok(leader) = probe.status_of(&address).await {
                fetched.insert(address, leader.clone());
                if leader.raft.role == Role::Leader {
                    return Ok(ClusterView {
                        source: leader,
                        fetched,
                    });
                }
            }
        }
    }
    match first {
        Some(source) => Ok(ClusterView { source, fetched }),
        None => Err(last_error.unwrap_or(raft_kv::ClientError::NoEndpoints)),
    }
}

/// Waits until a leader is reachable (elections take a moment).
async fn leader_view(probe: &Client, deadline: Duration) -> anyhow::Result<ClusterView> {
    let started = Instant::now();
    loop {
        let view = cluster_view(probe)
            .await
            .map_err(|e| explain("cannot read the cluster's status", e))?;
        if view.leader().is_some() {
            return Ok(view);
        }
        if started.elapsed() > deadline {
            bail!(
                "no leader found within {deadline:?} (node {} at {} sees {}); check `raft-cli status`: \
                 a majority of the voters must be up and reach each other",
                view.source.raft.id,
                view.source.address,
                match view.source.raft.leader {
                    Some(id) => format!("node {id} as leader but it did not answer as one"),
                    None => "no leader".to_string(),
                }
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// One row of `status`.
#[derive(Debug, Clone)]
pub struct StatusRow {
    /// The member's id.
    pub id: u64,
    /// Its address in the membership.
    pub address: String,
    /// Whether it votes.
    pub voter: bool,
    /// Its own status, if it answered.
    pub status: Option<NodeStatus>,
    /// Its lag as the leader sees it (entries behind the leader's last index).
    pub lag: Option<u64>,
    /// The leader's replication state for it.
    pub replication: Option<ReplicationState>,
    /// Whether the leader heard from it within an election timeout.
    pub recent_active: Option<bool>,
    /// Why it could not be asked.
    pub error: Option<String>,
}

impl StatusRow {
    /// The role to show: the node's own view, learners named as such.
    pub fn role(&self) -> Option<String> {
        let status = self.status.as_ref()?;
        Some(
            match status.raft.role {
                Role::Leader => "leader",
                Role::Candidate => "candidate",
                Role::PreCandidate => "pre-candidate",
                Role::Follower if !self.voter => "learner",
                Role::Follower => "follower",
            }
            .to_string(),
        )
    }

    /// ok, unreachable, no leader, receiving snapshot, behind, or no contact.
    pub fn health(&self) -> String {
        let Some(status) = &self.status else {
            return "unreachable".into();
        };
        if status.raft.leader.is_none() {
            return "no leader".into();
        }
        if self.replication == Some(ReplicationState::Snapshot) {
            return "receiving snapshot".into();
        }
        if self.recent_active == Some(false) {
            return "no contact with leader".into();
        }
        if self.lag.is_some_and(|lag| lag > BEHIND_ENTRIES) {
            return "behind".into();
        }
        "ok".into()
    }

    fn json(&self) -> Value {
        let raft = self.status.as_ref().map(|s| &s.raft);
        json!({
            "id": self.id,
            "address": self.address,
            "voter": self.voter,
            "role": self.role(),
            "term": raft.map(|r| r.term),
            "leader": raft.and_then(|r| r.leader),
            "commit": raft.map(|r| r.commit),
            "applied": raft.map(|r| r.applied),
            "revision": self.status.as_ref().map(|s| s.revision),
            "lag": self.lag,
            "health": self.health(),
            "error": self.error,
            "certificate_expires": self.status.as_ref().and_then(|s| s.certificate_expires),
            "node": self.status.as_ref().map(|s| serde_json::to_value(s).unwrap_or(Value::Null)),
        })
    }
}

/// The status table.
pub fn status_table(rows: &[StatusRow]) -> Table {
    let mut table = Table::new([
        "ID", "ADDRESS", "ROLE", "TERM", "COMMIT", "APPLIED", "LAG", "HEALTH",
    ]);
    for row in rows {
        let raft = row.status.as_ref().map(|s| &s.raft);
        table.row([
            row.id.to_string(),
            row.address.clone(),
            cell(row.role()),
            cell(raft.map(|r| r.term)),
            cell(raft.map(|r| r.commit)),
            cell(raft.map(|r| r.applied)),
            cell(row.lag),
            row.health(),
        ]);
    }
    table
}

/// Asks every member for its status.
async fn status_rows(probe: Arc<Client>, view: &ClusterView) -> Vec<StatusRow> {
    let leader = view.leader();
    let mut tasks = tokio::task::JoinSet::new();
    for member in view.members() {
        let known = view.fetched.get(&member.address).cloned();
        let probe = probe.clone();
        tasks.spawn(async move {
            let result = match known {
                Some(status) => Ok(status),
                None => probe.status_of(&member.address).await,
            };
            (member, result)
        });
    }
    let mut rows = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        let Ok((member, result)) = joined else {
            continue;
        };
        let follower = leader.and_then(|l| l.raft.followers.iter().find(|f| f.id == member.id));
        let is_leader = leader.is_some_and(|l| l.raft.id == member.id);
        let (status, error) = match result {
            // A node answering for another id (a reused address) is not this member.
            Ok(s) if s.raft.id != member.id => (
                None,
                Some(format!("node {} answered at this address", s.raft.id)),
            ),
            Ok(s) => (Some(s), None),
            Err(e) => (None, Some(e.to_string())),
        };
        rows.push(StatusRow {
            id: member.id,
            address: member.address,
            voter: member.voter,
            status,
            lag: if is_leader {
                Some(0)
            } else {
                follower.map(|f| f.lag)
            },
            replication: follower.map(|f| f.state),
            recent_active: follower.map(|f| f.recent_active),
            error,
        });
    }
    rows.sort_by_key(|r| r.id);
    rows
}

/// `status`.
pub async fn status(context: &Context) -> anyhow::Result<Outcome> {
    let probe = probe_client(context).await?;
    let view = cluster_view(&probe)
        .await
        .map_err(|e| explain("cannot read the cluster's status", e))?;
    let rows = status_rows(probe, &view).await;
    context.print(
        || {
            let mut out = status_table(&rows).render();
            if view.leader().is_none() {
                out.push_str(&format!(
                    "no leader reachable: membership and lag as node {} sees them\n",
                    view.source.raft.id
                ));
            }
            for row in &rows {
                if let Some(error) = &row.error {
                    out.push_str(&format!("node {}: {error}\n", row.id));
                }
            }
            for warning in certificate_warnings(&rows, unix_now()) {
                out.push_str(&warning);
                out.push('\n');
            }
            out
        },
        || Value::Array(rows.iter().map(StatusRow::json).collect()),
    )?;
    Ok(Outcome::Success)
}

/// A line for each node whose certificate expires within
/// [`CERTIFICATE_WARNING_DAYS`] of `now` (Unix seconds), or has expired.
fn certificate_warnings(rows: &[StatusRow], now: i64) -> Vec<String> {
    rows.iter()
        .filter_map(|row| {
            let expires = row.status.as_ref()?.certificate_expires?;
            let days = whole_days(now, expires);
            (days < CERTIFICATE_WARNING_DAYS).then(|| {
                format!(
                    "node {}: its certificate expires in {days} days; issue a new one with \
                     `raft-cli certs node` and restart the node with it before then",
                    row.id
                )
            })
        })
        .collect()
}

/// `members`.
pub async fn members(context: &Context) -> anyhow::Result<Outcome> {
    let probe = probe_client(context).await?;
    let view = cluster_view(&probe)
        .await
        .map_err(|e| explain("cannot read the membership", e))?;
    let members = view.members();
    context.print_table(|| members_table(&members), || members_json(&members))?;
    Ok(Outcome::Success)
}

/// What a leader says about one follower's catch-up.
fn catch_up_state(leader: &NodeStatus, id: u64) -> Option<(u64, ReplicationState, bool)> {
    leader
        .raft
        .followers
        .iter()
        .find(|f| f.id == id)
        .map(|f| (f.lag, f.state, f.recent_active))
}

/// `add-node ID ADDRESS [--learner]`: add as a learner, wait until it is at
/// most `max_lag` entries behind, then promote it.
pub async fn add_node(
    context: &Context,
    id: u64,
    address: String,
    learner_only: bool,
    catch_up_timeout: Duration,
    max_lag: u64,
) -> anyhow::Result<Outcome> {
    if id == 0 {
        bail!("node id 0 is reserved; use ids from 1");
    }
    let what = format!("add-node {id} {address} failed");
    let client = context.client().await?;
    let probe = probe_client(context).await?;
    let view = leader_view(&probe, context.settings.timeout).await?;
    let membership = view.membership();
    if membership.is_voter(id) {
        bail!(
            "{what}: node {id} is already a voter (at {}); nothing to do. To move it, remove it \
             with `raft-cli remove-node {id}` first",
            membership.address(id).unwrap_or("?")
        );
    }
    if membership.is_learner(id) {
        let current = membership.address(id).unwrap_or_default();
        if current != address {
            bail!(
                "{what}: node {id} is already a learner at {current}; remove it with \
                 `raft-cli remove-node {id}` to re-add it at {address}"
            );
        }
        eprintln!("node {id} is already a learner at {address}");
    } else {
        client
            .add_learner(id, &address)
            .await
            .map_err(|e| explain(&what, e))?;
        eprintln!("added node {id} at {address} as a learner");
    }
    if !learner_only {
        wait_for_catch_up(&probe, id, &address, catch_up_timeout, max_lag).await?;
        client.promote(id).await.map_err(|e| {
            explain(
                &format!("node {id} caught up, but promoting it to voter failed (it stays a learner; re-run add-node to retry)"),
                e,
            )
        })?;
        eprintln!("node {id} is a voter");
    }
    let view = leader_view(&probe, context.settings.timeout).await?;
    let members = view.members();
    context.print_table(|| members_table(&members), || members_json(&members))?;
    Ok(Outcome::Success)
}

async fn wait_for_catch_up(
    probe: &Client,
    id: u64,
    address: &str,
    timeout: Duration,
    max_lag: u64,
) -> anyhow::Result<()> {
    let started = Instant::now();
    let mut last_report = Instant::now();
    let mut last_seen = None;
    eprintln!(
        "waiting up to {timeout:?} for node {id} to catch up (at most {max_lag} entries behind)"
    );
    loop {
        if let Ok(view) = cluster_view(probe).await {
            if let Some(leader) = view.leader() {
                if !leader.raft.membership.is_learner(id) && !leader.raft.membership.is_voter(id) {
                    bail!(
                        "node {id} left the membership while catching up (removed by someone \
                         else?); check `raft-cli members`"
                    );
                }
                if let Some((lag, state, active)) = catch_up_state(leader, id) {
                    if lag <= max_lag && state == ReplicationState::Replicate && active {
                        return Ok(());
                    }
                    last_seen = Some((lag, state, active));
                    if last_report.elapsed() > Duration::from_secs(2) {
                        eprintln!("node {id}: {lag} entries behind ({state:?})");
                        last_report = Instant::now();
                    }
                }
            }
        }
        if started.elapsed() > timeout {
            let seen = match last_seen {
                Some((lag, state, active)) => format!(
                    "last seen {lag} entries behind, replication {state:?}, {}",
                    if active {
                        "answering the leader"
                    } else {
                        "not answering the leader"
                    }
                ),
                None => "the leader has no replication state for it".to_string(),
            };
            bail!(
                "node {id} did not catch up within {timeout:?} ({seen}); it stays a learner. Check \
                 that it runs (started with --join) and that the leader can reach it at {address}, \
                 then re-run `raft-cli add-node {id} {address}` (it continues from here), raise \
                 --catch-up-timeout, or remove it with `raft-cli remove-node {id}`"
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// `remove-node ID`.
pub async fn remove_node(context: &Context, id: u64) -> anyhow::Result<Outcome> {
    let what = format!("remove-node {id} failed");
    let client = context.client().await?;
    let probe = probe_client(context).await?;
    let view = leader_view(&probe, context.settings.timeout).await?;
    if !view.membership().contains(id) {
        bail!("{what}: node {id} is not a member; `raft-cli members` lists the members");
    }
    let members = client.remove(id).await.map_err(|e| explain(&what, e))?;
    context.print_table(|| members_table(&members), || members_json(&members))?;
    Ok(Outcome::Success)
}

/// `transfer-leader [--to ID]`.
pub async fn transfer_leader(context: &Context, to: Option<u64>) -> anyhow::Result<Outcome> {
    let what = match to {
        Some(id) => format!("transfer-leader --to {id} failed"),
        None => "transfer-leader failed".to_string(),
    };
    let client = context.client().await?;
    if let Some(id) = to {
        let probe = probe_client(context).await?;
        let view = leader_view(&probe, context.settings.timeout).await?;
        if !view.membership().is_voter(id) {
            bail!(
                "{what}: node {id} is not a voter, and only voters can lead; `raft-cli members` \
                 lists them"
            );
        }
        if view.source.raft.id == id {
            context.print(
                || format!("node {id} already leads (term {})\n", view.source.raft.term),
                || json!({"leader": id}),
            )?;
            return Ok(Outcome::Success);
        }
    }
    let leader = client
        .transfer_leader(to)
        .await
        .map_err(|e| explain(&what, e))?;
    context.print(
        || format!("node {leader} now leads\n"),
        || json!({"leader": leader}),
    )?;
    Ok(Outcome::Success)
}

#[cfg(test)]
mod tests {
    use super::*;
    use raft_core::{Counters, FollowerStatus, LogId, Status};

    fn node_status(id: u64, role: Role, leader: Option<u64>) -> NodeStatus {
        let membership = Membership::with_voters([(1, "a:1".to_string()), (2, "a:2".to_string())]);
        NodeStatus {
            address: format!("a:{id}"),
            revision: 9,
            raft: Status {
                id,
                role,
                term: 3,
                vote: leader,
                leader,
                commit: 12,
                applied: 11,
                last_log: LogId::default(),
                first_index: 1,
                is_voter: true,
                membership,
                transfer_target: None,
                leader_contact_ticks: 0,
                followers: vec![FollowerStatus {
                    id: 2,
                    is_learner: false,
                    match_index: 10,
                    next_index: 11,
                    inflight: 0,
                    state: ReplicationState::Replicate,
                    lag: 2,
                    recent_active: true,
                    snapshot_bytes_acked: None,
                }],
                counters: Counters::default(),
            },
            cpu_seconds: Some(1.5),
            certificate_expires: Some(NOW + 700 * DAY),
            data_bytes: Some(4096),
        }
    }

    const NOW: i64 = 1_800_000_000;
    const DAY: i64 = 86_400;

    #[test]
    fn status_warns_about_certificates_that_expire_soon() {
        let mut soon = node_status(2, Role::Follower, Some(1));
        soon.certificate_expires = Some(NOW + 12 * DAY + 5);
        let rows = [
            row(1, Some(node_status(1, Role::Leader, Some(1))), true),
            row(2, Some(soon), true),
        ];
        let warnings = certificate_warnings(&rows, NOW);
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(
            warnings[0].starts_with("node 2: its certificate expires in 12 days")
                && warnings[0].contains("raft-cli certs node"),
            "{warnings:?}"
        );
        let json = rows[1].json();
        assert_eq!(json["certificate_expires"], NOW + 12 * DAY + 5);
    }

    fn row(id: u64, status: Option<NodeStatus>, voter: bool) -> StatusRow {
        StatusRow {
            id,
            address: format!("a:{id}"),
            voter,
            status,
            lag: Some(0),
            replication: None,
            recent_active: None,
            error: None,
        }
    }

    #[test]
    fn status_rows_render_roles_lag_and_health() {
        let leader = row(1, Some(node_status(1, Role::Leader, Some(1))), true);
        let mut follower = row(2, Some(node_status(2, Role::Follower, Some(1))), true);
        follower.lag = Some(2);
        let mut learner = row(4, Some(node_status(4, Role::Follower, Some(1))), false);
        learner.replication = Some(ReplicationState::Snapshot);
        learner.lag = Some(5000);
        let mut dead = row(3, None, true);
        dead.lag = None;
        dead.error = Some("cannot reach".into());
        let rows = [leader, follower, dead, learner];
        assert_eq!(
            status_table(&rows).render(),
            "ID  ADDRESS  ROLE      TERM  COMMIT  APPLIED  LAG   HEALTH\n\
             1   a:1      leader    3     12      11       0     ok\n\
             2   a:2      follower  3     12      11       2     ok\n\
             3   a:3      -         -     -       -        -     unreachable\n\
             4   a:4      learner   3     12      11       5000  receiving snapshot\n"
        );
        let json = rows[3].json();
        assert_eq!(json["role"], "learner");
        assert_eq!(json["health"], "receiving snapshot");
        assert_eq!(json["node"]["raft"]["counters"]["snapshots_installed"], 0);
        let json = rows[2].json();
        assert_eq!(json["health"], "unreachable");
        assert_eq!(json["term"], Value::Null);
        assert_eq!(json["error"], "cannot reach");
    }

    #[test]
    fn health_flags_followers_without_a_leader_or_far_behind() {
        let mut r = row(2, Some(node_status(2, Role::Candidate, None)), true);
        assert_eq!(r.health(), "no leader");
        assert_eq!(r.role().as_deref(), Some("candidate"));
        r.status = Some(node_status(2, Role::Follower, Some(1)));
        r.lag = Some(BEHIND_ENTRIES + 1);
        assert_eq!(r.health(), "behind");
        r.lag = Some(1);
        r.recent_active = Some(false);
        assert_eq!(r.health(), "no contact with leader");
    }

    #[test]
    fn catch_up_reads_the_leaders_follower_entry() {
        let leader = node_status(1, Role::Leader, Some(1));
        assert_eq!(
            catch_up_state(&leader, 2),
            Some((2, ReplicationState::Replicate, true))
        );
        assert_eq!(catch_up_state(&leader, 7), None);
    }
}
