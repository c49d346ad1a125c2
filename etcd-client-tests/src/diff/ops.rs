//! The operations of a differential run and their seeded generator.
//!
//! Operations name revisions and leases as a run sees them, not as one
//! server numbered them: a revision is relative to the store's current one
//! (so removing an operation while shrinking keeps the others meaningful),
//! a lease is the n-th grant of the run (each server picks its own ids).

use rand::{Rng, RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// The keys of a run: few, so operations meet; nested under prefixes so
/// that ranges, prefixes and from-key reads hold several.
const KEYS: &[&str] = &[
    "a", "a/1", "a/2", "a/3", "a/3/x", "b", "b/1", "b/2", "c", "d/1", "e",
];

/// Which keys an operation names.
#[derive(Clone, Debug)]
pub enum Keys {
    One(String),
    Prefix(String),
    FromKey(String),
    Range(String, String),
    /// Every key (etcd's `range_end = [0]` from `[0]`).
    All,
}

impl Keys {
    /// The request's `key` and `range_end`.
    pub fn bounds(&self) -> (Vec<u8>, Vec<u8>) {
        match self {
            Keys::One(key) => (key.clone().into_bytes(), Vec::new()),
            Keys::Prefix(prefix) => {
                let mut end = prefix.clone().into_bytes();
                // The keys of a run are ASCII: the last byte can be raised.
                if let Some(last) = end.last_mut() {
                    *last += 1;
                }
                (prefix.clone().into_bytes(), end)
            }
            Keys::FromKey(key) => (key.clone().into_bytes(), vec![0]),
            Keys::Range(from, to) => (from.clone().into_bytes(), to.clone().into_bytes()),
            Keys::All => (vec![0], vec![0]),
        }
    }
}

/// A revision, relative to the store's when the operation is sent.
#[derive(Clone, Copy, Debug)]
pub enum Rev {
    /// 0: the latest (or no bound).
    Zero,
    /// The current revision minus this.
    Back(i64),
    /// The current revision plus this (a future revision).
    Ahead(i64),
    /// Negative, as a client may send.
    Negative,
}

impl Rev {
    pub fn at(self, current: i64) -> i64 {
        match self {
            Rev::Zero => 0,
            Rev::Back(n) => (current - n).max(1),
            Rev::Ahead(n) => current + n,
            Rev::Negative => -3,
        }
    }
}

/// A lease as the run names it.
#[derive(Clone, Copy, Debug)]
pub enum LeaseRef {
    None,
    /// The n-th grant of the run (counting from 0), whatever its id.
    Granted(usize),
    /// An id no grant made.
    Unknown,
}

/// etcd's sort targets and orders, as numbers of its protocol.
#[derive(Clone, Copy, Debug)]
pub struct Sort {
    pub target: i32,
    pub order: i32,
}

/// A read: `Range` or a transaction's range.
#[derive(Clone, Debug)]
pub struct Read {
    pub keys: Keys,
    pub revision: Rev,
    pub limit: i64,
    pub sort: Option<Sort>,
    pub count_only: bool,
    pub keys_only: bool,
    pub serializable: bool,
    pub min_mod: Rev,
    pub max_mod: Rev,
    pub min_create: Rev,
    pub max_create: Rev,
}

#[derive(Clone, Debug)]
pub struct Put {
    pub key: String,
    pub value: String,
    pub lease: LeaseRef,
    pub prev_kv: bool,
    pub ignore_value: bool,
    pub ignore_lease: bool,
}

#[derive(Clone, Debug)]
pub struct Delete {
    pub keys: Keys,
    pub prev_kv: bool,
}

/// What a comparison looks at.
#[derive(Clone, Debug)]
pub enum Target {
    Value(String),
    Version(i64),
    Create(Rev),
    Mod(Rev),
    Lease(LeaseRef),
}

#[derive(Clone, Debug)]
pub struct Compare {
    pub keys: Keys,
    pub target: Target,
    /// etcd's `CompareResult`: 0 equal, 1 greater, 2 less, 3 not equal.
    pub result: i32,
}

#[derive(Clone, Debug)]
pub enum TxnOp {
    Put(Put),
    Get(Read),
    Delete(Delete),
    Txn(Txn),
}

#[derive(Clone, Debug)]
pub struct Txn {
    pub compares: Vec<Compare>,
    pub success: Vec<TxnOp>,
    pub failure: Vec<TxnOp>,
}

/// One step of a run.
#[derive(Clone, Debug)]
pub enum Op {
    Put(Put),
    Get(Read),
    Delete(Delete),
    Txn(Txn),
    /// A lease with this TTL; `id`: asked for (0: the server picks).
    Grant {
        ttl: i64,
        id: i64,
    },
    Revoke(LeaseRef),
    TimeToLive {
        lease: LeaseRef,
        keys: bool,
    },
    Leases,
    Compact(Rev),
    /// A watch on the run's watch stream.
    Watch {
        keys: Keys,
        start: Rev,
        no_put: bool,
        no_delete: bool,
        prev_kv: bool,
        /// A watch id asked for (0: the server picks).
        id: i64,
    },
    /// Cancels the watch with this id (it may not exist).
    Cancel(i64),
}

/// The generator of one run's operations.
pub struct Generator {
    rng: ChaCha8Rng,
    grants: usize,
    watches: i64,
}

impl Generator {
    pub fn new(seed: u64) -> Self {
        Self {
            rng: ChaCha8Rng::seed_from_u64(seed),
            grants: 0,
            watches: 0,
        }
    }

    /// `n` operations.
    pub fn ops(&mut self, n: usize) -> Vec<Op> {
        (0..n).map(|_| self.op()).collect()
    }

    fn chance(&mut self, percent: u32) -> bool {
        self.rng.random_range(0..100) < percent
    }

    fn key(&mut self) -> String {
        KEYS[self.rng.random_range(0..KEYS.len())].to_owned()
    }

    fn value(&mut self) -> String {
        match self.rng.random_range(0..10) {
            0 => String::new(),
            n => format!("v{}", n * 7 + self.rng.random_range(0..5)),
        }
    }

    fn keys(&mut self) -> Keys {
        match self.rng.random_range(0..10) {
            0..=4 => Keys::One(self.key()),
            5 | 6 => Keys::Prefix(["a", "a/", "b/", "d", "z"][self.rng.random_range(0..5)].into()),
            7 => Keys::FromKey(self.key()),
            8 => {
                let (a, b) = (self.key(), self.key());
                Keys::Range(a.clone().min(b.clone()), a.max(b))
            }
            _ => Keys::All,
        }
    }

    fn rev(&mut self) -> Rev {
        match self.rng.random_range(0..20) {
            0..=9 => Rev::Zero,
            10..=16 => Rev::Back(self.rng.random_range(0..12)),
            17 | 18 => Rev::Ahead(self.rng.random_range(1..3)),
            _ => Rev::Negative,
        }
    }

    /// A revision bound for filters and comparisons: mostly recent ones.
    fn bound(&mut self) -> Rev {
        match self.rng.random_range(0..4) {
            0 => Rev::Zero,
            _ => Rev::Back(self.rng.random_range(0..15)),
        }
    }

    fn lease(&mut self) -> LeaseRef {
        match self.rng.random_range(0..10) {
            0..=5 => LeaseRef::None,
            6..=8 if self.grants > 0 => {
                // Mostly the latest grants.
                let back = self.rng.random_range(0..self.grants.min(4));
                LeaseRef::Granted(self.grants - 1 - back)
            }
            _ => LeaseRef::Unknown,
        }
    }

    fn read(&mut self) -> Read {
        let filtered = self.chance(15);
        Read {
            keys: self.keys(),
            revision: if self.chance(30) {
                self.rev()
            } else {
                Rev::Zero
            },
            limit: match self.rng.random_range(0..10) {
                0..=5 => 0,
                6 => -1,
                n => i64::from(n - 6),
            },
            sort: self.chance(35).then(|| Sort {
                target: self.rng.random_range(0..5),
                order: self.rng.random_range(0..3),
            }),
            count_only: self.chance(10),
            keys_only: self.chance(15),
            serializable: self.chance(10),
            min_mod: if filtered { self.bound() } else { Rev::Zero },
            max_mod: if filtered { self.bound() } else { Rev::Zero },
            min_create: if filtered { self.bound() } else { Rev::Zero },
            max_create: if filtered { self.bound() } else { Rev::Zero },
        }
    }

    fn put(&mut self) -> Put {
        let ignore_value = self.chance(7);
        let ignore_lease = self.chance(7);
        Put {
            key: self.key(),
            // Mostly empty with ignore_value: etcd refuses a value given
            // with it.
            value: if ignore_value && self.chance(80) {
                String::new()
            } else {
                self.value()
            },
            lease: if ignore_lease && self.chance(80) {
                LeaseRef::None
            } else {
                self.lease()
            },
            prev_kv: self.chance(40),
            ignore_value,
            ignore_lease,
        }
    }

    fn delete(&mut self) -> Delete {
        Delete {
            keys: self.keys(),
            prev_kv: self.chance(40),
        }
    }

    fn compare(&mut self) -> Compare {
        let keys = if self.chance(80) {
            Keys::One(self.key())
        } else {
            self.keys()
        };
        let target = match self.rng.random_range(0..5) {
            0 => Target::Value(self.value()),
            1 => Target::Version(self.rng.random_range(0..4)),
            2 => Target::Create(self.bound()),
            3 => Target::Mod(self.bound()),
            _ => Target::Lease(self.lease()),
        };
        // Lease ids are each server's choice: only whether they are equal
        // compares alike.
        let result = match target {
            Target::Lease(_) => [0, 3][self.rng.random_range(0..2)],
            _ => self.rng.random_range(0..4),
        };
        Compare {
            keys,
            target,
            result,
        }
    }

    fn txn(&mut self, depth: u32) -> Txn {
        let branch = |g: &mut Self| {
            let n = g.rng.random_range(0..4);
            (0..n).map(|_| g.txn_op(depth)).collect::<Vec<_>>()
        };
        let n = self.rng.random_range(0..3);
        Txn {
            compares: (0..n).map(|_| self.compare()).collect(),
            success: branch(self),
            failure: branch(self),
        }
    }

    fn txn_op(&mut self, depth: u32) -> TxnOp {
        match self.rng.random_range(0..10) {
            0..=3 => TxnOp::Put(self.put()),
            4..=6 => TxnOp::Get(self.read()),
            7 | 8 => TxnOp::Delete(self.delete()),
            _ if depth < 2 => TxnOp::Txn(self.txn(depth + 1)),
            _ => TxnOp::Get(self.read()),
        }
    }

    fn op(&mut self) -> Op {
        match self.rng.random_range(0..100) {
            0..=27 => Op::Put(self.put()),
            28..=47 => Op::Get(self.read()),
            48..=57 => Op::Delete(self.delete()),
            58..=77 => {
                let mut txn = self.txn(0);
                if deletes_to_the_end(&txn) {
                    keep_no_ignores(&mut txn);
                }
                Op::Txn(txn)
            }
            78..=81 => {
                self.grants += 1;
                Op::Grant {
                    // Never expires during a run: expiry is timing, which
                    // two servers cannot share.
                    ttl: match self.rng.random_range(0..20) {
                        0 => 9_000_000_001,
                        _ => self.rng.random_range(600..100_000),
                    },
                    id: if self.chance(25) {
                        self.rng.random_range(1..6) * 1000
                    } else {
                        0
                    },
                }
            }
            82 | 83 => Op::Revoke(self.lease()),
            84 | 85 => Op::TimeToLive {
                lease: self.lease(),
                keys: self.chance(50),
            },
            86 => Op::Leases,
            // Compactions and cancels wait for watches to settle: rare.
            87 if self.chance(50) => Op::Compact(match self.rng.random_range(0..6) {
                0 => Rev::Ahead(1),
                1 => Rev::Zero,
                _ => Rev::Back(self.rng.random_range(0..30)),
            }),
            87 => Op::Leases,
            88..=96 => {
                self.watches += 1;
                Op::Watch {
                    keys: self.keys(),
                    start: match self.rng.random_range(0..3) {
                        0 => Rev::Zero,
                        _ => Rev::Back(self.rng.random_range(0..20)),
                    },
                    no_put: self.chance(15),
                    no_delete: self.chance(15),
                    prev_kv: self.chance(40),
                    id: if self.chance(15) {
                        self.rng.random_range(0..self.watches + 2)
                    } else {
                        0
                    },
                }
            }
            97 => Op::Cancel(self.rng.random_range(-1..self.watches + 1)),
            _ => Op::Get(self.read()),
        }
    }
}

/// Whether a transaction (or one nested in it) deletes to the end of the
/// key space (`range_end` of `[0]`), which etcd 3.4's check of keys changed
/// twice misses.
fn deletes_to_the_end(txn: &Txn) -> bool {
    txn.success.iter().chain(&txn.failure).any(|op| match op {
        TxnOp::Delete(d) => matches!(d.keys, Keys::FromKey(_) | Keys::All),
        TxnOp::Txn(inner) => deletes_to_the_end(inner),
        _ => false,
    })
}

/// Clears the `ignore_value` and `ignore_lease` of every put: etcd 3.4
/// crashes (a panic in its apply loop: "unexpected error during txn") on a
/// put that keeps the value or lease of a key the same transaction deleted
/// to the end of the key space; raft-kv puts the value given.
fn keep_no_ignores(txn: &mut Txn) {
    for op in txn.success.iter_mut().chain(txn.failure.iter_mut()) {
        match op {
            TxnOp::Put(put) => {
                put.ignore_value = false;
                put.ignore_lease = false;
            }
            TxnOp::Txn(inner) => keep_no_ignores(inner),
            _ => {}
        }
    }
}

/// Sends `rng` forward: a run's seed for case `n`.
pub fn case_seed(seed: u64, case: u64) -> u64 {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ case.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    rng.next_u64()
}
