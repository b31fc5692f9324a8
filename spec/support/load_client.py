#!/usr/bin/env python3
"""load_client.py -- requests through moxy over keep-alive connections,
counting what came back.

    python3 spec/support/load_client.py PORT PATH N CONCURRENCY [METHODS]

Sends N requests (PATH with "{i}" replaced by the request's number from 1, "{m}" by it modulo 4)
from CONCURRENCY threads, each on its own keep-alive connection (a new one
when moxy closes it); METHODS ("GET,DELETE"): the methods in turn.  Prints
one JSON line: {"n", "ok" (2xx), "statuses": {status: count}, "failed": n,
"errors": [the first 20]} where an error is a request that got no complete
response.  Bounded: 30 s
per request.
"""
import http.client
import json
import sys
import threading


def main():
    port, path, n, conc = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    methods = (sys.argv[5] if len(sys.argv) > 5 else "GET").split(",")
    lock = threading.Lock()
    out = {"n": n, "ok": 0, "statuses": {}, "failed": 0, "errors": []}
    todo = iter(range(1, n + 1))

    def worker():
        conn = None
        while True:
            with lock:
                i = next(todo, None)
            if i is None:
                break
            method = methods[i % len(methods)]
            try:
                if conn is None:
                    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
                conn.request(method, path.replace("{i}", str(i)).replace("{m}", str(i % 4)))
                res = conn.getresponse()
                res.read()
                with lock:
                    out["statuses"][str(res.status)] = out["statuses"].get(str(res.status), 0) + 1
                    if 200 <= res.status < 300:
                        out["ok"] += 1
                if res.will_close:
                    conn.close()
                    conn = None
            except Exception as e:  # a request that got no whole response
                with lock:
                    out["failed"] += 1
                    if len(out["errors"]) < 20:
                        out["errors"].append("%s %d: %r" % (method, i, e))
                if conn:
                    conn.close()
                conn = None

    threads = [threading.Thread(target=worker) for _ in range(conc)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print(json.dumps(out))


if __name__ == "__main__":
    main()
