//! End-to-end tests with real processes: `raft-kv` nodes started as child
//! processes on loopback, administered and used with the `raft-cli` binary.
//!
//! Needs the raft-kv server binary next to raft-cli (`cargo test --workspace`
//! builds it; otherwise `cargo build -p raft-kv`). Every wait has a generous
//! deadline; nothing here measures speed.

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::Duration;

use bytes::Bytes;
use common::{CLI_TIMEOUT, Cluster, Options, SETTLE, raft_cli, run_with_timeout, wait_for};
use raft_kv::protocol::{Consistency, ReadOp};
use serde_json::Value;

fn row(rows: &[Value], id: u64) -> Option<&Value> {
    rows.iter().find(|r| r["id"].as_u64() == Some(id))
}

/// Writes keys `prefix{n}` until told to stop; returns the acknowledged ones.
fn start_writer(
    cluster: &Cluster,
    ids: &[u64],
    prefix: &'static str,
) -> (Arc<AtomicBool>, tokio::task::JoinHandle<Vec<String>>) {
    let client = cluster.client(ids);
    let stop = Arc::new(AtomicBool::new(false));
    let stopping = stop.clone();
    let handle = cluster.runtime.spawn(async move {
        let mut acknowledged = Vec::new();
        let mut n = 0u64;
        while !stopping.load(Ordering::Relaxed) {
            let key = format!("{prefix}{n:06}");
            // A write that fails (e.g. timed out while leadership moves) may
            // or may not have happened; only acknowledged ones are checked.
            if client.put(key.clone(), format!("v{n}")).await.is_ok() {
                acknowledged.push(key);
            }
            n += 1;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        acknowledged
    });
    (stop, handle)
}

/// Every key in `keys` reads back (linearizably) through `ids`.
fn assert_all_present(cluster: &Cluster, ids: &[u64], prefix: &str, keys: &[String]) {
    let client = cluster.client(ids);
    let found: BTreeMap<String, Bytes> = cluster.block_on(async {
        let mut found = BTreeMap::new();
        let mut start = Bytes::from(prefix.to_string());
        let end = raft_kv::protocol::prefix_end(prefix.as_bytes());
        loop {
            let page = client
                .read(
                    ReadOp::Scan {
                        start: start.clone(),
                        end: end.clone(),
                        limit: 1000,
                        revision: 0,
                    },
                    Consistency::Linearizable,
                )
                .await
                .expect("scan");
            for kv in &page.kvs {
                found.insert(
                    String::from_utf8_lossy(&kv.key).into_owned(),
                    kv.value.clone(),
                );
            }
            match page.kvs.last() {
                Some(last) if page.more => {
                    start = raft_kv::protocol::key_after(&last.key);
                }
                _ => break,
            }
        }
        found
    });
    let missing: Vec<&String> = keys.iter().filter(|k| !found.contains_key(*k)).collect();
    assert!(
        missing.is_empty(),
        "{} of {} acknowledged writes are missing, e.g. {:?}",
        missing.len(),
        keys.len(),
        &missing[..missing.len().min(5)]
    );
}

#[test]
fn three_nodes_elect_a_leader_and_serve_through_every_node() {
    let cluster = Cluster::start(3, Options::default());
    let leader = cluster.wait_for_leader(&[1, 2, 3]);

    // Status: all three, exactly one leader, as a table too.
    let rows = cluster.status_at(&[1, 2, 3]).expect("status");
    assert_eq!(rows.len(), 3, "{rows:?}");
    assert_eq!(rows.iter().filter(|r| r["role"] == "leader").count(), 1);
    assert_eq!(row(&rows, leader).unwrap()["lag"], 0);
    let table = cluster.cli(&["status"]);
    table.assert_success();
    assert!(
        table.stdout.starts_with("ID  ADDRESS")
            && table.stdout.contains("leader")
            && table.stdout.lines().count() == 4,
        "{table}"
    );
    let members = cluster.cli_json(&["members"]);
    assert_eq!(members.as_array().unwrap().len(), 3, "{members}");
    assert!(
        members
            .as_array()
            .unwrap()
            .iter()
            .all(|m| m["voter"] == true)
    );

    // Writes through every node (followers forward), reads through every node.
    for id in [1, 2, 3] {
        cluster
            .cli_at(
                &cluster.address(id),
                &["put", &format!("k{id}"), &format!("v{id}")],
            )
            .assert_success();
    }
    for reader in [1, 2, 3] {
        for key in [1, 2, 3] {
            let output = cluster.cli_at(
                &cluster.address(reader),
                &["get", &format!("k{key}"), "--output", "json"],
            );
            output.assert_success();
            assert_eq!(output.json()["value"], format!("v{key}"), "{output}");
        }
    }
    // A stale read from a follower eventually sees the write too.
    let follower = [1, 2, 3].into_iter().find(|id| *id != leader).unwrap();
    wait_for("a stale read on a follower", SETTLE, || {
        let output = cluster.cli_at(
            &cluster.address(follower),
            &["get", "k3", "--consistency", "stale", "--output", "json"],
        );
        match output.code() {
            Some(0) if output.json()["value"] == "v3" => Ok(()),
            _ => Err(output.to_string()),
        }
    });

    // Missing keys, compare-and-swap, scan, delete.
    let missing = cluster.cli(&["get", "nope"]);
    assert_eq!(missing.code(), Some(1), "{missing}");
    assert!(missing.stdout.contains("not found"), "{missing}");
    let failed = cluster.cli(&["cas", "k1", "--expected", "wrong", "--new", "x"]);
    assert_eq!(failed.code(), Some(1), "{failed}");
    assert!(
        failed.stdout.contains("v1"),
        "the current value is printed: {failed}"
    );
    cluster
        .cli(&["cas", "k1", "--expected", "v1", "--new", "w1"])
        .assert_success();
    cluster
        .cli(&["cas", "fresh", "--absent", "--new", "1"])
        .assert_success();
    assert_eq!(
        cluster
            .cli(&["cas", "fresh", "--absent", "--new", "2"])
            .code(),
        Some(1)
    );
    let scan = cluster.cli_json(&["scan", "--prefix", "k"]);
    let values: Vec<&str> = scan["kvs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|kv| kv["value"].as_str().unwrap())
        .collect();
    assert_eq!(values, ["w1", "v2", "v3"], "{scan}");
    let limited = cluster.cli_json(&["scan", "--start", "k2", "--limit", "1"]);
    assert_eq!(limited["kvs"][0]["key"], "k2");
    assert_eq!(limited["more"], true);
    let deleted = cluster.cli_json(&["delete", "k2"]);
    assert_eq!(deleted["deleted"], true, "{deleted}");
    assert_eq!(cluster.cli(&["get", "k2"]).code(), Some(1));
    let again = cluster.cli_json(&["delete", "k2"]);
    assert_eq!(again["deleted"], false, "{again}");

    // Values for scripts: `put KEY` takes standard input byte for byte (a
    // large binary value here), `get --print-value-only` gives it back.
    let value: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 % 256) as u8).collect();
    let put = cluster.cli_with_stdin(&["put", "blob"], &value);
    put.assert_success();
    let got = cluster.cli_raw(&["get", "blob", "--print-value-only"]);
    assert_eq!(got.status.code(), Some(0));
    assert!(got.stdout == value, "{} bytes back", got.stdout.len());
    let too_big = vec![0u8; raft_kv::protocol::MAX_VALUE_LEN + 1];
    let refused = cluster.cli_with_stdin(&["put", "blob"], &too_big);
    assert_eq!(refused.code(), Some(2), "{refused}");
    assert!(refused.stderr.contains("bytes"), "{refused}");
    let previous = cluster.cli_json(&["put", "k1", "again", "--prev-kv"]);
    assert_eq!(previous["previous"]["value"], "w1", "{previous}");

    // The load generator: a warm-up that is not counted, then the window,
    // with a full session table.
    let bench = cluster.cli_json(&[
        "bench",
        "--clients",
        "4",
        "--conns",
        "2",
        "--warmup",
        "1",
        "--duration",
        "1",
        "--open-sessions",
        "50",
    ]);
    assert_eq!(bench["workload"], "put+50-sessions", "{bench}");
    assert_eq!(bench["errors"], 0, "{bench}");
    assert!(bench["ops"].as_u64().unwrap() > 0, "{bench}");
    assert!(bench["secs"].as_f64().unwrap() >= 1.0, "{bench}");
    // Every node reports its CPU time: the servers' CPU per operation.
    let cpu = bench["cpu_us_per_op"].as_f64();
    assert!(cpu.is_some_and(|cpu| cpu > 0.0), "{bench}");
}

