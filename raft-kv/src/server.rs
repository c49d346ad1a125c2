//! A whole node: storage, transport, driver, service and metrics, started
//! from a [`NodeConfig`] and stopped gracefully.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use async_trait::async_trait;

use raft_core::LogRead;
use raft_storage_rocks::{RocksStore, StoreOptions};
use raft_transport_quic::{
    ClientConnector, ClientHandler, ClientOptions, ClientRequest, DenyList, FaultInjector,
    QuicTransport, Response as Reply, TlsIdentity, TransportConfig,
};

use crate::config::{DENY_LIST_POLL, NodeConfig};
use crate::driver::{Driver, DriverHandle, DriverOptions};
use crate::metrics::Health;
use crate::protocol::{self, CERTIFICATE_WARNING_DAYS, KvError, Response};
use crate::service::KvService;
use crate::state_machine::KvStateMachine;
use crate::watch::WatchHub;

/// Why a node could not start. Each says what to do.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// The certificates could not be loaded.
    #[error(
        "cannot load the TLS files (ca {ca}, cert {cert}, key {key}): {message}; check the paths and that they are PEM files issued for this node (`raft-cli certs` creates them)"
    )]
    Tls {
        /// The CA file.
        ca: String,
        /// The certificate file.
        cert: String,
        /// The key file.
        key: String,
        /// What went wrong.
        message: String,
    },
    /// The node's certificate is no longer valid.
    #[error(
        "the certificate {cert} expired {days} days ago; issue a new one (`raft-cli certs node --id N \
         --address ...` with the cluster's CA) and start the node with it"
    )]
    CertificateExpired {
        /// The certificate file.
        cert: String,
        /// Whole days since it expired.
        days: i64,
    },
    /// The data directory could not be opened.
    #[error(transparent)]
    Storage(#[from] raft_storage_rocks::Error),
    /// The data directory is new but no cluster to bootstrap or join was
    /// given.
    #[error(
        "the data directory {0} is empty: pass --initial-cluster to bootstrap a new cluster, or --join to wait to be added to an existing one"
    )]
    NothingToStart(String),
    /// The network could not be set up (e.g. the port is busy).
    #[error(
        "cannot start the network on {address}: {message}; if another process holds that port, stop it or pick another listen address"
    )]
    Network {
        /// The address.
        address: String,
        /// What went wrong.
        message: String,
    },
    /// Something else failed.
    #[error("{0}")]
    Other(String),
}

/// TEST ONLY: the environment variable that switches on a deliberate bug,
/// so that the chaos checker (`raft-kv/examples/chaos`) can prove it catches
/// one. `stale-reads`: linearizable reads skip ReadIndex; `driver-error`: the
/// raft driver stops with an error a second after start (to test that the
/// process exits). Honoured only on a
/// node started with `enable_fault_injection = true`, and announced with a
/// warning; nothing else reads it.
#[doc(hidden)]
pub const BROKEN_MODE_ENV: &str = "RAFT_KV_TEST_ONLY_BROKEN";

/// The client handler, plugged in once the driver runs.
#[derive(Default)]
struct LateHandler(OnceLock<Arc<KvService>>);

#[async_trait]
impl ClientHandler for LateHandler {
    async fn handle(&self, request: ClientRequest) -> Reply {
        match self.0.get() {
            Some(service) => service.handle(request).await,
            None => Reply::Unary(protocol::encode(&Response::Error(KvError::Unavailable(
                "the node is starting".into(),
            )))),
        }
    }
}

struct NodeHealth(DriverHandle<KvStateMachine>);

impl Health for NodeHealth {
    fn health(&self) -> (bool, String) {
        let view = self.0.view();
        if self.0.is_shutting_down() {
            return (false, "shutting down\n".into());
        }
        match view.leader {
            Some(leader) => (
                true,
                format!(
                    "ok: node {} term {} leader {leader} commit {} applied {}\n",
                    view.id, view.term, view.commit, view.applied
                ),
            ),
            None => (
                false,
                format!("no leader known: node {} term {}\n", view.id, view.term),
            ),
        }
    }
}

/// A running node.
pub struct Server {
    driver: Driver<KvStateMachine>,
    transport: Arc<QuicTransport>,
    store: RocksStore,
    metrics: Option<std::net::SocketAddr>,
    local: std::net::SocketAddr,
    /// Rereads the deny-list file while the node runs.
    _deny_reload: Option<AbortOnDrop>,
    /// The etcd v3 API, if served.
    etcd: Option<crate::etcd::EtcdServer>,
    /// The leader's lease expiry loop.
    _lease_expiry: AbortOnDrop,
}

