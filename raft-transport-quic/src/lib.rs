#![doc = include_str!("../README.md")]
#![warn(missing_docs, unreachable_pub)]

//! # Layout
//!
//! - [`QuicTransport`] (`transport`): the node's one QUIC endpoint; it
//!   implements [`raft_core::adapters::Transport`] and sorts incoming
//!   connections by ALPN.
//! - `inbound`: the queue of received messages behind `recv`, one FIFO per
//!   peer served in turn, with one bound on the total.
//! - `peer`: per-peer links: one connection per pair, three send lanes
//!   (control, replication, snapshot), dialing with backoff and jitter,
//!   readers of incoming streams.
//! - [`client`]: the [`ClientHandler`] hook, server-push streams, and the
//!   [`ClientConnector`] that clients use.
//! - [`caller`]: who is on the other end of a client connection ([`Caller`]:
//!   a node, or a client with a [`Role`]), read from its certificate.
//! - [`certs`]: cluster CA, node and client certificates (rcgen), PEM files,
//!   [`TlsIdentity`]. `tls`: the rustls/quinn configurations (mutual TLS,
//!   no way to skip verification).
//! - [`deny`]: the [`DenyList`] of revoked certificates (SHA-256
//!   fingerprints), checked on every connection.
//! - `limits`: per client identity, its open connections and the bytes of
//!   its requests in the node.
//! - [`frame`]: length-prefixed postcard frames with a maximum size.
//! - [`wire`]: ALPN names, the peer hello, error codes.
//! - [`fault`]: [`FaultInjector`] for tests (off unless configured).

pub mod caller;
pub mod calls;
pub mod certs;
pub mod client;
mod config;
pub mod deny;
pub mod fault;
pub mod frame;
mod inbound;
mod limits;
mod peer;
mod ports;
mod tls;
mod transport;
pub mod wire;

pub use caller::{Caller, Role, UnknownRole, role_name};
pub use certs::{
    CertError, CertificateAuthority, IssuedCert, TlsIdentity, client_server_name, node_server_name,
};
pub use client::{
    ClientConnection, ClientConnector, ClientError, ClientHandler, ClientOptions, ClientRequest,
    PushClosed, PushReceiver, PushSender, PushStream, Response, push_channel,
};
pub use config::TransportConfig;
pub use deny::{BadFingerprint, DenyList, DenyListError, Fingerprint, certificate_fingerprint};
pub use fault::{Fault, FaultInjector, FaultRule};
pub use frame::FrameError;
pub use ports::free_loopback_port;
pub use transport::{QuicTransport, StartError, TransportStats};
