#!/usr/bin/env python3
"""compress_origin.py -- the origin of spec/03-integration/50-compression_spec.lua.

    python3 spec/support/compress_origin.py PORT   (PORT 0 picks a free port)

Prints "ready PORT" once it listens on 127.0.0.1.  One thread per connection,
HTTP/1.1 keep-alive, HEAD answered with the GET head and no body.

The body every path generates is text(N): the first N bytes of an endless
repetition of BASE, about 1 MiB of numbered lines of words picked by a fixed
linear congruential generator -- compressible, varied, and the same on every
run.

Paths:

  /gen/N        text(N), Content-Type text/plain; charset=utf-8
  /zeros/N      N zero bytes, Content-Type text/plain
  /sha/N        JSON {"length": N, "sha256": hex} of text(N) (not counted)
  /bad-gzip     Content-Encoding: gzip, Content-Type text/plain, a body that
                is not gzip (400 bytes)
  /ws           WebSocket: 101, then one text frame of 2000 bytes of text(),
                then waits for the client to close
  /stats        JSON {"targets": {target: count}} of every other request
  /reset-stats  clears it

Options (query string) for /gen and /zeros:

  frame=cl|chunked|close  Content-Length (default), chunked (chunk=SIZE,
                          default 16384), or no length: ends by closing
  trickle=S               send the body one byte at a time (each its own
                          chunk when chunked), sleeping S seconds after each
  enc=gzip|br|zstd        the body is text(N) (or the zeros) coded so, with
                          Content-Encoding: that (level=L for the coder;
                          trunc=K: only the first K bytes of the coded body)
  ct=TYPE                 Content-Type (ct=none: no Content-Type at all)
  status=CODE             that status (204 and 304: no body)
  rh=Name:Value           an extra response header (repeatable)
  match=TAG               304 (with the rh headers) when If-None-Match has TAG
"""

import base64
import gzip
import hashlib
import json
import socket
import sys
import threading
import time
import urllib.parse
import zlib

try:
    import brotli
except ImportError:  # only enc=br needs it
    brotli = None
try:
    import zstandard
except ImportError:
    zstandard = None

IO_CHUNK = 256 * 1024

WORDS = (
    "alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike november oscar papa "
    "quebec romeo sierra tango uniform victor whiskey xray yankee zulu proxy origin cache header body "
    "stream window level chunk gzip brotli zstd moxy edge request response vary etag range"
).split()


def build_base():
    out = []
    size = 0
    x = 12345
    i = 0
    while size < 1048576 + 7:
        n = 4 + x % 9
        ws = []
        for _ in range(n):
            x = (x * 1103515245 + 12345) & 0x7FFFFFFF
            ws.append(WORDS[(x >> 8) % len(WORDS)])
        line = "%07d %s.\n" % (i, " ".join(ws))
        out.append(line)
        size += len(line)
        i += 1
    return "".join(out).encode()[: 1048576 + 7]


BASE = build_base()
BASE2 = BASE + BASE  # any offset + up to len(BASE) bytes is one slice


def text(n):
    reps = n // len(BASE) + 1
    return (BASE * reps)[:n]


def stream_text(send, n, zeros=False):
    """Send text(n) (or n zeros) in pieces of IO_CHUNK at most."""
    zero = bytes(IO_CHUNK)
    off = 0
    mv = memoryview(BASE2)
    while off < n:
        k = min(IO_CHUNK, n - off)
        if zeros:
            send(zero[:k])
        else:
            o = off % len(BASE)
            send(mv[o : o + k])
        off += k


SHA = {}
SHA_LOCK = threading.Lock()


def sha_of(n):
    with SHA_LOCK:
        if n in SHA:
            return SHA[n]
    h = hashlib.sha256()
    stream_text(h.update, n)
    d = h.hexdigest()
    with SHA_LOCK:
        SHA[n] = d
    return d


CODED = {}


