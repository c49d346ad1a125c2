//! Workload W3 of BENCHMARKS.md: raft-core alone. Three nodes in one
//! process, in-memory logs, messages passed in memory, no I/O and no
//! serialization; C closed-loop clients each proposing a 64-byte command and
//! waiting until the leader has applied it before proposing the next.
//!
//! Prints one JSON line per client count. Run with
//! `cargo bench -p raft-core --bench w3` (add `-- --secs 5` for longer runs,
//! `-- --clients 256` for one configuration).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;
use raft_core::{Config, EntryPayload, MemLog, Membership, Message, Node};

struct Bench {
    nodes: Vec<Node<MemLog>>,
    wire: VecDeque<Message>,
    /// Proposal start times by log index (offset by `base`).
    started: VecDeque<Option<Instant>>,
    base: u64,
    completed: u64,
    latency: Histogram<u64>,
    payload: Bytes,
    /// The time of the current pump round (one clock read per round).
    now: Instant,
}

impl Bench {
    fn new() -> Self {
        let membership = Membership::with_voters((1..=3).map(|id| (id, format!("n{id}"))));
        let nodes = (1..=3)
            .map(|id| {
                let mut config = Config::new(id);
                config.snapshot.threshold = 200_000;
                config.snapshot.retention = 20_000;
                config.max_inflight = 64;
                Node::new(config, MemLog::bootstrap(membership.clone())).expect("node")
            })
            .collect();
        let mut bench = Bench {
            nodes,
            wire: VecDeque::new(),
            started: VecDeque::new(),
            base: 0,
            completed: 0,
            latency: Histogram::new_with_bounds(1, 60_000_000, 3).expect("histogram"),
            payload: Bytes::from(vec![7u8; 64]),
            now: Instant::now(),
        };
        bench.nodes[0].campaign().expect("campaign");
        while !bench.nodes[0].is_leader() {
            bench.pump();
        }
        for _ in 0..10 {
            bench.pump();
        }
        bench.base = bench.nodes[0].last_log_id().expect("last").index + 1;
        bench
    }

    fn propose(&mut self) {
        let id = self.nodes[0]
            .propose(self.payload.clone())
            .expect("leader accepts");
        let slot = (id.index - self.base) as usize;
        while self.started.len() <= slot {
            self.started.push_back(None);
        }
        self.started[slot] = Some(self.now);
    }

    /// Performs every node's output once and delivers the messages.
    fn pump(&mut self) {
        self.now = Instant::now();
        for i in 0..self.nodes.len() {
            while self.nodes[i].has_ready() {
                let ready = self.nodes[i].ready().expect("ready");
                self.wire.extend(ready.messages);
                let node = &mut self.nodes[i];
                node.store_mut().apply_owned(ready.write).expect("write");
                self.wire.extend(ready.persisted_messages);
                node.on_persisted(ready.number).expect("persisted");
                let mut done = 0;
                if let Some(last) = ready.committed_entries.last() {
                    let last = last.index;
                    if i == 0 {
                        let now = self.now;
                        for entry in &ready.committed_entries {
                            if let EntryPayload::Command(_) = entry.payload {
                                if entry.index >= self.base {
                                    while self.base < entry.index {
                                        self.started.pop_front();
                                        self.base += 1;
                                    }
                                    if let Some(Some(t)) = self.started.pop_front() {
                                        let micros = now.duration_since(t).as_micros() as u64;
                                        let _ = self.latency.record(micros.max(1));
                                        done += 1;
                                    }
                                    self.base += 1;
                                }
                            }
                        }
                    }
                    self.nodes[i].on_applied(last).expect("applied");
                }
                if ready.snapshot_due {
                    let node = &mut self.nodes[i];
                    let index = node.applied_index();
                    if let Ok(meta) = node.snapshot_meta_for(index, 8) {
                        node.store_mut()
                            .save_snapshot(meta.clone(), Bytes::from(index.to_le_bytes().to_vec()));
                        node.on_snapshot_built(&meta).expect("built");
                    }
                }
                // Closed loop: each completed client proposes again.
                if i == 0 {
                    self.completed += done;
                    for _ in 0..done {
                        self.propose();
                    }
                }
            }
        }
        while let Some(message) = self.wire.pop_front() {
            let to = (message.to - 1) as usize;
            self.nodes[to].step(message).expect("step");
        }
    }
}

fn cpu_seconds() -> f64 {
    // utime + stime of this process, in clock ticks (USER_HZ = 100 on Linux).
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = stat.rsplit(')').next().unwrap_or_default();
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (ticks(11) + ticks(12)) / 100.0
}

fn run(clients: usize, secs: f64) {
    let mut bench = Bench::new();
    for _ in 0..clients {
        bench.propose();
    }
    // Warm up for a fifth of the run.
    let warm = Instant::now();
    while warm.elapsed() < Duration::from_secs_f64(secs / 5.0) {
        bench.pump();
    }
    bench.completed = 0;
    bench.latency.reset();
    let cpu0 = cpu_seconds();
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs_f64(secs) {
        bench.pump();
    }
    let elapsed = start.elapsed().as_secs_f64();
    let cpu = cpu_seconds() - cpu0;
    let ops = bench.completed;
    let ms = |q: f64| bench.latency.value_at_quantile(q) as f64 / 1000.0;
    println!(
        "{{\"workload\":\"W3\",\"clients\":{clients},\"ops\":{ops},\"secs\":{elapsed:.2},\"ops_per_sec\":{:.0},\"p50_ms\":{:.3},\"p99_ms\":{:.3},\"p999_ms\":{:.3},\"errors\":0,\"cpu_us_per_op\":{:.3}}}",
        ops as f64 / elapsed,
        ms(0.5),
        ms(0.99),
        ms(0.999),
        cpu * 1e6 / ops.max(1) as f64
    );
}

fn main() {
    let mut secs = 3.0;
    let mut only = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--secs" => secs = args.next().and_then(|v| v.parse().ok()).unwrap_or(secs),
            "--clients" => only = args.next().and_then(|v| v.parse().ok()),
            _ => {} // cargo bench passes --bench
        }
    }
    let counts = match only {
        Some(c) => vec![c],
        None => vec![1, 64, 256, 1024],
    };
    for clients in counts {
        run(clients, secs);
    }
}
