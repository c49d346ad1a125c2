#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    raft_fuzz::known::run("peer_hello", data, raft_fuzz::checks::peer_hello::check)
});
