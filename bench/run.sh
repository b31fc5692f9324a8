#!/usr/bin/env bash
# bench/run.sh -- moxy vs nginx, side by side, on loopback (`make bench`).
#
# Starts an origin (nginx, 1 worker: /small = 100-byte body, /large = 1 MiB
# file), nginx as a plain reverse proxy (bench/nginx-proxy.conf) and moxy
# (bench/moxy-bench.lua + bench/bench-hook.lua), each proxy with one worker,
# on free loopback ports.  Then, for every case (body, connections), for each
# proxy in turn: WARMUP s of unmeasured wrk, then DURATION s of
# `wrk -t2 -cN --latency`, recording req/s, p50/p99 latency, errors (non-2xx
# + socket errors), the proxy's CPU time (utime+stime from /proc/PID/stat,
# before/after) per request, and its RSS.  Then each proxy is restarted and
# holds IDLE_CONNS idle keep-alive connections (tools/idle_conns.py) to
# measure memory per idle connection.  RUNS repeats all of it; the report
# (tools/report.py) gives moxy/nginx ratios, as medians over the runs.
# HOOKS=1 adds the peers nginx-lua (nginx + lua-nginx-module doing the hook's
# work in rewrite_by_lua_block) and the moxy variants moxy-nohook, moxy-noop,
# moxy-jit, and the report adds moxy/nginx-lua and X/moxy-nohook ratios.
#
# Raw results: bench/results/<timestamp>/ (git-ignored): meta.txt, report.txt,
# run-N/{load.tsv,idle.tsv,checks.txt,wrk/*.txt,logs/*}.
#
# Knobs (environment variables, defaults in brackets):
#   DURATION [10]     measured seconds per case      WARMUP [2] unmeasured seconds
#   RUNS [1]          repeat everything, report medians
#   CONNS ["50 1000"] connection counts of the small-body (100 B) cases
#   LARGE_CONNS [50]  connection counts of the large-body (1 MiB) cases ("" = none)
#   CASES             overrides both: "body:conns ..." e.g. "small:50 large:50"
#   THREADS [2]       wrk threads              WRK_TIMEOUT [10s] wrk per-request timeout
#   IDLE_CONNS [10000] idle keep-alive connections (0 = skip the idle test)
#   IDLE_HOLD [3]     seconds the idle connections are held (>= 2)
#   IDLE_BATCH [100]  connections opened (requests in flight) at a time
#   PIN [1]           1 = taskset: proxies on PROXY_CPUS [0]; origin on
#                     ORIGIN_CPUS [1] and wrk/idle client on WRK_CPUS [1]; 0 = unpinned
#   MOXY_BIN [./moxy] the moxy binary (relative paths: to the current directory,
#                     except the default, which is the repository's ./moxy)
#   MOXY_WORKERS [1]  moxy `workers` (passed through the environment)
#   MOXY_STANDIN [0]  1 = run a second nginx proxy in moxy's place (label
#                     "standin"): tests the harness without moxy, and shows the
#                     noise floor (ratios should be ~1.00)
#   QUICK [0]         1 = smoke run: DURATION=3 WARMUP=1 IDLE_CONNS=1000, one
#                     case (small:50); explicit knobs still win
#   HOOKS [0]         1 = the hook-cost comparison: PEERS defaults to
#                     "nginx nginx-lua moxy-nohook moxy-noop moxy moxy-jit" and
#                     LARGE_CONNS to "" (small bodies only); nginx-lua needs
#                     Debian's libnginx-mod-http-lua (apt-get installs it if
#                     missing, only with HOOKS=1 or nginx-lua in PEERS)
#   PEERS             the proxies, in order (default "nginx moxy", or "nginx
#                     standin"): nginx (bench/nginx-proxy.conf), nginx-lua
#                     (bench/nginx-lua.conf), moxy (bench-hook.lua, guarded),
#                     moxy-jit (the same hook, jit = true), moxy-noop (an empty
#                     on_request), moxy-nohook (no scripts), standin (nginx as moxy)
#   READY_TIMEOUT [20] seconds a process gets to answer 200 on /small
#   RESULTS_DIR [bench/results/<timestamp>]   KEEP_SCRATCH [0] keep rendered configs
#
# Every process it starts is tracked by PID and stopped on exit, failure or
# Ctrl-C.  All traffic is on 127.0.0.1 and every load step is time-bounded.

set -euo pipefail

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_DIR=$(dirname "$BENCH_DIR")
TOOLS_DIR=$BENCH_DIR/tools

# ---------------------------------------------------------------- knobs ----
QUICK=${QUICK:-0}
HOOKS=${HOOKS:-0}
MOXY_STANDIN=${MOXY_STANDIN:-0}
if [[ $HOOKS == 1 ]]; then
    if [[ $MOXY_STANDIN == 1 ]]; then
        PEERS=${PEERS:-nginx nginx-lua standin}
    else
        PEERS=${PEERS:-nginx nginx-lua moxy-nohook moxy-noop moxy moxy-jit}
    fi
    [[ -n ${LARGE_CONNS+set} ]] || LARGE_CONNS=""   # the hook ratios are small-body
fi
if [[ -z ${PEERS:-} ]]; then
    if [[ $MOXY_STANDIN == 1 ]]; then PEERS="nginx standin"; else PEERS="nginx moxy"; fi
fi
if [[ $QUICK == 1 ]]; then
    DURATION=${DURATION:-3}
    WARMUP=${WARMUP:-1}
    IDLE_CONNS=${IDLE_CONNS:-1000}
    CASES=${CASES:-small:50}
fi
DURATION=${DURATION:-10}
WARMUP=${WARMUP:-2}
RUNS=${RUNS:-1}
CONNS=${CONNS:-50 1000}
LARGE_CONNS=${LARGE_CONNS-50}
if [[ -z ${CASES:-} ]]; then
    CASES=""
    for c in $CONNS; do CASES+=" small:$c"; done
    for c in $LARGE_CONNS; do CASES+=" large:$c"; done
