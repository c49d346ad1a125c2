//! The chaos checker (examples/chaos/checker.rs) against histories with
//! known verdicts, and against stateright's linearizability tester:
//!
//! - every verdict of `tests/data/linearizability` (102 Jepsen etcd
//!   histories of a compare-and-set register, 6 multi-key histories checked
//!   key by key, from Porcupine's test data, MIT); see that directory's
//!   README and LICENSE;
//! - stateright's `LinearizabilityTester` on generated histories shaped like
//!   the chaos runs' (a compare-and-swap register, concurrent processes,
//!   unknown outcomes), both linearizable ones and mutated ones.

#[path = "../examples/chaos/checker.rs"]
mod checker;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use checker::{
    AppendOp, AppendRegister, AppendRet, CasOp, CasRegister, CasRet, Operation, Rng, Verdict,
    check_stateright, check_wgl,
};

/// Generous: a budget, not a performance assertion.
const BUDGET: Duration = Duration::from_secs(120);

fn corpus() -> PathBuf {
    // Cargo's directory at run time: a shared target directory may hold a
    // test binary built in another checkout.
    let dir = std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| env!("CARGO_MANIFEST_DIR").into())
        .join("tests/data/linearizability");
    assert!(
        dir.join("README.md").is_file(),
        "the linearizability corpus is missing: expected it at {} (it is part of the \
         repository: restore raft-kv/tests/data/linearizability)",
        dir.display()
    );
    dir
}

// ------------------------------------------------------------ Jepsen etcd

/// Parses a Jepsen etcd log (`INFO  jepsen.util - 3 :invoke :write 4`, tab separated):
/// one operation per invocation, in line order; times are line numbers.
fn parse_jepsen(text: &str) -> Vec<Operation<CasOp, CasRet>> {
    let mut history = Vec::new();
    // Per process: the index of its operation in flight.
    let mut open: BTreeMap<u64, usize> = BTreeMap::new();
    // Operations that had no effect (failed reads) are removed at the end.
    let mut dropped = Vec::new();
    for (line_no, line) in text.lines().enumerate() {
        let time = line_no as u64;
        let Some((_, rest)) = line.split_once("jepsen.util - ") else {
            continue;
        };
        let tokens: Vec<&str> = rest.split_whitespace().collect();
        let [process, kind, f, value @ ..] = tokens.as_slice() else {
            panic!("line {}: cannot parse {line:?}", line_no + 1);
        };
        let Ok(process) = process.parse::<u64>() else {
            continue; // the nemesis
        };
        let value = value.join(" ");
        let cas_pair = || -> (String, String) {
            let inner = value.trim_start_matches('[').trim_end_matches(']');
            let (a, b) = inner
                .split_once(' ')
                .unwrap_or_else(|| panic!("line {}: bad cas {value:?}", line_no + 1));
            (a.to_string(), b.to_string())
        };
        match *kind {
            ":invoke" => {
                let op = match *f {
                    ":read" => CasOp::Read,
                    ":write" => CasOp::Write(value.clone()),
                    ":cas" => {
                        let (a, b) = cas_pair();
                        CasOp::Cas {
                            expected: Some(a),
                            new: Some(b),
                        }
                    }
                    other => panic!("line {}: unknown function {other}", line_no + 1),
                };
                assert!(
                    !open.contains_key(&process),
                    "line {}: process {process} invoked twice",
                    line_no + 1
                );
                open.insert(process, history.len());
                history.push(Operation {
                    process,
                    op,
                    ret: None,
                    invoke: time,
                    complete: time,
                });
            }
            ":ok" | ":fail" | ":info" => {
                let i = open
                    .remove(&process)
                    .unwrap_or_else(|| panic!("line {}: nothing in flight", line_no + 1));
                history[i].complete = time;
                history[i].ret = match (*kind, *f) {
                    (":ok", ":read") => {
                        Some(CasRet::ReadOk((value != "nil").then(|| value.clone())))
                    }
                    (":ok", ":write") => Some(CasRet::WriteOk),
                    (":ok", ":cas") => Some(CasRet::CasOk),
                    (":fail", ":cas") => Some(CasRet::CasFail),
                    // A failed read or write had no effect.
                    (":fail", _) => {
                        dropped.push(i);
                        None
                    }
                    // Unknown outcome.
                    (":info", _) => None,
                    other => panic!("line {}: unexpected completion {other:?}", line_no + 1),
                };
            }
            other => panic!("line {}: unknown type {other}", line_no + 1),
        }
    }
    // Still open at the end: unknown outcome (ret stays None).
    let mut keep = vec![true; history.len()];
    for i in dropped {
        keep[i] = false;
    }
    history
        .into_iter()
        .zip(keep)
        .filter_map(|(op, keep)| keep.then_some(op))
        .collect()
}