#[test]
fn add_node_remove_node_and_transfer_leader_while_writes_continue() {
    let mut cluster = Cluster::start(3, Options::default());
    cluster.wait_for_leader(&[1, 2, 3]);
    let (stop, writer) = start_writer(&cluster, &[1, 2, 3], "load/");

    // Node 4 starts empty and is added: learner, caught up, then voter.
    let address = cluster.start_joining_node(4);
    let added = cluster.cli_at(
        &cluster.endpoints_of(&[1, 2, 3]),
        &["add-node", "4", &address, "--output", "json"],
    );
    added.assert_success();
    assert!(added.stderr.contains("as a learner"), "{added}");
    let members = added.json();
    let four = members
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["id"] == 4)
        .unwrap_or_else(|| panic!("node 4 is not a member: {members}"));
    assert_eq!(four["voter"], true, "{members}");
    let leader = cluster.wait_for_leader(&[1, 2, 3, 4]);

    // Take a follower other than the new node out.
    let removed = [1, 2, 3].into_iter().find(|id| *id != leader).unwrap();
    let members = cluster.cli_json(&["remove-node", &removed.to_string()]);
    assert_eq!(members.as_array().unwrap().len(), 3, "{members}");
    assert!(
        members
            .as_array()
            .unwrap()
            .iter()
            .all(|m| m["id"] != removed)
    );
    cluster.kill(removed);
    let remaining: Vec<u64> = [1, 2, 3, 4]
        .into_iter()
        .filter(|id| *id != removed)
        .collect();
    let leader = cluster.wait_for_leader(&remaining);

    // Hand leadership to the new node (or, if it already leads, away from it).
    let target = if leader == 4 {
        remaining.iter().copied().find(|id| *id != 4).unwrap()
    } else {
        4
    };
    let moved = cluster.cli_at(
        &cluster.endpoints_of(&remaining),
        &[
            "transfer-leader",
            "--to",
            &target.to_string(),
            "--output",
            "json",
        ],
    );
    moved.assert_success();
    assert_eq!(moved.json()["leader"], target, "{moved}");
    assert_eq!(cluster.wait_for_leader(&remaining), target);

    // `--learner` stops after adding: node 5 replicates but does not vote.
    let address = cluster.start_joining_node(5);
    let added = cluster.cli_at(
        &cluster.endpoints_of(&remaining),
        &["add-node", "5", &address, "--learner", "--output", "json"],
    );
    added.assert_success();
    let members = added.json();
    let five = members
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["id"] == 5)
        .unwrap_or_else(|| panic!("node 5 is not a member: {members}"));
    assert_eq!(five["voter"], false, "{members}");
    wait_for("node 5 to follow as a learner", SETTLE, || {
        let rows = cluster.status_at(&remaining)?;
        match row(&rows, 5) {
            Some(r) if r["role"] == "learner" && r["health"] == "ok" => Ok(()),
            other => Err(format!("node 5: {other:?}")),
        }
    });
    // A learner can be removed too.
    let removed_learner = cluster.cli_at(
        &cluster.endpoints_of(&remaining),
        &["remove-node", "5", "--output", "json"],
    );
    removed_learner.assert_success();
    let members = removed_learner.json();
    assert!(
        members.as_array().unwrap().iter().all(|m| m["id"] != 5),
        "{members}"
    );
    cluster.kill(5);

    stop.store(true, Ordering::Relaxed);
    let acknowledged = cluster.block_on(writer).expect("writer");
    assert!(!acknowledged.is_empty(), "the writer made progress");
    assert_all_present(&cluster, &remaining, "load/", &acknowledged);
}

