//! The command line: global connection flags and one subcommand per action.
//!
//! Connection settings may also come from environment variables and a
//! config file; [`crate::settings`] merges the three (flags win over the
//! environment, the environment over the file). Clap is deliberately not
//! told about the environment variables, so that the merge lives in one
//! place and can be unit-tested without touching the process environment.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use raft_transport_quic::Role;

/// Administer and use a raft-kv cluster.
///
/// Connection settings come from flags, else environment variables
/// (RAFT_ENDPOINTS, RAFT_CA, RAFT_CERT, RAFT_KEY, RAFT_CLI_CONFIG), else a
/// TOML config file (`endpoints = ["127.0.0.1:7001"]`, `ca`, `cert`, `key`;
/// relative paths are relative to the file).
#[derive(Parser, Debug)]
#[command(name = "raft-cli", version, about, long_about, max_term_width = 100)]
pub struct Cli {
    /// Connection settings and output format.
    #[command(flatten)]
    pub global: GlobalArgs,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Flags every command accepts.
#[derive(Args, Debug, Default, Clone)]
#[command(next_help_heading = "Connection and output (any command)")]
pub struct GlobalArgs {
    /// Node addresses (host:port), comma separated; any node will do
    /// [env: RAFT_ENDPOINTS]
    #[arg(
        long,
        id = "global_endpoints",
        global = true,
        value_delimiter = ',',
        value_name = "A,B,C"
    )]
    pub endpoints: Vec<String>,
    /// The cluster CA certificate (PEM) [env: RAFT_CA]
    #[arg(long, id = "global_ca", global = true, value_name = "FILE")]
    pub ca: Option<PathBuf>,
    /// This client's certificate, issued by the cluster CA (PEM) [env: RAFT_CERT]
    #[arg(long, id = "global_cert", global = true, value_name = "FILE")]
    pub cert: Option<PathBuf>,
    /// This client's private key (PEM) [env: RAFT_KEY]
    #[arg(long, id = "global_key", global = true, value_name = "FILE")]
    pub key: Option<PathBuf>,
    /// A TOML file with endpoints, ca, cert and key [env: RAFT_CLI_CONFIG]
    #[arg(long, id = "global_config", global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Output format: tables for people, JSON for scripts.
    #[arg(long, id = "global_output", global = true, value_enum, default_value_t = OutputFormat::Table, value_name = "FORMAT")]
    pub output: OutputFormat,
    /// How long one request may take, retries included, in seconds.
    #[arg(
        long,
        id = "global_timeout",
        global = true,
        default_value_t = 15,
        value_name = "SECS"
    )]
    pub timeout: u64,
}

/// How results are printed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    /// Aligned columns for people.
    #[default]
    Table,
    /// JSON for scripts (one document, or one line per event for watch).
    Json,
}

/// How fresh a read must be.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum ConsistencyArg {
    /// Reflects every write acknowledged before the read (ReadIndex).
    #[default]
    Linearizable,
    /// Linearizable while the leader's lease holds (leader only; needs the
    /// nodes started with lease reads enabled).
    Lease,
    /// Whatever the node that answers has applied: fast, possibly stale.
    Stale,
}

impl From<ConsistencyArg> for raft_kv::protocol::Consistency {
    fn from(value: ConsistencyArg) -> Self {
        match value {
            ConsistencyArg::Linearizable => Self::Linearizable,
            ConsistencyArg::Lease => Self::Lease,
            ConsistencyArg::Stale => Self::Stale,
        }
    }
}

/// The operation a benchmark runs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum BenchOp {
    /// Writes only.
    #[default]
    Put,
    /// Reads only (the keys are written once first).
    Get,
    /// Half reads, half writes.
    Mixed,
}

