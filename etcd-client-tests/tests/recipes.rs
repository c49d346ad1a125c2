//! etcd's client recipes with a real, non-Rust etcd client: the scripts in
//! `recipes/` use the etcd3 npm package's own election, lock, STM and lease
//! APIs over mutual TLS. Each runs against three raft-kv nodes' etcd port
//! and, as the control, against a real single-member etcd (the `etcd`
//! binary) with mutual TLS on its client and peer URLs: a recipe that fails
//! on etcd is a bug in the script; one that fails only on raft-kv is a
//! raft-kv defect.
//!
//! Needs `node` and `npm` (`apt-get install nodejs npm`) and `etcd`
//! (`apt-get install etcd-server`). The pinned etcd3 package is installed
//! from the npm registry (`npm ci` with the committed lock file) into
//! `CARGO_TARGET_TMPDIR` once, and reused while the lock file is unchanged.

#[path = "../../raft-kv/tests/common/mod.rs"]
mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use raft_transport_quic::{CertificateAuthority, Role};

/// The recipe scripts, each run once per target.
const RECIPES: [&str; 4] = ["election", "lock", "stm", "registry"];

/// How long one recipe script may run (each also keeps its own deadlines,
/// well within this).
const SCRIPT_LIMIT: Duration = Duration::from_secs(150);

/// What the scripts need to connect: endpoints and certificate files.
struct Target {
    endpoints: Vec<String>,
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

/// Runs `program --version`, failing the test with how to install it.
fn require_tool(program: &str, install: &str) {
    match Command::new(program).arg("--version").output() {
        Ok(out) if out.status.success() => {}
        Ok(out) => panic!(
            "`{program} --version` failed ({}): {}; install it with `{install}`",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ),
        Err(e) => panic!("cannot run `{program}` ({e}); install it with `{install}`"),
    }
}

/// Installs the pinned etcd3 package (once per lock file) into a directory
/// under `CARGO_TARGET_TMPDIR`, copies the recipe scripts beside it, and
/// returns that directory.
fn install_recipes() -> PathBuf {
    static INSTALL: Mutex<()> = Mutex::new(());
    let _once = INSTALL.lock().unwrap_or_else(|e| e.into_inner());
    require_tool("node", "apt-get install nodejs npm");
    require_tool("npm", "apt-get install nodejs npm");
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("recipes");
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("etcd-recipes");
    std::fs::create_dir_all(&dir).unwrap();
    let manifest = std::fs::read_to_string(source.join("package.json")).unwrap();
    let lock = std::fs::read_to_string(source.join("package-lock.json")).unwrap();
    let wanted = format!("{manifest}\n{lock}");
    let stamp = dir.join("installed-from");
    let installed = std::fs::read_to_string(&stamp).ok();
    if installed.as_deref() != Some(wanted.as_str())
        || !dir.join("node_modules/etcd3/package.json").exists()
    {
        std::fs::write(dir.join("package.json"), &manifest).unwrap();
        std::fs::write(dir.join("package-lock.json"), &lock).unwrap();
        let _ = std::fs::remove_file(&stamp);
        eprintln!("installing the etcd3 npm package into {}", dir.display());
        let out = Command::new("npm")
            .args([
                "ci",
                "--ignore-scripts",
                "--no-audit",
                "--no-fund",
                "--loglevel=error",
            ])
            .current_dir(&dir)
            .stdin(Stdio::null())
            .output()
            .expect("npm runs");
        assert!(
            out.status.success(),
            "`npm ci` of the recipes' package.json failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        std::fs::write(&stamp, &wanted).unwrap();
    }
    // The scripts beside their node_modules, so that `require('etcd3')`
    // finds exactly the pinned package.
    for entry in std::fs::read_dir(&source).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "js") {
            std::fs::copy(&path, dir.join(path.file_name().unwrap())).unwrap();
        }
    }
    dir
}

/// What one recipe script did.
struct Outcome {
    recipe: &'static str,
    passed: bool,
    output: String,
}