#[test]
fn a_killed_leader_is_replaced_and_a_restarted_cluster_keeps_every_write() {
    // A small snapshot threshold so that restarts also restore snapshots.
    let mut cluster = Cluster::start(
        3,
        Options {
            snapshot_threshold: 60,
            snapshot_retention: 10,
            ..Options::default()
        },
    );
    let first = cluster.wait_for_leader(&[1, 2, 3]);
    let client = cluster.client(&[1, 2, 3]);
    let mut acknowledged = Vec::new();
    for n in 0..40 {
        let key = format!("d/{n:04}");
        cluster
            .block_on(client.put(key.clone(), "before"))
            .expect("put");
        acknowledged.push(key);
    }

    cluster.kill(first);
    let survivors: Vec<u64> = [1, 2, 3].into_iter().filter(|id| *id != first).collect();
    let second = cluster.wait_for_leader(&survivors);
    assert_ne!(second, first);
    let rows = cluster.status_at(&[1, 2, 3]).expect("status");
    assert_eq!(
        row(&rows, first).unwrap()["health"],
        "unreachable",
        "{rows:?}"
    );
    for n in 40..120 {
        let key = format!("d/{n:04}");
        cluster
            .block_on(client.put(key.clone(), "after"))
            .expect("put");
        acknowledged.push(key);
    }

    // The killed node comes back and catches up.
    cluster.start_node(first);
    let last = acknowledged.last().unwrap().clone();
    wait_for("the restarted node to catch up", SETTLE, || {
        let output = cluster.cli_at(
            &cluster.address(first),
            &["get", &last, "--consistency", "stale"],
        );
        if output.code() == Some(0) {
            Ok(())
        } else {
            Err(output.to_string())
        }
    });
    cluster.wait_for_leader(&[1, 2, 3]);

    // The whole cluster stops (one gracefully, two killed) and starts again.
    assert!(cluster.terminate(1), "SIGTERM stops a node cleanly");
    cluster.kill(2);
    cluster.kill(3);
    for id in [1, 2, 3] {
        cluster.start_node(id);
    }
    cluster.wait_for_leader(&[1, 2, 3]);
    assert_all_present(&cluster, &[1, 2, 3], "d/", &acknowledged);
    let scan = cluster.cli_json(&["scan", "--prefix", "d/", "--limit", "1000"]);
    assert_eq!(scan["kvs"].as_array().unwrap().len(), acknowledged.len());
}

