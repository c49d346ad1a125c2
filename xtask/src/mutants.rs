//! `cargo xtask mutants`: shows that the simulator catches every safety rule
//! of raft-core when it is broken on purpose.
//!
//! Each mutant is a deliberately broken copy of one rule. The production
//! source has no switch for them: this task copies raft-core into the target
//! directory, patches each rule in the copy behind a run-time check of the
//! `RAFT_MUTANT` environment variable (so one build serves every mutant),
//! builds the simulator from the copy, and runs it once per mutant over a
//! named range of seeds. A mutant must be caught (a violated invariant, an
//! error from the node or a panic); the unmutated copy must pass the same
//! seeds. A patch whose original text is no longer in the source fails the
//! task, so the mutants follow the code.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail};

/// One deliberately broken rule.
pub(crate) struct Mutant {
    /// Its name (the value of `RAFT_MUTANT` that switches it on).
    pub(crate) name: &'static str,
    /// The rule it breaks.
    pub(crate) rule: &'static str,
    /// Edits to the copy of raft-core: (file under src/, original text,
    /// replacement). The replacement calls `crate::mutant_on(NAME)`.
    patches: &'static [(&'static str, &'static str, &'static str)],
    /// The simulator seeds it runs: --nodes, --start, --seeds.
    nodes: &'static str,
    start: u64,
    seeds: u64,
}

