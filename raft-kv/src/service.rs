//! The client-facing service: decodes requests arriving on ALPN
//! `raft-client/2`, runs them through the driver, and forwards writes and
//! admin requests to the leader when this node is not it (so clients may
//! talk to any node).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use tokio::sync::{Mutex, oneshot};

use raft_core::{ConfChange, ReadPolicy};
use raft_transport_quic::{
    Caller, ClientConnection, ClientConnector, ClientHandler, ClientRequest, FaultInjector,
    Response as Reply, Role, push_channel,
};

use crate::budget::{Budget, PerIdentity};
use crate::driver::{DriverHandle, DriverRequest};
use crate::lease::Lessor;
use crate::protocol::{
    self, AdminOp, AdminResult, Consistency, KvError, LeaseAnswer, LeaseOp, Member, NodeStatus,
    Principal, Request, Response, WatchMessage, WriteOp,
};
use crate::state_machine::{Command, KvStateMachine};
use crate::watch::WatchHub;

/// The bytes of the files under `dir` (what can be read of them).
fn bytes_under(dir: &std::path::Path) -> u64 {
    let mut total = 0;
    let mut dirs = vec![dir.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            match entry.metadata() {
                Ok(meta) if meta.is_dir() => dirs.push(entry.path()),
                Ok(meta) => total += meta.len(),
                Err(_) => {}
            }
        }
    }
    total
}

/// Serves clients on one node.
pub struct KvService {
    driver: DriverHandle<KvStateMachine>,
    watch: Arc<WatchHub>,
    address: String,
    forwarder: Forwarder,
    faults: Option<FaultInjector>,
    timeout: Duration,
    /// Test-only deliberate bug (see [`KvService::break_linearizable_reads`]).
    stale_linearizable_reads: bool,
    /// When the node's certificate expires (Unix seconds), for the status.
    certificate_expires: Option<i64>,
    /// Lease deadlines, while this node leads.
    lessor: Arc<Lessor>,
    /// The node's data directory, whose size the status reports.
    data_dir: Option<std::path::PathBuf>,
    /// Per client identity, the bytes of watch messages encoded and not
    /// yet sent ([`MAX_WATCH_MESSAGE_BYTES`]).
    watch_budgets: PerIdentity<Budget>,
}

/// Bytes of encoded watch messages one client identity may have waiting
/// for the network on a node, all its watches together; past it the next
/// message is encoded only once some were sent (its events wait as they
/// are, values shared with the store, in the watch's own bounded queue).
pub const MAX_WATCH_MESSAGE_BYTES: usize = 64 << 20;

impl KvService {
    /// A service over `driver`; `connector` is used to forward requests to the
    /// leader (it presents this node's certificate).
    pub fn new(
        driver: DriverHandle<KvStateMachine>,
        watch: Arc<WatchHub>,
        address: String,
        connector: ClientConnector,
        faults: Option<FaultInjector>,
        timeout: Duration,
    ) -> Self {
        Self {
            driver,
            watch,
            address,
            forwarder: Forwarder::new(connector),
            faults,
            timeout,
            stale_linearizable_reads: false,
            certificate_expires: None,
            lessor: Arc::new(Lessor::default()),
            data_dir: None,
            watch_budgets: PerIdentity::default(),
        }
    }

    /// Reports the size of `dir`, the node's data directory, in the status.
    pub fn with_data_dir(mut self, dir: std::path::PathBuf) -> Self {
        self.data_dir = Some(dir);
        self
    }

    /// The lease deadlines this service answers keep-alives with: the
    /// node's expiry loop ([`crate::lease::expire_leases`]) shares them.
    pub fn lessor(&self) -> Arc<Lessor> {
        self.lessor.clone()
    }

    /// Reports `at` (Unix seconds) as when the node's certificate expires.
    pub fn with_certificate_expiry(mut self, at: i64) -> Self {
        self.certificate_expires = Some(at);
        self
    }