/// One action.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// One row per member: id, address, role, term, commit, applied, lag, health.
    Status,
    /// The members: id, address, voter or learner.
    Members,
    /// Set KEY to VALUE (read from standard input when VALUE is not given:
    /// binary-safe, up to the largest value the cluster takes).
    Put {
        /// The key.
        key: String,
        /// The value (default: all of standard input).
        value: Option<String>,
        /// Also print the key as it was before (etcd's `--prev-kv`).
        #[arg(long)]
        prev_kv: bool,
    },
    /// Read KEY (exit code 1 if it does not exist).
    Get {
        /// The key.
        key: String,
        /// How fresh the read must be.
        #[arg(long, value_enum, default_value_t = ConsistencyArg::Linearizable)]
        consistency: ConsistencyArg,
        /// Print only the value's bytes, exactly as stored (as etcdctl).
        #[arg(long)]
        print_value_only: bool,
    },
    /// Delete KEY.
    Delete {
        /// The key.
        key: String,
    },
    /// Compare-and-swap: change KEY only if it holds the expected value
    /// (exit code 1 and the current value if it does not).
    Cas(CasArgs),
    /// List keys by prefix or range, in key order.
    Scan(ScanArgs),
    /// Print changes to a key or prefix as they commit, until Ctrl-C.
    Watch(WatchArgs),
    /// Add a node: as a learner, wait until it has caught up, then make it a voter.
    AddNode {
        /// The new node's id (as in its config). Ids of removed nodes are
        /// never reused: a replacement node gets a new id.
        id: u64,
        /// Where it listens (host:port), as other nodes and clients reach it.
        address: String,
        /// Stop after adding it as a learner (do not promote it).
        #[arg(long)]
        learner: bool,
        /// How long to wait for the learner to catch up, in seconds.
        #[arg(long, default_value_t = 120, value_name = "SECS")]
        catch_up_timeout: u64,
        /// Caught up means at most this many entries behind the leader.
        #[arg(long, default_value_t = 10, value_name = "ENTRIES")]
        max_lag: u64,
    },
    /// Remove a node (voter or learner, the leader included). Its id is
    /// retired for good: stop the node, and give a replacement a new id.
    RemoveNode {
        /// The node's id.
        id: u64,
    },
    /// Hand leadership to another voter.
    TransferLeader {
        /// The voter to lead (default: the most up-to-date one).
        #[arg(long, value_name = "ID")]
        to: Option<u64>,
    },
    /// Measure throughput and latency with concurrent clients.
    ///
    /// Prints a latency histogram (p50, p99, p99.9) and throughput. With
    /// `--output json` prints one JSON line with the fields of
    /// BENCHMARKS.md: workload, clients, ops, secs, ops_per_sec, p50_ms,
    /// p99_ms, p999_ms, errors; cpu_us_per_op is always null (raft-cli
    /// cannot see the servers' CPU time; `cargo xtask bench` measures it).
    Bench(BenchArgs),
    /// Create a cluster CA and issue node and client certificates.
    #[command(subcommand)]
    Certs(CertsCommand),
}

/// `cas` arguments.
#[derive(Args, Debug)]
#[command(group(clap::ArgGroup::new("expect").required(true).args(["expected", "absent"])))]
#[command(group(clap::ArgGroup::new("change").required(true).args(["new", "delete"])))]
pub struct CasArgs {
    /// The key.
    pub key: String,
    /// The value the key must hold.
    #[arg(long, value_name = "V")]
    pub expected: Option<String>,
    /// The key must not exist.
    #[arg(long)]
    pub absent: bool,
    /// The value to set.
    #[arg(long, value_name = "V")]
    pub new: Option<String>,
    /// Delete the key.
    #[arg(long)]
    pub delete: bool,
}

/// `scan` arguments.
#[derive(Args, Debug)]
#[command(group(clap::ArgGroup::new("range").required(true).args(["prefix", "start"])))]
pub struct ScanArgs {
    /// Every key starting with P.
    #[arg(long, value_name = "P")]
    pub prefix: Option<String>,
    /// The first key.
    #[arg(long, value_name = "S")]
    pub start: Option<String>,
    /// The key after the last one (exclusive; default: no bound).
    #[arg(long, value_name = "E", requires = "start", conflicts_with = "prefix")]
    pub end: Option<String>,
    /// The most keys to list (read in pages, all at one revision).
    #[arg(long, default_value_t = 1000, value_name = "N")]
    pub limit: u32,
    /// The revision to read at (the `revision` of an earlier scan, to
    /// continue it; default: the latest). A node keeps a past revision for
    /// a while after a scan that had more to read.
    #[arg(long, default_value_t = 0, value_name = "R")]
    pub rev: u64,
    /// How fresh the read must be.
    #[arg(long, value_enum, default_value_t = ConsistencyArg::Linearizable)]
    pub consistency: ConsistencyArg,
}