/// Every mutant, one per rule (the rules of the Raft paper that the
/// interceptor mutants in raft-core/tests/mutations.rs cover are not
/// repeated here).
pub(crate) const MUTANTS: &[Mutant] = &[
    Mutant {
        name: "config-change-before-first-commit",
        rule: "a new leader changes the configuration only after an entry of its term committed (Raft thesis §4.1)",
        patches: &[(
            "node/election.rs",
            "self.term_start_index = last + 1;",
            "self.term_start_index = if crate::mutant_on(\"config-change-before-first-commit\") { 0 } else { last + 1 };",
        )],
        nodes: "mix",
        start: 0,
        // Runs where a new leader changes the configuration before its
        // first commit are rare (a few per thousand seeds). Since messages
        // from removed nodes are dropped, seeds 0..2,000 no longer reach
        // the resulting violation; the first seed that does is 2,176.
        seeds: 6000,
    },
    Mutant {
        name: "single-voter-leads-before-term-is-durable",
        rule: "a single voter becomes leader only once its new term is durable",
        patches: &[(
            "node/election.rs",
            "&& self.durable_term >= self.term",
            "&& (crate::mutant_on(\"single-voter-leads-before-term-is-durable\") || self.durable_term >= self.term)",
        )],
        nodes: "1",
        start: 0,
        seeds: 2000,
    },
    Mutant {
        name: "out-of-range-answers-trusted",
        rule: "answers beyond the leader's log (or rounds it never sent) are dropped",
        patches: &[
            (
                "node/replication.rs",
                "AppendResponse::Success { match_index } if match_index > last => Some(format!(",
                "AppendResponse::Success { match_index } if match_index > last && !crate::mutant_on(\"out-of-range-answers-trusted\") => Some(format!(",
            ),
            (
                "node/replication.rs",
                "if rejected > last || hint.index > rejected || hint.term > self.term =>",
                "if (rejected > last || hint.index > rejected || hint.term > self.term) && !crate::mutant_on(\"out-of-range-answers-trusted\") =>",
            ),
            (
                "node/replication.rs",
                "if resp.round > self.reads.round() {",
                "if resp.round > self.reads.round() && !crate::mutant_on(\"out-of-range-answers-trusted\") {",
            ),
            (
                "node/snapshot.rs",
                "if resp.snapshot_index > last {",
                "if resp.snapshot_index > last && !crate::mutant_on(\"out-of-range-answers-trusted\") {",
            ),
        ],
        nodes: "mix",
        start: 0,
        seeds: 2000,
    },
    Mutant {
        name: "pre-vote-ignores-the-lease",
        rule: "a pre-vote is granted exactly where the vote would be (Raft thesis §9.6)",
        patches: &[(
            "node/election.rs",
            "let granted = self.would_vote(from, term, &req)?;",
            "let granted = if pre_vote && crate::mutant_on(\"pre-vote-ignores-the-lease\") { \
             !(!req.transfer && self.in_lease() && self.leader.is_some_and(|l| l != from)) \
             && (self.vote == Some(from) || (self.vote.is_none() && self.leader.is_none()) || term > self.term) \
             && self.log.is_up_to_date(req.last_log)? \
             } else { self.would_vote(from, term, &req)? };",
        )],
        nodes: "mix",
        start: 0,
        seeds: 2000,
    },
    Mutant {
        name: "vote-in-own-term-ignores-the-lease",
        rule: "a node that heard from a live leader within the election timeout votes for no one, in any term",
        patches: &[(
            "node/election.rs",
            "if term < self.term || (!req.transfer && self.in_lease()) {",
            "if term < self.term || (!req.transfer && self.in_lease() && (term > self.term || !crate::mutant_on(\"vote-in-own-term-ignores-the-lease\"))) {",
        )],
        nodes: "mix",
        start: 0,
        seeds: 2000,
    },
    Mutant {
        name: "lease-ignores-clock-drift",
        rule: "the lease is shortened by the clock-drift bound (Config::lease_ticks)",
        patches: &[(
            "node/reads.rs",
            "let lease = self.config.lease_ticks();",
            "let lease = if crate::mutant_on(\"lease-ignores-clock-drift\") { self.config.election_ticks - 1 } else { self.config.lease_ticks() };",
        )],
        nodes: "lease",
        start: 0,
        seeds: 3000,
    },
    Mutant {
        name: "campaign-ignores-the-lease",
        rule: "a node that would refuse its vote to others because a leader's lease holds does not campaign",
        patches: &[(
            "node.rs",
            "if self.in_lease() {\n            return Err(Error::InLease {",
            "if self.in_lease() && !crate::mutant_on(\"campaign-ignores-the-lease\") {\n            return Err(Error::InLease {",
        )],
        nodes: "lease",
        start: 0,
        seeds: 2000,
    },
    Mutant {
        name: "removed-id-reused",
        rule: "ids of removed members are never reused",
        patches: &[(
            "node.rs",
            "if self.membership().removed().contains(&id) =>",
            "if self.membership().removed().contains(&id) && !crate::mutant_on(\"removed-id-reused\") =>",
        )],
        nodes: "1",
        start: 0,
        seeds: 2000,
    },
    Mutant {
        name: "removed-leader-never-campaigns",
        rule: "a node removed by a change not known committed may still campaign (it may hold the only copy)",
        patches: &[(
            "node/election.rs",
            "self.committed_membership()\n            .is_some_and(|m| m != self.membership() && m.is_voter(self.id))",
            "!crate::mutant_on(\"removed-leader-never-campaigns\") && self.committed_membership()\n            .is_some_and(|m| m != self.membership() && m.is_voter(self.id))",
        )],
        nodes: "2",
        start: 0,
        seeds: 2000,
    },
    Mutant {
        name: "persisted-message-ahead-of-its-write",
        rule: "persisted messages resting on a write not yet acknowledged come with a synced write of their own",
        patches: &[(
            "node.rs",
            "|| behind_earlier_write;",
            "|| (behind_earlier_write && !crate::mutant_on(\"persisted-message-ahead-of-its-write\"));",
        )],
        nodes: "varied",
        start: 0,
        // Caught first at seed 94 (a duplicate AppendEntries acknowledged
        // ahead of the write holding its entries: a commit not durable on a
        // majority).
        seeds: 500,
    },
    Mutant {
        name: "removed-leader-not-told",
        rule: "a removed node leading an older term is told the newer term (with CheckQuorum off nothing else stops it)",
        patches: &[(
            "node.rs",
            "if malformed.is_none() && message.term < self.term {",
            "if malformed.is_none() && message.term < self.term && !crate::mutant_on(\"removed-leader-not-told\") {",
        )],
        nodes: "varied",
        // Rare: it takes CheckQuorum off, a leader that removes itself and
        // is cut off before it hears the change commit. Seed 31,216 is the
        // first of the mix that reaches it (node 2 leads term 6 with a view
        // that leaves it out while node 1 leads term 8).
        start: 31000,
        seeds: 500,
    },
    Mutant {
        name: "last-term-adopted",
        rule: "a term no term can follow (u64::MAX) is malformed: dropped and counted",
        patches: &[(
            "node.rs",
            "let malformed = if message.term == Term::MAX {",
            "let malformed = if message.term == Term::MAX && !crate::mutant_on(\"last-term-adopted\") {",
        )],
        nodes: "varied",
        start: 0,
        // Forged messages of term u64::MAX (SimConfig::forge_max_term):
        // caught first at seed 15, every node stuck at the last term.
        seeds: 500,
    },
];

