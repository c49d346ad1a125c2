//! etcd's v3 API as a second front door, driven by the real `etcdctl`
//! (Debian's `etcd-client`, 3.4): put, get (prefix, keys only, JSON), del,
//! txn, watch, leases, endpoint status, member list/add/remove,
//! move-leader and compaction against three nodes, through a follower too,
//! with roles from the client certificates. Without `etcdctl` on the
//! machine the test says so and checks nothing (`cargo xtask test` installs
//! it where it can).

mod common;

use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::process::Command;
use std::sync::Mutex;

use raft_transport_quic::Role;
use serde_json::Value;

fn free_tcp_address() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// `etcdctl` (v3 API) for `endpoints`, with the cluster CA and the
/// certificate `name` in `dir`.
fn etcdctl_command(dir: &Path, endpoints: &[SocketAddr], name: &str) -> Command {
    let endpoints: Vec<String> = endpoints.iter().map(|a| format!("https://{a}")).collect();
    let mut command = Command::new("etcdctl");
    command
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={}", endpoints.join(",")))
        .arg(format!("--cacert={}", dir.join("ca.pem").display()))
        .arg(format!(
            "--cert={}",
            dir.join(format!("{name}.pem")).display()
        ))
        .arg(format!(
            "--key={}",
            dir.join(format!("{name}.key")).display()
        ));
    command
}

