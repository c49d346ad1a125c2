//! How a node's transport behaves: identity, limits, timers, queues, and the
//! optional client handler and fault injector.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use quinn::{IdleTimeout, VarInt};
use raft_core::NodeId;

use crate::certs::validate_label;
use crate::client::ClientHandler;
use crate::deny::DenyList;
use crate::fault::FaultInjector;
use crate::frame::DEFAULT_MAX_FRAME_SIZE;

/// The configuration of a [`crate::QuicTransport`]. Build it with
/// [`TransportConfig::new`] and adjust the public fields.
#[derive(Clone)]
#[non_exhaustive]
pub struct TransportConfig {
    /// This node's id (non-zero). Its certificate must name it.
    pub node_id: NodeId,
    /// The cluster id: 1–63 characters of `a-z`, `0-9`, `-`. Peers of
    /// another cluster are refused at the handshake.
    pub cluster_id: String,
    /// The UDP address to listen on (`127.0.0.1:0` picks a free port).
    pub listen_addr: SocketAddr,
    /// The largest frame (encoded message) sent or accepted, in bytes. It
    /// must exceed raft-core's snapshot chunk size and AppendEntries byte
    /// budget. Default: [`DEFAULT_MAX_FRAME_SIZE`] (16 MiB).
    pub max_frame_size: usize,
    /// Per-peer queue of control messages (votes, heartbeats, TimeoutNow,
    /// ReadIndex, snapshot answers) awaiting the network. When it is full,
    /// `send` returns `TransportError::Unreachable`. Default 1024.
    pub control_queue: usize,
    /// Per-peer queue of AppendEntries and their answers. Default 1024.
    pub replication_queue: usize,
    /// Per-peer queue of snapshot chunks: small, so that a slow receiver
    /// pushes back on the sender quickly. Default 8.
    pub snapshot_queue: usize,
    /// Received messages waiting for [`raft_core::adapters::Transport::recv`],
    /// from all peers together. When it is full, the transport stops reading
    /// and QUIC flow control slows the senders down. `recv` serves the peers
    /// in turn (one FIFO per peer, round robin), so a peer that fills the
    /// queue delays another peer's message by a few messages, not by the
    /// whole queue. Default 4096.
    pub inbound_queue: usize,
    /// Received snapshot chunks allowed to wait in the inbound queue at
    /// once, across all peers; more stay in the network. Default 8.
    pub inbound_snapshot_chunks: usize,
    /// A connection that hears nothing (not even keep-alives) for this long
    /// is closed. Default 10 s.
    pub idle_timeout: Duration,
    /// How often an otherwise idle connection sends a keep-alive; must be
    /// below `idle_timeout`. Default 2 s.
    pub keep_alive_interval: Duration,
    /// Time allowed for the TLS handshake plus the peer hello. Default 5 s.
    pub handshake_timeout: Duration,
    /// The first reconnection delay after a failed dial (or after a
    /// connection that dropped within 2 s). It doubles on each failure up
    /// to `reconnect_max_backoff`; each delay is drawn at random between
    /// half of it and all of it (jitter). It starts again from this value
    /// once a connection to the peer (ours or the peer's) has carried a
    /// message. Default 100 ms.
    pub reconnect_initial_backoff: Duration,
    /// The longest reconnection delay. Default 5 s.
    pub reconnect_max_backoff: Duration,
    /// Bytes a peer may send on one stream ahead of our reading it; sized
    /// for a few snapshot chunks. A connection may have four times this
    /// unread in all. Default 8 MiB.
    pub stream_receive_window: u32,
    /// Bytes written but not yet acknowledged per connection, across all
    /// streams. At least twice `stream_receive_window` plus 1 MiB, so that
    /// the snapshot and replication streams can never use it all up and
    /// hold back control messages. Default 32 MiB.
    pub send_window: u64,
    /// Streams one client connection may have open at once: its calls
    /// stream and its subscriptions (watches). Default 256.
    pub max_client_streams: u32,
    /// Requests of one calls stream being answered at once; further
    /// requests wait in the client until some are answered (QUIC flow
    /// control holds them back). Default 1024.
    pub max_calls_in_flight: u32,
    /// Client connections one client identity may have open to this node
    /// at once: a client certificate's name (whatever its role), or a node
    /// id for a node certificate connecting as a client. One more is closed
    /// right after the handshake with
    /// [`crate::wire::CLOSE_TOO_MANY_CONNECTIONS`]. Default 128 (a
    /// benchmark opens up to 100 connections with one certificate).
    pub max_connections_per_client: u32,
    /// Bytes of client requests one client identity may have in the node
    /// at once, over all its connections and streams: a request counts from
    /// the moment its length is read (before its body is buffered) until
    /// its answer is handed to the stream (or, for a subscription, until
    /// the handler has taken it). While the budget is used up, that
    /// identity's streams stop reading and QUIC flow control holds its
    /// requests back in the client; nothing is dropped, and other
    /// identities are not affected. At least `max_frame_size`.
    /// Default 64 MiB.
    pub max_client_request_bytes: usize,
    /// Time a client request frame has, once its length has been read, to
    /// arrive completely (time the node is not reading that stream, e.g.
    /// while the budget above is used up, does not count). A subscription
    /// request's length must also arrive within this time of its stream
    /// opening. Otherwise the stream is reset with
    /// [`crate::wire::STREAM_TOO_SLOW`] and its budget released. A calls
    /// stream idle between requests has no deadline. Default 30 s.
    pub client_request_timeout: Duration,
    /// Connection-level receive window of client connections: the bytes a
    /// client may have sent that the node has not read yet, over all its
    /// streams (peers get four times `stream_receive_window`). Default
    /// 4 MiB.
    pub client_receive_window: u32,
    /// Certificates refused on every path (incoming peer and client
    /// connections, peers we dial), by SHA-256 fingerprint. Keep a clone to
    /// replace the set while the node runs: open connections it now denies
    /// are closed. Default `None` (nothing denied).
    pub deny_list: Option<DenyList>,
    /// The service that answers clients on ALPN `raft-client/2`. Without
    /// one, client connections are refused.
    pub client_handler: Option<Arc<dyn ClientHandler>>,
    /// Fault injection for tests; `None` (the default) disables it
    /// entirely.
    pub fault_injector: Option<FaultInjector>,
}

