//! Peer links: per peer, the connection(s), the dialer with backoff, the
//! three send lanes, and the readers of incoming streams.
//!
//! **Lanes.** Each peer has three bounded queues, each drained by its own
//! task onto its own long-lived QUIC stream: *control* (votes, heartbeats,
//! TimeoutNow, ReadIndex, snapshot answers; highest priority), *replication*
//! (AppendEntries and answers, in order, so pipelining works) and *snapshot*
//! (chunks; lowest priority). Streams are independent in QUIC, so a snapshot
//! held back by flow control never delays a heartbeat. A full queue makes
//! `send` return `Unreachable` right away; nothing waits or is dropped
//! silently.
//!
//! **One connection per pair.** Either node may dial (a new node may not
//! know its leader's address yet), and both use whichever connection
//! exists, for both directions. When both dialed, the connection dialed by
//! the lower node id is canonical: the higher node closes its own after a
//! short grace period, if the canonical one is still open then (otherwise
//! it keeps its own and waits for the next canonical one).
//!
//! **Incarnations.** A hello carries the sender's *incarnation*, which
//! orders its starts (start time, then a random tiebreak; see
//! [`new_incarnation`]). A connection from a higher incarnation of a peer
//! replaces the connections of lower ones at once (the peer restarted); a
//! connection from a lower incarnation is refused with
//! `CLOSE_STALE_INCARNATION` while one from a higher incarnation is open
//! (an old process of that node id, draining or resumed after a pause, is
//! still about). So the newest process wins whatever the order in which
//! their connections arrive, and the pair does not flap between them.
//!
//! **No duplicates.** A message is written once, to one stream. If the
//! write fails, it is lost (Raft resends), never retried, so a peer restart
//! cannot make a message reach the core twice.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use raft_core::adapters::TransportError;
use raft_core::{Message, NodeId};
use tokio::sync::{mpsc, watch};
use tracing::{debug, info, warn};

use crate::deny::{self, Check};
use crate::frame::{self, FrameError};
use crate::tls;
use crate::transport::{Cancel, Counters, Inner};
use crate::wire::{
    CLOSE_CLUSTER_MISMATCH, CLOSE_HANDSHAKE_FAILED, CLOSE_IDENTITY_MISMATCH, CLOSE_REMOVED,
    CLOSE_REPLACED, CLOSE_STALE_INCARNATION, CLOSE_VERSION_MISMATCH, MAX_HELLO_SIZE, PEER_ALPN,
    PROTOCOL_VERSION, PeerHello, STREAM_BAD_FRAME,
};

/// A connection that lived this long counts as stable: the next dial after
/// it drops starts again from the initial backoff, at once. (A shorter one
/// that carried a message from the peer also resets the backoff, but the
/// next dial still waits the initial delay.)
const STABLE_CONNECTION: Duration = Duration::from_secs(2);
/// How long the higher node keeps its own (redundant) connection open after
/// the canonical one appears, so that in-flight messages drain.
const REDUNDANT_GRACE: Duration = Duration::from_millis(500);
/// A lane writes at most this many bytes of queued messages at once.
const LANE_BATCH_BYTES: usize = 256 * 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Lane {
    Control = 0,
    Replication = 1,
    Snapshot = 2,
}

impl Lane {
    const ALL: [Lane; 3] = [Lane::Control, Lane::Replication, Lane::Snapshot];

    fn of(message: &Message) -> Lane {
        let kind = message.kind();
        if kind.is_snapshot() {
            Lane::Snapshot
        } else if kind.is_replication() {
            Lane::Replication
        } else {
            Lane::Control
        }
    }

    /// QUIC stream priority: buffered data of higher priority goes first.
    fn priority(self) -> i32 {
        match self {
            Lane::Control => 2,
            Lane::Replication => 1,
            Lane::Snapshot => 0,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Lane::Control => "control",
            Lane::Replication => "replication",
            Lane::Snapshot => "snapshot",
        }
    }
}

/// One open connection to a peer.
#[derive(Clone)]
struct PeerConnection {
    id: u64,
    connection: quinn::Connection,
    dialed_by_us: bool,
    incarnation: u64,
}

/// Everything about one peer.
pub(crate) struct PeerLink {
    peer: NodeId,
    local: NodeId,
    lanes: [mpsc::Sender<Message>; 3],
    /// Where to dial the peer; `None` when unknown (we may still have a
    /// connection it opened).
    address: watch::Sender<Option<String>>,
    connections: watch::Sender<Vec<PeerConnection>>,
    /// Stops this link's tasks when the peer is removed.
    removed: watch::Sender<bool>,
    /// Messages received from the peer, over any connection: traffic that
    /// proves the pair works, which resets the dialer's backoff.
    received: AtomicU64,
}

