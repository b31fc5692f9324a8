-- TLS from moxy to origins: a pool's `tls` verifies the origin's certificate
-- (chain and name: the pool's tls.name, the server's DNS name, or its IP
-- address), keeps its connections alive, and its health checks speak TLS
-- too.  The TLS origin here is a second moxy terminating TLS in front of
-- spec/support/origin.py, with a certificate made by openssl.
local helpers = require "spec.helpers"

local S = helpers.scale

describe("TLS to origins", function()
  local dir, origin, front, front_addr, m
  local fp = helpers.free_port()

  local function metric(port, pattern)
    local res = helpers.request(port, { path = "/metrics" })
    return tonumber(((res and res.body) or ""):match(pattern:gsub("[%{%}%.%-\"]", "%%%0") .. " (%d+)"))
  end

  lazy_setup(function()
    dir = helpers.tmpdir("otls")
    helpers.make_cert(dir, "o", "ec", "origin.test", { "origin.test", "IP:127.0.0.1" })
    origin = helpers.start_origin()
    front_addr = "127.0.0.1:" .. fp
    front = helpers.start_moxy({
      upstreams = { app = { servers = { origin.addr } } },
      listen = { { addr = front_addr, tls = { certificates = { { cert = dir .. "/o.pem", key = dir .. "/o.key" } } } } },
      admin = {},
    })
    local ca = dir .. "/o.pem"
    m = helpers.start_moxy({
      upstreams = {
        named = { servers = { front_addr }, tls = { ca = ca, name = "origin.test" } },
        by_ip = { servers = { front_addr }, tls = { ca = ca } },
        wrong_name = { servers = { front_addr }, tls = { ca = ca, name = "other.test" } },
        wrong_checked = { servers = { front_addr }, tls = { ca = ca, name = "other.test" },
                          health = { path = "/echo/health", interval = "200ms", unhealthy = 1 } },
        untrusted = { servers = { front_addr }, tls = true },
        unverified = { servers = { front_addr }, tls = { verify = false } },
        checked = { servers = { front_addr }, tls = { ca = ca, name = "origin.test" },
                    health = { path = "/echo/health-tls", interval = "200ms", healthy = 1, unhealthy = 1 } },
      },
      default_upstream = "named",
      scripts = { "pick.lua" },
    }, { files = { ["pick.lua"] = [[
      return { on_request = function(txn)
        local verify = txn.req.path:match("^/fetch/(%w+)$")
        if verify then
          local url = "https://127.0.0.1:]] .. fp .. [[/echo/fetched"
          local res, err = moxy.http.request({ url = url, verify = verify == "yes" })
          if not res then return txn:respond(502, "error: " .. err .. "\n") end
          return txn:respond(200, res.status .. " " .. res.body)
        end
        local pool, rest = txn.req.path:match("^/([%w_]+)(/.*)$")
        if pool then
          txn.upstream:pick(pool)
          txn.req.path = rest
        end
      end }
    ]] } })
  end)

  lazy_teardown(function() helpers.stop_all() end)

  local function get(path)
    return assert(helpers.request(m.port, { path = path }))
  end

  it("verifies the origin's certificate against the pool's CA and name, or its IP address", function()
    local res = get("/named/echo/a")
    assert.equal(200, res.status)
    assert.matches('"X-Forwarded-Proto", "https"', res.body, 1, true) -- as the TLS front saw it
    assert.equal(200, get("/by_ip/echo/b").status)
    assert.equal(200, get("/unverified/echo/c").status)
  end)

  it("refuses an origin whose certificate does not name it, or that no trusted CA signed (502, logged)", function()
    assert.equal(502, get("/wrong_name/echo/x").status)
    assert.truthy(m:wait_error_log("(pool wrong_name): TLS handshake failed: hostname mismatch"))
    assert.equal(502, get("/untrusted/echo/y").status)
    assert.truthy(m:wait_error_log("(pool untrusted): TLS handshake failed: self-signed certificate"))
    assert.same({}, origin:saw("^/echo/[xy]$"))
  end)

  it("keeps TLS connections alive across requests", function()
    get("/named/echo/warm")
    local before = metric(front.admin_port, 'moxy_tls_handshakes_total{kind="full"}')
    for i = 1, 5 do assert.equal(200, get("/named/echo/ka" .. i).status) end
    local after = metric(front.admin_port, 'moxy_tls_handshakes_total{kind="full"}')
    assert.is_true(after - before <= 1, "full handshakes for 5 requests: " .. (after - before))
  end)

  it("moxy.http calls https:// URLs, verifying with the system's CAs unless told not to", function()
    local res = assert(helpers.request(m.port, { path = "/fetch/no" }))
    assert.equal(200, res.status, res.body)
    assert.matches('^200 {"method": "GET", "uri": "/echo/fetched"', res.body)
    assert.matches('"X-Forwarded-Proto", "https"', res.body, 1, true)
    res = assert(helpers.request(m.port, { path = "/fetch/yes" }))
    assert.equal(502, res.status)
    assert.equal("error: TLS handshake failed: self-signed certificate\n", res.body)
  end)

  it("checks health over TLS, with the same verification", function()
    assert.truthy(helpers.wait_until(function() return #origin:saw("^/echo/health%-tls$") > 0 end, 3 * S, 0.05))
    assert.truthy(m:wait_error_log("upstream wrong_checked: peer " .. front_addr
      .. " is unhealthy: TLS handshake failed: hostname mismatch", 3 * S))
    assert.same({}, origin:saw("^/echo/health$"))
  end)
end)

describe("TLS to origins, configuration", function()
  it("names the key of a CA file that cannot be read", function()
    local code, out = helpers.run_moxy_check("return { listen = { '127.0.0.1:1' }, pid_file = false,\n"
      .. "upstreams = { app = { servers = { '127.0.0.1:2' }, tls = { ca = '/nonexistent/ca.pem' } } } }\n")
    assert.equal(1, code)
    assert.matches("moxy.lua:2: upstreams.app.tls.ca: cannot open", out, 1, true)
    code, out = helpers.run_moxy_check("return { listen = { '127.0.0.1:1' }, pid_file = false,\n"
      .. "upstreams = { app = { servers = { '127.0.0.1:2' }, tls = { verify = 'yes' } } } }\n")
    assert.equal(1, code)
    assert.matches("upstreams.app.tls.verify: expected a boolean", out, 1, true)
  end)
end)

-- Sessions toward origins are resumed per peer: a new connection to the
-- same origin (its address, the SNI, the name checked) resumes the session
-- the last one was given, over TLS 1.3 and TLS 1.2; a connection with
-- another name or address is not offered it.  Pools here keep no idle
-- connection, moxy.http calls none (keepalive = false): every request is a
-- new handshake.  The origin, a TLS moxy, answers each request with
-- X-Resumed: "<version> <resumed>" as its own handshake went.
describe("TLS to origins, session resumption", function()
  local dir, front, m, keys, p13, p12

  lazy_setup(function()
    dir = helpers.tmpdir("otlsr")
    helpers.make_cert(dir, "o", "ec", "origin.test", { "origin.test", "alias.test", "IP:127.0.0.1" })
    keys = dir .. "/ticket.keys"
    out, code = helpers.sh("openssl rand -out " .. keys .. " 80")
    assert(code == 0, out)
    local origin = helpers.start_origin()
    p13, p12 = helpers.free_port(), helpers.free_port()
    local certs = { { cert = dir .. "/o.pem", key = dir .. "/o.key" } }
    front = helpers.start_moxy({
      upstreams = { app = { servers = { origin.addr } } },
      listen = {
        { addr = "127.0.0.1:" .. p13, tls = { certificates = certs } },
        { addr = "127.0.0.1:" .. p12, tls = { certificates = certs, protocols = { "TLSv1.2" }, ticket_keys = keys } },
      },
      scripts = { "resumed.lua" },
    }, { files = { ["resumed.lua"] = [[
      return { on_response = function(txn)
        local t = txn.client.tls
        txn.resp.headers:set("X-Resumed", t.version .. " " .. tostring(t.resumed))
      end }
    ]] } })
    local ca = dir .. "/o.pem"
    local function pool(port, name)
      return { servers = { "127.0.0.1:" .. port }, keepalive = 0, tls = { ca = ca, name = name } }
    end
    m = helpers.start_moxy({
      upstreams = {
        v13 = pool(p13, "origin.test"),
        v12 = pool(p12, "origin.test"),
        alias = pool(p13, "alias.test"),
      },
      default_upstream = "v13",
      scripts = { "pick.lua" },
    }, { files = { ["pick.lua"] = [[
      return { on_request = function(txn)
        local host, port = txn.req.path:match("^/fetch/([%w%.]+)/(%d+)$")
        if host then
          local res, err = moxy.http.request({ url = "https://" .. host .. ":" .. port .. "/echo/fetched",
                                               verify = false, keepalive = false })
          if not res then return txn:respond(502, "error: " .. err) end
          return txn:respond(200, tostring(res.headers["x-resumed"]))
        end
        local name, rest = txn.req.path:match("^/([%w_]+)(/.*)$")
        txn.upstream:pick(name)
        txn.req.path = rest
      end }
    ]] } })
  end)

  lazy_teardown(function() helpers.stop_all() end)

  -- what the origin saw of the handshake of a request through pool
  local function via(pool, path)
    local res = assert(helpers.request(m.port, { path = "/" .. pool .. path }))
    assert.equal(200, res.status, res.body)
    return res:header("X-Resumed")
  end

  -- ... of a moxy.http call to https://host:port
  local function fetch(host, port)
    local res = assert(helpers.request(m.port, { path = "/fetch/" .. host .. "/" .. port }))
    assert.equal(200, res.status, res.body)
    return res.body
  end

  it("resumes the last session of the same origin on each new connection, TLS 1.3 and TLS 1.2", function()
    assert.equal("TLSv1.3 false", via("v13", "/echo/a"))
    for i = 1, 3 do assert.equal("TLSv1.3 true", via("v13", "/echo/a" .. i)) end
    assert.equal("TLSv1.2 false", via("v12", "/echo/b"))
    for i = 1, 3 do assert.equal("TLSv1.2 true", via("v12", "/echo/b" .. i)) end
  end)

  it("offers a session to no other name or address", function()
    via("v13", "/echo/warm")
    -- another pool naming the same address otherwise
    assert.equal("TLSv1.3 false", via("alias", "/echo/c"))
    assert.equal("TLSv1.3 true", via("alias", "/echo/c1"))
    -- one client side (moxy.http's): by IP address (no SNI), by name, at another port
    assert.equal("TLSv1.3 false", fetch("127.0.0.1", p13))
    assert.equal("TLSv1.3 true", fetch("127.0.0.1", p13))
    assert.equal("TLSv1.3 false", fetch("localhost", p13))
    assert.equal("TLSv1.3 true", fetch("localhost", p13))
    assert.equal("TLSv1.2 false", fetch("127.0.0.1", p12))
    assert.equal("TLSv1.3 true", fetch("127.0.0.1", p13)) -- each peer keeps its own
  end)

  it("keeps the new session a TLS 1.2 origin sends when it resumes an older one", function()
    assert.matches("^TLSv1.2 ", via("v12", "/echo/d"))
    assert.equal("TLSv1.2 true", via("v12", "/echo/d1"))
    -- a new ticket key first, the old one second: the old ticket still
    -- resumes, and a ticket under the new key comes with it
    local out, code = helpers.sh(string.format("openssl rand -out %s.new 80 && cat %s.new %s > %s.both && mv %s.both %s",
      keys, keys, keys, keys, keys, keys))
    assert(code == 0, out)
    front:signal("HUP")
    assert.truthy(helpers.wait_until(function()
      return front:error_text():match("reload: [^\n]*%(%d+%.%d+ s%)")
    end, 5 * S, 0.05), front:error_text())
    assert.equal("TLSv1.2 true", via("v12", "/echo/d2"))
    assert.equal("TLSv1.2 true", via("v12", "/echo/d3"))
  end)
end)

describe("TLS to origins, a request body slower than the handshake's timeout", function()
  -- the handshake arms the read event with timeouts.connect; after it, event_add with
  -- no timeout (the read timeout starts once the body is sent) kept that one pending:
  -- a body still coming timeouts.connect after the handshake got 504 "origin read timed out"
  local dir, m

  lazy_setup(function()
    dir = helpers.tmpdir("otls-slow")
    helpers.make_cert(dir, "o", "ec", "origin.test", { "origin.test" })
    local origin = helpers.start_origin()
    local fp = helpers.free_port()
    helpers.start_moxy({
      upstreams = { app = { servers = { origin.addr } } },
      listen = { { addr = "127.0.0.1:" .. fp, tls = { certificates = { { cert = dir .. "/o.pem", key = dir .. "/o.key" } } } } },
    })
    m = helpers.start_moxy({
      upstreams = { tls = { servers = { "127.0.0.1:" .. fp }, keepalive = 0,
                            tls = { ca = dir .. "/o.pem", name = "origin.test" } } },
      timeouts = { connect = "400ms" },
    })
  end)

  lazy_teardown(function() helpers.stop_all() end)

  it("is not cut at the handshake's timeout", function()
    local head = "POST /echo/slow-tls HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\nConnection: close\r\n\r\n"
    local text = helpers.raw(m.port, { head .. "12345", "67890" }, { delay = 1.0, timeout = 5 * S })
    local res = helpers.parse_responses(text, { "POST" })[1]
    assert(res, "no response: " .. text)
    assert.equal(200, res.status, text .. m:stderr())
    assert.equal(10, helpers.echo(res).body_length)
  end)
end)
