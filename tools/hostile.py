#!/usr/bin/python3
"""hostile.py -- moxy against hostile clients, with figures: normal clients'
latency quiet and under each attack, moxy's memory, what the attackers got.

    /usr/bin/python3 tools/hostile.py            (full sizes; `make soak` runs it)
    HOSTILE_SHORT=1 /usr/bin/python3 tools/hostile.py   (spec 65's short version)

Starts, on loopback, an origin (spec/support/origin.py) and one moxy (MOXY_BIN,
default ./moxy; 2 workers, a plain listener with HTTP/2 prior knowledge, a TLS
listener, limits.buffer_memory HOSTILE_BUDGET, the admin listener), then runs:

  quiet       the probe alone: GET /bytes/1024 on a new connection, 4 clients
  slowloris   SLOWLORIS connections (full 10,000, short 300) from 100 (short
              3) loopback addresses, each sending a request head one byte every
              SLOW_INTERVAL s and reconnecting when moxy closes it
  readers     READERS HTTP/1.1 clients asking for 4 MiB with a 4 KiB receive
              buffer, reading nothing while the probe runs, then everything
  h2readers   H2READERS HTTP/2 connections of 16 streams of 2 MiB each, windows
              of 0 while the probe runs, then opened
  resets      clients that reset (TCP RST) mid-download and mid-upload, and
              HTTP/2 streams cancelled mid-body
  tlsidle     TLSIDLE connections to the TLS listener that send nothing or half
              a ClientHello

while the probe runs alongside (its latencies per phase).  Checks, each a
failure of the run: no probe request failed; moxy's buffers stayed under
limits.buffer_memory + 64 KiB per attacking connection or stream + 1 MiB
(moxy_buffer_memory_bytes, sampled); every reader got every byte, in order; slowloris and idle TLS
connections were closed by moxy within timeouts.client_header + 2 s (p90, as the
attacker's loop saw it); after each
attack moxy's connections, buffers and descriptors are back to where they were;
the error log has one line per crossing of the budget (not per connection); in
full mode, the probe's p99 under each attack within HOSTILE_P99_RATIO (2) of
quiet.  Prints the report and writes report.json to HOSTILE_OUT.  Exit 0: pass.
"""

import json
import multiprocessing
import os
import random
import re
import resource
import selectors
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
import h2.settings

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def env_num(name, default):
    v = os.environ.get(name, "")
    return float(v) if v else default


SHORT = os.environ.get("HOSTILE_SHORT", "") not in ("", "0")
MOXY = os.environ.get("MOXY_BIN") or os.path.join(ROOT, "moxy")
OUT = os.environ.get("HOSTILE_OUT") or time.strftime("/tmp/moxy-hostile-%Y%m%d-%H%M%S")
SLOWLORIS = int(env_num("SLOWLORIS", 300 if SHORT else 10000))
SOURCES = 3 if SHORT else 100
READERS = int(env_num("READERS", 40 if SHORT else 400))
H2READERS = int(env_num("H2READERS", 4 if SHORT else 40))
TLSIDLE = int(env_num("TLSIDLE", 100 if SHORT else 2000))
HEADER_S = env_num("HEADER_S", 3 if SHORT else 10)      # timeouts.client_header
SLOW_INTERVAL = env_num("SLOW_INTERVAL", 1 if SHORT else 3)
PHASE_S = env_num("PHASE_S", 4 if SHORT else 20)        # probe time per phase
HOLD_S = env_num("HOLD_S", 2 if SHORT else 5)          # an attack's start before the probe
BUDGET_MIB = env_num("HOSTILE_BUDGET_MIB", 16 if SHORT else 64)
P99_RATIO = env_num("HOSTILE_P99_RATIO", 0 if SHORT else 2)
# Over the budget a connection (an HTTP/2 stream) adds at most a tight high
# watermark and a read (16 + 16 KiB) to what it held; the count itself is
# exact to 64 KiB per thread.
PER_CONN_SLACK = 64 * 1024
COUNT_SLACK = 1 << 20
READ_BYTES = 4 << 20
H2_BYTES = 2 << 20
H2_STREAMS = 16

