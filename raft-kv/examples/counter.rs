//! Your own replicated state machine: a counter that three nodes agree on,
//! on raft-core, RocksDB storage (raft-storage-rocks) and the QUIC transport
//! with mutual TLS (raft-transport-quic), run by raft-kv's driver.
//!
//! ```sh
//! cargo run -p raft-kv --example counter
//! ```
//!
//! The state machine is the only part you write: `apply` turns committed
//! commands into outputs, `snapshot`/`restore` let a lagging node catch up.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use bytes::Bytes;
use raft_core::adapters::{SnapshotBuilder, StateMachine, StateMachineError};
use raft_core::{Config, Entry, EntryPayload, Index, LogId, Membership, ReadPolicy, SnapshotMeta};
use raft_kv::driver::{Driver, DriverOptions};
use raft_storage_rocks::{RocksStore, StoreOptions};
use raft_transport_quic::{CertificateAuthority, QuicTransport, TransportConfig};

/// The replicated state: a counter, and how far the log was applied.
#[derive(Default)]
struct Counter {
    value: i64,
    applied: Index,
}

impl StateMachine for Counter {
    /// A command's output: the counter after it.
    type Output = i64;

    fn apply(&mut self, entries: &[Entry]) -> Vec<(LogId, i64)> {
        let mut outputs = Vec::new();
        let applied = self.applied;
        for entry in entries.iter().filter(|e| e.index > applied) {
            // Commands are little-endian i64 increments; Raft's own entries
            // (no-ops, membership changes) only move `applied`.
            if let EntryPayload::Command(data) = &entry.payload {
                if let Ok(delta) = <[u8; 8]>::try_from(data.as_ref()) {
                    self.value = self.value.wrapping_add(i64::from_le_bytes(delta));
                }
                outputs.push((entry.log_id(), self.value));
            }
            self.applied = entry.index;
        }
        outputs
    }

    fn applied_index(&self) -> Index {
        self.applied
    }

    fn snapshot(&self) -> SnapshotBuilder {
        let value = self.value;
        Box::new(move || Ok(Bytes::copy_from_slice(&value.to_le_bytes())))
    }

    fn restore(&mut self, meta: &SnapshotMeta, data: &[u8]) -> Result<(), StateMachineError> {
        let value = <[u8; 8]>::try_from(data).map_err(|_| {
            StateMachineError(format!("snapshot {} is not 8 bytes", meta.last.index))
        })?;
        self.value = i64::from_le_bytes(value);
        self.applied = meta.last.index;
        Ok(())
    }
}

/// One node: its driver (which owns the Raft node) and its transport.
struct RunningNode {
    driver: Driver<Counter>,
    _transport: Arc<QuicTransport>,
}

async fn start_node(
    dir: &Path,
    ca: &CertificateAuthority,
    id: u64,
    members: &[(u64, SocketAddr)],
) -> anyhow::Result<RunningNode> {
    let address = members
        .iter()
        .find(|(i, _)| *i == id)
        .context("no such member")?
        .1;
    let store = RocksStore::open(StoreOptions::new(
        dir.join(format!("node-{id}")),
        id,
        "counter",
    ))?;
    let voters: BTreeMap<u64, String> = members.iter().map(|(i, a)| (*i, a.to_string())).collect();
    store.bootstrap(Membership::with_voters(voters))?;
    let identity = ca.node_identity("counter", id, [address.ip().to_string()])?;
    let transport = Arc::new(
        QuicTransport::start(TransportConfig::new(id, "counter", address), &identity).await?,
    );
    let mut config = Config::new(id);
    config.seed = rand::random();
    let driver = Driver::start(
        config,
        Arc::new(store),
        transport.clone(),
        Counter::default(),
        DriverOptions::default(),
    )?;
    Ok(RunningNode {
        driver,
        _transport: transport,
    })
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let ca = CertificateAuthority::generate("counter example CA")?;
    let mut members = Vec::new();
    for id in 1..=3 {
        let port = raft_transport_quic::free_loopback_port()?;
        members.push((id, SocketAddr::from(([127, 0, 0, 1], port))));
    }
    let mut nodes = Vec::new();
    for (id, _) in &members {
        nodes.push(start_node(dir.path(), &ca, *id, &members).await?);
    }

    // Wait for an election, then propose through the leader.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let leader = loop {
        if let Some(node) = nodes.iter().find(|n| n.driver.handle().view().is_leader) {
            break node.driver.handle();
        }
        if tokio::time::Instant::now() > deadline {
            bail!("no leader was elected within 30 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    println!("node {} leads", leader.view().id);
    for delta in [5i64, -2, 10] {
        let value = leader
            .propose(Bytes::copy_from_slice(&delta.to_le_bytes()))
            .await?;
        println!("add {delta:>3} -> {value}");
    }

    // A linearizable read on every node, followers included (ReadIndex).
    for node in &nodes {
        let handle = node.driver.handle();
        let value = handle
            .read(Some(ReadPolicy::ReadIndex), |c: &Counter| c.value)
            .await?;
        println!("node {} reads {value}", handle.view().id);
        if value != 13 {
            bail!("node {} reads {value}, expected 13", handle.view().id);
        }
    }
    for mut node in nodes {
        node.driver.stop().map_err(anyhow::Error::msg)?;
    }
    println!("all three nodes agree");
    Ok(())
}
