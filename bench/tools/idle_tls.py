#!/usr/bin/env python3
"""Hold many idle TLS keep-alive connections open to one loopback server.

    idle_tls.py --port P --conns 2000 --hold 3

Opens --conns TLS connections one after the other (a full handshake each,
no certificate check: the bench's certificates are self-signed), sends one
`GET --path` on each and reads the whole response, so that each is a used
keep-alive TLS connection that is now idle.  Then prints

    READY <opened> <failed> <seconds>

holds them for --hold seconds (the harness samples the server's memory),
closes them and prints DONE.  Only loopback addresses are accepted.
"""
import argparse
import ipaddress
import resource
import socket
import ssl
import sys
import time


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--conns", type=int, default=2000)
    ap.add_argument("--path", default="/small")
    ap.add_argument("--hold", type=float, default=3)
    ap.add_argument("--deadline", type=float, default=120)
    a = ap.parse_args()
    if not ipaddress.ip_address(a.host).is_loopback:
        sys.exit("idle_tls.py: loopback addresses only")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, a.conns + 100)), hard))
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    req = ("GET %s HTTP/1.1\r\nHost: bench.test\r\n\r\n" % a.path).encode()
    conns, failed, t0 = [], 0, time.monotonic()
    for _ in range(a.conns):
        if time.monotonic() - t0 > a.deadline:
            break
        try:
            s = ctx.wrap_socket(socket.create_connection((a.host, a.port), timeout=5), server_hostname="bench.test")
            s.sendall(req)
            buf = b""
            while b"\r\n\r\n" not in buf or len(buf) < buf.index(b"\r\n\r\n") + 4 + content_length(buf):
                d = s.recv(65536)
                if not d:
                    raise OSError("closed")
                buf += d
            conns.append(s)
        except OSError:
            failed += 1
    print("READY %d %d %.1f" % (len(conns), failed, time.monotonic() - t0), flush=True)
    time.sleep(a.hold)
    for s in conns:
        s.close()
    print("DONE", flush=True)


def content_length(buf):
    head = buf[:buf.index(b"\r\n\r\n")].decode("latin-1").lower()
    for line in head.split("\r\n")[1:]:
        name, _, value = line.partition(":")
        if name.strip() == "content-length":
            return int(value.strip())
    return 0


if __name__ == "__main__":
    main()
