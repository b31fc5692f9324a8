#!/usr/bin/python3
"""slow_readers.py PORT N PATH HOLD_S -- N HTTP/1.1 clients with a 4 KiB
receive buffer ask for PATH on 127.0.0.1:PORT, read nothing for HOLD_S
seconds, then read everything.  Prints one JSON line: the status line and
body length each got, in order."""
import json
import selectors
import socket
import sys
import time

port, n, path, hold = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], float(sys.argv[4])
socks = []
for _ in range(n):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.connect(("127.0.0.1", port))
    s.sendall(b"GET %s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n" % path.encode())
    socks.append(s)
time.sleep(hold)
sel = selectors.DefaultSelector()
got = {}
for s in socks:
    s.setblocking(False)
    sel.register(s, selectors.EVENT_READ)
    got[s] = bytearray()
deadline = time.monotonic() + 60
while sel.get_map() and time.monotonic() < deadline:
    for key, _ in sel.select(0.5):
        try:
            b = key.fileobj.recv(1 << 20)
        except BlockingIOError:
            continue
        if not b:
            sel.unregister(key.fileobj)
        else:
            got[key.fileobj] += b
out = []
for s in socks:
    head, _, body = bytes(got[s]).partition(b"\r\n\r\n")
    out.append({"status": head.split(b"\r\n")[0].decode(errors="replace"), "body": len(body)})
    s.close()
print(json.dumps(out))
