#!/usr/bin/python3
"""reloads.py -- moxy reloaded (and upgraded) N times under client load: nothing dropped.

    /usr/bin/python3 tools/reloads.py [--reloads N] [--upgrade [M]] [--moxy PATH]

    RELOADS=1000 /usr/bin/python3 tools/reloads.py          1000 reloads (the default)
    /usr/bin/python3 tools/reloads.py --upgrade             3 binary upgrades, no reload
    /usr/bin/python3 tools/reloads.py --reloads 60 --upgrade 2      both, in that order

Starts, on loopback, an origin (spec/support/origin.py) and one moxy (2 workers; a plain
HTTP/1.1 listener, a TLS listener speaking HTTP/1.1 and HTTP/2 by ALPN, a cleartext
HTTP/2 listener (prior knowledge), a 16 MiB cache, a Lua script, the admin listener with a
token, a PID file), then runs clients that never pause:

  h1ka    HTTP/1.1 keep-alive: GET (cache hits, misses, answers from Lua) and POST (x2)
  h1new   HTTP/1.1, a new connection for every request, GET and POST
  tlska   HTTP/1.1 over TLS, keep-alive, GET and POST
  tlsnew  HTTP/1.1 over TLS, a full handshake for every request
  h2tls   HTTP/2 over TLS, 4 streams at a time (GET and POST) per connection
  h2c     HTTP/2 cleartext (prior knowledge), the same
  h1slow  HTTP/1.1 keep-alive, GET and POST the origin holds 0.3 s: in flight across
          several reloads (x2)
  h2slow  HTTP/2 over TLS, 4 such streams at a time

while it performs N reloads, alternately SIGHUP and POST /reload on the admin listener.
Each reload writes a new script (its version number in every answer, X-Reload-Version)
and a new configuration (naming that script, its version in a comment, timeouts.drain
30 or 31 s in turn), so each one is a real new generation; the next starts only when moxy_generation has moved and
moxy_reloads_total{result="ok"} counted it (the load goes on meanwhile).  With --upgrade
it then performs M binary upgrades (SIGUSR2, docs/operations.md "Binary upgrades"): the
new PID in the PID file, /status answered by it, the old process exited 0.

A request fails when it gets anything but the expected answer: another status, a reset,
a closed connection, a timeout (60 s), a body that is not what was sent (POST bodies are
checked by SHA-256 on the origin), a request whose on_request and on_response ran in two
generations (the version the origin saw differs from the one in the answer), or an answer
from a generation older than the last completed reload when the request started.  Nothing
is retried, except HTTP/2 streams that a graceful GOAWAY declared unprocessed (RFC 9113
6.8: a client may send them again); they are counted and reported.

Checks at the end (exit 0 when all pass):
  - zero failed requests, of every kind, idempotent and POST alike;
  - moxy_reloads_total{result="ok"} went up by exactly N, {result="failed"} by 0;
  - fds of moxy (every process of the tree) after a settle <= before + FD_SLACK (4);
  - RSS (summed over moxy's processes), sampled every RSS_EVERY (50) reloads: the last
    sample <= the first + max(RSS_SLACK_MIB (16), RSS_SLACK_PCT (20) % of it).  The first
    sample is taken after RSS_EVERY reloads under load (warm-up: cache filled, every
    worker's allocator arenas grown, the Lua VMs' code traced), so the bound measures
    growth per reload and not start-up.  16 MiB over 950 reloads allows 17 KiB per reload:
    a leaked generation (two Lua VMs, one per worker, with moxy's modules and the script:
    hundreds of KiB) per reload is far above it; what the slack covers is the old
    generations still draining at the sample (a request in flight holds its own, 0.3 s
    of the slow clients' spans some 6 reloads) and allocator noise.  A short run
    (--reloads 60, RSS_EVERY=10) catches only a leak of about 300 KiB per reload;
  - RSS at the end (idle) <= RSS at the start (idle, after the warm-up) + the cache's
    16 MiB + the same slack;
  - upgrades: every one done (the new PID in the PID file, running the same binary,
    answering /status; the old process exited 0); the fd and end-RSS checks above then
    compare the last process with the first.

Knobs (environment): RELOADS (1000), RATE (requests/s per fast client at most, 50),
RELOAD_GAP (s between a reload's completion and the next, 0.03: each generation serves
some 20 requests), RSS_EVERY (50), RSS_SLACK_MIB (16), RSS_SLACK_PCT (20), FD_SLACK (4),
CLIENTS (another mix: kind:count,..., e.g. h1ka:4,h2tls:1),
OUT (results directory, default /tmp/moxy-reloads-DATE), MOXY_BIN (default ./moxy).
Prints a summary and writes summary.txt and summary.json to OUT; the last line is
"reloads: PASS" or "reloads: FAIL", the exit status 0 or 1.
"""

import argparse
import collections
import ctypes
import hashlib
import http.client
import json
import os
import random
import re
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.request

import h2.config
import h2.connection
import h2.events
import h2.exceptions

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def env_num(name, default):
    v = os.environ.get(name, "")
    return float(v) if v else default


RATE = env_num("RATE", 50)
RELOAD_GAP = env_num("RELOAD_GAP", 0.03)
RSS_EVERY = max(1, int(env_num("RSS_EVERY", 50)))
RSS_SLACK_MIB = env_num("RSS_SLACK_MIB", 16)
RSS_SLACK_PCT = env_num("RSS_SLACK_PCT", 20)
FD_SLACK = int(env_num("FD_SLACK", 4))
TOKEN = "reloads-admin-token-0123456789"
TIMEOUT = 60
CACHE_MIB = 16
SANITIZER_MARKS = ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "runtime error:",
                   "WARNING: ThreadSanitizer", "SUMMARY: UndefinedBehaviorSanitizer")


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


