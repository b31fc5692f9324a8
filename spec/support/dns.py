#!/usr/bin/env python3
"""dns.py -- a small DNS server for moxy's specs (UDP, loopback only).

    python3 spec/support/dns.py ZONEFILE [PORT]     (PORT 0 or none: a free port)

Prints "ready PORT" on stdout once it listens on 127.0.0.1:PORT.  Answers A
and AAAA queries from ZONEFILE, a JSON object it reads again for every query,
so a spec changes the answers by rewriting the file:

    { "app.test": {"a": ["127.0.0.1"], "aaaa": ["::1"], "ttl": 1},
      "gone.test": {"rcode": 2},
      "__silent": false }

  a name in the zone      NOERROR with its records of the asked type (none:
                          NOERROR with no answer, "no data"); names are
                          matched without regard to case (resolvers randomise
                          it) and the question is echoed as received
  "rcode": N              answer that rcode instead (2 SERVFAIL, 5 REFUSED)
  "delay": S              answer S seconds late (other queries are not held)
  a name not in the zone  NXDOMAIN
  "__silent": true        read queries and answer none (a dead name server)
  an unreadable zone      SERVFAIL (retried briefly first: a spec may be
                          rewriting it)

Every query is counted with one stdout line, flushed at once:

    query NAME TYPE RESULT       e.g. "query app.test A NOERROR 1"

RESULT is the rcode name and the number of answers, or "DROPPED" when silent.
NAME is lowercased.  A spec counts these lines to see re-resolution happen.
Standard library only; the wire format (RFC 1035 section 4) is done by hand.
"""

import ipaddress
import json
import socket
import struct
import sys
import threading
import time

TYPES = {1: "A", 28: "AAAA"}
RCODES = {0: "NOERROR", 1: "FORMERR", 2: "SERVFAIL", 3: "NXDOMAIN", 4: "NOTIMP", 5: "REFUSED"}


def load_zone(path):
    """The zone as a dict, or None when it cannot be read (after a few tries:
    a writer may be between truncating and writing it)."""
    for _ in range(20):
        try:
            with open(path, "rb") as f:
                zone = json.loads(f.read().decode("utf-8"))
            if isinstance(zone, dict):
                return {str(k).lower().rstrip("."): v for k, v in zone.items()}
        except (OSError, ValueError):
            pass
        time.sleep(0.01)
    return None


def parse_question(packet):
    """(id, flags, qname bytes as on the wire, name, qtype, qclass, end) of the
    first question, or None when the packet is not a query we can read."""
    if len(packet) < 12:
        return None
    qid, flags, qdcount = struct.unpack("!HHH", packet[:6])
    if flags & 0x8000 or qdcount < 1:  # a response, or no question
        return None
    pos, labels = 12, []
    while True:
        if pos >= len(packet):
            return None
        n = packet[pos]
        if n == 0:
            pos += 1
            break
        if n & 0xC0:  # compression has no place in a query's first name
            return None
        labels.append(packet[pos + 1:pos + 1 + n])
        pos += 1 + n
    if pos + 4 > len(packet):
        return None
    qtype, qclass = struct.unpack("!HH", packet[pos:pos + 4])
    name = b".".join(labels).decode("ascii", "replace").lower()
    return qid, flags, packet[12:pos + 4], name, qtype, qclass, pos + 4


def rdata(qtype, text):
    if qtype == 1:
        return ipaddress.IPv4Address(text).packed
    return ipaddress.IPv6Address(text).packed


def answer(packet, zone):
    """-> (response bytes or None to stay silent, seconds to wait before
    sending it, log line)."""
    q = parse_question(packet)
    if q is None:
        if len(packet) >= 12 and not packet[2] & 0x80:  # a query we cannot read
            qid = struct.unpack("!H", packet[:2])[0]
            return struct.pack("!HHHHHH", qid, 0x8001, 0, 0, 0, 0), 0, "query ? ? FORMERR 0"
        return None, 0, "query ? ? IGNORED"
    qid, qflags, question, name, qtype, qclass, _ = q
    tname = TYPES.get(qtype, str(qtype))
    if zone is not None and zone.get("__silent"):
        return None, 0, "query %s %s DROPPED" % (name, tname)
    rcode, records, ttl, delay = 0, [], 1, 0
    if zone is None:
        rcode = 2
    elif name not in zone or not isinstance(zone[name], dict):
        rcode = 3
    else:
        entry = zone[name]
        ttl = int(entry.get("ttl", 1))
        delay = float(entry.get("delay", 0))
        rcode = int(entry.get("rcode", 0))
        if rcode == 0 and qclass == 1 and qtype in TYPES:
            records = [rdata(qtype, a) for a in entry.get(TYPES[qtype].lower(), [])]
    # QR, the opcode and RD copied, AA, RA
    flags = 0x8000 | (qflags & 0x7900) | 0x0400 | 0x0080 | rcode
    out = [struct.pack("!HHHHHH", qid, flags, 1, len(records), 0, 0), question]
    for r in records:
        # the name is a pointer to the question's (offset 12)
        out.append(struct.pack("!HHHIH", 0xC00C, qtype, 1, ttl, len(r)) + r)
    line = "query %s %s %s %d" % (name, tname, RCODES.get(rcode, rcode), len(records))
    return b"".join(out), delay, line


def main():
    if len(sys.argv) < 2:
        sys.stderr.write("usage: dns.py ZONEFILE [PORT]\n")
        return 2
    path = sys.argv[1]
    port = int(sys.argv[2]) if len(sys.argv) > 2 else 0
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", port))
    sys.stdout.write("ready %d\n" % sock.getsockname()[1])
    sys.stdout.flush()
    while True:
        packet, peer = sock.recvfrom(4096)
        try:
            response, delay, line = answer(packet, load_zone(path))
        except (ValueError, TypeError) as e:  # a bad address in the zone
            response, delay, line = None, 0, "query ? ? ERROR %s" % e
        sys.stdout.write(line + "\n")
        sys.stdout.flush()
        if response is None:
            continue
        if delay > 0:
            threading.Timer(delay, sock.sendto, (response, peer)).start()
        else:
            sock.sendto(response, peer)


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        pass
