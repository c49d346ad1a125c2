//! The commands, and what they share: connecting to the cluster with the
//! merged settings, and turning client errors into messages that say what
//! failed and what to do.

pub mod admin;
pub mod certs;
pub mod data;

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use raft_kv::{Client, ClientConfig, ClientError};
use serde_json::Value;

use crate::args::{Command, OutputFormat};
use crate::output::Table;
use crate::settings::Settings;

/// The outcome of a command that ran without error: whether its answer was
/// positive (exit code 0) or negative (exit code 1: a key not found, a
/// compare-and-swap that did not swap). Errors exit with code 2.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Done.
    Success,
    /// Done, but the answer is "no".
    Negative,
}

impl From<Outcome> for ExitCode {
    fn from(outcome: Outcome) -> Self {
        match outcome {
            Outcome::Success => ExitCode::SUCCESS,
            Outcome::Negative => ExitCode::from(1),
        }
    }
}

/// What every command gets: the merged settings and the output format.
pub struct Context {
    /// Connection settings.
    pub settings: Settings,
    /// Table or JSON.
    pub output: OutputFormat,
}

impl Context {
    /// A client for the configured cluster.
    pub async fn client(&self) -> anyhow::Result<Client> {
        self.client_with(self.settings.timeout, Duration::from_secs(5))
            .await
    }

    /// A client whose calls give up after `deadline` (each attempt after
    /// `attempt`, both capped by --timeout): for probing nodes that may be
    /// down without waiting the full deadline for each.
    pub async fn client_with(
        &self,
        deadline: Duration,
        attempt: Duration,
    ) -> anyhow::Result<Client> {
        let endpoints = self.settings.require_endpoints()?.to_vec();
        let (ca, cert, key) = self.settings.require_tls()?;
        let mut config = ClientConfig::from_files(endpoints, ca, cert, key).with_context(|| {
            format!(
                "cannot load the client identity (ca {}, cert {}, key {}); check --ca/--cert/--key \
                 (RAFT_CA, RAFT_CERT, RAFT_KEY), or issue a client certificate with \
                 `raft-cli certs client --dir DIR --name NAME`",
                ca.display(),
                cert.display(),
                key.display()
            )
        })?;
        config.deadline = deadline.min(self.settings.timeout);
        config.attempt_timeout = attempt.min(self.settings.timeout);
        Client::connect(config)
            .await
            .map_err(|e| explain("cannot set up the client", e))
    }

    /// Prints a document: the table for people, the JSON for scripts.
    pub fn print(
        &self,
        table: impl FnOnce() -> String,
        json: impl FnOnce() -> Value,
    ) -> anyhow::Result<()> {
        let text = match self.output {
            OutputFormat::Table => table(),
            OutputFormat::Json => {
                let mut text = serde_json::to_string_pretty(&json())?;
                text.push('\n');
                text
            }
        };
        write_stdout(&text)
    }

    /// Prints a table, or JSON.
    pub fn print_table(
        &self,
        table: impl FnOnce() -> Table,
        json: impl FnOnce() -> Value,
    ) -> anyhow::Result<()> {
        self.print(|| table().render(), json)
    }

    /// Whether output is JSON.
    pub fn json(&self) -> bool {
        self.output == OutputFormat::Json
    }
}

/// Writes to stdout and flushes (so that watch events reach a pipe at once).
pub fn write_stdout(text: &str) -> anyhow::Result<()> {
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
        .context("cannot write to standard output")
}

/// Runs one command.
pub async fn run(context: &Context, command: Command) -> anyhow::Result<Outcome> {
    match command {
        Command::Status => admin::status(context).await,
        Command::Members => admin::members(context).await,
        Command::Put {
            key,
            value,
            prev_kv,
        } => data::put(context, key, value, prev_kv).await,
        Command::Get {
            key,
            consistency,
            print_value_only,
        } => data::get(context, key, consistency, print_value_only).await,
        Command::Delete { key } => data::delete(context, key).await,
        Command::Cas(args) => data::cas(context, args).await,
        Command::Scan(args) => data::scan(context, args).await,
        Command::Watch(args) => data::watch(context, args).await,
        Command::AddNode {
            id,
            address,
            learner,
            catch_up_timeout,
            max_lag,
        } => {
            admin::add_node(
                context,
                id,
                address,
                learner,
                Duration::from_secs(catch_up_timeout),
                max_lag,
            )
            .await
        }
        Command::RemoveNode { id } => admin::remove_node(context, id).await,
        Command::TransferLeader { to } => admin::transfer_leader(context, to).await,
        Command::Bench(args) => crate::bench::run(context, args).await,
        Command::Certs(command) => certs::run(context, command),
    }
}

