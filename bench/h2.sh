#!/usr/bin/env bash
# bench/h2.sh -- HTTP/2 over TLS (ALPN h2), moxy and nginx side by side.
#
# Both proxies terminate TLS with the same certificate (ECDSA P-256 by
# default, KEY=rsa for RSA 2048), protocols (TLS 1.2 and 1.3) and ciphers,
# speak HTTP/2 to the client and HTTP/1.1 with keep-alive to one nginx origin
# (bench/nginx-origin.conf: /small = 100 B, plus /64k = a 64 KiB file that
# this script adds), one worker each, pinned to PROXY_CPUS.  moxy runs the
# settings of bench/moxy-bench.lua (the usual hook, bench-hook.lua) with
# `http2 = true` on its TLS listener; nginx runs bench/nginx-proxy.conf with
# `listen ... ssl http2` (nginx < 1.25.1) or `http2 on;`.  Per run, both
# proxies are started fresh and checked (GET /small and /64k over HTTP/2:
# status, bytes, the hook's header echoed by the origin); then, per body, in
# alternating order:
#   load   WARMUP s unmeasured, then DURATION s of
#          h2load -c CONNS -m STREAMS -t 1 -D DURATION --npn-list h2
#          (10 connections x 100 concurrent streams): req/s, errors, and the
#          proxy's CPU time (utime + stime of its process tree) per request
# and then each proxy, fresh and alone, after a 1 s h2load burst: the RSS it
# takes per idle HTTP/2 connection, IDLE_CONNS of them (tools/idle_h2.py: a
# TLS handshake, one GET, then idle for IDLE_HOLD s).  The report gives
# moxy/nginx ratios, each taken within a run, as medians of RUNS.
#
# A proxy that does not start, does not negotiate h2, answers wrongly or dies
# under load is reported as FAILED (with the reason) and left out of that
# run; the other goes on.  The report is printed in every case; the exit
# status is then 1 if anything FAILED, else 0.  It is 2 when the harness
# cannot run (a missing tool; the origin or nginx does not start).  Every
# step has a time limit; every process started is stopped on exit or signal.
#
# Knobs (environment variables, defaults in brackets):
#   RUNS [5]  DURATION [8] measured s  WARMUP [1] unmeasured s (0 = none)
#   CONNS [10]  STREAMS [100]          h2load -c / -m
#   IDLE_CONNS [1000] (0 = no idle test)  IDLE_HOLD [3] s (>= 2)
#   KEY [ecdsa] ecdsa (P-256) or rsa (2048)
#   MOXY_BIN [./moxy]  MOXY_WORKERS [1]  MOXY_HOOK_JIT [0]
#   MOXY_STANDIN [0]   1 = a second nginx (the same config) in moxy's column:
#                      tests the harness without moxy, shows the noise floor
#   PIN [1]  PROXY_CPUS [0]  WRK_CPUS [1] (h2load, idle client)
#            ORIGIN_CPUS [1, or 2 with 3+ CPUs]
#   READY_TIMEOUT [15] s  RESULTS_DIR [bench/results/h2-<timestamp>]  KEEP_SCRATCH [0]
#
# Needs nginx, h2load (nghttp2-client), openssl, curl (with HTTP/2),
# python3, taskset, ss; run as root it apt-get installs nginx and
# nghttp2-client when they are missing.  Everything is on 127.0.0.1.
# shellcheck disable=SC2317  # functions called from traps or by name (start_$name)
set -euo pipefail

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_DIR=$(dirname "$BENCH_DIR")
TOOLS_DIR=$BENCH_DIR/tools

