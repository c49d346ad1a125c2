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

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::Mutex;
use tonic::{Request as GrpcRequest, Response as GrpcResponse, Status};

use raft_transport_quic::{Caller, DenyList, Fingerprint};

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

/// The front door of one node.
#[derive(Clone)]
struct EtcdApi {
    service: Arc<dyn Fn() -> Option<Arc<KvService>> + Send + Sync>,
    cluster_id: u64,
    member_id: u64,
    cluster: String,
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
}

/// The etcd front door while it runs: dropping it stops it, and closes
/// every connection it has open (watch and keep-alive streams included), so
/// clients go to other nodes at once rather than wait on a node that no
/// longer serves.
pub(crate) struct EtcdServer {
    task: tokio::task::AbortHandle,
    close: tokio::sync::watch::Sender<bool>,
}

impl Drop for EtcdServer {
    fn drop(&mut self) {
        self.task.abort();
        self.close.send_replace(true);
    }
}

/// A client connection the node can close whatever its streams are doing:
/// once the front door closes, reads end and writes fail, and hyper drops
/// the connection (aborting the task that accepts connections does not stop
/// the ones already open).
struct Closable {
    io: tokio::net::TcpStream,
    closed: std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>,
    is_closed: bool,
}

impl Closable {
    fn new(io: tokio::net::TcpStream, mut close: tokio::sync::watch::Receiver<bool>) -> Self {
        Self {
            io,
            closed: Box::pin(async move {
                let _ = close.wait_for(|closed| *closed).await;
            }),
            is_closed: false,
        }
    }

    fn closed(&mut self, cx: &mut std::task::Context<'_>) -> bool {
        if !self.is_closed && self.closed.as_mut().poll(cx).is_ready() {
            self.is_closed = true;
        }
        self.is_closed
    }
}

