//! A node's configuration: a TOML file, overridden by command-line flags.
//!
//! ```toml
//! node_id = 1
//! cluster_id = "local"
//! listen = "127.0.0.1:7001"
//! data_dir = "target/cluster/node-1"
//! initial_cluster = ["1=127.0.0.1:7001", "2=127.0.0.1:7002", "3=127.0.0.1:7003"]
//!
//! [tls]
//! ca = "target/cluster/ca.pem"
//! cert = "target/cluster/node-1.pem"
//! key = "target/cluster/node-1.key"
//!
//! [raft]
//! tick_ms = 50
//! election_ticks = 10
//!
//! [snapshot]
//! threshold = 100000
//! retention = 10000
//! ```

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use raft_core::{Membership, NodeId};

/// Everything a node needs to start.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// This node's id (non-zero, unique in the cluster).
    pub node_id: NodeId,
    /// The cluster's name; nodes of other clusters are refused.
    pub cluster_id: String,
    /// The UDP address to listen on (peers and clients share it).
    pub listen: SocketAddr,
    /// The address other nodes and clients use to reach this one (default:
    /// `listen`).
    #[serde(default)]
    pub advertise: Option<String>,
    /// Where the log, hard state and snapshots live.
    pub data_dir: PathBuf,
    /// `id=host:port` for every initial voter, to bootstrap a new cluster
    /// (used only when the data directory is new).
    #[serde(default)]
    pub initial_cluster: Vec<String>,
    /// Start with an empty log and wait to be added by `raft-cli add-node`.
    #[serde(default)]
    pub join: bool,
    /// Certificates.
    pub tls: TlsFiles,
    /// Raft timing and features.
    #[serde(default)]
    pub raft: RaftSettings,
    /// Snapshot policy.
    #[serde(default)]
    pub snapshot: SnapshotSettings,
    /// Where to serve etcd's v3 gRPC API (TCP, TLS with client
    /// certificates from the cluster's CA), e.g. `127.0.0.1:2379`, so that
    /// `etcdctl` and etcd client libraries can use the cluster; off if
    /// unset.
    #[serde(default)]
    pub etcd_listen: Option<SocketAddr>,
    /// Where to serve `/metrics` and `/health` over HTTP (none if unset).
    #[serde(default)]
    pub metrics_listen: Option<SocketAddr>,
    /// Log format.
    #[serde(default)]
    pub log_format: LogFormat,
    /// Accept fault-injection requests (tests only; off by default).
    #[serde(default)]
    pub enable_fault_injection: bool,
    /// How long a client request may take inside the node, in milliseconds.
    #[serde(default = "default_request_timeout_ms")]
    pub request_timeout_ms: u64,
}

fn default_request_timeout_ms() -> u64 {
    5_000
}

/// PEM files: the cluster CA, this node's certificate and its key.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    /// The cluster CA certificate.
    pub ca: PathBuf,
    /// This node's certificate (issued by the CA for this node id).
    pub cert: PathBuf,
    /// This node's private key.
    pub key: PathBuf,
    /// Revoked certificates: a file of SHA-256 fingerprints, one per line
    /// (`raft-cli certs fingerprint FILE` prints a certificate's; `#`
    /// starts a comment). Connections presenting one are refused, and open
    /// ones closed, on every path. The node rereads the file when it
    /// changes (within [`DENY_LIST_POLL`]); a file that cannot be read or
    /// parsed keeps the list in force and logs why. No file: nothing is
    /// denied.
    #[serde(default)]
    pub deny_list: Option<PathBuf>,
}

/// How often a node looks whether its deny-list file changed.
pub const DENY_LIST_POLL: std::time::Duration = std::time::Duration::from_secs(2);

/// Raft settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RaftSettings {
    /// Milliseconds per tick.
    pub tick_ms: u64,
    /// Election timeout (minimum), in ticks.
    pub election_ticks: u64,
    /// Heartbeat interval, in ticks.
    pub heartbeat_ticks: u64,
    /// Allow lease reads: the leader serves them without a round trip for
    /// `floor(election_ticks × (1 − max_clock_drift)) − 1` ticks after a
    /// heartbeat round a quorum acknowledged. The driver derives ticks from
    /// the monotonic clock and delivers them before any request, also after
    /// a pause, so the lease ends on time by the leader's clock; it relies on
    /// the nodes' clocks running at rates within `max_clock_drift` of each
    /// other.
    pub lease_reads: bool,
    /// The drift between nodes' clock rates that leases tolerate (0.1: one
    /// node's clock may run up to 10% slower than another's).
    pub max_clock_drift: f64,
    /// Bytes per AppendEntries message.
    pub max_append_bytes: u64,
}

impl Default for RaftSettings {
    fn default() -> Self {
        Self {
            tick_ms: 50,
            election_ticks: 10,
            heartbeat_ticks: 2,
            lease_reads: false,
            max_clock_drift: 0.1,
            max_append_bytes: 1 << 20,
        }
    }
}

/// Snapshot settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SnapshotSettings {
    /// Log entries that trigger a snapshot (0: never).
    pub threshold: u64,
    /// Entries kept below a snapshot.
    pub retention: u64,
    /// Bytes per snapshot chunk.
    pub chunk_size: u64,
}

impl Default for SnapshotSettings {
    fn default() -> Self {
        Self {
            threshold: 100_000,
            retention: 10_000,
            chunk_size: 1 << 20,
        }
    }
}

/// How logs are written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Human,
    /// One JSON object per line.
    Json,
}

