//! The simulator's ground truth and its invariant checks (Raft paper,
//! figure 3, plus commit monotonicity, read linearizability and membership
//! safety).

use std::collections::{BTreeMap, HashMap};

use crate::MemLog;
use crate::membership::Membership;
use crate::node::{Node, Role};
use crate::types::{Entry, EntryPayload, Index, LogId, NodeId, Term};

use super::state_machine::entry_digest;

/// Which invariant broke, and how.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    /// The invariant's name.
    pub invariant: &'static str,
    /// What was observed.
    pub detail: String,
}

impl Violation {
    pub(crate) fn new(invariant: &'static str, detail: impl Into<String>) -> Self {
        Self {
            invariant,
            detail: detail.into(),
        }
    }
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.invariant, self.detail)
    }
}

/// Ground truth accumulated over a simulation.
#[derive(Default)]
pub(crate) struct Oracle {
    /// Election safety: the leader of each term.
    leaders: BTreeMap<Term, NodeId>,
    /// Log matching: every (index, term) ever written, with the digest of its
    /// entry and the term of the entry before it.
    written: HashMap<(Index, Term), (u64, Term)>,
    /// The committed log as leaders declared it: index -> (term, digest).
    committed: BTreeMap<Index, (Term, u64)>,
    /// The term of the node that first claimed each index committed (the
    /// entry was committed in that term or earlier).
    commit_terms: BTreeMap<Index, Term>,
    /// The highest index any leader declared committed.
    pub(crate) max_commit: Index,
    /// What was applied at each index, first come.
    applied: BTreeMap<Index, (Term, u64)>,
    /// Leader append-only: what each leader held when last checked.
    leader_last: BTreeMap<(NodeId, Term), LogId>,
    /// Per node incarnation: the commit index last seen.
    commit_seen: BTreeMap<NodeId, Index>,
    /// Nodes whose removal committed and who were not added back since,
    /// with the index of the configuration that removed them.
    pub(crate) removed: BTreeMap<NodeId, Index>,
    /// The last committed configuration, for the one-change-at-a-time rule.
    last_committed_config: Option<(Index, Membership)>,
    /// Elections won, counted once per (term, leader).
    pub(crate) elections: u64,
    /// The most voters a committed configuration had.
    pub(crate) peak_voters: usize,
}

impl Oracle {
    /// Forget per-incarnation state of a node that restarted.
    pub(crate) fn on_restart(&mut self, id: NodeId) {
        self.commit_seen.remove(&id);
    }

    /// Log matching, checked on every entry a node writes.
    pub(crate) fn on_written(
        &mut self,
        node: NodeId,
        entries: &[Entry],
        prev_term: Term,
    ) -> Result<(), Violation> {
        let mut prev = prev_term;
        for entry in entries {
            let digest = entry_digest(entry);
            match self.written.get(&(entry.index, entry.term)) {
                Some(&(d, p)) if d != digest || p != prev => {
                    return Err(Violation::new(
                        "log matching",
                        format!(
                            "node {node} wrote entry {}/{} (prev term {prev}) unlike another log's (prev term {p}, same digest: {})",
                            entry.index,
                            entry.term,
                            d == digest
                        ),
                    ));
                }
                Some(_) => {}
                None => {
                    self.written
                        .insert((entry.index, entry.term), (digest, prev));
                }
            }
            prev = entry.term;
        }
        Ok(())
    }

    /// State machine safety, checked on every applied entry.
    pub(crate) fn on_applied(&mut self, node: NodeId, entry: &Entry) -> Result<(), Violation> {
        let value = (entry.term, entry_digest(entry));
        if let Some(&c) = self.committed.get(&entry.index) {
            if c != value {
                return Err(Violation::new(
                    "state machine safety",
                    format!(
                        "node {node} applied {}/{} but {}/{} was committed there",
                        entry.index, entry.term, entry.index, c.0
                    ),
                ));
            }
        }
        match self.applied.get(&entry.index) {
            Some(&a) if a != value => Err(Violation::new(
                "state machine safety",
                format!(
                    "node {node} applied {}/{} where another node applied term {}",
                    entry.index, entry.term, a.0
                ),
            )),
            Some(_) => Ok(()),
            None => {
                self.applied.insert(entry.index, value);
                Ok(())
            }
        }
    }

