//! [`QuicTransport`]: a node's one QUIC endpoint. It accepts connections,
//! sorts them by ALPN (peers to [`crate::peer`], clients to
//! [`crate::client`]), and implements raft-core's
//! [`Transport`](raft_core::adapters::Transport) trait.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use raft_core::adapters::{Transport, TransportError};
use raft_core::{Message, NodeId};
use tokio::sync::{Semaphore, mpsc, watch};
use tracing::{debug, error, info, warn};

use crate::certs::{CertError, TlsIdentity};
use crate::config::TransportConfig;
use crate::deny::{self, Check};
use crate::fault::Verdict;
use crate::inbound::InboundQueue;
use crate::limits::ClientLimits;
use crate::peer::{self, PeerLink};
use crate::wire::{CLIENT_ALPN, CLOSE_NO_SERVICE, CLOSE_SHUTDOWN, PEER_ALPN};
use crate::{client, tls};

/// Why a transport could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A configuration value is out of range.
    #[error("invalid transport configuration: {0}")]
    Config(String),
    /// The certificates or key could not be used.
    #[error(transparent)]
    Tls(#[from] CertError),
    /// The certificate is not this node's.
    #[error("wrong node certificate: {0}")]
    WrongCertificate(String),
    /// The UDP socket could not be bound.
    #[error(
        "could not listen on UDP {addr}: {source}; is the port in use, or the address not local?"
    )]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The operating system's reason.
        source: std::io::Error,
    },
}

/// Counters of what a transport did since it started; for tests, metrics
/// and logs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct TransportStats {
    /// Messages written to a peer stream.
    pub messages_sent: u64,
    /// Messages received from peers and handed to the inbound queue.
    pub messages_received: u64,
    /// Messages refused by `send` because a per-peer queue was full.
    pub send_queue_full: u64,
    /// Queued messages lost because their connection failed (Raft resends).
    pub messages_lost: u64,
    /// Messages dropped by the fault injector.
    pub messages_dropped_by_faults: u64,
    /// Malformed, truncated, oversized or misaddressed frames rejected.
    pub frames_rejected: u64,
    /// Incoming connections refused (TLS, ALPN, cluster, version, identity).
    pub connections_refused: u64,
    /// Peer connections established (dialed or accepted).
    pub peer_connections: u64,
    /// Client streams accepted: a calls stream per client connection (it
    /// carries all of its requests), plus one per subscription.
    pub client_streams: u64,
    /// Client connections accepted (handshake done, ALPN `raft-client/2`).
    pub client_connections: u64,
    /// Messages dropped because their sender was removed from the cluster
    /// (see `Transport::update_removed`); its connections are refused too,
    /// counted in `connections_refused`.
    pub messages_from_removed: u64,
    /// Client connections closed right after the handshake because their
    /// identity had `max_connections_per_client` open already (not counted
    /// in `connections_refused`).
    pub client_connections_over_limit: u64,
    /// Connections refused or closed because the certificate presented is
    /// on the deny list: incoming (peers and clients), peers we dialed, and
    /// open connections closed when the list was replaced (not counted in
    /// `connections_refused`).
    pub connections_denied: u64,
    /// Client streams reset because a request frame, once started, did not
    /// arrive within `client_request_timeout`.
    pub client_requests_too_slow: u64,
}

#[derive(Default)]
pub(crate) struct Counters {
    pub(crate) messages_sent: AtomicU64,
    pub(crate) messages_received: AtomicU64,
    pub(crate) send_queue_full: AtomicU64,
    pub(crate) messages_lost: AtomicU64,
    pub(crate) messages_dropped_by_faults: AtomicU64,
    pub(crate) frames_rejected: AtomicU64,
    pub(crate) connections_refused: AtomicU64,
    pub(crate) peer_connections: AtomicU64,
    pub(crate) client_streams: AtomicU64,
    pub(crate) client_connections: AtomicU64,
    pub(crate) messages_from_removed: AtomicU64,
    pub(crate) client_connections_over_limit: AtomicU64,
    pub(crate) connections_denied: AtomicU64,
    pub(crate) client_requests_too_slow: AtomicU64,
}

