#!/usr/bin/env python3
"""Print N distinct free TCP ports on 127.0.0.1, space-separated.

    free_ports.py 3   ->   23817 21094 27712

Ports are drawn at random below the kernel's ephemeral range (so the many
client sockets wrk and the idle test open cannot take them between this
probe and the server's bind) and each one is checked with a plain bind()
(no SO_REUSEADDR, so a port with lingering TIME_WAIT sockets is skipped too).
Falls back to kernel-chosen ephemeral ports if that range is exhausted.
"""
import random
import socket
import sys


def bindable(port):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.bind(("127.0.0.1", port))
        return True
    except OSError:
        return False
    finally:
        s.close()


def main():
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 1
    low = 32768
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            low = int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        pass
    lo, hi = 20000, max(20001, min(low, 32768)) - 1
    candidates = list(range(lo, hi + 1))
    random.shuffle(candidates)
    ports = []
    for p in candidates:
        if len(ports) == n:
            break
        if bindable(p):
            ports.append(p)
    while len(ports) < n:  # fallback: let the kernel choose
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.bind(("127.0.0.1", 0))
        p = s.getsockname()[1]
        s.close()
        if p not in ports:
            ports.append(p)
    print(" ".join(map(str, ports)))


if __name__ == "__main__":
    main()