#[test]
fn a_node_that_missed_many_writes_catches_up_by_snapshot() {
    const THRESHOLD: u64 = 50;
    let mut cluster = Cluster::start(
        3,
        Options {
            snapshot_threshold: THRESHOLD,
            snapshot_retention: 5,
            ..Options::default()
        },
    );
    let leader = cluster.wait_for_leader(&[1, 2, 3]);
    let behind = [1, 2, 3].into_iter().find(|id| *id != leader).unwrap();
    let others: Vec<u64> = [1, 2, 3].into_iter().filter(|id| *id != behind).collect();
    let client = cluster.client(&others);
    cluster.block_on(client.put("s/start", "1")).expect("put");

    assert!(cluster.terminate(behind), "SIGTERM stops a node cleanly");
    // More than twice the threshold, and on until the leader has compacted
    // past every entry it already sent the stopped node: the transport
    // queues appends for a peer that is away (up to the leader's inflight
    // window) and delivers them when it returns, so only entries beyond
    // those force a snapshot.
    let mut written = 0u64;
    let write_batch = |written: &mut u64, count: u64| {
        for _ in 0..count {
            cluster
                .block_on(client.put(format!("s/{written:05}"), format!("{written}")))
                .expect("put");
            *written += 1;
        }
    };
    write_batch(&mut written, 2 * THRESHOLD + 30);
    loop {
        let rows = cluster.status_at(&others).expect("status");
        let leader_row = rows
            .iter()
            .find(|r| r["role"] == "leader")
            .expect("a leader among the running nodes");
        let raft = &leader_row["node"]["raft"];
        let first_index = raft["first_index"].as_u64().expect("first_index");
        let next_index = raft["followers"]
            .as_array()
            .and_then(|f| f.iter().find(|f| f["id"].as_u64() == Some(behind)))
            .and_then(|f| f["next_index"].as_u64())
            .expect("the leader tracks the stopped node");
        if first_index > next_index {
            break;
        }
        assert!(
            written < 5_000,
            "the leader never compacted past index {next_index} (first index {first_index})"
        );
        write_batch(&mut written, THRESHOLD);
    }
    cluster.start_node(behind);

    let installed = wait_for(
        &format!("node {behind} to install a snapshot and catch up"),
        SETTLE,
        || {
            let rows = cluster.status_at(&[1, 2, 3])?;
            let leader_row = rows
                .iter()
                .find(|r| r["role"] == "leader")
                .ok_or("no leader")?;
            let me = row(&rows, behind).ok_or("not listed")?;
            let installed = me["node"]["raft"]["counters"]["snapshots_installed"]
                .as_u64()
                .ok_or_else(|| format!("no counters: {me}"))?;
            if installed == 0 {
                return Err(format!("no snapshot installed yet: {me}"));
            }
            if me["applied"].as_u64() < leader_row["commit"].as_u64() {
                return Err(format!(
                    "applied {} < commit {}",
                    me["applied"], leader_row["commit"]
                ));
            }
            Ok(installed)
        },
    );
    assert!(installed > 0);

    // Its data equals the others' (stale reads: each node's own state).
    let scan_of = |id: u64| {
        let output = cluster.cli_at(
            &cluster.address(id),
            &[
                "scan",
                "--prefix",
                "s/",
                "--limit",
                "10000",
                "--consistency",
                "stale",
                "--output",
                "json",
            ],
        );
        output.assert_success();
        output.json()["kvs"].clone()
    };
    wait_for("the same data on every node", SETTLE, || {
        let expected = scan_of(1);
        let count = expected.as_array().map_or(0, Vec::len) as u64;
        if count != written + 1 {
            return Err(format!("node 1 has {count} keys, not {}", written + 1));
        }
        for id in [2, 3] {
            if scan_of(id) != expected {
                return Err(format!("node {id} differs from node 1"));
            }
        }
        Ok(())
    });
}