impl PeerLink {
    pub(crate) fn peer(&self) -> NodeId {
        self.peer
    }

    /// Whether any connection to the peer is open.
    pub(crate) fn is_connected(&self) -> bool {
        self.connections
            .borrow()
            .iter()
            .any(|c| c.connection.close_reason().is_none())
    }

    /// QUIC's smoothed round-trip time on the connection messages to the
    /// peer use, if one is open.
    pub(crate) fn rtt(&self) -> Option<std::time::Duration> {
        self.preferred(&self.connections.borrow())
            .map(|c| c.connection.rtt())
    }

    /// Whether messages to the peer can go anywhere: an address to dial or
    /// an open connection.
    pub(crate) fn is_known(&self) -> bool {
        self.address.borrow().is_some() || !self.connections.borrow().is_empty()
    }

    /// Queues `message` on its lane without waiting.
    pub(crate) fn enqueue(
        &self,
        message: Message,
        counters: &Counters,
    ) -> Result<(), TransportError> {
        let lane = Lane::of(&message);
        match self.lanes[lane as usize].try_send(message) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(_)) => {
                Counters::add(&counters.send_queue_full, 1);
                Err(TransportError::Unreachable(self.peer))
            }
            Err(mpsc::error::TrySendError::Closed(_)) => Err(TransportError::Closed),
        }
    }

    /// The connection lanes should write to: the canonical one (dialed by
    /// the lower node id) if open, else the newest open one.
    fn preferred(&self, connections: &[PeerConnection]) -> Option<PeerConnection> {
        let canonical_dialer_is_us = self.local < self.peer;
        connections
            .iter()
            .filter(|c| c.connection.close_reason().is_none())
            .max_by_key(|c| (c.dialed_by_us == canonical_dialer_is_us, c.id))
            .cloned()
    }

    /// Whether this node should dial: the lower id dials unless it already
    /// has its own connection; the higher id dials only when there is no
    /// connection at all.
    fn needs_dial(&self, connections: &[PeerConnection]) -> bool {
        let open = |c: &&PeerConnection| c.connection.close_reason().is_none();
        if self.local < self.peer {
            !connections.iter().filter(open).any(|c| c.dialed_by_us)
        } else {
            !connections.iter().any(|c| open(&c))
        }
    }

    fn removed(&self) -> Cancel {
        Cancel::from(self.removed.subscribe())
    }

    /// The newest incarnation of the peer above `incarnation` that has an
    /// open connection, if any: a connection from `incarnation` comes from
    /// a stale process and is refused.
    fn newer_incarnation(&self, incarnation: u64) -> Option<u64> {
        newer_incarnation(&self.connections.borrow(), incarnation)
    }
}

fn newer_incarnation(connections: &[PeerConnection], incarnation: u64) -> Option<u64> {
    connections
        .iter()
        .filter(|c| c.incarnation > incarnation && c.connection.close_reason().is_none())
        .map(|c| c.incarnation)
        .max()
}

/// Why a connection from `incarnation` of `peer` is refused while one from
/// its `newer` incarnation is open (the close reason and the log line).
fn stale_reason(local: NodeId, peer: NodeId, incarnation: u64, newer: u64) -> String {
    let started = |incarnation: u64| (incarnation >> INCARNATION_TIEBREAK_BITS) as f64 / 1000.0;
    format!(
        "node {local} is connected to a newer process of node {peer} (incarnation {newer}, \
         started {:.3} s later) than this one (incarnation {incarnation}), which is stale: stop \
         it. If it is the only process of node {peer}, its clock stepped back; it is accepted \
         once the newer connection closes",
        started(newer) - started(incarnation)
    )
}

/// Random low bits of an incarnation, below the start time in milliseconds.
const INCARNATION_TIEBREAK_BITS: u32 = 20;

/// The incarnation of a transport starting now: milliseconds since the Unix
/// epoch in the high 44 bits (enough until the year 2527), a random
/// tiebreak in the low 20 bits, so that two processes of one node id order
/// by start time and, in the same millisecond, still differ. Within one
/// process each value is above the previous one even if the clock stepped
/// back. Across processes a clock that stepped back between two starts
/// makes the newer process look older: peers then refuse it only while a
/// connection from the older process is still open (at most the idle
/// timeout, if that process died without closing it).
pub(crate) fn new_incarnation() -> u64 {
    static LAST: AtomicU64 = AtomicU64::new(0);
    let millis = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|since| u64::try_from(since.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
        .min(u64::MAX >> INCARNATION_TIEBREAK_BITS);
    let drawn = (millis << INCARNATION_TIEBREAK_BITS)
        | rand::random_range(0..1 << INCARNATION_TIEBREAK_BITS);
    let previous = LAST
        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |last| {
            Some(drawn.max(last.saturating_add(1)))
        })
        .unwrap_or(0);
    drawn.max(previous.saturating_add(1))
}

