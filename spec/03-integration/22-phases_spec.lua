-- Every phase has hooks, in order, and each may yield: on_request,
-- on_upstream (again on each retry, with txn.ctx kept), on_upstream_request,
-- on_response, on_body (a streaming filter; the core fixes the framing),
-- on_log (after the last byte, off the client's path), and timers.
local helpers = require "spec.helpers"

local SITE = [[
local function trace(txn, name)
  moxy.sleep(0.005) -- every phase yields once
  local t = txn.ctx.trace or {}
  txn.ctx.trace = t
  t[#t + 1] = name
end

return {
  on_request = function(txn)
    trace(txn, "request")
    local mode = txn.req.headers:get("X-Mode")
    txn.ctx.mode = mode
    if mode == "error-upstream" then txn.ctx.fail_upstream = true end
  end,

  on_upstream = function(txn)
    trace(txn, "upstream")
    local mode = txn.ctx.mode
    local tries = txn.upstream.tries
    txn.ctx.tries = (txn.ctx.tries or "") .. tries
    if txn.ctx.fail_upstream then error("no pool for you") end -- UPSTREAM_ERROR
    if mode == "retry" then
      if tries == 1 then
        txn.upstream:set_peer("127.0.0.1", tonumber(txn.req.headers:get("X-Dead-Port")))
      else
        txn.ctx.previous_error = txn.error
        return "app"
      end
    elseif mode == "other-pool" then
      return "other"
    end
  end,

  on_upstream_request = function(txn)
    trace(txn, "upstream_request")
    txn.req.headers:set("X-Trace", table.concat(txn.ctx.trace, ","))
    txn.req.headers:set("X-Tries", txn.ctx.tries)
    if txn.ctx.previous_error then txn.req.headers:set("X-Previous-Error", txn.ctx.previous_error) end
    txn.req.headers:set("X-Peer", txn.upstream.peer)
  end,

  on_response = function(txn)
    trace(txn, "response")
    txn.resp.headers:set("X-Trace", table.concat(txn.ctx.trace, ","))
    if txn.ctx.mode == "no-filter" then txn.resp.filter = false end
  end,

  on_body = function(txn, chunk, eof)
    local mode = txn.ctx.mode
    if eof and not txn.ctx.body_traced then
      txn.ctx.body_traced = true
      trace(txn, "body")
    end
    if mode == "double" then
      txn.ctx.n = (txn.ctx.n or 0) + #chunk
      return chunk .. chunk .. (eof and ("END " .. txn.ctx.n) or "")
    elseif mode == "upper" then
      return chunk:upper()
    elseif mode == "summary" then
      txn.ctx.n = (txn.ctx.n or 0) + #chunk
      if not eof then return "" end
      return "saw " .. txn.ctx.n .. " bytes\n"
    elseif mode == "slow-filter" then
      moxy.sleep(0.001)
      return chunk
    elseif mode == "body-error" then
      error("filter broke") -- BODY_ERROR
    end
  end,

  on_log = function(txn)
    if txn.ctx.mode == "slow-log" then
      moxy.sleep(0.4)
      moxy.log.warn("slow log done for", txn.req.path)
      return
    end
    trace(txn, "log")
    moxy.log.warn("trace", table.concat(txn.ctx.trace, ","), "status", txn.resp.status,
      "upstream", tostring(txn.upstream.status), "connect", type(txn.upstream.connect_time),
      "header", type(txn.upstream.header_time), "response", type(txn.upstream.response_time),
      "bytes", txn.bytes_sent, "path", txn.req.path)
  end,
}
]]

local UPSTREAM_ERROR = helpers.line_of(SITE, "UPSTREAM_ERROR")
local BODY_ERROR = helpers.line_of(SITE, "BODY_ERROR")

-- the first line of m's error log matching Lua pattern pat (waits up to 5 s)
local function logged(m, pat)
  return helpers.wait_until(function()
    for line in m:stderr():gmatch("[^\n]+") do
      if line:match(pat) then return line end
    end
  end, 5 * helpers.scale, 0.05)
end

local function get(port, mode, path, extra)
  local headers = { { "X-Mode", mode } }
  for _, h in ipairs(extra or {}) do headers[#headers + 1] = h end
  return helpers.request(port, { path = path, headers = headers })
end

describe("phases", function()
  local origin, other, moxy

  lazy_setup(function()
    origin = helpers.start_origin()
    other = helpers.start_origin()
    moxy = helpers.start_moxy({
      upstreams = { app = { servers = { origin.addr } }, other = { servers = { other.addr } } },
      default_upstream = "app",
      scripts = { "site.lua" },
    }, { files = { ["site.lua"] = SITE } })
  end)

  lazy_teardown(function() helpers.stop_all() end)

  it("run in order, each after a yield, with txn.ctx from request to log", function()
    local res = assert(get(moxy.port, "plain", "/echo"))
    assert.equal(200, res.status)
    local e = helpers.echo(res)
    assert.equal("request,upstream,upstream_request", helpers.echo_value(e, "X-Trace"))
    assert.equal("request,upstream,upstream_request,response", res:header("X-Trace"))
    local line = logged(moxy, "trace request,upstream,upstream_request,response,body,log status 200")
    assert.truthy(line, moxy:stderr())
    assert.truthy(line:find("upstream 200 connect number header number response number", 1, true), line)
    assert.truthy(line:find("path /echo", 1, true), line)
  end)

  it("on_upstream returning a pool name sends the request there", function()
    other:reset_stats()
    local res = assert(get(moxy.port, "other-pool", "/echo/other"))
    assert.equal(200, res.status)
    assert.equal(1, #other:saw("^/echo/other"))
    assert.equal(0, #origin:saw("^/echo/other"))
  end)

  it("call on_upstream again on a retry, with txn.ctx kept and the failed try's error", function()
    local dead = helpers.free_port()
    local res = assert(get(moxy.port, "retry", "/echo/retry", { { "X-Dead-Port", tostring(dead) } }))
    assert.equal(200, res.status)
    local e = helpers.echo(res)
    assert.equal("12", helpers.echo_value(e, "X-Tries"))
    -- the first try's on_upstream_request ran before its connect failed
    assert.equal("request,upstream,upstream_request,upstream,upstream_request", helpers.echo_value(e, "X-Trace"))
    assert.equal("connect failed: connection refused", helpers.echo_value(e, "X-Previous-Error"))
    assert.equal(origin.addr, helpers.echo_value(e, "X-Peer"))
    assert.truthy(logged(moxy, "trying again %(2 of 2%)"))
  end)

  it("a script error in on_upstream answers 500 and logs file:line", function()
    local res = assert(get(moxy.port, "error-upstream", "/echo"))
    assert.equal(500, res.status)
    assert.truthy(logged(moxy, "on_upstream: .*site.lua:" .. UPSTREAM_ERROR .. ": no pool for you"))
  end)

  describe("on_body", function()
    it("may grow each chunk and append at eof; the body goes out chunked", function()
      local n = 300000
      local res = assert(get(moxy.port, "double", "/bytes/" .. n))
      assert.equal(200, res.status)
      assert.is_true(res.chunked)
      assert.is_nil(res:header("Content-Length"))
      local tail = "END " .. n
      assert.equal(2 * n + #tail, #res.body)
      assert.equal(tail, res.body:sub(-#tail))
    end)

    it("sees every byte of a chunked origin body, in order", function()
      local res = assert(get(moxy.port, "upper", "/echo/upper?x=abc"))
      assert.equal(200, res.status)
      assert.truthy(res.body:find('"URI": "/ECHO/UPPER?X=ABC"', 1, true) or
        res.body:find('"URI":"/ECHO/UPPER?X=ABC"', 1, true), res.body)
      local res2 = assert(get(moxy.port, "summary", "/chunked/100000?chunk=7000"))
      assert.equal("saw 100000 bytes\n", res2.body)
    end)

    it("may drop every chunk and answer at eof, to HTTP/1.0 clients by close", function()
      local text = helpers.raw(moxy.port, "GET /bytes/5000 HTTP/1.0\r\nX-Mode: summary\r\n\r\n", { timeout = 5 })
      assert.truthy(text:find("^HTTP/1.1 200"), text)
      assert.falsy(text:lower():find("content%-length"), text)
      assert.falsy(text:lower():find("transfer%-encoding"), text)
      assert.equal("saw 5000 bytes\n", text:match("\r\n\r\n(.*)$"))
    end)

    it("may yield for each chunk of a large body without corrupting it", function()
      local n = 2 * 1024 * 1024
      local res = assert(get(moxy.port, "slow-filter", "/bytes/" .. n))
      assert.equal(n, #res.body)
      assert.is_true(helpers.pattern_ok(0, res.body))
    end)

    it("is skipped when on_response sets txn.resp.filter = false (Content-Length kept)", function()
      local res = assert(get(moxy.port, "no-filter", "/bytes/1000"))
      assert.equal("1000", res:header("Content-Length"))
      assert.equal(1000, #res.body)
    end)

    it("a script error cuts the response and logs file:line; the next request is fine", function()
      local res = get(moxy.port, "body-error", "/bytes/1000")
      assert.is_true(res == nil or res.body == nil or #res.body < 1000)
      assert.truthy(logged(moxy, "on_body: .*site.lua:" .. BODY_ERROR .. ": filter broke"))
      assert.equal(200, assert(get(moxy.port, "plain", "/echo")).status)
    end)
  end)

  describe("on_log", function()
    it("runs after the response, off the client's path, even when it waits", function()
      local conn = assert(helpers.connection(moxy.port))
      local t = helpers.now()
      local res = assert(conn:request({ path = "/echo/slow-log", headers = { { "X-Mode", "slow-log" } } }))
      assert.equal(200, res.status)
      -- the same connection serves the next request while on_log still sleeps
      local res2 = assert(conn:request({ path = "/echo/next", headers = { { "X-Mode", "plain" } } }))
      assert.equal(200, res2.status)
      assert.is_true(helpers.now() - t < 0.35, "the client waited for on_log")
      conn:close()
      assert.truthy(logged(moxy, "slow log done for /echo/slow%-log"))
      assert.truthy(helpers.wait_until(function()
        for _, l in ipairs(moxy:access_lines()) do
          if l:find("/echo/slow-log", 1, true) then return true end
        end
      end, 5), "the access-log line of the detached request")
    end)
  end)
end)

describe("timers", function()
  local moxy

  local TIMERS = [[
local ticks, once, after_error = 0, nil, 0
return {
  worker_init = function()
    moxy.timer.every(0.05, function() ticks = ticks + 1 end)
    moxy.timer.at(0.05, function(a, b)
      moxy.sleep(0.05) -- a timer callback may yield
      once = a .. b
    end, "x", "y")
    moxy.timer.every(0.05, function()
      after_error = after_error + 1
      if after_error == 2 then error("boom in a timer") end -- TIMER_ERROR
    end)
    local id = assert(moxy.timer.at(0.05, function() once = "cancelled timer ran" end))
    assert(moxy.timer.cancel(id))
  end,
  on_request = function(txn)
    if txn.req.path == "/later" then
      local t = txn.ctx
      moxy.timer.at(0, function() t.from_timer = "yes" end)
      moxy.sleep(0.05)
      return txn:respond(200, "from timer: " .. tostring(t.from_timer))
    end
    txn:respond(200, string.format("ticks=%d once=%s after_error=%d", ticks, tostring(once), after_error))
  end,
}
]]

  lazy_setup(function()
    moxy = helpers.start_moxy({ scripts = { "timers.lua" } }, { files = { ["timers.lua"] = TIMERS } })
  end)

  lazy_teardown(function() helpers.stop_all() end)

  it("every, at (with arguments and a sleep), cancel; an error is logged and the timer goes on", function()
    helpers.sleep(0.6)
    local body = assert(helpers.request(moxy.port, { path = "/" })).body
    local ticks = tonumber(body:match("ticks=(%d+)"))
    assert.is_true(ticks >= 5 and ticks <= 13, body)
    assert.truthy(body:find("once=xy", 1, true), body)
    assert.is_true(tonumber(body:match("after_error=(%d+)")) >= 4, body)
    assert.truthy(logged(moxy, "timer: .*timers.lua:" .. helpers.line_of(TIMERS, "TIMER_ERROR")
      .. ": boom in a timer"))
  end)

  it("can be started from a hook", function()
    assert.equal("from timer: yes", assert(helpers.request(moxy.port, { path = "/later" })).body)
  end)
end)

describe("a script with on_body hooks only", function()
  local origin, moxy

  local ONLY_BODY = [[
return {
  on_body = function(txn, chunk, eof)
    txn.ctx.calls = (txn.ctx.calls or 0) + 1
    txn.ctx.bytes = (txn.ctx.bytes or 0) + #chunk
    if eof then return chunk .. "|" .. txn.ctx.bytes .. " bytes in " .. txn.ctx.calls .. " calls" end
  end,
}
]]
  lazy_setup(function()
    origin = helpers.start_origin()
    moxy = helpers.start_moxy({
      upstreams = { app = { servers = { origin.addr } } },
      scripts = { "only.lua" },
    }, { files = { ["only.lua"] = ONLY_BODY } })
  end)

  lazy_teardown(function() helpers.stop_all() end)

  it("keeps txn.ctx from one on_body call to the next", function()
    local res = assert(helpers.request(moxy.port, { path = "/chunked/50000?chunk=5000" }))
    local n = tonumber(res.body:match("|(%d+) bytes in %d+ calls$"))
    assert.equal(50000, n, res.body:sub(-60))
    assert.is_true(tonumber(res.body:match("in (%d+) calls$")) >= 2)
  end)
end)

describe("a script with on_upstream hooks only", function()
  local origin, moxy

  lazy_setup(function()
    origin = helpers.start_origin()
    moxy = helpers.start_moxy({
      upstreams = { app = { servers = { origin.addr } } },
      scripts = { "only.lua" },
    }, { files = { ["only.lua"] = [[
return {
  on_upstream = function(txn)
    txn.ctx.seen = (txn.ctx.seen or "") .. txn.upstream.tries
    if txn.upstream.tries == 1 then
      txn.upstream:set_peer("127.0.0.1", tonumber(txn.req.headers:get("X-Dead-Port")))
    else
      txn.req.headers:set("X-Seen", txn.ctx.seen)
    end
  end,
}
]] } })
  end)

  lazy_teardown(function() helpers.stop_all() end)

  it("keeps txn.ctx across a retry", function()
    local res = assert(helpers.request(moxy.port, { path = "/echo",
      headers = { { "X-Dead-Port", tostring(helpers.free_port()) } } }))
    assert.equal(200, res.status)
    assert.equal("12", helpers.echo_value(helpers.echo(res), "X-Seen"))
  end)
end)

describe("a graceful stop (QUIT)", function()
  local origin, moxy

  lazy_setup(function()
    origin = helpers.start_origin()
    moxy = helpers.start_moxy({
      upstreams = { app = { servers = { origin.addr } } },
      scripts = { "log.lua" },
    }, { files = { ["log.lua"] = [[
return {
  on_log = function(txn)
    moxy.sleep(0.5)
    moxy.log.warn("late log line for", txn.req.path)
  end,
}
]] } })
  end)

  lazy_teardown(function() helpers.stop_all() end)

  it("waits for on_log hooks still running after their response", function()
    assert.equal(200, assert(helpers.request(moxy.port, { path = "/echo/drained" })).status)
    moxy:signal("QUIT")
    local code = moxy:wait_exit(5 * helpers.scale)
    assert.equal(0, code)
    assert.truthy(moxy:stderr():find("late log line for /echo/drained", 1, true), moxy:stderr())
    assert.truthy(helpers.wait_until(function()
      for _, l in ipairs(moxy:access_lines()) do
        if l:find("/echo/drained", 1, true) then return true end
      end
    end, 2))
  end)
end)