/// A `raft-cli watch` process whose JSON lines arrive on a channel.
struct WatchProcess {
    child: std::process::Child,
    lines: mpsc::Receiver<String>,
}

impl WatchProcess {
    fn start(cluster: &Cluster, endpoints: &str, args: &[&str]) -> Self {
        let (ca, cert, key) = cluster.client_files();
        let mut child = Command::new(raft_cli())
            .args(["--endpoints", endpoints, "--output", "json"])
            .arg("--ca")
            .arg(ca)
            .arg("--cert")
            .arg(cert)
            .arg("--key")
            .arg(key)
            .arg("watch")
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start raft-cli watch");
        let stdout = child.stdout.take().expect("piped");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                match line {
                    Ok(line) => {
                        if tx.send(line).is_err() {
                            return;
                        }
                    }
                    Err(_) => return,
                }
            }
        });
        Self { child, lines }
    }

    /// The next `count` events (revision, kind, key, value).
    fn take(&mut self, count: usize) -> Vec<(u64, String, String, String)> {
        let mut events = Vec::new();
        while events.len() < count {
            let line = self.lines.recv_timeout(SETTLE).unwrap_or_else(|_| {
                panic!(
                    "the watch printed {} of {count} events within {SETTLE:?} (exit status: {:?})",
                    events.len(),
                    self.child.try_wait()
                )
            });
            let event: Value = serde_json::from_str(&line)
                .unwrap_or_else(|e| panic!("watch printed a line that is not JSON ({e}): {line}"));
            events.push((
                event["revision"].as_u64().expect("revision"),
                event["kind"].as_str().expect("kind").to_string(),
                event["key"].as_str().expect("key").to_string(),
                event["value"].as_str().expect("value").to_string(),
            ));
        }
        events
    }
}

impl Drop for WatchProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn a_prefix_watch_sees_every_change_in_order_and_resumes() {
    let mut cluster = Cluster::start(3, Options::default());
    cluster.wait_for_leader(&[1, 2, 3]);
    let client = cluster.client(&[1, 2, 3]);
    let first = cluster.block_on(client.put("w/000", "0")).expect("put");
    cluster.block_on(client.put("other", "x")).expect("put");

