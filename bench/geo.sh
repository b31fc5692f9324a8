#!/usr/bin/env bash
# bench/geo.sh -- what GeoIP costs: lookups, and the geo routing script per request.
#
#   bench/geo.sh                 the bench's own database (bench/geo-bench.json)
#   GEOIP_DB=GeoLite2-City.mmdb bench/geo.sh   a real one for the lookups (IPS below)
#
# 1. bench/geo-lookup.lua: median time per moxy.geo.get / moxy.geo.lookup call
#    (moxy -t runs it in an init hook; no server).
# 2. bench/callgrind.sh with the "noop" and "geo" variants: CPU instructions per
#    proxied request with an empty hook and with geo_routing's work
#    (bench-geo-hook.lua) on a database that knows 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/.."
MOXY_BIN=${MOXY_BIN:-$PWD/moxy}
dir=$(mktemp -d /tmp/moxy-geo-bench.XXXXXX)
trap 'rm -rf "$dir"' EXIT

luajit geoip/mmdb-build bench/geo-bench.json "$dir/bench.mmdb" >/dev/null
db=${GEOIP_DB:-$dir/bench.mmdb}
ips=${GEOIP_IPS:-"127.0.0.1 81.2.69.142 216.160.83.56 2001:db8::1 ::1 1.1.1.1 8.8.8.8 2001:4860::1"}

echo "== lookups ($db)"
GEOIP_DB=$db GEOIP_IPS=$ips "$MOXY_BIN" -t -c bench/geo-lookup.lua | grep -v "configuration .* ok"

echo "== per request (bench/callgrind.sh, instructions per proxied request)"
MOXY_BIN=$MOXY_BIN MOXY_BENCH_GEOIP=$dir/bench.mmdb VARIANTS="noop geo" bench/callgrind.sh
