#!/usr/bin/env python3
"""Print the table of a bench/access.sh result.

    bench/tools/access_report.py bench/results/access-20261206-091500
    bench/tools/access_report.py bench/results/access-2026*    # pool several invocations

Each argument is a results directory (load.tsv, checks.tsv, meta.txt).
Several are pooled as more runs (pool only results of the same REQUEST: the
"request" line of each meta.txt is printed).  One row per variant (nohook,
noop, acl, rl, redis, conc, waf, noop2): req/s, moxy's CPU % of a core, CPU us per request, p99,
then the ratios against noop, the baseline (the same moxy whose hook is
empty): req/s and CPU us/req, each taken within a run (the variants measured
seconds apart) and then the median over the runs, with their range; the extra
us of CPU per request over noop (variant - noop, within each run, then the
median); CPU us/req against nohook (no script); moxy's RSS after the load;
and, for redis, redis-server's own CPU per request and the EVALSHA calls per
request.  Every number is the median over the runs.  noop2 is a second moxy
with the noop hook: its ratios are the harness's noise floor, printed apart.

A CALLGRIND=1 result (callgrind.tsv) gets a table of instructions per
request instead: against noop (ratio and difference) and nohook.
"""
import csv
import os
import statistics
import sys

NAN = float("nan")
ORDER = ["nohook", "noop", "acl", "rl", "redis", "conc", "waf", "noop2"]
LABEL = {
    "nohook": "nohook (no script)",
    "noop": "noop (baseline)",
    "acl": "acl (ip list + path)",
    "rl": "ratelimit, local",
    "redis": "ratelimit, Redis",
    "conc": "concurrency",
    "waf": "waf (default rules)",
    "noop2": "noop2 (A/A)",
}
NOISY_PCT = 15  # moxy's core busy outside moxy above this: a noisy measurement


def num(v):
    try:
        return float(v)
    except (TypeError, ValueError):
        return NAN


def ok(v):
    return v == v


def med(values):
    values = [v for v in values if ok(v)]
    return statistics.median(values) if values else NAN


def read_tsv(path):
    if not os.path.exists(path):
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f, delimiter="\t"))


def fmt(v, digits=0):
    return f"{v:,.{digits}f}" if ok(v) else "-"


def cell(values, many, digits=2, sign=False):
    values = sorted(v for v in values if ok(v))
    if not values:
        return "n/a"
    m = statistics.median(values)
    f = f"{{:{'+' if sign else ''}.{digits}f}}"
    if many and len(values) > 1:
        return f"{f.format(m)} [{f.format(values[0])}..{f.format(values[-1])}]"
    return f.format(m)


def text_table(header, rows):
    widths = [max(len(str(r[i])) for r in [header] + rows) for i in range(len(header))]

    def line(r):
        return "  ".join(str(c).ljust(widths[i]) if i == 0 else str(c).rjust(widths[i])
                         for i, c in enumerate(r)).rstrip()
    return "\n".join([line(header), line(["-" * w for w in widths])] + [line(r) for r in rows])