impl Counters {
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    fn snapshot(&self) -> TransportStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        TransportStats {
            messages_sent: get(&self.messages_sent),
            messages_received: get(&self.messages_received),
            send_queue_full: get(&self.send_queue_full),
            messages_lost: get(&self.messages_lost),
            messages_dropped_by_faults: get(&self.messages_dropped_by_faults),
            frames_rejected: get(&self.frames_rejected),
            connections_refused: get(&self.connections_refused),
            peer_connections: get(&self.peer_connections),
            client_streams: get(&self.client_streams),
            client_connections: get(&self.client_connections),
            messages_from_removed: get(&self.messages_from_removed),
            client_connections_over_limit: get(&self.client_connections_over_limit),
            connections_denied: get(&self.connections_denied),
            client_requests_too_slow: get(&self.client_requests_too_slow),
        }
    }
}

/// A cancellation signal: resolves once its sender says `true` or is gone.
#[derive(Clone)]
pub(crate) struct Cancel(watch::Receiver<bool>);

impl From<watch::Receiver<bool>> for Cancel {
    fn from(receiver: watch::Receiver<bool>) -> Self {
        Self(receiver)
    }
}

impl Cancel {
    pub(crate) async fn cancelled(&mut self) {
        let _ = self.0.wait_for(|cancelled| *cancelled).await;
    }

    pub(crate) fn is_cancelled(&self) -> bool {
        *self.0.borrow()
    }
}

/// What every task of one transport shares.
pub(crate) struct Inner {
    pub(crate) config: TransportConfig,
    pub(crate) endpoint: quinn::Endpoint,
    /// Client configuration for dialing peers (ALPN `raft-peer/1`).
    pub(crate) peer_client_config: quinn::ClientConfig,
    /// Orders this start among the node's starts (see
    /// [`peer::new_incarnation`]); lets peers recognise that this node
    /// restarted, and refuse an older process of it.
    pub(crate) incarnation: u64,
    pub(crate) links: Mutex<HashMap<NodeId, Arc<PeerLink>>>,
    /// Received messages waiting for `recv`, served peer by peer in turn.
    pub(crate) inbound: InboundQueue,
    pub(crate) snapshot_slots: Arc<Semaphore>,
    pub(crate) counters: Counters,
    pub(crate) next_connection_id: AtomicU64,
    shutdown: watch::Sender<bool>,
    /// Every task holds a clone; shutdown waits until all are dropped.
    task_token: Mutex<Option<mpsc::Sender<()>>>,
    tasks_done: tokio::sync::Mutex<mpsc::Receiver<()>>,
    runtime: tokio::runtime::Handle,
    /// When each remote IP last got a refusal logged as a warning.
    refusal_log: Mutex<HashMap<(std::net::IpAddr, String), std::time::Instant>>,
    /// Ids removed from the cluster: refused at the door, their messages
    /// dropped.
    removed: std::sync::RwLock<BTreeSet<NodeId>>,
    /// Open client identities: their connection counts and request budgets.
    pub(crate) clients: ClientLimits,
}

/// A refused remote that keeps retrying is warned about once per this period.
const REFUSAL_LOG_PERIOD: Duration = Duration::from_secs(10);

impl Inner {
    /// Whether `peer` was removed from the cluster.
    pub(crate) fn is_removed(&self, peer: NodeId) -> bool {
        self.removed
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .contains(&peer)
    }

    /// Replaces the set of removed ids; says which are new.
    pub(crate) fn set_removed(&self, removed: &BTreeSet<NodeId>) -> Vec<NodeId> {
        let mut current = self
            .removed
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let new = removed.difference(&current).copied().collect();
        current.clone_from(removed);
        new
    }

    /// Counts a refused connection and says whether to log it as a warning:
    /// at most once per [`REFUSAL_LOG_PERIOD`] per remote IP and reason, so
    /// that a misconfigured node retrying with backoff does not flood the log.
    pub(crate) fn note_refusal(&self, remote: SocketAddr, reason: &str) -> bool {
        Counters::add(&self.counters.connections_refused, 1);
        self.should_log_refusal(remote, reason)
    }