/// The link to `peer`, created (with its tasks) if needed.
pub(crate) fn link(inner: &Arc<Inner>, peer: NodeId) -> Arc<PeerLink> {
    let mut links = inner.links();
    if let Some(link) = links.get(&peer) {
        return link.clone();
    }
    let mut receivers = Vec::new();
    let lanes = Lane::ALL.map(|lane| {
        let capacity = match lane {
            Lane::Control => inner.config.control_queue,
            Lane::Replication => inner.config.replication_queue,
            Lane::Snapshot => inner.config.snapshot_queue,
        };
        let (tx, rx) = mpsc::channel(capacity);
        receivers.push((lane, rx));
        tx
    });
    let link = Arc::new(PeerLink {
        peer,
        local: inner.local(),
        lanes,
        address: watch::channel(None).0,
        connections: watch::channel(Vec::new()).0,
        removed: watch::channel(false).0,
        received: AtomicU64::new(0),
    });
    links.insert(peer, link.clone());
    drop(links);
    for (lane, rx) in receivers {
        let removed = link.removed();
        inner.spawn(until(
            removed,
            run_lane(inner.clone(), link.clone(), lane, rx),
        ));
    }
    inner.spawn(until(
        link.removed(),
        run_dialer(inner.clone(), link.clone()),
    ));
    link
}

async fn until(mut cancel: Cancel, fut: impl std::future::Future<Output = ()>) {
    tokio::select! {
        _ = cancel.cancelled() => {}
        _ = fut => {}
    }
}

/// Applies a new member list: sets addresses, forgets removed peers.
pub(crate) fn update_peers(inner: &Arc<Inner>, peers: &BTreeMap<NodeId, String>) {
    for (&peer, address) in peers {
        if peer == inner.local() || peer == 0 {
            continue;
        }
        let link = link(inner, peer);
        link.address.send_if_modified(|current| {
            if current.as_deref() == Some(address.as_str()) {
                return false;
            }
            info!(node = inner.local(), peer, %address, "peer address set");
            *current = Some(address.clone());
            true
        });
    }
    let mut links = inner.links();
    links.retain(|peer, link| {
        if peers.contains_key(peer) {
            return true;
        }
        link.address.send_replace(None);
        // Close what we dialed; keep what the peer dialed while it lasts (a
        // node that is no longer a member may still need to hear of its
        // removal). Forget the link once nothing is left.
        for c in link.connections.borrow().iter().filter(|c| c.dialed_by_us) {
            c.connection
                .close(CLOSE_REMOVED.into(), b"no longer a member");
        }
        let keep = link.connections.borrow().iter().any(|c| !c.dialed_by_us);
        if !keep {
            info!(node = inner.local(), peer, "peer removed");
            link.removed.send_replace(true);
        }
        keep
    });
}

/// Shuts removed nodes out: their connections are closed, new ones refused
/// at the hello, and anything they still send is dropped.
pub(crate) fn shut_out(inner: &Arc<Inner>, removed: &BTreeSet<NodeId>) {
    for peer in inner.set_removed(removed) {
        let Some(link) = inner.links().remove(&peer) else {
            continue;
        };
        link.address.send_replace(None);
        for c in link.connections.borrow().iter() {
            c.connection
                .close(CLOSE_REMOVED.into(), b"removed from the cluster");
        }
        link.removed.send_replace(true);
        info!(
            node = inner.local(),
            peer, "peer removed from the cluster: shut out"
        );
    }
}