    // The watch process talks to node 1 first (the first endpoint).
    let mut watch = WatchProcess::start(
        &cluster,
        &cluster.endpoints_of(&[1, 2, 3]),
        &[
            "--prefix",
            "w/",
            "--from-revision",
            &first.revision.to_string(),
        ],
    );
    let mut expected = vec![(
        first.revision,
        "put".to_string(),
        "w/000".to_string(),
        "0".to_string(),
    )];
    let write = |cluster: &Cluster, n: u64, expected: &mut Vec<_>| {
        let key = format!("w/{n:03}");
        if n % 7 == 3 {
            let r = cluster
                .block_on(client.delete(format!("w/{:03}", n - 1)))
                .expect("delete");
            expected.push((
                r.revision,
                "delete".into(),
                format!("w/{:03}", n - 1),
                String::new(),
            ));
        }
        let r = cluster
            .block_on(client.put(key.clone(), n.to_string()))
            .expect("put");
        expected.push((r.revision, "put".into(), key, n.to_string()));
        cluster
            .block_on(client.put(format!("unwatched/{n}"), "x"))
            .expect("put");
    };
    for n in 1..=20 {
        write(&cluster, n, &mut expected);
    }
    let mut seen = watch.take(expected.len());
    assert_eq!(seen, expected, "events in commit order, none missing");

    // Kill the node the watch is on; it resumes elsewhere from where it was.
    cluster.kill(1);
    for n in 21..=40 {
        write(&cluster, n, &mut expected);
    }
    seen.extend(watch.take(expected.len() - seen.len()));
    assert_eq!(
        seen, expected,
        "the resumed watch misses nothing and repeats nothing"
    );
    drop(watch);

    // A new watch from the last seen revision + 1 replays what it missed.
    let last_seen = seen.last().unwrap().0;
    let before = expected.len();
    for n in 41..=50 {
        write(&cluster, n, &mut expected);
    }
    let mut resumed = WatchProcess::start(
        &cluster,
        &cluster.endpoints_of(&[2, 3]),
        &[
            "--prefix",
            "w/",
            "--from-revision",
            &(last_seen + 1).to_string(),
        ],
    );
    let replayed = resumed.take(expected.len() - before);
    assert_eq!(
        replayed,
        expected[before..],
        "replayed from the revision asked for"
    );
    cluster.start_node(1);
    cluster.wait_for_leader(&[1, 2, 3]);
}

