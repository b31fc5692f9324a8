#!/usr/bin/env python3
"""Hold many idle HTTP/1.1 keep-alive connections open to one loopback server.

    idle_conns.py --port P --conns 10000 --hold 3

Opens --conns connections, --batch at a time (so neither the listen backlog
nor the server's request concurrency is flooded), sends one `GET --path` on
each and reads the whole response, so each connection is a used keep-alive
connection that is now idle.  Then it prints

    READY <opened> <failed> <seconds>

holds them all idle for --hold seconds (the harness samples the server's
memory meanwhile), counts how many the server kept open, closes them and prints

    DONE alive=<n>

The open phase is bounded by --deadline seconds; run it under `timeout` too.
Only loopback addresses are accepted.
"""
import argparse
import errno
import ipaddress
import resource
import selectors
import socket
import sys
import time


def response_complete(buf):
    """True once buf holds one full response (Content-Length or chunked)."""
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        return False
    head = buf[:end].decode("latin-1").lower().split("\r\n")
    body = buf[end + 4:]
    for line in head[1:]:
        name, _, value = line.partition(":")
        name = name.strip()
        if name == "content-length":
            return len(body) >= int(value.strip())
        if name == "transfer-encoding" and "chunked" in value:
            return body.endswith(b"0\r\n\r\n")
    return True  # no body framing (204/304): headers only


def status_ok(buf):
    parts = buf.split(b" ", 2)
    return len(parts) >= 2 and parts[1].startswith(b"2")


def open_batch(sel, host, port, count, request, deadline):
    """Open `count` connections and complete one request on each.

    Returns (list of open sockets, number failed)."""
    opened, failed = [], 0
    for _ in range(count):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setblocking(False)
        rc = s.connect_ex((host, port))
        if rc not in (0, errno.EINPROGRESS):
            s.close()
            failed += 1
            continue
        sel.register(s, selectors.EVENT_WRITE, {"phase": "connect", "buf": b""})

    while sel.get_map() and time.monotonic() < deadline:
        for key, _ in sel.select(timeout=0.5):
            s, st = key.fileobj, key.data
            try:
                if st["phase"] == "connect":
                    err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                    if err:
                        raise OSError(err, "connect failed")
                    s.send(request)  # a few dozen bytes: always fits
                    st["phase"] = "read"
                    sel.modify(s, selectors.EVENT_READ, st)
                else:
                    data = s.recv(65536)
                    if not data:
                        raise OSError("closed by server")
                    st["buf"] += data
                    if response_complete(st["buf"]):
                        if not status_ok(st["buf"]):
                            raise OSError("non-2xx response")
                        sel.unregister(s)
                        opened.append(s)
            except OSError:
                sel.unregister(s)
                s.close()
                failed += 1

    for key in list(sel.get_map().values()):  # deadline passed
        sel.unregister(key.fileobj)
        key.fileobj.close()
        failed += 1
    return opened, failed


def count_alive(socks):
    """Connections the server has not closed: a non-blocking peek sees no EOF."""
    alive = 0
    for s in socks:
        try:
            if s.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT):
                alive += 1  # unexpected bytes, but open
        except BlockingIOError:
            alive += 1
        except OSError:
            pass
    return alive


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--conns", type=int, default=10000)
    ap.add_argument("--hold", type=float, default=3.0, help="seconds to hold them idle")
    ap.add_argument("--path", default="/small")
    ap.add_argument("--batch", type=int, default=100,
                    help="connections opened (requests in flight) at a time")
    ap.add_argument("--deadline", type=float, default=90.0,
                    help="max seconds for the open phase")
    args = ap.parse_args()

    if not ipaddress.ip_address(args.host).is_loopback:
        sys.exit("idle_conns.py: refusing non-loopback host %s" % args.host)

    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if args.conns + 32 > hard:
        print("idle_conns.py: RLIMIT_NOFILE hard limit %d, capping to %d connections"
              % (hard, hard - 32), file=sys.stderr)
        args.conns = hard - 32

    request = ("GET %s HTTP/1.1\r\nHost: %s:%d\r\nUser-Agent: moxy-bench-idle\r\n\r\n"
               % (args.path, args.host, args.port)).encode()

    sel = selectors.DefaultSelector()
    t0 = time.monotonic()
    deadline = t0 + args.deadline
    socks, failed = [], 0
    while len(socks) + failed < args.conns and time.monotonic() < deadline:
        n = min(args.batch, args.conns - len(socks) - failed)
        ok, bad = open_batch(sel, args.host, args.port, n, request, deadline)
        socks += ok
        failed += bad
    failed = args.conns - len(socks)  # includes those never tried (deadline)
    print("READY %d %d %.2f" % (len(socks), failed, time.monotonic() - t0), flush=True)

    time.sleep(max(0.0, args.hold))
    alive = count_alive(socks)
    for s in socks:
        s.close()
    print("DONE alive=%d" % alive, flush=True)


if __name__ == "__main__":
    main()
