//! Cluster configuration: who votes, who only learns, and where each member can
//! be reached; and the rules for changing it one server at a time.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::error::ConfChangeError;
use crate::types::NodeId;

/// A cluster configuration.
///
/// Voters elect leaders and count towards commit quorums; learners receive the
/// log but never vote. Each member may carry an address, which raft-core stores
/// and replicates but never interprets (the transport resolves it).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Membership {
    voters: BTreeSet<NodeId>,
    learners: BTreeSet<NodeId>,
    addresses: BTreeMap<NodeId, String>,
    /// Ids removed from the cluster, never to be reused (see
    /// [`Membership::removed`]).
    #[serde(default)]
    removed: BTreeSet<NodeId>,
}

/// One change to a configuration.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ConfChange {
    /// Add `id` as a learner, or demote it if it is a voter. The address
    /// replaces any address known for it.
    AddLearner {
        /// The node to add.
        id: NodeId,
        /// Where the node can be reached; opaque to raft-core.
        address: String,
    },
    /// Make `id` a voter: promote a learner, or add a new voter directly.
    AddVoter {
        /// The node to promote or add.
        id: NodeId,
        /// Where the node can be reached, if not already known.
        address: Option<String>,
    },
    /// Remove `id`, voter or learner, from the configuration.
    Remove {
        /// The node to remove.
        id: NodeId,
    },
}

impl ConfChange {
    /// The node this change is about.
    pub fn node(&self) -> NodeId {
        match self {
            ConfChange::AddLearner { id, .. }
            | ConfChange::AddVoter { id, .. }
            | ConfChange::Remove { id } => *id,
        }
    }
}

impl Membership {
    /// A configuration of voters, each with its address.
    pub fn with_voters(voters: impl IntoIterator<Item = (NodeId, String)>) -> Self {
        let mut m = Membership::default();
        for (id, address) in voters {
            m.voters.insert(id);
            m.addresses.insert(id, address);
        }
        m
    }

    /// The voting members.
    pub fn voters(&self) -> &BTreeSet<NodeId> {
        &self.voters
    }

    /// The non-voting members.
    pub fn learners(&self) -> &BTreeSet<NodeId> {
        &self.learners
    }

    /// Every member's address, voters and learners alike.
    pub fn addresses(&self) -> &BTreeMap<NodeId, String> {
        &self.addresses
    }

    /// The address of `id`, if it is a member with a known address.
    pub fn address(&self, id: NodeId) -> Option<&str> {
        self.addresses.get(&id).map(String::as_str)
    }

    /// Ids that were members and were removed. They are never reused
    /// ([`crate::Node::propose_membership`] refuses to add them again), as
    /// with etcd's member ids: an old incarnation of an id is still named
    /// by configurations in logs and by stale nodes, and a node re-added
    /// under it with an empty store would be counted as the voter it used to
    /// be (it would replay old configurations as it catches up, and grant
    /// votes its old incarnation never would). A replacement node gets a new
    /// id.
    pub fn removed(&self) -> &BTreeSet<NodeId> {
        &self.removed
    }

    /// Whether `id` is a voter.
    pub fn is_voter(&self, id: NodeId) -> bool {
        self.voters.contains(&id)
    }

    /// Whether `id` is a learner.
    pub fn is_learner(&self, id: NodeId) -> bool {
        self.learners.contains(&id)
    }

    /// Whether `id` is a member at all.
    pub fn contains(&self, id: NodeId) -> bool {
        self.is_voter(id) || self.is_learner(id)
    }

    /// Every member, voters first.
    pub fn members(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.voters.iter().chain(self.learners.iter()).copied()
    }

    /// Applies `changes` as one single-server change and returns the new
    /// configuration.
    ///
    /// The rules are those of etcd raft's "simple" changes: at most one voter
    /// may be added or removed in total (promotions and demotions count), and
    /// the result must keep at least one voter. Without the first rule two
    /// disjoint majorities could exist during the change (Raft thesis §4.1).
    pub fn apply_changes(&self, changes: &[ConfChange]) -> Result<Membership, ConfChangeError> {
        let mut next = self.clone();
        for change in changes {
            match change {
                ConfChange::AddLearner { id, address } => {
                    next.check_id(*id)?;
                    next.voters.remove(id);
                    next.learners.insert(*id);
                    next.addresses.insert(*id, address.clone());
                }
                ConfChange::AddVoter { id, address } => {
                    next.check_id(*id)?;
                    next.learners.remove(id);
                    next.voters.insert(*id);
                    if let Some(address) = address {
                        next.addresses.insert(*id, address.clone());
                    }
                }
                ConfChange::Remove { id } => {
                    if next.voters.remove(id) | next.learners.remove(id) {
                        next.removed.insert(*id);
                    }
                    next.addresses.remove(id);
                }
            }
        }
        if next.voters.is_empty() {
            return Err(ConfChangeError::NoVotersLeft);
        }
        if self.voters.symmetric_difference(&next.voters).count() > 1 {
            return Err(ConfChangeError::MoreThanOneVoterChanged);
        }
        Ok(next)
    }

    fn check_id(&self, id: NodeId) -> Result<(), ConfChangeError> {
        if id == 0 {
            Err(ConfChangeError::InvalidNodeId)
        } else {
            Ok(())
        }
    }
}
