//! `bench`: closed-loop load from concurrent clients, each waiting for its
//! reply before sending the next request; a progress bar while it runs,
//! then throughput and a latency histogram.
//!
//! The simulated clients share `--conns` [`Client`]s (each a connection to
//! every node it uses and a session; default min(clients, 100), as etcd's
//! benchmark tool shares its gRPC connections), each client waiting for
//! its own reply. Latencies are recorded in microseconds in one HDR
//! histogram per client and merged at the end.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::bail;
use bytes::Bytes;
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use raft_kv::Client;
use raft_kv::protocol::{Consistency, ReadOp, Request, Response};
use serde_json::{Value, json};

use crate::args::{BenchArgs, BenchOp, ConsistencyArg};
use crate::commands::{Context, Outcome, explain, write_stdout};
use crate::output::Table;

/// The longest latency the histogram holds (longer ones are clamped).
const MAX_LATENCY_US: u64 = 120_000_000;

/// The measured figures.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    /// What ran, e.g. `put` or `get-linearizable`.
    pub workload: String,
    /// Concurrent clients.
    pub clients: usize,
    /// Operations that succeeded.
    pub ops: u64,
    /// Operations that failed.
    pub errors: u64,
    /// The measured time.
    pub secs: f64,
    /// Latency percentiles and the maximum, in milliseconds.
    pub p50_ms: f64,
    /// 90th percentile.
    pub p90_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// 99.9th percentile.
    pub p999_ms: f64,
    /// The slowest operation.
    pub max_ms: f64,
    /// (upper bound in ms, count) per histogram bucket, doubling.
    pub buckets: Vec<(f64, u64)>,
    /// CPU seconds all nodes used during the window (the difference of the
    /// `cpu_seconds` in their status before and after it), if every node
    /// reported it.
    pub server_cpu_secs: Option<f64>,
}

impl Report {
    /// Builds a report from merged latencies (µs).
    pub fn new(
        workload: String,
        clients: usize,
        latencies: &Histogram<u64>,
        errors: u64,
        secs: f64,
    ) -> Self {
        let ms = |us: u64| us as f64 / 1000.0;
        let quantile = |q: f64| {
            if latencies.is_empty() {
                0.0
            } else {
                ms(latencies.value_at_quantile(q))
            }
        };
        Self {
            workload,
            clients,
            ops: latencies.len(),
            errors,
            secs,
            p50_ms: quantile(0.5),
            p90_ms: quantile(0.9),
            p99_ms: quantile(0.99),
            p999_ms: quantile(0.999),
            max_ms: if latencies.is_empty() {
                0.0
            } else {
                ms(latencies.max())
            },
            buckets: buckets(latencies),
            server_cpu_secs: None,
        }
    }

    /// Server CPU time per successful operation, in microseconds.
    pub fn cpu_us_per_op(&self) -> Option<f64> {
        match self.server_cpu_secs {
            Some(cpu) if self.ops > 0 => Some(cpu * 1e6 / self.ops as f64),
            _ => None,
        }
    }

    /// Operations per second.
    pub fn ops_per_sec(&self) -> f64 {
        if self.secs > 0.0 {
            self.ops as f64 / self.secs
        } else {
            0.0
        }
    }

    /// The BENCHMARKS.md line (`cpu_us_per_op` is null when a node did not
    /// report its CPU time).
    pub fn json(&self) -> Value {
        let round = |v: f64| (v * 1000.0).round() / 1000.0;
        json!({
            "workload": self.workload,
            "clients": self.clients,
            "ops": self.ops,
            "secs": round(self.secs),
            "ops_per_sec": round(self.ops_per_sec()),
            "p50_ms": round(self.p50_ms),
            "p99_ms": round(self.p99_ms),
            "p999_ms": round(self.p999_ms),
            "errors": self.errors,
            "cpu_us_per_op": self.cpu_us_per_op().map(round),
        })
    }