SANITIZER_MARKS = ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "runtime error:")


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


PORT_HTTP, PORT_TLS, PORT_ADMIN = free_port(), free_port(), free_port()
CHILDREN = []
FAILS = []


def fail(msg):
    FAILS.append(msg)
    print("FAIL: " + msg, flush=True)


# --- the pattern origin.py sends: byte i of a body is i % 251 ---

PAT_MOD = 251
PAT = bytes(i % PAT_MOD for i in range(PAT_MOD * 2))


def pattern(n, off=0):
    out = bytearray()
    while len(out) < n:
        o = (off + len(out)) % PAT_MOD
        k = min(PAT_MOD, n - len(out))
        out += PAT[o:o + k]
    return bytes(out)


# --- moxy and its origin ---

CONFIG = """return {
  workers = 2,
  pid_file = false,
  listen = {
    { addr = "127.0.0.1:%(http)d", http2 = true },
    { addr = "127.0.0.1:%(tls)d", tls = { certificates = { { cert = "h.pem", key = "h.key" } } } },
  },
  upstreams = { origin = { servers = { "127.0.0.1:%(origin)d" }, keepalive = 64 },
                probe = { servers = { "127.0.0.1:%(probe)d" } } },
  default_upstream = "origin",
  scripts = { "route.lua" },
  admin = { listen = "127.0.0.1:%(admin)d" },
  limits = { buffer_memory = "%(budget)dm", connections = 20000 },
  timeouts = { client_header = %(header)s },
  log = { error = "error.log", level = "warn" },
}
"""


ROUTE = """-- the probe has an origin of its own: what it measures is moxy, not a busy origin
return {
  on_upstream = function(txn)
    if txn.req.headers:get("host") == "probe" then return "probe" end
  end,
}
"""


def start_origin():
    origin = subprocess.Popen(["/usr/bin/python3", os.path.join(ROOT, "spec/support/origin.py"), "0"],
                              stdout=subprocess.PIPE, stderr=open(os.path.join(OUT, "origin.log"), "a"), text=True)
    CHILDREN.append(origin)
    return int(origin.stdout.readline().split()[1])


def start():
    os.makedirs(OUT, exist_ok=True)
    with open(os.path.join(OUT, "route.lua"), "w") as f:
        f.write(ROUTE)
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                    "-nodes", "-keyout", "h.key", "-out", "h.pem", "-days", "2", "-subj", "/CN=h.test"],
                   cwd=OUT, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    oport, pport = start_origin(), start_origin()
    with open(os.path.join(OUT, "moxy.lua"), "w") as f:
        f.write(CONFIG % {"http": PORT_HTTP, "tls": PORT_TLS, "origin": oport, "probe": pport, "admin": PORT_ADMIN,
                          "budget": BUDGET_MIB, "header": HEADER_S})
    m = subprocess.Popen([MOXY, "-c", "moxy.lua"], cwd=OUT, stdout=subprocess.DEVNULL,
                         stderr=open(os.path.join(OUT, "stderr.log"), "w"))
    CHILDREN.append(m)
    deadline = time.time() + 20
    while time.time() < deadline:
        try:
            admin_get("/metrics")
            return m
        except OSError:
            time.sleep(0.1)
    raise RuntimeError("moxy did not start: see %s/stderr.log" % OUT)


def admin_get(path):
    with urllib.request.urlopen("http://127.0.0.1:%d%s" % (PORT_ADMIN, path), timeout=10) as r:
        return r.read().decode()


def metric(name):
    m = re.search(r"^%s (\S+)$" % re.escape(name), admin_get("/metrics"), re.M)
    return float(m.group(1)) if m else 0.0


