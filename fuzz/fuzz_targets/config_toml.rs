#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    raft_fuzz::known::run("config_toml", data, raft_fuzz::checks::config_toml::check)
});
