#!/usr/bin/env python3
"""origin.py -- the origin server moxy's integration specs proxy to.

    python3 spec/support/origin.py PORT [HOST] (PORT 0 picks a free port)

Prints "ready PORT" on stdout once it listens on HOST:PORT (HOST defaults to
127.0.0.1; another loopback address such as 127.0.0.2 serves specs that need
two origins on one port).  Raw sockets
and one thread per connection, so every byte on the wire is under our control.
HTTP/1.1 keep-alive (several requests per connection) and `Expect:
100-continue` (an interim 100 before the body is read) are handled for every
path; HEAD gets the GET headers without a body.

Paths (the query string adds options, see below):

  /echo[anything]    200, JSON describing the request as received: method, uri,
                     path, query, version, headers [[name, value], ...] in wire
                     order, body_length, body_sha256, body (latin-1, only when
                     <= 64 KiB), chunked, trailers, conn (per-connection id),
                     conn_request (1 for the first request on that connection),
                     port, expect_100_sent.  ?status=CODE changes the status.
  /bytes/N           N bytes with Content-Length (streamed, N may be > 2 GiB)
  /chunked/N         N bytes, Transfer-Encoding: chunked (?chunk=SIZE, default
                     16384; ?trailer=1 adds trailer "X-Trailer: done" and
                     "X-Body-Length: N")
  /close/N           N bytes, no Content-Length, no chunking: ends by closing
  /status/CODE       that status; 204 and 304 have no body, others "status CODE\n"
  /early-hints       103 (Link header) then 200 "early hints done\n"
  /slow-headers/S    sleeps S seconds, then 200 "slow\n"
  /slow-body/S       headers (Content-Length 10), 5 bytes, sleeps S, 5 bytes
  /reset             RST (SO_LINGER 0) without answering
  /half-headers      "HTTP/1.1 200 OK\r\nContent-Le" then close
  /bad-response      a malformed status line, then close (?kind=nonhttp: not HTTP)
  /upload            reads the whole body streaming (Content-Length or chunked),
                     200 JSON {bytes, pattern_ok, chunked, trailers, sha256 (only
                     with ?sha=1)}; pattern_ok: body is the pattern() stream
                     (byte i == i % 251), which is what /bytes/N sends
  /ws                WebSocket: 101 + Sec-WebSocket-Accept, then echoes every
                     frame unmasked (ping -> pong, close -> close and hang up);
                     ?hello=1 sends a text frame "hello from origin" in the same
                     write as the 101
  /stats             JSON {accepted, connections, requests, log}; connections and
                     requests count only non-control traffic (anything but
                     /stats and /reset-stats); log holds one entry per request
                     head seen: {conn, n, method, target, version, line,
                     headers [[name, value], ...]}, and
                     an entry {conn, error, line} for unparsable input
  /reset-stats       clears counters and log
  anything else      404

Options valid on every path:
  close=1            answer with "Connection: close" and close afterwards
  idle_close=S       after answering, close the connection if idle for S seconds
  rh=Name:Value      add a response header (repeatable)
  delay=S            sleep S seconds before reading the request body
  pause=S            /bytes/N: send half the body, sleep S seconds, send the rest
  match304=TAG       answer 304 (with the rh headers, no body) when the request's
                     If-None-Match contains TAG
"""

import base64
import hashlib
import json
import socket
import struct
import sys
import threading
import time
import urllib.parse

# byte i of every generated or expected body is i % 251 (251 is prime, so the
# pattern never lines up with power-of-two buffer sizes)
PAT_MOD = 251
PAT = bytes(i % PAT_MOD for i in range(PAT_MOD * 1100))  # 276100 bytes
IO_CHUNK = 256 * 1024

CONTROL = ("/stats", "/reset-stats")


class Stats:
    def __init__(self):
        self.lock = threading.Lock()
        self.clear()

    def clear(self):
        self.accepted = 0
        self.conns = set()
        self.requests = 0
        self.log = []

    def snapshot(self):
        with self.lock:
            return {
                "accepted": self.accepted,
                "connections": len(self.conns),
                "requests": self.requests,
                "log": list(self.log),
            }


STATS = Stats()
PORT = 0
CONN_SEQ = [0]


class Closed(Exception):
    pass


class BadRequest(Exception):
    pass


def latin1(b):
    return b.decode("latin-1")


