#!/usr/bin/env python3
"""Open many HTTP/1.1 responses at once through moxy and hold them open.

    many_streams.py --port P --n 10000 --first 3000 --rest 6000 --go FILE
                    [--batch 500] [--open-deadline 60] [--deadline 120]
                    [--accept-encoding gzip]

For i in 0..n-1 it opens a connection to 127.0.0.1:P and sends
`GET /s/<i>` with `Accept-Encoding: gzip`, at most --batch of them being
opened at a time (asyncio protocols, one per connection; no decoder is
kept per stream, the coded bytes are).  A stream counts as open once its
response head came and the body received so far decodes (gzip when
Content-Encoding says so) to the whole first part the origin
(spec/support/hold_origin.py) sent before holding: moxy passed it on (coded
and flushed) while the origin holds the rest; its reading is then paused.
When every stream is open (or failed) it prints

    OPEN <open> <failed> <seconds>

then waits (bounded by --deadline) for the file --go to exist, resumes
reading and reads every body to its end, decodes it and compares it with body_parts(i) of
hold_origin.py, and prints one line

    RESULT {"n", "open", "heads_ok", "compressed", "uncompressed",
            "first_ok", "bodies_ok", "errors": {reason: count},
            "examples": [...], "open_seconds", "finish_seconds"}

Every wait is bounded: --open-deadline for the open phase, --deadline for
the whole run.  Loopback only.
"""
import argparse
import asyncio
import json
import os
import resource
import sys
import time
import zlib

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from hold_origin import body_parts  # noqa: E402


class Failed(Exception):
    pass


class Body:
    """An HTTP/1.1 response body as it comes: its framing (chunked,
    Content-Length or the close) undone; the coded payload is kept (a few
    KB) and decoded on demand, so no decoder is held per stream."""

    def __init__(self, headers):
        te = headers.get("transfer-encoding", "").lower()
        self.chunked = "chunked" in te
        self.left = None
        if not self.chunked and "content-length" in headers:
            self.left = int(headers["content-length"])
        ce = headers.get("content-encoding", "").strip().lower()
        if ce not in ("", "identity", "gzip"):
            raise Failed("content-encoding %s" % ce)
        self.coding = ce or "identity"
        self.raw = b""  # framed bytes not yet parsed
        self.chunk_left = 0  # payload bytes left in the current chunk
        self.state = "size"  # size, data, crlf, trailer, done
        self.payload = bytearray()  # the coded body so far

    def feed(self, data):
        if not self.chunked:
            if self.left is not None:
                if len(data) > self.left:
                    raise Failed("more bytes than Content-Length")
                self.left -= len(data)
            self.payload += data
            return
        self.raw += data
        while True:
            if self.state == "size":
                k = self.raw.find(b"\r\n")
                if k < 0:
                    return
                line = self.raw[:k].split(b";")[0].strip()
                self.raw = self.raw[k + 2:]
                try:
                    self.chunk_left = int(line, 16)
                except ValueError:
                    raise Failed("bad chunk size %r" % line[:20])
                self.state = "data" if self.chunk_left else "trailer"
            elif self.state == "data":
                if not self.raw:
                    return
                piece = self.raw[:self.chunk_left]
                self.raw = self.raw[len(piece):]
                self.chunk_left -= len(piece)
                self.payload += piece
                if self.chunk_left == 0:
                    self.state = "crlf"
            elif self.state == "crlf":
                if len(self.raw) < 2:
                    return
                if self.raw[:2] != b"\r\n":
                    raise Failed("no CRLF after a chunk")
                self.raw = self.raw[2:]
                self.state = "size"
            elif self.state == "trailer":
                k = self.raw.find(b"\r\n")
                if k < 0:
                    return
                line = self.raw[:k]
                self.raw = self.raw[k + 2:]
                if not line:
                    self.state = "done"
                    return
            else:
                return

    def complete(self):
        if self.chunked:
            return self.state == "done"
        return self.left is not None and self.left == 0

    def decoded_so_far(self):
        """What the coded bytes so far decode to (a gzip stream may be
        unfinished: moxy flushes its output after each read from the origin)."""
        if self.coding != "gzip":
            return bytes(self.payload)
        z = zlib.decompressobj(wbits=31)
        try:
            return z.decompress(bytes(self.payload))
        except zlib.error as e:
            raise Failed("gzip: %s" % e)

    def decoded_whole(self, eof):
        """The whole body decoded (eof: the connection closed)."""
        if not self.complete():
            if self.chunked or self.left is not None:
                raise Failed("body cut (%d coded bytes)" % len(self.payload))
            if not eof:
                raise Failed("body without an end")
        if self.coding != "gzip":
            return bytes(self.payload)
        z = zlib.decompressobj(wbits=31)
        try:
            out = z.decompress(bytes(self.payload)) + z.flush()
        except zlib.error as e:
            raise Failed("gzip: %s" % e)
        if not z.eof:
            raise Failed("gzip stream not ended")
        if z.unused_data:
            raise Failed("bytes after the gzip stream")
        return out


