#!/usr/bin/env bash
# bench/cache-tests/run.sh -- runs the public HTTP caching test suite
# (http-tests/cache-tests, the one behind cache-tests.fyi) against moxy.
#
#   bench/cache-tests/run.sh SUITE_DIR [MOXY_BIN] [OUT.json]
#
# SUITE_DIR is your checkout of https://github.com/http-tests/cache-tests (it is
# not part of this repository). MOXY_BIN defaults to the repository's ./moxy;
# OUT.json to results.json in the run directory, bench/results/cache-tests-<timestamp>/
# (git-ignored), which also keeps the logs and the summary.
#
# Starts the suite's origin server (node, pinned to 127.0.0.1 by loopback-only.mjs)
# and moxy (127.0.0.1, moxy.lua: one upstream, the origin; cache = { size = "64m" })
# on free loopback ports, runs the suite's CLI client against moxy in its
# reverse-proxy mode (browser-only tests are skipped), writes the results JSON,
# prints the counts (summary.py) and stops what it started, by PID only.
# Nothing is written into SUITE_DIR: undici 7, which the client needs on Node 20
# (undici7-dispatcher.mjs), is installed with npm into CT_CACHE_DIR.
# Exit status: 0 when the suite ran (whatever the tests gave), 1 when the origin,
# moxy or the client failed or moxy died during the run, 2 for a usage error.
#
# Environment:
#   CT_CACHE_DIR [${XDG_CACHE_HOME:-~/.cache}/moxy-cache-tests]  undici 7 and metadata cache
#   CT_NODE_DEPS   a directory whose node_modules/ has undici 7 (skips the npm install)
#   RESULTS_DIR    the run directory [bench/results/cache-tests-<timestamp>]
#   CT_ORIGIN_PORT / CT_MOXY_PORT   ports to use [two free loopback ports]
#   CT_MOXY_CONFIG another moxy config [bench/cache-tests/moxy.lua]; it gets
#                  CT_MOXY_PORT, CT_ORIGIN_PORT and CT_RUN_DIR in its environment
#   CT_TEST_ID     run one test only, with the client's verbose dump of it
#   CT_TIMEOUT [1200]  seconds the client may take
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_DIR=$(cd "$HERE/../.." && pwd)
log() { printf 'cache-tests: %s\n' "$*" >&2; }
die() { log "$*"; exit 1; }
usage() {
    echo "usage: $0 SUITE_DIR [MOXY_BIN] [OUT.json]" >&2
    echo "  SUITE_DIR: a checkout of https://github.com/http-tests/cache-tests" >&2
    echo "  (git clone https://github.com/http-tests/cache-tests)" >&2
    exit 2
}