#[test]
fn checker_agrees_with_every_jepsen_etcd_verdict() {
    let dir = corpus().join("jepsen-etcd");
    let expected = std::fs::read_to_string(dir.join("EXPECTED.txt")).expect("EXPECTED.txt");
    let mut checked = 0;
    let mut linearizable = 0;
    let mut disagreements = Vec::new();
    let started = Instant::now();
    for line in expected.lines().filter(|l| !l.trim().is_empty()) {
        let (file, verdict) = line.split_once(' ').expect("`file verdict` lines");
        let want = match verdict.trim() {
            "linearizable" => true,
            "not-linearizable" => false,
            other => panic!("unknown verdict {other:?} in EXPECTED.txt"),
        };
        let text = std::fs::read_to_string(dir.join(file))
            .unwrap_or_else(|e| panic!("cannot read {file}: {e}"));
        let history = parse_jepsen(&text);
        assert!(!history.is_empty(), "{file}: no operations parsed");
        let got = check_wgl(CasRegister(None), &history, BUDGET);
        let ok = match &got {
            Verdict::Linearizable => want,
            Verdict::NotLinearizable(_) => !want,
            Verdict::Undecided(_) => false,
        };
        if !ok {
            disagreements.push(format!("{file}: expected {verdict}, checker said {got:?}"));
        }
        checked += 1;
        linearizable += usize::from(want);
    }
    eprintln!(
        "jepsen-etcd: {checked} histories ({linearizable} linearizable) checked in {:?}",
        started.elapsed()
    );
    assert_eq!(checked, 102, "EXPECTED.txt should list 102 histories");
    assert_eq!(linearizable, 23);
    assert!(
        disagreements.is_empty(),
        "the checker disagrees with the corpus:\n{}",
        disagreements.join("\n")
    );
}

// --------------------------------------------------------------------- kv

/// The value of `:name ` in an EDN map line: a keyword, number, string or
/// nil (`None`).
fn edn_field<'a>(line: &'a str, name: &str) -> Option<&'a str> {
    let pattern = format!(":{name} ");
    let start = line.find(&pattern)? + pattern.len();
    let rest = &line[start..];
    if let Some(quoted) = rest.strip_prefix('"') {
        return Some(&quoted[..quoted.find('"')?]);
    }
    let end = rest.find([',', '}']).unwrap_or(rest.len());
    let value = rest[..end].trim();
    (value != "nil").then_some(value)
}

/// Parses a kv history into one history per key.
fn parse_kv(text: &str) -> BTreeMap<String, Vec<Operation<AppendOp, AppendRet>>> {
    let mut by_key: BTreeMap<String, Vec<Operation<AppendOp, AppendRet>>> = BTreeMap::new();
    let mut open: BTreeMap<u64, (String, usize)> = BTreeMap::new();
    for (line_no, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let time = line_no as u64;
        let field = |name: &str| {
            edn_field(line, name)
                .unwrap_or_else(|| panic!("line {}: no :{name} in {line:?}", line_no + 1))
        };
        let process: u64 = field("process").parse().expect("a process number");
        let kind = field("type");
        let f = field("f");
        let key = field("key").to_string();
        let value = edn_field(line, "value").map(str::to_string);
        match kind {
            ":invoke" => {
                let op = match f {
                    ":get" => AppendOp::Get,
                    ":put" => AppendOp::Put(value.expect("put value")),
                    ":append" => AppendOp::Append(value.expect("append value")),
                    other => panic!("line {}: unknown :f {other}", line_no + 1),
                };
                let history = by_key.entry(key.clone()).or_default();
                open.insert(process, (key, history.len()));
                history.push(Operation {
                    process,
                    op,
                    ret: None,
                    invoke: time,
                    complete: time,
                });
            }
            ":ok" => {
                let (key, i) = open
                    .remove(&process)
                    .unwrap_or_else(|| panic!("line {}: nothing in flight", line_no + 1));
                let op = &mut by_key.get_mut(&key).expect("opened")[i];
                op.complete = time;
                op.ret = Some(match f {
                    ":get" => AppendRet::Value(value.unwrap_or_default()),
                    _ => AppendRet::Ok,
                });
            }
            other => panic!("line {}: unexpected :type {other}", line_no + 1),
        }
    }
    by_key
}

