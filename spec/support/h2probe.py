#!/usr/bin/env python3
"""h2probe.py -- an HTTP/2 test client for moxy's integration specs.

    python3 spec/support/h2probe.py [--tls] [--host 127.0.0.1] --port P
                                    [--timeout S] MODE [mode options]

Every frame is written by hand (struct), so malformed and abusive traffic can
be sent; HPACK decoding of the server's header blocks uses the `hpack` package
(python3-hpack, a dependency of python3-h2), request header blocks are encoded
here (static table and literals only, never Huffman, never the dynamic table
except where a mode says so).  --tls: TLS with ALPN ["h2"], no certificate
verification, SNI "localhost" (--sni); otherwise cleartext prior knowledge.

Prints exactly one JSON object on stdout and exits 0 (2 on a usage error, with
argparse's message on stderr).  The run is bounded by --timeout seconds in
all (default 10), every loop by a count.  Fields present in every mode:

  mode            the mode's name
  error           null, or text (could not connect, ALPN did not pick h2, the
                  server did not speak HTTP/2, a frame could not be decoded...)
  alpn            the protocol ALPN selected (--tls), else null
  seconds         time from start to the end of the run (connect included)
  timed_out       true when --timeout ended the run before the mode was done
  closed          true when the server closed the TCP connection (FIN, RST,
                  or a write failing with EPIPE/ECONNRESET)
  close_kind      "fin", "reset" (ECONNRESET, EPIPE) or null
  closed_seconds  when the close was seen, or null
  goaway          the last GOAWAY received: {error (RFC 9113 name), code,
                  last_stream_id, debug (latin-1, <= 256 chars), seconds},
                  or null
  goaways         every GOAWAY received, in order, same shape
  rst             {"<stream id>": error name} for each RST_STREAM received
  rst_seconds     {"<stream id>": when it was received}
  responses       {"<stream id>": {status, headers [[name, value], ...] (no
                  pseudo-headers, wire order), body_len, trailers [[n, v], ...]
                  ([] when none), informational [{status, headers}] (1xx),
                  complete (END_STREAM seen), headers_seconds, seconds (when
                  complete, else null), body (latin-1, first 64 KiB; only with
                  --show-body)}} for each stream that got a final response
  settings        the server's SETTINGS, merged, name -> value (names:
                  HEADER_TABLE_SIZE, ENABLE_PUSH, MAX_CONCURRENT_STREAMS,
                  INITIAL_WINDOW_SIZE, MAX_FRAME_SIZE, MAX_HEADER_LIST_SIZE,
                  ENABLE_CONNECT_PROTOCOL, NO_RFC7540_PRIORITIES, or "0xNN")
  settings_acked  the server acknowledged our SETTINGS
  sent_frames     frames written to the socket in all (preface not counted)
  sent_bytes      bytes written to the socket in all (preface included)
  recv_frames     {frame type name: count} of frames received
  ping_acks       PING ACKs received
  protocol_errors list of text: things the server sent that RFC 9113 forbids
                  or that could not be parsed (e.g. DATA beyond the window)

Options common to all modes: --authority (default "localhost"), --sni,
--setting NAME=VALUE (added to our SETTINGS, repeatable), --no-wait-settings
(by default a mode starts sending once the server's SETTINGS arrived),
--grace S (after a GOAWAY, how long to go on reading to see the close,
default 2), --linger S (read this long after the mode is done; the flood
modes default to "until GOAWAY, close or --timeout"), --show-body,
--frame-size N (split header blocks into frames of at most N bytes; default
the server's MAX_FRAME_SIZE, at most 16384).

Counting: a frame is "sent" once its last byte was written to the socket
(over TLS, in records of 16 KiB); "sent_before_reaction" is that count when
the reaction was read, so it includes frames the server had not yet read.

Modes and their own fields (--n defaults: get 1, streams 10, goaway-watch 1,
the others 1000; --path defaults to "/" unless shown):

  get --path /x [--n N] [--header name:value ...] [--method M]
      N (default 1) requests on streams 1, 3, 5..., concurrently (up to the
      server's MAX_CONCURRENT_STREAMS at once).  Header names are sent as
      given (not lowercased).  -> requested (N), completed (stream ids)

  rapid-reset --n N [--path /]
      HEADERS (GET, END_STREAM) then RST_STREAM(CANCEL), N streams, as fast as
      the socket takes them (CVE-2023-44487), then read until GOAWAY/close.
      -> attempted, queued (pairs generated), sent (pairs fully written),
      sent_before_reaction (pairs written when the first GOAWAY or close was
      seen, else null), reaction ("goaway", "closed" or null),
      reaction_seconds

  continuation-flood --n N [--value-size 16]
      HEADERS (END_STREAM, no END_HEADERS) then up to N CONTINUATION frames,
      each one header "x-a: aaa..." (literal without indexing), never ending
      the block (CVE-2024-27316).  -> attempted, queued, sent (CONTINUATIONs),
      sent_before_reaction, reaction, reaction_seconds, header_bytes_sent

  hpack-bomb --n N [--value-size 4000]
      Stream 1: GET with "x-bomb: <value>" as a literal with incremental
      indexing (dynamic table entry 62; value shrunk to fit the server's
      HEADER_TABLE_SIZE).  Stream 3: GET whose block references entry 62 N
      times (one byte each), split into HEADERS+CONTINUATION as needed.
      -> value_size, block_bytes (stream 3's block), decoded_bytes (what
      that block expands to: N * (name + value length))

  settings-flood | ping-flood | priority-flood | window-update-flood |
  empty-data-flood  --n N [--path /]  [--then-get PATH]
      N frames as fast as the socket takes them, reading only what is there,
      then read until GOAWAY/close (or --linger).  settings: empty SETTINGS;
      ping: PING with an 8-byte counter; priority: PRIORITY on idle streams
      1, 3, 5... each depending on the previous one; window-update:
      WINDOW_UPDATE(1) on stream 0; empty-data: a POST on stream 1 (no
      END_STREAM) then N zero-length DATA frames without END_STREAM (an RST
      of stream 1 is a reaction too).  --then-get PATH: when the flood drew
      no reaction, a GET on a new stream afterwards (is the server still
      answering?) -- its result is in responses/rst.
      -> attempted, queued, sent, sent_before_reaction, reaction ("goaway",
      "closed", "rst" or null), reaction_seconds, then_get_stream (or null),
      settings_acks (settings-flood: SETTINGS ACKs received, the one for our
      first SETTINGS included); ping_acks is a common field

  streams --n N [--path /slow]
      N GETs at once, without waiting and ignoring MAX_CONCURRENT_STREAMS.
      -> requested, refused (ids RST with REFUSED_STREAM), completed (ids
      with a complete response), reset_other (ids RST with another code),
      unanswered (ids with neither, or beyond a GOAWAY's last_stream_id)

  zero-window [--path /big]
      Our SETTINGS carry INITIAL_WINDOW_SIZE=0; no WINDOW_UPDATE is ever
      sent.  GET on stream 1, then wait for an RST, GOAWAY, close, a complete
      response, or --timeout.  -> headers_seconds (or null), data_received
      (DATA payload bytes on stream 1: more than 0 breaks flow control),
      stream_reset (error name or null), stream_reset_seconds

  idle
      Preface and SETTINGS only (SETTINGS ACK and PING ACK are still sent);
      wait for GOAWAY/close/--timeout.  (Use goaway.seconds, closed_seconds.)

  big-headers --size BYTES [--name x-big]
      One GET with a header of BYTES bytes of value, a literal without
      indexing, split properly into HEADERS + CONTINUATION frames (see
      --frame-size); --header adds more.  -> header_block_bytes, frames
      (HEADERS + CONTINUATIONs used)

  slow-reader [--path /big] [--other /small] [--delay 3]
      Stream 1 GETs --path; its stream window (65535) is never replenished,
      the connection window is (2^30 at once, then every DATA).  Once stream 1
      has 65535 bytes (or after --delay seconds), stream 3 GETs --other.
      -> first {stream, body_len, stalled (got its whole window and is not
      complete), complete}, second {stream, completed, status, seconds (from
      its HEADERS to its END_STREAM, or null)}

  upload --path /echo --size BYTES [--chunk 16384] [--trailers]
         [--trailer name:value ...] [--no-content-length] [--stall-after N]
      POST with BYTES bytes of body (byte i is i % 251, the pattern origin.py
      checks), in DATA frames of at most --chunk bytes and the server's
      MAX_FRAME_SIZE, never beyond the stream or connection send window
      (waits for WINDOW_UPDATE).  content-length is sent unless
      --no-content-length; --header adds headers; --stall-after N: the
      body stops after N bytes and the server's answer is awaited.  --trailers: END_STREAM
      comes on a trailer HEADERS frame ("x-checksum: 1", or the --trailer
      headers).
      -> uploaded (body bytes queued), upload_complete (END_STREAM written),
      upload_seconds (when it was written), window_waits (times the send
      window was exhausted)

  goaway-watch [--path /slow] [--n N] [--interval S]
      N GETs (every --interval seconds, default all at once; none opened
      after a GOAWAY), then read until all are answered, reset or beyond a
      GOAWAY's last_stream_id, then --grace for the close.
      -> requested, opened, completed, unanswered, refused
"""