def metric_sum(name):
    return sum(float(v) for v in re.findall(r"^%s(?:\{[^}]*\})? (\S+)$" % re.escape(name), admin_get("/metrics"), re.M))


def rss_mib(pid):
    with open("/proc/%d/status" % pid) as f:
        return int(re.search(r"VmRSS:\s+(\d+)", f.read()).group(1)) / 1024


def fd_count(pid):
    return len(os.listdir("/proc/%d/fd" % pid))


def error_log():
    try:
        with open(os.path.join(OUT, "error.log")) as f:
            return f.read()
    except OSError:
        return ""


# --- the probe: what a normal client sees ---

class Probe:
    """The probe's clients in a process of their own: the attacks' Python
    loops (the same interpreter lock otherwise) cannot make it slow."""

    def __init__(self, clients=4):
        self.clients = clients
        self.lat, self.fails, self.errors = [], 0, []
        self.stop = threading.Event()

    def run(self):
        while not self.stop.is_set():
            t0 = time.monotonic()
            try:
                s = socket.create_connection(("127.0.0.1", PORT_HTTP), timeout=10)
                s.sendall(b"GET /bytes/1024 HTTP/1.1\r\nHost: probe\r\nConnection: close\r\n\r\n")
                data = b""
                while True:
                    b = s.recv(65536)
                    if not b:
                        break
                    data += b
                s.close()
                if not data.startswith(b"HTTP/1.1 200") or not data.endswith(pattern(1024)):
                    raise ValueError("bad answer: %r" % data[:40])
                self.lat.append(time.monotonic() - t0)
            except Exception as e:  # noqa: BLE001 -- every failure counts
                self.fails += 1
                if len(self.errors) < 5:
                    self.errors.append(repr(e))
            time.sleep(0.02)

    def child(self, seconds, conn):
        threads = [threading.Thread(target=self.run, daemon=True) for _ in range(self.clients)]
        for t in threads:
            t.start()
        time.sleep(seconds)
        self.stop.set()
        for t in threads:
            t.join(15)
        conn.send((self.lat, self.fails, self.errors))
        conn.close()

    def measure(self, seconds):
        """Runs the probe for seconds in a child process; its figures."""
        ctx = multiprocessing.get_context("fork")
        parent, child = ctx.Pipe()
        p = ctx.Process(target=self.child, args=(seconds, child), daemon=True)
        p.start()
        if parent.poll(seconds + 60):
            self.lat, self.fails, self.errors = parent.recv()
        else:
            self.fails, self.errors = 1, ["the probe process gave no figures"]
        p.join(10)
        return self.figures()

    def figures(self):
        lat = sorted(self.lat)
        q = (lambda p: round(lat[min(len(lat) - 1, int(p * len(lat)))] * 1000, 2)) if lat else (lambda p: None)
        return {"requests": len(lat) + self.fails, "failed": self.fails, "errors": self.errors,
                "p50_ms": q(0.50), "p99_ms": q(0.99)}


class Sampler(threading.Thread):
    """moxy's RSS and buffer bytes, every 0.2 s."""

    def __init__(self, pid):
        super().__init__(daemon=True)
        self.pid, self.stop, self.rss, self.buf = pid, threading.Event(), 0.0, 0.0

    def run(self):
        while not self.stop.is_set():
            try:
                self.rss = max(self.rss, rss_mib(self.pid))
                self.buf = max(self.buf, metric("moxy_buffer_memory_bytes"))
            except OSError:
                pass
            self.stop.wait(0.2)


# --- the attacks; each runs in a thread until stop, and says what it saw ---

