//! Runs operations against both servers in lockstep and compares every
//! answer field by field, normalising only what must differ: cluster and
//! member ids and the raft term (dropped from headers), lease ids (each
//! server picks its own: named by the grant that made them) and a lease's
//! remaining TTL within the second that passes between the two calls.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Result;
use etcd_client::proto::{PbKeyValue, PbResponseHeader, PbTxnOpResponse, PbTxnResponse};
use etcd_client::{
    Compare as EtcdCompare, CompareOp, DeleteOptions, GetOptions, LeaseGrantOptions,
    LeaseTimeToLiveOptions, PutOptions, SortOrder, SortTarget, Txn as EtcdTxn, TxnOp as EtcdTxnOp,
    WatchFilterType, WatchOptions, WatchResponse, WatchStream,
};

use super::backend::{Backend, Workspace};
use super::ops::{Delete, LeaseRef, Op, Put, Read, Target, Txn, TxnOp};

/// The id a run uses for a lease no grant made.
const UNKNOWN_LEASE: i64 = 0x7_0000;
/// How long a watch may take to confirm it was created.
const WATCH_PATIENCE: Duration = Duration::from_secs(10);
/// Silence on both watch streams that ends a run's watch comparison.
const WATCH_QUIET: Duration = Duration::from_millis(400);
/// Longer than etcd takes to catch a watch from a past revision up.
const WATCH_SYNC: Duration = Duration::from_millis(250);
/// Silence on a watch stream before a cancel is sent (generous: a loaded
/// machine delays an event by more than 100 ms now and then, and the
/// cancel then drops it on one server and not the other).
const CANCEL_QUIET: Duration = Duration::from_millis(300);

/// How a run is set up.
#[derive(Clone, Debug)]
pub struct Setup {
    /// raft-kv nodes.
    pub nodes: u64,
    /// Where data and certificates go (the system's temporary directory if
    /// `None`).
    pub dir: Option<PathBuf>,
}

/// Where the two servers first answered differently.
#[derive(Debug)]
pub struct Mismatch {
    /// The operation (its index in the case), or `None` for the watches'
    /// events compared at the end.
    pub at: Option<usize>,
    pub etcd: String,
    pub raft_kv: String,
}

/// One server, as a run sees it.
struct Side {
    backend: Backend,
    /// The id each grant of the run got (`None`: the grant failed).
    leases: Vec<Option<i64>>,
    watch: Option<WatchStream>,
    /// Every watch message not awaited, by watch id.
    log: BTreeMap<i64, Vec<String>>,
    /// The lease ids grants asked for.
    asked: std::collections::BTreeSet<i64>,
}

impl Side {
    fn new(backend: Backend) -> Self {
        Self {
            backend,
            leases: Vec::new(),
            watch: None,
            log: BTreeMap::new(),
            asked: std::collections::BTreeSet::new(),
        }
    }

    fn lease_id(&self, lease: LeaseRef) -> i64 {
        match lease {
            LeaseRef::None => 0,
            LeaseRef::Granted(n) => self
                .leases
                .get(n)
                .copied()
                .flatten()
                .unwrap_or(UNKNOWN_LEASE),
            LeaseRef::Unknown => UNKNOWN_LEASE,
        }
    }

    /// A lease id as the run names it: an id the run asked for is itself
    /// (the same on both servers, and reused after a revoke), another by
    /// the grant that made it.
    fn lease_name(&self, id: i64) -> String {
        if id == 0 {
            return "0".into();
        }
        if self.asked.contains(&id) {
            return format!("#{id}");
        }
        match self.leases.iter().rposition(|l| *l == Some(id)) {
            Some(n) => format!("L{n}"),
            None => format!("{id:#x}"),
        }
    }

    fn kv(&self, kv: &PbKeyValue) -> String {
        format!(
            "{}={:?} c{} m{} v{} lease={}",
            String::from_utf8_lossy(&kv.key),
            String::from_utf8_lossy(&kv.value),
            kv.create_revision,
            kv.mod_revision,
            kv.version,
            self.lease_name(kv.lease)
        )
    }

    fn kvs(&self, kvs: &[PbKeyValue]) -> String {
        let all: Vec<String> = kvs.iter().map(|kv| self.kv(kv)).collect();
        format!("[{}]", all.join(", "))
    }

