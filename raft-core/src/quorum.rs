//! Quorum arithmetic: the committed index and the vote outcome of a majority
//! configuration and of a joint (two-majority) configuration.
//!
//! The same arithmetic confirms leadership for reads: the "index" a voter
//! acknowledges is then a heartbeat round.

use std::collections::BTreeSet;

use crate::types::{Index, NodeId};

/// The outcome of an election so far.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VoteResult {
    /// Not decided: the missing votes could still swing it either way.
    Pending,
    /// A majority refused; the election cannot be won.
    Lost,
    /// A majority granted.
    Won,
}

/// The highest index that a majority of `voters` has acknowledged, where
/// `acked` gives each voter's acknowledged index (`None`: nothing known yet,
/// counted as 0). An empty configuration commits everything (`Index::MAX`),
/// which makes it neutral in [`joint_committed`].
pub fn majority_committed(
    voters: &BTreeSet<NodeId>,
    mut acked: impl FnMut(NodeId) -> Option<Index>,
) -> Index {
    let n = voters.len();
    if n == 0 {
        return Index::MAX;
    }
    // Small clusters are the norm: sort on the stack.
    let mut stack = [0 as Index; 16];
    let mut heap;
    let indexes: &mut [Index] = if n <= stack.len() {
        for (slot, id) in stack.iter_mut().zip(voters) {
            *slot = acked(*id).unwrap_or(0);
        }
        &mut stack[..n]
    } else {
        heap = voters
            .iter()
            .map(|id| acked(*id).unwrap_or(0))
            .collect::<Vec<_>>();
        &mut heap[..]
    };
    indexes.sort_unstable_by(|a, b| b.cmp(a));
    // The (n/2 + 1)-th largest index is held by a majority.
    indexes[n / 2]
}

/// The committed index of a joint configuration: both majorities must hold it.
pub fn joint_committed(
    incoming: &BTreeSet<NodeId>,
    outgoing: &BTreeSet<NodeId>,
    mut acked: impl FnMut(NodeId) -> Option<Index>,
) -> Index {
    majority_committed(incoming, &mut acked).min(majority_committed(outgoing, &mut acked))
}

/// The outcome of a vote among `voters`, where `vote` gives each voter's
/// answer (`None`: not answered yet). An empty configuration wins.
pub fn majority_vote(
    voters: &BTreeSet<NodeId>,
    mut vote: impl FnMut(NodeId) -> Option<bool>,
) -> VoteResult {
    if voters.is_empty() {
        return VoteResult::Won;
    }
    let (mut granted, mut missing) = (0, 0);
    for id in voters {
        match vote(*id) {
            Some(true) => granted += 1,
            Some(false) => {}
            None => missing += 1,
        }
    }
    let quorum = voters.len() / 2 + 1;
    if granted >= quorum {
        VoteResult::Won
    } else if granted + missing >= quorum {
        VoteResult::Pending
    } else {
        VoteResult::Lost
    }
}

/// The outcome of a vote in a joint configuration: it needs both majorities.
pub fn joint_vote(
    incoming: &BTreeSet<NodeId>,
    outgoing: &BTreeSet<NodeId>,
    mut vote: impl FnMut(NodeId) -> Option<bool>,
) -> VoteResult {
    let a = majority_vote(incoming, &mut vote);
    let b = majority_vote(outgoing, &mut vote);
    match (a, b) {
        (VoteResult::Lost, _) | (_, VoteResult::Lost) => VoteResult::Lost,
        (VoteResult::Won, VoteResult::Won) => VoteResult::Won,
        _ => VoteResult::Pending,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(ids: &[NodeId]) -> BTreeSet<NodeId> {
        ids.iter().copied().collect()
    }

    #[test]
    fn committed_index_is_the_majority_median() {
        let voters = set(&[1, 2, 3]);
        assert_eq!(
            majority_committed(&voters, |id| Some([0, 12, 5, 7][id as usize])),
            7
        );
        assert_eq!(majority_committed(&voters, |id| (id == 1).then_some(12)), 0);
        assert_eq!(majority_committed(&set(&[]), |_| None), Index::MAX);
    }

    #[test]
    fn vote_outcomes() {
        let voters = set(&[1, 2, 3]);
        assert_eq!(
            majority_vote(&voters, |id| (id == 1).then_some(true)),
            VoteResult::Pending
        );
        assert_eq!(majority_vote(&voters, |id| Some(id != 3)), VoteResult::Won);
        assert_eq!(majority_vote(&voters, |id| Some(id == 3)), VoteResult::Lost);
    }
}
