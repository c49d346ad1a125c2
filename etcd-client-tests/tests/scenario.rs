//! The Rust `etcd-client` crate against three raft-kv nodes serving etcd's
//! v3 API over mutual TLS: put, get, txn, watch (with progress requests and
//! prev_kv) and leases, then the
//! lease-based lock recipe (as etcd's `concurrency.Mutex` builds it: a key
//! per contender under a prefix, put with the contender's lease; the lowest
//! create revision holds the lock; the others wait for the key just before
//! theirs to go) with contenders while the leader's node crashes.

#[path = "../../raft-kv/tests/common/mod.rs"]
mod common;

use std::net::{SocketAddr, TcpListener};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, Identity,
    PutOptions, SortOrder, SortTarget, TlsOptions, Txn, TxnOp, WatchOptions,
};
use raft_transport_quic::Role;

/// Generous: the machine is shared and the build is a debug one.
const PATIENCE: Duration = Duration::from_secs(60);

fn free_tcp_address() -> SocketAddr {
    let port = raft_transport_quic::free_loopback_port().unwrap();
    TcpListener::bind(("127.0.0.1", port))
        .unwrap()
        .local_addr()
        .unwrap()
}

/// An etcd-client of every node, with a `readwrite` client certificate
/// named `name`.
async fn connect(cluster: &common::TestCluster, endpoints: &[SocketAddr], name: &str) -> Client {
    let identity = cluster
        .ca
        .issue_client("test", name, Role::ReadWrite)
        .unwrap();
    let dir = cluster.dir.path();
    let (cert, key) = (
        dir.join(format!("{name}.pem")),
        dir.join(format!("{name}.key")),
    );
    identity.save(&cert, &key).unwrap();
    let tls = TlsOptions::new()
        .ca_certificate(Certificate::from_pem(
            std::fs::read(dir.join("ca.pem")).unwrap(),
        ))
        .identity(Identity::from_pem(
            std::fs::read(cert).unwrap(),
            std::fs::read(key).unwrap(),
        ));
    let endpoints: Vec<String> = endpoints.iter().map(|a| format!("https://{a}")).collect();
    let options = ConnectOptions::new()
        .with_tls(tls)
        .with_timeout(Duration::from_secs(5))
        .with_connect_timeout(Duration::from_secs(5));
    Client::connect(endpoints, Some(options)).await.unwrap()
}