class Run:
    def __init__(self, args):
        self.args = args
        self.open = 0
        self.heads_ok = 0
        self.compressed = 0
        self.uncompressed = 0
        self.first_ok = 0
        self.bodies_ok = 0
        self.errors = {}
        self.examples = []
        self.going = False
        self.streams = []  # the open ones
        self.done = 0  # streams finished (ok or not) after being open
        self.all_done = None  # an asyncio.Event, set when done == len(streams)
        self.t0 = time.monotonic()

    def fail(self, i, why):
        key = why.split(":")[0][:60]
        self.errors[key] = self.errors.get(key, 0) + 1
        if len(self.examples) < 10:
            self.examples.append("/s/%d: %s" % (i, why[:200]))


def parse_head(head):
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1."):
        raise Failed("bad status line %r" % lines[0][:60])
    status = int(parts[1])
    headers = {}
    for line in lines[1:]:
        if not line:
            continue
        name, _, value = line.partition(":")
        name = name.strip().lower()
        headers[name] = (headers[name] + ", " + value.strip()) if name in headers else value.strip()
    return status, headers


class Stream(asyncio.Protocol):
    """One connection, one GET /s/<i>.  Stages: head, first (the first
    part, decoded whole while the origin holds the rest), held (reading
    paused until the go), rest, done."""

    def __init__(self, run, i):
        self.run = run
        self.i = i
        self.first, self.rest = body_parts(i, run.args.first, run.args.rest)
        self.transport = None
        self.stage = "connect"
        self.buf = b""
        self.body = None
        self.opened = asyncio.get_running_loop().create_future()  # True: open, False: failed
        self.finished = False

    def connection_made(self, transport):
        self.transport = transport
        self.stage = "head"
        a = self.run.args
        transport.write(("GET /s/%d HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nAccept-Encoding: %s\r\n"
                         "User-Agent: moxy-spec-many-streams\r\n\r\n" % (self.i, a.port, a.accept_encoding)).encode())

    def data_received(self, data):
        if self.finished:
            return
        try:
            self.on_data(data)
        except Failed as e:
            self.failed(str(e))

    def eof_received(self):
        if not self.finished:
            if self.stage == "rest" and self.body is not None and not self.body.chunked and self.body.left is None:
                self.end(eof=True)
            else:
                self.failed("%s: closed by moxy" % self.stage)
        return False

    def connection_lost(self, exc):
        if not self.finished:
            self.failed("%s: connection lost (%s)" % (self.stage, exc))

    def on_data(self, data):
        if self.stage == "head":
            self.buf += data
            k = self.buf.find(b"\r\n\r\n")
            if k < 0:
                if len(self.buf) > 65536:
                    raise Failed("head: too big")
                return
            status, headers = parse_head(self.buf[:k + 4])
            data, self.buf = self.buf[k + 4:], b""
            if status != 200:
                raise Failed("status %d" % status)
            self.run.heads_ok += 1
            self.body = Body(headers)
            if self.body.coding == "gzip":
                self.run.compressed += 1
                if "content-length" in headers:
                    raise Failed("head: a gzip response with Content-Length")
            else:
                self.run.uncompressed += 1
            self.stage = "first"
        self.body.feed(data)
        if self.stage == "first":
            got = self.body.decoded_so_far()
            if len(got) < len(self.first):
                return
            if got[:len(self.first)] != self.first:
                raise Failed("first part differs (%d bytes decoded, %d sent)" % (len(got), len(self.first)))
            self.run.first_ok += 1
            self.stage = "held"
            if not self.run.going:
                self.transport.pause_reading()
            else:
                self.stage = "rest"
            if not self.opened.done():
                self.opened.set_result(True)
        if self.stage == "rest" and self.body.complete():
            self.end(eof=False)

    def go(self):
        if self.finished or self.stage != "held":
            return
        self.stage = "rest"
        self.transport.resume_reading()
        if self.body.complete():  # it all came before reading paused
            self.end(eof=False)

    def end(self, eof):
        try:
            got = self.body.decoded_whole(eof)
        except Failed as e:
            return self.failed(str(e))
        want = self.first + self.rest
        if got != want:
            k = 0
            while k < min(len(got), len(want)) and got[k] == want[k]:
                k += 1
            return self.failed("body differs: %d bytes, %d expected, first difference at %d"
                               % (len(got), len(want), k))
        self.run.bodies_ok += 1
        self.finish()

    def failed(self, why):
        if self.finished:
            return
        self.run.fail(self.i, why)
        self.finish()

    def finish(self):
        self.finished = True
        self.stage = "done"
        if not self.opened.done():
            self.opened.set_result(False)
        elif self.run.all_done is not None:
            self.run.done += 1
            if self.run.done >= len(self.run.streams):
                self.run.all_done.set()
        if self.transport is not None:
            self.transport.close()


