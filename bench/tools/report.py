#!/usr/bin/env python3
"""Print the moxy-vs-nginx tables of one or more bench/run.sh results.

    bench/tools/report.py bench/results/20261127-101500
    bench/tools/report.py bench/results/2026*          # pool several invocations

Each argument is a results directory (holding run-N/ subdirectories) or a
single run-N directory.  With one run it prints that run; with several, every
number is the median over the runs.  Ratios (moxy/nginx) are taken within each
run, where both proxies shared the same machine conditions, and only then
summarised, with their min-max range.

When the run has the HOOKS=1 peers (nginx-lua, moxy-nohook, moxy-noop,
moxy-jit), each small-body case also gets the hook-cost ratios, against the
targets of the performance work (docs/performance.md): with the usual hook
(peer "moxy"), moxy/nginx req/s >= 1.10, moxy/nginx-lua req/s >= 1.4 and
moxy/moxy-nohook CPU us/req <= 1.05; the same ratios of moxy-noop and
moxy-jit are printed without a target.
"""
import argparse
import csv
import glob
import os
import statistics
import sys

NAN = float("nan")

# HOOKS=1: (numerator, denominator, column, label, target, higher-is-better)
HOOK_SUBJECTS = ("moxy", "moxy-noop", "moxy-jit")
HOOK_RATIOS = [("moxy", "nginx", "rps", "req/s", 1.10, True)] + \
              [(x, "nginx-lua", "rps", "req/s", 1.4 if x == "moxy" else None, True) for x in HOOK_SUBJECTS] + \
              [(x, "moxy-nohook", "us_per_req", "CPU us/req", 1.05 if x == "moxy" else None, False)
               for x in HOOK_SUBJECTS] + \
              [("moxy", "nginx-lua", "us_per_req", "CPU us/req", None, False)]  # no target: context


def read_tsv(path):
    if not os.path.exists(path):
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f, delimiter="\t"))


def num(v):
    try:
        return float(v)
    except (TypeError, ValueError):
        return NAN


def ok(v):
    return v == v  # not NaN


def med(values):
    values = [v for v in values if ok(v)]
    return statistics.median(values) if values else NAN


def fmt(v, digits=0):
    return f"{v:,.{digits}f}" if ok(v) else "-"


def ratio(a, b):
    return a / b if ok(a) and ok(b) and b > 0 else NAN


def text_table(header, rows):
    """Plain aligned table: first column left-aligned, the others right-aligned."""
    widths = [max(len(str(r[i])) for r in [header] + rows) for i in range(len(header))]
    def line(r):
        return "  ".join(str(c).ljust(widths[i]) if i == 0 else str(c).rjust(widths[i])
                         for i, c in enumerate(r)).rstrip()
    return "\n".join([line(header), line(["-" * w for w in widths])] + [line(r) for r in rows])


def run_dirs(paths):
    out = []
    for p in paths:
        if os.path.exists(os.path.join(p, "load.tsv")):
            out.append(p)
        else:
            subs = sorted(glob.glob(os.path.join(p, "run-*")),
                          key=lambda d: int(d.rsplit("-", 1)[1]) if d.rsplit("-", 1)[1].isdigit() else 0)
            out += [d for d in subs if os.path.exists(os.path.join(d, "load.tsv"))]
    return out


