-- The real client address: trusted_proxies with X-Forwarded-For or
-- Forwarded (RFC 7239), and the PROXY protocol (v1 and v2) per listener.
-- /who answers what moxy decided: "ip port socket_ip socket_port".
local helpers = require "spec.helpers"
local bit = require "bit"

local WHO = [[
return {
  on_request = function(txn)
    if txn.req.path == "/who" then
      local c = txn.client
      return txn:respond(200, c.ip .. " " .. tostring(c.port) .. " " .. c.socket_ip .. " " .. c.socket_port)
    end
  end,
}
]]

-- "ip port socket_ip socket_port" -> a table
local function parse_who(body)
  local ip, port, sip, sport = assert(body):match("^(%S+) (%S+) (%S+) (%S+)$")
  assert(ip, "not a /who answer: " .. tostring(body))
  return { ip = ip, port = tonumber(port), socket_ip = sip, socket_port = tonumber(sport) }
end

-- GET /who with headers ({ {name, value}, ... }) on a new connection
local function who(port, headers)
  local res = assert(helpers.request(port, { path = "/who", headers = headers }))
  assert.equal(200, res.status)
  return parse_who(res.body)
end

local function xff(...)
  local list = {}
  for i, v in ipairs { ... } do list[i] = { "X-Forwarded-For", v } end
  return list
end

-- PROXY protocol v2 -------------------------------------------------------

local SIG = "\r\n\r\n\0\r\nQUIT\n"

local function be16(n) return string.char(bit.rshift(n, 8), bit.band(n, 255)) end

local function v4(s)
  local a, b, c, d = s:match("^(%d+)%.(%d+)%.(%d+)%.(%d+)$")
  return string.char(tonumber(a), tonumber(b), tonumber(c), tonumber(d))
end