#[test]
fn a_client_with_a_certificate_from_another_ca_is_refused() {
    let cluster = Cluster::start(1, Options::default());
    cluster.wait_for_leader(&[1]);
    cluster.cli(&["put", "a", "1"]).assert_success();

    // Another CA and a client certificate it issued, made with raft-cli.
    let rogue = cluster.path().join("rogue");
    for args in [
        vec!["certs", "ca"],
        vec!["certs", "client", "--name", "intruder", "--role", "admin"],
    ] {
        let mut full: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        full.extend([
            "--cluster".into(),
            common::CLUSTER_ID.into(),
            "--dir".into(),
        ]);
        full.push(rogue.display().to_string());
        let mut command = Command::new(raft_cli());
        command.args(&full);
        run_with_timeout(command, CLI_TIMEOUT, full).assert_success();
    }
    let (cluster_ca, _, _) = cluster.client_files();
    let run = |ca: &std::path::Path| {
        let args: Vec<String> = [
            "--endpoints",
            &cluster.address(1),
            "--ca",
            &ca.display().to_string(),
            "--cert",
            &rogue.join("intruder.pem").display().to_string(),
            "--key",
            &rogue.join("intruder.key").display().to_string(),
            "--timeout",
            "5",
            "get",
            "a",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let mut command = Command::new(raft_cli());
        command.args(&args);
        run_with_timeout(command, CLI_TIMEOUT, args)
    };
    // Trusting the cluster's CA but presenting a foreign certificate: the
    // node refuses the client.
    let refused = run(&cluster_ca);
    // Trusting only the foreign CA: neither side accepts the other.
    let strangers = run(&rogue.join("ca.pem"));
    for output in [refused, strangers] {
        assert!(!output.status.success(), "{output}");
        assert_eq!(output.code(), Some(2), "{output}");
        assert!(output.stdout.is_empty(), "{output}");
        let stderr = output.stderr.to_lowercase();
        assert!(
            stderr.contains("tls") && stderr.contains("certificate"),
            "the error names TLS and the certificate: {output}"
        );
    }
    // The node still serves its real clients.
    cluster.cli(&["get", "a"]).assert_success();
}

#[test]
fn errors_say_what_failed_and_what_to_do() {
    // No cluster needed: nothing listens on this port.
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().display().to_string();
    for args in [
        vec!["certs", "ca", "--dir", &certs],
        vec![
            "certs", "client", "--dir", &certs, "--name", "admin", "--role", "admin",
        ],
    ] {
        let mut command = Command::new(raft_cli());
        command.args(&args);
        run_with_timeout(
            command,
            CLI_TIMEOUT,
            args.iter().map(|s| s.to_string()).collect(),
        )
        .assert_success();
    }
    let nobody = common::free_address().to_string();
    let config = dir.path().join("cli.toml");
    std::fs::write(
        &config,
        format!("endpoints = [\"{nobody}\"]\nca = \"ca.pem\"\ncert = \"admin.pem\"\nkey = \"admin.key\"\n"),
    )
    .unwrap();
    let mut command = Command::new(raft_cli());
    command
        .args(["--timeout", "2", "put", "k", "v"])
        .env("RAFT_CLI_CONFIG", &config)
        .env_remove("RAFT_ENDPOINTS")
        .env_remove("RAFT_CA")
        .env_remove("RAFT_CERT")
        .env_remove("RAFT_KEY");
    let output = run_with_timeout(command, CLI_TIMEOUT, vec!["put".into()]);
    assert_eq!(output.code(), Some(2), "{output}");
    assert!(
        output
            .stderr
            .contains(&format!("cannot reach any node at {nobody}"))
            && output.stderr.contains("RAFT_ENDPOINTS"),
        "{output}"
    );

    let mut command = Command::new(raft_cli());
    command
        .args(["get", "k"])
        .env_remove("RAFT_CLI_CONFIG")
        .env_remove("RAFT_ENDPOINTS");
    let output = run_with_timeout(command, CLI_TIMEOUT, vec!["get".into()]);
    assert_eq!(output.code(), Some(2), "{output}");
    assert!(output.stderr.contains("--endpoints"), "{output}");
}

/// Review finding: any certificate chained to the CA could write, change
/// membership and move the leader. A read-only certificate reads and scans,
/// through the leader or a follower, and every write or administration is
/// refused with a message that says which certificate to use.
#[test]
fn a_read_only_certificate_reads_but_writes_and_administration_are_refused() {
    let cluster = Cluster::start(3, Options::default());
    let leader = cluster.wait_for_leader(&[1, 2, 3]);
    let follower = cluster.ids().into_iter().find(|id| *id != leader).unwrap();
    cluster.certs(&[
        "client",
        "--name",
        "reader",
        "--role",
        "readonly",
        "--cluster",
        common::CLUSTER_ID,
    ]);
    cluster.cli(&["put", "k", "v"]).assert_success();
    for id in [leader, follower] {
        let at = cluster.address(id);
        let got = cluster.cli_as("reader", &at, &["get", "k"]);
        got.assert_success();
        assert!(got.stdout.contains('v'), "{got}");
        cluster
            .cli_as("reader", &at, &["scan", "--prefix", ""])
            .assert_success();
        for (args, needed) in [
            (vec!["put", "k", "w"], "readwrite"),
            (vec!["delete", "k"], "readwrite"),
            (vec!["transfer-leader"], "admin"),
            (vec!["remove-node", "3"], "admin"),
            (vec!["add-node", "9", "127.0.0.1:1"], "admin"),
        ] {
            let refused = cluster.cli_as("reader", &at, &args);
            assert!(
                !refused.status.success(),
                "{args:?} at node {id}: {refused}"
            );
            assert!(
                refused.stderr.contains("permission denied")
                    && refused.stderr.contains(&format!("--role {needed}")),
                "{args:?} at node {id} says what is missing and which certificate to use: {refused}"
            );
        }
    }
    let got = cluster.cli(&["get", "k"]);
    assert!(got.stdout.contains('v'), "nothing was written: {got}");
    assert_eq!(cluster.ids().len(), 3);
}
