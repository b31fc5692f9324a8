#!/usr/bin/env python3
"""bench/cache-tests/summary.py -- counts http-tests/cache-tests results (moxy's
harness helper, not part of the suite; bench/cache-tests/run.sh calls it).

Usage:
  summary.py [--suite DIR] [--meta FILE] RESULTS.json            counts + every non-passing test
  summary.py [--suite DIR] [--meta FILE] RESULTS.json --names    ... with each test's name
  summary.py [--suite DIR] [--meta FILE] RESULTS.json --json     machine-readable summary
  summary.py [--suite DIR] [--meta FILE] RESULTS.json --counts   the counts only
  summary.py [--suite DIR] [--meta FILE] OLD.json NEW.json       diff: fail->pass, pass->fail

--suite DIR (or CT_SUITE_DIR): a checkout of http-tests/cache-tests. The test metadata
(kind, name, depends_on, suite) is read from its tests/index.mjs with node and kept in
--meta FILE (default: a file under ${CT_CACHE_DIR:-${XDG_CACHE_HOME:-~/.cache}/moxy-cache-tests},
one per suite path); it is regenerated when missing or older than any tests/*.mjs file.
With --meta FILE and no suite, FILE is used as it is. Nothing is written into the suite
or the repository.

Counting: a test passes when its result is `true`; anything else (["Assertion", msg],
["Setup", msg], ...) is not a pass. Raw counts: "required" means the test's `kind` is
"required" or absent (the suite's default); "optimal" and "check" are the other kinds.
cache-tests.fyi-style counts follow test-engine/lib/results.mjs determineTestResult with
dependencies honoured: pass / fail (a required failure) / optional_fail / yes / no /
setup_fail / dependency_fail.
"""
import argparse
import hashlib
import json
import os
import signal
import subprocess
import sys
from urllib.request import pathname2url

EXPORT_JS = r"""
const { default: tests } = await import(process.argv[1])
const out = {}
for (const suite of tests) {
  for (const t of suite.tests) {
    out[t.id] = { kind: t.kind || 'required', kind_given: t.kind !== undefined, name: t.name,
      suite: suite.id, depends_on: t.depends_on || [],
      browser_only: t.browser_only === true, cdn_only: t.cdn_only === true,
      browser_skip: t.browser_skip === true }
  }
}
process.stdout.write(JSON.stringify(out, null, 1))
"""


def cache_dir():
    if os.environ.get('CT_CACHE_DIR'):
        return os.environ['CT_CACHE_DIR']
    base = os.environ.get('XDG_CACHE_HOME') or os.path.join(os.path.expanduser('~'), '.cache')
    return os.path.join(base, 'moxy-cache-tests')


def default_meta_path(suite):
    key = hashlib.sha1(os.path.realpath(suite).encode()).hexdigest()[:12]
    return os.path.join(cache_dir(), 'tests-meta-%s.json' % key)


def load_meta(suite, meta_path):
    """The suite's test metadata by id; regenerated from SUITE/tests/index.mjs when
    a suite is given and META_PATH is missing or older than any tests/*.mjs file."""
    if suite:
        tests_dir = os.path.join(suite, 'tests')
        index = os.path.join(tests_dir, 'index.mjs')
        if not os.path.isfile(index):
            sys.exit('summary.py: %s is not a cache-tests checkout (no tests/index.mjs)' % suite)
        newest = 0.0
        for root, _dirs, files in os.walk(tests_dir):
            for f in files:
                if f.endswith('.mjs'):
                    newest = max(newest, os.path.getmtime(os.path.join(root, f)))
        if not os.path.exists(meta_path) or os.path.getmtime(meta_path) < newest:
            url = 'file://' + pathname2url(os.path.realpath(index))
            out = subprocess.run(['node', '--input-type=module', '-e', EXPORT_JS, url],
                                 check=True, capture_output=True, text=True).stdout
            os.makedirs(os.path.dirname(os.path.abspath(meta_path)), exist_ok=True)
            tmp = '%s.tmp.%d' % (meta_path, os.getpid())
            with open(tmp, 'w') as fh:
                fh.write(out)
            os.replace(tmp, meta_path)
    elif not os.path.exists(meta_path):
        sys.exit('summary.py: no test metadata at %s; give --suite DIR (or CT_SUITE_DIR)' % meta_path)
    with open(meta_path) as fh:
        return json.load(fh)


