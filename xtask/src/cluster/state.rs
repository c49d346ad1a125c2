//! The cluster's state file, `<dir>/cluster.state`: which binaries the
//! cluster runs, which process supervises it in the foreground, and every
//! node's pid and ports. `cluster stop` and `cluster spawn` read it; a new
//! `cluster` reads it to tell a running cluster from a stale directory.
//!
//! A small line format, so xtask needs no serialisation crate:
//!
//! ```text
//! bin_dir=/home/me/raft/target/release
//! supervisor=1234
//! node=1 pid=1240 listen=127.0.0.1:40001 metrics=127.0.0.1:40002 initial=true
//! ```

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use super::process;

/// The state file's name inside the cluster directory.
pub(crate) const FILE: &str = "cluster.state";

/// One node as recorded.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct NodeRecord {
    pub id: u64,
    pub pid: u32,
    pub listen: SocketAddr,
    pub metrics: SocketAddr,
    /// One of the voters the cluster was bootstrapped with (not spawned).
    pub initial: bool,
}

/// Everything the state file holds.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct State {
    /// Where `raft-kv` and `raft-cli` are.
    pub bin_dir: PathBuf,
    /// The foreground `cargo xtask cluster` process, if any.
    pub supervisor: Option<u32>,
    pub nodes: Vec<NodeRecord>,
}

impl State {
    pub fn path(dir: &Path) -> PathBuf {
        dir.join(FILE)
    }

    /// Reads the state of the cluster in `dir`; `None` if there is no state file.
    pub fn load(dir: &Path) -> Result<Option<State>> {
        let path = Self::path(dir);
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
        };
        Self::parse(&text)
            .map(Some)
            .with_context(|| format!("{} is damaged; delete the directory {} (after making sure no raft-kv process of it still runs)", path.display(), dir.display()))
    }

    pub fn parse(text: &str) -> Result<State> {
        let mut state = State::default();
        for (number, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            if let Some(dir) = line.strip_prefix("bin_dir=") {
                state.bin_dir = PathBuf::from(dir);
            } else if let Some(pid) = line.strip_prefix("supervisor=") {
                state.supervisor = Some(
                    pid.parse()
                        .with_context(|| format!("line {}: bad pid {pid:?}", number + 1))?,
                );
            } else if line.starts_with("node=") {
                state.nodes.push(
                    parse_node(line).with_context(|| format!("line {}: {line:?}", number + 1))?,
                );
            } else {
                bail!("line {}: unknown entry {line:?}", number + 1);
            }
        }
        Ok(state)
    }

    pub fn render(&self) -> String {
        let mut out = String::from(
            "# Written by `cargo xtask cluster`; read by `cargo xtask cluster stop` and `spawn`.\n",
        );
        out.push_str(&format!("bin_dir={}\n", self.bin_dir.display()));
        if let Some(pid) = self.supervisor {
            out.push_str(&format!("supervisor={pid}\n"));
        }
        for n in &self.nodes {
            out.push_str(&format!(
                "node={} pid={} listen={} metrics={} initial={}\n",
                n.id, n.pid, n.listen, n.metrics, n.initial
            ));
        }
        out
    }

    /// Writes the state atomically (temporary file, then rename).
    pub fn save(&self, dir: &Path) -> Result<()> {
        let path = Self::path(dir);
        let tmp = dir.join(format!("{FILE}.tmp"));
        std::fs::write(&tmp, self.render())
            .and_then(|()| std::fs::rename(&tmp, &path))
            .with_context(|| format!("cannot write {}", path.display()))
    }

    /// The nodes whose process still runs.
    pub fn live_nodes(&self, dir: &Path) -> Vec<&NodeRecord> {
        self.nodes
            .iter()
            .filter(|n| process::node_alive(n.pid, &config_path(dir, n.id)))
            .collect()
    }

    /// The foreground supervisor, if it still runs.
    pub fn live_supervisor(&self) -> Option<u32> {
        self.supervisor.filter(|&pid| process::xtask_alive(pid))
    }

    pub fn node(&self, id: u64) -> Option<&NodeRecord> {
        self.nodes.iter().find(|n| n.id == id)
    }
}

fn parse_node(line: &str) -> Result<NodeRecord> {
    let mut id = None;
    let mut pid = None;
    let mut listen = None;
    let mut metrics = None;
    let mut initial = false;
    for item in line.split_whitespace() {
        let (key, value) = item
            .split_once('=')
            .with_context(|| format!("{item:?} is not key=value"))?;
        match key {
            "node" => id = Some(value.parse().context("bad node id")?),
            "pid" => pid = Some(value.parse().context("bad pid")?),
            "listen" => listen = Some(value.parse().context("bad listen address")?),
            "metrics" => metrics = Some(value.parse().context("bad metrics address")?),
            "initial" => initial = value.parse().context("bad initial flag")?,
            _ => bail!("unknown key {key:?}"),
        }
    }
    Ok(NodeRecord {
        id: id.context("no node id")?,
        pid: pid.context("no pid")?,
        listen: listen.context("no listen address")?,
        metrics: metrics.context("no metrics address")?,
        initial,
    })
}

/// `<dir>/node-<id>.toml`.
pub(crate) fn config_path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("node-{id}.toml"))
}

/// `<dir>/node-<id>.log`.
pub(crate) fn log_path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("node-{id}.log"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let state = State {
            bin_dir: PathBuf::from("/x/target dir/debug"),
            supervisor: Some(42),
            nodes: vec![
                NodeRecord {
                    id: 1,
                    pid: 100,
                    listen: "127.0.0.1:4000".parse().unwrap(),
                    metrics: "127.0.0.1:4001".parse().unwrap(),
                    initial: true,
                },
                NodeRecord {
                    id: 4,
                    pid: 101,
                    listen: "127.0.0.1:4002".parse().unwrap(),
                    metrics: "127.0.0.1:4003".parse().unwrap(),
                    initial: false,
                },
            ],
        };
        assert_eq!(State::parse(&state.render()).unwrap(), state);
        let detached = State {
            supervisor: None,
            ..state
        };
        assert_eq!(State::parse(&detached.render()).unwrap(), detached);
    }

    #[test]
    fn refuses_garbage() {
        assert!(State::parse("hello\n").is_err());
        assert!(State::parse("node=1 pid=x listen=a metrics=b\n").is_err());
        assert!(State::parse("node=1 pid=2\n").is_err());
    }
}
