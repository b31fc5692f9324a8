-- moxy.ratelimit: GCRA limits exact across a moxy's workers (a shared dict)
-- and across three moxy nodes (Redis), within 5% under concurrent load;
-- Redis killed mid-run: requests flow under local limits, the fleet's limit
-- comes back with Redis; 429s with Retry-After and the RateLimit fields;
-- concurrency limits that give their places back however requests end.
local helpers = require "spec.helpers"
local cjson = require "cjson"

local S = helpers.scale

-- RATE, BURST, REDIS (0: local) are set per node.
local SITE = [[
local ffi = require "ffi"
pcall(ffi.cdef, "typedef struct { long s; long ns; } rl_spec_ts; int clock_gettime(int, rl_spec_ts *);")
local ts = ffi.new("rl_spec_ts")
local function now()
  ffi.C.clock_gettime(1, ts) -- CLOCK_MONOTONIC: the same on every node of this machine
  return tonumber(ts.s) + tonumber(ts.ns) / 1e9
end
local REDIS = REDIS_PORT
local lim = moxy.ratelimit.new{ name = "spec", rate = "RATE", burst = BURST, dict = "limits",
                                redis = REDIS > 0 and { port = REDIS, timeout = 0.2 } or nil }
local hdr = moxy.ratelimit.new{ name = "hdr", rate = "2r/s", burst = 1, dict = "limits" }
local conc = moxy.ratelimit.concurrency{ name = "conc", max = 3, dict = "limits" }
local stats = moxy.shared.stats

return {
  on_request = function(txn)
    local p = txn.req.path
    if p == "/hit" then
      local ok, info = lim:take("k")
      if ok == nil then
        stats:incr("errors", 1, 0)
        return txn:respond(500, "error: " .. tostring(info) .. "\n")
      end
      if ok then
        local t = now()
        stats:add("first", t)
        local last = stats:get("last")
        if not last or t > last then stats:set("last", t) end
        stats:incr("allowed", 1, 0)
        return txn:respond(200, "ok\n")
      end
      stats:incr("denied", 1, 0)
      return txn:respond(429, "no\n")
    elseif p == "/enforce" then
      if not hdr:enforce(txn, txn.req.headers:get("X-Key") or "e") then return end
      local _, info = hdr:take(txn.req.headers:get("X-Key") or "e", 0)
      return txn:respond(200, moxy.json.encode(info))
    elseif p == "/conc" then
      local ok, n = conc:enter(txn, "c")
      if not ok then return txn:respond(503, "busy " .. n .. "\n") end
      moxy.sleep(tonumber(txn.req.headers:get("X-Hold") or "0.3"))
      return txn:respond(200, "in\n")
    elseif p == "/conc-fail" then
      assert(conc:enter(txn, "c"))
      error("a script error after taking a place")
    elseif p == "/count" then
      return txn:respond(200, tostring(conc:count("c")))
    elseif p == "/stats" then
      return txn:respond(200, moxy.json.encode({
        allowed = stats:get("allowed") or 0, denied = stats:get("denied") or 0, errors = stats:get("errors") or 0,
        first = stats:get("first") or 0, last = stats:get("last") or 0,
        fallbacks = moxy.metrics.get("moxy_ratelimit_redis_fallbacks_total", { limit = "spec" }),
        redis_decisions = moxy.metrics.get("moxy_ratelimit_decisions_total",
          { limit = "spec", result = "allowed", store = "redis" }),
      }))
    elseif p == "/metric" then
      moxy.metrics.inc("shop_hits_total", { path = 'a"b\\c', code = 200 }, 2, "Hits of the shop")
      moxy.metrics.inc("shop_hits_total", { path = "/x" })
      local ok, err = pcall(moxy.metrics.inc, "moxy_requests_total")
      local made, refused = 0, 0
      for i = 1, tonumber(txn.req.headers:get("X-Many") or "0") do
        if moxy.metrics.inc("shop_many_total", { n = i }) then made = made + 1 else refused = refused + 1 end
      end
      return txn:respond(200, moxy.json.encode({ own = ok, err = err, made = made, refused = refused }))
    elseif p == "/reset" then
      stats:flush_all()
      moxy.shared.limits:flush_all()
      return txn:respond(200, "reset\n")
    end
  end,
}
]]

local function site(rate, burst, redis_port)
  return (SITE:gsub("REDIS_PORT", tostring(redis_port or 0)):gsub("RATE", rate):gsub("BURST", tostring(burst)))
end

local function start_node(rate, burst, redis_port)
  return helpers.start_moxy({
    workers = 2,
    shared = { limits = "4m", stats = "1m" },
    scripts = { "rl.lua" },
    lua = { cpu_budget = 0 },
    admin = {},
  }, { files = { ["rl.lua"] = site(rate, burst, redis_port) } })
end

