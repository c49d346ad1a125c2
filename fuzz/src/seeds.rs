//! Seed inputs: valid encodings of representative values for every target,
//! written to `corpus/<target>/` by `cargo run --example seeds`. The
//! fuzzers start from these and mutate; the replay tests check them too.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use raft_core::adapters::StateMachine;
use raft_core::{
    AppendRequest, AppendResponse, ConfChange, Config, Entry, EntryPayload, HardState, Heartbeat,
    HeartbeatResponse, LogId, MemLog, Membership, Message, MessageBody, Node, ReadIndexRequest,
    ReadIndexResponse, SnapshotChunk, SnapshotMeta, SnapshotResponse, VoteRequest, VoteResponse,
};
use raft_transport_quic::frame;
use raft_transport_quic::wire::PeerHello;
use raft_transport_quic::{Fault, FaultRule};
use serde::Serialize;

use crate::checks::node_step::{Op, flags};
use crate::protocol::{
    AdminOp, AdminResult, Consistency, EventKind, KeyValue, KvError, Member, NodeStatus, ReadOp,
    ReadResult, Request, Response, Selector, Session, WatchEvent, WatchMessage, WriteOp,
    WriteResult,
};
use crate::state_machine::{Command, KvStateMachine};
use crate::watch::WatchHub;

/// One seed: its target, a name for its file, its bytes.
pub struct Seed {
    /// The fuzz target.
    pub target: &'static str,
    /// The file name (without directory).
    pub name: String,
    /// The input.
    pub data: Vec<u8>,
}

fn pc<T: Serialize>(value: &T) -> Vec<u8> {
    postcard::to_stdvec(value).expect("seed values encode")
}

fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

fn membership(n: u64) -> Membership {
    Membership::with_voters((1..=n).map(|id| (id, format!("127.0.0.1:{}", 7000 + id))))
}

fn snapshot_meta(index: u64, size: u64) -> SnapshotMeta {
    SnapshotMeta {
        last: LogId::new(2, index),
        membership: membership(3),
        membership_index: 1,
        size,
    }
}

fn entries() -> Vec<Entry> {
    vec![
        Entry {
            term: 2,
            index: 2,
            payload: EntryPayload::Noop,
        },
        Entry {
            term: 2,
            index: 3,
            payload: EntryPayload::Command(b("x = 1")),
        },
        Entry {
            term: 2,
            index: 4,
            payload: EntryPayload::Membership(membership(4)),
        },
    ]
}

/// One message of every kind (from node 2 to node 1, term 2).
pub fn messages() -> Vec<Message> {
    let last_log = LogId::new(1, 1);
    let bodies = vec![
        MessageBody::PreVote(VoteRequest {
            last_log,
            transfer: false,
        }),
        MessageBody::PreVoteResponse(VoteResponse { granted: true }),
        MessageBody::Vote(VoteRequest {
            last_log,
            transfer: true,
        }),
        MessageBody::VoteResponse(VoteResponse { granted: false }),
        MessageBody::Append(AppendRequest {
            prev: LogId::new(1, 1),
            entries: entries(),
            commit: 3,
        }),
        MessageBody::Append(AppendRequest {
            prev: LogId::new(2, 4),
            entries: Vec::new(),
            commit: 4,
        }),
        MessageBody::AppendResponse(AppendResponse::Success { match_index: 4 }),
        MessageBody::AppendResponse(AppendResponse::Rejected {
            rejected: 4,
            hint: LogId::new(1, 1),
        }),
        MessageBody::Heartbeat(Heartbeat {
            commit: 3,
            round: 7,
        }),
        MessageBody::HeartbeatResponse(HeartbeatResponse { round: 7 }),
        MessageBody::Snapshot(SnapshotChunk {
            meta: snapshot_meta(10, 40),
            offset: 0,
            data: Bytes::from(vec![7u8; 16]),
            done: false,
        }),
        MessageBody::Snapshot(SnapshotChunk {
            meta: snapshot_meta(10, 40),
            offset: 32,
            data: Bytes::from(vec![9u8; 8]),
            done: true,
        }),
        MessageBody::SnapshotResponse(SnapshotResponse {
            snapshot_index: 10,
            next_offset: 16,
            rejected: false,
            installed: false,
        }),
        MessageBody::TimeoutNow,
        MessageBody::ReadIndex(ReadIndexRequest { id: 5 }),
        MessageBody::ReadIndexResponse(ReadIndexResponse {
            id: 5,
            index: Some(3),
        }),
    ];
    bodies
        .into_iter()
        .map(|body| Message {
            from: 2,
            to: 1,
            term: 2,
            body,
        })
        .collect()
}