    /// Whether to log a refusal as a warning (see [`Inner::note_refusal`]),
    /// without counting it.
    pub(crate) fn should_log_refusal(&self, remote: SocketAddr, reason: &str) -> bool {
        let mut log = self
            .refusal_log
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let now = std::time::Instant::now();
        if log.len() > 1024 {
            log.clear();
        }
        let key = (remote.ip(), reason.to_owned());
        match log.get(&key) {
            Some(last) if now.duration_since(*last) < REFUSAL_LOG_PERIOD => false,
            _ => {
                log.insert(key, now);
                true
            }
        }
    }

    pub(crate) fn local(&self) -> NodeId {
        self.config.node_id
    }

    pub(crate) fn cancel(&self) -> Cancel {
        Cancel(self.shutdown.subscribe())
    }

    pub(crate) fn is_shut_down(&self) -> bool {
        *self.shutdown.borrow()
    }

    pub(crate) fn links(&self) -> MutexGuard<'_, HashMap<NodeId, Arc<PeerLink>>> {
        self.links
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Spawns a task that ends at shutdown (or when `fut` ends).
    pub(crate) fn spawn<F>(&self, fut: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let token = match self.task_token.lock() {
            Ok(guard) => guard.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        };
        let Some(token) = token else { return };
        let mut cancel = self.cancel();
        self.runtime.spawn(async move {
            let _token = token;
            tokio::select! {
                _ = cancel.cancelled() => {}
                _ = fut => {}
            }
        });
    }

    pub(crate) fn stats(&self) -> TransportStats {
        self.counters.snapshot()
    }
}

/// A node's QUIC transport: one endpoint serving its peers (and, with a
/// [`crate::ClientHandler`], its clients), with mutual TLS.
///
/// Messages go out with [`Transport::send`] (never blocks; a full per-peer
/// queue returns `TransportError::Unreachable`) and come in through
/// [`Transport::recv`]. Tell it where peers are with
/// [`Transport::update_peers`]. Dropping it (or [`QuicTransport::shutdown`])
/// closes the endpoint.
pub struct QuicTransport {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for QuicTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QuicTransport")
            .field("node_id", &self.inner.local())
            .field("local_addr", &self.inner.endpoint.local_addr().ok())
            .finish_non_exhaustive()
    }
}

impl QuicTransport {
    /// Binds the endpoint and starts serving. `identity` must be this node's
    /// certificate (naming `config.node_id` in `config.cluster_id`) with the
    /// cluster CA. Must be called inside a tokio runtime.
    pub async fn start(
        config: TransportConfig,
        identity: &TlsIdentity,
    ) -> Result<Self, StartError> {
        config.validate().map_err(StartError::Config)?;
        tls::check_own_certificate(identity, &config.cluster_id, config.node_id)
            .map_err(StartError::WrongCertificate)?;
        // Incoming connections start with the smaller of the two receive
        // windows (a window announced in the handshake cannot be taken
        // back); each gets its own once its ALPN says what it is.
        let incoming_window = config
            .peer_receive_window()
            .min(config.client_receive_window());
        let mut server_config =
            quinn::ServerConfig::with_crypto(Arc::new(tls::server_crypto(identity)?));
        server_config.transport_config(Arc::new(config.quinn_transport(incoming_window)));
        let mut peer_client_config =
            quinn::ClientConfig::new(Arc::new(tls::client_crypto(identity, PEER_ALPN)?));
        peer_client_config.transport_config(Arc::new(
            config.quinn_transport(config.peer_receive_window()),
        ));

        let endpoint =
            quinn::Endpoint::server(server_config, config.listen_addr).map_err(|source| {
                StartError::Bind {
                    addr: config.listen_addr,
                    source,
                }
            })?;
        let (task_token, tasks_done) = mpsc::channel(1);
        let inner = Arc::new(Inner {
            snapshot_slots: Arc::new(Semaphore::new(config.inbound_snapshot_chunks)),
            inbound: InboundQueue::new(config.inbound_queue),
            clients: ClientLimits::new(
                config.max_connections_per_client,
                config.max_client_request_bytes,
            ),
            config,
            endpoint,
            peer_client_config,
            incarnation: peer::new_incarnation(),
            links: Mutex::new(HashMap::new()),
            counters: Counters::default(),
            next_connection_id: AtomicU64::new(1),
            shutdown: watch::channel(false).0,
            task_token: Mutex::new(Some(task_token)),
            tasks_done: tokio::sync::Mutex::new(tasks_done),
            runtime: tokio::runtime::Handle::current(),
            refusal_log: Mutex::new(HashMap::new()),
            removed: std::sync::RwLock::new(BTreeSet::new()),
        });
        let accepting = inner.clone();
        inner.spawn(accept_loop(accepting));
        info!(
            node = inner.local(),
            cluster = %inner.config.cluster_id,
            addr = ?inner.endpoint.local_addr().ok(),
            fault_injection = inner.config.fault_injector.is_some(),
            "QUIC transport listening"
        );
        Ok(Self { inner })
    }

