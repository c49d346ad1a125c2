//! The inbound queue: received messages waiting for
//! [`Transport::recv`](raft_core::adapters::Transport::recv).
//!
//! One bound on the total (`TransportConfig::inbound_queue` messages; a
//! reader that finds it full waits for room, in turn with the other readers,
//! and QUIC flow control holds its sender back meanwhile), but a FIFO per
//! peer, served round robin: `recv` takes the next message of the next peer
//! that has one. So a peer that floods the queue cannot put itself ahead of
//! another peer's heartbeat or vote: that message waits for a slot behind
//! at most the flooder's waiting readers (one per stream), then for at most
//! one message of each other peer. Each peer's messages keep the order in
//! which they arrived.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use raft_core::{Message, NodeId};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

/// The inbound queue had no room for a message.
#[derive(Debug)]
pub(crate) struct QueueFull;

/// A received message and the room it holds until `recv` takes it.
struct Inbound {
    message: Message,
    _slot: OwnedSemaphorePermit,
    /// For snapshot chunks, their slot among the chunks allowed to wait.
    _snapshot_slot: Option<OwnedSemaphorePermit>,
}

#[derive(Default)]
struct State {
    queues: HashMap<NodeId, VecDeque<Inbound>>,
    /// The peers that have queued messages (exactly the keys of `queues`),
    /// in the order they are served next.
    turns: VecDeque<NodeId>,
}

pub(crate) struct InboundQueue {
    state: Mutex<State>,
    /// Woken when a message is queued.
    queued: Notify,
    slots: Arc<Semaphore>,
}

impl InboundQueue {
    /// A queue for at most `capacity` messages in all.
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            state: Mutex::new(State::default()),
            queued: Notify::new(),
            slots: Arc::new(Semaphore::new(capacity)),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Waits for room (in turn with other waiting readers), then queues
    /// `message` from `peer` after that peer's earlier messages.
    pub(crate) async fn push(
        &self,
        peer: NodeId,
        message: Message,
        snapshot_slot: Option<OwnedSemaphorePermit>,
    ) {
        let Ok(slot) = self.slots.clone().acquire_owned().await else {
            // The semaphore is never closed.
            return;
        };
        self.insert(
            peer,
            Inbound {
                message,
                _slot: slot,
                _snapshot_slot: snapshot_slot,
            },
        );
    }

    /// Queues `message` from `peer` if there is room now.
    pub(crate) fn try_push(&self, peer: NodeId, message: Message) -> Result<(), QueueFull> {
        match self.slots.clone().try_acquire_owned() {
            Ok(slot) => {
                self.insert(
                    peer,
                    Inbound {
                        message,
                        _slot: slot,
                        _snapshot_slot: None,
                    },
                );
                Ok(())
            }
            Err(_) => Err(QueueFull),
        }
    }

    fn insert(&self, peer: NodeId, inbound: Inbound) {
        {
            let mut state = self.state();
            let state = &mut *state;
            let queue = state.queues.entry(peer).or_default();
            if queue.is_empty() {
                state.turns.push_back(peer);
            }
            queue.push_back(inbound);
        }
        self.queued.notify_waiters();
    }

    /// The next message, if one is queued: the oldest of the peer whose
    /// turn it is.
    pub(crate) fn try_pop(&self) -> Option<Message> {
        let inbound = {
            let mut state = self.state();
            let state = &mut *state;
            loop {
                let peer = state.turns.pop_front()?;
                let Some(queue) = state.queues.get_mut(&peer) else {
                    continue;
                };
                let Some(inbound) = queue.pop_front() else {
                    state.queues.remove(&peer);
                    continue;
                };
                if queue.is_empty() {
                    state.queues.remove(&peer);
                } else {
                    state.turns.push_back(peer);
                }
                break inbound;
            }
        };
        // Its slots are freed here, outside the lock.
        Some(inbound.message)
    }

    /// Waits for the next message. Cancel-safe: a message is only taken
    /// when it is returned.
    pub(crate) async fn pop(&self) -> Message {
        loop {
            let queued = self.queued.notified();
            tokio::pin!(queued);
            // Registered before looking, so a message queued in between
            // still wakes us.
            queued.as_mut().enable();
            if let Some(message) = self.try_pop() {
                return message;
            }
            queued.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use raft_core::{Heartbeat, MessageBody};

    fn heartbeat(from: NodeId, round: u64) -> Message {
        Message {
            from,
            to: 9,
            term: 1,
            body: MessageBody::Heartbeat(Heartbeat { commit: 0, round }),
        }
    }

    fn taken(queue: &InboundQueue) -> Vec<(NodeId, u64)> {
        std::iter::from_fn(|| queue.try_pop())
            .map(|m| match m.body {
                MessageBody::Heartbeat(h) => (m.from, h.round),
                _ => unreachable!(),
            })
            .collect()
    }

    #[test]
    fn peers_are_served_in_turn_each_in_arrival_order() {
        let queue = InboundQueue::new(100);
        for round in 0..4 {
            queue.try_push(1, heartbeat(1, round)).unwrap();
        }
        queue.try_push(2, heartbeat(2, 0)).unwrap();
        queue.try_push(3, heartbeat(3, 0)).unwrap();
        queue.try_push(2, heartbeat(2, 1)).unwrap();
        assert_eq!(
            taken(&queue),
            [(1, 0), (2, 0), (3, 0), (1, 1), (2, 1), (1, 2), (1, 3)]
        );
        // Empty again: a peer's turn starts when it queues something.
        queue.try_push(3, heartbeat(3, 1)).unwrap();
        queue.try_push(1, heartbeat(1, 4)).unwrap();
        assert_eq!(taken(&queue), [(3, 1), (1, 4)]);
    }

    #[test]
    fn the_total_is_bounded_and_taking_makes_room() {
        let queue = InboundQueue::new(2);
        queue.try_push(1, heartbeat(1, 0)).unwrap();
        queue.try_push(2, heartbeat(2, 0)).unwrap();
        assert!(queue.try_push(3, heartbeat(3, 0)).is_err());
        assert!(queue.try_pop().is_some());
        queue.try_push(3, heartbeat(3, 0)).unwrap();
    }
}
