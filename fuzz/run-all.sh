#!/usr/bin/env bash
# Runs every fuzz target in turn for RUNS executions (default 1,000,000),
# one process at a time, growing corpus-work/<target>/ from corpus/<target>/;
# crashes go to artifacts/<target>/. A summary line per target goes to
# stdout, libFuzzer's output to logs/<target>.log. See README.md.
#
#   ./run-all.sh                      # all targets, 1,000,000 runs each
#   RUNS=10000000 ./run-all.sh node_step kv_snapshot
#
# Needs cargo-fuzz and a nightly compiler (or RUSTC_BOOTSTRAP=1 on stable,
# as below). CARGO_TARGET_DIR or FUZZ_TARGET_DIR picks the target dir.
# SANITIZER=none builds without AddressSanitizer (cargo fuzz's default is
# address): the code under test is safe Rust, and it runs 2-4 times faster;
# overflow checks and debug assertions stay on either way. Use a separate
# target dir per sanitizer, or each switch rebuilds everything.
set -u
cd "$(dirname "$0")"
RUNS=${RUNS:-1000000}
SANITIZER=${SANITIZER:-address}
TARGET_DIR=${FUZZ_TARGET_DIR:-${CARGO_TARGET_DIR:-target}}
ALL="peer_frame peer_hello client_request client_response watch_message kv_command kv_snapshot stored_record snapshot_record node_step config_toml"
TARGETS=${*:-$ALL}
export RUSTC_BOOTSTRAP=${RUSTC_BOOTSTRAP:-1}
cargo fuzz build -s "$SANITIZER" --target-dir "$TARGET_DIR" || exit 1
mkdir -p logs
status=0
for t in $TARGETS; do
    mkdir -p "corpus-work/$t" "artifacts/$t"
    start=$(date -u +%FT%TZ)
    cargo fuzz run -s "$SANITIZER" --target-dir "$TARGET_DIR" "$t" "corpus-work/$t" "corpus/$t" -- \
        -runs="$RUNS" -timeout=20 -print_final_stats=1 >"logs/$t.log" 2>&1
    rc=$?
    runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "logs/$t.log" | grep -o '[0-9]*$')
    echo "$t sanitizer=$SANITIZER start=$start end=$(date -u +%FT%TZ) rc=$rc executions=${runs:-?} corpus-work=$(ls "corpus-work/$t" | wc -l)"
    [ "$rc" = 0 ] || status=1
done
exit $status
