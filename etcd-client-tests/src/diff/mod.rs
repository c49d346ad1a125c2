//! Differential testing of raft-kv's etcd API against a real etcd: the same
//! seeded random operations (put, delete, delete-range, transactions with
//! nested comparisons, both branches, reads and transactions inside, every
//! range option, leases, compaction, watches from a revision with filters
//! and prev_kv) are sent to both in lockstep, and every answer is compared
//! field by field. A difference is shrunk to the shortest sequence found
//! that still shows it.

pub mod backend;
pub mod ops;
pub mod run;

use std::time::Instant;

use anyhow::Result;

pub use run::{Mismatch, Setup};

/// What a differential run found.
#[derive(Debug)]
pub struct Report {
    /// Operations sent to both servers (and answered alike, but for the
    /// last one of a mismatch).
    pub ops: usize,
    pub cases: u64,
    pub seconds: f64,
    /// The first difference: its case seed, the shortest sequence found
    /// that shows it, and the two answers.
    pub mismatch: Option<Found>,
}

#[derive(Debug)]
pub struct Found {
    pub case_seed: u64,
    pub sequence: Vec<ops::Op>,
    pub mismatch: Mismatch,
}

impl std::fmt::Display for Found {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "etcd and raft-kv answer differently (case seed {}); the shortest sequence found \
             ({} operations):",
            self.case_seed,
            self.sequence.len()
        )?;
        for (i, op) in self.sequence.iter().enumerate() {
            writeln!(f, "  {i:>4}: {op:?}")?;
        }
        match self.mismatch.at {
            Some(i) => writeln!(f, "operation {i} answered")?,
            None => writeln!(f, "the watches saw")?,
        }
        writeln!(f, "  etcd:    {}", self.mismatch.etcd)?;
        write!(f, "  raft-kv: {}", self.mismatch.raft_kv)
    }
}

/// `total` operations in cases of `case_len`, each case on fresh servers,
/// from `seed`; stops at the first difference, shrinking it with at most
/// `shrink_attempts` more cases.
pub async fn run(
    setup: &Setup,
    seed: u64,
    total: usize,
    case_len: usize,
    shrink_attempts: usize,
) -> Result<Report> {
    let started = Instant::now();
    let mut done = 0;
    let mut case = 0;
    while done < total {
        let len = case_len.min(total - done);
        let case_seed = ops::case_seed(seed, case);
        let sequence = ops::Generator::new(case_seed).ops(len);
        case += 1;
        if let Some(first) = run::run_case(setup, case, &sequence).await? {
            let mut prefix = sequence;
            if let Some(at) = first.at {
                prefix.truncate(at + 1);
            }
            done += prefix.len();
            eprintln!(
                "etcd-diff: case {case} (seed {case_seed}) differs at operation {:?}; shrinking",
                first.at
            );
            let sequence = run::shrink(setup, prefix, shrink_attempts).await?;
            // The shortest sequence's own difference.
            let mismatch = run::run_case(setup, u64::MAX, &sequence)
                .await?
                .unwrap_or(first);
            return Ok(Report {
                ops: done,
                cases: case,
                seconds: started.elapsed().as_secs_f64(),
                mismatch: Some(Found {
                    case_seed,
                    sequence,
                    mismatch,
                }),
            });
        }
        done += len;
        eprintln!(
            "etcd-diff: case {case} (seed {case_seed}): {len} operations alike; {done} of {total} \
             in {:.0} s",
            started.elapsed().as_secs_f64()
        );
    }
    Ok(Report {
        ops: done,
        cases: case,
        seconds: started.elapsed().as_secs_f64(),
        mismatch: None,
    })
}
