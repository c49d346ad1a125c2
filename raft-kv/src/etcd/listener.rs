//! The etcd port's connections, from the TCP accept to a TLS stream that
//! gRPC may use: what a stranger, a revoked certificate or one client with
//! many connections can cost the node.
//!
//! - A connection that has not finished its TLS handshake within
//!   [`Limits::handshake_timeout`] is closed; at most
//!   [`Limits::max_handshaking`] handshakes run at once
//!   ([`Limits::max_handshaking_per_source`] from one address), and one
//!   more is closed as soon as it is accepted, so strangers that never
//!   speak hold few file descriptors and only for a while.
//! - Established connections are capped in all
//!   ([`Limits::max_connections`]) and per client identity
//!   ([`Limits::max_connections_per_client`], as on the native port).
//! - TLS 1.3 with a client certificate from the cluster's CA; a certificate
//!   on the deny list fails the handshake, and when the list is replaced
//!   every open connection of a newly denied certificate is closed (its
//!   streams end with it).
//! - The file descriptors these take are bounded below the process's limit
//!   with a margin kept for the store ([`fd_budget`]).

use std::collections::HashMap;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use raft_transport_quic::{Caller, DenyList, Fingerprint, TlsIdentity};
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use super::budget::Identity;

/// What the etcd port lets connections cost.
#[derive(Clone, Debug)]
pub(crate) struct Limits {
    /// How long a connection may take to finish its TLS handshake.
    pub handshake_timeout: Duration,
    /// Handshakes under way at once, and from one source address.
    pub max_handshaking: usize,
    pub max_handshaking_per_source: usize,
    /// Established connections, in all and per client identity.
    pub max_connections: usize,
    pub max_connections_per_client: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            handshake_timeout: Duration::from_secs(10),
            max_handshaking: 1024,
            max_handshaking_per_source: 256,
            max_connections: 4096,
            max_connections_per_client: 128,
        }
    }
}

/// Raises the soft limit on open files to the hard limit; returns the soft
/// limit now in force (0 if it cannot be read).
fn raise_open_file_limit() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write the struct given.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return 0;
        }
        if limit.rlim_cur < limit.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: limit.rlim_max,
                rlim_max: limit.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                limit = raised;
            }
        }
    }
    limit.rlim_cur
}

/// File descriptors kept for everything but the etcd port: the store's
/// files, the log, the QUIC socket, the metrics port.
const RESERVED_FDS: u64 = 4096;

/// Raises the soft limit on open files to the hard one and shrinks
/// `limits` so that the etcd port's connections (established and
/// handshaking) never take the descriptors the store needs: they get what
/// is left above [`RESERVED_FDS`], at most what `limits` asks.
pub(crate) fn fd_budget(mut limits: Limits) -> Limits {
    let soft = raise_open_file_limit();
    if soft == 0 {
        return limits;
    }
    let available = soft.saturating_sub(RESERVED_FDS).max(64) as usize;
    let wanted = limits.max_connections + limits.max_handshaking;
    if wanted > available {
        let scale = |n: usize| (n * available / wanted).max(8);
        limits.max_connections = scale(limits.max_connections);
        limits.max_handshaking = scale(limits.max_handshaking);
        limits.max_handshaking_per_source = limits
            .max_handshaking_per_source
            .min(limits.max_handshaking);
        limits.max_connections_per_client = limits
            .max_connections_per_client
            .min(limits.max_connections);
        tracing::warn!(
            open_files = soft,
            connections = limits.max_connections,
            handshaking = limits.max_handshaking,
            "the etcd API's connections are capped lower to keep {RESERVED_FDS} file descriptors \
             for the store: raise the open-file limit (ulimit -n, LimitNOFILE) to serve more"
        );
    }
    limits
}

/// Verifies client certificates against the CA, then refuses those on the
/// deny list: a revoked certificate fails the handshake.
#[derive(Debug)]
struct DenyingVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    deny: Option<DenyList>,
}

impl ClientCertVerifier for DenyingVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self
            .inner
            .verify_client_cert(end_entity, intermediates, now)?;
        if self
            .deny
            .as_ref()
            .is_some_and(|deny| deny.contains(&Fingerprint::of_der(end_entity.as_ref())))
        {
            return Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::Revoked,
            ));
        }
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// The TLS configuration of the etcd port: TLS 1.3, HTTP/2 by ALPN, a
/// client certificate from the CA and not on the deny list.
pub(crate) fn tls_config(
    identity: &TlsIdentity,
    deny: Option<DenyList>,
) -> Result<rustls::ServerConfig, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for ca in identity.roots() {
        roots
            .add(ca.clone())
            .map_err(|e| format!("the CA certificate is not usable: {e}"))?;
    }
    let inner = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| format!("cannot verify client certificates: {e}"))?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| format!("TLS 1.3 is not available: {e}"))?
        .with_client_cert_verifier(Arc::new(DenyingVerifier { inner, deny }))
        .with_single_cert(identity.chain().to_vec(), identity.key().clone_key())
        .map_err(|e| format!("the node's certificate or key is not usable: {e}"))?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// Who is at the other end of a connection, as every request on it sees
