//! End to end, as a user would: `cargo xtask cluster --detach --debug`
//! starts three raft-kv processes; `. cli.env && raft-cli status` shows
//! them with one leader; a second start refuses; `cluster spawn 4` and the
//! printed `raft-cli add-node` grow the cluster; `cluster stop` leaves no
//! process behind.
//!
//! A new Cargo project outside the workspace, depending on raft-kv with
//! only its `client` feature, builds with no C++ compiler and no libclang
//! (so no RocksDB) and writes and reads through the cluster.
//!
//! The cluster lives in a temporary directory (`--dir`), so a user's
//! `target/cluster` is never touched. The debug binaries are built by
//! xtask through cargo (a no-op when the test suite built them already).

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The workspace: cargo names xtask's directory when it runs the test (a
/// target directory shared between checkouts may hold a test binary built
/// in another checkout), else the one it was built in.
fn workspace_root() -> PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| env!("CARGO_MANIFEST_DIR").into())
        .parent()
        .expect("xtask is in the workspace")
        .to_path_buf()
}

fn show(what: &str, out: &Output) -> String {
    format!(
        "{what}: {}\n--- stdout\n{}--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn xtask(args: &[&str], dir: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_xtask"))
        .args(args)
        .arg("--dir")
        .arg(dir)
        .current_dir(workspace_root())
        .stdin(Stdio::null())
        .output()
        .expect("run xtask")
}

/// `raft-cli ARGS` in a shell that sourced cli.env, as the README says.
fn raft_cli(dir: &Path, args: &str) -> Output {
    let env = dir.join("cli.env");
    Command::new("sh")
        .arg("-c")
        .arg(format!(". '{}' && raft-cli {args}", env.display()))
        .stdin(Stdio::null())
        .output()
        .expect("run sh")
}

/// `etcdctl ARGS` in a shell that sourced cli.env, as the README's "Using
/// etcd tools" says; `None` (with the reason printed) without etcdctl.
fn etcdctl(dir: &Path, args: &str) -> Option<Output> {
    if Command::new("etcdctl").arg("version").output().is_err() {
        eprintln!("SKIPPED: etcdctl is not installed (Debian: apt-get install etcd-client)");
        return None;
    }
    let env = dir.join("cli.env");
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!(". '{}' && etcdctl {args}", env.display()))
        .stdin(Stdio::null())
        .output()
        .expect("run sh");
    Some(out)
}

/// Stops the cluster even when an assertion fails, so no process leaks.
struct StopOnDrop(PathBuf);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        let out = xtask(&["cluster", "stop"], &self.0);
        if !out.status.success() {
            eprintln!("{}", show("cleanup: cluster stop", &out));
        }
    }
}

/// The rows of `raft-cli status`: (id, role).
fn status_rows(text: &str) -> Vec<(u64, String)> {
    text.lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            let id = words.next()?.parse().ok()?;
            let role = words
                .find(|w| {
                    [
                        "leader",
                        "follower",
                        "learner",
                        "candidate",
                        "pre-candidate",
                    ]
                    .contains(w)
                })
                .unwrap_or("?")
                .to_string();
            Some((id, role))
        })
        .collect()
}

/// Polls `raft-cli status` until it shows `members` members, one leader
/// and followers for the rest (30 s at most).
fn wait_for_status(dir: &Path, members: usize) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = raft_cli(dir, "status");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let rows = status_rows(&text);
        let leaders = rows.iter().filter(|(_, r)| r == "leader").count();
        let followers = rows.iter().filter(|(_, r)| r == "follower").count();
        if out.status.success() && rows.len() == members && leaders == 1 && followers == members - 1
        {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "raft-cli status never showed {members} members with one leader\n{}",
            show("raft-cli status", &out)
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// The pids recorded in the state file.
fn recorded_pids(dir: &Path) -> Vec<u32> {
    let state = std::fs::read_to_string(dir.join("cluster.state")).expect("state file");
    state
        .lines()
        .filter(|l| l.starts_with("node="))
        .filter_map(|l| {
            l.split_whitespace()
                .find_map(|w| w.strip_prefix("pid="))
                .and_then(|p| p.parse().ok())
        })
        .collect()
}

/// Whether `pid` runs (a zombie does not count: it has exited).
fn running(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| !rest.trim_start().starts_with(['Z', 'X'])),
        Err(_) => false,
    }
}

