#!/usr/bin/env python3
"""Hold many idle HTTP/2 connections (TLS, ALPN h2) open to one loopback server.

    idle_h2.py --port P --conns 1000 --hold 3 [--path /small --length 100]

Opens --conns TLS connections one after the other (a full handshake each,
ALPN offering only "h2", no certificate check: the bench's certificates are
self-signed).  On each it sends the client connection preface, a SETTINGS
frame and one `GET --path` on stream 1 (HPACK, static table and literals
only), and reads frames until that stream ends, acknowledging the server's
SETTINGS (and PINGs).  The response must have :status 200 and, with
--length, exactly that many body bytes.  Each is then a used HTTP/2
connection with no open stream: idle.  It prints

    READY <opened> <failed> <seconds>

holds them idle for --hold seconds (the harness samples the server's memory
meanwhile; the client still acknowledges SETTINGS and PINGs), counts the
connections the server kept (no EOF, no GOAWAY), closes them and prints

    DONE alive=<n>

The first few distinct failure reasons go to stderr as `ERROR <reason>`
(for example `ERROR ALPN: server chose 'http/1.1', not h2`).  The open phase
is bounded by --deadline seconds; run it under `timeout` too.  Only loopback
addresses are accepted.  Python 3 standard library only.
"""
import argparse
import ipaddress
import resource
import selectors
import socket
import ssl
import struct
import sys
import time

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

DATA, HEADERS, RST_STREAM, SETTINGS, PING, GOAWAY, CONTINUATION = 0, 1, 3, 4, 6, 7, 9
END_STREAM, ACK, END_HEADERS, PADDED, PRIORITY = 0x1, 0x1, 0x4, 0x8, 0x20

# :status values of the HPACK static table (RFC 7541, appendix A), by index
STATIC_STATUS = {8: 200, 9: 204, 10: 206, 11: 304, 12: 400, 13: 404, 14: 500}


class H2Error(Exception):
    pass


def frame(ftype, flags, stream, payload=b""):
    return struct.pack(">I", len(payload))[1:] + bytes([ftype, flags]) + struct.pack(">I", stream) + payload


def hpack_int(value, prefix_bits, first):
    """An HPACK integer with an N-bit prefix; `first` holds the flag bits."""
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes([first | value])
    out = [first | limit]
    value -= limit
    while value >= 128:
        out.append(value % 128 + 128)
        value //= 128
    out.append(value)
    return bytes(out)


def hpack_literal(name_index, value):
    """Literal header field without indexing, indexed name, raw (not Huffman) value."""
    v = value.encode("latin-1")
    return hpack_int(name_index, 4, 0x00) + hpack_int(len(v), 7, 0x00) + v


def request_block(path, authority):
    # :method GET (static 2), :scheme https (static 7), :path and :authority
    # as literals with the static names 4 and 1
    return b"\x82\x87" + hpack_literal(4, path) + hpack_literal(1, authority)