def lifetime_figures(lifetimes):
    """How long moxy let the connections live, as the attacker's loop saw it
    (its own lag included: with 10,000 sockets, a Python loop notices a close
    late): p50, p90, max."""
    lt = sorted(lifetimes)
    if not lt:
        return {"lifetime_p50_s": None, "lifetime_p90_s": None, "lifetime_max_s": None}
    return {"lifetime_p50_s": round(lt[len(lt) // 2], 2), "lifetime_p90_s": round(lt[int(len(lt) * 0.9)], 2),
            "lifetime_max_s": round(lt[-1], 2)}


def slowloris(stop, out):
    sel = selectors.DefaultSelector()
    conns = {}   # sock -> [opened, next byte at, bytes sent]
    head = b"GET / HTTP/1.1\r\nHost: slow\r\nX-Slow: " + b"a" * 100000
    opened = closed = answered_408 = 0
    lifetimes = []
    srcs = ["127.0.3.%d" % (i + 1) for i in range(SOURCES)]

    def open_one(i):
        nonlocal opened
        s = socket.socket()
        s.setblocking(False)
        s.bind((srcs[i % len(srcs)], 0))
        try:
            s.connect(("127.0.0.1", PORT_HTTP))
        except BlockingIOError:
            pass
        now = time.monotonic()
        conns[s] = [now, now + random.random() * SLOW_INTERVAL, 0]
        sel.register(s, selectors.EVENT_READ)
        opened += 1

    for i in range(SLOWLORIS):
        open_one(i)
    out["target"] = SLOWLORIS
    n = 0
    while not stop.is_set():
        now = time.monotonic()
        for key, _ in sel.select(0.05):
            s = key.fileobj
            try:
                b = s.recv(4096)
            except OSError:
                b = b""
            if b.startswith(b"HTTP/1.1 408"):
                answered_408 += 1
            if not b or b.startswith(b"HTTP/"):
                lifetimes.append(now - conns[s][0])
                sel.unregister(s)
                s.close()
                del conns[s]
                closed += 1
                n += 1
                open_one(n)   # the attacker comes back
        for s, st in list(conns.items())[:2000]:
            if st[1] <= now:
                try:
                    s.send(head[st[2]:st[2] + 1])
                    st[2] += 1
                except OSError:
                    pass
                st[1] = now + SLOW_INTERVAL
        out["held_now"] = len(conns)
    for s in list(conns):
        s.close()
    lifetimes.sort()
    out.update(opened=opened, closed_by_moxy=closed, answered_408=answered_408, **lifetime_figures(lifetimes))


def wait_steady(stop, limit_s=60):
    """Until moxy's buffers stop growing (the origin has pushed what the attack
    lets it: the steady state the probe is to measure), at most limit_s."""
    deadline = time.monotonic() + limit_s
    last = -1.0
    while time.monotonic() < deadline and not stop.is_set():
        now = metric("moxy_buffer_memory_bytes")
        if last >= 0 and abs(now - last) < (1 << 20):
            return
        last = now
        stop.wait(1.0)


def readers(stop, out):
    socks = []
    for _ in range(READERS):
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.connect(("127.0.0.1", PORT_HTTP))
        s.sendall(b"GET /bytes/%d HTTP/1.1\r\nHost: r\r\nConnection: close\r\n\r\n" % READ_BYTES)
        socks.append(s)
    wait_steady(stop)
    out["ready"].set()
    stop.wait()   # held while the probe runs
    out["over_while_held"] = metric("moxy_buffer_memory_over")
    sel = selectors.DefaultSelector()
    got = {}
    for s in socks:
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ)
        got[s] = bytearray()
    deadline = time.monotonic() + 120
    while sel.get_map() and time.monotonic() < deadline:
        for key, _ in sel.select(0.5):
            try:
                b = key.fileobj.recv(1 << 20)
            except BlockingIOError:
                continue
            if not b:
                sel.unregister(key.fileobj)
            else:
                got[key.fileobj] += b
    want = pattern(READ_BYTES)
    ok = 0
    for s, data in got.items():
        body = bytes(data).partition(b"\r\n\r\n")[2]
        ok += body == want
        s.close()
    out.update(clients=READERS, complete=ok, bytes_each=READ_BYTES)


def h2readers(stop, out):
    conns = []
    for _ in range(H2READERS):
        s = socket.create_connection(("127.0.0.1", PORT_HTTP), timeout=30)
        c = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        c.local_settings = h2.settings.Settings(client=True, initial_values={
            h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 0})
        c.initiate_connection()
        c.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 0})
        ids = []
        for _ in range(H2_STREAMS):
            sid = c.get_next_available_stream_id()
            c.send_headers(sid, [(":method", "GET"), (":path", "/bytes/%d" % H2_BYTES), (":scheme", "http"),
                                 (":authority", "h2r")], end_stream=True)
            ids.append(sid)
        s.sendall(c.data_to_send())
        conns.append((s, c, {i: bytearray() for i in ids}, set()))
    wait_steady(stop)
    out["ready"].set()
    stop.wait()   # held while the probe runs
    out["over_while_held"] = metric("moxy_buffer_memory_over")
    deadline = time.monotonic() + 120
    for s, c, bodies, ended in conns:   # open the windows: each connection read whole, one after another
        for sid in bodies:
            c.increment_flow_control_window(1 << 30, stream_id=sid)
        c.increment_flow_control_window(1 << 30)
        s.sendall(c.data_to_send())
        while len(ended) < len(bodies) and time.monotonic() < deadline:
            data = s.recv(1 << 20)
            if not data:
                break
            for ev in c.receive_data(data):
                if isinstance(ev, h2.events.DataReceived):
                    bodies[ev.stream_id] += ev.data
                    c.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                elif isinstance(ev, (h2.events.StreamEnded, h2.events.StreamReset)):
                    ended.add(ev.stream_id)
            pending = c.data_to_send()
            if pending:
                s.sendall(pending)
    want = pattern(H2_BYTES)
    ok = sum(bytes(b) == want for _, _, bodies, _ in conns for b in bodies.values())
    for s, *_ in conns:
        s.close()
    out.update(streams=H2READERS * H2_STREAMS, complete=ok, bytes_each=H2_BYTES)


