//! Linearizability checking of one object's history (one key: the chaos
//! program splits its history key by key, which is sound because
//! linearizability is compositional).
//!
//! Two judges over the same sequential specifications (stateright's
//! [`SequentialSpec`] trait, implemented here by [`CasRegister`] and
//! [`AppendRegister`]):
//!
//! - [`check_stateright`]: the `stateright` crate's `LinearizabilityTester`,
//!   a checker this project did not write. It searches interleavings
//!   depth-first without memoisation, so its cost grows exponentially with
//!   the number of concurrent (and unknown-outcome) operations: it is used
//!   as a cross-check, within a time budget ([`check_stateright_within`]).
//! - [`check_wgl`]: the Wing & Gong search with Lowe's memoisation of
//!   (operations linearised, state) pairs, the algorithm of Knossos and
//!   Porcupine. Fast enough for whole chaos histories and the Jepsen
//!   corpus; `tests/linearizability_corpus.rs` shows it agrees with every
//!   verdict of `raft-kv/tests/data/linearizability` and with stateright on
//!   generated histories.
//!
//! An operation whose outcome is unknown (a timeout, a lost connection) has
//! `ret: None`: it may take effect at any time after its invocation, or
//! never. stateright expresses this as an invocation that never returns;
//! the WGL search places its return after every other event and accepts
//! any result for it.
//!
//! This file is shared by the chaos example and the corpus test (`#[path]`),
//! so it depends on nothing but `std` and `stateright`.

#![allow(dead_code)]

use std::collections::{BTreeMap, HashSet};
use std::fmt::Debug;
use std::hash::Hash;
use std::time::{Duration, Instant};

use stateright::semantics::{ConsistencyTester, LinearizabilityTester, SequentialSpec};

/// One operation of a history: who invoked what, when, and what came back.
#[derive(Clone, Debug, PartialEq)]
pub struct Operation<Op, Ret> {
    /// The invoking process. A process runs one operation at a time; after
    /// an unknown outcome it may go on (the checkers treat its later
    /// operations as another process's).
    pub process: u64,
    /// The operation.
    pub op: Op,
    /// What it returned, or `None` if the outcome is unknown.
    pub ret: Option<Ret>,
    /// When it was invoked (any monotonic unit).
    pub invoke: u64,
    /// When it completed (ignored when the outcome is unknown). An
    /// operation precedes another only if it completed strictly before the
    /// other was invoked.
    pub complete: u64,
}

/// What the WGL search concluded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// A linearization exists.
    Linearizable,
    /// None exists.
    NotLinearizable(Failure),
    /// The search ran out of its budget.
    Undecided(String),
}

impl Verdict {
    /// Whether the verdict is [`Verdict::Linearizable`].
    pub fn is_linearizable(&self) -> bool {
        matches!(self, Verdict::Linearizable)
    }
}

/// Where the search got stuck, to explain a violation: the longest valid
/// prefix it found (indices into the history, in linearization order) and
/// the operation that could not be placed after it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    /// The longest linearizable prefix found.
    pub longest_prefix: Vec<usize>,
    /// An operation that had to be linearized next (its return came) but
    /// could not be, after that prefix.
    pub stuck_at: usize,
}

// ------------------------------------------------------------------ models

/// A register with compare-and-swap; `None` is "absent" (the initial
/// value). This is the model of one raft-kv key under get, put and cas,
/// and of the Jepsen etcd histories.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct CasRegister(pub Option<String>);

/// An operation on a [`CasRegister`].
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum CasOp {
    /// Read the value.
    Read,
    /// Set the value.
    Write(String),
    /// If the value is `expected`, set it to `new` (`None`: absent).
    Cas {
        /// The value required.
        expected: Option<String>,
        /// The value set.
        new: Option<String>,
    },
}

/// What a [`CasOp`] returns.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum CasRet {
    /// The value read.
    ReadOk(Option<String>),
    /// The write happened.
    WriteOk,
    /// The compare-and-swap swapped.
    CasOk,
    /// The compare-and-swap found another value and changed nothing.
    CasFail,
}

impl SequentialSpec for CasRegister {
    type Op = CasOp;
    type Ret = CasRet;

    fn invoke(&mut self, op: &CasOp) -> CasRet {
        match op {
            CasOp::Read => CasRet::ReadOk(self.0.clone()),
            CasOp::Write(v) => {
                self.0 = Some(v.clone());
                CasRet::WriteOk
            }
            CasOp::Cas { expected, new } => {
                if &self.0 == expected {
                    self.0 = new.clone();
                    CasRet::CasOk
                } else {
                    CasRet::CasFail
                }
            }
        }
    }

    fn is_valid_step(&mut self, op: &CasOp, ret: &CasRet) -> bool {
        match (op, ret) {
            (CasOp::Read, CasRet::ReadOk(v)) => &self.0 == v,
            (CasOp::Write(v), CasRet::WriteOk) => {
                self.0 = Some(v.clone());
                true
            }
            (CasOp::Cas { expected, new }, CasRet::CasOk) if &self.0 == expected => {
                self.0 = new.clone();
                true
            }
            (CasOp::Cas { .. }, CasRet::CasOk) => false,
            (CasOp::Cas { expected, .. }, CasRet::CasFail) => &self.0 != expected,
            _ => false,
        }
    }
}