PORT_HTTP, PORT_TLS, PORT_H2C, PORT_ADMIN, PORT_ORIGIN = (free_port() for _ in range(5))
STOP = threading.Event()

# The version of the last reload that completed (moxy_generation moved): a request that
# starts after it must be answered by that version or a later one.
DONE = {"version": 0}


class Tally:
    """Outcomes per client kind; every failure with its time and detail."""

    def __init__(self):
        self.lock = threading.Lock()
        self.ok = collections.Counter()
        self.failed = collections.Counter()
        self.failures = []      # (t, kind, what, detail)
        self.unprocessed = collections.Counter()   # h2 streams a GOAWAY declared unprocessed
        self.versions = set()
        self.methods = collections.Counter()

    def good(self, kind, method, version):
        with self.lock:
            self.ok[kind] += 1
            self.methods[method] += 1
            self.versions.add(version)

    def bad(self, kind, what, detail=""):
        with self.lock:
            self.failed[kind] += 1
            self.failures.append((time.time(), kind, what, detail[:300]))


TALLY = Tally()


def pace(due, n):
    due = max(due + n / RATE, time.time())
    STOP.wait(due - time.time())
    return due


def error_kind(e):
    if isinstance(e, socket.timeout):
        return "timeout"
    if isinstance(e, http.client.RemoteDisconnected):
        return "closed_before_response"
    if isinstance(e, http.client.IncompleteRead):
        return "incomplete_body"
    if isinstance(e, ConnectionRefusedError):
        return "refused"
    if isinstance(e, ConnectionResetError):
        return "reset"
    if isinstance(e, BrokenPipeError):
        return "broken_pipe"
    if isinstance(e, ssl.SSLError):
        return "tls_error"
    return type(e).__name__


def tls_context(alpn):
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols(alpn)
    return ctx


def make_request(rng, slow=False):
    """-> (method, path, body or None, what the answer must be: 'echo', 'bytes N', 'local').
    slow: a request the origin holds 0.3 s before reading its body (before answering a
    GET), so that it is in flight across several reloads."""
    r = rng.random()
    if slow:
        if r < 0.5:
            body = rng.randbytes(rng.choice((0, 10, 30000, 100000)))
            return "POST", "/echo/slow?delay=0.3&n=%d" % rng.randrange(1 << 30), body, "echo"
        return "GET", "/echo/slow?rh=Cache-Control:no-store&delay=0.3&n=%d" % rng.randrange(1 << 30), None, "echo"
    if r < 0.3:
        body = rng.randbytes(rng.choice((0, 1, 100, 4096, 70000, 200000)))
        return "POST", "/echo/post?n=%d" % rng.randrange(1 << 30), body, "echo"
    if r < 0.6:     # 40 cacheable objects, fresh for 30 s: hits, and misses as they expire
        k = rng.randrange(40)
        n = 700 + 131 * k
        return "GET", "/bytes/%d?rh=Cache-Control:max-age=30&k=%d" % (n, k), None, "bytes %d" % n
    if r < 0.85:
        return "GET", "/echo/miss?rh=Cache-Control:no-store&n=%d" % rng.randrange(1 << 30), None, "echo"
    return "GET", "/local", None, "local"


def pattern(n):
    return bytes(i % 251 for i in range(n))


PATTERNS = {}


def check_answer(method, path, body, expect, status, headers, data, started_done):
    """-> None when the answer is the one expected, else what is wrong."""
    if status != 200:
        return "status %s" % status
    version = headers.get("x-reload-version")
    if version is None or not version.isdigit():
        return "no X-Reload-Version"
    version = int(version)
    if version < started_done:
        return "stale: version %d answered after reload %d completed" % (version, started_done)
    if expect == "local":
        if data != b"local %d\n" % version:
            return "local body %r (version %d)" % (data[:60], version)
    elif expect.startswith("bytes "):
        n = int(expect[6:])
        if n not in PATTERNS:
            PATTERNS[n] = pattern(n)
        if data != PATTERNS[n]:
            return "bytes body: %d bytes, not the pattern of %d" % (len(data), n)
    else:
        try:
            doc = json.loads(data)
        except ValueError:
            return "echo body is not JSON: %r" % data[:80]
        if doc.get("method") != method:
            return "echo method %s" % doc.get("method")
        want = len(body) if body is not None else 0
        if method == "POST" and (doc.get("body_length") != want
                                 or doc.get("body_sha256") != hashlib.sha256(body).hexdigest()):
            return "POST body reached the origin as %s bytes (sha %s), sent %d" % (
                doc.get("body_length"), str(doc.get("body_sha256"))[:12], want)
        seen = [v for k, v in doc.get("headers", []) if k.lower() == "x-reload-version"]
        if seen != [str(version)]:
            return "two generations: on_request set %s, on_response %d" % (seen, version)
    return None


# ---------------------------------------------------------------- clients