    /// TEST ONLY: a deliberate bug, so that the chaos checker can show it
    /// catches one. Linearizable reads skip ReadIndex and read whatever this
    /// node has applied (stale on a lagging or partitioned node). Set only
    /// by [`crate::server`] when [`crate::server::BROKEN_MODE_ENV`] asks for
    /// it on a node with fault injection enabled.
    #[doc(hidden)]
    pub fn break_linearizable_reads(mut self) -> Self {
        self.stale_linearizable_reads = true;
        self
    }

    async fn with_timeout<T>(
        &self,
        f: impl std::future::Future<Output = Result<T, KvError>>,
    ) -> Result<T, KvError> {
        match tokio::time::timeout(self.timeout, f).await {
            Ok(result) => result,
            Err(_) => Err(KvError::Timeout),
        }
    }

    /// Answers one decoded request for `principal`, whose role was checked
    /// (watches are handled by the caller).
    pub async fn answer(&self, request: Request, principal: &Principal) -> Response {
        match request {
            Request::Write {
                session,
                op,
                prev_kv,
                forwarded,
            } => {
                if let Err(e) = protocol::validate_write(&op) {
                    return Response::Error(e);
                }
                if let WriteOp::LeaseRevoke { id } = op
                    && let Err(e) = self.check_lease_owner(id, principal).await
                {
                    return Response::Error(e);
                }
                let data = Command {
                    session,
                    op: op.clone(),
                    prev_kv,
                    owner: principal.name.clone(),
                }
                .encode();
                match self.with_timeout(self.driver.propose(data)).await {
                    Ok(Ok(result)) => Response::Write(result),
                    Ok(Err(e)) => Response::Error(e),
                    Err(KvError::NotLeader { address, .. }) if !forwarded => {
                        self.forward(
                            &address,
                            principal,
                            Request::Write {
                                session,
                                op,
                                prev_kv,
                                forwarded: true,
                            },
                        )
                        .await
                    }
                    Err(e) => Response::Error(e),
                }
            }
            Request::OpenSession { forwarded } => {
                let data = Command::open_session(principal.name.clone()).encode();
                match self.with_timeout(self.driver.propose_indexed(data)).await {
                    Ok((index, Ok(_))) => Response::SessionOpened { client_id: index },
                    Ok((_, Err(e))) => Response::Error(e),
                    Err(KvError::NotLeader { address, .. }) if !forwarded => {
                        self.forward(
                            &address,
                            principal,
                            Request::OpenSession { forwarded: true },
                        )
                        .await
                    }
                    Err(e) => Response::Error(e),
                }
            }
            Request::Read {
                op,
                consistency,
                forwarded,
            } => {
                let policy = match consistency {
                    Consistency::Linearizable if self.stale_linearizable_reads => None,
                    Consistency::Linearizable => Some(ReadPolicy::ReadIndex),
                    Consistency::Lease => Some(ReadPolicy::Lease),
                    Consistency::Stale => None,
                };
                let read_op = op.clone();
                match self
                    .with_timeout(self.driver.read(policy, move |sm| sm.read(&read_op)))
                    .await
                {
                    Ok(Ok(result)) => Response::Read(result),
                    Ok(Err(e)) => Response::Error(e),
                    // Lease reads are served by the leader only: forwarded
                    // once, never again.
                    Err(KvError::NotLeader { address, .. }) if !forwarded => {
                        self.forward(
                            &address,
                            principal,
                            Request::Read {
                                op,
                                consistency,
                                forwarded: true,
                            },
                        )
                        .await
                    }
                    Err(e) => Response::Error(e),
                }
            }
            Request::Lease { op, forwarded } => match self.lease(op.clone(), principal).await {
                Err(KvError::NotLeader { address, .. }) if !forwarded => {
                    self.forward(
                        &address,
                        principal,
                        Request::Lease {
                            op,
                            forwarded: true,
                        },
                    )
                    .await
                }
                Ok(answer) => Response::Lease(answer),
                Err(e) => Response::Error(e),
            },
            Request::Admin { op, forwarded } => match self.admin(op.clone()).await {
                Err(KvError::NotLeader { address, .. }) if !forwarded => {
                    self.forward(
                        &address,
                        principal,
                        Request::Admin {
                            op,
                            forwarded: true,
                        },
                    )
                    .await
                }
                Ok(result) => Response::Admin(result),
                Err(e) => Response::Error(e),
            },
            Request::Status => match self.status().await {
                Ok(status) => Response::Status(Box::new(status)),
                Err(e) => Response::Error(e),
            },
            Request::SetFaults { rules } => match &self.faults {
                Some(faults) => {
                    faults.set_rules(rules);
                    Response::FaultsSet
                }
                None => Response::Error(KvError::FaultInjectionDisabled),
            },
            Request::Watch { .. } => {
                Response::Error(KvError::InvalidRequest("a watch needs a stream".into()))
            }
            Request::Forwarded { .. } => Response::Error(KvError::InvalidRequest(
                "a forwarded request cannot hold another".into(),
            )),
        }
    }