class Conn:
    def __init__(self, sock, cid):
        self.sock = sock
        self.cid = cid
        self.buf = bytearray()
        self.nreq = 0

    def fill(self, timeout=None):
        self.sock.settimeout(timeout)
        data = self.sock.recv(IO_CHUNK)
        if not data:
            raise Closed()
        self.buf += data

    def readline(self, limit=1 << 20):
        while True:
            i = self.buf.find(b"\n")
            if i >= 0:
                line = bytes(self.buf[: i + 1])
                del self.buf[: i + 1]
                return line
            if len(self.buf) > limit:
                raise BadRequest("line too long")
            self.fill()

    def read_some(self, n):
        """Up to n (> 0) bytes, at least one."""
        if self.buf:
            data = bytes(self.buf[:n])
            del self.buf[:n]
            return data
        if self.sock.gettimeout() is not None:
            self.sock.settimeout(None)
        data = self.sock.recv(min(n, IO_CHUNK))
        if not data:
            raise Closed()
        return data

    def read_exact(self, n):
        parts = []
        while n > 0:
            d = self.read_some(n)
            parts.append(d)
            n -= len(d)
        return b"".join(parts)

    def send(self, data):
        self.sock.sendall(data)


def strip_eol(line):
    if line.endswith(b"\r\n"):
        return line[:-2]
    if line.endswith(b"\n"):
        return line[:-1]
    return line


class Request:
    pass


def read_head(c):
    """Parse a request head; returns a Request or None at a clean EOF."""
    # skip empty lines before a request line (RFC 9112 2.2)
    while True:
        try:
            line = c.readline()
        except Closed:
            if c.buf:
                log_error(c, "eof in request line", bytes(c.buf))
            return None
        if strip_eol(line):
            break
    reqline = strip_eol(line)
    parts = reqline.split(b" ")
    if len(parts) != 3:
        log_error(c, "bad request line", reqline)
        raise BadRequest("bad request line")
    r = Request()
    r.method, r.target, r.version = (latin1(p) for p in parts)
    r.line = latin1(reqline)
    c.nreq += 1
    r.n = c.nreq
    r.control = r.target.split("?")[0] in CONTROL
    r.headers = []
    with STATS.lock:
        if not r.control:
            STATS.requests += 1
            STATS.conns.add(c.cid)
            STATS.log.append(
                {
                    "conn": c.cid,
                    "n": r.n,
                    "method": r.method,
                    "target": r.target,
                    "version": r.version,
                    "line": r.line,
                    "headers": r.headers,  # filled below (as lists once serialised)
                }
            )
    while True:
        line = c.readline()
        h = strip_eol(line)
        if not h:
            break
        if h[:1] in (b" ", b"\t") and r.headers:  # obs-fold: keep it visible
            n, v = r.headers[-1]
            r.headers[-1] = (n, v + " " + latin1(h.strip()))
            continue
        if b":" not in h:
            log_error(c, "bad header line", h)
            raise BadRequest("bad header line")
        name, value = h.split(b":", 1)
        r.headers.append((latin1(name), latin1(value.strip(b" \t"))))
    u = urllib.parse.urlsplit(r.target)
    r.path = u.path
    r.query = u.query
    r.qs = urllib.parse.parse_qs(u.query, keep_blank_values=True)
    return r


def log_error(c, what, data):
    with STATS.lock:
        STATS.log.append({"conn": c.cid, "error": what, "line": latin1(data[:512])})


def hget(r, name):
    """All values of header `name` (case-insensitive), in order."""
    name = name.lower()
    return [v for n, v in r.headers if n.lower() == name]


def tokens(values):
    out = []
    for v in values:
        out += [t.strip().lower() for t in v.split(",") if t.strip()]
    return out


def qget(r, key, default=None):
    v = r.qs.get(key)
    return v[0] if v else default


