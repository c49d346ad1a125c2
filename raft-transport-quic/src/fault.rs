//! Fault injection for tests: drop, delay and partition peer traffic between
//! named nodes at runtime, without root and without touching the network.
//!
//! A [`FaultInjector`] does nothing until it is given to a transport through
//! [`crate::TransportConfig::fault_injector`] *and* rules are added to it.
//! It is a plain, cloneable, runtime-settable object, so a test harness (or
//! a service's admin endpoint driven by a multi-process test) can change the
//! rules while the cluster runs.
//!
//! Where rules act, so that each fault counts exactly once:
//! - a transport applies every matching rule to the messages *it sends*
//!   (drops and delays happen before the message is queued);
//! - a transport also discards received messages that a [`Fault::Partition`]
//!   rule blocks. Partitions are idempotent, so applying them at both ends is
//!   harmless, and a single node's injector can cut it off in both
//!   directions (see [`FaultInjector::isolate`]).

use std::sync::{Arc, RwLock};
use std::time::Duration;

use raft_core::NodeId;
use serde::{Deserialize, Serialize};

/// What happens to matching messages.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub enum Fault {
    /// Nothing passes: a network partition.
    Partition,
    /// Each message is dropped with this probability (0.0 to 1.0).
    Drop {
        /// The probability that a message is dropped.
        probability: f64,
    },
    /// Each message is held back this long before it is queued.
    Delay(Duration),
}

/// One rule: a fault on the traffic from `from` to `to`. `None` matches
/// every node.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct FaultRule {
    /// The sender the rule applies to, or every sender.
    pub from: Option<NodeId>,
    /// The recipient the rule applies to, or every recipient.
    pub to: Option<NodeId>,
    /// What happens to matching messages.
    pub fault: Fault,
}

impl FaultRule {
    fn matches(&self, from: NodeId, to: NodeId) -> bool {
        self.from.is_none_or(|f| f == from) && self.to.is_none_or(|t| t == to)
    }
}

/// What the injector decided for one outgoing message.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Verdict {
    Deliver,
    Drop,
    Delay(Duration),
}

/// A shared, runtime-adjustable set of [`FaultRule`]s. Clones share the rules.
#[derive(Clone, Debug, Default)]
pub struct FaultInjector {
    rules: Arc<RwLock<Vec<FaultRule>>>,
}

impl FaultInjector {
    /// An injector with no rules: all traffic passes.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a rule.
    pub fn add(&self, rule: FaultRule) {
        self.write().push(rule);
    }

    /// Cuts traffic between `a` and `b` in both directions.
    pub fn partition(&self, a: NodeId, b: NodeId) {
        self.partition_one_way(a, b);
        self.partition_one_way(b, a);
    }

    /// Cuts traffic from `from` to `to` only; `to` can still reach `from`.
    pub fn partition_one_way(&self, from: NodeId, to: NodeId) {
        self.add(FaultRule {
            from: Some(from),
            to: Some(to),
            fault: Fault::Partition,
        });
    }

    /// Cuts `node` off from every other node, both ways.
    pub fn isolate(&self, node: NodeId) {
        self.add(FaultRule {
            from: Some(node),
            to: None,
            fault: Fault::Partition,
        });
        self.add(FaultRule {
            from: None,
            to: Some(node),
            fault: Fault::Partition,
        });
    }

    /// Drops messages from `from` to `to` with `probability` (clamped to 0..=1).
    pub fn drop_messages(&self, from: NodeId, to: NodeId, probability: f64) {
        let probability = if probability.is_nan() {
            0.0
        } else {
            probability.clamp(0.0, 1.0)
        };
        self.add(FaultRule {
            from: Some(from),
            to: Some(to),
            fault: Fault::Drop { probability },
        });
    }

