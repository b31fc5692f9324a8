-- Origins that fail: resets in the head and in the body, garbage, wrong
-- lengths, hangs, keep-alive connections closed as moxy reuses them, names
-- that move or vanish, and servers that accept and never answer.  Each
-- against a real moxy and a misbehaving origin on loopback
-- (spec/support/fault_origin.py, spec/support/dns.py); what is asserted is
-- what a client notices: the status, the bytes, whether it can tell a
-- response is incomplete, how many requests the origins saw, and the log.
local helpers = require "spec.helpers"
local cjson = require "cjson"

local S = helpers.scale
local PY = "/usr/bin/python3"

-- fault_origin.py with these arguments -> {port, addr, proc, stats()}
-- (host: the address it listens on, when another than 127.0.0.1)
local function start_fault(args, host)
  local argv = { PY, "-u", helpers.support .. "/fault_origin.py" }
  for _, a in ipairs(args or {}) do argv[#argv + 1] = a end
  local p = helpers.spawn(argv, { dir = helpers.tmpdir("fault"), kind = "origin" })
  local port = helpers.wait_until(function()
    local port = p:stdout():match("ready (%d+)")
    if port then return tonumber(port) end
    if not p:alive() then return -1 end
  end, 10 * S)
  assert(port and port > 0, "fault_origin.py did not start: " .. p:stdout() .. p:stderr())
  local o = { port = port, addr = "127.0.0.1:" .. port, proc = p }
  function o.stats()
    local c = assert(helpers.connection(port, { host = host }))
    local res = assert(c:request({ path = "/__stats" }))
    c:close()
    return cjson.decode(res.body)
  end
  -- requests the origin saw for path
  function o.saw(path) return o.stats().paths[path] or 0 end
  return o
end

local function get(path) return ("GET %s HTTP/1.1\r\nHost: t\r\n\r\n"):format(path) end

-- the head of a raw response: status, its fields (lower case) and the body
local function split(text)
  local head, body = text:match("^(.-\r\n)\r\n(.*)$")
  if not head then return nil end
  local h = {}
  for name, value in head:gmatch("\n([^:\r\n]+):%s*([^\r\n]*)") do h[name:lower()] = value end
  return tonumber(head:match("^HTTP/1%.1 (%d%d%d)")), h, body
end

-- a chunked body decoded: its bytes, and whether the last chunk came
local function dechunk(body)
  local out, pos = {}, 1
  while true do
    local hex, e = body:match("^(%x+)\r\n()", pos)
    if not hex then return table.concat(out), false end
    local n = tonumber(hex, 16)
    if n == 0 then return table.concat(out), body:sub(e, e + 1) == "\r\n" end
    if #body < e + n - 1 then return table.concat(out) .. body:sub(e), false end
    out[#out + 1] = body:sub(e, e + n - 1)
    pos = e + n + 2
  end
end

-- a request on a connection of its own that must come back whole: its
-- response, and whether the connection then served another
local function whole(port, path)
  local c = assert(helpers.connection(port))
  local res, err = c:request({ path = path, timeout = 5 * S })
  assert(res, path .. ": " .. tostring(err))
  local again = c:request({ path = "/f/ok/again", timeout = 5 * S })
  c:close()
  return res, again and again.status == 200
end

-- curl over HTTP/2 (prior knowledge) -> exit code, body bytes, stderr
local function curl_h2(port, path)
  local dir = helpers.tmpdir("curl")
  local _, code = helpers.sh(("(timeout %d curl -sS --http2-prior-knowledge -o %s/body http://127.0.0.1:%d%s 2>%s/err)")
    :format(math.ceil(20 * S), dir, port, path, dir))
  return code, helpers.read_file(dir .. "/body") or "", helpers.read_file(dir .. "/err") or ""
end

-- load_client.py: n requests for path ("{i}": the request's number) from
-- conc threads -> its report {n, ok, statuses, errors}
local function load(port, path, n, conc, methods)
  local out = helpers.sh(("timeout %d %s %s/load_client.py %d '%s' %d %d %s"):format(math.ceil(60 * S), PY,
    helpers.support, port, path, n, conc, methods or "GET"))
  local report = cjson.decode(out:match("{.*}") or "null")
  assert(report, "load_client.py: " .. out)
  return report
end

-- dns.py answering from a zone the spec rewrites (as 26-resolver_spec)
local function start_dns(zone)
  local dir = helpers.tmpdir("dns")
  local d = { path = dir .. "/zone.json" }
  function d.set(z)
    helpers.write_file(d.path .. ".tmp", cjson.encode(z))
    assert(os.rename(d.path .. ".tmp", d.path))
  end
  d.set(zone)
  d.proc = helpers.spawn({ PY, "-u", helpers.support .. "/dns.py", d.path }, { dir = dir })
  d.port = helpers.wait_until(function()
    local port = d.proc:stdout():match("ready (%d+)")
    if port then return tonumber(port) end
    if not d.proc:alive() then return -1 end
  end, 10 * S)
  assert(d.port and d.port > 0, "dns.py did not start: " .. d.proc:stdout() .. d.proc:stderr())
  d.addr = "127.0.0.1:" .. d.port
  return d
end

-- the time a request takes -> res (or nil, err), seconds
local function timed(port, path)
  local t0 = helpers.now()
  local res, err = helpers.request(port, { path = path, timeout = 10 * S })
  return res or err, helpers.now() - t0
end

describe("origin faults", function()
  local A, B, L, N, T -- faulty, healthy, never accepts, never reads, TLS
  local m, p_one, p_two, p_h2, p_tls, p_listen, p_listen2, p_noread, p_noread2, p_retry_to, p_ka

  lazy_setup(function()
    A = start_fault()
    B = start_fault({ "--healthy" })
    L = start_fault({ "--listen-only" })
    N = start_fault({ "--no-read" })
    local dir = helpers.tmpdir("certs")
    helpers.make_cert(dir, "o", "ec", "origin.test", { "origin.test", "IP:127.0.0.1" })
    T = start_fault({ "--tls", dir .. "/o.pem", dir .. "/o.key" })
    local ports = {}
    for i = 1, 10 do ports[i] = helpers.free_port() end
    p_one, p_two, p_h2, p_tls, p_listen, p_listen2, p_noread, p_noread2, p_retry_to, p_ka =
      (table.unpack or unpack)(ports)
    local function l(port, pool, extra)
      local t = { addr = "127.0.0.1:" .. port, upstream = pool }
      for k, v in pairs(extra or {}) do t[k] = v end
      return t
    end
    m = helpers.start_moxy({
      listen = {
        l(p_one, "one"), l(p_two, "two"), l(p_h2, "one", { http2 = true }), l(p_tls, "tls"),
        l(p_listen, "listen"), l(p_listen2, "listen2"), l(p_noread, "noread"), l(p_noread2, "noread2"),
        l(p_retry_to, "retry_to"), l(p_ka, "ka"),
      },
      scripts = { "hooks.lua" },
      upstreams = {
        one = { servers = { A.addr }, passive = false },
        two = { servers = { A.addr, B.addr }, passive = false },
        retry_to = { servers = { A.addr, B.addr }, passive = false, retry_timeout = "500ms" },
        tls = { servers = { T.addr }, tls = { verify = false }, passive = false },
        listen = { servers = { L.addr }, passive = false },
        listen2 = { servers = { L.addr, B.addr }, passive = false },
        noread = { servers = { N.addr }, passive = false },
        noread2 = { servers = { N.addr, B.addr }, passive = false },
        ka = { servers = { A.addr }, passive = false, keepalive = 32 },
      },
      default_upstream = "one",
      timeouts = { upstream = "1s", connect = "1s" },
      limits = { connections_per_client = 0 },
      admin = {},
    }, { files = { ["hooks.lua"] = [[
      return { on_request = function(txn)
        if txn.req.headers:get("X-Retryable") then txn.upstream:retryable(true) end
        if txn.req.headers:get("X-Read-Body") then txn:read_body() end
      end }
    ]] } })
  end)
  lazy_teardown(function() helpers.stop_all() end)

  describe("1. a reset", function()
    it("in a Content-Length body: the HTTP/1.1 client gets fewer bytes and the connection closed", function()
      local text, closed = helpers.raw(p_one, get("/f/rst-body/1"), { timeout = 5 * S })
      local status, h, body = split(text)
      assert.equal(200, status, text:sub(1, 200))
      assert.equal("100000", h["content-length"])
      assert.is_true(closed, "connection left open after a cut response")
      assert.is_true(#body >= 1000 and #body < 100000, "body of " .. #body .. " bytes")
      assert.truthy(m:wait_error_log("origin reset the connection in the middle of the body"))
      assert.truthy(m:wait_error_log("(response already started, connection cut)"))
      assert.equal(1, A.saw("/f/rst-body/1"))
    end)

    it("in a chunked body: no last chunk, the connection closed", function()
      local text, closed = helpers.raw(p_one, get("/f/rst-chunked/1"), { timeout = 5 * S })
      local status, h, body = split(text)
      assert.equal(200, status, text:sub(1, 200))
      assert.equal("chunked", h["transfer-encoding"])
      local data, complete = dechunk(body)
      assert.is_false(complete, "a cut chunked body ended with its last chunk")
      assert.equal(1000, #data)
      assert.is_true(closed)
    end)

    it("in a body delimited by the close: no last chunk either (an RST is not an end)", function()
      local text, closed = helpers.raw(p_one, get("/f/rst-eof/1"), { timeout = 5 * S })
      local status, h, body = split(text)
      assert.equal(200, status, text:sub(1, 200))
      assert.equal("chunked", h["transfer-encoding"])
      local data, complete = dechunk(body)
      assert.is_false(complete, "an RST mid-body became a clean end of the response")
      assert.equal(1000, #data)
      assert.is_true(closed)
      assert.truthy(m:wait_error_log("origin reset the connection in the middle of the body"))
    end)

    it("is not a clean close: a body delimited by a clean close is whole", function()
      local res, again = whole(p_one, "/f/eof-body/1")
      assert.equal(200, res.status)
      assert.is_true(res.chunked)
      assert.equal(1000, #res.body)
      assert.is_true(again) -- and the client's connection goes on
    end)

    it("before any byte, with one peer: 502", function()
      local res = timed(p_one, "/f/rst-head/1")
      assert.equal(502, res.status)
      -- once, or twice when the first went on a kept connection: a reset
      -- there looks like the origin closing it while idle (section 5)
      local saw = A.saw("/f/rst-head/1")
      assert.is_true(saw == 1 or saw == 2, saw)
      assert.truthy(m:wait_error_log("origin reset the connection without answering"))
    end)

    it("before any byte, with a second peer: retried there, 0 lost of 20", function()
      local lost = 0
      for i = 1, 20 do
        local res = timed(p_two, "/f/rst-head/two" .. i)
        if res.status ~= 200 then lost = lost + 1 end
      end
      assert.equal(0, lost)
      local sa, sb = A.stats().paths, B.stats().paths
      local at_a, at_b = 0, 0
      for i = 1, 20 do
        at_a = at_a + (sa["/f/rst-head/two" .. i] or 0)
        at_b = at_b + (sb["/f/rst-head/two" .. i] or 0)
      end
      assert.equal(20, at_b)         -- every request answered by B
      assert.is_true(at_a >= 5, at_a) -- round robin: about half went to A first
      assert.truthy(m:wait_error_log("trying again (2 of 2)"))
    end)

    it("in the body, for an HTTP/2 client: the stream is reset, not ended", function()
      local code, body, err = curl_h2(p_h2, "/f/rst-body/h2")
      assert.equal(92, code, err) -- CURLE_HTTP2_STREAM
      assert.truthy(err:find("not closed cleanly: INTERNAL_ERROR", 1, true), "[" .. err .. "]")
      assert.is_true(#body >= 1000 and #body < 100000, #body)
      code, body, err = curl_h2(p_h2, "/f/rst-eof/h2")
      assert.equal(92, code, err)
      assert.equal(1000, #body)
    end)

    it("in the body from a TLS origin: the client can tell, as over plain TCP", function()
      local text, closed = helpers.raw(p_tls, get("/f/rst-body/tls"), { timeout = 5 * S })
      local status, h, body = split(text)
      assert.equal(200, status, text:sub(1, 200))
      assert.equal("100000", h["content-length"])
      assert.is_true(closed and #body < 100000, #body)
      text, closed = helpers.raw(p_tls, get("/f/rst-eof/tls"), { timeout = 5 * S })
      status, h, body = split(text)
      assert.equal(200, status, text:sub(1, 200))
      local data, complete = dechunk(body)
      assert.is_false(complete, "a TLS origin's RST mid-body became a clean end")
      assert.equal(1000, #data)
      assert.is_true(closed)
      -- a body delimited by the close ends at close_notify, and (as nginx
      -- takes it) at a clean TCP close without one
      for _, f in ipairs({ "eof-body", "eof-noclose" }) do
        local res, again = whole(p_tls, "/f/" .. f .. "/tls")
        assert.is_true(res.status == 200 and #res.body == 1000 and again, f)
      end
    end)
  end)

  describe("2. garbage", function()
    it("instead of a status line: 502, logged", function()
      local res = timed(p_one, "/f/garbage-status/1")
      assert.equal(502, res.status)
      assert.truthy(m:wait_error_log("invalid response from origin"))
    end)

    it("in the header fields: 502", function()
      local res = timed(p_one, "/f/garbage-header/1")
      assert.equal(502, res.status)
    end)

    it("half a head, then a close: 502", function()
      assert.equal(502, timed(p_one, "/f/cut-head/1").status)
      assert.truthy(m:wait_error_log("origin closed the connection in the response head"))
    end)

    it("from one of two peers: the other answers (a malformed or cut head is a failed try), 0 lost of 30", function()
      local lost, at_a = 0, 0
      for _, fault in ipairs({ "garbage-status", "garbage-header", "cut-head" }) do
        for i = 1, 10 do
          local path = ("/f/%s/two%d"):format(fault, i)
          if timed(p_two, path).status ~= 200 then lost = lost + 1 end
          at_a = at_a + A.saw(path)
        end
      end
      assert.equal(0, lost)
      assert.is_true(at_a >= 10, at_a) -- A had its share of first tries
    end)
  end)

  describe("3. a body of the wrong length", function()
    it("longer than Content-Length: the extra bytes reach nobody, the connection is not reused", function()
      local c = assert(helpers.connection(p_one))
      local res = assert(c:request({ path = "/f/extra-body/1" }))
      assert.equal(200, res.status)
      assert.equal("hello", res.body)
      -- the next requests on the same client connection get real answers:
      -- had moxy kept the connection, the next would read EVIL as its own
      for i = 1, 3 do
        local r2 = assert(c:request({ path = "/f/ok/after-extra" .. i }))
        assert.equal(200, r2.status)
        assert.is_nil(r2:header("x-evil"))
        assert.equal("xxxxxxxxxx", r2.body)
      end
      c:close()
      assert.equal(3, A.saw("/f/ok/after-extra1") + A.saw("/f/ok/after-extra2") + A.saw("/f/ok/after-extra3"))
    end)

    it("longer than Content-Length, the rest after a pause: the idle connection is closed, not read", function()
      local res = assert(helpers.request(p_one, { path = "/f/extra-late/1" }))
      assert.equal(200, res.status)
      assert.equal("hello", res.body)
      helpers.sleep(0.2) -- the extra response arrives while the connection is idle in moxy's pool
      for i = 1, 3 do
        local r2 = assert(helpers.request(p_one, { path = "/f/ok/after-late" .. i }))
        assert.equal(200, r2.status)
        assert.is_nil(r2:header("x-evil"))
        assert.equal("xxxxxxxxxx", r2.body)
        assert.equal(1, A.saw("/f/ok/after-late" .. i))
      end
    end)

    it("shorter than Content-Length, then a close: cut for the client, not reused", function()
      local text, closed = helpers.raw(p_one, get("/f/short-body/1"), { timeout = 5 * S })
      local status, h, body = split(text)
      assert.equal(200, status, text:sub(1, 200))
      assert.equal("100", h["content-length"])
      assert.equal(50, #body)
      assert.is_true(closed)
      assert.truthy(m:wait_error_log("origin closed the connection in the middle of the body"))
    end)
  end)

  describe("4. a hang", function()
    it("after the head: the head, then the connection cut after timeouts.upstream", function()
      local c = assert(helpers.connection(p_one))
      local t0 = helpers.now()
      c:send(get("/f/hang-body/1"))
      local closed, text = c:wait_closed(5 * S)
      local dt = helpers.now() - t0
      c:close()
      assert.is_true(closed)
      local status, h, body = split(text)
      assert.equal(200, status)
      assert.equal("1000", h["content-length"])
      assert.equal(10, #body)
      assert.is_true(dt >= 0.9 and dt < 3 * S, dt)
      assert.truthy(m:wait_error_log("origin read timed out (response already started, connection cut)"))
    end)

    it("after the head, for an HTTP/2 client: the stream reset after timeouts.upstream", function()
      local t0 = helpers.now()
      local code, body, err = curl_h2(p_h2, "/f/hang-body/h2")
      local dt = helpers.now() - t0
      assert.equal(92, code, err)
      assert.equal(10, #body)
      assert.is_true(dt >= 0.9 and dt < 3 * S, dt)
    end)

    it("before the head, with one peer: 504 after timeouts.upstream", function()
      local res, dt = timed(p_one, "/f/hang-head/1")
      assert.equal(504, res.status)
      assert.is_true(dt >= 0.9 and dt < 3 * S, dt)
    end)

    it("before the head, with a second peer: answered there", function()
      local slow = 0
      for i = 1, 4 do
        local res, dt = timed(p_two, "/f/hang-head/two" .. i)
        assert.equal(200, res.status)
        if dt > 0.9 then slow = slow + 1 end
      end
      assert.equal(2, slow) -- round robin: every other request waited for A first
    end)

    it("before the head, past retry_timeout: 504, no retry", function()
      local codes = {}
      for i = 1, 2 do codes[#codes + 1] = timed(p_retry_to, "/f/hang-head/rt" .. i).status end
      table.sort(codes)
      assert.same({ 200, 504 }, codes)
      assert.truthy(m:wait_error_log("no retry: retry_timeout passed"))
    end)
  end)

  describe("5. keep-alive connections the origin closes as moxy reuses them", function()
    it("idempotent requests are sent again on a new connection: 0 lost of 500", function()
      local function stale()
        return select(2, m:stderr():gsub("pool ka%): origin %a+ the connection without answering", ""))
      end
      local before, stale0 = A.stats(), stale()
      -- the origin closes each connection 0 to 3 ms after its response:
      -- moxy sees some closes while idle, and reuses others as they close
      local seq = load(p_ka, "/f/close-after/seq{i}?ms={m}", 200, 1, "GET,HEAD,DELETE")
      local conc = load(p_ka, "/f/close-after/conc{i}?ms={m}", 300, 8, "GET,HEAD,DELETE")
      local after = A.stats()
      local resent = stale() - stale0
      print(("\n[keep-alive race] sequential %d/%d ok, concurrent %d/%d ok; origin: %d requests, %d connections;"
        .. " %d requests met a closing connection and were sent again")
        :format(seq.ok, seq.n, conc.ok, conc.n, after.requests - before.requests, after.conns - before.conns, resent))
      assert.is_true(resent > 0, "the race never happened") -- else this test proves nothing
      assert.same({}, seq.errors)
      assert.same({}, conc.errors)
      assert.equal(200, seq.ok)
      assert.equal(300, conc.ok)
    end)

    it("POSTs are not sent again: a 502 when one met a closing connection, nothing worse", function()
      -- the origin closes at once: most closes are seen before the reuse
      -- (by the idle event, or the check as a connection is taken)
      local seq = load(p_ka, "/f/close-after/post-seq{i}?ms=0", 100, 1, "POST")
      local conc = load(p_ka, "/f/close-after/post-conc{i}?ms=0", 100, 8, "POST")
      print(("\n[keep-alive race, POST] sequential: %d of 100 ok, %d x 502; concurrent: %d of 100 ok, %d x 502")
        :format(seq.ok, seq.statuses["502"] or 0, conc.ok, conc.statuses["502"] or 0))
      for _, r in ipairs({ seq, conc }) do
        assert.equal(0, r.failed, cjson.encode(r.errors))
        assert.equal(100, r.ok + (r.statuses["502"] or 0))
        assert.is_true(r.ok >= 50, r.ok)
      end
    end)

    -- the origin reads the next request on a kept connection, then closes
    -- without a byte: as if it closed while idle, or crashed on the request
    local function after_close_next(name, req)
      assert.equal(200, assert(helpers.request(p_ka, { path = "/f/close-next/prime-" .. name })).status)
      req.path = "/f/close-next/" .. name
      local res = assert(helpers.request(p_ka, req))
      return res.status, A.saw(req.path)
    end

    it("a GET is sent again: 200, the origin saw it twice", function()
      local status, saw = after_close_next("get", {})
      assert.equal(200, status)
      assert.equal(2, saw)
    end)

    it("a POST is not (RFC 9110 9.2.2): 502, the origin saw it once", function()
      local status, saw = after_close_next("post", { method = "POST" })
      assert.equal(502, status)
      assert.equal(1, saw)
      status, saw = after_close_next("post-read", { method = "POST", body = "abc", headers = { ["X-Read-Body"] = "1" } })
      assert.equal(502, status)
      assert.equal(1, saw)
      status, saw = after_close_next("post-streamed", { method = "POST", body = "abc" })
      assert.equal(502, status)
      assert.equal(1, saw)
      assert.truthy(m:wait_error_log("origin closed the connection without answering"))
    end)

    it("a POST a script calls retryable is", function()
      local status, saw = after_close_next("post-retryable", { method = "POST", headers = { ["X-Retryable"] = "1" } })
      assert.equal(200, status)
      assert.equal(2, saw)
    end)
  end)

  describe("6. a name that moves, then vanishes, under requests", function()
    local dns, O1, O2, m2, port

    lazy_setup(function()
      port = helpers.free_port()
      O1 = start_fault({ "--healthy", "--port", tostring(port) })
      O2 = start_fault({ "--healthy", "--port", tostring(port), "--host", "127.0.0.2" }, "127.0.0.2")
      dns = start_dns({ ["app.test"] = { a = { "127.0.0.1" }, ttl = 1 } })
      m2 = helpers.start_moxy({
        upstreams = { app = { servers = { "app.test:" .. port }, resolve = "1s", passive = false } },
        resolver = { nameservers = { dns.addr }, timeout = "1s" },
        timeouts = { connect = "1s", upstream = "1s" },
        log = { level = "info" },
      })
    end)

    -- requests one after another for secs (or until stop() is true)
    -- -> requests, failures (not 200)
    local function run_for(secs, stop)
      local n, failed, deadline = 0, 0, helpers.now() + secs
      repeat
        n = n + 1
        local res = helpers.request(m2.port, { path = "/f/ok/dns", timeout = 5 * S })
        if not res or res.status ~= 200 then failed = failed + 1 end
        if stop and stop() then break end
        helpers.sleep(0.02)
      until helpers.now() >= deadline
      return n, failed
    end

    it("moves: new requests reach the new address within `resolve`, none fails", function()
      assert.equal(0, select(2, run_for(0.3)))
      assert.is_true(O1.saw("/f/ok/dns") > 0)
      local t0 = helpers.now()
      dns.set({ ["app.test"] = { a = { "127.0.0.2" }, ttl = 1 } })
      local n, failed = run_for(4 * S, function() return O2.saw("/f/ok/dns") > 0 end)
      local dt = helpers.now() - t0
      print(("\n[dns move] %d requests while the name moved, %d failed; at the new address after %.2f s")
        :format(n, failed, dt))
      assert.equal(0, failed)
      assert.is_true(O2.saw("/f/ok/dns") > 0, "no request reached 127.0.0.2")
      assert.is_true(dt < 3 * S, dt)
      -- the old origin goes away: no request is lost on its old connections
      O1.proc:stop("KILL")
      local r = load(m2.port, "/f/ok/moved{i}", 100, 4)
      assert.same({}, r.errors)
      assert.equal(100, r.ok)
    end)

    it("vanishes (NXDOMAIN, then no answer): the last address serves on, a warning, no failure", function()
      dns.set({})
      local n1, failed1 = run_for(2.5 * S)
      assert.truthy(m2:wait_error_log("cannot resolve app.test:" .. port))
      assert.truthy(m2:wait_error_log("keeping its last addresses (127.0.0.2)"))
      dns.set({ __silent = true })
      local n2, failed2 = run_for(2.5 * S)
      assert.truthy(m2:wait_error_log("no answer from the name servers within 1s"))
      print(("\n[dns vanish] NXDOMAIN: %d requests, %d failed; silent name server: %d requests, %d failed")
        :format(n1, failed1, n2, failed2))
      assert.equal(0, failed1)
      assert.equal(0, failed2)
      assert.is_true(m2:alive())
    end)
  end)

  describe("7. a server that never answers", function()
    it("listens and never accepts: 504 after a timeout, the other peer takes over", function()
      local res, dt = timed(p_listen, "/x")
      assert.equal(504, res.status)
      assert.is_true(dt >= 0.9 and dt < 3 * S, dt)
      for i = 1, 2 do
        res = timed(p_listen2, "/f/ok/listen2-" .. i)
        assert.equal(200, res.status)
      end
    end)

    it("accepts and never reads: 504 after timeouts.upstream, the other peer takes over", function()
      local res, dt = timed(p_noread, "/x")
      assert.equal(504, res.status)
      assert.is_true(dt >= 0.9 and dt < 3 * S, dt)
      for i = 1, 2 do
        res = timed(p_noread2, "/f/ok/noread2-" .. i)
        assert.equal(200, res.status)
      end
    end)
  end)

  it("moxy is alive and well after all of it; the cut responses were counted", function()
    assert.is_true(m:alive())
    -- pool one: rst-body, rst-chunked, rst-eof, the two over HTTP/2,
    -- short-body, hang-body and its HTTP/2 twin; pool tls: two
    assert.equal(8, helpers.metric(m.admin_port, "moxy_pool_responses_cut_total", { pool = "one" }))
    assert.equal(2, helpers.metric(m.admin_port, "moxy_pool_responses_cut_total", { pool = "tls" }))
    assert.equal(0, helpers.metric(m.admin_port, "moxy_pool_responses_cut_total", { pool = "two" }))
    assert.equal(200, timed(p_two, "/f/ok/last").status)
  end)
end)
