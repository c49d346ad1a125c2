#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    raft_fuzz::known::run(
        "client_response",
        data,
        raft_fuzz::checks::client_response::check,
    )
});