async def opener(run, next_i):
    """Open streams one after the other (--batch of these run at once)."""
    loop = asyncio.get_running_loop()
    a = run.args
    while True:
        i = next_i[0]
        if i >= a.n:
            return
        next_i[0] += 1
        st = Stream(run, i)
        try:
            await asyncio.wait_for(loop.create_connection(lambda: st, "127.0.0.1", a.port), a.step_timeout)
        except (OSError, asyncio.TimeoutError) as e:
            run.fail(i, "connect: %s %s" % (type(e).__name__, e))
            continue
        try:
            ok = await asyncio.wait_for(asyncio.shield(st.opened), a.step_timeout)
        except asyncio.TimeoutError:
            st.failed("%s: nothing more for %gs (%d coded bytes)"
                      % (st.stage, a.step_timeout, len(st.body.payload) if st.body else 0))
            continue
        if ok:
            run.open += 1
            run.streams.append(st)


async def wait_go(path, until):
    while not os.path.exists(path):
        if time.monotonic() >= until:
            return False
        await asyncio.sleep(0.05)
    return True


async def main_async(args):
    run = Run(args)
    next_i = [0]
    openers = [asyncio.ensure_future(opener(run, next_i)) for _ in range(min(args.batch, args.n))]
    done, pending = await asyncio.wait(openers, timeout=args.open_deadline)
    for t in pending:
        t.cancel()
    open_s = time.monotonic() - run.t0
    if pending:
        run.errors["open phase past its deadline"] = args.n - next_i[0] + len(pending)
    print("OPEN %d %d %.2f" % (run.open, args.n - run.open, open_s), flush=True)
    until = run.t0 + args.deadline
    run.all_done = asyncio.Event()
    # streams that finished (failed) between being counted open and now
    run.done = sum(1 for st in run.streams if st.finished)
    if run.done >= len(run.streams):
        run.all_done.set()
    if await wait_go(args.go, until):
        run.going = True
        for st in run.streams:
            st.go()
        try:
            await asyncio.wait_for(run.all_done.wait(), max(0.1, until - time.monotonic()))
        except asyncio.TimeoutError:
            pass
    else:
        run.errors["no go before the deadline"] = 1
    unfinished = [st for st in run.streams if not st.finished]
    for st in unfinished:
        st.failed("%s: unfinished at the deadline (%d coded bytes)"
                  % (st.stage, len(st.body.payload) if st.body else 0))
    doc = {
        "n": args.n,
        "open": run.open,
        "heads_ok": run.heads_ok,
        "compressed": run.compressed,
        "uncompressed": run.uncompressed,
        "first_ok": run.first_ok,
        "bodies_ok": run.bodies_ok,
        "errors": run.errors,
        "examples": run.examples,
        "open_seconds": round(open_s, 2),
        "finish_seconds": round(time.monotonic() - run.t0, 2),
    }
    print("RESULT " + json.dumps(doc, sort_keys=True), flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--n", type=int, default=10000)
    ap.add_argument("--first", type=int, default=3000)
    ap.add_argument("--rest", type=int, default=6000)
    ap.add_argument("--go", required=True, help="a file whose existence lets the bodies be read to the end")
    ap.add_argument("--batch", type=int, default=500)
    ap.add_argument("--accept-encoding", default="gzip")
    ap.add_argument("--step-timeout", type=float, default=20.0, help="longest wait for one step of one stream")
    ap.add_argument("--open-deadline", type=float, default=60.0)
    ap.add_argument("--deadline", type=float, default=120.0)
    args = ap.parse_args()
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = args.n + 64
    if hard != resource.RLIM_INFINITY and want > hard:
        sys.exit("many_streams: %d connections need more descriptors than the hard limit %d" % (args.n, hard))
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ValueError, OSError) as e:
        sys.exit("many_streams: setrlimit: %s" % e)
    asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