class Body:
    """Streaming request body reader (Content-Length or chunked)."""

    def __init__(self, c, r):
        self.c = c
        self.trailers = []
        te = tokens(hget(r, "transfer-encoding"))
        self.chunked = bool(te) and te[-1] == "chunked"
        self.remaining = 0
        self.done = False
        if self.chunked:
            self.chunk_left = 0
        else:
            cl = hget(r, "content-length")
            if cl:
                try:
                    self.remaining = int(cl[0].split(",")[0].strip())
                except ValueError:
                    raise BadRequest("bad content-length")
            self.done = self.remaining == 0
        self.expected = self.chunked or self.remaining > 0

    def read(self):
        """Next piece of body, b"" at the end."""
        if self.done:
            return b""
        c = self.c
        if not self.chunked:
            d = c.read_some(min(self.remaining, IO_CHUNK))
            self.remaining -= len(d)
            if self.remaining == 0:
                self.done = True
            return d
        while self.chunk_left == 0:
            line = strip_eol(c.readline())
            size = line.split(b";")[0].strip()
            try:
                n = int(size, 16)
            except ValueError:
                raise BadRequest("bad chunk size %r" % size)
            if n == 0:
                while True:
                    t = strip_eol(c.readline())
                    if not t:
                        break
                    if b":" in t:
                        tn, tv = t.split(b":", 1)
                        self.trailers.append((latin1(tn), latin1(tv.strip())))
                self.done = True
                return b""
            self.chunk_left = n
        d = c.read_some(min(self.chunk_left, IO_CHUNK))
        self.chunk_left -= len(d)
        if self.chunk_left == 0:
            crlf = strip_eol(c.readline())
            if crlf:
                raise BadRequest("missing CRLF after chunk")
        return d

    def drain(self):
        while self.read():
            pass


def status_text(code):
    return {
        100: "Continue",
        101: "Switching Protocols",
        103: "Early Hints",
        200: "OK",
        201: "Created",
        204: "No Content",
        301: "Moved Permanently",
        302: "Found",
        304: "Not Modified",
        400: "Bad Request",
        404: "Not Found",
        418: "I'm a teapot",
        500: "Internal Server Error",
        502: "Bad Gateway",
        503: "Service Unavailable",
    }.get(code, "Status")


class Ctx:
    """Per-request response state."""

    def __init__(self, c, r):
        self.c = c
        self.r = r
        self.head_only = r.method == "HEAD"
        conn = tokens(hget(r, "connection"))
        if r.version == "HTTP/1.0":
            self.close = "keep-alive" not in conn
        else:
            self.close = "close" in conn
        if qget(r, "close") == "1":
            self.close = True
        self.extra = []
        for rh in r.qs.get("rh", []):
            if ":" in rh:
                n, v = rh.split(":", 1)
                self.extra.append((n.strip(), v.strip()))
        self.expect_100_sent = False

    def maybe_continue(self, body):
        r = self.r
        if body.expected and "100-continue" in tokens(hget(r, "expect")):
            self.c.send(b"HTTP/1.1 100 Continue\r\n\r\n")
            self.expect_100_sent = True

    def head(self, code, headers, reason=None):
        lines = ["HTTP/1.1 %d %s" % (code, reason or status_text(code))]
        for n, v in headers:
            lines.append("%s: %s" % (n, v))
        for n, v in self.extra:
            lines.append("%s: %s" % (n, v))
        if self.close:
            lines.append("Connection: close")
        lines.append("Date: " + time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime()))
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

    def respond(self, code, body=b"", headers=(), ctype="text/plain"):
        headers = list(headers)
        if code not in (204, 304) and not (100 <= code < 200):
            headers = [("Content-Type", ctype), ("Content-Length", str(len(body)))] + headers
        else:
            body = b""
        data = self.head(code, headers)
        if not self.head_only:
            data += body
        self.c.send(data)


def stream_pattern(c, n, offset=0):
    """Send n pattern bytes starting at stream offset `offset`."""
    mv = memoryview(PAT)
    sent = 0
    while sent < n:
        o = (offset + sent) % PAT_MOD
        k = min(n - sent, IO_CHUNK)
        c.send(mv[o : o + k])
        sent += k


def intarg(s, default=0):
    try:
        return int(s)
    except (TypeError, ValueError):
        return default


def floatarg(s, default=0.0):
    try:
        return float(s)
    except (TypeError, ValueError):
        return default


