#!/usr/bin/env bash
# bench/access.sh -- what access control and rate limits cost a request:
# moxy.acl, moxy.ratelimit (local and Redis), the concurrency limit and
# moxy.waf, against the same moxy without them, side by side in one run.
#
# One nginx origin (bench/nginx-origin.conf: GET /small, 100 B from memory)
# and one moxy per variant, all up at once (an idle one uses no CPU), one
# worker each, pinned to PROXY_CPUS (origin, wrk and redis-server on the
# other core).  Every moxy runs bench/moxy-access-bench.lua; the variants
# differ by their script only (bench/access-hook.lua, whose on_request does the
# variant's work and nothing else):
#   nohook  no script at all (a second baseline row)
#   noop    on_request = function(txn) end: THE BASELINE; the others pay the
#           same cost of entering Lua, so their excess over it is the feature's
#   acl     moxy.acl.new{ { deny, ip = { file = <PREFIXES random IPv4 and IPv6
#           prefixes, fixed SEED, none holding 127.0.0.1> } },
#           { deny, path = "^/admin/" } } + acl:enforce(txn): no rule matches
#   rl      moxy.ratelimit.new{ rate = 1e6 r/s, burst = 1000, dict = "limits" }
#           + lim:enforce(txn, txn.client.ip): never denies
#   redis   the same, redis = { port = <a redis-server this script starts>,
#           timeout = 0.2 }: one EVALSHA round trip a request
#   conc    moxy.ratelimit.concurrency{ max = 1e6 } + conc:enter(txn, txn.client.ip)
#   waf     moxy.waf.new{ name = "bench" } (the default rules, block mode, anomaly
#           scoring) + waf:enforce(txn): no rule matches the measured request
#   noop2   a second moxy with the noop hook: noop2/noop is the harness's
#           noise floor (an A/A comparison)
# The measured request (REQUEST; every variant of a run gets the same one, so
# the ratios stay fair; the hooks' cost depends on it, the WAF's most):
#   small    GET /small, Host only (wrk's default request; the CALLGRIND
#            client adds "User-Agent: access.sh"): little for a WAF to look at
#   browser  GET /small?q=summer+linen+shirts&page=2&sort=price_asc&utm_source=newsletter
#            with the headers Chrome 131 sends on a page load (Host
#            shop.example.com, User-Agent, Accept with q-values,
#            Accept-Language, Accept-Encoding, Referer with a query,
#            sec-ch-ua*, Sec-Fetch-*, Upgrade-Insecure-Requests, and a Cookie
#            of 5 pairs: Google Analytics _ga and _ga_<id>, consent, cart, and a
#            200-byte session token): ~1.3 KB of request head
# wrk gets it as its path and -H options, curl (the checks) likewise, and the
# CALLGRIND client as bytes; written to request.txt in the results.  The origin
# must answer the request's path and query as it does /small (checked).
# Checks before any load: `moxy -t` for each variant (the ACL's load-time
# asserts: two addresses of the list are in its set, 127.0.0.1 is not, the
# set's size; the WAF's rule count); then each variant answers the measured
# request with 200 and the origin's exact body; the acl variant answers
# /admin/x with 403 (its second rule is evaluated); the waf variant answers
# /small?q=%3Cscript%3Ealert(1)%3C%2Fscript%3E and the measured request with
# a Cookie "theme=../../etc/passwd" added with 403 and its page (its rules run,
# on the query and on the cookies); variants built to deny, started for the
# check only: acl-deny (the list + 127.0.0.0/8) answers 403, rl-deny (1r/m)
# 200 then 429, redis-deny 200 then 429 with the key
# moxy:rl:benchdeny:127.0.0.1 in Redis, and waf-deny (the default rules + one
# that matches the path /small) answers the measured request with 403;
# the redis variant's GET must make Redis run the limiter's script (EVALSHA,
# INFO commandstats) and that script SET moxy:rl:bench:127.0.0.1 (redis-cli
# MONITOR: at 1e6 r/s the key lives ~10 ms, too short to look it up after).
#
# Per run (RUNS), the variants start fresh and are measured in turn, the order
# rotating by one each run: WARMUP s of unmeasured wrk, then DURATION s of
# `wrk -t THREADS -c CONNS --latency` with REQUEST: req/s, p99, errors, and the
# moxy's CPU time (utime + stime of its process tree, /proc) per request; for
# Redis, redis-server's CPU per request and the EVALSHA calls per request (1.0:
# every decision went to Redis, no local fallback).  tools/access_report.py
# prints the medians of RUNS, and ratios against noop (and nohook) taken within
# each run, then their median: req/s, CPU us/req, and the extra us of CPU per
# request (variant - noop).
#
# A variant that does not start, answers a check wrongly or dies under load
# is FAILED with the reason, and the rest goes on.  Exit status: 0 when
# everything was measured, 1 when something FAILED (the report is printed), 2
# when the harness cannot run (a missing tool; the origin, Redis or the
# baseline does not start).  Every step has a time limit; every process started
# is stopped on exit or signal, by PID.
#
# Knobs (environment variables, defaults in brackets):
#   RUNS [5]  DURATION [8] measured s  WARMUP [2] unmeasured s (0 = none)
#   QUICK [0]  1 = RUNS=1 DURATION=2 WARMUP=1: a smoke run (explicit knobs win)
#   CONNS [50]  THREADS [2]  WRK_TIMEOUT [10s]   wrk -c / -t / --timeout
#   VARIANTS ["nohook noop acl rl redis conc waf noop2"]  noop is needed (the baseline)
#   REQUEST [small]  small | browser: the measured request (above)
#   PREFIXES [100000]  V6_SHARE [50] % of them IPv6   SEED [20261206]
#   HOOK_JIT [0]  1 = the hooks with { jit = true } (not guarded)
#   CALLGRIND [0]  1 = instead of wrk: each variant once under valgrind's
#                  callgrind, one keep-alive connection, CG_WARMUP [3000]
#                  requests, then CG_N [2000] counted: instructions per request
#                  (deterministic: resolves what wrk's noise hides; RUNS,
#                  DURATION, WARMUP, CONNS do not apply); the dumps are kept in
#                  logs/callgrind.<variant>.out (callgrind_annotate)
#   MOXY_BIN [./moxy]  (copied at start, like the Lua modules)  MOXY_WORKERS [1]
#   LUA_REV []  moxy's Lua modules, copied at start into the scratch directory
#               (MOXY_LUA_DIR of every moxy, so an edit of lua/ during the run
#               cannot reach half of the variants): empty = the working tree's
#               lua/; "index" = the files staged in git; a directory (absolute
#               path, holding moxy/config.lua); else a git commit (git archive
#               REV lua).  meta.txt has the snapshot's sha256.
#   PIN [1]  PROXY_CPUS [0]  ORIGIN_CPUS [1]  WRK_CPUS [1]  REDIS_CPUS [ORIGIN_CPUS]
#   READY_TIMEOUT [20] s  RESULTS_DIR [bench/results/access-<timestamp>]  KEEP_SCRATCH [0]
#
# Needs nginx, wrk, redis-server and redis-cli (with redis in VARIANTS), curl,
# python3, taskset, ss.  Run as root, it apt-get installs the missing packages.
# All on 127.0.0.1.
# shellcheck disable=SC2317  # functions called from traps
set -euo pipefail

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_DIR=$(dirname "$BENCH_DIR")
TOOLS_DIR=$BENCH_DIR/tools

QUICK=${QUICK:-0}
if [[ $QUICK == 1 ]]; then
    RUNS=${RUNS:-1}
    DURATION=${DURATION:-2}
    WARMUP=${WARMUP:-1}
