//! The driver: the one task that owns a raft-core [`Node`] and performs its
//! output batches, generic over the log store, the transport and the state
//! machine (raft-core's adapter traits).
//!
//! Threads:
//! - the **driver thread** runs a single-threaded tokio runtime with one task
//!   that owns the node and the state machine; it selects over peer
//!   messages, client requests, ticks and completions, and performs each
//!   output batch in the documented order. RocksDB reads the node makes
//!   happen here, never on the shared async workers.
//! - the **writer thread** makes batches durable in order, merging the ones
//!   queued behind each other into one synced write (group commit), then
//!   sends the batch's persisted messages and reports back.
//! - snapshots are serialised and saved on short-lived threads.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot, watch};

use raft_core::adapters::{LogStore, StateMachine, Transport, TransportError};
use raft_core::{
    ConfChange, Config, Error as RaftError, Index, LogId, LogWrite, Message, Node, NodeId,
    ReadPolicy, SnapshotMeta, Status,
};

use crate::protocol::KvError;

/// How long a read may wait for its read index before the driver gives up
/// on it (the client gave up long before).
const ABANDONED_AFTER: Duration = Duration::from_secs(60);

/// Ticks between two rounds of [`DriverState::housekeeping`].
const HOUSEKEEPING_TICKS: u64 = 100;

/// A read to run against the state machine once it is safe.
pub type ReadFn<M> = Box<dyn FnOnce(Result<&M, KvError>) + Send>;

/// What clients ask the driver for.
pub enum DriverRequest<M: StateMachine> {
    /// Propose a command; the reply carries the state machine's output.
    Propose {
        /// The command bytes.
        data: Bytes,
        /// Where the output goes, with the log index the command took.
        reply: oneshot::Sender<Result<(Index, M::Output), KvError>>,
    },
    /// Run `read` once a read of the given freshness is safe (`None`: stale,
    /// at once).
    Read {
        /// The read policy, or `None` for a stale read.
        policy: Option<ReadPolicy>,
        /// The read.
        read: ReadFn<M>,
    },
    /// Propose a membership change; the reply comes once it is committed.
    ChangeMembership {
        /// The change.
        change: ConfChange,
        /// Where the result goes.
        reply: oneshot::Sender<Result<(), KvError>>,
    },
    /// Start a leadership transfer (`None`: to the most up-to-date voter).
    TransferLeader {
        /// The target.
        to: Option<NodeId>,
        /// The chosen target, once the transfer started.
        reply: oneshot::Sender<Result<NodeId, KvError>>,
    },
    /// The node's status.
    Status {
        /// Where it goes.
        reply: oneshot::Sender<Status>,
    },
    /// Test support: the driver's thread sleeps this long, as if the process
    /// had been stopped (SIGSTOP), then goes on with whatever queued up
    /// meanwhile. Only in-process callers can send it.
    Stall {
        /// How long.
        duration: Duration,
    },
    /// Test support: the driver stops as on a storage error, with this
    /// message. Only in-process callers can send it.
    Fail {
        /// The error it stops on.
        error: String,
    },
}

/// A cheap view of the node, updated after every batch, for the service
/// (leader hints, addresses) and metrics.
#[derive(Clone, Debug, Default)]
pub struct NodeView {
    /// The node's id.
    pub id: NodeId,
    /// The leader, if known.
    pub leader: Option<NodeId>,
    /// Whether this node leads.
    pub is_leader: bool,
    /// The current term.
    pub term: u64,
    /// The commit index.
    pub commit: Index,
    /// The applied index.
    pub applied: Index,
    /// Every member's address.
    pub addresses: BTreeMap<NodeId, String>,
    /// Voters.
    pub voters: Vec<NodeId>,
}

/// The handle the service uses to talk to the driver.
pub struct DriverHandle<M: StateMachine> {
    requests: mpsc::Sender<DriverRequest<M>>,
    view: watch::Receiver<NodeView>,
    shutting_down: Arc<AtomicBool>,
}

impl<M: StateMachine> Clone for DriverHandle<M> {
    fn clone(&self) -> Self {
        Self {
            requests: self.requests.clone(),
            view: self.view.clone(),
            shutting_down: self.shutting_down.clone(),
        }
    }
}