    /// Whom `request` from `caller` acts for, and the request itself (a
    /// forwarded one unwrapped): a client acts for
    /// itself; a member node for itself or, forwarding, for the client it
    /// names. The role is checked here, once, for every kind of request.
    fn authorize(
        &self,
        caller: &Caller,
        request: Request,
    ) -> Result<(Principal, Request), KvError> {
        if let Caller::Node(id) = caller
            && !self.driver.view().addresses.contains_key(id)
        {
            return Err(match request {
                // Its client did nothing wrong: it is still sending to a
                // removed node. Retryable, so the client goes on to the
                // leader this answer comes back from.
                Request::Forwarded { .. } => KvError::Unavailable(format!(
                    "node {id} is not a member of this cluster and cannot forward requests; \
                     send them to a member"
                )),
                _ => KvError::Forbidden(format!(
                    "node {id} is not a member of this cluster; a removed node's certificate \
                     no longer counts"
                )),
            });
        }
        let (principal, request) = match request {
            Request::Forwarded { principal, request } => match caller {
                Caller::Node(_) if !matches!(*request, Request::Forwarded { .. }) => {
                    (principal, *request)
                }
                Caller::Node(_) => {
                    return Err(KvError::InvalidRequest(
                        "a forwarded request cannot hold another".into(),
                    ));
                }
                Caller::Client { name, .. } => {
                    return Err(KvError::Forbidden(format!(
                        "client {name} sent a forwarded request; only member nodes forward, \
                         with their own certificates"
                    )));
                }
            },
            request => (Principal::of(caller), request),
        };
        let needed = request.needs();
        if principal.role < needed {
            return Err(KvError::PermissionDenied {
                needed,
                role: principal.role,
            });
        }
        Ok((principal, request))
    }

    /// Authorizes `request` from `caller` and answers it as the client port
    /// does (watches excepted): the way in for the etcd front door.
    pub(crate) async fn serve_request(&self, caller: &Caller, request: Request) -> Response {
        let (principal, request) = match self.authorize(caller, request) {
            Ok(authorized) => authorized,
            Err(e) => return Response::Error(e),
        };
        if self.driver.is_shutting_down() {
            return Response::Error(KvError::ShuttingDown);
        }
        match self.answer(request, &principal).await {
            // Whether the leader answered through this node does not matter
            // to the caller here.
            Response::Forwarded { response, .. } => *response,
            response => response,
        }
    }

    /// Registers a watch for `caller` (its role checked as for a watch on
    /// the client port): the etcd front door's watches.
    pub(crate) fn subscribe(
        &self,
        caller: &Caller,
        selector: protocol::Selector,
        start_revision: u64,
    ) -> Result<crate::watch::Watcher, KvError> {
        let request = Request::Watch {
            selector: selector.clone(),
            start_revision,
        };
        let (principal, _) = self.authorize(caller, request)?;
        self.watch
            .subscribe(selector, start_revision, &principal.name)
    }

    /// How long a request may take on this node (`request_timeout_ms`).
    pub(crate) fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The store's revision on this node, as of its last applied write.
    pub(crate) fn revision(&self) -> u64 {
        self.watch.revision()
    }

    /// The node's view of the cluster (leader, term, members).
    pub(crate) fn view(&self) -> crate::driver::NodeView {
        self.driver.view()
    }

    /// Each member's published client URLs, as this node has applied them.
    pub(crate) async fn member_urls(
        &self,
    ) -> Result<std::collections::BTreeMap<u64, Vec<String>>, KvError> {
        self.driver.read(None, |sm| sm.member_urls()).await
    }