    /// Checks run after every step, over every live node.
    pub(crate) fn check_nodes<'a>(
        &mut self,
        nodes: impl Iterator<Item = &'a Node<MemLog>>,
        disks: &BTreeMap<NodeId, &MemLog>,
    ) -> Result<(), Violation> {
        for node in nodes {
            let id = node.id();
            // Commit never goes backwards within an incarnation.
            let commit = node.commit_index();
            let seen = self.commit_seen.entry(id).or_insert(commit);
            if commit < *seen {
                return Err(Violation::new(
                    "commit monotonic",
                    format!("node {id} commit went from {seen} to {commit}"),
                ));
            }
            *seen = commit;
            // Every node's commit index is a claim about the committed log;
            // followers learn theirs from leaders, and a leader may step down
            // in the very step its commit advanced (e.g. after removing
            // itself), so collect claims from everyone.
            self.record_commits(node, disks)?;
            if node.role() != Role::Leader {
                continue;
            }
            let term = node.term();
            match self.leaders.get(&term) {
                Some(&other) if other != id => {
                    return Err(Violation::new(
                        "election safety",
                        format!("nodes {other} and {id} both lead term {term}"),
                    ));
                }
                Some(_) => {}
                None => {
                    self.leaders.insert(term, id);
                    self.elections += 1;
                    self.check_leader_completeness(node)?;
                    let voter = node.membership().is_voter(id)
                        || node.committed_membership().is_some_and(|m| m.is_voter(id));
                    if !voter {
                        let removed = self
                            .removed
                            .get(&id)
                            .map_or(String::new(), |at| format!(" (removed at {at})"));
                        return Err(Violation::new(
                            "only voters lead",
                            format!(
                                "node {id}{removed}, a voter neither in its configuration nor in its last committed one, became leader of term {term}"
                            ),
                        ));
                    }
                }
            }
            self.check_append_only(node)?;
        }
        Ok(())
    }

    /// Leader completeness (Raft paper §5.4): a new leader of term T holds
    /// every entry committed in a term before T. (A leader of an older term
    /// may still be elected late, by votes cast long ago; it can commit
    /// nothing, and need not hold entries committed since.)
    fn check_leader_completeness(&self, node: &Node<MemLog>) -> Result<(), Violation> {
        let first = node.first_index().unwrap_or(1);
        for (&index, &(term, _)) in self.committed.range(first..) {
            if self
                .commit_terms
                .get(&index)
                .is_none_or(|&t| t >= node.term())
            {
                continue;
            }
            let has = node.term_at(index).ok().flatten();
            if has != Some(term) {
                return Err(Violation::new(
                    "leader completeness",
                    format!(
                        "node {} leads term {} without committed entry {index}/{term} (has term {has:?})",
                        node.id(),
                        node.term()
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Leader append-only: a leader never drops or rewrites its entries.
    fn check_append_only(&mut self, node: &Node<MemLog>) -> Result<(), Violation> {
        let key = (node.id(), node.term());
        let last = node
            .last_log_id()
            .map_err(|e| Violation::new("storage", e.to_string()))?;
        if let Some(prev) = self.leader_last.get(&key) {
            let term_now = node.term_at(prev.index).ok().flatten();
            if last.index < prev.index || (term_now.is_some() && term_now != Some(prev.term)) {
                return Err(Violation::new(
                    "leader append-only",
                    format!(
                        "leader {} of term {} went from last entry {prev:?} to {last:?}",
                        node.id(),
                        node.term()
                    ),
                ));
            }
        }
        self.leader_last.insert(key, last);
        Ok(())
    }

    /// Records what a leader declares committed; it must agree with what
    /// was committed and applied before.
    fn record_commits(
        &mut self,
        node: &Node<MemLog>,
        disks: &BTreeMap<NodeId, &MemLog>,
    ) -> Result<(), Violation> {
        let commit = node.commit_index();
        if commit <= self.max_commit {
            // Known already; still check the leader agrees at its commit index.
            if let (Some(&(term, _)), Ok(Some(t))) =
                (self.committed.get(&commit), node.term_at(commit))
            {
                if term != t {
                    return Err(Violation::new(
                        "state machine safety",
                        format!(
                            "node {} has {commit}/{t} committed where {commit}/{term} was committed",
                            node.id()
                        ),
                    ));
                }
            }
            return Ok(());
        }
        self.check_commit_durable(node, commit, disks)?;
        let first = node.first_index().unwrap_or(1).max(self.max_commit + 1);
        let entries = node
            .entries(first, commit + 1, u64::MAX)
            .map_err(|e| Violation::new("storage", e.to_string()))?;
        for entry in &entries {
            let value = (entry.term, entry_digest(entry));
            if let Some(&c) = self.committed.get(&entry.index) {
                if c != value {
                    return Err(Violation::new(
                        "state machine safety",
                        format!(
                            "entry {} committed twice with different contents",
                            entry.index
                        ),
                    ));
                }
            }
            if let Some(&a) = self.applied.get(&entry.index) {
                if a != value {
                    return Err(Violation::new(
                        "state machine safety",
                        format!(
                            "node {} committed {}/{} but {}/{} was applied there",
                            node.id(),
                            entry.index,
                            entry.term,
                            entry.index,
                            a.0
                        ),
                    ));
                }
            }
            self.committed.insert(entry.index, value);
            self.commit_terms.entry(entry.index).or_insert(node.term());
            if let EntryPayload::Membership(m) = &entry.payload {
                self.on_config_committed(entry.index, m)?;
            }
        }
        self.max_commit = commit;
        self.check_claim_config(node)
    }

    /// The configuration a commit was decided under must be the one in
    /// force: the last committed configuration, or one change ahead of it
    /// (single-server changes take effect when appended, so a leader may
    /// run one uncommitted change ahead). Any other configuration's
    /// majorities need not overlap the cluster's, which is how a stale
    /// change commits beside a newer one (Raft thesis §4.1).
    fn check_claim_config(&self, node: &Node<MemLog>) -> Result<(), Violation> {
        let Some((index, committed)) = &self.last_committed_config else {
            return Ok(());
        };
        let used = node.membership().voters();
        let apart = used.symmetric_difference(committed.voters()).count();
        if apart > 1 {
            return Err(Violation::new(
                "commit under the configuration in force",
                format!(
                    "node {} (term {}) claims index {} committed under voters {used:?}, {apart} changes away from the configuration committed at {index} (voters {:?})",
                    node.id(),
                    node.term(),
                    node.commit_index(),
                    committed.voters()
                ),
            ));
        }
        Ok(())
    }

    /// Commit safety (Raft paper §5.4.2): when an index is first claimed
    /// committed, an entry of the claimer's term at or after it is durable
    /// on a majority of the claimer's voters. (Followers claim only what
    /// their leader claimed before them, in the same term.) Catches leaders
    /// that commit entries of earlier terms by counting replicas.
    fn check_commit_durable(
        &self,
        node: &Node<MemLog>,
        commit: Index,
        disks: &BTreeMap<NodeId, &MemLog>,
    ) -> Result<(), Violation> {
        use crate::LogRead;
        let term = node.term();
        let voters = node.membership().voters();
        let holds = |disk: &MemLog| -> bool {
            let last = disk.last_index().unwrap_or(0);
            let mut index = last;
            // Walk down over later terms; stop at the first entry of `term`
            // or below it.
            while index >= commit && index > 0 {
                match disk.term(index) {
                    Ok(t) if t == term => return true,
                    Ok(t) if t < term => return false,
                    Ok(_) => index -= 1,
                    Err(_) => return false,
                }
            }
            false
        };
        let durable = voters
            .iter()
            .filter(|id| disks.get(id).is_some_and(|d| holds(d)))
            .count();
        if durable * 2 <= voters.len() {
            return Err(Violation::new(
                "commit safety",
                format!(
                    "node {} (term {term}) claims index {commit} committed, but no entry of term {term} at or after it is durable on a majority of {voters:?} (only {durable})",
                    node.id()
                ),
            ));
        }
        Ok(())
    }

    fn on_config_committed(&mut self, index: Index, m: &Membership) -> Result<(), Violation> {
        if let Some((_, prev)) = &self.last_committed_config {
            let changed = prev.voters().symmetric_difference(m.voters()).count();
            if changed > 1 {
                return Err(Violation::new(
                    "one membership change at a time",
                    format!("configuration at {index} changes {changed} voters at once"),
                ));
            }
            for id in prev.members() {
                if !m.contains(id) {
                    self.removed.insert(id, index);
                }
            }
        }
        for id in m.members() {
            self.removed.remove(&id);
        }
        self.peak_voters = self.peak_voters.max(m.voters().len());
        self.last_committed_config = Some((index, m.clone()));
        Ok(())
    }

    /// Voters of the last committed configuration (0 before any).
    pub(crate) fn committed_voters(&self) -> usize {
        self.last_committed_config
            .as_ref()
            .map_or(0, |(_, m)| m.voters().len())
    }

    /// A lease read was served at once by `node`, leader of `term`: the
    /// lease promises that no leader of a later term exists yet.
    pub(crate) fn check_lease_read(&self, node: NodeId, term: Term) -> Result<(), Violation> {
        if let Some((&later, &leader)) = self.leaders.range(term + 1..).next() {
            return Err(Violation::new(
                "lease",
                format!(
                    "node {node}, leader of term {term}, served a lease read after node {leader} was elected in term {later}"
                ),
            ));
        }
        Ok(())
    }

    /// Linearizable reads: a read served at applied index `served` must
    /// include everything committed before it was asked, and nothing that
    /// was never committed.
    pub(crate) fn check_read(
        &self,
        node: NodeId,
        id: u64,
        committed_at_invocation: Index,
        served: Index,
    ) -> Result<(), Violation> {
        if served < committed_at_invocation {
            return Err(Violation::new(
                "linearizable read",
                format!(
                    "read {id} on node {node} served at applied index {served}, but {committed_at_invocation} was committed before it was asked"
                ),
            ));
        }
        if served > self.max_commit {
            return Err(Violation::new(
                "linearizable read",
                format!(
                    "read {id} on node {node} served at {served}, beyond anything committed ({})",
                    self.max_commit
                ),
            ));
        }
        Ok(())
    }

    /// The committed entry at `index`, if recorded.
    pub(crate) fn committed_at(&self, index: Index) -> Option<(Term, u64)> {
        self.committed.get(&index).copied()
    }
}
