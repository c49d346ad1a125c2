//! Three raft-kv nodes in one process over real QUIC and RocksDB: the
//! service end to end, quickly.

mod common;

use std::time::Duration;

use bytes::Bytes;
use raft_kv::protocol::{Consistency, ReadOp, Selector};
use raft_kv::{Client, ClientConfig};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_nodes_serve_reads_writes_and_watches() {
    let cluster = common::TestCluster::start(3, |_| {}).await;
    let endpoints = cluster.endpoints.clone();
    let client_identity = cluster.client_identity.clone();
    let client = cluster.client().await;

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

    cluster.shutdown().await;
}

/// Review finding: a scan larger than one reply was continued by key at the
/// latest state, so writes between pages showed half-way. `Client::scan`
/// pages through at the revision of the first page, through a follower too.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_scan_larger_than_a_reply_pages_at_one_revision() {
    let cluster = common::TestCluster::start(3, |_| {}).await;
    let client = cluster.client().await;
    // 24 values of 512 KiB: more than one reply's 8 MiB.
    let value = Bytes::from(vec![b'o'; 512 << 10]);
    for i in 0..24 {
        client
            .put(format!("p/{i:02}"), value.clone())
            .await
            .unwrap();
    }
    let end = raft_kv::protocol::prefix_end(b"p/");
    let follower = cluster
        .client_of(vec![cluster.follower_endpoint(&client).await])
        .await;
    for reader in [&client, &follower] {
        let first = reader
            .read(
                ReadOp::Scan {
                    start: Bytes::from_static(b"p/"),
                    end: end.clone(),
                    limit: 1000,
                    revision: 0,
                },
                Consistency::Linearizable,
            )
            .await
            .unwrap();
        assert!(first.more, "one reply held all {} keys", first.kvs.len());
        let at = first.revision;
        // Between pages: the last key changes, one is deleted, one is added.
        client.put("p/23", "new").await.unwrap();
        client.delete("p/22").await.unwrap();
        client.put("p/225", "new").await.unwrap();
        let after = raft_kv::protocol::key_after(&first.kvs.last().unwrap().key);
        let rest = reader
            .scan(after, end.clone(), 1000, Consistency::Linearizable, at)
            .await
            .unwrap();
        assert_eq!(rest.revision, at);
        assert!(!rest.more);
        let keys: Vec<String> = first
            .kvs
            .iter()
            .chain(&rest.kvs)
            .map(|kv| {
                assert_eq!(kv.value, value, "a value written after revision {at}");
                String::from_utf8_lossy(&kv.key).into_owned()
            })
            .collect();
        let expected: Vec<String> = (0..24).map(|i| format!("p/{i:02}")).collect();
        assert_eq!(keys, expected);
        // Put back for the next reader.
        client.put("p/23", value.clone()).await.unwrap();
        client.put("p/22", value.clone()).await.unwrap();
        client.delete("p/225").await.unwrap();
    }
    // From the latest revision, in one call.
    let all = client
        .scan(
            Bytes::from_static(b"p/"),
            end,
            1000,
            Consistency::Linearizable,
            0,
        )
        .await
        .unwrap();
    assert_eq!(all.kvs.len(), 24);
    cluster.shutdown().await;
}