/// Keeps a connection to the peer when this node should dial, with
/// exponential backoff and jitter between failed attempts.
async fn run_dialer(inner: Arc<Inner>, link: Arc<PeerLink>) {
    let mut address_rx = link.address.subscribe();
    let mut connections_rx = link.connections.subscribe();
    let mut backoff = Backoff::new(
        inner.config.reconnect_initial_backoff,
        inner.config.reconnect_max_backoff,
    );
    let mut established: Option<Instant> = None;
    let mut received_at_dial = link.received.load(Ordering::Relaxed);
    loop {
        let address = loop {
            let address = address_rx.borrow_and_update().clone();
            let needed = link.needs_dial(&connections_rx.borrow_and_update());
            if let (Some(address), true) = (address, needed) {
                break address;
            }
            tokio::select! {
                changed = address_rx.changed() => if changed.is_err() { return },
                changed = connections_rx.changed() => if changed.is_err() { return },
                // Closed connections stay listed until their task removes
                // them; poll in case one died without a list change.
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        };
        // A connection of the pair (ours or the peer's) carried messages
        // since our last dial: the pair works, whatever closed it since (a
        // redundant close, a lost path), so start again from the initial
        // delay rather than doubling it.
        let received = link.received.load(Ordering::Relaxed);
        if received != received_at_dial {
            backoff.reset();
        }
        if let Some(since) = established.take() {
            if since.elapsed() >= STABLE_CONNECTION {
                backoff.reset();
            } else {
                // It dropped soon after connecting: do not hammer the peer.
                tokio::time::sleep(backoff.next_delay()).await;
            }
        }
        received_at_dial = link.received.load(Ordering::Relaxed);
        let dialed = match dial(&inner, link.peer, &address).await {
            Ok((connection, incarnation)) => adopt(&inner, &link, connection, true, incarnation)
                .map_err(|reason| {
                    format!("the process answering at this address is stale ({reason})")
                }),
            Err(reason) => Err(reason),
        };
        match dialed {
            Ok(()) => established = Some(Instant::now()),
            Err(reason) => {
                let delay = backoff.next_delay();
                if backoff.failures == 1 || backoff.failures.is_power_of_two() {
                    warn!(
                        node = inner.local(),
                        peer = link.peer,
                        %address,
                        failures = backoff.failures,
                        "cannot connect to peer: {reason}; retrying in {delay:?}"
                    );
                } else {
                    debug!(node = inner.local(), peer = link.peer, %address, "cannot connect to peer: {reason}");
                }
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    changed = address_rx.changed() => {
                        if changed.is_err() { return }
                        backoff.reset();
                    }
                }
            }
        }
    }
}

/// Exponential backoff with "equal jitter": each delay is uniform in
/// `[d/2, d]` where `d` doubles per failure up to the maximum.
struct Backoff {
    initial: Duration,
    max: Duration,
    current: Duration,
    failures: u32,
}

impl Backoff {
    fn new(initial: Duration, max: Duration) -> Self {
        Self {
            initial,
            max,
            current: initial,
            failures: 0,
        }
    }

    fn reset(&mut self) {
        self.current = self.initial;
        self.failures = 0;
    }

    fn next_delay(&mut self) -> Duration {
        self.failures = self.failures.saturating_add(1);
        let ceiling = self.current;
        self.current = (self.current * 2).min(self.max);
        let half = ceiling / 2;
        let jitter = rand::random_range(0..=half.as_micros().min(u64::MAX as u128) as u64);
        half + Duration::from_micros(jitter)
    }
}

/// Dials `peer` at `address` and exchanges hellos. Returns the connection
/// and the peer's incarnation, or why it failed.
async fn dial(
    inner: &Arc<Inner>,
    peer: NodeId,
    address: &str,
) -> Result<(quinn::Connection, u64), String> {
    let addr = resolve(address).await?;
    let server_name = crate::certs::node_server_name(&inner.config.cluster_id, peer);
    let connecting = inner
        .endpoint
        .connect_with(inner.peer_client_config.clone(), addr, &server_name)
        .map_err(|e| format!("cannot start connecting to {addr}: {e}"))?;
    let timeout = inner.config.handshake_timeout;
    let connection = match tokio::time::timeout(timeout, connecting).await {
        Ok(Ok(connection)) => connection,
        Ok(Err(e)) => return Err(explain_connection_error(&e, inner, peer)),
        Err(_) => {
            return Err(format!(
                "no handshake within {timeout:?}; is the node up at {addr}?"
            ));
        }
    };
    // A revoked peer gets not even our hello; the dialer backs off.
    if deny::refuse_if_denied(inner, &connection, Check::Dialed) {
        return Err(format!(
            "the certificate of the node at {addr} is on the deny list"
        ));
    }
    if tls::negotiated_alpn(&connection).as_deref() != Some(PEER_ALPN) {
        connection.close(
            CLOSE_HANDSHAKE_FAILED.into(),
            b"ALPN raft-peer/1 not negotiated",
        );
        return Err("the server did not agree on ALPN raft-peer/1".into());
    }
    let hello = PeerHello {
        version: PROTOCOL_VERSION,
        cluster_id: inner.config.cluster_id.clone(),
        node_id: inner.local(),
        incarnation: inner.incarnation,
    };
    let exchange = async {
        let (mut send, mut recv) = connection
            .open_bi()
            .await
            .map_err(|e| explain_connection_error(&e, inner, peer))?;
        let frame = frame::encode(&hello, MAX_HELLO_SIZE).map_err(|e| e.to_string())?;
        send.write_all(&frame)
            .await
            .map_err(|e| format!("sending the hello failed: {e}"))?;
        let _ = send.finish();
        match frame::read_value::<PeerHello, _>(&mut recv, MAX_HELLO_SIZE).await {
            Ok(Some(reply)) => Ok(reply),
            Ok(None) => Err("the peer closed the handshake stream without a hello".to_owned()),
            Err(FrameError::Io(e)) => Err(match connection.close_reason() {
                Some(reason) => explain_connection_error(&reason, inner, peer),
                None => format!("reading the peer's hello failed: {e}"),
            }),
            Err(e) => Err(format!("the peer's hello is invalid: {e}")),
        }
    };
    let reply = match tokio::time::timeout(timeout, exchange).await {
        Ok(Ok(reply)) => reply,
        Ok(Err(reason)) => {
            connection.close(CLOSE_HANDSHAKE_FAILED.into(), b"hello failed");
            return Err(reason);
        }
        Err(_) => {
            connection.close(CLOSE_HANDSHAKE_FAILED.into(), b"hello timed out");
            return Err(format!("no hello within {timeout:?}"));
        }
    };
    if let Err((code, reason)) = check_hello(inner, &reply, Some(peer)) {
        connection.close(code.into(), reason.as_bytes());
        return Err(format!("refused the peer: {reason}"));
    }
    Ok((connection, reply.incarnation))
}