impl std::fmt::Debug for TransportConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TransportConfig")
            .field("node_id", &self.node_id)
            .field("cluster_id", &self.cluster_id)
            .field("listen_addr", &self.listen_addr)
            .field("max_frame_size", &self.max_frame_size)
            .field("control_queue", &self.control_queue)
            .field("replication_queue", &self.replication_queue)
            .field("snapshot_queue", &self.snapshot_queue)
            .field("inbound_queue", &self.inbound_queue)
            .field("idle_timeout", &self.idle_timeout)
            .field("keep_alive_interval", &self.keep_alive_interval)
            .field("client_handler", &self.client_handler.is_some())
            .field("max_client_streams", &self.max_client_streams)
            .field("max_calls_in_flight", &self.max_calls_in_flight)
            .field(
                "max_connections_per_client",
                &self.max_connections_per_client,
            )
            .field("max_client_request_bytes", &self.max_client_request_bytes)
            .field("client_request_timeout", &self.client_request_timeout)
            .field("client_receive_window", &self.client_receive_window)
            .field("deny_list", &self.deny_list)
            .field("fault_injector", &self.fault_injector.is_some())
            .finish_non_exhaustive()
    }
}

impl TransportConfig {
    /// A configuration with the defaults documented on each field.
    pub fn new(node_id: NodeId, cluster_id: impl Into<String>, listen_addr: SocketAddr) -> Self {
        Self {
            node_id,
            cluster_id: cluster_id.into(),
            listen_addr,
            max_frame_size: DEFAULT_MAX_FRAME_SIZE,
            control_queue: 1024,
            replication_queue: 1024,
            snapshot_queue: 8,
            inbound_queue: 4096,
            inbound_snapshot_chunks: 8,
            idle_timeout: Duration::from_secs(10),
            keep_alive_interval: Duration::from_secs(2),
            handshake_timeout: Duration::from_secs(5),
            reconnect_initial_backoff: Duration::from_millis(100),
            reconnect_max_backoff: Duration::from_secs(5),
            stream_receive_window: 8 << 20,
            send_window: 32 << 20,
            max_client_streams: 256,
            max_calls_in_flight: 1024,
            max_connections_per_client: 128,
            max_client_request_bytes: 64 << 20,
            client_request_timeout: Duration::from_secs(30),
            client_receive_window: 4 << 20,
            deny_list: None,
            client_handler: None,
            fault_injector: None,
        }
    }

