-- limits.connections_per_client: client connections one client address may
-- hold open at once, across workers; refused at accept, before TLS or HTTP.
-- And the deadline a connection's TLS handshake (with its PROXY header) is
-- held to: timeouts.client_header from the accept, however the bytes come.
local helpers = require "spec.helpers"

local S = helpers.scale

-- an HTTP/2 client's first bytes: the preface and an empty SETTINGS frame
local H2_START = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" .. "\0\0\0\4\0\0\0\0\0"
-- the start of a TLS record of 512 bytes carrying a ClientHello, of which
-- only these come
local HALF_HELLO = "\22\3\1\2\0" .. "\1\0\1\252\3\3" .. string.rep("\7", 32)

local function connect(port, src)
  return assert(helpers.connection(port, { bind = src }))
end

local function open_n(port, n, src, first)
  local t = {}
  for i = 1, n do
    local c = connect(port, src)
    if first then assert(c:send(type(first) == "function" and first(i) or first)) end
    t[#t + 1] = c
  end
  return t
end

local function close_all(t)
  for _, c in ipairs(t) do c:close() end
end

-- every connection of t still open (nothing closed it within a short wait)
local function all_open(t)
  for i, c in ipairs(t) do
    local closed = c:wait_closed(i == 1 and 0.3 * S or 0.01)
    if closed then return false, i end
  end
  return true
end

describe("limits.connections_per_client", function()
  local origin, m, plain, pp, tlsp, dir

  local function metric(name) return helpers.metric(m.admin_port, name) or 0 end

  -- the workers accepted every connection opened so far (n of them open)
  local function settle(n)
    return helpers.wait_until(function() return metric("moxy_connections") == n end, 5 * S, 0.02)
  end

  lazy_setup(function()
    dir = helpers.tmpdir("climit")
    helpers.make_cert(dir, "a", "ec", "a.test", { "a.test" })
    origin = helpers.start_origin()
    plain, pp, tlsp = helpers.free_port(), helpers.free_port(), helpers.free_port()
    m = helpers.start_moxy({
      workers = 2,
      upstreams = { app = { servers = { origin.addr } } },
      admin = {},
      trusted_proxies = { "127.0.0.3" },
      limits = { connections_per_client = 20 },
      listen = {
        { addr = "127.0.0.1:" .. plain, http2 = true },
        { addr = "127.0.0.1:" .. pp, name = "pp", proxy_protocol = true },
        { addr = "127.0.0.1:" .. tlsp, tls = { certificates = { { cert = dir .. "/a.pem", key = dir .. "/a.key" } } } },
      },
    })
  end)

  lazy_teardown(function() helpers.stop_all() end)

  after_each(function()
    -- what a case left open is closed, and its places given back
    assert(settle(0), "connections still open after the case")
    assert.equal(0, metric("moxy_client_addresses"))
  end)

  it("keeps 20 idle connections from one address and closes the 21st at once", function()
    local before = metric("moxy_client_connections_refused_total")
    local t = open_n(plain, 20, "127.0.0.1")
    assert(settle(20))
    assert.equal(1, metric("moxy_client_addresses"))
    local c = connect(plain, "127.0.0.1")
    local t0 = helpers.now()
    local closed, got = c:wait_closed(2 * S)
    assert.is_true(closed)
    assert.equal("", got) -- nothing is written: closed before any byte of any protocol
    assert.is_true(helpers.now() - t0 < 1 * S)
    assert.is_true(all_open(t))
    assert.equal(before + 1, metric("moxy_client_connections_refused_total"))
    -- the 20 still work
    local res = assert(t[1]:request({ path = "/echo" }))
    assert.equal(200, res.status)
    assert(m:wait_error_log("client 127.0.0.1: 20 connections open (limits.connections_per_client); refusing"))
    close_all(t)
  end)

  it("logs refusals at most once a second per worker, with the count of the others", function()
    helpers.sleep(1.1) -- past the last case's line
    local lines0 = select(2, m:error_text():gsub("limits.connections_per_client", ""))
    local before = metric("moxy_client_connections_refused_total")
    local t = open_n(plain, 20, "127.0.0.1")
    assert(settle(20))
    -- 20: each of the two workers (SO_REUSEPORT spreads them) refuses more than one
    for _ = 1, 20 do
      local c = connect(plain, "127.0.0.1")
      assert.is_true((c:wait_closed(2 * S)))
    end
    assert.equal(before + 20, metric("moxy_client_connections_refused_total"))
    helpers.sleep(1.2) -- the log is flushed; the next refusal may log again
    local text = m:error_text()
    local lines = select(2, text:gsub("limits.connections_per_client", "")) - lines0
    assert.is_true(lines >= 1 and lines <= 2, "lines: " .. lines) -- two workers, one line each at most
    local c = connect(plain, "127.0.0.1")
    assert.is_true((c:wait_closed(2 * S)))
    -- the next line says how many went unlogged meanwhile (on its worker)
    assert(helpers.wait_until(function()
      local n = select(2, m:error_text():gsub("limits.connections_per_client", "")) - lines0
      return n > lines
    end, 3 * S, 0.05))
    assert.is_truthy(m:error_text():find("refusing %([1-9]%d* more refused since the last line%)"))
    close_all(t)
  end)

  it("gives closed connections' places back", function()
    local t = open_n(plain, 20, "127.0.0.1")
    assert(settle(20))
    for i = 1, 5 do t[i]:close() end
    assert(settle(15))
    local more = open_n(plain, 5, "127.0.0.1")
    assert(settle(20))
    assert.is_true(all_open(more))
    local c = connect(plain, "127.0.0.1")
    assert.is_true((c:wait_closed(2 * S)))
    close_all(t)
    close_all(more)
  end)

  it("counts another client address apart", function()
    local t = open_n(plain, 20, "127.0.0.1")
    local o = open_n(plain, 20, "127.0.0.2")
    assert(settle(40))
    assert.equal(2, metric("moxy_client_addresses"))
    assert.is_true(all_open(o))
    assert.is_true((connect(plain, "127.0.0.2"):wait_closed(2 * S)))
    assert.is_true(all_open(t))
    close_all(t)
    close_all(o)
  end)

  it("exempts addresses in trusted_proxies", function()
    local t = open_n(plain, 40, "127.0.0.3")
    assert(settle(40))
    assert.is_true(all_open(t))
    assert.equal(0, metric("moxy_client_addresses"))
    close_all(t)
  end)

  it("counts a PROXY protocol listener's source address, not the socket's", function()
    local hdr = "PROXY TCP4 198.51.100.7 192.0.2.1 4000 443\r\n"
    local t = open_n(pp, 20, "127.0.0.1", hdr)
    assert(settle(20))
    assert(helpers.wait_until(function() return metric("moxy_client_addresses") == 1 end, 3 * S, 0.02))
    -- the same source, over the limit: closed once its header is read
    local c = connect(pp, "127.0.0.1")
    assert(c:send(hdr))
    local closed, got = c:wait_closed(2 * S)
    assert.is_true(closed)
    assert.equal("", got)
    -- another source through the same socket address (21 from 127.0.0.1 now)
    local o = connect(pp, "127.0.0.1")
    assert(o:send("PROXY TCP4 198.51.100.8 192.0.2.1 4000 443\r\n"))
    assert.is_false((o:wait_closed(0.3 * S)))
    local res = assert(o:request({ path = "/echo" }))
    assert.equal(200, res.status)
    -- IPv4-mapped IPv6 is its IPv4 address
    local v6 = connect(pp, "127.0.0.1")
    assert(v6:send("PROXY TCP6 ::ffff:198.51.100.7 ::1 4000 443\r\n"))
    assert.is_true((v6:wait_closed(2 * S)))
    assert.is_true(all_open(t))
    close_all(t)
    o:close()
  end)

  it("counts IPv6 clients by their /64", function()
    local t = open_n(pp, 20, "127.0.0.1", function(i)
      return string.format("PROXY TCP6 2001:db8:1:2::%x ::1 4000 443\r\n", i)
    end)
    assert(settle(20))
    assert(helpers.wait_until(function() return metric("moxy_client_addresses") == 1 end, 3 * S, 0.02))
    helpers.sleep(1.1) -- past the once-a-second line of an earlier case: this refusal is logged
    local c = connect(pp, "127.0.0.1")
    assert(c:send("PROXY TCP6 2001:db8:1:2:ffff:ffff:ffff:ffff ::1 4000 443\r\n"))
    assert.is_true((c:wait_closed(2 * S)))
    local o = connect(pp, "127.0.0.1")
    assert(o:send("PROXY TCP6 2001:db8:1:3::1 ::1 4000 443\r\n"))
    assert.is_false((o:wait_closed(0.3 * S)))
    assert(m:wait_error_log("client 2001:db8:1:2::/64: 20 connections open"))
    close_all(t)
    o:close()
  end)

  it("holds HTTP/2 connections to it, and gives their places back when they close", function()
    local t = open_n(plain, 20, "127.0.0.1", H2_START)
    for _, c in ipairs(t) do
      -- moxy's SETTINGS: the connection speaks HTTP/2
      local got = assert(c:receive_some(3 * S))
      assert.equal("\4", got:sub(4, 4))
    end
    assert(settle(20))
    assert.equal(20, helpers.metric(m.admin_port, "moxy_connections_by_protocol", { protocol = "h2" }))
    local c = connect(plain, "127.0.0.1")
    local closed, got = c:wait_closed(2 * S)
    assert.is_true(closed)
    assert.equal("", got)
    assert.is_true(all_open(t))
    close_all(t)
  end)

  it("refuses a TLS connection over the limit before its handshake", function()
    local t = open_n(tlsp, 20, "127.0.0.1")
    assert(settle(20))
    local c = connect(tlsp, "127.0.0.1")
    local closed, got = c:wait_closed(2 * S)
    assert.is_true(closed)
    assert.equal("", got)
    local out = helpers.sh(string.format("timeout %d curl -sk -o /dev/null -w '%%{http_code}' https://127.0.0.1:%d/echo",
      math.ceil(5 * S), tlsp))
    assert.equal("000", out)
    close_all(t)
    assert(settle(0))
    out = helpers.sh(string.format("timeout %d curl -sk -o /dev/null -w '%%{http_code}' https://127.0.0.1:%d/echo",
      math.ceil(5 * S), tlsp))
    assert.equal("200", out)
  end)

  it("takes a new limit at a reload: open connections keep their places", function()
    local function reload(limit)
      local reloads = select(2, m:error_text():gsub("reload: [^\n]*%(%d+%.%d+ s%)", ""))
      local src = m.source:gsub("connections_per_client = %d+", "connections_per_client = " .. limit)
      helpers.write_file(m.conf_path, src)
      m:signal("HUP")
      assert(helpers.wait_until(function()
        return select(2, m:error_text():gsub("reload: [^\n]*%(%d+%.%d+ s%)", "")) > reloads
      end, 5 * S, 0.05), m:error_text())
    end
    local t = open_n(plain, 20, "127.0.0.1")
    assert(settle(20))
    reload(10)
    assert.is_true(all_open(t))
    assert.is_true((connect(plain, "127.0.0.1"):wait_closed(2 * S)))
    for i = 1, 15 do t[i]:close() end
    assert(settle(5))
    local more = open_n(plain, 5, "127.0.0.1")
    assert(settle(10))
    assert.is_true(all_open(more))
    assert.is_true((connect(plain, "127.0.0.1"):wait_closed(2 * S)))
    reload(20)
    close_all(t)
    close_all(more)
  end)

  it("names the file, line and key of a bad value", function()
    local code, out = helpers.run_moxy_check("return { pid_file = false,\n"
      .. "upstreams = { app = { servers = { '127.0.0.1:2' } } },\n"
      .. "limits = { connections_per_client = -1 } }\n")
    assert.equal(1, code)
    assert.matches("moxy.lua:3: limits.connections_per_client: expected a number in 0..1000000, got -1", out, 1, true)
  end)

  it("keeps the table empty when every connection is gone, whatever ended it", function()
    -- TLS failures, bad PROXY headers, 400s, and clients that reset
    local t = open_n(tlsp, 5, "127.0.0.1", "not a TLS hello at all\r\n\r\n")
    local b = open_n(pp, 5, "127.0.0.1", "PROXY TCP9 bad\r\n")
    local h = open_n(plain, 5, "127.0.0.1", "GET / HTTP/1.1\r\nHost: \1\r\n\r\n")
    for _, set in ipairs({ t, b, h }) do
      for _, c in ipairs(set) do assert.is_true((c:wait_closed(3 * S))) end
    end
    close_all(t)
    close_all(b)
    close_all(h)
  end)
end)

describe("limits.connections_per_client's default", function()
  local m

  lazy_setup(function()
    m = helpers.start_moxy({ workers = 2, admin = {}, upstreams = { app = { servers = { "127.0.0.1:9" } } } })
  end)

  lazy_teardown(function() helpers.stop_all() end)

  it("is 1024", function()
    -- 1,025 sockets are past what the spec's select() can watch: a Python
    -- client holds them, says whether the 1,025th was closed at once and
    -- whether the 1,024 stayed open
    local py = [[
import socket, sys, time
port, n = int(sys.argv[1]), int(sys.argv[2])
held = [socket.create_connection(("127.0.0.1", port)) for _ in range(n)]
time.sleep(0.3)
extra = socket.create_connection(("127.0.0.1", port))
extra.settimeout(3)
try:
    closed = extra.recv(1) == b""
except ConnectionResetError:
    closed = True
except socket.timeout:
    closed = False
still = 0
for s in held:
    s.setblocking(False)
    try:
        s.recv(1)
    except BlockingIOError:
        still += 1
print("closed" if closed else "open", still)
]]
    local out = helpers.sh("python3 -c " .. helpers.shell_quote(py) .. " " .. m.port .. " 1024")
    assert.equal("closed 1024", out:match("^(%S+ %d+)"), out)
    assert.equal(1, helpers.metric(m.admin_port, "moxy_client_connections_refused_total"))
  end)
end)

describe("the handshake's deadline", function()
  local m, tlsp, plain, dir

  lazy_setup(function()
    dir = helpers.tmpdir("climit")
    helpers.make_cert(dir, "a", "ec", "a.test", { "a.test" })
    tlsp, plain = helpers.free_port(), helpers.free_port()
    m = helpers.start_moxy({
      upstreams = { app = { servers = { "127.0.0.1:9" } } },
      admin = {},
      timeouts = { client_header = "1s" },
      listen = {
        { addr = "127.0.0.1:" .. tlsp, tls = { certificates = { { cert = dir .. "/a.pem", key = dir .. "/a.key" } } } },
        "127.0.0.1:" .. plain,
      },
    })
  end)

  lazy_teardown(function() helpers.stop_all() end)

  -- seconds until moxy closes c while feed(i) is sent every 0.5 s (nil: not within 6 s)
  local function closed_after(c, feed)
    local t0 = helpers.now()
    for i = 1, 12 do
      if feed then c:send(feed(i)) end
      local closed = c:wait_closed(0.5)
      if closed then return helpers.now() - t0 end
    end
  end

  it("closes a TLS connection that sends nothing after timeouts.client_header", function()
    local s = closed_after(connect(tlsp))
    assert.is_truthy(s)
    assert.is_true(s >= 0.8 and s < 2 * S, "closed after " .. tostring(s))
  end)

  it("closes a TLS connection that sends half a ClientHello and stops", function()
    local c = connect(tlsp)
    assert(c:send(HALF_HELLO))
    local s = closed_after(c)
    assert.is_true(s ~= nil and s >= 0.8 and s < 2 * S, "closed after " .. tostring(s))
    assert(m:wait_error_log("TLS handshake not done within timeouts.client_header"))
  end)

  it("closes a TLS connection whose ClientHello comes a byte every 0.5 s", function()
    local c = connect(tlsp)
    assert(c:send(HALF_HELLO:sub(1, 5)))
    local s = closed_after(c, function(i) return HALF_HELLO:sub(5 + i, 5 + i) end)
    assert.is_true(s ~= nil and s >= 0.8 and s < 2 * S, "closed after " .. tostring(s))
  end)

  it("answers 408 to a request head that comes a byte every 0.5 s", function()
    local c = connect(plain)
    local head = "GET /slow HTTP/1.1\r\nHost: x\r\nX-A: " .. string.rep("a", 40)
    local t0 = helpers.now()
    local got = ""
    for i = 1, 12 do
      c:send(head:sub(i, i))
      local closed, b = c:wait_closed(0.5)
      got = got .. b
      if closed then break end
    end
    local s = helpers.now() - t0
    assert.matches("^HTTP/1.1 408", got)
    assert.is_true(s >= 0.8 and s < 2 * S, "closed after " .. tostring(s))
  end)
end)