import argparse
import json
import os
import select
import socket
import ssl
import struct
import sys
import time
from collections import deque

try:
    import hpack
except ImportError:  # a pyenv or venv python: use Debian's python3-hpack
    for _p in ("/usr/lib/python3/dist-packages",):
        if os.path.isdir(_p) and _p not in sys.path:
            sys.path.append(_p)
    try:
        import hpack
    except ImportError:
        hpack = None

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY, \
    WINDOW_UPDATE, CONTINUATION = range(10)
FRAME_NAMES = ["DATA", "HEADERS", "PRIORITY", "RST_STREAM", "SETTINGS",
               "PUSH_PROMISE", "PING", "GOAWAY", "WINDOW_UPDATE",
               "CONTINUATION"]

F_END_STREAM = 0x1
F_ACK = 0x1
F_END_HEADERS = 0x4
F_PADDED = 0x8
F_PRIORITY = 0x20

ERROR_NAMES = ["NO_ERROR", "PROTOCOL_ERROR", "INTERNAL_ERROR",
               "FLOW_CONTROL_ERROR", "SETTINGS_TIMEOUT", "STREAM_CLOSED",
               "FRAME_SIZE_ERROR", "REFUSED_STREAM", "CANCEL",
               "COMPRESSION_ERROR", "CONNECT_ERROR", "ENHANCE_YOUR_CALM",
               "INADEQUATE_SECURITY", "HTTP_1_1_REQUIRED"]
CANCEL = 8

SETTING_NAMES = {1: "HEADER_TABLE_SIZE", 2: "ENABLE_PUSH",
                 3: "MAX_CONCURRENT_STREAMS", 4: "INITIAL_WINDOW_SIZE",
                 5: "MAX_FRAME_SIZE", 6: "MAX_HEADER_LIST_SIZE",
                 8: "ENABLE_CONNECT_PROTOCOL", 9: "NO_RFC7540_PRIORITIES"}
SETTING_IDS = {v: k for k, v in SETTING_NAMES.items()}

MAX_WINDOW = 2 ** 31 - 1
BODY_KEEP = 65536
READ_SIZE = 262144
WRITE_CHUNK = 16384          # one TLS record: a write is all or nothing
OUT_HIGH = 262144          # stop queueing flood frames above this backlog

# RFC 7541 Appendix A
STATIC_TABLE = [
    (":authority", ""), (":method", "GET"), (":method", "POST"),
    (":path", "/"), (":path", "/index.html"), (":scheme", "http"),
    (":scheme", "https"), (":status", "200"), (":status", "204"),
    (":status", "206"), (":status", "304"), (":status", "400"),
    (":status", "404"), (":status", "500"), ("accept-charset", ""),
    ("accept-encoding", "gzip, deflate"), ("accept-language", ""),
    ("accept-ranges", ""), ("accept", ""),
    ("access-control-allow-origin", ""), ("age", ""), ("allow", ""),
    ("authorization", ""), ("cache-control", ""),
    ("content-disposition", ""), ("content-encoding", ""),
    ("content-language", ""), ("content-length", ""),
    ("content-location", ""), ("content-range", ""), ("content-type", ""),
    ("cookie", ""), ("date", ""), ("etag", ""), ("expect", ""),
    ("expires", ""), ("from", ""), ("host", ""), ("if-match", ""),
    ("if-modified-since", ""), ("if-none-match", ""), ("if-range", ""),
    ("if-unmodified-since", ""), ("last-modified", ""), ("link", ""),
    ("location", ""), ("max-forwards", ""), ("proxy-authenticate", ""),
    ("proxy-authorization", ""), ("range", ""), ("referer", ""),
    ("refresh", ""), ("retry-after", ""), ("server", ""), ("set-cookie", ""),
    ("strict-transport-security", ""), ("transfer-encoding", ""),
    ("user-agent", ""), ("vary", ""), ("via", ""), ("www-authenticate", ""),
]
STATIC_FULL = {}
STATIC_NAME = {}
for _i, (_n, _v) in enumerate(STATIC_TABLE, 1):
    STATIC_FULL.setdefault((_n.encode(), _v.encode()), _i)
    STATIC_NAME.setdefault(_n.encode(), _i)