fn session(sequence: u64) -> Session {
    Session {
        client_id: 42,
        sequence,
        first_outstanding: sequence,
    }
}

fn write_ops() -> Vec<WriteOp> {
    vec![
        WriteOp::Put {
            key: b("k"),
            value: b("v"),
        },
        WriteOp::Delete { key: b("k") },
        WriteOp::Cas {
            key: b("k"),
            expected: None,
            new: Some(b("v1")),
        },
        WriteOp::Cas {
            key: b("k"),
            expected: Some(b("v1")),
            new: None,
        },
        WriteOp::LeaseGrant { id: 0, ttl: 10 },
        WriteOp::LeaseGrant { id: 5, ttl: 1 },
        WriteOp::Txn(crate::protocol::Txn {
            success: vec![crate::protocol::TxnOp::Put {
                key: b("held"),
                value: b("v"),
                prev_kv: true,
                lease: 5,
                ignore_value: false,
                ignore_lease: false,
            }],
            ..crate::protocol::Txn::default()
        }),
        WriteOp::LeaseRevoke { id: 5 },
    ]
}

fn kv(key: &str, value: &str, revision: u64) -> KeyValue {
    KeyValue {
        key: b(key),
        value: b(value),
        create_revision: revision,
        mod_revision: revision,
        version: 1,
        lease: 0,
    }
}

fn status() -> raft_core::Status {
    Node::new(Config::new(1), MemLog::bootstrap(membership(3)))
        .expect("a node starts")
        .status()
}

fn kv_errors() -> Vec<KvError> {
    vec![
        KvError::NoLeader,
        KvError::NotLeader {
            leader: 2,
            address: "127.0.0.1:7002".into(),
        },
        KvError::Unavailable("peer down".into()),
        KvError::Compacted {
            requested: 1,
            oldest: 9,
        },
        KvError::SessionExpired,
        KvError::LeaseNotFound { id: 5 },
        KvError::LeaseExists { id: 5 },
    ]
}