fi
RUNS=${RUNS:-5}
DURATION=${DURATION:-8}
WARMUP=${WARMUP:-2}
CONNS=${CONNS:-50}
THREADS=${THREADS:-2}
WRK_TIMEOUT=${WRK_TIMEOUT:-10s}
VARIANTS=${VARIANTS:-nohook noop acl rl redis conc waf noop2}
REQUEST=${REQUEST:-small}
PREFIXES=${PREFIXES:-100000}
V6_SHARE=${V6_SHARE:-50}
SEED=${SEED:-20261206}
HOOK_JIT=${HOOK_JIT:-0}
CALLGRIND=${CALLGRIND:-0}
CG_N=${CG_N:-2000}
CG_WARMUP=${CG_WARMUP:-3000}
MOXY_BIN=${MOXY_BIN:-$REPO_DIR/moxy}
[[ $MOXY_BIN == /* ]] || MOXY_BIN=$PWD/$MOXY_BIN
MOXY_WORKERS=${MOXY_WORKERS:-1}
PIN=${PIN:-1}
PROXY_CPUS=${PROXY_CPUS:-0}
ORIGIN_CPUS=${ORIGIN_CPUS:-1}
WRK_CPUS=${WRK_CPUS:-1}
REDIS_CPUS=${REDIS_CPUS:-$ORIGIN_CPUS}
READY_TIMEOUT=${READY_TIMEOUT:-20}
KEEP_SCRATCH=${KEEP_SCRATCH:-0}
LUA_REV=${LUA_REV:-}
STAMP=$(date +%Y%m%d-%H%M%S)
RESULTS_KIND=access
[[ $CALLGRIND == 1 ]] && RESULTS_KIND=access-callgrind
RESULTS_DIR=${RESULTS_DIR:-$BENCH_DIR/results/$RESULTS_KIND-$STAMP}

# The measured variants and what the hook does (for meta.txt and the report)
declare -A WHAT_OF=(
    [nohook]="no script"
    [noop]="empty on_request (baseline)"
    [acl]="moxy.acl: $PREFIXES-prefix ip list + path rule, enforce"
    [rl]="moxy.ratelimit local, enforce(txn, client.ip)"
    [redis]="moxy.ratelimit with redis, enforce(txn, client.ip)"
    [conc]="moxy.ratelimit.concurrency, enter(txn, client.ip)"
    [waf]="moxy.waf, the default rules, block mode, enforce"
    [noop2]="empty on_request, a second moxy (A/A)"
)
# The hook's variant (access-hook.lua) of each name
declare -A HOOK_OF=([nohook]=nohook [noop]=noop [acl]=acl [rl]=rl [redis]=redis [conc]=conc [waf]=waf [noop2]=noop
    [acl-deny]=acl-deny [rl-deny]=rl-deny [redis-deny]=redis-deny [waf-deny]=waf-deny)

log() { printf '[%s] %s\n' "$(date +%T)" "$*" >&2; }
die() { log "access.sh: ERROR: $*"; exit 2; }
for v in RUNS DURATION WARMUP CONNS THREADS PREFIXES V6_SHARE SEED READY_TIMEOUT MOXY_WORKERS CG_N CG_WARMUP; do
    [[ ${!v} =~ ^[0-9]+$ ]] || die "$v must be a non-negative integer (got '${!v}')"
done
((RUNS > 0 && DURATION > 0 && CONNS > 0 && THREADS > 0 && PREFIXES > 0)) ||
    die "RUNS, DURATION, CONNS, THREADS and PREFIXES must be > 0"
((V6_SHARE <= 100)) || die "V6_SHARE is a percentage (got $V6_SHARE)"
((THREADS > CONNS)) && THREADS=$CONNS
[[ $HOOK_JIT == 0 || $HOOK_JIT == 1 ]] || die "HOOK_JIT must be 0 or 1"
[[ $CALLGRIND == 0 || $CALLGRIND == 1 ]] || die "CALLGRIND must be 0 or 1"
((CG_N > 0)) || die "CG_N must be > 0"
# shellcheck disable=SC2206
VLIST=($VARIANTS)
declare -A SEEN=()
for v in "${VLIST[@]}"; do
    [[ -n ${WHAT_OF[$v]:-} ]] || die "unknown variant '$v' in VARIANTS (want any of nohook noop acl rl redis conc waf noop2)"
    [[ -z ${SEEN[$v]:-} ]] || die "variant '$v' twice in VARIANTS"
    SEEN[$v]=1
done
[[ -n ${SEEN[noop]:-} ]] || die "VARIANTS must hold noop (the baseline of every ratio)"
WANT_REDIS=0
[[ -n ${SEEN[redis]:-} ]] && WANT_REDIS=1
WANT_ACL=0
[[ -n ${SEEN[acl]:-} ]] && WANT_ACL=1

# The measured request (REQUEST): REQ_PATH, and REQ_HEADERS ("Name: value"
# each, after Host; wrk and curl get them as -H, the CALLGRIND client as bytes).
# REQ_HOST empty: the client's own Host (wrk: 127.0.0.1:port; CALLGRIND: bench).
REQ_HEADERS=()
case $REQUEST in
small)
    REQ_PATH=/small REQ_HOST=""
    ;;
browser)
    REQ_PATH="/small?q=summer+linen+shirts&page=2&sort=price_asc&utm_source=newsletter"
    REQ_HOST=shop.example.com
    # a 200-byte session token (base64url, JWT-like: header.payload.signature)
    SESSION_TOKEN="eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzaWQiOiI3ZjNjOWUyYTRiMWQ0ZThmOWEwYjJjM2Q0ZTVmNjA3MSIsInVpZCI6ODQ1MjIxLCJpYXQiOjE3NjQ5NTA0MDAsImV4cCI6MTc2NTA1NDAwMH0.GzLCjLOMBUgOzMG9YP-XAptXoFyWcYuW2tfp2EiU9Uk"
    ((${#SESSION_TOKEN} == 200)) || die "the session token is ${#SESSION_TOKEN} bytes, not 200"
    REQ_HEADERS=(
        "Connection: keep-alive"
        'sec-ch-ua: "Google Chrome";v="131", "Chromium";v="131", "Not_A Brand";v="24"'
        "sec-ch-ua-mobile: ?0"
        'sec-ch-ua-platform: "Windows"'
        "Upgrade-Insecure-Requests: 1"
        "User-Agent: Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36"
        "Accept: text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,image/apng,*/*;q=0.8,application/signed-exchange;v=b3;q=0.7"
        "Sec-Fetch-Site: same-origin"
        "Sec-Fetch-Mode: navigate"
        "Sec-Fetch-User: ?1"
        "Sec-Fetch-Dest: document"
        "Referer: https://shop.example.com/search?q=linen+shirts&page=1&sort=relevance"
        "Accept-Encoding: gzip, deflate, br, zstd"
        "Accept-Language: en-US,en;q=0.9,de-DE;q=0.8,de;q=0.7"
        "Cookie: _ga=GA1.1.1849204462.1764950400; _ga_7XK3M9PQ2R=GS1.1.1765036800.4.1.1765038291.0.0.0; cookie_consent=necessary%2Canalytics; cart_id=c-5e2b7f91a4d3; session=$SESSION_TOKEN"
    )
    ;;
*) die "REQUEST must be small or browser (got '$REQUEST')" ;;
esac
# REQ_H: the -H options of wrk and curl
REQ_H=()
[[ -n $REQ_HOST ]] && REQ_H+=(-H "Host: $REQ_HOST")
for h in "${REQ_HEADERS[@]}"; do REQ_H+=(-H "$h"); done

