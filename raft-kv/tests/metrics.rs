//! /metrics as operators expect it: every family has HELP text and a type,
//! latencies are histograms (aggregatable across nodes, not summaries), the
//! figures operators watch first are there (fsync and batch sizes, apply
//! lag, pending proposals, peer round-trip times, process CPU, memory and
//! files), and the whole page parses as Prometheus text format (the parser
//! below follows the exposition format: names, labels, values, cumulative
//! buckets ending in `+Inf` equal to `_count`). When `promtool` (Debian's
//! `prometheus` package) is installed, it must accept the page too.

mod common;

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use common::TestCluster;

/// One sample line: `name{label="value",...} value`.
#[derive(Debug)]
struct Sample {
    name: String,
    labels: Vec<(String, String)>,
    value: f64,
}

fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

/// Parses every sample line, panicking on anything the text format does
/// not allow.
fn parse_samples(body: &str) -> Vec<Sample> {
    let mut samples = Vec::new();
    for line in body.lines() {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (name, rest) = match line.find('{') {
            Some(brace) => (&line[..brace], &line[brace..]),
            None => line.split_once(' ').expect("a sample has a value"),
        };
        assert!(valid_name(name), "bad metric name in {line:?}");
        let mut labels = Vec::new();
        let value_part = if let Some(inner) = rest.strip_prefix('{') {
            let close = inner
                .find('}')
                .unwrap_or_else(|| panic!("unclosed labels: {line:?}"));
            let mut text = &inner[..close];
            while !text.is_empty() {
                let (key, after) = text
                    .split_once("=\"")
                    .unwrap_or_else(|| panic!("bad label: {line:?}"));
                assert!(valid_name(key), "bad label name in {line:?}");
                let end = after
                    .find('"')
                    .unwrap_or_else(|| panic!("unclosed label value: {line:?}"));
                labels.push((key.to_string(), after[..end].to_string()));
                text = after[end + 1..].trim_start_matches(',');
            }
            inner[close + 1..].trim()
        } else {
            rest.trim()
        };
        let value_text = value_part.split_whitespace().next().unwrap_or_default();
        let value = match value_text {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            "NaN" => f64::NAN,
            other => other
                .parse()
                .unwrap_or_else(|_| panic!("bad value {other:?} in {line:?}")),
        };
        samples.push(Sample {
            name: name.to_string(),
            labels,
            value,
        });
    }
    samples
}

/// The family a sample belongs to: histograms' `_bucket`, `_sum` and
/// `_count` series belong to the histogram.
fn family_of<'a>(name: &'a str, typed: &BTreeSet<String>) -> &'a str {
    for suffix in ["_bucket", "_sum", "_count"] {
        if let Some(base) = name.strip_suffix(suffix)
            && typed.contains(base)
        {
            return base;
        }
    }
    name
}

/// Buckets are cumulative and end with `le="+Inf"`, which equals `_count`.
fn check_histograms(samples: &[Sample], typed: &BTreeSet<String>) {
    use std::collections::BTreeMap;
    type Series = (String, Vec<(String, String)>);
    let mut series: BTreeMap<Series, Vec<(f64, f64)>> = BTreeMap::new();
    let mut counts = BTreeMap::new();
    for sample in samples {
        if let Some(base) = sample
            .name
            .strip_suffix("_bucket")
            .filter(|b| typed.contains(*b))
        {
            let le = sample
                .labels
                .iter()
                .find(|(k, _)| k == "le")
                .map(|(_, v)| v.clone())
                .expect("a bucket has an le label");
            let bound: f64 = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().unwrap()
            };
            let others: Vec<_> = sample
                .labels
                .iter()
                .filter(|(k, _)| k != "le")
                .cloned()
                .collect();
            series
                .entry((base.to_string(), others))
                .or_default()
                .push((bound, sample.value));
        } else if let Some(base) = sample
            .name
            .strip_suffix("_count")
            .filter(|b| typed.contains(*b))
        {
            counts.insert((base.to_string(), sample.labels.clone()), sample.value);
        }
    }
    assert!(!series.is_empty(), "no histogram series");
    for (key, buckets) in &series {
        assert!(
            buckets
                .windows(2)
                .all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1),
            "{key:?}: buckets not increasing and cumulative: {buckets:?}"
        );
        let last = buckets.last().unwrap();
        assert!(last.0.is_infinite(), "{key:?} has no +Inf bucket");
        assert_eq!(
            Some(&last.1),
            counts.get(key),
            "{key:?}: +Inf bucket != _count"
        );
    }
}