    async fn apply(&mut self, op: &Op, current: i64) -> Answer {
        let mut client = self.backend.client.clone();
        match op {
            Op::Put(put) => match client
                .put(
                    put.key.clone(),
                    put.value.clone(),
                    Some(self.put_options(put)),
                )
                .await
            {
                Ok(r) => Answer::of(
                    &r.0.header,
                    format!("prev={}", self.opt_kv(r.0.prev_kv.as_ref())),
                ),
                Err(e) => Answer::error(e),
            },
            Op::Get(read) => {
                let (key, options) = self.get_options(read, current);
                match client.get(key, Some(options)).await {
                    Ok(r) => Answer::of(
                        &r.0.header,
                        format!(
                            "count={} more={} kvs={}",
                            r.0.count,
                            r.0.more,
                            self.kvs(&r.0.kvs)
                        ),
                    ),
                    Err(e) => Answer::error(e),
                }
            }
            Op::Delete(delete) => {
                let (key, options) = delete_options(delete);
                match client.delete(key, Some(options)).await {
                    Ok(r) => Answer::of(
                        &r.0.header,
                        format!("deleted={} prev={}", r.0.deleted, self.kvs(&r.0.prev_kvs)),
                    ),
                    Err(e) => Answer::error(e),
                }
            }
            Op::Txn(txn) => match client.txn(self.txn(txn, current)).await {
                Ok(r) => Answer::of(&r.0.header, self.txn_answer(&r.0)),
                Err(e) => Answer::error(e),
            },
            Op::Grant { ttl, id } => {
                if *id != 0 {
                    self.asked.insert(*id);
                }
                let options = (*id != 0).then(|| LeaseGrantOptions::new().with_id(*id));
                match client.lease_grant(*ttl, options).await {
                    Ok(r) => {
                        self.leases.push(Some(r.0.id));
                        Answer::of(
                            &r.0.header,
                            format!(
                                "id={} ttl={} error={:?}",
                                self.lease_name(r.0.id),
                                r.0.ttl,
                                r.0.error
                            ),
                        )
                    }
                    Err(e) => {
                        self.leases.push(None);
                        Answer::error(e)
                    }
                }
            }
            Op::Revoke(lease) => match client.lease_revoke(self.lease_id(*lease)).await {
                Ok(r) => Answer::of(&r.0.header, String::new()),
                Err(e) => Answer::error(e),
            },
            Op::TimeToLive { lease, keys } => {
                let options = keys.then(|| LeaseTimeToLiveOptions::new().with_keys());
                match client
                    .lease_time_to_live(self.lease_id(*lease), options)
                    .await
                {
                    Ok(r) => {
                        let r = r.0;
                        // The second that passes between the two servers'
                        // answers is not a difference; rounding up is.
                        let ttl = if r.ttl < r.granted_ttl && r.ttl >= r.granted_ttl - 3 {
                            "granted-1 (±2)".to_owned()
                        } else {
                            r.ttl.to_string()
                        };
                        // etcd lists a lease's keys in its map's order,
                        // which Go randomises.
                        let mut keys: Vec<String> = r
                            .keys
                            .iter()
                            .map(|k| String::from_utf8_lossy(k).into_owned())
                            .collect();
                        keys.sort();
                        Answer::of(
                            &r.header,
                            format!(
                                "id={} ttl={ttl} granted={} keys={keys:?}",
                                self.lease_name(r.id),
                                r.granted_ttl
                            ),
                        )
                    }
                    Err(e) => Answer::error(e),
                }
            }
            Op::Leases => match client.leases().await {
                Ok(r) => {
                    let mut names: Vec<String> =
                        r.0.leases.iter().map(|l| self.lease_name(l.id)).collect();
                    names.sort();
                    Answer::of(&r.0.header, format!("leases={names:?}"))
                }
                Err(e) => Answer::error(e),
            },
            Op::Compact(rev) => {
                if self.watch.is_some() {
                    // etcd catches a watch from a past revision up in a
                    // loop every 100 ms; a compaction before it did cancels
                    // the watch, one after does not: timing, not a rule.
                    tokio::time::sleep(WATCH_SYNC).await;
                }
                let answer = match client.compact(rev.at(current), None).await {
                    Ok(r) => Answer::of(&r.0.header, String::new()),
                    Err(e) => Answer::error(e),
                };
                // etcd compacts its index and store in a job after it
                // answers: a watch from the compaction's revision created
                // before the job ran still sees a delete there, one after
                // does not (raft-kv answers as etcd once it ran).
                tokio::time::sleep(WATCH_SYNC).await;
                answer
            }
            Op::Watch {
                keys,
                start,
                no_put,
                no_delete,
                prev_kv,
                id,
            } => {
                let (key, end) = keys.bounds();
                let mut options = WatchOptions::new();
                if !end.is_empty() {
                    options = options.with_range(end);
                }
                let start = start.at(current);
                if start != 0 {
                    options = options.with_start_revision(start);
                }
                let mut filters = Vec::new();
                if *no_put {
                    filters.push(WatchFilterType::NoPut);
                }
                if *no_delete {
                    filters.push(WatchFilterType::NoDelete);
                }
                if !filters.is_empty() {
                    options = options.with_filters(filters);
                }
                if *prev_kv {
                    options = options.with_prev_key();
                }
                if *id != 0 {
                    options = options.with_watch_id(*id);
                }
                self.watch(key, options).await
            }
            Op::Cancel(id) => {
                // Events of writes before the cancel are delivered before
                // it on both servers only once taken: which of those that
                // were still on their way a server drops is its timing.
                self.absorb(CANCEL_QUIET).await;
                match &mut self.watch {
                    Some(stream) => match stream.cancel(*id).await {
                        Ok(()) => Answer::plain("cancel sent".into()),
                        Err(e) => Answer::error(e),
                    },
                    None => Answer::plain("no watch stream".into()),
                }
            }
        }
    }

