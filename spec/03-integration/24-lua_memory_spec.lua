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
end)