/// A configuration problem, with what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read the configuration file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML for a node configuration.
    #[error("invalid configuration file {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A value is invalid.
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

impl NodeConfig {
    /// Parses a TOML document.
    pub fn from_toml(text: &str, path: &Path) -> Result<Self, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string(),
        })
    }

    /// Reads and parses a file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.into(),
            source,
        })?;
        Self::from_toml(&text, path)
    }

    /// The address others use to reach this node.
    pub fn advertise_address(&self) -> String {
        self.advertise
            .clone()
            .unwrap_or_else(|| self.listen.to_string())
    }

    /// The initial voters, parsed.
    pub fn initial_membership(&self) -> Result<Option<Membership>, ConfigError> {
        if self.initial_cluster.is_empty() {
            return Ok(None);
        }
        let mut voters = BTreeMap::new();
        for item in &self.initial_cluster {
            let (id, address) = item.split_once('=').ok_or_else(|| {
                ConfigError::Invalid(format!(
                    "initial_cluster entry {item:?} is not id=host:port (e.g. 1=127.0.0.1:7001)"
                ))
            })?;
            let id: NodeId = id.trim().parse().map_err(|_| {
                ConfigError::Invalid(format!(
                    "initial_cluster entry {item:?}: {id:?} is not a node id (a positive integer)"
                ))
            })?;
            if id == 0 || address.trim().is_empty() {
                return Err(ConfigError::Invalid(format!(
                    "initial_cluster entry {item:?} needs a non-zero id and an address"
                )));
            }
            if voters.insert(id, address.trim().to_string()).is_some() {
                return Err(ConfigError::Invalid(format!(
                    "initial_cluster names node {id} twice"
                )));
            }
        }
        if !voters.contains_key(&self.node_id) {
            return Err(ConfigError::Invalid(format!(
                "initial_cluster does not include this node ({}); add {}={} or use --join",
                self.node_id,
                self.node_id,
                self.advertise_address()
            )));
        }
        Ok(Some(Membership::with_voters(voters)))
    }

    /// Checks values that cannot work.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let fail = |m: String| Err(ConfigError::Invalid(m));
        if self.node_id == 0 {
            return fail("node_id must be a positive integer".into());
        }
        if self.cluster_id.is_empty()
            || !self
                .cluster_id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-')
        {
            return fail(format!(
                "cluster_id {:?} must be letters, digits and dashes",
                self.cluster_id
            ));
        }
        if self.join && !self.initial_cluster.is_empty() {
            return fail("use either join or initial_cluster, not both".into());
        }
        if self.raft.tick_ms == 0 || self.raft.tick_ms > 10_000 {
            return fail(format!(
                "raft.tick_ms must be 1..=10000, got {}",
                self.raft.tick_ms
            ));
        }
        if self.raft.election_ticks <= self.raft.heartbeat_ticks || self.raft.heartbeat_ticks == 0 {
            return fail(
                "raft.election_ticks must exceed raft.heartbeat_ticks, which must be at least 1"
                    .into(),
            );
        }
        if self.request_timeout_ms == 0 {
            return fail("request_timeout_ms must be positive".into());
        }
        if let Err(e) = self.raft_config().validate() {
            return fail(format!("[raft]: {e}"));
        }
        self.initial_membership()?;
        Ok(())
    }

    /// The raft-core configuration this node runs with.
    pub fn raft_config(&self) -> raft_core::Config {
        let mut config = raft_core::Config::new(self.node_id);
        config.election_ticks = self.raft.election_ticks;
        config.heartbeat_ticks = self.raft.heartbeat_ticks;
        config.lease_reads = self.raft.lease_reads;
        config.max_clock_drift = self.raft.max_clock_drift;
        config.max_append_bytes = self.raft.max_append_bytes;
        config.seed = rand::random();
        config.snapshot.threshold = self.snapshot.threshold;
        config.snapshot.retention = self.snapshot.retention;
        config.snapshot.chunk_size = self.snapshot.chunk_size;
        config
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = r#"
node_id = 1
cluster_id = "local"
listen = "127.0.0.1:7001"
data_dir = "d"
initial_cluster = ["1=127.0.0.1:7001", "2=127.0.0.1:7002"]
[tls]
ca = "ca.pem"
cert = "n.pem"
key = "n.key"
[raft]
tick_ms = 20
"#;

    #[test]
    fn parses_and_validates() {
        let config = NodeConfig::from_toml(EXAMPLE, Path::new("x.toml")).unwrap();
        config.validate().unwrap();
        assert_eq!(config.raft.tick_ms, 20);
        assert_eq!(config.raft.election_ticks, 10);
        assert_eq!(
            config.initial_membership().unwrap().unwrap().voters().len(),
            2
        );
    }

    #[test]
    fn errors_say_what_is_wrong() {
        let err = NodeConfig::from_toml("node_id = \"one\"", Path::new("x.toml")).unwrap_err();
        assert!(err.to_string().contains("x.toml"), "{err}");
        let mut config = NodeConfig::from_toml(EXAMPLE, Path::new("x.toml")).unwrap();
        config.initial_cluster = vec!["2=127.0.0.1:7002".into()];
        assert!(
            config
                .validate()
                .unwrap_err()
                .to_string()
                .contains("does not include this node")
        );
        config.initial_cluster = vec!["x".into()];
        assert!(
            config
                .validate()
                .unwrap_err()
                .to_string()
                .contains("id=host:port")
        );
        let unknown = format!("{EXAMPLE}\nbogus = 1\n");
        assert!(NodeConfig::from_toml(&unknown, Path::new("x.toml")).is_err());
    }
}
