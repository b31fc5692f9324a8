#!/usr/bin/env python3
"""notify_socket.py -- stands in for systemd's notification socket.

    python3 -u spec/support/notify_socket.py ADDRESS

ADDRESS is what NOTIFY_SOCKET will hold: a file path, or "@name" for an
abstract socket (bound as NUL + name, exactly that long, as systemd does).
Binds a unix datagram socket there with SO_PASSCRED and prints "ready" once
bound, then one line per datagram received:

    {"pid": SENDER_PID, "data": "READY=1\\nMAINPID=..."}

(JSON, flushed at once), so a spec sees the messages in order and which
process sent each (the kernel's credentials, not what the sender claims).
Runs until killed.
"""
import json
import os
import socket
import struct
import sys


def main():
    addr = sys.argv[1]
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
    if addr.startswith("@"):
        s.bind(b"\0" + addr[1:].encode())
    else:
        if os.path.exists(addr):
            os.unlink(addr)
        s.bind(addr)
    print("ready", flush=True)
    ucred = struct.calcsize("3i")
    while True:
        data, anc, _flags, _addr = s.recvmsg(65536, socket.CMSG_SPACE(ucred))
        pid = None
        for level, kind, payload in anc:
            if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                pid = struct.unpack("3i", payload[:ucred])[0]
        line = json.dumps({"pid": pid, "data": data.decode("utf-8", "replace")})
        print(line, flush=True)


if __name__ == "__main__":
    main()