/// Whether a transport error looks like a refused TLS handshake (a
/// certificate from another CA, an expired one, a wrong server name).
pub fn looks_like_tls(message: &str) -> bool {
    let message = message.to_ascii_lowercase();
    [
        "certificate",
        "handshake",
        "tls",
        "crypto",
        "unknownissuer",
        "bad_certificate",
        "alert",
    ]
    .iter()
    .any(|word| message.contains(word))
}

/// Turns a client error into a message naming what failed (`what`) and
/// what to do about it.
pub fn explain(what: &str, error: ClientError) -> anyhow::Error {
    const TLS_HINT: &str = "check that --ca (RAFT_CA) is this cluster's CA certificate and that \
        --cert/--key (RAFT_CERT/RAFT_KEY) were issued by that CA (`raft-cli certs client`)";
    match error {
        ClientError::Unreachable {
            endpoints,
            last_error,
        } => {
            let endpoints = endpoints.join(",");
            if looks_like_tls(&last_error) {
                anyhow::anyhow!(
                    "{what}: the TLS handshake with the nodes at {endpoints} failed (certificate \
                     refused): {last_error}; {TLS_HINT}"
                )
            } else {
                anyhow::anyhow!(
                    "{what}: cannot reach any node at {endpoints}: {last_error}; check \
                     RAFT_ENDPOINTS / --endpoints and that the nodes run"
                )
            }
        }
        ClientError::Tls(message) => {
            anyhow::anyhow!("{what}: TLS setup failed: {message}; {TLS_HINT}")
        }
        ClientError::NoEndpoints => anyhow::anyhow!(
            "{what}: no node addresses given; pass --endpoints or set RAFT_ENDPOINTS"
        ),
        ClientError::Deadline(after, last) => {
            if looks_like_tls(&last) {
                anyhow::anyhow!(
                    "{what}: TLS handshake failed (certificate refused): {last}; {TLS_HINT}"
                )
            } else {
                anyhow::anyhow!(
                    "{what}: gave up after {after:?}: {last}; check `raft-cli status` (is a leader \
                     elected? are a majority of the voters up?) or raise --timeout. A write may or \
                     may not have taken effect"
                )
            }
        }
        ClientError::Kv(e) => anyhow::anyhow!("{what}: {e}"),
        ClientError::Protocol(message) => anyhow::anyhow!(
            "{what}: the node sent an unexpected answer ({message}); check that raft-cli and the \
             nodes are the same version"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use raft_kv::protocol::KvError;

    #[test]
    fn unreachable_nodes_say_where_and_what_to_check() {
        let e = explain(
            "put failed",
            ClientError::Unreachable {
                endpoints: vec!["127.0.0.1:7001".into(), "127.0.0.1:7002".into()],
                last_error: "connecting to 127.0.0.1:7002 timed out".into(),
            },
        )
        .to_string();
        assert!(
            e.starts_with("put failed: cannot reach any node at 127.0.0.1:7001,127.0.0.1:7002"),
            "{e}"
        );
        assert!(e.contains("RAFT_ENDPOINTS / --endpoints"), "{e}");
    }

    #[test]
    fn refused_certificates_point_at_the_tls_files() {
        let e = explain(
            "get failed",
            ClientError::Unreachable {
                endpoints: vec!["127.0.0.1:7001".into()],
                last_error: "aborted by peer: the cryptographic handshake failed: error 48".into(),
            },
        )
        .to_string();
        assert!(e.contains("TLS handshake") && e.contains("--ca"), "{e}");
        assert!(looks_like_tls("invalid peer certificate: UnknownIssuer"));
        assert!(!looks_like_tls("connecting to 127.0.0.1:7001 timed out"));
    }

    #[test]
    fn cluster_errors_keep_their_advice() {
        let e = explain(
            "remove-node 3 failed",
            ClientError::Kv(KvError::ConfigChangeInProgress),
        )
        .to_string();
        assert!(
            e.starts_with("remove-node 3 failed: a membership change"),
            "{e}"
        );
        // Right after an election the client retries on its own; if its
        // deadline passes first, the error says to retry.
        let e = explain(
            "add-node 4 failed",
            ClientError::Kv(KvError::LeaderNotSettled),
        )
        .to_string();
        assert!(
            e.contains("just elected") && e.contains("retry in a moment"),
            "{e}"
        );
        let e = explain(
            "put failed",
            ClientError::Deadline(Duration::from_secs(15), "no leader".into()),
        )
        .to_string();
        assert!(
            e.contains("raft-cli status") && e.contains("--timeout"),
            "{e}"
        );
    }

    #[test]
    fn outcomes_map_to_exit_codes() {
        assert_eq!(ExitCode::from(Outcome::Success), ExitCode::SUCCESS);
        assert_eq!(ExitCode::from(Outcome::Negative), ExitCode::from(1));
    }
}
