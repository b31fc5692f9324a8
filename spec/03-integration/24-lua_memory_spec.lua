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
end)