async fn resolve(address: &str) -> Result<std::net::SocketAddr, String> {
    if let Ok(addr) = address.parse() {
        return Ok(addr);
    }
    let mut addrs = tokio::net::lookup_host(address)
        .await
        .map_err(|e| format!("cannot resolve {address:?} (expected host:port): {e}"))?;
    addrs
        .next()
        .ok_or_else(|| format!("{address:?} resolves to no address"))
}

fn explain_connection_error(error: &quinn::ConnectionError, inner: &Inner, peer: NodeId) -> String {
    match error {
        quinn::ConnectionError::ApplicationClosed(close) => format!(
            "the peer closed the connection (code {}): {}",
            close.error_code,
            String::from_utf8_lossy(&close.reason)
        ),
        quinn::ConnectionError::TransportError(e)
            if e.to_string().contains("not valid for name") =>
        {
            format!(
                "TLS: the node at that address is not node {peer} of cluster {} (its certificate lacks the name {}); \
             is it a node of another cluster, or is the address wrong? ({e})",
                inner.config.cluster_id,
                crate::certs::node_server_name(&inner.config.cluster_id, peer)
            )
        }
        quinn::ConnectionError::TransportError(e) => {
            format!(
                "the TLS/QUIC handshake failed: {e}; are both certificates signed by the same cluster CA?"
            )
        }
        quinn::ConnectionError::ConnectionClosed(close) => {
            format!("the peer refused the connection: {close}")
        }
        other => other.to_string(),
    }
}

/// Checks a peer's hello. `expected` is the node we dialed, if we dialed.
fn check_hello(
    inner: &Inner,
    hello: &PeerHello,
    expected: Option<NodeId>,
) -> Result<(), (u32, String)> {
    if hello.version != PROTOCOL_VERSION {
        return Err((
            CLOSE_VERSION_MISMATCH,
            format!(
                "node {} speaks peer protocol version {}, this node speaks {}; upgrade the older node",
                hello.node_id, hello.version, PROTOCOL_VERSION
            ),
        ));
    }
    if hello.cluster_id != inner.config.cluster_id {
        return Err((
            CLOSE_CLUSTER_MISMATCH,
            format!(
                "node {} belongs to cluster {:?}, this node to cluster {:?}; check its configuration",
                hello.node_id, hello.cluster_id, inner.config.cluster_id
            ),
        ));
    }
    if hello.node_id == 0 || hello.node_id == inner.local() {
        return Err((
            CLOSE_IDENTITY_MISMATCH,
            format!(
                "a peer claims to be node {}, which is invalid here",
                hello.node_id
            ),
        ));
    }
    if let Some(expected) = expected {
        if hello.node_id != expected {
            return Err((
                CLOSE_IDENTITY_MISMATCH,
                format!(
                    "dialed node {expected} but node {} answered; is the address wrong?",
                    hello.node_id
                ),
            ));
        }
    }
    Ok(())
}

