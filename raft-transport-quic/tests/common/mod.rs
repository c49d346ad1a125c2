//! Helpers shared by the loopback tests: certificates, nodes with short
//! timers, message builders, and raw QUIC connections for hostile clients.
#![allow(dead_code, unreachable_pub)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use raft_core::adapters::{Transport, TransportError};
use raft_core::{
    AppendRequest, Entry, EntryPayload, Heartbeat, LogId, Message, MessageBody, NodeId,
};
use raft_transport_quic::{CertificateAuthority, QuicTransport, TlsIdentity, TransportConfig};

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