/// Stops a task when dropped.
struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Rereads the deny-list file at `path` into `list` whenever its
/// modification time or size changes (looking every [`DENY_LIST_POLL`]):
/// the transport then closes connections of newly denied certificates. A
/// file that cannot be read or parsed leaves the list as it was.
fn keep_deny_list_current(path: std::path::PathBuf, list: DenyList) -> AbortOnDrop {
    let stamp = |path: &std::path::Path| {
        std::fs::metadata(path)
            .ok()
            .map(|m| (m.modified().ok(), m.len()))
    };
    let task = tokio::spawn(async move {
        let mut seen = stamp(&path);
        loop {
            tokio::time::sleep(DENY_LIST_POLL).await;
            let now = stamp(&path);
            if now == seen {
                continue;
            }
            seen = now;
            match list.reload_from(&path) {
                Ok(denied) => tracing::info!(
                    denied,
                    "reloaded the deny list {}; connections of denied certificates are closed",
                    path.display()
                ),
                Err(e) => tracing::warn!(
                    "cannot reload the deny list {} ({e}); the previous list stays in force",
                    path.display()
                ),
            }
        }
    });
    AbortOnDrop(task.abort_handle())
}

/// The CA key lying in the directory of the node's key `key`, if one does:
/// whoever can read the node's files could then issue certificates of any
/// role. (`raft-cli certs node --ca-dir` keeps the CA apart.)
pub fn ca_key_beside(key: &std::path::Path) -> Option<std::path::PathBuf> {
    let ca_key = key.parent()?.join("ca.key");
    ca_key.exists().then_some(ca_key)
}

/// Refuses an expired certificate and warns about one that expires within
/// [`CERTIFICATE_WARNING_DAYS`]; returns when it expires (Unix seconds).
fn check_expiry(identity: &TlsIdentity, cert: &std::path::Path) -> Result<i64, StartError> {
    let expires = identity.expires().map_err(|e| StartError::Tls {
        ca: String::new(),
        cert: cert.display().to_string(),
        key: String::new(),
        message: e.to_string(),
    })?;
    let now = protocol::unix_now();
    if expires <= now {
        return Err(StartError::CertificateExpired {
            cert: cert.display().to_string(),
            days: protocol::whole_days(expires, now),
        });
    }
    let days = protocol::whole_days(now, expires);
    if days < CERTIFICATE_WARNING_DAYS {
        tracing::warn!(
            cert = %cert.display(),
            "the node's certificate expires in {days} days; issue a new one with the cluster's CA \
             (`raft-cli certs node`) and restart the node with it before then"
        );
    }
    Ok(expires)
}