/// Serves an accepted connection that negotiated ALPN `raft-peer/1`: reads
/// and checks the hello, answers, and adopts the connection.
pub(crate) async fn accept(inner: Arc<Inner>, connection: quinn::Connection) {
    let remote = connection.remote_address();
    let timeout = inner.config.handshake_timeout;
    let received = tokio::time::timeout(timeout, async {
        let (send, mut recv) = connection.accept_bi().await.map_err(|e| e.to_string())?;
        match frame::read_value::<PeerHello, _>(&mut recv, MAX_HELLO_SIZE).await {
            Ok(Some(hello)) => Ok((send, hello)),
            Ok(None) => Err("the handshake stream ended without a hello".to_owned()),
            Err(e) => Err(format!("invalid hello: {e}")),
        }
    })
    .await;
    let refuse = |code: u32, reason: &str| {
        if inner.note_refusal(remote, reason) {
            warn!(node = inner.local(), %remote, "refused a peer connection: {reason}");
        } else {
            debug!(node = inner.local(), %remote, "refused a peer connection: {reason}");
        }
        connection.close(code.into(), reason.as_bytes());
    };
    let (mut send, hello) = match received {
        Ok(Ok(received)) => received,
        Ok(Err(reason)) => return refuse(CLOSE_HANDSHAKE_FAILED, &reason),
        Err(_) => {
            return refuse(
                CLOSE_HANDSHAKE_FAILED,
                &format!("no hello within {timeout:?}"),
            );
        }
    };
    if let Err((code, reason)) = check_hello(&inner, &hello, None) {
        return refuse(code, &reason);
    }
    if inner.is_removed(hello.node_id) {
        return refuse(
            CLOSE_REMOVED,
            &format!(
                "node {} was removed from the cluster; its certificate no longer admits it \
                 (a replacement node needs a new id)",
                hello.node_id
            ),
        );
    }
    if let Err(reason) =
        tls::verify_node_certificate(&connection, &inner.config.cluster_id, hello.node_id)
    {
        return refuse(
            CLOSE_IDENTITY_MISMATCH,
            &format!("the peer claims to be node {} but {reason}", hello.node_id),
        );
    }
    // Refuse a stale process before answering, so that it learns why; the
    // decision that counts is taken again, atomically, in `adopt`.
    let link = link(&inner, hello.node_id);
    if let Some(newer) = link.newer_incarnation(hello.incarnation) {
        let reason = stale_reason(inner.local(), hello.node_id, hello.incarnation, newer);
        return refuse(CLOSE_STALE_INCARNATION, &reason);
    }
    let reply = PeerHello {
        version: PROTOCOL_VERSION,
        cluster_id: inner.config.cluster_id.clone(),
        node_id: inner.local(),
        incarnation: inner.incarnation,
    };
    let written = match frame::encode(&reply, MAX_HELLO_SIZE) {
        Ok(frame) => send.write_all(&frame).await.map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    if let Err(reason) = written {
        debug!(node = inner.local(), %remote, "could not answer a peer hello: {reason}");
        return;
    }
    let _ = send.finish();
    if let Err(reason) = adopt(&inner, &link, connection, false, hello.incarnation) {
        if inner.note_refusal(remote, &reason) {
            warn!(node = inner.local(), %remote, "refused a peer connection: {reason}");
        }
    }
}

/// Registers an established connection with its link and starts serving
/// it, unless it comes from a stale incarnation of the peer (a connection
/// from a newer one is open): then it is closed and the reason returned.
fn adopt(
    inner: &Arc<Inner>,
    link: &Arc<PeerLink>,
    connection: quinn::Connection,
    dialed_by_us: bool,
    incarnation: u64,
) -> Result<(), String> {
    let id = inner.next_connection_id.fetch_add(1, Ordering::Relaxed);
    let entry = PeerConnection {
        id,
        connection: connection.clone(),
        dialed_by_us,
        incarnation,
    };
    let mut stale = None;
    link.connections.send_if_modified(|connections| {
        if let Some(newer) = newer_incarnation(connections, incarnation) {
            stale = Some(newer);
            return false;
        }
        // Connections to an earlier incarnation of the peer are dead or
        // about to be: it restarted. Close them now rather than at the idle
        // timeout.
        for old in connections.iter().filter(|c| c.incarnation != incarnation) {
            old.connection.close(
                CLOSE_REPLACED.into(),
                b"peer restarted: a newer process of this node id connected",
            );
        }
        connections
            .retain(|c| c.incarnation == incarnation && c.connection.close_reason().is_none());
        connections.push(entry.clone());
        true
    });
    if let Some(newer) = stale {
        let reason = stale_reason(inner.local(), link.peer, incarnation, newer);
        connection.close(CLOSE_STALE_INCARNATION.into(), reason.as_bytes());
        return Err(reason);
    }
    // Checked again once registered: a removal that came while this
    // connection was being set up either closed it with the link's other
    // connections or is seen here (the set is updated before they close).
    if inner.is_removed(link.peer) {
        let reason = format!("node {} was removed from the cluster", link.peer);
        connection.close(CLOSE_REMOVED.into(), reason.as_bytes());
        return Err(reason);
    }
    Counters::add(&inner.counters.peer_connections, 1);
    info!(
        node = inner.local(),
        peer = link.peer,
        remote = %connection.remote_address(),
        dialed_by_us,
        "peer connected"
    );
    let serving = inner.clone();
    let link = link.clone();
    inner.spawn(async move {
        let removed = link.removed();
        until(
            removed,
            serve_connection(serving.clone(), link.clone(), entry),
        )
        .await;
        link.connections
            .send_modify(|connections| connections.retain(|c| c.id != id));
    });
    Ok(())
}

/// Reads the peer's streams until the connection closes; closes our own
/// redundant connection once the canonical one is up.
async fn serve_connection(inner: Arc<Inner>, link: Arc<PeerLink>, entry: PeerConnection) {
    let connection = entry.connection.clone();
    let peer = link.peer;
    let accept_streams = async {
        loop {
            match connection.accept_uni().await {
                Ok(recv) => inner.spawn(read_stream(inner.clone(), link.clone(), recv)),
                Err(reason) => return reason,
            }
        }
    };
    let redundant = async {
        if !(entry.dialed_by_us && link.local > peer) {
            return std::future::pending().await;
        }
        let canonical_open = |cs: &Vec<PeerConnection>| {
            cs.iter()
                .any(|c| !c.dialed_by_us && c.connection.close_reason().is_none())
        };
        let mut connections = link.connections.subscribe();
        loop {
            if connections.wait_for(canonical_open).await.is_err() {
                return std::future::pending().await;
            }
            tokio::time::sleep(REDUNDANT_GRACE).await;
            // The canonical connection may have died during the grace
            // period: closing ours now would leave the pair without any.
            if canonical_open(&connections.borrow_and_update()) {
                break;
            }
            debug!(
                node = inner.local(),
                peer, "keeping our connection: the canonical one closed during the grace period"
            );
        }
        debug!(
            node = inner.local(),
            peer, "closing our connection: the one the peer dialed is canonical"
        );
        connection.close(
            CLOSE_REPLACED.into(),
            b"using the connection the lower node id dialed",
        );
    };
    tokio::select! {
        reason = accept_streams => {
            info!(node = inner.local(), peer, "peer connection closed: {reason}");
        }
        _ = redundant => {}
        // The deny list was replaced and now names the peer's certificate.
        _ = deny::closed_when_denied(&inner, &connection) => {}
    }
}

/// Reads one incoming stream of message frames until it ends or a frame is bad.
async fn read_stream(inner: Arc<Inner>, link: Arc<PeerLink>, mut recv: quinn::RecvStream) {
    let max = inner.config.max_frame_size;
    let peer = link.peer;
    loop {
        let payload = match frame::read(&mut recv, max).await {
            Ok(Some(payload)) => payload,
            Ok(None) => return,
            Err(error) if error.is_bad_frame() => {
                return reject(&inner, peer, &mut recv, &error.to_string());
            }
            Err(error) => {
                debug!(node = inner.local(), peer, "peer stream ended: {error}");
                return;
            }
        };
        let message: Message = match frame::decode(&payload) {
            Ok(message) => message,
            Err(error) => return reject(&inner, peer, &mut recv, &error.to_string()),
        };
        if message.from != peer || message.to != inner.local() {
            let reason = format!(
                "a message from {} to {} arrived on the connection of node {peer} to node {}",
                message.from,
                message.to,
                inner.local()
            );
            return reject(&inner, peer, &mut recv, &reason);
        }
        if inner.is_removed(peer) {
            Counters::add(&inner.counters.messages_from_removed, 1);
            continue;
        }
        if let Some(faults) = &inner.config.fault_injector {
            if faults.inbound_blocked(peer, inner.local()) {
                Counters::add(&inner.counters.messages_dropped_by_faults, 1);
                continue;
            }
        }
        let slot = if message.kind().is_snapshot() {
            // Bound the snapshot data waiting for the driver; while no slot
            // is free we stop reading and flow control holds the sender.
            match inner.snapshot_slots.clone().acquire_owned().await {
                Ok(permit) => Some(permit),
                Err(_) => return,
            }
        } else {
            None
        };
        inner.inbound.push(peer, message, slot).await;
        Counters::add(&inner.counters.messages_received, 1);
        link.received.fetch_add(1, Ordering::Relaxed);
    }
}

fn reject(inner: &Inner, peer: NodeId, recv: &mut quinn::RecvStream, reason: &str) {
    Counters::add(&inner.counters.frames_rejected, 1);
    warn!(
        node = inner.local(),
        peer, "rejected a frame from the peer and closed its stream: {reason}"
    );
    let _ = recv.stop(STREAM_BAD_FRAME.into());
}

/// Drains one lane of one peer onto a long-lived stream of the preferred
/// connection, batching queued messages into one write.
async fn run_lane(
    inner: Arc<Inner>,
    link: Arc<PeerLink>,
    lane: Lane,
    mut queue: mpsc::Receiver<Message>,
) {
    let mut connections_rx = link.connections.subscribe();
    let mut stream: Option<(u64, quinn::SendStream)> = None;
    let mut batch = BytesMut::new();
    let max = inner.config.max_frame_size;
    let peer = link.peer;
    while let Some(first) = queue.recv().await {
        batch.clear();
        let mut count = 0u64;
        let mut next = Some(first);
        while let Some(message) = next.take() {
            match frame::encode_into(&message, max, &mut batch) {
                Ok(()) => count += 1,
                Err(error) => {
                    Counters::add(&inner.counters.messages_lost, 1);
                    tracing::error!(
                        node = inner.local(),
                        peer,
                        kind = ?message.kind(),
                        "cannot send a message: {error}"
                    );
                }
            }
            if batch.len() < LANE_BATCH_BYTES {
                next = queue.try_recv().ok();
            }
        }
        if count == 0 {
            continue;
        }
        // Wait for a connection; meanwhile the queue fills and `send`
        // reports the peer unreachable.
        let target = loop {
            if let Some(target) = link.preferred(&connections_rx.borrow_and_update()) {
                break target;
            }
            tokio::select! {
                changed = connections_rx.changed() => if changed.is_err() { return },
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        };
        if stream.as_ref().map(|(id, _)| *id) != Some(target.id) {
            if let Some((_, mut old)) = stream.take() {
                let _ = old.finish();
            }
            match target.connection.open_uni().await {
                Ok(opened) => {
                    let _ = opened.set_priority(lane.priority());
                    stream = Some((target.id, opened));
                }
                Err(error) => {
                    Counters::add(&inner.counters.messages_lost, count);
                    debug!(
                        node = inner.local(),
                        peer,
                        lane = lane.name(),
                        "{count} messages lost: {error}"
                    );
                    continue;
                }
            }
        }
        let Some((_, send)) = stream.as_mut() else {
            continue;
        };
        match send.write_all(&batch).await {
            Ok(()) => Counters::add(&inner.counters.messages_sent, count),
            Err(error) => {
                Counters::add(&inner.counters.messages_lost, count);
                debug!(
                    node = inner.local(),
                    peer,
                    lane = lane.name(),
                    "{count} messages lost: {error}"
                );
                stream = None;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_with_jitter_and_caps() {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_millis(800));
        let mut ceilings = Vec::new();
        for _ in 0..6 {
            let ceiling = backoff.current;
            let delay = backoff.next_delay();
            assert!(
                delay >= ceiling / 2 && delay <= ceiling,
                "{delay:?} not in [{:?}, {ceiling:?}]",
                ceiling / 2
            );
            ceilings.push(ceiling.as_millis());
        }
        assert_eq!(ceilings, [100, 200, 400, 800, 800, 800]);
        backoff.reset();
        assert!(backoff.next_delay() <= Duration::from_millis(100));
    }

    #[test]
    fn incarnations_order_starts_by_time() {
        let now_ms = || {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_millis() as u64
        };
        let before = now_ms();
        let drawn: Vec<u64> = (0..1000).map(|_| new_incarnation()).collect();
        let after = now_ms();
        // Strictly increasing within a process, even within one millisecond.
        assert!(drawn.windows(2).all(|w| w[0] < w[1]), "{drawn:?}");
        // The high bits are the start time.
        let started = drawn[0] >> INCARNATION_TIEBREAK_BITS;
        assert!(
            started >= before && started <= after,
            "{started} not in {before}..={after}"
        );
        // A start a few milliseconds later has a later start time.
        std::thread::sleep(Duration::from_millis(3));
        assert!(new_incarnation() >> INCARNATION_TIEBREAK_BITS > after);
    }

    #[test]
    fn lanes_follow_message_kinds() {
        use raft_core::MessageBody;
        use raft_core::*;
        let msg = |body| Message {
            from: 1,
            to: 2,
            term: 1,
            body,
        };
        assert_eq!(Lane::of(&msg(MessageBody::TimeoutNow)), Lane::Control);
        assert_eq!(
            Lane::of(&msg(MessageBody::Heartbeat(Heartbeat {
                commit: 0,
                round: 0
            }))),
            Lane::Control
        );
        assert_eq!(
            Lane::of(&msg(MessageBody::Append(AppendRequest {
                prev: Default::default(),
                entries: vec![],
                commit: 0
            }))),
            Lane::Replication
        );
        assert_eq!(
            Lane::of(&msg(MessageBody::Snapshot(SnapshotChunk {
                meta: Default::default(),
                offset: 0,
                data: Default::default(),
                done: false
            }))),
            Lane::Snapshot
        );
        assert_eq!(
            Lane::of(&msg(MessageBody::SnapshotResponse(SnapshotResponse {
                snapshot_index: 0,
                next_offset: 0,
                rejected: false,
                installed: false
            }))),
            Lane::Control
        );
    }
}