def error_name(code):
    if 0 <= code < len(ERROR_NAMES):
        return ERROR_NAMES[code]
    return "UNKNOWN_0x%x" % code


def frame_name(t):
    if 0 <= t < len(FRAME_NAMES):
        return FRAME_NAMES[t]
    return "UNKNOWN_0x%02x" % t


def setting_name(i):
    return SETTING_NAMES.get(i, "0x%02x" % i)


def b(s):
    return s if isinstance(s, bytes) else s.encode("latin-1")


# --------------------------------------------------------------------------
# HPACK encoding (RFC 7541), no Huffman

def hp_int(value, prefix, first=0):
    limit = (1 << prefix) - 1
    if value < limit:
        return bytes([first | value])
    out = bytearray([first | limit])
    value -= limit
    while value >= 128:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def hp_str(s):
    s = b(s)
    return hp_int(len(s), 7, 0x00) + s


def hp_header(name, value, how="noindex"):
    """One header field: indexed when it is in the static table as is,
    else a literal ("noindex": without indexing, "index": with incremental
    indexing, "never": never indexed), its name indexed when possible."""
    name, value = b(name), b(value)
    if how != "never":
        idx = STATIC_FULL.get((name, value))
        if idx is not None:
            return hp_int(idx, 7, 0x80)
    prefix, first = {"noindex": (4, 0x00), "index": (6, 0x40),
                     "never": (4, 0x10)}[how]
    nidx = STATIC_NAME.get(name, 0)
    out = hp_int(nidx, prefix, first)
    if not nidx:
        out += hp_str(name)
    return out + hp_str(value)


