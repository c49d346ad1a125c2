//! The report of a side-by-side run: a markdown table with the ratios
//! ours/etcd, the targets of BENCHMARKS.md checked, and two plots
//! (throughput and p99 latency against clients) as PNG.
//!
//! Input: the run's JSON lines, each the `raft-cli bench --json` or
//! `raft-bench etcd` line plus a `system` field (`raft-kv`, `etcd-tls`,
//! `etcd-plaintext`, or `raft-core` for W3's lines).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use plotters::prelude::*;
use serde_json::Value;

/// Where DejaVu Sans is on Debian (package fonts-dejavu-core).
const FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";

/// What to report.
#[derive(clap::Args, Debug)]
pub struct ReportArgs {
    /// The run's JSON lines.
    #[arg(long)]
    results: PathBuf,
    /// Where report.md, throughput.png and p99.png go.
    #[arg(long)]
    out: PathBuf,
    /// Free text for the report's header (machine, commit, settings).
    #[arg(long)]
    header: Option<String>,
}

/// One JSON line.
#[derive(Clone, Debug)]
struct Line {
    system: String,
    workload: String,
    clients: u64,
    ops_per_sec: f64,
    p50_ms: f64,
    p99_ms: f64,
    p999_ms: f64,
    errors: u64,
    cpu_us_per_op: Option<f64>,
    /// The servers' resident set, MiB per server: the peak during the
    /// window, or (workload `idle`) once started.
    rss_mib: Option<f64>,
    /// The whole line, for the fields only some workloads have (W4's).
    raw: Value,
}

fn parse(text: &str) -> Result<Vec<Line>> {
    let mut lines = Vec::new();
    for (n, raw) in text.lines().enumerate() {
        if raw.trim().is_empty() {
            continue;
        }
        let v: Value =
            serde_json::from_str(raw).with_context(|| format!("line {}: not JSON", n + 1))?;
        let text = |k: &str| v[k].as_str().map(str::to_string);
        let num = |k: &str| v[k].as_f64();
        let (Some(system), Some(workload), Some(clients), Some(ops_per_sec)) = (
            text("system"),
            text("workload"),
            v["clients"].as_u64(),
            num("ops_per_sec"),
        ) else {
            bail!(
                "line {}: system, workload, clients and ops_per_sec are needed: {raw}",
                n + 1
            );
        };
        lines.push(Line {
            system,
            workload,
            clients,
            ops_per_sec,
            p50_ms: num("p50_ms").unwrap_or(0.0),
            p99_ms: num("p99_ms").unwrap_or(0.0),
            p999_ms: num("p999_ms").unwrap_or(0.0),
            errors: v["errors"].as_u64().unwrap_or(0),
            cpu_us_per_op: num("cpu_us_per_op"),
            rss_mib: num("rss_mib"),
            raw: v,
        });
    }
    Ok(lines)
}

/// Writes the report and the plots; returns the report's path.
pub fn run(args: ReportArgs) -> Result<PathBuf> {
    let text = std::fs::read_to_string(&args.results)
        .with_context(|| format!("cannot read {}", args.results.display()))?;
    let lines = parse(&text)?;
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("cannot create {}", args.out.display()))?;
    let markdown = markdown(&lines, args.header.as_deref().unwrap_or(""));
    let path = args.out.join("report.md");
    std::fs::write(&path, markdown).with_context(|| format!("cannot write {}", path.display()))?;
    load_font()?;
    plot(
        &lines,
        &args.out.join("throughput.png"),
        "W1 puts: throughput",
        "ops/s",
        |l| l.ops_per_sec,
        false,
    )?;
    plot(
        &lines,
        &args.out.join("p99.png"),
        "W1 puts: p99 latency",
        "p99 ms (log)",
        |l| l.p99_ms,
        true,
    )?;
    Ok(path)
}

fn find<'a>(lines: &'a [Line], system: &str, workload: &str, clients: u64) -> Option<&'a Line> {
    lines
        .iter()
        .find(|l| l.system == system && l.workload == workload && l.clients == clients)
}

fn ratio(ours: f64, theirs: f64) -> String {
    if theirs > 0.0 {
        format!("{:.2}×", ours / theirs)
    } else {
        "–".into()
    }
}

fn opt(v: Option<f64>, digits: usize) -> String {
    v.map_or("–".into(), |v| format!("{v:.digits$}"))
}

