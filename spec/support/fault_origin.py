#!/usr/bin/env python3
"""fault_origin.py -- an HTTP/1.1 origin that misbehaves on purpose.

    python3 spec/support/fault_origin.py [--host 127.0.0.1] [--port 0] [--healthy]
        [--tls CERT KEY] [--listen-only] [--no-read]

Prints "ready PORT" once it listens on HOST:PORT (0: a free port).  Every request is
counted by its path (its query dropped); GET /__stats answers
{"conns": n, "requests": n, "paths": {path: n}} and is not counted.

What a request gets depends on its path's first segments, /f/<fault>/...:

  ok[?n=N]         200, N bytes (default 10) with Content-Length, kept alive
  rst-head         an RST (SO_LINGER 0) before any response byte
  rst-body         a head with Content-Length: 100000, 1000 bytes, an RST
  rst-chunked      a chunked head, a 1000-byte chunk, an RST
  rst-eof          a head without length (Connection: close), 1000 bytes,
                   an RST: the body ends with the connection, but not cleanly
  eof-body         the same, then a clean close (TLS: close_notify first)
  eof-noclose      the same, then a close without close_notify (TLS)
  garbage-status   "SSH-2.0-OpenSSH_9.2\\r\\n..." instead of a status line
  garbage-header   a status line, then a field line without a colon
  cut-head         half a head, then a clean close
  extra-body       Content-Length: 5 and 5 bytes, then in the same segment
                   a whole second response (EVIL); the connection stays open
  extra-late       the same, but the second response 50 ms later (while
                   moxy holds the connection idle)
  short-body       Content-Length: 100, 50 bytes, then a clean close (FIN)
  hang-head        no answer at all (held until the peer closes)
  hang-body        a head with Content-Length: 1000, 10 bytes, then nothing
  close-after?ms=N 200 (10 bytes, kept alive by its head), then the
                   connection closes N ms later (0: at once)
  close-next       200 (kept alive); the next request on this connection
                   is read and the connection closed without an answer

--healthy: every path answers as ok (the good peer of a pool).
--listen-only: listen with a backlog of 1 and never accept.
--no-read: accept, never read, never answer.
--tls CERT KEY: speak TLS (the RST is still the TCP socket's).
"""

import argparse
import json
import socket
import ssl
import struct
import sys
import threading
import time

# before an RST in a body: long enough for moxy to have read what came
# before (an RST discards what the receiver has not read yet), on a busy
# machine too
RST_AFTER = 0.3

lock = threading.Lock()
stats = {"conns": 0, "requests": 0, "paths": {}}


def rst(conn):
    """close with an RST: SO_LINGER 0 (a TLS socket's close sends no close_notify)"""
    try:
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        conn.close()
    except OSError:
        pass


def hold(conn):
    """wait until the peer closes (or 60 s)"""
    conn.settimeout(60)
    try:
        while conn.recv(65536):
            pass
    except OSError:
        pass


def read_request(conn, buf):
    """-> (method, target, rest of buf) or None when the peer closed"""
    while b"\r\n\r\n" not in buf:
        try:
            data = conn.recv(65536)
        except OSError:
            return None
        if not data:
            return None
        buf += data
    head, _, rest = buf.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    method, target = lines[0].split(" ")[0:2]
    length = 0
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-length":
            length = int(value.strip())
    while len(rest) < length:
        try:
            data = conn.recv(65536)
        except OSError:
            return None
        if not data:
            return None
        rest += data
    return method, target, rest[length:]


def ok(n=10, extra=b""):
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nContent-Type: text/plain\r\n%s\r\n" % (n, extra) + b"x" * n


def serve(conn, healthy):
    buf = b""
    close_next = False
    try:
        while True:
            got = read_request(conn, buf)
            if got is None:
                return
            method, target, buf = got
            path, _, query = target.partition("?")
            if path == "/__stats":
                with lock:
                    body = json.dumps(stats).encode()
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % len(body)
                             + body)
                return
            with lock:
                stats["requests"] += 1
                stats["paths"][path] = stats["paths"].get(path, 0) + 1
            if close_next:
                conn.close()
                return
            parts = path.split("/")
            fault = parts[2] if len(parts) > 2 and parts[1] == "f" else "ok"
            args = dict(kv.partition("=")[::2] for kv in query.split("&") if kv)
            if healthy:
                fault = "ok"
            if fault == "ok":
                conn.sendall(ok(int(args.get("n", "10"))))
            elif fault == "rst-head":
                return rst(conn)
            elif fault == "rst-body":
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n" + b"a" * 1000)
                time.sleep(RST_AFTER)
                return rst(conn)
            elif fault == "rst-chunked":
                conn.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3e8\r\n" + b"c" * 1000 + b"\r\n")
                time.sleep(RST_AFTER)
                return rst(conn)
            elif fault == "rst-eof":
                conn.sendall(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n" + b"e" * 1000)
                time.sleep(RST_AFTER)
                return rst(conn)
            elif fault in ("eof-body", "eof-noclose"):
                conn.sendall(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n" + b"e" * 1000)
                time.sleep(0.05)
                if isinstance(conn, ssl.SSLSocket) and fault == "eof-body":
                    conn = conn.unwrap()
                conn.shutdown(socket.SHUT_RDWR)
                return conn.close()
            elif fault == "garbage-status":
                conn.sendall(b"SSH-2.0-OpenSSH_9.2\r\nProtocol mismatch.\r\n\r\n")
                return conn.close()
            elif fault == "garbage-header":
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nthis is not a field\r\n\r\nok")
                hold(conn)
                return
            elif fault == "cut-head":
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Le")
                time.sleep(0.05)
                return conn.close()
            elif fault == "extra-body":
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"
                             b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\nX-Evil: 1\r\n\r\nEVIL")
            elif fault == "extra-late":
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello")
                time.sleep(0.05)
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\nX-Evil: 1\r\n\r\nEVIL")
            elif fault == "short-body":
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n" + b"s" * 50)
                time.sleep(0.05)
                conn.shutdown(socket.SHUT_RDWR)
                return conn.close()
            elif fault == "hang-head":
                return hold(conn)
            elif fault == "hang-body":
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n" + b"h" * 10)
                return hold(conn)
            elif fault == "close-after":
                conn.sendall(ok())
                ms = int(args.get("ms", "0"))
                if ms:
                    time.sleep(ms / 1000.0)
                return conn.close()
            elif fault == "close-next":
                conn.sendall(ok())
                close_next = True
            else:
                conn.sendall(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
    except OSError:
        pass
    finally:
        try:
            conn.close()
        except OSError:
            pass


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--healthy", action="store_true")
    ap.add_argument("--listen-only", action="store_true")
    ap.add_argument("--no-read", action="store_true")
    ap.add_argument("--tls", nargs=2)
    a = ap.parse_args()
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind((a.host, a.port))
    srv.listen(1 if a.listen_only else 256)
    print("ready %d" % srv.getsockname()[1], flush=True)
    if a.listen_only:
        while True:
            time.sleep(3600)
    ctx = None
    if a.tls:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(a.tls[0], a.tls[1])
    held = []
    while True:
        conn, _ = srv.accept()
        with lock:
            stats["conns"] += 1
        if a.no_read:
            held.append(conn)
            continue
        if ctx:
            try:
                conn.settimeout(5)
                conn = ctx.wrap_socket(conn, server_side=True)
                conn.settimeout(None)
            except (OSError, ssl.SSLError):
                conn.close()
                continue
        threading.Thread(target=serve, args=(conn, a.healthy), daemon=True).start()


if __name__ == "__main__":
    sys.exit(main())
