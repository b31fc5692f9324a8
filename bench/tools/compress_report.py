#!/usr/bin/env python3
"""Print the tables of a bench/compress.sh result.

    bench/tools/compress_report.py bench/results/compress-20261206-101500
    bench/tools/compress_report.py bench/results/compress-2026*    # pool several invocations

Each argument is a results directory (load.tsv, checks.tsv, files.tsv,
meta.txt).  Several are pooled as more runs.  One table per gzip level: rows
are file x proxy/encoding (nginx gzip, moxy gzip, moxy br, moxy zstd), columns
req/s, the proxy's CPU % of a core, CPU ms per MiB of uncompressed body, CPU
us per request, bytes on the wire (the compressed body), the compression ratio
and the moxy/nginx ratios of req/s and CPU/MiB.  Every number is the median
over the runs; a ratio is taken within each run (both proxies measured seconds
apart) and then its median, with the range when there are several runs.  The
br and zstd rows are measured once per run (with the last gzip level's moxy)
and compared with nginx's gzip at each table's level.  Then the cache hits of
moxy against its rows without the cache, and what FAILED.
"""
import csv
import os
import statistics
import sys

NAN = float("nan")


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


def ratio_cell(values, many):
    values = sorted(v for v in values if ok(v))
    if not values:
        return "n/a"
    m = statistics.median(values)
    if many and len(values) > 1:
        return f"{m:.2f} [{values[0]:.2f}-{values[-1]:.2f}]"
    return f"{m:.2f}"