def handle_echo(x, body):
    r = x.r
    h = hashlib.sha256()
    keep = bytearray()
    total = 0
    while True:
        d = body.read()
        if not d:
            break
        h.update(d)
        total += len(d)
        if len(keep) <= 65536:
            keep += d
    doc = {
        "method": r.method,
        "uri": r.target,
        "path": r.path,
        "query": r.query,
        "version": r.version,
        "headers": [[n, v] for n, v in r.headers],
        "body_length": total,
        "body_sha256": h.hexdigest(),
        "chunked": body.chunked,
        "trailers": [[n, v] for n, v in body.trailers],
        "conn": x.c.cid,
        "conn_request": r.n,
        "port": PORT,
        "expect_100_sent": x.expect_100_sent,
    }
    if total <= 65536:
        doc["body"] = latin1(bytes(keep))
    code = intarg(qget(r, "status"), 200)
    x.respond(code, json.dumps(doc).encode(), ctype="application/json")


def handle_upload(x, body):
    r = x.r
    want_sha = qget(r, "sha") == "1"
    h = hashlib.sha256() if want_sha else None
    total = 0
    ok = True
    while True:
        d = body.read()
        if not d:
            break
        if ok:
            o = total % PAT_MOD
            if d != PAT[o : o + len(d)]:
                ok = False
        if h:
            h.update(d)
        total += len(d)
    doc = {
        "bytes": total,
        "pattern_ok": ok,
        "chunked": body.chunked,
        "trailers": [[n, v] for n, v in body.trailers],
        "conn": x.c.cid,
    }
    if h:
        doc["sha256"] = h.hexdigest()
    x.respond(200, json.dumps(doc).encode(), ctype="application/json")


