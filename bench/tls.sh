#!/usr/bin/env bash
# bench/tls.sh -- TLS termination, moxy and nginx side by side.
#
# Both proxies terminate TLS with the same certificate (ECDSA P-256, then
# RSA 2048), the same protocols (TLS 1.2 and 1.3) and ciphers, one worker
# each on PROXY_CPUS, in front of one nginx origin (bench/nginx-origin.conf)
# on ORIGIN_CPUS, wrk on WRK_CPUS; moxy runs bench/moxy-bench.lua (the usual
# hook), nginx bench/nginx-proxy.conf with ssl.  Per key type and run, in
# alternating order:
#   keepalive   req/s of GET /small (100 B) over 50 kept-alive TLS connections
#               (wrk), and of GET /large (1 MiB) over 10
#   resumed     req/s of GET /small with "Connection: close", 50 at a time
#               (wrk): a TLS 1.3 handshake per request, resumed (wrk keeps a
#               connection's session for the next: SSL_clear), 1-RTT
#   full        handshakes/s of openssl s_time -new (TLS 1.3, GET /small), in
#               CLIENTS parallel clients: a full handshake per connection
# and prints each ratio moxy/nginx as a median of RUNS.  The clients share
# WRK_CPUS with the origin, and on a small machine they may saturate before
# a proxy does: each handshake case also reports handshakes per second of
# the proxy's CPU time (utime + stime of its process tree over the run),
# the capacity a proxy would have on a core of its own.
#
# and the memory (RSS) each proxy takes per idle kept-alive TLS connection.
#
#   RUNS [5] DURATION [8] seconds per measurement, IDLE_CONNS [2000], CLIENTS [16], MOXY_BIN [./moxy],
#   PROXY_CPUS [0] ORIGIN_CPUS [1] WRK_CPUS [1]
set -euo pipefail

BENCH_DIR=$(cd "$(dirname "$0")" && pwd)
REPO_DIR=$(cd "$BENCH_DIR/.." && pwd)
RUNS=${RUNS:-5}
IDLE_CONNS=${IDLE_CONNS:-2000}
DURATION=${DURATION:-8}
CLIENTS=${CLIENTS:-16}
MOXY_BIN=${MOXY_BIN:-$REPO_DIR/moxy}
PROXY_CPUS=${PROXY_CPUS:-0}
ORIGIN_CPUS=${ORIGIN_CPUS:-1}
WRK_CPUS=${WRK_CPUS:-1}
NOFILE=65536

log() { printf '[%s] %s\n' "$(date +%T)" "$*" >&2; }
die() { log "tls.sh: $*"; exit 1; }
for t in nginx wrk openssl curl taskset; do command -v $t >/dev/null || die "needs $t (tools/deps.sh bench)"; done
[[ -x $MOXY_BIN ]] || die "no moxy binary at $MOXY_BIN (make)"

SCRATCH=$(mktemp -d /tmp/moxy-tls-bench.XXXXXX)
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$SCRATCH"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
render() {
    local tpl=$1 out=$2 kv args=()
    shift 2
    for kv in "$@"; do args+=(-e "s|@@${kv%%=*}@@|${kv#*=}|g"); done
    sed "${args[@]}" "$tpl" >"$out"
}
wait_https() { # PORT : until GET /small answers 200 over TLS
    for _ in $(seq 100); do
        [[ $(curl -sk -o /dev/null -w '%{http_code}' "https://127.0.0.1:$1/small" 2>/dev/null) == 200 ]] && return 0
        sleep 0.1
    done
    die "nothing answers https on :$1"
}

# the origin
mkdir -p "$SCRATCH/www" "$SCRATCH/origin/tmp"
head -c 100 /dev/urandom | base64 | head -c 100 >"$SCRATCH/www/small"
head -c 1048576 /dev/urandom >"$SCRATCH/www/large.bin"
chmod 755 "$SCRATCH" "$SCRATCH/www" # nginx workers run as nobody under root
chmod 644 "$SCRATCH/www/small" "$SCRATCH/www/large.bin"
ORIGIN_PORT=$(free_port)
render "$BENCH_DIR/nginx-origin.conf" "$SCRATCH/origin/nginx.conf" PORT="$ORIGIN_PORT" DIR="$SCRATCH/origin" \
    WWW="$SCRATCH/www" NOFILE="$NOFILE" WORKER_CONNS="$NOFILE" NAME=origin
taskset -c "$ORIGIN_CPUS" nginx -p "$SCRATCH/origin" -e "$SCRATCH/origin/error.log" \
    -c "$SCRATCH/origin/nginx.conf" -g 'daemon off;' &