def rst_close(s):
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    s.close()


def resets(stop, out):
    n = {"download": 0, "upload": 0, "h2_cancel": 0}
    while not stop.wait(0.05):   # 20 rounds a second at most: an attack, not a CPU hog on this machine
        s = socket.create_connection(("127.0.0.1", PORT_HTTP), timeout=10)
        s.sendall(b"GET /bytes/%d HTTP/1.1\r\nHost: x\r\n\r\n" % (8 << 20))
        got = 0
        while got < 256 * 1024:
            b = s.recv(65536)
            if not b:
                break
            got += len(b)
        rst_close(s)
        n["download"] += 1
        s = socket.create_connection(("127.0.0.1", PORT_HTTP), timeout=10)
        s.sendall(b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % (8 << 20))
        s.sendall(b"u" * (1 << 20))
        rst_close(s)
        n["upload"] += 1
        s = socket.create_connection(("127.0.0.1", PORT_HTTP), timeout=10)
        c = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        c.initiate_connection()
        for _ in range(8):
            c.send_headers(c.get_next_available_stream_id(), [(":method", "GET"), (":path", "/bytes/%d" % (4 << 20)),
                                                              (":scheme", "http"), (":authority", "x")], end_stream=True)
        s.sendall(c.data_to_send())
        seen = set()
        while len(seen) < 8:
            data = s.recv(65536)
            if not data:
                break
            for ev in c.receive_data(data):
                if isinstance(ev, h2.events.DataReceived):
                    c.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                    if ev.stream_id not in seen:
                        seen.add(ev.stream_id)
                        c.reset_stream(ev.stream_id, 8)
            s.sendall(c.data_to_send())
        n["h2_cancel"] += len(seen)
        rst_close(s)
    out.update(n)