impl<M: StateMachine> DriverHandle<M> {
    /// Sends a request to the driver.
    pub async fn send(&self, request: DriverRequest<M>) -> Result<(), KvError> {
        if self.shutting_down.load(Ordering::Relaxed) {
            return Err(KvError::ShuttingDown);
        }
        self.requests
            .send(request)
            .await
            .map_err(|_| KvError::ShuttingDown)
    }

    /// The latest view of the node.
    pub fn view(&self) -> NodeView {
        self.view.borrow().clone()
    }

    /// Waits until the view changes.
    pub async fn view_changed(&mut self) -> Result<(), KvError> {
        self.view.changed().await.map_err(|_| KvError::ShuttingDown)
    }

    /// Proposes a command and waits for its output.
    pub async fn propose(&self, data: Bytes) -> Result<M::Output, KvError> {
        Ok(self.propose_indexed(data).await?.1)
    }

    /// Like [`DriverHandle::propose`], with the log index the command took.
    pub async fn propose_indexed(&self, data: Bytes) -> Result<(Index, M::Output), KvError> {
        let (reply, rx) = oneshot::channel();
        self.send(DriverRequest::Propose { data, reply }).await?;
        rx.await.map_err(|_| KvError::ShuttingDown)?
    }

    /// Runs `f` against the state machine once a read of the given
    /// freshness is safe.
    pub async fn read<R: Send + 'static>(
        &self,
        policy: Option<ReadPolicy>,
        f: impl FnOnce(&M) -> R + Send + 'static,
    ) -> Result<R, KvError> {
        let (tx, rx) = oneshot::channel();
        let read: ReadFn<M> = Box::new(move |sm: Result<&M, KvError>| {
            let _ = tx.send(sm.map(f));
        });
        self.send(DriverRequest::Read { policy, read }).await?;
        rx.await.map_err(|_| KvError::ShuttingDown)?
    }

    /// Whether the node is shutting down.
    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::Relaxed)
    }
}

/// How the driver runs.
#[derive(Clone, Debug)]
pub struct DriverOptions {
    /// Wall-clock time per Raft tick.
    pub tick: Duration,
    /// Proposals and reads that may wait in the driver's queue.
    pub queue: usize,
}

impl Default for DriverOptions {
    fn default() -> Self {
        Self {
            tick: Duration::from_millis(50),
            queue: 65_536,
        }
    }
}

/// Raft ticks derived from the monotonic clock: tick `n` falls due
/// `n × tick` after the start, whatever the driver was doing meanwhile.
struct TickClock {
    start: std::time::Instant,
    tick: Duration,
    delivered: u64,
}

impl TickClock {
    fn new(tick: Duration) -> Self {
        Self {
            start: std::time::Instant::now(),
            tick: tick.max(Duration::from_micros(1)),
            delivered: 0,
        }
    }

    /// How many ticks fell due since the last call (and counts them as
    /// delivered).
    fn due(&mut self) -> u64 {
        let elapsed = self.start.elapsed().as_nanos() / self.tick.as_nanos();
        let due = (elapsed as u64).saturating_sub(self.delivered);
        self.delivered += due;
        due
    }

    /// When the next tick falls due.
    fn next_tick(&self) -> std::time::Instant {
        let nanos = self.tick.as_nanos() * u128::from(self.delivered + 1);
        self.start + Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
    }
}

/// A batch handed to the writer thread.
struct PendingWrite {
    number: u64,
    write: LogWrite,
    persisted_messages: Vec<Message>,
}

/// What the writer and the snapshot threads report back.
enum Completion {
    Persisted {
        number: u64,
        /// A snapshot installed by this batch, with its data, for the state
        /// machine to restore before the batch is acknowledged.
        installed: Option<(SnapshotMeta, Bytes)>,
        unreachable: Vec<NodeId>,
    },
    SnapshotSerialized {
        index: Index,
        data: Bytes,
    },
    SnapshotSaved {
        meta: SnapshotMeta,
    },
    Failed(String),
}

/// A running driver: its handle and a way to stop it.
pub struct Driver<M: StateMachine> {
    handle: DriverHandle<M>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<Result<(), String>>>,
    /// Set when the driver's loop has ended, with its outcome.
    ended: watch::Receiver<Option<Result<(), String>>>,
}