PIDS+=($!)

# certificates
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30 -subj /CN=bench.test \
    -addext subjectAltName=DNS:bench.test -keyout "$SCRATCH/ecdsa.key" -out "$SCRATCH/ecdsa.pem" 2>/dev/null
openssl req -x509 -newkey rsa:2048 -nodes -days 30 -subj /CN=bench.test \
    -addext subjectAltName=DNS:bench.test -keyout "$SCRATCH/rsa.key" -out "$SCRATCH/rsa.pem" 2>/dev/null

CIPHERS="ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384"
CIPHERS+=":ECDHE-RSA-AES256-GCM-SHA384:ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305"

start_nginx() { # KEY PORT
    local d="$SCRATCH/nginx-$1"
    mkdir -p "$d/tmp"
    render "$BENCH_DIR/nginx-proxy.conf" "$d/nginx.conf" PORT="$2" DIR="$d" NOFILE="$NOFILE" \
        WORKER_CONNS="$NOFILE" ORIGIN_PORT="$ORIGIN_PORT" EDGE_NAME=nginx NAME=nginx
    # the same listener with TLS, as moxy's defaults
    sed -i "s|listen 127.0.0.1:$2 backlog=4096;|listen 127.0.0.1:$2 ssl backlog=4096;\n\
        ssl_certificate $SCRATCH/$1.pem; ssl_certificate_key $SCRATCH/$1.key;\n\
        ssl_protocols TLSv1.2 TLSv1.3; ssl_ciphers $CIPHERS; ssl_prefer_server_ciphers on;\n\
        ssl_ecdh_curve X25519:prime256v1; ssl_session_cache shared:SSL:10m; ssl_session_tickets on;|" \
        "$d/nginx.conf"
    taskset -c "$PROXY_CPUS" nginx -p "$d" -e "$d/error.log" -c "$d/nginx.conf" -g 'daemon off;' &
    PIDS+=($!)
    LAST=$!
}

start_moxy() { # KEY PORT
    LISTEN_PORT=$2 ORIGIN_PORT=$ORIGIN_PORT MOXY_BENCH_TLS_CERT="$SCRATCH/$1.pem" MOXY_BENCH_TLS_KEY="$SCRATCH/$1.key" \
        taskset -c "$PROXY_CPUS" "$MOXY_BIN" -c "$BENCH_DIR/moxy-bench.lua" >"$SCRATCH/moxy-$1.log" 2>&1 &
    PIDS+=($!)
    LAST=$!
}

wrk_rps() { # CONNS URL EXTRA... : requests per second
    local conns=$1
    shift
    taskset -c "$WRK_CPUS" timeout -k 5 $((DURATION + 30)) wrk -t1 -c"$conns" -d"${DURATION}s" "$@" \
        | awk '/^Requests\/sec/ { print $2 }'
}

# cpu_ticks PID : utime + stime (clock ticks) of PID and its children (nginx's worker)
cpu_ticks() {
    local total=0 p
    for p in $1 $(pgrep -P "$1"); do
        total=$((total + $(awk '{ print $14 + $15 }' "/proc/$p/stat" 2>/dev/null || echo 0)))
    done
    echo "$total"
}

# full_hs PORT : full TLS 1.3 handshakes (and GET /small) per second, CLIENTS s_time at once
full_hs() {
    local i pids=()
    for i in $(seq "$CLIENTS"); do
        taskset -c "$WRK_CPUS" timeout -k 5 $((DURATION + 30)) openssl s_time -connect "127.0.0.1:$1" -new -tls1_3 \
            -time "$DURATION" -www /small >"$SCRATCH/stime.$i" 2>&1 &
        pids+=($!)
    done
    wait "${pids[@]}" || true
    cat "$SCRATCH"/stime.* | awk '/connections in [0-9.]+ real seconds/ { n += $1 } END { printf "%.1f\n", n / '"$DURATION"' }'
    rm -f "$SCRATCH"/stime.*
}

# measure PID WHAT... : runs WHAT, prints "RATE PER_CPU_SECOND" (RATE: WHAT's output)
measure() {
    local pid=$1 t0 t1 rate
    shift
    t0=$(cpu_ticks "$pid")
    rate=$("$@")
    t1=$(cpu_ticks "$pid")
    awk -v r="$rate" -v d="$DURATION" -v t=$((t1 - t0)) -v hz="$(getconf CLK_TCK)" \
        'BEGIN { printf "%s %.0f\n", r, (t > 0 ? r * d / (t / hz) : 0) }'
}