/// A string with get, put and append (the model of the corpus's `kv/`
/// histories). Starts empty.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct AppendRegister(pub String);

/// An operation on an [`AppendRegister`].
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum AppendOp {
    /// Read the value.
    Get,
    /// Replace the value.
    Put(String),
    /// Append to the value.
    Append(String),
}

/// What an [`AppendOp`] returns.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum AppendRet {
    /// The value read.
    Value(String),
    /// A put or append happened.
    Ok,
}

impl SequentialSpec for AppendRegister {
    type Op = AppendOp;
    type Ret = AppendRet;

    fn invoke(&mut self, op: &AppendOp) -> AppendRet {
        match op {
            AppendOp::Get => AppendRet::Value(self.0.clone()),
            AppendOp::Put(v) => {
                self.0 = v.clone();
                AppendRet::Ok
            }
            AppendOp::Append(v) => {
                self.0.push_str(v);
                AppendRet::Ok
            }
        }
    }

    fn is_valid_step(&mut self, op: &AppendOp, ret: &AppendRet) -> bool {
        match (op, ret) {
            (AppendOp::Get, AppendRet::Value(v)) => &self.0 == v,
            (AppendOp::Put(_) | AppendOp::Append(_), AppendRet::Ok) => {
                self.invoke(op);
                true
            }
            _ => false,
        }
    }
}

// --------------------------------------------------------------- stateright

/// Feeds `history` to stateright's `LinearizabilityTester` (invocations and
/// returns in time order, an invocation before a return at the same time)
/// and asks whether it is linearizable. Operations with unknown outcomes
/// stay in flight: stateright may linearize them anywhere after their
/// invocation, or not at all. `Err` if the history is malformed (a process
/// with two overlapping operations).
///
/// Exponential in the worst case: see [`check_stateright_within`].
pub fn check_stateright<S>(init: S, history: &[Operation<S::Op, S::Ret>]) -> Result<bool, String>
where
    S: SequentialSpec + Clone,
    S::Op: Clone + Debug,
    S::Ret: Clone + Debug + PartialEq,
{
    // stateright allows an in-flight operation only as a thread's last:
    // give a process's operations after an unknown outcome a fresh thread.
    let mut thread_of = vec![0u64; history.len()];
    let mut order: Vec<usize> = (0..history.len()).collect();
    order.sort_by_key(|&i| (history[i].invoke, i));
    let mut current: BTreeMap<u64, u64> = BTreeMap::new();
    let mut next_thread = 0u64;
    for &i in &order {
        let op = &history[i];
        let thread = *current.entry(op.process).or_insert_with(|| {
            next_thread += 1;
            next_thread
        });
        thread_of[i] = thread;
        if op.ret.is_none() {
            current.remove(&op.process);
        }
    }
    let mut events: Vec<(u64, u8, usize)> = Vec::with_capacity(history.len() * 2);
    for (i, op) in history.iter().enumerate() {
        events.push((op.invoke, 0, i));
        if op.ret.is_some() {
            events.push((op.complete, 1, i));
        }
    }
    events.sort();
    let mut tester = LinearizabilityTester::new(init);
    for (_, kind, i) in events {
        let op = &history[i];
        if kind == 0 {
            tester.on_invoke(thread_of[i], op.op.clone())?;
        } else if let Some(ret) = &op.ret {
            tester.on_return(thread_of[i], ret.clone())?;
        }
    }
    Ok(tester.is_consistent())
}

/// [`check_stateright`] on a thread of its own, giving up after `budget`
/// (`None`). A search that runs out of time cannot be stopped: its thread
/// goes on until it finishes or the process exits, so callers exit soon
/// after checking.
pub fn check_stateright_within<S>(
    init: S,
    history: Vec<Operation<S::Op, S::Ret>>,
    budget: Duration,
) -> Option<Result<bool, String>>
where
    S: SequentialSpec + Clone + Send + 'static,
    S::Op: Clone + Debug + Send + 'static,
    S::Ret: Clone + Debug + PartialEq + Send + 'static,
{
    let (tx, rx) = std::sync::mpsc::channel();
    // Deep recursion (one frame per operation linearized).
    let spawned = std::thread::Builder::new()
        .name("stateright".into())
        .stack_size(256 << 20)
        .spawn(move || {
            let _ = tx.send(check_stateright(init, &history));
        });
    if spawned.is_err() {
        return None;
    }
    rx.recv_timeout(budget).ok()
}

// --------------------------------------------------------------------- WGL

const NIL: usize = usize::MAX;
const HEAD: usize = 0;

#[derive(Clone, Copy)]
struct Entry {
    op: usize,
    is_call: bool,
    prev: usize,
    next: usize,
}