    /// Creates a watch on the run's stream and waits for its answer.
    async fn watch(&mut self, key: Vec<u8>, options: WatchOptions) -> Answer {
        let mut stream = match self.watch.take() {
            Some(mut stream) => match stream.watch(key, Some(options)).await {
                Ok(()) => stream,
                Err(e) => return Answer::error(e),
            },
            None => match self.backend.client.clone().watch(key, Some(options)).await {
                Ok(stream) => stream,
                Err(e) => return Answer::error(e),
            },
        };
        let deadline = Instant::now() + WATCH_PATIENCE;
        loop {
            let message = tokio::time::timeout_at(deadline.into(), stream.message()).await;
            match message {
                Err(_) => {
                    self.watch = Some(stream);
                    return Answer::plain("no answer to the watch request".into());
                }
                // The stream is gone.
                Ok(Err(e)) => return Answer::error(e),
                Ok(Ok(None)) => return Answer::plain("the watch stream ended".into()),
                Ok(Ok(Some(response))) if response.0.created => {
                    let answer = self.watch_message(&response);
                    if !response.0.events.is_empty() || response.0.canceled {
                        self.log
                            .entry(response.0.watch_id)
                            .or_default()
                            .push(answer.clone());
                    }
                    self.watch = Some(stream);
                    return Answer::of(&response.0.header, answer);
                }
                Ok(Ok(Some(response))) => {
                    let entry = self.watch_message(&response);
                    self.log.entry(response.0.watch_id).or_default().push(entry);
                }
            }
        }
    }

    /// A watch message as compared: what it says, not how events were
    /// grouped into messages.
    fn watch_message(&self, response: &WatchResponse) -> String {
        let r = &response.0;
        let mut out = format!("watch {}", r.watch_id);
        if r.created {
            out.push_str(" created");
        }
        if r.canceled {
            let _ = write!(
                out,
                " canceled compact_revision={} reason={:?}",
                r.compact_revision, r.cancel_reason
            );
        }
        for event in &r.events {
            let kind = if event.r#type == 0 { "PUT" } else { "DELETE" };
            let _ = write!(
                out,
                "\n  {kind} {} prev={}",
                self.opt_kv(event.kv.as_ref()),
                self.opt_kv(event.prev_kv.as_ref())
            );
        }
        out
    }

    /// Reads every watch message until the stream is quiet.
    async fn drain(&mut self) {
        self.absorb(WATCH_QUIET).await;
    }

    /// Logs every watch message that comes until none has for `quiet`.
    async fn absorb(&mut self, quiet: Duration) {
        let Some(stream) = &mut self.watch else {
            return;
        };
        let mut seen = Vec::new();
        loop {
            match tokio::time::timeout(quiet, stream.message()).await {
                Ok(Ok(Some(response))) => seen.push(response),
                Ok(Ok(None)) | Ok(Err(_)) => {
                    self.watch = None;
                    break;
                }
                Err(_) => break,
            }
        }
        for response in seen {
            let entry = self.watch_message(&response);
            self.log.entry(response.0.watch_id).or_default().push(entry);
        }
    }