(($# >= 1 && $# <= 3)) || usage
[[ -d $1 ]] || { log "no directory $1"; usage; }
SUITE_DIR=$(cd "$1" && pwd)
missing=()
for f in test-engine/cli.mjs test-engine/server/server.mjs tests/index.mjs; do
    [[ -f $SUITE_DIR/$f ]] || missing+=("$f")
done
if ((${#missing[@]})); then
    log "$SUITE_DIR is not a checkout of http-tests/cache-tests: no ${missing[*]}"
    usage
fi
MOXY_BIN=${2:-$REPO_DIR/moxy}
[[ -x $MOXY_BIN && ! -d $MOXY_BIN ]] || {
    log "no moxy binary at $MOXY_BIN (run make, or give MOXY_BIN)"
    exit 2
}
MOXY_BIN=$(cd "$(dirname "$MOXY_BIN")" && pwd)/$(basename "$MOXY_BIN")
CONFIG=${CT_MOXY_CONFIG:-$HERE/moxy.lua}
[[ -f $CONFIG ]] || { log "no moxy config at $CONFIG"; exit 2; }
CONFIG=$(cd "$(dirname "$CONFIG")" && pwd)/$(basename "$CONFIG")
for c in node npm python3 timeout; do
    command -v "$c" >/dev/null || { log "needs $c"; exit 2; }
done
node_major=$(node -p 'process.versions.node.split(".")[0]')
((node_major >= 20)) || { log "needs Node.js 20 or newer (have $(node --version))"; exit 2; }

# the run directory: results, logs, summary, test metadata
STAMP=$(date +%Y%m%d-%H%M%S)
if [[ -z ${RESULTS_DIR:-} ]]; then
    RESULTS_DIR=$REPO_DIR/bench/results/cache-tests-$STAMP
    n=1
    while [[ -e $RESULTS_DIR ]]; do
        RESULTS_DIR=$REPO_DIR/bench/results/cache-tests-$STAMP-$n
        n=$((n + 1))
    done
fi
mkdir -p "$RESULTS_DIR"
RUN_DIR=$(cd "$RESULTS_DIR" && pwd)
OUT=${3:-$RUN_DIR/results.json}
case $OUT in /*) ;; *) OUT=$PWD/$OUT ;; esac

# undici 7 for the client (undici7-dispatcher.mjs), outside the suite's checkout
CT_CACHE_DIR=${CT_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/moxy-cache-tests}
export CT_CACHE_DIR
undici_major() {  # DIR: the major version of DIR/node_modules/undici, or nothing
    [[ -f $1/node_modules/undici/package.json ]] || return 0
    node -p 'require(process.argv[1]).version.split(".")[0]' "$1/node_modules/undici/package.json"
}
if [[ -n ${CT_NODE_DEPS:-} ]]; then
    CT_NODE_DEPS=$(cd "$CT_NODE_DEPS" && pwd)
    [[ $(undici_major "$CT_NODE_DEPS") == 7 ]] || { log "no undici 7 in $CT_NODE_DEPS/node_modules"; exit 2; }
else
    CT_NODE_DEPS=$CT_CACHE_DIR/node-deps
    if [[ $(undici_major "$CT_NODE_DEPS") != 7 ]]; then
        log "installing undici 7 (for the suite's interim-response tests) into $CT_NODE_DEPS"
        mkdir -p "$CT_CACHE_DIR"
        tmp=$(mktemp -d "$CT_CACHE_DIR/node-deps.XXXXXX")
        printf '{ "name": "moxy-cache-tests-deps", "private": true }\n' >"$tmp/package.json"
        if ! timeout 600 npm install --prefix "$tmp" --no-audit --no-fund --no-package-lock \
            undici@7 >"$RUN_DIR/npm-install.log" 2>&1; then
            rm -rf "$tmp"
            tail -20 "$RUN_DIR/npm-install.log" >&2
            die "npm install undici@7 failed (log: $RUN_DIR/npm-install.log; or set CT_NODE_DEPS)"
        fi
        rm -rf "$CT_NODE_DEPS"
        mv "$tmp" "$CT_NODE_DEPS"
    fi
fi
export CT_NODE_DEPS

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}
ORIGIN_PORT=${CT_ORIGIN_PORT:-$(free_port)}
MOXY_PORT=${CT_MOXY_PORT:-$(free_port)}
while [[ $MOXY_PORT == "$ORIGIN_PORT" ]]; do MOXY_PORT=$(free_port); done

ORIGIN_PID=""
MOXY_PID=""
CLIENT_PID=""
stop_pid() {  # PID: stop one process this script started; TERM, then KILL after 5 s
    local pid=$1 i
    [[ -n $pid ]] || return 0
    if kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid" 2>/dev/null || true
        for ((i = 0; i < 50; i++)); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null
    fi
    wait "$pid" 2>/dev/null || true
}
cleanup() {
    local rc=$?
    set +e
    trap '' INT TERM HUP
    stop_pid "$CLIENT_PID"
    stop_pid "$MOXY_PID"
    stop_pid "$ORIGIN_PID"
    ((rc == 0)) || log "exit status $rc; logs in $RUN_DIR"
    exit "$rc"
}
trap cleanup EXIT
trap 'log interrupted; exit 130' INT
trap 'log terminated; exit 143' TERM HUP

wait_listen() {  # PORT PID NAME LOG: wait until PID listens on 127.0.0.1:PORT
    local i
    for ((i = 0; i < 100; i++)); do
        if ! kill -0 "$2" 2>/dev/null; then
            log "$3 exited during startup; its log:"
            cat "$4" >&2
            return 1
        fi
        if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
        sleep 0.1
    done
    log "$3 did not listen on 127.0.0.1:$1 within 10 s; log: $4"
    return 1
}

# the suite's origin server, with its listen() pinned to 127.0.0.1
npm_config_protocol=http npm_config_port=$ORIGIN_PORT npm_config_pidfile=$RUN_DIR/origin.pid \
    node --import "$HERE/loopback-only.mjs" "$SUITE_DIR/test-engine/server/server.mjs" \
    >"$RUN_DIR/origin.log" 2>&1 </dev/null &
ORIGIN_PID=$!
wait_listen "$ORIGIN_PORT" "$ORIGIN_PID" origin "$RUN_DIR/origin.log" || exit 1

CT_MOXY_PORT=$MOXY_PORT CT_ORIGIN_PORT=$ORIGIN_PORT CT_RUN_DIR=$RUN_DIR \
    "$MOXY_BIN" -c "$CONFIG" >"$RUN_DIR/moxy.log" 2>&1 </dev/null &
MOXY_PID=$!
wait_listen "$MOXY_PORT" "$MOXY_PID" moxy "$RUN_DIR/moxy.log" || exit 1

{
    echo "date:   $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    suite_rev="not a git checkout"
    [[ -e $SUITE_DIR/.git ]] && suite_rev=$(git -C "$SUITE_DIR" rev-parse HEAD 2>/dev/null || echo '?')
    echo "suite:  $SUITE_DIR ($suite_rev)"
    echo "moxy:   $MOXY_BIN (sha256 $(sha256sum "$MOXY_BIN" | cut -d' ' -f1); this repository at $(git -C "$REPO_DIR" rev-parse HEAD 2>/dev/null || echo '?'))"
    echo "config: $CONFIG"
    echo "node:   $(node --version), undici $(node -p 'require(process.argv[1]).version' "$CT_NODE_DEPS/node_modules/undici/package.json")"
    echo "ports:  origin 127.0.0.1:$ORIGIN_PORT, moxy 127.0.0.1:$MOXY_PORT"
} >"$RUN_DIR/meta.txt"
log "origin 127.0.0.1:$ORIGIN_PORT (pid $ORIGIN_PID), moxy 127.0.0.1:$MOXY_PORT (pid $MOXY_PID, $MOXY_BIN)"
log "run directory $RUN_DIR"

# The client runs in the background and the script waits for it, so that Ctrl-C
# or SIGTERM stops everything at once (bash runs traps only between commands).
CLIENT=(timeout "${CT_TIMEOUT:-1200}" node --no-warnings --import "$HERE/undici7-dispatcher.mjs"
    "$SUITE_DIR/test-engine/cli.mjs")
if [[ -n ${CT_TEST_ID:-} ]]; then
    npm_config_base=http://127.0.0.1:$MOXY_PORT npm_config_id=$CT_TEST_ID "${CLIENT[@]}" </dev/null &
    CLIENT_PID=$!
    rc=0
    wait "$CLIENT_PID" || rc=$?
    CLIENT_PID=""
    kill -0 "$MOXY_PID" 2>/dev/null || die "moxy (pid $MOXY_PID) died; logs in $RUN_DIR"
    exit "$rc"
fi

# npm_package_config_id must be set and empty: the client compares it with ''
log "running the suite (about a minute)"
npm_config_base=http://127.0.0.1:$MOXY_PORT npm_package_config_id='' "${CLIENT[@]}" \
    >"$RUN_DIR/client.out" 2>"$RUN_DIR/client.err" </dev/null &
CLIENT_PID=$!
rc=0
wait "$CLIENT_PID" || rc=$?
CLIENT_PID=""
if ((rc != 0)) || ! python3 -c 'import json, sys; json.load(open(sys.argv[1]))' "$RUN_DIR/client.out" 2>/dev/null; then
    log "the suite's client failed (exit $rc); its stderr:"
    tail -20 "$RUN_DIR/client.err" >&2
    exit 1
fi
kill -0 "$MOXY_PID" 2>/dev/null || die "moxy (pid $MOXY_PID) died during the run; see $RUN_DIR/moxy.log"
kill -0 "$ORIGIN_PID" 2>/dev/null || die "the origin (pid $ORIGIN_PID) died during the run; see $RUN_DIR/origin.log"
if [[ -s $RUN_DIR/client.err ]]; then
    log "client stderr (first lines; all in $RUN_DIR/client.err):"
    head -5 "$RUN_DIR/client.err" >&2
fi
mkdir -p "$(dirname "$OUT")"
cp "$RUN_DIR/client.out" "$OUT.tmp"
mv -f "$OUT.tmp" "$OUT"
[[ $OUT == "$RUN_DIR/results.json" ]] || cp "$OUT" "$RUN_DIR/results.json"

SUMMARY=(python3 "$HERE/summary.py" --suite "$SUITE_DIR")   # metadata cache: CT_CACHE_DIR
"${SUMMARY[@]}" --names "$OUT" >"$RUN_DIR/summary.txt"
log "results: $OUT"
log "every non-passing test: $RUN_DIR/summary.txt"
"${SUMMARY[@]}" --counts "$OUT"