# tree_rss PID : RSS in KiB of PID and its children (nginx's worker)
tree_rss() {
    local total=0 p
    for p in $1 $(pgrep -P "$1"); do
        total=$((total + $(awk '/^VmRSS:/ { print $2 }' "/proc/$p/status" 2>/dev/null || echo 0)))
    done
    echo "$total"
}

median() { sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

for key in ecdsa rsa; do
    np=$(free_port) mp=$(free_port)
    start_nginx "$key" "$np"
    npid=$LAST
    start_moxy "$key" "$mp"
    mpid=$LAST
    wait_https "$np"
    wait_https "$mp"
    for p in "$np" "$mp"; do
        size=$(curl -sk -o /dev/null -w '%{size_download} %{http_code}' "https://127.0.0.1:$p/large")
        [[ $size == "1048576 200" ]] || die "GET /large on :$p gave $size, not 1 MiB"
    done
    for f in ka large res res_cpu full full_cpu; do : >"$SCRATCH/$f.ratios"; done
    for run in $(seq "$RUNS"); do
        order="nginx moxy"
        ((run % 2 == 0)) && order="moxy nginx"
        declare -A ka=() large=() res=() full=()
        for who in $order; do
            port=$np pid=$npid
            [[ $who == moxy ]] && port=$mp pid=$mpid
            ka[$who]=$(wrk_rps 50 "https://127.0.0.1:$port/small")
            large[$who]=$(wrk_rps 10 "https://127.0.0.1:$port/large")
            res[$who]=$(measure "$pid" wrk_rps 50 -H "Connection: close" "https://127.0.0.1:$port/small")
            full[$who]=$(measure "$pid" full_hs "$port")
        done
        log "$key run $run: keepalive moxy ${ka[moxy]} nginx ${ka[nginx]} req/s;" \
            "1 MiB moxy ${large[moxy]} nginx ${large[nginx]} req/s;" \
            "resumed moxy ${res[moxy]} nginx ${res[nginx]} (hs/s, hs/cpu-s);" \
            "full moxy ${full[moxy]} nginx ${full[nginx]} (hs/s, hs/cpu-s)"
        ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f\n", (b > 0 ? a / b : 0) }'; }
        ratio "${ka[moxy]}" "${ka[nginx]}" >>"$SCRATCH/ka.ratios"
        ratio "${large[moxy]}" "${large[nginx]}" >>"$SCRATCH/large.ratios"
        ratio "${res[moxy]% *}" "${res[nginx]% *}" >>"$SCRATCH/res.ratios"
        ratio "${res[moxy]#* }" "${res[nginx]#* }" >>"$SCRATCH/res_cpu.ratios"
        ratio "${full[moxy]% *}" "${full[nginx]% *}" >>"$SCRATCH/full.ratios"
        ratio "${full[moxy]#* }" "${full[nginx]#* }" >>"$SCRATCH/full_cpu.ratios"
    done
    report() { # FILE LABEL
        echo "$key: moxy/nginx $2 = $(median <"$SCRATCH/$1.ratios") (median of $RUNS, range" \
            "$(sort -g "$SCRATCH/$1.ratios" | head -1)-$(sort -g "$SCRATCH/$1.ratios" | tail -1))"
    }
    report ka "keep-alive TLS req/s, 100 B      "
    report large "keep-alive TLS req/s, 1 MiB      "
    report res "resumed handshakes/s             "
    report res_cpu "resumed handshakes per CPU-second"
    report full "full handshakes/s                "
    report full_cpu "full handshakes per CPU-second   "
    # memory per idle TLS connection: RSS before and while IDLE_CONNS are held
    for who in nginx moxy; do
        port=$np pid=$npid
        [[ $who == moxy ]] && port=$mp pid=$mpid
        rss0=$(tree_rss "$pid")
        python3 "$BENCH_DIR/tools/idle_tls.py" --port "$port" --conns "$IDLE_CONNS" --hold 4 >"$SCRATCH/idle.out" &
        ipid=$!
        for _ in $(seq 600); do grep -q READY "$SCRATCH/idle.out" 2>/dev/null && break; sleep 0.2; done
        sleep 1
        rss1=$(tree_rss "$pid")
        wait "$ipid" || true
        opened=$(awk '/^READY/ { print $2 }' "$SCRATCH/idle.out")
        echo "$key: $who idle TLS connections: $opened held, $(( (rss1 - rss0) * 1024 / (opened > 0 ? opened : 1) )) bytes each (RSS)"
    done
    kill "$npid" "$mpid" 2>/dev/null || true
    wait "$npid" "$mpid" 2>/dev/null || true
done
