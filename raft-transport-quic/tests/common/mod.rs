//! Helpers shared by the loopback tests: certificates, nodes with short
//! timers, message builders, and raw QUIC connections for hostile clients.
#![allow(dead_code, unreachable_pub)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use raft_core::adapters::{Transport, TransportError};
use raft_core::{
    AppendRequest, Entry, EntryPayload, Heartbeat, LogId, Message, MessageBody, NodeId,
};
use raft_transport_quic::wire::{MAX_HELLO_SIZE, PEER_ALPN, PROTOCOL_VERSION, PeerHello};
use raft_transport_quic::{
    CertificateAuthority, QuicTransport, TlsIdentity, TransportConfig, frame, node_server_name,
};

pub const CLUSTER: &str = "test";
/// Generous: tests wait for events, they never measure performance.
pub const DEADLINE: Duration = Duration::from_secs(15);

pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("raft_transport_quic=info")),
        )
        .with_test_writer()
        .try_init();
}

pub fn loopback() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

pub fn ca() -> CertificateAuthority {
    CertificateAuthority::generate("test cluster CA").unwrap()
}

/// A configuration with short reconnect and keep-alive timers.
pub fn config(id: NodeId, cluster: &str, listen: SocketAddr) -> TransportConfig {
    let mut config = TransportConfig::new(id, cluster, listen);
    config.reconnect_initial_backoff = Duration::from_millis(20);
    config.reconnect_max_backoff = Duration::from_millis(300);
    config.keep_alive_interval = Duration::from_millis(500);
    config.idle_timeout = Duration::from_secs(5);
    config
}

pub fn identity(ca: &CertificateAuthority, cluster: &str, id: NodeId) -> TlsIdentity {
    ca.node_identity(cluster, id, ["127.0.0.1", "localhost"])
        .unwrap()
}

pub async fn start(ca: &CertificateAuthority, id: NodeId) -> QuicTransport {
    start_with(ca, config(id, CLUSTER, loopback())).await
}

pub async fn start_with(ca: &CertificateAuthority, config: TransportConfig) -> QuicTransport {
    let identity = identity(ca, &config.cluster_id.clone(), config.node_id);
    QuicTransport::start(config, &identity).await.unwrap()
}

/// Starts a node on a fixed address, retrying while the previous owner of
/// the port releases it.
pub async fn start_on(ca: &CertificateAuthority, config: TransportConfig) -> QuicTransport {
    let identity = identity(ca, &config.cluster_id.clone(), config.node_id);
    let deadline = Instant::now() + DEADLINE;
    loop {
        match QuicTransport::start(config.clone(), &identity).await {
            Ok(transport) => return transport,
            Err(error) if Instant::now() < deadline => {
                tracing::debug!("rebinding: {error}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(error) => panic!("could not restart the node: {error}"),
        }
    }
}

/// Tells every node where every other node is.
pub fn connect_all(nodes: &[&QuicTransport]) {
    let peers: BTreeMap<NodeId, String> = nodes
        .iter()
        .map(|n| (n.node_id(), n.local_addr().unwrap().to_string()))
        .collect();
    for node in nodes {
        node.update_peers(&peers);
    }
}

pub fn heartbeat(from: NodeId, to: NodeId, round: u64) -> Message {
    Message {
        from,
        to,
        term: 1,
        body: MessageBody::Heartbeat(Heartbeat { commit: 0, round }),
    }
}

pub fn append(from: NodeId, to: NodeId, index: u64, payload: Bytes) -> Message {
    Message {
        from,
        to,
        term: 1,
        body: MessageBody::Append(AppendRequest {
            prev: LogId::new(1, index - 1),
            entries: vec![Entry {
                term: 1,
                index,
                payload: EntryPayload::Command(payload),
            }],
            commit: 0,
        }),
    }
}

pub fn round_of(message: &Message) -> Option<u64> {
    match &message.body {
        MessageBody::Heartbeat(h) => Some(h.round),
        _ => None,
    }
}

/// Sends, retrying while the peer's queue is full or its address unknown.
pub async fn send_eventually(node: &QuicTransport, message: Message) {
    let deadline = Instant::now() + DEADLINE;
    loop {
        match node.send(message.clone()) {
            Ok(()) => return,
            Err(TransportError::Unreachable(_)) | Err(TransportError::UnknownPeer(_))
                if Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(2)).await
            }
            Err(error) => panic!("send failed: {error}"),
        }
    }
}

pub async fn recv_within(node: &QuicTransport, timeout: Duration) -> Option<Message> {
    tokio::time::timeout(timeout, node.recv())
        .await
        .ok()
        .flatten()
}

