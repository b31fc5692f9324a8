#!/usr/bin/env python3
"""h2origin.py -- an HTTP/2 origin server for moxy's integration specs.

    python3 spec/support/h2origin.py PORT [--tls CERT KEY] [--max-streams N]
                                     [--goaway-after N] [--window N]

PORT 0 picks a free port.  Prints "ready PORT" on stdout (flushed) once it
listens on 127.0.0.1:PORT.  Uses the `h2` library (python3-h2) for framing,
HPACK and flow control.

  (no --tls)         cleartext HTTP/2 with prior knowledge: the client sends
                     the connection preface at once (no HTTP/1.1 Upgrade)
  --tls CERT KEY     TLS (PEM files); ALPN offers only "h2", and a connection
                     that did not negotiate h2 is closed after the handshake
  --max-streams N    SETTINGS_MAX_CONCURRENT_STREAMS (default 100).  A stream
                     that would exceed it (a client may open streams before it
                     has seen our SETTINGS) gets RST_STREAM(REFUSED_STREAM)
                     and is not processed
  --window N         SETTINGS_INITIAL_WINDOW_SIZE (default 65535); when N is
                     larger, the connection window is raised to N as well
  --goaway-after N   after the Nth request stream (control paths /stats and
                     /reset-stats not counted) of a connection has been
                     answered completely (END_STREAM sent), send
                     GOAWAY(NO_ERROR, last_stream_id = that stream, or the
                     highest stream answered so far when streams finished
                     out of order); streams with a higher id, open or new, get
                     RST_STREAM(REFUSED_STREAM); the connection is closed once
                     every stream <= that id is finished

One thread per connection does all socket I/O (non-blocking, select); every
request stream runs in a handler thread of its own, so a slow stream never
holds up the others.  The H2Connection is guarded by one lock.  Response
bodies respect the peer's flow-control windows, and received DATA is
acknowledged as it arrives, so uploads of any size work.  A HEAD request gets
the headers of a GET without a body.  Errors are printed to stderr, one line
each; a bad connection never brings the server down.

Paths (the query string may add options):

  /echo[anything]    200, application/json, with content-length: {method, path
                     (the :path as received, query included), authority,
                     scheme, headers [[name, value], ...] (regular fields in
                     order, no pseudo-headers), body_length, body (latin-1,
                     only when <= 65536 bytes), body_sha256, trailers [[name,
                     value], ...] (request trailers), conn (per-connection id,
                     1 for the first accepted connection), stream (stream id)}.
                     ?status=CODE changes the status (204/304: no body);
                     ?cc=VALUE adds cache-control: VALUE
  /bytes/N           N bytes of the pattern (byte i == i % 251), with
                     content-length, streamed under flow control
  /nolength/N        the same bytes without content-length
  /trailers          200 text/plain (no content-length), body "body with
                     trailers\\n", then trailers x-trailer: done, x-checksum: 42
  /slow-headers/S    sleeps S seconds (float), then 200 "slow\\n"
  /slow-body/S       headers (content-length 10), "hello", sleeps S, "world"
  /status/CODE       that status, body "status CODE\\n" (204/304: no body)
  /early-hints       103 with link: </style.css>; rel=preload, then 200
                     "early hints done\\n"
  /refuse            RST_STREAM(REFUSED_STREAM, 7) before any response
                     (/refuse, /reset, /goaway with ?once=KEY: only the first
                     request with that KEY fails; later ones are /echo)
  /reset             RST_STREAM(INTERNAL_ERROR, 2) before any response
  /reset-mid-body    headers (content-length 100), 10 bytes, then
                     RST_STREAM(INTERNAL_ERROR)
  /goaway            GOAWAY(NO_ERROR, last_stream_id = this stream - 2, at
                     least 0) without answering this stream; the connection
                     is closed ~100 ms later (streams <= last_stream_id may
                     still be answered until then)
  /upload            reads the whole request body, 200 JSON {bytes, sha256,
                     pattern_ok (the body is the pattern stream), trailers}
  /stats             200 JSON {connections (accepted so far), streams (request
                     streams so far, /stats and /reset-stats excluded),
                     max_concurrent (highest number of request streams open at
                     once on one connection), per_conn {"conn id": streams},
                     refused (streams refused on arrival, over --max-streams
                     or after a GOAWAY; not in streams or log), log [{conn,
                     stream, method, path, authority}]}
  /reset-stats       clears every counter and the log, answers {}
  anything else      404 "not found\\n"

A stream counts as open (for --max-streams and max_concurrent) from its
HEADERS until the server has sent END_STREAM or RST_STREAM on it, or the
client reset it.  Connection ids are never reused, /reset-stats included.
"""