/// The target directory this test was built in (`<target>/debug/deps/`),
/// so the outside project reuses the dependencies already compiled.
fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the test's own path");
    exe.ancestors()
        .nth(3)
        .expect("the test runs from <target>/debug/deps")
        .to_path_buf()
}

/// Builds a project outside the workspace that uses `raft-kv` with
/// `default-features = false, features = ["client"]`, with the C++
/// compiler and libclang made unusable, then runs it against the cluster.
fn outside_client_project_talks_to_the_cluster(tmp: &Path, cluster: &Path) {
    let app = tmp.join("outside-app");
    std::fs::create_dir_all(app.join("src")).unwrap();
    let raft_kv = workspace_root().join("raft-kv");
    std::fs::write(
        app.join("Cargo.toml"),
        format!(
            "[package]\nname = \"outside-app\"\nversion = \"0.1.0\"\nedition = \"2024\"\n\n\
             [workspace]\n\n[dependencies]\n\
             raft-kv = {{ path = {raft_kv:?}, default-features = false, features = [\"client\"] }}\n\
             tokio = {{ version = \"1\", features = [\"full\"] }}\n"
        ),
    )
    .unwrap();
    std::fs::write(
        app.join("src/main.rs"),
        r#"use raft_kv::{Client, ClientConfig};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let var = |name: &str| std::env::var(name).map_err(|_| format!("{name} is not set"));
    let endpoints = var("RAFT_ENDPOINTS")?.split(',').map(String::from).collect();
    let config = ClientConfig::from_files(
        endpoints,
        var("RAFT_CA")?.as_ref(),
        var("RAFT_CERT")?.as_ref(),
        var("RAFT_KEY")?.as_ref(),
    )?;
    let client = Client::connect(config).await?;
    client.put("outside", "hello from outside").await?;
    let kv = client.get("outside").await?.ok_or("the key is missing")?;
    println!("read back: {}", String::from_utf8_lossy(&kv.value));
    Ok(())
}
"#,
    )
    .unwrap();
    // The workspace's lock file pins the same versions, so the build uses
    // the crates already downloaded and compiled.
    std::fs::copy(workspace_root().join("Cargo.lock"), app.join("Cargo.lock")).unwrap();
    let mut build = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    for (name, _) in std::env::vars() {
        if name.starts_with("CARGO_") && name != "CARGO_HOME" {
            build.env_remove(name);
        }
    }
    let out = build
        .args(["build", "--quiet", "--offline"])
        .current_dir(&app)
        .env("CARGO_TARGET_DIR", target_dir())
        // RocksDB's build needs both; the client must need neither.
        .env("CXX", "/bin/false")
        .env("LIBCLANG_PATH", "/nonexistent/libclang")
        .stdin(Stdio::null())
        .output()
        .expect("run cargo");
    assert!(
        out.status.success(),
        "{}",
        show("outside project build", &out)
    );
    let tree = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(["tree", "--offline", "-e", "normal,build"])
        .current_dir(&app)
        .output()
        .expect("run cargo tree");
    let tree = String::from_utf8_lossy(&tree.stdout);
    assert!(tree.contains("raft-kv"), "{tree}");
    for crate_name in ["rocksdb", "clang-sys", "bindgen"] {
        assert!(!tree.contains(crate_name), "{crate_name} in:\n{tree}");
    }
    let run = Command::new("sh")
        .arg("-c")
        .arg(format!(
            ". '{}' && '{}'",
            cluster.join("cli.env").display(),
            target_dir().join("debug/outside-app").display()
        ))
        .stdin(Stdio::null())
        .output()
        .expect("run sh");
    assert!(
        run.status.success(),
        "{}",
        show("outside project run", &run)
    );
    assert!(
        String::from_utf8_lossy(&run.stdout).contains("read back: hello from outside"),
        "{}",
        show("outside project run", &run)
    );
}

