//! A second front door speaking etcd's v3 gRPC API, so that `etcdctl` and
//! etcd client libraries can use a raft-kv cluster.
//!
//! It is off unless `etcd_listen` is set. gRPC runs over HTTP/2 with TLS;
//! clients must present a certificate from the cluster's CA, and its role
//! applies as on the client port. Every call goes through the node's own
//! request path ([`KvService`]): the same linearizable reads, forwarding
//! to the leader, sessions and limits.
//!
//! Served so far: `KV.Range` (keys, ranges, prefixes and "from key", limit,
//! revision, serializable, keys-only, count-only, sort), `KV.Put`
//! (prev_kv), `KV.DeleteRange` (a range in one transaction), `KV.Txn`
//! (comparisons on value, version, create and mod revision; puts, deletes
//! and reads, in one log entry), `KV.Compact`, `Cluster`'s
//! `MemberList`, `MemberAdd` (as a learner), `MemberPromote` and
//! `MemberRemove`, and `Maintenance`'s `Status`, `MoveLeader`, `Alarm`
//! (none) and `Defragment` (nothing to do), `Watch` (keys, ranges and
//! prefixes, from a revision, with filters and `prev_kv`; progress requests
//! and `progress_notify`; a watch whose history is gone is canceled with its
//! compact revision), and `Lease` (grant, revoke, keep-alive, time to live,
//! list). Auth answers `Unimplemented`.
//!
//! Writes need a session for exactly-once application: the front door keeps
//! one per client identity and numbers its writes. Like etcd, a write a
//! client sends again is a new write.

mod budget;
mod listener;

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::Mutex;
use tonic::{Request as GrpcRequest, Response as GrpcResponse, Status};

use raft_transport_quic::{Caller, DenyList};

use crate::protocol::{
    AdminOp, AdminResult, Compare, CompareResult, CompareTarget, Consistency, EventKind, KeyRange,
    KeyValue, KvError, LeaseAnswer, LeaseOp, ReadOp, ReadResult, Request, Response, Selector,
    Session, Txn, TxnOp, TxnOpResult, WatchEvent, WatchMessage, WriteOp, WriteResult,
    etcd_range_end, key_after,
};
use crate::service::KvService;

/// The generated etcd messages and service traits (from `proto/`).
#[allow(missing_docs, unreachable_pub, clippy::all, clippy::pedantic)]
mod proto {
    /// etcd's key-value types.
    pub(crate) mod mvccpb {
        tonic::include_proto!("mvccpb");
    }
    /// etcd's services and their messages.
    pub(crate) mod etcdserverpb {
        tonic::include_proto!("etcdserverpb");
    }
}

use proto::etcdserverpb as pb;
use proto::mvccpb;

use pb::auth_server::{Auth, AuthServer};
use pb::cluster_server::{Cluster, ClusterServer};
use pb::kv_server::{Kv, KvServer};
use pb::lease_server::{Lease, LeaseServer};
use pb::maintenance_server::{Maintenance, MaintenanceServer};
use pb::watch_server::{Watch, WatchServer};

/// The most bytes of key-values one `Range` answer gathers across pages
/// (etcd's clients accept 2 GiB; a larger range says `more`).
const MAX_RANGE_BYTES: usize = 64 << 20;

/// HTTP/2 streams one connection may have open (etcd's clients multiplex
/// every call and watch of a client over one connection).
const MAX_STREAMS_PER_CONNECTION: u32 = 256;

/// Header bytes of one call.
const MAX_HEADER_BYTES: u32 = 16 << 10;

/// The largest request message: a transaction of puts, each value up to
/// the value limit, and keys (the native port's frame limit).
const MAX_REQUEST_MESSAGE: usize = 16 << 20;

/// The largest request of the services whose requests carry no values.
const MAX_SMALL_MESSAGE: usize = 64 << 10;

/// A gRPC service with its request message limit; its answers are bounded
/// by the calls themselves (a range gathers at most [`MAX_RANGE_BYTES`]).
macro_rules! limited {
    ($service:expr, $max:expr) => {
        $service
            .max_decoding_message_size($max)
            .max_encoding_message_size(MAX_RANGE_BYTES + (1 << 20))
    };
}

/// The front door of one node.
#[derive(Clone)]
struct EtcdApi {
    service: Arc<dyn Fn() -> Option<Arc<KvService>> + Send + Sync>,
    cluster_id: u64,
    member_id: u64,
    sessions: Arc<Sessions>,
    deny: Option<DenyList>,
}

/// Write sessions by client identity.
#[derive(Default)]
struct Sessions {
    by_owner: Mutex<HashMap<String, Arc<SessionSlot>>>,
}

/// One identity's session, and the writes still waiting for their answer
/// (the lowest is the session's `first_outstanding`).
#[derive(Default)]
struct SessionSlot {
    session: Mutex<OwnedSession>,
    outstanding: std::sync::Mutex<BTreeSet<u64>>,
}

/// A session's id once opened, and its next sequence number.
#[derive(Default)]
struct OwnedSession {
    client_id: Option<u64>,
    next: u64,
}

/// A write refused because its session was forgotten.
struct Expired {
    sent_once: bool,
}

/// A write waiting for its answer; it stops counting as outstanding when
/// dropped, answered or not (a client that gives up cancels the call).
struct Outstanding<'a> {
    slot: &'a SessionSlot,
    sequence: u64,
}

impl SessionSlot {
    fn outstanding(&self) -> std::sync::MutexGuard<'_, BTreeSet<u64>> {
        self.outstanding
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Drop for Outstanding<'_> {
    fn drop(&mut self) {
        self.slot.outstanding().remove(&self.sequence);
    }
}

/// What the etcd front door of a node needs.
pub(crate) struct EtcdOptions {
    /// Where to listen (TCP).
    pub address: SocketAddr,
    /// PEM: the cluster CA (clients must present a certificate it issued),
    /// this node's certificate and its key.
    pub ca: String,
    pub cert: String,
    pub key: String,
    /// The cluster's name and this node's id.
    pub cluster: String,
    pub member_id: u64,
    /// Revoked certificates, as on the client port.
    pub deny: Option<DenyList>,
    /// Where clients reach this port (`https://host:port`), published to
    /// the cluster for etcd's member list.
    pub client_url: String,
}

/// The etcd front door while it runs: dropping it stops it, and closes
/// every connection it has open (watch and keep-alive streams included), so
/// clients go to other nodes at once rather than wait on a node that no
/// longer serves.
pub(crate) struct EtcdServer {
    task: tokio::task::AbortHandle,
    publish: tokio::task::AbortHandle,
    close: tokio::sync::watch::Sender<bool>,
}

impl Drop for EtcdServer {
    fn drop(&mut self) {
        self.task.abort();
        self.publish.abort();
        self.close.send_replace(true);
    }
}