/// Sends heartbeats `from` → `to` until one arrives (the link is up);
/// returns the rounds used, which callers may ignore.
pub async fn wait_linked(from: &QuicTransport, to: &QuicTransport) {
    let deadline = Instant::now() + DEADLINE;
    let mut round = 1_000_000;
    loop {
        round += 1;
        let _ = from.send(heartbeat(from.node_id(), to.node_id(), round));
        if let Some(message) = recv_within(to, Duration::from_millis(100)).await {
            if message.from == from.node_id() {
                // Drain what else is in flight.
                while recv_within(to, Duration::from_millis(50)).await.is_some() {}
                return;
            }
        }
        assert!(
            Instant::now() < deadline,
            "node {} never reached node {}",
            from.node_id(),
            to.node_id()
        );
    }
}

/// A rustls + quinn client built by hand, for connections the crate itself
/// would never make (wrong ALPN, no certificate, hostile frames).
pub fn raw_endpoint(
    identity: Option<&TlsIdentity>,
    roots_from: &TlsIdentity,
    alpn: &[u8],
) -> quinn::Endpoint {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for root in roots_from.roots() {
        roots.add(root.clone()).unwrap();
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots);
    let mut tls = match identity {
        Some(identity) => builder
            .with_client_auth_cert(identity.chain().to_vec(), identity.key().clone_key())
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    tls.alpn_protocols = vec![alpn.to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
    let mut endpoint = quinn::Endpoint::client(loopback()).unwrap();
    endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(crypto)));
    endpoint
}

/// Connects and proves the connection usable by opening a stream and
/// waiting for the server's reaction; returns the error that ended it.
pub async fn connection_outcome(
    endpoint: &quinn::Endpoint,
    addr: SocketAddr,
    server_name: &str,
) -> Result<quinn::Connection, String> {
    let connecting = endpoint
        .connect(addr, server_name)
        .map_err(|e| e.to_string())?;
    let connection = tokio::time::timeout(DEADLINE, connecting)
        .await
        .map_err(|_| "timeout".to_owned())?
        .map_err(|e| e.to_string())?;
    Ok(connection)
}

/// A node made by hand: one QUIC endpoint with node `id`'s certificate
/// (mutual TLS, the cluster CA) that both dials and accepts, and speaks the
/// peer protocol (hello, frames) only when a test tells it to. It lets a
/// test decide the exact order of dials, hellos and closes.
pub struct RawPeer {
    pub id: NodeId,
    pub incarnation: u64,
    pub endpoint: quinn::Endpoint,
}

impl RawPeer {
    pub fn new(ca: &CertificateAuthority, id: NodeId, incarnation: u64) -> Self {
        Self::with_identity(&identity(ca, CLUSTER, id), id, incarnation)
    }

    /// A peer presenting `identity` (node `id`'s certificate).
    pub fn with_identity(identity: &TlsIdentity, id: NodeId, incarnation: u64) -> Self {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        for root in identity.roots() {
            roots.add(root.clone()).unwrap();
        }
        let roots = Arc::new(roots);
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            roots.clone(),
            provider.clone(),
        )
        .build()
        .unwrap();
        let mut server = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_client_cert_verifier(verifier)
            .with_single_cert(identity.chain().to_vec(), identity.key().clone_key())
            .unwrap();
        server.alpn_protocols = vec![PEER_ALPN.to_vec()];
        let server = quinn::crypto::rustls::QuicServerConfig::try_from(server).unwrap();
        let mut endpoint = quinn::Endpoint::server(
            quinn::ServerConfig::with_crypto(Arc::new(server)),
            loopback(),
        )
        .unwrap();
        let mut client = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_root_certificates(roots)
            .with_client_auth_cert(identity.chain().to_vec(), identity.key().clone_key())
            .unwrap();
        client.alpn_protocols = vec![PEER_ALPN.to_vec()];
        let client = quinn::crypto::rustls::QuicClientConfig::try_from(client).unwrap();
        endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(client)));
        Self {
            id,
            incarnation,
            endpoint,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.endpoint.local_addr().unwrap()
    }

    fn hello(&self) -> PeerHello {
        PeerHello {
            version: PROTOCOL_VERSION,
            cluster_id: CLUSTER.into(),
            node_id: self.id,
            incarnation: self.incarnation,
        }
    }

    /// Dials `node` and exchanges hellos; returns the connection, or why the
    /// node refused it.
    pub async fn dial(&self, node: &QuicTransport) -> Result<quinn::Connection, String> {
        let connection = connection_outcome(
            &self.endpoint,
            node.local_addr().unwrap(),
            &node_server_name(CLUSTER, node.node_id()),
        )
        .await?;
        let exchange = async {
            let (mut send, mut recv) = connection.open_bi().await.map_err(|e| e.to_string())?;
            send.write_all(&frame::encode(&self.hello(), MAX_HELLO_SIZE).unwrap())
                .await
                .map_err(|e| e.to_string())?;
            let _ = send.finish();
            match frame::read_value::<PeerHello, _>(&mut recv, MAX_HELLO_SIZE).await {
                Ok(Some(reply)) if reply.node_id == node.node_id() => Ok(()),
                Ok(other) => Err(format!("unexpected hello reply {other:?}")),
                Err(e) => Err(e.to_string()),
            }
        };
        match tokio::time::timeout(DEADLINE, exchange).await {
            Ok(Ok(())) => Ok(connection),
            Ok(Err(e)) => Err(match connection.close_reason() {
                Some(reason) => reason.to_string(),
                None => e,
            }),
            Err(_) => Err("no hello reply".into()),
        }
    }

    /// Accepts the next connection a node dials to this peer and answers
    /// its hello; `None` once the endpoint is closed.
    pub async fn accept(&self) -> Option<quinn::Connection> {
        loop {
            let incoming = self.endpoint.accept().await?;
            let Ok(connection) = incoming.await else {
                continue;
            };
            let answered = async {
                let (mut send, mut recv) = connection.accept_bi().await.ok()?;
                let hello = frame::read_value::<PeerHello, _>(&mut recv, MAX_HELLO_SIZE)
                    .await
                    .ok()??;
                assert_eq!(hello.cluster_id, CLUSTER);
                send.write_all(&frame::encode(&self.hello(), MAX_HELLO_SIZE).unwrap())
                    .await
                    .ok()?;
                let _ = send.finish();
                Some(())
            };
            if tokio::time::timeout(DEADLINE, answered)
                .await
                .ok()
                .flatten()
                .is_some()
            {
                return Some(connection);
            }
        }
    }
}

