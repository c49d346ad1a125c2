#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    raft_fuzz::known::run(
        "snapshot_record",
        data,
        raft_fuzz::checks::snapshot_record::check,
    )
});