/// it (tonic hands it to each request as its connect info).
#[derive(Clone)]
pub(crate) struct Peer {
    pub caller: Caller,
    pub fingerprint: Fingerprint,
    /// The identity's shared budgets (connections, calls, bytes).
    pub identity: Arc<Identity>,
}

/// Identities by name, while any of their connections is open.
pub(crate) type Identities = crate::budget::PerIdentity<Identity>;

/// Counts of what the port holds now.
#[derive(Default)]
struct Counts {
    handshaking: AtomicUsize,
    established: AtomicUsize,
    by_source: Mutex<HashMap<IpAddr, usize>>,
}

/// A slot taken in a count, given back when dropped.
struct Slot<F: Fn() + Send + Sync> {
    release: F,
}

impl<F: Fn() + Send + Sync> Drop for Slot<F> {
    fn drop(&mut self) {
        (self.release)();
    }
}

/// Takes one of `max` in `count`, if one is free.
fn take(count: &AtomicUsize, max: usize) -> bool {
    count
        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
            (n < max).then_some(n + 1)
        })
        .is_ok()
}

/// An established connection: TLS over TCP, closed when the node stops
/// serving the port or its certificate is denied; it holds its places in
/// the port's counts until dropped.
pub(crate) struct Connection {
    io: tokio_rustls::server::TlsStream<TcpStream>,
    closed: Pin<Box<dyn Future<Output = ()> + Send>>,
    is_closed: bool,
    peer: Peer,
    _slots: Box<dyn Send + Sync>,
}

impl Connection {
    fn closed(&mut self, cx: &mut Context<'_>) -> bool {
        if !self.is_closed && self.closed.as_mut().poll(cx).is_ready() {
            self.is_closed = true;
        }
        self.is_closed
    }
}

impl AsyncRead for Connection {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if self.closed(cx) {
            // End of stream: hyper drops the connection and its streams.
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Connection {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        if self.closed(cx) {
            return Poll::Ready(Err(std::io::Error::new(
                std::io::ErrorKind::ConnectionAborted,
                "the connection was closed by the node (it stopped serving the etcd API, or \
                 the client's certificate was revoked)",
            )));
        }
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

impl tonic::transport::server::Connected for Connection {
    type ConnectInfo = Peer;

    fn connect_info(&self) -> Peer {
        self.peer.clone()
    }
}

/// Resolves once `fingerprint` is on the deny list; never without one.
async fn denied(deny: Option<DenyList>, fingerprint: Fingerprint) {
    let Some(deny) = deny else {
        return std::future::pending().await;
    };
    let mut changes = deny.subscribe();
    loop {
        if deny.contains(&fingerprint) {
            return;
        }
        if changes.changed().await.is_err() {
            return std::future::pending().await;
        }
    }
}

/// What the accept loop needs.
pub(crate) struct Listener {
    pub listener: tokio::net::TcpListener,
    pub tls: Arc<rustls::ServerConfig>,
    pub limits: Limits,
    pub cluster: String,
    pub deny: Option<DenyList>,
    pub identities: Arc<Identities>,
    /// Turns true when the node stops serving the port.
    pub close: tokio::sync::watch::Receiver<bool>,
}

/// Accepts connections until the receiver of the returned stream is
/// dropped, sending each one that finished its handshake within the limits.
pub(crate) fn accept(
    listener: Listener,
) -> tokio_stream::wrappers::ReceiverStream<Result<Connection, std::io::Error>> {
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(accept_loop(listener, tx));
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

async fn accept_loop(
    listener: Listener,
    tx: tokio::sync::mpsc::Sender<Result<Connection, std::io::Error>>,
) {
    let Listener {
        listener,
        tls,
        limits,
        cluster,
        deny,
        identities,
        close,
    } = listener;
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let counts = Arc::new(Counts::default());
    let mut refusals = RefusalLog::default();
    loop {
        let (tcp, remote) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors, most likely: wait rather than
                    // spin; the limits keep this rare.
                    refusals.note(None, &format!("cannot accept a connection: {e}"));
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = tx.closed() => return,
        };
        let source = remote.ip();
        // Refused at once, before the connection costs anything for long.
        if counts.established.load(Ordering::Acquire) >= limits.max_connections {
            refusals.note(Some(source), "the etcd port holds its most connections");
            continue;
        }
        if !take(&counts.handshaking, limits.max_handshaking) {
            refusals.note(Some(source), "too many TLS handshakes under way");
            continue;
        }
        let from_source = {
            let mut by_source = counts
                .by_source
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            let n = by_source.entry(source).or_default();
            if *n >= limits.max_handshaking_per_source {
                false
            } else {
                *n += 1;
                true
            }
        };
        if !from_source {
            counts.handshaking.fetch_sub(1, Ordering::AcqRel);
            refusals.note(
                Some(source),
                "too many TLS handshakes under way from one address",
            );
            continue;
        }
        let handshaking = {
            let counts = counts.clone();
            Slot {
                release: move || {
                    counts.handshaking.fetch_sub(1, Ordering::AcqRel);
                    let mut by_source = counts
                        .by_source
                        .lock()
                        .unwrap_or_else(|poisoned| poisoned.into_inner());
                    if let Some(n) = by_source.get_mut(&source) {
                        *n -= 1;
                        if *n == 0 {
                            by_source.remove(&source);
                        }
                    }
                },
            }
        };
        let _ = tcp.set_nodelay(true);
        let (acceptor, limits, cluster, deny, identities, close, counts, tx) = (
            acceptor.clone(),
            limits.clone(),
            cluster.clone(),
            deny.clone(),
            identities.clone(),
            close.clone(),
            counts.clone(),
            tx.clone(),
        );
        tokio::spawn(async move {
            let tls = match tokio::time::timeout(limits.handshake_timeout, acceptor.accept(tcp))
                .await
            {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    tracing::debug!(%remote, "etcd API: TLS handshake failed: {e}");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%remote, "etcd API: no TLS handshake within {:?}: closed", limits.handshake_timeout);
                    return;
                }
            };
            drop(handshaking);
            let Some(der) = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|certs| certs.first())
                .cloned()
            else {
                return;
            };
            let fingerprint = Fingerprint::of_der(der.as_ref());
            let caller = match Caller::from_certificate(&der, &cluster) {
                Ok(caller) => caller,
                Err(e) => {
                    tracing::debug!(%remote, "etcd API: refused a certificate: {e}");
                    return;
                }
            };
            let name = crate::protocol::Principal::of(&caller).name;
            let identity = identities.get(&name, || Identity::new(name.clone()));
            if !take(&counts.established, limits.max_connections) {
                return;
            }
            let established = {
                let counts = counts.clone();
                Slot {
                    release: move || {
                        counts.established.fetch_sub(1, Ordering::AcqRel);
                    },
                }
            };
            if !take(&identity.connections, limits.max_connections_per_client) {
                tracing::debug!(%remote, identity = %name, "etcd API: refused a connection: {} per client identity at most", limits.max_connections_per_client);
                return;
            }
            let per_client = {
                let identity = identity.clone();
                Slot {
                    release: move || {
                        identity.connections.fetch_sub(1, Ordering::AcqRel);
                    },
                }
            };
            let mut close = close;
            let closed = Box::pin(async move {
                tokio::select! {
                    _ = close.wait_for(|closed| *closed) => {}
                    _ = denied(deny, fingerprint) => {
                        tracing::warn!(%remote, identity = %name, %fingerprint, "etcd API: closed an open connection: its certificate is on the deny list");
                    }
                }
            });
            let connection = Connection {
                io: tls,
                closed,
                is_closed: false,
                peer: Peer {
                    caller,
                    fingerprint,
                    identity,
                },
                _slots: Box::new((established, per_client)),
            };
            let _ = tx.send(Ok(connection)).await;
        });
    }
}

/// Logs refused connections at most once a second, with how many.
#[derive(Default)]
struct RefusalLog {
    last: Option<std::time::Instant>,
    since: u64,
}

impl RefusalLog {
    fn note(&mut self, source: Option<IpAddr>, why: &str) {
        self.since += 1;
        let now = std::time::Instant::now();
        if self
            .last
            .is_none_or(|last| now.duration_since(last) >= Duration::from_secs(1))
        {
            tracing::warn!(
                source = ?source,
                refused = self.since,
                "etcd API: refused connections: {why}"
            );
            self.last = Some(now);
            self.since = 0;
        }
    }
}