def http_client(kind, seed):
    """h1ka/tlska: one keep-alive connection as long as it lasts; h1new/tlsnew: one per request."""
    rng = random.Random(seed)
    tls = kind.startswith("tls")
    fresh = kind.endswith("new")
    slow = kind.endswith("slow")
    ctx = tls_context(["http/1.1"])
    conn, due = None, time.time()
    while not STOP.is_set():
        if conn is None:
            if tls:
                conn = http.client.HTTPSConnection("127.0.0.1", PORT_TLS, timeout=TIMEOUT, context=ctx)
            else:
                conn = http.client.HTTPConnection("127.0.0.1", PORT_HTTP, timeout=TIMEOUT)
        method, path, body, expect = make_request(rng, slow)
        started = DONE["version"]
        hdrs = {"Host": "reloads.test"}
        if fresh:
            hdrs["Connection"] = "close"
        try:
            conn.request(method, path, body=body, headers=hdrs)
            res = conn.getresponse()
            data = res.read()
            wrong = check_answer(method, path, body, expect, res.status,
                                 {k.lower(): v for k, v in res.getheaders()}, data, started)
            if wrong:
                TALLY.bad(kind, wrong.split(":")[0], "%s %s: %s" % (method, path, wrong))
            else:
                TALLY.good(kind, method, int(res.getheader("X-Reload-Version")))
            if res.will_close or fresh:
                conn.close()
                conn = None
        except Exception as e:  # noqa: BLE001 -- every failure is counted by kind
            TALLY.bad(kind, error_kind(e), "%s %s: %r" % (method, path, e))
            conn.close()
            conn = None
        due = pace(due, 1)
    if conn:
        conn.close()


# python-h2 (4.1) puts a connection in state CLOSED at a GOAWAY and refuses every frame
# after it, while RFC 9113 6.8 has the streams up to last_stream_id finish normally (what
# moxy does when it drains): let the closed state receive and send frames on those.
for _inp in h2.connection.ConnectionInputs:
    h2.connection.H2ConnectionStateMachine._transitions.setdefault(
        (h2.connection.ConnectionState.CLOSED, _inp), (None, h2.connection.ConnectionState.CLOSED))


class H2Client:
    def __init__(self, tls):
        raw = socket.create_connection(("127.0.0.1", PORT_TLS if tls else PORT_H2C), timeout=TIMEOUT)
        if tls:
            self.sock = tls_context(["h2"]).wrap_socket(raw, server_hostname="reloads.test")
            if self.sock.selected_alpn_protocol() != "h2":
                raise ConnectionError("ALPN did not select h2")
        else:
            self.sock = raw
        self.scheme = "https" if tls else "http"
        self.h2 = h2.connection.H2Connection(h2.config.H2Configuration(
            client_side=True, header_encoding="utf-8"))
        self.h2.initiate_connection()
        self.sock.sendall(self.h2.data_to_send())
        self.goaway = None      # last_stream_id of a GOAWAY received

    def batch(self, reqs):
        """Sends every (method, path, body, expect) as a stream at once -> {sid: stream}; a
        stream a GOAWAY left unprocessed has status 'unprocessed'."""
        streams = {}
        for method, path, body, expect in reqs:
            sid = self.h2.get_next_available_stream_id()
            hdrs = [(":method", method), (":path", path), (":scheme", self.scheme),
                    (":authority", "reloads.test")]
            if body is not None:
                hdrs.append(("content-length", str(len(body))))
            self.h2.send_headers(sid, hdrs, end_stream=not body)
            streams[sid] = {"method": method, "path": path, "body": body, "expect": expect,
                            "status": None, "headers": {}, "data": [], "done": False,
                            "to_send": body or b""}
        self.flush_bodies(streams)
        while not all(s["done"] for s in streams.values()):
            data = self.sock.recv(65536)
            if not data:
                if self.goaway is not None:
                    for sid, s in streams.items():
                        if not s["done"] and sid > self.goaway:
                            s["done"], s["status"] = True, "unprocessed"
                    if all(s["done"] for s in streams.values()):
                        break
                raise ConnectionError("connection closed with streams open")
            for ev in self.h2.receive_data(data):
                s = streams.get(getattr(ev, "stream_id", None))
                if isinstance(ev, h2.events.ResponseReceived) and s:
                    for k, v in ev.headers:
                        if k == ":status":
                            s["status"] = int(v)
                        else:
                            s["headers"][k] = v
                elif isinstance(ev, h2.events.DataReceived):
                    self.h2.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                    if s:
                        s["data"].append(ev.data)
                elif isinstance(ev, h2.events.StreamEnded) and s:
                    s["done"] = True
                elif isinstance(ev, h2.events.StreamReset) and s:
                    try:
                        window = self.h2.local_flow_control_window(ev.stream_id)
                    except h2.exceptions.H2Error:
                        window = "-"
                    s["status"] = ("stream_reset %s (after: status %s, %s, %d bytes of body, %d left to send; "
                                   "send windows: connection %s, stream %s)") % (
                        ev.error_code, s["status"], "ended" if s["done"] else "not ended",
                        sum(map(len, s["data"])), len(s["to_send"]), self.h2.outbound_flow_control_window, window)
                    s["done"] = True
                elif isinstance(ev, h2.events.ConnectionTerminated):
                    if ev.error_code != 0:
                        raise ConnectionError("GOAWAY %s" % ev.error_code)
                    self.goaway = ev.last_stream_id
                    for sid, st in streams.items():
                        if not st["done"] and sid > ev.last_stream_id:
                            st["done"], st["status"] = True, "unprocessed"
                elif isinstance(ev, h2.events.WindowUpdated):
                    pass
            self.flush_bodies(streams)
        return streams

    def flush_bodies(self, streams):
        for sid, s in streams.items():
            while s["to_send"] and not s["done"]:
                try:
                    window = min(self.h2.local_flow_control_window(sid), self.h2.max_outbound_frame_size)
                except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
                    break
                if window <= 0:
                    break
                chunk, s["to_send"] = s["to_send"][:window], s["to_send"][window:]
                self.h2.send_data(sid, chunk, end_stream=not s["to_send"])
        out = self.h2.data_to_send()
        if out:
            self.sock.sendall(out)

    def close(self):
        try:
            self.h2.close_connection()
            self.sock.sendall(self.h2.data_to_send())
        except Exception:  # noqa: BLE001
            pass
        self.sock.close()