/// Runs every recipe script against `target` at once (each only uses keys
/// of its own) and returns what each did.
async fn run_recipes(scripts: &Path, target: &Target, name: &str) -> Vec<Outcome> {
    let runs = RECIPES.map(|recipe| {
        let mut command = tokio::process::Command::new("node");
        command
            .arg("--no-deprecation")
            .arg(scripts.join(format!("{recipe}.js")))
            .current_dir(scripts)
            .env("ETCD_ENDPOINTS", target.endpoints.join(","))
            .env("ETCD_CA", &target.ca)
            .env("ETCD_CERT", &target.cert)
            .env("ETCD_KEY", &target.key)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        async move {
            let started = Instant::now();
            let child = command.spawn().expect("node starts");
            let (passed, output) =
                match tokio::time::timeout(SCRIPT_LIMIT, child.wait_with_output()).await {
                    Ok(Ok(out)) => (
                        out.status.success(),
                        format!(
                            "{}{}(exit: {})",
                            String::from_utf8_lossy(&out.stdout),
                            String::from_utf8_lossy(&out.stderr),
                            out.status
                        ),
                    ),
                    Ok(Err(e)) => (false, format!("could not wait for node: {e}")),
                    Err(_) => (
                        false,
                        format!("killed: still running after {SCRIPT_LIMIT:?}"),
                    ),
                };
            eprintln!(
                "---- {recipe} on {name}: {} in {:.1} s\n{output}",
                if passed { "passed" } else { "FAILED" },
                started.elapsed().as_secs_f64()
            );
            Outcome {
                recipe,
                passed,
                output,
            }
        }
    });
    let [a, b, c, d] = runs;
    let (a, b, c, d) = tokio::join!(a, b, c, d);
    vec![a, b, c, d]
}

/// Fails, naming each recipe that failed on `name` and how.
fn assert_all_passed(outcomes: &[Outcome], name: &str) {
    let failed: Vec<String> = outcomes
        .iter()
        .filter(|o| !o.passed)
        .map(|o| {
            let tail: Vec<&str> = o.output.lines().rev().take(12).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            format!("{} failed on {name}:\n{}", o.recipe, tail.join("\n"))
        })
        .collect();
    assert!(
        failed.is_empty(),
        "{} of {} recipes failed on {name}:\n\n{}",
        failed.len(),
        outcomes.len(),
        failed.join("\n\n")
    );
}