fn scrape(address: SocketAddr) -> String {
    let mut stream = TcpStream::connect(address).expect("connect to /metrics");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream
        .write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").expect("an HTTP response");
    assert!(
        head.starts_with("HTTP/1.") && head.contains(" 200"),
        "{head}"
    );
    body.to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn metrics_have_help_histograms_and_the_figures_operators_watch() {
    let cluster = TestCluster::start(3, |c| {
        c.metrics_listen = Some("127.0.0.1:0".parse().unwrap());
    })
    .await;
    let client = cluster.client().await;
    for i in 0..20 {
        client.put(format!("k{i}"), "v").await.unwrap();
        client.get(format!("k{i}")).await.unwrap();
    }
    // Housekeeping publishes the raft counters every few seconds.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let address = cluster.servers[0].metrics_addr().expect("metrics address");
    let body = tokio::task::spawn_blocking(move || scrape(address))
        .await
        .unwrap();

    // HELP and TYPE for every family, HELP first.
    let mut helped = BTreeSet::new();
    let mut typed = BTreeSet::new();
    for line in body.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').unwrap_or((rest, ""));
            assert!(!help.trim().is_empty(), "empty help: {line}");
            helped.insert(name.to_string());
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap();
            assert!(helped.contains(name), "no HELP before {line}");
            assert_ne!(kind, "summary", "{name} is a summary, not a histogram");
            typed.insert(name.to_string());
        }
    }
    let samples = parse_samples(&body);
    for sample in &samples {
        let family = family_of(&sample.name, &typed);
        assert!(helped.contains(family), "{} has no HELP text", sample.name);
    }
    check_histograms(&samples, &typed);
    for (name, kind) in [
        ("kv_request_seconds", "histogram"),
        ("raft_log_write_seconds", "histogram"),
        ("raft_log_write_entries", "histogram"),
        ("raft_log_write_batches", "histogram"),
        ("raft_apply_lag", "gauge"),
        ("raft_proposals_pending", "gauge"),
        ("raft_peer_rtt_seconds", "gauge"),
        ("raft_commit_index", "gauge"),
        ("raft_elections_started_total", "counter"),
        ("process_cpu_seconds_total", "counter"),
        ("process_resident_memory_bytes", "gauge"),
        ("process_open_fds", "gauge"),
        ("process_start_time_seconds", "gauge"),
    ] {
        assert!(
            body.contains(&format!("# TYPE {name} {kind}\n")),
            "{name} missing or not a {kind}:\n{body}"
        );
    }
    let rtt = samples
        .iter()
        .filter(|s| s.name == "raft_peer_rtt_seconds")
        .count();
    assert_eq!(rtt, 2, "one round-trip time per peer:\n{body}");

    // promtool, when installed (the system-package check does not install
    // it: it is an operator's tool, not a build dependency).
    let promtool = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn();
    match promtool {
        Ok(mut child) => {
            child
                .stdin
                .take()
                .unwrap()
                .write_all(body.as_bytes())
                .unwrap();
            let out = child.wait_with_output().unwrap();
            assert!(
                out.status.success(),
                "promtool check metrics: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            eprintln!("promtool check metrics accepted the page");
        }
        Err(e) => eprintln!("promtool is not installed ({e}); skipped that check"),
    }
    cluster.shutdown().await;
}
