#!/usr/bin/env bash
# bench/compress.sh -- response compression: moxy's streaming gzip against
# nginx's gzip module, side by side, plus moxy's brotli and zstd, and moxy's
# cache hits of compressed content.
#
# Three files, generated at start (python, fixed SEED) and served by one
# nginx origin (bench/nginx-origin.conf + a /c/ location: keep-alive, the
# right Content-Type, no compression): a 100 KiB HTML page, a 1 MiB JSON
# document and a 5 MiB JavaScript bundle, realistic text that gzips 3-6x (the
# script prints the ratios).  Both proxies have one worker, pinned to
# PROXY_CPUS, and the same settings: nginx runs bench/nginx-compress.conf
# (gzip_comp_level N, the three types, gzip_min_length 256, gzip_proxied any),
# moxy bench/moxy-compress-bench.lua (compression = { gzip = { level = N } ...}).
# Per run, for each gzip level of LEVELS, both are started fresh and checked:
# for each file, `curl -H 'Accept-Encoding: gzip' | gzip -dc | cmp - file`,
# Content-Encoding: gzip, and the file as it is without Accept-Encoding.  Then
# per file, in alternating order, WARMUP s of unmeasured wrk, then DURATION s
# of `wrk -c CONNS -H 'Accept-Encoding: gzip'`: req/s, and the proxy's CPU time
# (utime + stime of its process tree, /proc) per request and per MiB of
# uncompressed body served.  With the last level up, moxy also serves each file
# with `Accept-Encoding: br` and `zstd` (BR_LEVEL, ZSTD_LEVEL; nginx has no such
# module in Debian 12), checked with brotli -dc / zstd -dc.  Then the cache
# case: moxy with its cache (MOXY_COMPRESS_CACHE=1), every response a hit, gzip
# at CACHE_LEVEL.  tools/compress_report.py prints one table per level, the
# medians of RUNS, with moxy/nginx ratios taken within each run.
#
# Counting: wrk's request count leaves out the responses still in flight when
# it stops (up to CONNS of them, each partly compressed: ~10 % of a 5 MiB case),
# while the CPU time includes their work.  So requests are counted by bytes:
# the bytes wrk read (partial responses included) / the bytes of one whole
# response (head + body on the wire, measured by the check).  wrk's own count
# is in load.tsv; a proxy whose responses under load do not have the checked
# size (compression skipped under load?) is FAILED.
#
# A proxy that does not start, answers wrongly or dies under load is reported
# FAILED with the reason and left out; the rest goes on.  Exit status: 0 when
# everything was measured, 1 when something FAILED (the report is printed), 2
# when the harness cannot run (a missing tool; the origin or nginx does not
# start).  Every step has a time limit; every process started is stopped on
# exit or signal, by PID.
#
# Knobs (environment variables, defaults in brackets):
#   RUNS [5]  DURATION [3] measured s  WARMUP [1] unmeasured s (0 = none)
#   QUICK [0]  1 = RUNS=1 DURATION=2 WARMUP=0: a smoke run of ~1 min (explicit knobs win)
#   CONNS [8]  THREADS [2]  WRK_TIMEOUT [10s]     wrk -c / -t / --timeout
#   LEVELS ["1 6"]  gzip levels, one table each
#   FILES ["html json js"]  any of html (100 KiB), json (1 MiB), js (5 MiB)
#   ENCODINGS ["br zstd"]   moxy-only rows, measured with the last of LEVELS ("" = none)
#   BR_LEVEL [4]  ZSTD_LEVEL [3]   moxy's levels for them (its defaults)
#   BR_WINDOW [18]  ZSTD_WINDOW [19]  and their windows (lgwin, windowLog; its defaults)
#   CACHE [1]  0 = no cache case   CACHE_LEVEL [6] its gzip level
#   COMPRESS_MEMORY [128m]  moxy's compression.memory
#   SEED [20261206]  the generator's seed
#   MOXY_BIN [./moxy]  MOXY_WORKERS [1]
#   MOXY_STANDIN [0]  1 = a second nginx (the same config; proxy_cache for the
#                     cache case) in moxy's column: tests the harness without
#                     moxy and shows the noise floor; its br/zstd rows are SKIPPED
#   PIN [1]  PROXY_CPUS [0]  ORIGIN_CPUS [1]  WRK_CPUS [1]
#   READY_TIMEOUT [15] s  RESULTS_DIR [bench/results/compress-<timestamp>]  KEEP_SCRATCH [0]
#
# Needs nginx (with its gzip module: Debian's has it), wrk, curl, python3,
# gzip, brotli, zstd (the last two for the br/zstd checks), taskset, ss.
# Run as root, it apt-get installs the missing packages.  All on 127.0.0.1.
# shellcheck disable=SC2317  # functions called from traps
set -euo pipefail

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_DIR=$(dirname "$BENCH_DIR")
TOOLS_DIR=$BENCH_DIR/tools

QUICK=${QUICK:-0}
if [[ $QUICK == 1 ]]; then
    RUNS=${RUNS:-1}
    DURATION=${DURATION:-2}
    WARMUP=${WARMUP:-0}
