//! The protocol on the wire, for other implementations and for tests: ALPN
//! names, the peer hello, and the application error codes used to close
//! connections and streams.
//!
//! A peer connection (ALPN [`PEER_ALPN`]) starts with one bidirectional
//! stream opened by the dialer: it sends a [`PeerHello`] frame and finishes;
//! the acceptor checks it and answers with its own [`PeerHello`], or closes
//! the connection with one of the `CLOSE_*` codes and a reason. After that,
//! each side opens unidirectional streams to carry its [`raft_core::Message`]s,
//! one postcard frame each (see [`crate::frame`]): one stream for control
//! traffic, one for replication, one for snapshot chunks.
//!
//! A client connection (ALPN [`CLIENT_ALPN`]) carries bidirectional streams
//! the client opens, each starting with one byte of kind:
//! - [`STREAM_KIND_CALLS`]: many requests and their responses, in call
//!   frames tagged with a call id (see [`crate::calls`]); the client keeps
//!   one such stream per connection open for as long as it is used;
//! - [`STREAM_KIND_SUBSCRIBE`]: one request frame; the server answers with a
//!   sequence of frames (a server-push stream, e.g. a watch) and finishes;
//!   the client cancels by stopping the stream.

use raft_core::NodeId;
use serde::{Deserialize, Serialize};

/// ALPN of node-to-node (Raft) traffic, version 1.
pub const PEER_ALPN: &[u8] = b"raft-peer/1";
/// ALPN of client-to-node traffic, version 2 (version 1 had one stream per
/// request).
pub const CLIENT_ALPN: &[u8] = b"raft-client/2";
/// The peer protocol version carried in [`PeerHello::version`].
pub const PROTOCOL_VERSION: u32 = 1;
/// The largest hello frame accepted.
pub const MAX_HELLO_SIZE: usize = 1024;

/// The first frame each side of a peer connection sends.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerHello {
    /// [`PROTOCOL_VERSION`] of the sender.
    pub version: u32,
    /// The cluster the sender belongs to.
    pub cluster_id: String,
    /// The sender's node id; its certificate must name it.
    pub node_id: NodeId,
    /// When the sender's transport started: milliseconds since the Unix
    /// epoch in the high 44 bits, a random tiebreak in the low 20 bits (and,
    /// within one process, always above the previous start's value).
    /// Incarnations of one node id order its processes: a higher one tells
    /// the other side the node restarted, so connections to lower ones are
    /// closed at once ([`CLOSE_REPLACED`]) instead of idling out; a lower
    /// one, while a connection from a higher one is open, comes from a stale
    /// process and is refused ([`CLOSE_STALE_INCARNATION`]).
    pub incarnation: u64,
}

/// Connection close code: the endpoint is shutting down.
pub const CLOSE_SHUTDOWN: u32 = 0;
/// Connection close code: the peer speaks another protocol version.
pub const CLOSE_VERSION_MISMATCH: u32 = 1;
/// Connection close code: the peer belongs to another cluster.
pub const CLOSE_CLUSTER_MISMATCH: u32 = 2;
/// Connection close code: the peer's certificate does not name the node it
/// claims to be (or it claims to be this node).
pub const CLOSE_IDENTITY_MISMATCH: u32 = 3;
/// Connection close code: the hello was missing, malformed or late.
pub const CLOSE_HANDSHAKE_FAILED: u32 = 4;
/// Connection close code: no service for this ALPN (or no ALPN at all).
pub const CLOSE_NO_SERVICE: u32 = 5;
/// Connection close code: another connection to the same peer replaces this one.
pub const CLOSE_REPLACED: u32 = 6;
/// Connection close code: the peer is no longer a member.
pub const CLOSE_REMOVED: u32 = 7;
/// Connection close code: another process of the same node id, with a
/// higher [`PeerHello::incarnation`] (started later), is connected; this
/// process is stale.
pub const CLOSE_STALE_INCARNATION: u32 = 8;
/// Connection close code: the client identity (the name its certificate
/// carries, or the node id) already has
/// [`crate::TransportConfig::max_connections_per_client`] connections open
/// to this node. The reason tells the user to close some connections or
/// use another client certificate.
pub const CLOSE_TOO_MANY_CONNECTIONS: u32 = 9;
/// Connection close code: the certificate presented is on the node's deny
/// list (revoked; see [`crate::DenyList`]). Used for refused connections,
/// peers we refuse to talk to after dialing them, and open connections
/// closed when the list is replaced.
pub const CLOSE_DENIED: u32 = 10;

/// Stream error code: a frame was malformed, truncated or oversized.
pub const STREAM_BAD_FRAME: u32 = 1;
/// Stream error code: the request handler failed (it panicked, or its
/// response could not be framed).
pub const STREAM_HANDLER_FAILED: u32 = 2;
/// Call status: the handler answered a call with a server-push stream that
/// ended before its first item.
pub const CALL_NO_RESPONSE: u32 = 3;
/// Stream error code: a request frame that had started (its length was
/// read) did not arrive completely within
/// [`crate::TransportConfig::client_request_timeout`]; the stream is reset
/// (on a calls stream, with every call still on it).
pub const STREAM_TOO_SLOW: u32 = 4;

/// First byte of a client stream carrying multiplexed calls.
pub const STREAM_KIND_CALLS: u8 = 1;
/// First byte of a client stream carrying one request and the frames pushed
/// in answer.
pub const STREAM_KIND_SUBSCRIBE: u8 = 2;