/// Runs `op` until it succeeds (a node stopping or an election makes calls
/// fail for a moment), for up to [`PATIENCE`].
async fn retry<T, F, Fut>(what: &str, mut op: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, etcd_client::Error>>,
{
    let deadline = Instant::now() + PATIENCE;
    loop {
        match op().await {
            Ok(value) => return value,
            Err(e) if Instant::now() < deadline => {
                eprintln!("{what}: {e}; retrying");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("{what} kept failing: {e}"),
        }
    }
}

/// Keeps lease `id` alive until the task is aborted (a contender that
/// crashes stops renewing), reopening the keep-alive stream when a node
/// stops under it.
fn keep_alive(client: &Client, id: i64) -> tokio::task::JoinHandle<()> {
    let client = client.clone();
    tokio::spawn(async move {
        loop {
            let mut c = client.clone();
            if let Ok((mut keeper, mut stream)) = c.lease_keep_alive(id).await {
                loop {
                    if keeper.keep_alive().await.is_err() {
                        break;
                    }
                    match stream.message().await {
                        Ok(Some(answer)) if answer.ttl() > 0 => {}
                        Ok(Some(_)) => panic!("lease {id:x} was lost while kept alive"),
                        _ => break,
                    }
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
}

/// A contender's claim on the lock: its key, put with its lease.
struct Claim {
    key: String,
    revision: i64,
}

/// Puts the contender's key under `lock/` (if it is not there yet) with its
/// lease; the claim's revision orders the contenders.
async fn claim(client: &Client, name: &str, lease: i64) -> Claim {
    let key = format!("lock/{lease:016x}");
    let revision = retry("claiming the lock", || {
        let (mut c, key) = (client.clone(), key.clone());
        async move {
            let txn = Txn::new()
                .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
                .and_then([TxnOp::put(
                    key.clone(),
                    name,
                    Some(PutOptions::new().with_lease(lease)),
                )])
                .or_else([TxnOp::get(key.clone(), None)]);
            c.txn(txn).await?;
            let got = c.get(key.clone(), None).await?;
            Ok(got.kvs().first().map_or(0, |kv| kv.create_revision()))
        }
    })
    .await;
    assert!(revision > 0, "{name}'s claim is not there");
    Claim { key, revision }
}

/// Waits until `claim` holds the lock: every claim made before it is gone.
async fn acquire(client: &Client, claim: &Claim) {
    loop {
        let (before, revision) = retry("reading the claims", || {
            let mut c = client.clone();
            async move {
                let options = GetOptions::new()
                    .with_prefix()
                    .with_sort(SortTarget::Create, SortOrder::Ascend);
                let all = c.get("lock/", Some(options)).await?;
                let revision = all.header().map_or(0, |h| h.revision());
                let before = all
                    .kvs()
                    .iter()
                    .rfind(|kv| kv.create_revision() < claim.revision)
                    .map(|kv| kv.key().to_vec());
                Ok((before, revision))
            }
        })
        .await;
        let Some(before) = before else { return };
        // Wait for the claim just before this one to go (released, or its
        // lease expired); a broken watch reads the claims again.
        let mut c = client.clone();
        let options = WatchOptions::new().with_start_revision(revision + 1);
        if let Ok(mut stream) = c.watch(before, Some(options)).await {
            'events: while let Ok(Some(answer)) = stream.message().await {
                if answer
                    .events()
                    .iter()
                    .any(|e| e.event_type() == EventType::Delete)
                {
                    break 'events;
                }
            }
        }
    }
}

/// Gives the claim up.
async fn release(client: &Client, claim: &Claim) {
    retry("releasing the lock", || {
        let mut c = client.clone();
        let key = claim.key.clone();
        async move { c.delete(key, None).await }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn etcd_client_puts_watches_leases_and_locks_while_the_leader_crashes() {
    let etcd: Mutex<Vec<SocketAddr>> = Mutex::new(Vec::new());
    let mut cluster = common::TestCluster::start(3, |c| {
        let address = free_tcp_address();
        c.etcd_listen = Some(address);
        etcd.lock().unwrap().push(address);
    })
    .await;
    let endpoints = etcd.lock().unwrap().clone();
    // Once a leader is elected (the raft-kv client waits for one).
    let raft_client = cluster.client().await;
    raft_client.put("warm", "up").await.unwrap();
    let mut client = connect(&cluster, &endpoints, "app").await;

    // Put, get, and a transaction that compares and picks a branch.
    client.put("greeting", "hello", None).await.unwrap();
    let got = client.get("greeting", None).await.unwrap();
    assert_eq!(got.kvs()[0].value(), b"hello");
    assert_eq!(got.kvs()[0].version(), 1);
    let txn = Txn::new()
        .when([Compare::value("greeting", CompareOp::Equal, "hello")])
        .and_then([TxnOp::put("greeting", "swapped", None)])
        .or_else([TxnOp::put("greeting", "lost", None)]);
    assert!(client.txn(txn).await.unwrap().succeeded());
    let txn = Txn::new()
        .when([Compare::version("greeting", CompareOp::Greater, 5)])
        .and_then([TxnOp::delete("greeting", None)])
        .or_else([TxnOp::get("greeting", None)]);
    assert!(!client.txn(txn).await.unwrap().succeeded());
    let got = client.get("greeting", None).await.unwrap();
    assert_eq!(got.kvs()[0].value(), b"swapped");

    // A watch of a prefix sees puts and deletes in order.
    let mut stream = client
        .watch("w/", Some(WatchOptions::new().with_prefix()))
        .await
        .unwrap();
    // The first message confirms the watch is registered.
    let created = stream.message().await.unwrap().unwrap();
    assert!(created.created());
    client.put("w/a", "1", None).await.unwrap();
    client.delete("w/a", None).await.unwrap();
    let mut seen = Vec::new();
    while seen.len() < 2 {
        let answer = tokio::time::timeout(PATIENCE, stream.message())
            .await
            .expect("watch events in time")
            .unwrap()
            .unwrap();
        for event in answer.events() {
            let kv = event.kv().unwrap();
            seen.push((event.event_type(), kv.key().to_vec()));
        }
    }
    assert_eq!(
        seen,
        [
            (EventType::Put, b"w/a".to_vec()),
            (EventType::Delete, b"w/a".to_vec())
        ]
    );
    // Progress requests (Kubernetes' way to know its watch cache is fresh):
    // each answer (watch id -1, as etcd's) names a revision through which
    // the stream has sent every event; asked again, it reaches the revision
    // of a write acknowledged meanwhile (the watch may be on a follower that
    // applies it a moment later).
    let written = client.put("elsewhere", "x", None).await.unwrap();
    let written = written.header().unwrap().revision();
    let mut reached = 0;
    let deadline = Instant::now() + PATIENCE;
    while reached < written {
        assert!(Instant::now() < deadline, "progress stuck at {reached}");
        stream.request_progress().await.unwrap();
        let progress = tokio::time::timeout(PATIENCE, stream.message())
            .await
            .expect("a progress answer in time")
            .unwrap()
            .unwrap();
        assert_eq!(progress.watch_id(), -1);
        assert!(progress.events().is_empty());
        let revision = progress.header().unwrap().revision();
        assert!(
            revision >= reached,
            "progress went back from {reached} to {revision}"
        );
        reached = revision;
    }
    // With prev_kv, each event carries the key as it was.
    let mut previous = client
        .watch("pv", Some(WatchOptions::new().with_prev_key()))
        .await
        .unwrap();
    assert!(previous.message().await.unwrap().unwrap().created());
    client.put("pv", "1", None).await.unwrap();
    client.put("pv", "2", None).await.unwrap();
    let mut prevs = Vec::new();
    while prevs.len() < 2 {
        let answer = tokio::time::timeout(PATIENCE, previous.message())
            .await
            .expect("watch events in time")
            .unwrap()
            .unwrap();
        for event in answer.events() {
            prevs.push(event.prev_kv().map(|kv| kv.value().to_vec()));
        }
    }
    assert_eq!(prevs, [None, Some(b"1".to_vec())]);
    drop((stream, previous));

    // Leases: a key put with one is listed with it, and goes when it is
    // revoked.
    let lease = client.lease_grant(30, None).await.unwrap().id();
    client
        .put("leased", "v", Some(PutOptions::new().with_lease(lease)))
        .await
        .unwrap();
    let kv = client.get("leased", None).await.unwrap().kvs()[0].clone();
    assert_eq!(kv.lease(), lease);
    let ttl = client
        .lease_time_to_live(
            lease,
            Some(etcd_client::LeaseTimeToLiveOptions::new().with_keys()),
        )
        .await
        .unwrap();
    assert_eq!(ttl.granted_ttl(), 30);
    assert_eq!(ttl.keys(), [b"leased".to_vec()]);
    client.lease_revoke(lease).await.unwrap();
    assert!(client.get("leased", None).await.unwrap().kvs().is_empty());

    // The lock: A holds it, B waits.
    let lease_a = client.lease_grant(5, None).await.unwrap().id();
    let lease_b = client.lease_grant(5, None).await.unwrap().id();
    let renew_a = keep_alive(&client, lease_a);
    let renew_b = keep_alive(&client, lease_b);
    let a = claim(&client, "A", lease_a).await;
    acquire(&client, &a).await;
    let b = claim(&client, "B", lease_b).await;
    let waiting_b = tokio::spawn({
        let client = client.clone();
        async move {
            acquire(&client, &b).await;
            b
        }
    });

    // The leader's node crashes (no hand-over: the others elect a new leader
    // after the election timeout). A's lease is renewed through the new
    // leader (which starts every lease's time over), so A holds on, well
    // past its TTL, and B keeps waiting.
    let mut leader = None;
    for (i, endpoint) in cluster.endpoints.iter().enumerate() {
        let status = raft_client.status_of(endpoint).await.unwrap();
        if status.raft.role == raft_core::Role::Leader {
            leader = Some(i);
        }
    }
    let leader = leader.expect("a leader");
    cluster
        .servers
        .remove(leader)
        .crash()
        .await
        .expect("the leader crashes");
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert!(!waiting_b.is_finished(), "B took the lock while A held it");
    let holders = retry("reading the holder", || {
        let (mut c, key) = (client.clone(), a.key.clone());
        async move { c.get(key, None).await }
    })
    .await;
    assert_eq!(
        holders.kvs().len(),
        1,
        "A's claim is gone though A renewed it"
    );

    // A lets go: B gets the lock.
    release(&client, &a).await;
    let b = tokio::time::timeout(PATIENCE, waiting_b)
        .await
        .expect("B takes the lock once A let go")
        .unwrap();

    // B crashes (stops renewing, never releases): its lease expires, its
    // claim goes, and C takes the lock.
    renew_b.abort();
    let lease_c = retry("granting C's lease", || {
        let mut c = client.clone();
        async move { c.lease_grant(5, None).await }
    })
    .await
    .id();
    let renew_c = keep_alive(&client, lease_c);
    let c = claim(&client, "C", lease_c).await;
    let started = Instant::now();
    tokio::time::timeout(PATIENCE, acquire(&client, &c))
        .await
        .expect("C takes the lock once B's lease expired");
    let b_claim = retry("reading B's claim", || {
        let mut cl = client.clone();
        let key = b.key.clone();
        async move { cl.get(key, None).await }
    })
    .await;
    assert!(
        b_claim.kvs().is_empty(),
        "C holds the lock while B's claim stands"
    );
    eprintln!(
        "C took the lock {:.1} s after B stopped renewing a 5 s lease",
        started.elapsed().as_secs_f64()
    );
    renew_a.abort();
    renew_c.abort();
    cluster.shutdown().await;
}