def handle_ws(x):
    c, r = x.c, x.r
    key = (hget(r, "sec-websocket-key") or [""])[0]
    if "websocket" not in tokens(hget(r, "upgrade")) or not key:
        x.respond(400, b"not a websocket request\n")
        return False
    accept = base64.b64encode(
        hashlib.sha1((key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").encode()).digest()
    ).decode()
    data = (
        "HTTP/1.1 101 Switching Protocols\r\n"
        "Upgrade: websocket\r\n"
        "Connection: Upgrade\r\n"
        "Sec-WebSocket-Accept: %s\r\n\r\n" % accept
    ).encode()
    if qget(r, "hello") == "1":
        data += ws_frame(1, b"hello from origin")
    c.send(data)
    while True:
        try:
            b0, b1 = c.read_exact(2)
        except Closed:
            return False
        fin_op = b0
        op = b0 & 0x0F
        masked = b1 & 0x80
        n = b1 & 0x7F
        if n == 126:
            n = struct.unpack(">H", c.read_exact(2))[0]
        elif n == 127:
            n = struct.unpack(">Q", c.read_exact(8))[0]
        mask = c.read_exact(4) if masked else None
        payload = c.read_exact(n) if n else b""
        if mask:
            payload = unmask(payload, mask)
        if op == 9:  # ping
            c.send(ws_frame(10, payload))
        elif op == 8:  # close
            c.send(ws_frame(8, payload))
            return False
        elif op == 10:
            pass
        else:
            c.send(ws_frame(op, payload, fin_op & 0x80))


def unmask(payload, mask):
    n = len(payload)
    m = (mask * (n // 4 + 1))[:n]
    return (int.from_bytes(payload, "big") ^ int.from_bytes(m, "big")).to_bytes(n, "big")


def ws_frame(op, payload, fin=0x80):
    n = len(payload)
    b0 = (0x80 if fin else 0) | op
    if n < 126:
        hdr = struct.pack(">BB", b0, n)
    elif n < 65536:
        hdr = struct.pack(">BBH", b0, 126, n)
    else:
        hdr = struct.pack(">BBQ", b0, 127, n)
    return hdr + payload


def rst(c):
    c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    c.sock.close()


def serve_one(c, r):
    """Answer one request; returns True to keep the connection open."""
    x = Ctx(c, r)
    body = Body(c, r)
    path = r.path
    seg = path.split("/")
    arg = seg[2] if len(seg) > 2 else ""

    if path == "/ws":
        return handle_ws(x)
    delay = floatarg(qget(r, "delay"))
    if delay:
        time.sleep(delay)
    x.maybe_continue(body)

    m304 = qget(r, "match304")
    if m304 and any(m304 in v for v in hget(r, "if-none-match")):
        body.drain()
        x.respond(304)
        return not x.close

    if path.startswith("/echo"):
        handle_echo(x, body)
    elif path == "/upload":
        handle_upload(x, body)
    else:
        body.drain()
        if path == "/stats":
            x.respond(200, json.dumps(STATS.snapshot()).encode(), ctype="application/json")
        elif path == "/reset-stats":
            with STATS.lock:
                STATS.clear()
            x.respond(200, b"ok\n")
        elif seg[1:2] == ["bytes"] or seg[1:2] == ["close"]:
            n = intarg(arg)
            hdrs = [("Content-Type", "application/octet-stream")]
            if seg[1] == "bytes":
                hdrs.append(("Content-Length", str(n)))
            else:
                x.close = True
            c.send(x.head(200, hdrs))
            if not x.head_only:
                pause = floatarg(qget(r, "pause"))
                if pause:  # half the body, a pause, the rest
                    stream_pattern(c, n // 2)
                    time.sleep(pause)
                    stream_pattern(c, n - n // 2, n // 2)
                else:
                    stream_pattern(c, n)
            if seg[1] == "close":
                c.sock.shutdown(socket.SHUT_WR)
                return False
        elif seg[1:2] == ["chunked"]:
            n = intarg(arg)
            size = max(1, intarg(qget(r, "chunk"), 16384))
            trailer = qget(r, "trailer") == "1"
            hdrs = [("Content-Type", "application/octet-stream"), ("Transfer-Encoding", "chunked")]
            if trailer:
                hdrs.append(("Trailer", "X-Trailer, X-Body-Length"))
            c.send(x.head(200, hdrs))
            if not x.head_only:
                sent = 0
                while sent < n:
                    k = min(size, n - sent)
                    c.send(b"%x\r\n" % k)
                    stream_pattern(c, k, sent)
                    c.send(b"\r\n")
                    sent += k
                end = b"0\r\n"
                if trailer:
                    end += b"X-Trailer: done\r\nX-Body-Length: %d\r\n" % n
                c.send(end + b"\r\n")
        elif seg[1:2] == ["status"]:
            code = intarg(arg, 200)
            x.respond(code, b"status %d\n" % code)
        elif path == "/early-hints":
            c.send(b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload; as=style\r\n\r\n")
            time.sleep(0.05)
            x.respond(200, b"early hints done\n")
        elif seg[1:2] == ["slow-headers"]:
            time.sleep(floatarg(arg, 1.0))
            x.respond(200, b"slow\n")
        elif seg[1:2] == ["slow-body"]:
            c.send(x.head(200, [("Content-Type", "text/plain"), ("Content-Length", "10")]))
            if not x.head_only:
                c.send(b"01234")
                time.sleep(floatarg(arg, 1.0))
                c.send(b"56789")
        elif path == "/reset":
            rst(c)
            return False
        elif path == "/half-headers":
            c.send(b"HTTP/1.1 200 OK\r\nContent-Le")
            return False
        elif path == "/bad-response":
            if qget(r, "kind") == "nonhttp":
                c.send(b"hello, this is not http\r\n\r\n")
            else:
                c.send(b"HTTP/1.1 2x0 Broken\r\nContent-Length: 2\r\n\r\nok")
            return False
        else:
            x.respond(404, b"not found\n")

    if x.close:
        return False
    idle = floatarg(qget(r, "idle_close"))
    if idle:
        c.idle_close = idle
    return True


def handle(sock, cid):
    c = Conn(sock, cid)
    c.idle_close = None
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        while True:
            if c.idle_close and not c.buf:
                try:
                    c.fill(timeout=c.idle_close)
                except socket.timeout:
                    break
            r = read_head(c)
            if r is None:
                break
            if not serve_one(c, r):
                break
    except BadRequest as e:
        log_error(c, "bad request: %s" % e, b"")
    except (Closed, OSError):
        pass
    finally:
        try:
            sock.close()
        except OSError:
            pass


def main():
    global PORT
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 0
    host = sys.argv[2] if len(sys.argv) > 2 else "127.0.0.1"
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind((host, port))
    srv.listen(1024)
    PORT = srv.getsockname()[1]
    sys.stdout.write("ready %d\n" % PORT)
    sys.stdout.flush()
    while True:
        sock, _ = srv.accept()
        with STATS.lock:
            STATS.accepted += 1
            CONN_SEQ[0] += 1
            cid = CONN_SEQ[0]
        threading.Thread(target=handle, args=(sock, cid), daemon=True).start()


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        pass