def encode(enc, data, level):
    if enc == "gzip":
        return gzip.compress(data, compresslevel=level or 6, mtime=0)
    if enc == "br":
        return brotli.compress(data, quality=level or 5)
    if enc == "zstd":
        return zstandard.ZstdCompressor(level=level or 3).compress(data)
    raise ValueError(enc)


def coded(enc, n, zeros, level):
    key = (enc, n, zeros, level)
    with SHA_LOCK:
        if key in CODED:
            return CODED[key]
    data = bytes(n) if zeros else text(n)
    if enc == "gzip" and zeros:  # big zero bodies: stream through zlib
        c = zlib.compressobj(level or 6, zlib.DEFLATED, 31)
        parts = []
        zero = bytes(IO_CHUNK)
        left = n
        while left > 0:
            k = min(left, IO_CHUNK)
            parts.append(c.compress(zero[:k]))
            left -= k
        parts.append(c.flush())
        out = b"".join(parts)
    else:
        out = encode(enc, data, level)
    with SHA_LOCK:
        CODED[key] = out
    return out


STATS_LOCK = threading.Lock()
TARGETS = {}


class Closed(Exception):
    pass


class Conn:
    def __init__(self, sock):
        self.sock = sock
        self.buf = bytearray()

    def fill(self):
        data = self.sock.recv(IO_CHUNK)
        if not data:
            raise Closed()
        self.buf += data

    def readline(self):
        while True:
            i = self.buf.find(b"\n")
            if i >= 0:
                line = bytes(self.buf[: i + 1])
                del self.buf[: i + 1]
                return line.rstrip(b"\r\n")
            if len(self.buf) > 1 << 20:
                raise Closed()
            self.fill()

    def read_exact(self, n):
        while len(self.buf) < n:
            self.fill()
        d = bytes(self.buf[:n])
        del self.buf[:n]
        return d

    def send(self, data):
        self.sock.sendall(data)


REASONS = {101: "Switching Protocols", 200: "OK", 204: "No Content", 206: "Partial Content",
           304: "Not Modified", 404: "Not Found"}


def read_request(c):
    while True:
        line = c.readline()
        if line:
            break
    method, target, version = line.decode("latin-1").split(" ", 2)
    headers = []
    while True:
        h = c.readline()
        if not h:
            break
        n, v = h.decode("latin-1").split(":", 1)
        headers.append((n.strip(), v.strip()))
    return method, target, version, headers


def hget(headers, name):
    name = name.lower()
    return [v for n, v in headers if n.lower() == name]


def ws_frame(opcode, payload):
    n = len(payload)
    if n < 126:
        hdr = bytes([0x80 | opcode, n])
    elif n < 65536:
        hdr = bytes([0x80 | opcode, 126]) + n.to_bytes(2, "big")
    else:
        hdr = bytes([0x80 | opcode, 127]) + n.to_bytes(8, "big")
    return hdr + payload


