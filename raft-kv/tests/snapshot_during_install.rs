//! Issue 24, finding 3: a follower's background snapshot build is
//! overtaken by the leader's snapshot, installed meanwhile; the build then
//! ends in `SnapshotObsolete` and is discarded. The node must ask for a
//! snapshot again afterwards (raft-core only ended a request when a build
//! was reported, so this node never snapshotted again and its log grew
//! without bound).
//!
//! Three drivers in this process over QUIC and RocksDB, with a state
//! machine whose snapshot build can be held, and a transport that can cut
//! one node off.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use raft_core::adapters::{
    SnapshotBuilder, StateMachine, StateMachineError, Transport, TransportError,
};
use raft_core::{
    Config, Entry, EntryPayload, Index, LogId, LogRead, Membership, Message, NodeId, SnapshotMeta,
    SnapshotPolicy,
};
use raft_kv::driver::{Driver, DriverOptions};
use raft_storage_rocks::{RocksStore, StoreOptions};
use raft_transport_quic::{CertificateAuthority, QuicTransport, TransportConfig};

/// What the test controls, shared by every node.
#[derive(Default)]
struct Controls {
    /// The node whose snapshot builds wait (0: none).
    hold_builds_of: AtomicU64,
    /// The node whose build is waiting now (0: none).
    build_waiting: AtomicU64,
    /// Builds that ran to the end, per node (index = id).
    builds_done: [AtomicU64; 4],
    /// The node cut off from the others (0: none).
    cut: AtomicU64,
}

/// A sum of the commands' first bytes; its snapshot build can be held.
struct Summer {
    id: NodeId,
    sum: u64,
    applied: Index,
    controls: Arc<Controls>,
}

impl StateMachine for Summer {
    type Output = u64;

    fn apply(&mut self, entries: &[Entry]) -> Vec<(LogId, u64)> {
        let mut outputs = Vec::new();
        let applied = self.applied;
        for entry in entries.iter().filter(|e| e.index > applied) {
            if let EntryPayload::Command(data) = &entry.payload {
                self.sum += u64::from(data.first().copied().unwrap_or(0));
                outputs.push((entry.log_id(), self.sum));
            }
            self.applied = entry.index;
        }
        outputs
    }

    fn applied_index(&self) -> Index {
        self.applied
    }

    fn snapshot(&self) -> SnapshotBuilder {
        let (id, sum, controls) = (self.id, self.sum, self.controls.clone());
        Box::new(move || {
            while controls.hold_builds_of.load(Ordering::SeqCst) == id {
                controls.build_waiting.store(id, Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(5));
            }
            controls.build_waiting.store(0, Ordering::SeqCst);
            controls.builds_done[id as usize].fetch_add(1, Ordering::SeqCst);
            Ok(Bytes::copy_from_slice(&sum.to_le_bytes()))
        })
    }

    fn restore(&mut self, meta: &SnapshotMeta, data: &[u8]) -> Result<(), StateMachineError> {
        let sum = <[u8; 8]>::try_from(data).map_err(|_| {
            StateMachineError(format!("snapshot {} is not 8 bytes", meta.last.index))
        })?;
        self.sum = u64::from_le_bytes(sum);
        self.applied = meta.last.index;
        Ok(())
    }
}

/// QUIC, except that nothing reaches or leaves the node that is cut off.
struct Cuttable {
    id: NodeId,
    inner: Arc<QuicTransport>,
    controls: Arc<Controls>,
}

#[async_trait::async_trait]
impl Transport for Cuttable {
    fn send(&self, message: Message) -> Result<(), TransportError> {
        let cut = self.controls.cut.load(Ordering::SeqCst);
        if cut == self.id || cut == message.to {
            return Ok(());
        }
        self.inner.send(message)
    }

    fn update_peers(&self, peers: &BTreeMap<NodeId, String>) {
        self.inner.update_peers(peers);
    }

    async fn recv(&self) -> Option<Message> {
        loop {
            let message = self.inner.recv().await?;
            let cut = self.controls.cut.load(Ordering::SeqCst);
            if cut != self.id && cut != message.from {
                return Some(message);
            }
        }
    }
}

struct RunningNode {
    id: NodeId,
    driver: Driver<Summer>,
    store: Arc<RocksStore>,
}