    /// The summary and histogram for people.
    pub fn text(&self) -> String {
        let mut summary = Table::new([
            "WORKLOAD",
            "CLIENTS",
            "OPS",
            "ERRORS",
            "SECS",
            "OPS/S",
            "SERVER CPU-µS/OP",
        ]);
        summary.row([
            self.workload.clone(),
            self.clients.to_string(),
            self.ops.to_string(),
            self.errors.to_string(),
            format!("{:.2}", self.secs),
            format!("{:.1}", self.ops_per_sec()),
            self.cpu_us_per_op()
                .map_or("-".to_string(), |cpu| format!("{cpu:.0}")),
        ]);
        let mut latency = Table::new(["LATENCY", "P50", "P90", "P99", "P99.9", "MAX"]);
        latency.row([
            "ms".to_string(),
            format!("{:.3}", self.p50_ms),
            format!("{:.3}", self.p90_ms),
            format!("{:.3}", self.p99_ms),
            format!("{:.3}", self.p999_ms),
            format!("{:.3}", self.max_ms),
        ]);
        let mut out = summary.render();
        out.push('\n');
        out.push_str(&latency.render());
        out.push('\n');
        out.push_str(&histogram_text(&self.buckets));
        out
    }
}

/// Doubling buckets from 0.125 ms up to the slowest operation.
fn buckets(latencies: &Histogram<u64>) -> Vec<(f64, u64)> {
    if latencies.is_empty() {
        return Vec::new();
    }
    let max = latencies.max();
    let mut out = Vec::new();
    let mut low = 0u64;
    let mut high = 125u64;
    loop {
        let count = latencies.count_between(low, high - 1);
        out.push((high as f64 / 1000.0, count));
        if high > max {
            break;
        }
        low = high;
        high *= 2;
    }
    // Drop empty leading buckets, but keep the rest for shape.
    let first = out.iter().position(|(_, c)| *c > 0).unwrap_or(0);
    out.split_off(first)
}

fn histogram_text(buckets: &[(f64, u64)]) -> String {
    const WIDTH: u64 = 40;
    let most = buckets.iter().map(|(_, c)| *c).max().unwrap_or(0).max(1);
    let mut out = String::from("latency histogram (ms, upper bound: count)\n");
    for (bound, count) in buckets {
        let bar = "#".repeat(((count * WIDTH).div_ceil(most)) as usize);
        out.push_str(&format!("  < {bound:>9.3}  {count:>9}  {bar}\n"));
    }
    out
}

/// A small fast PRNG (xorshift64*): key choice only needs to be spread.
struct KeyPicker(u64);

impl KeyPicker {
    fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    fn next(&mut self, bound: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % bound.max(1)
    }
}

fn bench_key(index: u64) -> Bytes {
    Bytes::from(format!("bench/{index:08}"))
}

/// The workload's name in reports.
pub fn workload_name(op: BenchOp, consistency: ConsistencyArg) -> String {
    let consistency = match consistency {
        ConsistencyArg::Linearizable => "linearizable",
        ConsistencyArg::Lease => "lease",
        ConsistencyArg::Stale => "stale",
    };
    match op {
        BenchOp::Put => "put".into(),
        BenchOp::Get => format!("get-{consistency}"),
        BenchOp::Mixed => format!("mixed-{consistency}"),
    }
}

fn progress_bar(len: u64, template: &str, json: bool) -> ProgressBar {
    let target = if json {
        ProgressDrawTarget::hidden()
    } else {
        ProgressDrawTarget::stderr()
    };
    let bar = ProgressBar::with_draw_target(Some(len), target);
    if let Ok(style) = ProgressStyle::with_template(template) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar
}