def handle(c, method, target, version, headers):
    """Answer one request; True to keep the connection."""
    u = urllib.parse.urlsplit(target)
    qs = urllib.parse.parse_qs(u.query, keep_blank_values=True)

    def q(k, d=None):
        v = qs.get(k)
        return v[0] if v else d

    conn_tokens = [t.strip().lower() for v in hget(headers, "connection") for t in v.split(",")]
    close = "close" in conn_tokens or (version == "HTTP/1.0" and "keep-alive" not in conn_tokens)
    # request bodies: drain a Content-Length one (the spec sends none otherwise)
    cl = hget(headers, "content-length")
    if cl and int(cl[0]) > 0:
        c.read_exact(int(cl[0]))
    path = u.path
    if path not in ("/stats", "/reset-stats", "/sha"):
        if not path.startswith("/sha/"):
            with STATS_LOCK:
                TARGETS[target] = TARGETS.get(target, 0) + 1

    def respond(code, body, hs, ctype="application/json"):
        lines = ["HTTP/1.1 %d %s" % (code, REASONS.get(code, "Status")),
                 "Content-Type: " + ctype, "Content-Length: %d" % len(body)] + ["%s: %s" % h for h in hs]
        if close:
            lines.append("Connection: close")
        c.send(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (b"" if method == "HEAD" else body))
        return not close

    if path == "/stats":
        with STATS_LOCK:
            doc = {"targets": dict(TARGETS)}
        return respond(200, json.dumps(doc).encode(), [])
    if path == "/reset-stats":
        with STATS_LOCK:
            TARGETS.clear()
        return respond(200, b"{}", [])
    if path.startswith("/sha/"):
        n = int(path[5:])
        return respond(200, json.dumps({"length": n, "sha256": sha_of(n)}).encode(), [])
    if path == "/bad-gzip":
        body = (b"this is not gzip data, moxy cannot decode it. " * 10)[:400]
        return respond(200, body, [("Content-Encoding", "gzip")], "text/plain")
    if path == "/ws":
        key = (hget(headers, "sec-websocket-key") or [""])[0]
        accept = base64.b64encode(
            hashlib.sha1((key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").encode()).digest()).decode()
        c.send(("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                "Content-Type: text/plain\r\nSec-WebSocket-Accept: %s\r\n\r\n" % accept).encode()
               + ws_frame(1, text(2000)))
        try:
            while True:
                c.fill()
        except (Closed, OSError):
            pass
        return False

    zeros = path.startswith("/zeros/")
    if not (path.startswith("/gen/") or zeros):
        return respond(404, b"not found\n", [], "text/plain")
    n = int(path.split("/")[2])
    extra = []
    for rh in qs.get("rh", []):
        name, value = rh.split(":", 1)
        extra.append((name.strip(), value.strip()))
    ctype = q("ct", "text/plain; charset=utf-8")
    if ctype != "none":
        extra.insert(0, ("Content-Type", ctype))
    code = int(q("status", "200"))
    tag = q("match")
    if tag and any(tag in v for v in hget(headers, "if-none-match")):
        code = 304
    frame = q("frame", "cl")
    enc = q("enc")
    level = int(q("level", "0"))
    if enc:
        extra.append(("Content-Encoding", enc))
    head = ["HTTP/1.1 %d %s" % (code, REASONS.get(code, "Status"))] + ["%s: %s" % h for h in extra]
    no_body = code in (204, 304) or method == "HEAD"
    if code in (204, 304):
        n = 0
    data = coded(enc, n, zeros, level) if enc else None
    if data is not None and q("trunc"):
        data = data[: int(q("trunc"))]
    length = len(data) if data is not None else n
    if code not in (204, 304):
        if frame == "cl":
            head.append("Content-Length: %d" % length)
        elif frame == "chunked":
            head.append("Transfer-Encoding: chunked")
        else:
            close = True
    if close:
        head.append("Connection: close")
    c.send(("\r\n".join(head) + "\r\n\r\n").encode("latin-1"))
    if no_body:
        return not close

    if frame == "chunked":
        size = int(q("chunk", "16384"))

        def send(piece):
            piece = bytes(piece)
            for i in range(0, len(piece), size):
                p = piece[i : i + size]
                c.send(b"%x\r\n" % len(p) + p + b"\r\n")
    else:
        send = c.send
    trickle = q("trickle")
    if trickle:
        pause = float(trickle)
        whole = data if data is not None else (bytes(n) if zeros else text(n))
        for i in range(len(whole)):
            send(whole[i : i + 1])
            time.sleep(pause)
    elif data is not None:
        send(data)
    else:
        stream_text(send, n, zeros)
    if frame == "chunked":
        c.send(b"0\r\n\r\n")
    return not close


def serve(sock):
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    c = Conn(sock)
    try:
        while True:
            method, target, version, headers = read_request(c)
            if not handle(c, method, target, version, headers):
                break
    except (Closed, OSError, ValueError):
        pass
    finally:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        sock.close()


def main():
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 0
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", port))
    srv.listen(256)
    sys.stdout.write("ready %d\n" % srv.getsockname()[1])
    sys.stdout.flush()
    while True:
        s, _ = srv.accept()
        threading.Thread(target=serve, args=(s,), daemon=True).start()


if __name__ == "__main__":
    main()
