-- lua.cpu_budget: a hook call that runs away ends its request with a 500 and
-- a log line naming file:line; the worker and other requests carry on, and
-- time spent parked (moxy.sleep) does not count; a require the budget
-- stopped midway loads again on the next request (it used to leave the
-- module broken -- "loop or previous error" -- until a reload).
local helpers = require "spec.helpers"

local SITE = [[
return {
  on_request = function(txn)
    local mode = txn.req.headers:get("X-Mode")
    if mode == "spin" then
      local n = 0
      while true do n = n + 1 end -- SPIN_LINE
    elseif mode == "spin-pcall" then
      while true do
        pcall(function() while true do end end)
      end
    elseif mode == "nap" then
      moxy.sleep(0.3)
      txn.req.headers:set("X-Napped", "yes")
    elseif mode == "require" then
      txn.req.headers:set("X-Answer", tostring(require("slowmod").answer))
    end
  end,
}
]]

local SPIN_LINE = helpers.line_of(SITE, "SPIN_LINE")

-- A module slow to load the first time only (while the file slow-once is
-- there): os.clock() keeps the loop out of the JIT, so the budget sees it.
local SLOWMOD = [[
local dir = debug.getinfo(1, "S").source:match("^@(.*)/[^/]*$")
local f = io.open(dir .. "/slow-once", "rb")
if f then
  f:close()
  os.remove(dir .. "/slow-once")
  local t = os.clock()
  while os.clock() - t < 2 do end
end
return { answer = 42 }
]]

describe("lua.cpu_budget", function()
  local origin, moxy

  lazy_setup(function()
    origin = helpers.start_origin()
    moxy = helpers.start_moxy({
      upstreams = { app = { servers = { origin.addr } } },
      scripts = { "site.lua" },
      lua = { cpu_budget = "100ms" },
    }, { files = { ["site.lua"] = SITE, ["slowmod.lua"] = SLOWMOD, ["slow-once"] = "" } })
  end)

  lazy_teardown(function() helpers.stop_all() end)

  local function mode(m, path)
    return helpers.request(moxy.port, { path = path or "/echo", headers = { { "X-Mode", m } } })
  end

  it("ends a runaway hook with a 500 and a log line naming file:line", function()
    local t = helpers.now()
    local res = assert(mode("spin"))
    assert.equal(500, res.status)
    assert.is_true(helpers.now() - t < 2 * helpers.scale, "the budget did not stop the loop in time")
    local line = moxy:wait_log("site.lua:" .. SPIN_LINE .. ": hook ran past its CPU budget of 100 ms", 3,
      moxy.error_log)
    assert(line, "no error-log line naming site.lua:" .. SPIN_LINE)
    assert.matches("rid=" .. res:header("x-request-id"), line, 1, true)
  end)

  it("is not fooled by a pcall around the loop", function()
    local res = assert(mode("spin-pcall"))
    assert.equal(500, res.status)
  end)

  it("keeps serving other requests, before and after", function()
    local c = assert(helpers.connection(moxy.port))
    assert(c:send(helpers.build_request({ path = "/echo", headers = { { "X-Mode", "spin" } } })))
    for _ = 1, 5 do
      assert.equal(200, assert(helpers.request(moxy.port, { path = "/echo" })).status)
    end
    assert.equal(500, assert(c:read_response()).status)
    c:close()
  end)

  it("lets a module whose require it stopped load again on the next request", function()
    assert.equal(500, assert(mode("require")).status)          -- stopped inside slowmod's loading
    local res = assert(mode("require"))
    assert.equal(200, res.status)
    assert.equal("42", helpers.echo_value(helpers.echo(res), "X-Answer"))
  end)

  it("does not count the time a hook is parked", function()
    local e = helpers.echo(assert(mode("nap")))
    assert.equal("yes", helpers.echo_value(e, "X-Napped"))
  end)
end)

describe("lua.cpu_budget with several workers and timers", function()
  local moxy

  local SPIN = [[
local runs = 0
return {
  worker_init = function()
    moxy.timer.at(0.05, function()
      while true do end -- TIMER_SPIN
    end)
    moxy.timer.every(0.05, function() runs = runs + 1 end)
  end,
  on_request = function(txn)
    if txn.req.headers:get("X-Mode") == "spin" then
      while true do end
    end
    txn:respond(200, "runs " .. runs)
  end,
}
]]

  lazy_setup(function()
    moxy = helpers.start_moxy({ workers = 2, scripts = { "spin.lua" }, lua = { cpu_budget = "50ms" } },
      { files = { ["spin.lua"] = SPIN } })
  end)

  lazy_teardown(function() helpers.stop_all() end)

  it("stops a runaway hook on whichever worker runs it", function()
    for _ = 1, 6 do
      local res = assert(helpers.request(moxy.port, { path = "/", headers = { { "X-Mode", "spin" } } }))
      assert.equal(500, res.status)
    end
  end)

  it("stops a runaway timer callback, and the worker's other timers go on", function()
    assert.truthy(helpers.wait_until(function()
      local n = select(2, moxy:stderr():gsub("timer: [^\n]*spin.lua:" .. helpers.line_of(SPIN, "TIMER_SPIN")
        .. ": hook ran past its CPU budget of 50 ms", ""))
      return n >= 2 -- one per worker
    end, 5), moxy:stderr())
    helpers.sleep(0.3)
    local body = assert(helpers.request(moxy.port, { path = "/" })).body
    assert.is_true(tonumber(body:match("runs (%d+)")) >= 3, body)
  end)
end)