/// Every seed.
pub fn all() -> Vec<Seed> {
    let mut seeds = Vec::new();
    let mut add =
        |target: &'static str, name: String, data: Vec<u8>| seeds.push(Seed { target, name, data });

    // Peer frames: each message alone, all of them in one stream, a small
    // frame limit, one byte per read.
    let mut stream = Vec::new();
    for (i, message) in messages().iter().enumerate() {
        let framed = frame::encode(message, usize::MAX).expect("frames");
        let mut one = vec![0u8];
        one.extend_from_slice(&framed);
        add(
            "peer_frame",
            format!("message-{i:02}-{:?}", message.kind()),
            one,
        );
        stream.extend_from_slice(&framed);
    }
    for control in [0u8, 0x03, 0x80, 0x81] {
        let mut data = vec![control];
        data.extend_from_slice(&stream);
        add("peer_frame", format!("stream-{control:02x}"), data);
    }

    // The peer hello.
    let hello = PeerHello {
        version: raft_transport_quic::wire::PROTOCOL_VERSION,
        cluster_id: "local".into(),
        node_id: 3,
        incarnation: 0x1234_5678_9abc,
    };
    add("peer_hello", "hello".into(), pc(&hello));

    // Client requests.
    let mut requests: Vec<Request> = write_ops()
        .into_iter()
        .enumerate()
        .map(|(i, op)| Request::Write {
            session: session(i as u64 + 1),
            op,
            prev_kv: i % 3 == 0,
            forwarded: i % 2 == 1,
        })
        .collect();
    requests.extend([
        Request::Read {
            op: ReadOp::Get { key: b("k") },
            consistency: Consistency::Linearizable,
            forwarded: false,
        },
        Request::Read {
            op: ReadOp::prefix(b("ke"), 10),
            consistency: Consistency::Lease,
            forwarded: true,
        },
        Request::Read {
            op: ReadOp::Scan {
                start: b("a"),
                end: None,
                limit: 2,
                revision: 0,
            },
            consistency: Consistency::Stale,
            forwarded: false,
        },
        Request::Watch {
            selector: Selector::Prefix(b("k")),
            start_revision: 1,
        },
        Request::Watch {
            selector: Selector::Key(b("a")),
            start_revision: 0,
        },
        Request::Admin {
            op: AdminOp::AddLearner {
                id: 4,
                address: "127.0.0.1:7004".into(),
            },
            forwarded: false,
        },
        Request::Admin {
            op: AdminOp::Promote { id: 4 },
            forwarded: false,
        },
        Request::Admin {
            op: AdminOp::Remove { id: 2 },
            forwarded: true,
        },
        Request::Admin {
            op: AdminOp::TransferLeader { to: Some(3) },
            forwarded: false,
        },
        Request::Lease {
            op: crate::protocol::LeaseOp::KeepAlive { id: 5 },
            forwarded: false,
        },
        Request::Lease {
            op: crate::protocol::LeaseOp::TimeToLive { id: 5, keys: true },
            forwarded: true,
        },
        Request::Lease {
            op: crate::protocol::LeaseOp::List,
            forwarded: false,
        },
        Request::Status,
        Request::SetFaults {
            rules: vec![
                FaultRule {
                    from: Some(1),
                    to: None,
                    fault: Fault::Partition,
                },
                FaultRule {
                    from: None,
                    to: Some(2),
                    fault: Fault::Drop { probability: 0.5 },
                },
                FaultRule {
                    from: Some(2),
                    to: Some(3),
                    fault: Fault::Delay(Duration::from_millis(20)),
                },
            ],
        },
    ]);
    for (i, request) in requests.iter().enumerate() {
        add("client_request", format!("request-{i:02}"), pc(request));
    }

    // Client responses.
    let mut responses = vec![
        Response::Write(WriteResult {
            revision: 3,
            succeeded: true,
            previous: Some(kv("k", "v", 2)),
            responses: Vec::new(),
        }),
        Response::Read(ReadResult {
            revision: 3,
            kvs: vec![kv("a", "1", 1), kv("b", "2", 2)],
            more: true,
        }),
        Response::Admin(AdminResult::Members(vec![Member {
            id: 1,
            address: "127.0.0.1:7001".into(),
            voter: true,
        }])),
        Response::Admin(AdminResult::LeaderTransferred(2)),
        Response::Status(Box::new(NodeStatus {
            address: "127.0.0.1:7001".into(),
            revision: 3,
            raft: status(),
            cpu_seconds: Some(12.5),
            certificate_expires: Some(1_900_000_000),
            data_bytes: Some(1 << 20),
        })),
        Response::FaultsSet,
        Response::Lease(crate::protocol::LeaseAnswer::TimeToLive {
            id: 5,
            remaining: 3,
            granted: 10,
            keys: vec![b("held")],
        }),
        Response::Lease(crate::protocol::LeaseAnswer::List(vec![5, 7])),
        Response::Forwarded {
            leader: "127.0.0.1:7002".into(),
            response: Box::new(Response::Write(WriteResult {
                revision: 4,
                succeeded: true,
                previous: None,
                responses: Vec::new(),
            })),
        },
    ];
    responses.extend(kv_errors().into_iter().map(Response::Error));
    for (i, response) in responses.iter().enumerate() {
        add("client_response", format!("response-{i:02}"), pc(response));
    }

    // Watch messages.
    let mut watch = vec![
        WatchMessage::Started { revision: 3 },
        WatchMessage::Events(vec![
            WatchEvent {
                revision: 4,
                kind: EventKind::Put,
                kv: kv("k", "v", 4),
                prev: Some(kv("k", "u", 3)),
            },
            WatchEvent {
                revision: 5,
                kind: EventKind::Delete,
                kv: kv("k", "", 5),
                prev: Some(kv("k", "v", 4)),
            },
        ]),
        WatchMessage::Compacted { revision: 9 },
    ];
    watch.extend(kv_errors().into_iter().map(WatchMessage::Error));
    for (i, message) in watch.iter().enumerate() {
        add("watch_message", format!("watch-{i:02}"), pc(message));
    }

    // KV commands: each alone, then a session's sequence with a retry.
    let commands: Vec<Command> = write_ops()
        .into_iter()
        .enumerate()
        .map(|(i, op)| Command {
            session: session(i as u64 + 1),
            op,
            prev_kv: i % 2 == 0,
            owner: "fuzz".into(),
        })
        .collect();
    let mut sequence = Vec::new();
    for (i, command) in commands.iter().enumerate() {
        add("kv_command", format!("command-{i:02}"), pc(command));
        sequence.extend(pc(command));
    }
    sequence.extend(pc(&commands[0]));
    add("kv_command", "sequence".into(), sequence);

    // KV snapshots.
    let mut sm = KvStateMachine::new(Arc::new(WatchHub::new(16)));
    add(
        "kv_snapshot",
        "empty".into(),
        (sm.snapshot())().expect("snapshots").to_vec(),
    );
    let applied: Vec<Entry> = commands
        .iter()
        .chain(&commands[..1])
        .enumerate()
        .map(|(i, command)| Entry {
            term: 2,
            index: i as u64 + 1,
            payload: EntryPayload::Command(command.encode()),
        })
        .collect();
    sm.apply(&applied);
    let put = Command {
        session: Session {
            client_id: 7,
            sequence: 1,
            first_outstanding: 1,
        },
        op: WriteOp::Put {
            key: b("other"),
            value: b("value"),
        },
        prev_kv: true,
        owner: "fuzz".into(),
    };
    sm.apply(&[Entry {
        term: 2,
        index: applied.len() as u64 + 1,
        payload: EntryPayload::Command(put.encode()),
    }]);
    add(
        "kv_snapshot",
        "with-data".into(),
        (sm.snapshot())().expect("snapshots").to_vec(),
    );

    // Stored records: each kind sealed, and its body for the "seal it
    // for me" bit.
    let (record, size) = crate::checks::snapshot_record::fixture_record();
    let stored: Vec<(u8, Vec<u8>)> = vec![
        (0, pc(&entries()[1])),
        (0, pc(&entries()[2])),
        (
            1,
            pc(&HardState {
                term: 3,
                vote: Some(2),
                commit: 9,
            }),
        ),
        (2, pc(&LogId::new(2, 10))),
        (3, record.clone()),
        (4, pc(&(1u32, 1u64, "local".to_string()))),
        (5, 300u64.to_be_bytes().to_vec()),
    ];
    for (kind, body) in stored {
        let mut sealed = vec![kind];
        if kind != 5 {
            sealed.extend(crc32fast::hash(&body).to_le_bytes());
        }
        sealed.extend_from_slice(&body);
        add("stored_record", format!("record-{kind}-sealed"), sealed);
        let mut unsealed = vec![kind | 0x80];
        unsealed.extend_from_slice(&body);
        add("stored_record", format!("record-{kind}-body"), unsealed);
    }

    // Snapshot records: the good record read at a few places, and as a
    // hostile record to decode.
    for (i, (offset, len)) in [
        (0u64, 100u64),
        (65_000, 2_000),
        (size - 10, 100),
        (0, u64::MAX),
    ]
    .into_iter()
    .enumerate()
    {
        let mut good = vec![0x01];
        good.extend(pc(&(offset, len)));
        add("snapshot_record", format!("good-{i}"), good);
        let mut decoded = vec![0x80];
        decoded.extend(pc(&(offset, len)));
        decoded.extend_from_slice(&record);
        add("snapshot_record", format!("decoded-{i}"), decoded);
    }

    // Node steps: scenarios.
    for (name, flag_byte, ops) in node_scenarios() {
        let mut data = vec![flag_byte];
        for op in &ops {
            data.extend(pc(op));
        }
        add("node_step", name.to_string(), data);
    }

    // Configuration files.
    for (i, text) in CONFIGS.iter().enumerate() {
        add(
            "config_toml",
            format!("config-{i:02}.toml"),
            text.as_bytes().to_vec(),
        );
    }
    seeds
}

