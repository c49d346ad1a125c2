#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    raft_fuzz::known::run("kv_snapshot", data, raft_fuzz::checks::kv_snapshot::check)
});
