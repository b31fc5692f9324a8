-- The HTTP/1 core against what an attacker sends, from either side: each
-- case here was an open hole once (retry smuggling, Host, Connection, 1xx
-- bodies, trailers, absolute-form, upgrades, resets after an error).
local helpers = require "spec.helpers"

local S = helpers.scale

describe("http hardening", function()
  local origin, moxy

  lazy_setup(function()
    origin = helpers.start_origin()
    moxy = helpers.start_moxy({
      upstreams = { app = { servers = { origin.addr } } },
      limits = { headers = 50, body_bytes = "64k" },
    })
  end)

  lazy_teardown(function() helpers.stop_all() end)

  describe("a chunked body that failed its first try", function()
    local closing, good, m

    lazy_setup(function()
      -- closes once a request head and a byte of its body came in: the try
      -- fails after the chunk-size line reached it
      closing = helpers.start_raw_origin("close-body")
      good = helpers.start_origin()
      m = helpers.start_moxy({
        upstreams = { app = { servers = { closing.addr, good.addr }, tries = 2 } },
        scripts = { "acl.lua" },
      }, { files = { ["acl.lua"] = [[
        return { on_request = function(txn)
          if txn.req.path:find("^/admin") then return txn:respond(403, "no\n") end
        end }
      ]] } })
    end)

    it("is never sent again: the next origin cannot read its bytes as requests", function()
      local inner = "GET /admin/secret HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 10.9.9.9\r\n\r\n"
      local data = "0\r\n\r\n" .. inner
      -- twice: round-robin sends one of them to the closing origin first
      for i = 1, 2 do
        local c = assert(helpers.connection(m.port))
        assert(c:send("PUT /echo/" .. i .. " HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
          .. string.format("%x\r\n", #data)))
        -- only the chunk-size line so far: it reaches the origin, no body byte does
        helpers.sleep(0.3 * S)
        c:send(data .. "\r\n0\r\n\r\n")
        local res = c:read_response({ timeout = 5 * S })
        c:close()
        assert(res, "no answer to PUT " .. i)
        assert(res.status == 200 or res.status == 502, "status " .. res.status)
      end
      assert.is_true(closing:connections() >= 1, "the closing origin was never tried")
      assert.same({}, good:saw("^/admin"))
      for _, e in ipairs(good:stats().log) do
        assert.is_nil(e.error, "the good origin read garbage: " .. tostring(e.line))
      end
    end)

    it("an empty chunked body is not sent again either", function()
      for i = 1, 2 do
        local res = assert(helpers.raw(m.port, "PUT /empty/" .. i
          .. " HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n0\r\n\r\n",
          { timeout = 5 * S }))
        local list = helpers.parse_responses(res)
        assert.equal(1, #list)
      end
      -- what went to the closing origin was the whole empty body; the good
      -- one got at most one PUT per request, never a bare "0\r\n\r\n" line
      for _, e in ipairs(good:stats().log) do assert.is_nil(e.error) end
    end)
  end)

  describe("Host", function()
    for _, bad in ipairs({ "shop.example/cc/login", "a b", "x@y", "a?b", "a#b", "[::1", "[zz]", "a:99999",
                           "a:1x", ":80", "%zz" }) do
      it("answers 400 to Host: " .. bad, function()
        local text = helpers.raw(moxy.port, "GET /host-check HTTP/1.1\r\nHost: " .. bad .. "\r\n\r\n")
        local list = helpers.parse_responses(text)
        assert.equal(400, list[1] and list[1].status)
        assert.same({}, origin:saw("^/host%-check"))
      end)
    end

    for _, good in ipairs({ "shop.example", "shop.example:8080", "127.0.0.1:80", "[::1]:8080", "[v1.fe]",
                            "xn--bcher-kva.example", "a%41b", "host:" }) do
      it("takes Host: " .. good, function()
        local e = helpers.echo(helpers.request(moxy.port, { path = "/echo", headers = { Host = good } }))
        assert.equal(good, helpers.echo_value(e, "X-Forwarded-Host"))
      end)
    end
  end)

  it("a script cannot set an invalid Host either", function()
    local m = helpers.start_moxy({ upstreams = { app = { servers = { origin.addr } } }, scripts = { "s.lua" } },
      { files = { ["s.lua"] = [[
        return { on_request = function(txn)
          local ok = pcall(txn.req.headers.set, txn.req.headers, "Host", txn.req.headers:get("X-Host"))
          if not ok then return txn:respond(421, "refused\n") end
        end }
      ]] } })
    assert.equal(421, helpers.request(m.port, { path = "/echo", headers = { ["X-Host"] = "a.example/evil" } }).status)
    local e = helpers.echo(helpers.request(m.port, { path = "/echo", headers = { ["X-Host"] = "a.example:8080" } }))
    assert.equal("a.example:8080", helpers.echo_value(e, "Host"))
  end)

  describe("absolute-form targets (RFC 9112 3.2.2)", function()
    it("are accepted: the authority replaces Host, the origin gets the path", function()
      local c = assert(helpers.connection(moxy.port))
      local res = assert(c:request({ method = "GET", path = "http://a.example:81/echo/x?y=1",
                                     headers = { Host = "other.example" } }))
      c:close()
      local e = helpers.echo(res)
      assert.equal("/echo/x?y=1", e.uri)
      assert.equal("a.example:81", helpers.echo_value(e, "Host"))
      assert.equal("a.example:81", helpers.echo_value(e, "X-Forwarded-Host"))
    end)

    it("scripts see the path and the authority's host", function()
      local m = helpers.start_moxy({ scripts = { "s.lua" } }, { files = { ["s.lua"] = [[
        return { on_request = function(txn)
          return txn:respond(200, txn.req.path .. " " .. tostring(txn.req.query) .. " " .. txn.req.host .. "\n")
        end }
      ]] } })
      local text = helpers.raw(m.port, "GET HTTP://A.example/p/q?z=2 HTTP/1.1\r\nHost: b\r\nConnection: close\r\n\r\n")
      local list = helpers.parse_responses(text)
      assert.equal(200, list[1].status)
      assert.equal("/p/q z=2 A.example\n", list[1].body)
    end)

    it("an empty path is /, or * for OPTIONS", function()
      local raw = helpers.start_raw_origin("reply-close", "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
      local m = helpers.start_moxy({ upstreams = { app = { servers = { raw.addr } } } })
      helpers.raw(m.port, "GET http://a.example?q HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
      assert.matches("^GET /%?q HTTP/1.1\r\nHost: a.example\r\n", raw:received(1))
      helpers.raw(m.port, "OPTIONS http://a.example HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
      assert.matches("^OPTIONS %* HTTP/1.1\r\n", raw:received(2))
    end)

    for _, bad in ipairs({ "http://user@a.example/echo", "ftp://a.example/echo", "http:///echo",
                           "http://a b/echo", "https:/a/echo", "http://a.example:80x/echo" }) do
      it("answers 400 to " .. bad, function()
        local text = helpers.raw(moxy.port, "GET " .. bad .. " HTTP/1.1\r\nHost: a\r\n\r\n")
        local list = helpers.parse_responses(text)
        assert.equal(400, list[1] and list[1].status)
      end)
    end
  end)

  it("the fields a client's Connection names go, but never moxy's own", function()
    local e = helpers.echo(helpers.request(moxy.port, { path = "/echo", headers = {
      { "Connection", "X-Forwarded-For, Via, X-Request-Id, X-Forwarded-Proto, X-Private" },
      { "X-Private", "secret" }, { "X-Forwarded-For", "10.1.1.1" }, { "X-Request-Id", "abc" } } }))
    assert.is_nil(helpers.echo_value(e, "X-Private"))
    assert.equal("127.0.0.1", helpers.echo_value(e, "X-Forwarded-For")) -- the client's own list is gone
    assert.equal("1.1 moxy", helpers.echo_value(e, "Via"))
    assert.equal("http", helpers.echo_value(e, "X-Forwarded-Proto"))
    assert.matches("^%x+$", helpers.echo_value(e, "X-Request-Id"))
    assert.is_nil(helpers.echo_value(e, "Connection"))
  end)

  it("joins a response's names and values split across reads, the head's and the trailers'", function()
    local raw = helpers.start_raw_origin("reply-drip", "HTTP/1.1 200 OK\r\nX-Split-Name: a value in pieces\r\n"
      .. "Cache-Control: no-store\r\nTransfer-Encoding: chunked\r\nTrailer: X-Check\r\n\r\n"
      .. "5\r\nhello\r\n7\r\n, world\r\n0\r\nX-Check: trailer value\r\n\r\n")
    local m = helpers.start_moxy({ upstreams = { app = { servers = { raw.addr } } } })
    local c = assert(helpers.connection(m.port))
    assert(c:send("GET /split HTTP/1.1\r\nHost: x\r\nTE: trailers\r\n\r\n"))
    local res = assert(c:read_response({ timeout = 5 * S }))
    c:close()
    assert.equal(200, res.status)
    assert.equal("a value in pieces", res:header("x-split-name"))
    assert.equal("hello, world", res.body)
    assert.same({ "trailer value" }, res.trailers["x-check"])
  end)

  describe("interim responses", function()
    local function through(reply, n)
      local raw = helpers.start_raw_origin("reply", reply)
      local m = helpers.start_moxy({ upstreams = { app = { servers = { raw.addr } } } })
      local text = helpers.raw(m.port, string.rep("GET /i HTTP/1.1\r\nHost: x\r\n\r\n", n or 2), { timeout = 3 * S })
      return text
    end

    it("with a body are refused (502): the body is never relayed as responses", function()
      local final = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
      local smuggled = "HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nforged"
      local text = through("HTTP/1.1 199 Odd\r\nContent-Length: " .. #smuggled .. "\r\n\r\n" .. smuggled .. final, 1)
      assert.is_nil(text:find("forged", 1, true), "the 1xx's body reached the client")
      local list = helpers.parse_responses(text)
      assert.equal(1, #list)
      assert.equal(502, list[1].status)
    end)

    it("chunked ones too", function()
      local text = through("HTTP/1.1 103 Early Hints\r\nTransfer-Encoding: chunked\r\n\r\n"
        .. "6\r\nforged\r\n0\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", 1)
      assert.is_nil(text:find("forged", 1, true))
      assert.equal(502, helpers.parse_responses(text)[1].status)
    end)

    it("a 199 without framing has no body: the final response follows", function()
      local text = through("HTTP/1.1 199 Odd\r\nX-A: 1\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", 1)
      local list = helpers.parse_responses(text)
      assert.equal(1, #list)
      assert.equal(200, list[1].status)
      assert.equal("ok", list[1].body)
      assert.equal(199, list[1].interim[1].status)
    end)

    it("are bounded in bytes, all of them together (limits.header_bytes)", function()
      local raw = helpers.start_raw_origin("reply", string.rep("HTTP/1.1 103 Early Hints\r\nLink: </"
        .. string.rep("a", 1500) .. ">\r\n\r\n", 4) .. "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
      local m = helpers.start_moxy({ upstreams = { app = { servers = { raw.addr } } }, limits = { header_bytes = "4k" } })
      local list = helpers.parse_responses(helpers.raw(m.port, "GET /i HTTP/1.1\r\nHost: x\r\n\r\n", { timeout = 2 * S }))
      assert.equal(502, list[#list].status)
      assert.is_true(#list[#list].interim <= 2)
    end)

    it("are bounded in number", function()
      local text = through(string.rep("HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n", 50)
        .. "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", 1)
      local list = helpers.parse_responses(text)
      assert.equal(502, list[#list].status)
      assert.is_true(#list[#list].interim <= 8)
    end)
  end)

  it("no Content-Length goes out on a 204", function()
    local raw = helpers.start_raw_origin("reply", "HTTP/1.1 204 No Content\r\nContent-Length: 0\r\nX-A: 1\r\n\r\n")
    local m = helpers.start_moxy({ upstreams = { app = { servers = { raw.addr } } } })
    local res = assert(helpers.request(m.port, { path = "/x" }))
    assert.equal(204, res.status)
    assert.equal("1", res.headers["x-a"][1])
    assert.is_nil(res.headers["content-length"])
  end)

  describe("trailers", function()
    it("of a request lose the fields a trailer must not carry", function()
      local c = assert(helpers.connection(moxy.port))
      assert(c:send("POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        .. "5\r\nhello\r\n0\r\nX-Ok: yes\r\nHost: evil\r\nConnection: close\r\nUpgrade: h2c\r\nTE: trailers\r\n"
        .. "Content-Type: text/evil\r\nAuthorization: Basic eA==\r\nCookie: a=b\r\nCache-Control: no-cache\r\n"
        .. "X-Forwarded-For: 10.6.6.6\r\nX-Request-Id: forged\r\nX-Checksum: 1\r\n\r\n"))
      local e = helpers.echo(c:read_response())
      c:close()
      assert.equal("hello", e.body)
      local names = {}
      for _, kv in ipairs(e.trailers) do names[#names + 1] = kv[1]:lower() end
      table.sort(names)
      assert.same({ "x-checksum", "x-ok" }, names)
      assert.is_nil(helpers.echo_value(e, "Content-Type"))
    end)

    it("from an origin lose them too, Via included (fuzz finding http_response-4)", function()
      local raw = helpers.start_raw_origin("reply", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        .. "2\r\nok\r\n0\r\nX-Ok: yes\r\nVia: 1.0 evil\r\nContent-Length: 40\r\nX-Request-Id: forged\r\n"
        .. "Set-Cookie: a=b\r\nX-Checksum: 1\r\n\r\n")
      local m = helpers.start_moxy({ upstreams = { app = { servers = { raw.addr } } } })
      local res = assert(helpers.request(m.port, { path = "/t" }))
      assert.equal("ok", res.body)
      local names = {}
      for name in pairs(res.trailers) do names[#names + 1] = name end
      table.sort(names)
      assert.same({ "x-checksum", "x-ok" }, names)
      assert.same({ "1.1 moxy" }, res.headers["via"])
    end)

    it("of a request count against limits.headers (431)", function()
      local t = {}
      for i = 1, 200 do t[#t + 1] = "X-T" .. i .. ": v\r\n" end
      local text = helpers.raw(moxy.port, "POST /trailers HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        .. "5\r\nhello\r\n0\r\n" .. table.concat(t) .. "\r\n", { timeout = 3 * S })
      local list = helpers.parse_responses(text)
      assert.equal(431, list[1] and list[1].status)
    end)
  end)

  it("a request line after empty lines is held to the same rules", function()
    for _, line in ipairs({ "GET  /crlf HTTP/1.1", "GET /crlf  HTTP/1.1", "GET\t/crlf HTTP/1.1" }) do
      local text = helpers.raw(moxy.port, "\r\n\r\n" .. line .. "\r\nHost: x\r\n\r\n")
      assert.equal(400, helpers.parse_responses(text)[1].status, line)
    end
    local text = helpers.raw(moxy.port, "\r\nGET /echo HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert.equal(200, helpers.parse_responses(text)[1].status)
    assert.same({}, origin:saw("^/crlf"))
  end)

  -- the head's checks carry their state from one read to the next
  -- (request_head.c head_scan): a rule broken across a read boundary
  it("holds the request line and obs-fold rules across reads of the head", function()
    local function send_pieces(pieces)
      local c = assert(helpers.connection(moxy.port))
      for i, piece in ipairs(pieces) do
        assert(c:send(piece))
        if i < #pieces then helpers.sleep(0.1 * S) end -- moxy reads each piece on its own
      end
      local res = c:read_response()
      c:close()
      return res and res.status
    end
    local cases = {
      { "double space", { "GET ", " /split-a HTTP/1.1\r\nHost: x\r\n\r\n" } },
      { "double space before the version", { "GET /split-b ", " HTTP/1.1\r\nHost: x\r\n\r\n" } },
      { "tab", { "GET /split-c", "\tHTTP/1.1\r\nHost: x\r\n\r\n" } },
      { "obs-fold at a read's start", { "GET /split-d HTTP/1.1\r\nHost: x\r\nX-A: a\r\n", " b\r\n\r\n" } },
      { "obs-fold after a split CRLF", { "GET /split-e HTTP/1.1\r\nHost: x\r\nX-A: a\r", "\n\tb\r\n\r\n" } },
      { "obs-fold as the first field line", { "GET /split-f HTTP/1.1\r\n", " Host: x\r\n\r\n" } },
    }
    for _, case in ipairs(cases) do
      assert.equal(400, send_pieces(case[2]), case[1])
    end
    assert.same({}, origin:saw("^/split"))
    -- a good head cut anywhere, empty lines before it included, still goes through
    local good = "\r\nGET /echo/split HTTP/1.1\r\nHost: x\r\nX-A: a b\r\nConnection: close\r\n\r\n"
    for _, cut in ipairs { 1, 2, 4, 5, 19, 20, 31, 40, 47 } do
      assert.equal(200, send_pieces { good:sub(1, cut), good:sub(cut + 1) }, "cut at " .. cut)
    end
  end)

  it("a malformed chunk that came with the head is answered 400 before any origin sees the head", function()
    -- an idle keep-alive connection to the origin: a head would go out at once
    assert.equal(200, helpers.request(moxy.port, { path = "/echo" }).status)
    local text = helpers.raw(moxy.port, "POST /precheck HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
      .. "5\r\nhelloXX0\r\n\r\nGET /precheck-inner HTTP/1.1\r\nHost: x\r\n\r\n")
    assert.equal(400, helpers.parse_responses(text)[1].status)
    assert.same({}, origin:saw("^/precheck"))
  end)

  describe("Upgrade", function()
    it("tunnels only what the listener allows: h2c is proxied as plain HTTP/1.1", function()
      local e = helpers.echo(helpers.request(moxy.port, { path = "/echo", headers = {
        { "Connection", "Upgrade, HTTP2-Settings" }, { "Upgrade", "h2c" }, { "HTTP2-Settings", "AAMAAABkAAQAAP__" } } }))
      assert.is_nil(helpers.echo_value(e, "Upgrade"))
      assert.is_nil(helpers.echo_value(e, "HTTP2-Settings"))
    end)

    it("keeps only the allowed protocols of a list", function()
      local raw = helpers.start_raw_origin("reply", "HTTP/1.1 400 No\r\nContent-Length: 0\r\n\r\n")
      local m = helpers.start_moxy({ upstreams = { app = { servers = { raw.addr } } } })
      helpers.raw(m.port, "GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: h2c, WebSocket, foo/2\r\n"
        .. "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n", { timeout = 1 * S })
      local got = raw:received(1)
      assert.matches("\r\nUpgrade: WebSocket\r\n", got, 1, true)
    end)

    it("a 101 to a protocol the listener does not allow is a 502", function()
      local raw = helpers.start_raw_origin("reply", "HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\n"
        .. "Upgrade: h2c\r\n\r\nraw-bytes")
      local m = helpers.start_moxy({ upstreams = { app = { servers = { raw.addr } } } })
      local text = helpers.raw(m.port, "GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
        .. "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n", { timeout = 2 * S })
      assert.is_nil(text:find("raw-bytes", 1, true))
      assert.equal(502, helpers.parse_responses(text)[1].status)
    end)

    it("upgrade = {} on a listener tunnels nothing", function()
      local m = helpers.start_moxy({
        listen = { { addr = "127.0.0.1:" .. helpers.free_port(), upgrade = {} } },
        upstreams = { app = { servers = { origin.addr } } },
      })
      local e = helpers.echo(helpers.request(m.port, { path = "/echo", headers = {
        { "Connection", "Upgrade" }, { "Upgrade", "websocket" }, { "Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==" },
        { "Sec-WebSocket-Version", "13" } } }))
      assert.is_nil(helpers.echo_value(e, "Upgrade"))
    end)
  end)

  describe("an answer before the request is read", function()
    it("reaches the client: moxy lingers instead of resetting (413 during a big upload)", function()
      -- the client keeps sending its body after moxy answered 413; a plain
      -- close would answer those bytes with a reset, which can destroy the
      -- 413 before the client reads it: the connection must end with a FIN
      local ps = require "posix.sys.socket"
      local unistd = require "posix.unistd"
      local errno = require "posix.errno"
      local fcntl = require "posix.fcntl"
      for i = 1, 3 do
        local fd = assert(ps.socket(ps.AF_INET, ps.SOCK_STREAM, 0))
        assert(ps.connect(fd, { family = ps.AF_INET, addr = "127.0.0.1", port = moxy.port }))
        local chunk = string.rep("x", 65536)
        -- the head and body bytes together: some are unread when moxy answers
        assert(ps.send(fd, "POST /big HTTP/1.1\r\nHost: x\r\nContent-Length: 10000000\r\n\r\n" .. chunk))
        local t0, sent = helpers.now(), 0
        local flags = fcntl.fcntl(fd, fcntl.F_GETFL)
        fcntl.fcntl(fd, fcntl.F_SETFL, bit.bor(flags, fcntl.O_NONBLOCK))
        while helpers.now() - t0 < 0.5 * S and sent < 2000000 do
          local n = ps.send(fd, chunk)
          if n then sent = sent + n else helpers.sleep(0.01) end
        end
        fcntl.fcntl(fd, fcntl.F_SETFL, flags)
        assert(ps.setsockopt(fd, ps.SOL_SOCKET, ps.SO_RCVTIMEO, 3, 0))
        local got, err, code = "", nil, nil
        while true do
          local d, e, c = ps.recv(fd, 8192)
          if not d then err, code = e, c break end
          if d == "" then break end
          got = got .. d
        end
        unistd.close(fd)
        assert.matches("^HTTP/1.1 413", got, nil, false, "try " .. i)
        assert.is_nil(err, "try " .. i .. ": the connection ended with " .. tostring(err)
          .. (code == errno.ECONNRESET and " (a reset)" or ""))
      end
    end)

    it("lingers for 16 MiB at most", function()
      local ps = require "posix.sys.socket"
      local unistd = require "posix.unistd"
      local fd = assert(ps.socket(ps.AF_INET, ps.SOCK_STREAM, 0))
      assert(ps.connect(fd, { family = ps.AF_INET, addr = "127.0.0.1", port = moxy.port }))
      assert(ps.send(fd, "POST /big HTTP/1.1\r\nHost: x\r\nContent-Length: 100000000\r\n\r\n"))
      assert(ps.setsockopt(fd, ps.SOL_SOCKET, ps.SO_SNDTIMEO, 1, 0))
      local chunk = string.rep("x", 65536)
      local t0, sent, err = helpers.now(), 0, nil
      while helpers.now() - t0 < 4 * S and sent < 100000000 do
        local n, e = ps.send(fd, chunk)
        if not n then err = e break end
        sent = sent + n
      end
      unistd.close(fd)
      -- moxy stopped reading (and closed) well before timeouts.linger (5 s)
      assert.is_not_nil(err, "still sending after " .. sent .. " bytes")
      assert.is_true(sent >= 16 * 1024 * 1024, "closed after " .. sent .. " bytes")
      assert.is_true(sent < 48 * 1024 * 1024, "took " .. sent .. " bytes")
    end)

    it("is logged once and the lingering connection ends by itself", function()
      local m = helpers.start_moxy({
        upstreams = { app = { servers = { origin.addr } } },
        limits = { body_bytes = "1k" }, timeouts = { linger = "1s" },
      })
      local socket = require "socket"
      local s = socket.tcp()
      s:settimeout(5 * S)
      assert(s:connect("127.0.0.1", m.port))
      s:send("POST /big HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n" .. string.rep("x", 2000))
      assert.matches("^HTTP/1.1 413", s:receive("*l"))
      -- the client never closes: moxy does, once timeouts.linger passed
      local t0 = helpers.now()
      local closed
      while helpers.now() - t0 < 4 * S do
        s:settimeout(0.2)
        local _, err = s:receive(1)
        if err == "closed" then closed = true break end
        s:send("y")
      end
      s:close()
      assert.is_true(closed, "the lingering connection did not close")
      assert.is_true(helpers.now() - t0 < 3 * S)
    end)
  end)
end)
