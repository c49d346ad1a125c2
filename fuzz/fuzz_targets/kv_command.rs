#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    raft_fuzz::known::run("kv_command", data, raft_fuzz::checks::kv_command::check)
});
