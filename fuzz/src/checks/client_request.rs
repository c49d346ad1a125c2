//! Client frames, server side: a `raft_kv::protocol::Request` as a node
//! receives it. Decoding gives a request or a typed `KvError`; a decoded
//! request re-encodes to bytes that decode to the same bytes again; and the
//! parts of serving it that need no cluster run on it: write validation and
//! application, reads, watch registration, fault rules.

use std::sync::Arc;

use bytes::Bytes;
use raft_core::adapters::StateMachine;
use raft_core::{Entry, EntryPayload};

use crate::protocol::{self, KvError, ReadOp, Request, Selector, Session, WriteOp};
use crate::state_machine::{Command, KvStateMachine};
use crate::watch::WatchHub;

/// The check (see the module documentation).
pub fn check(data: &[u8]) {
    let request: Request = match protocol::decode(data) {
        Ok(request) => request,
        Err(error) => {
            assert!(matches!(error, KvError::InvalidRequest(_)), "{error:?}");
            let _ = error.to_string();
            return;
        }
    };
    let encoded = protocol::encode(&request);
    assert!(!encoded.is_empty(), "a decoded request re-encodes");
    let again: Request = protocol::decode(&encoded).expect("a re-encoded request decodes");
    assert_eq!(protocol::encode(&again), encoded, "encoding is not stable");

    let hub = Arc::new(WatchHub::new(16));
    let mut sm = KvStateMachine::new(hub.clone());
    seed_store(&mut sm);
    match request {
        Request::Write {
            session,
            op,
            prev_kv,
            ..
        } => {
            let _ = op.key();
            if protocol::validate_write(&op).is_ok() {
                // A watcher of every key, replaying from the start.
                let mut rx = hub
                    .subscribe(Selector::Prefix(Bytes::new()), 1, "fuzz")
                    .expect("the history is not compacted yet");
                let before = sm.revision();
                let data = Command {
                    session,
                    op,
                    prev_kv,
                    owner: "fuzz".into(),
                }
                .encode();
                let out = sm.apply(&[Entry {
                    term: 1,
                    index: 10,
                    payload: EntryPayload::Command(data),
                }]);
                assert_eq!(out.len(), 1);
                assert!(sm.revision() >= before);
                while rx.try_next().is_some() {}
            }
        }
        Request::OpenSession { .. } => {
            let data = Command::open_session("fuzz".into()).encode();
            let out = sm.apply(&[Entry {
                term: 1,
                index: 10,
                payload: EntryPayload::Command(data),
            }]);
            assert!(matches!(out.as_slice(), [(_, Ok(_))]));
        }
        Request::Read { op, .. } => {
            read(&sm, &op);
            if let ReadOp::Scan { start, limit, .. } = &op {
                let _ = protocol::prefix_end(start);
                read(&sm, &ReadOp::prefix(start.clone(), *limit));
            }
        }
        Request::Watch {
            selector,
            start_revision,
        } => {
            let _ = selector.matches(b"k");
            if let Ok(mut rx) = hub.subscribe(selector, start_revision, "fuzz") {
                while rx.try_next().is_some() {}
            }
            assert!(hub.watchers() <= 1);
        }
        Request::SetFaults { rules } => {
            let faults = raft_transport_quic::FaultInjector::new();
            faults.set_rules(rules.clone());
            assert_eq!(faults.rules().len(), rules.len());
            faults.heal_between(1, 2);
            faults.heal();
        }
        Request::Lease { op, .. } => match op {
            protocol::LeaseOp::KeepAlive { id } | protocol::LeaseOp::TimeToLive { id, .. } => {
                if let Some((ttl, keys)) = sm.lease(id) {
                    assert!(ttl >= protocol::MIN_LEASE_TTL);
                    assert!(keys.len() <= sm.len());
                }
            }
            protocol::LeaseOp::List => assert!(sm.leases().len() <= protocol::MAX_LEASES),
        },
        Request::Admin { .. } | Request::Status | Request::Forwarded { .. } => {}
    }
}

/// A few keys, so reads and writes meet data (written in session 1, the
/// session the first entry opens).
fn seed_store(sm: &mut KvStateMachine) {
    let open = Command::open_session("fuzz".into());
    sm.apply(&[Entry {
        term: 1,
        index: 1,
        payload: EntryPayload::Command(open.encode()),
    }]);
    // Lease 5, which key "k" lives by.
    let lease = |key: &[u8]| {
        WriteOp::Txn(protocol::Txn {
            success: vec![protocol::TxnOp::Put {
                key: Bytes::copy_from_slice(key),
                value: Bytes::from_static(b"v"),
                prev_kv: false,
                lease: 5,
                ignore_value: false,
                ignore_lease: false,
            }],
            ..protocol::Txn::default()
        })
    };
    let put = |key: &[u8]| WriteOp::Put {
        key: Bytes::copy_from_slice(key),
        value: Bytes::from_static(b"v"),
    };
    let writes = [
        WriteOp::LeaseGrant { id: 5, ttl: 10 },
        put(b"a"),
        lease(b"k"),
        put(b"key"),
        put(b"\xff"),
    ];
    let entries: Vec<Entry> = writes
        .into_iter()
        .enumerate()
        .map(|(i, op)| {
            let command = Command {
                session: Session {
                    client_id: 1,
                    sequence: i as u64 + 1,
                    first_outstanding: i as u64 + 1,
                },
                op,
                prev_kv: false,
                owner: "fuzz".into(),
            };
            Entry {
                term: 1,
                index: i as u64 + 2,
                payload: EntryPayload::Command(command.encode()),
            }
        })
        .collect();
    sm.apply(&entries);
}

fn read(sm: &KvStateMachine, op: &ReadOp) {
    let result = sm.read(op).expect("reads of the store do not fail");
    assert!(
        result.kvs.windows(2).all(|w| w[0].key < w[1].key),
        "keys out of order"
    );
    if let ReadOp::Scan { limit, .. } = op {
        assert!(result.kvs.len() <= (*limit).clamp(1, protocol::MAX_SCAN_LIMIT) as usize);
    }
}
