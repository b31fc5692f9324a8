#!/usr/bin/env bash
# bench/cache.sh -- cache hits: moxy's cache against Varnish's, side by side,
# with the shared peer harness (../shared/bench/run-peers.sh, where present):
# both on one core (PIN=1), the origin and wrk on the other; after the
# first request every response is a hit for both.
#
#   bench/cache.sh                      /small (100 B) and /large (1 MiB), 50 and 1000 connections
#   RUNS=3 bench/cache.sh               repeat; then ../shared/bench/tools/report.py on the runs
#   HARNESS=/path/to/run-peers.sh bench/cache.sh
set -euo pipefail
REPO_DIR=$(cd "$(dirname "$0")/.." && pwd)
HARNESS=${HARNESS:-$REPO_DIR/../shared/bench/run-peers.sh}
[[ -x $HARNESS ]] || { echo "cache.sh: no peer harness at $HARNESS (set HARNESS)" >&2; exit 2; }
command -v varnishd >/dev/null || { echo "cache.sh: needs varnish (apt-get install varnish)" >&2; exit 2; }
RUNS=${RUNS:-1}
for i in $(seq 1 "$RUNS"); do
    EXTRA_PROXY_NAME=moxy-cache \
    EXTRA_PROXY_CMD="$REPO_DIR/moxy -c $REPO_DIR/bench/moxy-cache-bench.lua" \
    PEERS=${PEERS:-varnish} REF_PEER=${REF_PEER:-varnish} IDLE_CONNS=${IDLE_CONNS:-0} \
        "$HARNESS"
done