/// Runs `etcdctl` against `endpoints` with the certificate `name` in
/// `dir`; its stdout, or its stderr as the error.
fn etcdctl(
    dir: &Path,
    endpoints: &[SocketAddr],
    name: &str,
    args: &[&str],
) -> Result<String, String> {
    let out = etcdctl_command(dir, endpoints, name)
        .arg("--dial-timeout=10s")
        .arg("--command-timeout=20s")
        .args(args)
        .output()
        .expect("etcdctl runs");
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// Runs `etcdctl txn` with `input` on its standard input (its interactive
/// format: comparisons, a blank line, the success operations, a blank line,
/// the failure operations, a blank line).
fn txn(dir: &Path, endpoints: &[SocketAddr], input: &str) -> String {
    use std::io::Write;
    let mut child = etcdctl_command(dir, endpoints, "admin")
        .arg("txn")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("etcdctl txn starts");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "etcdctl txn failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// etcdctl's JSON prints bytes as base64.
fn decode(value: &Value) -> String {
    use base64::Engine;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(value.as_str().expect("a base64 string"))
        .expect("base64");
    String::from_utf8(bytes).expect("UTF-8")
}

fn dir_of(cluster: &common::TestCluster) -> std::path::PathBuf {
    cluster.dir.path().to_path_buf()
}

/// A running `etcdctl watch`, its output lines collected.
struct Watching {
    child: std::process::Child,
    lines: std::sync::mpsc::Receiver<String>,
}

fn watch(dir: &Path, endpoints: &[SocketAddr], args: &[&str]) -> Watching {
    let mut child = etcdctl_command(dir, endpoints, "admin")
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("etcdctl watch starts");
    let stdout = child.stdout.take().unwrap();
    let (tx, lines) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    Watching { child, lines }
}

impl Watching {
    /// Waits (generously) for `count` lines and checks they are the first
    /// `count` of `expected`.
    fn wait_for(&mut self, expected: &[&str], count: usize) {
        let mut got = Vec::new();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while got.len() < count {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => got.push(line),
                Err(_) => panic!("the watch printed {got:?}, expected {expected:?}"),
            }
        }
        assert_eq!(got, expected[..count], "watch output");
    }
}

impl Drop for Watching {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Whether `etcdctl` is here; if not, says why the test checks nothing.
fn have_etcdctl() -> bool {
    if Command::new("etcdctl").arg("version").output().is_err() {
        eprintln!(
            "SKIPPED: etcdctl is not installed (Debian: apt-get install etcd-client); \
             the etcd API is not checked against it here"
        );
        return false;
    }
    true
}

/// Three nodes serving the etcd API, a leader elected, and `admin` and
/// `reader` client certificates in the cluster's directory; with the etcd
/// endpoints.
async fn etcd_cluster() -> (common::TestCluster, Vec<SocketAddr>) {
    let etcd: Mutex<Vec<SocketAddr>> = Mutex::new(Vec::new());
    let cluster = common::TestCluster::start(3, |c| {
        let address = free_tcp_address();
        c.etcd_listen = Some(address);
        etcd.lock().unwrap().push(address);
    })
    .await;
    let endpoints = etcd.lock().unwrap().clone();
    // Once a leader is elected (the raft-kv client waits for one).
    cluster.client().await.put("warm", "up").await.unwrap();
    let dir = cluster.dir.path().to_path_buf();
    for (name, role) in [("admin", Role::Admin), ("reader", Role::ReadOnly)] {
        cluster
            .ca
            .issue_client("test", name, role)
            .unwrap()
            .save(
                &dir.join(format!("{name}.pem")),
                &dir.join(format!("{name}.key")),
            )
            .unwrap();
    }
    (cluster, endpoints)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn etcdctl_puts_gets_deletes_and_reads_the_cluster() {
    if !have_etcdctl() {
        return;
    }
    let (cluster, endpoints) = etcd_cluster().await;
    let dir = dir_of(&cluster);
    let run = move |endpoints: Vec<SocketAddr>, name: &'static str, args: Vec<&'static str>| {
        let dir = dir.clone();
        tokio::task::spawn_blocking(move || etcdctl(&dir, &endpoints, name, &args))
    };
    let all = endpoints.clone();
    let ok = |out: Result<String, String>| out.unwrap_or_else(|e| panic!("etcdctl failed: {e}"));

    assert_eq!(
        ok(run(all.clone(), "admin", vec!["put", "k1", "v1"])
            .await
            .unwrap()),
        "OK\n"
    );
    // Through each node: a follower forwards the write to the leader.
    for (i, endpoint) in endpoints.iter().enumerate() {
        let key: &'static str = ["k2", "k3", "k4"][i];
        assert_eq!(
            ok(run(vec![*endpoint], "admin", vec!["put", key, "v"])
                .await
                .unwrap()),
            "OK\n"
        );
    }
    assert_eq!(
        ok(run(all.clone(), "admin", vec!["get", "k1"]).await.unwrap()),
        "k1\nv1\n"
    );
    let got = json(&ok(run(
        all.clone(),
        "reader",
        vec!["get", "--prefix", "k", "-w", "json"],
    )
    .await
    .unwrap()));
    assert_eq!(got["count"], 4);
    let kvs = got["kvs"].as_array().unwrap();
    assert_eq!(decode(&kvs[0]["key"]), "k1");
    assert_eq!(decode(&kvs[0]["value"]), "v1");
    // The cluster's warm-up write and four puts after etcd's revision 1.
    assert_eq!(got["header"]["revision"], 6);
    assert_eq!(
        ok(run(
            all.clone(),
            "reader",
            vec!["get", "--prefix", "k", "--keys-only", "--limit", "2"]
        )
        .await
        .unwrap()),
        "k1\n\nk2\n\n"
    );
    assert_eq!(
        ok(run(all.clone(), "reader", vec!["get", "--from-key", "k3"])
            .await
            .unwrap()),
        "k3\nv\nk4\nv\nwarm\nup\n"
    );
    assert_eq!(
        ok(run(all.clone(), "admin", vec!["del", "k1"]).await.unwrap()),
        "1\n"
    );
    assert_eq!(
        ok(run(all.clone(), "admin", vec!["del", "k1"]).await.unwrap()),
        "0\n"
    );
    assert_eq!(
        ok(run(all.clone(), "reader", vec!["get", "k1"]).await.unwrap()),
        ""
    );

    // The read-only certificate reads but cannot write.
    let refused = run(all.clone(), "reader", vec!["put", "k1", "no"])
        .await
        .unwrap()
        .unwrap_err();
    assert!(
        refused.contains("PermissionDenied") || refused.contains("permission denied"),
        "{refused}"
    );

    let status = json(&ok(run(
        all.clone(),
        "reader",
        vec!["endpoint", "status", "-w", "json"],
    )
    .await
    .unwrap()));
    let status = status.as_array().unwrap();
    assert_eq!(status.len(), 3);
    // The table etcd users read: a row per endpoint, one of them the leader.
    let table = ok(run(
        all.clone(),
        "reader",
        vec!["endpoint", "status", "-w", "table"],
    )
    .await
    .unwrap());
    assert!(
        table.contains("ENDPOINT") && table.contains("IS LEADER") && table.contains("RAFT TERM"),
        "{table}"
    );
    let rows: Vec<&str> = table.lines().filter(|l| l.contains("https://")).collect();
    assert_eq!(rows.len(), 3, "{table}");
    assert_eq!(
        rows.iter().filter(|r| r.contains(" true |")).count(),
        1,
        "one leader: {table}"
    );
    // The data directory's size: the log is on disk by now.
    assert!(
        status
            .iter()
            .all(|s| s["Status"]["dbSize"].as_u64().unwrap_or(0) > 0),
        "{status:?}"
    );
    let leaders: Vec<&Value> = status.iter().map(|s| &s["Status"]["leader"]).collect();
    assert!(leaders.iter().all(|l| *l == leaders[0]), "{leaders:?}");
    // Three members, each listing the client URL its etcd port published (clients
    // discover endpoints so); a member publishes once a leader takes it.
    let expected: std::collections::BTreeSet<String> =
        endpoints.iter().map(|e| format!("https://{e}")).collect();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let members = json(&ok(run(
            all.clone(),
            "reader",
            vec!["member", "list", "-w", "json"],
        )
        .await
        .unwrap()));
        assert_eq!(members["members"].as_array().unwrap().len(), 3);
        let listed: std::collections::BTreeSet<String> = members["members"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|m| m["clientURLs"].as_array().cloned().unwrap_or_default())
            .filter_map(|u| u.as_str().map(str::to_owned))
            .collect();
        if listed == expected {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "client URLs {listed:?}, expected {expected:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }

    // Membership: a learner added (its id is the next one), listed, removed.
    let spare = format!("--peer-urls=https://{}", free_tcp_address());
    let spare: &'static str = Box::leak(spare.into_boxed_str());
    let added = ok(run(
        all.clone(),
        "admin",
        vec!["member", "add", "node-4", spare, "--learner"],
    )
    .await
    .unwrap());
    assert!(added.contains(" 4 added to cluster"), "{added}");
    let listed = ok(run(all.clone(), "reader", vec!["member", "list"])
        .await
        .unwrap());
    assert!(
        listed
            .lines()
            .any(|l| l.starts_with("4,") && l.ends_with("true")),
        "{listed}"
    );
    let refused = run(all.clone(), "reader", vec!["member", "remove", "4"])
        .await
        .unwrap()
        .unwrap_err();
    assert!(refused.contains("permission denied"), "{refused}");
    let removed = ok(run(all.clone(), "admin", vec!["member", "remove", "4"])
        .await
        .unwrap());
    assert!(removed.contains(" 4 removed from cluster"), "{removed}");

    // The leader moves where it is asked to.
    let leader = leaders[0].as_u64().unwrap();
    let target: &'static str = if leader == 1 { "2" } else { "1" };
    let moved = ok(run(all.clone(), "admin", vec!["move-leader", target])
        .await
        .unwrap());
    assert!(moved.contains("Leadership transferred"), "{moved}");
    let status = json(&ok(run(
        all.clone(),
        "reader",
        vec!["endpoint", "status", "-w", "json"],
    )
    .await
    .unwrap()));
    let target_id: u64 = target.parse().unwrap();
    assert!(
        status
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["Status"]["leader"] == target_id),
        "{status}"
    );

    // Watches: live events under a prefix, and a replay from a revision.
    // From the next revision: however late etcdctl registers the watch, it
    // replays what it missed.
    let now = json(&ok(run(
        all.clone(),
        "reader",
        vec!["get", "k2", "-w", "json"],
    )
    .await
    .unwrap()))["header"]["revision"]
        .as_i64()
        .unwrap();
    let from = format!("--rev={}", now + 1);
    let mut live = watch(
        &dir_of(&cluster),
        &endpoints,
        &["watch", "--prefix", "w/", &from],
    );
    for args in [
        vec!["put", "w/1", "a"],
        vec!["put", "w/2", "b"],
        vec!["del", "w/1"],
    ] {
        ok(run(all.clone(), "admin", args).await.unwrap());
    }
    live.wait_for(&["PUT", "w/1", "a", "PUT", "w/2", "b", "DELETE", "w/1"], 8);
    let mut replay = watch(
        &dir_of(&cluster),
        &endpoints,
        &["watch", "--rev", "1", "k2"],
    );
    replay.wait_for(&["PUT", "k2", "v"], 3);
    // With --prev-kv each event shows the key as it was first (none for a
    // key created; etcdctl prints a deleted key with an empty value).
    let mut previous = watch(
        &dir_of(&cluster),
        &endpoints,
        &["watch", "--prev-kv", "pv", &from],
    );
    for args in [
        vec!["put", "pv", "a"],
        vec!["put", "pv", "b"],
        vec!["del", "pv"],
    ] {
        ok(run(all.clone(), "admin", args).await.unwrap());
    }
    let expected = [
        "PUT", "pv", "a", "PUT", "pv", "a", "pv", "b", "DELETE", "pv", "b", "pv", "",
    ];
    previous.wait_for(&expected, expected.len());
    drop((live, replay, previous));

    // Transactions: the comparison picks the branch, applied as one entry.
    let dir = dir_of(&cluster);
    let (d, e) = (dir.clone(), endpoints.clone());
    let swapped = tokio::task::spawn_blocking(move || {
        txn(&d, &e, "value(\"k2\") = \"v\"\nversion(\"nope\") = \"0\"\n\nput k2 swapped\nget k2\n\nput k2 lost\n\n")
    })
    .await
    .unwrap();
    assert_eq!(swapped, "SUCCESS\n\nOK\n\nk2\nswapped\n");
    let (d, e) = (dir.clone(), endpoints.clone());
    let failed = tokio::task::spawn_blocking(move || {
        txn(&d, &e, "value(\"k2\") = \"v\"\n\nput k2 lost\n\ndel k3\n\n")
    })
    .await
    .unwrap();
    assert_eq!(failed, "FAILURE\n\n1\n");
    assert_eq!(
        ok(run(all.clone(), "reader", vec!["get", "k2"]).await.unwrap()),
        "k2\nswapped\n"
    );
    // A range of keys deleted at once.
    assert_eq!(
        ok(run(all.clone(), "admin", vec!["del", "--prefix", "w/"])
            .await
            .unwrap()),
        "1\n"
    );
    assert_eq!(
        ok(run(all.clone(), "admin", vec!["del", "--prefix", "k"])
            .await
            .unwrap()),
        "2\n"
    );
    assert_eq!(
        ok(run(
            all.clone(),
            "reader",
            vec!["get", "--prefix", "", "--keys-only"]
        )
        .await
        .unwrap()),
        "warm\n\n"
    );
    // A past revision reads the keys as they were then (k2 before the swap,
    // k3 and k4 before the delete), from the watch history.
    let then: &'static str = Box::leak(format!("--rev={now}").into_boxed_str());
    assert_eq!(
        ok(
            run(all.clone(), "reader", vec!["get", "--prefix", "k", then])
                .await
                .unwrap()
        ),
        "k2\nv\nk3\nv\nk4\nv\n"
    );

    // What is not served says so.
    let users = run(all.clone(), "admin", vec!["user", "list"])
        .await
        .unwrap()
        .unwrap_err();
    assert!(users.contains("client certificate"), "{users}");

    // Tooling calls that have nothing to do here succeed.
    assert_eq!(
        ok(run(all.clone(), "admin", vec!["compaction", "3"])
            .await
            .unwrap()),
        "compacted revision 3\n"
    );
    assert_eq!(
        ok(run(all.clone(), "reader", vec!["alarm", "list"])
            .await
            .unwrap()),
        ""
    );
    let defrag = ok(run(all, "admin", vec!["defrag"]).await.unwrap());
    assert!(defrag.contains("Finished defragmenting"), "{defrag}");
    cluster.shutdown().await;
}

/// `etcdctl lease ...` and `put --lease`: a key put with a lease lives while
/// `lease keep-alive` renews it and is deleted once it stops (the leader
/// writes the expiry); a revoked lease takes its keys at once; a new leader
/// starts every lease's time over; a put naming a missing lease is refused
/// with etcd's message.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn etcdctl_leases_keep_keys_until_they_expire_or_are_revoked() {
    if !have_etcdctl() {
        return;
    }
    let (cluster, endpoints) = etcd_cluster().await;
    let dir = dir_of(&cluster);
    let run = {
        let (dir, endpoints) = (dir.clone(), endpoints.clone());
        move |name: &'static str, args: Vec<String>| {
            let (dir, endpoints) = (dir.clone(), endpoints.clone());
            async move {
                tokio::task::spawn_blocking(move || {
                    let args: Vec<&str> = args.iter().map(String::as_str).collect();
                    etcdctl(&dir, &endpoints, name, &args)
                })
                .await
                .unwrap()
            }
        }
    };
    let ok = |out: Result<String, String>| out.unwrap_or_else(|e| panic!("etcdctl failed: {e}"));
    let args = |text: &str| text.split(' ').map(String::from).collect::<Vec<_>>();
    // "lease 00000000000000ab granted with TTL(5s)"
    let grant = |out: String| -> String {
        let mut words = out.split_whitespace();
        assert_eq!(words.next(), Some("lease"), "{out}");
        let id = words.next().unwrap().to_string();
        assert!(out.contains("granted with TTL("), "{out}");
        id
    };

    // A lease renewed by `lease keep-alive` keeps its keys past its TTL.
    // TTL 10: etcdctl renews every TTL/3, leaving a busy machine seconds of
    // slack.
    let kept = grant(ok(run("admin", args("lease grant 10")).await));
    for key in ["eph/1", "eph/2"] {
        let put = format!("put --lease={kept} {key} x");
        assert_eq!(ok(run("admin", args(&put)).await), "OK\n");
    }
    let ttl = ok(run("reader", args(&format!("lease timetolive {kept} --keys"))).await);
    assert!(
        ttl.contains("granted with TTL(10s)") && ttl.contains("attached keys([eph/1 eph/2])"),
        "{ttl}"
    );
    let listed = ok(run("reader", args("lease list")).await);
    assert!(listed.contains(&kept), "{listed}");
    let mut renewing = watch(&dir, &endpoints, &["lease", "keep-alive", &kept]);
    renewing.wait_for(&[&format!("lease {kept} keepalived with TTL(10)")], 1);
    tokio::time::sleep(std::time::Duration::from_secs(15)).await;
    assert_eq!(
        ok(run("reader", args("get --prefix eph/ --keys-only")).await),
        "eph/1\n\neph/2\n\n",
        "the keys of a lease kept alive are still there after longer than its TTL"
    );
    // The renewals stop: the keys go within the TTL (and the leader's
    // check), generously waited for.
    drop(renewing);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let left = ok(run("reader", args("get --prefix eph/ --keys-only")).await);
        if left.is_empty() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the keys of an expired lease are still there: {left}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let gone = ok(run("reader", args(&format!("lease timetolive {kept}"))).await);
    assert!(gone.contains("already expired"), "{gone}");

    // Revoked: its key goes at once.
    let revoked = grant(ok(run("admin", args("lease grant 600")).await));
    ok(run("admin", args(&format!("put --lease={revoked} doomed x"))).await);
    let out = ok(run("admin", args(&format!("lease revoke {revoked}"))).await);
    assert_eq!(out, format!("lease {revoked} revoked\n"));
    assert_eq!(ok(run("reader", args("get doomed")).await), "");

    // A new leader starts the lease's time over (etcd does the same).
    let long = grant(ok(run("admin", args("lease grant 8")).await));
    tokio::time::sleep(std::time::Duration::from_secs(4)).await;
    let status = json(&ok(run("reader", args("endpoint status -w json")).await));
    let leader = status[0]["Status"]["leader"].as_u64().unwrap();
    let target = if leader == 1 { "2" } else { "1" };
    ok(run("admin", args(&format!("move-leader {target}"))).await);
    let ttl = ok(run("reader", args(&format!("lease timetolive {long}"))).await);
    let remaining: u64 = ttl
        .split("remaining(")
        .nth(1)
        .and_then(|rest| rest.split('s').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no remaining time in {ttl}"));
    assert!(
        remaining >= 6,
        "4 s into an 8 s lease a new leader gives it its full time again: {ttl}"
    );

    // Errors, as etcd words them; a reader may not renew.
    let missing = run("admin", args("put --lease=1234abcd k v"))
        .await
        .unwrap_err();
    assert!(missing.contains("requested lease not found"), "{missing}");
    let refused = run("reader", args(&format!("lease keep-alive --once {long}")))
        .await
        .unwrap_err();
    assert!(refused.contains("permission denied"), "{refused}");
    cluster.shutdown().await;
}

/// The etcd-client crate on the cluster's `admin` certificate.
async fn etcd_client_of(dir: &Path, endpoints: &[SocketAddr]) -> etcd_client::Client {
    use etcd_client::{Certificate, ConnectOptions, Identity, TlsOptions};
    let read = |name: &str| std::fs::read_to_string(dir.join(name)).unwrap();
    let options = ConnectOptions::new()
        .with_tls(
            TlsOptions::new()
                .ca_certificate(Certificate::from_pem(read("ca.pem")))
                .identity(Identity::from_pem(read("admin.pem"), read("admin.key"))),
        )
        .with_timeout(std::time::Duration::from_secs(20));
    let endpoints: Vec<String> = endpoints.iter().map(|a| format!("https://{a}")).collect();
    etcd_client::Client::connect(endpoints, Some(options))
        .await
        .unwrap()
}

/// Defects an outside review found where raft-kv answered otherwise than
/// etcd 3.4 (each answer here is etcd's): a range sorts before its limit
/// and counts every key of the range; a transaction takes one revision and
/// refuses to change a key twice; a watch id in use is refused and a cancel
/// of an unknown one ignored; ranges filter on create and mod revision; a
/// future revision and an empty key get etcd's errors.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_etcd_api_answers_as_etcd_does() {
    use etcd_client::{Compare, CompareOp, GetOptions, SortOrder, SortTarget, Txn, TxnOp};
    let (cluster, endpoints) = etcd_cluster().await;
    let dir = dir_of(&cluster);
    let mut client = etcd_client_of(&dir, &endpoints).await;
    // Created in the order c, a, b: by create revision, c comes first.
    for key in ["e/c", "e/a", "e/b"] {
        client.put(key, "v", None).await.unwrap();
    }
    let first_created = client
        .get(
            "e/",
            Some(
                GetOptions::new()
                    .with_prefix()
                    .with_sort(SortTarget::Create, SortOrder::Ascend)
                    .with_limit(1),
            ),
        )
        .await
        .unwrap();
    assert_eq!(
        first_created.kvs()[0].key(),
        b"e/c",
        "sorted before the limit"
    );
    assert!(first_created.more());
    assert_eq!(first_created.count(), 3, "count is every key of the range");
    let counted = client
        .get(
            "e/",
            Some(
                GetOptions::new()
                    .with_prefix()
                    .with_count_only()
                    .with_limit(1),
            ),
        )
        .await
        .unwrap();
    assert_eq!((counted.count(), counted.more()), (3, false));
    let newest = client
        .get(
            "e/",
            Some(
                GetOptions::new()
                    .with_prefix()
                    .with_sort(SortTarget::Mod, SortOrder::Descend),
            ),
        )
        .await
        .unwrap();
    let keys: Vec<_> = newest.kvs().iter().map(|kv| kv.key().to_vec()).collect();
    assert_eq!(keys, [b"e/b".to_vec(), b"e/a".to_vec(), b"e/c".to_vec()]);
    // Filters on create revision (the election recipe's).
    let a_rev = newest.kvs()[1].create_revision();
    let older = client
        .get(
            "e/",
            Some(
                GetOptions::new()
                    .with_prefix()
                    .with_max_create_revision(a_rev),
            ),
        )
        .await
        .unwrap();
    let keys: Vec<_> = older.kvs().iter().map(|kv| kv.key().to_vec()).collect();
    assert_eq!(keys, [b"e/a".to_vec(), b"e/c".to_vec()]);
    assert_eq!(older.count(), 3, "count is before the filters");

    // A transaction takes one revision; an atomic rename is never seen half
    // done.
    let before = client
        .get("e/a", None)
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision();
    let renamed = client
        .txn(Txn::new().and_then([
            TxnOp::delete("e/a", None),
            TxnOp::put("e/z", "moved", None),
            TxnOp::put("e/y", "new", None),
        ]))
        .await
        .unwrap();
    let after = renamed.header().unwrap().revision();
    assert_eq!(after, before + 1, "one revision for a transaction");
    let z = client.get("e/z", None).await.unwrap();
    let y = client.get("e/y", None).await.unwrap();
    assert_eq!(z.kvs()[0].mod_revision(), after);
    assert_eq!(y.kvs()[0].mod_revision(), after);
    let halfway = client
        .get(
            "e/",
            Some(GetOptions::new().with_prefix().with_revision(before)),
        )
        .await
        .unwrap();
    let keys: Vec<_> = halfway.kvs().iter().map(|kv| kv.key().to_vec()).collect();
    assert_eq!(keys, [b"e/a".to_vec(), b"e/b".to_vec(), b"e/c".to_vec()]);
    assert_eq!(
        halfway.header().unwrap().revision(),
        after,
        "a read at a past revision answers the current one in its header"
    );
    // A range delete of several keys: one revision.
    let deleted = client
        .delete("e/", Some(etcd_client::DeleteOptions::new().with_prefix()))
        .await
        .unwrap();
    assert_eq!(deleted.deleted(), 4);
    assert_eq!(deleted.header().unwrap().revision(), after + 1);
    // A transaction that puts one key twice is refused.
    let twice = client
        .txn(Txn::new().and_then([TxnOp::put("t", "1", None), TxnOp::put("t", "2", None)]))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        twice.contains("etcdserver: duplicate key given in txn request"),
        "{twice}"
    );
    // Inside a transaction, a read before the first change answers the
    // revision before it.
    let reads = client
        .txn(
            Txn::new()
                .when([Compare::version("t", CompareOp::Equal, 0)])
                .and_then([TxnOp::get("t", None), TxnOp::put("t", "1", None)]),
        )
        .await
        .unwrap();
    let rev = reads.header().unwrap().revision();
    match &reads.op_responses()[0] {
        etcd_client::TxnOpResponse::Get(get) => {
            assert_eq!(get.header().unwrap().revision(), rev - 1)
        }
        other => panic!("{other:?}"),
    }

    // Reads inside a transaction take etcd's options too (they refused the
    // whole transaction): sort before limit, count of the range, keys only,
    // count only.
    for key in ["s/b", "s/a", "s/c"] {
        client.put(key, "value", None).await.unwrap();
    }
    let inside = client
        .txn(
            Txn::new().and_then([
                TxnOp::get(
                    "s/",
                    Some(
                        GetOptions::new()
                            .with_prefix()
                            .with_sort(SortTarget::Create, SortOrder::Descend)
                            .with_limit(1)
                            .with_keys_only(),
                    ),
                ),
                TxnOp::get(
                    "s/",
                    Some(GetOptions::new().with_prefix().with_count_only()),
                ),
            ]),
        )
        .await
        .unwrap();
    match &inside.op_responses()[..] {
        [
            etcd_client::TxnOpResponse::Get(sorted),
            etcd_client::TxnOpResponse::Get(counted),
        ] => {
            assert_eq!(
                sorted.kvs()[0].key(),
                b"s/c",
                "the newest by create revision"
            );
            assert!(sorted.kvs()[0].value().is_empty(), "keys only");
            assert_eq!((sorted.count(), sorted.more()), (3, true));
            assert_eq!((counted.count(), counted.kvs().len()), (3, 0));
        }
        other => panic!("{other:?}"),
    }

    // Errors clients match on.
    let future = client
        .get(
            "e/",
            Some(GetOptions::new().with_prefix().with_revision(rev + 100)),
        )
        .await
        .unwrap_err()
        .to_string();
    assert!(
        future.contains("mvcc: required revision is a future revision"),
        "{future}"
    );
    let empty = client.get("", None).await.unwrap_err().to_string();
    assert!(empty.contains("etcdserver: key is not provided"), "{empty}");

    // Compaction compacts: reads and watches before it are refused with
    // etcd's answers, reads at it still work, and compacting at or below
    // it again is refused.
    let now = client
        .get("t", None)
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision();
    client.compact(now - 1, None).await.unwrap();
    let below = client
        .get("t", Some(GetOptions::new().with_revision(now - 2)))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        below.contains("required revision has been compacted"),
        "{below}"
    );
    client
        .get("t", Some(GetOptions::new().with_revision(now - 1)))
        .await
        .expect("the compaction's own revision is still read");
    let again = client.compact(now - 2, None).await.unwrap_err().to_string();
    assert!(
        again.contains("required revision has been compacted"),
        "{again}"
    );
    let mut old_watch = client
        .watch(
            "t",
            Some(etcd_client::WatchOptions::new().with_start_revision(now - 2)),
        )
        .await
        .unwrap();
    let canceled = loop {
        let message = old_watch.message().await.unwrap().unwrap();
        if message.canceled() {
            break message;
        }
    };
    assert_eq!(canceled.compact_revision(), now - 1, "{canceled:?}");

    // Watch ids: one in use is refused (as watch -1), a cancel of an
    // unknown one ignored.
    let mut stream = client
        .watch("w", Some(etcd_client::WatchOptions::new().with_watch_id(7)))
        .await
        .unwrap();
    stream
        .watch("w", Some(etcd_client::WatchOptions::new().with_watch_id(7)))
        .await
        .unwrap();
    let refused = loop {
        let message = stream.message().await.unwrap().unwrap();
        if message.canceled() {
            break message;
        }
    };
    assert_eq!(refused.watch_id(), -1);
    assert!(
        refused.cancel_reason().contains("duplicate watch ID"),
        "{refused:?}"
    );
    stream.cancel(99).await.unwrap();
    client.put("w", "after", None).await.unwrap();
    let next = stream.message().await.unwrap().unwrap();
    assert_eq!((next.watch_id(), next.canceled()), (7, false), "{next:?}");
    assert_eq!(next.events().len(), 1, "{next:?}");
    assert_eq!(next.events()[0].kv().unwrap().value(), b"after");
}