    /// Checks the values; [`crate::QuicTransport::start`] calls it.
    pub fn validate(&self) -> Result<(), String> {
        if self.node_id == 0 {
            return Err("node_id must not be 0".into());
        }
        validate_label("cluster id", &self.cluster_id).map_err(|e| e.to_string())?;
        if self.max_frame_size < 1024 || u32::try_from(self.max_frame_size).is_err() {
            return Err(format!(
                "max_frame_size must be between 1 KiB and 4 GiB, not {}",
                self.max_frame_size
            ));
        }
        for (name, value) in [
            ("control_queue", self.control_queue),
            ("replication_queue", self.replication_queue),
            ("snapshot_queue", self.snapshot_queue),
            ("inbound_queue", self.inbound_queue),
            ("inbound_snapshot_chunks", self.inbound_snapshot_chunks),
        ] {
            if value == 0 {
                return Err(format!("{name} must be at least 1"));
            }
        }
        if self.keep_alive_interval.is_zero() || self.keep_alive_interval >= self.idle_timeout {
            return Err(format!(
                "keep_alive_interval ({:?}) must be above zero and below idle_timeout ({:?})",
                self.keep_alive_interval, self.idle_timeout
            ));
        }
        IdleTimeout::try_from(self.idle_timeout)
            .map_err(|_| "idle_timeout is too long".to_owned())?;
        if self.reconnect_initial_backoff.is_zero()
            || self.reconnect_initial_backoff > self.reconnect_max_backoff
        {
            return Err(
                "reconnect_initial_backoff must be above zero and at most reconnect_max_backoff"
                    .into(),
            );
        }
        if self.handshake_timeout.is_zero() {
            return Err("handshake_timeout must be above zero".into());
        }
        if (self.stream_receive_window as usize) < self.max_frame_size.min(1 << 20) {
            return Err(
                "stream_receive_window must hold at least one snapshot chunk (1 MiB)".into(),
            );
        }
        // Each stream buffers at most what the peer's stream window allows;
        // the send window must hold the snapshot and replication streams'
        // share and still leave room, so control writes never block on it.
        let streams = 2 * u64::from(self.stream_receive_window);
        if self.send_window < streams + (1 << 20) {
            return Err(format!(
                "send_window ({}) must be at least twice stream_receive_window plus 1 MiB ({})",
                self.send_window,
                streams + (1 << 20)
            ));
        }
        if self.max_connections_per_client == 0 {
            return Err("max_connections_per_client must be at least 1".into());
        }
        if self.max_client_request_bytes < self.max_frame_size {
            return Err(format!(
                "max_client_request_bytes ({}) must be at least max_frame_size ({}), so that \
                 the largest request fits",
                self.max_client_request_bytes, self.max_frame_size
            ));
        }
        if self.client_request_timeout.is_zero() {
            return Err("client_request_timeout must be above zero".into());
        }
        if self.client_receive_window < 64 * 1024 {
            return Err("client_receive_window must be at least 64 KiB".into());
        }
        Ok(())
    }

    /// The connection receive window of peer connections: room for a
    /// stalled snapshot stream plus everything else, so that a snapshot held
    /// back never starves the control stream.
    pub(crate) fn peer_receive_window(&self) -> VarInt {
        VarInt::from_u64(u64::from(self.stream_receive_window) * 4).unwrap_or(VarInt::MAX)
    }

    /// The connection receive window of client connections.
    pub(crate) fn client_receive_window(&self) -> VarInt {
        VarInt::from_u32(self.client_receive_window)
    }

    /// QUIC transport parameters for this node's connections, with
    /// `receive_window` as the connection receive window announced in the
    /// handshake.
    pub(crate) fn quinn_transport(&self, receive_window: VarInt) -> quinn::TransportConfig {
        let mut transport = quinn::TransportConfig::default();
        transport
            .max_idle_timeout(IdleTimeout::try_from(self.idle_timeout).ok())
            .keep_alive_interval(Some(self.keep_alive_interval))
            .stream_receive_window(VarInt::from_u32(self.stream_receive_window))
            .receive_window(receive_window)
            .send_window(self.send_window)
            .max_concurrent_bidi_streams(VarInt::from_u32(self.max_client_streams.max(1)))
            .max_concurrent_uni_streams(VarInt::from_u32(16));
        transport
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_bad_values_are_explained() {
        let addr: SocketAddr = "127.0.0.1:0".parse().unwrap();
        assert_eq!(TransportConfig::new(1, "main", addr).validate(), Ok(()));
        type Spoil = fn(&mut TransportConfig);
        let bad: [(&str, Spoil); 10] = [
            ("node_id", |c| c.node_id = 0),
            ("cluster id", |c| c.cluster_id = "Main".into()),
            ("keep_alive_interval", |c| {
                c.keep_alive_interval = c.idle_timeout
            }),
            ("control_queue", |c| c.control_queue = 0),
            ("max_frame_size", |c| c.max_frame_size = 10),
            ("send_window", |c| c.send_window = 1 << 20),
            ("max_connections_per_client", |c| {
                c.max_connections_per_client = 0
            }),
            ("max_client_request_bytes", |c| {
                c.max_client_request_bytes = c.max_frame_size - 1
            }),
            ("client_request_timeout", |c| {
                c.client_request_timeout = Duration::ZERO
            }),
            ("client_receive_window", |c| c.client_receive_window = 1024),
        ];
        for (field, spoil) in bad {
            let mut config = TransportConfig::new(1, "main", addr);
            spoil(&mut config);
            let error = config.validate().unwrap_err();
            assert!(error.contains(field), "{field}: {error}");
        }
    }
}
