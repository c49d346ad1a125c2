//! The two servers of a differential run, each fresh: a raft-kv cluster in
//! this process (its etcd port) and a real etcd (Debian's `etcd-server`),
//! both over mutual TLS with certificates from one CA.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use etcd_client::{Certificate, Client, ConnectOptions, Identity, TlsOptions};
use raft_kv::Server;
use raft_kv::config::{LogFormat, NodeConfig, RaftSettings, SnapshotSettings, TlsFiles};
use raft_transport_quic::{CertificateAuthority, Role};

/// How long a server may take to start answering.
const START_PATIENCE: Duration = Duration::from_secs(60);

/// Where a run keeps its certificates and data.
pub struct Workspace {
    dir: tempfile::TempDir,
    ca: CertificateAuthority,
}

impl Workspace {
    /// A CA and a client certificate (admin: a run compacts) under a fresh
    /// directory in `parent` (the system's temporary directory if `None`).
    pub fn new(parent: Option<&Path>) -> Result<Self> {
        let dir = match parent {
            Some(parent) => tempfile::tempdir_in(parent),
            None => tempfile::tempdir(),
        }
        .context("cannot create the run's directory")?;
        let ca = CertificateAuthority::generate("etcd-diff CA")?;
        ca.save(&dir.path().join("ca.pem"), &dir.path().join("ca.key"))?;
        let client = ca.issue_client("diff", "etcd-diff", Role::Admin)?;
        client.save(
            &dir.path().join("client.pem"),
            &dir.path().join("client.key"),
        )?;
        Ok(Self { dir, ca })
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// An etcd client of `endpoint` with the run's client certificate.
    async fn connect(&self, endpoint: String) -> Result<Client> {
        let tls = TlsOptions::new()
            .ca_certificate(Certificate::from_pem(std::fs::read(self.path("ca.pem"))?))
            .identity(Identity::from_pem(
                std::fs::read(self.path("client.pem"))?,
                std::fs::read(self.path("client.key"))?,
            ));
        let options = ConnectOptions::new()
            .with_tls(tls)
            .with_timeout(Duration::from_secs(20))
            .with_connect_timeout(Duration::from_secs(5));
        // A server that is still starting refuses the first connections.
        let deadline = Instant::now() + START_PATIENCE;
        loop {
            let attempt = async {
                let mut client = Client::connect([endpoint.clone()], Some(options.clone())).await?;
                client.get("ready?", None).await?;
                Ok::<_, etcd_client::Error>(client)
            };
            match attempt.await {
                Ok(client) => return Ok(client),
                Err(e) if Instant::now() < deadline => {
                    tracing::debug!("{endpoint} not ready: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => bail!("{endpoint} did not answer within {START_PATIENCE:?}: {e}"),
            }
        }
    }
}

/// A free loopback TCP port.
fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// What serves one side of a run.
pub enum Serving {
    Etcd(Child),
    RaftKv(Vec<Server>),
}

/// One side: its server and a client of it.
pub struct Backend {
    pub name: &'static str,
    pub client: Client,
    server: Option<Serving>,
}

impl Backend {
    /// A single-member etcd with mutual TLS on client and peer traffic.
    pub async fn etcd(ws: &Workspace, case: u64) -> Result<Self> {
        let data = ws.path(&format!("etcd-{case}"));
        let cert = ws.ca.issue_node("diff", 1, ["127.0.0.1"])?;
        let (cert_path, key_path) = (
            ws.path(&format!("etcd-{case}.pem")),
            ws.path(&format!("etcd-{case}.key")),
        );
        cert.save(&cert_path, &key_path)?;
        let (client_port, peer_port) = (free_port()?, free_port()?);
        let client_url = format!("https://127.0.0.1:{client_port}");
        let peer_url = format!("https://127.0.0.1:{peer_port}");
        let log = std::fs::File::create(ws.path(&format!("etcd-{case}.log")))?;
        let ca = ws.path("ca.pem");
        let child = Command::new("etcd")
            .arg("--name=diff")
            .arg(format!("--data-dir={}", data.display()))
            .arg(format!("--listen-client-urls={client_url}"))
            .arg(format!("--advertise-client-urls={client_url}"))
            .arg(format!("--listen-peer-urls={peer_url}"))
            .arg(format!("--initial-advertise-peer-urls={peer_url}"))
            .arg(format!("--initial-cluster=diff={peer_url}"))
            .args([
                "--initial-cluster-state=new",
                "--logger=zap",
                "--log-level=warn",
            ])
            .arg(format!("--cert-file={}", cert_path.display()))
            .arg(format!("--key-file={}", key_path.display()))
            .arg(format!("--trusted-ca-file={}", ca.display()))
            .arg("--client-cert-auth")
            .arg(format!("--peer-cert-file={}", cert_path.display()))
            .arg(format!("--peer-key-file={}", key_path.display()))
            .arg(format!("--peer-trusted-ca-file={}", ca.display()))
            .arg("--peer-client-cert-auth")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context(
                "cannot start etcd, the reference the run compares with: install it with \
                 `apt-get install etcd-server` (cargo xtask test does)",
            )?;
        let mut child = KillOnDrop(Some(child));
        let client = ws.connect(client_url).await?;
        Ok(Self {
            name: "etcd",
            client,
            server: child.0.take().map(Serving::Etcd),
        })
    }

    /// A raft-kv cluster of `nodes` in this process; the client talks to
    /// the leader's etcd port (a serializable read on a follower may lag,
    /// which etcd's single member never does).
    pub async fn raft_kv(ws: &Workspace, case: u64, nodes: u64) -> Result<Self> {
        let addresses: Vec<(u64, SocketAddr)> = (1..=nodes)
            .map(|id| {
                let port = raft_transport_quic::free_loopback_port()?;
                Ok((id, SocketAddr::from(([127, 0, 0, 1], port))))
            })
            .collect::<Result<_>>()?;
        let mut servers = Vec::new();
        let mut etcd_ports = Vec::new();
        for (id, address) in &addresses {
            let cert = ws.ca.issue_node("diff", *id, [address.ip().to_string()])?;
            let (cert_path, key_path) = (
                ws.path(&format!("raft-kv-{case}-{id}.pem")),
                ws.path(&format!("raft-kv-{case}-{id}.key")),
            );
            cert.save(&cert_path, &key_path)?;
            let etcd_listen = SocketAddr::from(([127, 0, 0, 1], free_port()?));
            etcd_ports.push(etcd_listen);
            let config = NodeConfig {
                node_id: *id,
                cluster_id: "diff".into(),
                listen: *address,
                advertise: None,
                data_dir: ws.path(&format!("raft-kv-{case}-{id}")),
                initial_cluster: addresses.iter().map(|(i, a)| format!("{i}={a}")).collect(),
                join: false,
                tls: TlsFiles {
                    ca: ws.path("ca.pem"),
                    cert: cert_path,
                    key: key_path,
                    deny_list: None,
                },
                raft: RaftSettings {
                    tick_ms: 20,
                    ..RaftSettings::default()
                },
                snapshot: SnapshotSettings::default(),
                etcd_listen: Some(etcd_listen),
                metrics_listen: None,
                log_format: LogFormat::Human,
                enable_fault_injection: false,
                request_timeout_ms: 10_000,
            };
            servers.push(
                Server::start(config)
                    .await
                    .map_err(|e| anyhow::anyhow!("raft-kv node {id} did not start: {e}"))?,
            );
        }
        let leader = leader_of(&servers).await?;
        let client = ws
            .connect(format!("https://{}", etcd_ports[leader]))
            .await?;
        Ok(Self {
            name: "raft-kv",
            client,
            server: Some(Serving::RaftKv(servers)),
        })
    }

    /// Stops the server (a raft-kv cluster shuts down cleanly).
    pub async fn stop(mut self) {
        match self.server.take() {
            Some(Serving::Etcd(mut child)) => {
                let _ = child.kill();
                let _ = child.wait();
            }
            Some(Serving::RaftKv(servers)) => {
                for server in servers {
                    let _ = server.shutdown().await;
                }
            }
            None => {}
        }
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        if let Some(Serving::Etcd(child)) = &mut self.server {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A child process killed if a start fails half-way.
struct KillOnDrop(Option<Child>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(child) = &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The index of the node that leads, once one does.
async fn leader_of(servers: &[Server]) -> Result<usize> {
    let deadline = Instant::now() + START_PATIENCE;
    loop {
        if let Some(i) = servers.iter().position(|s| s.handle().view().is_leader) {
            return Ok(i);
        }
        if Instant::now() > deadline {
            bail!("no raft-kv node became leader within {START_PATIENCE:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