    /// Every watch's messages, one event per line (the grouping of events
    /// into messages is not compared).
    fn watch_log(&self) -> String {
        let mut out = String::new();
        for (id, entries) in &self.log {
            let _ = writeln!(out, "watch {id}:");
            for entry in entries {
                for line in entry.lines() {
                    let line = line.trim_start();
                    if line.starts_with("watch ") {
                        let rest = line.split_once(' ').map_or("", |(_, r)| r);
                        let rest = rest.split_once(' ').map_or("", |(_, r)| r);
                        if !rest.is_empty() {
                            let _ = writeln!(out, "  {rest}");
                        }
                    } else {
                        let _ = writeln!(out, "  {line}");
                    }
                }
            }
        }
        out
    }

    fn opt_kv(&self, kv: Option<&PbKeyValue>) -> String {
        kv.map_or_else(|| "-".into(), |kv| self.kv(kv))
    }

    fn put_options(&self, put: &Put) -> PutOptions {
        let mut options = PutOptions::new();
        let lease = self.lease_id(put.lease);
        if lease != 0 {
            options = options.with_lease(lease);
        }
        if put.prev_kv {
            options = options.with_prev_key();
        }
        if put.ignore_value {
            options = options.with_ignore_value();
        }
        if put.ignore_lease {
            options = options.with_ignore_lease();
        }
        options
    }

    fn get_options(&self, read: &Read, current: i64) -> (Vec<u8>, GetOptions) {
        let (key, end) = read.keys.bounds();
        let mut options = GetOptions::new();
        if !end.is_empty() {
            options = options.with_range(end);
        }
        options = options
            .with_revision(read.revision.at(current))
            .with_limit(read.limit)
            .with_min_mod_revision(read.min_mod.at(current))
            .with_max_mod_revision(read.max_mod.at(current))
            .with_min_create_revision(read.min_create.at(current))
            .with_max_create_revision(read.max_create.at(current));
        if let Some(sort) = read.sort {
            options = options.with_sort(
                SortTarget::try_from(sort.target).unwrap_or(SortTarget::Key),
                SortOrder::try_from(sort.order).unwrap_or(SortOrder::None),
            );
        }
        if read.count_only {
            options = options.with_count_only();
        }
        if read.keys_only {
            options = options.with_keys_only();
        }
        if read.serializable {
            options = options.with_serializable();
        }
        (key, options)
    }

    fn txn(&self, txn: &Txn, current: i64) -> EtcdTxn {
        let compares: Vec<EtcdCompare> = txn
            .compares
            .iter()
            .map(|c| {
                let (key, end) = c.keys.bounds();
                let op = CompareOp::try_from(c.result).unwrap_or(CompareOp::Equal);
                let compare = match &c.target {
                    Target::Value(v) => EtcdCompare::value(key, op, v.clone()),
                    Target::Version(v) => EtcdCompare::version(key, op, *v),
                    Target::Create(r) => EtcdCompare::create_revision(key, op, r.at(current)),
                    Target::Mod(r) => EtcdCompare::mod_revision(key, op, r.at(current)),
                    Target::Lease(l) => EtcdCompare::lease(key, op, self.lease_id(*l)),
                };
                if end.is_empty() {
                    compare
                } else {
                    compare.with_range(end)
                }
            })
            .collect();
        let ops = |ops: &[TxnOp]| -> Vec<EtcdTxnOp> {
            ops.iter()
                .map(|op| match op {
                    TxnOp::Put(put) => EtcdTxnOp::put(
                        put.key.clone(),
                        put.value.clone(),
                        Some(self.put_options(put)),
                    ),
                    TxnOp::Get(read) => {
                        let (key, options) = self.get_options(read, current);
                        EtcdTxnOp::get(key, Some(options))
                    }
                    TxnOp::Delete(delete) => {
                        let (key, options) = delete_options(delete);
                        EtcdTxnOp::delete(key, Some(options))
                    }
                    TxnOp::Txn(txn) => EtcdTxnOp::txn(self.txn(txn, current)),
                })
                .collect()
        };
        EtcdTxn::new()
            .when(compares)
            .and_then(ops(&txn.success))
            .or_else(ops(&txn.failure))
    }