# ------------------------------------------------------------- tools ----
need_pkgs=()
command -v nginx >/dev/null || need_pkgs+=(nginx)
command -v wrk >/dev/null || need_pkgs+=(wrk)
((WANT_REDIS)) && ! command -v redis-server >/dev/null && need_pkgs+=(redis-server)
((WANT_REDIS)) && ! command -v redis-cli >/dev/null && need_pkgs+=(redis-tools)
if ((${#need_pkgs[@]})); then
    if ((EUID != 0)) || ! command -v apt-get >/dev/null; then
        die "needs ${need_pkgs[*]} (apt-get install -y ${need_pkgs[*]}, as root)"
    fi
    log "installing ${need_pkgs[*]} (apt-get) ..."
    export DEBIAN_FRONTEND=noninteractive
    if ! timeout 300 apt-get install -y -q --no-install-recommends "${need_pkgs[@]}" >/tmp/moxy-access-apt.log 2>&1; then
        timeout 300 apt-get update -q >>/tmp/moxy-access-apt.log 2>&1 || true
        timeout 300 apt-get install -y -q --no-install-recommends "${need_pkgs[@]}" >>/tmp/moxy-access-apt.log 2>&1 ||
            die "apt-get could not install ${need_pkgs[*]} (see /tmp/moxy-access-apt.log)"
    fi
fi
for t in nginx wrk curl python3 timeout ss ps awk sed; do
    command -v "$t" >/dev/null || die "needs $t (tools/deps.sh bench)"
done
if [[ $CALLGRIND == 1 ]]; then
    for t in valgrind callgrind_control; do
        command -v "$t" >/dev/null || die "CALLGRIND=1 needs $t (apt-get install valgrind)"
    done
fi
[[ -x $MOXY_BIN ]] || die "no moxy binary at $MOXY_BIN (make -s moxy, or MOXY_BIN=...)"
# The real interpreter, not a wrapper (pyenv shim), so the PID we track is python.
PYTHON=$(python3 -c 'import sys; print(sys.executable)')
HZ=$(getconf CLK_TCK)
NCPU=$(nproc)
PIN_PROXY=() PIN_ORIGIN=() PIN_WRK=() PIN_REDIS=()
if [[ $PIN == 1 ]]; then
    if ((NCPU < 2)) || ! command -v taskset >/dev/null; then
        log "WARNING: $NCPU CPU(s) or no taskset: running unpinned (PIN=0)"
        PIN=0
    else
        PIN_PROXY=(taskset -c "$PROXY_CPUS")
        PIN_ORIGIN=(taskset -c "$ORIGIN_CPUS")
        PIN_WRK=(taskset -c "$WRK_CPUS")
        PIN_REDIS=(taskset -c "$REDIS_CPUS")
    fi
fi
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
NOFILE=$(ulimit -n)
[[ $NOFILE == unlimited ]] && NOFILE=1048576
((NOFILE > 65536)) && NOFILE=65536

# ---------------------------------------------------------- processes ----
# tree_pids ROOT : ROOT and all its descendants.
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
proc_start() { sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | awk '{ print $20 }'; }

STARTED=() # "pid:starttime" of every process this script started and has not stopped
forget() {
    local keep=() e
    for e in "${STARTED[@]}"; do [[ ${e%%:*} == "$1" ]] || keep+=("$e"); done
    STARTED=("${keep[@]}")
}
# start_bg LOG CMD... : CMD in the background, tracked; sets BG_PID.
start_bg() {
    local logf=$1
    shift
    "$@" >>"$logf" 2>&1 </dev/null &
    BG_PID=$!
    STARTED+=("$BG_PID:$(proc_start "$BG_PID" || true)")
}
# stop_tree PID : SIGTERM, up to 10 s for the whole tree, then SIGKILL the rest.
stop_tree() {
    local root=$1 pids i left="" p
    pids=$(tree_pids "$root")
    if [[ -n $pids ]]; then
        kill -TERM "$root" 2>/dev/null || true
        for ((i = 0; i < 100; i++)); do
            left=""
            for p in $pids; do kill -0 "$p" 2>/dev/null && left+=" $p"; done
            [[ -z $left ]] && break
            sleep 0.1
        done
        for p in $left; do kill -KILL "$p" 2>/dev/null || true; done
    fi
    wait "$root" 2>/dev/null || true
    forget "$root"
}
# bounded OUT CMD... : a time-bounded step in the background, waited for, so
# that Ctrl-C runs the trap at once and the step is stopped too.
bounded() {
    local out=$1 pid rc=0
    shift
    "$@" >"$out" 2>&1 </dev/null &
    pid=$!
    STARTED+=("$pid:$(proc_start "$pid" || true)")
    wait "$pid" || rc=$?
    forget "$pid"
    return $rc
}

CLEANED=0
cleanup() {
    local rc=$? e i pid st
    ((CLEANED)) && return
    CLEANED=1
    set +e
    trap '' INT TERM HUP
    for ((i = ${#STARTED[@]} - 1; i >= 0; i--)); do
        e=${STARTED[i]} pid=${e%%:*} st=${e#*:}
        [[ -n $st && $(proc_start "$pid" || true) == "$st" ]] && stop_tree "$pid"
    done
    if [[ -n ${SCRATCH:-} && -d $SCRATCH ]]; then
        [[ -s $SCRATCH/origin/error.log && -d $RESULTS_DIR/logs ]] &&
            cat "$SCRATCH/origin/error.log" >>"$RESULTS_DIR/logs/origin-error.log"
        if [[ $KEEP_SCRATCH == 1 ]]; then log "scratch directory kept: $SCRATCH"; else rm -rf "$SCRATCH"; fi
    fi
    ((rc == 0 || rc == 1)) || log "exit status $rc; partial results in $RESULTS_DIR"
}
trap cleanup EXIT
trap 'log "interrupted"; exit 130' INT
trap 'log "terminated"; exit 143' TERM HUP

# ------------------------------------------------------------ helpers ----
render() { # TEMPLATE OUT KEY=VALUE... : @@KEY@@ replaced
    local tpl=$1 out=$2 kv args=()
    shift 2
    for kv in "$@"; do args+=(-e "s|@@${kv%%=*}@@|${kv#*=}|g"); done
    sed "${args[@]}" "$tpl" >"$out"
    ! grep -v '^[[:space:]]*#' "$out" | grep -q '@@[A-Z_]*@@' || die "unreplaced placeholder in $out"
}
# cpu_ticks ROOT : utime + stime (clock ticks, all threads) of the process tree
cpu_ticks() {
    local p sum=0 v
    for p in $(tree_pids "$1"); do
        v=$(sed 's/.*) //' "/proc/$p/stat" 2>/dev/null | awk '{ print $12 + $13 }' || true)
        sum=$((sum + ${v:-0}))
    done
    echo "$sum"
}
# cpu_snapshot : "cpuN total idle" per CPU from /proc/stat (ticks)
cpu_snapshot() { awk '/^cpu[0-9]+ / { t = 0; for (i = 2; i <= 9; i++) t += $i; print $1, t, $5 + $6 }' /proc/stat; }
# cpu_busy BEFORE AFTER : "cpu0=NN,cpu1=NN", the busy % of each core over the interval
cpu_busy() {
    awk -v before="$1" -v after="$2" 'BEGIN {
        n = split(before, b, "\n"); split(after, a, "\n")
        for (i = 1; i <= n; i++) {
            split(b[i], x, " "); split(a[i], y, " ")
            dt = y[2] - x[2]; if (dt <= 0) dt = 1
            printf "%s%s=%.0f", (i > 1 ? "," : ""), x[1], 100 * (dt - (y[3] - x[3])) / dt
        }
        printf "\n"
    }'
}
# oneline : stdin as one line for a TSV field (no tabs, no newlines), at most 240 characters
oneline() { tr '\t\r\n' '   ' | sed 's/  */ /g; s/ $//' | cut -c1-240; }
# wait_idle PID : until the process tree has used no CPU for 0.2 s (at most 5 s)
wait_idle() {
    local a b i
    a=$(cpu_ticks "$1")
    for ((i = 0; i < 25; i++)); do
        sleep 0.2
        b=$(cpu_ticks "$1")
        [[ $a == "$b" ]] && return 0
        a=$b
    done
    return 0
}
rss_kib() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status" 2>/dev/null || echo 0; }

# ----------------------------------------------------------- scratch ----
mkdir -p "$RESULTS_DIR/logs" "$RESULTS_DIR/wrk"
RESULTS_DIR=$(cd "$RESULTS_DIR" && pwd)
SCRATCH=$(mktemp -d "${TMPDIR:-/tmp}/moxy-access-bench.XXXXXX")
chmod 755 "$SCRATCH" # nginx workers run as nobody under root
mkdir -p "$SCRATCH/www" "$SCRATCH/origin/tmp" "$SCRATCH/checks" "$SCRATCH/redis"
: >"$SCRATCH/www/large.bin" # the origin template's /large (not used here)
chmod 755 "$SCRATCH/www" && chmod 644 "$SCRATCH/www/large.bin"

# ---------------------------------------------------------------- lua ----
# One snapshot of moxy's Lua modules for every moxy of the run (MOXY_LUA_DIR).
LUA_DIR=$SCRATCH/lua
case $LUA_REV in
"")
    [[ -f $REPO_DIR/lua/moxy/config.lua ]] || die "no $REPO_DIR/lua/moxy/config.lua"
    cp -R "$REPO_DIR/lua" "$LUA_DIR" || die "cannot copy $REPO_DIR/lua"
    LUA_FROM="the working tree's lua/"
    ;;
index)
    mkdir -p "$SCRATCH/luarev"
    git -C "$REPO_DIR" ls-files -z -- lua | (cd "$REPO_DIR" && xargs -0 git checkout-index --prefix="$SCRATCH/luarev/" --) ||
        die "git checkout-index of lua/ failed"
    mv "$SCRATCH/luarev/lua" "$LUA_DIR" || die "no lua/ in the git index"
    LUA_FROM="lua/ as staged in git (the index)"
    ;;
/*)
    [[ -f $LUA_REV/moxy/config.lua ]] || die "LUA_REV=$LUA_REV: no moxy/config.lua there"
    cp -R "$LUA_REV" "$LUA_DIR" || die "cannot copy $LUA_REV"
    LUA_FROM="the directory $LUA_REV"
    ;;
*)
    mkdir -p "$SCRATCH/luarev"
    git -C "$REPO_DIR" archive "$LUA_REV" lua | tar -x -C "$SCRATCH/luarev" || die "git archive $LUA_REV lua failed"
    mv "$SCRATCH/luarev/lua" "$LUA_DIR" || die "no lua/ in $LUA_REV"
    LUA_FROM="lua/ of git $LUA_REV ($(git -C "$REPO_DIR" rev-parse --short "$LUA_REV"))"
    ;;
esac
[[ -f $LUA_DIR/moxy/config.lua ]] || die "the Lua snapshot has no moxy/config.lua"
chmod -R a+rX "$LUA_DIR"
# lua_sum DIR : sha256 (16 hex) of the tree's *.lua files, by name and content
lua_sum() { (cd "$1" && find . -name '*.lua' -type f | LC_ALL=C sort | xargs sha256sum | sha256sum | cut -c1-16); }
LUA_SUM=$(lua_sum "$LUA_DIR")
LUA_WAF_SUM="waf.lua $(sha256sum <"$LUA_DIR/moxy/waf.lua" 2>/dev/null | cut -c1-16 || echo -)"
LUA_WAF_SUM+=", waf_rules.lua $(sha256sum <"$LUA_DIR/moxy/waf_rules.lua" 2>/dev/null | cut -c1-16 || echo -)"
log "Lua modules: $LUA_FROM, copied to $LUA_DIR (sha256 $LUA_SUM; $LUA_WAF_SUM)"
# and of the binary (a rebuild during the run must not reach the later variants)
MOXY_SRC=$MOXY_BIN
mkdir -p "$SCRATCH/bin"
cp -p "$MOXY_SRC" "$SCRATCH/bin/moxy" || die "cannot copy $MOXY_SRC"
MOXY_BIN=$SCRATCH/bin/moxy
chmod 755 "$SCRATCH/bin" "$MOXY_BIN"

# ------------------------------------------------------------- list ----
# PREFIXES distinct prefixes, V6_SHARE % IPv6, from random.Random(SEED), one a
# line, in random order, as a blocklist file: IPv4 mostly /32 and /24 (some
# /12-/31), none holding 127.0.0.1; IPv6 in 2000::/3, mostly /32, /48, /64 and
# /128.  Prints the counts and one address inside the first IPv4 and the first
# IPv6 prefix (the load-time probes).
LIST=$SCRATCH/blocklist.txt
log "generating $PREFIXES prefixes (seed $SEED, $V6_SHARE % IPv6) ..."
timeout 120 "$PYTHON" - "$LIST" "$PREFIXES" "$V6_SHARE" "$SEED" >"$SCRATCH/list.txt" <<'PYEOF' || die "the list generator failed"
import ipaddress, random, sys

out, n, v6_share, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
rng = random.Random(seed)
n6 = n * v6_share // 100
n4 = n - n6
LOOP = ipaddress.ip_address("127.0.0.1")


def pick(weights):
    r, acc = rng.random() * sum(w for _, w in weights), 0.0
    for v, w in weights:
        acc += w
        if r < acc:
            return v
    return weights[-1][0]


V4_LEN = [(32, 45), (24, 30), ("16-23", 15), ("25-31", 8), ("12-15", 2)]
V6_LEN = [(32, 15), (48, 35), (64, 30), (128, 10), ("29-127", 10)]


def length(weights):
    v = pick(weights)
    if isinstance(v, str):
        lo, hi = map(int, v.split("-"))
        return rng.randint(lo, hi)
    return v


seen, lines, probe4, probe6 = set(), [], None, None
c4 = c6 = 0
while c4 < n4:
    addr = rng.randint(0x01000000, 0xDFFFFFFF)  # 1.0.0.0 - 223.255.255.255
    net = ipaddress.ip_network((addr, length(V4_LEN)), strict=False)
    if LOOP in net or str(net) in seen:
        continue
    seen.add(str(net))
    lines.append(str(net))
    c4 += 1
    if probe4 is None:
        probe4 = str(net.network_address + net.num_addresses // 2)
while c6 < n6:
    addr = (0b001 << 125) | rng.getrandbits(125)  # 2000::/3
    net = ipaddress.ip_network((addr, length(V6_LEN)), strict=False)
    if str(net) in seen:
        continue
    seen.add(str(net))
    lines.append(str(net))
    c6 += 1
    if probe6 is None:
        probe6 = str(net.network_address + net.num_addresses // 2)
rng.shuffle(lines)
with open(out, "w") as f:
    f.write("# bench/access.sh: %d random prefixes (seed %d), none holding 127.0.0.1\n" % (n, seed))
    for l in lines:
        f.write(l + "\n")
print(c4, c6, probe4 or "-", probe6 or "-")
PYEOF
read -r N4 N6 PROBE4 PROBE6 <"$SCRATCH/list.txt"
[[ -n ${N4:-} && $((N4 + N6)) == "$PREFIXES" ]] || die "the list generator wrote $((${N4:-0} + ${N6:-0})) prefixes, not $PREFIXES"
PROBES=""
[[ $PROBE4 != - ]] && PROBES+="$PROBE4 "
[[ $PROBE6 != - ]] && PROBES+="$PROBE6"
PROBES=${PROBES% }
PROBES_CSV=${PROBES// /,}
log "  $LIST: $N4 IPv4 + $N6 IPv6 prefixes ($(wc -c <"$LIST") bytes); probes $PROBES"
cp "$LIST" "$RESULTS_DIR/blocklist.txt"

# ------------------------------------------------------------- ports ----
CHECK_ONLY=()
((WANT_ACL)) && CHECK_ONLY+=(acl-deny)
[[ -n ${SEEN[rl]:-} ]] && CHECK_ONLY+=(rl-deny)
((WANT_REDIS)) && CHECK_ONLY+=(redis-deny)
[[ -n ${SEEN[waf]:-} ]] && CHECK_ONLY+=(waf-deny)
ALL_NAMES=("${VLIST[@]}" "${CHECK_ONLY[@]}")
# shellcheck disable=SC2207
PORTS=($("$PYTHON" "$TOOLS_DIR/free_ports.py" $((${#ALL_NAMES[@]} + 2))))
((${#PORTS[@]} == ${#ALL_NAMES[@]} + 2)) || die "free_ports.py gave too few ports"
ORIGIN_PORT=${PORTS[0]} REDIS_PORT=${PORTS[1]}
declare -A PORT_OF=() PID_OF=() FAIL_OF=()
for i in "${!ALL_NAMES[@]}"; do PORT_OF[${ALL_NAMES[i]}]=${PORTS[i + 2]}; done

# ------------------------------------------------------------- origin ----
render "$BENCH_DIR/nginx-origin.conf" "$SCRATCH/origin/nginx.conf" PORT="$ORIGIN_PORT" DIR="$SCRATCH/origin" \
    WWW="$SCRATCH/www" NOFILE="$NOFILE" WORKER_CONNS="$NOFILE"
start_bg "$RESULTS_DIR/logs/origin.log" "${PIN_ORIGIN[@]}" nginx -p "$SCRATCH/origin" \
    -e "$SCRATCH/origin/error.log" -c "$SCRATCH/origin/nginx.conf" -g 'daemon off;'
ORIGIN_PID=$BG_PID
code=000
for ((i = 0; i < READY_TIMEOUT * 10; i++)); do
    code=$(curl -s -o "$SCRATCH/checks/origin-small" -w '%{http_code}' --max-time 2 "http://127.0.0.1:$ORIGIN_PORT/small" || true)
    [[ $code == 200 ]] && break
    kill -0 "$ORIGIN_PID" 2>/dev/null || die "the origin exited: $(tail -n 3 "$SCRATCH/origin/error.log" 2>/dev/null)"
    sleep 0.1
done
[[ $code == 200 ]] || die "the origin does not answer GET /small (last: $code)"
SMALL_BYTES=$(wc -c <"$SCRATCH/checks/origin-small")
((SMALL_BYTES == 100)) || die "the origin's /small is $SMALL_BYTES bytes, not 100"
# The measured request, straight to the origin: the same 200 and body as /small
# (nginx-origin.conf's "location = /small" matches the path only, the query aside).
if [[ $REQUEST != small ]]; then
    code=$(curl -s -o "$SCRATCH/checks/origin-request" -w '%{http_code}' --max-time 5 "${REQ_H[@]}" \
        "http://127.0.0.1:$ORIGIN_PORT$REQ_PATH" || true)
    { [[ $code == 200 ]] && cmp -s "$SCRATCH/checks/origin-request" "$SCRATCH/checks/origin-small"; } ||
        die "the origin does not answer REQUEST=$REQUEST ($REQ_PATH) as it answers /small (status $code," \
            "$(wc -c <"$SCRATCH/checks/origin-request") bytes): see bench/nginx-origin.conf's location = /small"
fi
# The request's bytes as the CALLGRIND client sends them (and request.txt)
{
    printf 'GET %s HTTP/1.1\r\n' "$REQ_PATH"
    if [[ $REQUEST == small ]]; then
        printf 'Host: bench\r\nUser-Agent: access.sh\r\n' # what it sent before REQUEST existed
    else
        printf 'Host: %s\r\n' "$REQ_HOST"
        printf '%s\r\n' "${REQ_HEADERS[@]}"
    fi
    printf '\r\n'
} >"$SCRATCH/request.http"
{
    echo "# REQUEST=$REQUEST: the measured request.  wrk: path $REQ_PATH, Host ${REQ_HOST:-127.0.0.1:<port> (the default of wrk)}, and -H:"
    for h in "${REQ_HEADERS[@]}"; do echo "  $h"; done
    echo "# the CALLGRIND client's bytes ($(wc -c <"$SCRATCH/request.http") bytes):"
    tr -d '\r' <"$SCRATCH/request.http"
} >"$RESULTS_DIR/request.txt"

# -------------------------------------------------------------- redis ----
REDIS_PID=""
rcli() { timeout 5 redis-cli -h 127.0.0.1 -p "$REDIS_PORT" "$@"; }
# evalsha_calls : how many EVALSHA Redis has run (INFO commandstats)
evalsha_calls() {
    [[ -n $REDIS_PID ]] || { echo 0; return; }
    rcli INFO commandstats 2>/dev/null | awk -F'[:=,]' '/^cmdstat_evalsha:/ { print $3; f = 1 } END { if (!f) print 0 }'
}
if ((WANT_REDIS)); then
    start_bg "$RESULTS_DIR/logs/redis.log" "${PIN_REDIS[@]}" redis-server --port "$REDIS_PORT" --bind 127.0.0.1 \
        --save "" --appendonly no --daemonize no --dir "$SCRATCH/redis" --protected-mode yes
    REDIS_PID=$BG_PID
    for ((i = 0; i < READY_TIMEOUT * 10; i++)); do
        [[ $(rcli PING 2>/dev/null || true) == PONG ]] && break
        kill -0 "$REDIS_PID" 2>/dev/null || die "redis-server exited: $(tail -n 3 "$RESULTS_DIR/logs/redis.log")"
        sleep 0.1
    done
    [[ $(rcli PING 2>/dev/null || true) == PONG ]] || die "redis-server does not answer PING on port $REDIS_PORT"
fi

# ------------------------------------------------------------ proxies ----
# moxy_env NAME : the environment of NAME's moxy (KEY=VALUE words)
moxy_env() {
    local name=$1
    echo "LISTEN_PORT=${PORT_OF[$name]} ORIGIN_PORT=$ORIGIN_PORT MOXY_WORKERS=$MOXY_WORKERS" \
        "MOXY_ACCESS_VARIANT=${HOOK_OF[$name]} MOXY_ACCESS_JIT=$HOOK_JIT MOXY_ACCESS_LIST=$LIST" \
        "MOXY_ACCESS_PROBES=${PROBES_CSV} MOXY_ACCESS_MIN_PREFIXES=$((PREFIXES * 9 / 10))" \
        "MOXY_LUA_DIR=$LUA_DIR MOXY_ACCESS_REDIS_PORT=$REDIS_PORT MOXY_ACCESS_CPU_BUDGET=$([[ $CALLGRIND == 1 ]] && echo 2s || echo 50ms)"
}
WRAP=() # a command moxy runs under (valgrind, with CALLGRIND=1)
# start_proxy NAME : NAME's moxy, fresh.  0 when it answers GET /small (the
# status of that first request in START_CODE); else 1 with FAIL_OF[NAME] set.
start_proxy() {
    local name=$1 port=${PORT_OF[$1]} logf=$RESULTS_DIR/logs/$1.log i code=000 envs
    PID_OF[$name]="" FAIL_OF[$name]=""
    if [[ -n $(ss -Htln "( sport = :$port )" 2>/dev/null) ]]; then
        FAIL_OF[$name]="port $port is still in use (a process left over from the last start?)"
        log "$name FAILED: ${FAIL_OF[$name]}"
        return 1
    fi
    read -r -a envs <<<"$(moxy_env "$name")"
    start_bg "$logf" env "${envs[@]}" "${PIN_PROXY[@]}" "${WRAP[@]}" "$MOXY_BIN" -c "$BENCH_DIR/moxy-access-bench.lua"
    PID_OF[$name]=$BG_PID
    for ((i = 0; i < READY_TIMEOUT * 10; i++)); do
        if ! kill -0 "$BG_PID" 2>/dev/null; then
            FAIL_OF[$name]="exited at start-up: $(grep -v '^[[:space:]]*$' "$logf" 2>/dev/null | tail -n 1 | oneline)"
            break
        fi
        code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "http://127.0.0.1:$port/small" || true)
        [[ $code != 000 ]] && break
        sleep 0.1
    done
    START_CODE=$code
    if [[ -z ${FAIL_OF[$name]} && $code == 000 ]]; then
        FAIL_OF[$name]="no answer on http://127.0.0.1:$port/small within ${READY_TIMEOUT}s"
    fi
    if [[ -n ${FAIL_OF[$name]} ]]; then
        log "$name FAILED: ${FAIL_OF[$name]}"
        stop_proxy "$name"
        return 1
    fi
    return 0
}
stop_proxy() {
    local name=$1
    [[ -n ${PID_OF[$name]:-} ]] && stop_tree "${PID_OF[$name]}"
    PID_OF[$name]=""
    return 0
}

CHECKS=$RESULTS_DIR/checks.tsv
printf 'run\tvariant\tcheck\tstatus\tdetail\n' >"$CHECKS"
# check_row RUN NAME CHECK STATUS DETAIL
check_row() { printf '%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" "$(oneline <<<"$5")" >>"$CHECKS"; }
# get NAME PATH [CURL_ARG...] : "status" of GET PATH on NAME's moxy, with the
# measured request's headers (REQUEST); the body in $SCRATCH/checks/NAME.body
get() {
    local name=$1 path=$2
    shift 2
    curl -s --max-time 5 -o "$SCRATCH/checks/$name.body" -w '%{http_code}' "${REQ_H[@]}" "$@" \
        "http://127.0.0.1:${PORT_OF[$name]}$path" || true
}
WAF_PAGE=Forbidden # moxy.waf's default page ("Forbidden\n"; $(cat) drops the newline)
XSS_PATH="/small?q=%3Cscript%3Ealert(1)%3C%2Fscript%3E"
# the measured request's Cookie line (if any) + theme=../../etc/passwd (rule 300/310)
COOKIE_ATTACK="theme=../../etc/passwd"
for h in "${REQ_HEADERS[@]}"; do [[ $h == "Cookie: "* ]] && COOKIE_ATTACK="${h#Cookie: }; $COOKIE_ATTACK"; done

# check_variant RUN NAME : the measured variant answers as it should.  0 =
# ok; 1 = FAILED (FAIL_OF[NAME] says why).
check_variant() {
    local run=$1 name=$2 code why="" c0 c1 mon="" mon_pid=""
    c0=$(evalsha_calls)
    if [[ $name == redis ]]; then # what the request makes Redis do (the key's TTL is ~10 ms at 1e6 r/s)
        mon=$SCRATCH/checks/redis-monitor.txt
        : >"$mon"
        start_bg "$mon" timeout 10 redis-cli -h 127.0.0.1 -p "$REDIS_PORT" MONITOR
        mon_pid=$BG_PID
        sleep 0.3
    fi
    code=$(get "$name" "$REQ_PATH")
    if [[ $code != 200 ]]; then
        why="GET $REQ_PATH (REQUEST=$REQUEST): status '$code', want 200"
    elif ! cmp -s "$SCRATCH/checks/$name.body" "$SCRATCH/checks/origin-small"; then
        why="GET $REQ_PATH (REQUEST=$REQUEST): not the origin's body ($(wc -c <"$SCRATCH/checks/$name.body") bytes)"
    fi
    if [[ -z $why && $name == acl ]]; then
        code=$(get "$name" /admin/x)
        [[ $code == 403 ]] || why="GET /admin/x: status '$code', want 403 (rule admin)"
    fi
    if [[ -z $why && $name == waf ]]; then
        code=$(get "$name" "$XSS_PATH")
        if [[ $code != 403 ]]; then
            why="GET $XSS_PATH: status '$code', want 403 (the default rules: XSS)"
        elif [[ $(cat "$SCRATCH/checks/$name.body") != "$WAF_PAGE" ]]; then
            why="GET $XSS_PATH: 403 but not the WAF's page"
        else
            # the measured request with the Cookie line replaced by one that ends in a traversal
            code=$(get "$name" "$REQ_PATH" -H "Cookie: $COOKIE_ATTACK")
            [[ $code == 403 ]] || why="GET $REQ_PATH with Cookie '... $COOKIE_ATTACK': status '$code', want 403 (cookies inspected)"
        fi
    fi
    if [[ -n $mon_pid ]]; then
        sleep 0.2
        stop_tree "$mon_pid"
        cp "$mon" "$RESULTS_DIR/logs/redis-monitor-run$run.txt"
        c1=$(evalsha_calls)
        if [[ -n $why ]]; then
            :
        elif ((c1 <= c0)); then
            why="GET /small made Redis run no EVALSHA (calls $c0 -> $c1): the limiter did not reach Redis"
        elif ! grep -qi '"set" "moxy:rl:bench:127.0.0.1"' "$mon"; then
            why="GET /small did not make Redis SET moxy:rl:bench:127.0.0.1 (MONITOR: logs/redis-monitor-run$run.txt)"
        fi
    fi
    if [[ -n $why ]]; then
        FAIL_OF[$name]="check: $why"
        check_row "$run" "$name" answers FAILED "$why"
        log "$name FAILED: $why"
        return 1
    fi
    local detail="GET $REQ_PATH (REQUEST=$REQUEST) 200, the origin's body"
    [[ $name == acl ]] && detail+="; GET /admin/x 403"
    [[ $name == waf ]] && detail+="; GET $XSS_PATH 403 (the WAF's page); with a Cookie theme=../../etc/passwd 403"
    [[ $name == redis ]] && detail+="; EVALSHA calls $c0 -> $c1, the script SET moxy:rl:bench:127.0.0.1 (MONITOR)"
    check_row "$run" "$name" answers ok "$detail"
    return 0
}

# ------------------------------------------------ configuration checks ----
declare -A TCHECK_OF=() # ms of each moxy -t
declare -A BAD=() # variants that cannot be measured: name -> why
for name in "${ALL_NAMES[@]}"; do
    read -r -a envs <<<"$(moxy_env "$name")"
    info=$SCRATCH/checks/$name.info
    t0=$(date +%s.%N)
    if ! out=$(env "${envs[@]}" MOXY_ACCESS_INFO="$info" timeout 60 "$MOXY_BIN" -t \
        -c "$BENCH_DIR/moxy-access-bench.lua" 2>&1); then
        BAD[$name]="configuration check (moxy -t) failed: $(grep -v '^[[:space:]]*$' <<<"$out" | tail -n 1 | oneline)"
        check_row 0 "$name" "moxy -t" FAILED "${BAD[$name]}"
        log "$name FAILED: ${BAD[$name]}"
        [[ $name == noop ]] && die "the baseline (noop) does not load: ${BAD[$name]}"
        continue
    fi
    t1=$(date +%s.%N)
    TCHECK_OF[$name]=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.0f", 1000 * (b - a) }')
    detail="${TCHECK_OF[$name]} ms"
    if [[ -s $info && $name == waf* ]]; then
        detail+="; $(head -n 1 "$info" | oneline)"
    elif [[ -s $info ]]; then
        read -r ip ib <"$info"
        detail+="; blocklist set: $ip prefixes, $ib bytes"
        [[ $name == acl ]] && ACL_INFO="$ip prefixes, $ib bytes"
    fi
    check_row 0 "$name" "moxy -t" ok "$detail"
done

# The variants built to deny: started for their check only.
for name in "${CHECK_ONLY[@]}"; do
    [[ -z ${BAD[$name]:-} ]] || continue
    if ! start_proxy "$name"; then
        BAD[$name]=${FAIL_OF[$name]}
        check_row 0 "$name" start FAILED "${BAD[$name]}"
        continue
    fi
    why="" detail=""
    case $name in
    acl-deny)
        code=$(get "$name" /small)
        [[ $code == 403 ]] || why="GET /small: status '$code', want 403 (127.0.0.0/8 in the list)"
        detail="GET /small 403"
        ;;
    waf-deny)
        code=$(get "$name" "$REQ_PATH")
        if [[ $code != 403 ]]; then
            why="GET $REQ_PATH: status '$code', want 403 (rule 9001: path /small)"
        elif [[ $(cat "$SCRATCH/checks/$name.body") != "$WAF_PAGE" ]]; then
            why="GET $REQ_PATH: 403 but not the WAF's page"
        fi
        detail="GET $REQ_PATH (REQUEST=$REQUEST) 403, the WAF's page"
        ;;
    rl-deny | redis-deny)
        # the first request is start_proxy's (a fresh dict; a fresh Redis)
        c1=$START_CODE
        c2=$(get "$name" /small)
        if [[ $c1 != 200 || $c2 != 429 ]]; then
            why="two GET /small at 1r/m: statuses '$c1' '$c2', want 200 then 429"
        fi
        detail="two GET /small at 1r/m: 200, 429"
        if [[ -z $why && $name == redis-deny ]]; then
            ex=$(rcli EXISTS moxy:rl:benchdeny:127.0.0.1 2>/dev/null || true)
            ttl=$(rcli PTTL moxy:rl:benchdeny:127.0.0.1 2>/dev/null || true)
            if [[ $ex != 1 ]]; then
                why="the key moxy:rl:benchdeny:127.0.0.1 is not in Redis (EXISTS: '$ex')"
            else
                detail+="; key moxy:rl:benchdeny:127.0.0.1 in Redis, PTTL $ttl ms"
            fi
            rcli DEL moxy:rl:benchdeny:127.0.0.1 >/dev/null
        fi
        ;;
    esac
    stop_proxy "$name"
    if [[ -n $why ]]; then
        check_row 0 "$name" denies FAILED "$why"
        log "$name FAILED: $why"
        case $name in acl-deny) BAD[acl]="acl-deny: $why" ;; rl-deny) BAD[rl]="rl-deny: $why" ;;
            redis-deny) BAD[redis]="redis-deny: $why" ;; waf-deny) BAD[waf]="waf-deny: $why" ;; esac
    else
        check_row 0 "$name" denies ok "$detail"
        log "$name: ok ($detail)"
    fi
done

# ---------------------------------------------------------------- meta ----
{
    echo "date: $(date -Is)"
    echo "host: $(uname -sr), $NCPU CPUs; loadavg at start: $(cat /proc/loadavg)"
    echo "versions: $(nginx -v 2>&1) | $(wrk -v 2>&1 | head -n 1 | cut -d' ' -f1-2)" \
        "$( ((WANT_REDIS)) && redis-server --version | cut -d' ' -f1-3)"
    echo "moxy: $MOXY_SRC sha256 $(sha256sum "$MOXY_BIN" | cut -c1-16) built $(date -r "$MOXY_BIN" -Is) (a copy made at start)"
    echo "git $(git -C "$REPO_DIR" rev-parse --short HEAD 2>/dev/null || echo '?')" \
        "($(git -C "$REPO_DIR" status --porcelain -- core lua 2>/dev/null | wc -l) changed files in core/ lua/)"
    echo "settings: RUNS=$RUNS DURATION=$DURATION WARMUP=$WARMUP CONNS=$CONNS THREADS=$THREADS" \
        "VARIANTS='$VARIANTS' REQUEST=$REQUEST PREFIXES=$PREFIXES V6_SHARE=$V6_SHARE SEED=$SEED HOOK_JIT=$HOOK_JIT MOXY_WORKERS=$MOXY_WORKERS CALLGRIND=$CALLGRIND$([[ $CALLGRIND == 1 ]] && echo " CG_N=$CG_N CG_WARMUP=$CG_WARMUP")"
    echo "lua: $LUA_FROM, a copy made at start (MOXY_LUA_DIR); sha256 $LUA_SUM; $LUA_WAF_SUM"
    echo "request: REQUEST=$REQUEST, GET $REQ_PATH, Host ${REQ_HOST:-(set by the client)}, ${#REQ_HEADERS[@]} more headers;" \
        "$(wc -c <"$SCRATCH/request.http") bytes as the CALLGRIND client sends it (request.txt)"
    echo "list: $N4 IPv4 + $N6 IPv6 prefixes; acl's set: ${ACL_INFO:-?}; probes $PROBES"
    if [[ $PIN == 1 ]]; then
        echo "pinning: moxy=cpu$PROXY_CPUS origin=cpu$ORIGIN_CPUS wrk=cpu$WRK_CPUS redis=cpu$REDIS_CPUS"
    else
        echo "pinning: none"
    fi
    echo "ports: origin $ORIGIN_PORT, redis $REDIS_PORT, $(for n in "${ALL_NAMES[@]}"; do printf '%s %s, ' "$n" "${PORT_OF[$n]}"; done)"
    for n in "${VLIST[@]}"; do echo "variant $n: ${WHAT_OF[$n]}; moxy -t ${TCHECK_OF[$n]:-?} ms"; done
} >"$RESULTS_DIR/meta.txt"
log "results in $RESULTS_DIR"

# ---------------------------------------------------------- measuring ----
# run_wrk PORT SECONDS OUT : one time-bounded wrk run
run_wrk() {
    bounded "$3" timeout -k 5 $(($2 + 30)) "${PIN_WRK[@]}" wrk -t"$THREADS" -c"$CONNS" -d"$2s" \
        --timeout "$WRK_TIMEOUT" --latency "${REQ_H[@]}" "http://127.0.0.1:$1$REQ_PATH" || true
}

# parse_wrk FILE : "requests runtime_s rps p50_ms p99_ms non2xx socket_errors"
parse_wrk() {
    awk '
        function secs(v) {
            if (v ~ /us$/) return v / 1e6
            if (v ~ /ms$/) return v / 1e3
            if (v ~ /m$/)  return v * 60
            if (v ~ /h$/)  return v * 3600
            return v + 0
        }
        / requests in / { reqs = $1; t = $4; sub(/,$/, "", t); rt = secs(t) }
        /^Requests\/sec:/ { rps = $2 }
        /^ +50%/ { p50 = secs($2) * 1000 }
        /^ +99%/ { p99 = secs($2) * 1000 }
        /Socket errors:/ { gsub(",", ""); sock += $4 + $6 + $8 + $10 }
        /Non-2xx or 3xx responses:/ { bad += $NF }
        END { printf "%d %.3f %.2f %.3f %.3f %d %d\n", reqs, rt, rps, p50, p99, bad, sock }' "$1"
}

LOAD_TSV=$RESULTS_DIR/load.tsv
printf 'run\tvariant\tstatus\trps\tcpu_pct\tus_per_req\tp50_ms\tp99_ms\trequests\truntime_s\tnon2xx\tsocket_errors\tcpu_ticks\tredis_ticks\tredis_us_per_req\tevalsha_per_req\trss_kib\tcores_busy_pct\tproxy_core_other_pct\tnote\n' >"$LOAD_TSV"

# measure RUN NAME : warm-up, then one measured wrk run; a row in load.tsv
measure() {
    local run=$1 name=$2 pid=${PID_OF[$2]} port=${PORT_OF[$2]} out
    local t0 t1 r0 r1 e0 e1 w0 w1 cs0 cs1 busy other reqs rt p50 p99 bad sock status=ok note="" row rss
    out=$RESULTS_DIR/wrk/run$run-$name.txt
    ((WARMUP > 0)) && run_wrk "$port" "$WARMUP" "${out%.txt}.warmup.txt"
    wait_idle "$pid"
    e0=$(evalsha_calls) r0=0
    [[ -n $REDIS_PID ]] && r0=$(cpu_ticks "$REDIS_PID")
    t0=$(cpu_ticks "$pid") cs0=$(cpu_snapshot) w0=$(date +%s.%N)
    run_wrk "$port" "$DURATION" "$out"
    t1=$(cpu_ticks "$pid") cs1=$(cpu_snapshot) w1=$(date +%s.%N)
    r1=0
    [[ -n $REDIS_PID ]] && r1=$(cpu_ticks "$REDIS_PID")
    e1=$(evalsha_calls)
    rss=$(rss_kib "$pid")
    busy=$(cpu_busy "$cs0" "$cs1")
    # busy time on moxy's core that moxy did not account for (other
    # processes, softirq): a noise indicator (pinned, one core only)
    other=""
    if [[ $PIN == 1 && $PROXY_CPUS =~ ^[0-9]+$ ]]; then
        other=$(awk -v c="$busy" -v k="cpu$PROXY_CPUS" -v t=$((t1 - t0)) -v hz="$HZ" -v w0="$w0" -v w1="$w1" 'BEGIN {
            n = split(c, a, ","); for (i = 1; i <= n; i++) { split(a[i], kv, "="); if (kv[1] == k) b = kv[2] }
            el = w1 - w0; p = (el > 0 ? 100 * t / hz / el : 0); v = b - p; printf "%.0f", (v < 0 ? 0 : v) }')
    fi
    read -r reqs rt _ p50 p99 bad sock <<<"$(parse_wrk "$out")"
    if ! kill -0 "$pid" 2>/dev/null; then
        status=FAILED note="died under load; log: logs/$name.log"
        FAIL_OF[$name]=$note
        stop_proxy "$name"
    elif ((${reqs:-0} == 0)); then
        status=FAILED note="wrk: no response ($(grep -m1 -iE 'error|unable' "$out" | cut -c1-120 || true))"
    elif ((bad + sock > 0)); then
        note="errors: $bad non-2xx, $sock socket errors"
    fi
    row=$(awk -v t=$((t1 - t0)) -v r=$((r1 - r0)) -v e=$((e1 - e0)) -v hz="$HZ" -v n="$reqs" -v rt="$rt" \
        -v w0="$w0" -v w1="$w1" 'BEGIN {
        cpu = t / hz; el = w1 - w0
        printf "%.2f\t%.1f\t%.2f", (rt > 0 ? n / rt : 0), (el > 0 ? 100 * cpu / el : 0), (n > 0 ? 1e6 * cpu / n : 0)
        printf "\t%.2f\t%.3f", (n > 0 ? 1e6 * r / hz / n : 0), (n > 0 ? e / n : 0) }')
    local rps_c cpu_pct us rus eps
    IFS=$'\t' read -r rps_c cpu_pct us rus eps <<<"$row"
    if [[ $status == ok && $name == redis ]] && ! awk -v e="$eps" 'BEGIN { exit !(e >= 0.98 && e <= 1.02 + 0) }'; then
        note+="${note:+; }EVALSHA per request $eps, not 1: decisions made locally (Redis fallbacks)?"
    fi
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$run" "$name" "$status" \
        "$rps_c" "$cpu_pct" "$us" "$p50" "$p99" "$reqs" "$rt" "$bad" "$sock" $((t1 - t0)) $((r1 - r0)) "$rus" "$eps" \
        "$rss" "$busy" "$other" "$(oneline <<<"$note")" >>"$LOAD_TSV"
    if [[ $status == ok ]]; then
        log "$name: $rps_c req/s, CPU $us us/req ($cpu_pct% of a core), p99 $p99 ms; cores busy % $busy${other:+, $other on the moxy core outside it}$([[ $name == redis ]] && echo "; redis $rus us/req, EVALSHA/req $eps")${note:+ ($note)}"
    else
        log "$name: FAILED: $note"
        check_row "$run" "$name" load FAILED "$note"
    fi
}

# fail_row RUN NAME WHY : a row without numbers
fail_row() {
    printf '%s\t%s\tFAILED\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t%s\n' "$1" "$2" "$(oneline <<<"$3")" >>"$LOAD_TSV"
}

# ---------------------------------------------------------- callgrind ----
# CALLGRIND=1: each variant once, under callgrind (one process at a time):
# the readiness probe and 3 more requests unchecked (the first requests under
# valgrind can pass the hook's CPU budget while LuaJIT warms up), the
# variant's check, CG_WARMUP requests, counters zeroed, CG_N requests on one
# keep-alive connection (each must be a 200 with the origin's body), counters
# dumped: instructions / CG_N.
# cg_send PORT COUNT : COUNT times the measured request ($SCRATCH/request.http)
# on one keep-alive connection; exit 1 on a non-200
cg_send() {
    timeout 600 "$PYTHON" - "$1" "$2" "$SCRATCH/request.http" <<'PYEOF'
import socket, sys
port, count = int(sys.argv[1]), int(sys.argv[2])
s = socket.create_connection(("127.0.0.1", port))
with open(sys.argv[3], "rb") as f:
    req = f.read()
buf = b""
for _ in range(count):
    s.sendall(req)
    while True:
        he = buf.find(b"\r\n\r\n")
        if he >= 0:
            head = buf[:he].decode("latin-1").lower()
            n = int(head.split("content-length:")[1].split("\r\n")[0])
            if len(buf) >= he + 4 + n:
                if not head.startswith("http/1.1 200"):
                    sys.exit("not a 200: " + head.split("\r\n")[0])
                buf = buf[he + 4 + n:]
                break
        d = s.recv(65536)
        if not d:
            sys.exit("the connection closed")
        buf += d
s.close()
PYEOF
}
if [[ $CALLGRIND == 1 ]]; then
    CG_TSV=$RESULTS_DIR/callgrind.tsv
    printf 'variant\tstatus\tinstructions\trequests\tinstr_per_req\tnote\n' >"$CG_TSV"
    READY_TIMEOUT=$((READY_TIMEOUT * 6))
    for name in "${VLIST[@]}"; do
        if [[ -n ${BAD[$name]:-} ]]; then
            printf '%s\tFAILED\t\t\t\t%s\n' "$name" "$(oneline <<<"${BAD[$name]}")" >>"$CG_TSV"
            continue
        fi
        WRAP=(valgrind --tool=callgrind "--callgrind-out-file=$SCRATCH/callgrind.$name.%p")
        log "callgrind: $name ..."
        why=""
        if ! start_proxy "$name"; then
            why=${FAIL_OF[$name]}
        else
            for _ in 1 2 3; do
                curl -s -o /dev/null --max-time 30 "${REQ_H[@]}" "http://127.0.0.1:${PORT_OF[$name]}$REQ_PATH" || true
            done
            if ! check_variant 1 "$name"; then
                why=${FAIL_OF[$name]}
            elif ! cg_send "${PORT_OF[$name]}" "$CG_WARMUP" >"$SCRATCH/cg-send.txt" 2>&1; then
                why="warm-up: $(tail -n 1 "$SCRATCH/cg-send.txt")"
            else
                timeout 60 callgrind_control -z "${PID_OF[$name]}" >/dev/null 2>&1 || why="callgrind_control -z failed"
                if [[ -z $why ]] && ! cg_send "${PORT_OF[$name]}" "$CG_N" >"$SCRATCH/cg-send.txt" 2>&1; then
                    why="counted requests: $(tail -n 1 "$SCRATCH/cg-send.txt")"
                fi
                [[ -n $why ]] || timeout 60 callgrind_control -d "${PID_OF[$name]}" >/dev/null 2>&1 ||
                    why="callgrind_control -d failed"
            fi
            pid=${PID_OF[$name]}
            stop_proxy "$name"
        fi
        total=""
        if [[ -z $why ]]; then
            # the dump made after the counted requests (the first one -d wrote)
            dump=$(find "$SCRATCH" -maxdepth 1 -name "callgrind.$name.$pid.*" | sort | head -n 1)
            [[ -n $dump ]] && total=$(awk '/^(summary|totals):/ { print $2; exit }' "$dump")
            [[ -n $total ]] || why="no callgrind dump"
            [[ -n $dump ]] && cp "$dump" "$RESULTS_DIR/logs/callgrind.$name.out"
        fi
        if [[ -n $why ]]; then
            log "callgrind: $name FAILED: $why"
            printf '%s\tFAILED\t\t\t\t%s\n' "$name" "$(oneline <<<"$why")" >>"$CG_TSV"
        else
            log "callgrind: $name: $((total / CG_N)) instructions per request"
            printf '%s\tok\t%s\t%s\t%s\t\n' "$name" "$total" "$CG_N" "$((total / CG_N))" >>"$CG_TSV"
        fi
    done
    WRAP=()
    [[ -n $REDIS_PID ]] && stop_tree "$REDIS_PID"
    stop_tree "$ORIGIN_PID"
    "$PYTHON" "$TOOLS_DIR/access_report.py" "$RESULTS_DIR" | tee "$RESULTS_DIR/report.txt"
    echo "raw results: $RESULTS_DIR (callgrind.tsv, checks.tsv, meta.txt, request.txt, logs/)" | tee -a "$RESULTS_DIR/report.txt"
    awk -F'\t' 'NR > 1 && $4 == "FAILED"' "$CHECKS" | grep -q . && exit 1
    awk -F'\t' 'NR > 1 && $2 == "FAILED"' "$CG_TSV" | grep -q . && exit 1
    exit 0
fi

for ((run = 1; run <= RUNS; run++)); do
    # the order rotates by one each run
    order=()
    for ((k = 0; k < ${#VLIST[@]}; k++)); do order+=("${VLIST[(k + run - 1) % ${#VLIST[@]}]}"); done
    log "=== run $run/$RUNS: ${order[*]} ==="
    for name in "${order[@]}"; do
        if [[ -n ${BAD[$name]:-} ]]; then
            FAIL_OF[$name]=${BAD[$name]}
            continue
        fi
        if start_proxy "$name"; then
            check_variant "$run" "$name" || stop_proxy "$name"
        else
            check_row "$run" "$name" start FAILED "${FAIL_OF[$name]}"
        fi
    done
    [[ -n ${PID_OF[noop]:-} ]] || die "the baseline (noop) is not running: ${FAIL_OF[noop]:-?}"
    for name in "${order[@]}"; do
        if [[ -z ${PID_OF[$name]:-} ]]; then
            fail_row "$run" "$name" "${FAIL_OF[$name]:-not running}"
        else
            measure "$run" "$name"
        fi
    done
    for name in "${order[@]}"; do stop_proxy "$name"; done
done
[[ -n $REDIS_PID ]] && stop_tree "$REDIS_PID"
stop_tree "$ORIGIN_PID"

# -------------------------------------------------------------- report ----
"$PYTHON" "$TOOLS_DIR/access_report.py" "$RESULTS_DIR" | tee "$RESULTS_DIR/report.txt"
echo "raw results: $RESULTS_DIR (load.tsv, checks.tsv, meta.txt, request.txt, wrk/, logs/)" | tee -a "$RESULTS_DIR/report.txt"
awk -F'\t' 'NR > 1 && $4 == "FAILED"' "$CHECKS" | grep -q . && exit 1
awk -F'\t' 'NR > 1 && $3 == "FAILED"' "$LOAD_TSV" | grep -q . && exit 1
exit 0