/// Writes `messages` as frames on a new stream of `connection` and returns
/// the stream (still open, for more).
pub async fn send_frames(
    connection: &quinn::Connection,
    messages: &[Message],
) -> Result<quinn::SendStream, String> {
    let mut send = connection.open_uni().await.map_err(|e| e.to_string())?;
    write_frames(&mut send, messages).await?;
    Ok(send)
}

pub async fn write_frames(
    send: &mut quinn::SendStream,
    messages: &[Message],
) -> Result<(), String> {
    let mut batch = bytes::BytesMut::new();
    for message in messages {
        frame::encode_into(message, 1 << 20, &mut batch).unwrap();
    }
    send.write_all(&batch).await.map_err(|e| e.to_string())
}

/// Reads the first message of the next stream the node opens on `connection`.
pub async fn recv_frame(connection: &quinn::Connection) -> Option<Message> {
    let mut recv = connection.accept_uni().await.ok()?;
    let payload = frame::read(&mut recv, 1 << 20).await.ok()??;
    frame::decode(&payload).ok()
}

/// Samples from its own thread, every few milliseconds, whether `node` has
/// an open connection to `peer`, and remembers the longest stretch without
/// one (from the last sample that saw a connection to the next that did),
/// counted from the first connection on. A thread of its own, not a task,
/// so a busy runtime cannot stretch what it measures.
pub struct LinkMonitor {
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<(Duration, usize)>>,
}

impl LinkMonitor {
    pub fn start(node: Arc<QuicTransport>, peer: NodeId) -> Self {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopping = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut last_connected: Option<Instant> = None;
            let mut down_since: Option<Instant> = None;
            let mut longest = Duration::ZERO;
            let mut gaps = 0;
            while !stopping.load(std::sync::atomic::Ordering::Relaxed) {
                let now = Instant::now();
                if node.connected_peers().contains(&peer) {
                    if let (Some(_), Some(since)) = (down_since.take(), last_connected) {
                        longest = longest.max(now - since);
                        gaps += 1;
                    }
                    last_connected = Some(now);
                } else if last_connected.is_some() && down_since.is_none() {
                    down_since = Some(now);
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            if let (Some(_), Some(since)) = (down_since, last_connected) {
                longest = longest.max(Instant::now() - since);
                gaps += 1;
            }
            (longest, gaps)
        });
        Self {
            stop,
            thread: Some(thread),
        }
    }

    /// Stops sampling; returns the longest stretch without a connection and
    /// how many stretches there were.
    pub fn finish(mut self) -> (Duration, usize) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.thread.take().unwrap().join().unwrap()
    }
}

/// Appends one request call frame (status 0) to `out`.
pub fn call_frame(out: &mut BytesMut, id: u64, body: &[u8]) {
    out.put_u32(12 + body.len() as u32);
    out.put_u64(id);
    out.put_u32(0);
    out.put_slice(body);
}

/// Reads call answers from a raw calls stream until `n` have arrived.
pub async fn read_answers(recv: &mut quinn::RecvStream, n: usize) -> Vec<(u64, u32, Bytes)> {
    let mut answers = Vec::new();
    let mut buf = BytesMut::new();
    while answers.len() < n {
        let chunk = recv.read_chunk(usize::MAX, true).await.unwrap().unwrap();
        buf.extend_from_slice(&chunk.bytes);
        while buf.len() >= 16 {
            let len = u32::from_be_bytes(buf[..4].try_into().unwrap()) as usize;
            if buf.len() < 4 + len {
                break;
            }
            let frame = buf.split_to(4 + len).freeze();
            let id = u64::from_be_bytes(frame[4..12].try_into().unwrap());
            let status = u32::from_be_bytes(frame[12..16].try_into().unwrap());
            answers.push((id, status, frame.slice(16..)));
        }
    }
    answers
}