def read_hpack_int(buf, pos, prefix_bits):
    limit = (1 << prefix_bits) - 1
    value = buf[pos] & limit
    pos += 1
    if value < limit:
        return value, pos
    shift = 0
    while True:
        b = buf[pos]
        pos += 1
        value += (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return value, pos


def response_status(block):
    """:status of a response header block.  A response's first field is
    :status; on a connection's first response the dynamic table is empty,
    so it is either a static-table index or a literal with the static name
    :status (index 8), its value raw or Huffman-coded ("200" in Huffman is
    10 01).  Returns the status, or None when it cannot tell."""
    if not block:
        return None
    b = block[0]
    if b & 0x80:  # indexed field
        idx, _ = read_hpack_int(block, 0, 7)
        return STATIC_STATUS.get(idx)
    if b & 0xE0 == 0x20:  # dynamic table size update first: skip it
        _, pos = read_hpack_int(block, 0, 5)
        return response_status(block[pos:])
    if b & 0xC0 == 0x40:
        idx, pos = read_hpack_int(block, 0, 6)
    else:  # without indexing / never indexed
        idx, pos = read_hpack_int(block, 0, 4)
    if idx != 8:
        return None
    huff = block[pos] & 0x80
    n, pos = read_hpack_int(block, pos, 7)
    raw = block[pos:pos + n]
    if not huff:
        return int(raw) if raw.isdigit() else None
    return 200 if raw == b"\x10\x01" else None


class Conn:
    """One HTTP/2 client connection: a blocking TLS socket and a frame reader."""

    def __init__(self, sock):
        self.sock = sock
        self.buf = b""
        self.closed = False  # EOF or GOAWAY seen

    def frames(self):
        """Complete frames in the buffer: (type, flags, stream, payload)."""
        while len(self.buf) >= 9:
            n = int.from_bytes(self.buf[:3], "big")
            if len(self.buf) < 9 + n:
                return
            ftype, flags = self.buf[3], self.buf[4]
            stream = int.from_bytes(self.buf[5:9], "big") & 0x7FFFFFFF
            payload = self.buf[9:9 + n]
            self.buf = self.buf[9 + n:]
            yield ftype, flags, stream, payload

    def control(self, ftype, flags, payload):
        """Answer what the connection asks for.  Returns False on GOAWAY."""
        if ftype == SETTINGS and not flags & ACK:
            self.sock.sendall(frame(SETTINGS, ACK, 0))
        elif ftype == PING and not flags & ACK:
            self.sock.sendall(frame(PING, ACK, 0, payload))
        elif ftype == GOAWAY:
            self.closed = True
            return False
        return True

    def get(self, path, authority):
        """One GET on stream 1.  Returns (status, body bytes)."""
        self.sock.sendall(PREFACE + frame(SETTINGS, 0, 0, struct.pack(">HI", 2, 0))  # ENABLE_PUSH 0
                          + frame(HEADERS, END_STREAM | END_HEADERS, 1, request_block(path, authority)))
        block, status, body, ended = b"", None, 0, False
        while not ended:
            d = self.sock.recv(65536)
            if not d:
                raise H2Error("closed by the server before the response ended")
            self.buf += d
            for ftype, flags, stream, payload in self.frames():
                if stream == 0:
                    if not self.control(ftype, flags, payload):
                        raise H2Error("GOAWAY before the response ended")
                    continue
                if stream != 1:
                    continue
                if ftype == RST_STREAM:
                    raise H2Error("RST_STREAM on the request (code %d)" % int.from_bytes(payload[:4], "big"))
                if ftype in (HEADERS, CONTINUATION):
                    if ftype == HEADERS:
                        pad = 0
                        if flags & PADDED:
                            pad, payload = payload[0], payload[1:]
                        if flags & PRIORITY:
                            payload = payload[5:]
                        payload = payload[:len(payload) - pad]
                    block += payload
                    if flags & END_HEADERS:
                        if status is None:
                            status = response_status(block)
                            if status is None:
                                raise H2Error("cannot read :status (header block starts %s)" % block[:8].hex())
                        block = b""  # a later block is the trailers
                elif ftype == DATA:
                    pad = 0
                    if flags & PADDED:
                        pad = payload[0] + 1
                    body += len(payload) - pad
                if ftype in (HEADERS, DATA) and flags & END_STREAM:
                    ended = True
        return status, body

    def poll(self):
        """Non-blocking: read what the server sent, answer it, note EOF/GOAWAY."""
        while not self.closed:
            try:
                d = self.sock.recv(65536)
            except (ssl.SSLWantReadError, ssl.SSLWantWriteError, BlockingIOError):
                return
            except OSError:
                self.closed = True
                return
            if not d:
                self.closed = True
                return
            self.buf += d
            for ftype, flags, stream, payload in self.frames():
                if stream == 0:
                    try:
                        self.control(ftype, flags, payload)
                    except OSError:
                        self.closed = True


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--conns", type=int, default=1000)
    ap.add_argument("--path", default="/small")
    ap.add_argument("--authority", default="bench.test")
    ap.add_argument("--length", type=int, default=-1,
                    help="expected body length in bytes (-1: any)")
    ap.add_argument("--hold", type=float, default=3)
    ap.add_argument("--deadline", type=float, default=120,
                    help="max seconds for the open phase")
    a = ap.parse_args()
    if not ipaddress.ip_address(a.host).is_loopback:
        sys.exit("idle_h2.py: loopback addresses only")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, a.conns + 100)), hard))
    if a.conns + 32 > hard:
        print("idle_h2.py: RLIMIT_NOFILE hard limit %d, capping to %d connections"
              % (hard, hard - 32), file=sys.stderr)
        a.conns = hard - 32
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_alpn_protocols(["h2"])

    conns, failed, reasons, t0 = [], 0, [], time.monotonic()
    for _ in range(a.conns):
        if time.monotonic() - t0 > a.deadline:
            break
        s = None
        try:
            s = ctx.wrap_socket(socket.create_connection((a.host, a.port), timeout=5),
                                server_hostname=a.authority)
            proto = s.selected_alpn_protocol()
            if proto != "h2":
                raise H2Error("ALPN: server chose %r, not h2" % proto)
            c = Conn(s)
            status, body = c.get(a.path, a.authority)
            if status != 200:
                raise H2Error(":status %s" % status)
            if a.length >= 0 and body != a.length:
                raise H2Error("body of %d bytes, want %d" % (body, a.length))
            conns.append(c)
        except (OSError, H2Error, ValueError, IndexError) as e:
            failed += 1
            why = "%s: %s" % (type(e).__name__, e) if isinstance(e, OSError) else str(e)
            if why not in reasons and len(reasons) < 5:
                reasons.append(why)
                print("ERROR %s" % why, file=sys.stderr, flush=True)
            if s is not None:
                s.close()
    failed = a.conns - len(conns)  # includes those never tried (deadline)
    print("READY %d %d %.1f" % (len(conns), failed, time.monotonic() - t0), flush=True)

    # Hold: idle, but answer the server's SETTINGS and PINGs, and notice the
    # connections it closes (EOF or GOAWAY).
    sel = selectors.DefaultSelector()
    for c in conns:
        c.sock.setblocking(False)
        sel.register(c.sock, selectors.EVENT_READ, c)
    end = time.monotonic() + max(0.0, a.hold)
    while time.monotonic() < end:
        for key, _ in sel.select(timeout=max(0.0, min(0.5, end - time.monotonic()))):
            c = key.data
            c.poll()
            if c.closed:
                sel.unregister(c.sock)
    for c in conns:
        c.poll()
    alive = sum(1 for c in conns if not c.closed)
    for c in conns:
        c.sock.close()
    print("DONE alive=%d" % alive, flush=True)


if __name__ == "__main__":
    main()
