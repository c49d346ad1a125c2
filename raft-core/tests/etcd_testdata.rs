//! etcd raft's own data-driven scenarios, replayed against our quorum and
//! single-server membership rules:
//!
//! - `quorum/testdata/*.txt`: majority and joint committed index, and vote
//!   outcomes (etcd-io/raft `quorum/datadriven_test.go`);
//! - `confchange/testdata/simple_*.txt`: one-at-a-time configuration changes
//!   (etcd-io/raft `confchange/datadriven_test.go`).
//!
//! The files are not committed: Debian ships them in `golang-etcd-server-dev`,
//! which this test downloads with `apt-get download` and unpacks with
//! `dpkg -x` into the target directory (once; later runs reuse it).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use raft_core::quorum::{
    VoteResult, joint_committed, joint_vote, majority_committed, majority_vote,
};
use raft_core::{ConfChange, ConfChangeError, Membership};

/// The unpacked `go.etcd.io/etcd/raft` directory.
fn etcd_raft_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let base = Path::new(env!("CARGO_TARGET_TMPDIR")).join("etcd-raft-testdata");
        let raft = base.join("x/usr/share/gocode/src/go.etcd.io/etcd/raft");
        if raft.join("quorum/testdata").is_dir() {
            return raft;
        }
        std::fs::create_dir_all(&base).expect("create the testdata directory");
        let download = Command::new("apt-get").args(["download", "golang-etcd-server-dev"]).current_dir(&base).output();
        match download {
            Ok(out) if out.status.success() => {}
            Ok(out) => panic!(
                "`apt-get download golang-etcd-server-dev` failed ({}): {}\nThis test needs Debian's package index; run `apt-get update` first.",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            ),
            Err(e) => panic!("cannot run apt-get ({e}); this test needs a Debian machine with apt"),
        }
        let deb = std::fs::read_dir(&base)
            .expect("list the download directory")
            .filter_map(Result::ok)
            .map(|e| e.path())
            .find(|p| p.extension().is_some_and(|x| x == "deb"))
            .expect("the downloaded .deb");
        let status = Command::new("dpkg").arg("-x").arg(&deb).arg(base.join("x")).status().expect("run dpkg -x");
        assert!(status.success(), "dpkg -x {} failed", deb.display());
        assert!(raft.join("quorum/testdata").is_dir(), "the package has no raft/quorum/testdata");
        raft
    })
}

/// One data-driven case: the command line and the expected output lines.
struct Case {
    file: String,
    line: usize,
    command: String,
    expected: Vec<String>,
}

fn cases(dir: &Path, prefix: &str) -> Vec<Case> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("testdata directory")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(prefix) && n.ends_with(".txt"))
        })
        .collect();
    files.sort();
    assert!(
        !files.is_empty(),
        "no {prefix}*.txt files in {}",
        dir.display()
    );
    let mut out = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).expect("read testdata");
        let lines: Vec<&str> = text.lines().collect();
        let mut i = 0;
        while i < lines.len() {
            let line = lines[i].trim();
            if line.is_empty() || line.starts_with('#') {
                i += 1;
                continue;
            }
            let start = i;
            let mut command = Vec::new();
            while i < lines.len() && lines[i].trim() != "----" {
                command.push(lines[i].trim().to_string());
                i += 1;
            }
            i += 1; // ----
            let mut expected = Vec::new();
            while i < lines.len() && !lines[i].trim().is_empty() {
                expected.push(lines[i].to_string());
                i += 1;
            }
            out.push(Case {
                file: file.file_name().unwrap().to_string_lossy().into_owned(),
                line: start + 1,
                command: command.join("\n"),
                expected,
            });
        }
    }
    out
}

/// Parses `key=(a,b,c)` / `key=zero` arguments.
fn args(command: &str) -> (String, Vec<(String, Vec<String>)>) {
    let mut parts = command.splitn(2, ' ');
    let verb = parts.next().unwrap_or_default().to_string();
    let rest = parts.next().unwrap_or_default();
    let mut out = Vec::new();
    let mut rest = rest.trim();
    while !rest.is_empty() {
        let eq = rest.find('=').expect("key=value");
        let key = rest[..eq].trim().to_string();
        let after = &rest[eq + 1..];
        let (value, tail) = if let Some(stripped) = after.strip_prefix('(') {
            let close = stripped.find(')').expect("closing paren");
            (&stripped[..close], &stripped[close + 1..])
        } else {
            let end = after.find(' ').unwrap_or(after.len());
            (&after[..end], &after[end..])
        };
        let values = value
            .split(',')
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
            .collect();
        out.push((key, values));
        rest = tail.trim();
    }
    (verb, out)
}

