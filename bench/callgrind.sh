#!/usr/bin/env bash
# bench/callgrind.sh -- CPU instructions moxy spends per proxied request, by
# hook variant, counted by valgrind's callgrind: deterministic, so unlike wrk
# figures on a shared machine they compare across runs and commits.
#
#   bench/callgrind.sh                 variants nohook noop moxy reads jit, 2000 requests each
#   N=5000 VARIANTS="moxy" bench/callgrind.sh
#   VARIANTS="moxy nginx nginx-lua" bench/callgrind.sh   (the nginx peers of run.sh)
#   VARIANTS="cache" bench/callgrind.sh   (cache hits: bench/moxy-cache-bench.lua)
#   MOXY_BIN=/path/to/moxy bench/callgrind.sh
#
# For each variant (bench/moxy-bench.lua's MOXY_BENCH_VARIANT, or nginx /
# nginx-lua with bench/nginx-proxy.conf / nginx-lua.conf, one process) the
# proxy runs under callgrind against spec/support/origin.py; 200 warm-up
# requests on one keep-alive connection, counters zeroed, N more requests
# (GET /bytes/100), counters dumped: instructions / N is the proxy's cost per
# request, everything included (parsing, hooks, origin side, the user-space
# part of system calls).
set -euo pipefail

REPO_DIR=$(cd "$(dirname "$0")/.." && pwd)
MOXY_BIN=${MOXY_BIN:-$REPO_DIR/moxy}
N=${N:-2000}
WARMUP=${WARMUP:-3000} # requests before counting: the JIT has compiled (or given up on) what it will
VARIANTS=${VARIANTS:-"nohook noop moxy reads jit"}
command -v valgrind >/dev/null || { echo "callgrind.sh: needs valgrind (apt-get install valgrind)" >&2; exit 2; }

WORK=$(mktemp -d "${TMPDIR:-/tmp}/moxy-callgrind.XXXXXX")
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    [[ -n ${KEEP:-} ]] && echo "kept $WORK" >&2 || rm -rf "$WORK"
}
trap cleanup EXIT

# origin
python3 "$REPO_DIR/spec/support/origin.py" 0 >"$WORK/origin.out" 2>&1 &
PIDS+=($!)
for _ in $(seq 100); do grep -q '^ready' "$WORK/origin.out" 2>/dev/null && break; sleep 0.1; done
ORIGIN_PORT=$(awk '/^ready/ {print $2}' "$WORK/origin.out")
[[ -n $ORIGIN_PORT ]] || { echo "callgrind.sh: the origin did not start" >&2; exit 1; }

# send COUNT requests on one keep-alive connection to PORT
send() {
    python3 - "$1" "$2" <<'EOF'
import socket, sys
port, count = int(sys.argv[1]), int(sys.argv[2])
s = socket.create_connection(("127.0.0.1", port))
req = b"GET /bytes/100 HTTP/1.1\r\nHost: bench\r\nUser-Agent: callgrind.sh\r\n\r\n"
buf = b""
for _ in range(count):
    s.sendall(req)
    while True:
        head_end = buf.find(b"\r\n\r\n")
        if head_end >= 0:
            head = buf[:head_end].decode("latin-1").lower()
            length = int(head.split("content-length:")[1].split("\r\n")[0])
            if len(buf) >= head_end + 4 + length:
                assert head.startswith("http/1.1 200"), head
                buf = buf[head_end + 4 + length:]
                break
        data = s.recv(65536)
        if not data:
            sys.exit("closed")
        buf += data
s.close()
EOF
}

printf "%-8s %12s %10s\n" variant "instr/req" "/nohook"
NOHOOK=""
for variant in $VARIANTS; do
    LISTEN_PORT=$(python3 "$REPO_DIR/bench/tools/free_ports.py" 1 | head -n 1)
    out="$WORK/callgrind.$variant"
    case $variant in
    nginx | nginx-lua)
        dir="$WORK/$variant"
        mkdir -p "$dir/tmp"
        tpl="$REPO_DIR/bench/nginx-proxy.conf"
        [[ $variant == nginx-lua ]] && tpl="$REPO_DIR/bench/nginx-lua.conf"
        sed -e "s|@@PORT@@|$LISTEN_PORT|g; s|@@ORIGIN_PORT@@|$ORIGIN_PORT|g; s|@@DIR@@|$dir|g" \
            -e "s|@@NOFILE@@|4096|g; s|@@WORKER_CONNS@@|4096|g; s|@@EDGE_NAME@@|$variant|g" \
            -e "s|@@NDK_MODULE@@|/usr/lib/nginx/modules/ndk_http_module.so|g" \
            -e "s|@@LUA_MODULE@@|/usr/lib/nginx/modules/ngx_http_lua_module.so|g" "$tpl" >"$dir/nginx.conf"
        valgrind --tool=callgrind --callgrind-out-file="$out.%p" \
            nginx -p "$dir" -e "$dir/error.log" -c "$dir/nginx.conf" -g 'daemon off; master_process off;' \
            >"$WORK/$variant.log" 2>&1 &
        ;;
    cache)
        # the warm-up's first request stores /bytes/100; the N that follow are hits
        (cd "$REPO_DIR/bench" && LISTEN_PORT=$LISTEN_PORT ORIGIN_ADDR=127.0.0.1:$ORIGIN_PORT \
            exec valgrind --tool=callgrind --callgrind-out-file="$out.%p" \
            "$MOXY_BIN" -c "$REPO_DIR/bench/moxy-cache-bench.lua") >"$WORK/moxy.$variant.log" 2>&1 &
        ;;
    *)
        LISTEN_PORT=$LISTEN_PORT ORIGIN_PORT=$ORIGIN_PORT MOXY_BENCH_VARIANT=$variant \
            valgrind --tool=callgrind --callgrind-out-file="$out.%p" \
            "$MOXY_BIN" -c "$REPO_DIR/bench/moxy-bench.lua" >"$WORK/moxy.$variant.log" 2>&1 &
        ;;
    esac
    pid=$!
    for _ in $(seq 300); do
        (exec 3<>"/dev/tcp/127.0.0.1/$LISTEN_PORT") 2>/dev/null && break
        sleep 0.1
    done
    send "$LISTEN_PORT" "$WARMUP"
    callgrind_control -z "$pid" >/dev/null 2>&1
    send "$LISTEN_PORT" "$N"
    callgrind_control -d "$pid" >/dev/null 2>&1
    kill -TERM "$pid"
    wait "$pid" 2>/dev/null || true
    # the dump made after the N requests (the first one written by -d)
    dump=$(ls "$out.$pid".* 2>/dev/null | sort | head -n 1)
    total=$(awk '/^(summary|totals):/ {print $2; exit}' "$dump")
    per=$((total / N))
    [[ $variant == nohook ]] && NOHOOK=$per
    ratio=-
    [[ -n $NOHOOK ]] && ratio=$(awk -v a="$per" -v b="$NOHOOK" 'BEGIN {printf "%.3f", a / b}')
    printf "%-8s %12d %10s\n" "$variant" "$per" "$ratio"
done
