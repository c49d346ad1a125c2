//! raft-kv's etcd API answers as a real etcd does: a few thousand seeded
//! random operations sent to both in lockstep (see `src/diff`), every
//! answer compared. `cargo xtask etcd-diff` runs longer ones.

use etcd_client_tests::diff::{self, Setup};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn raft_kv_answers_as_etcd_does() {
    let setup = Setup {
        nodes: 3,
        dir: None,
    };
    let report = diff::run(&setup, 20261208, 3_000, 1_000, 40)
        .await
        .expect("the differential run could not start its servers");
    if let Some(found) = report.mismatch {
        panic!("{found}");
    }
    assert_eq!(report.ops, 3_000);
}
