-- Persistent connections: client keep-alive and pipelining, origin connection
-- reuse (workers = 1, so one pool), and the pool's keepalive limits.
local helpers = require "spec.helpers"

local echo = helpers.echo

describe("keep-alive", function()
  local origin, moxy

  lazy_setup(function()
    origin = helpers.start_origin()
    moxy = helpers.start_moxy({
      upstreams = { app = { servers = { origin.addr }, keepalive = 16 } },
      limits = { connections_per_client = 0 }, -- 4000 idle connections from 127.0.0.1 (below)
    })
  end)

  lazy_teardown(function() helpers.stop_all() end)

  it("serves several requests on one client connection", function()
    local c = assert(helpers.connection(moxy.port))
    for i = 1, 5 do
      local res = assert(c:request({ path = "/echo?i=" .. i }))
      assert.equal(200, res.status)
      assert.equal("/echo?i=" .. i, echo(res).uri)
      assert.is_false(res.will_close, "response " .. i .. " announced close")
    end
    assert.is_false((c:wait_closed(0.3)), "moxy closed an active keep-alive connection")
    c:close()
  end)

  it("reuses one origin connection for sequential requests", function()
    origin:reset_stats()
    local conns = {}
    local c = assert(helpers.connection(moxy.port))
    for i = 1, 10 do
      conns[#conns + 1] = echo(c:request({ path = "/echo?same=" .. i })).conn
    end
    c:close()
    for i = 1, 10 do
      conns[#conns + 1] = echo(helpers.request(moxy.port, { path = "/echo?fresh=" .. i })).conn
    end
    for i = 2, #conns do
      assert.equal(conns[1], conns[i], "request " .. i .. " used another origin connection")
    end
    local st = origin:stats()
    assert.equal(20, st.requests)
    assert.equal(1, st.connections)
  end)

  it("closes after a request with Connection: close", function()
    local c = assert(helpers.connection(moxy.port))
    local res = assert(c:request({ path = "/echo", headers = { Connection = "close" } }))
    assert.equal(200, res.status)
    assert.is_true(helpers.has_token(res.headers.connection, "close"), "no Connection: close in the response")
    assert.is_true((c:wait_closed(2 * helpers.scale)), "connection left open")
    c:close()
  end)

  it("closes after an HTTP/1.0 request without keep-alive", function()
    local c = assert(helpers.connection(moxy.port))
    local res = assert(c:request({ path = "/echo", version = "HTTP/1.0" }))
    assert.equal(200, res.status)
    assert.is_true((c:wait_closed(2 * helpers.scale)), "connection left open")
    c:close()
  end)

  it("answers pipelined requests in order", function()
    local c = assert(helpers.connection(moxy.port))
    local reqs = {}
    for i = 1, 3 do reqs[i] = helpers.build_request({ path = "/echo?n=" .. i }) end
    assert(c:send(table.concat(reqs)))
    for i = 1, 3 do
      local res = assert(c:read_response())
      assert.equal("/echo?n=" .. i, echo(res).uri)
    end
    c:close()
  end)

  it("answers a pipeline mixing bodies, HEAD and a slow response in order", function()
    local c = assert(helpers.connection(moxy.port))
    assert(c:send(table.concat({
      helpers.build_request({ path = "/slow-headers/0.3" }),
      helpers.build_request({ method = "POST", path = "/echo?n=2", body = "pipelined body" }),
      helpers.build_request({ method = "HEAD", path = "/bytes/100" }),
      helpers.build_request({ path = "/echo?n=4", chunks = { "a", "bc" } }),
    })))
    local r1 = assert(c:read_response())
    assert.equal("slow\n", r1.body)
    local e2 = echo(c:read_response({ method = "POST" }))
    assert.equal("/echo?n=2", e2.uri)
    assert.equal("pipelined body", e2.body)
    local r3 = assert(c:read_response({ method = "HEAD" }))
    assert.equal(200, r3.status)
    assert.equal("", r3.body)
    local e4 = echo(c:read_response())
    assert.equal("/echo?n=4", e4.uri)
    assert.equal("abc", e4.body)
    c:close()
  end)

  it("does not reuse an origin connection the origin announced it closes", function()
    local first = echo(helpers.request(moxy.port, { path = "/echo?close=1" })).conn
    local second = echo(helpers.request(moxy.port, { path = "/echo" })).conn
    assert.not_equal(first, second)
  end)

  it("survives the origin closing an idle pooled connection", function()
    for i = 1, 3 do
      local first = echo(helpers.request(moxy.port, { path = "/echo?idle_close=0.2&i=" .. i })).conn
      helpers.sleep(0.6)
      local res = assert(helpers.request(moxy.port, { path = "/echo?after=" .. i }))
      assert.equal(200, res.status, "request after the origin closed the pooled connection: " .. res.status)
      assert.not_equal(first, echo(res).conn)
    end
  end)

  it("keeps an idle keep-alive connection small: no buffer or write event while idle", function()
    -- 3000 connections, one GET each, then idle (bench/tools/idle_conns.py, as bench/run.sh);
    -- RSS means nothing under ASan
    if helpers.sanitized then return end
    local n = 4000
    local function idle(conns, hold, out)
      return string.format("timeout 60 /usr/bin/python3 %s/bench/tools/idle_conns.py --port %d --conns %d --hold %g "
        .. "--path /echo/idle > %s", helpers.root, moxy.port, conns, hold, out)
    end
    -- a first round: the memory of 100 requests at once (a batch) is in the baseline, as the
    -- bench's warm-up puts it there
    helpers.sh(idle(200, 0, "/dev/null"))
    local before = moxy:rss()
    local outf = os.tmpname()
    local p = helpers.spawn({ "sh", "-c", idle(n, 3, outf) }, {})
    local ready = helpers.wait_until(function() return (helpers.read_file(outf) or ""):match("READY (%d+)") end, 40)
    assert.equal(tostring(n), ready, helpers.read_file(outf))
    helpers.sleep(0.5)
    local during = moxy:rss()
    p:wait_exit(30)
    os.remove(outf)
    -- ~430 bytes each (the connection's struct and libevent's share); 564 with a write event each
    local per = (during - before) * 1024 / n
    assert.is_true(per < 500, string.format("%.0f bytes per idle connection", per))
  end)

  describe("pool settings", function()
    local m2, p_nokeep, p_short

    lazy_setup(function()
      p_nokeep, p_short = helpers.free_port(), helpers.free_port()
      m2 = helpers.start_moxy({
        listen = {
          { addr = "127.0.0.1:" .. p_nokeep, name = "nokeep", upstream = "nokeep" },
          { addr = "127.0.0.1:" .. p_short, name = "short", upstream = "short" },
        },
        upstreams = {
          nokeep = { servers = { origin.addr }, keepalive = 0 },
          short = { servers = { origin.addr }, keepalive_timeout = "300ms" },
        },
        default_upstream = "nokeep",
      })
    end)

    it("keepalive = 0 opens a new origin connection per request", function()
      local seen = {}
      for i = 1, 3 do
        local conn = echo(helpers.request(p_nokeep, { path = "/echo?k0=" .. i })).conn
        assert.is_nil(seen[conn], "origin connection " .. conn .. " was reused")
        seen[conn] = true
      end
    end)

    it("gives a reused origin connection no deadline of its idle time: a slow body is not cut", function()
      -- libevent keeps an event's pending timeout when event_add gets none: the idle
      -- connection's keepalive_timeout followed it into use and, while the request body
      -- was still coming (the read timeout starts after it), cut the request at the idle
      -- deadline with 504 "origin read timed out" (found by tools/reloads.py)
      local c1 = echo(helpers.request(p_short, { path = "/echo?slow=1" })).conn
      local head = "POST /echo?slow=2 HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\nConnection: close\r\n\r\n"
      local text = helpers.raw(p_short, { head .. "12345", "67890" }, { delay = 0.6, timeout = 5 * helpers.scale })
      local res = helpers.parse_responses(text, { "POST" })[1]
      assert(res, "no response: " .. text)
      assert.equal(200, res.status, text)
      local doc = echo(res)
      assert.equal(c1, doc.conn, "the origin connection was not reused: the case is not tested")
      assert.equal(10, doc.body_length)
    end)

    it("drops idle origin connections after keepalive_timeout", function()
      local c1 = echo(helpers.request(p_short, { path = "/echo?kt=1" })).conn
      local c2 = echo(helpers.request(p_short, { path = "/echo?kt=2" })).conn
      assert.equal(c1, c2, "origin connection not reused within keepalive_timeout")
      helpers.sleep(1)
      local c3 = echo(helpers.request(p_short, { path = "/echo?kt=3" })).conn
      assert.not_equal(c1, c3, "idle origin connection kept past keepalive_timeout")
    end)
  end)
end)