/// Runs the benchmark.
pub async fn run(context: &Context, args: BenchArgs) -> anyhow::Result<Outcome> {
    if args.clients == 0 || args.duration == 0 || args.keys == 0 {
        bail!("--clients, --duration and --keys must be at least 1");
    }
    if args.value_size > raft_kv::protocol::MAX_VALUE_LEN {
        bail!(
            "--value-size may be at most {} bytes",
            raft_kv::protocol::MAX_VALUE_LEN
        );
    }
    let conns = args.conns.unwrap_or(args.clients.min(100));
    if conns == 0 || conns > args.clients {
        bail!("--conns must be between 1 and --clients ({})", args.clients);
    }
    let mut connections = Vec::with_capacity(conns);
    for _ in 0..conns {
        connections.push(Arc::new(context.client().await?));
    }
    // Client i uses connection i mod conns.
    let clients: Vec<Arc<Client>> = (0..args.clients)
        .map(|i| connections[i % conns].clone())
        .collect();
    // Fail early, with a clear message, if the cluster cannot be used.
    clients[0]
        .put(bench_key(0), Bytes::from(vec![b'x'; args.value_size]))
        .await
        .map_err(|e| explain("bench: the first write failed", e))?;
    if args.op != BenchOp::Put {
        preload(context, &clients, &args).await?;
    }
    if args.open_sessions > 0 {
        open_sessions(context, &clients, args.open_sessions).await?;
    }
    let mut report = measure(context, &clients, &args).await;
    if args.open_sessions > 0 {
        report.workload = format!("{}+{}-sessions", report.workload, args.open_sessions);
    }
    // BENCHMARKS.md asks for one JSON line per configuration: compact.
    if context.json() {
        write_stdout(&format!("{}\n", report.json()))?;
    } else {
        write_stdout(&report.text())?;
    }
    Ok(Outcome::Success)
}

/// Writes every key once so that reads find values.
async fn preload(
    context: &Context,
    clients: &[Arc<Client>],
    args: &BenchArgs,
) -> anyhow::Result<()> {
    let bar = progress_bar(
        args.keys,
        "preloading {pos}/{len} keys [{bar:40}] {elapsed}",
        context.json(),
    );
    let next = Arc::new(AtomicU64::new(0));
    let value = Bytes::from(vec![b'x'; args.value_size]);
    let mut tasks = tokio::task::JoinSet::new();
    // As many writers as clients, over the shared connections.
    for client in clients.iter().cycle().take(args.clients.max(clients.len())) {
        let (client, next, value, bar, keys) = (
            client.clone(),
            next.clone(),
            value.clone(),
            bar.clone(),
            args.keys,
        );
        tasks.spawn(async move {
            loop {
                let index = next.fetch_add(1, Ordering::Relaxed);
                if index >= keys {
                    return Ok(());
                }
                // A write held up long enough for its session to let its
                // number go (a stalled connection while the session's other
                // writers went on) is refused as expired and not applied;
                // writing the same value again under the new session is
                // what a preload wants.
                let mut expired = 0;
                loop {
                    match client.put(bench_key(index), value.clone()).await {
                        Ok(_) => break,
                        Err(raft_kv::client::ClientError::Kv(
                            raft_kv::protocol::KvError::SessionExpired,
                        )) if expired < 3 => expired += 1,
                        Err(e) => return Err(e),
                    }
                }
                bar.inc(1);
            }
        });
    }
    while let Some(joined) = tasks.join_next().await {
        if let Ok(Err(e)) = joined {
            bar.abandon();
            return Err(explain("bench: preloading the keys failed", e));
        }
    }
    bar.finish_and_clear();
    Ok(())
}

/// Opens `count` sessions (each one log entry) and leaves them open.
async fn open_sessions(
    context: &Context,
    clients: &[Arc<Client>],
    count: u64,
) -> anyhow::Result<()> {
    let bar = progress_bar(
        count,
        "opening {pos}/{len} sessions [{bar:40}] {elapsed}",
        context.json(),
    );
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for client in clients {
        let (client, next, bar) = (client.clone(), next.clone(), bar.clone());
        tasks.spawn(async move {
            while next.fetch_add(1, Ordering::Relaxed) < count {
                match client
                    .call(&Request::OpenSession { forwarded: false })
                    .await?
                {
                    Response::SessionOpened { .. } => bar.inc(1),
                    Response::Error(e) => return Err(raft_kv::ClientError::Kv(e)),
                    other => {
                        return Err(raft_kv::ClientError::Protocol(format!(
                            "opening a session was answered with {other:?}"
                        )));
                    }
                }
            }
            Ok(())
        });
    }
    while let Some(joined) = tasks.join_next().await {
        if let Ok(Err(e)) = joined {
            bar.abandon();
            return Err(explain("bench: opening sessions failed", e));
        }
    }
    bar.finish_and_clear();
    Ok(())
}