    /// The address the endpoint listens on (with the port chosen, if the
    /// configuration asked for port 0).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.inner.endpoint.local_addr()
    }

    /// This node's id.
    pub fn node_id(&self) -> NodeId {
        self.inner.local()
    }

    /// The peers this node currently has at least one open connection to.
    pub fn connected_peers(&self) -> Vec<NodeId> {
        let mut peers: Vec<NodeId> = self
            .inner
            .links()
            .values()
            .filter(|link| link.is_connected())
            .map(|link| link.peer())
            .collect();
        peers.sort_unstable();
        peers
    }

    /// Open QUIC connections of the endpoint (peers and clients), including
    /// ones still closing.
    pub fn open_connections(&self) -> usize {
        self.inner.endpoint.open_connections()
    }

    /// Each connected peer's round-trip time (QUIC's smoothed estimate on
    /// the connection Raft messages use), by node id.
    pub fn peer_rtts(&self) -> Vec<(NodeId, Duration)> {
        let mut rtts: Vec<(NodeId, Duration)> = self
            .inner
            .links()
            .values()
            .filter_map(|link| link.rtt().map(|rtt| (link.peer(), rtt)))
            .collect();
        rtts.sort_unstable();
        rtts
    }

    /// Counters since start.
    pub fn stats(&self) -> TransportStats {
        self.inner.stats()
    }

    /// The fault injector given in the configuration, if any.
    pub fn fault_injector(&self) -> Option<&crate::FaultInjector> {
        self.inner.config.fault_injector.as_ref()
    }

    /// Closes every connection and the endpoint, stops all tasks and waits
    /// (up to a few seconds) until they are gone and the UDP port is
    /// released. Afterwards `send` fails with `Closed` and `recv` returns
    /// `None`.
    pub async fn shutdown(&self) {
        let inner = &self.inner;
        inner.shutdown.send_replace(true);
        inner
            .endpoint
            .close(CLOSE_SHUTDOWN.into(), b"node shutting down");
        let token = match inner.task_token.lock() {
            Ok(mut guard) => guard.take(),
            Err(poisoned) => poisoned.into_inner().take(),
        };
        drop(token);
        let mut done = inner.tasks_done.lock().await;
        if tokio::time::timeout(Duration::from_secs(5), done.recv())
            .await
            .is_err()
        {
            warn!(
                node = inner.local(),
                "transport tasks did not stop within 5 s of shutdown"
            );
        }
        let _ = tokio::time::timeout(Duration::from_secs(2), inner.endpoint.wait_idle()).await;
        info!(node = inner.local(), "QUIC transport shut down");
    }
}

impl Drop for QuicTransport {
    fn drop(&mut self) {
        // Tasks notice and end; the endpoint closes once they are gone.
        self.inner.shutdown.send_replace(true);
        self.inner
            .endpoint
            .close(CLOSE_SHUTDOWN.into(), b"node shutting down");
    }
}