def tlsidle(stop, out):
    half = b"\x16\x03\x01\x02\x00" + b"\x01\x00\x01\xfc\x03\x03" + b"\x07" * 32
    sel = selectors.DefaultSelector()
    opened = closed = 0
    lifetimes = []

    def open_one(i):
        nonlocal opened
        s = socket.socket()
        s.bind(("127.0.4.%d" % (i % SOURCES + 1), 0))
        s.connect(("127.0.0.1", PORT_TLS))
        if i % 2:
            s.sendall(half)
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ, time.monotonic())
        opened += 1

    for i in range(TLSIDLE):
        open_one(i)
    i = TLSIDLE
    while not stop.is_set():
        for key, _ in sel.select(0.1):
            try:
                b = key.fileobj.recv(4096)
            except OSError:
                b = b""
            if not b:
                lifetimes.append(time.monotonic() - key.data)
                sel.unregister(key.fileobj)
                key.fileobj.close()
                closed += 1
                i += 1
                open_one(i)
    for key in list(sel.get_map().values()):
        key.fileobj.close()
    out.update(opened=opened, closed_by_moxy=closed, **lifetime_figures(lifetimes))


# --- the run ---

def settle(base_conns, timeout=15):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if metric("moxy_connections") <= base_conns and metric("moxy_buffer_memory_over") == 0:
            return True
        time.sleep(0.2)
    return False


def phase(name, attack, pid, report, attackers):
    out = {"ready": threading.Event()}
    stop = threading.Event()
    sampler = Sampler(pid)
    sampler.start()
    t = threading.Thread(target=attack, args=(stop, out), daemon=True) if attack else None
    if t:
        t.start()
        time.sleep(HOLD_S)
        if name in ("readers", "h2readers"):   # their responses pushed as far as they go
            out["ready"].wait(90)
    fig = Probe().measure(PHASE_S)
    stop.set()
    if t:
        t.join(180)
    sampler.stop.set()
    sampler.join()
    out.pop("ready")
    fig.update(attack=out, rss_max_mib=round(sampler.rss, 1), buffers_max_mib=round(sampler.buf / 2**20, 2))
    report[name] = fig
    print("%-10s probe %d requests, %d failed, p50 %s ms, p99 %s ms; rss max %.1f MiB, buffers max %.2f MiB; %s"
          % (name, fig["requests"], fig["failed"], fig["p50_ms"], fig["p99_ms"], sampler.rss, sampler.buf / 2**20,
             json.dumps(out)), flush=True)
    if fig["failed"]:
        fail("%s: %d probe requests failed: %s" % (name, fig["failed"], fig["errors"]))
    bound = BUDGET_MIB * 2**20 + attackers * PER_CONN_SLACK + COUNT_SLACK
    if attackers and sampler.buf > bound:
        fail("%s: buffers held %.1f MiB, over the bound %.1f MiB" % (name, sampler.buf / 2**20, bound / 2**20))
    return fig