def h2_client(kind, seed):
    rng = random.Random(seed)
    conn, used, due = None, 0, time.time()
    pending = []
    while not STOP.is_set():
        reqs = pending or [make_request(rng, kind == "h2slow") for _ in range(4)]
        pending = []
        started = DONE["version"]
        try:
            if conn is None or used >= 200 or conn.goaway is not None:
                if conn:
                    conn.close()
                conn, used = H2Client(kind != "h2c"), 0
            streams = conn.batch(reqs)
            for s in streams.values():
                if s["status"] == "unprocessed":
                    # RFC 9113 6.8: not processed, may be sent again: on the next connection
                    TALLY.unprocessed[kind] += 1
                    pending.append((s["method"], s["path"], s["body"], s["expect"]))
                    continue
                wrong = check_answer(s["method"], s["path"], s["body"], s["expect"], s["status"],
                                     s["headers"], b"".join(s["data"]), started)
                if wrong:
                    TALLY.bad(kind, wrong.split(":")[0], "%s %s: %s" % (s["method"], s["path"], wrong))
                else:
                    TALLY.good(kind, s["method"], int(s["headers"]["x-reload-version"]))
            used += len(reqs)
        except Exception as e:  # noqa: BLE001
            for method, path, _, _ in reqs:
                TALLY.bad(kind, "conn_" + error_kind(e), "%s %s: %r" % (method, path, e))
            if conn:
                conn.sock.close()
            conn = None
        if not pending:
            due = pace(due, len(reqs))
    if conn:
        conn.close()


CLIENTS = [("h1ka", 2), ("h1new", 1), ("tlska", 1), ("tlsnew", 1), ("h2tls", 1), ("h2c", 1),
           ("h1slow", 2), ("h2slow", 1)]
if os.environ.get("CLIENTS"):       # e.g. CLIENTS=h1ka:4,h2tls:1 -- another mix
    CLIENTS = [(k, int(n)) for k, _, n in (c.partition(":") for c in os.environ["CLIENTS"].split(","))]


# ---------------------------------------------------------------- processes

CHILDREN = []
MOXY_PIDS = []      # every moxy this run started or upgraded to


def spawn(argv, **kw):
    p = subprocess.Popen(argv, **kw)
    CHILDREN.append(p)
    return p


