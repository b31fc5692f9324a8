#!/usr/bin/env python3
"""Drive moxy's admin status page in headless Chromium, as a person would.

    status_page.py --admin http://127.0.0.1:PORT --token T --pool app \
                   --peer ADDR --other ADDR [--screenshots DIR] \
                   [--no-cache-admin http://127.0.0.1:PORT2]

Run by spec/03-integration/37-status_page_spec.lua after it has sent traffic
through moxy (2xx and some 5xx, cache hits and misses, spread over a few
seconds; moxy has an 8 MiB cache).  Checks, each with a bounded wait:
  1. the page loads (title) and goes live;
  2. the charts have data: the request-rate chart drew 2xx and 5xx points
     with a rate > 0, the latency chart p50/p99 points, the cache's charts a
     hit ratio > 0 and hits and misses per second > 0, and the canvases hold
     pixels of those lines' colours; the cache cards show the last minute's
     hit ratio and "used / 8 MiB"; the charts keep updating by themselves;
  3. the peers table lists both peers of the pool, up;
  4. with the token typed in the page, Drain shows the peer drained in the
     table, in the state chart and in GET /status; the token survives a
     reload (sessionStorage); Enable brings it back up;
  5. no console errors;
  6. a wrong token gets a 401 shown in the page and changes nothing;
  7. with --no-cache-admin (a moxy without a cache): that page says "no cache
     configured" and shows no cache chart or card, without console errors;
  8. the compression section is shown, its gzip row of the compressed table
     with responses >= 1 (the spec sent some with Accept-Encoding: gzip), bytes
     in and out and a ratio "N.N×", and a row per coding in both tables.
Prints "ok: ..." per check; exits 1 with "FAIL: ..." at the first failure.
"""
import argparse
import json
import os
import sys
import time
import urllib.request

from selenium import webdriver
from selenium.common.exceptions import WebDriverException
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By

WAIT = float(os.environ.get("STATUS_PAGE_WAIT", "10"))  # seconds, for each wait


class Failed(Exception):
    pass


def wait_for(what, fn, timeout=WAIT, interval=0.1):
    """fn()'s first truthy result within timeout seconds, else Failed(what)."""
    deadline = time.monotonic() + timeout
    last_err = None
    while True:
        try:
            v = fn()
            if v:
                return v
        except WebDriverException as e:  # an element replaced mid-read: try again
            last_err = e
        if time.monotonic() >= deadline:
            raise Failed(f"{what} (waited {timeout:.0f} s){': ' + str(last_err).splitlines()[0] if last_err else ''}")
        time.sleep(interval)


def ok(msg):
    print("ok:", msg, flush=True)


def admin_status(admin):
    with urllib.request.urlopen(admin + "/status", timeout=5) as r:
        return json.load(r)


def peer_state(admin, pool, addr):
    for p in admin_status(admin)["pools"][pool]["peers"]:
        if p["addr"] == addr:
            return p["state"]
    return None


def series(driver, canvas_css):
    """What the chart at canvas_css says it drew: {name: {points, max, last}}."""
    raw = driver.execute_script(
        "const c = document.querySelector(arguments[0]); return c ? c.dataset.series || null : null;", canvas_css)
    return json.loads(raw) if raw else {}


# Opaque pixels of canvas_css within 40 of the colour rgb in each channel,
# above its zero line (data-zero-y; a flat line at 0 does not count).
COUNT_PIXELS = """
const c = document.querySelector(arguments[0]);
const [r, g, b] = arguments[1];
const zero = Number(c.dataset.zeroY) * c.height / c.clientHeight;
const d = c.getContext('2d').getImageData(0, 0, c.width, Math.max(1, Math.floor(zero) - 3)).data;
let n = 0;
for (let i = 0; i < d.length; i += 4)
  if (d[i + 3] > 200 && Math.abs(d[i] - r) < 40 && Math.abs(d[i + 1] - g) < 40 && Math.abs(d[i + 2] - b) < 40) n++;
return n;
"""


