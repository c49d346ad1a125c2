#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    raft_fuzz::known::run("node_step", data, raft_fuzz::checks::node_step::check)
});
