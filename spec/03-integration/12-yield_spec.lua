-- Hooks run in coroutines and may yield: moxy.sleep parks a hook without
-- blocking the worker, the request carries on where it stopped, a client
-- that leaves meanwhile costs nothing, and moxy.log writes with the request id.
local helpers = require "spec.helpers"
local socket = require "socket"

local SITE = [[
return {
  on_request = function(txn)
    local mode = txn.req.headers:get("X-Mode")
    if mode == "sleep-header" then
      moxy.sleep(0.2)
      txn.req.headers:set("X-After-Sleep", "yes")
    elseif mode == "sleep-respond" then
      txn.ctx.before = txn.req.path
      moxy.sleep(0.05)
      moxy.sleep(0.05)
      txn:respond(200, "slept for " .. txn.ctx.before .. "\n")
    elseif mode == "sleep-long" then
      moxy.sleep(0.3)
    elseif mode == "sleep-error" then
      moxy.sleep(0.05)
      error("after the nap") -- ERROR_LINE
    elseif mode == "log" then
      moxy.log.warn("hello from", txn.req.path, 42)
    elseif mode == "bad-yield" then
      coroutine.yield("nope")
    elseif mode == "json" then
      local doc = assert(moxy.json.decode(txn.req.headers:get("X-Doc")))
      local bad, err = moxy.json.decode("{nope")
      return txn:respond(200, moxy.json.encode({ got = doc.n * 2, bad = bad == nil, err = type(err) }),
        { ["Content-Type"] = "application/json" })
    end
  end,
}
]]

local ERROR_LINE = helpers.line_of(SITE, "ERROR_LINE")

local function req(port, mode, extra)
  local r = { path = extra and extra.path or "/y", headers = { { "X-Mode", mode } } }
  if extra then
    for k, v in pairs(extra) do r[k] = v end
    r.headers = { { "X-Mode", mode } }
  end
  return helpers.request(port, r)
end

describe("yielding hooks", function()
  local origin, moxy

  lazy_setup(function()
    origin = helpers.start_origin()
    moxy = helpers.start_moxy({
      upstreams = { app = { servers = { origin.addr } } },
      scripts = { "site.lua" },
    }, { files = { ["site.lua"] = SITE } })
  end)

  lazy_teardown(function() helpers.stop_all() end)

  it("resume after moxy.sleep and change the request", function()
    local t = helpers.now()
    local e = helpers.echo(assert(req(moxy.port, "sleep-header", { path = "/echo" })))
    assert.is_true(helpers.now() - t >= 0.19, "answered before the sleep ended")
    assert.equal("yes", helpers.echo_value(e, "X-After-Sleep"))
  end)

  it("answer with txn:respond after yielding, with txn.ctx kept", function()
    local res = assert(req(moxy.port, "sleep-respond", { path = "/nap" }))
    assert.equal(200, res.status)
    assert.equal("slept for /nap\n", res.body)
  end)

  it("do not block the worker: 20 sleeping requests overlap", function()
    local conns = {}
    for i = 1, 20 do
      conns[i] = assert(helpers.connection(moxy.port))
      assert(conns[i]:send(helpers.build_request({ path = "/echo", headers = { { "X-Mode", "sleep-long" } } })))
    end
    local t = helpers.now()
    for i = 1, 20 do
      local res = assert(conns[i]:read_response())
      assert.equal(200, res.status)
      conns[i]:close()
    end
    -- one worker; 20 x 0.3 s in series would take 6 s
    assert.is_true(helpers.now() - t < 2 * helpers.scale, "sleeping hooks ran one after the other")
  end)

  it("forward a request body that arrived while the hook slept", function()
    local body = helpers.pattern(0, 300000)
    local res = assert(helpers.request(moxy.port, { method = "POST", path = "/echo",
      headers = { { "X-Mode", "sleep-header" } }, body = body }))
    local e = helpers.echo(res)
    assert.equal(300000, e.body_length)
    assert.equal("yes", helpers.echo_value(e, "X-After-Sleep"))
  end)

  it("cost nothing when the client leaves during the sleep", function()
    for _ = 1, 5 do
      local c = assert(helpers.connection(moxy.port))
      assert(c:send(helpers.build_request({ path = "/echo", headers = { { "X-Mode", "sleep-long" } } })))
      c:close()
    end
    helpers.sleep(0.5 * helpers.scale)
    assert.is_true(moxy:alive())
    local res = assert(helpers.request(moxy.port, { path = "/echo" }))
    assert.equal(200, res.status)
    assert(moxy:wait_log(" 499 ", 3))
  end)

  it("turn an error after a yield into a 500 naming file:line", function()
    local res = assert(req(moxy.port, "sleep-error"))
    assert.equal(500, res.status)
    local rid = res:header("x-request-id")
    local line = moxy:wait_log("site.lua:" .. ERROR_LINE .. ": after the nap", 3, moxy.error_log)
    assert(line, "no error-log line naming site.lua:" .. ERROR_LINE)
    assert.matches("rid=" .. rid, line, 1, true)
    assert.equal(200, assert(helpers.request(moxy.port, { path = "/echo" })).status)
  end)

  it("refuse a yield that is not moxy's (500, logged)", function()
    local res = assert(req(moxy.port, "bad-yield"))
    assert.equal(500, res.status)
    assert(moxy:wait_log("yielded outside moxy's API", 3, moxy.error_log))
  end)

  it("encode and decode JSON with moxy.json (nil, err on bad input)", function()
    local res = assert(helpers.request(moxy.port, { path = "/j",
      headers = { { "X-Mode", "json" }, { "X-Doc", '{"n":21}' } } }))
    assert.equal(200, res.status)
    local doc = helpers.json(res.body)
    assert.equal(42, doc.got)
    assert.is_true(doc.bad)
    assert.equal("string", doc.err)
  end)

  it("log with moxy.log and the request id", function()
    local res = assert(req(moxy.port, "log", { path = "/logme" }))
    local rid = res:header("x-request-id")
    local line = moxy:wait_log("hello from /logme 42", 3, moxy.error_log)
    assert(line)
    assert.matches("[warn]", line, 1, true)
    assert.matches("rid=" .. rid, line, 1, true)
  end)
end)

describe("moxy.sleep outside a hook", function()
  lazy_teardown(function() helpers.stop_all() end)

  it("fails the script load with a clear message", function()
    local src = [[
return {
  workers = 1,
  listen = { "127.0.0.1:18099" },
  upstreams = { app = { servers = { "127.0.0.1:18098" } } },
  scripts = { "nap.lua" },
}
]]
    local code, out = helpers.run_moxy_check(src, { files = { ["nap.lua"] = "moxy.sleep(1)\nreturn {}\n" } })
    assert.equal(1, code, out)
    assert.matches("nap.lua:1: moxy.sleep: only hooks and timer callbacks may sleep", out, 1, true)
  end)
end)
