#!/usr/bin/env python3
"""An HTTP/2 origin (cleartext, prior knowledge) that holds every response
open: many concurrent streams whose bodies stay unfinished until told.

    hold_origin.py [--port 0] [--ctl-port 0] [--first 3000] [--rest 6000]
                   [--max-streams 100000]

It prints "ready H2PORT CTLPORT" once both ports listen.

A request for /s/<i> (any method, its body ignored) is answered at once with
a head (200, content-type text/plain, no content-length) and a first DATA
frame: the first --first bytes of body(i); the stream is then held.  On
release (GET /release on the control port, or SIGUSR1) every held stream gets
the remaining --rest bytes and END_STREAM; requests that come after a
release are answered whole at once.  GET /hold on the control port arms the
hold again for the streams that come next.  Any other path: 404.

body(i) is deterministic (see body_parts(); spec/support/many_streams.py
imports it to check what it receives): a line naming i, then a slice of a
fixed text of words, different for each i and compressible the way prose is.

The control port speaks plain HTTP/1.1 (one request per connection):
  GET /release   release the held streams -> {"released": n}
  GET /hold      hold the streams that come next
  GET /stats     {"conns", "requests", "held", "max_held", "released",
                  "completed", "resets", "errors", "refused", "holding"}

Flow control is respected (each DATA within the stream's and connection's
windows; the rest waits for WINDOW_UPDATE).  Loopback only.
"""
import argparse
import asyncio
import json
import random
import resource
import signal
import sys

# --- the bodies (shared with many_streams.py) ------------------------------

_WORDS = (
    "the of and to in is that for it as was with be by on not he this are or "
    "his from at which but have an they you were her she there been one all "
    "edge proxy stream origin compress window buffer request response header "
    "memory budget worker connection chunk frame deflate gzip brotli zstd "
    "latency throughput bounded concurrent thousand quick brown fox jumps over "
    "lazy dog alpha bravo charlie delta echo foxtrot golf hotel india juliet "
    "kilo lima mike november oscar papa quebec romeo sierra tango uniform "
    "victor whiskey xray yankee zulu 0 1 2 3 4 5 6 7 8 9 10 42 100 255 1024"
).split()

_CORPUS = None


def _corpus():
    """A fixed 256 KiB text of words (the same in every process)."""
    global _CORPUS
    if _CORPUS is None:
        rnd = random.Random(20240611)
        out, n, line = [], 0, []
        while n < 256 * 1024:
            w = rnd.choice(_WORDS)
            line.append(w)
            if len(line) >= rnd.randint(6, 14):
                s = " ".join(line) + (".\n" if rnd.random() < 0.3 else ",\n")
                out.append(s)
                n += len(s)
                line = []
        _CORPUS = "".join(out).encode()
    return _CORPUS


def body_parts(i, first, rest):
    """The body of /s/<i>: (its first `first` bytes, the `rest` bytes after)."""
    c = _corpus()
    total = first + rest
    head = b"stream %d: held open, then released\n" % i
    n = max(0, total - len(head))
    off = (i * 7919) % (len(c) - n - 1) if len(c) > n + 1 else 0
    body = (head + c[off:off + n])[:total]
    return body[:first], body[first:]


# --- the HTTP/2 server -------------------------------------------------------


class State:
    def __init__(self, opts):
        self.opts = opts
        self.holding = True
        self.conns = set()
        self.requests = 0
        self.released = 0
        self.completed = 0
        self.resets = 0
        self.errors = 0
        self.refused = 0
        self.max_held = 0

    def held(self):
        return sum(len(c.held) for c in self.conns)

    def release(self):
        self.holding = False
        n = 0
        for c in list(self.conns):
            n += c.release_all()
        self.released += n
        return n

    def stats(self):
        return {
            "conns": len(self.conns),
            "requests": self.requests,
            "held": self.held(),
            "max_held": self.max_held,
            "released": self.released,
            "completed": self.completed,
            "resets": self.resets,
            "errors": self.errors,
            "refused": self.refused,
            "holding": self.holding,
        }


