//! The configuration in force: tracking configuration entries as they enter
//! and leave the log, and what a change means for a leader.

use super::{Node, Role};
use crate::membership::Membership;
use crate::progress::Progress;
use crate::storage::LogRead;
use crate::types::Index;

impl<S: LogRead> Node<S> {
    /// A configuration entry entered the log at `index`: it is in force now.
    pub(super) fn push_config(&mut self, index: Index, membership: Membership) {
        self.configs.retain(|(i, _)| *i < index);
        self.configs.push((index, membership));
        self.on_config_changed();
    }

    /// Entries from `index` on are being replaced: configurations they
    /// carried are no longer in force.
    pub(super) fn truncate_configs(&mut self, index: Index) {
        let before = self.configs.len();
        self.configs.retain(|(i, _)| *i < index);
        if self.configs.len() != before {
            self.on_config_changed();
        }
    }

    /// Replaces every configuration by the one of an installed snapshot.
    pub(super) fn reset_configs(&mut self, index: Index, membership: Membership) {
        self.configs.clear();
        self.configs.push((index, membership));
        self.on_config_changed();
    }

    /// Drops configurations that no retained log position needs: keeps the
    /// one in force at `index` and every later one.
    pub(super) fn prune_configs(&mut self, index: Index) {
        let keep_from = self
            .configs
            .iter()
            .rposition(|(i, _)| *i <= index)
            .unwrap_or(0);
        self.configs.drain(..keep_from);
    }

    /// The configuration in force at log position `index`.
    pub(crate) fn config_at(&self, index: Index) -> Option<(Index, Membership)> {
        self.configs
            .iter()
            .rev()
            .find(|(i, _)| *i <= index)
            .cloned()
    }

    fn on_config_changed(&mut self) {
        let membership = self.membership().clone();
        match self.role {
            Role::Leader => {
                let next = self.log.last_index() + 1;
                self.progress.retain(|id, _| membership.contains(*id));
                for id in membership.members() {
                    if id != self.id && !self.progress.contains_key(&id) {
                        let mut pr = Progress::new(next);
                        pr.last_active = self.now;
                        self.progress.insert(id, pr);
                        self.need_append = true;
                    }
                }
                if let Some(t) = self.transfer {
                    if !membership.is_voter(t.target) {
                        self.transfer = None;
                    }
                }
            }
            Role::Candidate | Role::PreCandidate => {
                if !membership.is_voter(self.id) {
                    let term = self.term;
                    self.become_follower(term, None);
                }
            }
            Role::Follower => {}
        }
    }

    /// A leader that is no longer a voter steps down once the configuration
    /// removing it commits (Raft thesis §4.2.2), and never campaigns again
    /// unless it is added back.
    pub(super) fn maybe_step_down_after_removal(&mut self) {
        if self.role != Role::Leader || self.membership().is_voter(self.id) {
            return;
        }
        let latest = self.configs.last().map_or(0, |(i, _)| *i);
        if latest <= self.log.committed {
            tracing::info!(
                id = self.id,
                term = self.term,
                "removed from the configuration; stepping down"
            );
            let term = self.term;
            self.become_follower(term, None);
        }
    }
}
