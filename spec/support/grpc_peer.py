#!/usr/bin/env python3
"""grpc_peer.py -- a gRPC origin server and client for moxy's integration specs.

    python3 spec/support/grpc_peer.py server PORT
    python3 spec/support/grpc_peer.py client TARGET MODE [ARGS] [--authority NAME]
                                      [--tag T] [--timeout S]

Uses grpcio (python3-grpcio) without generated protobuf code: messages are
raw bytes (no serializers on either side).

server PORT
    Insecure (cleartext HTTP/2) gRPC server on 127.0.0.1:PORT (0 picks a free
    port); prints "ready PORT" (the real port) on stdout once listening.
    Service moxy.test.Echo:
      Unary         returns b"echo:" + request; trailing metadata
                    x-served-by: grpc-origin; initial metadata x-tag: T when
                    the request carries x-request-tag: T
      Fail          aborts with NOT_FOUND, details "no such thing"
      Bidi          for each request message m yields b"echo:" + m at once
                    (a client can send one, receive one, ...); trailing
                    metadata x-served-by: grpc-origin
      ServerStream  request: an ascii integer N (0..10000); yields b"msg-0" ..
                    b"msg-<N-1>", 20 ms apart (INVALID_ARGUMENT when the
                    request is not such a number)

client TARGET MODE [ARGS]
    TARGET like 127.0.0.1:18080; insecure channel (HTTP/2 prior knowledge),
    connecting straight to TARGET (http_proxy and friends are ignored).
    Every call has a deadline of --timeout seconds (default 10).
    --authority NAME sets :authority (channel option grpc.default_authority).
    Prints ONE JSON object on stdout and exits 0, also when the call failed
    (exit 2 only for a usage error).  On a failed call the object is
    {"code": "<StatusCode name>", "details": "...", "trailers": {...}} plus,
    for the streaming modes, the "replies" received before the failure.
    Metadata is reported as {key: value} (the last value of a repeated key;
    -bin values as latin-1 text).
      unary MSG [--tag T]  -> {"code": "OK", "reply": "...", "trailers": {...},
                              "initial": {...}}; --tag sends x-request-tag: T
      fail                 -> {"code": "NOT_FOUND", "details": "no such thing",
                              "trailers": {...}}
      bidi N               -> sends "m0" .. "m<N-1>" one at a time and waits
                              for each reply before sending the next (and
                              before half-closing): {"code": "OK", "replies":
                              [...], "interleaved": true, "trailers": {...}};
                              interleaved is true when every reply came while
                              its own message was the last one sent
      server-stream N      -> {"code": "OK", "replies": [...], "gaps_ms": [ms
                              between consecutive messages], "trailers": {...}}
"""

import argparse
import json
import queue
import sys
import time
from concurrent import futures

import grpc

SERVICE = "moxy.test.Echo"
SERVED_BY = (("x-served-by", "grpc-origin"),)


# -- server -----------------------------------------------------------------


def unary(request, context):
    tag = None
    for k, v in context.invocation_metadata():
        if k == "x-request-tag":
            tag = v
    if tag is not None:
        context.send_initial_metadata((("x-tag", tag),))
    context.set_trailing_metadata(SERVED_BY)
    return b"echo:" + request


def fail(request, context):
    context.abort(grpc.StatusCode.NOT_FOUND, "no such thing")


def bidi(request_iterator, context):
    context.set_trailing_metadata(SERVED_BY)
    for m in request_iterator:
        yield b"echo:" + m


def server_stream(request, context):
    try:
        n = int(request.decode("ascii").strip())
        if not 0 <= n <= 10000:
            raise ValueError(n)
    except (UnicodeDecodeError, ValueError):
        context.abort(grpc.StatusCode.INVALID_ARGUMENT, "request must be an integer 0..10000")
    for i in range(n):
        if i:
            time.sleep(0.02)
        if not context.is_active():
            return
        yield b"msg-%d" % i


def run_server(port):
    handlers = {
        "Unary": grpc.unary_unary_rpc_method_handler(unary),
        "Fail": grpc.unary_unary_rpc_method_handler(fail),
        "Bidi": grpc.stream_stream_rpc_method_handler(bidi),
        "ServerStream": grpc.unary_stream_rpc_method_handler(server_stream),
    }
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=32))
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    real = server.add_insecure_port("127.0.0.1:%d" % port)
    if not real:
        sys.stderr.write("grpc_peer: cannot listen on 127.0.0.1:%d\n" % port)
        sys.exit(1)
    server.start()
    sys.stdout.write("ready %d\n" % real)
    sys.stdout.flush()
    try:
        server.wait_for_termination()
    except KeyboardInterrupt:
        server.stop(0)


# -- client -----------------------------------------------------------------


def text(b):
    if isinstance(b, bytes):
        try:
            return b.decode("utf-8")
        except UnicodeDecodeError:
            return b.decode("latin-1")
    return b


def md(metadata):
    return {k: text(v) for k, v in (metadata or ())}