/// The Wing & Gong / Lowe search with memoisation (as in Porcupine). Gives
/// up with [`Verdict::Undecided`] after `budget`.
pub fn check_wgl<S>(init: S, history: &[Operation<S::Op, S::Ret>], budget: Duration) -> Verdict
where
    S: SequentialSpec + Clone + Eq + Hash,
    S::Ret: PartialEq,
{
    let started = Instant::now();
    let n = history.len();
    // Entries: 0 is the head; op i has its call at 1 + 2i and its return
    // at 2 + 2i. Unknown outcomes return after everything else.
    let mut events: Vec<(u64, u8, usize)> = Vec::with_capacity(2 * n);
    for (i, op) in history.iter().enumerate() {
        events.push((op.invoke, 0, i));
        let end = if op.ret.is_some() {
            op.complete
        } else {
            u64::MAX
        };
        events.push((end, 1, i));
    }
    events.sort();
    let mut entries = vec![
        Entry {
            op: NIL,
            is_call: false,
            prev: NIL,
            next: NIL,
        };
        2 * n + 1
    ];
    let mut last = HEAD;
    for &(_, kind, i) in &events {
        let at = 1 + 2 * i + kind as usize;
        entries[at] = Entry {
            op: i,
            is_call: kind == 0,
            prev: last,
            next: NIL,
        };
        entries[last].next = at;
        last = at;
    }

    let unlink = |entries: &mut Vec<Entry>, e: usize| {
        let Entry { prev, next, .. } = entries[e];
        entries[prev].next = next;
        if next != NIL {
            entries[next].prev = prev;
        }
    };
    let relink = |entries: &mut Vec<Entry>, e: usize| {
        let Entry { prev, next, .. } = entries[e];
        entries[prev].next = e;
        if next != NIL {
            entries[next].prev = e;
        }
    };

    let mut remaining_known = history.iter().filter(|op| op.ret.is_some()).count();
    let mut linearized = vec![0u64; n.div_ceil(64).max(1)];
    let mut cache: HashSet<(Vec<u64>, S)> = HashSet::new();
    let mut stack: Vec<(usize, S)> = Vec::new();
    let mut state = init;
    let mut entry = entries[HEAD].next;
    let mut best: Option<Failure> = None;
    let mut steps: u64 = 0;
    loop {
        // Operations with unknown outcomes may be left out: done once every
        // operation that returned is placed.
        if remaining_known == 0 {
            return Verdict::Linearizable;
        }
        steps += 1;
        if steps % 65_536 == 0 && started.elapsed() > budget {
            return Verdict::Undecided(format!(
                "gave up after {:?} ({steps} steps, {} states cached)",
                started.elapsed(),
                cache.len()
            ));
        }
        if entry != NIL && entries[entry].is_call {
            let i = entries[entry].op;
            let op = &history[i];
            let mut next_state = state.clone();
            let valid = match &op.ret {
                Some(ret) => next_state.is_valid_step(&op.op, ret),
                None => {
                    next_state.invoke(&op.op);
                    true
                }
            };
            if valid {
                linearized[i / 64] |= 1 << (i % 64);
                if cache.insert((linearized.clone(), next_state.clone())) {
                    stack.push((entry, std::mem::replace(&mut state, next_state)));
                    if op.ret.is_some() {
                        remaining_known -= 1;
                    }
                    unlink(&mut entries, entry);
                    unlink(&mut entries, entry + 1);
                    entry = entries[HEAD].next;
                    continue;
                }
                linearized[i / 64] &= !(1 << (i % 64));
            }
            entry = entries[entry].next;
        } else {
            // The return of an operation not yet placed: nothing placed so
            // far can be extended; undo the last choice.
            let stuck = if entry == NIL { NIL } else { entries[entry].op };
            if best
                .as_ref()
                .is_none_or(|b| stack.len() > b.longest_prefix.len())
            {
                best = Some(Failure {
                    longest_prefix: stack.iter().map(|(e, _)| entries[*e].op).collect(),
                    stuck_at: stuck,
                });
            }
            let Some((call, previous)) = stack.pop() else {
                return Verdict::NotLinearizable(best.unwrap_or(Failure {
                    longest_prefix: Vec::new(),
                    stuck_at: stuck,
                }));
            };
            state = previous;
            let i = entries[call].op;
            linearized[i / 64] &= !(1 << (i % 64));
            if history[i].ret.is_some() {
                remaining_known += 1;
            }
            relink(&mut entries, call + 1);
            relink(&mut entries, call);
            entry = entries[call].next;
        }
    }
}

#[cfg(test)]
mod tests {
    // Unit tests live in tests/linearizability_corpus.rs, which includes
    // this file.
}

/// SplitMix64, the seeded generator of the chaos runs (schedule and
/// workload) and of the corpus test's generated histories: a seed gives the
/// same choices on every machine.
#[derive(Clone)]
pub struct Rng(pub u64);

impl Rng {
    /// The next 64 random bits.
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    /// A duration between `low` and `high` milliseconds, both included.
    pub fn millis(&mut self, low: u64, high: u64) -> Duration {
        Duration::from_millis(low + self.below(high - low + 1))
    }

    /// One of `items`.
    pub fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len() as u64) as usize]
    }

    /// True `percent` times in a hundred.
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}