    /// Delays messages from `from` to `to` by `delay`.
    pub fn delay(&self, from: NodeId, to: NodeId, delay: Duration) {
        self.add(FaultRule {
            from: Some(from),
            to: Some(to),
            fault: Fault::Delay(delay),
        });
    }

    /// Removes the rules that name exactly `a` and `b` (in either
    /// direction). Wildcard rules, such as those of [`FaultInjector::isolate`],
    /// stay until [`FaultInjector::heal`].
    pub fn heal_between(&self, a: NodeId, b: NodeId) {
        self.write().retain(|rule| {
            let pair = (rule.from, rule.to);
            pair != (Some(a), Some(b)) && pair != (Some(b), Some(a))
        });
    }

    /// Removes every rule: all traffic passes again.
    pub fn heal(&self) {
        self.write().clear();
    }

    /// The current rules.
    pub fn rules(&self) -> Vec<FaultRule> {
        self.read().clone()
    }

    /// Replaces all rules at once (for remote control from a test harness).
    pub fn set_rules(&self, rules: Vec<FaultRule>) {
        *self.write() = rules;
    }

    /// The fate of a message `from` → `to` at the sender: a partition wins,
    /// then a random drop, then the longest matching delay.
    pub(crate) fn outbound(&self, from: NodeId, to: NodeId) -> Verdict {
        let rules = self.read();
        let mut delay = Duration::ZERO;
        for rule in rules.iter().filter(|rule| rule.matches(from, to)) {
            match rule.fault {
                Fault::Partition => return Verdict::Drop,
                Fault::Drop { probability } => {
                    if probability > 0.0 && rand::random_bool(probability.min(1.0)) {
                        return Verdict::Drop;
                    }
                }
                Fault::Delay(d) => delay = delay.max(d),
            }
        }
        if delay.is_zero() {
            Verdict::Deliver
        } else {
            Verdict::Delay(delay)
        }
    }

    /// Whether a received message `from` → `to` is blocked by a partition.
    pub(crate) fn inbound_blocked(&self, from: NodeId, to: NodeId) -> bool {
        self.read()
            .iter()
            .any(|rule| rule.fault == Fault::Partition && rule.matches(from, to))
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Vec<FaultRule>> {
        // A panic while holding the lock cannot leave the Vec inconsistent.
        self.rules
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Vec<FaultRule>> {
        self.rules
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_decide_verdicts() {
        let faults = FaultInjector::new();
        assert_eq!(faults.outbound(1, 2), Verdict::Deliver);
        faults.partition_one_way(1, 2);
        assert_eq!(faults.outbound(1, 2), Verdict::Drop);
        assert_eq!(faults.outbound(2, 1), Verdict::Deliver);
        assert!(faults.inbound_blocked(1, 2));
        faults.delay(2, 1, Duration::from_millis(5));
        faults.delay(2, 1, Duration::from_millis(9));
        assert_eq!(
            faults.outbound(2, 1),
            Verdict::Delay(Duration::from_millis(9))
        );
        assert!(
            !faults.inbound_blocked(2, 1),
            "delays act at the sender only"
        );
        faults.heal_between(1, 2);
        assert!(faults.rules().is_empty());

        faults.isolate(3);
        assert_eq!(faults.outbound(3, 1), Verdict::Drop);
        assert_eq!(faults.outbound(1, 3), Verdict::Drop);
        assert_eq!(faults.outbound(1, 2), Verdict::Deliver);
        faults.heal_between(1, 3); // wildcard rules stay: heal() removes them
        assert_eq!(faults.outbound(1, 3), Verdict::Drop);
        faults.heal();
        assert_eq!(faults.outbound(1, 3), Verdict::Deliver);

        faults.drop_messages(1, 2, 1.0);
        assert_eq!(faults.outbound(1, 2), Verdict::Drop);
        faults.set_rules(vec![]);
        faults.drop_messages(1, 2, 0.0);
        assert_eq!(faults.outbound(1, 2), Verdict::Deliver);
    }
}