#[test]
fn local_cluster_starts_serves_grows_and_stops() {
    let tmp = tempfile::tempdir().expect("temporary directory");
    let dir = tmp.path().join("cluster");
    let stopper = StopOnDrop(dir.clone());

    let started = Instant::now();
    let out = xtask(&["cluster", "--detach", "--debug", "--nodes", "3"], &dir);
    assert!(out.status.success(), "{}", show("cluster --detach", &out));
    eprintln!("cluster started in {:?}", started.elapsed());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("raft-cli status"),
        "no try-this block:\n{stdout}"
    );

    let env = std::fs::read_to_string(dir.join("cli.env")).expect("cli.env");
    for var in [
        "RAFT_ENDPOINTS=",
        "RAFT_CA=",
        "RAFT_CERT=",
        "RAFT_KEY=",
        "PATH=",
    ] {
        assert!(
            env.contains(&format!("export {var}")),
            "{var} missing:\n{env}"
        );
    }
    let endpoints = env
        .lines()
        .find_map(|l| l.strip_prefix("export RAFT_ENDPOINTS="))
        .unwrap();
    assert_eq!(endpoints.split(',').count(), 3, "{endpoints}");
    assert_eq!(recorded_pids(&dir).len(), 3);

    // A second cluster over a running one is refused, with what to do.
    let again = xtask(&["cluster", "--detach", "--debug"], &dir);
    assert!(!again.status.success(), "{}", show("second start", &again));
    let err = String::from_utf8_lossy(&again.stderr);
    assert!(
        err.contains("already running") && err.contains("cargo xtask cluster stop"),
        "{err}"
    );

    let status = wait_for_status(&dir, 3);
    eprintln!("{status}");

    outside_client_project_talks_to_the_cluster(tmp.path(), &dir);

    // etcd tools work against it with nothing but cli.env.
    if let Some(put) = etcdctl(&dir, "put from-etcdctl yes") {
        assert!(put.status.success(), "{}", show("etcdctl put", &put));
        let get = etcdctl(&dir, "get from-etcdctl").unwrap();
        assert_eq!(
            String::from_utf8_lossy(&get.stdout),
            "from-etcdctl\nyes\n",
            "{}",
            show("etcdctl get", &get)
        );
        let status = etcdctl(&dir, "endpoint status -w table").unwrap();
        let table = String::from_utf8_lossy(&status.stdout);
        assert_eq!(
            table.lines().filter(|l| l.contains("https://")).count(),
            3,
            "{}",
            show("etcdctl endpoint status", &status)
        );
    }

    // One more node, added with the command spawn prints.
    let spawn = xtask(&["cluster", "spawn", "4"], &dir);
    assert!(
        spawn.status.success(),
        "{}",
        show("cluster spawn 4", &spawn)
    );
    let spawn_out = String::from_utf8_lossy(&spawn.stdout);
    let add = spawn_out
        .lines()
        .find_map(|l| l.trim().strip_prefix("raft-cli "))
        .unwrap_or_else(|| panic!("spawn printed no raft-cli command:\n{spawn_out}"));
    assert!(add.starts_with("add-node 4 127.0.0.1:"), "{add}");
    let added = raft_cli(&dir, add);
    assert!(added.status.success(), "{}", show(add, &added));
    let status = wait_for_status(&dir, 4);
    eprintln!("{status}");

    let pids = recorded_pids(&dir);
    assert_eq!(pids.len(), 4);
    let stop = xtask(&["cluster", "stop"], &dir);
    assert!(stop.status.success(), "{}", show("cluster stop", &stop));
    let left: Vec<u32> = pids.iter().copied().filter(|&p| running(p)).collect();
    assert!(left.is_empty(), "still running after stop: {left:?}");
    // Stopping again is harmless.
    let again = xtask(&["cluster", "stop"], &dir);
    assert!(again.status.success(), "{}", show("second stop", &again));
    drop(stopper);
    eprintln!("whole test took {:?}", started.elapsed());
}