def pixels(driver, canvas_css, rgb):
    return driver.execute_script(COUNT_PIXELS, canvas_css, rgb)


def row(driver, addr):
    rows = [r for r in driver.find_elements(By.CSS_SELECTOR, "section.pool tbody tr")
            if r.get_attribute("data-peer") == addr]
    return rows[0] if rows else None


def row_state(driver, addr):
    r = row(driver, addr)
    return r.find_element(By.CSS_SELECTOR, ".state").text if r else None


def click(driver, addr, button):
    r = wait_for(f"a table row for {addr}", lambda: row(driver, addr))
    b = r.find_element(By.CSS_SELECTOR, "button." + button)
    wait_for(f"{button} button of {addr} enabled", b.is_enabled)
    b.click()


def coding_row(driver, table_id, coding):
    """The texts of the cells of coding's row in table table_id, or None."""
    for r in driver.find_elements(By.CSS_SELECTOR, f"#{table_id} tbody tr"):
        if r.get_attribute("data-key") == coding:
            return [td.text for td in r.find_elements(By.TAG_NAME, "td")]
    return None


def compression(driver, screenshots):
    """8. the compression section: shown, gzip compressed with a ratio."""
    wait_for("the compression section on",
             lambda: driver.find_element(By.ID, "compression").get_attribute("data-compression") == "on")
    if not driver.find_element(By.ID, "compression").is_displayed():
        raise Failed("compression section not shown")
    cells = wait_for("the gzip row of the compressed table with responses >= 1 and a ratio", lambda: (
        lambda c: c if c and c[1].isdigit() and int(c[1]) >= 1 and c[5].endswith("×") else None)(
        coding_row(driver, "comp-compressed", "gzip")))
    for table in ("comp-compressed", "comp-decoded"):
        missing = [k for k in ("gzip", "br", "zstd") if not coding_row(driver, table, k)]
        if missing:
            raise Failed(f"{table}: no row for {', '.join(missing)}")
    memory = driver.find_element(By.ID, "comp-memory").text
    if not memory.endswith("B"):
        raise Failed(f"coders' memory shown as {memory!r}")
    ok(f"compression table: gzip {cells[1]} responses compressed, {cells[3]} in, {cells[4]} out, "
       f"ratio {cells[5]}; memory {memory}")
    if screenshots:
        driver.find_element(By.ID, "compression").screenshot(os.path.join(screenshots, "compression.png"))


def console_errors(driver):
    return [e for e in driver.get_log("browser") if e.get("level") == "SEVERE"]


def browser():
    opts = Options()
    opts.binary_location = os.environ.get("CHROMIUM", "/usr/bin/chromium")
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
              "--window-size=1280,1800", "--no-first-run", "--disable-extensions"):
        opts.add_argument(a)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    service = Service(os.environ.get("CHROMEDRIVER", "/usr/bin/chromedriver"))
    driver = webdriver.Chrome(service=service, options=opts)
    driver.set_page_load_timeout(WAIT)
    driver.set_script_timeout(WAIT)
    return driver