/// Arguments of `cargo xtask mutants`.
#[derive(clap::Args, Debug, Default)]
pub(crate) struct MutantsArgs {
    /// Run only this mutant.
    #[arg(long)]
    only: Option<String>,
    /// List the mutants and the rules they break, and exit.
    #[arg(long)]
    list: bool,
}

pub(crate) fn run(args: &MutantsArgs) -> Result<()> {
    if args.list {
        for m in MUTANTS {
            println!("{:44} {}", m.name, m.rule);
        }
        return Ok(());
    }
    let selected: Vec<&Mutant> = MUTANTS
        .iter()
        .filter(|m| args.only.as_deref().is_none_or(|o| o == m.name))
        .collect();
    if selected.is_empty() {
        bail!(
            "no mutant is called {:?}; see cargo xtask mutants --list",
            args.only
        );
    }
    let root = super::workspace_root();
    let target = target_dir(&root);
    let copy = target.join("mutants").join("ws");
    prepare_copy(&root, &copy)?;
    let sim = build(&copy, &target)?;
    let jobs = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);

    let mut survivors = Vec::new();
    let mut clean_ranges = std::collections::BTreeSet::new();
    for m in selected {
        // The copy without the mutant passes the mutant's seeds...
        if clean_ranges.insert((m.nodes, m.start, m.seeds)) {
            let clean = run_sim(&sim, None, m, jobs)?;
            if !clean.success {
                bail!(
                    "the unmutated copy fails {}'s seeds, so the mutant proves nothing:\n{}",
                    m.name,
                    clean.output
                );
            }
        }
        // ...and the mutant does not.
        let began = Instant::now();
        let mutated = run_sim(&sim, Some(m.name), m, jobs)?;
        if mutated.success {
            eprintln!(
                "xtask: mutant {} SURVIVED {} seeds ({} from {}): {}",
                m.name, m.seeds, m.nodes, m.start, m.rule
            );
            survivors.push(m.name);
            continue;
        }
        let caught = mutated
            .output
            .lines()
            .find(|l| l.contains("failed at step") || l.contains("panicked"))
            .unwrap_or("(no failure line)")
            .to_string();
        eprintln!(
            "xtask: mutant {} caught in {:.1}s ({}, seeds from {} of {}): {caught}",
            m.name,
            began.elapsed().as_secs_f64(),
            m.rule,
            m.start,
            m.nodes
        );
    }
    if !survivors.is_empty() {
        bail!(
            "{} mutant(s) survived the simulator: {}",
            survivors.len(),
            survivors.join(", ")
        );
    }
    Ok(())
}

fn target_dir(root: &Path) -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .map(|p| if p.is_relative() { root.join(p) } else { p })
        .unwrap_or_else(|| root.join("target"))
}