def meta_value(d, key):
    try:
        with open(os.path.join(d, "meta.txt")) as f:
            for line in f:
                if line.startswith(key + ":"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def callgrind_table(dirs):
    """The CALLGRIND=1 table; False when there is no callgrind.tsv."""
    rows = []
    for d in dirs:
        rows += read_tsv(os.path.join(d, "callgrind.tsv"))
    if not rows:
        return False
    per = {}
    for r in rows:
        if r["status"] == "ok":
            per.setdefault(r["variant"], []).append(num(r["instr_per_req"]))
    per = {v: med(x) for v, x in per.items()}
    variants = [v for v in ORDER if any(r["variant"] == v for r in rows)]
    variants += sorted({r["variant"] for r in rows} - set(variants))
    base, bare = per.get("noop", NAN), per.get("nohook", NAN)
    table = []
    for v in variants:
        if v not in per:
            why = next((r["note"] for r in rows if r["variant"] == v), "")
            table.append([LABEL.get(v, v), "FAILED", "", "", why])
            continue
        x = per[v]
        table.append([LABEL.get(v, v), fmt(x, 0), f"{x / base:.3f}" if ok(base) else "-",
                      f"{x - base:+,.0f}" if ok(base) else "-", f"{x / bare:.3f}" if ok(bare) else "-"])
    print("callgrind: instructions per request (one keep-alive connection; deterministic)")
    print(text_table(["variant", "instr/req", "x noop", "+instr/req", "x nohook"], table))
    return True


def main(dirs):
    for d in dirs:
        for key in ("date", "moxy", "git", "lua", "settings", "request", "list", "pinning"):
            v = meta_value(d, key)
            if v:
                print(f"{key}: {v}")
    requests = {meta_value(d, "request").split(",")[0] for d in dirs}
    if len(requests) > 1:
        print("WARNING: pooled results of different requests (" + "; ".join(sorted(requests)) + ")")
    if callgrind_table(dirs):
        print()
    rows, checks = [], []
    for i, d in enumerate(dirs):
        for r in read_tsv(os.path.join(d, "load.tsv")):
            r["run"] = f"{i}:{r['run']}"
            rows.append(r)
        for c in read_tsv(os.path.join(d, "checks.tsv")):
            c["dir"] = d
            checks.append(c)
    if not rows:
        if not any(os.path.exists(os.path.join(d, "callgrind.tsv")) for d in dirs):
            sys.exit("access_report.py: no load.tsv or callgrind.tsv rows in " + " ".join(dirs))
        print_checks(checks)
        return

    runs = sorted({r["run"] for r in rows})
    many = len(runs) > 1
    by = {}  # (run, variant) -> row (ok only)
    failed = {}
    for r in rows:
        if r["status"] == "ok":
            by[(r["run"], r["variant"])] = r
        else:
            failed.setdefault(r["variant"], []).append(r.get("note", ""))
    variants = [v for v in ORDER if any(r["variant"] == v for r in rows)]
    variants += sorted({r["variant"] for r in rows} - set(variants))

    def col(v, key):
        return [num(by[(run, v)][key]) for run in runs if (run, v) in by]

    def ratios(v, base, key):
        return [num(by[(run, v)][key]) / num(by[(run, base)][key]) for run in runs
                if (run, v) in by and (run, base) in by and num(by[(run, base)][key]) > 0]

    def diffs(v, base, key):
        return [num(by[(run, v)][key]) - num(by[(run, base)][key]) for run in runs
                if (run, v) in by and (run, base) in by]

    print(f"runs: {len(runs)}; every figure is the median of the runs; a ratio is taken within each run"
          " (variants measured seconds apart), then its median" + (" [range]" if many else ""))
    print()

    header = ["variant", "req/s", "CPU %", "CPU us/req", "p99 ms", "req/s x noop", "CPU/req x noop",
              "+us/req", "CPU/req x nohook", "RSS MiB", "redis us/req", "EVALSHA/req", "errors"]
    table, noisy_notes, error_notes = [], [], []
    for v in variants:
        n_ok = sum(1 for run in runs if (run, v) in by)
        if n_ok == 0:
            table.append([LABEL.get(v, v), "FAILED"] + [""] * (len(header) - 2))
            continue
        noisy = [run for run in runs if (run, v) in by and num(by[(run, v)]["proxy_core_other_pct"]) > NOISY_PCT]
        errs = sum(int(num(by[(run, v)]["non2xx"]) + num(by[(run, v)]["socket_errors"])) for run in runs
                   if (run, v) in by)
        name = LABEL.get(v, v) + ("*" if noisy else "") + (" !" if errs else "")
        if noisy:
            noisy_notes.append(f"{v}: runs {', '.join(r.split(':', 1)[1] for r in noisy)} had moxy's core more "
                               f"than {NOISY_PCT} % busy outside moxy")
        if errs:
            error_notes.append(f"{v}: {errs} errors (non-2xx or socket) over the runs")
        is_base = v == "noop"
        redis = v == "redis"
        table.append([
            name,
            fmt(med(col(v, "rps")), 0),
            fmt(med(col(v, "cpu_pct")), 0),
            fmt(med(col(v, "us_per_req")), 2),
            fmt(med(col(v, "p99_ms")), 2),
            "1" if is_base else cell(ratios(v, "noop", "rps"), many),
            "1" if is_base else cell(ratios(v, "noop", "us_per_req"), many),
            "0" if is_base else cell(diffs(v, "noop", "us_per_req"), many, 2, sign=True),
            "1" if v == "nohook" else cell(ratios(v, "nohook", "us_per_req"), False),
            fmt(med(col(v, "rss_kib")) / 1024, 1),
            fmt(med(col(v, "redis_us_per_req")), 2) if redis else "",
            fmt(med(col(v, "evalsha_per_req")), 3) if redis else "",
            str(errs),
        ])
    print(text_table(header, table))
    print()
    if "noop2" in variants:
        r_rps, r_cpu, d_us = ratios("noop2", "noop", "rps"), ratios("noop2", "noop", "us_per_req"), \
            diffs("noop2", "noop", "us_per_req")
        spread = max((abs(x - 1) for x in r_cpu), default=NAN)
        print(f"noise floor (noop2 / noop, the same moxy twice): req/s {cell(r_rps, many)}, CPU us/req "
              f"{cell(r_cpu, many)}, {cell(d_us, many, 2, True)} us/req; largest CPU/req gap in a run: "
              f"{fmt(100 * spread, 1)} %")
    if "nohook" in variants:
        print(f"the empty hook (noop / nohook): req/s {cell(ratios('noop', 'nohook', 'rps'), many)}, CPU us/req "
              f"{cell(ratios('noop', 'nohook', 'us_per_req'), many)}, "
              f"{cell(diffs('noop', 'nohook', 'us_per_req'), many, 2, True)} us/req")
    if "redis" in variants:
        tot = [num(by[(run, "redis")]["us_per_req"]) + num(by[(run, "redis")]["redis_us_per_req"])
               - num(by[(run, "noop")]["us_per_req"]) for run in runs if (run, "redis") in by and (run, "noop") in by]
        print(f"redis, moxy + redis-server CPU per request over noop: {cell(tot, many, 2, True)} us")
    print()
    print("summary (medians of %d run%s; ratios against noop within each run):" % (len(runs), "s" if many else ""))
    for v in variants:
        if v in ("noop",) or not any((run, v) in by for run in runs):
            continue
        print(f"  moxy-{v} / moxy-noop: req/s = {cell(ratios(v, 'noop', 'rps'), many)}, CPU us/req = "
              f"{cell(ratios(v, 'noop', 'us_per_req'), many)}, {cell(diffs(v, 'noop', 'us_per_req'), many, 2, True)}"
              " us of CPU per request")
    notes = noisy_notes + error_notes
    for v, why in failed.items():
        notes.append(f"{v}: FAILED in {len(why)} run(s): {why[0]}")
    if notes:
        print()
        for n in notes:
            print("  " + n)
    print_checks(checks)


def print_checks(checks):
    bad = [c for c in checks if c.get("status") == "FAILED"]
    if bad:
        print()
        for c in bad:
            print(f"  check {c['variant']} {c['check']} (run {c['run']}): FAILED: {c['detail']}")
    okc = [c for c in checks if c.get("status") == "ok" and c.get("run") == "0"]
    if okc:
        print()
        print("checks before the load:")
        for c in okc:
            print(f"  {c['variant']}: {c['check']}: {c['detail']}")


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    main(sys.argv[1:])
