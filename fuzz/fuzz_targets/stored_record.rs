#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    raft_fuzz::known::run(
        "stored_record",
        data,
        raft_fuzz::checks::stored_record::check,
    )
});
