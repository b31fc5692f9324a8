-- moxy.http: hooks (and timer callbacks) call other HTTP services without
-- blocking the worker: results, bodies of every framing, keep-alive reuse,
-- many calls at once, failures as nil, err, and misuse as clear errors.
local helpers = require "spec.helpers"

-- ORIGIN is replaced by the origin's "127.0.0.1:PORT".  The hook calls the
-- URL in X-Url (X-Mode says how) and answers with what it got: the body,
-- and X-Got-* headers for status and a few response headers.
local SITE = [[
local ffi = require "ffi"
local json = moxy.json
local timer_calls, timer_last = 0, "none"

local function opts_of(h)
  return {
    url = h:get("X-Url"),
    method = h:get("X-Method"),
    body = h:get("X-Body"),
    timeout = tonumber(h:get("X-Timeout") or ""),
    connect_timeout = tonumber(h:get("X-Connect-Timeout") or ""),
    max_body = h:get("X-Max-Body"),
    keepalive = h:get("X-Keepalive") ~= "no",
  }
end

local function answer(txn, res, err)
  if not res then return txn:respond(502, "error: " .. tostring(err) .. "\n") end
  return txn:respond(200, res.body, {
    ["X-Got-Status"] = tostring(res.status),
    ["X-Got-Type"] = res.headers["content-type"] or "-",
    ["X-Got-Length"] = res.headers["content-length"] or "-",
  })
end

return {
  worker_init = function()
    if moxy.timer then
      moxy.timer.every(0.2, function()
        local res, err = moxy.http.get("http://ORIGIN/echo?from=timer")
        timer_calls = timer_calls + 1
        timer_last = res and tostring(res.status) or tostring(err)
      end)
    end
  end,

  on_request = function(txn)
    local h = txn.req.headers
    local mode = h:get("X-Mode")
    if mode == "call" then
      local res, err = moxy.http.request(opts_of(h))
      return answer(txn, res, err)
    elseif mode == "get" then
      return answer(txn, moxy.http.get(h:get("X-Url")))
    elseif mode == "headers" then
      local res, err = moxy.http.get(h:get("X-Url"))
      if not res then return txn:respond(502, tostring(err)) end
      return txn:respond(200, json.encode(res.headers))
    elseif mode == "twice" then
      local a = assert(moxy.http.get("http://ORIGIN/echo?n=1"))
      local b = assert(moxy.http.get("http://ORIGIN/echo?n=2"))
      return txn:respond(200, json.encode({ json.decode(a.body), json.decode(b.body) }))
    elseif mode == "stale" then
      local a = assert(moxy.http.get("http://ORIGIN/echo?idle_close=0.1"))
      -- block the worker: the origin closes the kept connection meanwhile,
      -- and moxy cannot notice before the next call takes it
      ffi.C.poll(nil, 0, 400)
      local b, err = moxy.http.get("http://ORIGIN/echo?n=after")
      if not b then return txn:respond(502, "error: " .. tostring(err)) end
      return txn:respond(200, json.encode({ json.decode(a.body), json.decode(b.body) }))
    elseif mode == "misuse" then
      local ok, err = pcall(moxy.http.request, { url = 42 })
      local ok2, err2 = pcall(moxy.http.request, { url = "http://ORIGIN/", headers = { ["X-A"] = "a\r\nb" } })
      local ok3, err3 = pcall(moxy.http.request, { url = "http://ORIGIN/", max_body = "lots" })
      return txn:respond(200, json.encode({ ok, err, ok2, err2, ok3, err3 }))
    elseif mode == "schemes" then
      local _, e1 = moxy.http.get("https://ORIGIN/")
      local _, e2 = moxy.http.get("ftp://ORIGIN/")
      return txn:respond(200, e1 .. "\n" .. e2 .. "\n")
    elseif mode == "timer" then
      return txn:respond(200, timer_calls .. " " .. timer_last)
    elseif mode == "log" then
      -- a call from on_log: its answer goes to the error log
      txn.ctx.log_url = h:get("X-Url")
    end
  end,

  on_log = function(txn)
    if txn.ctx.log_url then
      local res, err = moxy.http.get(txn.ctx.log_url)
      moxy.log.warn("on_log call:", res and res.status or err)
    end
  end,
}
]]