    async fn status(&self) -> Result<NodeStatus, KvError> {
        let (reply, rx) = oneshot::channel();
        self.driver.send(DriverRequest::Status { reply }).await?;
        let raft = rx.await.map_err(|_| KvError::ShuttingDown)?;
        let revision = self.driver.read(None, |sm| sm.revision()).await?;
        Ok(NodeStatus {
            address: self.address.clone(),
            revision,
            raft,
            cpu_seconds: crate::metrics::process_cpu_seconds(),
            certificate_expires: self.certificate_expires,
            data_bytes: match self.data_dir.clone() {
                Some(dir) => tokio::task::spawn_blocking(move || bytes_under(&dir))
                    .await
                    .ok(),
                None => None,
            },
        })
    }

    /// Answers a lease question as the leader (a ReadIndex read confirms
    /// leadership and sees every committed grant and revoke); a follower
    /// answers `NotLeader`, and the request is forwarded.
    async fn lease(&self, op: LeaseOp, principal: &Principal) -> Result<LeaseAnswer, KvError> {
        // Deadlines live at the leader: a follower (whose ReadIndex reads
        // would succeed) sends the question there.
        let view = self.driver.view();
        if !view.is_leader {
            return Err(match view.leader {
                Some(leader) => KvError::NotLeader {
                    leader,
                    address: view.addresses.get(&leader).cloned().unwrap_or_default(),
                },
                None => KvError::NoLeader,
            });
        }
        let lessor = self.lessor.clone();
        let principal = principal.clone();
        let policy = Some(ReadPolicy::ReadIndex);
        let answer = self
            .with_timeout(self.driver.read(policy, move |sm| {
                let now = Instant::now();
                match op {
                    LeaseOp::KeepAlive { id } => {
                        if let Some(owner) = sm.lease_owner(id) {
                            lease_owner_only(id, owner, &principal)?;
                        }
                        // A lease being expired answers as one that is gone.
                        let ttl = match (sm.lease(id), sm.lease_granted(id)) {
                            (Some((ttl, _)), Some(granted))
                                if lessor.keep_alive(id, granted, ttl, now) =>
                            {
                                ttl
                            }
                            _ => 0,
                        };
                        Ok(LeaseAnswer::KeptAlive { id, ttl })
                    }
                    LeaseOp::TimeToLive { id, keys } => Ok(match sm.lease(id) {
                        Some((ttl, lease_keys)) => LeaseAnswer::TimeToLive {
                            id,
                            remaining: lessor.remaining(
                                id,
                                sm.lease_granted(id).unwrap_or_default(),
                                ttl,
                                now,
                            ),
                            granted: ttl,
                            keys: if keys { lease_keys } else { Vec::new() },
                        },
                        None => LeaseAnswer::TimeToLive {
                            id,
                            remaining: -1,
                            granted: 0,
                            keys: Vec::new(),
                        },
                    }),
                    LeaseOp::List => Ok(LeaseAnswer::List(
                        sm.leases().into_iter().map(|(id, _)| id).collect(),
                    )),
                }
            }))
            .await??;
        // Still the leader of the same term: the deadlines used are the ones
        // in force (a keep-alive noted by a deposed leader is lost with its
        // deadlines, and the client retries).
        let now = self.driver.view();
        if !now.is_leader || now.term != view.term {
            return Err(KvError::LeadershipLost);
        }
        Ok(answer)
    }

    /// Refuses a revoke of another client's lease unless `principal` is an
    /// administrator (read as of now: a lease's owner never changes).
    async fn check_lease_owner(&self, id: u64, principal: &Principal) -> Result<(), KvError> {
        if principal.role >= Role::Admin {
            return Ok(());
        }
        let owner = self
            .with_timeout(self.driver.read(Some(ReadPolicy::ReadIndex), move |sm| {
                sm.lease_owner(id).map(str::to_owned)
            }))
            .await?;
        match owner {
            Some(owner) => lease_owner_only(id, &owner, principal),
            None => Ok(()),
        }
    }