fi
THREADS=${THREADS:-2}
WRK_TIMEOUT=${WRK_TIMEOUT:-10s}
IDLE_CONNS=${IDLE_CONNS:-10000}
IDLE_HOLD=${IDLE_HOLD:-3}
IDLE_BATCH=${IDLE_BATCH:-100}
PIN=${PIN:-1}
PROXY_CPUS=${PROXY_CPUS:-0}
ORIGIN_CPUS=${ORIGIN_CPUS:-1}
WRK_CPUS=${WRK_CPUS:-1}
MOXY_WORKERS=${MOXY_WORKERS:-1}
READY_TIMEOUT=${READY_TIMEOUT:-20}
KEEP_SCRATCH=${KEEP_SCRATCH:-0}
STAMP=$(date +%Y%m%d-%H%M%S)
RESULTS_DIR=${RESULTS_DIR:-$BENCH_DIR/results/$STAMP}

REF=nginx                                   # the reference proxy
SUBJECT=moxy                                # the proxy under test
[[ $MOXY_STANDIN == 1 ]] && SUBJECT=standin
# shellcheck disable=SC2206
PEER_LIST=($PEERS)
declare -A EXPECT_OF=(                      # X-Edge-Proxy each peer's work sets
    [nginx]=nginx [standin]=standin [nginx-lua]=nginx-lua
    [moxy]=moxy [moxy-jit]=moxy [moxy-noop]="" [moxy-nohook]=""
)

# ------------------------------------------------------------- helpers ----
log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
is_uint() { [[ $1 =~ ^[0-9]+$ ]]; }

for v in DURATION WARMUP RUNS THREADS IDLE_CONNS IDLE_HOLD IDLE_BATCH READY_TIMEOUT MOXY_WORKERS; do
    is_uint "${!v}" || die "$v must be a non-negative integer (got '${!v}')"
done
((DURATION > 0 && RUNS > 0 && THREADS > 0 && IDLE_BATCH > 0)) ||
    die "DURATION, RUNS, THREADS and IDLE_BATCH must be > 0"
((IDLE_HOLD >= 2)) || IDLE_HOLD=2
for c in $CASES; do
    [[ $c =~ ^(small|large):[0-9]+$ ]] || die "bad case '$c' (want small:N or large:N)"
done
[[ -n ${CASES// /} ]] || die "no cases (CONNS, LARGE_CONNS and CASES are all empty)"
NEED_MOXY=0 NEED_LUA=0
declare -A SEEN_PEER=()
for p in "${PEER_LIST[@]}"; do
    [[ -n ${EXPECT_OF[$p]+set} ]] ||
        die "unknown peer '$p' in PEERS (want: nginx nginx-lua moxy moxy-jit moxy-noop moxy-nohook standin)"
    [[ -z ${SEEN_PEER[$p]:-} ]] || die "peer '$p' is twice in PEERS"
    SEEN_PEER[$p]=1
    [[ $p == moxy* ]] && NEED_MOXY=1
    [[ $p == nginx-lua ]] && NEED_LUA=1
done
((${#PEER_LIST[@]} >= 1)) || die "PEERS is empty"

# render TEMPLATE OUT KEY=VALUE... : copy TEMPLATE with @@KEY@@ replaced.
render() {
    local tpl=$1 out=$2 kv args=()
    shift 2
    for kv in "$@"; do args+=(-e "s|@@${kv%%=*}@@|${kv#*=}|g"); done
    sed "${args[@]}" "$tpl" >"$out"
    if grep -v '^[[:space:]]*#' "$out" | grep -q '@@[A-Z_]*@@'; then
        die "unreplaced placeholder in $out"
    fi
}

# tree_pids ROOT : ROOT and all its descendants, one per line.
tree_pids() {
    ps -e -o pid=,ppid= | awk -v root="$1" '
        { parent[$1] = $2 }
        END {
            if (!(root in parent)) exit
            keep[root] = 1
            do {
                changed = 0
                for (p in parent)
                    if (!(p in keep) && (parent[p] in keep)) { keep[p] = 1; changed = 1 }
            } while (changed)
            for (p in keep) print p
        }'
}

# status_kib ROOT FIELD : FIELD of /proc/PID/status (VmRSS, VmHWM; kB) summed
# over the process tree (nginx: master + worker; moxy: one process).
status_kib() {
    local p sum=0 v
    for p in $(tree_pids "$1"); do
        v=$(awk -v f="$2:" '$1 == f { print $2 }' "/proc/$p/status" 2>/dev/null || true)
        sum=$((sum + ${v:-0}))
    done
    echo "$sum"
}

# pss_kib ROOT : proportional set size summed over the tree (kB).
pss_kib() {
    local p sum=0 v
    for p in $(tree_pids "$1"); do
        v=$(awk '$1 == "Pss:" { print $2 }' "/proc/$p/smaps_rollup" 2>/dev/null || true)
        sum=$((sum + ${v:-0}))
    done
    echo "$sum"
}

# cpu_ticks ROOT : utime + stime (clock ticks, all threads) summed over the tree.
cpu_ticks() {
    local p sum=0 v
    for p in $(tree_pids "$1"); do
        # after "(comm) " the fields are: state(1) ... utime(12) stime(13)
        v=$(sed 's/.*) //' "/proc/$p/stat" 2>/dev/null | awk '{ print $12 + $13 }' || true)
        sum=$((sum + ${v:-0}))
    done
    echo "$sum"
}

# cpu_snapshot : "cpuN total idle steal" per CPU from /proc/stat (ticks).
cpu_snapshot() {
    awk '/^cpu[0-9]+ / { t = 0; for (i = 2; i <= 9; i++) t += $i
                         print $1, t, $5 + $6, $9 }' /proc/stat
}

# cpu_busy BEFORE AFTER : "busy%<TAB>busy%...<TAB>steal%" per CPU over the interval.
cpu_busy() {
    awk -v before="$1" -v after="$2" 'BEGIN {
        n = split(before, b, "\n"); split(after, a, "\n")
        for (i = 1; i <= n; i++) {
            split(b[i], x, " "); split(a[i], y, " ")
            dt = y[2] - x[2]; if (dt <= 0) dt = 1
            printf "%.0f\t", 100 * (dt - (y[3] - x[3])) / dt
            st += y[4] - x[4]; tt += dt
        }
        printf "%.1f\n", (tt > 0 ? 100 * st / tt : 0)
    }'
}

# proc_start PID : kernel start time of PID (guards against PID reuse).
proc_start() { sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | awk '{ print $20 }'; }

STARTED=()   # "pid:starttime" of every long-running process this script started

# start_bg NAME LOG DIR CMD... : run CMD in DIR in the background; sets BG_PID.
start_bg() {
    local name=$1 logf=$2 dir=$3
    shift 3
    (cd "$dir" && exec "$@") >>"$logf" 2>&1 </dev/null &
    BG_PID=$!
    STARTED+=("$BG_PID:$(proc_start "$BG_PID" || true)")
    log "started $name (pid $BG_PID)"
}

# stop_tree PID : SIGTERM the process (it stops its own children), wait up to
# 10 s for the whole tree to go, then SIGKILL what is left.  Only PIDs this
# script started (and their descendants) are ever signalled.
stop_tree() {
    local root=$1 pids i left p
    pids=$(tree_pids "$root")
    [[ -n $pids ]] || { wait "$root" 2>/dev/null || true; return 0; }
    kill -TERM "$root" 2>/dev/null || true
    for ((i = 0; i < 100; i++)); do
        left=""
        for p in $pids; do kill -0 "$p" 2>/dev/null && left+=" $p"; done
        [[ -z $left ]] && break
        sleep 0.1
    done
    for p in $left; do kill -KILL "$p" 2>/dev/null || true; done
    wait "$root" 2>/dev/null || true
    local keep=() e
    for e in "${STARTED[@]}"; do [[ ${e%%:*} == "$root" ]] || keep+=("$e"); done
    STARTED=("${keep[@]}")
}

# bounded OUT CMD... : run a time-bounded step (stdout+stderr to OUT) in the
# background and wait for it, so that a signal to this script runs the trap at
# once (bash defers traps until a foreground child exits) and the step is
# stopped too.  (Redirect inside, not around the call: a trap that fires in a
# function inherits the function's redirections.)
bounded() {
    local out=$1
    shift
    "$@" >"$out" 2>&1 &
    local pid=$!
    STARTED+=("$pid:$(proc_start "$pid" || true)")
    local rc=0
    wait "$pid" || rc=$?
    local keep=() e
    for e in "${STARTED[@]}"; do [[ ${e%%:*} == "$pid" ]] || keep+=("$e"); done
    STARTED=("${keep[@]}")
    return $rc
}

CLEANED=0
cleanup() {
    local rc=$? e pid st i
    ((CLEANED)) && return
    CLEANED=1
    set +e
    trap '' INT TERM HUP
    for ((i = ${#STARTED[@]} - 1; i >= 0; i--)); do
        e=${STARTED[i]}
        pid=${e%%:*} st=${e#*:}
        # signal it only if it is still the process we started
        [[ -n $st && $(proc_start "$pid" || true) == "$st" ]] && stop_tree "$pid"
    done
    if [[ -n ${SCRATCH:-} && -d $SCRATCH ]]; then
        if ((rc != 0)) && [[ -d ${RESULTS_DIR:-} ]]; then   # keep nginx's logs for diagnosis
            for e in "$SCRATCH"/*/error.log; do
                if [[ -s $e ]]; then
                    cp "$e" "$RESULTS_DIR/logs/$(basename "$(dirname "$e")")-error.log" 2>/dev/null
                fi
            done
        fi
        if [[ $KEEP_SCRATCH == 1 ]]; then
            log "scratch directory kept: $SCRATCH"
        else
            rm -rf "$SCRATCH"
        fi
    fi
    if ((rc != 0)); then
        if [[ -n ${SCRATCH:-} && -d ${RESULTS_DIR:-} ]]; then
            log "exit status $rc; partial results in $RESULTS_DIR"
        else
            log "exit status $rc"
        fi
    fi
}
trap cleanup EXIT
trap 'log "interrupted"; exit 130' INT
trap 'log "terminated"; exit 143' TERM HUP

# http_code PORT PATH : HTTP status of one GET (000 when there is no answer).
http_code() {
    curl -s -o /dev/null -w '%{http_code}' --max-time 2 "http://127.0.0.1:$1$2" 2>/dev/null || true
}

# wait_ready NAME PID PORT LOG : until GET /small answers 200, or fail.
wait_ready() {
    local name=$1 pid=$2 port=$3 logf=$4 i
    for ((i = 0; i < READY_TIMEOUT * 10; i++)); do
        if ! kill -0 "$pid" 2>/dev/null; then
            log "$name exited during start-up; last lines of $logf:"
            tail -n 20 "$logf" >&2 || true
            return 1
        fi
        [[ $(http_code "$port" /small) == 200 ]] && return 0
        sleep 0.1
    done
    log "$name did not answer 200 on :$port/small within ${READY_TIMEOUT}s; last lines of $logf:"
    tail -n 20 "$logf" >&2 || true
    return 1
}

# check_proxy NAME PORT EXPECTED_HEADER CHECKS : one GET /small and one GET
# /large through the proxy: status, exact bodies, and the X-Edge-Seen echo
# that proves the proxy added its header.  A missing echo is recorded as a
# warning (the numbers are still taken); a wrong status or body is fatal.
check_proxy() {
    local name=$1 port=$2 want=$3 out=$4 d=$SCRATCH/check-$1 code seen
    mkdir -p "$d"
    code=$(curl -s -D "$d/small.h" -o "$d/small.b" -w '%{http_code}' --max-time 5 \
        "http://127.0.0.1:$port/small" || true)
    [[ $code == 200 ]] || die "$name: GET /small -> $code"
    cmp -s "$d/small.b" "$SCRATCH/small.expected" || die "$name: GET /small returned a wrong body"
    seen=$(awk -F': *' 'tolower($1) == "x-edge-seen" { sub(/\r$/, "", $2); print $2 }' "$d/small.h")
    code=$(curl -s -o "$d/large.b" -w '%{http_code}' --max-time 10 \
        "http://127.0.0.1:$port/large" || true)
    [[ $code == 200 ]] || die "$name: GET /large -> $code"
    cmp -s "$d/large.b" "$SCRATCH/www/large.bin" || die "$name: GET /large returned a wrong body"
    if [[ $seen == "$want" && -z $want ]]; then
        printf '%s\tok\tno X-Edge-Seen (this peer sets no header)\n' "$name" >>"$out"
        log "$name: /small and /large OK, no hook header (as expected for $name)"
    elif [[ $seen == "$want" ]]; then
        printf '%s\tok\tX-Edge-Seen: %s\n' "$name" "$seen" >>"$out"
        log "$name: /small and /large OK, hook header seen (X-Edge-Seen: $seen)"
    else
        printf '%s\tWARNING\tX-Edge-Seen: %s (want %s): its hook did not run as expected\n' \
            "$name" "${seen:-<none>}" "$want" >>"$out"
        log "WARNING: $name: origin saw X-Edge-Proxy='${seen:-<none>}', want '$want':" \
            "its hook did not run as expected, so the comparison is not like for like"
    fi
}

# start_proxy NAME LOGDIR : start a fresh proxy NAME on its port; sets PID_OF[NAME].
declare -A PORT_OF PID_OF LOGDIR_OF
start_proxy() {
    local name=$1 logf=$2/$1.log dir=$SCRATCH/$1 kind=$1
    LOGDIR_OF[$name]=$2
    rm -rf "$dir"
    mkdir -p "$dir/tmp"
    [[ $name == standin ]] && kind=nginx
    local variant=""
    case $name in
    moxy) variant="" ;;              # bench-hook.lua as before (MOXY_HOOK_JIT applies)
    moxy-*) variant=${name#moxy-} kind=moxy ;;
    esac
    case $kind in
    nginx)
        render "$BENCH_DIR/nginx-proxy.conf" "$dir/nginx.conf" PORT="${PORT_OF[$name]}" \
            ORIGIN_PORT="$ORIGIN_PORT" DIR="$dir" NOFILE="$NOFILE" \
            WORKER_CONNS="$NOFILE" EDGE_NAME="$name"
        start_bg "$name" "$logf" "$dir" "${PIN_PROXY[@]}" nginx -p "$dir" \
            -e "$dir/error.log" -c "$dir/nginx.conf" -g 'daemon off;'
        ;;
    nginx-lua)
        render "$BENCH_DIR/nginx-lua.conf" "$dir/nginx.conf" PORT="${PORT_OF[$name]}" \
            ORIGIN_PORT="$ORIGIN_PORT" DIR="$dir" NOFILE="$NOFILE" \
            WORKER_CONNS="$NOFILE" EDGE_NAME="$name" \
            NDK_MODULE="$NDK_MODULE" LUA_MODULE="$LUA_MODULE"
        start_bg "$name" "$logf" "$dir" "${PIN_PROXY[@]}" nginx -p "$dir" \
            -e "$dir/error.log" -c "$dir/nginx.conf" -g 'daemon off;'
        ;;
    moxy)
        start_bg "$name" "$logf" "$dir" env LISTEN_PORT="${PORT_OF[$name]}" \
            ORIGIN_PORT="$ORIGIN_PORT" MOXY_WORKERS="$MOXY_WORKERS" \
            MOXY_BENCH_VARIANT="$variant" \
            "${PIN_PROXY[@]}" "$MOXY_BIN" -c "$BENCH_DIR/moxy-bench.lua" -p "$dir/moxy.pid"
        ;;
    esac
    PID_OF[$name]=$BG_PID
    wait_ready "$name" "$BG_PID" "${PORT_OF[$name]}" "$logf" || die "$name did not start"
}

stop_proxy() {
    local name=$1
    [[ -n ${PID_OF[$name]:-} ]] || return 0
    stop_tree "${PID_OF[$name]}"
    PID_OF[$name]=""
    # keep nginx's own error log with the results (appended: load, then idle)
    [[ -s $SCRATCH/$name/error.log ]] &&
        cat "$SCRATCH/$name/error.log" >>"${LOGDIR_OF[$name]}/$name-error.log"
    return 0
}

# run_wrk PORT PATH CONNS SECONDS OUT : one time-bounded wrk run.
run_wrk() {
    local port=$1 path=$2 c=$3 secs=$4 out=$5 t=$THREADS
    ((t > c)) && t=$c
    bounded "$out" timeout -k 5 $((secs + 30)) "${PIN_WRK[@]}" wrk -t"$t" -c"$c" \
        -d"${secs}s" --latency --timeout "$WRK_TIMEOUT" "http://127.0.0.1:$port$path" || true
}

# parse_wrk FILE : "rps p50_ms p99_ms requests errors non2xx socket_errors"
# (wrk counts status >= 400 as "Non-2xx or 3xx"; socket errors are
# connect + read + write + timeout).
parse_wrk() {
    awk '
        function ms(v) {
            if (v ~ /us$/) return v / 1000
            if (v ~ /ms$/) return v + 0
            if (v ~ /m$/)  return v * 60000
            if (v ~ /s$/)  return v * 1000
            return v + 0
        }
        /^ +50%/ { p50 = ms($2) }
        /^ +99%/ { p99 = ms($2) }
        / requests in / { reqs = $1 }
        /^Requests\/sec:/ { rps = $2 }
        /Socket errors:/ { gsub(",", ""); sock += $4 + $6 + $8 + $10 }
        /Non-2xx or 3xx responses:/ { bad += $NF }
        END { printf "%.0f\t%.3f\t%.3f\t%d\t%d\t%d\t%d\n",
                     rps, p50, p99, reqs, bad + sock, bad, sock }' "$1"
}

# load_case RUN NAME BODY CONNS : warm-up, then one measured wrk run.
load_case() {
    local run=$1 name=$2 body=$3 c=$4 rdir=$RESULTS_DIR/run-$1
    local pid=${PID_OF[$name]} port=${PORT_OF[$name]} out stats
    local tk0 tk1 ok0 ok1 cs0 cs1 t0 t1 rss hwm pss cpu
    out=$rdir/wrk/$name-$body-c$c.txt
    kill -0 "$pid" 2>/dev/null || die "$name (pid $pid) is gone; see $rdir/logs/$name.log"
    ((WARMUP > 0)) && run_wrk "$port" "/$body" "$c" "$WARMUP" "$rdir/wrk/$name-$body-c$c.warmup.txt"
    local sq0=0 sq1=0
    tk0=$(cpu_ticks "$pid") ok0=$(cpu_ticks "$ORIGIN_PID") cs0=$(cpu_snapshot)
    [[ -n $KSOFTIRQD_PID ]] && sq0=$(cpu_ticks "$KSOFTIRQD_PID")
    t0=$(date +%s.%N)
    run_wrk "$port" "/$body" "$c" "$DURATION" "$out"
    t1=$(date +%s.%N)
    tk1=$(cpu_ticks "$pid") ok1=$(cpu_ticks "$ORIGIN_PID") cs1=$(cpu_snapshot)
    [[ -n $KSOFTIRQD_PID ]] && sq1=$(cpu_ticks "$KSOFTIRQD_PID")
    if ! kill -0 "$pid" 2>/dev/null; then
        log "$name (pid $pid) DIED during $body c=$c; last lines of its log:"
        tail -n 20 "$rdir/logs/$name.log" >&2 || true
        printf '%s\tDIED\tduring %s c=%s\n' "$name" "$body" "$c" >>"$rdir/checks.txt"
        die "$name crashed under load; wrk output in $out, log in $rdir/logs/$name.log"
    fi
    rss=$(status_kib "$pid" VmRSS) hwm=$(status_kib "$pid" VmHWM) pss=$(pss_kib "$pid")
    stats=$(parse_wrk "$out")
    local rps p50 p99 reqs errs
    read -r rps p50 p99 reqs errs _ _ <<<"$stats"
    local cpu_pct us_req org_pct sirq_pct
    read -r cpu_pct us_req org_pct sirq_pct < <(awk -v a="$tk0" -v b="$tk1" -v oa="$ok0" \
        -v ob="$ok1" -v sa="$sq0" -v sb="$sq1" -v t0="$t0" -v t1="$t1" -v n="$reqs" \
        -v hz="$HZ" 'BEGIN {
            el = t1 - t0; if (el <= 0) el = 1
            printf "%.1f %.2f %.1f %.1f\n", 100 * (b - a) / hz / el,
                (n > 0 ? 1e6 * (b - a) / hz / n : 0), 100 * (ob - oa) / hz / el,
                100 * (sb - sa) / hz / el }')
    cpu=$(cpu_busy "$cs0" "$cs1")
    # Busy time on the proxy's core that its process did not account for
    # (ksoftirqd, other tenants): a noise indicator, pinned single core only.
    local other=""
    if [[ $PIN == 1 && $PROXY_CPUS =~ ^[0-9]+$ ]]; then
        other=$(awk -v c="$cpu" -v i=$((PROXY_CPUS + 1)) -v p="$cpu_pct" \
            'BEGIN { split(c, a, "\t"); v = a[i] - p; printf "%.0f", (v < 0 ? 0 : v) }')
    fi
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' \
        "$run" "$name" "$body" "$c" "$stats" "$((tk1 - tk0))" "$cpu_pct" "$us_req" \
        "$org_pct" "$cpu" "$other" "${KSOFTIRQD_PID:+$sirq_pct}" "$rss" "$hwm" "$pss" "$port" \
        >>"$rdir/load.tsv"
    log "$name $body c=$c: $rps req/s, p50 ${p50} ms, p99 ${p99} ms, errors $errs;" \
        "CPU ${cpu_pct}% = ${us_req} us/req; origin ${org_pct}%; RSS ${rss} kB"
    sleep 1
}

# idle_case RUN NAME : fresh proxy, short warm burst, RSS baseline, then
# IDLE_CONNS idle keep-alive connections (one GET /small each) and RSS again.
idle_case() {
    local run=$1 name=$2 rdir=$RESULTS_DIR/run-$1 pid port out ready="" i hp
    start_proxy "$name" "$rdir/logs"
    pid=${PID_OF[$name]} port=${PORT_OF[$name]}
    out=$rdir/logs/idle-$name.txt
    # The burst makes the proxy allocate what IDLE_BATCH concurrent requests
    # need (buffers, upstream connections), so the delta is the idle cost.
    run_wrk "$port" /small "$IDLE_BATCH" 1 "$rdir/logs/idle-$name-burst.txt"
    sleep 1
    local rss0 pss0 rss1 pss1 est
    rss0=$(status_kib "$pid" VmRSS) pss0=$(pss_kib "$pid")
    timeout -k 5 $((IDLE_HOLD + 120)) "${PIN_WRK[@]}" "$PYTHON" "$TOOLS_DIR/idle_conns.py" \
        --port "$port" --conns "$IDLE_CONNS" --hold "$IDLE_HOLD" --deadline 90 \
        --batch "$IDLE_BATCH" >"$out" 2>&1 &
    hp=$!
    STARTED+=("$hp:$(proc_start "$hp" || true)")
    for ((i = 0; i < 1000; i++)); do   # <= 100 s; the client gives up at 90 s
        ready=$(awk '$1 == "READY"' "$out")
        [[ -n $ready ]] && break
        kill -0 "$hp" 2>/dev/null || break
        sleep 0.1
    done
    if [[ -z $ready ]]; then
        log "$name: idle client failed: $(tail -n 3 "$out" | tr '\n' ' ')"
        printf '%s\tIDLE-FAILED\tsee logs/idle-%s.txt\n' "$name" "$name" >>"$rdir/checks.txt"
        stop_tree "$hp"
        stop_proxy "$name"
        return 0
    fi
    sleep 1    # let the proxy settle; the client holds for IDLE_HOLD >= 2 s
    rss1=$(status_kib "$pid" VmRSS) pss1=$(pss_kib "$pid")
    est=$(ss -Htn state established "( sport = :$port )" 2>/dev/null | wc -l || echo 0)
    local rc=0
    wait "$hp" || rc=$?
    local keep=() e
    for e in "${STARTED[@]}"; do [[ ${e%%:*} == "$hp" ]] || keep+=("$e"); done
    STARTED=("${keep[@]}")
    ((rc == 0)) || log "$name: idle client exit status $rc"
    local opened failed alive
    read -r _ opened failed _ <<<"$ready"
    alive=$(awk -F= '/^DONE/ { print $2 }' "$out")
    local bpc=0 pbpc=0
    if ((opened > 0)); then
        bpc=$(((rss1 - rss0) * 1024 / opened))
        pbpc=$(((pss1 - pss0) * 1024 / opened))
    fi
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$run" "$name" \
        "$IDLE_CONNS" "$opened" "$failed" "${alive:-}" "$est" "$rss0" "$rss1" "$pss0" "$pss1" \
        "$bpc" "$pbpc" >>"$rdir/idle.tsv"
    log "$name idle: opened $opened, failed $failed, alive after hold ${alive:-?}," \
        "established $est; RSS $rss0 -> $rss1 kB = $bpc B/conn"
    stop_proxy "$name"
}

# ---------------------------------------------------------------- setup ----
for tool in nginx wrk curl python3 ps ss awk sed cmp timeout; do
    command -v "$tool" >/dev/null || die "missing '$tool' (tools/deps.sh bench installs it)"
done
# The real interpreter, not a wrapper (pyenv shim), so the PID we track is python.
PYTHON=$(python3 -c 'import sys; print(sys.executable)')
HZ=$(getconf CLK_TCK)

if ((!NEED_MOXY)); then
    MOXY_BIN="(none: no moxy peer in PEERS)"
    [[ $MOXY_STANDIN == 1 ]] && MOXY_BIN="(standin: nginx)"
else
    if [[ -z ${MOXY_BIN:-} ]]; then
        MOXY_BIN=$REPO_DIR/moxy
    elif [[ $MOXY_BIN != /* ]]; then
        MOXY_BIN=$PWD/$MOXY_BIN
    fi
    [[ -x $MOXY_BIN ]] || die "no moxy binary at $MOXY_BIN (build it with 'make moxy'," \
        "point MOXY_BIN at one, or MOXY_STANDIN=1 to test the harness with nginx in its place)"
fi

# nginx-lua needs lua-nginx-module (+ ndk) built for this nginx.  With
# HOOKS=1 / nginx-lua in PEERS only, install Debian's package if missing.
NDK_MODULE="" LUA_MODULE=""
find_lua_modules() {
    local d
    NDK_MODULE="" LUA_MODULE=""
    for d in /usr/lib/nginx/modules /usr/share/nginx/modules /usr/lib64/nginx/modules; do
        [[ -z $NDK_MODULE && -f $d/ndk_http_module.so ]] && NDK_MODULE=$d/ndk_http_module.so
        [[ -z $LUA_MODULE && -f $d/ngx_http_lua_module.so ]] && LUA_MODULE=$d/ngx_http_lua_module.so
    done
    [[ -n $NDK_MODULE && -n $LUA_MODULE ]]
}
if ((NEED_LUA)) && ! find_lua_modules; then
    lua_help="the nginx-lua peer needs Debian's libnginx-mod-http-lua (lua-nginx-module +"
    lua_help+=" ndk): install it with 'apt-get install -y libnginx-mod-http-lua', or leave"
    lua_help+=" nginx-lua out of PEERS (e.g. PEERS='nginx moxy-nohook moxy-noop moxy moxy-jit')"
    if ((EUID != 0)) || ! command -v apt-get >/dev/null; then
        die "$lua_help (not installing it: this needs root and apt-get)"
    fi
    log "nginx-lua: lua-nginx-module not found; apt-get install -y libnginx-mod-http-lua ..."
    mkdir -p "$RESULTS_DIR/logs"
    apt_log=$RESULTS_DIR/logs/apt-get.log
    if ! DEBIAN_FRONTEND=noninteractive timeout 300 apt-get install -y libnginx-mod-http-lua \
            >"$apt_log" 2>&1; then
        log "nginx-lua: install failed; apt-get update, then trying again"
        DEBIAN_FRONTEND=noninteractive timeout 300 apt-get update >>"$apt_log" 2>&1 || true
        DEBIAN_FRONTEND=noninteractive timeout 300 apt-get install -y libnginx-mod-http-lua \
            >>"$apt_log" 2>&1 || true
    fi
    find_lua_modules || die "$lua_help; apt-get could not install it (see $apt_log)"
    log "nginx-lua: installed ($LUA_MODULE)"
fi
if ((NEED_LUA)); then
    # a module built for another nginx version refuses to load: say so now
    lua_t=$(mktemp -d "${TMPDIR:-/tmp}/moxy-bench-luat.XXXXXX")
    printf 'load_module %s;\nload_module %s;\nevents {}\n' "$NDK_MODULE" "$LUA_MODULE" \
        >"$lua_t/nginx.conf"
    if ! lua_err=$(timeout 20 nginx -t -p "$lua_t" -e "$lua_t/error.log" -c "$lua_t/nginx.conf" 2>&1); then
        rm -rf "$lua_t"
        die "nginx-lua: nginx cannot load $LUA_MODULE: $(tail -n 3 <<<"$lua_err" | tr '\n' ' ')"
    fi
    rm -rf "$lua_t"
fi

PIN_PROXY=() PIN_ORIGIN=() PIN_WRK=()
if [[ $PIN == 1 ]]; then
    command -v taskset >/dev/null || die "PIN=1 needs taskset (util-linux); or PIN=0"
    ncpu=$(nproc)
    if ((ncpu < 2)); then
        log "WARNING: $ncpu CPU: pinning needs 2; running unpinned (PIN=0)"
        PIN=0
    else
        PIN_PROXY=(taskset -c "$PROXY_CPUS")
        PIN_ORIGIN=(taskset -c "$ORIGIN_CPUS")
        PIN_WRK=(taskset -c "$WRK_CPUS")
    fi
fi

# The kernel thread that runs deferred network softirq work on the proxy's
# core: its CPU time is the proxy's network cost that /proc/PID/stat misses.
KSOFTIRQD_PID=""
if [[ $PIN == 1 && $PROXY_CPUS =~ ^[0-9]+$ ]]; then
    KSOFTIRQD_PID=$(ps -e -o pid=,comm= | awk -v n="ksoftirqd/$PROXY_CPUS" '$2 == n { print $1 }')
fi

# 10k idle connections need > 10k descriptors in the proxy and in the client;
# the proxy also needs some for origin connections.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
NOFILE=$(ulimit -n)
[[ $NOFILE == unlimited ]] && NOFILE=1048576
if ((IDLE_CONNS > 0 && IDLE_CONNS + 1200 > NOFILE)); then
    new=$((NOFILE - 1200))
    ((new > 0)) || new=0
    log "WARNING: open-file limit $NOFILE is too low for IDLE_CONNS=$IDLE_CONNS; using $new"
    IDLE_CONNS=$new
fi

read -r -a ALL_PORTS < <("$PYTHON" "$TOOLS_DIR/free_ports.py" $((1 + ${#PEER_LIST[@]})))
((${#ALL_PORTS[@]} == 1 + ${#PEER_LIST[@]})) || die "free_ports.py gave too few ports"
ORIGIN_PORT=${ALL_PORTS[0]}
for i in "${!PEER_LIST[@]}"; do PORT_OF[${PEER_LIST[i]}]=${ALL_PORTS[i + 1]}; done

mkdir -p "$RESULTS_DIR/logs"
RESULTS_DIR=$(cd "$RESULTS_DIR" && pwd)
SCRATCH=$(mktemp -d "${TMPDIR:-/tmp}/moxy-bench.XXXXXX")
chmod 755 "$SCRATCH"                     # nginx workers run as nobody under root
mkdir -p "$SCRATCH/www" "$SCRATCH/origin/tmp"
head -c 1048576 /dev/urandom >"$SCRATCH/www/large.bin"
printf '%s\n' "origin-small-body-0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ-0123456789-padding" \
    >"$SCRATCH/small.expected"
chmod 644 "$SCRATCH/www/large.bin"

# CPU use of each core over 2 s before anything starts: well above 0 means
# something else is running on this machine.
bg0=$(cpu_snapshot); sleep 2; bg1=$(cpu_snapshot)
BG_BUSY=$(cpu_busy "$bg0" "$bg1" | tr '\t' ' ')
{
    echo "date: $(date -Is)"
    echo "host: $(uname -sr), $(nproc) CPUs, $(awk '/MemTotal/ { print $2 " kB" }' /proc/meminfo)"
    echo "loadavg at start: $(cat /proc/loadavg)"
    echo "background busy % (per cpu, then steal), 2 s before start: $BG_BUSY"
    echo "versions: $(nginx -v 2>&1) | $(wrk -v 2>&1 | head -n 1 | cut -d' ' -f1-2)"
    if [[ $MOXY_STANDIN == 1 ]] && ((!NEED_MOXY)); then
        echo "subject: standin (MOXY_STANDIN=1: a second nginx proxy in moxy's place)"
    elif ((!NEED_MOXY)); then
        echo "subject: none (no moxy peer in PEERS)"
    else
        echo "subject: moxy $MOXY_BIN ($(timeout 5 "$MOXY_BIN" -v 2>/dev/null | head -n 1 || true))" \
            "sha256 $(sha256sum "$MOXY_BIN" | cut -c1-16)" \
            "built $(date -r "$MOXY_BIN" -Is)"
        echo "git: $(git -C "$REPO_DIR" rev-parse --short HEAD 2>/dev/null || echo '?')" \
            "($(git -C "$REPO_DIR" status --porcelain -- core lua 2>/dev/null | wc -l) changed files in core/ lua/)"
    fi
    echo "peers: ${PEER_LIST[*]} (HOOKS=$HOOKS)"
    if ((NEED_LUA)); then
        echo "nginx-lua: $LUA_MODULE ($(dpkg-query -W -f '${Package} ${Version}' libnginx-mod-http-lua 2>/dev/null || echo '?'))"
    fi
    if ((NEED_MOXY)); then
        echo "moxy hook: MOXY_HOOK_JIT=${MOXY_HOOK_JIT:-0} (applies to the peer moxy only)"
    fi
    echo "settings: CASES='${CASES# }' DURATION=$DURATION WARMUP=$WARMUP RUNS=$RUNS THREADS=$THREADS IDLE_CONNS=$IDLE_CONNS IDLE_HOLD=$IDLE_HOLD IDLE_BATCH=$IDLE_BATCH MOXY_WORKERS=$MOXY_WORKERS QUICK=$QUICK"
    if [[ $PIN == 1 ]]; then
        echo "pinning: PIN=1 proxies=cpu$PROXY_CPUS origin=cpu$ORIGIN_CPUS wrk=cpu$WRK_CPUS"
    else
        echo "pinning: PIN=0 (nothing pinned)"
    fi
    ports="origin $ORIGIN_PORT"
    for p in "${PEER_LIST[@]}"; do ports+=", $p ${PORT_OF[$p]}"; done
    echo "ports: $ports; open-file limit $NOFILE"
} >"$RESULTS_DIR/meta.txt"
log "results in $RESULTS_DIR (background CPU busy % per cpu, then steal: $BG_BUSY)"
if awk -v s="$BG_BUSY" 'BEGIN { n = split(s, a, " "); for (i = 1; i < n; i++) if (a[i] > 20) exit 0; exit 1 }'; then
    log "WARNING: the machine is busy before the benchmark starts; expect noisy numbers"
fi

# --------------------------------------------------------------- origin ----
render "$BENCH_DIR/nginx-origin.conf" "$SCRATCH/origin/nginx.conf" PORT="$ORIGIN_PORT" \
    DIR="$SCRATCH/origin" WWW="$SCRATCH/www" NOFILE="$NOFILE" WORKER_CONNS="$NOFILE"
start_bg origin "$RESULTS_DIR/logs/origin.log" "$SCRATCH/origin" "${PIN_ORIGIN[@]}" nginx \
    -p "$SCRATCH/origin" -e "$SCRATCH/origin/error.log" -c "$SCRATCH/origin/nginx.conf" -g 'daemon off;'
ORIGIN_PID=$BG_PID
wait_ready origin "$ORIGIN_PID" "$ORIGIN_PORT" "$RESULTS_DIR/logs/origin.log" || die "origin did not start"
[[ $(curl -s --max-time 5 "http://127.0.0.1:$ORIGIN_PORT/large" | wc -c) == 1048576 ]] ||
    die "origin: /large is not 1 MiB"

# ----------------------------------------------------------------- runs ----
LOAD_HEADER=$(printf 'run\tproxy\tbody\tconns\trps\tp50_ms\tp99_ms\trequests\terrors\tnon2xx\tsocket_errors\tcpu_ticks\tcpu_pct\tus_per_req\torigin_cpu_pct\t%s\tsteal_pct\tproxy_core_other_pct\tksoftirqd_pct\trss_kib\thwm_kib\tpss_kib\tport' \
    "$(awk '/^cpu[0-9]+ / { printf "%s%s_busy_pct", (n++ ? "\t" : ""), $1 }' /proc/stat)")
IDLE_HEADER=$(printf 'run\tproxy\tconns_wanted\topened\tfailed\talive_after_hold\testablished\trss_base_kib\trss_idle_kib\tpss_base_kib\tpss_idle_kib\tbytes_per_conn\tpss_bytes_per_conn')

for ((run = 1; run <= RUNS; run++)); do
    rdir=$RESULTS_DIR/run-$run
    mkdir -p "$rdir/wrk" "$rdir/logs"
    echo "$LOAD_HEADER" >"$rdir/load.tsv"
    echo "$IDLE_HEADER" >"$rdir/idle.tsv"
    : >"$rdir/checks.txt"
    # Alternate which proxy goes first, so neither always gets the
    # (slightly different) first slot of each case.
    # (Rotate the peer list by one per run: with two peers, this alternates.)
    n_peers=${#PEER_LIST[@]} order=()
    for ((i = 0; i < n_peers; i++)); do
        order+=("${PEER_LIST[(i + run - 1) % n_peers]}")
    done
    log "=== run $run/$RUNS: cases ${CASES# }; order ${order[*]} ==="

    # Load: both proxies up (the idle one costs nothing), cases interleaved,
    # so the two measurements of a case are seconds apart on this machine.
    for name in "${order[@]}"; do
        start_proxy "$name" "$rdir/logs"
        check_proxy "$name" "${PORT_OF[$name]}" "${EXPECT_OF[$name]}" "$rdir/checks.txt"
    done
    for cs in $CASES; do
        for name in "${order[@]}"; do
            load_case "$run" "$name" "${cs%%:*}" "${cs##*:}"
        done
    done
    for name in "${order[@]}"; do stop_proxy "$name"; done

    # Idle keep-alive memory: each proxy fresh, alone.
    if ((IDLE_CONNS > 0)); then
        for name in "${order[@]}"; do idle_case "$run" "$name"; done
    fi
done

stop_tree "$ORIGIN_PID"
cp "$SCRATCH/origin/error.log" "$RESULTS_DIR/logs/origin-error.log" 2>/dev/null || true
"$PYTHON" "$TOOLS_DIR/report.py" --ref "$REF" --subject "$SUBJECT" "$RESULTS_DIR" |
    tee "$RESULTS_DIR/report.txt"
log "done: $RESULTS_DIR"
