#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    raft_fuzz::known::run("peer_frame", data, raft_fuzz::checks::peer_frame::check)
});