import argparse
import hashlib
import json
import select
import socket
import ssl
import sys
import threading
import time
import urllib.parse

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings
from hyperframe.frame import GoAwayFrame, SettingsFrame

# h2 moves the connection to CLOSED when the client sends GOAWAY, after which
# nothing can be sent; RFC 9113 6.8 lets the streams already open be answered,
# so keep the server side open (this process only).
_SM = h2.connection.H2ConnectionStateMachine
_SM._transitions[
    (h2.connection.ConnectionState.SERVER_OPEN, h2.connection.ConnectionInputs.RECV_GOAWAY)
] = (None, h2.connection.ConnectionState.SERVER_OPEN)

# byte i of every generated or expected body is i % 251, as in origin.py
PAT_MOD = 251
PAT = bytes(i % PAT_MOD for i in range(PAT_MOD * 1100))  # 276100 bytes
CHUNK = 256 * 1024  # largest pattern slice handed to send_data at once
OUT_LIMIT = 1 << 20  # handlers wait while this much is queued for the socket

CONTROL = ("/stats", "/reset-stats")
NO_ERROR, INTERNAL_ERROR, REFUSED_STREAM = 0, 2, 7

OPTS = None  # parsed command line
TLS_CTX = None


def log(msg):
    try:
        sys.stderr.write("h2origin: %s\n" % msg)
        sys.stderr.flush()
    except Exception:
        pass


class Stats:
    def __init__(self):
        self.lock = threading.Lock()
        self.accepted_total = 0  # never cleared: gives connection ids
        self.clear()

    def clear(self):
        self.connections = 0
        self.streams = 0
        self.max_concurrent = 0
        self.per_conn = {}
        self.refused = 0
        self.log = []

    def snapshot(self):
        with self.lock:
            return {
                "connections": self.connections,
                "streams": self.streams,
                "max_concurrent": self.max_concurrent,
                "per_conn": {str(k): v for k, v in self.per_conn.items()},
                "refused": self.refused,
                "log": list(self.log),
            }


STATS = Stats()


class StreamGone(Exception):
    """The stream (or the whole connection) can no longer be answered."""


def latin1(b):
    return b.decode("latin-1") if isinstance(b, bytes) else b


class Stream:
    """One request stream: what arrived, and what the handler did."""

    def __init__(self, sid, headers):
        self.sid = sid
        pseudo = {}
        self.headers = []
        for n, v in headers:
            n, v = latin1(n), latin1(v)
            if n.startswith(":"):
                pseudo.setdefault(n, v)
            else:
                self.headers.append([n, v])
        self.method = pseudo.get(":method", "")
        self.path = pseudo.get(":path", "")
        self.authority = pseudo.get(":authority")
        self.scheme = pseudo.get(":scheme")
        u = urllib.parse.urlsplit(self.path)
        self.route = u.path
        self.qs = urllib.parse.parse_qs(u.query, keep_blank_values=True)
        self.control = self.route in CONTROL
        self.head_only = self.method == "HEAD"
        # request body, digested as it arrives
        self.body_len = 0
        self.sha = hashlib.sha256()
        self.keep = bytearray()  # first 65537 bytes
        self.pattern_ok = True
        self.trailers = []
        self.ended = False  # the client sent END_STREAM
        self.reset = False  # the client reset it, or we did
        self.open = False  # accepted, and neither END_STREAM nor RST_STREAM sent
        self.done = False  # handler finished

    def feed(self, data):
        if self.pattern_ok and data:
            o = self.body_len % PAT_MOD
            pos = 0
            while pos < len(data):
                k = min(len(data) - pos, len(PAT) - o)
                if data[pos : pos + k] != PAT[o : o + k]:
                    self.pattern_ok = False
                    break
                pos += k
                o = 0
        self.sha.update(data)
        if len(self.keep) <= 65536:
            self.keep += data[: 65537 - len(self.keep)]
        self.body_len += len(data)

    def q(self, key, default=None):
        v = self.qs.get(key)
        return v[0] if v else default


