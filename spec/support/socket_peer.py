#!/usr/bin/env python3
"""socket_peer.py -- a scripted TCP (and TLS) peer for moxy.socket's spec
(spec/03-integration/53-socket_spec.lua).

    python3 spec/support/socket_peer.py UNTRUSTED_CERT UNTRUSTED_KEY TRUSTED_CERT TRUSTED_KEY

Listens on loopback only and prints, once every listener is up:

    ready PLAIN CLOSER TLS_UNTRUSTED TLS_TRUSTED PLAIN6

  PLAIN          127.0.0.1, plain TCP, the commands below
  CLOSER         127.0.0.1, closes every connection right after accept
  TLS_UNTRUSTED  127.0.0.1, TLS with UNTRUSTED_CERT, then the commands
  TLS_TRUSTED    127.0.0.1, TLS with TRUSTED_CERT, then the commands
  PLAIN6         ::1, plain TCP, the commands (0: no IPv6 here)

Every listener numbers its connections from 1, all listeners together.
Events go to stdout, one a line, flushed:

    accept N KIND     a connection was accepted (KIND: plain, closer, tls-untrusted, ...)
    tag N NAME        connection N said TAG NAME
    eof N             connection N's peer closed (or reset) it
    tlsfail N REASON  connection N's TLS handshake failed

Commands, one a line (LF or CRLF), answered in order:

    ID                    -> "conn N\\n"
    ECHO text             -> "text\\n"
    ECHOCRLF text         -> "text\\r\\n"
    LINES a b c ...       -> "a\\nb\\r\\nc\\n..." (LF and CRLF alternating) in one write
    WRITE ms hex hex ...  -> each hex-decoded part written on its own (TCP_NODELAY), ms apart
    SEND n                -> n bytes of the pattern (byte i is "a" + i % 26) in one write
    SENDCLOSE n           -> the same, then close
    DRIP n ms             -> n bytes of the pattern one at a time, ms apart
    LATER ms text         -> "text\\n", ms later
    BIGLINE n             -> n bytes "x" then "\\n"
    CLOSE                 -> close at once
    IDLECLOSE ms          -> "ok\\n", then close ms later
    TAG name              -> nothing (logged)
    HOLD                  -> nothing more: read and drop until the peer closes
    NOREAD ms             -> "ok\\n", then read nothing for ms; then read and drop
                             until the peer closes
    SLOWREAD total chunk ms
                          -> read total bytes, at most chunk every ms, then
                             "got TOTAL ok" or "got TOTAL bad AT" (the first
                             byte that is not the pattern's)
    anything else         -> "unknown command\\n"
"""

import socket
import ssl
import sys
import threading
import time

lock = threading.Lock()
counter = [0]


def log(*parts):
    with lock:
        sys.stdout.write(" ".join(str(p) for p in parts) + "\n")
        sys.stdout.flush()


def next_id():
    with lock:
        counter[0] += 1
        return counter[0]


def pattern(n, start=0):
    block = bytes(97 + (i % 26) for i in range(26))
    reps = (start % 26 + n) // 26 + 2
    whole = block * reps
    off = start % 26
    return whole[off:off + n]