fi
RUNS=${RUNS:-5}
DURATION=${DURATION:-3}
WARMUP=${WARMUP:-1}
CONNS=${CONNS:-8}
THREADS=${THREADS:-2}
WRK_TIMEOUT=${WRK_TIMEOUT:-10s}
LEVELS=${LEVELS:-1 6}
FILES=${FILES:-html json js}
ENCODINGS=${ENCODINGS-br zstd}
BR_LEVEL=${BR_LEVEL:-4}
ZSTD_LEVEL=${ZSTD_LEVEL:-3}
BR_WINDOW=${BR_WINDOW:-18}
ZSTD_WINDOW=${ZSTD_WINDOW:-19}
CACHE=${CACHE:-1}
CACHE_LEVEL=${CACHE_LEVEL:-6}
COMPRESS_MEMORY=${COMPRESS_MEMORY:-128m}
SEED=${SEED:-20261206}
MOXY_BIN=${MOXY_BIN:-$REPO_DIR/moxy}
[[ $MOXY_BIN == /* ]] || MOXY_BIN=$PWD/$MOXY_BIN
MOXY_WORKERS=${MOXY_WORKERS:-1}
MOXY_STANDIN=${MOXY_STANDIN:-0}
PIN=${PIN:-1}
PROXY_CPUS=${PROXY_CPUS:-0}
ORIGIN_CPUS=${ORIGIN_CPUS:-1}
WRK_CPUS=${WRK_CPUS:-1}
READY_TIMEOUT=${READY_TIMEOUT:-15}
KEEP_SCRATCH=${KEEP_SCRATCH:-0}
STAMP=$(date +%Y%m%d-%H%M%S)
RESULTS_DIR=${RESULTS_DIR:-$BENCH_DIR/results/compress-$STAMP}

# The files: key -> name, size, Content-Type
declare -A FILE_OF=([html]=page.html [json]=data.json [js]=bundle.js)
declare -A CTYPE_OF=([html]=text/html [json]=application/json [js]=application/javascript)
declare -A DECODE_OF=([gzip]="gzip -dc" [br]="brotli -dc" [zstd]="zstd -dcq")
declare -A ELEVEL_OF=([br]=$BR_LEVEL [zstd]=$ZSTD_LEVEL)

log() { printf '[%s] %s\n' "$(date +%T)" "$*" >&2; }
die() { log "compress.sh: ERROR: $*"; exit 2; }
for v in RUNS DURATION WARMUP CONNS THREADS BR_LEVEL ZSTD_LEVEL BR_WINDOW ZSTD_WINDOW CACHE_LEVEL SEED READY_TIMEOUT MOXY_WORKERS; do
    [[ ${!v} =~ ^[0-9]+$ ]] || die "$v must be a non-negative integer (got '${!v}')"
done
((RUNS > 0 && DURATION > 0 && CONNS > 0 && THREADS > 0)) || die "RUNS, DURATION, CONNS and THREADS must be > 0"
((THREADS > CONNS)) && THREADS=$CONNS
[[ -n ${LEVELS// /} ]] || die "LEVELS is empty"
for l in $LEVELS $CACHE_LEVEL; do [[ $l =~ ^[1-9]$ ]] || die "gzip levels are 1..9 (got '$l')"; done
[[ -n ${FILES// /} ]] || die "FILES is empty"
for f in $FILES; do [[ -n ${FILE_OF[$f]:-} ]] || die "unknown file '$f' in FILES (want html json js)"; done
for e in $ENCODINGS; do [[ $e == br || $e == zstd ]] || die "unknown encoding '$e' in ENCODINGS (want br zstd)"; done
[[ $CACHE == 0 || $CACHE == 1 ]] || die "CACHE must be 0 or 1"
# shellcheck disable=SC2206
LEVEL_LIST=($LEVELS)
LAST_LEVEL=${LEVEL_LIST[${#LEVEL_LIST[@]} - 1]}

# ------------------------------------------------------------- tools ----
need_pkgs=()
command -v nginx >/dev/null || need_pkgs+=(nginx)
command -v wrk >/dev/null || need_pkgs+=(wrk)
[[ -n $ENCODINGS ]] && ! command -v brotli >/dev/null && need_pkgs+=(brotli)
[[ -n $ENCODINGS ]] && ! command -v zstd >/dev/null && need_pkgs+=(zstd)
if ((${#need_pkgs[@]})); then
    if ((EUID != 0)) || ! command -v apt-get >/dev/null; then
        die "needs ${need_pkgs[*]} (apt-get install -y ${need_pkgs[*]}, as root)"
    fi
    log "installing ${need_pkgs[*]} (apt-get) ..."
    export DEBIAN_FRONTEND=noninteractive
    if ! timeout 300 apt-get install -y -q --no-install-recommends "${need_pkgs[@]}" >/tmp/moxy-compress-apt.log 2>&1; then
        timeout 300 apt-get update -q >>/tmp/moxy-compress-apt.log 2>&1 || true
        timeout 300 apt-get install -y -q --no-install-recommends "${need_pkgs[@]}" >>/tmp/moxy-compress-apt.log 2>&1 ||
            die "apt-get could not install ${need_pkgs[*]} (see /tmp/moxy-compress-apt.log)"
    fi
fi
for t in nginx wrk curl python3 gzip timeout ss ps awk sed cmp; do
    command -v "$t" >/dev/null || die "needs $t (tools/deps.sh bench)"
done
if [[ $MOXY_STANDIN == 1 ]]; then
    MOXY_BIN="(standin: nginx)"
else
    [[ -x $MOXY_BIN ]] || die "no moxy binary at $MOXY_BIN (make -s moxy, MOXY_BIN=..., or MOXY_STANDIN=1)"
fi
# The real interpreter, not a wrapper (pyenv shim), so the PID we track is python.
PYTHON=$(python3 -c 'import sys; print(sys.executable)')
HZ=$(getconf CLK_TCK)
NCPU=$(nproc)
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
        for e in "$SCRATCH"/*/error.log; do # nginx's own logs, with the results
            [[ -s $e && -d $RESULTS_DIR/logs ]] && cat "$e" >>"$RESULTS_DIR/logs/$(basename "$(dirname "$e")")-error.log"
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
# header FILE NAME : the value of the (last) NAME: line of a curl -D dump, lower-cased
header() {
    awk -F': *' -v n="$2" 'tolower($1) == tolower(n) { v = $2 } END { sub(/\r$/, "", v); print tolower(v) }' "$1"
}

# oneline : stdin as one line for a TSV field (no tabs, no newlines), at most 240 characters
oneline() { tr '\t\r\n' '   ' | sed 's/  */ /g; s/ $//' | cut -c1-240; }
# dechunk FILE : the body of a chunked HTTP/1.1 message body (curl --raw), on stdout
dechunk() {
    "$PYTHON" -c '
import sys
d = open(sys.argv[1], "rb").read()
out, i = bytearray(), 0
while True:
    j = d.index(b"\r\n", i)
    n = int(d[i:j].split(b";")[0], 16)
    i = j + 2
    if n == 0:
        break
    out += d[i:i + n]
    if d[i + n:i + n + 2] != b"\r\n":
        sys.exit("no CRLF after a chunk")
    i += n + 2
sys.stdout.buffer.write(out)' "$1"
}
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

# ----------------------------------------------------------- scratch ----
mkdir -p "$RESULTS_DIR/logs" "$RESULTS_DIR/wrk"
RESULTS_DIR=$(cd "$RESULTS_DIR" && pwd)
SCRATCH=$(mktemp -d "${TMPDIR:-/tmp}/moxy-compress-bench.XXXXXX")
chmod 755 "$SCRATCH" # nginx workers run as nobody under root
mkdir -p "$SCRATCH/www/c" "$SCRATCH/origin/tmp" "$SCRATCH/checks"

# ------------------------------------------------------------- files ----
# Deterministic (SEED), realistic text: an HTML page of sections, cards and
# lists (a 2000-word Zipf vocabulary, class names, links, images); a JSON
# array of user records (varied fields, numbers, dates, nested objects); a
# webpack-like JS bundle of modules (varied function bodies over a small
# identifier vocabulary, the usual transpiler idioms).  Each is padded to its
# exact size.  Prints name, size, and zlib's ratios at levels 1 and 6.
log "generating the files (seed $SEED) ..."
timeout 120 "$PYTHON" - "$SCRATCH/www/c" "$SEED" >"$SCRATCH/files.txt" <<'PYEOF' || die "the file generator failed"
import bisect, itertools, json, random, sys, zlib

out, seed = sys.argv[1], int(sys.argv[2])
SIZES = (("page.html", 100 * 1024), ("data.json", 1024 * 1024), ("bundle.js", 5 * 1024 * 1024))
SYL = ("an be ca de el fi ga in jo ka le mi no or pa qu re si te un va we xi yo ze al bo "
       "cu di en fo gi ha is ju ko lu ma ne ol pe ra so ti ur vi wa ex ly st tr pr ch sh th "
       "ing ion er ent ous ate ive ar").split()
COMMON = ("the of and to in is for on that with as by this are from or be at an it was "
          "your all more new can will not our has one you but about have which their").split()
RESERVED = set("in do if for var new try let case else enum this void with break catch class const super "
               "throw while yield delete export import return switch typeof default extends finally package "
               "private continue debugger function arguments interface protected implements instanceof null "
               "true false of".split())


class Zipf:
    """Picks from items, the i-th with weight 1/(i+1)**s (a cumulative table, bisect)."""
    def __init__(self, rng, items, s=1.0):
        self.rng, self.items = rng, items
        self.cum = list(itertools.accumulate(1.0 / (i + 1) ** s for i in range(len(items))))

    def __call__(self, k=None):
        if k is None:
            return self.items[bisect.bisect(self.cum, self.rng.random() * self.cum[-1])]
        return [self() for _ in range(k)]


def vocabulary(rng, n, syl=(1, 4), common=()):
    words = set()
    while len(words) < n:
        words.add("".join(rng.choice(SYL) for _ in range(rng.randint(*syl))))
    words = sorted(words - set(common))
    rng.shuffle(words)
    return list(common) + words


def fit(parts, size, pad_open, pad_close, filler):
    """join parts, then pad with filler words (in a comment or a string) to size bytes exactly"""
    text = "".join(parts)
    room = size - len(text.encode()) - len(pad_open) - len(pad_close)
    if room < 0:
        raise SystemExit("generator: overshoot")
    pad, n = [], 0
    while n < room:
        pad.append(filler())
        n += len(pad[-1]) + 1
    return text + pad_open + " ".join(pad)[:room] + pad_close


def html(rng, size):
    w = Zipf(rng, vocabulary(rng, 2000, common=COMMON), 1.15)
    cls = Zipf(rng, [a + "-" + b for a in vocabulary(rng, 25, (1, 2)) for b in vocabulary(rng, 12, (1, 2))], 1.2)

    def sentence(n):
        s = " ".join(w(n))
        return s[:1].upper() + s[1:] + rng.choice(".....?!,")

    def link():
        return (f'<a class="{cls()}" href="/{"/".join(w(rng.randint(1, 3)))}?id={rng.randint(1, 99999)}">'
                f'{sentence(rng.randint(1, 5))[:-1]}</a>')

    def para():
        bits = []
        for _ in range(rng.randint(1, 5)):
            bits.append(sentence(rng.randint(4, 14)))
            if rng.random() < 0.3:
                bits.append(link())
        return f'<p class="{cls()}">{" ".join(bits)}</p>'

    def card(d):
        img = (f'<a class="card-link" href="/item/{rng.randint(100, 9999)}"><picture><source type="image/webp" '
               f'srcset="/img/{w()}-{rng.randint(10, 99)}.webp"><img class="card-img img-fluid rounded" '
               f'src="/img/{w()}-{rng.randint(10, 99)}.jpg" alt="{sentence(3)[:-1]}" '
               f'width="{rng.choice([120, 240, 320])}" height="{rng.choice([90, 180, 240])}" loading="lazy" '
               f'decoding="async"></picture></a>')
        btn = ('<div class="card-actions d-flex justify-content-between align-items-center">'
               '<button type="button" class="btn btn-sm btn-outline-secondary" aria-label="Save">'
               '<svg class="icon icon-bookmark" width="16" height="16" aria-hidden="true">'
               '<use href="#icon-bookmark"></use></svg> Save</button>'
               f'<span class="text-muted small">{rng.randint(1, 59)} min read</span></div>')
        tags = "".join(f'<li><a href="/tag/{t}">{t}</a></li>' for t in w(rng.randint(1, 4)))
        return (f'{d}<div class="card {cls()}" data-id="{rng.randint(1000, 99999)}">\n'
                f'{d}  <div class="card-media">{img}</div>\n'
                f'{d}  <div class="card-body">\n{d}    <h3 class="card-title">{link()}</h3>\n'
                f'{d}    {para()}\n{d}    {btn}\n'
                f'{d}    <ul class="tags">{tags}</ul>\n'
                f'{d}  </div>\n{d}</div>\n')

    def section():
        items = []
        for _ in range(rng.randint(2, 8)):
            r = rng.random()
            if r < 0.45:
                items.append(card("      "))
            elif r < 0.8:
                items.append(f"      {para()}\n")
            else:
                items.append("      <ul class=\"list\">\n" + "".join(
                    f"        <li class=\"{cls()}\">{link()}</li>\n" for _ in range(rng.randint(2, 7)))
                    + "      </ul>\n")
        return (f'    <section class="{cls()}" id="s{rng.randint(1, 9999)}">\n'
                f'      <h2>{sentence(rng.randint(2, 7))[:-1]}</h2>\n' + "".join(items) + "    </section>\n")

    nav = "".join(f'<li class="nav-item"><a class="nav-link" href="/{w()}">{w().title()}</a></li>'
                  for _ in range(12))
    parts = ["<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
             "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
             f"<title>{sentence(6)[:-1]}</title>\n"
             + "".join(f'<link rel="stylesheet" href="/static/{w()}.{rng.getrandbits(32):08x}.css">\n'
                       for _ in range(4))
             + f'</head>\n<body class="{cls()}">\n  <nav class="navbar"><ul class="nav">{nav}</ul></nav>\n'
             + '  <main>\n']
    tail = "  </main>\n</body>\n</html>\n"
    n = sum(len(p) for p in parts)
    while n < size - 6000:
        parts.append(section())
        n += len(parts[-1])
    return fit(parts, size - len(tail), "<!-- ", " -->\n", w) + tail


def jsondoc(rng, size):
    w = Zipf(rng, vocabulary(rng, 1500), 1.2)
    first = Zipf(rng, vocabulary(rng, 200, (2, 3)), 1.1)
    cities = vocabulary(rng, 80, (2, 3))
    statuses = ["active", "pending", "suspended", "closed", "trial"]
    countries = ["US", "DE", "FR", "GB", "JP", "BR", "IN", "CA", "AU", "NL", "SE", "ES", "IT", "PL"]
    plans = ["free", "basic", "pro", "enterprise"]
    parts, n, i = ["[\n"], 2, 0
    while n < size - 3000:
        i += 1
        uid = 100000 + i
        rec = {
            "type": "user",
            "id": uid,
            "uuid": "%08x-%04x-4%03x-%04x-%012x" % tuple(rng.getrandbits(b) for b in (32, 16, 12, 16, 48)),
            "name": f"{first().title()} {w().title()}",
            "email": f"{first()}.{w()}@{rng.choice(['example.com', 'mail.test', 'corp.example', 'inbox.test'])}",
            "status": rng.choice(statuses),
            "plan": rng.choice(plans),
            "country": rng.choice(countries),
            "score": round(rng.uniform(0, 100), 1),
            "balance": round(rng.lognormvariate(4, 1.5), 2),
            "created_at": f"20{rng.randint(18, 26)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}T"
                          f"{rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}:{rng.randint(0, 59):02d}Z",
            "tags": w(rng.randint(0, 4)),
            "verified": rng.random() < 0.7,
            "address": {"city": rng.choice(cities).title(), "zip": f"{rng.randint(10000, 99999)}",
                        "country": rng.choice(countries)},
            "settings": {"theme": rng.choice(["light", "dark", "system"]), "notifications": rng.random() < 0.5,
                         "language": rng.choice(["en", "de", "fr", "es", "ja"])},
        }
        rec["links"] = {"self": f"/api/v2/users/{uid}", "orders": f"/api/v2/users/{uid}/orders",
                        "avatar": f"https://cdn.example.com/avatars/{uid}.png"}
        if rng.random() < 0.3:
            rec["bio"] = " ".join(w(rng.randint(4, 16)))
        if rng.random() < 0.3:
            rec["orders"] = [{"order_id": rng.randint(10**6, 10**7), "amount": round(rng.uniform(1, 500), 2),
                              "currency": "USD", "items": rng.randint(1, 9)} for _ in range(rng.randint(1, 3))]
        s = json.dumps(rec, separators=(",", ":"))
        parts.append(s + ",\n")
        n += len(s) + 2
    tail = "\"}\n]\n"
    return fit(parts, size - len(tail), "{\"pad\":\"", "", w) + tail


def javascript(rng, size):
    kw = ["e", "t", "n", "r", "i", "o", "a", "s", "u", "c", "l", "f", "d", "p", "h", "m"]
    props = Zipf(rng, ("length value props state data children type key name id push call apply "
                       "prototype default exports options config target current style className "
                       "then catch resolve reject map filter forEach indexOf slice concat join "
                       "createElement appendChild setAttribute addEventListener").split()
                 + vocabulary(rng, 600, (2, 4)), 1.25)
    ident = Zipf(rng, kw + [v for v in vocabulary(rng, 120, (1, 2)) if v not in RESERVED], 1.1)

    def expr(d=0):
        r = rng.random()
        if d > 2 or r < 0.35:
            return rng.choice([ident(), ident(), str(rng.randint(0, 255)), f'"{props()}"', "null", "!0", "!1",
                               f"{ident()}.{props()}", f"{ident()}[{rng.randint(0, 9)}]", "void 0", "this"])
        if r < 0.55:
            op = rng.choice(['+', '-', '*', '===', '!==', '<', '>', '&&', '||', '|', '&'])
            return f"{expr(d + 1)}{op}{expr(d + 1)}"
        if r < 0.85:
            return f"{ident()}.{props()}({','.join(expr(d + 1) for _ in range(rng.randint(0, 3)))})"
        return f"{expr(d + 1)}?{expr(d + 1)}:{expr(d + 1)}"

    idioms = [
        'var {a}=arguments.length>1&&void 0!==arguments[1]?arguments[1]:{{}};',
        'if(!({a} instanceof {b}))throw new TypeError("Cannot call a class as a function");',
        'return {a}&&{a}.__esModule?{a}:{{default:{a}}};',
        '{a}.prototype=Object.create({b}&&{b}.prototype,{{constructor:{{value:{a},writable:!0,configurable:!0}}}});',
        'Object.keys({a}).forEach(function({b}){{{c}[{b}]={a}[{b}]}});',
        'for(var {a}=0;{a}<{b}.length;{a}++){{var {c}={b}[{a}];{c}.enumerable={c}.enumerable||!1,'
        '{c}.configurable=!0,"value"in {c}&&({c}.writable=!0),Object.defineProperty(t,{c}.key,{c})}}',
        'var {a}=(0,{b}.useState)(null),{c}=(0,{b}.useRef)(!1);',
        'return(0,{a}.jsx)("div",{{className:"{p}",children:(0,{a}.jsx)({b},{{}})}});',
        'if("function"!=typeof {a}&&null!=={a})throw new TypeError("Super expression must either be null or a function");',
        '{a}.exports={b};',
        'var {a}=Symbol.iterator in Object({b});',
        'try{{{a}={b}()}}catch({c}){{return void {c}}}',
        'return new Promise(function({a},{b}){{{c}.then({a},{b})}});',
        '"undefined"!=typeof window&&window.document&&window.document.createElement&&({a}=!0);',
        'switch({a}.type){{case "{p}":return {b};case "{q}":return {c};default:return {a}}}',
    ]
    idiom = Zipf(rng, idioms, 1.0)

    def stmt(d=0):
        r = rng.random()
        if r < 0.25:
            a = ident()
            b = ident()
            while b == a:
                b = ident()
            c = ident()
            while c in (a, b):
                c = ident()
            return idiom().format(a=a, b=b, c=c, p=props(), q=props())
        if d < 2 and r < 0.35:
            return f"if({expr()}){{{''.join(stmt(d + 1) for _ in range(rng.randint(1, 3)))}}}"
        if d < 2 and r < 0.4:
            v = rng.choice(kw)
            body = "".join(stmt(d + 1) for _ in range(rng.randint(1, 2)))
            return f"for(var {v}=0;{v}<{ident()}.length;{v}++){{{body}}}"
        if r < 0.6:
            return f"var {ident()}={expr()};"
        if r < 0.8:
            return f"{ident()}.{props()}={expr()};"
        return f"{expr()};"

    def module(i):
        params = ",".join(rng.sample(kw, rng.randint(1, 3)))
        body = "".join(stmt() for _ in range(rng.randint(3, 12)))
        head = rng.choice(['', f'n.r(t);n.d(t,{{{props()}:function(){{return {ident()}}}}});',
                           'Object.defineProperty(t,"__esModule",{value:!0});',
                           f'var {ident()}=n({rng.randint(1, 999)}),{ident()}=n.n({ident()});'])
        return f"{i}:function({params}){{\"use strict\";{head}{body}return {expr()}}},"

    parts = ['/*! bundle.js (generated, seed %d) */\n(self.webpackChunk=self.webpackChunk||[]).push([[%d],{'
             % (seed, seed % 1000)]
    n, i = len(parts[0]), 0
    while n < size - 2000:
        i += rng.randint(1, 40)
        parts.append(module(i))
        n += len(parts[-1])
        if rng.random() < 0.02:
            parts.append("\n")
    tail = "}]);\n"
    return fit(parts, size - len(tail), "/* ", " */", props) + tail


for fname, size in SIZES:
    gen = {"html": html, "json": jsondoc, "js": javascript}[fname.rsplit(".", 1)[1]]
    data = gen(random.Random(f"{seed}:{fname}"), size).encode()
    assert len(data) == size, (fname, len(data))
    with open(f"{out}/{fname}", "wb") as f:
        f.write(data)
    r1 = len(data) / len(zlib.compress(data, 1))
    r6 = len(data) / len(zlib.compress(data, 6))
    print(f"{fname}\t{len(data)}\t{r1:.2f}\t{r6:.2f}")
PYEOF
chmod 755 "$SCRATCH/www" "$SCRATCH/www/c" && chmod 644 "$SCRATCH/www/c/"*
declare -A SIZE_OF=()
printf 'file\tname\tcontent_type\tbytes\tzlib1_ratio\tzlib6_ratio\n' >"$RESULTS_DIR/files.tsv"
for f in $FILES; do
    read -r _ bytes r1 r6 < <(awk -v n="${FILE_OF[$f]}" '$1 == n' "$SCRATCH/files.txt")
    [[ -n ${bytes:-} ]] || die "the generator did not write ${FILE_OF[$f]}"
    SIZE_OF[$f]=$bytes
    printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$f" "${FILE_OF[$f]}" "${CTYPE_OF[$f]}" "$bytes" "$r1" "$r6" >>"$RESULTS_DIR/files.tsv"
    log "  ${FILE_OF[$f]}: $bytes bytes, ${CTYPE_OF[$f]}; gzip ratio (zlib) level 1 = ${r1}x, level 6 = ${r6}x"
    awk -v r="$r6" 'BEGIN { exit !(r >= 2.5 && r <= 10) }' ||
        die "${FILE_OF[$f]} gzips ${r6}x at level 6, outside the realistic 2.5-10x: the generator is broken"
done

# ------------------------------------------------------------- ports ----
read -r ORIGIN_PORT NGINX_PORT MOXY_PORT CACHE_PORT < <("$PYTHON" "$TOOLS_DIR/free_ports.py" 4)
[[ -n ${CACHE_PORT:-} ]] || die "free_ports.py gave too few ports"
declare -A PORT_OF=([nginx]=$NGINX_PORT [moxy]=$MOXY_PORT [moxy-cache]=$CACHE_PORT) PID_OF=() FAIL_OF=() KIDS_OF=()

# ------------------------------------------------------------- origin ----
render "$BENCH_DIR/nginx-origin.conf" "$SCRATCH/origin/nginx.conf" PORT="$ORIGIN_PORT" DIR="$SCRATCH/origin" \
    WWW="$SCRATCH/www" NOFILE="$NOFILE" WORKER_CONNS="$NOFILE"
# + /c/: the three files, with their types, uncompressed (gzip is off by default)
sed -i "s|^\( *\)location = /large {|\1location /c/ {\n\1    alias $SCRATCH/www/c/;\n\1    types { text/html html; application/json json; application/javascript js; }\n\1    gzip off;\n\1}\n\n&|" \
    "$SCRATCH/origin/nginx.conf"
grep -q 'location /c/' "$SCRATCH/origin/nginx.conf" || die "could not add /c/ to the origin's nginx.conf"
start_bg "$RESULTS_DIR/logs/origin.log" "${PIN_ORIGIN[@]}" nginx -p "$SCRATCH/origin" \
    -e "$SCRATCH/origin/error.log" -c "$SCRATCH/origin/nginx.conf" -g 'daemon off;'
ORIGIN_PID=$BG_PID
for ((i = 0; i < READY_TIMEOUT * 10; i++)); do
    [[ $(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "http://127.0.0.1:$ORIGIN_PORT/small" || true) == 200 ]] && break
    kill -0 "$ORIGIN_PID" 2>/dev/null || die "the origin exited: $(tail -n 3 "$SCRATCH/origin/error.log" 2>/dev/null)"
    sleep 0.1
done
for f in $FILES; do
    d=$SCRATCH/checks/origin-$f
    code=$(curl -s --max-time 10 -H 'Accept-Encoding: gzip, br, zstd' -D "$d.h" -o "$d.b" -w '%{http_code}' \
        "http://127.0.0.1:$ORIGIN_PORT/c/${FILE_OF[$f]}" || true)
    [[ $code == 200 ]] || die "the origin answers /c/${FILE_OF[$f]} with '$code'"
    cmp -s "$d.b" "$SCRATCH/www/c/${FILE_OF[$f]}" || die "the origin does not serve /c/${FILE_OF[$f]} as it is"
    [[ -z $(header "$d.h" content-encoding) ]] || die "the origin compresses /c/${FILE_OF[$f]}"
    [[ $(header "$d.h" content-type) == "${CTYPE_OF[$f]}"* ]] ||
        die "the origin serves /c/${FILE_OF[$f]} as '$(header "$d.h" content-type)', want ${CTYPE_OF[$f]}"
done

# ------------------------------------------------------------ proxies ----
# start_proxy NAME LEVEL LOG : NAME (nginx, moxy, moxy-cache) fresh, gzip at
# LEVEL.  Returns 0 when it answers; else 1 with FAIL_OF[NAME] set.
start_proxy() {
    local name=$1 level=$2 logf=$3 d=$SCRATCH/$1 port=${PORT_OF[$1]} i code=000 cache="# " out
    rm -rf "$d"
    mkdir -p "$d/tmp"
    PID_OF[$name]="" FAIL_OF[$name]="" KIDS_OF[$name]=""
    if [[ -n $(ss -Htln "( sport = :$port )" 2>/dev/null) ]]; then
        FAIL_OF[$name]="port $port is still in use (a process left over from the last start?)"
        log "$name FAILED: ${FAIL_OF[$name]}"
        return 1
    fi
    if [[ $name == nginx || $MOXY_STANDIN == 1 ]]; then
        [[ $name == moxy-cache ]] && cache=""
        render "$BENCH_DIR/nginx-compress.conf" "$d/nginx.conf" PORT="$port" DIR="$d" NOFILE="$NOFILE" \
            WORKER_CONNS="$NOFILE" ORIGIN_PORT="$ORIGIN_PORT" EDGE_NAME="${name/moxy/standin}" \
            GZIP_LEVEL="$level" CACHE="$cache"
        start_bg "$logf" "${PIN_PROXY[@]}" nginx -p "$d" -e "$d/error.log" -c "$d/nginx.conf" -g 'daemon off;'
    else
        local mc=0
        [[ $name == moxy-cache ]] && mc=1
        local envs=(LISTEN_PORT="$port" ORIGIN_PORT="$ORIGIN_PORT" MOXY_WORKERS="$MOXY_WORKERS"
            GZIP_LEVEL="$level" BR_LEVEL="$BR_LEVEL" ZSTD_LEVEL="$ZSTD_LEVEL" BR_WINDOW="$BR_WINDOW"
            ZSTD_WINDOW="$ZSTD_WINDOW" COMPRESS_MEMORY="$COMPRESS_MEMORY"
            MOXY_COMPRESS_CACHE="$mc")
        if ! out=$(env "${envs[@]}" timeout 30 "$MOXY_BIN" -t -c "$BENCH_DIR/moxy-compress-bench.lua" 2>&1); then
            FAIL_OF[$name]="configuration check (moxy -t) failed: $(grep -v '^[[:space:]]*$' <<<"$out" | head -n 1 | oneline)"
            log "$name FAILED: ${FAIL_OF[$name]}"
            return 1
        fi
        start_bg "$logf" env "${envs[@]}" "${PIN_PROXY[@]}" "$MOXY_BIN" -c "$BENCH_DIR/moxy-compress-bench.lua"
    fi
    PID_OF[$name]=$BG_PID
    for ((i = 0; i < READY_TIMEOUT * 10; i++)); do
        if ! kill -0 "$BG_PID" 2>/dev/null; then
            FAIL_OF[$name]="exited at start-up: $(grep -hv '^[[:space:]]*$' "$logf" "$d/error.log" 2>/dev/null |
                tail -n 1 | oneline)"
            break
        fi
        code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "http://127.0.0.1:$port/small" || true)
        [[ $code == 200 ]] && break
        sleep 0.1
    done
    if [[ -z ${FAIL_OF[$name]} && $code != 200 ]]; then
        FAIL_OF[$name]="no 200 on GET http://127.0.0.1:$port/small within ${READY_TIMEOUT}s (last: $code)"
    fi
    local p
    for p in $(tree_pids "$BG_PID"); do # nginx's worker (and cache processes), tracked too
        [[ $p == "$BG_PID" ]] && continue
        KIDS_OF[$name]+=" $p:$(proc_start "$p" || true)"
        STARTED+=("$p:$(proc_start "$p" || true)")
    done
    if [[ -n ${FAIL_OF[$name]} ]]; then
        log "$name FAILED: ${FAIL_OF[$name]}"
        stop_proxy "$name"
        return 1
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

# check_identity RUN PHASE NAME FILE : without Accept-Encoding, the file as it
# is.  0 = ok; 1 = FAILED (CHECK_WHY says why).
check_identity() {
    local run=$1 phase=$2 name=$3 f=$4 d code ce url
    d=$SCRATCH/checks/$name-$f-identity
    url="http://127.0.0.1:${PORT_OF[$name]}/c/${FILE_OF[$f]}"
    CHECK_WHY=""
    code=$(curl -s --max-time 30 -D "$d.h" -o "$d.b" -w '%{http_code}' "$url" || true)
    ce=$(header "$d.h" content-encoding)
    if [[ $code != 200 ]]; then
        CHECK_WHY="GET without Accept-Encoding: status '$code'"
    elif [[ -n $ce && $ce != identity ]]; then
        CHECK_WHY="GET without Accept-Encoding: Content-Encoding: $ce"
    elif ! cmp -s "$d.b" "$SCRATCH/www/c/${FILE_OF[$f]}"; then
        CHECK_WHY="GET without Accept-Encoding: not the file ($(wc -c <"$d.b") bytes)"
    fi
    if [[ -n $CHECK_WHY ]]; then
        CHECK_WHY=$(oneline <<<"$CHECK_WHY")
        printf '%s\t%s\t%s\t%s\t%s\tFAILED\t%s\n' "$run" "$phase" "$name" "$f" identity "$CHECK_WHY" >>"$CHECKS"
        return 1
    fi
    printf '%s\t%s\t%s\t%s\t%s\tok\t\n' "$run" "$phase" "$name" "$f" identity >>"$CHECKS"
}

# check_enc RUN PHASE NAME FILE ENC : with Accept-Encoding: ENC, a 200 with
# Content-Encoding: ENC whose body decodes to the file.  Sets WIRE (body bytes)
# and RESP (head + body bytes as wrk reads them: chunked framing included),
# CHECK_NOTE (Vary, cache status).  0 = ok; 1 = FAILED (CHECK_WHY).
check_enc() {
    local run=$1 phase=$2 name=$3 f=$4 enc=$5 d code ce url out cs vary
    d=$SCRATCH/checks/$name-$f-$enc
    url="http://127.0.0.1:${PORT_OF[$name]}/c/${FILE_OF[$f]}"
    CHECK_WHY="" CHECK_NOTE="" WIRE=0 RESP=0
    # one request, as it came (--raw: chunked framing kept), so that the body
    # and the bytes wrk reads per response are of the same response (a
    # streaming compressor's output size varies a little between requests)
    out=$(curl -s --raw --max-time 30 -H "Accept-Encoding: $enc" -D "$d.h" -o "$d.raw" \
        -w '%{http_code} %{size_header}' "$url" || true)
    code=${out% *}
    ce=$(header "$d.h" content-encoding)
    if [[ $code != 200 ]]; then
        CHECK_WHY="GET with Accept-Encoding: $enc: status '$code'"
    elif [[ $(header "$d.h" transfer-encoding) == *chunked* ]] && ! dechunk "$d.raw" >"$d.b" 2>"$d.err"; then
        CHECK_WHY="GET with Accept-Encoding: $enc: a malformed chunked body ($(tail -n 1 "$d.err" | cut -c1-120))"
    elif [[ $(header "$d.h" transfer-encoding) != *chunked* ]] && ! cp "$d.raw" "$d.b"; then
        CHECK_WHY="cp failed"
    elif [[ $ce != "$enc" ]]; then
        CHECK_WHY="GET with Accept-Encoding: $enc: Content-Encoding '${ce:-<none>}' ($(wc -c <"$d.b") bytes)"
    elif ! ${DECODE_OF[$enc]} <"$d.b" 2>"$d.err" | cmp -s - "$SCRATCH/www/c/${FILE_OF[$f]}"; then
        CHECK_WHY="GET with Accept-Encoding: $enc: the body does not decode to the file ($(wc -c <"$d.b") bytes; $(head -c 120 "$d.err" | tr '\n' ' '))"
    else
        WIRE=$(wc -c <"$d.b")
        RESP=$((${out#* } + $(wc -c <"$d.raw")))
    fi
    if [[ -n $CHECK_WHY ]]; then
        CHECK_WHY=$(oneline <<<"$CHECK_WHY")
        printf '%s\t%s\t%s\t%s\t%s\tFAILED\t%s\n' "$run" "$phase" "$name" "$f" "$enc" "$CHECK_WHY" >>"$CHECKS"
        return 1
    fi
    vary=$(header "$d.h" vary)
    [[ $vary == *accept-encoding* ]] || CHECK_NOTE="no Vary: Accept-Encoding"
    if [[ $name == moxy-cache ]]; then
        cs=$(header "$d.h" cache-status)
        [[ -n $cs ]] || cs=$(header "$d.h" x-cache-status)
        [[ $cs == *hit* ]] || CHECK_NOTE+="${CHECK_NOTE:+; }NOT A CACHE HIT (Cache-Status: '${cs:-<none>}')"
    fi
    printf '%s\t%s\t%s\t%s\t%s\t%s\twire %s B, response %s B%s\n' "$run" "$phase" "$name" "$f" "$enc" \
        "$([[ -z $CHECK_NOTE ]] && echo ok || echo WARNING)" "$WIRE" "$RESP" "${CHECK_NOTE:+; $CHECK_NOTE}" >>"$CHECKS"
    [[ -z $CHECK_NOTE ]] || WARNINGS+=("run $run $phase $name ${FILE_OF[$f]} $enc: $CHECK_NOTE")
    return 0
}

# run_wrk PORT PATH ENC SECONDS OUT : one time-bounded wrk run
run_wrk() {
    bounded "$5" timeout -k 5 $(($4 + 30)) "${PIN_WRK[@]}" wrk -t"$THREADS" -c"$CONNS" -d"$4s" \
        --timeout "$WRK_TIMEOUT" -H "Accept-Encoding: $3" "http://127.0.0.1:$1$2" || true
}

# parse_wrk FILE : "requests runtime_s bytes rps non2xx socket_errors"
parse_wrk() {
    awk '
        function secs(v) {
            if (v ~ /us$/) return v / 1e6
            if (v ~ /ms$/) return v / 1e3
            if (v ~ /m$/)  return v * 60
            if (v ~ /h$/)  return v * 3600
            return v + 0
        }
        function bytes(v,   m) {
            sub(/B$/, "", v); m = 1
            if (v ~ /K$/) m = 1024; else if (v ~ /M$/) m = 1048576
            else if (v ~ /G$/) m = 1073741824; else if (v ~ /T$/) m = 1099511627776
            return v * m
        }
        / requests in / { reqs = $1; t = $4; sub(/,$/, "", t); rt = secs(t); rb = bytes($5) }
        /^Requests\/sec:/ { rps = $2 }
        /Socket errors:/ { gsub(",", ""); sock += $4 + $6 + $8 + $10 }
        /Non-2xx or 3xx responses:/ { bad += $NF }
        END { printf "%d %.3f %.0f %.2f %d %d\n", reqs, rt, rb, rps, bad, sock }' "$1"
}

# measure RUN PHASE NAME FILE ENC LEVEL : warm-up, then one measured wrk run;
# a row in load.tsv (RESP_OF / WIRE_OF from the check)
measure() {
    local run=$1 phase=$2 name=$3 f=$4 enc=$5 level=$6 pid=${PID_OF[$3]} port=${PORT_OF[$3]}
    local out path t0 t1 w0 w1 cs0 cs1 busy other cpu_tail reqs rt rb rps bad sock status=ok note="" resp wire row
    path="/c/${FILE_OF[$f]}"
    resp=${RESP_OF[$name,$f,$enc]} wire=${WIRE_OF[$name,$f,$enc]}
    out=$RESULTS_DIR/wrk/run$run-$phase-$name-$f-$enc.txt
    ((WARMUP > 0)) && run_wrk "$port" "$path" "$enc" "$WARMUP" "${out%.txt}.warmup.txt"
    # The window: from an idle proxy (the warm-up's abandoned responses done)
    # to wrk's exit.  What the proxy does after that, for the responses wrk
    # abandoned, is measured apart (cpu_after_wrk_s), not charged.
    ((WARMUP > 0)) && wait_idle "$pid"
    t0=$(cpu_ticks "$pid") cs0=$(cpu_snapshot) w0=$(date +%s.%N)
    run_wrk "$port" "$path" "$enc" "$DURATION" "$out"
    t1=$(cpu_ticks "$pid") cs1=$(cpu_snapshot) w1=$(date +%s.%N)
    wait_idle "$pid"
    cpu_tail=$(awk -v t=$(($(cpu_ticks "$pid") - t1)) -v hz="$HZ" 'BEGIN { printf "%.2f", t / hz }')
    busy=$(cpu_busy "$cs0" "$cs1")
    # busy time on the proxy's core that the proxy did not account for (other
    # processes, softirq): a noise indicator (pinned, one core only)
    other=""
    if [[ $PIN == 1 && $PROXY_CPUS =~ ^[0-9]+$ ]]; then
        other=$(awk -v c="$busy" -v k="cpu$PROXY_CPUS" -v t=$((t1 - t0)) -v hz="$HZ" -v w0="$w0" -v w1="$w1" 'BEGIN {
            n = split(c, a, ","); for (i = 1; i <= n; i++) { split(a[i], kv, "="); if (kv[1] == k) b = kv[2] }
            el = w1 - w0; p = (el > 0 ? 100 * t / hz / el : 0); v = b - p; printf "%.0f", (v < 0 ? 0 : v) }')
    fi
    read -r reqs rt rb rps bad sock <<<"$(parse_wrk "$out")"
    if ! kill -0 "$pid" 2>/dev/null; then
        status=FAILED note="died under load (${FILE_OF[$f]}, $enc); log: logs/$name.log"
        FAIL_OF[$name]=$note
        stop_proxy "$name"
    elif [[ ${rb:-0} == 0 ]]; then
        status=FAILED note="wrk: no bytes read ($(grep -m1 -iE 'error|unable' "$out" | cut -c1-120 || true))"
    else
        ((reqs > 0)) || note="no response completed in ${DURATION}s (wrk: 0 requests; counted by bytes)"
        ((bad + sock > 0)) && note+="${note:+; }errors: $bad non-2xx, $sock socket errors"
    fi
    # bytes read against whole responses: wrk's count is reqs (+ up to CONNS partial ones)
    if [[ $status == ok ]] && ((reqs > 0)) && ! awk -v b="$rb" -v n="$reqs" -v c="$CONNS" -v r="$resp" \
        'BEGIN { exit !(b >= 0.97 * n * r && b <= 1.03 * (n + c) * r) }'; then
        local avg
        avg=$(awk -v b="$rb" -v n="$reqs" 'BEGIN { printf "%.0f", b / n }')
        if awk -v a="$avg" -v r="$resp" 'BEGIN { exit !(a > 1.5 * r) }'; then
            status=FAILED
            note="under load the responses averaged $avg B against $resp B checked: not all compressed"
        else
            note+="${note:+; }responses averaged $avg B under load, $resp B checked"
        fi
    fi
    row=$(awk -v t=$((t1 - t0)) -v hz="$HZ" -v rb="$rb" -v resp="$resp" -v rt="$rt" -v size="${SIZE_OF[$f]}" \
        -v w0="$w0" -v w1="$w1" 'BEGIN {
        cpu = t / hz; n = (resp > 0 ? rb / resp : 0); el = w1 - w0
        printf "%.2f\t%.3f\t%.2f\t%.1f\t%.1f\t%.3f", (rt > 0 ? n / rt : 0), n, cpu, (el > 0 ? 100 * cpu / el : 0),
            (n > 0 ? 1e6 * cpu / n : 0), (n > 0 ? 1e3 * cpu / (n * size / 1048576) : 0) }')
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$run" "$phase" "$f" "$name" \
        "$enc" "$level" "$status" "$row" "$rps" "$reqs" "$rt" "$rb" $((t1 - t0)) "${SIZE_OF[$f]}" "$wire" "$resp" \
        "$busy" "$other" "$cpu_tail" "$(oneline <<<"$note")" >>"$LOAD_TSV"
    if [[ $status == ok ]]; then
        log "$name ${FILE_OF[$f]} $enc-$level: $(cut -f1 <<<"$row") req/s, CPU $(cut -f5 <<<"$row") us/req," \
            "$(cut -f6 <<<"$row") ms/MiB ($(cut -f4 <<<"$row")% of a core); wire $wire B; cores busy % $busy${other:+, $other on the proxy core outside it}; CPU after wrk ${cpu_tail}s${note:+ ($note)}"
    else
        log "$name ${FILE_OF[$f]} $enc-$level: FAILED: $note"
        printf '%s\t%s\t%s\t%s\t%s\tFAILED\t%s\n' "$run" "$phase" "$name" "$f" "$enc" "$(oneline <<<"$note")" >>"$CHECKS"
    fi
}

# fail_row RUN PHASE NAME FILE ENC LEVEL STATUS WHY : a row without numbers
fail_row() {
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t\t\t\t\t\t\t\t\t\t\t\t%s\t\t\t\t\t\t%s\n' "$1" "$2" "$4" "$3" "$5" "$6" "$7" \
        "${SIZE_OF[$4]}" "$(oneline <<<"$8")" >>"$LOAD_TSV"
}

# ---------------------------------------------------------------- meta ----
WARNINGS=()
SUBJECT_LABEL=moxy
[[ $MOXY_STANDIN == 1 ]] && SUBJECT_LABEL=standin
{
    echo "date: $(date -Is)"
    echo "host: $(uname -sr), $NCPU CPUs; loadavg at start: $(cat /proc/loadavg)"
    echo "versions: $(nginx -v 2>&1) | $(wrk -v 2>&1 | head -n 1 | cut -d' ' -f1-2) | zlib $("$PYTHON" -c 'import zlib; print(zlib.ZLIB_RUNTIME_VERSION)')"
    if [[ $MOXY_STANDIN == 1 ]]; then
        echo "moxy: MOXY_STANDIN=1, a second nginx in moxy's column (proxy_cache in the cache case)"
    else
        echo "moxy: $MOXY_BIN sha256 $(sha256sum "$MOXY_BIN" | cut -c1-16) built $(date -r "$MOXY_BIN" -Is)"
        echo "moxy -v: $(timeout 5 "$MOXY_BIN" -v 2>&1 | tr '\n' ' ' | cut -c1-300)"
    fi
    echo "git $(git -C "$REPO_DIR" rev-parse --short HEAD 2>/dev/null || echo '?')" \
        "($(git -C "$REPO_DIR" status --porcelain -- core lua 2>/dev/null | wc -l) changed files in core/ lua/)"
    echo "subject_label: $SUBJECT_LABEL"
    echo "settings: RUNS=$RUNS DURATION=$DURATION WARMUP=$WARMUP CONNS=$CONNS THREADS=$THREADS LEVELS='$LEVELS'" \
        "FILES='$FILES' ENCODINGS='$ENCODINGS' BR_LEVEL=$BR_LEVEL ZSTD_LEVEL=$ZSTD_LEVEL BR_WINDOW=$BR_WINDOW" \
        "ZSTD_WINDOW=$ZSTD_WINDOW CACHE=$CACHE" \
        "CACHE_LEVEL=$CACHE_LEVEL COMPRESS_MEMORY=$COMPRESS_MEMORY SEED=$SEED MOXY_WORKERS=$MOXY_WORKERS"
    if [[ $PIN == 1 ]]; then
        echo "pinning: proxies=cpu$PROXY_CPUS origin=cpu$ORIGIN_CPUS wrk=cpu$WRK_CPUS"
    else
        echo "pinning: none"
    fi
    echo "ports: origin $ORIGIN_PORT, nginx $NGINX_PORT, moxy $MOXY_PORT, moxy-cache $CACHE_PORT"
} >"$RESULTS_DIR/meta.txt"
log "results in $RESULTS_DIR"

LOAD_TSV=$RESULTS_DIR/load.tsv CHECKS=$RESULTS_DIR/checks.tsv
printf 'run\tphase\tfile\tproxy\tencoding\tlevel\tstatus\trps\tresponses\tcpu_s\tcpu_pct\tus_per_req\tms_per_mib\twrk_rps\twrk_requests\twrk_runtime_s\twrk_bytes\tcpu_ticks\tfile_bytes\twire_bytes\tresponse_bytes\tcores_busy_pct\tproxy_core_other_pct\tcpu_after_wrk_s\tnote\n' >"$LOAD_TSV"
printf 'run\tphase\tproxy\tfile\tencoding\tstatus\tdetail\n' >"$CHECKS"
declare -A RESP_OF=() WIRE_OF=() OK_OF=()

# phase_cases RUN PHASE LEVEL NAMES... : check, then measure, each file with
# gzip on each of NAMES (up), in alternating order; then ENCODINGS on moxy
# when LEVEL is the last of LEVELS.
phase_cases() {
    local run=$1 phase=$2 level=$3 name f enc i=0 ord
    shift 3
    local names=("$@")
    # the checks, before any load
    for name in "${names[@]}"; do
        for f in $FILES; do
            OK_OF[$name,$f]=0
            [[ -n ${PID_OF[$name]:-} ]] || continue
            if [[ $name == moxy-cache ]]; then # the first request stores, the next ones are hits
                curl -s --max-time 30 -H 'Accept-Encoding: gzip' -o /dev/null "http://127.0.0.1:${PORT_OF[$name]}/c/${FILE_OF[$f]}" || true
                sleep 0.1
            fi
            if ! check_identity "$run" "$phase" "$name" "$f"; then
                log "$name ${FILE_OF[$f]}: FAILED: $CHECK_WHY"
                continue
            fi
            if check_enc "$run" "$phase" "$name" "$f" gzip; then
                OK_OF[$name,$f]=1 RESP_OF[$name,$f,gzip]=$RESP WIRE_OF[$name,$f,gzip]=$WIRE
                log "$name ${FILE_OF[$f]} gzip-$level: ok, $WIRE B on the wire" \
                    "($(awk -v a="${SIZE_OF[$f]}" -v b="$WIRE" 'BEGIN { printf "%.2f", a / b }')x)${CHECK_NOTE:+; $CHECK_NOTE}"
            else
                log "$name ${FILE_OF[$f]} gzip-$level: FAILED: $CHECK_WHY"
            fi
        done
    done
    for f in $FILES; do
        ord=("${names[@]}")
        if ((${#names[@]} == 2 && (run + i) % 2 == 0)); then ord=("${names[1]}" "${names[0]}"); fi
        i=$((i + 1))
        for name in "${ord[@]}"; do
            if [[ -z ${PID_OF[$name]:-} ]]; then
                fail_row "$run" "$phase" "$name" "$f" gzip "$level" FAILED "${FAIL_OF[$name]:-not running}"
            elif [[ ${OK_OF[$name,$f]} != 1 ]]; then
                fail_row "$run" "$phase" "$name" "$f" gzip "$level" FAILED "check failed: see checks.tsv"
            else
                measure "$run" "$phase" "$name" "$f" gzip "$level"
            fi
        done
    done
    # brotli and zstd: moxy only, with the last level's moxy
    [[ $phase == gzip-$LAST_LEVEL && -n $ENCODINGS ]] || return 0
    for f in $FILES; do
        for enc in $ENCODINGS; do
            if [[ $MOXY_STANDIN == 1 ]]; then
                fail_row "$run" "$enc" moxy "$f" "$enc" "${ELEVEL_OF[$enc]}" SKIPPED "standin: nginx has no $enc"
                continue
            fi
            if [[ -z ${PID_OF[moxy]:-} ]]; then
                fail_row "$run" "$enc" moxy "$f" "$enc" "${ELEVEL_OF[$enc]}" FAILED "${FAIL_OF[moxy]:-not running}"
                continue
            fi
            if ! check_enc "$run" "$enc" moxy "$f" "$enc"; then
                log "moxy ${FILE_OF[$f]} $enc: FAILED: $CHECK_WHY"
                fail_row "$run" "$enc" moxy "$f" "$enc" "${ELEVEL_OF[$enc]}" FAILED "$CHECK_WHY"
                continue
            fi
            RESP_OF[moxy,$f,$enc]=$RESP WIRE_OF[moxy,$f,$enc]=$WIRE
            measure "$run" "$enc" moxy "$f" "$enc" "${ELEVEL_OF[$enc]}"
        done
    done
}

# ---------------------------------------------------------------- runs ----
for ((run = 1; run <= RUNS; run++)); do
    for level in $LEVELS; do
        order=(nginx moxy)
        ((run % 2 == 0)) && order=(moxy nginx)
        log "=== run $run/$RUNS: gzip level $level ==="
        up=()
        for name in "${order[@]}"; do
            if start_proxy "$name" "$level" "$RESULTS_DIR/logs/$name.log"; then
                up+=("$name")
            else
                [[ $name == nginx ]] && die "the reference (nginx) did not start: ${FAIL_OF[nginx]}"
                printf '%s\t%s\t%s\t-\t-\tFAILED\t%s\n' "$run" "gzip-$level" "$name" "${FAIL_OF[$name]}" >>"$CHECKS"
            fi
        done
        phase_cases "$run" "gzip-$level" "$level" "${order[@]}"
        for name in "${order[@]}"; do stop_proxy "$name"; done
    done
    if [[ $CACHE == 1 ]]; then
        log "=== run $run/$RUNS: cache hits, gzip level $CACHE_LEVEL ==="
        if ! start_proxy moxy-cache "$CACHE_LEVEL" "$RESULTS_DIR/logs/moxy-cache.log"; then
            printf '%s\t%s\t%s\t-\t-\tFAILED\t%s\n' "$run" cache moxy-cache "${FAIL_OF[moxy-cache]}" >>"$CHECKS"
        fi
        phase_cases "$run" cache "$CACHE_LEVEL" moxy-cache
        stop_proxy moxy-cache
    fi
done
stop_tree "$ORIGIN_PID"

# -------------------------------------------------------------- report ----
"$PYTHON" "$TOOLS_DIR/compress_report.py" "$RESULTS_DIR" | tee "$RESULTS_DIR/report.txt"
for w in "${WARNINGS[@]}"; do echo "  WARNING: $w"; done | sort -u | tee -a "$RESULTS_DIR/report.txt"
echo "raw results: $RESULTS_DIR (load.tsv, checks.tsv, files.tsv, wrk/, logs/)" | tee -a "$RESULTS_DIR/report.txt"
awk -F'\t' 'NR > 1 && $6 == "FAILED"' "$CHECKS" | grep -q . && exit 1
awk -F'\t' 'NR > 1 && $7 == "FAILED"' "$LOAD_TSV" | grep -q . && exit 1
exit 0