class H2Proto(asyncio.Protocol):
    def __init__(self, state):
        import h2.config
        import h2.connection
        import h2.events
        import h2.exceptions
        import h2.settings

        self.h2 = __import__("h2")
        self.state = state
        cfg = h2.config.H2Configuration(client_side=False, header_encoding=None)
        self.conn = h2.connection.H2Connection(config=cfg)
        codes = h2.settings.SettingCodes
        self.conn.local_settings = h2.settings.Settings(
            client=False,
            initial_values={
                codes.MAX_CONCURRENT_STREAMS: state.opts.max_streams,
                codes.MAX_HEADER_LIST_SIZE: 65536,
            },
        )
        self.transport = None
        self.held = {}  # stream id -> i (the first part sent, waiting for release)
        self.pending = {}  # stream id -> [bytes left to send, end_stream]

    # -- asyncio

    def connection_made(self, transport):
        self.transport = transport
        self.state.conns.add(self)
        self.conn.initiate_connection()
        self.flush()

    def connection_lost(self, exc):
        self.state.conns.discard(self)
        self.held.clear()
        self.pending.clear()

    def data_received(self, data):
        h2 = self.h2
        try:
            events = self.conn.receive_data(data)
        except h2.exceptions.ProtocolError as e:
            self.state.errors += 1
            print("hold_origin: protocol error: %s" % e, file=sys.stderr, flush=True)
            self.flush()
            self.transport.close()
            return
        for ev in events:
            if isinstance(ev, h2.events.RequestReceived):
                self.on_request(ev)
            elif isinstance(ev, h2.events.DataReceived):
                self.conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
            elif isinstance(ev, h2.events.StreamReset):
                self.state.resets += 1
                self.held.pop(ev.stream_id, None)
                self.pending.pop(ev.stream_id, None)
            elif isinstance(ev, (h2.events.WindowUpdated, h2.events.RemoteSettingsChanged)):
                pass  # pump() below
        self.pump()
        self.flush()

    # -- h2

    def flush(self):
        out = self.conn.data_to_send()
        if out and self.transport is not None and not self.transport.is_closing():
            self.transport.write(out)

    def on_request(self, ev):
        sid = ev.stream_id
        hdrs = {n: v for n, v in ev.headers}
        path = hdrs.get(b":path", b"/").decode("latin-1")
        self.state.requests += 1
        i = None
        if path.startswith("/s/"):
            try:
                i = int(path[3:].split("?")[0])
            except ValueError:
                i = None
        if i is None or i < 0:
            self.conn.send_headers(sid, [(":status", "404"), ("content-length", "10")])
            self.pending[sid] = [b"not found\n", True]
            return
        first, rest = body_parts(i, self.state.opts.first, self.state.opts.rest)
        self.conn.send_headers(sid, [(":status", "200"), ("content-type", "text/plain; charset=utf-8"),
                                     ("cache-control", "no-store")])
        if self.state.holding:
            self.pending[sid] = [first, False]
            self.held[sid] = i
            n = self.state.held()
            if n > self.state.max_held:
                self.state.max_held = n
        else:
            self.pending[sid] = [first + rest, True]

    def release_all(self):
        n = 0
        for sid, i in list(self.held.items()):
            _, rest = body_parts(i, self.state.opts.first, self.state.opts.rest)
            p = self.pending.get(sid)
            if p is None:
                self.pending[sid] = [rest, True]
            else:
                p[0] += rest
                p[1] = True
            n += 1
        self.held.clear()
        self.pump()
        self.flush()
        return n

    def pump(self):
        """Send what is pending, within the flow-control windows."""
        h2 = self.h2
        if not self.pending:
            return
        for sid in list(self.pending):
            data, end = self.pending[sid]
            try:
                while True:
                    if not data:
                        if end:
                            self.conn.send_data(sid, b"", end_stream=True)
                            self.state.completed += 1
                            del self.pending[sid]
                        else:  # all sent; held until the release
                            del self.pending[sid]
                        break
                    w = min(self.conn.local_flow_control_window(sid), self.conn.max_outbound_frame_size)
                    if w <= 0:
                        self.pending[sid][0] = data
                        break
                    k = min(w, len(data))
                    last = end and k == len(data)
                    self.conn.send_data(sid, data[:k], end_stream=last)
                    data = data[k:]
                    if last:
                        self.state.completed += 1
                        del self.pending[sid]
                        break
            except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError, KeyError) as e:
                self.state.errors += 1
                print("hold_origin: stream %d: %s: %s" % (sid, type(e).__name__, e), file=sys.stderr, flush=True)
                self.pending.pop(sid, None)
                self.held.pop(sid, None)


# --- the control port ----------------------------------------------------------


async def control(state, reader, writer):
    try:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        line = head.split(b"\r\n", 1)[0].decode("latin-1").split()
        path = line[1] if len(line) > 1 else "/"
        if path == "/release":
            doc, code = {"released": state.release()}, 200
        elif path == "/hold":
            state.holding = True
            doc, code = {"holding": True}, 200
        elif path == "/stats":
            doc, code = state.stats(), 200
        else:
            doc, code = {"error": "not found"}, 404
        body = json.dumps(doc).encode()
        writer.write(b"HTTP/1.1 %d X\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
                     b"connection: close\r\n\r\n" % (code, len(body)) + body)
        await writer.drain()
    except (asyncio.TimeoutError, asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


async def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--ctl-port", type=int, default=0)
    ap.add_argument("--first", type=int, default=3000)
    ap.add_argument("--rest", type=int, default=6000)
    ap.add_argument("--max-streams", type=int, default=100000)
    opts = ap.parse_args()
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ValueError, OSError):
        pass
    _corpus()
    state = State(opts)
    loop = asyncio.get_running_loop()
    srv = await loop.create_server(lambda: H2Proto(state), "127.0.0.1", opts.port, backlog=1024)
    ctl = await asyncio.start_server(lambda r, w: control(state, r, w), "127.0.0.1", opts.ctl_port)
    loop.add_signal_handler(signal.SIGUSR1, state.release)
    print("ready %d %d" % (srv.sockets[0].getsockname()[1], ctl.sockets[0].getsockname()[1]), flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass
