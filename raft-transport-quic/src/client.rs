//! The client side: a handler hook the service plugs into (server side),
//! server-push streams for watches, and a connector that presents a client
//! certificate (client side).
//!
//! Payloads are opaque bytes: the service chooses its own encoding (postcard
//! is the natural choice). Requests and their answers share one long-lived
//! stream per connection, many in flight at once, answered as each is ready
//! (see [`crate::calls`]); a watch-like request whose answer is a stream of
//! items gets a stream of its own, which the client cancels by dropping it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use quinn::{IdleTimeout, VarInt};
use tokio::sync::mpsc;
use tracing::{debug, error, warn};

use crate::caller::Caller;
use crate::calls::{self, Calls};
use crate::certs::{CertError, TlsIdentity};
use crate::deny;
use crate::frame::{self, DEFAULT_MAX_FRAME_SIZE, FrameError, LENGTH_PREFIX};
use crate::limits::{self, RequestBudget};
use crate::tls;
use crate::transport::{Counters, Inner};
use crate::wire::{
    CLIENT_ALPN, CLOSE_DENIED, CLOSE_IDENTITY_MISMATCH, CLOSE_TOO_MANY_CONNECTIONS,
    STREAM_BAD_FRAME, STREAM_HANDLER_FAILED, STREAM_KIND_CALLS, STREAM_KIND_SUBSCRIBE,
    STREAM_TOO_SLOW,
};

/// One client request, as the handler sees it.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct ClientRequest {
    /// The request payload, as the client sent it.
    pub body: Bytes,
    /// Where the client connected from.
    pub remote_address: SocketAddr,
    /// Who it is, from its certificate.
    pub caller: Arc<Caller>,
}

impl ClientRequest {
    /// A request, e.g. to test a handler without a network.
    pub fn new(body: Bytes, remote_address: SocketAddr, caller: Caller) -> Self {
        Self {
            body,
            remote_address,
            caller: Arc::new(caller),
        }
    }
}

/// What a handler answers.
#[derive(Debug)]
pub enum Response {
    /// One response frame, then the stream ends.
    Unary(Bytes),
    /// A server-push stream: every item the handler sends through the
    /// matching [`PushSender`] reaches the client as one frame, until the
    /// sender is dropped (the stream then ends cleanly) or the client goes
    /// away (the sender then reports [`PushClosed`]).
    Stream(PushStream),
}

/// The service behind ALPN `raft-client/2`. Called once per request; a
/// panic fails that request only (the client sees
/// [`ClientError::Reset`] with [`crate::wire::STREAM_HANDLER_FAILED`]).
#[async_trait]
pub trait ClientHandler: Send + Sync + 'static {
    /// Answers one request.
    async fn handle(&self, request: ClientRequest) -> Response;
}

/// Creates a server-push channel holding up to `capacity` items not yet
/// written to the network: return the [`PushStream`] as
/// [`Response::Stream`] and feed the [`PushSender`] from any task.
pub fn push_channel(capacity: usize) -> (PushSender, PushStream) {
    let (tx, rx) = mpsc::channel(capacity.max(1));
    (PushSender { tx }, PushStream { rx })
}

/// The sending half of a server-push stream. Clones feed the same stream.
#[derive(Clone, Debug)]
pub struct PushSender {
    tx: mpsc::Sender<Bytes>,
}

/// The client behind a push stream is gone (it cancelled, disconnected, or
/// the item could not be framed).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the client of this push stream went away")]
pub struct PushClosed;

impl PushSender {
    /// Sends one item, waiting while the client is slow (backpressure).
    pub async fn send(&self, item: Bytes) -> Result<(), PushClosed> {
        self.tx.send(item).await.map_err(|_| PushClosed)
    }

    /// Resolves once the client has gone away: stop producing items.
    pub async fn closed(&self) {
        self.tx.closed().await
    }

    /// Whether the client has gone away.
    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }
}

/// The receiving half of a server-push channel, handed to the transport in
/// [`Response::Stream`].
#[derive(Debug)]
pub struct PushStream {
    rx: mpsc::Receiver<Bytes>,
}

impl PushStream {
    /// The next item, or `None` once every sender is gone.
    pub(crate) async fn next_item(&mut self) -> Option<Bytes> {
        self.rx.recv().await
    }
}

/// Serves a client connection: each bidirectional stream is a calls stream
/// or one subscription, as its first byte says.
pub(crate) async fn serve_connection(
    inner: Arc<Inner>,
    connection: quinn::Connection,
    handler: Arc<dyn ClientHandler>,
) {
    let remote = connection.remote_address();
    Counters::add(&inner.counters.client_connections, 1);
    let caller = match tls::caller(&connection, &inner.config.cluster_id) {
        Ok(caller) => Arc::new(caller),
        Err(reason) => {
            if inner.note_refusal(remote, "caller") {
                warn!(node = inner.local(), %remote, "refused a client connection: {reason}");
            }
            connection.close(CLOSE_IDENTITY_MISMATCH.into(), reason.as_bytes());
            return;
        }
    };
    let slot = match inner.clients.admit(limits::identity_key(&caller)) {
        Ok(slot) => slot,
        Err(open) => {
            Counters::add(&inner.counters.client_connections_over_limit, 1);
            let reason = format!(
                "{caller} already has {open} connections open to node {}, the most one client \
                 may have (max_connections_per_client); close some connections or use another \
                 client certificate",
                inner.local()
            );
            if inner.should_log_refusal(remote, "too many connections") {
                warn!(node = inner.local(), %remote, "refused a client connection: {reason}");
            }
            connection.close(CLOSE_TOO_MANY_CONNECTIONS.into(), reason.as_bytes());
            return;
        }
    };
    debug!(node = inner.local(), %remote, %caller, "client connected");
    // Clients have no business opening unidirectional streams.
    connection.set_max_concurrent_uni_streams(VarInt::from_u32(0));
    // Closes the connection if a new deny list names its certificate.
    let denied = deny::closed_when_denied(&inner, &connection);
    tokio::pin!(denied);
    loop {
        let accepted = tokio::select! {
            accepted = connection.accept_bi() => accepted,
            _ = &mut denied => return,
        };
        match accepted {
            Ok((send, recv)) => {
                Counters::add(&inner.counters.client_streams, 1);
                let serving = inner.clone();
                inner.spawn(serve_stream(
                    serving,
                    handler.clone(),
                    remote,
                    caller.clone(),
                    slot.budget().clone(),
                    send,
                    recv,
                ));
            }
            Err(reason) => {
                debug!(node = inner.local(), %remote, "client connection closed: {reason}");
                return;
            }
        }
    }
}

async fn serve_stream(
    inner: Arc<Inner>,
    handler: Arc<dyn ClientHandler>,
    remote_address: SocketAddr,
    caller: Arc<Caller>,
    budget: RequestBudget,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
) {
    let mut kind = [0u8; 1];
    match recv.read_exact(&mut kind).await {
        Ok(()) => {}
        Err(error) => {
            debug!(node = inner.local(), %remote_address, "client stream ended before its kind: {error}");
            return;
        }
    }
    match kind[0] {
        STREAM_KIND_CALLS => {
            calls::serve_calls(inner, handler, remote_address, caller, budget, send, recv).await
        }
        STREAM_KIND_SUBSCRIBE => {
            serve_subscription(inner, handler, remote_address, caller, budget, send, recv).await
        }
        other => {
            Counters::add(&inner.counters.frames_rejected, 1);
            warn!(node = inner.local(), %remote_address, "refused a client stream of unknown kind {other}");
            let _ = recv.stop(STREAM_BAD_FRAME.into());
            let _ = send.reset(STREAM_BAD_FRAME.into());
        }
    }
}

/// Why a subscription's request could not be read.
enum RequestError {
    /// It did not arrive within `client_request_timeout`.
    TooSlow,
    Frame(FrameError),
}

/// Reads a subscription's request: its length within the request timeout
/// of the stream opening, then its bytes of the identity's budget (as long
/// as it takes), then its body within the request timeout. `Ok(None)` when
/// the client gave up before asking.
async fn read_request(
    inner: &Inner,
    recv: &mut quinn::RecvStream,
    budget: &RequestBudget,
) -> Result<Option<(Bytes, tokio::sync::OwnedSemaphorePermit)>, RequestError> {
    let timeout = inner.config.client_request_timeout;
    let len = tokio::time::timeout(timeout, frame::read_len(recv, inner.config.max_frame_size))
        .await
        .map_err(|_| RequestError::TooSlow)?
        .map_err(RequestError::Frame)?;
    let Some(len) = len else { return Ok(None) };
    let Ok(taken) = budget.take(LENGTH_PREFIX + len).await else {
        return Ok(None); // never: the budget is not closed
    };
    let body = tokio::time::timeout(timeout, frame::read_payload(recv, len))
        .await
        .map_err(|_| RequestError::TooSlow)?
        .map_err(RequestError::Frame)?;
    Ok(Some((body, taken)))
}

/// Serves one request whose answer may be a stream of items.
async fn serve_subscription(
    inner: Arc<Inner>,
    handler: Arc<dyn ClientHandler>,
    remote_address: SocketAddr,
    caller: Arc<Caller>,
    budget: RequestBudget,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
) {
    let (body, taken) = match read_request(&inner, &mut recv, &budget).await {
        Ok(Some(request)) => request,
        Ok(None) => return, // the client gave up before asking
        Err(RequestError::TooSlow) => {
            Counters::add(&inner.counters.client_requests_too_slow, 1);
            warn!(
                node = inner.local(),
                %remote_address,
                %caller,
                "reset a subscription whose request did not arrive within {:?}",
                inner.config.client_request_timeout
            );
            let _ = recv.stop(STREAM_TOO_SLOW.into());
            let _ = send.reset(STREAM_TOO_SLOW.into());
            return;
        }
        Err(RequestError::Frame(error)) if error.is_bad_frame() => {
            Counters::add(&inner.counters.frames_rejected, 1);
            warn!(node = inner.local(), %remote_address, "rejected a client request frame and closed its stream: {error}");
            let _ = recv.stop(STREAM_BAD_FRAME.into());
            let _ = send.reset(STREAM_BAD_FRAME.into());
            return;
        }
        Err(RequestError::Frame(error)) => {
            debug!(node = inner.local(), %remote_address, "client request stream failed: {error}");
            return;
        }
    };
    let request = ClientRequest {
        body,
        remote_address,
        caller,
    };
    // A panic in the handler fails this request only (caught here rather
    // than in a task of its own: one task per request, not two).
    let response = CatchUnwind(handler.handle(request)).await;
    // The handler has the request: its bytes leave the budget.
    drop(taken);
    let response = match response {
        Ok(response) => response,
        Err(panic) => {
            let what = panic_message(&*panic);
            error!(node = inner.local(), %remote_address, "the client handler failed: {what}");
            let _ = send.reset(STREAM_HANDLER_FAILED.into());
            return;
        }
    };
    match response {
        Response::Unary(bytes) => {
            if write_item(&inner, &mut send, &bytes).await {
                let _ = send.finish();
            }
        }
        Response::Stream(mut push) => {
            let stopped = send.stopped();
            tokio::pin!(stopped);
            loop {
                tokio::select! {
                    item = push.rx.recv() => match item {
                        Some(bytes) => if !write_item(&inner, &mut send, &bytes).await { return },
                        None => {
                            let _ = send.finish();
                            return;
                        }
                    },
                    _ = &mut stopped => return, // the client cancelled: dropping `push` tells the sender
                }
            }
        }
    }
}

/// What a caught panic said, for the log.
pub(crate) fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic".into())
}

/// A boxed future whose panic becomes an `Err` (as a task's would).
pub(crate) struct CatchUnwind<F>(pub(crate) F);

impl<F> std::future::Future for CatchUnwind<F>
where
    F: std::future::Future + Unpin,
{
    type Output = std::thread::Result<F::Output>;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        let inner = &mut self.0;
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            std::pin::Pin::new(inner).poll(cx)
        })) {
            Ok(std::task::Poll::Pending) => std::task::Poll::Pending,
            Ok(std::task::Poll::Ready(value)) => std::task::Poll::Ready(Ok(value)),
            Err(panic) => std::task::Poll::Ready(Err(panic)),
        }
    }
}

/// Writes one response frame; false when the stream is unusable.
async fn write_item(inner: &Inner, send: &mut quinn::SendStream, bytes: &[u8]) -> bool {
    let frame = match frame::encode_raw(bytes, inner.config.max_frame_size) {
        Ok(frame) => frame,
        Err(error) => {
            error!(
                node = inner.local(),
                "cannot send a client response: {error}"
            );
            let _ = send.reset(STREAM_HANDLER_FAILED.into());
            return false;
        }
    };
    match send.write_all(&frame).await {
        Ok(()) => true,
        Err(error) => {
            debug!(
                node = inner.local(),
                "client response not delivered: {error}"
            );
            false
        }
    }
}

/// Why a client operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The client identity could not be used.
    #[error(transparent)]
    Tls(#[from] CertError),
    /// The local UDP socket could not be bound.
    #[error("could not bind a local UDP socket on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The operating system's reason.
        source: std::io::Error,
    },
    /// The address could not be parsed or resolved.
    #[error("cannot resolve {address:?}: {reason}; give host:port")]
    Resolve {
        /// The address given.
        address: String,
        /// Why.
        reason: String,
    },
    /// quinn refused to start connecting (e.g. an invalid server name).
    #[error("cannot connect: {0}")]
    Connect(#[from] quinn::ConnectError),
    /// The node closed the connection because of this client's
    /// certificate: its identity has too many connections open
    /// ([`crate::wire::CLOSE_TOO_MANY_CONNECTIONS`]) or the certificate is
    /// revoked ([`crate::wire::CLOSE_DENIED`]). The reason says what to do.
    #[error("the node refused this client (close code {code}): {reason}")]
    Refused {
        /// The close code (see [`crate::wire`]).
        code: u32,
        /// The node's explanation.
        reason: String,
    },
    /// The connection failed or was refused.
    #[error(
        "the connection failed: {0}; check the node address, that the client certificate is signed by \
         the cluster CA, and that the node serves clients"
    )]
    Connection(#[from] quinn::ConnectionError),
    /// The connection did not complete in time.
    #[error("no connection within {0:?}; is the node up?")]
    Timeout(Duration),
    /// A frame could not be encoded or read.
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// The request could not be written.
    #[error("sending the request failed: {0}")]
    Write(#[from] quinn::WriteError),
    /// The server reset the stream.
    #[error("the server failed the request (stream error code {code}); see the server's log")]
    Reset {
        /// The application error code (see [`crate::wire`]).
        code: u64,
    },
    /// The server ended the stream without a response.
    #[error("the server closed the request without a response")]
    NoResponse,
    /// The server answered with bytes that do not follow the protocol.
    #[error(
        "the server's answer broke the client protocol ({0}); client and node versions may differ"
    )]
    Malformed(String),
}

/// A lost connection as the client's error: a refusal of this client
/// (too many connections, a revoked certificate) gets its own variant.
pub(crate) fn connection_error(error: quinn::ConnectionError) -> ClientError {
    if let quinn::ConnectionError::ApplicationClosed(close) = &error {
        let code = close.error_code.into_inner();
        if code == u64::from(CLOSE_TOO_MANY_CONNECTIONS) || code == u64::from(CLOSE_DENIED) {
            return ClientError::Refused {
                code: code as u32,
                reason: String::from_utf8_lossy(&close.reason).into_owned(),
            };
        }
    }
    ClientError::Connection(error)
}

/// A failed write as the client's error (see [`connection_error`]).
pub(crate) fn write_error(error: quinn::WriteError) -> ClientError {
    match error {
        quinn::WriteError::ConnectionLost(lost) => connection_error(lost),
        other => ClientError::Write(other),
    }
}

fn from_frame_error(error: FrameError) -> ClientError {
    if let FrameError::Io(io) = &error {
        if let Some(read) = io
            .get_ref()
            .and_then(|e| e.downcast_ref::<quinn::ReadError>())
        {
            match read {
                quinn::ReadError::Reset(code) => {
                    return ClientError::Reset {
                        code: code.into_inner(),
                    };
                }
                quinn::ReadError::ConnectionLost(lost) => {
                    return connection_error(lost.clone());
                }
                _ => {}
            }
        }
    }
    ClientError::Frame(error)
}

/// Options of a [`ClientConnector`].
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct ClientOptions {
    /// The largest frame sent or accepted. Default 16 MiB.
    pub max_frame_size: usize,
    /// Idle timeout of connections. Default 10 s.
    pub idle_timeout: Duration,
    /// Keep-alive interval (below the idle timeout). Default 2 s.
    pub keep_alive_interval: Duration,
    /// Time allowed to connect. Default 5 s.
    pub connect_timeout: Duration,
    /// The local UDP address. Default `0.0.0.0:0`; use `[::]:0` to reach
    /// IPv6 nodes.
    pub bind_addr: SocketAddr,
}

impl Default for ClientOptions {
    fn default() -> Self {
        Self {
            max_frame_size: DEFAULT_MAX_FRAME_SIZE,
            idle_timeout: Duration::from_secs(10),
            keep_alive_interval: Duration::from_secs(2),
            connect_timeout: Duration::from_secs(5),
            bind_addr: SocketAddr::from(([0, 0, 0, 0], 0)),
        }
    }
}

/// Connects to nodes as a client, presenting a client certificate. One
/// connector (one UDP socket) can hold connections to many nodes.
#[derive(Debug)]
pub struct ClientConnector {
    endpoint: quinn::Endpoint,
    options: ClientOptions,
}