#[test]
fn quorum_testdata_agrees() {
    let dir = etcd_raft_dir().join("quorum/testdata");
    let mut checked = 0;
    for case in cases(&dir, "") {
        let (verb, args) = args(&case.command);
        let mut cfg = Vec::new();
        let mut cfgj = Vec::new();
        let mut joint = false;
        let mut idx = Vec::new();
        let mut votes = Vec::new();
        for (key, values) in args {
            match key.as_str() {
                "cfg" => cfg = values.iter().map(|v| v.parse::<u64>().unwrap()).collect(),
                "cfgj" => {
                    joint = true;
                    if values != ["zero"] {
                        cfgj = values.iter().map(|v| v.parse::<u64>().unwrap()).collect();
                    }
                }
                "idx" => {
                    idx = values
                        .iter()
                        .map(|v| {
                            if v == "_" {
                                None
                            } else {
                                Some(v.parse::<u64>().unwrap())
                            }
                        })
                        .collect()
                }
                "votes" => {
                    votes = values
                        .iter()
                        .map(|v| match v.as_str() {
                            "y" => Some(true),
                            "n" => Some(false),
                            _ => None,
                        })
                        .collect()
                }
                other => panic!("{}:{}: unknown argument {other}", case.file, case.line),
            }
        }
        // Values are given per voter in order of first appearance in
        // (cfg, cfgj), without repetition.
        let mut order = Vec::new();
        for id in cfg.iter().chain(&cfgj) {
            if !order.contains(id) {
                order.push(*id);
            }
        }
        let a: BTreeSet<u64> = cfg.iter().copied().collect();
        let b: BTreeSet<u64> = cfgj.iter().copied().collect();
        let position = |id: u64| order.iter().position(|&o| o == id);
        let last = case.expected.last().map(|s| s.trim()).unwrap_or_default();
        match verb.as_str() {
            "committed" => {
                let acked = |id: u64| position(id).and_then(|p| idx.get(p).copied().flatten());
                let got = if joint {
                    joint_committed(&a, &b, acked)
                } else {
                    majority_committed(&a, acked)
                };
                let want = if last.ends_with('∞') {
                    u64::MAX
                } else {
                    last.parse().unwrap()
                };
                assert_eq!(got, want, "{}:{}: {}", case.file, case.line, case.command);
            }
            "vote" => {
                let vote = |id: u64| position(id).and_then(|p| votes.get(p).copied().flatten());
                let got = if joint {
                    joint_vote(&a, &b, vote)
                } else {
                    majority_vote(&a, vote)
                };
                let got = match got {
                    VoteResult::Won => "VoteWon",
                    VoteResult::Lost => "VoteLost",
                    VoteResult::Pending => "VotePending",
                };
                assert_eq!(got, last, "{}:{}: {}", case.file, case.line, case.command);
            }
            other => panic!("{}:{}: unknown command {other}", case.file, case.line),
        }
        checked += 1;
    }
    println!("{checked} quorum cases agree with etcd raft");
    assert!(
        checked > 100,
        "expected the full quorum testdata, got {checked} cases"
    );
}

#[test]
fn confchange_simple_testdata_agrees() {
    let dir = etcd_raft_dir().join("confchange/testdata");
    let mut checked = 0;
    let mut files = std::collections::BTreeMap::<String, Membership>::new();
    for case in cases(&dir, "simple_") {
        let mut lines = case.command.lines();
        assert_eq!(lines.next(), Some("simple"), "{}:{}", case.file, case.line);
        let mut changes = Vec::new();
        for token in lines.flat_map(|l| l.split_whitespace()) {
            let (kind, id) = token.split_at(1);
            let id: u64 = id.parse().unwrap();
            changes.push(match kind {
                "v" => ConfChange::AddVoter { id, address: None },
                "l" => ConfChange::AddLearner {
                    id,
                    address: format!("node-{id}"),
                },
                "r" => ConfChange::Remove { id },
                other => panic!("{}:{}: unknown change {other}", case.file, case.line),
            });
        }
        // Each file is one sequence of changes from an empty configuration.
        let current = files.entry(case.file.clone()).or_default();
        let first = case
            .expected
            .first()
            .map(String::as_str)
            .unwrap_or_default();
        match current.apply_changes(&changes) {
            Ok(next) => {
                let show =
                    |s: &BTreeSet<u64>| s.iter().map(u64::to_string).collect::<Vec<_>>().join(" ");
                let mut got = format!("voters=({})", show(next.voters()));
                if !next.learners().is_empty() {
                    got.push_str(&format!(" learners=({})", show(next.learners())));
                }
                assert_eq!(got, first, "{}:{}: {}", case.file, case.line, case.command);
                *current = next;
            }
            Err(e) => {
                let want = match e {
                    ConfChangeError::NoVotersLeft => "removed all voters",
                    ConfChangeError::MoreThanOneVoterChanged => {
                        "more than one voter changed without entering joint config"
                    }
                    other => panic!("{}:{}: unexpected error {other}", case.file, case.line),
                };
                assert_eq!(want, first, "{}:{}: {}", case.file, case.line, case.command);
                assert!(
                    e.to_string().starts_with(want),
                    "our message says what etcd says: {e}"
                );
            }
        }
        checked += 1;
    }
    println!("{checked} single-change cases agree with etcd raft");
    assert!(
        checked >= 20,
        "expected the simple_*.txt cases, got {checked}"
    );
}