#[test]
fn checker_agrees_with_every_kv_verdict() {
    let dir = corpus().join("kv");
    let cases = [
        ("c01-ok.txt", true),
        ("c01-bad.txt", false),
        ("c10-ok.txt", true),
        ("c10-bad.txt", false),
        ("c50-ok.txt", true),
        ("c50-bad.txt", false),
    ];
    let mut disagreements = Vec::new();
    for (file, want) in cases {
        let started = Instant::now();
        let text = std::fs::read_to_string(dir.join(file))
            .unwrap_or_else(|e| panic!("cannot read kv/{file}: {e}"));
        let by_key = parse_kv(&text);
        assert!(!by_key.is_empty(), "kv/{file}: no operations parsed");
        // One key that is not linearizable decides the file (as Porcupine,
        // which stops at the first failing partition): an exhaustive search
        // of another bad key could take far longer. First a short budget per
        // key, then the full budget for the keys still undecided.
        let mut linearizable = true;
        let mut bad_keys = Vec::new();
        let mut undecided = Vec::new();
        for (key, history) in &by_key {
            match check_wgl(AppendRegister::default(), history, Duration::from_secs(5)) {
                Verdict::Linearizable => {}
                Verdict::NotLinearizable(_) => {
                    linearizable = false;
                    bad_keys.push(key.clone());
                    break;
                }
                Verdict::Undecided(_) => undecided.push(key.clone()),
            }
        }
        if linearizable {
            for key in undecided {
                match check_wgl(AppendRegister::default(), &by_key[&key], BUDGET) {
                    Verdict::Linearizable => {}
                    Verdict::NotLinearizable(_) => {
                        linearizable = false;
                        bad_keys.push(key.clone());
                        break;
                    }
                    Verdict::Undecided(why) => {
                        disagreements.push(format!("kv/{file} key {key}: undecided: {why}"));
                    }
                }
            }
        }
        eprintln!(
            "kv/{file}: {} keys, linearizable: {linearizable} (bad keys {bad_keys:?}), {:?}",
            by_key.len(),
            started.elapsed()
        );
        if linearizable != want {
            disagreements.push(format!(
                "kv/{file}: expected linearizable = {want}, checker said {linearizable}"
            ));
        }
    }
    assert!(
        disagreements.is_empty(),
        "the checker disagrees with the corpus:\n{}",
        disagreements.join("\n")
    );
}

// -------------------------------------------------------------- stateright

/// A history of a real compare-and-swap register accessed by concurrent
/// processes: every operation takes effect at a point between its
/// invocation and completion (an unknown outcome: at some point after its
/// invocation, or never), so the history is linearizable by construction.
fn generate(rng: &mut Rng) -> Vec<Operation<CasOp, CasRet>> {
    let processes = 2 + rng.below(3);
    let per_process = 2 + rng.below(4);
    // (invoke, effect point or None, complete, process, op)
    let mut ops = Vec::new();
    let mut written: Vec<String> = Vec::new();
    let mut next_value = 0;
    for process in 0..processes {
        let mut t = rng.below(10);
        for _ in 0..per_process {
            let invoke = t + rng.below(5);
            let complete = invoke + 1 + rng.below(20);
            let unknown = rng.chance(15);
            let effect = if unknown && rng.chance(50) {
                None
            } else if unknown {
                Some(invoke * 2 + 1 + rng.below(60))
            } else {
                Some(invoke * 2 + 1 + rng.below((complete - invoke) * 2 - 1))
            };
            let op = match rng.below(3) {
                0 => CasOp::Read,
                1 => {
                    next_value += 1;
                    let v = format!("v{next_value}");
                    written.push(v.clone());
                    CasOp::Write(v)
                }
                _ => {
                    next_value += 1;
                    let v = format!("v{next_value}");
                    let expected = if written.is_empty() || rng.chance(20) {
                        None
                    } else {
                        Some(written[rng.below(written.len() as u64) as usize].clone())
                    };
                    written.push(v.clone());
                    CasOp::Cas {
                        expected,
                        new: Some(v),
                    }
                }
            };
            ops.push((invoke, effect, complete, process, op, unknown));
            t = complete + 1;
            if unknown {
                break; // like Jepsen: a process with an unknown outcome stops
            }
        }
    }
    // Effects in order (times doubled so that effects fall strictly inside).
    let mut order: Vec<usize> = (0..ops.len()).filter(|&i| ops[i].1.is_some()).collect();
    order.sort_by_key(|&i| ops[i].1);
    let mut register = CasRegister(None);
    let mut rets = vec![None; ops.len()];
    for i in order {
        use stateright::semantics::SequentialSpec;
        rets[i] = Some(register.invoke(&ops[i].4));
    }
    ops.into_iter()
        .zip(rets)
        .map(
            |((invoke, _, complete, process, op, unknown), ret)| Operation {
                process,
                op: op.clone(),
                ret: if unknown {
                    None
                } else {
                    Some(ret.expect("known operations took effect"))
                },
                invoke,
                complete,
            },
        )
        .collect()
}