    async fn admin(&self, op: AdminOp) -> Result<AdminResult, KvError> {
        let change = match op {
            AdminOp::AddLearner { id, address } => ConfChange::AddLearner { id, address },
            AdminOp::Promote { id } => ConfChange::AddVoter { id, address: None },
            AdminOp::Remove { id } => ConfChange::Remove { id },
            AdminOp::TransferLeader { to } => return self.transfer(to).await,
        };
        let (reply, rx) = oneshot::channel();
        self.driver
            .send(DriverRequest::ChangeMembership { change, reply })
            .await?;
        self.with_timeout(async { rx.await.map_err(|_| KvError::ShuttingDown)? })
            .await?;
        let view = self.driver.view();
        let members = view
            .addresses
            .iter()
            .map(|(id, address)| Member {
                id: *id,
                address: address.clone(),
                voter: view.voters.contains(id),
            })
            .collect();
        Ok(AdminResult::Members(members))
    }

    async fn transfer(&self, to: Option<u64>) -> Result<AdminResult, KvError> {
        let (reply, rx) = oneshot::channel();
        self.driver
            .send(DriverRequest::TransferLeader { to, reply })
            .await?;
        let target = rx.await.map_err(|_| KvError::ShuttingDown)??;
        // Wait until this node sees the target lead (or give up).
        let mut driver = self.driver.clone();
        let deadline = Instant::now() + self.timeout;
        loop {
            let view = driver.view();
            if view.leader == Some(target) {
                return Ok(AdminResult::LeaderTransferred(target));
            }
            if view.is_leader && view.leader == Some(view.id) && Instant::now() > deadline {
                return Err(KvError::Transfer(format!(
                    "node {target} did not take over in time; this node still leads"
                )));
            }
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                return Err(KvError::Timeout);
            }
            let _ = tokio::time::timeout(remaining, driver.view_changed()).await;
        }
    }

    /// Forwards `request` to the leader at `address` on behalf of
    /// `principal` (the leader checks the role again and keys sessions by
    /// it; it trusts the principal because this node's certificate is a
    /// member's).
    async fn forward(&self, address: &str, principal: &Principal, request: Request) -> Response {
        if address.is_empty() {
            return Response::Error(KvError::NoLeader);
        }
        let request = Request::Forwarded {
            principal: principal.clone(),
            request: Box::new(request),
        };
        match self
            .forwarder
            .request(address, &protocol::encode(&request), self.timeout)
            .await
        {
            // The leader's answer, with where the leader is: the client
            // then sends its next request there directly.
            Ok(bytes) => match protocol::decode(&bytes) {
                Ok(response) => Response::Forwarded {
                    leader: address.to_string(),
                    response: Box::new(response),
                },
                Err(e) => Response::Error(e),
            },
            Err(e) => Response::Error(e),
        }
    }

    fn watch(&self, selector: protocol::Selector, start_revision: u64, owner: &str) -> Reply {
        let budget = self
            .watch_budgets
            .get(owner, || Budget::new(MAX_WATCH_MESSAGE_BYTES));
        match self.watch.subscribe(selector, start_revision, owner) {
            Ok(mut watcher) => {
                // A message is encoded only while its identity holds less
                // than its budget of encoded messages not yet sent, and is
                // counted until the transport has sent it: a watcher that
                // does not read holds its queue of shared events, not
                // encoded copies of them (one copy per watch, 256 watches).
                let (tx, stream) = push_channel(1);
                tokio::spawn(async move {
                    loop {
                        tokio::select! {
                            message = watcher.next() => {
                                // Ended without a last word: the node stopped.
                                let message = message.unwrap_or(WatchMessage::Error(KvError::ShuttingDown));
                                let end = matches!(message, WatchMessage::Compacted { .. } | WatchMessage::Error(_));
                                tokio::select! {
                                    _ = budget.below_limit() => {}
                                    _ = tx.closed() => return,
                                }
                                let encoded = budget.hold(postcard::to_stdvec(&message).unwrap_or_default());
                                if tx.send(encoded).await.is_err() || end {
                                    return;
                                }
                            }
                            _ = tx.closed() => return,
                        }
                    }
                });
                Reply::Stream(stream)
            }
            Err(e) => {
                let (tx, stream) = push_channel(1);
                tokio::spawn(async move {
                    let _ = tx.send(protocol::encode(&WatchMessage::Error(e))).await;
                });
                Reply::Stream(stream)
            }
        }
    }
}