fn step(from: u64, term: u64, body: MessageBody) -> Op {
    Op::Step(Message {
        from,
        to: 1,
        term,
        body,
    })
}

fn node_scenarios() -> Vec<(&'static str, u8, Vec<Op>)> {
    let all = messages();
    let raw: Vec<Op> = all.iter().cloned().map(Op::Step).collect();
    let replies = |n: u16| -> Vec<Op> {
        (0..n)
            .map(|pick| Op::Reply { pick, accept: true })
            .collect()
    };
    let mut lead = vec![Op::Campaign];
    lead.extend(replies(4));
    lead.extend(replies(4));
    lead.push(Op::Propose(b("x = 1")));
    lead.extend(replies(6));
    lead.push(Op::ReadIndex {
        id: 1,
        lease: false,
    });
    lead.extend(replies(6));
    lead.push(Op::Tick(3));
    lead.extend(replies(6));

    let mut grow = lead.clone();
    for i in 0..8 {
        grow.push(Op::Propose(Bytes::from(vec![i; 8])));
        grow.extend(replies(4));
    }
    grow.push(Op::ReportUnreachable(2));
    grow.push(Op::Tick(20));
    grow.extend(replies(8));
    grow.push(Op::ProposeMembership(ConfChange::AddLearner {
        id: 4,
        address: "n4".into(),
    }));
    grow.extend(replies(8));
    grow.push(Op::TransferLeader(2));
    grow.extend(replies(4));
    grow.push(Op::Restart);
    grow.push(Op::Tick(31));

    let follower = vec![
        step(
            2,
            2,
            MessageBody::Append(AppendRequest {
                prev: LogId::new(1, 1),
                entries: entries(),
                commit: 3,
            }),
        ),
        step(
            2,
            2,
            MessageBody::Heartbeat(Heartbeat {
                commit: 4,
                round: 1,
            }),
        ),
        step(
            2,
            2,
            MessageBody::ReadIndexResponse(ReadIndexResponse {
                id: 9,
                index: Some(4),
            }),
        ),
        Op::ReadIndex {
            id: 9,
            lease: false,
        },
        step(
            2,
            2,
            MessageBody::Append(AppendRequest {
                prev: LogId::new(1, 3),
                entries: Vec::new(),
                commit: 4,
            }),
        ),
        Op::Restart,
        Op::Tick(12),
        step(
            3,
            3,
            MessageBody::Vote(VoteRequest {
                last_log: LogId::new(2, 4),
                transfer: false,
            }),
        ),
        step(2, 3, MessageBody::TimeoutNow),
    ];

    let data = Bytes::from((0u8..40).collect::<Vec<_>>());
    let chunks: Vec<Op> = [(0usize, 16usize, false), (16, 32, false), (32, 40, true)]
        .into_iter()
        .map(|(from, to, done)| {
            step(
                2,
                2,
                MessageBody::Snapshot(SnapshotChunk {
                    meta: snapshot_meta(10, 40),
                    offset: from as u64,
                    data: data.slice(from..to),
                    done,
                }),
            )
        })
        .collect();
    let mut snapshot = chunks.clone();
    snapshot.push(step(
        2,
        2,
        MessageBody::Append(AppendRequest {
            prev: LogId::new(2, 10),
            entries: vec![Entry {
                term: 2,
                index: 11,
                payload: EntryPayload::Command(b("after")),
            }],
            commit: 11,
        }),
    ));
    snapshot.push(Op::Restart);
    // A chunk lost and resent.
    let mut resent = vec![
        chunks[0].clone(),
        chunks[2].clone(),
        chunks[1].clone(),
        chunks[2].clone(),
    ];
    resent.push(Op::Tick(5));

    let mut compacting = lead.clone();
    for i in 0..12 {
        compacting.push(Op::Propose(Bytes::from(vec![i; 4])));
        compacting.extend(replies(3));
    }
    compacting.push(Op::Tick(2));
    compacting.extend(replies(3));
    // A follower lost its log: it rejects, the leader ships the snapshot.
    compacting.push(Op::Propose(b("last")));
    compacting.push(Op::Reply {
        pick: 0,
        accept: false,
    });
    compacting.extend(replies(4));
    compacting.push(Op::Tick(6));
    compacting.extend(replies(6));

    let relative = flags::RELATIVE_TERMS;
    vec![
        ("raw-messages", 0, raw.clone()),
        (
            "raw-messages-relative",
            relative | flags::PRE_VOTE,
            raw.clone(),
        ),
        ("raw-ids", flags::RAW_IDS, raw),
        ("lead", 0, lead.clone()),
        (
            "lead-prevote-quorum",
            flags::PRE_VOTE | flags::CHECK_QUORUM,
            lead.clone(),
        ),
        ("lead-lease", flags::LEASE_READS | flags::PRE_VOTE, {
            let mut ops = lead.clone();
            ops.push(Op::ReadIndex { id: 2, lease: true });
            ops.extend(replies(3));
            ops
        }),
        ("lead-five", flags::FIVE_VOTERS | flags::PRE_VOTE, {
            let mut ops = vec![Op::Campaign];
            ops.extend(replies(8));
            ops.extend(replies(8));
            ops.extend(lead[1..].iter().cloned());
            ops
        }),
        ("grow", flags::PRE_VOTE | flags::CHECK_QUORUM, grow),
        ("follower", relative, follower),
        ("snapshot", relative, snapshot.clone()),
        ("snapshot-joining", relative | flags::JOINING, snapshot),
        ("snapshot-resent", relative | flags::SMALL_SNAPSHOTS, resent),
        ("compacting", flags::SMALL_SNAPSHOTS, compacting),
    ]
}