class Peer:
    def __init__(self, conn, n):
        self.conn = conn
        self.n = n
        self.buf = b""

    def recv(self, n=65536):
        try:
            data = self.conn.recv(n)
        except (OSError, ssl.SSLError):
            return b""
        return data

    def line(self):
        while b"\n" not in self.buf:
            data = self.recv()
            if not data:
                return None
            self.buf += data
        line, self.buf = self.buf.split(b"\n", 1)
        if line.endswith(b"\r"):
            line = line[:-1]
        return line.decode("latin-1")

    def send(self, data):
        self.conn.sendall(data)

    def nodelay(self):
        try:
            self.conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass

    def drain_until_eof(self):
        self.buf = b""
        while True:
            data = self.recv()
            if not data:
                return

    def run(self):
        while True:
            line = self.line()
            if line is None:
                log("eof", self.n)
                return
            cmd, _, rest = line.partition(" ")
            args = rest.split(" ") if rest else []
            if cmd == "ID":
                self.send(b"conn %d\n" % self.n)
            elif cmd == "ECHO":
                self.send(rest.encode("latin-1") + b"\n")
            elif cmd == "ECHOCRLF":
                self.send(rest.encode("latin-1") + b"\r\n")
            elif cmd == "LINES":
                out = b""
                for i, a in enumerate(args):
                    out += a.encode("latin-1") + (b"\n" if i % 2 == 0 else b"\r\n")
                self.send(out)
            elif cmd == "WRITE":
                self.nodelay()
                ms = int(args[0])
                for i, h in enumerate(args[1:]):
                    if i > 0:
                        time.sleep(ms / 1000.0)
                    self.send(bytes.fromhex(h))
            elif cmd == "SEND":
                self.send(pattern(int(args[0])))
            elif cmd == "SENDCLOSE":
                self.send(pattern(int(args[0])))
                return
            elif cmd == "DRIP":
                self.nodelay()
                n, ms = int(args[0]), int(args[1])
                data = pattern(n)
                for i in range(n):
                    self.send(data[i:i + 1])
                    time.sleep(ms / 1000.0)
            elif cmd == "LATER":
                time.sleep(int(args[0]) / 1000.0)
                self.send(" ".join(args[1:]).encode("latin-1") + b"\n")
            elif cmd == "BIGLINE":
                self.send(b"x" * int(args[0]) + b"\n")
            elif cmd == "CLOSE":
                return
            elif cmd == "IDLECLOSE":
                self.send(b"ok\n")
                time.sleep(int(args[0]) / 1000.0)
                return
            elif cmd == "TAG":
                log("tag", self.n, rest)
            elif cmd == "HOLD":
                self.drain_until_eof()
                log("eof", self.n)
                return
            elif cmd == "NOREAD":
                self.send(b"ok\n")
                time.sleep(int(args[0]) / 1000.0)
                self.drain_until_eof()
                log("eof", self.n)
                return
            elif cmd == "SLOWREAD":
                total, chunk, ms = int(args[0]), int(args[1]), int(args[2])
                got, bad = 0, -1
                while got < total:
                    if self.buf:
                        data, self.buf = self.buf[:chunk], self.buf[chunk:]
                    else:
                        time.sleep(ms / 1000.0)
                        data = self.recv(min(chunk, total - got))
                        if not data:
                            break
                    if len(data) > total - got:
                        self.buf = data[total - got:] + self.buf
                        data = data[:total - got]
                    if bad < 0 and data != pattern(len(data), got):
                        want = pattern(len(data), got)
                        for i in range(len(data)):
                            if data[i] != want[i]:
                                bad = got + i
                                break
                    got += len(data)
                if bad >= 0:
                    self.send(b"got %d bad %d\n" % (got, bad))
                else:
                    self.send(b"got %d ok\n" % got)
            else:
                self.send(b"unknown command\n")


def serve(conn, kind, ctx):
    n = next_id()
    log("accept", n, kind)
    try:
        if kind == "closer":
            return
        if ctx is not None:
            conn.settimeout(10)
            try:
                conn = ctx.wrap_socket(conn, server_side=True)
            except (OSError, ssl.SSLError) as e:
                log("tlsfail", n, str(e).replace("\n", " "))
                return
            conn.settimeout(None)
        Peer(conn, n).run()
    except (OSError, ssl.SSLError):
        log("eof", n)
    finally:
        try:
            conn.close()
        except OSError:
            pass


def listen(family, addr):
    srv = socket.socket(family, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind((addr, 0))
    srv.listen(512)
    return srv


def accept_loop(srv, kind, ctx):
    while True:
        conn, _ = srv.accept()
        threading.Thread(target=serve, args=(conn, kind, ctx), daemon=True).start()


def tls_ctx(cert, key):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    return ctx


def main():
    untrusted = tls_ctx(sys.argv[1], sys.argv[2])
    trusted = tls_ctx(sys.argv[3], sys.argv[4])
    listeners = [
        (listen(socket.AF_INET, "127.0.0.1"), "plain", None),
        (listen(socket.AF_INET, "127.0.0.1"), "closer", None),
        (listen(socket.AF_INET, "127.0.0.1"), "tls-untrusted", untrusted),
        (listen(socket.AF_INET, "127.0.0.1"), "tls-trusted", trusted),
    ]
    try:
        listeners.append((listen(socket.AF_INET6, "::1"), "plain6", None))
    except OSError:
        listeners.append((None, "plain6", None))
    ports = []
    for srv, kind, ctx in listeners:
        if srv is None:
            ports.append(0)
            continue
        ports.append(srv.getsockname()[1])
        threading.Thread(target=accept_loop, args=(srv, kind, ctx), daemon=True).start()
    log("ready", *ports)
    while True:
        time.sleep(3600)


if __name__ == "__main__":
    main()
