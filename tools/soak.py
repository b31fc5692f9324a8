#!/usr/bin/python3
"""soak.py -- `make soak`: moxy under mixed load, reloads and origin restarts.

    SOAK_S=600 /usr/bin/python3 tools/soak.py      (what `make soak` runs)

Starts, on loopback, an origin (spec/support/origin.py) and one moxy (2 workers:
a plain HTTP/1.1 listener, a TLS listener with HTTP/2, a 64 MiB cache, a small
Lua script, the admin listener), then for SOAK_S seconds runs bounded clients:

  h1        HTTP/1.1 keep-alive, cacheable paths (hits) and uncacheable ones (misses)
  tls       HTTP/1.1 over TLS, a new connection (full handshake) every 10 requests
  h2        HTTP/2 over TLS (python3-h2), 4 streams at a time per connection
  slowhead  a request head dribbled one byte every 0.5 s
  slowread  a 1 MiB response read at about 160 KiB/s (small receive buffer)
  reset     a 1 MiB response abandoned after 64 KiB with a TCP RST

while the controller sends SIGHUP every SOAK_RELOAD_S seconds (the configuration
alternates between two scripts that set X-Soak-Config: a / b) and kills the
origin (SIGKILL) every SOAK_ORIGIN_S seconds, restarting it after 1 s.

At the end it checks: moxy alive with its PID, no sanitizer report, open fds
after <= before + FD_SLACK, RSS at the end <= start + cache size + 64 MiB, no
5xx and no failed request outside an origin-restart window, and every non-2xx
in a named category.  Prints the report and writes report.txt / report.json to
the results directory (SOAK_OUT, default /tmp/moxy-soak-DATE).  Exit 0: pass.

Knobs (environment): SOAK_S (600), SOAK_RATE (requests/s per h1/tls/h2 client,
20), SOAK_H1 (4), SOAK_TLS (2), SOAK_H2 (2) clients, SOAK_RELOAD_S (5),
SOAK_ORIGIN_S (60; a run shorter than twice that restarts the origin once, at
its middle), SOAK_CPU_BUDGET (lua.cpu_budget, e.g. "500ms"; default moxy's),
SOAK_RSS_SLACK_MIB (64: the RSS bound's margin over start + cache),
SOAK_OUT, MOXY_BIN (default ./moxy; build-asan/moxy works, with a larger
SOAK_RSS_SLACK_MIB: ASan's quarantine alone may hold 256 MiB).
"""

import collections
import http.client
import json
import os
import random
import re
import signal
import socket
import ssl
import struct
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


SOAK_S = env_num("SOAK_S", 600)
RATE = env_num("SOAK_RATE", 20)
N_H1 = int(env_num("SOAK_H1", 4))
N_TLS = int(env_num("SOAK_TLS", 2))
N_H2 = int(env_num("SOAK_H2", 2))
RELOAD_S = env_num("SOAK_RELOAD_S", 5)
ORIGIN_S = env_num("SOAK_ORIGIN_S", 60)
CPU_BUDGET = os.environ.get("SOAK_CPU_BUDGET", "")   # lua.cpu_budget; default: moxy's (50 ms)
MOXY = os.environ.get("MOXY_BIN") or os.path.join(ROOT, "moxy")
OUT = os.environ.get("SOAK_OUT") or time.strftime("/tmp/moxy-soak-%Y%m%d-%H%M%S")

CACHE_MIB = 64
RSS_SLACK_MIB = env_num("SOAK_RSS_SLACK_MIB", 64)
# fds moxy may open once and keep, lazily, after the warm-up: a worker's first
# TLS session or resolver socket, a log file reopened; none per request.
FD_SLACK = 8
# After the origin is back, requests may still fail for this long: those that
# were in flight to the killed process, and connections in moxy's pool to it.
ORIGIN_GRACE_S = 3.0
BIG = 1 << 20

SANITIZER_MARKS = ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "runtime error:",
                   "WARNING: ThreadSanitizer", "SUMMARY: UndefinedBehaviorSanitizer")


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


PORT_HTTP, PORT_TLS, PORT_ADMIN, PORT_ORIGIN, PORT_H2ORIGIN = (free_port() for _ in range(5))

STOP = threading.Event()