#[async_trait]
impl Transport for QuicTransport {
    fn send(&self, message: Message) -> Result<(), TransportError> {
        let inner = &self.inner;
        if inner.is_shut_down() {
            return Err(TransportError::Closed);
        }
        let to = message.to;
        if message.from != inner.local() {
            error!(
                node = inner.local(),
                from = message.from,
                to,
                "dropping a message whose sender is not this node; this is a bug in the driver"
            );
            return Ok(());
        }
        if to == inner.local() {
            return inner
                .inbound
                .try_push(to, message)
                .map_err(|_| TransportError::Unreachable(to));
        }
        let link = inner
            .links()
            .get(&to)
            .filter(|link| link.is_known())
            .cloned();
        let link = link.ok_or(TransportError::UnknownPeer(to))?;
        if let Some(faults) = &inner.config.fault_injector {
            match faults.outbound(inner.local(), to) {
                Verdict::Deliver => {}
                Verdict::Drop => {
                    Counters::add(&inner.counters.messages_dropped_by_faults, 1);
                    return Ok(());
                }
                Verdict::Delay(delay) => {
                    let delayed = link.clone();
                    let counters = inner.clone();
                    inner.spawn(async move {
                        tokio::time::sleep(delay).await;
                        if delayed.enqueue(message, &counters.counters).is_err() {
                            debug!(to, "a delayed message found its queue full and was dropped");
                        }
                    });
                    return Ok(());
                }
            }
        }
        link.enqueue(message, &inner.counters)
    }

    fn update_peers(&self, peers: &BTreeMap<NodeId, String>) {
        peer::update_peers(&self.inner, peers);
    }

    fn update_removed(&self, removed: &BTreeSet<NodeId>) {
        peer::shut_out(&self.inner, removed);
    }

    async fn recv(&self) -> Option<Message> {
        let mut cancel = self.inner.cancel();
        if cancel.is_cancelled() {
            return None;
        }
        tokio::select! {
            biased;
            _ = cancel.cancelled() => None,
            message = self.inner.inbound.pop() => Some(message),
        }
    }
}

async fn accept_loop(inner: Arc<Inner>) {
    while let Some(incoming) = inner.endpoint.accept().await {
        let serving = inner.clone();
        inner.spawn(handle_incoming(serving, incoming));
    }
}

async fn handle_incoming(inner: Arc<Inner>, incoming: quinn::Incoming) {
    let remote = incoming.remote_address();
    let connection = match tokio::time::timeout(inner.config.handshake_timeout, incoming).await {
        Ok(Ok(connection)) => connection,
        Ok(Err(error)) => {
            let message = format!(
                "refused a connection: the TLS handshake failed ({error}); the client needs a \
                 certificate signed by the cluster CA and ALPN raft-peer/1 or raft-client/2"
            );
            if inner.note_refusal(remote, &error.to_string()) {
                warn!(node = inner.local(), %remote, "{message}");
            } else {
                debug!(node = inner.local(), %remote, "{message}");
            }
            return;
        }
        Err(_) => {
            if inner.note_refusal(remote, "handshake timeout") {
                warn!(node = inner.local(), %remote, "refused a connection: the TLS handshake timed out");
            }
            return;
        }
    };
    if deny::refuse_if_denied(&inner, &connection, Check::Incoming) {
        return;
    }
    match tls::negotiated_alpn(&connection).as_deref() {
        Some(PEER_ALPN) => {
            connection.set_receive_window(inner.config.peer_receive_window());
            peer::accept(inner, connection).await
        }
        Some(CLIENT_ALPN) => match inner.config.client_handler.clone() {
            Some(handler) => {
                connection.set_receive_window(inner.config.client_receive_window());
                client::serve_connection(inner, connection, handler).await
            }
            None => {
                if inner.note_refusal(remote, "no client service") {
                    warn!(node = inner.local(), %remote, "refused a client connection: this node serves no clients");
                }
                connection.close(CLOSE_NO_SERVICE.into(), b"this node serves no clients");
            }
        },
        other => {
            let alpn = other.map(|p| String::from_utf8_lossy(p).into_owned());
            if inner.note_refusal(remote, "alpn") {
                warn!(node = inner.local(), %remote, ?alpn, "refused a connection without a known ALPN protocol");
            }
            connection.close(CLOSE_NO_SERVICE.into(), b"unknown or missing ALPN protocol");
        }
    }
}
