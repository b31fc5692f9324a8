#!/usr/bin/env python3
"""raw_origin.py -- an origin that answers exactly the bytes a spec gives it,
and records exactly the bytes it receives.

    python3 spec/support/raw_origin.py CAPTURE MODE [REPLY_FILE]

Prints "ready PORT" on stdout once it listens on 127.0.0.1 (a free port).
Every byte received on connection N (from 1) is appended to CAPTURE.N as it
arrives, so a spec reads what moxy forwarded, framing and all.

MODE, per connection:
  reply        read a request head, send REPLY_FILE's bytes, then go on
               reading (and recording) until the peer closes
  reply-close  the same, then close after sending
  reply-drip   the same as reply, but the bytes go one at a time, 1 ms
               apart (each its own TCP segment: names and values split
               across the proxy's reads)
  close-head   read a request head, then close without answering
  close-body   read a request head and at least one byte after it, then
               close without answering
"""

import socket
import sys
import threading
import time


def serve(conn, n, capture, mode, reply):
    buf = b""
    with open("%s.%d" % (capture, n), "ab", buffering=0) as out:
        def more():
            nonlocal buf
            try:
                data = conn.recv(65536)
            except OSError:
                return False
            if not data:
                return False
            out.write(data)
            buf += data
            return True

        try:
            while b"\r\n\r\n" not in buf:
                if not more():
                    return
            if mode == "close-head":
                return
            if mode == "close-body":
                while len(buf) <= buf.index(b"\r\n\r\n") + 4:
                    if not more():
                        return
                return
            if mode == "reply-drip":
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                for i in range(len(reply)):
                    conn.sendall(reply[i:i + 1])
                    time.sleep(0.001)
            else:
                conn.sendall(reply)
            if mode == "reply-close":
                return
            while more():
                pass
        finally:
            conn.close()


def main():
    capture, mode = sys.argv[1], sys.argv[2]
    reply = b""
    if len(sys.argv) > 3:
        with open(sys.argv[3], "rb") as f:
            reply = f.read()
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", 0))
    srv.listen(64)
    print("ready %d" % srv.getsockname()[1], flush=True)
    n = 0
    while True:
        conn, _ = srv.accept()
        n += 1
        threading.Thread(target=serve, args=(conn, n, capture, mode, reply), daemon=True).start()


if __name__ == "__main__":
    main()
