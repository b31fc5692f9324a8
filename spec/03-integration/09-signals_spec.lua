-- Signals: QUIT drains gracefully and exits 0, TERM/INT exit at once (after
-- flushing the access log), USR1 reopens the log files.
local helpers = require "spec.helpers"

local S = helpers.scale

describe("signals", function()
  local origin

  lazy_setup(function()
    origin = helpers.start_origin()
  end)

  lazy_teardown(function() helpers.stop_all() end)

  local function start()
    return helpers.start_moxy({ upstreams = { app = { servers = { origin.addr } } } })
  end

  -- start a request and make sure moxy has forwarded it before returning
  local function in_flight(moxy, path)
    local c = assert(helpers.connection(moxy.port, { timeout = 10 * S }))
    assert(c:send(helpers.build_request({ path = path })))
    local target = path
    assert(helpers.wait_until(function() return #origin:saw("^" .. target:gsub("[%.%-%?]", "%%%0") .. "$") > 0 end,
      3 * S), "the origin never got " .. path)
    return c
  end

  it("QUIT: finishes the request in flight, refuses new connections, exits 0", function()
    local moxy = start()
    local c = in_flight(moxy, "/slow-headers/2?quit=1")
    assert.is_true(moxy:signal("QUIT"))
    helpers.sleep(0.5 * S)
    assert.is_true(moxy:alive(), "moxy exited with a request in flight")
    -- the listener is closed: refused, or at least never served
    local nc = helpers.connection(moxy.port, { timeout = 1 })
    if nc then
      local res = nc:request({ path = "/echo?after-quit" }, { timeout = 1 })
      assert.is_nil(res, "a new connection was served after QUIT")
      nc:close()
    end
    local res = assert(c:read_response())
    assert.equal(200, res.status)
    assert.equal("slow\n", res.body)
    c:close()
    local code, how = moxy:wait_exit(5 * S)
    assert.equal("exited", how, "moxy did not exit after draining (" .. tostring(how) .. ")")
    assert.equal(0, code)
  end)

  it("QUIT: closes idle keep-alive connections instead of waiting for them", function()
    local moxy = start()
    local c = assert(helpers.connection(moxy.port))
    assert.equal(200, assert(c:request({ path = "/echo" })).status)
    local t = helpers.now()
    assert.is_true(moxy:signal("QUIT"))
    assert.is_true((c:wait_closed(3 * S)), "idle connection left open during QUIT")
    local code, how = moxy:wait_exit(3 * S)
    assert.equal("exited", how, "moxy did not exit promptly with an idle client")
    assert.equal(0, code)
    assert.is_true(helpers.now() - t < 3 * S)
    c:close()
  end)

  for _, sig in ipairs({ "TERM", "INT" }) do
    it(sig .. ": exits promptly with a request in flight", function()
      local moxy = start()
      local c = in_flight(moxy, "/slow-headers/10?sig=" .. sig)
      local t = helpers.now()
      assert.is_true(moxy:signal(sig))
      local code, how = moxy:wait_exit(1.5 * S)
      assert.equal("exited", how, sig .. " did not make moxy exit on its own (" .. tostring(how) .. ")")
      assert.equal(0, code)
      assert.is_true(helpers.now() - t < 1.5 * S)
      c:close()
    end)
  end

  it("TERM: flushes the access log before exiting", function()
    local moxy = start()
    assert.equal(200, assert(helpers.request(moxy.port, { path = "/echo",
      headers = { ["X-Request-Id"] = "flush-on-term" } })).status)
    moxy:signal("TERM")
    assert(moxy:wait_exit(3 * S), "moxy did not exit on TERM")
    local text = helpers.read_file(moxy.access_log) or ""
    assert(text:find("flush-on-term", 1, true), "access log lost its last line on TERM:\n" .. text)
  end)

  it("USR1: reopens the access log", function()
    local moxy = start()
    assert.equal(200, assert(helpers.request(moxy.port, { path = "/echo",
      headers = { ["X-Request-Id"] = "before-usr1" } })).status)
    assert(moxy:wait_log("before-usr1"), "no access log line for the first request")
    local rotated = moxy.access_log .. ".1"
    assert(os.rename(moxy.access_log, rotated))
    assert.is_true(moxy:signal("USR1"))
    -- the reopen happens asynchronously: retry requests until the new file shows one
    local n = 0
    local line = helpers.wait_until(function()
      n = n + 1
      helpers.request(moxy.port, { path = "/echo", headers = { ["X-Request-Id"] = "after-usr1-" .. n } })
      helpers.sleep(0.2)
      local text = helpers.read_file(moxy.access_log)
      return text and text:match("[^\n]*after%-usr1%-%d+[^\n]*")
    end, 5 * S, 0.05)
    assert(line, "no new access log file with the request after USR1")
    assert.is_true(moxy:alive())
    local old = helpers.read_file(rotated) or ""
    assert(old:find("before-usr1", 1, true), "the rotated file lost its line")
    local k = line:match("after%-usr1%-(%d+)")
    assert.is_nil(old:find("after%-usr1%-" .. k .. "%f[%D]"), "a line of the new file is also in the rotated one")
  end)
end)
