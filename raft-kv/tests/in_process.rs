//! Three raft-kv nodes in one process over real QUIC and RocksDB: the
//! service end to end, quickly.

use std::net::{SocketAddr, UdpSocket};
use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use raft_kv::config::{LogFormat, NodeConfig, RaftSettings, SnapshotSettings, TlsFiles};
use raft_kv::protocol::{Consistency, ReadOp, Selector};
use raft_kv::{Client, ClientConfig, Server};
use raft_transport_quic::CertificateAuthority;

fn free_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn node_config(dir: &Path, id: u64, addresses: &[(u64, SocketAddr)]) -> NodeConfig {
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
        metrics_listen: None,
        log_format: LogFormat::Human,
        enable_fault_injection: false,
        request_timeout_ms: 3_000,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_nodes_serve_reads_writes_and_watches() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,quinn=error")),
        )
        .with_test_writer()
        .try_init();
    let dir = tempfile::tempdir().unwrap();
    let ca = CertificateAuthority::generate("test CA").unwrap();
    ca.save(&dir.path().join("ca.pem"), &dir.path().join("ca.key"))
        .unwrap();
    let addresses: Vec<(u64, SocketAddr)> = (1..=3)
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
        servers.push(
            Server::start(node_config(dir.path(), *id, &addresses))
                .await
                .unwrap(),
        );
    }
    let client_identity = ca.client_identity("test", "tester").unwrap();
    let endpoints: Vec<String> = addresses.iter().map(|(_, a)| a.to_string()).collect();
    let client = Client::connect(ClientConfig::new(
        endpoints.clone(),
        client_identity.clone(),
    ))
    .await
    .unwrap();

    client.put("a", "1").await.unwrap();
    assert_eq!(
        client.get("a").await.unwrap().unwrap().value,
        Bytes::from_static(b"1")
    );

    // Through every node: writes are forwarded, reads are linearizable.
    for (i, endpoint) in endpoints.iter().enumerate() {
        let one = Client::connect(ClientConfig::new(
            vec![endpoint.clone()],
            client_identity.clone(),
        ))
        .await
        .unwrap();
        one.put(format!("k{i}"), format!("v{i}")).await.unwrap();
        for j in 0..=i {
            let kv = one.get(format!("k{j}")).await.unwrap().expect("written");
            assert_eq!(kv.value, Bytes::from(format!("v{j}")));
        }
        let stale = one
            .read(
                ReadOp::Get {
                    key: Bytes::from_static(b"a"),
                },
                Consistency::Stale,
            )
            .await
            .unwrap();
        assert!(stale.kvs.len() <= 1);
    }

    // Compare-and-swap.
    let swapped = client
        .cas(
            "a",
            Some(Bytes::from_static(b"1")),
            Some(Bytes::from_static(b"2")),
        )
        .await
        .unwrap();
    assert!(swapped.succeeded);
    let failed = client
        .cas(
            "a",
            Some(Bytes::from_static(b"1")),
            Some(Bytes::from_static(b"3")),
        )
        .await
        .unwrap();
    assert!(!failed.succeeded);

    // A prefix watch sees every change in order.
    let mut watcher = client
        .watch(Selector::Prefix(Bytes::from_static(b"w/")), 0)
        .await
        .unwrap();
    for i in 0..20 {
        client
            .put(format!("w/{i:02}"), format!("{i}"))
            .await
            .unwrap();
    }
    let mut seen = Vec::new();
    while seen.len() < 20 {
        let events = tokio::time::timeout(Duration::from_secs(10), watcher.next())
            .await
            .unwrap()
            .unwrap();
        seen.extend(events.into_iter().map(|e| e.kv.key));
    }
    let expected: Vec<Bytes> = (0..20).map(|i| Bytes::from(format!("w/{i:02}"))).collect();
    assert_eq!(seen, expected);

    // Enough writes for snapshots; every node converges.
    for i in 0..300 {
        client.put(format!("bulk/{i}"), "x").await.unwrap();
    }
    let scan = client.scan_prefix("bulk/", 1000).await.unwrap();
    assert_eq!(scan.kvs.len(), 300);
    for endpoint in &endpoints {
        let status = client.status_of(endpoint).await.unwrap();
        assert_eq!(status.raft.membership.voters().len(), 3);
    }

    for server in servers {
        server.shutdown().await.unwrap();
    }
}
