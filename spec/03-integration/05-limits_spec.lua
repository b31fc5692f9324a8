-- Limits and timeouts: each one is hit and answered with its status code.
local helpers = require "spec.helpers"

local S = helpers.scale

local function elapsed_since(t) return helpers.now() - t end

describe("limits", function()
  local origin, moxy, bh, p_dead_connect

  lazy_setup(function()
    origin = helpers.start_origin()
    bh = helpers.blackhole()
    p_dead_connect = helpers.free_port()
    moxy = helpers.start_moxy({
      listen = {
        "127.0.0.1:" .. helpers.free_port(),
        { addr = "127.0.0.1:" .. p_dead_connect, name = "blackhole", upstream = "blackhole" },
      },
      upstreams = {
        app = { servers = { origin.addr } },
        -- without a blackhole the pool points at the origin; the test is skipped
        blackhole = { servers = { bh and bh.addr or origin.addr } },
      },
      default_upstream = "app",
      limits = { header_bytes = "4k", headers = 20, uri_bytes = "1k", body_bytes = "64k" },
      -- upstream (2s) is longer than client_body (1s): a slow client body must be
      -- blamed on the client (408), not on the origin (504)
      timeouts = { client_header = "1s", client_body = "1s", upstream = "2s", keepalive = "1s", connect = "1s" },
    })
  end)

  lazy_teardown(function()
    if bh then bh.close() end
    helpers.stop_all()
  end)

  local function req(r)
    r.timeout = r.timeout or 5 * S
    return assert(helpers.request(moxy.port, r))
  end

  describe("request head", function()
    it("accepts headers within the limits", function()
      local headers = {}
      for i = 1, 10 do headers[#headers + 1] = { "X-H" .. i, string.rep("v", 150) } end
      assert.equal(200, req({ path = "/echo", headers = headers }).status)
    end)

    it("answers 431 to a header line over header_bytes", function()
      local res = req({ path = "/limits/big-header", headers = { { "X-Big", string.rep("v", 5000) } } })
      assert.equal(431, res.status)
    end)

    it("answers 431 when all headers together exceed header_bytes", function()
      local headers = {}
      for i = 1, 10 do headers[#headers + 1] = { "X-H" .. i, string.rep("v", 600) } end
      assert.equal(431, req({ path = "/limits/many-bytes", headers = headers }).status)
    end)

    it("answers 431 to more headers than limits.headers", function()
      local headers = {}
      for i = 1, 25 do headers[#headers + 1] = { "X-H" .. i, "v" } end
      assert.equal(431, req({ path = "/limits/many-headers", headers = headers }).status)
    end)

    it("answers 414 to a URI over uri_bytes, and passes one under it", function()
      assert.equal(200, req({ path = "/echo?" .. string.rep("a", 900) }).status)
      assert.equal(414, req({ path = "/limits/uri?" .. string.rep("a", 2000) }).status)
    end)

    it("never sends a rejected head to the origin", function()
      assert.same({}, origin:saw("^/limits/"))
    end)
  end)

  describe("request body", function()
    it("accepts a body of exactly body_bytes", function()
      local e = helpers.echo(helpers.request(moxy.port, { method = "POST", path = "/upload",
        body = helpers.pattern(0, 65536) }))
      assert.equal(65536, e.bytes)
    end)

    it("answers 413 to a Content-Length over body_bytes without reading the body", function()
      local c = assert(helpers.connection(moxy.port))
      assert(c:send(helpers.build_request({ method = "POST", path = "/limits/body-cl",
        headers = { { "Content-Length", "65537" } } })))
      local res = assert(c:read_response({ timeout = 3 * S }))
      assert.equal(413, res.status)
      c:close()
      assert.same({}, origin:saw("^/limits/body%-cl"))
    end)

    it("answers 413 to Expect: 100-continue with a Content-Length over body_bytes, without 100", function()
      local c = assert(helpers.connection(moxy.port))
      assert(c:send(helpers.build_request({ method = "POST", path = "/limits/body-expect",
        headers = { { "Content-Length", "1000000" }, { "Expect", "100-continue" } } })))
      local res = assert(c:read_response({ timeout = 3 * S }))
      assert.equal(0, #res.interim, "sent 100 Continue for a body it will refuse")
      assert.equal(413, res.status)
      c:close()
    end)

    it("answers 413 when a chunked body exceeds body_bytes mid-stream", function()
      local chunks = {}
      for i = 1, 8 do chunks[i] = string.rep("c", 10000) end
      local text = helpers.raw(moxy.port, helpers.build_request({ method = "POST",
        path = "/upload?limits=chunked-over", chunks = chunks }), { timeout = 3 * S })
      local list = helpers.parse_responses(text)
      assert.equal(1, #list, "expected one response, got: " .. text:sub(1, 300))
      assert.equal(413, list[1].status)
    end)
  end)

  describe("client timeouts", function()
    it("answers 408 when the request head does not arrive in client_header", function()
      local t = helpers.now()
      local text, closed = helpers.raw(moxy.port, "GET /limits/slow-head HTTP/1.1\r\nHost: x\r\n",
        { timeout = 4 * S })
      assert.is_true(closed, "connection still open after 4 s")
      assert.matches("^HTTP/1%.1 408 ", text)
      assert.is_true(elapsed_since(t) > 0.8, "408 came before client_header elapsed")
    end)

    it("does not restart client_header on every trickled byte", function()
      local c = assert(helpers.connection(moxy.port))
      local t = helpers.now()
      local closed = false
      local got = ""
      assert(c:send("GET /limits/trickle HTTP/1.1\r\n"))
      for i = 1, 12 do
        helpers.sleep(0.25)
        if not c:send("X-Trickle-" .. i .. ": x\r\n") then
          closed = true
          break
        end
        local data, err = c:receive_some(0.01)
        if data then got = got .. data end
        if err == "closed" then
          closed = true
          break
        end
      end
      if not closed then closed, got = c:wait_closed(2 * S) end
      c:close()
      assert.is_true(closed, "a trickling client kept the connection for " .. elapsed_since(t) .. " s")
      assert.is_true(elapsed_since(t) < 2.5 * S, "closed only after " .. elapsed_since(t) .. " s")
    end)

    it("closes a connection that never sends a request", function()
      local c = assert(helpers.connection(moxy.port))
      local t = helpers.now()
      assert.is_true((c:wait_closed(4 * S)), "idle connection kept for 4 s")
      assert.is_true(elapsed_since(t) > 0.8)
      c:close()
    end)

    it("answers 408 when the body does not arrive in client_body", function()
      local t = helpers.now()
      local text, closed = helpers.raw(moxy.port, {
        helpers.build_request({ method = "POST", path = "/upload?limits=slow-body",
          headers = { { "Content-Length", "100" } } }) .. "0123456789",
      }, { timeout = 4 * S })
      assert.is_true(closed, "connection still open after 4 s")
      assert.matches("^HTTP/1%.1 408 ", text)
      assert.is_true(elapsed_since(t) > 0.8)
    end)

    it("closes an idle keep-alive connection after timeouts.keepalive", function()
      local c = assert(helpers.connection(moxy.port))
      assert.equal(200, assert(c:request({ path = "/echo" })).status)
      local t = helpers.now()
      assert.is_false((c:wait_closed(0.5)), "closed well before the keepalive timeout")
      assert.is_true((c:wait_closed(3 * S)), "idle keep-alive connection still open")
      local took = elapsed_since(t)
      assert.is_true(took > 0.8 and took < 3 * S, "closed after " .. took .. " s")
      c:close()
    end)
  end)

  describe("upstream timeouts", function()
    it("answers 504 when the origin does not answer in timeouts.upstream", function()
      local t = helpers.now()
      local res = req({ path = "/slow-headers/5" })
      assert.equal(504, res.status)
      local took = elapsed_since(t)
      assert.is_true(took > 1.8 and took < 4 * S, "504 after " .. took .. " s")
    end)

    it("closes the client connection when the origin stalls mid-body", function()
      local c = assert(helpers.connection(moxy.port))
      local t = helpers.now()
      local res, err = c:request({ path = "/slow-body/5" }, { timeout = 4.5 * S })
      assert.is_nil(res, "got a complete response from a stalled origin")
      assert.matches("closed", err)
      assert.is_true(elapsed_since(t) < 4.5 * S, "connection closed only after " .. elapsed_since(t) .. " s")
      c:close()
    end)

    it("answers 504 when connecting to the origin takes longer than timeouts.connect", function()
      if not bh then
        pending("connect() to a full listen queue does not hang on this host")
        return
      end
      local t = helpers.now()
      local res = assert(helpers.request(p_dead_connect, { path = "/echo", timeout = 6 * S }))
      assert.equal(504, res.status)
      local took = elapsed_since(t)
      assert.is_true(took > 0.8 and took < 3 * S, "504 after " .. took .. " s")
    end)
  end)
end)

describe("limits.connections", function()
  local origin, moxy

  lazy_setup(function()
    origin = helpers.start_origin()
    moxy = helpers.start_moxy({
      upstreams = { app = { servers = { origin.addr } } },
      limits = { connections = 4 },
    })
  end)

  lazy_teardown(function() helpers.stop_all() end)

  it("serves no more than limits.connections clients at once", function()
    local idle = {}
    for i = 1, 4 do idle[i] = assert(helpers.connection(moxy.port)) end
    helpers.sleep(0.3 * helpers.scale) -- let moxy accept them
    -- over the limit: refused, closed, or left waiting -- never served
    local extra = helpers.connection(moxy.port, { timeout = 1.5 })
    if extra then
      local res = extra:request({ path = "/echo?over-limit" }, { timeout = 1.5 })
      assert.is_nil(res, "served a connection over limits.connections")
      extra:close()
    end
    idle[1]:close()
    idle[2]:close()
    -- two slots free again: a new client is served (allow moxy a moment)
    local served = helpers.wait_until(function()
      local res = helpers.request(moxy.port, { path = "/echo?after-close", timeout = 1 })
      return res and res.status == 200
    end, 5 * helpers.scale, 0.2)
    assert.is_true(served == true, "no client served after connections were freed")
    for i = 3, 4 do idle[i]:close() end
  end)
end)