async fn measure(context: &Context, clients: &[Arc<Client>], args: &BenchArgs) -> Report {
    let duration = Duration::from_secs(args.duration);
    let warmup = Duration::from_secs(args.warmup);
    let bar = progress_bar(
        (warmup + duration).as_millis() as u64,
        "{elapsed_precise} [{bar:40}] {msg}",
        context.json(),
    );
    let done = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let value = Bytes::from(vec![b'x'; args.value_size]);
    let consistency: Consistency = args.consistency.into();
    let started = Instant::now();
    // Only operations begun in [window, deadline) are counted.
    let window = started + warmup;
    let deadline = window + duration;
    let mut tasks = tokio::task::JoinSet::new();
    for (worker, client) in clients.iter().enumerate() {
        let (client, done, failed, value) =
            (client.clone(), done.clone(), failed.clone(), value.clone());
        let (op, keys) = (args.op, args.keys);
        tasks.spawn(async move {
            let mut latencies = Histogram::<u64>::new_with_bounds(1, MAX_LATENCY_US, 3)
                .expect("static histogram bounds are valid");
            let mut picker = KeyPicker::new(worker as u64 + 1);
            while Instant::now() < deadline {
                let key = bench_key(picker.next(keys));
                let write = match op {
                    BenchOp::Put => true,
                    BenchOp::Get => false,
                    BenchOp::Mixed => picker.next(2) == 0,
                };
                let begun = Instant::now();
                let ok = if write {
                    client.put(key, value.clone()).await.is_ok()
                } else {
                    client.read(ReadOp::Get { key }, consistency).await.is_ok()
                };
                if begun < window {
                    continue;
                }
                if ok {
                    latencies.saturating_record(begun.elapsed().as_micros() as u64);
                    done.fetch_add(1, Ordering::Relaxed);
                } else {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
            }
            latencies
        });
    }
    // The nodes' CPU time when the window opens, read beside the load.
    let cpu_at_window = {
        let client = clients[0].clone();
        tokio::spawn(async move {
            tokio::time::sleep_until(window.into()).await;
            cluster_cpu_seconds(&client).await
        })
    };
    let mut merged = Histogram::<u64>::new_with_bounds(1, MAX_LATENCY_US, 3)
        .expect("static histogram bounds are valid");
    let mut ticker = tokio::time::interval(Duration::from_millis(200));
    loop {
        tokio::select! {
            joined = tasks.join_next() => match joined {
                Some(Ok(latencies)) => {
                    let _ = merged.add(&latencies);
                }
                Some(Err(_)) => {}
                None => break,
            },
            _ = ticker.tick() => {
                let now = Instant::now();
                bar.set_position(
                    (now.duration_since(started).as_millis() as u64)
                        .min((warmup + duration).as_millis() as u64),
                );
                if now < window {
                    bar.set_message("warming up (not counted)");
                } else {
                    let measured = now.duration_since(window);
                    let ops = done.load(Ordering::Relaxed);
                    bar.set_message(format!(
                        "{ops} ops, {:.0} ops/s, {} errors",
                        ops as f64 / measured.as_secs_f64().max(0.001),
                        failed.load(Ordering::Relaxed)
                    ));
                }
            }
        }
    }
    // The window, from its start until the last counted operation ended.
    let secs = Instant::now()
        .saturating_duration_since(window)
        .as_secs_f64();
    let cpu_at_end = cluster_cpu_seconds(&clients[0]).await;
    bar.finish_and_clear();
    let mut report = Report::new(
        workload_name(args.op, args.consistency),
        args.clients,
        &merged,
        failed.load(Ordering::Relaxed),
        secs,
    );
    if let (Ok(Some(start)), Some(end)) = (cpu_at_window.await, cpu_at_end) {
        report.server_cpu_secs = Some((end - start).max(0.0));
    }
    report
}

/// The CPU seconds the nodes at the client's endpoints have used so far,
/// or None if one of them cannot say.
async fn cluster_cpu_seconds(client: &Client) -> Option<f64> {
    let mut total = 0.0;
    for endpoint in client.endpoints() {
        total += client.status_of(endpoint).await.ok()?.cpu_seconds?;
    }
    Some(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn histogram(values_us: &[u64]) -> Histogram<u64> {
        let mut h = Histogram::<u64>::new_with_bounds(1, MAX_LATENCY_US, 3).unwrap();
        for v in values_us {
            h.record(*v).unwrap();
        }
        h
    }

    #[test]
    fn reports_have_the_benchmarks_md_fields() {
        // 1000 operations: 980 of 1 ms, 15 of 5 ms, 5 of 20 ms.
        let mut values = vec![1000; 980];
        values.extend([5000; 15]);
        values.extend([20_000; 5]);
        let report = Report::new("put".into(), 4, &histogram(&values), 2, 2.0);
        assert_eq!(report.ops, 1000);
        assert_eq!(report.ops_per_sec(), 500.0);
        let json = report.json();
        for field in [
            "workload",
            "clients",
            "ops",
            "secs",
            "ops_per_sec",
            "p50_ms",
            "p99_ms",
            "p999_ms",
            "errors",
            "cpu_us_per_op",
        ] {
            assert!(json.get(field).is_some(), "{field} missing from {json}");
        }
        // The histogram keeps 3 significant digits: within 0.1%.
        let close = |field: &str, expected: f64| {
            let got = json[field].as_f64().unwrap();
            assert!(
                (got - expected).abs() <= expected / 1000.0,
                "{field}: {got} is not {expected}"
            );
        };
        close("p50_ms", 1.0);
        close("p99_ms", 5.0);
        close("p999_ms", 20.0);
        assert_eq!(json["errors"], 2);
        assert_eq!(json["cpu_us_per_op"], Value::Null);
        // 1.5 CPU seconds over 1000 operations.
        let measured = Report {
            server_cpu_secs: Some(1.5),
            ..report
        };
        assert_eq!(measured.json()["cpu_us_per_op"], 1500.0);
        // One line when printed compactly.
        assert!(!json.to_string().contains('\n'));
    }

    #[test]
    fn the_histogram_doubles_its_buckets_up_to_the_maximum() {
        let report = Report::new(
            "get-linearizable".into(),
            1,
            &histogram(&[300, 300, 900, 3000]),
            0,
            1.0,
        );
        let bounds: Vec<f64> = report.buckets.iter().map(|(b, _)| *b).collect();
        assert_eq!(bounds, [0.5, 1.0, 2.0, 4.0]);
        let counts: Vec<u64> = report.buckets.iter().map(|(_, c)| *c).collect();
        assert_eq!(counts, [2, 1, 0, 1]);
        let text = report.text();
        assert!(
            text.contains("get-linearizable") && text.contains("P99.9"),
            "{text}"
        );
        assert!(
            text.contains("########################################"),
            "{text}"
        );
    }

    #[test]
    fn empty_runs_do_not_divide_by_zero() {
        let report = Report::new("put".into(), 1, &histogram(&[]), 5, 0.0);
        assert_eq!(report.ops_per_sec(), 0.0);
        assert_eq!(report.p99_ms, 0.0);
        assert!(report.buckets.is_empty());
    }

    #[test]
    fn keys_spread_over_the_key_space() {
        let mut picker = KeyPicker::new(1);
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..1000 {
            let k = picker.next(10);
            assert!(k < 10);
            seen.insert(k);
        }
        assert_eq!(seen.len(), 10);
        assert_eq!(
            workload_name(BenchOp::Mixed, ConsistencyArg::Lease),
            "mixed-lease"
        );
    }
}