/// Copies raft-core (library and simulator example) into `copy` as a
/// workspace of its own, renamed so that its build never mixes with the
/// real crate's, and applies every mutant's patches.
fn prepare_copy(root: &Path, copy: &Path) -> Result<()> {
    let crate_dir = copy.join("raft-core");
    if copy.exists() {
        std::fs::remove_dir_all(copy).with_context(|| format!("clearing {}", copy.display()))?;
    }
    std::fs::create_dir_all(crate_dir.join("examples"))?;
    copy_tree(&root.join("raft-core/src"), &crate_dir.join("src"))?;
    std::fs::copy(
        root.join("raft-core/examples/sim.rs"),
        crate_dir.join("examples/sim.rs"),
    )?;
    std::fs::copy(root.join("Cargo.lock"), copy.join("Cargo.lock"))?;

    // The workspace: the real one's package settings, dependencies and
    // release profile, with only the copy as member.
    let mut ws: toml::Table = std::fs::read_to_string(root.join("Cargo.toml"))?.parse()?;
    let workspace = ws
        .get_mut("workspace")
        .and_then(|w| w.as_table_mut())
        .context("Cargo.toml has no [workspace]")?;
    workspace.insert(
        "members".into(),
        toml::Value::Array(vec!["raft-core".into()]),
    );
    if let Some(deps) = workspace
        .get_mut("dependencies")
        .and_then(|d| d.as_table_mut())
    {
        deps.retain(|_, v| v.get("path").is_none());
    }
    let release = ws
        .get("profile")
        .and_then(|p| p.get("release"))
        .cloned()
        .unwrap_or_else(|| toml::Value::Table(toml::Table::new()));
    let mut profile = toml::Table::new();
    profile.insert("release".into(), release);
    ws.insert("profile".into(), toml::Value::Table(profile));
    std::fs::write(copy.join("Cargo.toml"), toml::to_string(&ws)?)?;

    let mut krate: toml::Table =
        std::fs::read_to_string(root.join("raft-core/Cargo.toml"))?.parse()?;
    let package = krate
        .get_mut("package")
        .and_then(|p| p.as_table_mut())
        .context("raft-core/Cargo.toml has no [package]")?;
    package.insert("name".into(), "raft-core-mutants".into());
    package.insert("autotests".into(), false.into());
    package.insert("autobenches".into(), false.into());
    let mut lib = toml::Table::new();
    lib.insert("name".into(), "raft_core".into());
    krate.insert("lib".into(), toml::Value::Table(lib));
    for section in ["test", "bench", "dev-dependencies"] {
        krate.remove(section);
    }
    std::fs::write(crate_dir.join("Cargo.toml"), toml::to_string(&krate)?)?;

    let src = crate_dir.join("src");
    for m in MUTANTS {
        for (file, original, replacement) in m.patches {
            let path = src.join(file);
            let text = std::fs::read_to_string(&path)?;
            let found = text.matches(original).count();
            if found != 1 {
                bail!(
                    "mutant {}: expected the text {original:?} once in raft-core/src/{file}, found it {found} times; update the mutant in xtask/src/mutants.rs",
                    m.name
                );
            }
            std::fs::write(&path, text.replacen(original, replacement, 1))?;
        }
    }
    let lib_rs = src.join("lib.rs");
    let mut text = std::fs::read_to_string(&lib_rs)?;
    text.push_str(
        "\n/// Mutation testing only (this copy is generated by `cargo xtask mutants`).\n\
         #[doc(hidden)]\n\
         pub fn mutant_on(name: &str) -> bool {\n\
         \x20   static ACTIVE: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();\n\
         \x20   ACTIVE.get_or_init(|| std::env::var(\"RAFT_MUTANT\").ok()).as_deref() == Some(name)\n\
         }\n",
    );
    std::fs::write(lib_rs, text)?;
    Ok(())
}

fn copy_tree(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let dest = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_tree(&entry.path(), &dest)?;
        } else {
            std::fs::copy(entry.path(), dest)?;
        }
    }
    Ok(())
}

/// Builds the simulator of the mutated copy; returns its path.
fn build(copy: &Path, target: &Path) -> Result<PathBuf> {
    let mut cmd = super::cargo();
    cmd.args([
        "build",
        "--release",
        "-q",
        "--features",
        "testing",
        "--example",
        "sim",
        "--manifest-path",
    ])
    .arg(copy.join("Cargo.toml"))
    .env("CARGO_TARGET_DIR", target);
    eprintln!(
        "xtask: building the mutated copy of raft-core in {}",
        copy.display()
    );
    let status = cmd.status().context("could not start cargo")?;
    if !status.success() {
        bail!("building the mutated copy of raft-core failed ({status})");
    }
    Ok(target.join("release/examples/sim"))
}

struct SimRun {
    success: bool,
    output: String,
}

fn run_sim(sim: &Path, mutant: Option<&str>, m: &Mutant, jobs: usize) -> Result<SimRun> {
    let mut cmd = Command::new(sim);
    cmd.args(["--nodes", m.nodes, "--first-failure"])
        .args(["--start", &m.start.to_string()])
        .args(["--seeds", &m.seeds.to_string()])
        .args(["--jobs", &jobs.to_string()]);
    match mutant {
        Some(name) => cmd.env("RAFT_MUTANT", name),
        None => cmd.env_remove("RAFT_MUTANT"),
    };
    let out = cmd
        .output()
        .with_context(|| format!("could not run {}", sim.display()))?;
    let mut output = String::from_utf8_lossy(&out.stderr).into_owned();
    output.push_str(&String::from_utf8_lossy(&out.stdout));
    Ok(SimRun {
        success: out.status.success(),
        output,
    })
}
