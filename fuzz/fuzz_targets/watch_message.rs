#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    raft_fuzz::known::run(
        "watch_message",
        data,
        raft_fuzz::checks::watch_message::check,
    )
});