impl ClientConnector {
    /// A connector presenting `identity` (a client or node certificate with
    /// the cluster CA). Must be called inside a tokio runtime.
    pub fn new(identity: &TlsIdentity, options: ClientOptions) -> Result<Self, ClientError> {
        let mut transport = quinn::TransportConfig::default();
        transport
            .max_idle_timeout(IdleTimeout::try_from(options.idle_timeout).ok())
            .keep_alive_interval(Some(
                options.keep_alive_interval.min(options.idle_timeout / 2),
            ))
            .max_concurrent_uni_streams(VarInt::from_u32(0))
            .max_concurrent_bidi_streams(VarInt::from_u32(0));
        let mut config =
            quinn::ClientConfig::new(Arc::new(tls::client_crypto(identity, CLIENT_ALPN)?));
        config.transport_config(Arc::new(transport));
        let mut endpoint =
            quinn::Endpoint::client(options.bind_addr).map_err(|source| ClientError::Bind {
                addr: options.bind_addr,
                source,
            })?;
        endpoint.set_default_client_config(config);
        Ok(Self { endpoint, options })
    }

    /// Connects to the node at `addr` whose certificate must carry
    /// `server_name` (one of its addresses, e.g. `"127.0.0.1"`, or
    /// [`crate::node_server_name`]).
    pub async fn connect(
        &self,
        addr: SocketAddr,
        server_name: &str,
    ) -> Result<ClientConnection, ClientError> {
        let connecting = self.endpoint.connect(addr, server_name)?;
        let timeout = self.options.connect_timeout;
        let connection = tokio::time::timeout(timeout, connecting)
            .await
            .map_err(|_| ClientError::Timeout(timeout))??;
        Ok(ClientConnection {
            calls: Arc::new(Calls::new(connection.clone(), self.options.max_frame_size)),
            connection,
            max_frame_size: self.options.max_frame_size,
        })
    }

    /// Connects to `address` (`host:port`), verifying the node's certificate
    /// against the host part.
    pub async fn connect_to(&self, address: &str) -> Result<ClientConnection, ClientError> {
        let resolve_error = |reason: String| ClientError::Resolve {
            address: address.to_owned(),
            reason,
        };
        let (host, _port) = address
            .rsplit_once(':')
            .ok_or_else(|| resolve_error("no port".into()))?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let addr = match address.parse::<SocketAddr>() {
            Ok(addr) => addr,
            Err(_) => tokio::net::lookup_host(address)
                .await
                .map_err(|e| resolve_error(e.to_string()))?
                .next()
                .ok_or_else(|| resolve_error("no address".into()))?,
        };
        self.connect(addr, host).await
    }

    /// Closes every connection of this connector.
    pub fn close(&self) {
        self.endpoint.close(VarInt::from_u32(0), b"client closing");
    }
}

/// A connection to one node. Cheap to clone; requests may run concurrently
/// (they share one stream: see [`crate::calls`]).
#[derive(Clone, Debug)]
pub struct ClientConnection {
    connection: quinn::Connection,
    calls: Arc<Calls>,
    max_frame_size: usize,
}

impl ClientConnection {
    /// Sends one request and waits for its response (for a request the
    /// server answers with a stream of items, the first item).
    pub async fn request(&self, body: &[u8]) -> Result<Bytes, ClientError> {
        self.calls.call(body).await
    }

    /// Sends one request on a stream of its own and returns the frames the
    /// server pushes in answer (for watches). Dropping the receiver cancels
    /// the stream.
    pub async fn subscribe(&self, body: &[u8]) -> Result<PushReceiver, ClientError> {
        let frame = frame::encode_raw(body, self.max_frame_size)?;
        let (mut send, recv) = self.connection.open_bi().await.map_err(connection_error)?;
        send.write_all(&[STREAM_KIND_SUBSCRIBE])
            .await
            .map_err(write_error)?;
        send.write_all(&frame).await.map_err(write_error)?;
        let _ = send.finish();
        Ok(PushReceiver {
            recv,
            _send: send,
            max_frame_size: self.max_frame_size,
        })
    }

    /// The node's address.
    pub fn remote_address(&self) -> SocketAddr {
        self.connection.remote_address()
    }

    /// Closes the connection.
    pub fn close(&self) {
        self.connection
            .close(VarInt::from_u32(0), b"client closing");
    }
}

/// Frames a server pushes in answer to one request.
#[derive(Debug)]
pub struct PushReceiver {
    recv: quinn::RecvStream,
    _send: quinn::SendStream,
    max_frame_size: usize,
}

impl PushReceiver {
    /// The next frame; `Ok(None)` once the server ended the stream.
    pub async fn next(&mut self) -> Result<Option<Bytes>, ClientError> {
        frame::read(&mut self.recv, self.max_frame_size)
            .await
            .map_err(from_frame_error)
    }
}