const CONFIGS: &[&str] = &[
    r#"node_id = 1
cluster_id = "local"
listen = "127.0.0.1:7001"
data_dir = "target/cluster/node-1"
initial_cluster = ["1=127.0.0.1:7001", "2=127.0.0.1:7002", "3=127.0.0.1:7003"]

[tls]
ca = "target/cluster/ca.pem"
cert = "target/cluster/node-1.pem"
key = "target/cluster/node-1.key"

[raft]
tick_ms = 50
election_ticks = 10

[snapshot]
threshold = 100000
retention = 10000
"#,
    r#"node_id = 4
cluster_id = "prod-eu-1"
listen = "[::1]:7004"
advertise = "node-4.example:7004"
data_dir = "/var/lib/raft-kv"
join = true
metrics_listen = "127.0.0.1:9104"
log_format = "json"
enable_fault_injection = true
request_timeout_ms = 2500

[tls]
ca = "ca.pem"
cert = "n4.pem"
key = "n4.key"

[raft]
tick_ms = 20
election_ticks = 12
heartbeat_ticks = 3
lease_reads = true
max_append_bytes = 65536

[snapshot]
threshold = 0
retention = 1
chunk_size = 4096
"#,
    r#"node_id = 2
cluster_id = "x"
listen = "0.0.0.0:7002"
data_dir = "d"
initial_cluster = ["1=a:1", " 2 = b:2 "]
tls = { ca = "c", cert = "d", key = "e" }
raft = { tick_ms = 10000, election_ticks = 2, heartbeat_ticks = 1 }
"#,
    r#"node_id = 0
cluster_id = "bad id"
listen = "127.0.0.1:1"
data_dir = ""
initial_cluster = ["x", "0=", "1=a", "1=b"]
join = true
[tls]
ca = ""
cert = ""
key = ""
[raft]
tick_ms = 0
"#,
];