impl tokio::io::AsyncRead for Closable {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        if self.closed(cx) {
            // End of stream.
            return std::task::Poll::Ready(Ok(()));
        }
        std::pin::Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for Closable {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        if self.closed(cx) {
            return std::task::Poll::Ready(Err(std::io::Error::new(
                std::io::ErrorKind::ConnectionAborted,
                "the node stopped serving the etcd API",
            )));
        }
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

impl tonic::transport::server::Connected for Closable {
    type ConnectInfo = tonic::transport::server::TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.io.connect_info()
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
    } = options;
    let tls = tonic::transport::ServerTlsConfig::new()
        .identity(tonic::transport::Identity::from_pem(cert, key))
        .client_ca_root(tonic::transport::Certificate::from_pem(ca))
        .client_auth_optional(false);
    let api = EtcdApi {
        service,
        cluster_id: cluster_hash(&cluster),
        member_id,
        cluster,
        sessions: Arc::new(Sessions::default()),
        deny,
    };
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .map_err(|e| format!("cannot listen on {address} for the etcd API: {e}"))?;
    let router = tonic::transport::Server::builder()
        .tls_config(tls)
        .map_err(|e| format!("cannot set up TLS for the etcd API: {e}"))?
        .add_service(KvServer::new(api.clone()))
        .add_service(ClusterServer::new(api.clone()))
        .add_service(WatchServer::new(api.clone()))
        .add_service(LeaseServer::new(api.clone()))
        .add_service(AuthServer::new(api.clone()))
        .add_service(MaintenanceServer::new(api));
    let (close, closed) = tokio::sync::watch::channel(false);
    let incoming = {
        use tokio_stream::StreamExt;
        tonic::transport::server::TcpIncoming::from(listener)
            .map(move |accepted| accepted.map(|io| Closable::new(io, closed.clone())))
    };
    let task = tokio::spawn(async move {
        if let Err(e) = router.serve_with_incoming(incoming).await {
            tracing::error!("the etcd API stopped: {e}");
        }
    });
    Ok(EtcdServer {
        task: task.abort_handle(),
        close,
    })
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
        KvError::InvalidRequest(_) => Status::invalid_argument(message),
        KvError::PermissionDenied { .. } | KvError::Forbidden(_) => {
            Status::permission_denied(message)
        }
        // etcd's own messages: client libraries match them exactly to
        // give their typed errors (Go's rpctypes.ErrCompacted...).
        KvError::Compacted { .. } => {
            Status::out_of_range("etcdserver: mvcc: required revision has been compacted")
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

/// Who sent a gRPC request: the holder of the client certificate it came
/// with (refused if the deny list names it).
fn caller_of<T>(
    request: &GrpcRequest<T>,
    cluster: &str,
    deny: Option<&DenyList>,
) -> Result<Caller, Status> {
    let certificates = request.peer_certs().ok_or_else(|| {
        Status::unauthenticated("a client certificate from the cluster's CA is required")
    })?;
    let first = certificates.first().ok_or_else(|| {
        Status::unauthenticated("a client certificate from the cluster's CA is required")
    })?;
    if deny.is_some_and(|list| list.contains(&Fingerprint::of_der(first.as_ref()))) {
        return Err(Status::permission_denied(
            "this certificate is revoked (on the node's deny list); use another one",
        ));
    }
    Caller::from_certificate(first, cluster).map_err(Status::permission_denied)
}

impl EtcdApi {
    fn service(&self) -> Result<Arc<KvService>, Status> {
        (self.service)().ok_or_else(|| Status::unavailable("the node is starting"))
    }

    /// Who sent `request`, and the node's request path: how every call
    /// begins.
    fn begin<T>(&self, request: &GrpcRequest<T>) -> Result<(Caller, Arc<KvService>), Status> {
        let caller = caller_of(request, &self.cluster, self.deny.as_ref())?;
        Ok((caller, self.service()?))
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
    /// if need be.
    async fn write(
        &self,
        service: &KvService,
        caller: &Caller,
        op: WriteOp,
        prev_kv: bool,
    ) -> Result<WriteResult, Status> {
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
                        other => return Err(unexpected(other)),
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
        let answer = loop {
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
            Response::Write(result) => Ok(result),
            Response::Error(KvError::SessionExpired) => {
                // The next write opens a new session.
                let mut owned = slot.session.lock().await;
                if owned.client_id == Some(session.client_id) {
                    *owned = OwnedSession::default();
                }
                Err(status(KvError::SessionExpired))
            }
            other => Err(unexpected(other)),
        }
    }
}

#[tonic::async_trait]
impl Kv for EtcdApi {
    async fn range(
        &self,
        request: GrpcRequest<pb::RangeRequest>,
    ) -> Result<GrpcResponse<pb::RangeResponse>, Status> {
        let (caller, service) = self.begin(&request)?;
        let r = request.into_inner();
        if r.min_mod_revision != 0
            || r.max_mod_revision != 0
            || r.min_create_revision != 0
            || r.max_create_revision != 0
        {
            return Err(Status::unimplemented(
                "filters on mod or create revision are not supported",
            ));
        }
        let consistency = if r.serializable {
            Consistency::Stale
        } else {
            Consistency::Linearizable
        };
        let revision = u64::try_from(r.revision)
            .map_err(|_| Status::invalid_argument("a revision is never negative"))?;
        let limit = usize::try_from(r.limit)
            .map_err(|_| Status::invalid_argument("a limit is never negative"))?;
        let key = Bytes::from(r.key);
        let (mut kvs, more, at) = match etcd_range_end(&r.range_end) {
            None if revision == 0 => {
                let result = self
                    .read(&service, &caller, ReadOp::Get { key }, consistency)
                    .await?;
                (result.kvs, false, result.revision)
            }
            end => {
                // One key at a revision is a range of one key.
                let end = end.unwrap_or_else(|| Some(key_after(&key)));
                self.scan(&service, &caller, key, end, limit, consistency, revision)
                    .await?
            }
        };
        let count = kvs.len() as i64;
        sort(&mut kvs, r.sort_order, r.sort_target);
        let header = self.header(&service, at);
        Ok(GrpcResponse::new(pb::RangeResponse {
            header: Some(header),
            kvs: if r.count_only {
                Vec::new()
            } else {
                kvs.into_iter().map(|kv| to_pb(kv, r.keys_only)).collect()
            },
            more,
            count,
        }))
    }

    async fn put(
        &self,
        request: GrpcRequest<pb::PutRequest>,
    ) -> Result<GrpcResponse<pb::PutResponse>, Status> {
        let (caller, service) = self.begin(&request)?;
        let r = request.into_inner();
        supported_put(&r)?;
        if r.lease != 0 {
            // A put that names a lease checks that the lease exists when it
            // applies: a one-operation transaction does.
            let prev_kv = r.prev_kv;
            let txn = Txn {
                success: vec![put_op(r)?],
                ..Txn::default()
            };
            let result = self
                .write(&service, &caller, WriteOp::Txn(txn), false)
                .await?;
            let header = self.header(&service, result.revision);
            return match result.responses.into_iter().next() {
                Some(TxnOpResult::Put { previous }) => Ok(GrpcResponse::new(pb::PutResponse {
                    header: Some(header),
                    prev_kv: previous.filter(|_| prev_kv).map(|kv| to_pb(kv, false)),
                })),
                other => Err(Status::internal(format!(
                    "unexpected transaction answer from the node: {other:?}"
                ))),
            };
        }
        let op = WriteOp::Put {
            key: Bytes::from(r.key),
            value: Bytes::from(r.value),
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
        let (caller, service) = self.begin(&request)?;
        let r = request.into_inner();
        let txn = Txn {
            compares: r
                .compare
                .into_iter()
                .map(compare_of)
                .collect::<Result<_, _>>()?,
            success: r.success.into_iter().map(op_of).collect::<Result<_, _>>()?,
            failure: r.failure.into_iter().map(op_of).collect::<Result<_, _>>()?,
        };
        let result = self
            .write(&service, &caller, WriteOp::Txn(txn), false)
            .await?;
        let header = self.header(&service, result.revision);
        let responses = result
            .responses
            .into_iter()
            .map(|response| {
                use pb::response_op::Response as Op;
                let response = match response {
                    TxnOpResult::Put { previous } => Op::ResponsePut(pb::PutResponse {
                        header: Some(header),
                        prev_kv: previous.map(|kv| to_pb(kv, false)),
                    }),
                    TxnOpResult::Delete { deleted, previous } => {
                        Op::ResponseDeleteRange(pb::DeleteRangeResponse {
                            header: Some(header),
                            deleted: deleted as i64,
                            prev_kvs: previous.into_iter().map(|kv| to_pb(kv, false)).collect(),
                        })
                    }
                    TxnOpResult::Range { kvs, more } => Op::ResponseRange(pb::RangeResponse {
                        header: Some(header),
                        count: kvs.len() as i64,
                        kvs: kvs.into_iter().map(|kv| to_pb(kv, false)).collect(),
                        more,
                    }),
                    TxnOpResult::LeaseGranted { .. } => {
                        return Err(Status::internal(
                            "unexpected lease grant in a transaction's answer",
                        ));
                    }
                };
                Ok(pb::ResponseOp {
                    response: Some(response),
                })
            })
            .collect::<Result<_, Status>>()?;
        Ok(GrpcResponse::new(pb::TxnResponse {
            header: Some(header),
            succeeded: result.succeeded,
            responses,
        }))
    }

    /// raft-kv keeps no past revisions beyond the watch history and the
    /// states of paged scans, both bounded on their own: there is nothing to
    /// free, so a valid compaction succeeds at once.
    async fn compact(
        &self,
        request: GrpcRequest<pb::CompactionRequest>,
    ) -> Result<GrpcResponse<pb::CompactionResponse>, Status> {
        let (caller, service) = self.begin(&request)?;
        let r = request.into_inner();
        // A linearizable read of the revision also checks the caller's role
        // (compaction changes nothing: readwrite is not needed).
        let current = self
            .read(
                &service,
                &caller,
                ReadOp::Get { key: Bytes::new() },
                Consistency::Linearizable,
            )
            .await?
            .revision;
        if r.revision > current as i64 {
            return Err(Status::out_of_range(
                "etcdserver: mvcc: required revision is a future revision",
            ));
        }
        Ok(GrpcResponse::new(pb::CompactionResponse {
            header: Some(self.header(&service, current)),
        }))
    }
}

impl EtcdApi {
    /// Up to `limit` (0: all) key-values of `start..end`, paged at one
    /// revision; whether more are left; the revision read.
    #[allow(clippy::too_many_arguments)]
    async fn scan(
        &self,
        service: &KvService,
        caller: &Caller,
        start: Bytes,
        end: Option<Bytes>,
        limit: usize,
        consistency: Consistency,
        revision: u64,
    ) -> Result<(Vec<KeyValue>, bool, u64), Status> {
        let mut kvs: Vec<KeyValue> = Vec::new();
        let mut bytes = 0;
        let mut start = start;
        let mut at = revision;
        loop {
            let left = if limit == 0 {
                usize::MAX
            } else {
                limit - kvs.len()
            };
            let page = self
                .read(
                    service,
                    caller,
                    ReadOp::Scan {
                        start,
                        end: end.clone(),
                        limit: left.min(crate::protocol::MAX_SCAN_LIMIT as usize) as u32,
                        revision: at,
                    },
                    consistency,
                )
                .await?;
            at = page.revision;
            bytes += page
                .kvs
                .iter()
                .map(|kv| kv.key.len() + kv.value.len())
                .sum::<usize>();
            kvs.extend(page.kvs);
            let full = limit != 0 && kvs.len() >= limit;
            if !page.more || full || bytes >= MAX_RANGE_BYTES {
                return Ok((kvs, page.more, at));
            }
            let Some(last) = kvs.last() else {
                return Ok((kvs, false, at));
            };
            start = key_after(&last.key);
        }
    }
}

/// Orders `kvs` as a `Range` asked (they come in key order).
fn sort(kvs: &mut [KeyValue], order: i32, target: i32) {
    use pb::range_request::{SortOrder, SortTarget};
    let order = SortOrder::try_from(order).unwrap_or(SortOrder::None);
    let target = SortTarget::try_from(target).unwrap_or(SortTarget::Key);
    if order == SortOrder::None {
        return;
    }
    kvs.sort_by(|a, b| match target {
        SortTarget::Key => a.key.cmp(&b.key),
        SortTarget::Version => a.version.cmp(&b.version),
        SortTarget::Create => a.create_revision.cmp(&b.create_revision),
        SortTarget::Mod => a.mod_revision.cmp(&b.mod_revision),
        SortTarget::Value => a.value.cmp(&b.value),
    });
    if order == SortOrder::Descend {
        kvs.reverse();
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
        let members = view
            .addresses
            .iter()
            .map(|(id, address)| pb::Member {
                id: *id,
                name: format!("node-{id}"),
                peer_ur_ls: vec![format!("https://{address}")],
                client_ur_ls: Vec::new(),
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
                let Ok(Some(request)) = request else { break };
                use pb::watch_request::RequestUnion;
                match request.request_union {
                    Some(RequestUnion::CreateRequest(create)) => {
                        let id = if create.watch_id != 0 {
                            create.watch_id
                        } else {
                            while watches.contains_key(&next_id) {
                                next_id += 1;
                            }
                            next_id
                        };
                        let watch = api.start_watch(&service, &caller, id, create, tx.clone());
                        if let Some(watch) = watch {
                            watches.insert(id, watch);
                        }
                    }
                    Some(RequestUnion::CancelRequest(cancel)) => {
                        if let Some(watch) = watches.remove(&cancel.watch_id) {
                            watch.task.abort();
                        }
                        let response = pb::WatchResponse {
                            header: Some(api.header(&service, service.revision())),
                            watch_id: cancel.watch_id,
                            canceled: true,
                            ..Default::default()
                        };
                        if tx.send(Ok(response)).await.is_err() {
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
                                let _ = tx.send(Ok(response)).await;
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
        Ok(GrpcResponse::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
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
        tx: tokio::sync::mpsc::Sender<Result<pb::WatchResponse, Status>>,
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
                let _ = tx.send(Ok(response)).await;
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
                Err(KvError::Compacted { oldest, .. }) => {
                    return refuse(cancel(
                        "etcdserver: mvcc: required revision has been compacted".into(),
                        oldest as i64,
                    ));
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
                            if tx.send(Ok(response)).await.is_err() {
                                return;
                            }
                        }
                        continue;
                    }
                };
                let Some(message) = message else { break };
                quiet = false;
                let response = match message {
                    WatchMessage::Started { revision } => pb::WatchResponse {
                        header: Some(header(revision)),
                        watch_id: id,
                        created: true,
                        ..Default::default()
                    },
                    WatchMessage::Events(events) => {
                        let revision = events.last().map_or(0, |e| e.revision);
                        let events: Vec<mvccpb::Event> = events
                            .into_iter()
                            .filter(|e| match e.kind {
                                EventKind::Put => !no_put,
                                EventKind::Delete => !no_delete,
                            })
                            .map(|event| event_to_pb(event, create.prev_kv))
                            .collect();
                        if events.is_empty() {
                            continue;
                        }
                        pb::WatchResponse {
                            header: Some(header(revision)),
                            watch_id: id,
                            events,
                            ..Default::default()
                        }
                    }
                    WatchMessage::Compacted { revision } => pb::WatchResponse {
                        header: Some(header(revision)),
                        watch_id: id,
                        canceled: true,
                        compact_revision: revision as i64,
                        cancel_reason: "etcdserver: mvcc: required revision has been compacted"
                            .into(),
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
                if tx.send(Ok(response)).await.is_err() {
                    return;
                }
            }
        });
        Some(RunningWatch {
            task: task.abort_handle(),
            progress,
        })
    }
}

/// Refuses what a put may ask that raft-kv does not do.
fn supported_put(put: &pb::PutRequest) -> Result<(), Status> {
    if put.ignore_value || put.ignore_lease {
        return Err(Status::unimplemented(
            "ignore_value and ignore_lease are not supported",
        ));
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

/// A transaction's operation, from etcd's.
fn op_of(op: pb::RequestOp) -> Result<TxnOp, Status> {
    use pb::request_op::Request as Op;
    match op.request {
        Some(Op::RequestPut(put)) => {
            supported_put(&put)?;
            put_op(put)
        }
        Some(Op::RequestDeleteRange(delete)) => Ok(delete_op(delete)),
        Some(Op::RequestRange(range)) => {
            if range.revision != 0 || range.count_only || range.keys_only || range.sort_order != 0 {
                return Err(Status::unimplemented(
                    "a read inside a transaction reads the latest revision, whole key-values, in key order",
                ));
            }
            Ok(TxnOp::Range {
                keys: KeyRange {
                    key: Bytes::from(range.key),
                    range_end: Bytes::from(range.range_end),
                },
                limit: u32::try_from(range.limit.max(0)).unwrap_or(u32::MAX),
            })
        }
        Some(Op::RequestTxn(_)) => Err(Status::unimplemented(
            "transactions inside transactions are not supported",
        )),
        None => Err(Status::invalid_argument("an empty transaction operation")),
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