def main():
    lim = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = SLOWLORIS + TLSIDLE + 4096
    if lim[0] < min(need, lim[1]):
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(need, lim[1]), lim[1]))
    if resource.getrlimit(resource.RLIMIT_NOFILE)[0] < need:
        fail("RLIMIT_NOFILE %d is less than the %d descriptors the run needs" % (lim[1], need))
        return 1
    m = start()
    report = {"short": SHORT, "budget_mib": BUDGET_MIB, "client_header_s": HEADER_S}
    time.sleep(0.5)
    base = {"conns": metric("moxy_connections"), "fds": fd_count(m.pid), "rss": rss_mib(m.pid)}
    report["start"] = base
    quiet = phase("quiet", None, m.pid, report, 0)
    phases = (("slowloris", slowloris, SLOWLORIS), ("readers", readers, READERS),
              ("h2readers", h2readers, H2READERS * (H2_STREAMS + 1)), ("resets", resets, 16), ("tlsidle", tlsidle, TLSIDLE))
    only = os.environ.get("HOSTILE_PHASES", "").split(",") if os.environ.get("HOSTILE_PHASES") else None
    for name, attack, n in phases:
        if only and name not in only:
            continue
        fig = phase(name, attack, m.pid, report, n)
        a = fig["attack"]
        if not settle(base["conns"]):
            fail("%s: moxy still holds %d connections / buffers over budget after the attack"
                 % (name, metric("moxy_connections")))
        fig["after"] = {"conns": metric("moxy_connections"), "fds": fd_count(m.pid),
                        "buffers_mib": round(metric("moxy_buffer_memory_bytes") / 2**20, 2)}
        # idle keep-alive connections to the origin stay (upstreams.origin.keepalive)
        idle = metric_sum("moxy_pool_idle_connections")
        fig["after"]["origin_idle"] = idle
        if fig["after"]["fds"] - idle > base["fds"] + 8:
            fail("%s: moxy has %d descriptors open after (%d idle to the origin), %d before"
                 % (name, fig["after"]["fds"], idle, base["fds"]))
        if name in ("slowloris", "tlsidle"):
            if a.get("lifetime_p90_s") is None or a["lifetime_p90_s"] > HEADER_S + 2:
                fail("%s: connections lived %s s (p90; client_header %s s)" % (name, a.get("lifetime_p90_s"), HEADER_S))
        if name in ("readers", "h2readers") and a.get("complete") != (READERS if name == "readers" else H2READERS * H2_STREAMS):
            fail("%s: %s of the responses arrived whole" % (name, a.get("complete")))
        if P99_RATIO and quiet["p99_ms"] and fig["p99_ms"] and fig["p99_ms"] > P99_RATIO * quiet["p99_ms"]:
            fail("%s: probe p99 %.2f ms, over %g x quiet (%.2f ms)" % (name, fig["p99_ms"], P99_RATIO, quiet["p99_ms"]))
        if quiet["p99_ms"] and fig["p99_ms"]:
            fig["p99_vs_quiet"] = round(fig["p99_ms"] / quiet["p99_ms"], 2)
    # the probe alone again: the noise floor of this machine, for reading the ratios
    report["quiet_end"] = Probe().measure(PHASE_S)
    print("quiet_end  probe %d requests, %d failed, p50 %s ms, p99 %s ms" % (
        report["quiet_end"]["requests"], report["quiet_end"]["failed"], report["quiet_end"]["p50_ms"],
        report["quiet_end"]["p99_ms"]), flush=True)
    log = error_log()
    over = len(re.findall(r"over limits\.buffer_memory", log))
    under = len(re.findall(r"under limits\.buffer_memory .* again", log))
    report["budget_log"] = {"over": over, "under": under, "episodes": metric("moxy_buffer_memory_over_total")}
    if (not only or "readers" in only) and over == 0 or over != report["budget_log"]["episodes"] or under != over:
        fail("budget log lines: %d over, %d under, %d episodes counted" % (over, under,
                                                                             report["budget_log"]["episodes"]))
    for mark in SANITIZER_MARKS:
        if mark in log or mark in open(os.path.join(OUT, "stderr.log")).read():
            fail("sanitizer report: " + mark)
    if m.poll() is not None:
        fail("moxy exited: %s" % m.returncode)
    report["end"] = {"fds": fd_count(m.pid), "rss": rss_mib(m.pid)}
    report["failures"] = FAILS
    with open(os.path.join(OUT, "report.json"), "w") as f:
        json.dump(report, f, indent=1)
    print("REPORT " + json.dumps(report), flush=True)
    print("hostile: %s (%s)" % ("PASS" if not FAILS else "FAIL", OUT), flush=True)
    return 0 if not FAILS else 1


if __name__ == "__main__":
    try:
        rc = main()
    finally:
        for p in CHILDREN:
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    p.kill()
    sys.exit(rc)