/// `watch` arguments.
#[derive(Args, Debug)]
#[command(group(clap::ArgGroup::new("selector").required(true).args(["key", "prefix"])))]
pub struct WatchArgs {
    /// One key (or use --prefix).
    #[arg(value_name = "KEY")]
    pub key: Option<String>,
    /// Every key starting with P.
    #[arg(long, value_name = "P")]
    pub prefix: Option<String>,
    /// Replay from this revision (default: only changes from now on).
    #[arg(long, value_name = "R")]
    pub from_revision: Option<u64>,
}

/// `bench` arguments.
#[derive(Args, Debug, Clone)]
pub struct BenchArgs {
    /// Concurrent clients, each waiting for its reply before the next request.
    #[arg(long, default_value_t = 16, value_name = "N")]
    pub clients: usize,
    /// Connections the clients share, each with its own session (default:
    /// min(clients, 100), as etcd's benchmark tool does).
    #[arg(long, value_name = "N")]
    pub conns: Option<usize>,
    /// How long to measure, in seconds.
    #[arg(long, default_value_t = 10, value_name = "SECS")]
    pub duration: u64,
    /// Seconds of load before the measured window (connections, sessions
    /// and caches warm up); nothing in it is counted.
    #[arg(long, default_value_t = 2, value_name = "SECS")]
    pub warmup: u64,
    /// Bytes per value.
    #[arg(long, default_value_t = 256, value_name = "BYTES")]
    pub value_size: usize,
    /// How many distinct keys to use (for get and mixed they are written
    /// once before measuring).
    #[arg(long, default_value_t = 10_000, value_name = "N")]
    pub keys: u64,
    /// What to run.
    #[arg(long, value_enum, default_value_t = BenchOp::Put)]
    pub op: BenchOp,
    /// How fresh reads must be.
    #[arg(long, value_enum, default_value_t = ConsistencyArg::Linearizable)]
    pub consistency: ConsistencyArg,
    /// Open this many client sessions before measuring (and leave them
    /// open), to measure with a full session table.
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub open_sessions: u64,
}