-- 16 bytes of an IPv6 literal (hex groups, one "::")
local function v6(s)
  local head, tail = s:match("^(.-)::(.*)$")
  local function groups(t)
    local out = {}
    for g in t:gmatch("[^:]+") do out[#out + 1] = tonumber(g, 16) end
    return out
  end
  local h, t = groups(head or s), groups(tail or "")
  local all = {}
  for _, g in ipairs(h) do all[#all + 1] = g end
  for _ = 1, 8 - #h - #t do all[#all + 1] = 0 end
  for _, g in ipairs(t) do all[#all + 1] = g end
  local bytes = {}
  for _, g in ipairs(all) do bytes[#bytes + 1] = be16(g) end
  return table.concat(bytes)
end

local function tlv(typ, value) return string.char(typ) .. be16(#value) .. value end

-- A v2 header: command (0 LOCAL, 1 PROXY), family byte (0x11 TCP4, 0x21
-- TCP6, 0x00 unspecified), the address block and TLVs after it.
local function v2(cmd, fam, addrs, tlvs)
  local body = (addrs or "") .. (tlvs or "")
  return SIG .. string.char(0x20 + cmd, fam) .. be16(#body) .. body
end

local function v2_tcp4(src, dst, sport, dport, tlvs)
  return v2(1, 0x11, v4(src) .. v4(dst) .. be16(sport) .. be16(dport), tlvs)
end

local function v2_tcp6(src, dst, sport, dport, tlvs)
  return v2(1, 0x21, v6(src) .. v6(dst) .. be16(sport) .. be16(dport), tlvs)
end

local CLOSE_WHO = helpers.build_request({ path = "/who", headers = { Connection = "close" } })

-- Send bytes (a string or pieces) then GET /who with Connection: close on a
-- new connection; -> the /who table, or nil and what came back.
local function via(port, pieces, opts)
  if type(pieces) == "string" then pieces = { pieces } end
  local all = {}
  for i, p in ipairs(pieces) do all[i] = p end
  if not (opts and opts.request_in_last) then all[#all + 1] = CLOSE_WHO end
  local text, closed = helpers.raw(port, all, opts)
  local res = helpers.parse_responses(text or "")[1]
  if not res then return nil, text, closed end
  assert.equal(200, res.status)
  return parse_who(res.body)
end

describe("real client address", function()
  local origin, m, pp, plain

  lazy_setup(function()
    origin = helpers.start_origin()
    plain, pp = helpers.free_port(), helpers.free_port()
    m = helpers.start_moxy({
      listen = {
        { addr = "127.0.0.1:" .. plain, name = "plain" },
        { addr = "127.0.0.1:" .. pp, name = "pp", proxy_protocol = true },
      },
      upstreams = { app = { servers = { origin.addr } } },
      trusted_proxies = { "127.0.0.1", "10.0.0.0/8", "fd00::/8", "::ffff:192.168.0.0/112" },
      timeouts = { client_header = "1s" },
      scripts = { "who.lua" },
    }, { files = { ["who.lua"] = WHO } })
  end)

  lazy_teardown(function()
    helpers.stop_all()
  end)

  describe("X-Forwarded-For from a trusted peer", function()
    it("keeps the TCP peer without a header, and shows it as socket_ip/socket_port", function()
      local conn = assert(helpers.connection(plain))
      local _, lport = conn.sock:getsockname()
      local res = assert(conn:request({ path = "/who" }))
      conn:close()
      local w = parse_who(res.body)
      assert.same({ ip = "127.0.0.1", port = tonumber(lport), socket_ip = "127.0.0.1", socket_port = tonumber(lport) }, w)
    end)

    it("takes the right-most untrusted hop, skipping trusted ones", function()
      assert.equal("203.0.113.7", who(plain, xff("203.0.113.7")).ip)
      local w = who(plain, xff("198.51.100.1, 203.0.113.7, 10.0.0.5"))
      assert.equal("203.0.113.7", w.ip)
      assert.is_nil(tonumber(w.port)) -- "nil": the header gave no port
      assert.equal("127.0.0.1", w.socket_ip)
    end)

    it("walks a chain of several trusted proxies; all trusted: the left-most", function()
      assert.equal("198.51.100.4", who(plain, xff("198.51.100.4, 10.1.0.1, 10.2.0.1, 10.3.0.1")).ip)
      assert.equal("10.0.0.1", who(plain, xff("10.0.0.1, 10.0.0.2")).ip)
    end)

    it("reads every X-Forwarded-For header, in order, as one list", function()
      assert.equal("203.0.113.50", who(plain, xff("203.0.113.50", "10.0.0.1")).ip)
      assert.equal("203.0.113.51", who(plain, xff("198.51.100.9", "203.0.113.51, 10.0.0.9", "10.0.0.8")).ip)
    end)

    it("reads IPv6 hops with or without brackets and ports, and IPv4 ones with ports", function()
      local w = who(plain, xff("[2001:db8::1]:443"))
      assert.equal("2001:db8::1", w.ip)
      assert.equal(443, w.port)
      assert.equal("2001:db8::2", who(plain, xff("2001:db8::2")).ip)
      assert.equal("2001:db8::3", who(plain, xff("[2001:db8::3]")).ip)
      w = who(plain, xff("203.0.113.7:8080"))
      assert.same({ "203.0.113.7", 8080 }, { w.ip, w.port })
      -- trusted IPv6 hop (fd00::/8) skipped; addresses come out normalised
      assert.equal("2001:db8::4", who(plain, xff(" 2001:0db8:0:0::4 ,\t[fd00::1]:80 ")).ip)
      w = who(plain, xff("[fd00::1]:80, 10.0.0.1"))
      assert.same({ "fd00::1", 80 }, { w.ip, w.port })
    end)

    it("stops at an entry that does not parse: the client is the last trusted hop (as nginx)", function()
      assert.equal("127.0.0.1", who(plain, xff("garbage")).ip)
      assert.equal("127.0.0.1", who(plain, xff("203.0.113.7, garbage")).ip)
      assert.equal("10.0.0.3", who(plain, xff("garbage, 10.0.0.3")).ip)
      assert.equal("10.0.0.3", who(plain, xff("203.0.113.7, 999.1.1.1, 10.0.0.3")).ip)
      for _, bad in ipairs { "[2001:db8::1", "1.2.3.4:99999", "1.2.3.4:", "[::1]x", "unknown", "1.2.3", "::1::2" } do
        assert.equal("127.0.0.1", who(plain, xff("203.0.113.7, " .. bad)).ip, bad)
      end
      -- empty entries are skipped, not taken for garbage
      assert.equal("203.0.113.7", who(plain, xff(", ,203.0.113.7,, ")).ip)
    end)

    it("looks at 64 hops at most, from the right", function()
      local hops = {}
      for i = 70, 1, -1 do hops[#hops + 1] = "10.0.0." .. i end
      -- all 70 trusted: the walk ends at the 64th from the right
      assert.equal("10.0.0.64", who(plain, xff("203.0.113.1, " .. table.concat(hops, ", "))).ip)
      hops = {}
      for i = 63, 1, -1 do hops[#hops + 1] = "10.0.0." .. i end
      assert.equal("203.0.113.1", who(plain, xff("203.0.113.1, " .. table.concat(hops, ", "))).ip)
    end)

    it("decides per request on a keep-alive connection", function()
      local conn = assert(helpers.connection(plain))
      local seen = {}
      for _, h in ipairs { "203.0.113.1", false, "203.0.113.3" } do
        local res = assert(conn:request({ path = "/who", headers = h and xff(h) or nil }))
        seen[#seen + 1] = parse_who(res.body).ip
      end
      conn:close()
      assert.same({ "203.0.113.1", "127.0.0.1", "203.0.113.3" }, seen)
    end)

    it("sends the origin the client's X-Forwarded-For plus the connection's address", function()
      local e = helpers.echo(helpers.request(plain, { path = "/echo", headers = xff("203.0.113.7", "10.0.0.5") }))
      assert.equal("203.0.113.7, 10.0.0.5, 127.0.0.1", helpers.echo_value(e, "X-Forwarded-For"))
    end)

    it("logs the real client in the access log", function()
      helpers.request(plain, { path = "/echo", headers = { { "X-Forwarded-For", "203.0.113.77, 10.0.0.5" },
                                                           { "X-Request-Id", "realip-log-1" } } })
      local line = assert(m:wait_log("rid=realip-log-1"))
      assert.matches("^203%.0%.113%.77 %- %- %[", line)
    end)
  end)

  describe("the PROXY protocol", function()
    it("takes the source of a v1 TCP4 header; an untrusted source's X-Forwarded-For is ignored", function()
      local conn = assert(helpers.connection(pp))
      local _, lport = conn.sock:getsockname()
      assert(conn:send("PROXY TCP4 198.51.100.22 192.0.2.1 56324 443\r\n"))
      local res = assert(conn:request({ path = "/who", headers = xff("203.0.113.9") }))
      conn:close()
      assert.same({ ip = "198.51.100.22", port = 56324, socket_ip = "127.0.0.1", socket_port = tonumber(lport) },
        parse_who(res.body))
    end)

    it("takes the source of a v1 TCP6 header", function()
      local w = assert(via(pp, "PROXY TCP6 2001:db8::5 2001:db8::1 4000 443\r\n"))
      assert.same({ "2001:db8::5", 4000, "127.0.0.1" }, { w.ip, w.port, w.socket_ip })
    end)

    it("keeps the socket's address for v1 UNKNOWN", function()
      assert.equal("127.0.0.1", assert(via(pp, "PROXY UNKNOWN\r\n")).ip)
      assert.equal("127.0.0.1", assert(via(pp, "PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n")).ip)
    end)

    it("takes the source of a v2 PROXY header over IPv4, skipping its TLVs", function()
      local tlvs = tlv(0x02, "example.com") .. tlv(0x05, "unique-id-1") .. tlv(0xEA, "\1vpce-0123456789abcdef")
      local w = assert(via(pp, v2_tcp4("198.51.100.33", "192.0.2.1", 40001, 443, tlvs)))
      assert.same({ "198.51.100.33", 40001 }, { w.ip, w.port })
    end)

    it("takes the source of a v2 PROXY header over IPv6", function()
      local w = assert(via(pp, v2_tcp6("2001:db8::77", "2001:db8::1", 5555, 443, tlv(0x04, "\0\0\0"))))
      assert.same({ "2001:db8::77", 5555 }, { w.ip, w.port })
    end)

    it("keeps the socket's address for v2 LOCAL (with or without addresses) and the unspecified family", function()
      assert.equal("127.0.0.1", assert(via(pp, v2(0, 0x00))).ip)
      local addrs = v4("198.51.100.1") .. v4("192.0.2.1") .. be16(1) .. be16(2)
      assert.equal("127.0.0.1", assert(via(pp, v2(0, 0x11, addrs))).ip)
      assert.equal("127.0.0.1", assert(via(pp, v2(1, 0x00, nil, tlv(0x04, "x")))).ip)
    end)

    it("reads a header split across several writes, and one sent with the request", function()
      local w = assert(via(pp, { "PRO", "XY TCP4 198.51", ".100.22 192.0.2.1 56324 443\r", "\n" }, { delay = 0.05 }))
      assert.equal("198.51.100.22", w.ip)
      local h = v2_tcp4("198.51.100.44", "192.0.2.1", 1234, 443, tlv(0x02, "split.example"))
      w = assert(via(pp, { h:sub(1, 5), h:sub(6, 14), h:sub(15, 30), h:sub(31) }, { delay = 0.05 }))
      assert.equal("198.51.100.44", w.ip)
      w = assert(via(pp, { "PROXY TCP4 198.51.100.45 192.0.2.1 1 2\r\n" .. CLOSE_WHO }, { request_in_last = true }))
      assert.equal("198.51.100.45", w.ip)
    end)

    it("serves every request of a keep-alive connection as the header's source", function()
      local conn = assert(helpers.connection(pp))
      assert(conn:send(v2_tcp4("198.51.100.55", "192.0.2.1", 2222, 443)))
      local a = parse_who(assert(conn:request({ path = "/who" })).body)
      local b = parse_who(assert(conn:request({ path = "/who" })).body)
      local e = helpers.echo(conn:request({ path = "/echo" }))
      conn:close()
      assert.same({ "198.51.100.55", 2222 }, { a.ip, a.port })
      assert.same(a, b)
      assert.equal("198.51.100.55", helpers.echo_value(e, "X-Forwarded-For"))
    end)

    it("combines a trusted PROXY source with X-Forwarded-For", function()
      local conn = assert(helpers.connection(pp))
      assert(conn:send("PROXY TCP4 10.1.2.3 192.0.2.1 5000 443\r\n"))
      local w = parse_who(assert(conn:request({ path = "/who", headers = xff("203.0.113.99, 10.0.0.7") })).body)
      local e = helpers.echo(conn:request({ path = "/echo", headers = xff("203.0.113.99") }))
      conn:close()
      assert.same({ "203.0.113.99", "127.0.0.1" }, { w.ip, w.socket_ip })
      -- the origin gets the chain plus the connection's address: the PROXY source
      assert.equal("203.0.113.99, 10.1.2.3", helpers.echo_value(e, "X-Forwarded-For"))
      -- an IPv4-mapped source matches an IPv4 block
      w = assert(via(pp, "PROXY TCP6 ::ffff:192.168.1.1 ::1 5000 443\r\n"))
      assert.equal("::ffff:192.168.1.1", w.ip)
      conn = assert(helpers.connection(pp))
      assert(conn:send("PROXY TCP6 ::ffff:192.168.1.1 ::1 5000 443\r\n"))
      w = parse_who(assert(conn:request({ path = "/who", headers = xff("203.0.113.5") })).body)
      conn:close()
      assert.equal("203.0.113.5", w.ip)
    end)

    it("closes a connection without a valid header, with one log line naming listener, peer and why", function()
      local cases = {
        { helpers.build_request({ path = "/who" }), "(no PROXY protocol header)" },
        { "PROXY TCP4 999.0.0.1 192.0.2.1 1 2\r\n", "(v1: bad TCP4 address)" },
        { "PROXY TCP4 198.51.100.1 192.0.2.1 1 99999\r\n", "(v1: bad port)" },
        { "PROXY TCP5 198.51.100.1 192.0.2.1 1 2\r\n", "(v1: protocol is not TCP4, TCP6 or UNKNOWN)" },
        { "PROXY TCP4 198.51.100.1 192.0.2.1 1 2\n", "(v1: line does not end with CRLF)" },
        { "PROXY UNKNOWN " .. string.rep("x", 100) .. "\r\n", "(v1: no CRLF within 107 bytes)" },
        { SIG .. "\x31\x11\0\12" .. string.rep("\0", 12), "(v2: version is not 2)" },
        { SIG .. "\x21\x11\0\4" .. "\1\2\3\4", "(v2: address block shorter than its family's)" },
        { "\r\n\r\nGET / HTTP/1.1\r\n\r\n", "(no PROXY protocol header)" },
      }
      for _, case in ipairs(cases) do
        local conn = assert(helpers.connection(pp))
        local _, lport = conn.sock:getsockname()
        assert(conn:send(case[1] .. CLOSE_WHO))
        local closed, got = conn:wait_closed(3 * helpers.scale)
        conn:close()
        assert.is_true(closed, case[2])
        assert.equal("", got, case[2]) -- not even an error page: nothing was a request
        local line = "listener pp: client 127.0.0.1:" .. lport .. ": bad PROXY protocol header " .. case[2] .. "; closing"
        assert(m:wait_error_log(line), "no log line: " .. line)
      end
    end)

    it("closes a connection whose header is not complete within timeouts.client_header", function()
      local conn = assert(helpers.connection(pp))
      local _, lport = conn.sock:getsockname()
      local t0 = helpers.now()
      -- a byte every 0.2 s: the pieces do not push the 1 s deadline
      local pieces = "PROXY TCP4 198.51.100.1 192.0.2.1 1 2\r\n"
      for i = 1, #pieces do
        if not conn:send(pieces:sub(i, i)) or helpers.now() - t0 > 3 then break end
        local closed = conn:wait_closed(0.2)
        if closed then break end
      end
      local closed = conn:wait_closed(3 * helpers.scale)
      local took = helpers.now() - t0
      conn:close()
      assert.is_true(closed)
      assert.is_true(took >= 0.9 and took < 2.5, "closed after " .. took .. " s")
      assert(m:wait_error_log("listener pp: client 127.0.0.1:" .. lport
        .. ": no PROXY protocol header within timeouts.client_header; closing"))
    end)

    it("logs a connection closed in the middle of its header", function()
      local conn = assert(helpers.connection(pp))
      local _, lport = conn.sock:getsockname()
      assert(conn:send("PROXY TCP4 198.51"))
      helpers.sleep(0.05)
      conn:close()
      assert(m:wait_error_log("listener pp: client 127.0.0.1:" .. lport
        .. ": closed in the middle of the PROXY protocol header; closing"))
    end)

    it("does not warn about a connection closed before sending anything (an L4 health check)", function()
      local conn = assert(helpers.connection(pp))
      local _, lport = conn.sock:getsockname()
      conn:close()
      -- a request after it, so the close has been seen
      assert.equal("198.51.100.2", assert(via(pp, "PROXY TCP4 198.51.100.2 192.0.2.1 1 2\r\n")).ip)
      helpers.sleep(0.1)
      assert.is_nil(m:error_text():find("client 127.0.0.1:" .. lport .. ":", 1, true))
    end)

    it("leaves listeners without proxy_protocol alone", function()
      local text = helpers.raw(plain, "PROXY TCP4 198.51.100.1 192.0.2.1 1 2\r\n" .. CLOSE_WHO)
      assert.matches("^HTTP/1.1 400", text) -- a PROXY line is not an HTTP request
    end)
  end)
end)

describe("real client address from Forwarded (RFC 7239)", function()
  local m

  lazy_setup(function()
    m = helpers.start_moxy({
      upstreams = { app = { servers = { "127.0.0.1:9" } } },
      trusted_proxies = { "127.0.0.1", "10.0.0.0/8" },
      real_ip_header = "Forwarded",
      scripts = { "who.lua" },
    }, { files = { ["who.lua"] = WHO } })
  end)

  lazy_teardown(function()
    helpers.stop_all()
  end)

  local function fwd(...)
    local list = {}
    for i, v in ipairs { ... } do list[i] = { "Forwarded", v } end
    return list
  end

  it("takes the right-most untrusted for= node", function()
    assert.equal("203.0.113.60", who(m.port, fwd("for=203.0.113.60;proto=https;by=10.0.0.1")).ip)
    assert.equal("198.51.100.1", who(m.port, fwd("for=198.51.100.1, for=10.0.0.2")).ip)
    assert.equal("198.51.100.2", who(m.port, fwd("for=198.51.100.2", "For=10.0.0.3;proto=http")).ip)
    assert.equal("10.0.0.4", who(m.port, fwd("for=10.0.0.4, for=10.0.0.5")).ip)
  end)

  it("reads quoted IPv6 nodes with ports, and quoted IPv4 ones", function()
    local w = who(m.port, fwd('for="[2001:db8:cafe::17]:4711"'))
    assert.same({ "2001:db8:cafe::17", 4711 }, { w.ip, w.port })
    assert.equal("2001:db8:cafe::18", who(m.port, fwd('for="[2001:db8:cafe::18]"')).ip)
    w = who(m.port, fwd('for="203.0.113.43:8443"'))
    assert.same({ "203.0.113.43", 8443 }, { w.ip, w.port })
    w = who(m.port, fwd('for="203.0.113.44:_port1"')) -- an obfuscated port is no port
    assert.same({ "203.0.113.44", nil }, { w.ip, tonumber(w.port) })
  end)

  it("stops at for=unknown, an obfuscated node or an element without for=: the last trusted hop", function()
    assert.equal("127.0.0.1", who(m.port, fwd("for=unknown")).ip)
    assert.equal("127.0.0.1", who(m.port, fwd("for=198.51.100.9;by=10.0.0.1, for=unknown")).ip)
    assert.equal("10.0.0.2", who(m.port, fwd("for=203.0.113.1, for=_hidden, for=10.0.0.2")).ip)
    assert.equal("127.0.0.1", who(m.port, fwd("proto=https")).ip)
    assert.equal("127.0.0.1", who(m.port, fwd('for="[2001:db8::1"')).ip)
  end)

  it("ignores X-Forwarded-For then", function()
    assert.equal("127.0.0.1", who(m.port, xff("203.0.113.1")).ip)
  end)
end)

describe("real client address without trusted_proxies", function()
  it("believes no header (the default)", function()
    local m = helpers.start_moxy({
      upstreams = { app = { servers = { "127.0.0.1:9" } } },
      scripts = { "who.lua" },
    }, { files = { ["who.lua"] = WHO } })
    assert.equal("127.0.0.1", who(m.port, xff("203.0.113.1")).ip)
    assert.equal("127.0.0.1", who(m.port, { { "Forwarded", "for=203.0.113.1" } }).ip)
    helpers.stop_all()
  end)
end)

describe("balance = \"hash\" behind a trusted proxy", function()
  -- No origin: on_upstream_request answers with the peer the balancer chose.
  local SCRIPT = [[
    return {
      on_upstream = function(txn)
        local key = txn.req.headers:get("X-Key")
        txn.upstream:pick("ten", key and { hash = key } or nil)
      end,
      on_upstream_request = function(txn) return txn:respond(200, txn.upstream.peer) end,
    }
  ]]
  local m

  lazy_setup(function()
    local servers = {}
    for i = 1, 10 do servers[i] = "127.0.0.1:" .. (40000 + i) end
    m = helpers.start_moxy({
      upstreams = { ten = { servers = servers, balance = "hash" } },
      trusted_proxies = { "127.0.0.1" },
      scripts = { "hash.lua" },
    }, { files = { ["hash.lua"] = SCRIPT } })
  end)

  lazy_teardown(function()
    helpers.stop_all()
  end)

  it("keys on the real client, so clients behind one proxy keep their own peers", function()
    local conn = assert(helpers.connection(m.port))
    local function peer(headers)
      local res = assert(conn:request({ path = "/", headers = headers }))
      assert.equal(200, res.status)
      return res.body
    end
    local distinct = {}
    for i = 1, 12 do
      local client = "203.0.113." .. i
      local by_xff = peer(xff(client))
      -- the same peer as the client's address given as the key, every time
      assert.equal(peer({ ["X-Key"] = client }), by_xff, client)
      assert.equal(by_xff, peer(xff(client .. ", 127.0.0.1")), client)
      distinct[by_xff] = true
    end
    conn:close()
    local n = 0
    for _ in pairs(distinct) do n = n + 1 end
    assert.is_true(n >= 3, "12 clients went to " .. n .. " peers")
  end)
end)
