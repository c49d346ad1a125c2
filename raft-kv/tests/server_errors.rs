//! The `raft-kv` binary as an operator meets it: bad configuration,
//! unreadable certificates, a busy port, another node's data directory and
//! a data directory in use each stop the node with a message that names
//! the problem and a non-zero exit; SIGTERM shuts a node down cleanly; a
//! running node serves Prometheus metrics and a health check over HTTP.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use raft_transport_quic::CertificateAuthority;

/// Generous: a node that fails to start does so in well under a second.
const DEADLINE: Duration = Duration::from_secs(60);

fn free_address() -> SocketAddr {
    SocketAddr::from((
        [127, 0, 0, 1],
        raft_transport_quic::free_loopback_port().unwrap(),
    ))
}

/// A directory with a CA and certificates for nodes 1 and 2.
struct Setup {
    dir: tempfile::TempDir,
}

impl Setup {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let ca = CertificateAuthority::generate("server-errors CA").unwrap();
        ca.save(&dir.path().join("ca.pem"), &dir.path().join("ca.key"))
            .unwrap();
        for id in [1, 2] {
            ca.issue_node("test", id, ["127.0.0.1".to_string()])
                .unwrap()
                .save(
                    &dir.path().join(format!("node-{id}.pem")),
                    &dir.path().join(format!("node-{id}.key")),
                )
                .unwrap();
        }
        Self { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Flags for node `id` on `listen` with data in `data`.
    fn args(&self, id: u64, listen: SocketAddr, data: &Path) -> Vec<String> {
        vec![
            "--node-id".into(),
            id.to_string(),
            "--cluster-id".into(),
            "test".into(),
            "--listen".into(),
            listen.to_string(),
            "--data-dir".into(),
            data.display().to_string(),
            "--initial-cluster".into(),
            format!("{id}={listen}"),
            "--ca".into(),
            self.path("ca.pem").display().to_string(),
            "--cert".into(),
            self.path(&format!("node-{id}.pem")).display().to_string(),
            "--key".into(),
            self.path(&format!("node-{id}.key")).display().to_string(),
        ]
    }
}

fn raft_kv(args: &[String]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_raft-kv"));
    command
        .args(args)
        .env("NO_COLOR", "1")
        .env_remove("RAFT_KV_CONFIG")
        .stdin(Stdio::null());
    command
}

/// Runs a node that must fail to start; returns its output.
fn fails(args: &[String]) -> Output {
    let mut child = raft_kv(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start raft-kv");
    let started = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if started.elapsed() > DEADLINE {
            let _ = child.kill();
            panic!("raft-kv {args:?} kept running; it should have refused to start");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let output = child.wait_with_output().unwrap();
    assert!(
        !output.status.success(),
        "raft-kv {args:?} exited successfully"
    );
    output
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// A node running in the background, its log lines collected.
struct Running {
    child: Child,
    lines: mpsc::Receiver<String>,
    /// The line that said the node started.
    started: String,
}

impl Running {
    /// Starts a node and waits until it logs that it started.
    fn start(args: &[String]) -> Self {
        let mut child = raft_kv(args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start raft-kv");
        let (tx, lines) = mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        let mut running = Self {
            child,
            lines,
            started: String::new(),
        };
        running.started = running.wait_for("node started");
        running
    }

    fn wait_for(&mut self, text: &str) -> String {
        let started = Instant::now();
        let mut seen = Vec::new();
        while started.elapsed() < DEADLINE {
            match self.lines.recv_timeout(Duration::from_millis(100)) {
                Ok(line) if line.contains(text) => return line,
                Ok(line) => seen.push(line),
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
        }
        let _ = self.child.kill();
        panic!(
            "raft-kv never logged {text:?}; its log:\n{}",
            seen.join("\n")
        );
    }

    /// Sends SIGTERM and returns the exit status.
    fn terminate(mut self) -> std::process::ExitStatus {
        // SAFETY: kill(2) on our own child's pid has no memory effects.
        let rc = unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        assert_eq!(rc, 0, "SIGTERM could not be sent");
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            if started.elapsed() > DEADLINE {
                let _ = self.child.kill();
                panic!("raft-kv did not stop after SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn missing_settings_are_named() {
    let output = fails(&[]);
    assert_eq!(output.status.code(), Some(2));
    assert!(
        stderr(&output).contains("--node-id is required (or give --config"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn a_bad_configuration_file_is_named_with_the_problem() {
    let setup = Setup::new();
    let config = setup.path("node.toml");
    std::fs::write(&config, "node_id = \"one\"\n").unwrap();
    let output = fails(&["--config".into(), config.display().to_string()]);
    let text = stderr(&output);
    assert_eq!(output.status.code(), Some(2), "{text}");
    assert!(
        text.contains("invalid configuration file") && text.contains(&config.display().to_string()),
        "{text}"
    );

    let missing = setup.path("nowhere.toml");
    let output = fails(&["--config".into(), missing.display().to_string()]);
    let text = stderr(&output);
    assert!(
        text.contains("cannot read the configuration file")
            && text.contains(&missing.display().to_string()),
        "{text}"
    );
}

#[test]
fn unreadable_certificates_are_named() {
    let setup = Setup::new();
    let mut args = setup.args(1, free_address(), &setup.path("data-1"));
    let missing = setup.path("missing.pem").display().to_string();
    let cert = args.iter().position(|a| a == "--cert").unwrap() + 1;
    args[cert] = missing.clone();
    let text = stderr(&fails(&args));
    assert!(
        text.contains("cannot load the TLS files") && text.contains(&missing),
        "{text}"
    );

    // A certificate that is not PEM at all.
    std::fs::write(setup.path("garbage.pem"), "not a certificate").unwrap();
    args[cert] = setup.path("garbage.pem").display().to_string();
    let text = stderr(&fails(&args));
    assert!(text.contains("cannot load the TLS files"), "{text}");
}

#[test]
fn a_busy_port_is_reported() {
    let setup = Setup::new();
    let taken = UdpSocket::bind("127.0.0.1:0").unwrap();
    let address = taken.local_addr().unwrap();
    let text = stderr(&fails(&setup.args(1, address, &setup.path("data-1"))));
    assert!(
        text.contains(&format!("cannot start the network on {address}")),
        "{text}"
    );
}

#[test]
fn a_data_directory_in_use_or_of_another_node_is_refused_and_sigterm_stops_cleanly() {
    let setup = Setup::new();
    let data = setup.path("data-1");
    let node = Running::start(&setup.args(1, free_address(), &data));

    // A second process on the same directory: locked.
    let text = stderr(&fails(&setup.args(1, free_address(), &data)));
    assert!(
        text.contains("is locked by a running node") && text.contains(&data.display().to_string()),
        "{text}"
    );

    let status = node.terminate();
    assert!(status.success(), "SIGTERM: {status}");

    // Node 2 pointed at node 1's directory.
    let text = stderr(&fails(&setup.args(2, free_address(), &data)));
    assert!(text.contains("belongs to node 1, not node 2"), "{text}");

    // Node 1 starts again from its own directory.
    let node = Running::start(&setup.args(1, free_address(), &data));
    assert!(node.terminate().success());
}

/// `GET path` over plain HTTP/1.0; `(status, body)`.
fn http_get(address: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&address, Duration::from_secs(5))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {address}\r\n\r\n")?;
    let mut text = String::new();
    stream.read_to_string(&mut text)?;
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    Ok((status, body.to_string()))
}

/// Node 1 of `setup`, serving metrics on a free port (returned), with
/// `extra` flags.
fn start_with_metrics(setup: &Setup, extra: &[&str]) -> (Running, SocketAddr) {
    let metrics = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let mut args = setup.args(1, free_address(), &setup.path("data-1"));
    args.extend(["--metrics-listen".to_string(), metrics.to_string()]);
    args.extend(extra.iter().map(|a| a.to_string()));
    (Running::start(&args), metrics)
}

#[test]
fn a_running_node_serves_metrics_and_health() {
    let setup = Setup::new();
    let (node, metrics) = start_with_metrics(&setup, &["--tick-ms", "10"]);

    // A single-node cluster elects itself; then it is healthy, and the
    // counters it publishes every 100 ticks show the election.
    let started = Instant::now();
    let (mut health, mut body) = (0, String::new());
    while started.elapsed() < DEADLINE {
        health = http_get(metrics, "/health").map_or(0, |(status, _)| status);
        body = http_get(metrics, "/metrics").map_or_else(|e| e.to_string(), |(_, body)| body);
        if health == 200 && body.contains("raft_elections_won_total 1") {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(health, 200, "/health never answered 200");
    for metric in [
        "raft_is_leader 1",
        "raft_term ",
        "raft_commit_index ",
        "raft_elections_won_total 1",
        "raft_last_log_index ",
    ] {
        assert!(body.contains(metric), "/metrics lacks {metric:?}:\n{body}");
    }
    let (status, _) = http_get(metrics, "/nowhere").unwrap();
    assert_eq!(status, 404);
    assert!(node.terminate().success());
}

#[test]
fn logs_can_be_json() {
    let setup = Setup::new();
    let mut args = setup.args(1, free_address(), &setup.path("data-1"));
    args.extend(["--log-format".to_string(), "json".to_string()]);
    let node = Running::start(&args);
    let line = node.started.clone();
    let value: serde_json::Value =
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
    assert!(value["level"].is_string(), "{line}");
    assert!(node.terminate().success());
}

/// A node whose Raft driver stops on an error (a storage failure, say) can
/// serve nothing more: the process exits non-zero and says why, instead of
/// staying connected to peers it never answers.
#[test]
fn a_node_whose_driver_fails_exits_non_zero() {
    let setup = Setup::new();
    let mut args = setup.args(1, free_address(), &setup.path("data-1"));
    args.push("--enable-fault-injection".into());
    let mut child = raft_kv(&args)
        .env(raft_kv::server::BROKEN_MODE_ENV, "driver-error")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start raft-kv");
    let started = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if started.elapsed() > DEADLINE {
            let _ = child.kill();
            panic!("the node kept running after its driver stopped");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let output = child.wait_with_output().unwrap();
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    let text = stderr(&output);
    assert!(
        text.contains("the node stopped") && text.contains("injected failure"),
        "{text}"
    );
}

/// Review finding: data directories and snapshot files were created
/// readable by everyone (snapshots 0644); etcd keeps its data directory
/// 0700. Every directory the node creates is 0700 and every file 0600.
#[cfg(unix)]
#[test]
fn the_data_directory_and_every_file_in_it_are_private() {
    use std::os::unix::fs::PermissionsExt;
    let setup = Setup::new();
    let data = setup.path("data-1");
    let mut args = setup.args(1, free_address(), &data);
    // A snapshot within the first writes, so a snapshot file exists too.
    args.extend(["--snapshot-threshold".into(), "1".into()]);
    let node = Running::start(&args);
    let deadline = Instant::now() + DEADLINE;
    while !std::fs::read_dir(data.join("snapshots"))
        .unwrap()
        .flatten()
        .any(|e| e.file_name().to_string_lossy().ends_with(".snap"))
    {
        // The node's own first entries (its no-op, its membership) are
        // enough for a threshold of 1.
        assert!(Instant::now() < deadline, "no snapshot file appeared");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(node.terminate().success());
    let mut checked = 0;
    let mut dirs = vec![data.clone()];
    while let Some(dir) = dirs.pop() {
        let mode = std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700, "{}", dir.display());
        for entry in std::fs::read_dir(&dir).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                dirs.push(path);
            } else {
                let mode = entry.metadata().unwrap().permissions().mode() & 0o777;
                assert_eq!(mode, 0o600, "{}", path.display());
                checked += 1;
            }
        }
    }
    assert!(checked > 5, "only {checked} files checked");
}

/// Review finding: the startup self-check did not look at expiry. A node
/// refuses to start with an expired certificate, saying what to do.
#[test]
fn an_expired_certificate_is_refused_at_start() {
    let setup = Setup::new();
    let ca = CertificateAuthority::load(&setup.path("ca.pem"), &setup.path("ca.key"))
        .unwrap()
        .with_leaf_validity(Duration::from_secs(1));
    ca.issue_node("test", 1, ["127.0.0.1".to_string()])
        .unwrap()
        .save(&setup.path("node-1.pem"), &setup.path("node-1.key"))
        .unwrap();
    std::thread::sleep(Duration::from_secs(2));
    let text = stderr(&fails(&setup.args(
        1,
        free_address(),
        &setup.path("data-1"),
    )));
    assert!(
        text.contains("expired")
            && text.contains("node-1.pem")
            && text.contains("raft-cli certs node"),
        "{text}"
    );
}

/// Review finding: the metrics endpoint served one HTTP client at a time,
/// so one slow scraper (here: one that asks for `/metrics` again and again
/// and never reads the answers, until the socket's buffers are full) held
/// up `/health` for everyone.
#[test]
fn a_stuck_scraper_does_not_hold_up_health() {
    let setup = Setup::new();
    let (node, metrics) = start_with_metrics(&setup, &[]);
    let started = Instant::now();
    while http_get(metrics, "/health").map_or(0, |(status, _)| status) != 200 {
        assert!(started.elapsed() < DEADLINE, "/health never answered 200");
        std::thread::sleep(Duration::from_millis(50));
    }
    // The stuck scraper: requests written on another thread, answers never
    // read (the write blocks once the buffers are full; the test does not
    // wait for it).
    let mut stuck = TcpStream::connect(metrics).unwrap();
    std::thread::spawn(move || {
        for _ in 0..100_000 {
            if stuck
                .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
                .is_err()
            {
                return;
            }
        }
    });
    std::thread::sleep(Duration::from_secs(1));
    let asked = Instant::now();
    let answer = http_get(metrics, "/health");
    assert!(
        matches!(answer, Ok((200, _))),
        "/health with a stuck scraper connected: {answer:?} after {:?}",
        asked.elapsed()
    );
    assert!(node.terminate().success());
}

/// A line of `/proc/PID/status` in KiB (`VmRSS`, `VmHWM`).
#[cfg(target_os = "linux")]
fn memory_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

/// Review finding (memory a client can make a node hold): a watcher that
/// never reads made the node keep an encoded copy of every event for it (up
/// to 64 messages, then the 1,024 messages of its queue), so 64 such
/// watchers and 48 MiB of writes cost gigabytes. Now a watch holds its
/// queue of shared events (at most 8 MiB, then it is cut off) and at most
/// two encoded messages; the node's memory stays within a stated bound and
/// other clients are served meanwhile.
#[cfg(target_os = "linux")]
#[test]
fn watchers_that_never_read_cost_the_node_bounded_memory() {
    use raft_kv::protocol::Selector;
    use raft_kv::{Client, ClientConfig};
    use raft_transport_quic::Role;

    const WATCHERS: usize = 64;
    const WRITES: usize = 48;
    let setup = Setup::new();
    let listen = free_address();
    let node = Running::start(&setup.args(1, listen, &setup.path("data-1")));
    let pid = node.child.id();
    let ca = CertificateAuthority::load(&setup.path("ca.pem"), &setup.path("ca.key")).unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let connect = |name: &str, role: Role| {
            let identity = ca.client_identity("test", name, role).unwrap();
            Client::connect(ClientConfig::new(vec![listen.to_string()], identity))
        };
        let writer = connect("writer", Role::ReadWrite).await.unwrap();
        let other = connect("other", Role::ReadOnly).await.unwrap();
        writer.put("warm", "up").await.unwrap();
        let lazy = connect("lazy", Role::ReadOnly).await.unwrap();
        let mut watchers = Vec::new();
        for _ in 0..WATCHERS {
            watchers.push(lazy.watch(Selector::Prefix("w/".into()), 0).await.unwrap());
        }
        let before = memory_kib(pid, "VmRSS");
        let value = bytes::Bytes::from(vec![b'x'; 1 << 20]);
        for i in 0..WRITES {
            writer.put(format!("w/{i}"), value.clone()).await.unwrap();
            // Everyone else is still served.
            assert_eq!(other.get("warm").await.unwrap().unwrap().value, "up");
        }
        // Let the watches push what they can.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let peak = memory_kib(pid, "VmHWM");
        let grown_mib = peak.saturating_sub(before) / 1024;
        eprintln!(
            "{WATCHERS} watchers that never read, {WRITES} MiB written: the node grew by {grown_mib} MiB"
        );
        // Measured on 2 CPUs: the writes alone grow the node by ~110 MiB
        // (the state, RocksDB's memtable, the log); the watches' encoded
        // messages on their way to the network are bounded per identity
        // (64 MiB), ~350 MiB in all. With a copy per watch (~9 MiB each):
        // ~690 MiB; the old code: ~5.9 GiB.
        assert!(
            grown_mib < 1536,
            "the node grew by {grown_mib} MiB for {WATCHERS} watchers that never read"
        );
        drop(watchers);
    });
    assert!(node.terminate().success());
}