/// A client certificate from `ca`, saved in `dir`, with `role`.
fn client_certificate(
    ca: &CertificateAuthority,
    cluster: &str,
    dir: &Path,
    role: Role,
) -> (PathBuf, PathBuf) {
    let (cert, key) = (dir.join("recipes.pem"), dir.join("recipes.key"));
    ca.issue_client(cluster, "recipes", role)
        .unwrap()
        .save(&cert, &key)
        .unwrap();
    (cert, key)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_recipes_work_on_raft_kv() {
    let scripts = install_recipes();
    let etcd: Mutex<Vec<SocketAddr>> = Mutex::new(Vec::new());
    let cluster = common::TestCluster::start(3, |c| {
        let address: SocketAddr = format!("127.0.0.1:{}", common::free_port())
            .parse()
            .unwrap();
        c.etcd_listen = Some(address);
        etcd.lock().unwrap().push(address);
    })
    .await;
    // Once a leader is elected (the raft-kv client waits for one).
    cluster.client().await.put("warm", "up").await.unwrap();
    let dir = cluster.dir.path();
    let (cert, key) = client_certificate(&cluster.ca, "test", dir, Role::ReadWrite);
    let target = Target {
        endpoints: etcd
            .lock()
            .unwrap()
            .iter()
            .map(|a| format!("https://{a}"))
            .collect(),
        ca: dir.join("ca.pem"),
        cert,
        key,
    };
    let outcomes = run_recipes(&scripts, &target, "raft-kv").await;
    cluster.shutdown().await;
    assert_all_passed(&outcomes, "raft-kv");
}

/// A real etcd, killed (and waited for) on drop.
struct Etcd {
    child: Child,
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts a single-member etcd in `dir` on loopback ports, with mutual TLS
/// on its client and peer URLs (certificates from `ca`); returns it and its
/// client URL.
fn start_etcd(ca: &CertificateAuthority, dir: &Path) -> (Etcd, String) {
    let file = |name: &str| dir.join(name).display().to_string();
    ca.save(&dir.join("ca.pem"), &dir.join("ca.key")).unwrap();
    // Server and peer certificate for 127.0.0.1 (server and client use).
    ca.issue_node("etcd", 1, ["127.0.0.1"])
        .unwrap()
        .save(&dir.join("etcd.pem"), &dir.join("etcd.key"))
        .unwrap();
    let client_port = common::free_port();
    let peer_port = common::free_port();
    let client_url = format!("https://127.0.0.1:{client_port}");
    let peer_url = format!("https://127.0.0.1:{peer_port}");
    let log = std::fs::File::create(dir.join("etcd.log")).unwrap();
    let child = Command::new("etcd")
        .args(["--name", "control"])
        .arg("--data-dir")
        .arg(dir.join("data"))
        .args(["--listen-client-urls", &client_url])
        .args(["--advertise-client-urls", &client_url])
        .args(["--listen-peer-urls", &peer_url])
        .args(["--initial-advertise-peer-urls", &peer_url])
        .args(["--initial-cluster", &format!("control={peer_url}")])
        .args(["--initial-cluster-state", "new"])
        .args(["--initial-cluster-token", "recipes"])
        .args(["--cert-file", &file("etcd.pem")])
        .args(["--key-file", &file("etcd.key")])
        .args(["--trusted-ca-file", &file("ca.pem")])
        .arg("--client-cert-auth")
        .args(["--peer-cert-file", &file("etcd.pem")])
        .args(["--peer-key-file", &file("etcd.key")])
        .args(["--peer-trusted-ca-file", &file("ca.pem")])
        .arg("--peer-client-cert-auth")
        .args(["--logger", "zap", "--log-level", "warn"])
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap_or_else(|e| {
            panic!("cannot start etcd ({e}); install it with `apt-get install etcd-server`")
        });
    (Etcd { child }, client_url)
}

/// Waits until etcd at `url` answers a status request over mutual TLS.
async fn wait_for_etcd(etcd: &mut Etcd, url: &str, dir: &Path, cert: &Path, key: &Path) {
    use etcd_client::{Certificate, Client, ConnectOptions, Identity, TlsOptions};
    let tls = TlsOptions::new()
        .ca_certificate(Certificate::from_pem(
            std::fs::read(dir.join("ca.pem")).unwrap(),
        ))
        .identity(Identity::from_pem(
            std::fs::read(cert).unwrap(),
            std::fs::read(key).unwrap(),
        ));
    let options = ConnectOptions::new()
        .with_tls(tls)
        .with_timeout(Duration::from_secs(2))
        .with_connect_timeout(Duration::from_secs(2));
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = etcd.child.try_wait().unwrap() {
            panic!(
                "etcd exited ({status}):\n{}",
                std::fs::read_to_string(dir.join("etcd.log")).unwrap_or_default()
            );
        }
        let answer = async {
            let mut client = Client::connect([url], Some(options.clone())).await?;
            client.status().await
        };
        match answer.await {
            Ok(_) => return,
            Err(e) if Instant::now() > deadline => panic!("etcd is not serving in 30 s: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_recipes_work_on_real_etcd() {
    let scripts = install_recipes();
    let dir = tempfile::tempdir().unwrap();
    let ca = CertificateAuthority::generate("recipes control CA").unwrap();
    let (mut etcd, url) = start_etcd(&ca, dir.path());
    let (cert, key) = client_certificate(&ca, "etcd", dir.path(), Role::ReadWrite);
    wait_for_etcd(&mut etcd, &url, dir.path(), &cert, &key).await;
    let target = Target {
        endpoints: vec![url],
        ca: dir.path().join("ca.pem"),
        cert,
        key,
    };
    let outcomes = run_recipes(&scripts, &target, "etcd").await;
    drop(etcd);
    assert_all_passed(&outcomes, "etcd");
}
