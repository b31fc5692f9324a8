#!/usr/bin/env bash
# bench/txn_api.sh -- what one call of the txn API costs in a hook: nanoseconds
# (wall clock, median of RUNS) and CPU instructions (callgrind: deterministic,
# comparable across machines and commits), from a guarded hook (LuaJIT's
# interpreter: a script's default) and from a compiled one (jit = true).
#
#   bench/txn_api.sh                  every op, both modes
#   OPS="field header_get" bench/txn_api.sh
#   N=200000 RUNS=7 CALLGRIND=0 bench/txn_api.sh   (no valgrind pass)
#
# One moxy (one worker) runs bench/txn-api-hook.lua; GET /txn/MODE/OP/N runs
# OP N times in a loop and answers the loop's nanoseconds.  ns/call = (loop
# of OP - loop of "empty") / N.  instr/call: the same moxy under callgrind,
# counters zeroed before and dumped after one request of N_CG calls and one
# of none; (difference - the empty loop's) / N_CG.
set -euo pipefail
REPO_DIR=$(cd "$(dirname "$0")/.." && pwd)
MOXY_BIN=${MOXY_BIN:-$REPO_DIR/moxy}
N=${N:-100000}
N_CG=${N_CG:-20000}
RUNS=${RUNS:-5}
CALLGRIND=${CALLGRIND:-1}
OPS=${OPS:-"field path client_ip header_get header_set pick five_reads_two_sets"}
MODES="guarded jit"
[[ $CALLGRIND == 1 ]] && ! command -v valgrind >/dev/null && {
    echo "txn_api.sh: valgrind not found (apt-get install valgrind, or CALLGRIND=0)" >&2
    exit 2
}

WORK=$(mktemp -d "${TMPDIR:-/tmp}/moxy-txn-api.XXXXXX")
PID=""
cleanup() {
    [[ -n $PID ]] && kill "$PID" 2>/dev/null && wait "$PID" 2>/dev/null
    rm -rf "$WORK"
}
trap cleanup EXIT

PORT=$(python3 "$REPO_DIR/bench/tools/free_ports.py" 1 | head -n 1)
cat >"$WORK/moxy.lua" <<EOF
return {
  workers = 1,
  listen = { "127.0.0.1:$PORT" },
  pid_file = "$WORK/moxy.pid",
  -- never contacted: the hook answers every request itself
  upstreams = { origin = { servers = { "127.0.0.1:9" } } },
  scripts = { { path = "$REPO_DIR/bench/txn-api-hook.lua", jit = true } },
  lua = { cpu_budget = "60s" },
  log = { access = false, error = "stderr", level = "warn" },
}
EOF

# start [wrapper...]: moxy (under the wrapper) on PORT; sets PID
start() {
    "$@" "$MOXY_BIN" -c "$WORK/moxy.lua" >"$WORK/moxy.log" 2>&1 &
    PID=$!
    for _ in $(seq 600); do
        curl -fs -o /dev/null "http://127.0.0.1:$PORT/txn/jit/empty/1" && return 0
        kill -0 "$PID" 2>/dev/null || break
        sleep 0.1
    done
    echo "txn_api.sh: moxy did not start; its log:" >&2
    cat "$WORK/moxy.log" >&2
    exit 1
}

stop() {
    kill -TERM "$PID" 2>/dev/null || true
    wait "$PID" 2>/dev/null || true
    PID=""
}

get() { curl -fsS -H "User-Agent: txn-api-bench" "http://127.0.0.1:$PORT/txn/$1/$2/$3"; }

# ns MODE OP: median over RUNS of the loop's ns for N calls (after a warm-up)
ns() {
    get "$1" "$2" "$N" >/dev/null
    for _ in $(seq "$RUNS"); do get "$1" "$2" "$N"; echo; done | sort -n | awk '{v[NR] = $1} END {print v[int((NR + 1) / 2)]}'
}

declare -A NS INSTR
start
for mode in $MODES; do
    empty=$(ns "$mode" empty)
    for op in $OPS; do
        loop=$(ns "$mode" "$op")
        NS[$mode.$op]=$(awk -v a="$loop" -v b="$empty" -v n="$N" 'BEGIN {printf "%.1f", (a - b) / n}')
    done
done
stop

if [[ $CALLGRIND == 1 ]]; then
    start valgrind --tool=callgrind --callgrind-out-file="$WORK/cg.%p"
    # instructions of one request of n calls: counters zeroed, request, dumped
    instr() {
        rm -f "$WORK"/cg."$PID".*
        callgrind_control -z "$PID" >/dev/null 2>&1
        get "$1" "$2" "$3" >/dev/null
        callgrind_control -d "$PID" >/dev/null 2>&1
        awk '/^(summary|totals):/ {print $2; exit}' "$(ls "$WORK"/cg."$PID".* | sort | head -n 1)"
    }
    for mode in $MODES; do
        # warm-up: the JIT compiles (or gives up on) what it will
        for op in empty $OPS; do get "$mode" "$op" "$N_CG" >/dev/null; done
        base=$(instr "$mode" empty 0)
        empty=$(( $(instr "$mode" empty "$N_CG") - base ))
        for op in $OPS; do
            total=$(instr "$mode" "$op" "$N_CG")
            INSTR[$mode.$op]=$(( (total - base - empty) / N_CG ))
        done
    done
    stop
fi

printf "%-22s %14s %14s %16s %16s\n" op "guarded ns" "jit ns" "guarded instr" "jit instr"
for op in $OPS; do
    printf "%-22s %14s %14s %16s %16s\n" "$op" "${NS[guarded.$op]}" "${NS[jit.$op]}" \
        "${INSTR[guarded.$op]:--}" "${INSTR[jit.$op]:--}"
done
echo "(per call; N=$N, median of $RUNS; instructions: callgrind, N_CG=$N_CG)"