/// Changes one returned value, which may or may not break linearizability.
fn mutate(rng: &mut Rng, history: &mut [Operation<CasOp, CasRet>]) {
    let known: Vec<usize> = (0..history.len())
        .filter(|&i| history[i].ret.is_some())
        .collect();
    if known.is_empty() {
        return;
    }
    let i = known[rng.below(known.len() as u64) as usize];
    let values: Vec<String> = history
        .iter()
        .filter_map(|op| match &op.op {
            CasOp::Write(v) => Some(v.clone()),
            CasOp::Cas { new, .. } => new.clone(),
            CasOp::Read => None,
        })
        .collect();
    history[i].ret = match history[i].ret.take() {
        Some(CasRet::ReadOk(_)) => Some(CasRet::ReadOk(if values.is_empty() || rng.chance(20) {
            None
        } else {
            Some(values[rng.below(values.len() as u64) as usize].clone())
        })),
        Some(CasRet::CasOk) => Some(CasRet::CasFail),
        Some(CasRet::CasFail) => Some(CasRet::CasOk),
        // A write cannot return anything else: move it in time instead (as
        // another process's, so that it overlaps nothing of its own).
        other => {
            history[i].process = 1000 + i as u64;
            history[i].invoke += 10 + rng.below(20);
            history[i].complete = history[i].invoke + 1 + rng.below(5);
            other
        }
    };
}

#[test]
fn checker_agrees_with_stateright_on_generated_histories() {
    let mut rng = Rng(0x0005_EEDC_4A05);
    let mut counts = [0usize; 2];
    let started = Instant::now();
    for case in 0..3000 {
        let mut history = generate(&mut rng);
        let mutated = case % 2 == 1;
        if mutated {
            mutate(&mut rng, &mut history);
        }
        let stateright =
            check_stateright(CasRegister(None), &history).expect("a well-formed history");
        let wgl = check_wgl(CasRegister(None), &history, BUDGET);
        assert!(
            !matches!(wgl, Verdict::Undecided(_)),
            "case {case}: undecided"
        );
        assert_eq!(
            wgl.is_linearizable(),
            stateright,
            "case {case}: the checker says {wgl:?}, stateright says linearizable = {stateright}; history: {history:#?}"
        );
        if !mutated {
            assert!(
                stateright,
                "case {case}: a generated history must be linearizable: {history:#?}"
            );
        }
        counts[usize::from(stateright)] += 1;
    }
    eprintln!(
        "generated histories: {} linearizable, {} not, both checkers agree ({:?})",
        counts[1],
        counts[0],
        started.elapsed()
    );
    assert!(counts[0] > 300, "too few violations generated: {counts:?}");
}

#[test]
fn unknown_outcomes_may_take_effect_late_or_never() {
    let op = |process, op, ret, invoke, complete| Operation {
        process,
        op,
        ret,
        invoke,
        complete,
    };
    let w = |v: &str| CasOp::Write(v.to_string());
    let read = |v: Option<&str>| Some(CasRet::ReadOk(v.map(str::to_string)));
    // A write with an unknown outcome, observed long after it was invoked.
    let late = vec![
        op(1, w("a"), None, 0, 1),
        op(2, CasOp::Read, read(None), 5, 6),
        op(3, CasOp::Read, read(Some("a")), 10, 11),
    ];
    // ... or never observed.
    let never = vec![
        op(1, w("a"), None, 0, 1),
        op(2, CasOp::Read, read(None), 5, 6),
    ];
    // But not before it was invoked.
    let early = vec![
        op(2, CasOp::Read, read(Some("a")), 0, 1),
        op(1, w("a"), None, 5, 6),
    ];
    // An acknowledged write must be seen by a later read.
    let lost = vec![
        op(1, w("a"), Some(CasRet::WriteOk), 0, 1),
        op(2, CasOp::Read, read(None), 5, 6),
    ];
    for (name, history, want) in [
        ("late", late, true),
        ("never", never, true),
        ("early", early, false),
        ("lost", lost, false),
    ] {
        assert_eq!(
            check_stateright(CasRegister(None), &history).unwrap(),
            want,
            "stateright, {name}"
        );
        assert_eq!(
            check_wgl(CasRegister(None), &history, BUDGET).is_linearizable(),
            want,
            "wgl, {name}"
        );
    }
}
