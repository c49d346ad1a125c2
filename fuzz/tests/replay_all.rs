//! Every target's corpus and regressions through its check, from the fuzz
//! workspace itself (`cargo test` in fuzz/). The main workspace replays the
//! same files from each crate's `tests/fuzz_corpus.rs`.

use raft_fuzz::checks;
use raft_fuzz::replay::{corpus, regressions};

macro_rules! targets {
    ($($target:ident),* $(,)?) => {$(
        #[test]
        fn $target() {
            // `replay` looks in `<dir>/../fuzz`, which from here is this crate.
            corpus(env!("CARGO_MANIFEST_DIR"), stringify!($target), checks::$target::check);
            regressions(env!("CARGO_MANIFEST_DIR"), stringify!($target), checks::$target::check);
        }
    )*};
}

targets!(
    peer_frame,
    peer_hello,
    client_request,
    client_response,
    watch_message,
    kv_command,
    kv_snapshot,
    stored_record,
    snapshot_record,
    node_step,
    config_toml,
);

#[test]
fn seeds_are_in_the_corpus() {
    for seed in raft_fuzz::seeds::all() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("corpus")
            .join(seed.target)
            .join(format!("seed-{}", seed.name));
        assert!(
            path.exists(),
            "{} is missing: run `cargo run --example seeds`",
            path.display()
        );
    }
}
