//! Shared by the in-process tests: a cluster of raft-kv servers in this
//! process, over real QUIC (mutual TLS) and RocksDB in a temporary directory.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::Path;

use raft_kv::config::{LogFormat, NodeConfig, RaftSettings, SnapshotSettings, TlsFiles};
use raft_kv::{Client, ClientConfig, Server};
use raft_transport_quic::{CertificateAuthority, Role, TlsIdentity};

/// A free loopback port that no client is given meanwhile (outside the
/// ephemeral range), so a node restarted on it finds it free.
pub fn free_port() -> u16 {
    raft_transport_quic::free_loopback_port().unwrap()
}

pub fn node_config(dir: &Path, id: u64, addresses: &[(u64, SocketAddr)]) -> NodeConfig {
    let listen = addresses.iter().find(|(i, _)| *i == id).unwrap().1;
    NodeConfig {
        node_id: id,
        cluster_id: "test".into(),
        listen,
        advertise: None,
        data_dir: dir.join(format!("node-{id}")),
        initial_cluster: addresses.iter().map(|(i, a)| format!("{i}={a}")).collect(),
        join: false,
        tls: TlsFiles {
            ca: dir.join("ca.pem"),
            cert: dir.join(format!("node-{id}.pem")),
            key: dir.join(format!("node-{id}.key")),
            deny_list: None,
        },
        raft: RaftSettings {
            tick_ms: 20,
            ..RaftSettings::default()
        },
        snapshot: SnapshotSettings {
            threshold: 200,
            retention: 20,
            chunk_size: 4096,
        },
        etcd_listen: None,
        metrics_listen: None,
        log_format: LogFormat::Human,
        enable_fault_injection: false,
        request_timeout_ms: 3_000,
    }
}

/// A running in-process cluster.
pub struct TestCluster {
    /// Keeps the data directories alive.
    pub dir: tempfile::TempDir,
    pub servers: Vec<Server>,
    pub addresses: Vec<(u64, SocketAddr)>,
    pub endpoints: Vec<String>,
    pub client_identity: TlsIdentity,
    /// The cluster's CA, to issue more certificates.
    pub ca: CertificateAuthority,
}

impl TestCluster {
    /// `n` nodes, each configuration adjusted by `adjust`.
    pub async fn start(n: u64, adjust: impl Fn(&mut NodeConfig)) -> Self {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_default_env()
                    .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,quinn=error")),
            )
            .with_test_writer()
            .try_init();
        let dir = tempfile::tempdir().unwrap();
        let ca = CertificateAuthority::generate("test CA").unwrap();
        // The CA's key in a directory of its own (as `cargo xtask cluster`
        // lays it out); the nodes get its certificate.
        let ca_dir = dir.path().join("ca");
        std::fs::create_dir(&ca_dir).unwrap();
        ca.save(&ca_dir.join("ca.pem"), &ca_dir.join("ca.key"))
            .unwrap();
        std::fs::copy(ca_dir.join("ca.pem"), dir.path().join("ca.pem")).unwrap();
        let addresses: Vec<(u64, SocketAddr)> = (1..=n)
            .map(|id| (id, format!("127.0.0.1:{}", free_port()).parse().unwrap()))
            .collect();
        for (id, address) in &addresses {
            let cert = ca
                .issue_node("test", *id, [address.ip().to_string()])
                .unwrap();
            cert.save(
                &dir.path().join(format!("node-{id}.pem")),
                &dir.path().join(format!("node-{id}.key")),
            )
            .unwrap();
        }
        let mut servers = Vec::new();
        for (id, _) in &addresses {
            let mut config = node_config(dir.path(), *id, &addresses);
            adjust(&mut config);
            servers.push(Server::start(config).await.unwrap());
        }
        let client_identity = ca.client_identity("test", "tester", Role::Admin).unwrap();
        let endpoints = addresses.iter().map(|(_, a)| a.to_string()).collect();
        Self {
            dir,
            servers,
            addresses,
            endpoints,
            client_identity,
            ca,
        }
    }

    /// A client of every node.
    pub async fn client(&self) -> Client {
        self.client_of(self.endpoints.clone()).await
    }

    /// A client of the given endpoints.
    pub async fn client_of(&self, endpoints: Vec<String>) -> Client {
        Client::connect(ClientConfig::new(endpoints, self.client_identity.clone()))
            .await
            .unwrap()
    }

    /// A client of `endpoints` with a certificate named `name` with `role`.
    pub async fn client_with_role(&self, name: &str, role: Role, endpoints: Vec<String>) -> Client {
        let identity = self.ca.client_identity("test", name, role).unwrap();
        Client::connect(ClientConfig::new(endpoints, identity))
            .await
            .unwrap()
    }

    /// The endpoint of a node that does not lead, as `client` sees it.
    pub async fn follower_endpoint(&self, client: &Client) -> String {
        for endpoint in &self.endpoints {
            let status = client.status_of(endpoint).await.unwrap();
            if status.raft.role != raft_core::Role::Leader {
                return endpoint.clone();
            }
        }
        panic!("no follower")
    }

    pub async fn shutdown(self) {
        for server in self.servers {
            server.shutdown().await.unwrap();
        }
    }
}