/// Serves etcd's API until the returned handle is dropped; `service` gives
/// the node's request path once it is up.
pub(crate) async fn serve(
    options: EtcdOptions,
    service: Arc<dyn Fn() -> Option<Arc<KvService>> + Send + Sync>,
) -> Result<EtcdServer, String> {
    let EtcdOptions {
        address,
        ca,
        cert,
        key,
        cluster,
        member_id,
        deny,
        client_url,
    } = options;
    let identity = raft_transport_quic::TlsIdentity::from_pem(&ca, &cert, &key)
        .map_err(|e| format!("cannot load the TLS files for the etcd API: {e}"))?;
    let tls = listener::tls_config(&identity, deny.clone())
        .map_err(|e| format!("cannot set up TLS for the etcd API: {e}"))?;
    let api = EtcdApi {
        service,
        cluster_id: cluster_hash(&cluster),
        member_id,
        sessions: Arc::new(Sessions::default()),
        deny: deny.clone(),
    };
    let publish = tokio::spawn(publish(api.clone(), client_url)).abort_handle();
    let tcp = tokio::net::TcpListener::bind(address)
        .await
        .map_err(|e| format!("cannot listen on {address} for the etcd API: {e}"))?;
    let router = tonic::transport::Server::builder()
        // HTTP/2's own limits: streams per connection, header bytes, and
        // pings to find connections whose client is gone.
        .max_concurrent_streams(MAX_STREAMS_PER_CONNECTION)
        .http2_max_header_list_size(MAX_HEADER_BYTES)
        .http2_keepalive_interval(Some(std::time::Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(std::time::Duration::from_secs(20)))
        .layer(budget::GuardLayer)
        .add_service(limited!(KvServer::new(api.clone()), MAX_REQUEST_MESSAGE))
        .add_service(limited!(ClusterServer::new(api.clone()), MAX_SMALL_MESSAGE))
        .add_service(limited!(WatchServer::new(api.clone()), MAX_SMALL_MESSAGE))
        .add_service(limited!(LeaseServer::new(api.clone()), MAX_SMALL_MESSAGE))
        .add_service(limited!(AuthServer::new(api.clone()), MAX_SMALL_MESSAGE))
        .add_service(limited!(MaintenanceServer::new(api), MAX_SMALL_MESSAGE));
    let (close, closed) = tokio::sync::watch::channel(false);
    let incoming = listener::accept(listener::Listener {
        listener: tcp,
        tls: Arc::new(tls),
        limits: listener::fd_budget(listener::Limits::default()),
        cluster,
        deny,
        identities: Arc::new(listener::Identities::default()),
        close: closed,
    });
    let task = tokio::spawn(async move {
        if let Err(e) = router.serve_with_incoming(incoming).await {
            tracing::error!("the etcd API stopped: {e}");
        }
    });
    Ok(EtcdServer {
        task: task.abort_handle(),
        publish,
        close,
    })
}

/// Writes this member's client URL to the cluster (etcd's member
/// attributes, which the member list answers), once the node is up and a
/// leader takes it; retried every second until it is.
async fn publish(api: EtcdApi, client_url: String) {
    loop {
        if let Some(service) = (api.service)() {
            let op = WriteOp::PublishMember {
                node: api.member_id,
                client_urls: vec![client_url.clone()],
            };
            match api
                .write(&service, &Caller::Node(api.member_id), op, false)
                .await
            {
                Ok(_) => return,
                Err(e) => tracing::debug!("publishing the etcd client URL: {e}; retrying"),
            }
        }
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    }
}

/// etcd's cluster ids are numbers; ours is a name: a stable hash of it.
fn cluster_hash(name: &str) -> u64 {
    // FNV-1a: stable across builds and platforms.
    name.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The gRPC status for one of our errors, with its message.
fn status(e: KvError) -> Status {
    let message = e.to_string();
    match e {
        // Refusals that are etcd's own carry etcd's exact message.
        KvError::InvalidRequest(etcd) if etcd.starts_with("etcdserver: ") => {
            Status::invalid_argument(etcd)
        }
        KvError::InvalidRequest(_) => Status::invalid_argument(message),
        KvError::PermissionDenied { .. } | KvError::Forbidden(_) => {
            Status::permission_denied(message)
        }
        // etcd's own messages: client libraries match them exactly to
        // give their typed errors (Go's rpctypes.ErrCompacted...).
        KvError::Compacted { .. } => {
            Status::out_of_range("etcdserver: mvcc: required revision has been compacted")
        }
        KvError::FutureRevision { .. } => {
            Status::out_of_range("etcdserver: mvcc: required revision is a future revision")
        }
        KvError::LeaseNotFound { .. } => Status::not_found("etcdserver: requested lease not found"),
        KvError::LeaseExists { .. } => {
            Status::failed_precondition("etcdserver: lease already exists")
        }
        KvError::LimitReached(_) => Status::resource_exhausted(message),
        KvError::Internal(_) => Status::internal(message),
        KvError::SessionExpired => Status::aborted(message),
        KvError::MembershipChange(_) | KvError::Transfer(_) => Status::failed_precondition(message),
        KvError::FaultInjectionDisabled => Status::failed_precondition(message),
        KvError::NoLeader
        | KvError::NotLeader { .. }
        | KvError::ConfigChangeInProgress
        | KvError::TransferInProgress
        | KvError::Timeout
        | KvError::Unavailable(_)
        | KvError::ShuttingDown
        | KvError::LeadershipLost
        | KvError::LeaderNotSettled => Status::unavailable(message),
    }
}

fn unexpected(response: Response) -> Status {
    match response {
        Response::Error(e) => status(e),
        other => Status::internal(format!("unexpected answer from the node: {other:?}")),
    }
}

fn to_pb(kv: KeyValue, keys_only: bool) -> mvccpb::KeyValue {
    mvccpb::KeyValue {
        key: kv.key.to_vec(),
        create_revision: kv.create_revision as i64,
        mod_revision: kv.mod_revision as i64,
        version: kv.version as i64,
        value: if keys_only {
            Vec::new()
        } else {
            kv.value.to_vec()
        },
        lease: kv.lease as i64,
    }
}

/// Who sent a gRPC request: the holder of the client certificate its
/// connection was made with (refused if the deny list names it now), and
/// the budgets of its identity.
fn peer_of<T>(request: &GrpcRequest<T>, deny: Option<&DenyList>) -> Result<listener::Peer, Status> {
    let peer = request
        .extensions()
        .get::<listener::Peer>()
        .cloned()
        .ok_or_else(|| {
            Status::unauthenticated("a client certificate from the cluster's CA is required")
        })?;
    if deny.is_some_and(|list| list.contains(&peer.fingerprint)) {
        return Err(Status::permission_denied(
            "this certificate is revoked (on the node's deny list); use another one",
        ));
    }
    Ok(peer)
}

impl EtcdApi {
    fn service(&self) -> Result<Arc<KvService>, Status> {
        (self.service)().ok_or_else(|| Status::unavailable("the node is starting"))
    }

    /// Who sent `request`, and the node's request path: how every call
    /// begins.
    fn begin<T>(&self, request: &GrpcRequest<T>) -> Result<(Caller, Arc<KvService>), Status> {
        let peer = peer_of(request, self.deny.as_ref())?;
        Ok((peer.caller, self.service()?))
    }

    /// [`begin`](Self::begin), with the budgets of the caller's identity
    /// (for calls that build large answers).
    fn begin_metered<T>(
        &self,
        request: &GrpcRequest<T>,
    ) -> Result<(Caller, Arc<budget::Identity>, Arc<KvService>), Status> {
        let peer = peer_of(request, self.deny.as_ref())?;
        Ok((peer.caller, peer.identity, self.service()?))
    }

    fn header(&self, service: &KvService, revision: u64) -> pb::ResponseHeader {
        pb::ResponseHeader {
            cluster_id: self.cluster_id,
            member_id: self.member_id,
            revision: revision as i64,
            raft_term: service.view().term,
        }
    }

    async fn read(
        &self,
        service: &KvService,
        caller: &Caller,
        op: ReadOp,
        consistency: Consistency,
    ) -> Result<ReadResult, Status> {
        match service
            .serve_request(
                caller,
                Request::Read {
                    op,
                    consistency,
                    forwarded: false,
                },
            )
            .await
        {
            Response::Read(result) => Ok(result),
            other => Err(unexpected(other)),
        }
    }

    /// Applies `op` in the session of `caller`'s identity, opening it first
    /// if need be. A write sent once and refused because its session was
    /// forgotten (evicted, or its results pushed out by the identity's other
    /// writes) was not applied: it is sent again in a fresh session, so the
    /// client never hears "session expired" for a write that did nothing.
    async fn write(
        &self,
        service: &KvService,
        caller: &Caller,
        op: WriteOp,
        prev_kv: bool,
    ) -> Result<WriteResult, Status> {
        match self
            .write_in_session(service, caller, op.clone(), prev_kv)
            .await
        {
            Err(Expired { sent_once: true }) => self
                .write_in_session(service, caller, op, prev_kv)
                .await
                .unwrap_or_else(|_| Err(status(KvError::SessionExpired))),
            Err(Expired { sent_once: false }) => Err(status(KvError::SessionExpired)),
            Ok(answer) => answer,
        }
    }

    /// One try of [`write`](Self::write): `Err` when the session was
    /// forgotten (the next write opens a new one), saying whether the write
    /// was sent only once (then it was certainly not applied).
    async fn write_in_session(
        &self,
        service: &KvService,
        caller: &Caller,
        op: WriteOp,
        prev_kv: bool,
    ) -> Result<Result<WriteResult, Status>, Expired> {
        let owner = crate::protocol::Principal::of(caller).name;
        let slot = self
            .sessions
            .by_owner
            .lock()
            .await
            .entry(owner)
            .or_default()
            .clone();
        let (session, _outstanding) = {
            let mut session = slot.session.lock().await;
            let client_id = match session.client_id {
                Some(id) => id,
                None => {
                    let id = match service
                        .serve_request(caller, Request::OpenSession { forwarded: false })
                        .await
                    {
                        Response::SessionOpened { client_id } => client_id,
                        other => return Ok(Err(unexpected(other))),
                    };
                    session.client_id = Some(id);
                    session.next = 1;
                    id
                }
            };
            let sequence = session.next;
            session.next += 1;
            let first_outstanding = {
                let mut outstanding = slot.outstanding();
                outstanding.insert(sequence);
                outstanding.first().copied().unwrap_or(sequence)
            };
            (
                Session {
                    client_id,
                    sequence,
                    first_outstanding,
                },
                Outstanding {
                    slot: &slot,
                    sequence,
                },
            )
        };
        // While there is no leader to take it (an election, a transfer, a
        // leader that stepped down with it pending), the write is sent again
        // in the same session and sequence, so it applies once however many
        // times it is sent; the etcd client gets an answer rather than an
        // error it could not tell from a lost write.
        let deadline = std::time::Instant::now() + service.timeout();
        let mut pause = std::time::Duration::from_millis(20);
        let mut sent = 0;
        let answer = loop {
            sent += 1;
            let answer = service
                .serve_request(
                    caller,
                    Request::Write {
                        session,
                        op: op.clone(),
                        prev_kv,
                        forwarded: false,
                    },
                )
                .await;
            let again = matches!(
                answer,
                Response::Error(
                    KvError::NoLeader
                        | KvError::NotLeader { .. }
                        | KvError::TransferInProgress
                        | KvError::LeadershipLost
                        | KvError::Unavailable(_)
                )
            );
            if !again || std::time::Instant::now() + pause > deadline {
                break answer;
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(std::time::Duration::from_millis(200));
        };
        match answer {
            Response::Write(result) => Ok(Ok(result)),
            Response::Error(KvError::SessionExpired) => {
                // The next write opens a new session.
                let mut owned = slot.session.lock().await;
                if owned.client_id == Some(session.client_id) {
                    *owned = OwnedSession::default();
                }
                Err(Expired {
                    sent_once: sent == 1,
                })
            }
            other => Ok(Err(unexpected(other))),
        }
    }
}

#[tonic::async_trait]
impl Kv for EtcdApi {
    async fn range(
        &self,
        request: GrpcRequest<pb::RangeRequest>,
    ) -> Result<GrpcResponse<pb::RangeResponse>, Status> {
        let (caller, identity, service) = self.begin_metered(&request)?;
        let r = request.into_inner();
        if r.key.is_empty() {
            return Err(Status::invalid_argument("etcdserver: key is not provided"));
        }
        // As etcd: a revision or limit of 0 or less means the latest and
        // no limit.
        let revision = u64::try_from(r.revision).unwrap_or(0);
        // A serializable read at a revision this node has not applied yet
        // (one a client was just given by another node: etcd's STM reads
        // so) first catches up with the leader's commit, as a
        // linearizable read does; a revision still ahead then is etcd's
        // future-revision error.
        let consistency = if r.serializable && revision <= service.revision() {
            Consistency::Stale
        } else {
            Consistency::Linearizable
        };
        let key = Bytes::from(r.key.clone());
        let gathered = match etcd_range_end(&r.range_end) {
            None if revision == 0 => {
                let result = self
                    .read(&service, &caller, ReadOp::Get { key }, consistency)
                    .await?;
                let (kvs, count, more) = RangeAsked::of(&r).answer(result.kvs, false);
                Gathered {
                    kvs,
                    count,
                    more,
                    at: result.revision,
                }
            }
            end => {
                // One key at a revision is a range of one key.
                let end = end.unwrap_or_else(|| Some(key_after(&key)));
                let asked = RangeAsked::of(&r);
                self.gather(&service, &caller, key, end, &asked, consistency, revision)
                    .await?
            }
        };
        // etcd's header carries the store's revision, also for a read at a
        // past revision.
        let header = self.header(&service, gathered.at.max(service.revision()));
        // The answer is counted against the caller's budget before it is
        // built: a client that does not read its answers waits here.
        let answer_bytes = gathered
            .kvs
            .iter()
            .map(|kv| kv.key.len() + if r.keys_only { 0 } else { kv.value.len() } + 48)
            .sum();
        let reservation = identity.reserve_answer(answer_bytes).await;
        Ok(reservation.attach(GrpcResponse::new(pb::RangeResponse {
            header: Some(header),
            kvs: gathered
                .kvs
                .into_iter()
                .map(|kv| to_pb(kv, r.keys_only))
                .collect(),
            more: gathered.more,
            count: gathered.count,
        })))
    }

    async fn put(
        &self,
        request: GrpcRequest<pb::PutRequest>,
    ) -> Result<GrpcResponse<pb::PutResponse>, Status> {
        let (caller, service) = self.begin(&request)?;
        let r = request.into_inner();
        if r.key.is_empty() {
            return Err(Status::invalid_argument(crate::protocol::EMPTY_KEY));
        }
        let op = if r.lease != 0 || r.ignore_value || r.ignore_lease {
            WriteOp::PutWith {
                key: Bytes::from(r.key),
                value: Bytes::from(r.value),
                lease: lease_id(r.lease)?,
                ignore_value: r.ignore_value,
                ignore_lease: r.ignore_lease,
            }
        } else {
            WriteOp::Put {
                key: Bytes::from(r.key),
                value: Bytes::from(r.value),
            }
        };
        let result = self.write(&service, &caller, op, r.prev_kv).await?;
        Ok(GrpcResponse::new(pb::PutResponse {
            header: Some(self.header(&service, result.revision)),
            prev_kv: result.previous.map(|kv| to_pb(kv, false)),
        }))
    }

    async fn delete_range(
        &self,
        request: GrpcRequest<pb::DeleteRangeRequest>,
    ) -> Result<GrpcResponse<pb::DeleteRangeResponse>, Status> {
        let (caller, service) = self.begin(&request)?;
        let r = request.into_inner();
        if r.key.is_empty() {
            return Err(Status::invalid_argument(crate::protocol::EMPTY_KEY));
        }
        if r.range_end.is_empty() {
            let op = WriteOp::Delete {
                key: Bytes::from(r.key),
            };
            let result = self.write(&service, &caller, op, r.prev_kv).await?;
            return Ok(GrpcResponse::new(pb::DeleteRangeResponse {
                header: Some(self.header(&service, result.revision)),
                deleted: i64::from(result.succeeded),
                prev_kvs: result
                    .previous
                    .map(|kv| to_pb(kv, false))
                    .into_iter()
                    .collect(),
            }));
        }
        // A range: one transaction, so the keys go together.
        let txn = Txn {
            success: vec![delete_op(r)],
            ..Txn::default()
        };
        let result = self
            .write(&service, &caller, WriteOp::Txn(txn), false)
            .await?;
        let header = self.header(&service, result.revision);
        match result.responses.into_iter().next() {
            Some(TxnOpResult::Delete { deleted, previous }) => {
                Ok(GrpcResponse::new(pb::DeleteRangeResponse {
                    header: Some(header),
                    deleted: deleted as i64,
                    prev_kvs: previous.into_iter().map(|kv| to_pb(kv, false)).collect(),
                }))
            }
            other => Err(Status::internal(format!(
                "unexpected transaction answer from the node: {other:?}"
            ))),
        }
    }

    async fn txn(
        &self,
        request: GrpcRequest<pb::TxnRequest>,
    ) -> Result<GrpcResponse<pb::TxnResponse>, Status> {
        let (caller, identity, service) = self.begin_metered(&request)?;
        let (txn, asked) = txn_of(request.into_inner())?;
        let result = self
            .write(&service, &caller, WriteOp::Txn(txn), false)
            .await?;
        let header = self.header(&service, result.revision);
        let mut answer_bytes = 0;
        for response in &result.responses {
            response.for_each_kv(&mut |kv| answer_bytes += kv.key.len() + kv.value.len() + 48);
        }
        let reservation = identity.reserve_answer(answer_bytes).await;
        // A transaction takes one revision, with its first change: as in
        // etcd, what its operations answer before that change carries the
        // revision before the transaction; inner headers carry only it.
        let changes = result.responses.iter().any(TxnOpResult::changes);
        let mut answer = TxnAnswer {
            before: result.revision - u64::from(changes),
            after: result.revision,
            changed: false,
        };
        let responses = answer.responses(result.succeeded, result.responses, asked)?;
        Ok(reservation.attach(GrpcResponse::new(pb::TxnResponse {
            header: Some(header),
            succeeded: result.succeeded,
            responses,
        })))
    }

    /// etcd's compaction, replicated: revisions before the one named can no
    /// longer be read or watched from, and the history they need is let go.
    async fn compact(
        &self,
        request: GrpcRequest<pb::CompactionRequest>,
    ) -> Result<GrpcResponse<pb::CompactionResponse>, Status> {
        let (caller, service) = self.begin(&request)?;
        admin_only(&caller, "compact")?;
        let r = request.into_inner();
        // etcd's store starts compacted at -1: a negative revision is
        // compacted already; 0 compacts (once).
        let revision = u64::try_from(r.revision).map_err(|_| {
            Status::out_of_range("etcdserver: mvcc: required revision has been compacted")
        })?;
        let result = self
            .write(&service, &caller, WriteOp::Compact { revision }, false)
            .await?;
        Ok(GrpcResponse::new(pb::CompactionResponse {
            header: Some(self.header(&service, result.revision)),
        }))
    }
}

impl EtcdApi {
    /// Reads a range as etcd answers it: every key of the range is counted;
    /// the ones kept pass the revision filters; with a sort order (or a
    /// filter) the whole range is sorted before the limit applies, keeping
    /// only the best `limit` while paging through it; without one, the
    /// first `limit` in key order. What is kept is bounded by
    /// [`MAX_RANGE_BYTES`]: an unsorted range beyond it says `more`, a
    /// sorted one is refused (it cannot be sorted in part).
    #[allow(clippy::too_many_arguments)]
    async fn gather(
        &self,
        service: &KvService,
        caller: &Caller,
        start: Bytes,
        end: Option<Bytes>,
        asked: &RangeAsked,
        consistency: Consistency,
        revision: u64,
    ) -> Result<Gathered, Status> {
        let fetch_all = asked.order != Order::None || asked.filtered();
        // etcd's store returns one more than the limit, to know `more`.
        let keep = if asked.count_only {
            0
        } else if fetch_all || asked.limit == 0 {
            usize::MAX
        } else {
            asked.limit + 1
        };
        let order = asked.effective_order();
        let mut kept: Vec<KeyValue> = Vec::new();
        let mut kept_bytes = 0;
        let mut over = false;
        let mut count = 0i64;
        let mut matched = 0usize;
        let mut start = start;
        let mut at = revision;
        loop {
            let page = self
                .read(
                    service,
                    caller,
                    ReadOp::Scan {
                        start,
                        end: end.clone(),
                        limit: crate::protocol::MAX_SCAN_LIMIT,
                        revision: at,
                    },
                    consistency,
                )
                .await?;
            at = page.revision;
            let last = page.kvs.last().map(|kv| kv.key.clone());
            for kv in page.kvs {
                count += 1;
                if !asked.passes(&kv) {
                    continue;
                }
                matched += 1;
                if kept.len() >= keep {
                    continue;
                }
                let bytes = kv.key.len() + kv.value.len();
                if kept_bytes + bytes > MAX_RANGE_BYTES {
                    over = true;
                    continue;
                }
                kept_bytes += bytes;
                kept.push(kv);
                // Sorted with a limit: only the best `limit` can be answered.
                if fetch_all && asked.limit > 0 && kept.len() >= 2 * asked.limit.max(64) {
                    sort(&mut kept, order, asked.target);
                    kept.truncate(asked.limit);
                    kept_bytes = kept.iter().map(|kv| kv.key.len() + kv.value.len()).sum();
                }
            }
            match last {
                Some(last) if page.more => start = key_after(&last),
                _ => break,
            }
        }
        if over && fetch_all {
            return Err(Status::resource_exhausted(format!(
                "the range holds more than {} MiB of key-values to sort or filter: narrow it, or \
                 lower the limit",
                MAX_RANGE_BYTES >> 20
            )));
        }
        sort(&mut kept, order, asked.target);
        let more = if asked.count_only {
            false
        } else if asked.limit > 0 && kept.len() > asked.limit {
            kept.truncate(asked.limit);
            true
        } else if asked.limit > 0 && fetch_all {
            matched > asked.limit
        } else {
            over
        };
        Ok(Gathered {
            kvs: kept,
            count,
            more,
            at,
        })
    }
}

/// A range's answer before it is etcd's message.
struct Gathered {
    kvs: Vec<KeyValue>,
    /// Keys in the range (etcd's `count`: before filters and the limit).
    count: i64,
    more: bool,
    /// The revision read at.
    at: u64,
}

/// How a `Range` asks its keys to be ordered.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Order {
    None,
    Ascend,
    Descend,
}

/// What a `Range` asks beyond its keys.
struct RangeAsked {
    keys_only: bool,
    limit: usize,
    order: Order,
    target: pb::range_request::SortTarget,
    count_only: bool,
    min_mod: i64,
    max_mod: i64,
    min_create: i64,
    max_create: i64,
}

impl Default for RangeAsked {
    /// All of the range, in key order.
    fn default() -> Self {
        Self::of(&pb::RangeRequest::default())
    }
}

impl RangeAsked {
    fn of(r: &pb::RangeRequest) -> Self {
        use pb::range_request::{SortOrder, SortTarget};
        Self {
            keys_only: r.keys_only,
            limit: usize::try_from(r.limit).unwrap_or(0),
            order: match SortOrder::try_from(r.sort_order).unwrap_or(SortOrder::None) {
                SortOrder::None => Order::None,
                SortOrder::Ascend => Order::Ascend,
                SortOrder::Descend => Order::Descend,
            },
            target: SortTarget::try_from(r.sort_target).unwrap_or(SortTarget::Key),
            count_only: r.count_only,
            min_mod: r.min_mod_revision,
            max_mod: r.max_mod_revision,
            min_create: r.min_create_revision,
            max_create: r.max_create_revision,
        }
    }

    /// etcd's answer from every key-value of a range in key order (`more`:
    /// the store read only part of it): the key-values, the count, `more`.
    fn answer(&self, kvs: Vec<KeyValue>, more: bool) -> (Vec<KeyValue>, i64, bool) {
        let count = kvs.len() as i64;
        if self.count_only {
            return (Vec::new(), count, false);
        }
        let mut kvs: Vec<KeyValue> = kvs.into_iter().filter(|kv| self.passes(kv)).collect();
        if self.order == Order::None && !self.filtered() && self.limit > 0 {
            // etcd's store stops one past the limit before it sorts.
            kvs.truncate(self.limit + 1);
        }
        sort(&mut kvs, self.effective_order(), self.target);
        let mut more = more;
        if self.limit > 0 && kvs.len() > self.limit {
            kvs.truncate(self.limit);
            more = true;
        }
        (kvs, count, more)
    }

    fn filtered(&self) -> bool {
        self.min_mod != 0 || self.max_mod != 0 || self.min_create != 0 || self.max_create != 0
    }

    /// etcd's filters: a bound of 0 is no bound.
    fn passes(&self, kv: &KeyValue) -> bool {
        let (m, c) = (kv.mod_revision as i64, kv.create_revision as i64);
        !((self.max_mod != 0 && m > self.max_mod)
            || (self.min_mod != 0 && m < self.min_mod)
            || (self.max_create != 0 && c > self.max_create)
            || (self.min_create != 0 && c < self.min_create))
    }

    /// etcd sorts ascending by a target other than the key even when no
    /// order is asked (keys come in key order anyway).
    fn effective_order(&self) -> Order {
        match self.order {
            Order::None if self.target != pb::range_request::SortTarget::Key => Order::Ascend,
            order => order,
        }
    }
}

/// Orders `kvs` (in key order) by `target`; ties keep key order, as etcd's
/// sort does for the ranges clients sort.
fn sort(kvs: &mut [KeyValue], order: Order, target: pb::range_request::SortTarget) {
    use pb::range_request::SortTarget;
    let compare = |a: &KeyValue, b: &KeyValue| match target {
        SortTarget::Key => a.key.cmp(&b.key),
        SortTarget::Version => a.version.cmp(&b.version),
        SortTarget::Create => a.create_revision.cmp(&b.create_revision),
        SortTarget::Mod => a.mod_revision.cmp(&b.mod_revision),
        SortTarget::Value => a.value.cmp(&b.value),
    };
    match order {
        Order::None => {}
        Order::Ascend => kvs.sort_by(compare),
        Order::Descend => kvs.sort_by(|a, b| compare(b, a)),
    }
}

impl EtcdApi {
    /// Runs a membership change or leader transfer; the members after it.
    async fn admin(
        &self,
        service: &KvService,
        caller: &Caller,
        op: AdminOp,
    ) -> Result<Vec<pb::Member>, Status> {
        match service
            .serve_request(
                caller,
                Request::Admin {
                    op,
                    forwarded: false,
                },
            )
            .await
        {
            Response::Admin(AdminResult::Members(members)) => Ok(members
                .into_iter()
                .map(|m| pb::Member {
                    id: m.id,
                    name: format!("node-{}", m.id),
                    peer_ur_ls: vec![format!("https://{}", m.address)],
                    client_ur_ls: Vec::new(),
                    is_learner: !m.voter,
                })
                .collect()),
            Response::Admin(AdminResult::LeaderTransferred(_)) => Ok(Vec::new()),
            other => Err(unexpected(other)),
        }
    }

    /// The node's status, read as `caller` (which checks its role).
    async fn node_status(
        &self,
        service: &KvService,
        caller: &Caller,
    ) -> Result<Box<crate::protocol::NodeStatus>, Status> {
        match service.serve_request(caller, Request::Status).await {
            Response::Status(status) => Ok(status),
            other => Err(unexpected(other)),
        }
    }
}

/// The `host:port` of an etcd peer URL (`https://10.0.0.4:7001`).
fn peer_address(url: &str) -> Result<String, Status> {
    let address = url
        .split_once("://")
        .map_or(url, |(_, rest)| rest)
        .trim_end_matches('/');
    if address.is_empty() || !address.contains(':') {
        return Err(Status::invalid_argument(format!(
            "peer URL {url:?} has no host:port; give the address the new node listens on, \
             e.g. https://10.0.0.4:7001"
        )));
    }
    Ok(address.to_string())
}

#[tonic::async_trait]
impl Cluster for EtcdApi {
    /// Adds a node as a learner (as `raft-cli add-node --learner`); its id
    /// is the next after every id the cluster has used. Start the node with
    /// that id and `join = true`, then promote it.
    async fn member_add(
        &self,
        request: GrpcRequest<pb::MemberAddRequest>,
    ) -> Result<GrpcResponse<pb::MemberAddResponse>, Status> {
        let (caller, service) = self.begin(&request)?;
        let r = request.into_inner();
        let [url] = r.peer_ur_ls.as_slice() else {
            return Err(Status::invalid_argument(
                "give exactly one peer URL: the address the new node listens on",
            ));
        };
        let address = peer_address(url)?;
        let status = self.node_status(&service, &caller).await?;
        let membership = &status.raft.membership;
        let id = membership
            .voters()
            .iter()
            .chain(membership.learners())
            .chain(membership.removed())
            .max()
            .map_or(1, |max| max + 1);
        let members = self
            .admin(&service, &caller, AdminOp::AddLearner { id, address })
            .await?;
        let member = members.iter().find(|m| m.id == id).cloned();
        Ok(GrpcResponse::new(pb::MemberAddResponse {
            header: Some(self.header(&service, status.revision)),
            member,
            members,
        }))
    }

    async fn member_remove(
        &self,
        request: GrpcRequest<pb::MemberRemoveRequest>,
    ) -> Result<GrpcResponse<pb::MemberRemoveResponse>, Status> {
        let (caller, service) = self.begin(&request)?;
        let id = request.into_inner().id;
        let members = self
            .admin(&service, &caller, AdminOp::Remove { id })
            .await?;
        let revision = service.revision();
        Ok(GrpcResponse::new(pb::MemberRemoveResponse {
            header: Some(self.header(&service, revision)),
            members,
        }))
    }

    async fn member_promote(
        &self,
        request: GrpcRequest<pb::MemberPromoteRequest>,
    ) -> Result<GrpcResponse<pb::MemberPromoteResponse>, Status> {
        let (caller, service) = self.begin(&request)?;
        let id = request.into_inner().id;
        let members = self
            .admin(&service, &caller, AdminOp::Promote { id })
            .await?;
        let revision = service.revision();
        Ok(GrpcResponse::new(pb::MemberPromoteResponse {
            header: Some(self.header(&service, revision)),
            members,
        }))
    }

    async fn member_list(
        &self,
        request: GrpcRequest<pb::MemberListRequest>,
    ) -> Result<GrpcResponse<pb::MemberListResponse>, Status> {
        let (caller, service) = self.begin(&request)?;
        // A status read checks the caller's role like any other.
        let revision = self.node_status(&service, &caller).await?.revision;
        let view = service.view();
        let urls = service.member_urls().await.map_err(status)?;
        let members = view
            .addresses
            .iter()
            .map(|(id, address)| pb::Member {
                id: *id,
                name: format!("node-{id}"),
                peer_ur_ls: vec![format!("https://{address}")],
                // As etcd: empty until the member has published them.
                client_ur_ls: urls.get(id).cloned().unwrap_or_default(),
                is_learner: !view.voters.contains(id),
            })
            .collect();
        Ok(GrpcResponse::new(pb::MemberListResponse {
            header: Some(self.header(&service, revision)),
            members,
        }))
    }
}

#[tonic::async_trait]
impl Maintenance for EtcdApi {
    async fn status(
        &self,
        request: GrpcRequest<pb::StatusRequest>,
    ) -> Result<GrpcResponse<pb::StatusResponse>, Status> {
        let (caller, service) = self.begin(&request)?;
        let status = self.node_status(&service, &caller).await?;
        Ok(GrpcResponse::new(pb::StatusResponse {
            header: Some(self.header(&service, status.revision)),
            version: format!("raft-kv {}", env!("CARGO_PKG_VERSION")),
            db_size: status.data_bytes.unwrap_or(0) as i64,
            leader: status.raft.leader.unwrap_or(0),
            raft_index: status.raft.commit,
            raft_term: status.raft.term,
            raft_applied_index: status.raft.applied,
            errors: Vec::new(),
            db_size_in_use: status.data_bytes.unwrap_or(0) as i64,
            is_learner: !status.raft.is_voter,
        }))
    }

    /// No alarms are raised (a full disk stops writes with an error
    /// instead); asking for them, or clearing them, answers none.
    async fn alarm(
        &self,
        request: GrpcRequest<pb::AlarmRequest>,
    ) -> Result<GrpcResponse<pb::AlarmResponse>, Status> {
        let (caller, service) = self.begin(&request)?;
        if request.get_ref().action != pb::alarm_request::AlarmAction::Get as i32 {
            admin_only(&caller, "activate or deactivate alarms")?;
        }
        let status = self.node_status(&service, &caller).await?;
        Ok(GrpcResponse::new(pb::AlarmResponse {
            header: Some(self.header(&service, status.revision)),
            alarms: Vec::new(),
        }))
    }

    /// RocksDB compacts on its own: nothing to do, success.
    async fn defragment(
        &self,
        request: GrpcRequest<pb::DefragmentRequest>,
    ) -> Result<GrpcResponse<pb::DefragmentResponse>, Status> {
        let (caller, service) = self.begin(&request)?;
        admin_only(&caller, "defragment")?;
        let status = self.node_status(&service, &caller).await?;
        Ok(GrpcResponse::new(pb::DefragmentResponse {
            header: Some(self.header(&service, status.revision)),
        }))
    }

    async fn move_leader(
        &self,
        request: GrpcRequest<pb::MoveLeaderRequest>,
    ) -> Result<GrpcResponse<pb::MoveLeaderResponse>, Status> {
        let (caller, service) = self.begin(&request)?;
        let to = request.into_inner().target_id;
        self.admin(&service, &caller, AdminOp::TransferLeader { to: Some(to) })
            .await?;
        let revision = service.revision();
        Ok(GrpcResponse::new(pb::MoveLeaderResponse {
            header: Some(self.header(&service, revision)),
        }))
    }
}

/// Responses waiting for a watch stream's client, across its watches.
const WATCH_RESPONSES: usize = 16;

/// How often a watch created with `progress_notify` is told the revision it
/// has reached when it had no events meanwhile (etcd's default).
const PROGRESS_NOTIFY_INTERVAL: std::time::Duration = std::time::Duration::from_secs(600);

/// How long a progress request waits for the stream's watches to have sent
/// every event up to a revision before it gives up (etcd, too, answers a
/// progress request only when its watches are synced).
const PROGRESS_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// A running watch of a stream: its task, and where to ask it how far it
/// has sent (it answers between two of its messages).
struct RunningWatch {
    task: tokio::task::AbortHandle,
    progress: tokio::sync::mpsc::Sender<tokio::sync::oneshot::Sender<Option<u64>>>,
    /// Fires once the watch's "created" answer is on its way: the stream
    /// takes its next request only then, so answers come in etcd's order.
    created: tokio::sync::oneshot::Receiver<()>,
}

/// The revision through which every watch in `watches` has sent all its
/// events (`fallback` when there is none), once they all have, asking
/// again for up to [`PROGRESS_WAIT`]; `None` if they did not get there.
async fn synced_through(
    watches: Vec<tokio::sync::mpsc::Sender<tokio::sync::oneshot::Sender<Option<u64>>>>,
    fallback: u64,
) -> Option<u64> {
    let deadline = std::time::Instant::now() + PROGRESS_WAIT;
    loop {
        let mut through = Some(fallback);
        for watch in &watches {
            let (reply, answer) = tokio::sync::oneshot::channel();
            // A watch that ended sends nothing more: it does not hold the
            // others back.
            if watch.send(reply).await.is_err() {
                continue;
            }
            match answer.await {
                Ok(Some(revision)) => through = through.map(|t| t.min(revision)),
                Ok(None) => through = None,
                Err(_) => {}
            }
        }
        if through.is_some() || std::time::Instant::now() > deadline {
            return through;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// What a watch selects, from etcd's key and range end.
fn selector(key: Vec<u8>, end: &[u8]) -> Selector {
    let key = Bytes::from(key);
    match etcd_range_end(end) {
        None => Selector::Key(key),
        Some(None) => Selector::Range {
            start: key,
            end: None,
        },
        Some(Some(end)) if Some(&end) == crate::protocol::prefix_end(&key).as_ref() => {
            Selector::Prefix(key)
        }
        Some(end) => Selector::Range { start: key, end },
    }
}

/// An event as etcd sends it; with `prev_kv`, the key as it was before.
fn event_to_pb(event: WatchEvent, prev_kv: bool) -> mvccpb::Event {
    mvccpb::Event {
        r#type: match event.kind {
            EventKind::Put => mvccpb::event::EventType::Put,
            EventKind::Delete => mvccpb::event::EventType::Delete,
        } as i32,
        kv: Some(to_pb(event.kv, false)),
        prev_kv: event.prev.filter(|_| prev_kv).map(|kv| to_pb(kv, false)),
    }
}

/// A message on its way to a watch stream. Events wait as they are, their
/// values shared with the store; etcd's message (a copy of every value) is
/// built only when the stream is ready to send it, and the answer budget
/// of the client decides when that is ([`budget`]).
enum Outgoing {
    Ready(pb::WatchResponse),
    Events {
        header: pb::ResponseHeader,
        watch_id: i64,
        events: Vec<WatchEvent>,
        prev_kv: bool,
    },
}

impl Outgoing {
    fn into_pb(self) -> pb::WatchResponse {
        match self {
            Outgoing::Ready(response) => response,
            Outgoing::Events {
                header,
                watch_id,
                events,
                prev_kv,
            } => pb::WatchResponse {
                header: Some(header),
                watch_id,
                events: events
                    .into_iter()
                    .map(|event| event_to_pb(event, prev_kv))
                    .collect(),
                ..Default::default()
            },
        }
    }
}

type WatchResponses =
    std::pin::Pin<Box<dyn futures_core::Stream<Item = Result<pb::WatchResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Watch for EtcdApi {
    type WatchStream = WatchResponses;

    async fn watch(
        &self,
        request: GrpcRequest<tonic::Streaming<pb::WatchRequest>>,
    ) -> Result<GrpcResponse<Self::WatchStream>, Status> {
        let (caller, service) = self.begin(&request)?;
        let mut requests = request.into_inner();
        let (tx, rx) = tokio::sync::mpsc::channel(WATCH_RESPONSES);
        let api = self.clone();
        tokio::spawn(async move {
            let mut watches: HashMap<i64, RunningWatch> = HashMap::new();
            let mut next_id = 0;
            loop {
                let request = tokio::select! {
                    request = requests.message() => request,
                    _ = tx.closed() => break,
                };
                let request = match request {
                    Ok(Some(request)) => request,
                    Ok(None) => break,
                    Err(status) => {
                        // A request that does not decode ends the stream
                        // with its error (etcd's gRPC does the same).
                        let _ = tx.send(Err(status)).await;
                        break;
                    }
                };
                use pb::watch_request::RequestUnion;
                match request.request_union {
                    Some(RequestUnion::CreateRequest(create)) => {
                        // As etcd: an id asked for that is in use, or a
                        // range that selects nothing, is refused as watch
                        // -1; ids chosen here are never given twice.
                        // In etcd's order: the range, then the id.
                        let refused = if !create.range_end.is_empty()
                            && create.range_end != [0]
                            && create.key >= create.range_end
                        {
                            Some("mvcc: watcher range is empty")
                        } else if create.watch_id != 0 && watches.contains_key(&create.watch_id) {
                            Some("mvcc: duplicate watch ID provided on the WatchStream")
                        } else {
                            None
                        };
                        if let Some(reason) = refused {
                            let response = pb::WatchResponse {
                                header: Some(api.header(&service, service.revision())),
                                watch_id: -1,
                                created: true,
                                canceled: true,
                                cancel_reason: reason.into(),
                                ..Default::default()
                            };
                            if tx.send(Ok(Outgoing::Ready(response))).await.is_err() {
                                break;
                            }
                            continue;
                        }
                        let id = if create.watch_id != 0 {
                            create.watch_id
                        } else {
                            while watches.contains_key(&next_id) {
                                next_id += 1;
                            }
                            next_id += 1;
                            next_id - 1
                        };
                        let watch = api.start_watch(&service, &caller, id, create, tx.clone());
                        if let Some(mut watch) = watch {
                            let _ = (&mut watch.created).await;
                            watches.insert(id, watch);
                        }
                    }
                    Some(RequestUnion::CancelRequest(cancel)) => {
                        // A cancel of a watch the stream does not have is
                        // ignored, as etcd does.
                        let Some(watch) = watches.remove(&cancel.watch_id) else {
                            continue;
                        };
                        watch.task.abort();
                        let response = pb::WatchResponse {
                            header: Some(api.header(&service, service.revision())),
                            watch_id: cancel.watch_id,
                            canceled: true,
                            ..Default::default()
                        };
                        if tx.send(Ok(Outgoing::Ready(response))).await.is_err() {
                            break;
                        }
                    }
                    Some(RequestUnion::ProgressRequest(_)) => {
                        // Answered (watch id -1, as etcd does) once every
                        // watch of the stream has sent all its events up to
                        // the revision it names; meanwhile the stream goes
                        // on.
                        let asks = watches.values().map(|w| w.progress.clone()).collect();
                        let (tx, api, service) = (tx.clone(), api.clone(), service.clone());
                        tokio::spawn(async move {
                            if let Some(revision) = synced_through(asks, service.revision()).await {
                                let response = pb::WatchResponse {
                                    header: Some(api.header(&service, revision)),
                                    watch_id: -1,
                                    ..Default::default()
                                };
                                let _ = tx.send(Ok(Outgoing::Ready(response))).await;
                            }
                        });
                    }
                    None => {}
                }
            }
            for watch in watches.values() {
                watch.task.abort();
            }
        });
        let responses = {
            use tokio_stream::StreamExt;
            tokio_stream::wrappers::ReceiverStream::new(rx)
                .map(|message| message.map(Outgoing::into_pb))
        };
        Ok(GrpcResponse::new(Box::pin(responses)))
    }
}

impl EtcdApi {
    /// Starts watch `id` as asked, its messages going to `tx`; `None` if it
    /// was refused (the refusal is sent as a canceled watch).
    fn start_watch(
        &self,
        service: &Arc<KvService>,
        caller: &Caller,
        id: i64,
        create: pb::WatchCreateRequest,
        tx: tokio::sync::mpsc::Sender<Result<Outgoing, Status>>,
    ) -> Option<RunningWatch> {
        use pb::watch_create_request::FilterType;
        let cancel = |reason: String, compact_revision: i64| pb::WatchResponse {
            header: Some(self.header(service, service.revision())),
            watch_id: id,
            created: true,
            canceled: true,
            compact_revision,
            cancel_reason: reason,
            ..Default::default()
        };
        let refuse = |response: pb::WatchResponse| {
            let tx = tx.clone();
            tokio::spawn(async move {
                let _ = tx.send(Ok(Outgoing::Ready(response))).await;
            });
            None
        };
        let Ok(start) = u64::try_from(create.start_revision) else {
            return refuse(cancel("a start revision is never negative".into(), 0));
        };
        let no_put = create.filters.contains(&(FilterType::Noput as i32));
        let no_delete = create.filters.contains(&(FilterType::Nodelete as i32));
        let mut watcher =
            match service.subscribe(caller, selector(create.key, &create.range_end), start) {
                Ok(watcher) => watcher,
                // As etcd: the watch is created, then canceled with the
                // compaction's revision (and no reason); its id stays taken
                // until the client cancels it.
                Err(KvError::Compacted { oldest, .. }) => {
                    let header = Some(self.header(service, service.revision()));
                    let created = pb::WatchResponse {
                        header,
                        watch_id: id,
                        created: true,
                        ..Default::default()
                    };
                    let canceled = pb::WatchResponse {
                        header,
                        watch_id: id,
                        canceled: true,
                        compact_revision: oldest as i64,
                        ..Default::default()
                    };
                    let (sent, created_rx) = tokio::sync::oneshot::channel();
                    let tx = tx.clone();
                    let task = tokio::spawn(async move {
                        if tx.send(Ok(Outgoing::Ready(created))).await.is_err() {
                            return;
                        }
                        let _ = sent.send(());
                        let _ = tx.send(Ok(Outgoing::Ready(canceled))).await;
                    });
                    // Ended: it holds no progress request back.
                    let (progress, _) = tokio::sync::mpsc::channel(1);
                    return Some(RunningWatch {
                        task: task.abort_handle(),
                        progress,
                        created: created_rx,
                    });
                }
                Err(e) => return refuse(cancel(e.to_string(), 0)),
            };
        let header = {
            let (api, service) = (self.clone(), service.clone());
            move |revision: u64| api.header(&service, revision)
        };
        let (progress, mut asked) =
            tokio::sync::mpsc::channel::<tokio::sync::oneshot::Sender<Option<u64>>>(1);
        let notify_progress = create.progress_notify;
        let (created, created_rx) = tokio::sync::oneshot::channel();
        let mut created = Some(created);
        let task = tokio::spawn(async move {
            let mut notify = tokio::time::interval_at(
                tokio::time::Instant::now() + PROGRESS_NOTIFY_INTERVAL,
                PROGRESS_NOTIFY_INTERVAL,
            );
            let mut quiet = true;
            loop {
                let message = tokio::select! {
                    message = watcher.next() => message,
                    Some(reply) = asked.recv() => {
                        // Between two messages: everything taken is sent.
                        let _ = reply.send(watcher.synced_through());
                        continue;
                    }
                    _ = notify.tick(), if notify_progress => {
                        let idle = std::mem::replace(&mut quiet, true);
                        if let (true, Some(revision)) = (idle, watcher.synced_through()) {
                            let response = pb::WatchResponse {
                                header: Some(header(revision)),
                                watch_id: id,
                                ..Default::default()
                            };
                            if tx.send(Ok(Outgoing::Ready(response))).await.is_err() {
                                return;
                            }
                        }
                        continue;
                    }
                };
                let Some(message) = message else { break };
                quiet = false;
                let response = match message {
                    WatchMessage::Started { revision } => {
                        let response = pb::WatchResponse {
                            header: Some(header(revision)),
                            watch_id: id,
                            created: true,
                            ..Default::default()
                        };
                        if tx.send(Ok(Outgoing::Ready(response))).await.is_err() {
                            return;
                        }
                        if let Some(created) = created.take() {
                            let _ = created.send(());
                        }
                        continue;
                    }
                    WatchMessage::Events(mut events) => {
                        let revision = events.last().map_or(0, |e| e.revision);
                        events.retain(|e| match e.kind {
                            EventKind::Put => !no_put,
                            EventKind::Delete => !no_delete,
                        });
                        if events.is_empty() {
                            continue;
                        }
                        // Sent as they are (values shared with the store);
                        // etcd's message is built only when the stream
                        // takes it.
                        let events = Outgoing::Events {
                            header: header(revision),
                            watch_id: id,
                            events,
                            prev_kv: create.prev_kv,
                        };
                        if tx.send(Ok(events)).await.is_err() {
                            return;
                        }
                        continue;
                    }
                    // etcd's cancel of a watch whose history was compacted
                    // away: the compaction's revision, no reason.
                    WatchMessage::Compacted { revision } => pb::WatchResponse {
                        header: Some(header(revision)),
                        watch_id: id,
                        canceled: true,
                        compact_revision: revision as i64,
                        ..Default::default()
                    },
                    WatchMessage::Error(e) => pb::WatchResponse {
                        header: Some(header(0)),
                        watch_id: id,
                        canceled: true,
                        cancel_reason: e.to_string(),
                        ..Default::default()
                    },
                };
                if tx.send(Ok(Outgoing::Ready(response))).await.is_err() {
                    return;
                }
            }
        });
        Some(RunningWatch {
            task: task.abort_handle(),
            progress,
            created: created_rx,
        })
    }
}

/// Refuses a call that only administrators may make (as etcd refuses it
/// to users without the root role).
fn admin_only(caller: &Caller, what: &str) -> Result<(), Status> {
    let role = crate::protocol::Principal::of(caller).role;
    if role < raft_transport_quic::Role::Admin {
        return Err(Status::permission_denied(format!(
            "only an administrator may {what}; this certificate's role is {}: use an admin \
             certificate (raft-cli certs client --role admin)",
            role.as_str()
        )));
    }
    Ok(())
}

/// A transaction's put, from etcd's.
fn put_op(put: pb::PutRequest) -> Result<TxnOp, Status> {
    Ok(TxnOp::Put {
        key: Bytes::from(put.key),
        value: Bytes::from(put.value),
        prev_kv: put.prev_kv,
        lease: lease_id(put.lease)?,
        ignore_value: put.ignore_value,
        ignore_lease: put.ignore_lease,
    })
}

/// A lease id from etcd's `int64` (never negative).
fn lease_id(id: i64) -> Result<u64, Status> {
    u64::try_from(id).map_err(|_| Status::invalid_argument("lease ids are never negative"))
}

fn delete_op(r: pb::DeleteRangeRequest) -> TxnOp {
    TxnOp::Delete {
        keys: KeyRange {
            key: Bytes::from(r.key),
            range_end: Bytes::from(r.range_end),
        },
        prev_kv: r.prev_kv,
    }
}

/// What an etcd transaction's operation asks beyond what the store
/// answers: how a read is cut, sorted and counted (applied here to the
/// whole range the store reads), and the same for nested transactions.
enum Asked {
    Write,
    Range(RangeAsked),
    Txn {
        success: Vec<Asked>,
        failure: Vec<Asked>,
    },
}

/// A transaction from etcd's, and what its operations ask.
fn txn_of(r: pb::TxnRequest) -> Result<(Txn, Asked), Status> {
    let branch = |ops: Vec<pb::RequestOp>| -> Result<(Vec<TxnOp>, Vec<Asked>), Status> {
        Ok(ops
            .into_iter()
            .map(op_of)
            .collect::<Result<Vec<_>, _>>()?
            .into_iter()
            .unzip())
    };
    let (success, success_asked) = branch(r.success)?;
    let (failure, failure_asked) = branch(r.failure)?;
    let txn = Txn {
        compares: r
            .compare
            .into_iter()
            .map(compare_of)
            .collect::<Result<_, _>>()?,
        success,
        failure,
    };
    Ok((
        txn,
        Asked::Txn {
            success: success_asked,
            failure: failure_asked,
        },
    ))
}

/// A transaction's operation, from etcd's; for a read, what it asks beyond
/// its keys (answered from what the store reads: the whole range, up to a
/// transaction's read budget).
fn op_of(op: pb::RequestOp) -> Result<(TxnOp, Asked), Status> {
    use pb::request_op::Request as Op;
    match op.request {
        Some(Op::RequestPut(put)) => Ok((put_op(put)?, Asked::Write)),
        Some(Op::RequestDeleteRange(delete)) => Ok((delete_op(delete), Asked::Write)),
        Some(Op::RequestRange(range)) => {
            let asked = RangeAsked::of(&range);
            Ok((
                TxnOp::Range {
                    keys: KeyRange {
                        key: Bytes::from(range.key),
                        range_end: Bytes::from(range.range_end),
                    },
                    // The whole range (up to the transaction's read budget):
                    // its count, sort, filters and limit are etcd's, applied
                    // here.
                    limit: 0,
                    revision: range.revision,
                },
                Asked::Range(asked),
            ))
        }
        Some(Op::RequestTxn(txn)) => {
            let (txn, asked) = txn_of(txn)?;
            Ok((TxnOp::Txn(crate::protocol::NestedTxn(Box::new(txn))), asked))
        }
        // etcd's answer to an operation that names nothing.
        None => Err(Status::invalid_argument(crate::protocol::KEY_NOT_FOUND)),
    }
}

/// Builds etcd's answers to a transaction's operations.
struct TxnAnswer {
    /// The revision before the transaction.
    before: u64,
    /// The revision after it.
    after: u64,
    /// Whether an operation answered so far changed the store.
    changed: bool,
}

impl TxnAnswer {
    /// etcd's inner header: the revision alone.
    fn header(&self) -> Option<pb::ResponseHeader> {
        Some(pb::ResponseHeader {
            revision: (if self.changed {
                self.after
            } else {
                self.before
            }) as i64,
            ..Default::default()
        })
    }

    /// The answers of the branch that ran (`succeeded`) of a transaction
    /// that asked `asked`.
    fn responses(
        &mut self,
        succeeded: bool,
        results: Vec<TxnOpResult>,
        asked: Asked,
    ) -> Result<Vec<pb::ResponseOp>, Status> {
        use pb::response_op::Response as Op;
        let Asked::Txn { success, failure } = asked else {
            return Err(Status::internal(
                "a transaction's answer for another operation",
            ));
        };
        let asked = if succeeded { success } else { failure };
        if asked.len() != results.len() {
            return Err(Status::internal(format!(
                "the node answered {} operations of a branch of {}",
                results.len(),
                asked.len()
            )));
        }
        results
            .into_iter()
            .zip(asked)
            .map(|(result, asked)| {
                // A nested transaction's operations count their own
                // changes, in order.
                if !matches!(result, TxnOpResult::Txn { .. }) {
                    self.changed |= result.changes();
                }
                let response = match (result, asked) {
                    (TxnOpResult::Put { previous }, _) => Op::ResponsePut(pb::PutResponse {
                        header: self.header(),
                        prev_kv: previous.map(|kv| to_pb(kv, false)),
                    }),
                    (TxnOpResult::Delete { deleted, previous }, _) => {
                        Op::ResponseDeleteRange(pb::DeleteRangeResponse {
                            header: self.header(),
                            deleted: deleted as i64,
                            prev_kvs: previous.into_iter().map(|kv| to_pb(kv, false)).collect(),
                        })
                    }
                    (TxnOpResult::Range { kvs, more }, Asked::Range(asked)) => {
                        let (kvs, count, more) = asked.answer(kvs, more);
                        Op::ResponseRange(pb::RangeResponse {
                            header: self.header(),
                            count,
                            kvs: kvs
                                .into_iter()
                                .map(|kv| to_pb(kv, asked.keys_only))
                                .collect(),
                            more,
                        })
                    }
                    (
                        TxnOpResult::Txn {
                            succeeded,
                            responses,
                        },
                        asked @ Asked::Txn { .. },
                    ) => Op::ResponseTxn(pb::TxnResponse {
                        // etcd leaves a nested transaction's header empty.
                        header: Some(pb::ResponseHeader::default()),
                        succeeded,
                        responses: self.responses(succeeded, responses, asked)?,
                    }),
                    (other, _) => {
                        return Err(Status::internal(format!(
                            "unexpected transaction answer from the node: {other:?}"
                        )));
                    }
                };
                Ok(pb::ResponseOp {
                    response: Some(response),
                })
            })
            .collect()
    }
}

/// A transaction's comparison, from etcd's.
fn compare_of(compare: pb::Compare) -> Result<Compare, Status> {
    use pb::compare::{CompareResult as R, TargetUnion};
    let number = |n: i64| {
        u64::try_from(n)
            .map_err(|_| Status::invalid_argument("revisions and versions are never negative"))
    };
    let target = match compare.target_union {
        Some(TargetUnion::Value(value)) => CompareTarget::Value(Bytes::from(value)),
        Some(TargetUnion::Version(v)) => CompareTarget::Version(number(v)?),
        Some(TargetUnion::CreateRevision(r)) => CompareTarget::CreateRevision(number(r)?),
        Some(TargetUnion::ModRevision(r)) => CompareTarget::ModRevision(number(r)?),
        Some(TargetUnion::Lease(l)) => CompareTarget::Lease(number(l)?),
        None => {
            return Err(Status::invalid_argument(
                "a comparison without a target value",
            ));
        }
    };
    let result = match R::try_from(compare.result) {
        Ok(R::Equal) => CompareResult::Equal,
        Ok(R::NotEqual) => CompareResult::NotEqual,
        Ok(R::Less) => CompareResult::Less,
        Ok(R::Greater) => CompareResult::Greater,
        Err(_) => return Err(Status::invalid_argument("an unknown comparison")),
    };
    Ok(Compare {
        keys: KeyRange {
            key: Bytes::from(compare.key),
            range_end: Bytes::from(compare.range_end),
        },
        target,
        result,
    })
}

impl EtcdApi {
    /// Asks the leader about leases for `caller`.
    async fn lease_question(
        &self,
        service: &KvService,
        caller: &Caller,
        op: LeaseOp,
    ) -> Result<LeaseAnswer, Status> {
        match service
            .serve_request(
                caller,
                Request::Lease {
                    op,
                    forwarded: false,
                },
            )
            .await
        {
            Response::Lease(answer) => Ok(answer),
            other => Err(unexpected(other)),
        }
    }
}

type KeepAliveResponses = std::pin::Pin<
    Box<dyn futures_core::Stream<Item = Result<pb::LeaseKeepAliveResponse, Status>> + Send>,
>;

#[tonic::async_trait]
impl Lease for EtcdApi {
    async fn lease_grant(
        &self,
        request: GrpcRequest<pb::LeaseGrantRequest>,
    ) -> Result<GrpcResponse<pb::LeaseGrantResponse>, Status> {
        let (caller, service) = self.begin(&request)?;
        let r = request.into_inner();
        if r.ttl > crate::protocol::MAX_LEASE_TTL as i64 {
            return Err(Status::out_of_range("etcdserver: too large lease TTL"));
        }
        let op = WriteOp::LeaseGrant {
            id: lease_id(r.id)?,
            // etcd raises a TTL below its minimum (zero included) to it.
            ttl: u64::try_from(r.ttl).unwrap_or(0),
        };
        let result = self.write(&service, &caller, op, false).await?;
        match result.responses.first() {
            Some(TxnOpResult::LeaseGranted { id, ttl }) => {
                Ok(GrpcResponse::new(pb::LeaseGrantResponse {
                    header: Some(self.header(&service, result.revision)),
                    id: *id as i64,
                    ttl: *ttl as i64,
                    error: String::new(),
                }))
            }
            other => Err(Status::internal(format!(
                "unexpected answer to a lease grant from the node: {other:?}"
            ))),
        }
    }

    async fn lease_revoke(
        &self,
        request: GrpcRequest<pb::LeaseRevokeRequest>,
    ) -> Result<GrpcResponse<pb::LeaseRevokeResponse>, Status> {
        let (caller, service) = self.begin(&request)?;
        let id = lease_id(request.into_inner().id)?;
        let result = self
            .write(&service, &caller, WriteOp::LeaseRevoke { id }, false)
            .await?;
        Ok(GrpcResponse::new(pb::LeaseRevokeResponse {
            header: Some(self.header(&service, result.revision)),
        }))
    }

    type LeaseKeepAliveStream = KeepAliveResponses;

    async fn lease_keep_alive(
        &self,
        request: GrpcRequest<tonic::Streaming<pb::LeaseKeepAliveRequest>>,
    ) -> Result<GrpcResponse<Self::LeaseKeepAliveStream>, Status> {
        let (caller, service) = self.begin(&request)?;
        let mut requests = request.into_inner();
        // One answer waits per request: a client that sends keep-alives and
        // never reads them is held back by HTTP/2 flow control.
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        let api = self.clone();
        tokio::spawn(async move {
            loop {
                let request = tokio::select! {
                    request = requests.message() => request,
                    _ = tx.closed() => break,
                };
                let Ok(Some(request)) = request else { break };
                let answer = match lease_id(request.id) {
                    Ok(id) => {
                        api.lease_question(&service, &caller, LeaseOp::KeepAlive { id })
                            .await
                    }
                    Err(e) => Err(e),
                };
                // A lease that is gone answers TTL 0, as etcd does; other
                // errors end the stream.
                let response = match answer {
                    Ok(LeaseAnswer::KeptAlive { id, ttl }) => Ok(pb::LeaseKeepAliveResponse {
                        header: Some(api.header(&service, service.revision())),
                        id: id as i64,
                        ttl: ttl as i64,
                    }),
                    Ok(other) => Err(Status::internal(format!(
                        "unexpected answer to a keep-alive from the node: {other:?}"
                    ))),
                    Err(e) => Err(e),
                };
                let failed = response.is_err();
                if tx.send(response).await.is_err() || failed {
                    break;
                }
            }
        });
        Ok(GrpcResponse::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn lease_time_to_live(
        &self,
        request: GrpcRequest<pb::LeaseTimeToLiveRequest>,
    ) -> Result<GrpcResponse<pb::LeaseTimeToLiveResponse>, Status> {
        let (caller, service) = self.begin(&request)?;
        let r = request.into_inner();
        let op = LeaseOp::TimeToLive {
            id: lease_id(r.id)?,
            keys: r.keys,
        };
        match self.lease_question(&service, &caller, op).await? {
            LeaseAnswer::TimeToLive {
                id,
                remaining,
                granted,
                keys,
            } => Ok(GrpcResponse::new(pb::LeaseTimeToLiveResponse {
                header: Some(self.header(&service, service.revision())),
                id: id as i64,
                ttl: remaining,
                granted_ttl: granted as i64,
                keys: keys.into_iter().map(|key| key.to_vec()).collect(),
            })),
            other => Err(Status::internal(format!(
                "unexpected answer to a lease question from the node: {other:?}"
            ))),
        }
    }

    async fn lease_leases(
        &self,
        request: GrpcRequest<pb::LeaseLeasesRequest>,
    ) -> Result<GrpcResponse<pb::LeaseLeasesResponse>, Status> {
        let (caller, service) = self.begin(&request)?;
        match self
            .lease_question(&service, &caller, LeaseOp::List)
            .await?
        {
            LeaseAnswer::List(ids) => Ok(GrpcResponse::new(pb::LeaseLeasesResponse {
                header: Some(self.header(&service, service.revision())),
                leases: ids
                    .into_iter()
                    .map(|id| pb::LeaseStatus { id: id as i64 })
                    .collect(),
            })),
            other => Err(Status::internal(format!(
                "unexpected answer to a lease question from the node: {other:?}"
            ))),
        }
    }
}

/// What etcd's user and role calls answer: access is by certificate.
const NO_AUTH: &str = "etcd users, passwords and roles are not used by raft-kv: access is decided by the \
                       client certificate's role (admin, readwrite, readonly; `raft-cli certs client --role`)";

/// Implements every call of an Auth-like service as `Unimplemented` with
/// [`NO_AUTH`].
macro_rules! refuse_auth {
    ($($call:ident($request:ident) -> $response:ident),* $(,)?) => {
        #[tonic::async_trait]
        impl Auth for EtcdApi {
            $(
                async fn $call(
                    &self,
                    _request: GrpcRequest<pb::$request>,
                ) -> Result<GrpcResponse<pb::$response>, Status> {
                    Err(Status::unimplemented(NO_AUTH))
                }
            )*
        }
    };
}

refuse_auth! {
    auth_enable(AuthEnableRequest) -> AuthEnableResponse,
    auth_disable(AuthDisableRequest) -> AuthDisableResponse,
    auth_status(AuthStatusRequest) -> AuthStatusResponse,
    authenticate(AuthenticateRequest) -> AuthenticateResponse,
    user_add(AuthUserAddRequest) -> AuthUserAddResponse,
    user_get(AuthUserGetRequest) -> AuthUserGetResponse,
    user_list(AuthUserListRequest) -> AuthUserListResponse,
    user_delete(AuthUserDeleteRequest) -> AuthUserDeleteResponse,
    user_change_password(AuthUserChangePasswordRequest) -> AuthUserChangePasswordResponse,
    user_grant_role(AuthUserGrantRoleRequest) -> AuthUserGrantRoleResponse,
    user_revoke_role(AuthUserRevokeRoleRequest) -> AuthUserRevokeRoleResponse,
    role_add(AuthRoleAddRequest) -> AuthRoleAddResponse,
    role_get(AuthRoleGetRequest) -> AuthRoleGetResponse,
    role_list(AuthRoleListRequest) -> AuthRoleListResponse,
    role_delete(AuthRoleDeleteRequest) -> AuthRoleDeleteResponse,
    role_grant_permission(AuthRoleGrantPermissionRequest) -> AuthRoleGrantPermissionResponse,
    role_revoke_permission(AuthRoleRevokePermissionRequest) -> AuthRoleRevokePermissionResponse,
}