def become_subreaper():
    """An upgraded moxy is the child of the old one; when the old one exits it becomes ours
    (PR_SET_CHILD_SUBREAPER), so its exit status can be read and nothing is left behind."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(36, 1, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def alive(pid):
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def reap(pid, timeout):
    """Waits for pid (ours, or reparented to us) to exit -> its exit status, 'signal N',
    'exited (not our child)', or None if still running after timeout."""
    t0 = time.time()
    while time.time() - t0 < timeout:
        try:
            got, status = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            if not alive(pid):
                return "exited (not our child)"
            got = 0
        if got == pid:
            if os.WIFEXITED(status):
                return os.WEXITSTATUS(status)
            return "signal %d" % os.WTERMSIG(status)
        time.sleep(0.05)
    return None


def tree(pid):
    """pid and its descendants."""
    kids = collections.defaultdict(list)
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open("/proc/%s/stat" % name) as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
                kids[ppid].append(int(name))
            except (OSError, IndexError, ValueError):
                pass
    out, queue = [], [pid]
    while queue:
        p = queue.pop()
        out.append(p)
        queue.extend(kids.get(p, []))
    return out


def fd_count(pid):
    n = 0
    for p in tree(pid):
        try:
            n += len(os.listdir("/proc/%d/fd" % p))
        except OSError:
            pass
    return n


def fd_kinds(pid):
    kinds = collections.Counter()
    for p in tree(pid):
        d = "/proc/%d/fd" % p
        try:
            names = os.listdir(d)
        except OSError:
            continue
        for fd in names:
            try:
                kinds[re.sub(r":\[\d+\]$", "", os.readlink(os.path.join(d, fd)))] += 1
            except OSError:
                pass
    return kinds


def rss_mib(pid):
    total = 0.0
    for p in tree(pid):
        try:
            with open("/proc/%d/status" % p) as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1]) / 1024.0
        except OSError:
            pass
    return total


CONFIG = """-- reloads.py, version %(v)d
return {
  workers = 2,
  pid_file = "moxy.pid",
  listen = {
    { addr = "127.0.0.1:%(http)d", name = "plain" },
    { addr = "127.0.0.1:%(tls)d", name = "tls", http2 = true,
      tls = { certificates = { { cert = "reloads.pem", key = "reloads.key" } } } },
    { addr = "127.0.0.1:%(h2c)d", name = "h2c", http2 = true },
  },
  upstreams = {
    origin = { servers = { "127.0.0.1:%(origin)d" }, keepalive = 16, keepalive_timeout = "2s",
               passive = false },
  },
  default_upstream = "origin",
  scripts = { "site-%(v)d.lua" },
  cache = { size = "%(cache)dm" },
  admin = { listen = "127.0.0.1:%(admin)d", token = "%(token)s" },
  timeouts = { client_header = "60s", client_body = "60s", drain = "%(drain)ds" },
  log = { error = "error.log", level = "warn" },
}
"""

SCRIPT = """-- reloads.py: generation version %(v)d
local VERSION = "%(v)d"
return {
  on_request = function(txn)
    if txn.req.path == "/local" then
      return txn:respond(200, "local " .. VERSION .. "\\n", { ["X-Reload-Version"] = VERSION })
    end
    txn.req.headers:set("X-Reload-Version", VERSION)
  end,
  on_response = function(txn)
    txn.resp.headers:set("X-Reload-Version", VERSION)
  end,
}
"""


class Run:
    def __init__(self, out):
        self.out = out
        self.version = 0

    def write(self, v):
        """Writes site-V.lua and moxy.lua naming it (drain alternates 30/31 s: a changed
        setting too); removes the script of V-2, which no generation still being built reads."""
        with open(os.path.join(self.out, "site-%d.lua" % v), "w") as f:
            f.write(SCRIPT % {"v": v})
        path = os.path.join(self.out, "moxy.lua")
        with open(path + ".tmp", "w") as f:
            f.write(CONFIG % {"v": v, "http": PORT_HTTP, "tls": PORT_TLS, "h2c": PORT_H2C,
                              "origin": PORT_ORIGIN, "admin": PORT_ADMIN, "cache": CACHE_MIB,
                              "token": TOKEN, "drain": 30 + v % 2})
        os.rename(path + ".tmp", path)
        old = os.path.join(self.out, "site-%d.lua" % (v - 2))
        if v >= 2 and os.path.exists(old):
            os.unlink(old)
        self.version = v
        return path


def admin(method, path, timeout=30):
    req = urllib.request.Request("http://127.0.0.1:%d%s" % (PORT_ADMIN, path), method=method,
                                 headers={"Authorization": "Bearer " + TOKEN})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def metrics():
    out = {}
    for line in admin("GET", "/metrics")[1].splitlines():
        if line and not line.startswith("#"):
            k, _, v = line.rpartition(" ")
            try:
                out[k] = float(v)
            except ValueError:
                pass
    return out


def metric_sum(m, name):
    return sum(v for k, v in m.items() if k == name or k.startswith(name + "{"))


def status_doc():
    return json.loads(admin("GET", "/status")[1])


def wait_idle(timeout):
    """No client connection, no idle or HTTP/2 origin connection -> seconds waited, or None."""
    t0 = time.time()
    while time.time() - t0 < timeout:
        try:
            m = metrics()
        except OSError:
            m = {"moxy_connections": 1}
        if (metric_sum(m, "moxy_connections") == 0 and metric_sum(m, "moxy_pool_idle_connections") == 0
                and metric_sum(m, "moxy_pool_h2_connections") == 0):
            waited = time.time() - t0
            time.sleep(1)
            return waited
        time.sleep(0.5)
    return None


def pctl(values, p):
    if not values:
        return float("nan")
    v = sorted(values)
    return v[min(len(v) - 1, int(round(p / 100.0 * (len(v) - 1))))]


def warm_up():
    """One request of each kind on each listener, so that lazily made state (a worker's
    first TLS session, the origin pool's connections) exists before fds are counted."""
    rng = random.Random(7)
    ctx = tls_context(["http/1.1"])
    for _ in range(3):
        for req in (("GET", "/local", None, "local"), ("GET", "/echo/w", None, "echo"),
                    ("POST", "/echo/w", b"x" * 5000, "echo"), make_request(rng)):
            for port in (PORT_HTTP, PORT_TLS):
                c = (http.client.HTTPSConnection("127.0.0.1", port, timeout=TIMEOUT, context=ctx)
                     if port == PORT_TLS else http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT))
                c.request(req[0], req[1], body=req[2], headers={"Host": "reloads.test"})
                r = c.getresponse()
                data = r.read()
                c.close()
                wrong = check_answer(req[0], req[1], req[2], req[3], r.status,
                                     {k.lower(): v for k, v in r.getheaders()}, data, 0)
                if wrong:
                    raise RuntimeError("warm-up %s %s: %s" % (req[0], req[1], wrong))
        for tls in (True, False):
            c = H2Client(tls)
            for s in c.batch([("GET", "/echo/w2", None, "echo"), ("POST", "/echo/w2", b"y" * 3000, "echo")]).values():
                wrong = check_answer(s["method"], s["path"], s["body"], s["expect"], s["status"],
                                     s["headers"], b"".join(s["data"]), 0)
                if wrong:
                    raise RuntimeError("warm-up h2: %s" % wrong)
            c.close()


# ---------------------------------------------------------------- main

