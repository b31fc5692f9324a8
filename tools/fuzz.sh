#!/bin/sh
# fuzz.sh -- run libFuzzer harnesses (built by `make fuzz-build` into build-fuzz/).
#
#   FUZZ_S=60 tools/fuzz.sh NAME...
#
# Each NAME runs for FUZZ_S seconds on one core, starting from its seeds
# (fuzz/corpus/NAME/) and what earlier runs found (build-fuzz/corpus/NAME/,
# where new inputs go), with fuzz/NAME.dict when there is one.  A crash, a
# leak or a sanitizer report stops the run: its input is written to
# build-fuzz/crashes/NAME-*, and the script exits 1 after the other harnesses
# ran.  The last line of each run gives executions and coverage.
set -u
cd "$(dirname "$0")/.."
S=${FUZZ_S:-60}
failed=""
mkdir -p build-fuzz/crashes
for name in "$@"; do
    bin=build-fuzz/${name}_fuzz
    work=build-fuzz/corpus/$name
    mkdir -p "$work"
    dict=""
    [ -f "fuzz/$name.dict" ] && dict="-dict=fuzz/$name.dict"
    log=build-fuzz/$name.log
    # -rss_limit_mb: a harness that grows without bound is a finding too
    "$bin" -max_total_time="$S" -print_final_stats=1 -rss_limit_mb=2048 -timeout=10 \
        -artifact_prefix="build-fuzz/crashes/$name-" $dict "$work" "fuzz/corpus/$name" >"$log" 2>&1
    rc=$?
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1)
    rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
    if [ $rc -ne 0 ]; then
        echo "fuzz $name: FAILED (exit $rc) after ${execs:-?} executions; see $log"
        grep -E '^(==[0-9]+==ERROR|SUMMARY|.*runtime error)' "$log" | head -5
        failed="$failed $name"
    else
        echo "fuzz $name: ${execs:-?} executions in ${S} s (${rate:-?}/s), $cov"
    fi
done
[ -z "$failed" ] || { echo "fuzz: failed:$failed"; exit 1; }
