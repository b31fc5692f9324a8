#!/bin/sh
# deps.sh -- install the Debian 12 packages moxy needs to build and test.
#
#   tools/deps.sh          build + test dependencies (clang: the fuzz harnesses; wrk: failover under load;
#                          chromium, chromium-driver, python3-selenium: the status page spec;
#                          nghttp2-client, python3-h2, python3-grpcio: the HTTP/2 specs and origins
#                          (python3-h2: also make soak's HTTP/2 clients);
#                          brotli, zstd, python3-brotli, python3-zstandard: the compression specs decode
#                          what moxy sends, their origin codes what it sends;
#                          redis-server: the moxy.redis and fleet specs start their own)
#   tools/deps.sh bench    also the benchmark peers (nginx, its Lua module, wrk) and valgrind (callgrind)
#
# Installs only what is missing, so it is cheap to call before every build.
set -eu

BUILD="gcc make pkg-config libluajit2-5.1-dev luajit2 libevent-dev libssl-dev zlib1g-dev \
libmaxminddb-dev libbrotli-dev libzstd-dev libpcre2-dev libnghttp2-dev libhiredis-dev libcrypt-dev node-llhttp lua-cjson"
TEST="clang libclang-rt-14-dev openssl lua-busted lua-socket lua-posix lua-cjson python3 curl procps wrk mmdb-bin groff-base man-db systemd \
chromium chromium-driver python3-selenium nghttp2-client python3-h2 python3-grpcio brotli zstd python3-brotli python3-zstandard redis-server"
BENCH="nginx libnginx-mod-http-lua wrk util-linux iproute2 nghttp2-client valgrind"

want="$BUILD $TEST"
[ "${1:-}" = bench ] && want="$want $BENCH"

missing=""
for p in $want; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' \
        || missing="$missing $p"
done
[ -z "$missing" ] && exit 0

echo "deps: installing$missing"
SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -q
$SUDO apt-get install -y -q --no-install-recommends $missing
