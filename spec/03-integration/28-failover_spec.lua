-- Failover: what clients see when origins die, come back, answer errors or
-- hang -- retries to another peer, passive ejection and its backoff, slow
-- start, backup servers, the retry budget, retry_timeout, max_conns, and
-- drain / enable from Lua.  Every case starts and stops its own origins.
local helpers = require "spec.helpers"

local S = helpers.scale
local WRK = "/usr/bin/wrk"

-- A site script: /_up/... answers from moxy.upstream (peers, stats, drain,
-- enable; ?pool=NAME, default "app"; ?addr=IP:PORT); "X-Retryable: yes"
-- reads the body (so it can be sent again) and marks the request retryable.
-- bad: the address of a peer whose tries go to /status/503 (or the path in
-- X-Bad-Path) while the other peers' go to /echo.
local function site(bad)
  return [[
local BAD = ]] .. (bad and string.format("%q", bad) or "nil") .. [[

return {
  on_request = function(txn)
    local p = txn.req.path
    if p:sub(1, 5) ~= "/_up/" then
      if txn.req.headers:get("X-Retryable") == "yes" then
        assert(txn:read_body()) -- a body streamed to the origin cannot be sent again
        txn.upstream:retryable(true)
      end
      return
    end
    local args = txn.req.args
    local pool = args.pool or "app"
    local out, err
    if p == "/_up/peers" then out, err = moxy.upstream.peers(pool)
    elseif p == "/_up/stats" then out, err = moxy.upstream.stats(pool)
    elseif p == "/_up/drain" then out, err = moxy.upstream.drain(pool, args.addr)
    elseif p == "/_up/enable" then out, err = moxy.upstream.enable(pool, args.addr)
    else err = "unknown " .. p end
    if out == nil then return txn:respond(404, tostring(err) .. "\n") end
    return txn:respond(200, moxy.json.encode(out), { ["Content-Type"] = "application/json" })
  end,

  on_upstream_request = function(txn)
    if BAD then
      txn.req.path = txn.upstream.peer == BAD and (txn.req.headers:get("X-Bad-Path") or "/status/503") or "/echo"
    end
  end,
}
]]
end

local function start_moxy(config, bad)
  config.scripts = { "site.lua" }
  return helpers.start_moxy(config, { files = { ["site.lua"] = site(bad) } })
end

-- GET a /_up/ document (decoded JSON), or the error text with its status.
local function up(m, what)
  local res = assert(helpers.request(m.port, { path = "/_up/" .. what }))
  if res.status ~= 200 then return nil, res.status, res.body end
  return helpers.json(res.body)
end

local function peer(m, addr, pool)
  for _, p in ipairs(assert(up(m, "peers?pool=" .. (pool or "app")))) do
    if p.addr == addr then return p end
  end
  error("no peer " .. addr .. " in moxy.upstream.peers()")
end

-- Send n requests one after the other over keep-alive connections (a new
-- one when moxy closes it), for at most `seconds`.  -> { [status] = count },
-- requests sent.
local function load(port, n, req, seconds)
  local conn = assert(helpers.connection(port))
  local statuses, sent = {}, 0
  local deadline = helpers.now() + (seconds or 30 * S)
  while sent < n and helpers.now() < deadline do
    local res, err = conn:request(req or { path = "/echo" })
    if not res then
      conn:close()
      conn = assert(helpers.connection(port))
      res = assert(conn:request(req or { path = "/echo" }), err)
    end
    sent = sent + 1
    statuses[res.status] = (statuses[res.status] or 0) + 1
    if (res:header("connection") or ""):lower() == "close" then
      conn:close()
      conn = assert(helpers.connection(port))
    end
  end
  conn:close()
  return statuses, sent
end

-- requests the origin served (its own count, /stats excluded)
local function served(o) return o:stats().requests end

local function reset(origins)
  for _, o in ipairs(origins) do o:reset_stats() end
end

local function stop(list)
  for _, x in ipairs(list) do pcall(x.stop, x) end
end

local function since(t) return helpers.now() - t end