    fn txn_answer(&self, r: &PbTxnResponse) -> String {
        let mut out = format!("succeeded={}", r.succeeded);
        for response in &r.responses {
            let _ = write!(out, "\n    ");
            match &response.response {
                Some(PbTxnOpResponse::ResponseRange(r)) => {
                    let _ = write!(
                        out,
                        "range {} count={} more={} kvs={}",
                        header(&r.header),
                        r.count,
                        r.more,
                        self.kvs(&r.kvs)
                    );
                }
                Some(PbTxnOpResponse::ResponsePut(r)) => {
                    let _ = write!(
                        out,
                        "put {} prev={}",
                        header(&r.header),
                        self.opt_kv(r.prev_kv.as_ref())
                    );
                }
                Some(PbTxnOpResponse::ResponseDeleteRange(r)) => {
                    let _ = write!(
                        out,
                        "delete {} deleted={} prev={}",
                        header(&r.header),
                        r.deleted,
                        self.kvs(&r.prev_kvs)
                    );
                }
                Some(PbTxnOpResponse::ResponseTxn(r)) => {
                    let inner = self.txn_answer(r).replace('\n', "\n    ");
                    let _ = write!(out, "txn {} {inner}", header(&r.header));
                }
                None => out.push_str("(empty)"),
            }
        }
        out
    }
}

fn delete_options(delete: &Delete) -> (Vec<u8>, DeleteOptions) {
    let (key, end) = delete.keys.bounds();
    let mut options = DeleteOptions::new();
    if !end.is_empty() {
        options = options.with_range(end);
    }
    if delete.prev_kv {
        options = options.with_prev_key();
    }
    (key, options)
}

/// A header as compared: its revision (ids and term differ by nature).
fn header(h: &Option<PbResponseHeader>) -> String {
    match h {
        Some(h) => format!("rev={}", h.revision),
        None => "no-header".into(),
    }
}

/// An answer as compared, and the revision it reports.
struct Answer {
    text: String,
    revision: Option<i64>,
}

impl Answer {
    fn of(h: &Option<PbResponseHeader>, body: String) -> Self {
        Self {
            text: format!("{} {body}", header(h)),
            revision: h.as_ref().map(|h| h.revision),
        }
    }

    fn plain(text: String) -> Self {
        Self {
            text,
            revision: None,
        }
    }

    fn error(e: etcd_client::Error) -> Self {
        let text = match e {
            etcd_client::Error::GRpcStatus(s) => {
                format!("error {:?}: {}", s.code(), s.message())
            }
            other => format!("error {other}"),
        };
        Self::plain(text)
    }
}

/// Runs `ops` against a fresh etcd and a fresh raft-kv cluster; the first
/// difference, if any.
pub async fn run_case(setup: &Setup, case: u64, ops: &[Op]) -> Result<Option<Mismatch>> {
    let ws = Workspace::new(setup.dir.as_deref())?;
    let (etcd, raft_kv) = tokio::join!(
        Backend::etcd(&ws, case),
        Backend::raft_kv(&ws, case, setup.nodes)
    );
    let (mut etcd, mut raft_kv) = (Side::new(etcd?), Side::new(raft_kv?));
    // etcd's store starts at revision 1.
    let mut current = 1;
    let mut mismatch = None;
    for (i, op) in ops.iter().enumerate() {
        let (a, b) = tokio::join!(etcd.apply(op, current), raft_kv.apply(op, current));
        if a.text != b.text {
            mismatch = Some(Mismatch {
                at: Some(i),
                etcd: a.text,
                raft_kv: b.text,
            });
            break;
        }
        if let Some(revision) = a.revision {
            current = current.max(revision);
        }
    }
    if mismatch.is_none() {
        tokio::join!(etcd.drain(), raft_kv.drain());
        let (a, b) = (etcd.watch_log(), raft_kv.watch_log());
        if a != b {
            mismatch = Some(Mismatch {
                at: None,
                etcd: a,
                raft_kv: b,
            });
        }
    }
    drop(etcd.watch.take());
    drop(raft_kv.watch.take());
    etcd.backend.stop().await;
    raft_kv.backend.stop().await;
    Ok(mismatch)
}

/// The shortest sequence found (within `attempts` runs) that still shows a
/// difference, starting from `ops` that show one.
pub async fn shrink(setup: &Setup, ops: Vec<Op>, attempts: usize) -> Result<Vec<Op>> {
    let mut ops = ops;
    let mut tried = 0;
    let mut chunk = ops.len().div_ceil(2);
    while chunk >= 1 && tried < attempts {
        let mut i = 0;
        while i < ops.len() && tried < attempts {
            let mut candidate = ops.clone();
            candidate.drain(i..(i + chunk).min(ops.len()));
            tried += 1;
            match run_case(setup, 1_000 + tried as u64, &candidate).await? {
                Some(m) => {
                    // Only what the difference needs.
                    if let Some(at) = m.at {
                        candidate.truncate(at + 1);
                    }
                    ops = candidate;
                }
                None => i += chunk,
            }
        }
        if chunk == 1 {
            break;
        }
        chunk = chunk.div_ceil(2);
    }
    Ok(ops)
}
