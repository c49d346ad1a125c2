//! What a run measures, in the JSON line BENCHMARKS.md asks for (the same
//! fields as `raft-cli bench --json`), and the pieces both sides share with
//! `raft-cli bench`: the key picker and the histogram bounds.

use hdrhistogram::Histogram;
use serde_json::{Value, json};

/// The longest latency a histogram holds, in µs (longer ones are clamped).
const MAX_LATENCY_US: u64 = 120_000_000;

/// An empty latency histogram (µs, 3 significant digits).
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).expect("static histogram bounds are valid")
}

/// The key picker of `raft-cli bench` (xorshift64*, seeded per client), so
/// both systems see the same key sequence.
pub struct KeyPicker(u64);

impl KeyPicker {
    /// The picker of client `seed` (1 for the first client).
    pub fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    /// A key index below `bound`.
    pub fn next(&mut self, bound: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % bound.max(1)
    }
}

/// CPU seconds (user + system) the processes have used so far; None if one
/// of them cannot be read.
pub fn cpu_seconds(pids: &[u32]) -> Option<f64> {
    // Linux's USER_HZ: 100 on every architecture Rust targets.
    const TICKS_PER_SEC: f64 = 100.0;
    let mut total = 0.0;
    for pid in pids {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let (_, rest) = stat.rsplit_once(')')?;
        let fields: Vec<&str> = rest.split_whitespace().collect();
        // utime and stime are fields 14 and 15 of proc(5), from 3 here.
        let utime: f64 = fields.get(11)?.parse().ok()?;
        let stime: f64 = fields.get(12)?.parse().ok()?;
        total += (utime + stime) / TICKS_PER_SEC;
    }
    Some(total)
}

/// One configuration's result.
pub struct Outcome {
    /// `put` or `get-linearizable`.
    pub workload: String,
    /// Concurrent clients.
    pub clients: usize,
    /// Latencies of the successful operations begun in the window (µs).
    pub latencies: Histogram<u64>,
    /// Failed operations begun in the window.
    pub errors: u64,
    /// The window's length.
    pub secs: f64,
    /// CPU seconds of the servers during the window.
    pub server_cpu_secs: Option<f64>,
}

impl Outcome {
    /// The JSON line.
    pub fn json(&self) -> Value {
        let round = |v: f64| (v * 1000.0).round() / 1000.0;
        let ops = self.latencies.len();
        let ms = |q: f64| {
            if ops == 0 {
                0.0
            } else {
                self.latencies.value_at_quantile(q) as f64 / 1000.0
            }
        };
        let cpu_us_per_op = match self.server_cpu_secs {
            Some(cpu) if ops > 0 => Some(round(cpu * 1e6 / ops as f64)),
            _ => None,
        };
        json!({
            "workload": self.workload,
            "clients": self.clients,
            "ops": ops,
            "secs": round(self.secs),
            "ops_per_sec": round(if self.secs > 0.0 { ops as f64 / self.secs } else { 0.0 }),
            "p50_ms": round(ms(0.5)),
            "p99_ms": round(ms(0.99)),
            "p999_ms": round(ms(0.999)),
            "errors": self.errors,
            "cpu_us_per_op": cpu_us_per_op,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_line_has_the_benchmarks_md_fields() {
        let mut latencies = histogram();
        for _ in 0..990 {
            latencies.record(1_000).unwrap();
        }
        for _ in 0..10 {
            latencies.record(8_000).unwrap();
        }
        let line = Outcome {
            workload: "put".into(),
            clients: 4,
            latencies,
            errors: 1,
            secs: 2.0,
            server_cpu_secs: Some(0.5),
        }
        .json();
        assert_eq!(line["ops"], 1000);
        assert_eq!(line["ops_per_sec"], 500.0);
        assert_eq!(line["p50_ms"], 1.0);
        assert_eq!(line["cpu_us_per_op"], 500.0);
        assert!((line["p999_ms"].as_f64().unwrap() - 8.0).abs() < 0.01);
    }

    #[test]
    fn this_process_has_used_some_cpu() {
        let mut spin = 0u64;
        for i in 0..50_000_000u64 {
            spin = std::hint::black_box(spin.wrapping_add(i * i));
        }
        assert!(spin > 0);
        let cpu = cpu_seconds(&[std::process::id()]).unwrap();
        assert!(cpu > 0.0, "{cpu}");
        assert_eq!(cpu_seconds(&[u32::MAX]), None);
    }
}