/// `certs` subcommands. They work on files only and need no cluster.
#[derive(Subcommand, Debug)]
pub enum CertsCommand {
    /// Create a cluster CA: writes DIR/ca.pem and DIR/ca.key (an existing CA
    /// is kept unless --force).
    Ca {
        /// Where to write the files (created if missing).
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
        /// The cluster id (as in the nodes' cluster_id).
        #[arg(long, default_value = "local", value_name = "ID")]
        cluster: String,
        /// Replace an existing CA (every certificate it issued stops working).
        #[arg(long)]
        force: bool,
    },
    /// Issue a node certificate: needs CA_DIR/ca.pem and CA_DIR/ca.key,
    /// writes DIR/node-N.pem, DIR/node-N.key and a copy of DIR/ca.pem.
    Node {
        /// Where the files go.
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
        /// Where the CA is (default: DIR, with a warning: keep the CA's key
        /// away from the keys you hand out).
        #[arg(long, value_name = "CA_DIR")]
        ca_dir: Option<PathBuf>,
        /// The node id.
        #[arg(long, value_name = "N")]
        id: u64,
        /// An address clients and peers reach the node at (IP or host name,
        /// a port is ignored); repeat for several.
        #[arg(long = "address", value_name = "HOST_OR_IP", required = true)]
        addresses: Vec<String>,
        /// The cluster id (as in the nodes' cluster_id).
        #[arg(long, default_value = "local", value_name = "ID")]
        cluster: String,
    },
    /// Issue a client certificate: needs CA_DIR/ca.pem and CA_DIR/ca.key,
    /// writes DIR/NAME.pem, DIR/NAME.key and a copy of DIR/ca.pem.
    Client {
        /// Where the files go.
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
        /// Where the CA is (default: DIR, with a warning: keep the CA's key
        /// away from the keys you hand out).
        #[arg(long, value_name = "CA_DIR")]
        ca_dir: Option<PathBuf>,
        /// The client's name (a-z, 0-9 and '-').
        #[arg(long, value_name = "NAME")]
        name: String,
        /// What the certificate allows: admin (everything: membership,
        /// leader transfer, fault injection, and all below), readwrite
        /// (writes and reads) or readonly (reads, scans, watches, status).
        #[arg(long, value_name = "ROLE")]
        role: Role,
        /// The cluster id (as in the nodes' cluster_id).
        #[arg(long, default_value = "local", value_name = "ID")]
        cluster: String,
    },
    /// Print a certificate's SHA-256 fingerprint, as a line for a node's
    /// deny list (`deny_list` in its configuration): append it there to
    /// revoke the certificate; nodes reread the file within seconds.
    Fingerprint {
        /// The certificate (PEM or DER).
        #[arg(value_name = "CERT")]
        cert: PathBuf,
    },
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("raft-cli").chain(args.iter().copied()))
    }

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn global_flags_go_before_or_after_the_command() {
        let cli = parse(&["--endpoints", "a:1,b:2", "get", "k", "--output", "json"]).unwrap();
        assert_eq!(cli.global.endpoints, ["a:1", "b:2"]);
        assert_eq!(cli.global.output, OutputFormat::Json);
        assert!(matches!(
            cli.command,
            Command::Get { ref key, consistency: ConsistencyArg::Linearizable, print_value_only: false } if key == "k"
        ));
        let cli = parse(&["status", "--timeout", "3"]).unwrap();
        assert_eq!(cli.global.timeout, 3);
        assert_eq!(cli.global.output, OutputFormat::Table);
    }

    #[test]
    fn cas_needs_one_expectation_and_one_change() {
        assert!(parse(&["cas", "k", "--expected", "a", "--new", "b"]).is_ok());
        assert!(parse(&["cas", "k", "--absent", "--delete"]).is_ok());
        assert!(parse(&["cas", "k", "--new", "b"]).is_err());
        assert!(parse(&["cas", "k", "--absent"]).is_err());
        assert!(parse(&["cas", "k", "--expected", "a", "--absent", "--new", "b"]).is_err());
        assert!(parse(&["cas", "k", "--absent", "--new", "b", "--delete"]).is_err());
    }

    #[test]
    fn scan_and_watch_need_a_selection() {
        assert!(parse(&["scan", "--prefix", "a/"]).is_ok());
        assert!(parse(&["scan", "--start", "a", "--end", "b", "--limit", "5"]).is_ok());
        assert!(parse(&["scan"]).is_err());
        assert!(parse(&["scan", "--prefix", "a", "--start", "b"]).is_err());
        assert!(parse(&["scan", "--prefix", "a", "--end", "b"]).is_err());
        assert!(parse(&["watch", "--prefix", "a/", "--from-revision", "7"]).is_ok());
        assert!(parse(&["watch", "config"]).is_ok());
        assert!(parse(&["watch"]).is_err());
        assert!(parse(&["watch", "config", "--prefix", "a/"]).is_err());
    }

    #[test]
    fn admin_commands_parse() {
        let cli = parse(&["add-node", "4", "127.0.0.1:7004", "--learner"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::AddNode {
                id: 4,
                learner: true,
                catch_up_timeout: 120,
                ..
            }
        ));
        let cli = parse(&["transfer-leader", "--to", "2"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::TransferLeader { to: Some(2) }
        ));
        let cli = parse(&["transfer-leader"]).unwrap();
        assert!(matches!(cli.command, Command::TransferLeader { to: None }));
        assert!(parse(&["remove-node", "x"]).is_err());
    }

    #[test]
    fn certs_commands_parse() {
        let cli = parse(&[
            "certs",
            "node",
            "--dir",
            "d",
            "--id",
            "2",
            "--address",
            "127.0.0.1",
            "--address",
            "db2",
        ])
        .unwrap();
        match cli.command {
            Command::Certs(CertsCommand::Node {
                id,
                addresses,
                cluster,
                ..
            }) => {
                assert_eq!(id, 2);
                assert_eq!(addresses, ["127.0.0.1", "db2"]);
                assert_eq!(cluster, "local");
            }
            other => panic!("{other:?}"),
        }
        assert!(parse(&["certs", "node", "--dir", "d", "--id", "2"]).is_err());
        // A client certificate needs a role, one of three.
        assert!(parse(&["certs", "client", "--dir", "d", "--name", "me"]).is_err());
        assert!(
            parse(&[
                "certs", "client", "--dir", "d", "--name", "me", "--role", "root"
            ])
            .is_err()
        );
        match parse(&[
            "certs", "client", "--dir", "d", "--name", "me", "--role", "readonly",
        ])
        .unwrap()
        .command
        {
            Command::Certs(CertsCommand::Client { role, .. }) => assert_eq!(role, Role::ReadOnly),
            other => panic!("{other:?}"),
        }
    }
}