def main():
    ap = argparse.ArgumentParser(description="moxy reloaded and upgraded under load")
    ap.add_argument("--reloads", type=int, default=None,
                    help="reloads to perform (default: RELOADS or 1000; 0 with --upgrade)")
    ap.add_argument("--upgrade", type=int, nargs="?", const=3, default=0,
                    help="binary upgrades (SIGUSR2) to perform after the reloads (default 3)")
    ap.add_argument("--moxy", default=os.environ.get("MOXY_BIN") or os.path.join(ROOT, "moxy"))
    ap.add_argument("--out", default=os.environ.get("OUT") or time.strftime("/tmp/moxy-reloads-%Y%m%d-%H%M%S"))
    args = ap.parse_args()
    n_reloads = args.reloads
    if n_reloads is None:
        n_reloads = int(env_num("RELOADS", 0 if args.upgrade else 1000))
    n_upgrades = args.upgrade
    out = args.out
    moxy_bin = os.path.abspath(args.moxy)
    os.makedirs(out, exist_ok=True)
    subreaper = become_subreaper()

    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                    "-nodes", "-keyout", os.path.join(out, "reloads.key"), "-out",
                    os.path.join(out, "reloads.pem"), "-days", "30", "-subj", "/CN=reloads.test",
                    "-addext", "subjectAltName=DNS:reloads.test"], check=True, capture_output=True)
    run = Run(out)
    conf = run.write(1)

    origin_log = open(os.path.join(out, "origin.log"), "w")
    origin = spawn(["/usr/bin/python3", os.path.join(ROOT, "spec/support/origin.py"), str(PORT_ORIGIN)],
                   stdout=subprocess.PIPE, stderr=origin_log, text=True)
    if not origin.stdout.readline().startswith("ready"):
        sys.exit("reloads: the origin did not start")
    moxy_err = open(os.path.join(out, "moxy.stderr"), "w")
    first = spawn([moxy_bin, "-c", conf], cwd=out, stdout=moxy_err, stderr=subprocess.STDOUT)
    pid = first.pid
    MOXY_PIDS.append(pid)
    for _ in range(300):
        try:
            metrics()
            for p in (PORT_HTTP, PORT_TLS, PORT_H2C):
                socket.create_connection(("127.0.0.1", p), timeout=1).close()
            break
        except OSError:
            if first.poll() is not None:
                sys.exit("reloads: moxy exited at start (%s); see %s/moxy.stderr" % (first.returncode, out))
            time.sleep(0.1)

    warm_up()
    idle_before = wait_idle(60)
    fd_before = fd_count(pid)
    kinds_before = fd_kinds(pid)
    rss_start = rss_mib(pid)
    m0 = metrics()
    gen0 = int(m0["moxy_generation"])

    threads = []
    for kind, count in CLIENTS:
        for i in range(count):
            fn = h2_client if kind.startswith("h2") else http_client
            threads.append(threading.Thread(target=fn, args=(kind, hash((kind, i)) & 0xffff),
                                            name="%s-%d" % (kind, i)))
    t0 = time.time()
    for t in threads:
        t.start()
    time.sleep(2)

    problems = []
    durations = {"SIGHUP": [], "POST /reload": []}
    rss = []            # (reloads done, MiB)
    fds = []            # (reloads done, count)
    done = 0
    for i in range(1, n_reloads + 1):
        if not alive(pid):
            problems.append("moxy (pid %d) died after %d reloads" % (pid, done))
            break
        v = run.version + 1
        run.write(v)
        how = "SIGHUP" if i % 2 == 1 else "POST /reload"
        r0 = time.time()
        if how == "SIGHUP":
            os.kill(pid, signal.SIGHUP)
        else:
            code, text = admin("POST", "/reload", timeout=120)
            if code != 200 or not json.loads(text).get("ok"):
                problems.append("reload %d (POST /reload): %d %s" % (i, code, text[:300]))
                break
        # done when the generation moved and the counter says ok (SIGHUP answers nothing)
        ok = False
        while time.time() - r0 < 120:
            m = metrics()
            if metric_sum(m, 'moxy_reloads_total{result="failed"}') > metric_sum(m0, 'moxy_reloads_total{result="failed"}'):
                problems.append("reload %d (%s) failed: %s" % (i, how, status_doc().get("reload")))
                break
            if int(m["moxy_generation"]) >= gen0 + i and \
                    metric_sum(m, 'moxy_reloads_total{result="ok"}') >= metric_sum(m0, 'moxy_reloads_total{result="ok"}') + i:
                ok = True
                break
            time.sleep(0.005)
        if not ok:
            if not problems or not problems[-1].startswith("reload %d " % i):
                problems.append("reload %d (%s) not done after 120 s" % (i, how))
            break
        durations[how].append(time.time() - r0)
        DONE["version"] = v
        done = i
        if i % RSS_EVERY == 0:
            rss.append((i, rss_mib(pid)))
            fds.append((i, fd_count(pid)))
        time.sleep(RELOAD_GAP)  # the new generation serves a few requests before the next
    reload_s = time.time() - t0
    m_r = metrics() if alive(pid) else {}     # the reload counters, before an upgrade resets them

    # ---------------------------------------------------------- upgrades
    upgrades = []       # dicts
    pid_file = os.path.join(out, "moxy.pid")
    for u in range(1, n_upgrades + 1):
        if problems:
            break
        time.sleep(2)   # load on this process first
        old = pid
        rss_old = rss_mib(old)
        u0 = time.time()
        os.kill(old, signal.SIGUSR2)
        new = None
        while time.time() - u0 < 120:
            try:
                with open(pid_file) as f:
                    p = int(f.read().strip() or 0)
            except (OSError, ValueError):
                p = 0
            if p and p != old:
                new = p
                break
            time.sleep(0.01)
        if new is None:
            problems.append("upgrade %d: no new PID in %s after 120 s" % (u, pid_file))
            break
        serving = None
        while time.time() - u0 < 120:
            try:
                if status_doc().get("pid") == new:
                    serving = time.time() - u0
                    break
            except (OSError, ValueError):
                pass
            time.sleep(0.01)
        try:
            exe = os.readlink("/proc/%d/exe" % new)
        except OSError:
            exe = None
        code = reap(old, 120)
        gone = time.time() - u0
        pid = new
        MOXY_PIDS.append(new)
        upgrades.append({"n": u, "old": old, "new": new, "serving_s": serving, "old_exit": code, "exe": exe,
                         "old_gone_s": gone, "rss_old": rss_old})
        if serving is None:
            problems.append("upgrade %d: /status not answered by the new pid %d" % (u, new))
        if code != 0:
            problems.append("upgrade %d: the old moxy %d exited with %s" % (u, old, code))
            break
        if not alive(new):
            problems.append("upgrade %d: the new moxy %d is not running" % (u, new))
            break
    if n_upgrades and not problems:
        time.sleep(2)   # load on the last process
        for up in upgrades:
            up["rss_new_under_load"] = None
        upgrades[-1]["rss_new_under_load"] = rss_mib(pid)

    STOP.set()
    load_s = time.time() - t0
    stuck = []
    for t in threads:
        t.join(TIMEOUT + 30)
        if t.is_alive():
            stuck.append(t.name)

    running = alive(pid)
    idle_after = wait_idle(120) if running else None
    fd_after = fd_count(pid) if running else None
    kinds_after = fd_kinds(pid) if running else collections.Counter()
    rss_end = rss_mib(pid) if running else None
    m1 = metrics() if running else {}
    exit_code = None
    if running:
        os.kill(pid, signal.SIGTERM)
        exit_code = reap(pid, 60)
        if exit_code is None:
            os.kill(pid, signal.SIGKILL)
            exit_code = "killed after 60 s"
    origin.kill()
    origin.wait()
    moxy_err.close()
    origin_log.close()

    # ---------------------------------------------------------- report
    log_text = ""
    for name in ("moxy.stderr", "error.log"):
        try:
            with open(os.path.join(out, name), errors="replace") as f:
                log_text += f.read()
        except OSError:
            pass
    sanitizer = [mark for mark in SANITIZER_MARKS if mark in log_text]
    err_lines = collections.Counter()
    for line in log_text.splitlines():
        msg = re.sub(r"^\S+ \S+ ", "", line)
        msg = re.sub(r"\b[0-9a-f]{8,}\b|\b\d+\b", "N", msg)
        err_lines[msg[:160]] += 1

    ok_reloads = 0 if not m_r else int(metric_sum(m_r, 'moxy_reloads_total{result="ok"}')
                                       - metric_sum(m0, 'moxy_reloads_total{result="ok"}'))
    failed_reloads = 0 if not m_r else int(metric_sum(m_r, 'moxy_reloads_total{result="failed"}')
                                           - metric_sum(m0, 'moxy_reloads_total{result="failed"}'))
    total_ok = sum(TALLY.ok.values())
    total_failed = sum(TALLY.failed.values())
    all_d = durations["SIGHUP"] + durations["POST /reload"]

    rss_first = rss[0][1] if rss else None
    rss_last = rss[-1][1] if rss else None
    rss_bound = rss_first + max(RSS_SLACK_MIB, rss_first * RSS_SLACK_PCT / 100.0) if rss else None
    end_bound = rss_start + max(RSS_SLACK_MIB, rss_start * RSS_SLACK_PCT / 100.0) + CACHE_MIB

    checks = [
        ("moxy alive until the end", running and not any("died" in p for p in problems), ""),
        ("no problem in the reload/upgrade sequence", not problems, "; ".join(problems)[:600]),
        ("every client thread finished", not stuck, ", ".join(stuck)),
        ("requests were made: %d answered right" % total_ok, total_ok > 0 and all(TALLY.ok[k] > 0 for k, _ in CLIENTS),
         "by kind: %s" % dict(TALLY.ok)),
        ("zero failed requests (%d)" % total_failed, total_failed == 0, ""),
        ("moxy_reloads_total{result=\"ok\"} +%d == %d reloads, failed +%d"
         % (ok_reloads, n_reloads, failed_reloads),
         ok_reloads == n_reloads and failed_reloads == 0, ""),
        ("no sanitizer report in moxy's logs", not sanitizer, ", ".join(sanitizer)),
        ("connections back to 0 after the load", idle_after is not None,
         "waited %.1f s" % idle_after if idle_after is not None else "still open after 120 s"),
        ("fds after (%s) <= before (%d) + %d" % (fd_after, fd_before, FD_SLACK),
         fd_after is not None and fd_after <= fd_before + FD_SLACK, ""),
    ]
    if n_upgrades:
        checks.append(("%d upgrades done: new PID (running %s) serving /status, old one exited 0"
                       % (n_upgrades, moxy_bin),
                       len(upgrades) == n_upgrades and all(u["old_exit"] == 0 and u["serving_s"] is not None
                                                           and u["exe"] == moxy_bin for u in upgrades), ""))
    if len(rss) >= 2:
        checks.append(("RSS flat: last sample %.1f MiB <= first %.1f + max(%g MiB, %g %%) = %.1f MiB"
                       % (rss_last, rss_first, RSS_SLACK_MIB, RSS_SLACK_PCT, rss_bound),
                       rss_last <= rss_bound, ""))
    checks.append(("RSS at the end (%s MiB) <= at the start %.1f + cache %d + max(%g MiB, %g %%) = %.1f MiB"
                   % ("%.1f" % rss_end if rss_end else "-", rss_start, CACHE_MIB, RSS_SLACK_MIB,
                      RSS_SLACK_PCT, end_bound), rss_end is not None and rss_end <= end_bound, ""))
    checks.append(("moxy exited 0 on SIGTERM at the end", exit_code == 0, str(exit_code)))
    ok = all(c[1] for c in checks)

    L = []
    L.append("moxy reloads under load: %s; results in %s" % (moxy_bin, out))
    L.append("load: %.1f s, clients %s, at most %g req/s each; RELOAD_GAP %g s"
             % (load_s, ", ".join("%s x%d" % kv for kv in CLIENTS), RATE, RELOAD_GAP))
    L.append("requests: %d answered right, %d failed; by kind: %s"
             % (total_ok, total_failed, ", ".join("%s %d/%d" % (k, TALLY.ok[k], TALLY.failed[k])
                                                 for k, _ in CLIENTS)))
    L.append("  methods: %s; versions seen: %d distinct; HTTP/2 streams unprocessed by a GOAWAY "
             "(sent again): %s" % (dict(TALLY.methods), len(TALLY.versions), dict(TALLY.unprocessed) or 0))
    L.append("reloads: %d of %d done in %.1f s (%d SIGHUP, %d POST /reload); moxy_reloads_total ok +%d, failed +%d; "
             "generation %d -> %s" % (done, n_reloads, reload_s, len(durations["SIGHUP"]),
                                      len(durations["POST /reload"]), ok_reloads, failed_reloads, gen0,
                                      int(m_r["moxy_generation"]) if m_r else "-"))
    if all_d:
        L.append("reload duration (trigger -> generation moved) ms: p50 %.1f, p99 %.1f, max %.1f; "
                 "SIGHUP p50 %.1f, POST /reload p50 %.1f"
                 % (pctl(all_d, 50) * 1e3, pctl(all_d, 99) * 1e3, max(all_d) * 1e3,
                    pctl(durations["SIGHUP"], 50) * 1e3, pctl(durations["POST /reload"], 50) * 1e3))
    L.append("cache: hits +%d, misses +%d" % tuple(
        metric_sum(m1, n) - metric_sum(m0, n) for n in ("moxy_cache_hits_total", "moxy_cache_misses_total")))
    L.append("RSS MiB (every process of moxy): start %.1f (idle, after warm-up), end %s (idle); samples every %d reloads: %s"
             % (rss_start, "%.1f" % rss_end if rss_end else "-", RSS_EVERY,
                " ".join("%d:%.1f" % s for s in rss) or "none"))
    if len(rss) >= 2:
        L.append("  first %.1f, last %.1f: %+.1f MiB (%+.1f %%), %+.1f KiB per reload"
                 % (rss_first, rss_last, rss_last - rss_first, (rss_last / rss_first - 1) * 100,
                    (rss_last - rss_first) * 1024 / max(1, rss[-1][0] - rss[0][0])))
    L.append("fds: before %d (idle after warm-up, waited %.1f s), after %s (idle, waited %s s); under load %s"
             % (fd_before, idle_before or -1, fd_after, "%.1f" % idle_after if idle_after is not None else "-",
                " ".join("%d:%d" % s for s in fds) or "-"))
    fd_diff = {k: kinds_after[k] - kinds_before[k] for k in set(kinds_before) | set(kinds_after)
               if kinds_after[k] != kinds_before[k]}
    L.append("  by kind before: %s; changed after: %s"
             % (", ".join("%s %d" % kv for kv in sorted(kinds_before.items())), fd_diff or "none"))
    if n_upgrades:
        L.append("upgrades (subreaper %s):" % ("on" if subreaper else "off: exits seen in /proc only"))
        for u in upgrades:
            L.append("  %d: pid %d -> %d, new one serving after %s s, old one exited %s after %.1f s; RSS before %.1f MiB"
                     % (u["n"], u["old"], u["new"], "%.2f" % u["serving_s"] if u["serving_s"] else "-",
                        u["old_exit"], u["old_gone_s"], u["rss_old"]))
        if upgrades and upgrades[-1].get("rss_new_under_load"):
            L.append("  last process RSS under load %.1f MiB" % upgrades[-1]["rss_new_under_load"])
    if TALLY.failures:
        by = collections.Counter((k, w) for _, k, w, _ in TALLY.failures)
        L.append("failures by kind and cause:")
        for (k, w), n in by.most_common():
            L.append("  %6d  %s %s" % (n, k, w))
        for t, k, w, d in TALLY.failures[:20]:
            L.append("  t=%.2f %s %s" % (t - t0, k, d))
    L.append("moxy's logs by message (numbers as N), top 10:")
    for msg, n in err_lines.most_common(10):
        L.append("  %6d  %s" % (n, msg))
    L.append("")
    for name, passed, why in checks:
        L.append("%s  %s%s" % ("PASS" if passed else "FAIL", name, "  (%s)" % why if why else ""))
    L.append("")
    L.append("reloads: %s" % ("PASS" if ok else "FAIL"))
    report = "\n".join(L)
    print(report, flush=True)
    with open(os.path.join(out, "summary.txt"), "w") as f:
        f.write(report + "\n")
    with open(os.path.join(out, "summary.json"), "w") as f:
        json.dump({"pass": ok, "reloads": n_reloads, "reloads_done": done, "reloads_ok": ok_reloads,
                   "reloads_failed": failed_reloads, "upgrades": upgrades, "requests_ok": total_ok,
                   "requests_failed": total_failed, "ok_by_kind": TALLY.ok, "failed_by_kind": TALLY.failed,
                   "unprocessed": TALLY.unprocessed,
                   "failures": [(round(t - t0, 3), k, w, d) for t, k, w, d in TALLY.failures[:200]],
                   "reload_ms": {"p50": pctl(all_d, 50) * 1e3, "p99": pctl(all_d, 99) * 1e3} if all_d else None,
                   "rss_mib": rss, "rss_start": rss_start, "rss_end": rss_end, "fd_before": fd_before,
                   "fd_after": fd_after, "checks": [{"check": c[0], "pass": c[1], "why": c[2]} for c in checks]},
                  f, indent=1)
    sys.exit(0 if ok else 1)


def cleanup():
    STOP.set()
    for p in CHILDREN:
        if p.poll() is None:
            p.kill()
            p.wait()
    # an upgraded moxy is no Popen of ours
    for pid in MOXY_PIDS:
        if alive(pid):
            os.kill(pid, signal.SIGKILL)
            reap(pid, 10)


if __name__ == "__main__":
    try:
        main()
    finally:
        cleanup()