def run(driver, a):
    # 1. loads, goes live
    driver.get(a.admin + "/")
    wait_for("the title 'moxy status'", lambda: driver.title == "moxy status")
    wait_for("the page to go live", lambda: driver.find_element(By.ID, "live").get_attribute("data-live") == "yes")
    ok("page loaded and live")

    # 2. charts with data
    rate = wait_for("the request-rate chart to show 2xx and 5xx traffic", lambda: (
        lambda s: s if s.get("2xx", {}).get("max", 0) > 0 and s.get("5xx", {}).get("max", 0) > 0 else None)(
        series(driver, "#chart-rate")))
    ok(f"request-rate chart: 2xx up to {rate['2xx']['max']}/s over {rate['2xx']['points']} samples, "
       f"5xx up to {rate['5xx']['max']}/s")
    lat = wait_for("the latency chart to show p50 and p99", lambda: (
        lambda s: s if s.get("p50", {}).get("max", 0) > 0 and s.get("p99", {}).get("max", 0) > 0 else None)(
        series(driver, "#chart-latency")))
    ok(f"latency chart: p50 up to {lat['p50']['max']} ms, p99 up to {lat['p99']['max']} ms")
    wait_for("the cache section on", lambda: driver.find_element(By.ID, "cache").get_attribute("data-cache") == "on")
    ratio = wait_for("the cache chart to show a hit ratio > 0", lambda: (
        lambda s: s if s.get("hit_ratio", {}).get("max", 0) > 0 else None)(series(driver, "#chart-cache-ratio")))
    lookups = wait_for("the cache lookups chart to show hits and misses", lambda: (
        lambda s: s if s.get("hits", {}).get("max", 0) > 0 and s.get("misses", {}).get("max", 0) > 0 else None)(
        series(driver, "#chart-cache-lookups")))
    ok(f"cache chart: hit ratio up to {ratio['hit_ratio']['max']} % over {ratio['hit_ratio']['points']} samples, "
       f"hits up to {lookups['hits']['max']}/s, misses up to {lookups['misses']['max']}/s")
    for css, colour, name in (("#chart-rate", (0x2e, 0x9d, 0x48), "2xx line"),
                              ("#chart-rate", (0xd3, 0x3c, 0x3c), "5xx line"),
                              ("#chart-latency", (0x3b, 0x73, 0xc4), "p50 line"),
                              ("#chart-cache-ratio", (0x1b, 0x9a, 0xaa), "hit ratio line"),
                              ("#chart-cache-lookups", (0x2e, 0x9d, 0x48), "cache hits line")):
        n = wait_for(f"pixels of the {name} in {css}", lambda: pixels(driver, css, colour) > 5 and pixels(driver, css, colour))
        ok(f"{css}: {n} pixels of the {name}")
    card_ratio = wait_for("the cache hit ratio card to show a ratio > 0", lambda: (
        lambda t: t if t.endswith(" %") and float(t[:-2]) > 0 else None)(
        driver.find_element(By.ID, "card-cache-ratio").text))
    card_used = wait_for("the cache used card to show used / 8 MiB", lambda: (
        lambda t: t if t.endswith(" / 8 MiB") and not t.startswith("–") else None)(
        driver.find_element(By.ID, "card-cache-used").text))
    if not driver.find_element(By.ID, "card-cache-ratio").is_displayed() or \
            driver.find_element(By.ID, "cache-off").is_displayed():
        raise Failed("cache on, but its card hidden or 'no cache configured' shown")
    ok(f"cache cards: hit ratio {card_ratio}, used {card_used}")
    before = series(driver, "#chart-rate")["total"]["points"]
    after = wait_for("the charts to update by themselves", lambda: (
        lambda n: n if n > before else None)(series(driver, "#chart-rate")["total"]["points"]), timeout=5)
    ok(f"charts update by themselves ({before} -> {after} samples)")
    compression(driver, a.screenshots)

    # 3. peers table
    for addr in (a.peer, a.other):
        wait_for(f"peer {addr} listed as up", lambda: row_state(driver, addr) == "up")
    states_css = f"section.pool[data-pool='{a.pool}'] canvas.states"
    wait_for("the state chart to show both peers up", lambda: all(
        series(driver, states_css).get(addr, {}).get("last") == "up" for addr in (a.peer, a.other)))
    ok(f"pool {a.pool}: peers {a.peer} and {a.other} listed, up")

    # 4. drain from the page, then enable
    driver.find_element(By.ID, "token").send_keys(a.token)
    click(driver, a.peer, "drain")
    wait_for(f"{a.peer} shown drained in the table", lambda: row_state(driver, a.peer) == "drained")
    wait_for(f"{a.peer} drained in GET /status", lambda: peer_state(a.admin, a.pool, a.peer) == "drained", timeout=2)
    wait_for(f"{a.peer} drained in the state chart",
             lambda: series(driver, states_css).get(a.peer, {}).get("last") == "drained")
    if row_state(driver, a.other) != "up":
        raise Failed(f"draining {a.peer} changed {a.other}: {row_state(driver, a.other)}")
    ok(f"Drain: {a.peer} drained in the table, the state chart and GET /status")
    if a.screenshots:
        driver.save_screenshot(os.path.join(a.screenshots, "drained.png"))

    driver.refresh()
    wait_for("the token kept across a reload (sessionStorage)",
             lambda: driver.find_element(By.ID, "token").get_attribute("value") == a.token)
    ok("token kept in sessionStorage across a reload")
    click(driver, a.peer, "enable")
    wait_for(f"{a.peer} shown up again", lambda: row_state(driver, a.peer) == "up")
    wait_for(f"{a.peer} up in GET /status", lambda: peer_state(a.admin, a.pool, a.peer) == "up", timeout=2)
    ok(f"Enable: {a.peer} up again in the table and GET /status")

    # 5. nothing went wrong in the console
    errs = console_errors(driver)
    if errs:
        raise Failed("console errors: " + json.dumps(errs))
    ok("no console errors")

    # 6. a wrong token: refused, shown, nothing changed
    tok = driver.find_element(By.ID, "token")
    tok.clear()
    tok.send_keys("wrong-token-0123456789")
    click(driver, a.other, "drain")
    wait_for("the 401 shown in the page", lambda: "401" in driver.find_element(By.ID, "message").text)
    if peer_state(a.admin, a.pool, a.other) != "up":
        raise Failed(f"a wrong token drained {a.other}")
    unexpected = [e for e in console_errors(driver) if "401" not in e.get("message", "")]
    if unexpected:
        raise Failed("console errors: " + json.dumps(unexpected))
    ok("wrong token: 401 shown, peer left up")
    if a.screenshots:
        driver.save_screenshot(os.path.join(a.screenshots, "final.png"))

    # 7. a moxy without a cache: the page says so, draws no cache chart
    if a.no_cache_admin:
        driver.get(a.no_cache_admin + "/")
        wait_for("the page without a cache to go live",
                 lambda: driver.find_element(By.ID, "live").get_attribute("data-live") == "yes")
        wait_for("the cache section off", lambda: driver.find_element(By.ID, "cache").get_attribute("data-cache") == "off")
        note = wait_for("'no cache configured' shown", lambda: (
            lambda e: e.is_displayed() and "no cache configured" in e.text.lower() and e.text)(
            driver.find_element(By.ID, "cache-off")))
        shown = [css for css in ("#chart-cache-ratio", "#chart-cache-lookups", "#card-cache-ratio", "#card-cache-used")
                 if driver.find_element(By.CSS_SELECTOR, css).is_displayed()]
        if shown:
            raise Failed("without a cache, shown: " + ", ".join(shown))
        errs = console_errors(driver)
        if errs:
            raise Failed("console errors without a cache: " + json.dumps(errs))
        ok(f"without a cache: 'no cache configured' shown ({note!r}), no cache chart or card")
        if a.screenshots:
            driver.save_screenshot(os.path.join(a.screenshots, "no-cache.png"))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--admin", required=True)
    ap.add_argument("--token", required=True)
    ap.add_argument("--pool", required=True)
    ap.add_argument("--peer", required=True)
    ap.add_argument("--other", required=True)
    ap.add_argument("--screenshots")
    ap.add_argument("--no-cache-admin", help="the admin URL of a moxy without a cache")
    a = ap.parse_args()
    t0 = time.monotonic()
    driver = browser()
    ok(f"chromium started ({time.monotonic() - t0:.1f} s)")
    try:
        run(driver, a)
    except Failed as e:
        print("FAIL:", e, flush=True)
        try:
            print("page text:\n" + driver.find_element(By.TAG_NAME, "body").text[:3000], flush=True)
            if a.screenshots:
                driver.save_screenshot(os.path.join(a.screenshots, "failed.png"))
        except WebDriverException:
            pass
        return 1
    finally:
        driver.quit()
    ok(f"done in {time.monotonic() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