def summary_of(ratios, n_runs):
    """'1.07 (median of 5, range 0.98-1.12)' or '1.07 (1 run)'."""
    rr = [q for q in ratios if ok(q)]
    if not rr:
        return "-"
    m = statistics.median(rr)
    if len(rr) == 1:
        return f"{m:.2f} (1 run)"
    return f"{m:.2f} (median of {len(rr)}, range {min(rr):.2f}-{max(rr):.2f})"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ref", default="nginx", help="reference proxy (denominator)")
    ap.add_argument("--subject", default=None,
                    help="proxy under test (numerator); default: moxy if it ran, else the other one")
    ap.add_argument("dirs", nargs="+")
    args = ap.parse_args()

    dirs = run_dirs(args.dirs)
    if not dirs:
        sys.exit("report.py: no run-N/load.tsv under " + " ".join(args.dirs))
    runs = [{"dir": d, "load": [dict(x, _run=d) for x in read_tsv(os.path.join(d, "load.tsv"))],
             "idle": read_tsv(os.path.join(d, "idle.tsv")),
             "checks": read_tsv_plain(os.path.join(d, "checks.txt"))} for d in dirs]
    n = len(runs)

    proxies, cases = [], []
    for r in runs:
        for row in r["load"] + r["idle"]:
            if row["proxy"] not in proxies:
                proxies.append(row["proxy"])
        for row in r["load"]:
            c = (row["body"], int(row["conns"]))
            if c not in cases:
                cases.append(c)
    ref = args.ref
    subj = args.subject or ("moxy" if "moxy" in proxies and ref != "moxy" else
                            next((p for p in proxies if p != ref), None))
    order = [p for p in (ref, subj) if p] + [p for p in proxies if p not in (ref, subj)]
    label = f"{subj}/{ref}"
    busy_cols = [k for k in (runs[0]["load"][0] if runs[0]["load"] else {})
                 if k.endswith("_busy_pct")]

    title = f"moxy benchmark: {subj} vs {ref}, {n} run(s)"
    if n > 1:
        title += ", every number a median over the runs"
    print(title)
    print("=" * len(title))
    tops = sorted({os.path.dirname(d) for d in dirs})
    for t in tops:
        meta = os.path.join(t, "meta.txt")
        if os.path.exists(meta):
            with open(meta) as f:
                for l in f.read().splitlines():
                    if l.split(":")[0] in ("date", "subject", "peers", "nginx-lua",
                                           "moxy hook", "settings", "pinning",
                                           "background busy % (per cpu, then steal), 2 s before start"):
                        print("  " + l)
    if subj == "standin":
        print("\n  NOTE: 'standin' is a second nginx in moxy's place (MOXY_STANDIN=1).")
        print("  Its ratios to nginx show the harness's noise floor; they should be ~1.00.")
    for r in runs:
        for c in r["checks"]:
            if len(c) > 1 and c[1] != "ok":
                print(f"\n  WARNING ({os.path.basename(r['dir'])}): " + " ".join(c))

    print(f"\nreq/s, p50, p99: wrk --latency.  errors: non-2xx + socket errors "
          f"({'total over the runs' if n > 1 else 'this run'}).  CPU %: the proxy's "
          f"utime+stime over the measured interval, % of one core; us/req: that CPU "
          f"time per request.  RSS: the proxy's VmRSS after the case.  "
          f"{'/'.join(c.replace('_busy_pct', '') for c in busy_cols)} busy: "
          f"whole-CPU utilisation (shows which side saturated).")

    summary = []
    hook_summary = []
    for body, conns in cases:
        per = {}
        for p in order:
            sel = []
            for r in runs:
                rows = [x for x in r["load"] if x["proxy"] == p and x["body"] == body
                        and int(x["conns"]) == conns]
                sel += rows
            if sel:
                per[p] = sel
        rows = []
        for p in order:
            if p not in per:
                continue
            sel = per[p]
            m = lambda k: med([num(x[k]) for x in sel])
            rps = [num(x["rps"]) for x in sel]
            rps_s = fmt(m("rps"))
            if len(sel) > 1:
                rps_s += f" [{fmt(min(rps))}-{fmt(max(rps))}]"
            errs = sum(int(num(x["errors"])) if ok(num(x["errors"])) else 0 for x in sel)
            busy = "/".join(fmt(m(k)) for k in busy_cols)
            rows.append([p, rps_s, fmt(m("p50_ms"), 2), fmt(m("p99_ms"), 2),
                         str(errs) + (" !" if errs else ""), fmt(m("cpu_pct")),
                         fmt(m("us_per_req"), 1), fmt(m("rss_kib") / 1024, 1), busy])
        size = {"small": "100 B", "large": "1 MiB"}.get(body, body)
        head = f"{body} body ({size}), {conns} connections"
        print(f"\n{head}\n{'-' * len(head)}")
        print(text_table(["proxy", "req/s", "p50 ms", "p99 ms", "errors", "CPU %",
                          "CPU us/req", "RSS MiB",
                          "/".join(c.replace("_busy_pct", "") for c in busy_cols) + " busy %"],
                         rows))
        for p in order:
            for x in per.get(p, []):
                o = num(x.get("proxy_core_other_pct"))
                if ok(o) and o >= 15:
                    sq = num(x.get("ksoftirqd_pct"))
                    why = (f"ksoftirqd {sq:.0f}%, other processes {max(o - sq, 0):.0f}%"
                           if ok(sq) else "softirq or other processes")
                    print(f"  noisy: {os.path.basename(x.get('_run', ''))} {p}: the proxy's core "
                          f"was {o:.0f}% busy outside the proxy ({why}); compare with care")
        if ref in per and subj in per:
            rq = {"rps": [], "p99": [], "us": []}
            for r in runs:
                a = {x["proxy"]: x for x in r["load"]
                     if x["body"] == body and int(x["conns"]) == conns}
                if ref in a and subj in a:
                    rq["rps"].append(ratio(num(a[subj]["rps"]), num(a[ref]["rps"])))
                    rq["p99"].append(ratio(num(a[subj]["p99_ms"]), num(a[ref]["p99_ms"])))
                    rq["us"].append(ratio(num(a[subj]["us_per_req"]), num(a[ref]["us_per_req"])))
            w = len(label) + len(" CPU us/req")
            print()
            print(f"{(label + ' req/s').ljust(w)} = {summary_of(rq['rps'], n)}   higher is better")
            print(f"{(label + ' p99').ljust(w)} = {summary_of(rq['p99'], n)}   lower is better")
            print(f"{(label + ' CPU us/req').ljust(w)} = {summary_of(rq['us'], n)}   lower is better")
            summary.append([f"{body} c={conns}", fmt(med(rq["rps"]), 2),
                            fmt(med(rq["p99"]), 2), fmt(med(rq["us"]), 2)])
        if body == "small":
            lines = hook_lines(runs, per, body, conns, n)
            if lines:
                print("\nhook cost (HOOKS=1 peers; targets: docs/performance.md):")
                for text, verdict, cell in lines:
                    print(f"  {text}{verdict}")
                    hook_summary.append([cell[0], f"{body} c={conns}"] + cell[1:])

    idle_rows = [x for r in runs for x in r["idle"]]
    idle_line = None
    if idle_rows:
        wanted = idle_rows[0]["conns_wanted"]
        head = f"{fmt(num(wanted))} idle keep-alive connections (one GET /small each, then held idle)"
        print(f"\n{head}\n{'-' * len(head)}")
        rows, bpc = [], {}
        for p in order:
            sel = [x for x in idle_rows if x["proxy"] == p]
            if not sel:
                continue
            m = lambda k: med([num(x[k]) for x in sel])
            bpc[p] = m("bytes_per_conn")
            rows.append([p, fmt(m("opened")), str(sum(int(num(x["failed"])) for x in sel
                                                       if ok(num(x["failed"])))),
                         fmt(m("alive_after_hold")), fmt(m("rss_base_kib") / 1024, 1),
                         fmt(m("rss_idle_kib") / 1024, 1), fmt(bpc[p]),
                         fmt(m("pss_bytes_per_conn"))])
        print(text_table(["proxy", "opened", "failed", "alive after hold", "RSS MiB base",
                          "RSS MiB idle", "bytes/idle-conn", "PSS bytes/conn"], rows))
        if ref in bpc and subj in bpc:
            rr = []
            for r in runs:
                a = {x["proxy"]: x for x in r["idle"]}
                if ref in a and subj in a:
                    rr.append(ratio(num(a[subj]["bytes_per_conn"]), num(a[ref]["bytes_per_conn"])))
            print(f"\n{subj} bytes/idle-conn = {fmt(bpc[subj])}, {ref} = {fmt(bpc[ref])};"
                  f" {label} = {summary_of(rr, n)}   lower is better")
            idle_line = (f"bytes per idle connection: {subj} {fmt(bpc[subj])}, {ref} "
                         f"{fmt(bpc[ref])} ({label} {fmt(med(rr), 2)})")

    if summary or idle_line:
        head = f"Summary: {label} ratios" + (f" (medians of {n} runs)" if n > 1 else "")
        print(f"\n{head}\n{'-' * len(head)}")
        if summary:
            print(text_table(["case", "req/s (higher better)", "p99 (lower better)",
                              "CPU us/req (lower better)"], summary))
        if idle_line:
            print(idle_line)
    if hook_summary:
        head = "Summary: hook cost" + (f" (medians of {n} runs)" if n > 1 else "")
        print(f"\n{head}\n{'-' * len(head)}")
        print(text_table(["ratio", "case", "value", "target", "verdict"], hook_summary))
    return 0