#[async_trait]
impl ClientHandler for KvService {
    async fn handle(&self, request: ClientRequest) -> Reply {
        let started = Instant::now();
        let caller = request.caller;
        let request: Request = match protocol::decode(&request.body) {
            Ok(request) => request,
            Err(e) => return Reply::Unary(protocol::encode(&Response::Error(e))),
        };
        let (principal, request) = match self.authorize(&caller, request) {
            Ok(authorized) => authorized,
            Err(e) => {
                crate::metrics::record_request("denied", false, 0.0);
                return Reply::Unary(protocol::encode(&Response::Error(e)));
            }
        };
        let kind = match &request {
            Request::Write { .. } => "write",
            Request::OpenSession { .. } => "session",
            Request::Read { .. } => "read",
            Request::Watch { .. } => "watch",
            Request::Admin { .. } => "admin",
            Request::Lease { .. } => "lease",
            Request::Status => "status",
            Request::SetFaults { .. } => "faults",
            Request::Forwarded { .. } => "forwarded",
        };
        if let Request::Watch {
            selector,
            start_revision,
        } = request
        {
            crate::metrics::record_request(kind, true, 0.0);
            return self.watch(selector, start_revision, &principal.name);
        }
        if self.driver.is_shutting_down() {
            return Reply::Unary(protocol::encode(&Response::Error(KvError::ShuttingDown)));
        }
        let response = self.answer(request, &principal).await;
        crate::metrics::record_request(
            kind,
            !matches!(response, Response::Error(_)),
            started.elapsed().as_secs_f64(),
        );
        Reply::Unary(protocol::encode(&response))
    }
}

/// Connections to other nodes for forwarding, reused.
struct Forwarder {
    connector: ClientConnector,
    connections: Mutex<HashMap<String, ClientConnection>>,
}

impl Forwarder {
    fn new(connector: ClientConnector) -> Self {
        Self {
            connector,
            connections: Mutex::new(HashMap::new()),
        }
    }

    /// Forwards `body` to `address`, within `timeout` in all: no lock is
    /// held while connecting or waiting, and a leader that does not answer
    /// in time is an `Unavailable` error (the client retries; with its
    /// session a write is applied once).
    async fn request(
        &self,
        address: &str,
        body: &Bytes,
        timeout: Duration,
    ) -> Result<Bytes, KvError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let late = || {
            KvError::Unavailable(format!(
                "the leader at {address} did not answer within {timeout:?}"
            ))
        };
        for attempt in 0..2 {
            let cached = self.connections.lock().await.get(address).cloned();
            let connection = match cached {
                Some(c) => c,
                None => {
                    let c = tokio::time::timeout_at(deadline, self.connector.connect_to(address))
                        .await
                        .map_err(|_| late())?
                        .map_err(|e| {
                            KvError::Unavailable(format!(
                                "cannot reach the leader at {address}: {e}"
                            ))
                        })?;
                    self.connections
                        .lock()
                        .await
                        .insert(address.to_string(), c.clone());
                    c
                }
            };
            match tokio::time::timeout_at(deadline, connection.request(body)).await {
                Err(_) => return Err(late()),
                Ok(Ok(bytes)) => return Ok(bytes),
                Ok(Err(e)) => {
                    self.connections.lock().await.remove(address);
                    if attempt == 1 {
                        return Err(KvError::Unavailable(format!(
                            "forwarding to the leader at {address} failed: {e}"
                        )));
                    }
                }
            }
        }
        Err(KvError::NoLeader)
    }
}

/// Only a lease's owner, or an administrator, keeps it alive or revokes it.
fn lease_owner_only(id: u64, owner: &str, principal: &Principal) -> Result<(), KvError> {
    if owner == principal.name || principal.role >= Role::Admin {
        return Ok(());
    }
    Err(KvError::Forbidden(format!(
        "lease {id} was granted by client {owner}: only it or an administrator may keep it \
         alive or revoke it"
    )))
}