def classify(results, meta):
    """Per test: 'pass', or the category of its non-pass."""
    out = {}
    for tid, res in results.items():
        if res is True:
            out[tid] = 'pass'
        elif isinstance(res, list) and res and res[0] == 'Setup':
            out[tid] = 'setup-retry' if len(res) > 1 and res[1] == 'retry' else 'setup'
        elif isinstance(res, list) and res and res[0] == 'Assertion':
            out[tid] = 'assertion'
        else:
            out[tid] = 'harness'  # e.g. ["TypeError", "fetch failed"], ["AbortError", ...]
    return out


def dependency_failed(tid, results, meta, seen=None):
    """True when one of the test's depends_on (transitively) did not pass (cache-tests.fyi
    then shows the test greyed out as a dependency failure)."""
    seen = seen or set()
    for dep in meta.get(tid, {}).get('depends_on', []):
        if dep in seen:
            continue
        seen.add(dep)
        if results.get(dep) is not True:
            return True
        if dependency_failed(dep, results, meta, seen):
            return True
    return False


def summarise(path, meta):
    with open(path) as fh:
        results = json.load(fh)
    cls = classify(results, meta)
    s = {'file': path, 'total': len(results), 'passes': 0, 'failures': 0,
         'required_failures': 0, 'optimal_failures': 0, 'check_failures': 0,
         'by_category': {}, 'not_in_suite': [], 'missing_from_results': []}
    for tid, c in cls.items():
        m = meta.get(tid)
        if m is None:
            s['not_in_suite'].append(tid)
        if c == 'pass':
            s['passes'] += 1
            continue
        s['failures'] += 1
        s['by_category'][c] = s['by_category'].get(c, 0) + 1
        kind = m['kind'] if m else 'required'
        s[kind + '_failures'] += 1
    s['fyi'] = {}
    for tid in results:
        k = fyi_symbol(tid, results, meta)
        s['fyi'][k] = s['fyi'].get(k, 0) + 1
    expected = [t for t, m in meta.items() if not m['browser_only']]
    s['missing_from_results'] = sorted(t for t in expected if t not in results)
    return results, cls, s


def fyi_symbol(tid, results, meta):
    """The symbol cache-tests.fyi shows (test-engine/lib/results.mjs determineTestResult,
    honouring dependencies)."""
    res = results.get(tid)
    m = meta.get(tid, {})
    if res is None:
        return 'untested'
    if dependency_failed(tid, results, meta):
        return 'dependency_fail'
    if isinstance(res, list) and res and res[0] == 'Setup':
        return 'retry' if len(res) > 1 and res[1] == 'retry' else 'setup_fail'
    kind = m.get('kind', 'required')
    if kind == 'required':
        return 'pass' if res is True else 'fail'
    if kind == 'optimal':
        return 'pass' if res is True else 'optional_fail'
    return 'yes' if res is True else 'no'


def fmt_result(res):
    if res is True:
        return 'pass'
    if isinstance(res, list):
        return '[%s] %s' % (res[0], res[1] if len(res) > 1 else '')
    return repr(res)


def plural(n, one, many=None):
    return '%d %s' % (n, one if n == 1 else (many or one + 's'))


def print_counts(results, cls, s, meta):
    """The short form run.sh prints: both styles of counts, and the required failures."""
    fyi = s['fyi']
    fyi_fail = sorted(t for t in results if fyi_symbol(t, results, meta) == 'fail')
    raw_req = sorted(t for t in results if cls[t] != 'pass' and meta.get(t, {}).get('kind', 'required') == 'required')
    others = ', '.join('%s=%d' % kv for kv in sorted(fyi.items()) if kv[0] not in ('pass', 'fail'))
    print('cache-tests.fyi style: %s, %s%s'
          % (plural(fyi.get('pass', 0), 'pass', 'passes'), plural(fyi.get('fail', 0), 'required failure'),
             ' (also %s)' % others if others else ''))
    if fyi_fail:
        print('  required failures: %s' % ' '.join(fyi_fail))
    print('raw: %d of %d pass, %s, %s, %d check "no"'
          % (s['passes'], s['total'], plural(s['required_failures'], 'required failure'),
             plural(s['optimal_failures'], 'optimal failure'), s['check_failures']))
    if raw_req:
        print('  required failures: %s' % ' '.join(raw_req))
    if s['missing_from_results']:
        print('MISSING from results (suite tests not reported): %s' % ' '.join(s['missing_from_results']))