def pattern(off, n, _cache={}):
    """n bytes of the body pattern (byte i == i % 251) from offset off."""
    blk = _cache.get("b")
    if blk is None or len(blk) < n + 251:
        blk = bytes(i % 251 for i in range(251)) * ((n + 251) // 251 + 1)
        _cache["b"] = blk
    s = off % 251
    return blk[s:s + n]


# --------------------------------------------------------------------------

class Done(Exception):
    pass


class Stream:
    def __init__(self, sid, now):
        self.sid = sid
        self.opened = now
        self.status = None
        self.headers = []
        self.informational = []
        self.trailers = []
        self.body_len = 0
        self.flow_len = 0          # DATA payload incl. padding
        self.body = bytearray()
        self.end_stream = False
        self.headers_at = None
        self.done_at = None
        self.rst = None
        self.rst_at = None
        self.reset_by_us = False
        self.send_window = 0
        self.recv_window = 0
        self.auto_update = True

    def resolved(self, last_sid=None):
        if self.end_stream or self.rst is not None or self.reset_by_us:
            return True
        return last_sid is not None and self.sid > last_sid


class Probe:
    def __init__(self, args):
        self.a = args
        self.t0 = time.monotonic()
        self.deadline = self.t0 + args.timeout
        self.sock = None
        self.tls = args.tls
        self.alpn = None
        self.out = bytearray()
        self.queued_total = 0
        self.written_total = 0
        self.frame_ends = deque()
        self.sent_frames = 0
        self.sent_kind = {}
        self.inbuf = bytearray()
        self.first_frame = True
        self.closed = False
        self.close_kind = None
        self.closed_at = None
        self.goaways = []
        self.streams = {}
        self.next_sid = 1
        self.server_settings = {}
        self.server_settings_seen = False
        self.settings_acked = False
        self.settings_acks = 0
        self.ping_acks = 0
        self.recv_frames = {}
        self.protocol_errors = []
        self.error = None
        self.timed_out = False
        # peer parameters
        self.peer_initial_window = 65535
        self.peer_max_frame = 16384
        self.peer_table_size = 4096
        self.enc_table_size = 4096
        self.table_update = None
        self.conn_send_window = 65535
        self.conn_recv_window = 65535
        self.auto_window = True          # replenish windows on DATA
        self.conn_auto_window = True
        self.our_initial_window = 65535
        self.hdr_block = None            # (sid, bytearray, end_stream, push)
        self.decoder = None
        self.reaction = None
        self.reaction_kinds = ("goaway", "closed")
        self.reaction_rst_sid = None
        self.reaction_unit = None
        self.extra = {}

    # ---------------------------------------------------------------- time
    def now(self):
        return round(time.monotonic() - self.t0, 4)

    def remaining(self):
        return self.deadline - time.monotonic()

    # ------------------------------------------------------------ sockets
    def connect(self):
        a = self.a
        t = max(0.1, self.remaining())
        raw = socket.create_connection((a.host, a.port), timeout=t)
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self.tls:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
            ctx.set_alpn_protocols(["h2"])
            raw.settimeout(max(0.1, self.remaining()))
            s = ctx.wrap_socket(raw, server_hostname=a.sni)
            self.alpn = s.selected_alpn_protocol()
            if self.alpn != "h2":
                s.close()
                raise Done("ALPN did not select h2 (got %r)" % (self.alpn,))
            self.sock = s
        else:
            self.sock = raw
        self.sock.setblocking(False)
        self.decoder = hpack.Decoder()
        self.decoder.max_header_list_size = 1 << 28

    def mark_closed(self, kind):
        if not self.closed:
            self.closed = True
            self.close_kind = kind
            self.closed_at = self.now()
            self.react("closed")

    def _read(self):
        for _ in range(16):
            if self.closed:
                return
            try:
                data = self.sock.recv(READ_SIZE)
            except (BlockingIOError, InterruptedError, ssl.SSLWantReadError,
                    ssl.SSLWantWriteError):
                return
            except ssl.SSLZeroReturnError:
                self.mark_closed("fin")
                return
            except ssl.SSLEOFError:
                self.mark_closed("fin")
                return
            except (ConnectionResetError, BrokenPipeError):
                self.mark_closed("reset")
                return
            except (ssl.SSLError, OSError) as e:
                self.protocol_errors.append("read: %s" % e)
                self.mark_closed("reset")
                return
            if not data:
                self.mark_closed("fin")
                return
            self.inbuf += data
            self._parse()
            more = self.tls and self.sock.pending()
            if not more and len(data) < READ_SIZE:
                return

    def _drain(self):
        """The server is gone (a write failed): what it sent before going,
        a GOAWAY most of all, may still wait in the socket's receive queue."""
        for _ in range(256):
            try:
                data = self.sock.recv(READ_SIZE)
            except Exception:
                return
            if not data:
                return
            self.inbuf += data
            self._parse()
            if self.error:
                return

    def _write(self):
        for _ in range(64):
            if self.closed or not self.out:
                return
            chunk = bytes(self.out[:WRITE_CHUNK])
            try:
                n = self.sock.send(chunk)
            except (BlockingIOError, InterruptedError, ssl.SSLWantWriteError,
                    ssl.SSLWantReadError):
                return
            except (BrokenPipeError, ConnectionResetError, ssl.SSLEOFError):
                self._drain()
                self.mark_closed("reset")
                return
            except (ssl.SSLError, OSError) as e:
                self.protocol_errors.append("write: %s" % e)
                self._drain()
                self.mark_closed("reset")
                return
            if n <= 0:
                return
            del self.out[:n]
            self.written_total += n
            ends = self.frame_ends
            while ends and ends[0][0] <= self.written_total:
                _, kind, cb = ends.popleft()
                self.sent_frames += 1
                if kind:
                    self.sent_kind[kind] = self.sent_kind.get(kind, 0) + 1
                if cb:
                    cb()

    def step(self, wait=0.05):
        """Write what the socket takes, read what is there, waiting at most
        `wait` seconds for either."""
        if self.closed:
            return
        self._write()
        if self.closed:
            return
        if self.tls and self.sock.pending():
            self._read()
            return
        wait = max(0.0, min(wait, self.remaining()))
        try:
            wl = [self.sock] if self.out else []
            rl, wl, _ = select.select([self.sock], wl, [], wait)
        except (OSError, ValueError):
            self.mark_closed("reset")
            return
        if rl:
            self._read()
        if wl and not self.closed:
            self._write()

    def run_until(self, cond, limit=None, max_steps=10_000_000):
        """Step until cond() holds, the connection closed, --timeout or the
        `limit` (monotonic time) passed.  -> cond()."""
        for _ in range(max_steps):
            if cond():
                return True
            if self.closed:
                return cond()
            now = time.monotonic()
            if now >= self.deadline:
                self.timed_out = True
                return cond()
            if limit is not None and now >= limit:
                return cond()
            w = 0.05
            if limit is not None:
                w = min(w, limit - now)
            self.step(w)
        return cond()

    # ------------------------------------------------------------- frames
    def frame(self, ftype, flags, sid, payload=b"", kind=None, cb=None):
        n = len(payload)
        hdr = struct.pack(">BHBBI", (n >> 16) & 0xFF, n & 0xFFFF, ftype,
                          flags, sid & 0x7FFFFFFF)
        self.out += hdr
        self.out += payload
        self.queued_total += 9 + n
        self.frame_ends.append((self.queued_total, kind, cb))

    def send_settings(self, pairs, ack=False):
        payload = b"".join(struct.pack(">HI", k, v) for k, v in pairs)
        self.frame(SETTINGS, F_ACK if ack else 0, 0, payload)

    def window_update(self, sid, inc, kind=None):
        self.frame(WINDOW_UPDATE, 0, sid, struct.pack(">I", inc & 0x7FFFFFFF),
                   kind=kind)

    def rst_stream(self, sid, code, kind=None):
        self.frame(RST_STREAM, 0, sid, struct.pack(">I", code), kind=kind)
        st = self.streams.get(sid)
        if st:
            st.reset_by_us = True

    def block_prefix(self):
        """A dynamic table size update owed to the server's lowered
        HEADER_TABLE_SIZE, once, at the start of the next block."""
        if self.table_update is None:
            return b""
        v, self.table_update = self.table_update, None
        return hp_int(v, 5, 0x20)

    def header_block(self, sid, block, end_stream, kind=None, max_frame=None):
        """HEADERS + CONTINUATION frames carrying `block`, END_HEADERS on the
        last.  -> frames used."""
        mf = max_frame or self.a.frame_size or min(self.peer_max_frame, 16384)
        mf = max(1, mf)
        first = True
        pos = 0
        frames = 0
        while True:
            piece = block[pos:pos + mf]
            pos += len(piece)
            last = pos >= len(block)
            flags = F_END_HEADERS if last else 0
            if first:
                if end_stream:
                    flags |= F_END_STREAM
                self.frame(HEADERS, flags, sid, piece, kind=kind)
                first = False
            else:
                self.frame(CONTINUATION, flags, sid, piece, kind=kind)
            frames += 1
            if last:
                return frames

    def request_block(self, method, path, extra=(), how_extra="noindex"):
        a = self.a
        out = self.block_prefix()
        out += hp_header(":method", method)
        out += hp_header(":scheme", "https" if self.tls else "http")
        out += hp_header(":authority", a.authority)
        out += hp_header(":path", path)
        for n, v in extra:
            out += hp_header(n, v, how_extra)
        return out

    def new_stream(self):
        sid = self.next_sid
        self.next_sid += 2
        st = Stream(sid, self.now())
        st.send_window = self.peer_initial_window
        st.recv_window = self.our_initial_window
        self.streams[sid] = st
        return st

    def request(self, method, path, extra=(), end_stream=True, kind=None):
        st = self.new_stream()
        self.header_block(st.sid, self.request_block(method, path, extra),
                          end_stream, kind=kind)
        return st

    # ------------------------------------------------------------ parsing
    def react(self, kind, unit=None):
        if self.reaction is None and kind in self.reaction_kinds:
            u = unit or self.reaction_unit
            self.reaction = {"kind": kind, "seconds": self.now(),
                             "sent": self.sent_kind.get(u, 0) if u else None}

    def _parse(self):
        buf = self.inbuf
        for _ in range(1_000_000):
            if self.closed and self.error:
                return
            if self.first_frame:
                if len(buf) < 9:
                    return
                if buf[3] != SETTINGS or buf[4] & F_ACK or any(buf[5:9]):
                    n0 = (buf[0] << 16) | (buf[1] << 8) | buf[2]
                    if buf[3] <= CONTINUATION and n0 <= 1 << 20 and \
                            not buf[5] & 0x80:
                        self.protocol_errors.append(
                            "first frame is %s, not SETTINGS" %
                            frame_name(buf[3]))
                    else:
                        self.error = ("server did not speak HTTP/2: first "
                                      "bytes %r" % bytes(buf[:48]))
                        self.mark_closed("fin")
                        return
                self.first_frame = False
            if len(buf) < 9:
                return
            n = (buf[0] << 16) | (buf[1] << 8) | buf[2]
            if len(buf) < 9 + n:
                return
            ftype, flags = buf[3], buf[4]
            sid = struct.unpack(">I", buf[5:9])[0] & 0x7FFFFFFF
            payload = bytes(buf[9:9 + n])
            del buf[:9 + n]
            name = frame_name(ftype)
            self.recv_frames[name] = self.recv_frames.get(name, 0) + 1
            try:
                self.on_frame(ftype, flags, sid, payload)
            except Exception as e:  # a malformed frame must not kill the run
                self.protocol_errors.append("%s on stream %d: %s: %s" % (
                    name, sid, type(e).__name__, e))

    def strip_padding(self, flags, payload):
        if flags & F_PADDED:
            pad = payload[0]
            if pad >= len(payload):
                raise ValueError("padding longer than the frame")
            return payload[1:len(payload) - pad]
        return payload

    def on_frame(self, ftype, flags, sid, p):
        if self.hdr_block is not None and ftype != CONTINUATION:
            self.protocol_errors.append(
                "%s inside a header block of stream %d" %
                (frame_name(ftype), self.hdr_block[0]))
            self.hdr_block = None
        if ftype == DATA:
            self.on_data(flags, sid, p)
        elif ftype == HEADERS:
            data = self.strip_padding(flags, p)
            if flags & F_PRIORITY:
                data = data[5:]
            self.hdr_block = (sid, bytearray(data), bool(flags & F_END_STREAM),
                              False)
            if flags & F_END_HEADERS:
                self.end_block()
        elif ftype == CONTINUATION:
            if self.hdr_block is None or self.hdr_block[0] != sid:
                self.protocol_errors.append(
                    "CONTINUATION on stream %d outside a header block" % sid)
                return
            self.hdr_block[1].extend(p)
            if flags & F_END_HEADERS:
                self.end_block()
        elif ftype == PUSH_PROMISE:
            data = self.strip_padding(flags, p)
            self.protocol_errors.append("PUSH_PROMISE on stream %d (push is "
                                        "disabled)" % sid)
            self.hdr_block = (sid, bytearray(data[4:]), False, True)
            if flags & F_END_HEADERS:
                self.end_block()
        elif ftype == RST_STREAM:
            code = struct.unpack(">I", p[:4])[0]
            st = self.streams.get(sid)
            if st is None:
                st = self.streams[sid] = Stream(sid, self.now())
            if st.rst is None:
                st.rst = error_name(code)
                st.rst_at = self.now()
            if self.reaction_rst_sid == sid:
                self.react("rst")
        elif ftype == SETTINGS:
            if flags & F_ACK:
                self.settings_acked = True
                self.settings_acks += 1
                return
            for i in range(0, len(p) - len(p) % 6, 6):
                k, v = struct.unpack(">HI", p[i:i + 6])
                self.server_settings[setting_name(k)] = v
                if k == 4:
                    delta = v - self.peer_initial_window
                    self.peer_initial_window = v
                    for st in self.streams.values():
                        st.send_window += delta
                elif k == 5:
                    self.peer_max_frame = v
                elif k == 1:
                    self.peer_table_size = v
                    if v < self.enc_table_size:
                        self.enc_table_size = v
                        self.table_update = v
            self.server_settings_seen = True
            self.send_settings([], ack=True)
        elif ftype == PING:
            if flags & F_ACK:
                self.ping_acks += 1
            else:
                self.frame(PING, F_ACK, 0, p)
        elif ftype == GOAWAY:
            last, code = struct.unpack(">II", p[:8])
            g = {"error": error_name(code), "code": code,
                 "last_stream_id": last & 0x7FFFFFFF,
                 "debug": p[8:8 + 256].decode("latin-1"),
                 "seconds": self.now()}
            self.goaways.append(g)
            self.react("goaway")
        elif ftype == WINDOW_UPDATE:
            inc = struct.unpack(">I", p[:4])[0] & 0x7FFFFFFF
            if sid == 0:
                self.conn_send_window += inc
            else:
                st = self.streams.get(sid)
                if st:
                    st.send_window += inc

    def end_block(self):
        sid, block, end_stream, push = self.hdr_block
        self.hdr_block = None
        try:
            hdrs = self.decoder.decode(bytes(block), raw=True)
        except Exception as e:
            self.protocol_errors.append("HPACK decode on stream %d: %s: %s" %
                                        (sid, type(e).__name__, e))
            self.error = self.error or ("could not decode a header block of "
                                        "stream %d" % sid)
            return
        if push:
            return
        hdrs = [(n.decode("latin-1"), v.decode("latin-1")) for n, v in hdrs]
        st = self.streams.get(sid)
        if st is None:
            self.protocol_errors.append("HEADERS on unopened stream %d" % sid)
            st = self.streams[sid] = Stream(sid, self.now())
        status = None
        regular = []
        for n, v in hdrs:
            if n == ":status":
                status = v
            elif n.startswith(":"):
                self.protocol_errors.append("pseudo-header %s in a response "
                                            "on stream %d" % (n, sid))
            else:
                regular.append([n, v])
        if st.status is None:
            try:
                code = int(status)
            except (TypeError, ValueError):
                self.protocol_errors.append(
                    "response without a valid :status on stream %d: %r" %
                    (sid, status))
                code = None
            if code is not None and 100 <= code < 200:
                st.informational.append({"status": code, "headers": regular})
            else:
                st.status = code if code is not None else 0
                st.headers = regular
                st.headers_at = self.now()
        else:
            if not end_stream:
                self.protocol_errors.append("trailers without END_STREAM on "
                                            "stream %d" % sid)
            st.trailers = regular
        if end_stream:
            self.finish(st)

    def finish(self, st):
        if not st.end_stream:
            st.end_stream = True
            st.done_at = self.now()

    def on_data(self, flags, sid, p):
        n = len(p)
        data = self.strip_padding(flags, p)
        st = self.streams.get(sid)
        self.conn_recv_window -= n
        if self.conn_recv_window < 0:
            self.protocol_errors.append("DATA beyond the connection window")
        if st is None:
            self.protocol_errors.append("DATA on unopened stream %d" % sid)
        else:
            st.recv_window -= n
            if st.recv_window < 0:
                self.protocol_errors.append(
                    "DATA beyond the window of stream %d" % sid)
            st.body_len += len(data)
            st.flow_len += n
            if self.a.show_body and len(st.body) < BODY_KEEP:
                st.body += data[:BODY_KEEP - len(st.body)]
            if flags & F_END_STREAM:
                self.finish(st)
        if n and self.auto_window:
            if self.conn_auto_window:
                self.window_update(0, n)
                self.conn_recv_window += n
            if st is not None and st.auto_update and not st.end_stream \
                    and not st.reset_by_us and st.rst is None:
                self.window_update(sid, n)
                st.recv_window += n

    # ------------------------------------------------------------ helpers
    def last_goaway_sid(self):
        if not self.goaways:
            return None
        return min(g["last_stream_id"] for g in self.goaways)

    def resolved(self, st):
        return self.closed or st.resolved(self.last_goaway_sid())

    def all_resolved(self, sids):
        return all(self.resolved(self.streams[s]) for s in sids)

    def start(self, our_settings):
        self.connect()
        self.sock.setblocking(False)
        self.out += PREFACE
        self.queued_total += len(PREFACE)
        pairs = [(2, 0)] + list(our_settings)
        for name, val in self.a.setting:
            pairs.append((name, val))
        for k, v in pairs:
            if k == 4:
                self.our_initial_window = v
            elif k == 1:
                self.decoder.max_allowed_table_size = v
        self.send_settings(pairs)
        if not self.a.no_wait_settings:
            self.run_until(lambda: self.server_settings_seen)
            if not self.server_settings_seen and not self.closed and \
                    not self.error:
                self.error = "no SETTINGS from the server in time"

    def finish_run(self, done_at=None):
        """After the mode is done: --linger, then when a GOAWAY came and the
        connection is open, --grace for the close."""
        a = self.a
        if a.linger and a.linger > 0 and not self.closed:
            self.run_until(lambda: False, time.monotonic() + a.linger)
        if self.goaways and not self.closed:
            self.run_until(lambda: self.closed, time.monotonic() + a.grace)

    def close(self):
        if self.sock is None:
            return
        if not self.closed:
            try:
                last = 0
                self.frame(GOAWAY, 0, 0, struct.pack(">II", last, 0))
                self._write()
            except Exception:
                pass
        try:
            self.sock.close()
        except Exception:
            pass

    # ------------------------------------------------------------- report
    def report(self, mode):
        responses, rst, rst_at = {}, {}, {}
        for sid in sorted(self.streams):
            st = self.streams[sid]
            if st.rst is not None:
                rst[str(sid)] = st.rst
                rst_at[str(sid)] = st.rst_at
            if st.status is not None:
                r = {"status": st.status, "headers": st.headers,
                     "body_len": st.body_len, "trailers": st.trailers,
                     "informational": st.informational,
                     "complete": st.end_stream,
                     "headers_seconds": st.headers_at,
                     "seconds": st.done_at}
                if self.a.show_body:
                    r["body"] = bytes(st.body).decode("latin-1")
                responses[str(sid)] = r
        out = {
            "mode": mode,
            "error": self.error,
            "alpn": self.alpn,
            "seconds": self.now(),
            "timed_out": self.timed_out,
            "closed": self.closed,
            "close_kind": self.close_kind,
            "closed_seconds": self.closed_at,
            "goaway": self.goaways[-1] if self.goaways else None,
            "goaways": self.goaways,
            "rst": rst,
            "rst_seconds": rst_at,
            "responses": responses,
            "settings": self.server_settings,
            "settings_acked": self.settings_acked,
            "sent_frames": self.sent_frames,
            "sent_bytes": self.written_total,
            "recv_frames": self.recv_frames,
            "ping_acks": self.ping_acks,
            "protocol_errors": self.protocol_errors[:50],
        }
        out.update(self.extra)
        return out


# --------------------------------------------------------------------------
# modes

def parse_header(s):
    if ":" not in s[1:]:
        raise argparse.ArgumentTypeError("expected name:value, got %r" % s)
    i = s.index(":", 1)
    return (s[:i], s[i + 1:].lstrip(" "))


def parse_setting(s):
    if "=" not in s:
        raise argparse.ArgumentTypeError("expected NAME=VALUE, got %r" % s)
    k, v = s.split("=", 1)
    k = k.strip().upper()
    if k in SETTING_IDS:
        k = SETTING_IDS[k]
    else:
        k = int(k, 0)
    return (k, int(v, 0))


def mode_get(p, a):
    p.start([])
    extra = list(a.header)
    want = a.n
    sids = []
    for _ in range(1_000_000):
        if len(sids) >= want or p.closed or p.goaways:
            break
        active = sum(1 for s in sids if not p.resolved(p.streams[s]))
        limit = p.server_settings.get("MAX_CONCURRENT_STREAMS", 1 << 31)
        if active < max(1, limit):
            st = p.request(a.method, a.path, extra)
            sids.append(st.sid)
            continue
        p.run_until(lambda: sum(1 for s in sids
                                if not p.resolved(p.streams[s])) < limit
                    or bool(p.goaways))
        if p.timed_out:
            break
    p.run_until(lambda: p.all_resolved(sids))
    p.finish_run()
    p.extra.update({
        "requested": want,
        "completed": [s for s in sids if p.streams[s].end_stream
                      and p.streams[s].status is not None],
    })


def flood(p, a, unit, make, n, after=None):
    """Queue make(i) (which queues frames, the unit's last one tagged with
    kind `unit`) for i < n while nobody reacted, keeping the backlog small;
    then read until a reaction or the end."""
    p.reaction_unit = unit
    i = 0
    for _ in range(n + 10_000_000):
        if i >= n or p.reaction is not None or p.closed:
            break
        if time.monotonic() >= p.deadline:
            p.timed_out = True
            break
        while i < n and len(p.out) < OUT_HIGH and p.reaction is None:
            make(i)
            i += 1
        p.step(0 if (i < n and len(p.out) < OUT_HIGH) else 0.05)
    # the backlog
    p.run_until(lambda: not p.out or p.reaction is not None)
    if after is not None and p.reaction is None and not p.closed:
        after()
    limit = None
    if a.linger is not None:
        limit = time.monotonic() + a.linger
    p.run_until(lambda: p.reaction is not None, limit)
    if p.goaways and not p.closed:
        p.run_until(lambda: p.closed, time.monotonic() + a.grace)
    r = p.reaction
    p.extra.update({
        "attempted": n,
        "queued": i,
        "sent": p.sent_kind.get(unit, 0),
        "sent_before_reaction": r["sent"] if r else None,
        "reaction": r["kind"] if r else None,
        "reaction_seconds": r["seconds"] if r else None,
    })


def then_get(p, a):
    """--then-get: one GET after the flood; waits for its answer."""
    if not a.then_get:
        p.extra["then_get_stream"] = None
        return None

    def after():
        st = p.request("GET", a.then_get)
        p.extra["then_get_stream"] = st.sid
        p.run_until(lambda: p.resolved(st) or p.reaction is not None)
    p.extra["then_get_stream"] = None
    return after


def mode_rapid_reset(p, a):
    p.start([])

    def make(i):
        st = p.new_stream()
        p.header_block(st.sid, p.request_block("GET", a.path), True)
        p.rst_stream(st.sid, CANCEL, kind="pair")
    flood(p, a, "pair", make, a.n)


def mode_continuation_flood(p, a):
    p.start([])
    st = p.new_stream()
    first = p.request_block("GET", a.path)
    p.frame(HEADERS, F_END_STREAM, st.sid, first)
    hdr = hp_header("x-a", "a" * a.value_size, "noindex")
    p.extra["header_bytes_sent"] = 0

    def make(i):
        p.frame(CONTINUATION, 0, st.sid, hdr, kind="continuation")
    flood(p, a, "continuation", make, a.n)
    p.extra["header_bytes_sent"] = len(first) + len(hdr) * \
        p.sent_kind.get("continuation", 0)


def mode_hpack_bomb(p, a):
    p.start([])
    name = "x-bomb"
    room = p.peer_table_size - 32 - len(name)
    size = min(a.value_size, room)
    p.extra.update({"value_size": size, "block_bytes": None,
                    "decoded_bytes": None})
    if size <= 0:
        p.error = ("server HEADER_TABLE_SIZE %d leaves no room for an entry"
                   % p.peer_table_size)
        return
    s1 = p.new_stream()
    blk = p.block_prefix() + hp_header(":method", "GET") + \
        hp_header(":scheme", "https" if p.tls else "http") + \
        hp_header(":authority", a.authority) + hp_header(":path", a.path) + \
        hp_header(name, "b" * size, "index")
    p.header_block(s1.sid, blk, True)
    s3 = p.new_stream()
    blk = p.request_block("GET", a.path) + hp_int(62, 7, 0x80) * a.n
    p.header_block(s3.sid, blk, True)
    p.extra.update({"block_bytes": len(blk),
                    "decoded_bytes": a.n * (len(name) + size)})
    p.run_until(lambda: p.all_resolved([s1.sid, s3.sid]))
    p.finish_run()


def mode_settings_flood(p, a):
    p.start([])
    flood(p, a, "settings",
          lambda i: p.frame(SETTINGS, 0, 0, b"", kind="settings"),
          a.n, then_get(p, a))
    p.extra["settings_acks"] = p.settings_acks


def mode_ping_flood(p, a):
    p.start([])
    flood(p, a, "ping",
          lambda i: p.frame(PING, 0, 0, struct.pack(">Q", i), kind="ping"),
          a.n, then_get(p, a))


def mode_priority_flood(p, a):
    p.start([])
    base = 1

    def make(i):
        sid = base + 2 * (i % (1 << 29))
        dep = sid - 2 if sid > 2 else 0
        p.frame(PRIORITY, 0, sid, struct.pack(">IB", dep, i & 0xFF),
                kind="priority")

    def after():
        # idle streams named by PRIORITY may not be opened below them
        p.next_sid = base + 2 * min(a.n, 1 << 29)
        then_get(p, a)()
    flood(p, a, "priority", make, a.n, after if a.then_get else None)
    p.extra.setdefault("then_get_stream", None)


def mode_window_update_flood(p, a):
    p.start([])
    flood(p, a, "window_update",
          lambda i: p.window_update(0, 1, kind="window_update"),
          a.n, then_get(p, a))


def mode_empty_data_flood(p, a):
    p.start([])
    st = p.request("POST", a.path, [], end_stream=False)
    p.reaction_kinds = ("goaway", "closed", "rst")
    p.reaction_rst_sid = st.sid
    flood(p, a, "data",
          lambda i: p.frame(DATA, 0, st.sid, b"", kind="data"),
          a.n, then_get(p, a))


def mode_streams(p, a):
    p.start([])
    sids = [p.request("GET", a.path).sid for _ in range(a.n)]
    p.run_until(lambda: p.all_resolved(sids))
    p.finish_run()
    stream_summary(p, sids)
    p.extra["requested"] = a.n


def stream_summary(p, sids):
    refused, completed, other, unanswered = [], [], [], []
    for s in sids:
        st = p.streams[s]
        if st.rst == "REFUSED_STREAM":
            refused.append(s)
        elif st.end_stream and st.status is not None:
            completed.append(s)
        elif st.rst is not None:
            other.append(s)
        else:
            unanswered.append(s)
    p.extra.update({"refused": refused, "completed": completed,
                    "reset_other": other, "unanswered": unanswered})


def mode_zero_window(p, a):
    p.auto_window = False
    p.start([(4, 0)])
    st = p.request("GET", a.path)
    st.auto_update = False
    p.run_until(lambda: p.resolved(st) or bool(p.goaways))
    p.finish_run()
    p.extra.update({"headers_seconds": st.headers_at,
                    "data_received": st.body_len,
                    "stream_reset": st.rst,
                    "stream_reset_seconds": st.rst_at})


def mode_idle(p, a):
    p.start([])
    p.run_until(lambda: bool(p.goaways))
    p.finish_run()


def mode_big_headers(p, a):
    p.start([])
    st = p.new_stream()
    blk = p.request_block("GET", a.path,
                          [(a.name, "b" * a.size)] + list(a.header))
    frames = p.header_block(st.sid, blk, True)
    p.extra.update({"header_block_bytes": len(blk), "frames": frames})
    p.run_until(lambda: p.resolved(st))
    p.finish_run()


def mode_slow_reader(p, a):
    p.start([])
    p.window_update(0, (1 << 30))
    p.conn_recv_window += 1 << 30
    s1 = p.request("GET", a.path)
    s1.auto_update = False
    window = p.our_initial_window
    p.run_until(lambda: s1.flow_len >= window or p.resolved(s1),
                time.monotonic() + a.delay)
    stalled = s1.flow_len >= window and not s1.end_stream and s1.rst is None
    s3 = None
    if not p.closed and not p.goaways:
        s3 = p.request("GET", a.other)
        p.run_until(lambda: p.resolved(s3))
    p.finish_run()
    second = {"stream": None, "completed": False, "status": None,
              "seconds": None}
    if s3 is not None:
        second = {"stream": s3.sid,
                  "completed": bool(s3.end_stream and s3.status is not None),
                  "status": s3.status,
                  "seconds": (round(s3.done_at - s3.opened, 4)
                              if s3.done_at is not None else None)}
    p.extra.update({
        "first": {"stream": s1.sid, "body_len": s1.body_len,
                  "stalled": stalled, "complete": s1.end_stream},
        "second": second})


def mode_upload(p, a):
    p.start([])
    size = a.size
    trailers = list(a.trailer)
    if a.trailers and not trailers:
        trailers = [("x-checksum", "1")]
    hdrs = []
    if not a.no_content_length:
        hdrs.append(("content-length", str(size)))
    hdrs += list(a.header)
    end_on_headers = size == 0 and not trailers
    st = p.request("POST", a.path, hdrs, end_stream=end_on_headers)
    info = {"uploaded": 0, "upload_complete": False, "upload_seconds": None,
            "window_waits": 0}

    def finished():
        info["upload_complete"] = True
        info["upload_seconds"] = p.now()

    if end_on_headers:
        p.frame_ends[-1] = (p.frame_ends[-1][0], None, finished)
    off = 0
    chunk = max(1, a.chunk)
    for _ in range(100_000_000):
        if off >= size or p.closed or p.resolved(st):
            break
        if a.stall_after is not None and off >= a.stall_after:
            # the body stops coming: wait for the server's answer
            p.run_until(lambda: p.resolved(st))
            break
        if time.monotonic() >= p.deadline:
            p.timed_out = True
            break
        if len(p.out) >= OUT_HIGH:
            p.step(0.05)
            continue
        n = min(chunk, p.peer_max_frame, size - off, p.conn_send_window,
                st.send_window)
        if n <= 0:
            info["window_waits"] += 1
            p.run_until(lambda: min(p.conn_send_window, st.send_window) > 0
                        or p.resolved(st))
            continue
        last = off + n >= size
        flags = F_END_STREAM if (last and not trailers) else 0
        p.frame(DATA, flags, st.sid, pattern(off, n),
                cb=finished if flags else None)
        off += n
        p.conn_send_window -= n
        st.send_window -= n
        p.step(0)
    info["uploaded"] = off
    if trailers and off >= size and not p.closed and not p.resolved(st):
        blk = p.block_prefix() + b"".join(hp_header(n, v) for n, v in trailers)
        p.header_block(st.sid, blk, True)
        p.frame_ends[-1] = (p.frame_ends[-1][0], None, finished)
    p.run_until(lambda: p.resolved(st))
    p.finish_run()
    p.extra.update(info)


def mode_goaway_watch(p, a):
    p.start([])
    sids = []
    opened_at = time.monotonic()
    for i in range(a.n):
        if p.closed or p.goaways:
            break
        if a.interval > 0 and i > 0:
            p.run_until(lambda: bool(p.goaways),
                        opened_at + i * a.interval)
            if p.closed or p.goaways or p.timed_out:
                break
        sids.append(p.request("GET", a.path).sid)
    p.run_until(lambda: p.all_resolved(sids))
    p.finish_run()
    stream_summary(p, sids)
    p.extra.update({"requested": a.n, "opened": len(sids)})


MODES = {
    "get": mode_get,
    "rapid-reset": mode_rapid_reset,
    "continuation-flood": mode_continuation_flood,
    "hpack-bomb": mode_hpack_bomb,
    "settings-flood": mode_settings_flood,
    "ping-flood": mode_ping_flood,
    "priority-flood": mode_priority_flood,
    "window-update-flood": mode_window_update_flood,
    "empty-data-flood": mode_empty_data_flood,
    "streams": mode_streams,
    "zero-window": mode_zero_window,
    "idle": mode_idle,
    "big-headers": mode_big_headers,
    "slow-reader": mode_slow_reader,
    "upload": mode_upload,
    "goaway-watch": mode_goaway_watch,
}

FLOODS = ("rapid-reset", "continuation-flood", "settings-flood", "ping-flood",
          "priority-flood", "window-update-flood", "empty-data-flood")


def build_parser():
    ap = argparse.ArgumentParser(
        prog="h2probe.py", description="HTTP/2 test client (see the "
        "docstring for modes and output)")
    ap.add_argument("--tls", action="store_true")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--timeout", type=float, default=10.0)
    ap.add_argument("--sni", default="localhost")
    ap.add_argument("--authority", default="localhost")
    ap.add_argument("--setting", type=parse_setting, action="append",
                    default=[], metavar="NAME=VALUE")
    ap.add_argument("--no-wait-settings", action="store_true")
    ap.add_argument("--grace", type=float, default=2.0)
    ap.add_argument("--linger", type=float, default=None)
    ap.add_argument("--show-body", action="store_true")
    ap.add_argument("mode", choices=sorted(MODES))
    # mode options (accepted by every mode, used where they make sense)
    ap.add_argument("--path", default=None)
    ap.add_argument("--n", type=int, default=None)
    ap.add_argument("--header", type=parse_header, action="append",
                    default=[], metavar="NAME:VALUE")
    ap.add_argument("--method", default="GET")
    ap.add_argument("--value-size", type=int, default=None)
    ap.add_argument("--size", type=int, default=None)
    ap.add_argument("--name", default="x-big")
    ap.add_argument("--other", default="/small")
    ap.add_argument("--delay", type=float, default=3.0)
    ap.add_argument("--chunk", type=int, default=16384)
    ap.add_argument("--trailers", action="store_true")
    ap.add_argument("--trailer", type=parse_header, action="append",
                    default=[], metavar="NAME:VALUE")
    ap.add_argument("--no-content-length", action="store_true")
    ap.add_argument("--interval", type=float, default=0.0)
    ap.add_argument("--stall-after", type=int, default=None, metavar="BYTES",
                    help="upload: stop sending the body after BYTES, and wait")
    ap.add_argument("--then-get", default=None, metavar="PATH")
    ap.add_argument("--frame-size", type=int, default=None)
    return ap


DEFAULT_PATH = {"zero-window": "/big", "slow-reader": "/big",
                "upload": "/echo", "streams": "/slow", "goaway-watch": "/slow"}
DEFAULT_N = {"get": 1, "streams": 10, "goaway-watch": 1}


def main(argv=None):
    ap = build_parser()
    a = ap.parse_args(argv)
    if a.path is None:
        a.path = DEFAULT_PATH.get(a.mode, "/")
    if a.n is None:
        a.n = DEFAULT_N.get(a.mode, 1000)
    a.n = max(0, min(a.n, 10_000_000))
    if a.value_size is None:
        a.value_size = 4000 if a.mode == "hpack-bomb" else 16
    if a.size is None:
        a.size = 65536 if a.mode == "upload" else 16384
    if a.mode == "hpack-bomb":
        a.n = min(a.n, 1_000_000)
    if a.mode == "priority-flood":
        a.n = min(a.n, 1 << 29)
    if a.mode == "rapid-reset":
        a.n = min(a.n, (1 << 30) - 1)
    if a.mode not in FLOODS and a.linger is None:
        a.linger = 0.0
    p = Probe(a)
    try:
        if hpack is None:
            raise Done("the hpack module is missing (apt-get install -y "
                       "python3-h2)")
        MODES[a.mode](p, a)
    except Done as e:
        p.error = str(e)
    except (socket.timeout, TimeoutError) as e:
        p.error = "timeout: %s" % (e,)
        p.timed_out = True
    except (ConnectionRefusedError, OSError, ssl.SSLError) as e:
        p.error = "%s: %s" % (type(e).__name__, e)
    except Exception as e:  # never leave the spec without JSON
        import traceback
        p.error = "%s: %s | %s" % (type(e).__name__, e,
                                   traceback.format_exc(limit=3)
                                   .replace("\n", " | "))
    finally:
        p.close()
    if time.monotonic() >= p.deadline:
        p.timed_out = True
    sys.stdout.write(json.dumps(p.report(a.mode)) + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
