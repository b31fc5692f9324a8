-- lua.memory: a hook that allocates without bound ends only its own request
-- (500, a log line); the worker, its other requests and its memory recover.
local helpers = require "spec.helpers"

local SITE = [[
local keep = {} -- survives between requests: what a script may legitimately hold
return {
  on_request = function(txn)
    local mode = txn.req.headers:get("X-Mode")
    if mode == "hog" then
      local t = {}
      for i = 1, 1e9 do t[i] = string.rep("x", 1000) .. i end -- HOG_LINE
    elseif mode == "keep" then
      keep[#keep + 1] = string.rep("k", 1024 * 1024) .. #keep
      return txn:respond(200, "kept " .. #keep)
    end
    txn:respond(200, "fine " .. math.floor(collectgarbage("count") / 1024) .. " MiB")
  end,
}
]]

describe("lua.memory", function()
  local moxy

  lazy_setup(function()
    moxy = helpers.start_moxy({
      scripts = { "site.lua" },
      lua = { memory = "64m", cpu_budget = "10s" },
    }, { files = { ["site.lua"] = SITE } })
  end)

  lazy_teardown(function() helpers.stop_all() end)

  local function get(mode)
    return assert(helpers.request(moxy.port, { path = "/", headers = { { "X-Mode", mode } } }))
  end

  it("a hook past the limit gets 500 and a log line; the next requests are fine", function()
    for _ = 1, 3 do
      assert.equal(500, get("hog").status)
      local res = get("plain")
      assert.equal(200, res.status)
      -- the hog's garbage was given back
      assert.is_true(tonumber(res.body:match("fine (%d+)")) < 32, res.body)
    end
    assert.truthy(helpers.wait_until(function()
      return moxy:stderr():find("the worker's Lua memory limit was reached (lua.memory = 64 MiB)", 1, true)
    end, 5), moxy:stderr())
    assert.is_true(moxy:alive())
  end)

  it("memory a script keeps counts against the limit, and moxy survives reaching it", function()
    local last
    for _ = 1, 80 do
      last = get("keep")
      if last.status ~= 200 then break end
    end
    assert.equal(500, last.status)
    assert.equal(200, get("plain").status)
  end)

  -- The collector lets the heap grow to 4x what survives a cycle, but not
  -- near lua.memory: there it goes back to 2x (lua_bridge.c gc_pace), or a
  -- script holding 20 MiB would see its garbage run into a 64 MiB limit.
  describe("with a large live heap", function()
    local big

    lazy_setup(function()
      big = helpers.start_moxy({
        scripts = { "big.lua" },
        lua = { memory = "64m", cpu_budget = "10s" },
      }, { files = { ["big.lua"] = [[
local held = {}
return {
  on_request = function(txn)
    if #held == 0 then
      for i = 1, 20 do held[i] = string.rep(string.char(64 + i), 1024 * 1024) end
    end
    -- 2 MiB of garbage per request
    local s = string.rep(txn.id, math.ceil(2 * 1024 * 1024 / #txn.id))
    txn:respond(200, #held .. " " .. #s)
  end,
}
]] } })
    end)

    it("serves request after request of garbage without reaching the limit", function()
      for i = 1, 100 do
        local res = assert(helpers.request(big.port, { path = "/" .. i }))
        assert.equal(200, res.status, "request " .. i .. ": " .. big:stderr():sub(-300))
      end
      assert.falsy(big:stderr():find("memory limit was reached", 1, true), big:stderr())
    end)
  end)

  -- Every hooked request makes garbage (its txn table at least): the
  -- collector must keep up with it under load, whatever the pace it runs at.
  describe("under load", function()
    local WRK = "/usr/bin/wrk"
    local m3

    lazy_setup(function()
      local origin = helpers.start_origin()
      m3 = helpers.start_moxy({
        upstreams = { app = { servers = { origin.addr }, keepalive = 16 } },
        scripts = { "hook.lua" },
        lua = { cpu_budget = "1s" },
      }, { files = { ["hook.lua"] = [[
return {
  on_request = function(txn)
    txn.req.headers:set("X-Edge", "moxy")
    if txn.req.path == "/local" then return txn:respond(200, txn.req.method) end
    txn.upstream:pick("app")
  end,
}
]] } })
    end)

    it("keeps a worker's memory flat over seconds of hooked requests", function()
      if helpers.sanitized then return end -- RSS means nothing under ASan
      if not io.open(WRK) then
        pending(WRK .. " is missing: install wrk (Debian package wrk)")
        return
      end
      local function load(seconds, path)
        local wrk = helpers.spawn({ WRK, "-t1", "-c16", "-d" .. seconds .. "s",
          "http://127.0.0.1:" .. m3.port .. path }, { kind = "wrk" })
        assert.truthy(wrk:wait_exit(seconds + 10), "wrk did not end")
        local text = wrk:stdout() .. wrk:stderr()
        local n = tonumber(text:match("(%d+) requests in"))
        assert(n and n > 1000, "wrk did not run:\n" .. text)
        assert.is_nil(text:match("Non%-2xx"), text)
        return n
      end
      -- answered by the hook, and proxied to the origin
      for _, path in ipairs { "/local", "/echo/x" } do
        load(1, path) -- warm-up: what a worker holds for good is in the baseline
        local before = m3:rss()
        local n = load(4, path)
        local grown = m3:rss() - before
        print(("\n    %s: %d hooked requests in 4 s, RSS %+d KiB"):format(path, n, grown))
        -- garbage waits for the collector's next cycle: a few MiB at most
        assert.is_true(grown < 4 * 1024, ("%s: RSS grew by %d KiB over %d requests"):format(path, grown, n))
      end
    end)
  end)
end)