def failure(e, replies=None):
    """JSON for a failed call (grpc.RpcError)."""
    out = {"code": "UNKNOWN", "details": str(e)}
    try:
        out["code"] = e.code().name
        out["details"] = e.details() or ""
        out["trailers"] = md(e.trailing_metadata())
    except Exception:
        pass
    if replies is not None:
        out["replies"] = replies
    return out


def call_unary(ch, args, o):
    if len(args) != 1:
        raise UsageError("unary takes one argument: MSG")
    meta = (("x-request-tag", o.tag),) if o.tag is not None else None
    rpc = ch.unary_unary("/%s/Unary" % SERVICE)
    try:
        reply, call = rpc.with_call(args[0].encode(), timeout=o.timeout, metadata=meta)
    except grpc.RpcError as e:
        return failure(e)
    return {
        "code": "OK",
        "reply": text(reply),
        "trailers": md(call.trailing_metadata()),
        "initial": md(call.initial_metadata()),
    }


def call_fail(ch, args, o):
    if args:
        raise UsageError("fail takes no argument")
    rpc = ch.unary_unary("/%s/Fail" % SERVICE)
    try:
        reply, call = rpc.with_call(b"", timeout=o.timeout)
    except grpc.RpcError as e:
        return failure(e)
    return {"code": "OK", "reply": text(reply), "trailers": md(call.trailing_metadata())}


def call_bidi(ch, args, o):
    n = count_arg(args, "bidi")
    got = queue.Queue()  # one item per reply received, None: stop sending
    sent = [0]

    def requests():
        for i in range(n):
            sent[0] = i + 1
            yield ("m%d" % i).encode()
            try:  # hold the next message (or the half-close) until the reply
                if got.get(timeout=o.timeout) is None:
                    return
            except queue.Empty:
                return

    rpc = ch.stream_stream("/%s/Bidi" % SERVICE)
    replies = []
    interleaved = True
    call = rpc(requests(), timeout=o.timeout)
    try:
        for r in call:
            replies.append(text(r))
            # the reply to message k must arrive while k is the last one sent
            if sent[0] != len(replies):
                interleaved = False
            got.put(True)
        trailers = md(call.trailing_metadata())
    except grpc.RpcError as e:
        got.put(None)
        return failure(e, replies)
    got.put(None)
    return {
        "code": "OK",
        "replies": replies,
        "interleaved": interleaved and len(replies) == n,
        "trailers": trailers,
    }


def call_server_stream(ch, args, o):
    n = count_arg(args, "server-stream")
    rpc = ch.unary_stream("/%s/ServerStream" % SERVICE)
    replies, times = [], []
    call = rpc(str(n).encode(), timeout=o.timeout)
    try:
        for r in call:
            times.append(time.monotonic())
            replies.append(text(r))
        trailers = md(call.trailing_metadata())
    except grpc.RpcError as e:
        return failure(e, replies)
    gaps = [round((b - a) * 1000.0, 1) for a, b in zip(times, times[1:])]
    return {"code": "OK", "replies": replies, "gaps_ms": gaps, "trailers": trailers}


class UsageError(Exception):
    pass


def count_arg(args, mode):
    if len(args) != 1:
        raise UsageError("%s takes one argument: N" % mode)
    try:
        n = int(args[0])
    except ValueError:
        raise UsageError("%s: N must be an integer" % mode)
    if n < 0:
        raise UsageError("%s: N must be >= 0" % mode)
    return n


MODES = {
    "unary": call_unary,
    "fail": call_fail,
    "bidi": call_bidi,
    "server-stream": call_server_stream,
}


def run_client(argv):
    ap = argparse.ArgumentParser(prog="grpc_peer.py client")
    ap.add_argument("target")
    ap.add_argument("mode", choices=sorted(MODES))
    ap.add_argument("args", nargs="*")
    ap.add_argument("--authority")
    ap.add_argument("--tag")
    ap.add_argument("--timeout", type=float, default=10.0)
    o = ap.parse_intermixed_args(argv)
    options = [("grpc.enable_http_proxy", 0)]
    if o.authority:
        options.append(("grpc.default_authority", o.authority))
    try:
        with grpc.insecure_channel(o.target, options=options) as ch:
            out = MODES[o.mode](ch, o.args, o)
    except UsageError as e:
        ap.error(str(e))
    sys.stdout.write(json.dumps(out) + "\n")
    sys.stdout.flush()
    return 0


def main():
    if len(sys.argv) >= 3 and sys.argv[1] == "server":
        try:
            port = int(sys.argv[2])
        except ValueError:
            port = -1
        if len(sys.argv) != 3 or not 0 <= port <= 65535:
            sys.stderr.write("usage: grpc_peer.py server PORT\n")
            return 2
        run_server(port)
        return 0
    if len(sys.argv) >= 2 and sys.argv[1] == "client":
        return run_client(sys.argv[2:])
    sys.stderr.write(__doc__)
    return 2


if __name__ == "__main__":
    sys.exit(main())