RUNS=${RUNS:-5}
DURATION=${DURATION:-8}
WARMUP=${WARMUP:-1}
CONNS=${CONNS:-10}
STREAMS=${STREAMS:-100}
IDLE_CONNS=${IDLE_CONNS:-1000}
IDLE_HOLD=${IDLE_HOLD:-3}
KEY=${KEY:-ecdsa}
MOXY_BIN=${MOXY_BIN:-$REPO_DIR/moxy}
[[ $MOXY_BIN == /* ]] || MOXY_BIN=$PWD/$MOXY_BIN
MOXY_WORKERS=${MOXY_WORKERS:-1}
MOXY_HOOK_JIT=${MOXY_HOOK_JIT:-0}
MOXY_STANDIN=${MOXY_STANDIN:-0}
PIN=${PIN:-1}
READY_TIMEOUT=${READY_TIMEOUT:-15}
KEEP_SCRATCH=${KEEP_SCRATCH:-0}
STAMP=$(date +%Y%m%d-%H%M%S)
RESULTS_DIR=${RESULTS_DIR:-$BENCH_DIR/results/h2-$STAMP}
BODIES="small 64k"                        # /small = 100 B (origin: return 200), /64k = 65536 B file
declare -A BODY_LABEL=([small]="100 B" [64k]="64 KiB")

log() { printf '[%s] %s\n' "$(date +%T)" "$*" >&2; }
die() { log "h2.sh: ERROR: $*"; exit 2; }
for v in RUNS DURATION WARMUP CONNS STREAMS IDLE_CONNS IDLE_HOLD READY_TIMEOUT MOXY_WORKERS; do
    [[ ${!v} =~ ^[0-9]+$ ]] || die "$v must be a non-negative integer (got '${!v}')"
done
((RUNS > 0 && DURATION > 0 && CONNS > 0 && STREAMS > 0)) || die "RUNS, DURATION, CONNS and STREAMS must be > 0"
((IDLE_HOLD >= 2)) || IDLE_HOLD=2
[[ $KEY == ecdsa || $KEY == rsa ]] || die "KEY must be ecdsa or rsa (got '$KEY')"

# ------------------------------------------------------------- tools ----
# nginx and h2load: Debian's packages, installed when missing (root only).
need_pkgs=()
command -v nginx >/dev/null || need_pkgs+=(nginx)
command -v h2load >/dev/null || need_pkgs+=(nghttp2-client)
if ((${#need_pkgs[@]})); then
    if ((EUID != 0)) || ! command -v apt-get >/dev/null; then
        die "needs ${need_pkgs[*]} (apt-get install -y ${need_pkgs[*]}, as root)"
    fi
    log "installing ${need_pkgs[*]} (apt-get) ..."
    export DEBIAN_FRONTEND=noninteractive
    if ! timeout 300 apt-get install -y -q --no-install-recommends "${need_pkgs[@]}" >/tmp/moxy-h2-apt.log 2>&1; then
        timeout 300 apt-get update -q >>/tmp/moxy-h2-apt.log 2>&1 || true
        timeout 300 apt-get install -y -q --no-install-recommends "${need_pkgs[@]}" >>/tmp/moxy-h2-apt.log 2>&1 ||
            die "apt-get could not install ${need_pkgs[*]} (see /tmp/moxy-h2-apt.log)"
    fi
fi
for t in nginx h2load openssl curl python3 timeout ss awk sed cmp; do
    command -v "$t" >/dev/null || die "needs $t (tools/deps.sh bench; h2load: apt-get install nghttp2-client)"
done
curl -V | grep -qw HTTP2 || die "this curl has no HTTP/2 support (needed for the start-up checks)"
if [[ $MOXY_STANDIN == 1 ]]; then
    MOXY_BIN="(standin: nginx)"
else
    [[ -x $MOXY_BIN ]] || die "no moxy binary at $MOXY_BIN (make, MOXY_BIN=..., or MOXY_STANDIN=1)"
fi
# The real interpreter, not a wrapper (pyenv shim), so the PID we track is python.
PYTHON=$(python3 -c 'import sys; print(sys.executable)')
HZ=$(getconf CLK_TCK)

# Pinning, as tls.sh / run.sh: proxies on PROXY_CPUS; h2load (and the idle
# client) on WRK_CPUS; the origin on a core of its own when there is one.
NCPU=$(nproc)
PROXY_CPUS=${PROXY_CPUS:-0}
WRK_CPUS=${WRK_CPUS:-1}
if ((NCPU >= 3)); then ORIGIN_CPUS=${ORIGIN_CPUS:-2}; else ORIGIN_CPUS=${ORIGIN_CPUS:-1}; fi
PIN_PROXY=() PIN_ORIGIN=() PIN_WRK=()
if [[ $PIN == 1 ]]; then
    if ((NCPU < 2)) || ! command -v taskset >/dev/null; then
        log "WARNING: $NCPU CPU(s) or no taskset: running unpinned (PIN=0)"
        PIN=0
    else
        PIN_PROXY=(taskset -c "$PROXY_CPUS")
        PIN_ORIGIN=(taskset -c "$ORIGIN_CPUS")
        PIN_WRK=(taskset -c "$WRK_CPUS")
    fi
fi

# IDLE_CONNS need as many descriptors in the proxy and the client.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
NOFILE=$(ulimit -n)
[[ $NOFILE == unlimited ]] && NOFILE=1048576
if ((IDLE_CONNS > 0 && IDLE_CONNS + 1200 > NOFILE)); then
    new=$((NOFILE > 1200 ? NOFILE - 1200 : 0))
    log "WARNING: open-file limit $NOFILE is too low for IDLE_CONNS=$IDLE_CONNS; using $new"
    IDLE_CONNS=$new
fi

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
        for e in "$SCRATCH"/*/error.log; do # nginx's own logs, with the results
            [[ -s $e && -d $RESULTS_DIR/logs ]] && cp "$e" "$RESULTS_DIR/logs/$(basename "$(dirname "$e")")-error.log"
        done
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
# tree_rss ROOT : VmRSS (KiB) of the process tree (nginx: master + worker)
tree_rss() {
    local p sum=0 v
    for p in $(tree_pids "$1"); do
        v=$(awk '$1 == "VmRSS:" { print $2 }' "/proc/$p/status" 2>/dev/null || true)
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
median() { sort -g | awk '{ v[NR] = $1 } END { if (NR) print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
# h2 CURL-ARGS... : curl over TLS offering h2 (and http/1.1, so a proxy that
# does not speak h2 still answers and the check can say so)
h2curl() { curl -sk --http2 --max-time 10 "$@"; }

# ----------------------------------------------------------- scratch ----
mkdir -p "$RESULTS_DIR/logs" "$RESULTS_DIR/h2load"
RESULTS_DIR=$(cd "$RESULTS_DIR" && pwd)
SCRATCH=$(mktemp -d "${TMPDIR:-/tmp}/moxy-h2-bench.XXXXXX")
chmod 755 "$SCRATCH" # nginx workers run as nobody under root
mkdir -p "$SCRATCH/www" "$SCRATCH/origin/tmp"
head -c 65536 /dev/urandom >"$SCRATCH/www/64k.bin"
chmod 755 "$SCRATCH/www" && chmod 644 "$SCRATCH/www/64k.bin"
printf '%s\n' "origin-small-body-0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ-0123456789-padding" \
    >"$SCRATCH/small.expected"
cp "$SCRATCH/www/64k.bin" "$SCRATCH/64k.expected"

read -r ORIGIN_PORT NGINX_PORT MOXY_PORT < <("$PYTHON" "$TOOLS_DIR/free_ports.py" 3)
[[ -n ${MOXY_PORT:-} ]] || die "free_ports.py gave too few ports"
declare -A PORT_OF=([nginx]=$NGINX_PORT [moxy]=$MOXY_PORT) PID_OF=() FAIL_OF=() KIDS_OF=()

# The certificate both proxies present.
if [[ $KEY == ecdsa ]]; then
    KEY_LABEL="ECDSA P-256"
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30 -subj /CN=bench.test \
        -addext subjectAltName=DNS:bench.test -keyout "$SCRATCH/key.pem" -out "$SCRATCH/cert.pem" 2>/dev/null
else
    KEY_LABEL="RSA 2048"
    openssl req -x509 -newkey rsa:2048 -nodes -days 30 -subj /CN=bench.test \
        -addext subjectAltName=DNS:bench.test -keyout "$SCRATCH/key.pem" -out "$SCRATCH/cert.pem" 2>/dev/null
fi
chmod 644 "$SCRATCH/cert.pem" "$SCRATCH/key.pem"
CIPHERS="ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384"
CIPHERS+=":ECDHE-RSA-AES256-GCM-SHA384:ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305"

# nginx's HTTP/2 syntax: `http2 on;` from 1.25.1, `listen ... http2` before.
NGINX_VERSION=$(nginx -v 2>&1 | sed -n 's|.*nginx/\([0-9.]*\).*|\1|p')
if [[ $(printf '%s\n1.25.1\n' "$NGINX_VERSION" | sort -V | head -n 1) == 1.25.1 ]]; then
    NGINX_H2_LISTEN="ssl" NGINX_H2_DIRECTIVE="http2 on;"
else
    NGINX_H2_LISTEN="ssl http2" NGINX_H2_DIRECTIVE=""
fi

# ------------------------------------------------------------- origin ----
render "$BENCH_DIR/nginx-origin.conf" "$SCRATCH/origin/nginx.conf" PORT="$ORIGIN_PORT" DIR="$SCRATCH/origin" \
    WWW="$SCRATCH/www" NOFILE="$NOFILE" WORKER_CONNS="$NOFILE" NAME=origin
# + /64k: 64 KiB of random bytes, a static file like /large
sed -i "s|^\( *\)location = /large {|\1location = /64k {\n\1    alias $SCRATCH/www/64k.bin;\n\1}\n\n&|" \
    "$SCRATCH/origin/nginx.conf"
grep -q 'location = /64k' "$SCRATCH/origin/nginx.conf" || die "could not add /64k to the origin's nginx.conf"
start_bg "$RESULTS_DIR/logs/origin.log" "${PIN_ORIGIN[@]}" nginx -p "$SCRATCH/origin" \
    -e "$SCRATCH/origin/error.log" -c "$SCRATCH/origin/nginx.conf" -g 'daemon off;'
ORIGIN_PID=$BG_PID
for ((i = 0; i < READY_TIMEOUT * 10; i++)); do
    [[ $(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "http://127.0.0.1:$ORIGIN_PORT/small" || true) == 200 ]] && break
    kill -0 "$ORIGIN_PID" 2>/dev/null || die "the origin exited: $(tail -n 3 "$SCRATCH/origin/error.log" 2>/dev/null)"
    sleep 0.1
done
for b in $BODIES; do
    curl -s --max-time 5 -o "$SCRATCH/origin.$b" "http://127.0.0.1:$ORIGIN_PORT/$b" || true
    cmp -s "$SCRATCH/origin.$b" "$SCRATCH/$b.expected" || die "the origin does not serve /$b as expected"
done

# ------------------------------------------------------------ proxies ----
start_nginx() { # DIR LOG [NAME] : NAME's port and X-Edge-Proxy (default nginx)
    local d=$1 name=${3:-nginx} port=${PORT_OF[${3:-nginx}]}
    render "$BENCH_DIR/nginx-proxy.conf" "$d/nginx.conf" PORT="$port" DIR="$d" NOFILE="$NOFILE" \
        WORKER_CONNS="$NOFILE" ORIGIN_PORT="$ORIGIN_PORT" EDGE_NAME="$name" NAME="$name"
    # the same listener with TLS (as tls.sh: moxy's defaults) and HTTP/2
    sed -i "s|listen 127.0.0.1:$port backlog=4096;|listen 127.0.0.1:$port $NGINX_H2_LISTEN backlog=4096; $NGINX_H2_DIRECTIVE\n\
        ssl_certificate $SCRATCH/cert.pem; ssl_certificate_key $SCRATCH/key.pem;\n\
        ssl_protocols TLSv1.2 TLSv1.3; ssl_ciphers $CIPHERS; ssl_prefer_server_ciphers on;\n\
        ssl_ecdh_curve X25519:prime256v1; ssl_session_cache shared:SSL:10m; ssl_session_tickets on;|" \
        "$d/nginx.conf"
    grep -q "ssl_certificate $SCRATCH/cert.pem" "$d/nginx.conf" || die "could not add TLS to nginx.conf"
    start_bg "$2" "${PIN_PROXY[@]}" nginx -p "$d" -e "$d/error.log" -c "$d/nginx.conf" -g 'daemon off;'
}

start_moxy() { # DIR LOG : bench/moxy-bench.lua's settings, the listener with TLS + HTTP/2
    local d=$1 jit=false
    if [[ $MOXY_STANDIN == 1 ]]; then
        start_nginx "$1" "$2" moxy
        return
    fi
    [[ $MOXY_HOOK_JIT == 1 ]] && jit=true
    cat >"$d/moxy.lua" <<EOF
-- written by bench/h2.sh: bench/moxy-bench.lua's settings, TLS + HTTP/2 listener
return {
  workers = $MOXY_WORKERS,
  listen = { { addr = "127.0.0.1:${PORT_OF[moxy]}",
               tls = { certificates = { { cert = "$SCRATCH/cert.pem", key = "$SCRATCH/key.pem" } } },
               http2 = true } },
  upstreams = {
    origin = {
      servers = { "127.0.0.1:$ORIGIN_PORT" },
      keepalive = 1024,
      keepalive_timeout = "300s",
    },
  },
  default_upstream = "origin",
  scripts = { { path = "$BENCH_DIR/bench-hook.lua", jit = $jit } },
  timeouts = { keepalive = "300s" },
  limits = { connections = 20000, connections_per_client = 0 },  -- one load generator: one address
  log = { access = false, error = "stderr", level = "warn" },
}
EOF
    start_bg "$2" "${PIN_PROXY[@]}" "$MOXY_BIN" -c "$d/moxy.lua"
}

# start_proxy NAME LOG : start NAME fresh and check it over HTTP/2.  Returns 0
# when it is ready; otherwise 1 with FAIL_OF[NAME] set and the proxy stopped.
start_proxy() {
    local name=$1 logf=$2 d=$SCRATCH/$1 port=${PORT_OF[$1]} i code=000 out b seen
    rm -rf "$d"
    mkdir -p "$d/tmp"
    PID_OF[$name]="" FAIL_OF[$name]="" KIDS_OF[$name]=""
    if [[ -n $(ss -Htln "( sport = :$port )" 2>/dev/null) ]]; then
        FAIL_OF[$name]="port $port is still in use (a process left over from the last start?)"
        log "$name FAILED: ${FAIL_OF[$name]}"
        return 1
    fi
    "start_$name" "$d" "$logf"
    PID_OF[$name]=$BG_PID
    for ((i = 0; i < READY_TIMEOUT * 10; i++)); do
        if ! kill -0 "$BG_PID" 2>/dev/null; then
            FAIL_OF[$name]="exited at start-up: $(grep -hv '^[[:space:]]*$' "$logf" "$d/error.log" 2>/dev/null |
                tail -n 1 | cut -c1-200)"
            break
        fi
        code=$(curl -sk -o /dev/null -w '%{http_code}' --max-time 2 "https://127.0.0.1:$port/small" || true)
        [[ $code == 200 ]] && break
        sleep 0.1
    done
    if [[ -z ${FAIL_OF[$name]} && $code != 200 ]]; then
        FAIL_OF[$name]="no 200 on GET https://127.0.0.1:$port/small within ${READY_TIMEOUT}s (last: $code)"
    fi
    # its processes (nginx: master + worker), tracked too: a worker whose
    # master died must not be left holding the port
    local p
    for p in $(tree_pids "$BG_PID"); do
        [[ $p == "$BG_PID" ]] && continue
        KIDS_OF[$name]+=" $p:$(proc_start "$p" || true)"
        STARTED+=("$p:$(proc_start "$p" || true)")
    done
    # the bodies over HTTP/2, and the hook's header echoed by the origin
    for b in $BODIES; do
        [[ -z ${FAIL_OF[$name]} ]] || break
        out=$(h2curl -D "$d/$b.h" -o "$d/$b.b" -w '%{http_code} %{http_version}' "https://127.0.0.1:$port/$b" || true)
        if [[ $out == "200 1.1" ]]; then
            FAIL_OF[$name]="answers HTTP/1.1, not HTTP/2 (ALPN did not select h2)"
        elif [[ $out != "200 2" ]]; then
            FAIL_OF[$name]="GET /$b over HTTP/2: '$out' (status, HTTP version)"
        elif ! cmp -s "$d/$b.b" "$SCRATCH/$b.expected"; then
            FAIL_OF[$name]="GET /$b over HTTP/2: wrong body ($(wc -c <"$d/$b.b") bytes)"
        fi
    done
    if [[ -n ${FAIL_OF[$name]} ]]; then
        log "$name FAILED: ${FAIL_OF[$name]}"
        stop_proxy "$name"
        return 1
    fi
    seen=$(awk -F': *' 'tolower($1) == "x-edge-seen" { sub(/\r$/, "", $2); print $2 }' "$d/small.h")
    if [[ $seen != "$name" ]]; then
        log "WARNING: $name: the origin saw X-Edge-Proxy '${seen:-<none>}', want '$name': its hook did not run"
        WARNINGS+=("$name: X-Edge-Seen '${seen:-<none>}', want '$name' (the hook did not run)")
    fi
    return 0
}

stop_proxy() {
    local name=$1 d=$SCRATCH/$1 e
    [[ -n ${PID_OF[$name]:-} ]] && stop_tree "${PID_OF[$name]}"
    for e in ${KIDS_OF[$name]:-}; do # orphans, if the parent died
        [[ $(proc_start "${e%%:*}" || true) == "${e#*:}" ]] && stop_tree "${e%%:*}"
        forget "${e%%:*}"
    done
    PID_OF[$name]="" KIDS_OF[$name]=""
    [[ -s $d/error.log ]] && cat "$d/error.log" >>"$RESULTS_DIR/logs/$name-error.log"
    rm -f "$d/error.log"
    return 0
}

# h2load_run PORT PATH CONNS STREAMS SECONDS OUT : one time-bounded h2load run, h2 only
h2load_run() {
    bounded "$6" timeout -k 5 $(($5 + 30)) "${PIN_WRK[@]}" h2load --npn-list=h2 -c "$3" -m "$4" -t 1 \
        -D "$5" "https://127.0.0.1:$1$2" || true
}

# parse_h2load FILE : "rps done succeeded failed errored timeout non2xx protocol"
parse_h2load() {
    awk '
        /^finished in/ { rps = $4 }
        /^requests:/ { for (i = 2; i < NF; i++) v[$(i + 1)] = $i
                       done = v["done,"]; ok = v["succeeded,"]; bad = v["failed,"]; err = v["errored,"]; to = v["timeout"] }
        /^status codes:/ { non2xx = $5 + $7 + $9 }
        /^Application protocol:/ { proto = $3 }
        END { printf "%s %d %d %d %d %d %d %s\n", (rps == "" ? 0 : rps), done, ok, bad, err, to, non2xx,
                     (proto == "" ? "none" : proto) }' "$1"
}

# ---------------------------------------------------------------- meta ----
WARNINGS=()
{
    echo "date: $(date -Is)"
    echo "host: $(uname -sr), $NCPU CPUs; loadavg at start: $(cat /proc/loadavg)"
    echo "versions: $(nginx -v 2>&1) | $(h2load --version 2>&1 | head -n 1) | $(openssl version)"
    if [[ $MOXY_STANDIN == 1 ]]; then
        echo "moxy: MOXY_STANDIN=1, a second nginx in moxy's column"
    else
        echo "moxy: $MOXY_BIN sha256 $(sha256sum "$MOXY_BIN" | cut -c1-16) built $(date -r "$MOXY_BIN" -Is)"
    fi
    echo "git $(git -C "$REPO_DIR" rev-parse --short HEAD 2>/dev/null || echo '?')" \
        "($(git -C "$REPO_DIR" status --porcelain -- core lua 2>/dev/null | wc -l) changed files in core/ lua/)"
    echo "certificate: $KEY_LABEL; nginx HTTP/2: listen ... $NGINX_H2_LISTEN ${NGINX_H2_DIRECTIVE:+ + $NGINX_H2_DIRECTIVE}"
    echo "settings: RUNS=$RUNS DURATION=$DURATION WARMUP=$WARMUP CONNS=$CONNS STREAMS=$STREAMS" \
        "IDLE_CONNS=$IDLE_CONNS IDLE_HOLD=$IDLE_HOLD MOXY_WORKERS=$MOXY_WORKERS MOXY_HOOK_JIT=$MOXY_HOOK_JIT"
    if [[ $PIN == 1 ]]; then
        echo "pinning: proxies=cpu$PROXY_CPUS origin=cpu$ORIGIN_CPUS h2load=cpu$WRK_CPUS"
    else
        echo "pinning: none"
    fi
    echo "ports: origin $ORIGIN_PORT, nginx $NGINX_PORT, moxy $MOXY_PORT; open-file limit $NOFILE"
} >"$RESULTS_DIR/meta.txt"
log "results in $RESULTS_DIR"

LOAD_TSV=$RESULTS_DIR/load.tsv IDLE_TSV=$RESULTS_DIR/idle.tsv CHECKS=$RESULTS_DIR/checks.txt
printf 'run\tproxy\tbody\tstatus\trps\tus_per_req\tdone\tsucceeded\tfailed\terrored\ttimeout\tnon2xx\tprotocol\tcpu_ticks\tcores_busy_pct\tnote\n' >"$LOAD_TSV"
printf 'run\tproxy\tstatus\topened\tfailed\talive_after_hold\testablished\trss_base_kib\trss_idle_kib\tbytes_per_conn\tnote\n' >"$IDLE_TSV"
: >"$CHECKS"

# load_case RUN NAME BODY : warm-up, then one measured h2load run; a row in load.tsv
load_case() {
    local run=$1 name=$2 body=$3 pid=${PID_OF[$2]} port=${PORT_OF[$2]} out t0 t1
    local rps ndone ok bad err to non2xx proto us note="" status=ok cs0 cs1 busy
    out=$RESULTS_DIR/h2load/run$run-$name-$body.txt
    ((WARMUP > 0)) && h2load_run "$port" "/$body" "$CONNS" "$STREAMS" "$WARMUP" "${out%.txt}.warmup.txt"
    t0=$(cpu_ticks "$pid") cs0=$(cpu_snapshot)
    h2load_run "$port" "/$body" "$CONNS" "$STREAMS" "$DURATION" "$out"
    t1=$(cpu_ticks "$pid") cs1=$(cpu_snapshot)
    busy=$(cpu_busy "$cs0" "$cs1")
    read -r rps ndone ok bad err to non2xx proto <<<"$(parse_h2load "$out")"
    us=$(awk -v t=$((t1 - t0)) -v hz="$HZ" -v n="$ok" 'BEGIN { printf "%.2f", (n > 0 ? 1e6 * t / hz / n : 0) }')
    if ! kill -0 "$pid" 2>/dev/null; then
        status=FAILED note="died under load ($body); log: logs/$name.log"
        FAIL_OF[$name]=$note
        stop_proxy "$name"
    elif [[ $proto != h2 ]]; then
        status=FAILED note="h2load: no h2 ($(grep -m1 -iE 'negotiat|error|fail' "$out" | cut -c1-120))"
    elif ((ok == 0)); then
        status=FAILED note="h2load: no request succeeded"
    elif ((bad + err + to + non2xx > 0)); then
        note="errors: $bad failed, $err errored, $to timeout, $non2xx non-2xx"
    fi
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$run" "$name" "$body" "$status" \
        "$rps" "$us" "$ndone" "$ok" "$bad" "$err" "$to" "$non2xx" "$proto" $((t1 - t0)) "$busy" "$note" >>"$LOAD_TSV"
    if [[ $status == ok ]]; then
        log "$name ${BODY_LABEL[$body]}: $rps req/s, CPU $us us/req, $ok requests; cores busy % $busy${note:+ ($note)}"
    else
        log "$name ${BODY_LABEL[$body]}: FAILED: $note"
        printf '%s\t%s\tFAILED\t%s\n' "$run" "$name" "$note" >>"$CHECKS"
    fi
    sleep 1
}

# idle_case RUN NAME : fresh proxy, 1 s burst, RSS baseline, IDLE_CONNS idle
# HTTP/2 connections, RSS again; a row in idle.tsv
idle_case() {
    local run=$1 name=$2 pid port out ready="" i hp rss0 rss1 est opened failed alive bpc rc=0 why
    if ! start_proxy "$name" "$RESULTS_DIR/logs/$name.log"; then
        printf '%s\t%s\tFAILED\t\t\t\t\t\t\t\t%s\n' "$run" "$name" "${FAIL_OF[$name]}" >>"$IDLE_TSV"
        printf '%s\t%s\tFAILED\t%s\n' "$run" "$name" "idle: ${FAIL_OF[$name]}" >>"$CHECKS"
        return 0
    fi
    pid=${PID_OF[$name]} port=${PORT_OF[$name]}
    out=$RESULTS_DIR/logs/idle-run$run-$name.txt
    # the burst allocates what some concurrency needs, so the delta is the idle cost
    h2load_run "$port" /small 100 10 1 "$RESULTS_DIR/h2load/run$run-$name-idle-burst.txt"
    sleep 1
    rss0=$(tree_rss "$pid")
    "${PIN_WRK[@]}" timeout -k 5 $((IDLE_HOLD + 150)) "$PYTHON" "$TOOLS_DIR/idle_h2.py" --port "$port" \
        --conns "$IDLE_CONNS" --hold "$IDLE_HOLD" --deadline 120 --length 100 >"$out" 2>&1 </dev/null &
    hp=$!
    STARTED+=("$hp:$(proc_start "$hp" || true)")
    for ((i = 0; i < 1400; i++)); do # <= 140 s; the client gives up opening at 120 s
        ready=$(awk '$1 == "READY"' "$out")
        [[ -n $ready ]] && break
        kill -0 "$hp" 2>/dev/null || break
        sleep 0.1
    done
    if [[ -z $ready ]]; then
        why="idle client: $(tail -n 2 "$out" | tr '\n' ' ')"
        stop_tree "$hp"
    else
        sleep 1 # let the proxy settle; the client holds for IDLE_HOLD >= 2 s
        rss1=$(tree_rss "$pid")
        est=$(ss -Htn state established "( sport = :$port )" 2>/dev/null | wc -l || echo 0)
        wait "$hp" || rc=$?
        forget "$hp"
        read -r _ opened failed _ <<<"$ready"
        alive=$(awk -F= '/^DONE/ { print $2 }' "$out")
        why=""
        ((opened > 0)) || why="no idle connection opened: $(awk '$1 == "ERROR"' "$out" | head -n 1 | cut -c7-150)"
        kill -0 "$pid" 2>/dev/null || why="died during the idle test; log: logs/$name.log"
    fi
    if [[ -n $why ]]; then
        log "$name idle: FAILED: $why"
        printf '%s\t%s\tFAILED\t\t\t\t\t\t\t\t%s\n' "$run" "$name" "$why" >>"$IDLE_TSV"
        printf '%s\t%s\tFAILED\t%s\n' "$run" "$name" "idle: $why" >>"$CHECKS"
    else
        bpc=$(((rss1 - rss0) * 1024 / opened))
        local note=""
        ((failed > 0)) && note="$failed failed: $(awk '$1 == "ERROR"' "$out" | head -n 1 | cut -c7-150)"
        ((rc == 0)) || note+="${note:+; }idle client exit status $rc"
        printf '%s\t%s\tok\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$run" "$name" "$opened" "$failed" "${alive:-}" \
            "$est" "$rss0" "$rss1" "$bpc" "$note" >>"$IDLE_TSV"
        log "$name idle: $opened HTTP/2 connections (failed $failed, alive after hold ${alive:-?}," \
            "established $est); RSS $rss0 -> $rss1 KiB = $bpc B/conn"
    fi
    stop_proxy "$name"
}

# ---------------------------------------------------------------- runs ----
for ((run = 1; run <= RUNS; run++)); do
    order=(nginx moxy)
    ((run % 2 == 0)) && order=(moxy nginx)
    log "=== run $run/$RUNS: order ${order[*]} ==="
    up=()
    for name in "${order[@]}"; do
        if start_proxy "$name" "$RESULTS_DIR/logs/$name.log"; then
            up+=("$name")
            printf '%s\t%s\tok\t\n' "$run" "$name" >>"$CHECKS"
        else
            printf '%s\t%s\tFAILED\t%s\n' "$run" "$name" "${FAIL_OF[$name]}" >>"$CHECKS"
            for b in $BODIES; do
                printf '%s\t%s\t%s\tFAILED\t\t\t\t\t\t\t\t\t\t\t\t%s\n' "$run" "$name" "$b" "${FAIL_OF[$name]}" >>"$LOAD_TSV"
            done
        fi
    done
    [[ -n ${FAIL_OF[nginx]} ]] && die "the reference (nginx) failed: ${FAIL_OF[nginx]}; see $RESULTS_DIR/logs"
    for b in $BODIES; do
        for name in "${up[@]}"; do
            if [[ -n ${PID_OF[$name]} ]]; then
                load_case "$run" "$name" "$b"
            else # died in an earlier case of this run
                printf '%s\t%s\t%s\tFAILED\t\t\t\t\t\t\t\t\t\t\t\t%s\n' "$run" "$name" "$b" "${FAIL_OF[$name]}" >>"$LOAD_TSV"
            fi
        done
    done
    for name in "${order[@]}"; do stop_proxy "$name"; done
    if ((IDLE_CONNS > 0)); then
        for name in "${order[@]}"; do idle_case "$run" "$name"; done
    fi
done
stop_tree "$ORIGIN_PID"

# -------------------------------------------------------------- report ----
# values PROXY BODY COLUMN : the column of load.tsv over the runs where PROXY was ok
values() {
    awk -F'\t' -v p="$1" -v b="$2" -v c="$3" 'NR > 1 && $2 == p && $3 == b && $4 == "ok" { print $c }' "$LOAD_TSV"
}
idle_values() {
    awk -F'\t' -v p="$1" 'NR > 1 && $2 == p && $3 == "ok" { print $10 }' "$IDLE_TSV"
}
# ratios FILE KEYCOLS VALCOL : moxy/nginx per run (both ok), one per line
ratios() {
    awk -F'\t' -v body="$2" -v c="$3" '
        NR > 1 && ($3 == body || body == "") && $(body == "" ? 3 : 4) == "ok" { v[$1, $2] = $c; runs[$1] = 1 }
        END { for (r in runs) if (((r, "moxy") in v) && ((r, "nginx") in v) && v[r, "nginx"] > 0)
                  printf "%.3f\n", v[r, "moxy"] / v[r, "nginx"] }' "$1"
}
fmt_median() { # values on stdin -> "median" or "FAILED"
    local m
    m=$(median)
    [[ -n $m ]] && printf '%.0f' "$m" || printf 'FAILED'
}
fmt_median2() {
    local m
    m=$(median)
    [[ -n $m ]] && printf '%.2f' "$m" || printf 'FAILED'
}
ratio_cell() { # ratios on stdin -> "1.03" or "n/a"
    local m
    m=$(median)
    [[ -n $m ]] && printf '%.2f' "$m" || printf 'n/a'
}
ratio_text() { # ratios on stdin -> "1.03 (median of 5, range 0.98-1.12)" or "n/a"
    local r n
    r=$(cat)
    n=$(grep -c . <<<"$r" || true)
    if ((n == 0)); then printf 'n/a'; return; fi
    printf "%.2f (median of %d, range %.2f-%.2f)" "$(median <<<"$r")" "$n" "$(sort -g <<<"$r" | head -n 1)" \
        "$(sort -g <<<"$r" | tail -n 1)"
}

SUBJECT_LABEL="moxy $(git -C "$REPO_DIR" rev-parse --short HEAD 2>/dev/null || echo '?')"
[[ $MOXY_STANDIN == 1 ]] && SUBJECT_LABEL="a second nginx in moxy's column (MOXY_STANDIN=1)"
{
    echo
    echo "HTTP/2 over TLS (ALPN h2, $KEY_LABEL), h2load -c $CONNS -m $STREAMS -t 1 -D $DURATION;" \
        "nginx $NGINX_VERSION vs $SUBJECT_LABEL; RUNS=$RUNS"
    echo
    for b in $BODIES; do
        printf 'moxy/nginx req/s, %-7s     = %s   higher is better\n' "${BODY_LABEL[$b]}" \
            "$(ratios "$LOAD_TSV" "$b" 5 | ratio_text)"
        printf 'moxy/nginx CPU us/req, %-7s = %s   lower is better\n' "${BODY_LABEL[$b]}" \
            "$(ratios "$LOAD_TSV" "$b" 6 | ratio_text)"
    done
    if ((IDLE_CONNS > 0)); then
        printf 'moxy/nginx bytes/idle h2 conn  = %s   lower is better\n' "$(ratios "$IDLE_TSV" "" 10 | ratio_text)"
    fi
    echo
    echo "Summary (medians over the runs where the proxy passed, FAILED if none did;"
    echo "the ratio is the median of the per-run ratios, as above):"
    printf '  %-32s %12s %12s %12s\n' "" nginx moxy moxy/nginx
    for b in $BODIES; do
        printf '  %-32s %12s %12s %12s\n' "req/s, ${BODY_LABEL[$b]}" "$(values nginx "$b" 5 | fmt_median)" \
            "$(values moxy "$b" 5 | fmt_median)" "$(ratios "$LOAD_TSV" "$b" 5 | ratio_cell)"
        printf '  %-32s %12s %12s %12s\n' "CPU us/req, ${BODY_LABEL[$b]}" "$(values nginx "$b" 6 | fmt_median2)" \
            "$(values moxy "$b" 6 | fmt_median2)" "$(ratios "$LOAD_TSV" "$b" 6 | ratio_cell)"
    done
    if ((IDLE_CONNS > 0)); then
        printf '  %-32s %12s %12s %12s\n' "bytes per idle h2 connection" "$(idle_values nginx | fmt_median)" \
            "$(idle_values moxy | fmt_median)" "$(ratios "$IDLE_TSV" "" 10 | ratio_cell)"
        awk -F'\t' 'NR > 1 && $3 == "ok" && $6 != "" && $6 < $4 {
                        printf "  note: run %s %s: only %s of %s idle connections still open after the hold\n", $1, $2, $6, $4 }' \
            "$IDLE_TSV"
    fi
    awk -F'\t' 'NR > 1 && $4 == "ok" && $16 != "" { printf "  note: run %s %s %s: %s\n", $1, $2, $3, $16 }' "$LOAD_TSV"
    for w in "${WARNINGS[@]}"; do echo "  WARNING: $w"; done
    if grep -q FAILED "$CHECKS"; then
        echo
        echo "FAILED (run, proxy, reason):"
        awk -F'\t' '$3 == "FAILED" { printf "  run %s %s: %s\n", $1, $2, $4 }' "$CHECKS" | sort -u
    fi
    echo
    echo "raw results: $RESULTS_DIR (load.tsv, idle.tsv, checks.txt, h2load/, logs/)"
} | tee "$RESULTS_DIR/report.txt"

grep -q FAILED "$CHECKS" && exit 1
exit 0