impl<M: StateMachine> Driver<M>
where
    M::Output: Send,
{
    /// Starts the driver threads. `node_config.applied` must be the state
    /// machine's applied index (the driver sets it).
    pub fn start<L, T>(
        mut node_config: Config,
        store: Arc<L>,
        transport: Arc<T>,
        state_machine: M,
        options: DriverOptions,
    ) -> Result<Self, KvError>
    where
        L: LogStore + ?Sized,
        T: Transport + ?Sized,
        Arc<L>: raft_core::LogRead,
    {
        node_config.applied = state_machine.applied_index();
        let node =
            Node::new(node_config, store.clone()).map_err(|e| KvError::Internal(e.to_string()))?;
        let (requests_tx, requests_rx) = mpsc::channel(options.queue);
        let (view_tx, view_rx) = watch::channel(NodeView::default());
        let (stop_tx, stop_rx) = oneshot::channel();
        let shutting_down = Arc::new(AtomicBool::new(false));
        let handle = DriverHandle {
            requests: requests_tx,
            view: view_rx,
            shutting_down: shutting_down.clone(),
        };
        let (ended_tx, ended) = watch::channel(None);
        let thread = std::thread::Builder::new()
            .name(format!("raft-driver-{}", node.id()))
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|e| format!("cannot start the driver runtime: {e}"))?;
                let mut state = DriverState {
                    node,
                    sm: state_machine,
                    store,
                    transport,
                    proposals: BTreeMap::new(),
                    conf_changes: BTreeMap::new(),
                    reads: HashMap::new(),
                    ticks_since_housekeeping: 0,
                    clock: TickClock::new(options.tick),
                    failure: None,
                    next_read: 1,
                    view: view_tx,
                    last_addresses: BTreeMap::new(),
                    last_removed: BTreeSet::new(),
                    snapshot_in_progress: false,
                    snapshot_wanted: false,
                };
                let result = runtime.block_on(state.run(requests_rx, stop_rx, shutting_down));
                ended_tx.send_replace(Some(result.clone()));
                result
            })
            .map_err(|e| KvError::Internal(format!("cannot start the driver thread: {e}")))?;
        Ok(Self {
            handle,
            stop: Some(stop_tx),
            thread: Some(thread),
            ended,
        })
    }

    /// The handle for submitting requests.
    pub fn handle(&self) -> DriverHandle<M> {
        self.handle.clone()
    }

    /// Resolves when the driver's loop ends by itself (it stops on an error
    /// from storage or the engine, which it cannot go on from), with that
    /// error; never resolves while the driver runs.
    pub fn failed(&self) -> impl std::future::Future<Output = String> + use<M> {
        let mut ended = self.ended.clone();
        async move {
            loop {
                if let Some(result) = ended.borrow_and_update().clone() {
                    return match result {
                        Ok(()) => "the raft driver stopped".to_string(),
                        Err(e) => e,
                    };
                }
                if ended.changed().await.is_err() {
                    return "the raft driver thread ended".to_string();
                }
            }
        }
    }

    /// Stops the driver: pending requests fail with `ShuttingDown`, queued
    /// writes are made durable first.
    pub fn stop(&mut self) -> Result<(), String> {
        self.handle.shutting_down.store(true, Ordering::Relaxed);
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match self.thread.take() {
            Some(thread) => thread
                .join()
                .map_err(|_| "the driver thread panicked".to_string())?,
            None => Ok(()),
        }
    }
}