local function get(m, path, headers)
  local list = {}
  for k, v in pairs(headers or {}) do list[#list + 1] = { k, v } end
  local res, err = helpers.request(m.port, { path = path, headers = list, timeout = 10 * S })
  assert(res, path .. ": " .. tostring(err))
  return res
end

local function stats(m)
  return cjson.decode(get(m, "/stats").body)
end

-- admin /metrics: the value of name{labels...}
local function metric(m, name, labels)
  return helpers.metric(m.admin_port, name, labels)
end

-- wrk against each node's /hit for secs, at once; -> the wrk outputs
local function load(nodes, secs, conns)
  local procs = {}
  for i, m in ipairs(nodes) do
    procs[i] = helpers.spawn({ "wrk", "-t1", "-c" .. (conns or 8), "-d" .. secs .. "s", "--latency",
                               "http://127.0.0.1:" .. m.port .. "/hit" }, { kind = "wrk" })
  end
  local outs = {}
  for i, p in ipairs(procs) do
    p:wait_exit((secs + 15) * S)
    outs[i] = p:stdout()
  end
  return outs
end

-- wrk's "Latency avg stdev max": the max, in seconds
local function max_latency(out)
  local v, unit = out:match("Latency%s+%S+%s+%S+%s+([%d%.]+)(%a+)")
  local scale = { us = 1e-6, ms = 1e-3, s = 1, m = 60 }
  return v and tonumber(v) * (scale[unit] or 1) or math.huge
end

-- allowed across nodes against what GCRA allows between the first and the
-- last allowed request: burst + 1, then one per interval
local function check_rate(all, rate, burst, what)
  local allowed, first, last, denied = 0, math.huge, 0, 0
  for _, s in ipairs(all) do
    allowed = allowed + s.allowed
    denied = denied + s.denied
    if s.first > 0 and s.first < first then first = s.first end
    if s.last > last then last = s.last end
  end
  local expected = burst + 1 + math.floor((last - first) * rate)
  local off = math.abs(allowed - expected) / expected
  print(string.format("    %s: %d allowed (%d denied) in %.2f s, GCRA allows %d: %.2f%% off",
    what, allowed, denied, last - first, expected, off * 100))
  assert.is_true(denied > allowed, "the load did not exceed the limit")
  assert.is_true(last - first > 2, "the run was too short: " .. (last - first))
  assert.is_true(off <= 0.05, what .. ": " .. allowed .. " allowed, " .. expected .. " expected")
end

describe("moxy.ratelimit", function()
  lazy_teardown(function() helpers.stop_all() end)

  describe("on one node", function()
    local m
    lazy_setup(function() m = start_node("200r/s", 20) end)

    it("holds a rate within 5% across two workers under concurrent load", function()
      get(m, "/reset")
      load({ m }, 3, 32)
      local s = stats(m)
      assert.equal(0, s.errors)
      check_rate({ s }, 200, 20, "one node, two workers")
    end)

    it("answers 429 with Retry-After and the RateLimit fields, and says the state on allowed requests", function()
      get(m, "/reset")
      local key = "k" .. math.random(1e9)
      local a = get(m, "/enforce", { ["X-Key"] = key })
      assert.equal(200, a.status)
      local info = cjson.decode(a.body)
      assert.equal(1, info.remaining) -- burst 1: two at once, then one each 0.5 s
      local b = get(m, "/enforce", { ["X-Key"] = key })
      assert.equal(200, b.status)
      local c = get(m, "/enforce", { ["X-Key"] = key })
      assert.equal(429, c.status)
      local ra = tonumber(c:header("retry-after"))
      assert.is_true(ra == 1, "Retry-After " .. tostring(ra))
      assert.equal('"hdr";q=2;w=1', c:header("ratelimit-policy"))
      assert.matches('^"hdr";r=0;t=%d+$', c:header("ratelimit"))
      helpers.sleep(0.6)
      assert.equal(200, get(m, "/enforce", { ["X-Key"] = key }).status)
      -- another key is not limited by this one
      assert.equal(200, get(m, "/enforce", { ["X-Key"] = key .. "x" }).status)
      -- the decisions are counted
      assert.is_true((metric(m, "moxy_ratelimit_decisions_total", { limit = "hdr", result = "denied" }) or 0) >= 1)
    end)

    it("shows a script's counters (moxy.metrics) in /metrics, bounded", function()
      local d = cjson.decode(get(m, "/metric").body)
      assert.is_false(d.own)
      assert.matches("moxy_ are moxy's own", d.err, 1, true)
      local text = helpers.request(m.admin_port, { path = "/metrics" }).body
      assert.matches("# HELP shop_hits_total Hits of the shop\n# TYPE shop_hits_total counter\n", text, 1, true)
      assert.matches('shop_hits_total{code="200",path="a\\"b\\\\c"} 2\n', text, 1, true)
      assert.matches('shop_hits_total{path="/x"} 1\n', text, 1, true)
      -- a label a client could choose freely cannot grow the table past its bound
      d = cjson.decode(get(m, "/metric", { ["X-Many"] = "5000" }).body)
      assert.is_true(d.made < 4096 and d.refused > 900, "made " .. d.made .. ", refused " .. d.refused)
      assert.is_true((metric(m, "moxy_counters_refused_total") or 0) > 900)
    end)

    it("keeps at most max requests in flight per key, and gives every place back", function()
      local conns = {}
      for i = 1, 8 do
        conns[i] = assert(helpers.connection(m.port))
        assert(conns[i]:send(helpers.build_request({ path = "/conc", headers = { { "X-Hold", "0.5" } } })))
      end
      local codes = {}
      for i = 1, 8 do
        local res = assert(conns[i]:read_response())
        codes[res.status] = (codes[res.status] or 0) + 1
        conns[i]:close()
      end
      assert.same({ [200] = 3, [503] = 5 }, codes)
      assert.equal("0", get(m, "/count").body)
      -- clients that leave while their requests hold a place, and a script
      -- error after taking one: the places come back all the same
      for i = 1, 3 do
        conns[i] = assert(helpers.connection(m.port))
        assert(conns[i]:send(helpers.build_request({ path = "/conc", headers = { { "X-Hold", "5" } } })))
      end
      assert(helpers.wait_until(function() return get(m, "/count").body == "3" end, 3 * S))
      for i = 1, 3 do conns[i]:close() end
      assert(helpers.wait_until(function() return get(m, "/count").body == "0" end, 3 * S),
        "places held by clients that left were not given back")
      assert.equal(500, get(m, "/conc-fail").status)
      assert.equal("0", get(m, "/count").body)
    end)
  end)

  describe("across three nodes (Redis)", function()
    local redis, nodes
    lazy_setup(function()
      redis = helpers.start_redis()
      nodes = {}
      for i = 1, 3 do nodes[i] = start_node("150r/s", 15, redis.port) end
    end)

    local function reset()
      for _, m in ipairs(nodes) do get(m, "/reset") end
      redis:cmd("FLUSHALL")
    end

    it("holds one limit for the fleet within 5% under concurrent load", function()
      reset()
      load(nodes, 3, 8)
      local all = {}
      for i, m in ipairs(nodes) do
        all[i] = stats(m)
        assert.equal(0, all[i].errors)
        assert.equal(0, all[i].fallbacks)
        assert.is_true(all[i].allowed > 0, "node " .. i .. " allowed nothing")
      end
      check_rate(all, 150, 15, "three nodes, one Redis")
    end)

    it("keeps serving under local limits while Redis is down, and shares the limit again once it is back", function()
      reset()
      local t0 = helpers.now()
      -- load for 5 s; Redis is killed after 1 s and back after 3 s
      local procs = {}
      for i, m in ipairs(nodes) do
        procs[i] = helpers.spawn({ "wrk", "-t1", "-c4", "-d5s", "--latency", "http://127.0.0.1:" .. m.port .. "/hit" },
          { kind = "wrk" })
      end
      helpers.sleep(1)
      redis:stop("KILL")
      helpers.sleep(2)
      redis:start()
      local outs = {}
      for i, p in ipairs(procs) do
        p:wait_exit(20 * S)
        outs[i] = p:stdout()
      end
      assert.is_true(helpers.now() - t0 < 15 * S)
      local fallbacks = 0
      for i, m in ipairs(nodes) do
        local s = stats(m)
        assert.equal(0, s.errors, "node " .. i .. " failed requests")
        assert.is_true(s.allowed > 0 and s.denied > 0)
        assert.equal(0, metric(m, "moxy_requests_total", { class = "5xx" }) or 0)
        assert.is_true(max_latency(outs[i]) < 1 * S, "node " .. i .. ": a request took " .. max_latency(outs[i]) .. " s")
        fallbacks = fallbacks + s.fallbacks
      end
      assert.is_true(fallbacks > 0, "no decision fell back to the local limit")
      -- Redis is back: decisions are Redis's again (its key comes back)
      local before = {}
      for i, m in ipairs(nodes) do before[i] = stats(m).redis_decisions end
      -- each node's connection may still be in its backoff (up to 2 s) after the outage
      local moved = 0
      assert(helpers.wait_until(function()
        moved = 0
        for i, m in ipairs(nodes) do
          get(m, "/hit")
          if stats(m).redis_decisions > before[i] then moved = moved + 1 end
        end
        return moved == 3
      end, 6 * S, 0.1), "only " .. moved .. " of 3 nodes decide in Redis again")
      assert.equal("1", redis:cmd("EXISTS", "moxy:rl:spec:k"))
    end)
  end)
end)