def main(argv):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('results', nargs='+', metavar='RESULTS.json')
    ap.add_argument('--suite', default=os.environ.get('CT_SUITE_DIR'))
    ap.add_argument('--meta')
    ap.add_argument('--names', action='store_true')
    ap.add_argument('--json', action='store_true')
    ap.add_argument('--counts', action='store_true', help='print the counts only')
    opts = ap.parse_args(argv)
    args = opts.results
    if len(args) > 2:
        ap.error('one results file, or two to compare')
    if not opts.suite and not opts.meta:
        ap.error('give --suite DIR (a cache-tests checkout; or CT_SUITE_DIR) or --meta FILE')
    meta = load_meta(opts.suite, opts.meta or default_meta_path(opts.suite))
    if len(args) == 1:
        results, cls, s = summarise(args[0], meta)
        if opts.json:
            fails = []
            for tid in sorted(results):
                if cls[tid] != 'pass':
                    m = meta.get(tid, {})
                    fails.append({'id': tid, 'kind': m.get('kind'), 'name': m.get('name'),
                                  'suite': m.get('suite'), 'category': cls[tid],
                                  'dependency_failed': dependency_failed(tid, results, meta),
                                  'fyi': fyi_symbol(tid, results, meta),
                                  'result': results[tid]})
            s['failing'] = fails
            print(json.dumps(s, indent=1))
            return 0
        if opts.counts:
            print_counts(results, cls, s, meta)
            return 0
        print('results:            %s' % args[0])
        print('tests run:          %d' % s['total'])
        print('passes:             %d' % s['passes'])
        print('failures:           %d' % s['failures'])
        print('required failures:  %d' % s['required_failures'])
        print('optimal failures:   %d' % s['optimal_failures'])
        print('check "no":         %d' % s['check_failures'])
        print('by category:        %s' % ', '.join('%s=%d' % kv for kv in sorted(s['by_category'].items())))
        req_setup = sum(1 for t in results if cls[t] in ('setup', 'setup-retry') and meta.get(t, {}).get('kind', 'required') == 'required')
        print('required failures that are Setup errors: %d' % req_setup)
        fyi = {}
        for t in results:
            k = fyi_symbol(t, results, meta)
            fyi[k] = fyi.get(k, 0) + 1
        print('as cache-tests.fyi would show them (dependencies honoured): %s' % ', '.join('%s=%d' % kv for kv in sorted(fyi.items())))
        if s['missing_from_results']:
            print('MISSING from results (suite tests not reported): %s' % ' '.join(s['missing_from_results']))
        if s['not_in_suite']:
            print('ids not in the suite: %s' % ' '.join(s['not_in_suite']))
        print()
        print('%-58s %-9s %-10s %-16s %s' % ('failing id', 'kind', 'category', 'fyi', 'result'))
        for tid in sorted(results, key=lambda t: (meta.get(t, {}).get('suite', ''), t)):
            if cls[tid] == 'pass':
                continue
            m = meta.get(tid, {})
            print('%-58s %-9s %-10s %-16s %s' % (tid, m.get('kind', '?'), cls[tid], fyi_symbol(tid, results, meta), fmt_result(results[tid])))
            if opts.names:
                print('    %s: %s' % (m.get('suite', '?'), m.get('name', '?')))
        return 0
    old, _c1, s1 = summarise(args[0], meta)
    new, _c2, s2 = summarise(args[1], meta)
    for a, x in ((args[0], s1), (args[1], s2)):
        print('%s: passes %d, failures %d, required failures %d; cache-tests.fyi style: pass %d, required fail %d'
              % (a, x['passes'], x['failures'], x['required_failures'], x['fyi'].get('pass', 0), x['fyi'].get('fail', 0)))
    ids = sorted(set(old) | set(new))
    to_pass = [t for t in ids if old.get(t) is not True and new.get(t) is True]
    to_fail = [t for t in ids if old.get(t) is True and new.get(t) is not True]
    changed = [t for t in ids if old.get(t) is not True and new.get(t) is not True and old.get(t) != new.get(t)]
    print('\nfail -> pass (%d):' % len(to_pass))
    for t in to_pass:
        print('  %-58s %-9s was %s' % (t, meta.get(t, {}).get('kind', '?'), fmt_result(old.get(t))))
    print('\npass -> fail (%d):' % len(to_fail))
    for t in to_fail:
        print('  %-58s %-9s now %s' % (t, meta.get(t, {}).get('kind', '?'), fmt_result(new.get(t))))
    print('\nstill failing, different message (%d):' % len(changed))
    for t in changed:
        print('  %-58s %s  ->  %s' % (t, fmt_result(old.get(t)), fmt_result(new.get(t))))
    return 0


if __name__ == '__main__':
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    sys.exit(main(sys.argv[1:]))