impl<M: StateMachine> Drop for Driver<M> {
    fn drop(&mut self) {
        self.handle.shutting_down.store(true, Ordering::Relaxed);
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

type ProposalReply<M> = oneshot::Sender<Result<(Index, <M as StateMachine>::Output), KvError>>;

struct DriverState<L: LogStore + ?Sized, T: Transport + ?Sized, M: StateMachine> {
    node: Node<Arc<L>>,
    sm: M,
    store: Arc<L>,
    transport: Arc<T>,
    /// Proposals waiting to be applied, by index: (term, reply).
    proposals: BTreeMap<Index, (u64, ProposalReply<M>)>,
    /// Membership changes waiting to commit, by index.
    conf_changes: BTreeMap<Index, (u64, oneshot::Sender<Result<(), KvError>>)>,
    /// Reads waiting for their read index.
    reads: HashMap<u64, (std::time::Instant, ReadFn<M>)>,
    /// Ticks since the last housekeeping.
    ticks_since_housekeeping: u64,
    /// Ticks derived from the monotonic clock.
    clock: TickClock,
    /// An error the loop stops on (see `DriverRequest::Fail`).
    failure: Option<String>,
    next_read: u64,
    view: watch::Sender<NodeView>,
    last_addresses: BTreeMap<NodeId, String>,
    /// The removed ids last given to the transport.
    last_removed: BTreeSet<NodeId>,
    snapshot_in_progress: bool,
    /// raft-core asked for a snapshot while a build was under way (one it
    /// may find obsolete): build again once that one ends. raft-core asks
    /// once per request.
    snapshot_wanted: bool,
}

impl<L, T, M> DriverState<L, T, M>
where
    L: LogStore + ?Sized,
    T: Transport + ?Sized,
    M: StateMachine,
    Arc<L>: raft_core::LogRead,
{
    async fn run(
        &mut self,
        mut requests: mpsc::Receiver<DriverRequest<M>>,
        mut stop: oneshot::Receiver<()>,
        shutting_down: Arc<AtomicBool>,
    ) -> Result<(), String> {
        let (completion_tx, mut completions) = mpsc::unbounded_channel();
        let (writer_tx, writer_rx) = std::sync::mpsc::channel::<PendingWrite>();
        let writer = {
            let store = self.store.clone();
            let transport = self.transport.clone();
            let completion_tx = completion_tx.clone();
            std::thread::Builder::new()
                .name(format!("raft-writer-{}", self.node.id()))
                .spawn(move || writer_loop(store, transport, writer_rx, completion_tx))
                .map_err(|e| format!("cannot start the writer thread: {e}"))?
        };
        let transport = self.transport.clone();
        self.publish_view();
        let result: Result<(), String> = loop {
            // Time comes first: every tick that has elapsed on the monotonic
            // clock is delivered before any message or request (after a
            // pause too), so the node's count of ticks never falls behind
            // real time by more than the work between two checks. Leases
            // rest on it (raft_core::Config::max_clock_drift).
            if let Err(e) = self.catch_up_ticks() {
                break Err(e);
            }
            let next_tick = self.clock.next_tick();
            let step: Result<(), String> = tokio::select! {
                biased;
                _ = &mut stop => break Ok(()),
                Some(done) = completions.recv() => self.on_completion(done, &completion_tx),
                Some(message) = transport.recv() => {
                    let mut r = self.catch_up_ticks().and_then(|()| self.step(message));
                    // Drain what else is already there, without waiting.
                    for _ in 0..256 {
                        if r.is_err() { break; }
                        match futures_now(transport.recv()) {
                            Some(Some(message)) => {
                                r = self.catch_up_ticks().and_then(|()| self.step(message));
                            }
                            _ => break,
                        }
                    }
                    r
                }
                Some(request) = requests.recv() => {
                    // Each request is taken off the queue, then the clock is
                    // read, then the request is decided: a lease read is
                    // judged by a time after it arrived, even if the
                    // process was stopped in between.
                    let mut r = self.catch_up_ticks().map(|()| self.on_request(request));
                    for _ in 0..1024 {
                        if r.is_err() { break; }
                        match requests.try_recv() {
                            Ok(request) => {
                                r = self.catch_up_ticks().map(|()| self.on_request(request));
                            }
                            Err(_) => break,
                        }
                    }
                    r
                }
                _ = tokio::time::sleep_until(next_tick.into()) => Ok(()),
            };
            if let Err(e) = step.and_then(|()| self.process_ready(&writer_tx, &completion_tx)) {
                break Err(e);
            }
            if let Some(e) = self.failure.take() {
                break Err(e);
            }
        };
        shutting_down.store(true, Ordering::Relaxed);
        // Fail everything still waiting; the writer finishes queued writes.
        for (_, (_, reply)) in std::mem::take(&mut self.proposals) {
            let _ = reply.send(Err(KvError::ShuttingDown));
        }
        for (_, (_, reply)) in std::mem::take(&mut self.conf_changes) {
            let _ = reply.send(Err(KvError::ShuttingDown));
        }
        for (_, (_, read)) in self.reads.drain() {
            read(Err(KvError::ShuttingDown));
        }
        drop(writer_tx);
        let _ = writer.join();
        if let Err(e) = &result {
            tracing::error!(error = %e, "the raft driver stopped on an error");
        }
        result
    }

    /// Delivers every tick due by the monotonic clock.
    fn catch_up_ticks(&mut self) -> Result<(), String> {
        for _ in 0..self.clock.due() {
            self.ticks_since_housekeeping += 1;
            if self.ticks_since_housekeeping == HOUSEKEEPING_TICKS {
                self.ticks_since_housekeeping = 0;
                self.housekeeping();
            }
            self.node.tick().map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    /// Work too costly for every tick: publishes the node's counters and
    /// replication for Prometheus (building a status allocates), and drops
    /// reads whose answer got lost (e.g. a ReadIndex request to a leader
    /// that died): after a minute nobody waits for them any more.
    fn housekeeping(&mut self) {
        crate::metrics::record_status(&self.node.status());
        let now = std::time::Instant::now();
        let expired: Vec<u64> = self
            .reads
            .iter()
            .filter(|(_, (at, _))| now.duration_since(*at) > ABANDONED_AFTER)
            .map(|(id, _)| *id)
            .collect();
        for id in expired {
            if let Some((_, read)) = self.reads.remove(&id) {
                read(Err(KvError::Timeout));
            }
        }
    }

    fn step(&mut self, message: Message) -> Result<(), String> {
        match self.node.step(message) {
            Ok(()) => Ok(()),
            Err(e) => Err(format!("stepping a message failed: {e}")),
        }
    }

    fn on_request(&mut self, request: DriverRequest<M>) {
        match request {
            DriverRequest::Propose { data, reply } => match self.node.propose(data) {
                Ok(id) => {
                    self.proposals.insert(id.index, (id.term, reply));
                }
                Err(e) => {
                    let _ = reply.send(Err(self.raft_error(e)));
                }
            },
            DriverRequest::Read { policy: None, read } => read(Ok(&self.sm)),
            DriverRequest::Stall { duration } => std::thread::sleep(duration),
            DriverRequest::Fail { error } => self.failure = Some(error),
            DriverRequest::Read {
                policy: Some(policy),
                read,
            } => {
                let id = self.next_read;
                self.next_read += 1;
                match self.node.read_index(id, policy) {
                    Ok(()) => {
                        self.reads.insert(id, (std::time::Instant::now(), read));
                    }
                    Err(e) => read(Err(self.raft_error(e))),
                }
            }
            DriverRequest::ChangeMembership { change, reply } => {
                match self.node.propose_membership(change) {
                    Ok(id) => {
                        self.conf_changes.insert(id.index, (id.term, reply));
                    }
                    Err(e) => {
                        let _ = reply.send(Err(self.raft_error(e)));
                    }
                }
            }
            DriverRequest::TransferLeader { to, reply } => {
                let target = to.or_else(|| self.best_transfer_target());
                let result = match target {
                    None => Err(KvError::Transfer(
                        "there is no other voter to transfer leadership to".into(),
                    )),
                    Some(target) => self
                        .node
                        .transfer_leader(target)
                        .map(|()| target)
                        .map_err(|e| self.raft_error(e)),
                };
                let _ = reply.send(result);
            }
            DriverRequest::Status { reply } => {
                let _ = reply.send(self.node.status());
            }
        }
    }

    /// The voter (other than this node) with the highest match index.
    fn best_transfer_target(&self) -> Option<NodeId> {
        let status = self.node.status();
        status
            .followers
            .iter()
            .filter(|f| !f.is_learner && status.membership.is_voter(f.id))
            .max_by_key(|f| f.match_index)
            .map(|f| f.id)
    }

    fn raft_error(&self, e: RaftError) -> KvError {
        match e {
            RaftError::NotLeader {
                leader_hint: Some(leader),
            } => {
                let address = self
                    .node
                    .membership()
                    .address(leader)
                    .unwrap_or_default()
                    .to_string();
                KvError::NotLeader { leader, address }
            }
            RaftError::NotLeader { leader_hint: None } => KvError::NoLeader,
            RaftError::TransferInProgress { .. } => KvError::TransferInProgress,
            RaftError::ConfigChangeInProgress { .. } => KvError::ConfigChangeInProgress,
            RaftError::LeaderNotSettled { .. } => KvError::LeaderNotSettled,
            RaftError::ConfChange(e) => KvError::MembershipChange(e.to_string()),
            e @ (RaftError::TransferToSelf(_) | RaftError::TransferToNonVoter(_)) => {
                KvError::Transfer(e.to_string())
            }
            e @ RaftError::LeaseReadsDisabled => KvError::InvalidRequest(e.to_string()),
            e => KvError::Internal(e.to_string()),
        }
    }

    fn send(&mut self, messages: Vec<Message>) {
        for message in messages {
            let to = message.to;
            match self.transport.send(message) {
                Ok(()) => {}
                Err(TransportError::Unreachable(_)) => self.node.report_unreachable(to),
                Err(_) => {}
            }
        }
    }

    fn process_ready(
        &mut self,
        writer: &std::sync::mpsc::Sender<PendingWrite>,
        completions: &mpsc::UnboundedSender<Completion>,
    ) -> Result<(), String> {
        while self.node.has_ready() {
            let ready = self
                .node
                .ready()
                .map_err(|e| format!("building an output batch failed: {e}"))?;
            self.send(ready.messages);
            if !ready.write.is_empty() || !ready.persisted_messages.is_empty() {
                writer
                    .send(PendingWrite {
                        number: ready.number,
                        write: ready.write,
                        persisted_messages: ready.persisted_messages,
                    })
                    .map_err(|_| "the writer thread stopped".to_string())?;
            }
            // A batch with nothing to write needs no acknowledgement, and must
            // not get one: `on_persisted(n)` acknowledges every batch up to
            // `n`, including earlier ones still queued at the writer.
            if !ready.committed_entries.is_empty() {
                let last = ready
                    .committed_entries
                    .last()
                    .map(|e| e.index)
                    .unwrap_or_default();
                let outputs = self.sm.apply(&ready.committed_entries);
                self.complete_proposals(outputs, last);
                self.complete_conf_changes(&ready.committed_entries);
                self.node.on_applied(last).map_err(|e| e.to_string())?;
            }
            for read in ready.read_states {
                if let Some((_, f)) = self.reads.remove(&read.id) {
                    match read.result {
                        Ok(_) => f(Ok(&self.sm)),
                        Err(e) => f(Err(self.raft_error(e))),
                    }
                }
            }
            if ready.snapshot_due {
                if self.snapshot_in_progress {
                    self.snapshot_wanted = true;
                } else {
                    self.start_snapshot_build(completions);
                }
            }
        }
        self.fail_pending_if_deposed();
        self.publish_view();
        Ok(())
    }

    /// A node that stopped leading fails the proposals and membership
    /// changes it was waiting on at once, naming the leader it knows, rather
    /// than letting them wait out the request timeout: whether they commit
    /// is for the new leader to say, and a client that retries with the same
    /// session is applied once either way.
    fn fail_pending_if_deposed(&mut self) {
        if self.node.is_leader() || (self.proposals.is_empty() && self.conf_changes.is_empty()) {
            return;
        }
        let leader_hint = self.node.leader().filter(|&l| l != self.node.id());
        let error = self.raft_error(RaftError::NotLeader { leader_hint });
        for (_, (_, reply)) in std::mem::take(&mut self.proposals) {
            let _ = reply.send(Err(error.clone()));
        }
        for (_, (_, reply)) in std::mem::take(&mut self.conf_changes) {
            let _ = reply.send(Err(error.clone()));
        }
    }

    fn complete_proposals(&mut self, outputs: Vec<(LogId, M::Output)>, last: Index) {
        let mut outputs = outputs.into_iter().peekable();
        while let Some(entry) = self.proposals.first_entry() {
            if *entry.key() > last {
                break;
            }
            let (index, (term, reply)) = entry.remove_entry();
            // Outputs come in index order; skip those of others' proposals.
            while outputs.peek().is_some_and(|(id, _)| id.index < index) {
                outputs.next();
            }
            match outputs.peek() {
                Some((id, _)) if id.index == index && id.term == term => {
                    let (_, output) = outputs.next().expect("peeked");
                    let _ = reply.send(Ok((index, output)));
                }
                _ => {
                    // Another entry took this position: our proposal was lost.
                    let _ = reply.send(Err(KvError::LeadershipLost));
                }
            }
        }
    }

    fn complete_conf_changes(&mut self, entries: &[raft_core::Entry]) {
        for entry in entries {
            if let Some((term, reply)) = self.conf_changes.remove(&entry.index) {
                let _ = reply.send(if term == entry.term {
                    Ok(())
                } else {
                    Err(KvError::LeadershipLost)
                });
            }
        }
        let last = entries.last().map(|e| e.index).unwrap_or_default();
        while let Some(entry) = self.conf_changes.first_entry() {
            if *entry.key() > last {
                break;
            }
            let (_, (_, reply)) = entry.remove_entry();
            let _ = reply.send(Err(KvError::LeadershipLost));
        }
    }

    /// Serialises the state machine in the background; its completion
    /// comes back as `SnapshotSerialized`.
    fn start_snapshot_build(&mut self, completions: &mpsc::UnboundedSender<Completion>) {
        self.snapshot_in_progress = true;
        let index = self.sm.applied_index();
        let build = self.sm.snapshot();
        let tx = completions.clone();
        std::thread::spawn(move || {
            let _ = tx.send(match build() {
                Ok(data) => Completion::SnapshotSerialized { index, data },
                Err(e) => Completion::Failed(format!("building a snapshot failed: {e}")),
            });
        });
    }

    fn on_completion(
        &mut self,
        done: Completion,
        completions: &mpsc::UnboundedSender<Completion>,
    ) -> Result<(), String> {
        match done {
            Completion::Persisted {
                number,
                installed,
                unreachable,
            } => {
                if let Some((meta, data)) = installed {
                    self.sm
                        .restore(&meta, &data)
                        .map_err(|e| format!("restoring snapshot failed: {e}"))?;
                }
                for peer in unreachable {
                    self.node.report_unreachable(peer);
                }
                self.node.on_persisted(number).map_err(|e| e.to_string())
            }
            Completion::SnapshotSerialized { index, data } => {
                let meta = match self.node.snapshot_meta_for(index, data.len() as u64) {
                    Ok(meta) => meta,
                    Err(RaftError::SnapshotObsolete { .. }) => {
                        self.snapshot_in_progress = false;
                        if std::mem::take(&mut self.snapshot_wanted) {
                            self.start_snapshot_build(completions);
                        }
                        return Ok(());
                    }
                    Err(e) => return Err(format!("snapshot metadata: {e}")),
                };
                let store = self.store.clone();
                let tx = completions.clone();
                std::thread::spawn(move || {
                    let runtime = tokio::runtime::Builder::new_current_thread().build();
                    let result = match runtime {
                        Ok(rt) => rt
                            .block_on(store.save_snapshot(meta.clone(), data))
                            .map_err(|e| e.to_string()),
                        Err(e) => Err(e.to_string()),
                    };
                    let _ = tx.send(match result {
                        Ok(()) => Completion::SnapshotSaved { meta },
                        Err(e) => Completion::Failed(format!("saving a snapshot failed: {e}")),
                    });
                });
                Ok(())
            }
            Completion::SnapshotSaved { meta } => {
                self.snapshot_in_progress = false;
                tracing::info!(index = meta.last.index, size = meta.size, "snapshot saved");
                self.node
                    .on_snapshot_built(&meta)
                    .map_err(|e| e.to_string())?;
                if std::mem::take(&mut self.snapshot_wanted) {
                    self.start_snapshot_build(completions);
                }
                Ok(())
            }
            Completion::Failed(e) => Err(e),
        }
    }

    fn publish_view(&mut self) {
        let membership = self.node.membership();
        if membership.addresses() != &self.last_addresses {
            self.last_addresses = membership.addresses().clone();
            let peers: BTreeMap<NodeId, String> = self
                .last_addresses
                .iter()
                .filter(|(id, _)| **id != self.node.id())
                .map(|(k, v)| (*k, v.clone()))
                .collect();
            self.transport.update_peers(&peers);
        }
        if let Some(committed) = self.node.committed_membership()
            && committed.removed() != &self.last_removed
        {
            self.last_removed = committed.removed().clone();
            self.transport.update_removed(&self.last_removed);
        }
        let view = NodeView {
            id: self.node.id(),
            leader: self.node.leader(),
            is_leader: self.node.is_leader(),
            term: self.node.term(),
            commit: self.node.commit_index(),
            applied: self.node.applied_index(),
            addresses: self.last_addresses.clone(),
            voters: membership.voters().iter().copied().collect(),
        };
        self.view.send_if_modified(|old| {
            let changed = old.leader != view.leader
                || old.term != view.term
                || old.addresses != view.addresses
                || old.is_leader != view.is_leader;
            let progressed = old.commit != view.commit || old.applied != view.applied;
            *old = view;
            changed || progressed
        });
        crate::metrics::record_raft(&self.node, self.proposals.len() + self.conf_changes.len());
    }
}

/// Polls a future once; `None` if it is not ready.
fn futures_now<F: std::future::Future>(future: F) -> Option<F::Output> {
    let waker = std::task::Waker::noop();
    let mut cx = std::task::Context::from_waker(waker);
    let mut future = std::pin::pin!(future);
    match future.as_mut().poll(&mut cx) {
        std::task::Poll::Ready(v) => Some(v),
        std::task::Poll::Pending => None,
    }
}

/// Runs a storage future on the writer thread: polled once outside any
/// runtime first, so a store that hands blocking work to tokio's blocking
/// pool when it runs inside a runtime (as `RocksStore` does) does it right
/// here instead, on the thread that exists to wait for the disk, without a
/// hop to a pool thread and back per write; finished on `runtime` if it
/// still waits for something.
fn run_here<F: std::future::Future>(runtime: &tokio::runtime::Runtime, future: F) -> F::Output {
    let mut future = std::pin::pin!(future);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match future.as_mut().poll(&mut cx) {
        std::task::Poll::Ready(v) => v,
        std::task::Poll::Pending => runtime.block_on(future),
    }
}

/// Makes batches durable in order. Batches queued behind each other are
/// written with one fsync at the end (group commit): every batch but the last
/// is written without sync, and the last one's sync covers them all.
fn writer_loop<L: LogStore + ?Sized, T: Transport + ?Sized>(
    store: Arc<L>,
    transport: Arc<T>,
    queue: std::sync::mpsc::Receiver<PendingWrite>,
    completions: mpsc::UnboundedSender<Completion>,
) {
    let runtime = match tokio::runtime::Builder::new_current_thread().build() {
        Ok(rt) => rt,
        Err(e) => {
            let _ = completions.send(Completion::Failed(format!(
                "cannot start the writer runtime: {e}"
            )));
            return;
        }
    };
    while let Ok(first) = queue.recv() {
        let mut group = vec![first];
        while let Ok(next) = queue.try_recv() {
            group.push(next);
            if group.len() >= 64 {
                break;
            }
        }
        let any_sync = group.iter().any(|p| p.write.must_sync);
        let n = group.len();
        let started = std::time::Instant::now();
        let entries: usize = group.iter().map(|p| p.write.entries.len()).sum();
        let mut installs = Vec::with_capacity(n);
        for (i, pending) in group.iter_mut().enumerate() {
            let mut write = std::mem::take(&mut pending.write);
            installs.push(write.install_snapshot.clone());
            // Only the last write of the group syncs, covering all of them.
            write.must_sync = i + 1 == n && any_sync;
            if let Err(e) = run_here(&runtime, store.persist(write)) {
                let _ = completions.send(Completion::Failed(format!(
                    "persisting a batch failed: {e}"
                )));
                return;
            }
        }
        crate::metrics::record_log_write(started.elapsed().as_secs_f64(), entries, n);
        for (pending, install) in group.into_iter().zip(installs) {
            let installed = match &install {
                Some(meta) => match run_here(&runtime, store.load_snapshot()) {
                    Ok(Some((stored, data))) if stored.last == meta.last => Some((stored, data)),
                    Ok(_) => {
                        let _ = completions.send(Completion::Failed(format!(
                            "installed snapshot {} is not the store's current snapshot",
                            meta.last.index
                        )));
                        return;
                    }
                    Err(e) => {
                        let _ = completions.send(Completion::Failed(format!(
                            "reading the installed snapshot: {e}"
                        )));
                        return;
                    }
                },
                None => None,
            };
            let mut unreachable = Vec::new();
            for message in pending.persisted_messages {
                let to = message.to;
                if let Err(TransportError::Unreachable(_)) = transport.send(message) {
                    unreachable.push(to);
                }
            }
            if completions
                .send(Completion::Persisted {
                    number: pending.number,
                    installed,
                    unreachable,
                })
                .is_err()
            {
                return;
            }
        }
    }
}