class Conn:
    def __init__(self, sock, cid):
        self.sock = sock
        self.cid = cid
        self.lock = threading.Lock()
        self.cond = threading.Condition(self.lock)
        self.out = bytearray()  # bytes queued for the socket
        self.pending = None  # a TLS write to retry with exactly these bytes
        self.wake_r, self.wake_w = socket.socketpair()
        self.wake_r.setblocking(False)
        self.wake_w.setblocking(False)
        self.closed = False  # the socket is gone: handlers give up
        self.closing = False  # flush what is queued, then close
        self.close_at = None  # monotonic time for a delayed close
        self.goaway_id = None  # last_stream_id of the GOAWAY we sent
        self.close_when_idle = False  # close when no stream <= goaway_id is left
        self.streams = {}  # sid -> Stream, while its handler runs
        self.open_streams = 0  # streams with st.open (the --max-streams limit)
        self.open_requests = 0  # the same without control paths (max_concurrent)
        self.answered = 0
        self.max_answered = 0  # highest stream id answered completely
        cfg = h2.config.H2Configuration(client_side=False, header_encoding=None)
        self.h2 = h2.connection.H2Connection(config=cfg)

    # -- outbound ---------------------------------------------------------

    def wake(self):
        try:
            self.wake_w.send(b"x")
        except OSError:
            pass

    def flush(self):
        """Queue what h2 wants to send (lock held)."""
        data = self.h2.data_to_send()
        if data:
            self.out += data
            self.wake()

    def start(self):
        """Queue our SETTINGS (and a connection WINDOW_UPDATE) (lock held)."""
        codes = h2.settings.SettingCodes
        window = OPTS.window
        self.h2.local_settings = h2.settings.Settings(
            client=False,
            initial_values={
                # h2 enforces this one by tearing down the whole connection;
                # we advertise --max-streams and refuse excess streams ourselves
                codes.MAX_CONCURRENT_STREAMS: 2**31 - 1,
                codes.MAX_HEADER_LIST_SIZE: 65536,
            },
        )
        self.h2.initiate_connection()
        self.h2.data_to_send()  # replaced by our own SETTINGS frame below
        if window != 65535:
            # pending in h2 until the client ACKs our SETTINGS: before that the
            # client may rightly send up to 65535 bytes per stream
            self.h2.local_settings[codes.INITIAL_WINDOW_SIZE] = window
        f = SettingsFrame(0)
        for k, v in self.h2.local_settings.items():
            f.settings[k] = v
        f.settings[codes.MAX_CONCURRENT_STREAMS] = OPTS.max_streams
        f.settings[codes.INITIAL_WINDOW_SIZE] = window
        self.out += f.serialize()
        if window > 65535:
            self.h2.increment_flow_control_window(window - 65535)
        self.flush()

    # -- socket loop ------------------------------------------------------

    def run(self):
        tls = isinstance(self.sock, ssl.SSLSocket)
        self.sock.setblocking(False)
        drain_until = None
        try:
            while True:
                with self.lock:
                    if self.close_at is not None and time.monotonic() >= self.close_at:
                        self.close_at = None
                        self.closing = True
                    if self.closing and not self.out and self.pending is None and drain_until is None:
                        # everything is written: half-close, then read until
                        # the peer closes too (or a second passes), so that
                        # unread input does not turn our FIN into a RST
                        self.closed = True
                        self.cond.notify_all()
                        try:
                            self.sock.shutdown(socket.SHUT_WR)
                        except OSError:
                            break
                        drain_until = time.monotonic() + 1.0
                    want_write = bool(self.out) or self.pending is not None
                if drain_until is not None:
                    want_write = False
                    if time.monotonic() >= drain_until:
                        break
                timeout = 0.25
                close_at = self.close_at
                if close_at is not None:
                    timeout = max(0.0, min(timeout, close_at - time.monotonic()))
                if tls and self.sock.pending():
                    timeout = 0
                r, w, _ = select.select(
                    [self.sock, self.wake_r], [self.sock] if want_write else [], [], timeout
                )
                if self.wake_r in r:
                    try:
                        while self.wake_r.recv(4096):
                            pass
                    except OSError:
                        pass
                if self.sock in r or (tls and self.sock.pending()):
                    if not self.read_some(drain_until is not None):
                        break
                if w:
                    self.write_some()
        except Exception as e:
            if not isinstance(e, (ConnectionError, ssl.SSLError)):
                log("conn %d: %s: %s" % (self.cid, type(e).__name__, e))
        finally:
            self.teardown()

    def read_some(self, discard):
        """Read what is there and feed h2; False at EOF."""
        for _ in range(16):
            try:
                data = self.sock.recv(65536)
            except (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
                return True
            except (ConnectionError, ssl.SSLError, OSError):
                return False
            if not data:
                return False
            if not discard:
                self.receive(data)
        return True

    def write_some(self):
        with self.lock:
            if self.pending is None:
                self.pending = bytes(self.out[:CHUNK])
                del self.out[:CHUNK]
            data = self.pending
        try:
            n = self.sock.send(data)
        except (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
            return
        with self.lock:
            self.pending = data[n:] if n < len(data) else None
            if self.pending == b"":
                self.pending = None
            self.cond.notify_all()

    def teardown(self):
        with self.lock:
            self.closed = True
            self.cond.notify_all()
        for s in (self.sock, self.wake_r, self.wake_w):
            try:
                s.close()
            except OSError:
                pass

    # -- inbound ----------------------------------------------------------

    def receive(self, data):
        with self.lock:
            if self.closing:
                return
            try:
                events = self.h2.receive_data(data)
            except h2.exceptions.ProtocolError as e:
                log("conn %d: protocol error from client: %s" % (self.cid, e))
                self.flush()  # the GOAWAY h2 prepared
                self.closing = True
                self.cond.notify_all()
                return
            for ev in events:
                try:
                    self.on_event(ev)
                except h2.exceptions.H2Error as e:
                    log("conn %d: %s on %r" % (self.cid, e, ev))
            self.flush()
            self.cond.notify_all()

    def on_event(self, ev):
        if isinstance(ev, h2.events.RequestReceived):
            self.on_request(ev)
        elif isinstance(ev, h2.events.DataReceived):
            st = self.streams.get(ev.stream_id)
            if st is not None and not st.reset:
                st.feed(ev.data)
            self.h2.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
        elif isinstance(ev, h2.events.TrailersReceived):
            st = self.streams.get(ev.stream_id)
            if st is not None:
                st.trailers = [[latin1(n), latin1(v)] for n, v in ev.headers]
        elif isinstance(ev, h2.events.StreamEnded):
            st = self.streams.get(ev.stream_id)
            if st is not None:
                st.ended = True
        elif isinstance(ev, h2.events.StreamReset):
            st = self.streams.get(ev.stream_id)
            if st is not None:
                st.reset = True
                self.uncount(st)

    def on_request(self, ev):
        sid = ev.stream_id
        st = Stream(sid, ev.headers)
        # (h2's own open_inbound_streams also counts idle streams that only
        # saw a PRIORITY frame, so we count ourselves)
        refuse = (self.goaway_id is not None and sid > self.goaway_id) or (
            self.open_streams >= OPTS.max_streams
        )
        if refuse:
            self.h2.reset_stream(sid, REFUSED_STREAM)
            with STATS.lock:
                STATS.refused += 1
            return
        self.streams[sid] = st
        st.open = True
        self.open_streams += 1
        if not st.control:
            self.open_requests += 1
            with STATS.lock:
                STATS.streams += 1
                STATS.per_conn[self.cid] = STATS.per_conn.get(self.cid, 0) + 1
                STATS.max_concurrent = max(STATS.max_concurrent, self.open_requests)
                STATS.log.append(
                    {
                        "conn": self.cid,
                        "stream": sid,
                        "method": st.method,
                        "path": st.path,
                        "authority": st.authority,
                    }
                )
        threading.Thread(target=run_handler, args=(self, st), daemon=True).start()

    # -- stream bookkeeping (lock held) -----------------------------------

    def uncount(self, st):
        if st.open:
            st.open = False
            self.open_streams -= 1
            if not st.control:
                self.open_requests -= 1

    def sent_end(self, st):
        """END_STREAM went out on st."""
        self.uncount(st)
        if st.control:
            return
        self.answered += 1
        self.max_answered = max(self.max_answered, st.sid)
        if OPTS.goaway_after and self.answered == OPTS.goaway_after and self.goaway_id is None:
            # streams may finish out of order: never disown one already answered
            last = self.max_answered
            self.send_goaway(last)
            self.close_when_idle = True
            for other in list(self.streams.values()):
                if other.sid > last and not other.reset:
                    self.kill(other, REFUSED_STREAM)

    def send_goaway(self, last_id):
        # Built by hand: h2's close_connection() would forbid answering the
        # streams <= last_id that are still in progress.
        self.flush()
        f = GoAwayFrame(0)
        f.last_stream_id = last_id
        f.error_code = NO_ERROR
        self.out += f.serialize()
        self.goaway_id = last_id
        self.wake()

    def kill(self, st, code):
        st.reset = True
        self.uncount(st)
        try:
            self.h2.reset_stream(st.sid, code)
        except h2.exceptions.H2Error:
            pass
        self.flush()

    def stream_done(self, st):
        with self.lock:
            st.done = True
            self.uncount(st)
            self.streams.pop(st.sid, None)
            if self.close_when_idle and not any(
                s.sid <= self.goaway_id for s in self.streams.values()
            ):
                self.closing = True
                self.wake()
            self.cond.notify_all()

    # -- used by handlers -------------------------------------------------

    def check(self, st):
        if self.closed or self.closing or st.reset:
            raise StreamGone()

    def wait_body(self, st):
        """Wait for the client's END_STREAM (the body is digested meanwhile)."""
        with self.cond:
            while not st.ended:
                self.check(st)
                self.cond.wait(1.0)

    def send_headers(self, st, status, headers=(), end=False):
        hdrs = [(":status", str(status))] + [(n, str(v)) for n, v in headers]
        with self.lock:
            self.check(st)
            try:
                self.h2.send_headers(st.sid, hdrs, end_stream=end)
            except h2.exceptions.H2Error as e:
                raise StreamGone() from e
            self.flush()
            if end:
                self.sent_end(st)

    def send_trailers(self, st, hdrs):
        with self.lock:
            self.check(st)
            try:
                self.h2.send_headers(st.sid, list(hdrs), end_stream=True)
            except h2.exceptions.H2Error as e:
                raise StreamGone() from e
            self.flush()
            self.sent_end(st)

    def send_data(self, st, data, end=False):
        """Send data on st within the flow-control windows."""
        mv = memoryview(data)
        off, n = 0, len(data)
        while True:
            with self.cond:
                while True:
                    self.check(st)
                    if off >= n:
                        k = 0
                        break
                    if len(self.out) >= OUT_LIMIT:
                        self.cond.wait(1.0)
                        continue
                    try:
                        w = min(
                            self.h2.local_flow_control_window(st.sid),
                            self.h2.max_outbound_frame_size,
                        )
                    except h2.exceptions.H2Error as e:
                        raise StreamGone() from e
                    if w > 0:
                        k = min(w, n - off)
                        break
                    self.cond.wait(1.0)  # until a WINDOW_UPDATE or SETTINGS
                last = off + k >= n
                try:
                    self.h2.send_data(st.sid, bytes(mv[off : off + k]), end_stream=end and last)
                except h2.exceptions.H2Error as e:
                    raise StreamGone() from e
                self.flush()
                if end and last:
                    self.sent_end(st)
            off += k
            if off >= n:
                return

    def send_pattern(self, st, n, end=True):
        sent = 0
        if n == 0 and end:
            self.send_data(st, b"", end=True)
        while sent < n:
            k = min(CHUNK - PAT_MOD, n - sent)
            o = sent % PAT_MOD
            self.send_data(st, PAT[o : o + k], end=end and sent + k >= n)
            sent += k

    def reset_stream(self, st, code):
        with self.lock:
            self.check(st)
            self.kill(st, code)

    def respond(self, st, status, body=b"", ctype="text/plain", headers=()):
        """A complete response with content-length (none for 204/304)."""
        hdrs = list(headers)
        if status in (204, 304):
            body = b""
        else:
            hdrs = [("content-type", ctype), ("content-length", len(body))] + hdrs
        if st.head_only or not body:
            self.send_headers(st, status, hdrs, end=True)
        else:
            self.send_headers(st, status, hdrs)
            self.send_data(st, body, end=True)

    def respond_json(self, st, status, doc, headers=()):
        self.respond(st, status, json.dumps(doc).encode(), ctype="application/json", headers=headers)


def intarg(s, default=0):
    try:
        return int(s)
    except (TypeError, ValueError):
        return default


def floatarg(s, default=0.0):
    try:
        v = float(s)
        return v if v >= 0 and v < 1e6 else default
    except (TypeError, ValueError):
        return default


def run_handler(c, st):
    try:
        handle(c, st)
    except StreamGone:
        pass
    except Exception as e:
        log("conn %d stream %d (%s): %s: %s" % (c.cid, st.sid, st.path, type(e).__name__, e))
        try:
            c.reset_stream(st, INTERNAL_ERROR)
        except Exception:
            pass
    finally:
        c.stream_done(st)


ONCE = set()  # the ?once= keys already used
ONCE_LOCK = threading.Lock()


def first_time(key):
    """True the first time key is asked about (per server process)."""
    with ONCE_LOCK:
        if key in ONCE:
            return False
        ONCE.add(key)
        return True


def handle(c, st):
    path = st.route
    seg = path.split("/")
    arg = seg[2] if len(seg) > 2 else ""
    top = seg[1] if len(seg) > 1 else ""
    once = st.q("once")
    if path in ("/refuse", "/reset", "/goaway") and once and not first_time(once):
        path = "/echo"  # ?once=KEY: the failure happens only the first time

    if path.startswith("/echo"):
        c.wait_body(st)
        doc = {
            "method": st.method,
            "path": st.path,
            "authority": st.authority,
            "scheme": st.scheme,
            "headers": st.headers,
            "body_length": st.body_len,
            "body_sha256": st.sha.hexdigest(),
            "trailers": st.trailers,
            "conn": c.cid,
            "stream": st.sid,
        }
        if st.body_len <= 65536:
            doc["body"] = bytes(st.keep).decode("latin-1")
        code = intarg(st.q("status"), 200)
        if not 200 <= code <= 999:
            code = 200
        cc = st.q("cc")
        c.respond_json(st, code, doc, headers=[("cache-control", cc)] if cc else ())
    elif path == "/upload":
        c.wait_body(st)
        c.respond_json(
            st,
            200,
            {
                "bytes": st.body_len,
                "sha256": st.sha.hexdigest(),
                "pattern_ok": st.pattern_ok,
                "trailers": st.trailers,
            },
        )
    elif path == "/stats":
        c.respond_json(st, 200, STATS.snapshot())
    elif path == "/reset-stats":
        with STATS.lock:
            STATS.clear()
        c.respond_json(st, 200, {})
    elif top in ("bytes", "nolength") and len(seg) == 3:
        n = max(0, intarg(arg))
        hdrs = [("content-type", "application/octet-stream")]
        if top == "bytes":
            hdrs.append(("content-length", n))
        if st.head_only or (n == 0 and top == "bytes"):
            c.send_headers(st, 200, hdrs, end=True)
        else:
            c.send_headers(st, 200, hdrs)
            c.send_pattern(st, n)
    elif path == "/trailers":
        c.send_headers(st, 200, [("content-type", "text/plain")], end=st.head_only)
        if not st.head_only:
            c.send_data(st, b"body with trailers\n")
            c.send_trailers(st, [("x-trailer", "done"), ("x-checksum", "42")])
    elif top == "slow-headers":
        time.sleep(floatarg(arg, 1.0))
        c.respond(st, 200, b"slow\n")
    elif top == "slow-body":
        c.send_headers(
            st, 200, [("content-type", "text/plain"), ("content-length", 10)], end=st.head_only
        )
        if not st.head_only:
            c.send_data(st, b"hello")
            time.sleep(floatarg(arg, 1.0))
            c.send_data(st, b"world", end=True)
    elif top == "status" and len(seg) == 3:
        code = intarg(arg, 200)
        if not 200 <= code <= 999:
            code = 500
        c.respond(st, code, b"status %d\n" % code)
    elif path == "/early-hints":
        c.send_headers(st, 103, [("link", "</style.css>; rel=preload")])
        time.sleep(0.05)
        c.respond(st, 200, b"early hints done\n")
    elif path == "/refuse":
        c.reset_stream(st, REFUSED_STREAM)
    elif path == "/reset":
        c.reset_stream(st, INTERNAL_ERROR)
    elif path == "/reset-mid-body":
        c.send_headers(st, 200, [("content-type", "application/octet-stream"), ("content-length", 100)])
        c.send_pattern(st, 10, end=False)
        time.sleep(0.05)  # let the 10 bytes go out first
        c.reset_stream(st, INTERNAL_ERROR)
    elif path == "/goaway":
        with c.lock:
            c.check(st)
            c.uncount(st)
            c.send_goaway(max(0, st.sid - 2))
            c.close_at = time.monotonic() + 0.1
            c.wake()
    else:
        c.respond(st, 404, b"not found\n")


def serve(sock, cid):
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if TLS_CTX is not None:
            sock.settimeout(10)
            try:
                sock = TLS_CTX.wrap_socket(sock, server_side=True)
            except (OSError, ssl.SSLError) as e:
                log("conn %d: TLS handshake failed: %s" % (cid, e))
                sock.close()
                return
            if sock.selected_alpn_protocol() != "h2":
                log("conn %d: ALPN did not select h2 (%r), closing" % (cid, sock.selected_alpn_protocol()))
                sock.close()
                return
        c = Conn(sock, cid)
        with c.lock:
            c.start()
        c.run()
    except Exception as e:
        log("conn %d: %s: %s" % (cid, type(e).__name__, e))
        try:
            sock.close()
        except OSError:
            pass


def main():
    global OPTS, TLS_CTX
    ap = argparse.ArgumentParser(description="HTTP/2 test origin for moxy")
    ap.add_argument("port", type=int)
    ap.add_argument("--tls", nargs=2, metavar=("CERT", "KEY"))
    ap.add_argument("--max-streams", type=int, default=100)
    ap.add_argument("--goaway-after", type=int, default=0)
    ap.add_argument("--window", type=int, default=65535)
    OPTS = ap.parse_args()
    if not 0 <= OPTS.window <= 2**31 - 1:
        ap.error("--window must be 0 .. 2^31-1")
    if OPTS.max_streams < 0:
        ap.error("--max-streams must be >= 0")
    if OPTS.tls:
        TLS_CTX = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        TLS_CTX.minimum_version = ssl.TLSVersion.TLSv1_2
        TLS_CTX.load_cert_chain(OPTS.tls[0], OPTS.tls[1])
        TLS_CTX.set_alpn_protocols(["h2"])
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", OPTS.port))
    srv.listen(1024)
    sys.stdout.write("ready %d\n" % srv.getsockname()[1])
    sys.stdout.flush()
    while True:
        try:
            sock, _ = srv.accept()
        except OSError as e:
            log("accept: %s" % e)
            time.sleep(0.05)
            continue
        with STATS.lock:
            STATS.accepted_total += 1
            STATS.connections += 1
            cid = STATS.accepted_total
        threading.Thread(target=serve, args=(sock, cid), daemon=True).start()


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        pass