def text_table(header, rows):
    """Plain aligned table: the first two columns left-aligned, the others right-aligned."""
    widths = [max(len(str(r[i])) for r in [header] + rows) for i in range(len(header))]

    def line(r):
        return "  ".join(str(c).ljust(widths[i]) if i < 2 else str(c).rjust(widths[i])
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


def main(argv):
    if len(argv) < 2 or argv[1] in ("-h", "--help"):
        print(__doc__.strip())
        return 0 if len(argv) >= 2 else 2
    load, checks, files = [], [], {}
    file_order = []
    subject, settings = "moxy", []
    run_base = 0
    for d in argv[1:]:
        rows = read_tsv(os.path.join(d, "load.tsv"))
        if not rows and not os.path.exists(os.path.join(d, "load.tsv")):
            print(f"compress_report.py: no load.tsv in {d}", file=sys.stderr)
            return 2
        runs = {int(r["run"]) for r in rows} or {0}
        for r in rows:
            r["run"] = run_base + int(r["run"])
            load.append(r)
        for c in read_tsv(os.path.join(d, "checks.tsv")):
            c["run"] = run_base + int(c["run"])
            checks.append(c)
        run_base += max(runs)
        for f in read_tsv(os.path.join(d, "files.tsv")):
            if f["file"] not in files:
                file_order.append(f["file"])
            files[f["file"]] = f
        subject = meta_value(d, "subject_label") or subject
        s = meta_value(d, "settings")
        if s and s not in settings:
            settings.append(s)

    nruns = len({r["run"] for r in load})
    many = nruns > 1

    def cells(phase, f, proxy, enc):
        rs = [r for r in load if r["phase"] == phase and r["file"] == f and r["proxy"] == proxy
              and r["encoding"] == enc]
        good = [r for r in rs if r["status"] == "ok"]
        return rs, good

    def per_run(rows, col):
        return {r["run"]: num(r[col]) for r in rows}

    def label(proxy, enc, level):
        name = subject if proxy.startswith("moxy") else proxy
        return f"{name} {enc}-{level}"

    print()
    who = "standin (a second nginx in moxy's column, MOXY_STANDIN=1)" if subject == "standin" else subject
    print(f"Response compression: nginx vs {who}; medians of {nruns} run{'s' if nruns != 1 else ''}")
    for s in settings:
        print(f"  {s}")
    print("  req/s and CPU: requests counted by bytes read / bytes of one response (partial ones included);")
    print("  CPU = utime + stime of the proxy's process tree; CPU % = of one core; ratio = file / wire bytes.")
    print("  x nginx: moxy's value / nginx's gzip at the table's level, per run, then the median [range].")

    levels = []
    for r in load:
        if r["phase"].startswith("gzip-") and r["phase"] not in levels:
            levels.append(r["phase"])
    other_phases = []
    for r in load:
        if r["phase"] in ("br", "zstd") and r["phase"] not in other_phases:
            other_phases.append(r["phase"])
    problems = []
    summary = []
    noisy_seen = []

    def noisy(rows, lab, fname):
        """rows of one cell where the proxy's core was > 15 % busy outside the proxy"""
        hits = [f"run {r['run']} {num(r.get('proxy_core_other_pct')):.0f}%" for r in rows
                if num(r.get("proxy_core_other_pct")) > 15]
        if hits:
            noisy_seen.append(f"{lab} {fname}: {', '.join(hits)}")
            return "*"
        return ""

    for phase in levels:
        level = phase.split("-", 1)[1]
        header = ["file", "proxy / encoding", "req/s", "CPU %", "CPU ms/MiB", "CPU us/req", "wire bytes",
                  "ratio", "req/s x nginx", "CPU/MiB x nginx"]
        rows = []
        for f in file_order:
            size = num(files[f]["bytes"])
            fname = files[f]["name"]
            _, ref = cells(phase, f, "nginx", "gzip")
            ref_rps, ref_mib = per_run(ref, "rps"), per_run(ref, "ms_per_mib")
            lines = [("nginx", "gzip", phase, level), ("moxy", "gzip", phase, level)]
            for p in other_phases:
                lv = next((r["level"] for r in load if r["phase"] == p), "")
                lines.append(("moxy", p, p, lv))
            for proxy, enc, ph, lv in lines:
                rs, good = cells(ph, f, proxy, enc)
                if not rs:
                    continue
                lab = label(proxy, enc, lv)
                if not good:
                    st = rs[-1]["status"]
                    why = sorted({r["note"] for r in rs if r["note"]})
                    rows.append([fname, lab, st] + [""] * 7)
                    for w in why:
                        problems.append(f"{lab} {fname}: {st}: {w}")
                    continue
                for r in rs:
                    if r["status"] != "ok":
                        problems.append(f"run {r['run']} {lab} {fname}: {r['status']}: {r['note']}")
                wire = med([num(r["wire_bytes"]) for r in good])
                rr = mr = ""
                if proxy != "nginx":
                    rps, mib = per_run(good, "rps"), per_run(good, "ms_per_mib")
                    rq = [rps[k] / ref_rps[k] for k in rps if k in ref_rps and ref_rps[k] > 0]
                    cm = [mib[k] / ref_mib[k] for k in mib if k in ref_mib and ref_mib[k] > 0]
                    rr, mr = ratio_cell(rq, many), ratio_cell(cm, many)
                    if enc == "gzip":
                        summary.append((f"{subject}/nginx gzip-{level} {fname}", rr, mr))
                rows.append([fname, lab + noisy(good, lab, fname), fmt(med([num(r["rps"]) for r in good]), 1),
                             fmt(med([num(r["cpu_pct"]) for r in good])),
                             fmt(med([num(r["ms_per_mib"]) for r in good]), 2),
                             fmt(med([num(r["us_per_req"]) for r in good])),
                             fmt(wire), fmt(size / wire if wire > 0 else NAN, 2) + "x", rr, mr])
        print()
        print(f"gzip level {level}" + (f" (br and zstd rows: {subject}'s levels, the same measurements in "
                                       f"every table)" if other_phases else ""))
        print(text_table(header, rows))

    # the cache hits
    cache_rows = [r for r in load if r["phase"] == "cache"]
    if cache_rows:
        level = cache_rows[0]["level"]
        nocache = f"gzip-{level}"
        header = ["file", "proxy / encoding", "req/s", "CPU %", "CPU ms/MiB", "CPU us/req", "wire bytes",
                  "ratio", "req/s x no cache", "CPU/req x no cache"]
        rows = []
        for f in file_order:
            size = num(files[f]["bytes"])
            fname = files[f]["name"]
            rs, good = cells("cache", f, "moxy-cache", "gzip")
            if not rs:
                continue
            lab = f"{subject} cache hits, gzip-{level}"
            if not good:
                st = rs[-1]["status"]
                rows.append([fname, lab, st] + [""] * 7)
                for w in sorted({r["note"] for r in rs if r["note"]}):
                    problems.append(f"{lab} {fname}: {st}: {w}")
                continue
            for r in rs:
                if r["status"] != "ok":
                    problems.append(f"run {r['run']} {lab} {fname}: {r['status']}: {r['note']}")
            _, base = cells(nocache, f, "moxy", "gzip")
            b_rps, b_us = per_run(base, "rps"), per_run(base, "us_per_req")
            rps, us = per_run(good, "rps"), per_run(good, "us_per_req")
            rq = [rps[k] / b_rps[k] for k in rps if k in b_rps and b_rps[k] > 0]
            cu = [us[k] / b_us[k] for k in us if k in b_us and b_us[k] > 0]
            wire = med([num(r["wire_bytes"]) for r in good])
            rows.append([fname, lab + noisy(good, lab, fname), fmt(med([num(r["rps"]) for r in good]), 1),
                         fmt(med([num(r["cpu_pct"]) for r in good])),
                         fmt(med([num(r["ms_per_mib"]) for r in good]), 2),
                         fmt(med([num(r["us_per_req"]) for r in good])),
                         fmt(wire), fmt(size / wire if wire > 0 else NAN, 2) + "x",
                         ratio_cell(rq, many), ratio_cell(cu, many)])
        print()
        print(f"cache hits: {subject} with its cache, every response a hit, Accept-Encoding: gzip "
              f"(x no cache: against {subject} gzip-{level} without a cache, same run)")
        print(text_table(header, rows))
        misses = sorted({f"{c['file']}: {c['detail'].split('; ', 1)[-1]}" for c in checks
                         if c["phase"] == "cache" and "NOT A CACHE HIT" in c.get("detail", "")})
        for m in misses:
            print(f"  WARNING: {m} -- these rows are not (all) hits")

    if noisy_seen:
        print()
        print("* noisy: the proxy's core was more than 15 % busy outside the proxy (another process, or")
        print("  softirq work) during these measurements: their req/s is low, and their CPU figures may be")
        print("  high too (a VM's two vCPUs can share a core): compare with care, or re-run:")
        for n in noisy_seen:
            print(f"  {n}")

    if summary:
        print()
        print(f"Summary, {subject}/nginx (medians of the per-run ratios"
              + (", [range]" if many else "") + "; req/s: higher is better, CPU/MiB: lower is better):")
        w = max(len(s[0]) for s in summary)
        for name, rr, mr in summary:
            print(f"  {name.ljust(w)}  req/s {rr:>18}   CPU/MiB {mr:>18}")

    # the checks that failed, unless their reason is already in a row above
    said = " | ".join(problems)
    failed = sorted({f"run {c['run']} {c['phase']} {c['proxy']} "
                     f"{files.get(c['file'], {}).get('name', c['file'])} {c['encoding']}: {c['detail']}"
                     for c in checks if c["status"] == "FAILED" and c["detail"] not in said})
    if failed or problems:
        print()
        print("FAILED / SKIPPED:")
        for p in sorted(set(problems)) + failed:
            print(f"  {p}")
    tails = sorted({f"run {r['run']} {r['phase']} {r['proxy']} {files.get(r['file'], {}).get('name', r['file'])}: "
                    f"{num(r['cpu_after_wrk_s']):.2f} s" for r in load
                    if r["status"] == "ok" and num(r.get("cpu_after_wrk_s")) >= 0.1})
    if tails:
        print()
        print("CPU the proxy used after wrk had closed its connections (finishing or abandoning the")
        print("responses in flight; not counted above; nginx stops at once):")
        for t in tails:
            print(f"  {t}")
    notes = sorted({f"run {r['run']} {r['phase']} {r['proxy']} {files.get(r['file'], {}).get('name', r['file'])}: "
                    f"{r['note']}" for r in load if r["status"] == "ok" and r["note"]})
    if notes:
        print()
        for n in notes:
            print(f"  note: {n}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