impl Server {
    /// Starts a node. Must run inside a multi-threaded tokio runtime.
    pub async fn start(config: NodeConfig) -> Result<Self, StartError> {
        config.validate()?;
        let identity =
            TlsIdentity::from_pem_files(&config.tls.ca, &config.tls.cert, &config.tls.key)
                .map_err(|e| StartError::Tls {
                    ca: config.tls.ca.display().to_string(),
                    cert: config.tls.cert.display().to_string(),
                    key: config.tls.key.display().to_string(),
                    message: e.to_string(),
                })?;
        let certificate_expires = check_expiry(&identity, &config.tls.cert)?;
        if let Some(ca_key) = ca_key_beside(&config.tls.key) {
            tracing::warn!(
                node = config.node_id,
                "the CA key {} sits beside this node's key: whoever can read this node's files can \
                 issue certificates of any role; keep the CA in a directory of its own (issue with \
                 `raft-cli certs node --ca-dir CA_DIR --dir DIR`) and remove it from here",
                ca_key.display()
            );
        }
        let store = RocksStore::open(StoreOptions::new(
            &config.data_dir,
            config.node_id,
            config.cluster_id.clone(),
        ))?;
        let is_new = store
            .last_index()
            .map_err(|e| StartError::Other(e.to_string()))?
            == 0
            && store
                .hard_state()
                .map_err(|e| StartError::Other(e.to_string()))?
                .term
                == 0;
        if is_new {
            match config.initial_membership()? {
                Some(membership) => {
                    store
                        .bootstrap(membership)
                        .map_err(|e| StartError::Other(format!("bootstrapping failed: {e}")))?;
                    tracing::info!(node = config.node_id, "bootstrapped a new cluster");
                }
                None if config.join => {
                    tracing::info!(node = config.node_id, "waiting to be added to the cluster")
                }
                None => {
                    return Err(StartError::NothingToStart(
                        config.data_dir.display().to_string(),
                    ));
                }
            }
        }

        let watch = Arc::new(WatchHub::new(100_000));
        let mut machine = KvStateMachine::new(watch.clone());
        if let Some((meta, data)) = store
            .load_snapshot_blocking()
            .map_err(|e| StartError::Other(e.to_string()))?
        {
            use raft_core::adapters::StateMachine;
            machine
                .restore(&meta, &data)
                .map_err(|e| StartError::Other(e.to_string()))?;
            tracing::info!(
                index = meta.last.index,
                "restored the state machine from its snapshot"
            );
        }

        let handler = Arc::new(LateHandler::default());
        let faults = config.enable_fault_injection.then(FaultInjector::new);
        let mut transport_config =
            TransportConfig::new(config.node_id, config.cluster_id.clone(), config.listen);
        transport_config.client_handler = Some(handler.clone());
        transport_config.fault_injector = faults.clone();
        let deny_list = match &config.tls.deny_list {
            Some(path) => {
                let list = DenyList::load(path).map_err(|e| {
                    StartError::Other(format!(
                        "cannot use the deny list {}: {e}; fix the file, or remove deny_list from \
                         the configuration",
                        path.display()
                    ))
                })?;
                tracing::info!(
                    node = config.node_id,
                    denied = list.len(),
                    "denying the certificates listed in {}",
                    path.display()
                );
                transport_config.deny_list = Some(list.clone());
                Some(list)
            }
            None => None,
        };
        let deny_reload = match (&config.tls.deny_list, &deny_list) {
            (Some(path), Some(list)) => Some(keep_deny_list_current(path.clone(), list.clone())),
            _ => None,
        };
        let transport = QuicTransport::start(transport_config, &identity)
            .await
            .map_err(|e| StartError::Network {
                address: config.listen.to_string(),
                message: e.to_string(),
            })?;
        let transport = Arc::new(transport);
        let local = transport
            .local_addr()
            .map_err(|e| StartError::Other(e.to_string()))?;

        let options = DriverOptions {
            tick: Duration::from_millis(config.raft.tick_ms),
            ..DriverOptions::default()
        };
        let driver = Driver::start(
            config.raft_config(),
            Arc::new(store.clone()),
            transport.clone(),
            machine,
            options,
        )
        .map_err(|e| StartError::Other(e.to_string()))?;
        let connector = ClientConnector::new(&identity, ClientOptions::default())
            .map_err(|e| StartError::Other(format!("cannot set up forwarding: {e}")))?;
        let mut service = KvService::new(
            driver.handle(),
            watch,
            config.advertise_address(),
            connector,
            faults,
            Duration::from_millis(config.request_timeout_ms),
        )
        .with_certificate_expiry(certificate_expires)
        .with_data_dir(config.data_dir.clone());
        if config.enable_fault_injection
            && std::env::var(BROKEN_MODE_ENV).as_deref() == Ok("stale-reads")
        {
            tracing::warn!(
                "TEST-ONLY BROKEN MODE ({BROKEN_MODE_ENV}=stale-reads): linearizable reads \
                 skip ReadIndex and may be stale; never run this node with real data"
            );
            service = service.break_linearizable_reads();
        }
        if config.enable_fault_injection
            && std::env::var(BROKEN_MODE_ENV).as_deref() == Ok("driver-error")
        {
            tracing::warn!(
                "TEST-ONLY BROKEN MODE ({BROKEN_MODE_ENV}=driver-error): the raft driver \
                 stops with an error in a second"
            );
            let handle = driver.handle();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let error = "injected failure (test only)".to_string();
                let _ = handle
                    .send(crate::driver::DriverRequest::Fail { error })
                    .await;
            });
        }
        let lease_expiry = AbortOnDrop(
            tokio::spawn(crate::lease::expire_leases(
                driver.handle(),
                service.lessor(),
            ))
            .abort_handle(),
        );
        let _ = handler.0.set(Arc::new(service));
        let etcd = match config.etcd_listen {
            Some(address) => {
                let read = |path: &std::path::Path| {
                    std::fs::read_to_string(path).map_err(|e| StartError::Tls {
                        ca: config.tls.ca.display().to_string(),
                        cert: config.tls.cert.display().to_string(),
                        key: config.tls.key.display().to_string(),
                        message: format!("{}: {e}", path.display()),
                    })
                };
                let options = crate::etcd::EtcdOptions {
                    address,
                    ca: read(&config.tls.ca)?,
                    cert: read(&config.tls.cert)?,
                    key: read(&config.tls.key)?,
                    cluster: config.cluster_id.clone(),
                    member_id: config.node_id,
                    deny: deny_list.clone(),
                    client_url: etcd_client_url(&config, address),
                };
                let late = handler.clone();
                let task = crate::etcd::serve(options, Arc::new(move || late.0.get().cloned()))
                    .await
                    .map_err(|message| StartError::Network {
                        address: address.to_string(),
                        message,
                    })?;
                tracing::info!(node = config.node_id, %address, "serving the etcd v3 API");
                Some(task)
            }
            None => None,
        };
        let metrics = match config.metrics_listen {
            Some(address) => Some(
                crate::metrics::serve(address, Arc::new(NodeHealth(driver.handle())), {
                    let transport = transport.clone();
                    Arc::new(move || crate::metrics::record_peer_rtts(&transport.peer_rtts()))
                })
                .map_err(|message| StartError::Network {
                    address: address.to_string(),
                    message,
                })?,
            ),
            None => None,
        };
        tracing::info!(node = config.node_id, address = %local, "node started");
        Ok(Self {
            driver,
            transport,
            store,
            metrics,
            local,
            _deny_reload: deny_reload,
            etcd,
            _lease_expiry: lease_expiry,
        })
    }

    /// The driver handle (for embedding and tests).
    pub fn handle(&self) -> DriverHandle<KvStateMachine> {
        self.driver.handle()
    }

    /// The address the node listens on.
    pub fn local_addr(&self) -> std::net::SocketAddr {
        self.local
    }

    /// Where metrics are served, if enabled.
    pub fn metrics_addr(&self) -> Option<std::net::SocketAddr> {
        self.metrics
    }

    /// Resolves if the node's Raft driver stops by itself, with the error it
    /// stopped on (a storage failure, say): the node can no longer serve,
    /// and its process should exit rather than stay connected to peers it
    /// never answers.
    pub fn failed(&self) -> impl std::future::Future<Output = String> + use<> {
        self.driver.failed()
    }

    /// Test support: stalls this node's Raft driver thread for `duration`,
    /// as if the process had been stopped (SIGSTOP) while its network stays
    /// up; requests and messages queue meanwhile.
    #[doc(hidden)]
    pub async fn stall_driver_for_test(&self, duration: std::time::Duration) {
        let _ = self
            .driver
            .handle()
            .send(crate::driver::DriverRequest::Stall { duration })
            .await;
    }

    /// Stops gracefully: a leader first hands leadership to the most
    /// up-to-date voter (so the cluster does not wait for an election), then
    /// the driver stops after making queued writes durable, the network
    /// closes and the database is closed cleanly.
    pub async fn shutdown(mut self) -> Result<(), String> {
        // etcd clients are cut off first, as native clients are when the
        // transport stops: they go on with other nodes.
        drop(self.etcd.take());
        let handle = self.driver.handle();
        if handle.view().is_leader && handle.view().voters.len() > 1 {
            let (reply, rx) = tokio::sync::oneshot::channel();
            if handle
                .send(crate::driver::DriverRequest::TransferLeader { to: None, reply })
                .await
                .is_ok()
            {
                if let Ok(Ok(target)) = rx.await {
                    let mut watcher = handle.clone();
                    let _ = tokio::time::timeout(Duration::from_secs(2), async {
                        while watcher.view().leader != Some(target) {
                            if watcher.view_changed().await.is_err() {
                                break;
                            }
                        }
                    })
                    .await;
                }
            }
        }
        let (server, result) = self.stop_driver().await?;
        server.transport.shutdown().await;
        drop(server.store);
        tracing::info!("node stopped");
        result
    }

    /// Stops at once, as a crash looks to peers and clients: no hand-over
    /// of leadership, the network closed first (every connection, the etcd
    /// API's included), then the driver, which still makes the writes it
    /// already queued durable (as the disk would hold them). For tests of
    /// what a cluster does when a node dies.
    pub async fn crash(mut self) -> Result<(), String> {
        drop(self.etcd.take());
        self.transport.shutdown().await;
        let (server, result) = self.stop_driver().await?;
        drop(server.store);
        tracing::warn!("node crashed (Server::crash)");
        result
    }

    /// Stops the driver (a blocking join) off the async threads.
    async fn stop_driver(mut self) -> Result<(Self, Result<(), String>), String> {
        tokio::task::spawn_blocking(move || {
            let result = self.driver.stop();
            (self, result)
        })
        .await
        .map_err(|e| format!("stopping the driver: {e}"))
    }
}

/// Where clients reach the etcd port listening on `address`: that address,
/// or, when it listens on every interface, the host this node advertises
/// to its peers with the etcd port.
fn etcd_client_url(config: &NodeConfig, address: std::net::SocketAddr) -> String {
    if !address.ip().is_unspecified() {
        return format!("https://{address}");
    }
    let advertised = config.advertise_address();
    let host = advertised
        .rsplit_once(':')
        .map_or(advertised.as_str(), |(host, _)| host);
    format!("https://{host}:{}", address.port())
}

#[cfg(test)]
mod tests {
    /// Review finding: the CA key sat beside the node keys and nothing said
    /// so. A node finds one in its key's directory (and warns at start).
    #[test]
    fn a_ca_key_beside_the_node_key_is_found() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("node-1.key");
        assert_eq!(super::ca_key_beside(&key), None);
        std::fs::write(dir.path().join("ca.key"), "key").unwrap();
        assert_eq!(super::ca_key_beside(&key), Some(dir.path().join("ca.key")));
    }
}