class Tally:
    """Outcomes per client kind, and the time of every one that was not a 2xx."""

    def __init__(self):
        self.lock = threading.Lock()
        self.by_kind = collections.defaultdict(collections.Counter)
        self.bad = []          # (t, kind, outcome, detail)
        self.config_seen = collections.Counter()

    def add(self, kind, outcome, detail=""):
        t = time.time()
        if isinstance(outcome, int):
            key = "%dxx" % (outcome // 100)
        else:
            key = outcome
        with self.lock:
            self.by_kind[kind][key] += 1
            if not (isinstance(outcome, int) and 200 <= outcome < 300):
                self.bad.append((t, kind, outcome, detail))

    def seen(self, value):
        with self.lock:
            self.config_seen[value or "none"] += 1


TALLY = Tally()


def pace(due, n):
    """Sleeps until n requests after due at RATE/s -> when the next is due.  A loop that fell
    behind (a stall, an outage) starts again from now: it never bursts to catch up."""
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
    if isinstance(e, ssl.SSLError):
        return "tls_error"
    return type(e).__name__


def pick_path(rng):
    """70 % cacheable (50 keys, 20 s fresh: hits, and misses as they expire), 30 % not;
    a quarter of each goes to the HTTP/2 origin (via=h2: the script picks its pool)."""
    h2o = rng.random() < 0.25
    if rng.random() < 0.7:
        k = rng.randrange(50)
        if h2o:
            return "/bytes/%d?cc=max-age=20&via=h2&k=%d" % (512 + 97 * k, k)
        return "/bytes/%d?rh=Cache-Control:max-age=20&k=%d" % (512 + 97 * k, k)
    if h2o:
        return "/echo/miss?cc=no-store&via=h2&n=%d" % rng.randrange(1 << 30)
    return "/echo/miss?rh=Cache-Control:no-store&n=%d" % rng.randrange(1 << 30)


def tls_context(alpn):
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols(alpn)
    return ctx


# ---------------------------------------------------------------- clients

def http_client(kind, seed):
    """h1 (keep-alive, one connection as long as it lasts) or tls (10 requests each)."""
    rng = random.Random(seed)
    ctx = tls_context(["http/1.1"])
    conn, used, due = None, 0, time.time()
    while not STOP.is_set():
        if conn is None or (kind == "tls" and used >= 10):
            if conn:
                conn.close()
            if kind == "tls":
                conn = http.client.HTTPSConnection("127.0.0.1", PORT_TLS, timeout=30, context=ctx)
            else:
                conn = http.client.HTTPConnection("127.0.0.1", PORT_HTTP, timeout=30)
            used = 0
        path = pick_path(rng)
        try:
            conn.request("GET", path, headers={"Host": "soak.test"})
            res = conn.getresponse()
            res.read()
            used += 1
            TALLY.add(kind, res.status, path)
            if "miss" in path:
                TALLY.seen(res.getheader("X-Soak-Config"))
            if res.will_close:
                conn.close()
                conn = None
        except Exception as e:  # noqa: BLE001 -- every failure is counted by kind
            TALLY.add(kind, error_kind(e), "%s: %s" % (path, e))
            conn.close()
            conn = None
        due = pace(due, 1)
    if conn:
        conn.close()


class H2Client:
    def __init__(self):
        raw = socket.create_connection(("127.0.0.1", PORT_TLS), timeout=30)
        self.sock = tls_context(["h2"]).wrap_socket(raw, server_hostname="soak.test")
        if self.sock.selected_alpn_protocol() != "h2":
            raise ConnectionError("ALPN did not select h2")
        self.h2 = h2.connection.H2Connection(h2.config.H2Configuration(
            client_side=True, header_encoding="utf-8"))
        self.h2.initiate_connection()
        self.sock.sendall(self.h2.data_to_send())

    def batch(self, paths):
        """Sends every path as a stream at once -> {path: status or 'stream_reset'}."""
        streams = {}
        for p in paths:
            sid = self.h2.get_next_available_stream_id()
            self.h2.send_headers(sid, [(":method", "GET"), (":path", p), (":scheme", "https"),
                                       (":authority", "soak.test")], end_stream=True)
            streams[sid] = {"path": p, "status": None, "done": False, "config": None}
        self.sock.sendall(self.h2.data_to_send())
        while not all(s["done"] for s in streams.values()):
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError("connection closed")
            for ev in self.h2.receive_data(data):
                s = streams.get(getattr(ev, "stream_id", None))
                if isinstance(ev, h2.events.ResponseReceived) and s:
                    for k, v in ev.headers:
                        if k == ":status":
                            s["status"] = int(v)
                        elif k == "x-soak-config":
                            s["config"] = v
                elif isinstance(ev, h2.events.DataReceived):
                    self.h2.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                elif isinstance(ev, h2.events.StreamEnded) and s:
                    s["done"] = True
                elif isinstance(ev, h2.events.StreamReset) and s:
                    s["done"], s["status"] = True, "stream_reset"
                elif isinstance(ev, h2.events.ConnectionTerminated):
                    raise ConnectionError("GOAWAY %s" % ev.error_code)
            out = self.h2.data_to_send()
            if out:
                self.sock.sendall(out)
        return streams.values()

    def cancel(self, path):
        """Asks for path and resets the stream (CANCEL) at its first DATA -> the status."""
        sid = self.h2.get_next_available_stream_id()
        self.h2.send_headers(sid, [(":method", "GET"), (":path", path), (":scheme", "https"),
                                   (":authority", "soak.test")], end_stream=True)
        self.sock.sendall(self.h2.data_to_send())
        status = None
        while True:
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError("connection closed")
            for ev in self.h2.receive_data(data):
                if getattr(ev, "stream_id", None) != sid:
                    continue
                if isinstance(ev, h2.events.ResponseReceived):
                    status = int(dict(ev.headers)[":status"])
                elif isinstance(ev, h2.events.DataReceived) and status == 200:
                    try:
                        self.h2.reset_stream(sid, 8)   # CANCEL
                    except h2.exceptions.StreamClosedError:
                        return "ended_before_cancel"
                    self.sock.sendall(self.h2.data_to_send())
                    return status
                elif isinstance(ev, (h2.events.StreamEnded, h2.events.StreamReset)):
                    return "ended_before_cancel" if status == 200 else status
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


def h2_client(seed):
    rng = random.Random(seed)
    conn, used, due = None, 0, time.time()
    while not STOP.is_set():
        paths = [pick_path(rng) for _ in range(4)]
        try:
            if conn is None or used >= 200:
                if conn:
                    conn.close()
                conn, used = H2Client(), 0
            for s in conn.batch(paths):
                TALLY.add("h2", s["status"], s["path"])
                if "miss" in s["path"] and isinstance(s["status"], int):
                    TALLY.seen(s["config"])
            used += len(paths)
        except Exception as e:  # noqa: BLE001
            for p in paths:
                TALLY.add("h2", "conn_" + error_kind(e), "%s: %s" % (p, e))
            if conn:
                conn.sock.close()
            conn = None
        due = pace(due, len(paths))
    if conn:
        conn.close()


def read_head(sock):
    buf = b""
    while b"\r\n\r\n" not in buf:
        d = sock.recv(4096)
        if not d:
            raise http.client.RemoteDisconnected("closed before the response head")
        buf += d
    head, _, rest = buf.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    m = re.search(rb"(?im)^content-length:\s*(\d+)", head)
    return status, (int(m.group(1)) if m else None), rest


def slow_head_client():
    """One byte every 0.5 s of a 33-byte head (16 s; timeouts.client_header is 30 s)."""
    i = 0
    while not STOP.is_set():
        i += 1
        head = b"GET /echo/slow HTTP/1.1\r\nHost: s\r\n\r\n"
        try:
            with socket.create_connection(("127.0.0.1", PORT_HTTP), timeout=40) as s:
                for b in head:
                    s.sendall(bytes([b]))
                    time.sleep(0.5)
                status, length, rest = read_head(s)
                while length is not None and len(rest) < length:
                    d = s.recv(65536)
                    if not d:
                        raise http.client.IncompleteRead(rest)
                    rest += d
                TALLY.add("slowhead", status, "/echo/slow")
        except Exception as e:  # noqa: BLE001
            TALLY.add("slowhead", error_kind(e), str(e))


def big_get(tls, path, rcvbuf=None):
    raw = socket.socket()
    if rcvbuf:
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    raw.settimeout(60)
    raw.connect(("127.0.0.1", PORT_TLS if tls else PORT_HTTP))
    s = tls_context(["http/1.1"]).wrap_socket(raw, server_hostname="soak.test") if tls else raw
    s.sendall(("GET %s HTTP/1.1\r\nHost: soak.test\r\nConnection: close\r\n\r\n" % path).encode())
    status, length, rest = read_head(s)
    return s, status, length, rest


def slow_read_client():
    """A 1 MiB body (cached after the first) read 8 KiB every 50 ms; plain and TLS in turn."""
    i = 0
    while not STOP.is_set():
        i += 1
        tls = i % 2 == 0
        kind = "slowread"
        path = "/bytes/%d?rh=Cache-Control:max-age=30&k=big" % BIG
        try:
            s, status, length, got = big_get(tls, path, rcvbuf=16384)
            got = len(got)
            with s:
                while True:
                    d = s.recv(8192)
                    if not d:
                        break
                    got += len(d)
                    time.sleep(0.05)
            if status == 200 and got != BIG:
                TALLY.add(kind, "short_body", "%d of %d bytes" % (got, BIG))
            else:
                TALLY.add(kind, status, path)
        except Exception as e:  # noqa: BLE001
            TALLY.add(kind, error_kind(e), str(e))
        STOP.wait(0.5)


def reset_client():
    """Asks for 1 MiB (uncacheable: streamed from the origin), resets after 64 KiB; every
    third time over HTTP/2: RST_STREAM at the first DATA, then a request on the same
    connection (kind h2reset)."""
    i = 0
    while not STOP.is_set():
        i += 1
        tls = i % 2 == 0
        path = "/bytes/%d?rh=Cache-Control:no-store&r=%d" % (BIG, i)
        if i % 3 == 0:
            conn = None
            try:
                conn = H2Client()
                status = conn.cancel(path)
                TALLY.add("h2reset", "reset_by_client" if status == 200 else status, path)
                for st in conn.batch(["/echo/after-reset"]):
                    TALLY.add("h2reset", st["status"], st["path"])
            except Exception as e:  # noqa: BLE001
                TALLY.add("h2reset", "conn_" + error_kind(e), "%s: %s" % (path, e))
            if conn:
                conn.close()
            STOP.wait(0.25)
            continue
        try:
            s, status, length, got = big_get(tls, path)
            got = len(got)
            while status == 200 and got < 65536:
                d = s.recv(65536)
                if not d:
                    break
                got += len(d)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            s.close()
            TALLY.add("reset", status if status != 200 else "reset_by_client", path)
        except Exception as e:  # noqa: BLE001
            TALLY.add("reset", error_kind(e), str(e))
        STOP.wait(0.25)


# ---------------------------------------------------------------- processes

CHILDREN = []


def spawn(argv, **kw):
    p = subprocess.Popen(argv, **kw)
    CHILDREN.append(p)
    return p


def kill_children():
    """On any exit: nothing this run started outlives it."""
    for p in CHILDREN:
        if p.poll() is None:
            p.kill()
            p.wait()

class Origin:
    """spec/support/origin.py (HTTP/1.1) or h2origin.py (cleartext HTTP/2) on a fixed port."""

    def __init__(self, script, port, log):
        self.script, self.port, self.log = script, port, log
        self.proc = None

    def start(self):
        for _ in range(50):   # the killed one's port may take a moment to be free
            self.proc = spawn(
                ["/usr/bin/python3", os.path.join(ROOT, "spec/support", self.script), str(self.port)],
                stdout=subprocess.PIPE, stderr=self.log, text=True)
            line = self.proc.stdout.readline()
            if line.startswith("ready"):
                return
            self.proc.wait()
            time.sleep(0.1)
        raise RuntimeError("%s did not start on port %d" % (self.script, self.port))

    def kill(self):
        self.proc.kill()
        self.proc.wait()


CONFIG = """return {
  workers = 2,
  pid_file = false,
  listen = {
    { addr = "127.0.0.1:%(http)d", name = "plain" },
    { addr = "127.0.0.1:%(tls)d", name = "tls", http2 = true,
      tls = { certificates = { { cert = "soak.pem", key = "soak.key" } } } },
  },
  upstreams = {
    origin = { servers = { "127.0.0.1:%(origin)d" }, keepalive = 16, keepalive_timeout = "2s",
               passive = false },
    h2o = { servers = { "127.0.0.1:%(h2origin)d" }, protocol = "h2", keepalive_timeout = "2s",
            passive = false },
  },
  default_upstream = "origin",
  scripts = { "soak-%(which)s.lua" },
  shared = { soak = "1m" },
  cache = { size = "%(cache)dm" },
  admin = { listen = "127.0.0.1:%(admin)d" },
  timeouts = { client_header = "30s" },%(lua)s
  log = { error = "error.log", level = "warn" },
}
"""

SCRIPT = """-- soak-%(which)s.lua: a header both ways and a moxy.shared counter
local VALUE = "%(which)s"
return {
  on_request = function(txn)
    if txn.req.path == "/__soak/count" then
      return txn:respond(200, tostring(moxy.shared.soak:get("requests") or 0))
    end
    moxy.shared.soak:incr("requests", 1, 0)
    txn.req.headers:set("X-Soak-Config", VALUE)
  end,
  on_upstream = function(txn)
    if (txn.req.query or ""):find("via=h2", 1, true) then return "h2o" end
  end,
  on_response = function(txn)
    txn.resp.headers:set("X-Soak-Config", VALUE)
  end,
}
"""


def write_config(which):
    path = os.path.join(OUT, "moxy.lua")
    with open(path + ".tmp", "w") as f:
        f.write(CONFIG % {"http": PORT_HTTP, "tls": PORT_TLS, "origin": PORT_ORIGIN, "h2origin": PORT_H2ORIGIN,
                          "admin": PORT_ADMIN, "cache": CACHE_MIB, "which": which,
                          "lua": ('\n  lua = { cpu_budget = "%s" },' % CPU_BUDGET) if CPU_BUDGET else ""})
    os.rename(path + ".tmp", path)
    return path


def admin_get(path):
    with urllib.request.urlopen("http://127.0.0.1:%d%s" % (PORT_ADMIN, path), timeout=10) as r:
        return r.read().decode()


def metrics():
    """/metrics -> {'name{labels}': value}"""
    out = {}
    for line in admin_get("/metrics").splitlines():
        if line and not line.startswith("#"):
            k, _, v = line.rpartition(" ")
            try:
                out[k] = float(v)
            except ValueError:
                pass
    return out


def metric_sum(m, name):
    return sum(v for k, v in m.items() if k == name or k.startswith(name + "{"))


def fd_count(pid):
    return len(os.listdir("/proc/%d/fd" % pid))


def socket_inodes(pid):
    """{inode: fd} of moxy's sockets."""
    out = {}
    d = "/proc/%d/fd" % pid
    for fd in os.listdir(d):
        try:
            m = re.match(r"socket:\[(\d+)\]$", os.readlink(os.path.join(d, fd)))
        except OSError:
            continue
        if m:
            out[m.group(1)] = fd
    return out


def describe_sockets(inodes):
    """Finds each inode in /proc/net/{tcp,tcp6,udp,udp6,unix} -> ['tcp 0100007F:1F90 -> ... st 0A']."""
    found = {}
    for proto in ("tcp", "tcp6", "udp", "udp6", "unix"):
        try:
            with open("/proc/net/" + proto) as f:
                next(f)
                for line in f:
                    col = line.split()
                    if proto == "unix":
                        ino = col[6] if len(col) > 6 else ""
                        desc = "unix %s" % (col[7] if len(col) > 7 else "(unnamed)")
                    else:
                        ino = col[9]
                        desc = "%s %s -> %s state %s" % (proto, col[1], col[2], col[3])
                    if ino in inodes:
                        found[ino] = desc
        except OSError:
            pass
    return ["fd %s: %s" % (inodes[i], found.get(i, "not in /proc/net")) for i in inodes]


def fd_kinds(pid):
    """What moxy's fds are: 'socket', 'pipe', 'anon_inode:[eventfd]', a file's path -> count."""
    kinds = collections.Counter()
    d = "/proc/%d/fd" % pid
    for fd in os.listdir(d):
        try:
            target = os.readlink(os.path.join(d, fd))
        except OSError:
            continue
        kinds[re.sub(r":\[\d+\]$", "", target)] += 1
    return kinds


def rss_mib(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return 0.0


def wait_idle(timeout):
    """Waits for no client connection and no origin connection (idle HTTP/1.1 or HTTP/2)
    -> seconds waited, or None after timeout.  Then 1 s more without a request, so that
    the admin listener has closed the connection of the last /metrics too."""
    t0 = time.time()
    while time.time() - t0 < timeout:
        m = metrics()
        if (metric_sum(m, "moxy_connections") == 0 and metric_sum(m, "moxy_pool_idle_connections") == 0
                and metric_sum(m, "moxy_pool_h2_connections") == 0):
            waited = time.time() - t0
            time.sleep(1)
            return waited
        time.sleep(0.5)
    return None


def warm_up():
    """One request of every kind, so that lazily made state exists before fds are counted."""
    for path in ("/bytes/1000?rh=Cache-Control:max-age=20&k=w", "/echo/warm", "/echo/warm?via=h2",
                 "/bytes/%d?rh=Cache-Control:max-age=30&k=big" % BIG):
        for port, ctx in ((PORT_HTTP, None), (PORT_TLS, tls_context(["http/1.1"]))):
            c = (http.client.HTTPSConnection("127.0.0.1", port, timeout=30, context=ctx) if ctx
                 else http.client.HTTPConnection("127.0.0.1", port, timeout=30))
            c.request("GET", path, headers={"Host": "soak.test"})
            r = c.getresponse()
            r.read()
            c.close()
            if r.status != 200:
                raise RuntimeError("warm-up: %s -> %d" % (path, r.status))
    c = H2Client()
    for s in c.batch(["/echo/warm-h2", "/bytes/1000?rh=Cache-Control:max-age=20&k=w"]):
        if s["status"] != 200:
            raise RuntimeError("warm-up h2: %s -> %s" % (s["path"], s["status"]))
    c.close()


# ---------------------------------------------------------------- main

def main():
    os.makedirs(OUT, exist_ok=True)
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                    "-nodes", "-keyout", os.path.join(OUT, "soak.key"), "-out", os.path.join(OUT, "soak.pem"),
                    "-days", "30", "-subj", "/CN=soak.test", "-addext", "subjectAltName=DNS:soak.test"],
                   check=True, capture_output=True)
    for which in ("a", "b"):
        with open(os.path.join(OUT, "soak-%s.lua" % which), "w") as f:
            f.write(SCRIPT % {"which": which})
    conf = write_config("a")

    origin_log = open(os.path.join(OUT, "origin.log"), "w")
    origins = [Origin("origin.py", PORT_ORIGIN, origin_log),
               Origin("h2origin.py", PORT_H2ORIGIN, origin_log)]
    for o in origins:
        o.start()
    moxy_err = open(os.path.join(OUT, "moxy.stderr"), "w")
    moxy = spawn([MOXY, "-c", conf], cwd=OUT, stdout=moxy_err, stderr=subprocess.STDOUT)
    pid = moxy.pid
    for _ in range(100):
        try:
            metrics()
            with socket.create_connection(("127.0.0.1", PORT_TLS), timeout=1):
                pass
            break
        except OSError:
            if moxy.poll() is not None:
                sys.exit("soak: moxy exited at start (%s); see %s/moxy.stderr" % (moxy.returncode, OUT))
            time.sleep(0.1)

    warm_up()
    idle_before = wait_idle(60)
    fd_before = fd_count(pid)
    kinds_before = fd_kinds(pid)
    inodes_before = socket_inodes(pid)
    rss = [(0.0, rss_mib(pid))]
    m0 = metrics()
    fds = [(0.0, fd_before)]

    threads = [threading.Thread(target=http_client, args=("h1", i)) for i in range(N_H1)]
    threads += [threading.Thread(target=http_client, args=("tls", 100 + i)) for i in range(N_TLS)]
    threads += [threading.Thread(target=h2_client, args=(200 + i,)) for i in range(N_H2)]
    threads += [threading.Thread(target=f) for f in (slow_head_client, slow_read_client, reset_client)]
    t0 = time.time()
    for t in threads:
        t.start()

    reloads, which = 0, "a"
    windows = []        # (killed at, back + grace), relative to t0
    origin_restarts = 0
    if SOAK_S < 2 * ORIGIN_S:
        origin_at = [SOAK_S / 2]
    else:
        origin_at = [ORIGIN_S * k for k in range(1, int(SOAK_S // ORIGIN_S)) if ORIGIN_S * k < SOAK_S]
    next_reload, next_sample = RELOAD_S, 5.0
    crashed = None
    while True:
        now = time.time() - t0
        if now >= SOAK_S:
            break
        if moxy.poll() is not None:
            crashed = "moxy exited with %s at %.1f s" % (moxy.returncode, now)
            break
        if now >= next_reload:
            which = "b" if which == "a" else "a"
            write_config(which)
            os.kill(pid, signal.SIGHUP)
            reloads += 1
            next_reload += RELOAD_S
        if origin_at and now >= origin_at[0]:
            origin_at.pop(0)
            killed = time.time() - t0
            for o in origins:
                o.kill()
            time.sleep(1)
            for o in origins:
                o.start()
            origin_restarts += 1
            windows.append((killed, time.time() - t0 + ORIGIN_GRACE_S))
        if now >= next_sample:
            rss.append((now, rss_mib(pid)))
            fds.append((now, fd_count(pid)))
            next_sample += 5
        time.sleep(0.1)

    STOP.set()
    load_s = time.time() - t0
    stuck = []
    for t in threads:
        t.join(60)
        if t.is_alive():
            stuck.append(t.name)

    alive = moxy.poll() is None
    idle_after = wait_idle(120) if alive else None
    fd_after = fd_count(pid) if alive else None
    kinds_after = fd_kinds(pid) if alive else collections.Counter()
    new_sockets = []
    if alive:
        after = socket_inodes(pid)
        new_sockets = describe_sockets({i: fd for i, fd in after.items() if i not in inodes_before})
    rss_end = rss_mib(pid) if alive else None
    m1 = metrics() if alive else {}
    shared_count = None
    if alive:
        try:
            with urllib.request.urlopen("http://127.0.0.1:%d/__soak/count" % PORT_HTTP, timeout=10) as r:
                shared_count = int(r.read())
        except Exception:  # noqa: BLE001 -- reported as a failed check
            pass
        moxy.send_signal(signal.SIGTERM)
        try:
            exit_code = moxy.wait(30)
        except subprocess.TimeoutExpired:
            moxy.kill()
            exit_code = "killed after 30 s"
    else:
        exit_code = moxy.returncode
    for o in origins:
        o.kill()
    moxy_err.close()
    origin_log.close()

    # ------------------------------------------------------------ classify
    stderr_text = ""
    for name in ("moxy.stderr", "error.log"):
        try:
            with open(os.path.join(OUT, name), errors="replace") as f:
                stderr_text += f.read()
        except OSError:
            pass

    # What moxy logged about each answer it made itself ("rid=R GET PATH from IP: STATUS:
    # reason") and, when there is one, the hook's error logged before it under the same
    # rid ("rid=R on_request: file:line: message").
    hook_error = {}
    for rid, msg in re.findall(r"rid=(\w+) (on_\w+: .*)", stderr_text):
        hook_error.setdefault(rid, msg)
    moxy_said = collections.defaultdict(list)
    for rid, path, status, reason in re.findall(
            r"rid=(\w+) [A-Z]+ (\S+) from \S+: (\d+): (.*)", stderr_text):
        if rid in hook_error:
            reason = "%s (%s)" % (reason, hook_error[rid])
            if "CPU budget" in reason:
                reason += " [lua.cpu_budget is wall-clock time: the worker was not running]"
        moxy_said[(path, int(status))].append(reason)

    def in_window(t):
        rel = t - t0
        return any(a <= rel <= b for a, b in windows)

    explained = collections.Counter()
    outside = collections.Counter()     # failures outside the windows, by moxy's reason
    unexplained = []
    for t, kind, outcome, detail in TALLY.bad:
        if outcome == "reset_by_client":
            explained["our reset client's RST after 64 KiB (intended)"] += 1
        elif in_window(t) and (outcome in (502, 503, 504) or isinstance(outcome, str)):
            explained["origin restart window: %s (origins down: connect refused)" % outcome] += 1
        else:
            said = moxy_said.get((detail, outcome)) if isinstance(outcome, int) else None
            why = said.pop(0) if said else "no reason in moxy's log"
            outside["%s %s: %s" % (kind, outcome, why)] += 1
            unexplained.append((round(t - t0, 2), kind, outcome, detail[:200], why))

    sanitizer = [mark for mark in SANITIZER_MARKS if mark in stderr_text]
    err_lines = collections.Counter()
    for line in stderr_text.splitlines():
        msg = re.sub(r"^\S+ \S+ ", "", line)                 # timestamp
        msg = re.sub(r"\b[0-9a-f]{8,}\b|\b\d+\b", "N", msg)  # ids, numbers
        err_lines[msg[:160]] += 1

    rss_start = rss[0][1]
    rss_max = max(v for _, v in rss + ([(0, rss_end)] if rss_end else []))
    rss_bound = rss_start + CACHE_MIB + RSS_SLACK_MIB
    reloads_ok = metric_sum(m1, 'moxy_reloads_total{result="ok"}') - metric_sum(m0, 'moxy_reloads_total{result="ok"}')
    reloads_failed = (metric_sum(m1, "moxy_reloads_total") - metric_sum(m0, "moxy_reloads_total")) - reloads_ok
    total_2xx = sum(c.get("2xx", 0) for c in TALLY.by_kind.values())

    checks = [
        ("moxy alive until the end with PID %d" % pid, alive and crashed is None, crashed or ""),
        ("no sanitizer report in moxy's stderr / error log", not sanitizer, ", ".join(sanitizer)),
        ("every client thread finished", not stuck, ", ".join(stuck)),
        ("connections back to 0 after the load", idle_after is not None,
         "waited %.1f s" % idle_after if idle_after is not None else "still open after 120 s"),
        ("fds after (%s) <= fds before (%d) + %d" % (fd_after, fd_before, FD_SLACK),
         fd_after is not None and fd_after <= fd_before + FD_SLACK, ""),
        ("RSS at the end (%s MiB) <= start %.1f + cache %d + %d = %.1f MiB"
         % ("%.1f" % rss_end if rss_end else "-", rss_start, CACHE_MIB, RSS_SLACK_MIB, rss_bound),
         rss_end is not None and rss_end <= rss_bound, ""),
        ("no 5xx or failed request outside the origin-restart windows (listed above with moxy's reason)",
         not unexplained, "%d outside" % len(unexplained)),
        ("every non-2xx in a category: the reset client's, an origin window's, or one moxy logged",
         not any(u[4] == "no reason in moxy's log" for u in unexplained), ""),
        ("every reload succeeded (%d SIGHUPs, %d ok, %d failed)" % (reloads, reloads_ok, reloads_failed),
         reloads_failed == 0 and reloads_ok >= 1, ""),
        ("both configurations served (X-Soak-Config on misses: %s)" % dict(TALLY.config_seen),
         TALLY.config_seen.get("a", 0) > 0 and TALLY.config_seen.get("b", 0) > 0 or reloads == 0, ""),
        ("moxy.shared counter (%s) >= 2xx answers seen (%d)" % (shared_count, total_2xx),
         shared_count is not None and shared_count >= total_2xx, ""),
        ("moxy exited 0 on SIGTERM at the end", exit_code == 0, str(exit_code)),
    ]
    ok = all(c[1] for c in checks)

    L = []
    L.append("moxy soak: %s, %.0f s of load (SOAK_S=%g), results in %s" % (MOXY, load_s, SOAK_S, OUT))
    L.append("clients: h1 %d, tls %d, h2 %d (x4 streams), %g req/s each; slowhead, slowread, reset 1 each"
             % (N_H1, N_TLS, N_H2, RATE))
    L.append("")
    L.append("requests by client kind (status class or error):")
    for kind in ("h1", "tls", "h2", "slowhead", "slowread", "reset", "h2reset"):
        c = TALLY.by_kind.get(kind, {})
        L.append("  %-9s %7d  %s" % (kind, sum(c.values()), ", ".join("%s %d" % kv for kv in sorted(c.items()))))
    L.append("reloads: %d SIGHUPs, moxy_reloads_total ok +%d, failed +%d" % (reloads, reloads_ok, reloads_failed))
    L.append("origin restarts: %d, windows (s from start): %s"
             % (origin_restarts, ", ".join("%.1f-%.1f" % w for w in windows) or "none"))
    L.append("Lua: budget kills +%d, errors +%d (moxy_lua_budget_kills_total, moxy_lua_errors_total)" % tuple(
        metric_sum(m1, n) - metric_sum(m0, n) for n in ("moxy_lua_budget_kills_total", "moxy_lua_errors_total")))
    L.append("cache: hits +%d, misses +%d, stores +%d (moxy_cache_*_total)" % tuple(
        metric_sum(m1, n) - metric_sum(m0, n) for n in
        ("moxy_cache_hits_total", "moxy_cache_misses_total", "moxy_cache_stores_total")))
    L.append("fds: before %d (idle after warm-up, waited %.1f s), after %s; samples %s"
             % (fd_before, idle_before or -1, fd_after, " ".join(str(v) for _, v in fds)))
    half = [(t, v) for t, v in rss if t >= load_s / 2]
    slope = ((half[-1][1] - half[0][1]) / (half[-1][0] - half[0][0]) * 60
             if len(half) > 1 and half[-1][0] > half[0][0] else 0.0)
    fd_diff = {k: kinds_after[k] - kinds_before[k] for k in set(kinds_before) | set(kinds_after)
               if kinds_after[k] != kinds_before[k]}
    L.append("fds by kind before: %s; changed after: %s"
             % (", ".join("%s %d" % kv for kv in sorted(kinds_before.items())), fd_diff or "none"))
    if new_sockets:
        L.append("sockets open after that were not before (hex addr:port, tcp state 01 established, 0A listen):")
        L.extend("  " + x for x in new_sockets)
    L.append("RSS MiB: start %.1f, max %.1f, end %s; over the second half %+.2f MiB/min; samples %s"
             % (rss_start, rss_max, "%.1f" % rss_end if rss_end else "-", slope,
                " ".join("%.0f" % v for _, v in rss)))
    L.append("")
    L.append("non-2xx outcomes, explained:")
    for k, v in sorted(explained.items()):
        L.append("  %6d  %s" % (v, k))
    L.append("non-2xx outside the origin windows: %d, by the reason moxy logged:" % len(unexplained))
    for k, v in sorted(outside.items()):
        L.append("  %6d  %s" % (v, k))
    for u in unexplained[:30]:
        L.append("  t=%.2f %s %s %s (%s)" % u)
    L.append("")
    L.append("moxy's stderr + error log, by message (numbers as N), top 15:")
    for msg, n in err_lines.most_common(15):
        L.append("  %6d  %s" % (n, msg))
    L.append("")
    for name, passed, why in checks:
        L.append("%s  %s%s" % ("PASS" if passed else "FAIL", name, "  (%s)" % why if why else ""))
    L.append("")
    L.append("soak: %s" % ("PASS" if ok else "FAIL"))
    report = "\n".join(L)
    print(report)
    with open(os.path.join(OUT, "report.txt"), "w") as f:
        f.write(report + "\n")
    with open(os.path.join(OUT, "report.json"), "w") as f:
        json.dump({"pass": ok, "load_s": load_s, "by_kind": TALLY.by_kind, "explained": explained,
                   "outside_windows": unexplained, "reloads": reloads, "reloads_ok": reloads_ok,
                   "origin_restarts": origin_restarts, "windows": windows, "fd_before": fd_before,
                   "fd_after": fd_after, "fd_kinds_before": kinds_before, "fd_kinds_after": kinds_after, "rss_mib": rss, "rss_end": rss_end, "rss_bound": rss_bound,
                   "checks": [{"check": c[0], "pass": c[1], "why": c[2]} for c in checks]},
                  f, indent=1)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    try:
        main()
    finally:
        STOP.set()
        kill_children()