describe("failover", function()
  lazy_teardown(function() helpers.stop_all() end)

  ---------------------------------------------------------------------------
  describe("an origin dying under load", function()
    local function wrk_available()
      local f = io.open(WRK, "rb")
      if f then f:close() end
      return f ~= nil
    end

    -- wrk's summary -> requests, non-2xx/3xx, socket errors
    local function parse_wrk(out)
      local requests = tonumber(out:match("(%d+) requests in"))
      local non2xx = tonumber(out:match("Non%-2xx or 3xx responses: (%d+)")) or 0
      local errors = 0
      local se = out:match("Socket errors:([^\n]*)")
      if se then
        for n in se:gmatch("(%d+)") do errors = errors + tonumber(n) end
      end
      return requests, non2xx, errors
    end

    it("loses no GET while one of 3 origins is killed and comes back after the backoff", function()
      if not wrk_available() then
        pending(WRK .. " is missing: install wrk (Debian package wrk) to run this case")
        return
      end
      local o = {}
      for i = 1, 3 do o[i] = helpers.start_origin() end
      local m = start_moxy({
        upstreams = { app = {
          servers = { o[1].addr, o[2].addr, o[3].addr },
          passive = { failures = 3, backoff = "1s", max_backoff = "2s" },
        } },
      })
      local wrk
      finally(function()
        if wrk then wrk:stop("KILL") end
        m:stop()
        stop(o)
      end)
      local victim = o[3]

      wrk = helpers.spawn({ WRK, "-t2", "-c16", "-d10s", "--latency",
                           "http://127.0.0.1:" .. m.port .. "/echo" }, { kind = "wrk" })
      local t0 = helpers.now()
      helpers.sleep(2)
      assert.is_true(wrk:alive(), "wrk exited early: " .. wrk:stdout() .. wrk:stderr())
      local before = peer(m, victim.addr)
      assert.equal("up", before.state)
      assert.is_true(before.requests > 100, "the victim served only " .. before.requests .. " requests before")

      -- kill it; poll moxy.upstream.peers until moxy ejects it
      victim:stop()
      local t_kill = helpers.now()
      local ejected = helpers.wait_until(function()
        local p = peer(m, victim.addr)
        if p.state == "down" then return p end
      end, 3 * S, 0.01)
      local eject_s = since(t_kill)
      assert.truthy(ejected, "the dead origin was not ejected within " .. 3 * S .. " s")
      local fails_at_eject = ejected.failures
      -- ejected, it gets no new try at all until its backoff ends
      helpers.sleep(math.min(0.5, ejected.down_for / 2))
      local still = peer(m, victim.addr)
      assert.equal("down", still.state)
      assert.equal(ejected.requests, still.requests, "an ejected peer was tried")

      -- while it is dead it is only tried when an ejection ends
      helpers.sleep(math.max(0, 3 - since(t_kill)))
      local dead = peer(m, victim.addr)
      local fails_dead = dead.failures

      -- bring it back on the same port, at ~5 s of the 10 s run
      local back = helpers.start_origin({ port = victim.port })
      o[3] = back
      local t_back = helpers.now()
      local again = helpers.wait_until(function()
        local p = peer(m, back.addr)
        if p.state == "up" and served(back) > 0 then return p end
      end, 4 * S, 0.05)
      local return_s = since(t_back)
      assert.truthy(again, "the restarted origin got no traffic within " .. 4 * S .. " s")

      assert(wrk:wait_exit(15 * S), "wrk did not finish")
      local out = wrk:stdout()
      local requests, non2xx, errors = parse_wrk(out)
      assert.truthy(requests, "cannot parse wrk's output:\n" .. out .. wrk:stderr())
      local back_served = served(back)
      local ups = up(m, "peers")
      -- "upstream app: peer ADDR is down for 1s after 3 failures": backoffs
      local backoffs = {}
      local mark = "peer " .. victim.addr .. " is down for "
      for line in m:stderr():gmatch("[^\n]+") do
        local at = line:find(mark, 1, true)
        if at then backoffs[#backoffs + 1] = tonumber(line:sub(at + #mark):match("^([%d.]+)s after")) end
      end
      local ejections = #backoffs
      local stats = assert(up(m, "stats"))
      print(string.format(
        "\n  wrk 10 s, 16 connections, origin killed at %.1f s: %d requests, %d non-2xx, %d socket errors;"
        .. "\n  ejected %.0f ms after the kill (%d failed tries then, most in flight when it died); over its"
        .. " first 3 s dead %d failed tries; ejected %d times in all, for %s s; %d retries;"
        .. "\n  restarted, it got traffic again after %.2f s and served %d requests by the end",
        t_kill - t0, requests, non2xx, errors, eject_s * 1000, fails_at_eject, fails_dead,
        ejections, table.concat(backoffs, ", "), stats.retries, return_s, back_served))

      assert.equal(0, non2xx, "non-2xx responses:\n" .. out)
      assert.equal(0, errors, "socket errors:\n" .. out)
      assert.is_true(requests > 1000, "only " .. requests .. " requests")
      assert.is_true(eject_s < 1 * S, "ejected only after " .. eject_s .. " s")
      -- 3 failures eject it; up to 16 more were in flight on it when it died
      assert.is_true(fails_at_eject <= 3 + 16, fails_at_eject .. " failures before the ejection")
      -- its first 3 s dead (backoff 1 s, then 2 s): the requests in flight
      -- when it died (<= 16), then at most 2 returns, each ended by 3
      -- failures (up to 16 with those in flight); without ejection a third
      -- of ~3 s of traffic (thousands of tries) would have gone to it
      assert.is_true(fails_dead <= 3 * 16 + 16, fails_dead .. " failed tries on the dead origin")
      -- backoff 1 s, doubling, at most max_backoff 2 s
      assert.is_true(ejections >= 2, "ejected " .. ejections .. " times")
      assert.equal(1, backoffs[1])
      assert.equal(2, backoffs[2])
      for i = 3, ejections do assert.equal(2, backoffs[i]) end
      -- moxy.upstream.peers (and /metrics' moxy_peer_ejections_total) count them
      for _, p in ipairs(ups) do
        assert.equal(p.addr == victim.addr and ejections or 0, p.ejections, p.addr)
      end
      assert.is_true(back_served > 100, "the restarted origin served only " .. back_served)
      for _, p in ipairs(ups) do assert.equal("up", p.state, p.addr) end
    end)

    it("ramps a returning origin up over slow_start", function()
      local o = {}
      for i = 1, 3 do o[i] = helpers.start_origin() end
      local servers = {}
      for i = 1, 3 do servers[i] = { addr = o[i].addr, slow_start = "2s" } end
      local m = start_moxy({
        upstreams = { app = { servers = servers, passive = { failures = 3, backoff = "1s" } } },
      })
      finally(function()
        m:stop()
        stop(o)
      end)
      -- the pool's current weights are the worker's: get them going
      assert.same({ [200] = 30 }, load(m.port, 30))

      local victim = o[3]
      victim:stop()
      -- three failed tries (each retried: clients see 200) eject it
      assert.same({ [200] = 12 }, load(m.port, 12))
      assert.equal("down", peer(m, victim.addr).state)
      o[3] = helpers.start_origin({ port = victim.port })

      -- the moment the ejection ends, count where 0.5 s of requests go
      local p = helpers.wait_until(function()
        local q = peer(m, victim.addr)
        if q.state == "up" then return q end
      end, 3 * S, 0.01)
      assert.truthy(p, "still ejected")
      reset(o)
      local st, n = load(m.port, 5000, nil, 0.5)
      local early = served(o[3]) / n
      local weight_early = p.weight_now

      -- 2 s later: the full weight
      helpers.sleep(2.1 - 0.5)
      local later_weight = peer(m, victim.addr).weight_now
      reset(o)
      local st2, n2 = load(m.port, 5000, nil, 0.5)
      local later = served(o[3]) / n2
      print(string.format(
        "\n  slow_start 2 s: back from ejection at weight %.3f of 1, its share of the first 0.5 s %.1f%%"
        .. " (%d requests); 2 s later weight %.2f, share %.1f%% (%d requests); an equal share is 33.3%%",
        weight_early, early * 100, n, later_weight, later * 100, n2))
      assert.same({ [200] = n }, st)
      assert.same({ [200] = n2 }, st2)
      assert.is_true(n >= 50 and n2 >= 50, "too few requests to judge: " .. n .. ", " .. n2)
      assert.is_true(weight_early < 0.25, "weight_now " .. weight_early)
      -- weight 0 -> 0.25 of 1 during that 0.5 s: ~6% on average, 11% at
      -- the end (margin for a late start on a busy machine)
      assert.is_true(early < 0.2, "share right after coming back " .. early)
      assert.equal(1, later_weight)
      assert.is_true(later > 0.28 and later < 0.39, "share once ramped up " .. later)
    end)
  end)

  ---------------------------------------------------------------------------
  it("sends to the backup only while no primary is usable", function()
    local p1, p2, b = helpers.start_origin(), helpers.start_origin(), helpers.start_origin()
    local m = start_moxy({
      upstreams = { app = {
        servers = { p1.addr, p2.addr, { addr = b.addr, backup = true } },
        tries = 3,
        passive = { failures = 3, backoff = "1s", max_backoff = "1s", max_ejected = 1 },
      } },
    })
    local o = { p1, p2, b }
    finally(function()
      m:stop()
      stop(o)
    end)

    assert.same({ [200] = 20 }, load(m.port, 20))
    assert.equal(0, served(b), "the backup got traffic while both primaries were up")
    assert.equal(20, served(p1) + served(p2))

    p1:stop()
    p2:stop()
    reset({ b })
    assert.same({ [200] = 20 }, load(m.port, 20))
    assert.equal(20, served(b))
    assert.equal("down", peer(m, p1.addr).state)
    assert.equal("down", peer(m, p2.addr).state)

    o[1] = helpers.start_origin({ port = p1.port })
    assert.truthy(helpers.wait_until(function() return peer(m, p1.addr).state == "up" end, 3 * S, 0.02),
      "the primary is still ejected")
    reset({ b })
    local st = load(m.port, 20)
    local backup_after = served(b)
    print(string.format("\n  backup: 0 of 20 requests with both primaries up, 20 of 20 with both down,"
      .. " %d of 20 once one primary is back (it served %d)", backup_after, served(o[1])))
    assert.same({ [200] = 20 }, st)
    assert.equal(0, backup_after, "the backup still gets traffic with a primary back")
    assert.equal(20, served(o[1]))
  end)

  ---------------------------------------------------------------------------
  describe("the retry budget", function()
    local N = 1000

    -- 3 origins answering 503, 3 tries on 503: origin requests / N
    local function amplification(budget, budget_min)
      local o = {}
      for i = 1, 3 do o[i] = helpers.start_origin() end
      local m = start_moxy({
        upstreams = { app = {
          servers = { o[1].addr, o[2].addr, o[3].addr },
          tries = 3, retry_statuses = { 503 }, retry_budget = budget, retry_budget_min = budget_min,
        } },
      })
      local ok, err = pcall(function()
        local t = helpers.now()
        local st, n = load(m.port, N, { path = "/status/503" }, 40 * S)
        assert.equal(N, n, "sent only " .. n .. " requests in " .. since(t) .. " s")
        assert.same({ [503] = N }, st)
        local each = { served(o[1]), served(o[2]), served(o[3]) }
        local total = each[1] + each[2] + each[3]
        local stats = assert(up(m, "stats"))
        return { ratio = total / N, total = total, each = each, seconds = since(t), stats = stats,
                 log = m:stderr() }
      end)
      m:stop()
      stop(o)
      if not ok then error(err, 0) end
      return err
    end

    it("caps the requests 503s cause at 20% more (+1 per second), and 3 tries without it", function()
      local tight = amplification(0.2, 1)
      local loose = amplification(1, 1000)
      print(string.format(
        "\n  %d requests to 3 origins answering 503, tries = 3:"
        .. "\n    retry_budget 0.2 (min 1/s): the origins saw %d requests, x%.3f (%d retries, %d refused; %.1f s)"
        .. "\n    retry_budget 1 (min 1000/s): the origins saw %d requests, x%.3f (%d retries, %d refused; %.1f s)",
        N, tight.total, tight.ratio, tight.stats.retries, tight.stats.retries_denied, tight.seconds,
        loose.total, loose.ratio, loose.stats.retries, loose.stats.retries_denied, loose.seconds))
      -- 0.2 x requests + 1/s over the 10 s window
      assert.is_true(tight.ratio <= 1.2 + 10 / N + 0.02, "amplification x" .. tight.ratio)
      assert.is_true(tight.ratio >= 1.15, "the budget allowed too few retries: x" .. tight.ratio)
      assert.equal(tight.total - N, tight.stats.retries)
      assert.is_true(tight.stats.retries_denied > 0)
      assert.matches("no retry: pool app's retry budget is spent", tight.log, 1, true)
      -- the same load without a binding budget: every request tried 3 times
      assert.is_true(loose.ratio >= 2.95, "amplification x" .. loose.ratio)
      -- never the same origin twice for one request: each saw every request
      assert.same({ N, N, N }, loose.each)
      assert.equal(0, loose.stats.retries_denied)
    end)
  end)

  ---------------------------------------------------------------------------
  it("retries a GET answered with a retry status elsewhere; a POST gets that answer", function()
    local bad, good = helpers.start_origin(), helpers.start_origin()
    local m = start_moxy({
      upstreams = { app = { servers = { bad.addr, good.addr }, retry_statuses = { "5xx" } } },
    }, bad.addr)
    finally(function()
      m:stop()
      stop({ bad, good })
    end)

    local st = load(m.port, 10, { path = "/echo" })
    assert.same({ [200] = 10 }, st)
    -- round-robin sent about half of the first tries to the bad one: each
    -- was tried again on the good one
    local retried = #bad:saw("^/status/503")
    assert.is_true(retried >= 3, "the bad origin saw " .. retried)
    assert.equal(10, #good:saw("^/echo"))

    reset({ bad, good })
    st = load(m.port, 10, { method = "POST", path = "/echo", body = "x" })
    print(string.format("\n  retry_statuses 5xx, 1 of 2 origins answering 503: 10 GETs -> 10 x 200"
      .. " (%d retried); 10 POSTs -> %d x 200, %d x 503", retried, st[200] or 0, st[503] or 0))
    -- every POST that landed on the bad origin got its 503, none retried
    assert.equal(10, (st[200] or 0) + (st[503] or 0))
    assert.is_true((st[503] or 0) >= 3 and (st[200] or 0) >= 3, "statuses " .. (st[200] or 0) .. "/" .. (st[503] or 0))
    assert.equal(st[503], #bad:saw("^/status/503"))
    assert.equal(st[200], #good:saw("^/echo"))
    local res = assert(helpers.request(m.port, { method = "POST", path = "/echo", body = "x" }))
    if res.status == 200 then res = assert(helpers.request(m.port, { method = "POST", path = "/echo", body = "x" })) end
    assert.equal(503, res.status)
    assert.equal("status 503\n", res.body) -- the origin's answer, not moxy's page

    -- txn.upstream:retryable(true) makes a POST retryable (its body read by
    -- txn:read_body: a body streamed to the origin cannot be sent twice)
    reset({ bad, good })
    st = load(m.port, 10, { method = "POST", path = "/echo", body = "x", headers = { ["X-Retryable"] = "yes" } })
    assert.same({ [200] = 10 }, st)
    assert.equal(10, #good:saw("^/echo"))
    for _, e in ipairs(good:stats().log) do assert.equal("POST", e.method) end

    -- a reset before the head is retried too, and counts for passive health:
    -- 3 of them eject the bad origin (a reused keep-alive connection is
    -- first tried once more on a new one: it may have been closed idle)
    reset({ bad, good })
    st = load(m.port, 10, { path = "/echo", headers = { ["X-Bad-Path"] = "/reset" } })
    assert.same({ [200] = 10 }, st)
    local resets = #bad:saw("^/reset")
    assert.is_true(resets >= 3 and resets <= 6, resets .. " resets")
    assert.equal(10, #good:saw("^/echo"))
    assert.equal("down", peer(m, bad.addr).state)
  end)

  ---------------------------------------------------------------------------
  describe("when the retries outnumber the peers", function()
    it("the client gets the last origin's answer, not moxy's page", function()
      local a, b = helpers.start_origin(), helpers.start_origin()
      local m = start_moxy({
        upstreams = { app = { servers = { a.addr, b.addr }, tries = 3, retry_statuses = { 503 } } },
      })
      finally(function()
        m:stop()
        stop({ a, b })
      end)
      local res = assert(helpers.request(m.port, { path = "/status/503?rh=Retry-After:7" }))
      assert.equal(503, res.status)
      assert.equal(1, served(a))
      assert.equal(1, served(b))
      -- no untried peer is left for a third try: the second origin's answer
      -- goes out as it is, and no retry of the budget is spent on it
      assert.equal("status 503\n", res.body)
      assert.equal("7", res:header("retry-after"))
    end)

    it("no peer of a pool of more than 64 servers is tried twice for one request", function()
      local a, b = helpers.start_origin(), helpers.start_origin()
      local servers = {}
      for i = 1, 64 do servers[i] = { addr = "127.0.0.1:" .. helpers.free_port(), drain = true } end
      servers[65], servers[66] = a.addr, b.addr
      local m = start_moxy({ upstreams = { app = { servers = servers, tries = 3, retry_statuses = { 503 } } } })
      finally(function()
        m:stop()
        stop({ a, b })
      end)
      local res = assert(helpers.request(m.port, { path = "/status/503" }))
      assert.equal(503, res.status)
      local seen = { served(a), served(b) }
      assert.same({ 1, 1 }, seen)
    end)
  end)

  ---------------------------------------------------------------------------
  describe("with every peer down", function()
    it("answers 502 at once", function()
      local o = {}
      for i = 1, 3 do o[i] = helpers.start_origin() end
      local servers = { o[1].addr, o[2].addr, o[3].addr }
      stop(o)
      local m = start_moxy({ upstreams = { app = { servers = servers } } })
      finally(function() m:stop() end)
      local worst = 0
      for _ = 1, 6 do
        local t = helpers.now()
        local res = assert(helpers.request(m.port, { path = "/echo" }))
        worst = math.max(worst, since(t))
        assert.equal(502, res.status)
      end
      print(string.format("\n  all 3 origins down: 6 requests answered 502, the slowest in %.1f ms", worst * 1000))
      assert.is_true(worst <= 0.5 * S, "a 502 took " .. worst .. " s")
      -- max_ejected 0.5 of 3 peers: one ejected at most
      local down = 0
      for _, p in ipairs(assert(up(m, "peers"))) do
        if p.state == "down" then down = down + 1 end
      end
      assert.equal(1, down)
      assert.truthy(m:wait_error_log("but stays in: 1 of 3 peers may be ejected at once", 3 * S))
    end)

    it("answers 502 without trying once every peer is ejected, and logs no live peer", function()
      local o = {}
      for i = 1, 3 do o[i] = helpers.start_origin() end
      local servers = { o[1].addr, o[2].addr, o[3].addr }
      stop(o)
      local m = start_moxy({ upstreams = { app = { servers = servers, passive = { failures = 1, max_ejected = 1 } } } })
      finally(function() m:stop() end)
      -- 2 tries per request, one failure ejects: 2 requests eject all 3
      for _ = 1, 2 do assert.equal(502, assert(helpers.request(m.port, { path = "/echo" })).status) end
      for _, p in ipairs(assert(up(m, "peers"))) do assert.equal("down", p.state, p.addr) end
      local before = 0
      for _, p in ipairs(assert(up(m, "peers"))) do before = before + p.requests end
      local t = helpers.now()
      local res = assert(helpers.request(m.port, { path = "/echo" }))
      local took = since(t)
      assert.equal(502, res.status)
      assert.is_true(took <= 0.5 * S, "502 after " .. took .. " s")
      local after = 0
      for _, p in ipairs(assert(up(m, "peers"))) do after = after + p.requests end
      assert.equal(before, after, "a peer was tried")
      assert.truthy(m:wait_error_log("upstream app: no live peer", 3 * S))
    end)
  end)

  ---------------------------------------------------------------------------
  it("answers 503 to a request over max_conns while the peer is busy", function()
    local o = helpers.start_origin()
    local m = start_moxy({ upstreams = { app = { servers = { { addr = o.addr, max_conns = 1 } } } } })
    finally(function()
      m:stop()
      o:stop()
    end)
    local slow = assert(helpers.connection(m.port))
    assert(slow:send(helpers.build_request({ path = "/slow-headers/1" })))
    local busy = helpers.wait_until(function()
      local p = peer(m, o.addr)
      if p.active == 1 then return p end
    end, 2 * S, 0.01)
    assert.truthy(busy, "the slow request is not in flight")
    assert.equal(1, busy.max_conns)
    local t = helpers.now()
    local second = assert(helpers.request(m.port, { path = "/echo" }))
    local took = since(t)
    assert.equal(503, second.status)
    assert.is_true(took < 0.5 * S, "the 503 took " .. took .. " s")
    local first = assert(slow:read_response())
    slow:close()
    assert.equal(200, first.status)
    assert.equal("slow\n", first.body)
    assert.equal(0, #o:saw("^/echo"))
    assert.equal(0, peer(m, o.addr).active)
    -- the peer is free again
    assert.equal(200, assert(helpers.request(m.port, { path = "/echo" })).status)
  end)

  ---------------------------------------------------------------------------
  it("drain and enable from Lua take a peer out and back", function()
    local o = {}
    for i = 1, 3 do o[i] = helpers.start_origin() end
    local m = start_moxy({ upstreams = { app = { servers = { o[1].addr, o[2].addr, o[3].addr } } } })
    finally(function()
      m:stop()
      stop(o)
    end)
    assert.equal(true, up(m, "drain?addr=" .. o[2].addr))
    assert.equal("drained", peer(m, o[2].addr).state)
    reset(o)
    assert.same({ [200] = 30 }, load(m.port, 30))
    assert.equal(0, served(o[2]), "a drained peer got requests")
    assert.equal(30, served(o[1]) + served(o[3]))

    assert.equal(true, up(m, "enable?addr=" .. o[2].addr))
    assert.equal("up", peer(m, o[2].addr).state)
    reset(o)
    assert.same({ [200] = 30 }, load(m.port, 30))
    local back = served(o[2])
    assert.is_true(back >= 7 and back <= 13, "the enabled peer got " .. back .. " of 30")

    local _, status, body = up(m, "drain?addr=127.0.0.1:1")
    assert.equal(404, status)
    assert.equal("no peer 127.0.0.1:1 in pool app\n", body)
    _, status, body = up(m, "drain?pool=nope&addr=" .. o[1].addr)
    assert.equal(404, status)
    assert.equal("no pool named \"nope\"\n", body)
  end)

  ---------------------------------------------------------------------------
  it("stops retrying once retry_timeout has passed", function()
    local o = {}
    for i = 1, 3 do o[i] = helpers.start_origin() end
    local m = start_moxy({
      timeouts = { upstream = 1 },
      upstreams = { app = { servers = { o[1].addr, o[2].addr, o[3].addr }, tries = 3, retry_timeout = "1.5s" } },
    })
    finally(function()
      m:stop()
      stop(o)
    end)
    local t = helpers.now()
    local res = assert(helpers.request(m.port, { path = "/slow-headers/2", timeout = 10 * S }))
    local took = since(t)
    local tried = 0
    for i = 1, 3 do tried = tried + #o[i]:saw("^/slow%-headers") end
    print(string.format("\n  timeouts.upstream 1 s, tries 3, retry_timeout 1.5 s: %d after %.2f s, %d origins tried",
      res.status, took, tried))
    assert.equal(504, res.status)
    -- two 1 s tries, not three
    assert.is_true(took > 1.8 and took < 2.7 * S, "504 after " .. took .. " s")
    assert.equal(2, tried)
    assert.truthy(m:wait_error_log("no retry: retry_timeout passed", 3 * S))
  end)
end)