describe("moxy.http", function()
  local origin, moxy, base

  local function call(headers, path)
    local list = {}
    for k, v in pairs(headers) do list[#list + 1] = { k, v } end
    return assert(helpers.request(moxy.port, { path = path or "/", headers = list }))
  end

  lazy_setup(function()
    origin = helpers.start_origin()
    base = "http://" .. origin.addr
    moxy = helpers.start_moxy({
      upstreams = { app = { servers = { origin.addr } } },
      scripts = { "site.lua" },
      lua = { cpu_budget = 0 }, -- the "stale" hook blocks the worker on purpose
    }, { files = { ["site.lua"] = SITE:gsub("ORIGIN", origin.addr) } })
  end)

  lazy_teardown(function() helpers.stop_all() end)

  it("lets a hook call the origin and answer with what it got", function()
    local res = call({ ["X-Mode"] = "call", ["X-Url"] = base .. "/echo?x=1" })
    assert.equal(200, res.status, res.body)
    assert.equal("200", res:header("x-got-status"))
    assert.equal("application/json", res:header("x-got-type"))
    local doc = helpers.json(res.body)
    assert.equal("GET", doc.method)
    assert.equal("/echo?x=1", doc.uri)
    assert.equal(origin.addr, helpers.echo_value(doc, "Host"))
    assert.matches("^moxy/", helpers.echo_value(doc, "User-Agent"))
  end)

  it("sends a body with POST and passes the status through", function()
    local res = call({ ["X-Mode"] = "call", ["X-Url"] = base .. "/echo?status=201",
                       ["X-Method"] = "POST", ["X-Body"] = "hello body" })
    assert.equal(200, res.status, res.body)
    assert.equal("201", res:header("x-got-status"))
    local doc = helpers.json(res.body)
    assert.equal("POST", doc.method)
    assert.equal("hello body", doc.body)
    assert.equal("10", helpers.echo_value(doc, "Content-Length"))
  end)

  it("reads chunked, close-delimited and sized bodies, and skips 1xx", function()
    local res = call({ ["X-Mode"] = "call", ["X-Url"] = base .. "/chunked/50000?chunk=999&trailer=1" })
    assert.equal(200, res.status, res.body)
    assert.equal(50000, #res.body)
    assert.is_true(helpers.pattern_ok(0, res.body))

    res = call({ ["X-Mode"] = "call", ["X-Url"] = base .. "/close/30000" })
    assert.equal(200, res.status, res.body)
    assert.equal(30000, #res.body)
    assert.is_true(helpers.pattern_ok(0, res.body))

    res = call({ ["X-Mode"] = "call", ["X-Url"] = base .. "/bytes/300000" })
    assert.equal(300000, #res.body)
    assert.is_true(helpers.pattern_ok(0, res.body))
    assert.equal("300000", res:header("x-got-length"))

    res = call({ ["X-Mode"] = "call", ["X-Url"] = base .. "/early-hints" })
    assert.equal("200", res:header("x-got-status"))
    assert.equal("early hints done\n", res.body)

    res = call({ ["X-Mode"] = "call", ["X-Url"] = base .. "/status/204" })
    assert.equal("204", res:header("x-got-status"))
    assert.equal("", res.body)
  end)

  it("gets no body for HEAD, and the headers of a GET", function()
    local res = call({ ["X-Mode"] = "call", ["X-Url"] = base .. "/bytes/1234", ["X-Method"] = "HEAD" })
    assert.equal(200, res.status, res.body)
    assert.equal("200", res:header("x-got-status"))
    assert.equal("1234", res:header("x-got-length"))
    assert.equal("", res.body)
    -- the connection is still good after a HEAD
    res = call({ ["X-Mode"] = "call", ["X-Url"] = base .. "/bytes/10" })
    assert.equal(10, #res.body)
  end)

  it("joins repeated headers with \", \" and lists set-cookie", function()
    local res = call({ ["X-Mode"] = "headers",
      ["X-Url"] = base .. "/echo?rh=X-A:1&rh=x-a:2&rh=Set-Cookie:a=1&rh=Set-Cookie:b=2" })
    assert.equal(200, res.status, res.body)
    local h = helpers.json(res.body)
    assert.equal("1, 2", h["x-a"])
    assert.same({ "a=1", "b=2" }, h["set-cookie"])
    assert.equal("application/json", h["content-type"])
  end)

  it("reuses a kept-alive connection for the next call", function()
    origin:reset_stats()
    local res = call({ ["X-Mode"] = "twice" })
    assert.equal(200, res.status, res.body)
    local docs = helpers.json(res.body)
    assert.equal(docs[1].conn, docs[2].conn)
    assert.equal(docs[1].conn_request + 1, docs[2].conn_request)
    -- the origin saw both on one connection (the timer's calls aside)
    local seen = origin:saw("^/echo%?n=[12]$")
    assert.equal(2, #seen)
    assert.equal(seen[1].conn, seen[2].conn)
  end)

  it("does not keep the connection with keepalive = false", function()
    local res = call({ ["X-Mode"] = "call", ["X-Url"] = base .. "/echo", ["X-Keepalive"] = "no" })
    local doc = helpers.json(res.body)
    assert.equal("close", helpers.echo_value(doc, "Connection"))
    local res2 = call({ ["X-Mode"] = "call", ["X-Url"] = base .. "/echo" })
    assert.are_not.equal(doc.conn, helpers.json(res2.body).conn)
  end)

  it("sends the call again when a reused connection turns out closed", function()
    local res = call({ ["X-Mode"] = "stale" })
    assert.equal(200, res.status, res.body)
    local docs = helpers.json(res.body)
    assert.are_not.equal(docs[1].conn, docs[2].conn)
    assert.equal("/echo?n=after", docs[2].uri)
  end)

  it("runs 50 calls from 50 requests at once", function()
    local conns = {}
    local t0 = helpers.now()
    for i = 1, 50 do
      conns[i] = assert(helpers.connection(moxy.port))
      assert(conns[i]:send(helpers.build_request({ path = "/", headers = {
        { "X-Mode", "call" }, { "X-Url", base .. "/slow-headers/0.3?i=" .. i } } })))
    end
    for i = 1, 50 do
      local res = assert(conns[i]:read_response())
      assert.equal(200, res.status, res.body)
      assert.equal("slow\n", res.body)
      conns[i]:close()
    end
    -- one worker; 50 x 0.3 s one after the other would take 15 s
    assert.is_true(helpers.now() - t0 < 4 * helpers.scale, "the calls did not overlap")
    assert.equal(200, call({ ["X-Mode"] = "call", ["X-Url"] = base .. "/echo" }).status)
  end)

  it("returns nil, err when the connection is refused", function()
    local port = helpers.free_port()
    local res = call({ ["X-Mode"] = "call", ["X-Url"] = "http://127.0.0.1:" .. port .. "/" })
    assert.equal(502, res.status)
    assert.equal("error: connect: connection refused\n", res.body)
  end)

  it("times out a connect that hangs, and a call that takes too long", function()
    local bh = helpers.blackhole()
    if bh then
      local t0 = helpers.now()
      local res = call({ ["X-Mode"] = "call", ["X-Url"] = "http://" .. bh.addr .. "/",
                         ["X-Connect-Timeout"] = "0.3" })
      bh.close()
      assert.equal("error: timeout\n", res.body)
      assert.is_true(helpers.now() - t0 < 2 * helpers.scale)
    end
    local t0 = helpers.now()
    local res = call({ ["X-Mode"] = "call", ["X-Url"] = base .. "/slow-headers/5", ["X-Timeout"] = "0.5" })
    assert.equal("error: timeout\n", res.body)
    local took = helpers.now() - t0
    assert.is_true(took >= 0.45 and took < 2 * helpers.scale, "took " .. took .. " s")
  end)

  it("refuses a body over max_body", function()
    local res = call({ ["X-Mode"] = "call", ["X-Url"] = base .. "/bytes/100000", ["X-Max-Body"] = "64k" })
    assert.equal("error: body too large\n", res.body)
    res = call({ ["X-Mode"] = "call", ["X-Url"] = base .. "/chunked/5000?chunk=100", ["X-Max-Body"] = "4000" })
    assert.equal("error: body too large\n", res.body)
    res = call({ ["X-Mode"] = "call", ["X-Url"] = base .. "/close/5000", ["X-Max-Body"] = "4000" })
    assert.equal("error: body too large\n", res.body)
    res = call({ ["X-Mode"] = "call", ["X-Url"] = base .. "/bytes/65536", ["X-Max-Body"] = "64k" })
    assert.equal(65536, #res.body)
  end)

  it("resolves a name (localhost)", function()
    local res = call({ ["X-Mode"] = "get", ["X-Url"] = "http://localhost:" .. origin.port .. "/echo?name=1" })
    assert.equal(200, res.status, res.body)
    local doc = helpers.json(res.body)
    assert.equal("/echo?name=1", doc.uri)
    assert.equal("localhost:" .. origin.port, helpers.echo_value(doc, "Host"))
  end)

  it("returns nil, err for https to a plain-HTTP server and for other schemes, and raises on bad arguments", function()
    local res = call({ ["X-Mode"] = "schemes" })
    assert.matches("^TLS handshake failed: [^\n]+\nunsupported URL scheme\n$", res.body)
    res = call({ ["X-Mode"] = "misuse" })
    local r = helpers.json(res.body)
    assert.is_false(r[1])
    assert.matches("moxy.http.request: url must be a string", r[2], 1, true)
    assert.is_false(r[3])
    assert.matches("moxy.http.request: header X-A: control character", r[4], 1, true)
    assert.is_false(r[5])
    assert.matches("moxy.http.request: max_body must be a size", r[6], 1, true)
  end)

  it("calls from a moxy.timer.every callback started in worker_init", function()
    local ok = helpers.wait_until(function()
      local res = call({ ["X-Mode"] = "timer" })
      local n, last = res.body:match("^(%d+) (.*)$")
      if tonumber(n) == nil then return nil end
      if n == "0" and last == "none" then return nil end
      return { n = tonumber(n), last = last }
    end, 3 * helpers.scale, 0.1)
    if not ok then
      local res = call({ ["X-Mode"] = "timer" })
      if res.body == "0 none" then
        pending("moxy.timer is not available in this build")
        return
      end
    end
    assert(ok, "the timer's call never finished")
    assert.equal("200", ok.last)
    assert(helpers.wait_until(function() return #origin:saw("from=timer") > 0 end, 2 * helpers.scale))
  end)

  it("calls from on_log, after the response is sent", function()
    local res = call({ ["X-Mode"] = "log", ["X-Url"] = base .. "/echo?from=log" }, "/echo")
    assert.equal(200, res.status)
    assert(moxy:wait_log("on_log call: 200", 3 * helpers.scale, moxy.error_log))
  end)

  it("stays healthy when the client leaves while the hook waits", function()
    for i = 1, 5 do
      local c = assert(helpers.connection(moxy.port))
      assert(c:send(helpers.build_request({ path = "/", headers = {
        { "X-Mode", "call" }, { "X-Url", base .. "/slow-headers/1?gone=" .. i } } })))
      helpers.sleep(0.05)
      c:close()
    end
    helpers.sleep(0.3)
    assert.is_true(moxy:alive())
    local res = call({ ["X-Mode"] = "call", ["X-Url"] = base .. "/echo?after=1" })
    assert.equal(200, res.status, res.body)
    assert.equal("/echo?after=1", helpers.json(res.body).uri)
  end)

  it("stops cleanly with calls in flight", function()
    -- a timer's call and a hook's call still wait for the origin at exit,
    -- and a kept-alive connection is idle
    local slow = [[
return {
  worker_init = function()
    if moxy.timer then moxy.timer.at(0, function() moxy.http.get("http://ORIGIN/slow-headers/3") end) end
  end,
  on_request = function(txn)
    local res, err = moxy.http.get(txn.req.headers:get("X-Url"))
    return txn:respond(res and 200 or 502, res and res.body or err)
  end,
}
]]
    local m = helpers.start_moxy({
      upstreams = { app = { servers = { origin.addr } } },
      scripts = { "slow.lua" },
    }, { files = { ["slow.lua"] = slow:gsub("ORIGIN", origin.addr) } })
    local c = assert(helpers.connection(m.port))
    assert(c:send(helpers.build_request({ path = "/", headers = { { "X-Url", base .. "/slow-headers/3" } } })))
    assert.equal(200, assert(helpers.request(m.port, { path = "/", headers = { { "X-Url", base .. "/echo" } } })).status)
    helpers.sleep(0.2)
    local code = m:stop("TERM")
    c:close()
    assert.equal(0, code)
    assert.is_nil(helpers.sanitizer_report(m:stderr()))
  end)

  it("raises when called outside hooks (moxy does not start)", function()
    local src = [[
return {
  workers = 1,
  listen = { "127.0.0.1:18191" },
  upstreams = { app = { servers = { "127.0.0.1:18190" } } },
  scripts = { "bad.lua" },
}
]]
    local bad = "local res = moxy.http.get('http://127.0.0.1:18190/')\nreturn {}\n"
    local code, out = helpers.run_moxy_check(src, { files = { ["bad.lua"] = bad } })
    assert.equal(1, code, out)
    assert.matches("bad%.lua:1: moxy%.http%.request: only hooks and timer callbacks may make HTTP calls", out)
  end)
end)