async fn start_node(
    dir: &Path,
    ca: &CertificateAuthority,
    id: NodeId,
    members: &[(NodeId, SocketAddr)],
    controls: &Arc<Controls>,
) -> RunningNode {
    let address = members.iter().find(|(i, _)| *i == id).unwrap().1;
    let store = RocksStore::open(StoreOptions::new(
        dir.join(format!("node-{id}")),
        id,
        "install",
    ))
    .unwrap();
    let voters: BTreeMap<NodeId, String> =
        members.iter().map(|(i, a)| (*i, a.to_string())).collect();
    store.bootstrap(Membership::with_voters(voters)).unwrap();
    let store = Arc::new(store);
    let identity = ca
        .node_identity("install", id, [address.ip().to_string()])
        .unwrap();
    let quic = Arc::new(
        QuicTransport::start(TransportConfig::new(id, "install", address), &identity)
            .await
            .unwrap(),
    );
    let transport = Arc::new(Cuttable {
        id,
        inner: quic,
        controls: controls.clone(),
    });
    let mut config = Config::new(id);
    config.seed = id;
    config.snapshot = SnapshotPolicy {
        threshold: 20,
        log_share_percent: 0,
        retention: 2,
        chunk_size: 1024,
        chunks_in_flight: 2,
    };
    let machine = Summer {
        id,
        sum: 0,
        applied: 0,
        controls: controls.clone(),
    };
    let driver = Driver::start(
        config,
        store.clone(),
        transport,
        machine,
        DriverOptions {
            tick: Duration::from_millis(10),
            ..DriverOptions::default()
        },
    )
    .unwrap();
    RunningNode { id, driver, store }
}

/// Waits until `done` holds, for up to `secs` seconds.
async fn wait_for(what: &str, secs: u64, mut done: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    while !done() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn snapshot_index(store: &RocksStore) -> Index {
    store
        .snapshot_meta()
        .unwrap()
        .map_or(0, |meta| meta.last.index)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_follower_snapshots_again_after_an_install_overtook_its_build() {
    let dir = tempfile::tempdir().unwrap();
    let ca = CertificateAuthority::generate("install test CA").unwrap();
    let controls = Arc::new(Controls::default());
    let mut members = Vec::new();
    for id in 1..=3 {
        let port = raft_transport_quic::free_loopback_port().unwrap();
        members.push((id, SocketAddr::from(([127, 0, 0, 1], port))));
    }
    let mut nodes = Vec::new();
    for (id, _) in &members {
        nodes.push(start_node(dir.path(), &ca, *id, &members, &controls).await);
    }
    let mut leader_id = 0;
    wait_for("a leader", 30, || {
        leader_id = nodes
            .iter()
            .find(|n| n.driver.handle().view().is_leader)
            .map_or(0, |n| n.id);
        leader_id != 0
    })
    .await;
    let leader = nodes.iter().find(|n| n.id == leader_id).unwrap();
    let follower = nodes.iter().find(|n| n.id != leader_id).unwrap();
    let (f, handle) = (follower.id, leader.driver.handle());
    let propose = |n: u64| {
        let handle = handle.clone();
        async move {
            for _ in 0..n {
                handle.propose(Bytes::from_static(&[1])).await.unwrap();
            }
        }
    };

    // The follower is asked for a snapshot and starts building one in the
    // background; the build is slow.
    controls.hold_builds_of.store(f, Ordering::SeqCst);
    propose(30).await;
    wait_for("the follower's build to start", 30, || {
        controls.build_waiting.load(Ordering::SeqCst) == f
    })
    .await;

    // Meanwhile it is cut off, the leader snapshots and compacts past it,
    // and once the link is back the leader's snapshot is installed.
    controls.cut.store(f, Ordering::SeqCst);
    let cut_at = follower.driver.handle().view().applied;
    propose(60).await;
    wait_for("the leader to compact past the follower", 30, || {
        snapshot_index(&leader.store) > cut_at + 2
    })
    .await;
    let leaders_snapshot = snapshot_index(&leader.store);
    controls.cut.store(0, Ordering::SeqCst);
    wait_for("the follower to install the leader's snapshot", 30, || {
        snapshot_index(&follower.store) >= leaders_snapshot
    })
    .await;
    let installed = snapshot_index(&follower.store);
    assert_eq!(
        controls.builds_done[f as usize].load(Ordering::SeqCst),
        0,
        "the follower's own build is still held"
    );

    // The slow build ends now, older than the installed snapshot: the
    // driver discards it (SnapshotObsolete).
    controls.hold_builds_of.store(0, Ordering::SeqCst);
    wait_for("the held build to end", 30, || {
        controls.builds_done[f as usize].load(Ordering::SeqCst) == 1
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        snapshot_index(&follower.store),
        installed,
        "the obsolete build was not saved"
    );

    // The log grows again: the follower must snapshot again.
    propose(80).await;
    wait_for("the follower to build a snapshot again", 30, || {
        controls.builds_done[f as usize].load(Ordering::SeqCst) >= 2
            && snapshot_index(&follower.store) > installed
    })
    .await;

    for mut node in nodes {
        node.driver.stop().unwrap();
    }
}