fn markdown(lines: &[Line], header: &str) -> String {
    let mut out = String::from("# raft-kv beside etcd\n\n");
    if !header.is_empty() {
        out.push_str(header.trim_end());
        out.push_str("\n\n");
    }
    out.push_str(
        "Closed-loop clients, 256 B values, 3 nodes on this machine, fsync on; mutual TLS on \
         both (etcd on client and peer traffic, certificates from our CA). Ratios are \
         raft-kv / etcd with TLS in the same run; CPU-µs/op is the CPU time of all server \
         processes in the window divided by the operations.\n\n",
    );
    out.push_str(
        "| workload | clients | raft-kv ops/s | etcd TLS ops/s | ratio | raft-kv p99 ms | etcd TLS p99 ms \
         | raft-kv p999 ms | etcd TLS p999 ms | raft-kv CPU-µs/op | etcd TLS CPU-µs/op | CPU ratio \
         | etcd plaintext ops/s |\n",
    );
    out.push_str("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    let mut keys: Vec<(String, u64)> = lines
        .iter()
        .filter(|l| {
            l.system != "raft-core" && l.workload != "idle" && !l.workload.starts_with("w4-")
        })
        .map(|l| (l.workload.clone(), l.clients))
        .collect();
    keys.sort_by_key(|k| (workload_rank(&k.0), k.1));
    keys.dedup();
    let mut errors = Vec::new();
    for (workload, clients) in &keys {
        let ours = find(lines, "raft-kv", workload, *clients);
        let tls = find(lines, "etcd-tls", workload, *clients);
        let plain = find(lines, "etcd-plaintext", workload, *clients);
        for l in [ours, tls, plain].into_iter().flatten() {
            if l.errors > 0 {
                errors.push(format!(
                    "{} {} at {} clients: {} errors",
                    l.system, l.workload, l.clients, l.errors
                ));
            }
        }
        let label = if workload.contains("lease") {
            format!("{workload} (raft-kv only)")
        } else {
            workload.clone()
        };
        let _ = writeln!(
            out,
            "| {label} | {clients} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            opt(ours.map(|l| l.ops_per_sec), 0),
            opt(tls.map(|l| l.ops_per_sec), 0),
            match (ours, tls) {
                (Some(o), Some(t)) => ratio(o.ops_per_sec, t.ops_per_sec),
                _ => "–".into(),
            },
            opt(ours.map(|l| l.p99_ms), 1),
            opt(tls.map(|l| l.p99_ms), 1),
            opt(ours.map(|l| l.p999_ms), 1),
            opt(tls.map(|l| l.p999_ms), 1),
            opt(ours.and_then(|l| l.cpu_us_per_op), 0),
            opt(tls.and_then(|l| l.cpu_us_per_op), 0),
            match (
                ours.and_then(|l| l.cpu_us_per_op),
                tls.and_then(|l| l.cpu_us_per_op)
            ) {
                (Some(o), Some(t)) => ratio(o, t),
                _ => "–".into(),
            },
            opt(plain.map(|l| l.ops_per_sec), 0),
        );
    }
    if !errors.is_empty() {
        out.push_str("\nErrors during the window: ");
        out.push_str(&errors.join("; "));
        out.push('\n');
    }
    out.push_str("\n![throughput](throughput.png)\n![p99](p99.png)\n");
    out.push_str(&targets(lines));
    out.push_str(&memory(lines, &keys));
    out.push_str(&scale(lines));
    let core: Vec<&Line> = lines.iter().filter(|l| l.system == "raft-core").collect();
    if !core.is_empty() {
        out.push_str(
            "\n## W3: raft-core alone\n\nThree nodes in one process, in-memory log, no I/O, \
             64 B commands (`cargo bench -p raft-core --bench w3`).\n\n\
             | clients | commands/s | p50 ms | p99 ms | CPU-µs/command |\n|---:|---:|---:|---:|---:|\n",
        );
        for l in core {
            let _ = writeln!(
                out,
                "| {} | {:.0} | {:.3} | {:.3} | {} |",
                l.clients,
                l.ops_per_sec,
                l.p50_ms,
                l.p99_ms,
                opt(l.cpu_us_per_op, 2)
            );
        }
    }
    out
}

/// W4's restart and catch-up, when measured (`cargo xtask bench --w4`).
fn scale(lines: &[Line]) -> String {
    let restart = lines.iter().find(|l| l.workload == "w4-restart");
    let catch_up = lines.iter().find(|l| l.workload == "w4-catch-up");
    if restart.is_none() && catch_up.is_none() && !lines.iter().any(|l| l.workload == "w4-put") {
        return String::new();
    }
    let mut out = String::from("\n## W4: scale\n\n");
    let field = |l: &Line, k: &str| l.raw[k].as_f64().unwrap_or(f64::NAN);
    if let Some(l) = restart {
        let _ = writeln!(
            out,
            "- A follower restarted on a log of {:.0} entries (no snapshot): answering after \
             {:.1} s, all of them applied again after {:.1} s.",
            field(l, "entries"),
            field(l, "serving_secs"),
            field(l, "caught_up_secs")
        );
    }
    if let Some(l) = catch_up {
        let _ = writeln!(
            out,
            "- A node added to a cluster holding {:.0} keys of 256 B (snapshot file {:.0} MiB): \
             snapshot installed and caught up {:.1} s after `raft-cli add-node`.",
            field(l, "keys"),
            field(l, "snapshot_bytes") / (1u64 << 20) as f64,
            field(l, "caught_up_secs")
        );
    }
    let mut at_scale: Vec<&Line> = lines.iter().filter(|l| l.workload == "w4-put").collect();
    at_scale.sort_by(|a, b| field(a, "keys").total_cmp(&field(b, "keys")));
    let stopped = at_scale
        .iter()
        .rfind(|l| l.raw["stopped_at_keys"].is_u64())
        .copied();
    if let Some(large) = stopped {
        let reached = field(large, "stopped_at_keys");
        let rss = large.rss_mib.unwrap_or(f64::NAN);
        let _ = writeln!(
            out,
            "- W1 over {:.0} keys: not reached on this machine. The preload was stopped at about \
             {reached:.0} keys, when free memory fell under {:.0} MiB, with {rss:.0} MiB per \
             server at the peak (three servers on one machine hold the state three times; about \
             {:.0} bytes of memory per key of 270 bytes).",
            field(large, "keys"),
            field(large, "memory_floor_mib"),
            rss * (1u64 << 20) as f64 / reached.max(1.0)
        );
    } else if let [small, .., large] = at_scale[..] {
        let _ = writeln!(
            out,
            "- W1 at {} clients over {:.0} keys, every one written first: {:.0} puts/s (p99 {:.1} \
             ms, {:.0} MiB per server at the peak), against {:.0} puts/s (p99 {:.1} ms, {:.0} MiB) \
             over {:.0} keys: {:.2}× (BENCHMARKS.md: within 10%, so at least 0.90×).",
            large.clients,
            field(large, "keys"),
            large.ops_per_sec,
            large.p99_ms,
            large.rss_mib.unwrap_or(f64::NAN),
            small.ops_per_sec,
            small.p99_ms,
            small.rss_mib.unwrap_or(f64::NAN),
            field(small, "keys"),
            large.ops_per_sec / small.ops_per_sec
        );
    } else {
        out.push_str("- W1 at 10,000,000 keys: not measured in this run.\n");
    }
    out
}

/// Resident memory per server, idle and at the peak of each window.
fn memory(lines: &[Line], keys: &[(String, u64)]) -> String {
    if !lines.iter().any(|l| l.rss_mib.is_some()) {
        return String::new();
    }
    let mut out = String::from(
        "\n## Memory (W4, part)\n\nResident set per server process in MiB (mean of the three), from \
         /proc: once started and idle, and the highest seen (sampled every 200 ms) during each \
         window.\n\n| workload | clients | raft-kv MiB | etcd TLS MiB | etcd plaintext MiB |\n\
         |---|---:|---:|---:|---:|\n",
    );
    let idle = ("idle".to_string(), 0);
    for (workload, clients) in std::iter::once(&idle).chain(keys) {
        let rss = |system: &str| find(lines, system, workload, *clients).and_then(|l| l.rss_mib);
        let _ = writeln!(
            out,
            "| {workload} | {clients} | {} | {} | {} |",
            opt(rss("raft-kv"), 0),
            opt(rss("etcd-tls"), 0),
            opt(rss("etcd-plaintext"), 0),
        );
    }
    out
}

fn workload_rank(workload: &str) -> u8 {
    match workload {
        "put" => 0,
        "get-linearizable" => 1,
        _ => 2,
    }
}

/// The targets of BENCHMARKS.md, each met or not in this run.
fn targets(lines: &[Line]) -> String {
    let mut out = String::from("\n## Targets (BENCHMARKS.md), this run\n\n");
    let pair = |workload: &str, clients: u64| {
        Some((
            find(lines, "raft-kv", workload, clients)?,
            find(lines, "etcd-tls", workload, clients)?,
        ))
    };
    let mut check = |what: String, met: Option<bool>| {
        let mark = match met {
            Some(true) => "met",
            Some(false) => "**not met**",
            None => "not measured",
        };
        let _ = writeln!(out, "- {what}: {mark}");
    };
    for clients in [256, 1024] {
        let met = pair("put", clients).map(|(o, t)| o.ops_per_sec >= 3.0 * t.ops_per_sec);
        check(format!("W1 throughput ≥ 3× etcd at {clients} clients"), met);
    }
    let clients: Vec<u64> = {
        let mut c: Vec<u64> = lines
            .iter()
            .filter(|l| l.workload == "put")
            .map(|l| l.clients)
            .collect();
        c.sort();
        c.dedup();
        c
    };
    let slower: Vec<u64> = clients
        .iter()
        .filter(|c| pair("put", **c).is_some_and(|(o, t)| o.p99_ms > t.p99_ms))
        .copied()
        .collect();
    let measured = clients.iter().any(|c| pair("put", *c).is_some());
    check(
        format!(
            "W1 p99 ≤ etcd's at every client count{}",
            if slower.is_empty() {
                String::new()
            } else {
                format!(" (above it at {slower:?})")
            }
        ),
        measured.then_some(slower.is_empty()),
    );
    let costly: Vec<u64> = clients
        .iter()
        .filter(|c| {
            pair("put", **c).is_some_and(|(o, t)| match (o.cpu_us_per_op, t.cpu_us_per_op) {
                (Some(o), Some(t)) => o * 3.0 > t,
                _ => true,
            })
        })
        .copied()
        .collect();
    check(
        format!(
            "W1 CPU-µs/op ≤ 1/3 of etcd's{}",
            if costly.is_empty() {
                String::new()
            } else {
                format!(" (above it at {costly:?})")
            }
        ),
        measured.then_some(costly.is_empty()),
    );
    let met = pair("get-linearizable", 256).map(|(o, t)| o.ops_per_sec >= 6.0 * t.ops_per_sec);
    check("W2 linearizable gets ≥ 6× etcd at 256 clients".into(), met);
    out
}

fn load_font() -> Result<()> {
    let bytes = std::fs::read(FONT).with_context(|| {
        format!("cannot read the font {FONT} for the plots; install it with `apt-get install fonts-dejavu-core`")
    })?;
    let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
    plotters::style::register_font("sans-serif", FontStyle::Normal, bytes)
        .map_err(|_| anyhow::anyhow!("{FONT} is not a font plotters can read"))
}

/// One line per system of `metric` against clients for the puts.
fn plot(
    lines: &[Line],
    path: &Path,
    title: &str,
    y_label: &str,
    metric: impl Fn(&Line) -> f64,
    log_y: bool,
) -> Result<()> {
    let mut series: BTreeMap<&str, Vec<(f64, f64)>> = BTreeMap::new();
    for l in lines.iter().filter(|l| l.workload == "put") {
        series
            .entry(l.system.as_str())
            .or_default()
            .push((l.clients as f64, metric(l).max(1e-3)));
    }
    if series.is_empty() {
        return Ok(());
    }
    for points in series.values_mut() {
        points.sort_by(|a, b| a.0.total_cmp(&b.0));
    }
    let all = series.values().flatten();
    let max_x = all.clone().map(|p| p.0).fold(1.0, f64::max) * 1.5;
    let max_y = all.clone().map(|p| p.1).fold(1e-3, f64::max) * 1.2;
    let min_y = all.map(|p| p.1).fold(f64::MAX, f64::min).max(1e-3) / 1.5;
    let root = BitMapBackend::new(path, (900, 560)).into_drawing_area();
    root.fill(&WHITE).map_err(draw_error)?;
    let colours = |system: &str| match system {
        "raft-kv" => RGBColor(0x1f, 0x77, 0xb4),
        "etcd-tls" => RGBColor(0xd6, 0x27, 0x28),
        _ => RGBColor(0x7f, 0x7f, 0x7f),
    };
    let mut builder = ChartBuilder::on(&root);
    builder
        .caption(title, ("sans-serif", 24))
        .margin(16)
        .x_label_area_size(48)
        .y_label_area_size(80);
    macro_rules! draw {
        ($chart:expr) => {{
            let mut chart = $chart;
            chart
                .configure_mesh()
                .x_desc("concurrent clients (log)")
                .y_desc(y_label)
                .label_style(("sans-serif", 14))
                .x_label_formatter(&|x| format!("{x:.0}"))
                .y_label_formatter(&|y| {
                    if *y >= 10.0 {
                        format!("{y:.0}")
                    } else {
                        format!("{y}")
                    }
                })
                .draw()
                .map_err(draw_error)?;
            for (system, points) in &series {
                let colour = colours(system);
                chart
                    .draw_series(LineSeries::new(
                        points.iter().copied(),
                        colour.stroke_width(2),
                    ))
                    .map_err(draw_error)?
                    .label(*system)
                    .legend(move |(x, y)| {
                        PathElement::new(vec![(x, y), (x + 20, y)], colour.stroke_width(2))
                    });
                chart
                    .draw_series(points.iter().map(|p| Circle::new(*p, 4, colour.filled())))
                    .map_err(draw_error)?;
            }
            chart
                .configure_series_labels()
                .label_font(("sans-serif", 16))
                .background_style(WHITE.mix(0.8))
                .border_style(BLACK)
                .position(SeriesLabelPosition::UpperLeft)
                .draw()
                .map_err(draw_error)?;
        }};
    }
    if log_y {
        draw!(
            builder
                .build_cartesian_2d((0.8f64..max_x).log_scale(), (min_y..max_y).log_scale())
                .map_err(draw_error)?
        );
    } else {
        draw!(
            builder
                .build_cartesian_2d((0.8f64..max_x).log_scale(), 0f64..max_y)
                .map_err(draw_error)?
        );
    }
    root.present().map_err(draw_error)?;
    Ok(())
}

fn draw_error(e: impl std::fmt::Display) -> anyhow::Error {
    anyhow::anyhow!("drawing a plot failed: {e}")
}

#[cfg(test)]
mod tests {
    use super::*;

    const RUN: &str = r#"
{"system":"raft-kv","workload":"put","clients":1,"ops":100,"secs":1.0,"ops_per_sec":600.0,"p50_ms":1.5,"p99_ms":3.0,"p999_ms":4.0,"errors":0,"cpu_us_per_op":1900.0}
{"system":"etcd-tls","workload":"put","clients":1,"ops":100,"secs":1.0,"ops_per_sec":500.0,"p50_ms":1.8,"p99_ms":5.0,"p999_ms":6.0,"errors":0,"cpu_us_per_op":2300.0}
{"system":"etcd-plaintext","workload":"put","clients":1,"ops":100,"secs":1.0,"ops_per_sec":800.0,"p50_ms":1.0,"p99_ms":2.0,"p999_ms":3.0,"errors":0,"cpu_us_per_op":1200.0}
{"system":"raft-kv","rss_mib":40.5,"workload":"idle","clients":0,"ops":0,"secs":0,"ops_per_sec":0}
{"system":"etcd-tls","rss_mib":30.2,"workload":"idle","clients":0,"ops":0,"secs":0,"ops_per_sec":0}
{"system":"raft-kv","rss_mib":120.4,"workload":"put","clients":256,"ops":100,"secs":1.0,"ops_per_sec":15000.0,"p50_ms":10.0,"p99_ms":30.0,"p999_ms":40.0,"errors":2,"cpu_us_per_op":100.0}
{"system":"etcd-tls","rss_mib":90.0,"workload":"put","clients":256,"ops":100,"secs":1.0,"ops_per_sec":4000.0,"p50_ms":50.0,"p99_ms":120.0,"p999_ms":140.0,"errors":0,"cpu_us_per_op":340.0}
{"system":"raft-kv","workload":"get-lease","clients":256,"ops":100,"secs":1.0,"ops_per_sec":30000.0,"p50_ms":5.0,"p99_ms":9.0,"p999_ms":12.0,"errors":0,"cpu_us_per_op":40.0}
{"system":"raft-kv","workload":"w4-restart","clients":0,"ops":0,"secs":9.5,"ops_per_sec":0,"entries":1000000,"serving_secs":2.4,"caught_up_secs":9.5}
{"system":"raft-kv","rss_mib":300.0,"workload":"w4-put","keys":100000,"clients":256,"ops":100,"secs":1.0,"ops_per_sec":20000.0,"p50_ms":10.0,"p99_ms":25.0,"p999_ms":40.0,"errors":0,"cpu_us_per_op":60.0}
{"system":"raft-kv","rss_mib":4000.0,"workload":"w4-put","keys":10000000,"clients":256,"ops":100,"secs":1.0,"ops_per_sec":19000.0,"p50_ms":11.0,"p99_ms":27.5,"p999_ms":40.0,"errors":0,"cpu_us_per_op":62.0}
{"system":"raft-kv","rss_mib":6000.0,"workload":"w4-put","keys":20000000,"clients":256,"ops":0,"secs":0,"ops_per_sec":0,"stopped_at_keys":9000000,"memory_floor_mib":2048}
{"system":"raft-core","workload":"w3","clients":64,"ops":100,"secs":1.0,"ops_per_sec":2000000.0,"p50_ms":0.02,"p99_ms":0.04,"p999_ms":0.05,"errors":0,"cpu_us_per_op":0.41}
"#;

    #[test]
    fn the_table_pairs_the_systems_and_checks_the_targets() {
        let run: String = RUN
            .lines()
            .filter(|l| !l.contains("stopped_at_keys"))
            .collect::<Vec<_>>()
            .join("\n");
        let md = markdown(&parse(&run).unwrap(), "machine: test");
        assert!(md.contains("machine: test"), "{md}");
        assert!(
            md.contains("| put | 1 | 600 | 500 | 1.20× | 3.0 | 5.0 | 4.0 | 6.0 | 1900 | 2300 | 0.83× | 800 |"),
            "{md}"
        );
        assert!(md.contains("| put | 256 | 15000 | 4000 | 3.75× |"), "{md}");
        assert!(
            md.contains("| get-lease (raft-kv only) | 256 | 30000 | – | – |"),
            "{md}"
        );
        assert!(md.contains("raft-kv put at 256 clients: 2 errors"), "{md}");
        assert!(
            md.contains("W1 throughput ≥ 3× etcd at 256 clients: met"),
            "{md}"
        );
        assert!(
            md.contains("W1 throughput ≥ 3× etcd at 1024 clients: not measured"),
            "{md}"
        );
        assert!(
            md.contains("W1 p99 ≤ etcd's at every client count: met"),
            "{md}"
        );
        // 1900 > 2300 / 3 at one client.
        assert!(
            md.contains("CPU-µs/op ≤ 1/3 of etcd's (above it at [1]): **not met**"),
            "{md}"
        );
        assert!(
            md.contains("| 64 | 2000000 | 0.020 | 0.040 | 0.41 |"),
            "{md}"
        );
        // Idle lines stay out of the throughput table, into the memory one.
        assert!(!md.contains("| idle | 0 | 0 |"), "{md}");
        assert!(md.contains("| idle | 0 | 40 | 30 | – |"), "{md}");
        assert!(md.contains("| put | 256 | 120 | 90 | – |"), "{md}");
        assert!(!md.contains("| w4-restart |"), "{md}");
        assert!(!md.contains("| w4-put |"), "{md}");
        assert!(
            md.contains("W1 at 256 clients over 10000000 keys, every one written first: 19000 puts/s (p99 27.5 ms, 4000 MiB per server at the peak), against 20000 puts/s (p99 25.0 ms, 300 MiB) over 100000 keys: 0.95×"),
            "{md}"
        );
        assert!(
            md.contains("log of 1000000 entries (no snapshot): answering after 2.4 s, all of them applied again after 9.5 s."),
            "{md}"
        );
    }

    #[test]
    fn a_scale_run_stopped_for_memory_says_how_far_it_got() {
        let md = markdown(&parse(RUN).unwrap(), "machine: test");
        assert!(
            md.contains("W1 over 20000000 keys: not reached on this machine. The preload was stopped at about 9000000 keys, when free memory fell under 2048 MiB, with 6000 MiB per server at the peak"),
            "{md}"
        );
    }

    #[test]
    fn lines_without_the_fields_are_refused() {
        assert!(parse("{\"system\":\"x\"}").is_err());
        assert!(parse("not json").is_err());
    }

    #[test]
    fn plots_are_png_files() {
        if load_font().is_err() {
            eprintln!("skipped: {FONT} is missing (apt-get install fonts-dejavu-core)");
            return;
        }
        let dir = std::env::temp_dir().join(format!("raft-bench-plot-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("p99.png");
        plot(&parse(RUN).unwrap(), &path, "t", "ms", |l| l.p99_ms, true).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
        std::fs::remove_dir_all(dir).unwrap();
    }
}