def hook_lines(runs, per, body, conns, n):
    """The HOOK_RATIOS whose two peers ran in this case: [(text, verdict, cells)]."""
    out = []
    specs = [h for h in HOOK_RATIOS if h[0] in per and h[1] in per]
    if not specs:
        return out
    w = max(len(f"{a}/{b} {lab}") for a, b, _, lab, _, _ in specs)
    for a, b, col, lab, target, higher in specs:
        rr = []
        for r in runs:
            x = {row["proxy"]: row for row in r["load"]
                 if row["body"] == body and int(row["conns"]) == conns}
            if a in x and b in x:
                rr.append(ratio(num(x[a][col]), num(x[b][col])))
        m = med(rr)
        if target is None:
            want = "-"
            name = f"{a}/{b} {lab}"
            out.append((f"{name.ljust(w)} = {summary_of(rr, n)}",
                        f"   no target ({'higher' if higher else 'lower'} is better)",
                        [name, fmt(m, 2), want, "info"]))
            continue
        want = f"{'>=' if higher else '<='} {target:.2f}"
        if not ok(m):
            verdict = "-"
        elif (m >= target) if higher else (m <= target):
            verdict = "ok"
        else:
            verdict = "MISSED"
        name = f"{a}/{b} {lab}"
        text = f"{name.ljust(w)} = {summary_of(rr, n)}"
        out.append((text, f"   target {want}: {verdict}",
                    [name, fmt(m, 2), want, verdict]))
    return out


def read_tsv_plain(path):
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [l.rstrip("\n").split("\t") for l in f if l.strip()]


if __name__ == "__main__":
    sys.exit(main())
