-- The admin listener's status page: GET / (with /status.js and /status.css,
-- built into the binary) under a strict Content-Security-Policy, the five
-- minutes of samples it draws from (GET /history), and -- in headless
-- Chromium driven by spec/support/status_page.py -- what an operator sees:
-- charts that fill with the traffic sent (the cache's hit ratio among them),
-- the pool's peers, and Drain / Enable buttons that work with the token
-- typed in the page.  A second moxy without a cache shows how the page says
-- there is none (and, having no TLS listener, shows no TLS section); a third,
-- started for its test, has a TLS listener whose handshakes the page shows.
-- Compression (on by default) has its section on every page: responses
-- compressed and decoded per coding, zeros included.
local helpers = require "spec.helpers"

local cjson = require "cjson.safe"

local TOKEN = "s3cret-admin-token-0123"

describe("admin status page", function()
  local a, b, m, admin_port, plain_admin -- plain: a moxy without a cache

  lazy_setup(function()
    a, b = helpers.start_origin(), helpers.start_origin()
    m = helpers.start_moxy({
      workers = 2,
      upstreams = { app = { servers = { a.addr, b.addr } } },
      cache = { size = "8m" },
      admin = { token = TOKEN },
    })
    admin_port = m.admin_port
    local plain = helpers.start_moxy({
      upstreams = { app = { servers = { a.addr } } },
      admin = {},
    })
    plain_admin = plain.admin_port
    for _, x in ipairs { { m, admin_port }, { plain, plain_admin } } do
      assert(helpers.wait_until(function()
        return x[1]:stderr():find("admin listener on 127.0.0.1:" .. x[2], 1, true) or not x[1]:alive()
      end, 10 * helpers.scale) and x[1]:alive(), "no admin listener:\n" .. x[1]:stderr())
    end
  end)

  lazy_teardown(function() helpers.stop_all() end)

  local function get(path, method)
    local res, err = helpers.request(admin_port, { method = method, path = path })
    return assert(res, tostring(err) .. "\n--- moxy's stderr ---\n" .. m:stderr())
  end

  local function post(path)
    return assert(helpers.request(admin_port, { method = "POST", path = path,
                                                headers = { Authorization = "Bearer " .. TOKEN } }))
  end

  -- n requests to path on one connection (with headers, if given)
  local function traffic(n, path, headers)
    local conn = assert(helpers.connection(m.port))
    for _ = 1, n do assert(conn:request({ path = path, headers = headers })) end
    conn:close()
  end

  -- a JSON answer (/echo) long enough to be compressed (min_length 256)
  local GZIP_PATH = "/echo?case=gzip&pad=" .. string.rep("moxy", 100)

  -- requests answered in the window by status class: sum of rate x interval
  local function answered(h, class)
    local n = 0
    for i = 2, #h.t do n = n + h.rate[class][i] * (h.t[i] - h.t[i - 1]) / 1000 end
    return n + (h.rate[class][1] or 0) -- the first interval is about a second
  end

  -- the sum of series[i] x interval over the samples of h taken after time t0
  -- (ms): with a per-second series, how many happened since then
  local function since(h, series, t0)
    local n = 0
    for i = 2, #h.t do
      if h.t[i] > t0 and series[i] ~= cjson.null then n = n + series[i] * (h.t[i] - h.t[i - 1]) / 1000 end
    end
    return n
  end

  local function peer(h, pool, addr)
    for _, p in ipairs(h.pools) do
      if p.name == pool then
        for _, pe in ipairs(p.peers) do if pe.addr == addr then return pe end end
      end
    end
  end

  it("serves the page, its script and style with a strict CSP, GET only", function()
    local res = get("/")
    assert.equal(200, res.status)
    assert.equal("text/html; charset=utf-8", res:header("content-type"))
    assert.equal("no-store", res:header("cache-control"))
    assert.equal("nosniff", res:header("x-content-type-options"))
    local csp = res:header("content-security-policy")
    assert.matches("default%-src 'none'", csp)
    assert.matches("script%-src 'self';", csp)
    assert.not_matches("unsafe", csp)
    assert.matches("<title>moxy status</title>", res.body, 1, true)
    assert.matches('<script src="/status.js"', res.body, 1, true)
    -- the page has no inline script or style for the CSP to block
    assert.not_matches("<script>", res.body, 1, true)
    assert.not_matches("<style", res.body, 1, true)
    assert.not_matches(" style=", res.body, 1, true)
    local js = get("/status.js")
    assert.equal(200, js.status)
    assert.equal("text/javascript; charset=utf-8", js:header("content-type"))
    assert.equal(helpers.read_file(helpers.root .. "/admin/status.js"), js.body)
    local css = get("/status.css")
    assert.equal("text/css; charset=utf-8", css:header("content-type"))
    assert.equal(helpers.read_file(helpers.root .. "/admin/status.css"), css.body)
    assert.equal(405, get("/", "POST").status)
    assert.equal(405, get("/history", "POST").status)
    assert.equal(404, get("/status.html").status)
  end)

  it("keeps a sample a second in GET /history: rates by class, percentiles, peers", function()
    -- the samples before this traffic
    local h0 = helpers.json(get("/history").body)
    assert.equal(300, h0.capacity)
    assert.same({ "up", "down", "unhealthy", "drained", "unresolved" }, h0.states)
    traffic(20, "/echo?delay=0.02")
    traffic(3, "/status/503")
    -- two more samples cover the traffic
    local h = helpers.wait_until(function()
      local h = helpers.json(get("/history").body)
      return h.samples >= h0.samples + 2 and h
    end, 5 * helpers.scale)
    assert(h, "GET /history took no new sample in 5 s")
    assert.equal(h.samples, #h.t)
    for _, class in ipairs { "1xx", "2xx", "3xx", "4xx", "5xx" } do assert.equal(h.samples, #h.rate[class]) end
    assert.equal(h.samples, #h.latency_ms.p50)
    assert.equal(h.samples, #h.connections)
    assert.is_true(math.abs(answered(h, "2xx") - 20) < 1.5, "2xx: " .. answered(h, "2xx"))
    assert.is_true(math.abs(answered(h, "5xx") - 3) < 0.5, "5xx: " .. answered(h, "5xx"))
    assert.is_true(answered(h, "4xx") < 0.01)
    -- the 20 requests took >= 20 ms each (the origin's delay): p90 sits in
    -- the 10-25 ms bucket or above it; seconds without requests are null
    local p90, nulls = 0, 0
    for i = 1, h.samples do
      if h.latency_ms.p90[i] == cjson.null then nulls = nulls + 1
      else p90 = math.max(p90, h.latency_ms.p90[i]) end
    end
    assert.is_true(p90 >= 10 and p90 <= 250, "p90 " .. p90)
    assert.is_true(nulls >= 1, "a second without requests has null percentiles")
    -- the pool's peers, in configuration order, up, with a value per sample
    assert.equal(1, #h.pools)
    assert.equal("app", h.pools[1].name)
    assert.equal(a.addr, h.pools[1].peers[1].addr)
    assert.equal(b.addr, h.pools[1].peers[2].addr)
    local pa = peer(h, "app", a.addr)
    assert.equal(h.samples, #pa.state)
    assert.equal(h.samples, #pa.active)
    assert.equal(0, pa.state[#pa.state])
    -- drained shows in the next sample, and so does enabled
    finally(function() post("/peers/app/" .. a.addr .. "/enable") end)
    assert.equal(200, post("/peers/app/" .. a.addr .. "/drain").status)
    assert(helpers.wait_until(function()
      local pe = peer(helpers.json(get("/history").body), "app", a.addr)
      return pe.state[#pe.state] == 3
    end, 3 * helpers.scale), "the drained state is not in /history")
    assert.equal(200, post("/peers/app/" .. a.addr .. "/enable").status)
    assert(helpers.wait_until(function()
      local pe = peer(helpers.json(get("/history").body), "app", a.addr)
      return pe.state[#pe.state] == 0
    end, 3 * helpers.scale), "the enabled state is not in /history")
  end)

  it("samples the cache in GET /history: hits and misses per second, hit ratio, bytes used", function()
    local h0 = helpers.json(get("/history").body)
    assert.is_table(h0.cache)
    assert.is_true(h0.cache.enabled)
    assert.equal(8 * 1024 * 1024, h0.cache.capacity)
    local t0 = h0.t[#h0.t] or 0
    -- one miss (stored) and nine hits; then four misses that are not stored
    traffic(10, "/bytes/1000?rh=Cache-Control:max-age%3D60&rh=X-Case:history")
    traffic(4, "/echo?case=history")
    local h = helpers.wait_until(function()
      local h = helpers.json(get("/history").body)
      return h.samples >= h0.samples + 2 and h
    end, 5 * helpers.scale)
    assert(h, "GET /history took no new sample in 5 s")
    local c = h.cache
    for _, k in ipairs { "hit_ratio", "hits", "misses", "used_bytes" } do
      assert.equal(h.samples, #c[k], k)
    end
    local hits, misses = since(h, c.hits, t0), since(h, c.misses, t0)
    assert.is_true(math.abs(hits - 9) < 1, "hits: " .. hits)
    assert.is_true(math.abs(misses - 5) < 1, "misses: " .. misses)
    -- the ratio of each second with lookups; null in a second without any
    local best, nulls = 0, 0
    for i = 1, h.samples do
      if c.hit_ratio[i] == cjson.null then nulls = nulls + 1
      else
        assert.is_true(c.hit_ratio[i] >= 0 and c.hit_ratio[i] <= 1, "hit_ratio " .. c.hit_ratio[i])
        best = math.max(best, c.hit_ratio[i])
      end
    end
    assert.is_true(best >= 0.5, "the best second's hit ratio: " .. best)
    assert.is_true(nulls >= 1, "a second without lookups has a null hit ratio")
    local used = c.used_bytes[#c.used_bytes]
    assert.is_true(used >= 1000 and used <= c.capacity, "used_bytes " .. tostring(used))
    -- a moxy without a cache has none
    local res = assert(helpers.request(plain_admin, { path = "/history" }))
    assert.equal(200, res.status)
    assert.equal(cjson.null, helpers.json(res.body).cache)
  end)

  it("shows live charts and peers in a browser, and drains and enables from it", function()
    -- traffic over a few seconds: 2xx (some slower) and a few 5xx
    for _ = 1, 3 do
      traffic(15, "/echo?delay=0.01")
      traffic(15, "/echo")
      traffic(5, "/status/503")
      traffic(5, "/bytes/100?rh=Cache-Control:max-age%3D60&rh=X-Case:browser") -- cache hits
      traffic(2, GZIP_PATH, { ["Accept-Encoding"] = "gzip" }) -- compressed
      helpers.sleep(0.5)
    end
    local addr = a.addr:gsub("%p", "%%%0")
    local function logged(what)
      local n = 0
      for _ in m:stderr():gmatch("upstream app: peer " .. addr .. " " .. what) do n = n + 1 end
      return n
    end
    local drained, enabled = logged("drained"), logged("enabled")
    local shots = helpers.tmpdir("status-page")
    local python = os.getenv("PYTHON") ~= nil and os.getenv("PYTHON") ~= "" and os.getenv("PYTHON") or "/usr/bin/python3"
    local cmd = table.concat({
      "timeout", tostring(90 * helpers.scale), helpers.shell_quote(python),
      helpers.shell_quote(helpers.support .. "/status_page.py"),
      "--admin", helpers.shell_quote("http://127.0.0.1:" .. admin_port),
      "--token", helpers.shell_quote(TOKEN), "--pool", "app",
      "--peer", helpers.shell_quote(a.addr), "--other", helpers.shell_quote(b.addr),
      "--screenshots", helpers.shell_quote(shots),
      "--no-cache-admin", helpers.shell_quote("http://127.0.0.1:" .. plain_admin),
    }, " ")
    local out, code = helpers.sh("STATUS_PAGE_WAIT=" .. 10 * helpers.scale .. " " .. cmd)
    assert.equal(0, code, "status_page.py failed (its screenshots stay in " .. shots
      .. " with MOXY_SPEC_KEEP=1):\n" .. out)
    for _, check in ipairs {
      "page loaded and live", "request%-rate chart: 2xx up to", "pixels of the 2xx line",
      "latency chart: p50 up to", "cache chart: hit ratio up to", "pixels of the hit ratio line",
      "cache cards: hit ratio [%d.]+ %%, used [^\n]+ / 8 MiB", "charts update by themselves", "peers .* listed, up",
      "Drain: .* drained in the table, the state chart and GET /status", "token kept in sessionStorage",
      "Enable: .* up again", "no console errors", "wrong token: 401 shown",
      "without a cache: .*no cache configured", "compression table: gzip %d+ responses compressed, .* ratio [%d.]+×",
    } do
      assert.matches("ok: [^\n]*" .. check, out)
    end
    -- moxy saw the page's requests: the peer was drained and enabled once each
    assert.equal(drained + 1, logged("drained"))
    assert.equal(enabled + 1, logged("enabled"))
    local st = helpers.json(get("/status").body)
    assert.equal("up", st.pools.app.peers[1].state)
    assert.equal("up", st.pools.app.peers[2].state)
  end)

  -- The page's DOM after headless Chromium ran its script for a few seconds
  -- of virtual time (polls included), bounded in real time.
  local function rendered(port)
    local profile = helpers.tmpdir("status-chromium")
    local chromium = os.getenv("CHROMIUM") ~= nil and os.getenv("CHROMIUM") ~= "" and os.getenv("CHROMIUM")
      or "/usr/bin/chromium"
    local out, code = helpers.sh(string.format("timeout %d %s --headless=new --no-sandbox --disable-gpu "
      .. "--disable-dev-shm-usage --no-first-run --disable-extensions --user-data-dir=%s "
      .. "--virtual-time-budget=4000 --dump-dom http://127.0.0.1:%d/ 2>/dev/null",
      math.ceil(30 * helpers.scale), helpers.shell_quote(chromium), helpers.shell_quote(profile), port))
    assert(code == 0 and out:find("</html>", 1, true), "chromium --dump-dom failed (" .. tostring(code) .. "):\n" .. out)
    return out
  end

  local function unescape(s)
    return (s:gsub("&lt;", "<"):gsub("&gt;", ">"):gsub("&quot;", '"'):gsub("&#39;", "'"):gsub("&amp;", "&"))
  end

  -- The section id ("tls", "compression") of a dumped page: its opening
  -- tag's attributes and, by table id, its rows: {key = {attrs, cells =
  -- {text...}}}.
  local function section(dom, id)
    local open, body = dom:match('(<section id="' .. id .. '"[^>]*>)(.-)</section>')
    assert(open, "no " .. id .. " section in the page")
    local function attrs(tag)
      local a = {}
      for k, v in tag:gmatch('([%w%-]+)="([^"]*)"') do a[k] = unescape(v) end
      for k in tag:gmatch('%s([%w%-]+)[%s>]') do a[k] = a[k] or "" end -- valueless: hidden
      return a
    end
    local tables = {}
    for id, tbody in body:gmatch('<table id="([%w%-]+)"[^>]*>.-<tbody>(.-)</tbody>') do
      local rows = {}
      for tr, cells in tbody:gmatch("(<tr[^>]*>)(.-)</tr>") do
        local a, texts = attrs(tr), {}
        for cell in cells:gmatch("<td[^>]*>(.-)</td>") do texts[#texts + 1] = unescape(cell:gsub("<[^>]*>", "")) end
        a.cells = texts
        rows[a["data-key"]] = a
      end
      tables[id] = rows
    end
    return attrs(open), tables, body
  end

  it("shows TLS handshakes, versions, failures and certificates' expiry when moxy has TLS listeners", function()
    local dir = helpers.tmpdir("status-tls")
    -- a certificate that expires in 10 days: within the page's 14-day warning
    helpers.make_cert(dir, "a", "ec", "a.test", { "a.test" }, 10)
    local out
    local port = helpers.free_port()
    local NAME = 'edge <b>"tls"</b> & co' -- listener names are the configuration's: never markup in the page
    local t = helpers.start_moxy({
      upstreams = { app = { servers = { a.addr } } },
      admin = {},
      listen = { { addr = "127.0.0.1:" .. port, name = NAME,
                   tls = { certificates = { { cert = dir .. "/a.pem", key = dir .. "/a.key" } } } } },
    })
    finally(function() t:stop() end)
    assert(helpers.wait_until(function()
      return t:stderr():find("admin listener on 127.0.0.1:" .. t.admin_port, 1, true) or not t:alive()
    end, 10 * helpers.scale) and t:alive(), "no admin listener:\n" .. t:stderr())
    local function tget(path) return assert(helpers.request(t.admin_port, { path = path })) end
    local S = math.ceil(10 * helpers.scale)
    -- (the connections that saw the listener up closed without sending a
    -- byte: failures "idle", counted when the worker sees them close, maybe
    -- after this baseline)
    local st0 = helpers.json(tget("/status").body)
    -- two requests on one TLS 1.3 connection, one on a TLS 1.2 connection,
    -- and plain HTTP sent to the TLS listener (a failed handshake: "http")
    out = helpers.sh(string.format("timeout %d curl -sk -o /dev/null -o /dev/null -w '%%{http_code} ' "
      .. "https://127.0.0.1:%d/echo/1 https://127.0.0.1:%d/echo/2", S, port, port))
    assert.equal("200 200 ", out)
    out = helpers.sh(string.format("timeout %d curl -sk --tlsv1.2 --tls-max 1.2 -o /dev/null -w '%%{http_code}' "
      .. "https://127.0.0.1:%d/echo/3", S, port))
    assert.equal("200", out)
    helpers.sh(string.format("timeout %d curl -s -o /dev/null http://127.0.0.1:%d/echo/plain", S, port))
    -- GET /status: the numbers the page draws from
    local st
    assert(helpers.wait_until(function()
      st = helpers.json(tget("/status").body)
      return st.tls and st.tls.handshakes.full >= 2 and st.tls.failures.http >= st0.tls.failures.http + 1
    end, 5 * helpers.scale, 0.1), "GET /status did not count the handshakes: " .. cjson.encode(st))
    local function since(g)
      local d = {}
      for k, v in pairs(st.tls[g]) do d[k] = v - (st0.tls[g][k] or 0) end
      return d
    end
    assert.same({ full = 0, resumed = 0 }, st0.tls.handshakes)
    assert.same({ full = 2, resumed = 0 }, since("handshakes"))
    assert.same({ ["TLSv1.2"] = 1, ["TLSv1.3"] = 1 }, since("versions"))
    -- by cipher: the TLS 1.3 connection's suite and the TLS 1.2 one's
    local ciphers = since("ciphers")
    assert.equal(1, ciphers["TLS_AES_256_GCM_SHA384"] or ciphers["TLS_AES_128_GCM_SHA256"]
      or ciphers["TLS_CHACHA20_POLY1305_SHA256"], cjson.encode(ciphers))
    assert.equal(1, ciphers["ECDHE-ECDSA-AES128-GCM-SHA256"] or ciphers["ECDHE-ECDSA-AES256-GCM-SHA384"]
      or ciphers["ECDHE-ECDSA-CHACHA20-POLY1305"], cjson.encode(ciphers))
    -- failures by reason: the page draws whatever reasons GET /status names
    local failed = since("failures")
    for _, reason in ipairs { "protocol", "cipher", "name", "http", "closed", "timeout", "refused", "idle", "other" } do
      assert.is_number(failed[reason], reason)
    end
    for reason, n in pairs(failed) do
      if reason ~= "idle" then assert.equal(reason == "http" and 1 or 0, n, reason) end
    end
    -- the page and its script carry the TLS section (hidden until the script
    -- has seen something to show in it)
    local page = tget("/").body
    assert.matches('<section id="tls" class="panel" data-tls="unknown" hidden>', page, 1, true)
    for _, id in ipairs { "tls-handshakes", "tls-versions", "tls-ciphers", "tls-failures", "tls-certs" } do
      assert.matches('<table id="' .. id .. '">', page, 1, true)
    end
    local js = tget("/status.js").body
    assert.matches("function renderTls(st, rates)", js, 1, true)
    assert.matches("renderTls(last.status, last.tlsRates);", js, 1, true)
    assert.matches("const WARN_DAYS = 14;", js, 1, true)

    -- what a person sees: the section, its counts (and a rate per second:
    -- nothing happened during the polls), no listener name as markup
    local dom = rendered(t.admin_port)
    local sec, tables = section(dom, "tls")
    assert.equal("on", sec["data-tls"])
    assert.is_nil(sec.hidden)
    local function row(id, key, total)
      local r = tables[id][key]
      assert(r, id .. ": no row " .. key)
      assert.equal(tostring(total), r["data-total"], id .. " " .. key)
      assert.same({ key, "0", tostring(total) }, r.cells, id .. " " .. key)
      assert.equal("0", r["data-rate"], id .. " " .. key)
    end
    row("tls-handshakes", "full", 2)
    row("tls-handshakes", "resumed", 0)
    row("tls-versions", "TLSv1.2", 1)
    row("tls-versions", "TLSv1.3", 1)
    for reason, n in pairs(st.tls.failures) do row("tls-failures", reason, n) end
    for cipher, n in pairs(st.tls.ciphers) do row("tls-ciphers", cipher, n) end
    assert.is_nil(dom:find('<b>"tls"</b>', 1, true), "a listener name became markup")
    -- the listener's soonest expiry, ten days away: a warning
    local cert = tables["tls-certs"][NAME]
    assert(cert, "no certificate row for the listener:\n" .. dom)
    local expires = tonumber(cert["data-expires"])
    assert.is_true(expires > os.time() + 9 * 86400 and expires < os.time() + 11 * 86400, tostring(expires))
    assert.equal(st.tls.listeners[NAME].expires, expires)
    assert.equal("soon", cert["data-level"])
    assert.equal("warn", cert.class)
    assert.equal(NAME, cert.cells[1])

    -- a moxy without TLS listeners: no TLS in GET /status, no TLS section
    local pst = helpers.json(assert(helpers.request(plain_admin, { path = "/status" })).body)
    assert.equal(cjson.null, pst.tls)
    local psec = section(rendered(plain_admin), "tls")
    assert.equal("off", psec["data-tls"])
    assert.equal("", psec.hidden)
  end)

  it("shows compression per coding, compressed and decoded, with ratios; zeros when nothing was coded", function()
    local CODINGS = { "gzip", "br", "zstd" }
    local function comp(port)
      return helpers.json(assert(helpers.request(port, { path = "/status" })).body).compression
    end
    local c0 = comp(admin_port)
    assert.is_table(c0, "no compression in GET /status")
    -- three JSON answers compressed with gzip (each checked), one sent as it is
    for _ = 1, 3 do
      local res = assert(helpers.request(m.port, { path = GZIP_PATH, headers = { ["Accept-Encoding"] = "gzip" } }))
      assert.equal(200, res.status)
      assert.equal("gzip", res:header("content-encoding"))
    end
    assert.is_nil(assert(helpers.request(m.port, { path = GZIP_PATH })):header("content-encoding"))
    local c = helpers.wait_until(function()
      local c = comp(admin_port)
      return c.encodings.gzip.compressed.responses >= c0.encodings.gzip.compressed.responses + 3 and c
    end, 5 * helpers.scale, 0.1)
    assert(c, "GET /status did not count the gzip responses")
    local gz = c.encodings.gzip.compressed
    assert.equal(c0.encodings.gzip.compressed.responses + 3, gz.responses)
    assert.is_true(gz.out > 0 and gz.out < gz["in"], "gzip in " .. gz["in"] .. ", out " .. gz.out)
    local page = get("/").body
    assert.matches('<section id="compression" class="panel" data-compression="unknown" hidden>', page, 1, true)
    assert.matches('<table id="comp-compressed">', page, 1, true)
    assert.matches('<table id="comp-decoded">', page, 1, true)

    -- what a person sees: a row per coding in each direction, the counts of
    -- GET /status (nothing happened during the polls: a rate of 0), the ratio
    local dom = rendered(admin_port)
    assert.same(c.encodings, comp(admin_port).encodings, "the page's own requests were counted")
    local sec, tables, body = section(dom, "compression")
    assert.equal("on", sec["data-compression"])
    assert.is_nil(sec.hidden)
    for _, g in ipairs { "compressed", "decoded" } do
      for _, coding in ipairs(CODINGS) do
        local r = tables["comp-" .. g][coding]
        assert(r, g .. ": no row " .. coding .. "\n" .. body)
        local want = c.encodings[coding][g]
        assert.equal(tostring(want.responses), r["data-responses"], g .. " " .. coding)
        assert.equal(tostring(want["in"]), r["data-in"], g .. " " .. coding)
        assert.equal(tostring(want.out), r["data-out"], g .. " " .. coding)
        assert.equal("0", r["data-rate"], g .. " " .. coding)
        assert.equal(coding, r.cells[1])
        assert.equal(tostring(want.responses), r.cells[2])
        assert.equal("0", r.cells[3])
        assert.matches("^[%d.]+ [KMG]?i?B$", r.cells[4])
        assert.matches("^[%d.]+ [KMG]?i?B$", r.cells[5])
        if want["in"] > 0 and want.out > 0 then -- in / out compressed, out / in decoded, one decimal
          local q = g == "compressed" and want["in"] / want.out or want.out / want["in"]
          local shown = tonumber(r["data-ratio"]:match("^([%d.]+)×$"))
          assert.is_true(shown and math.abs(shown - q) <= 0.051, g .. " " .. coding .. ": " .. r["data-ratio"])
        else
          assert.equal("", r["data-ratio"], g .. " " .. coding)
          assert.equal("–", r.cells[6])
        end
        assert.equal(r.cells[6], r["data-ratio"] ~= "" and r["data-ratio"] or "–")
      end
    end
    local row = tables["comp-compressed"].gzip
    assert.is_true(tonumber(row.cells[2]) >= 3, row.cells[2])
    assert.matches("^%d+%.%d×$", row.cells[6])
    assert.is_true(tonumber(row.cells[6]:match("^[%d.]+")) > 1, row.cells[6])
    local function line(id)
      return unescape(assert(body:match('<b id="' .. id:gsub("%-", "%%-") .. '">(.-)</b>'), "no " .. id))
    end
    assert.matches("^[%d.]+ [KMG]?i?B$", line("comp-memory"))
    assert.equal(tostring(c.skipped), line("comp-skipped"))
    assert.equal(tostring(c.decode_failures), line("comp-failures"))
    assert.equal(tostring(c.bombs), line("comp-bombs"))

    -- a moxy that compressed nothing: the same tables, all zeros, shown
    local pc = comp(plain_admin)
    local zero = { responses = 0, ["in"] = 0, out = 0 }
    assert.same({ compressed = zero, decoded = zero }, pc.encodings.gzip)
    local psec, ptables, pbody = section(rendered(plain_admin), "compression")
    assert.equal("on", psec["data-compression"])
    assert.is_nil(psec.hidden)
    for _, g in ipairs { "compressed", "decoded" } do
      for _, coding in ipairs(CODINGS) do
        local r = ptables["comp-" .. g][coding]
        assert(r, g .. ": no row " .. coding .. "\n" .. pbody)
        assert.same({ coding, "0", "0", "0 B", "0 B", "–" }, r.cells, g .. " " .. coding)
      end
    end
    for _, id in ipairs { "comp%-skipped", "comp%-failures", "comp%-bombs" } do
      assert.equal("0", pbody:match('<b id="' .. id .. '">(.-)</b>'), id)
    end
  end)
end)
