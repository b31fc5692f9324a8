-- Masking the origins (mask = {...}): the fields that name an origin's
-- software, version or host are removed from what clients get, over
-- HTTP/1.1 and HTTP/2, from the origin and from the cache, in any case and
-- however often they come; the list, moxy's own Server and its name in Via
-- are configurable per listener; a script's on_response may set any of them
-- again.  Then every kind of origin failure, and what a client sees of it:
-- never the origin's address, port or name.
local helpers = require "spec.helpers"

local S = helpers.scale

-- the default list (config.lua's M.MASK_HEADERS), lower case
local DEFAULT = { "server", "x-powered-by", "x-aspnet-version", "x-aspnetmvc-version", "x-generator",
                  "x-backend-server", "x-debug-token", "x-debug-token-link" }

-- An origin's head with every default field, several Server lines in
-- several cases, and fields of its own.
local function leaky_reply()
  local lines = {
    "HTTP/1.1 200 OK",
    "Server: Apache/2.4.1 (Unix)",
    "server: nginx/1.1",
    "SERVER: Microsoft-IIS/10.0",
    "X-POWERED-BY: PHP/5.1",
    "x-powered-by: Express",
    "X-AspNet-Version: 4.0.30319",
    "X-AspNetMvc-Version: 5.2",
    "X-Generator: Drupal 7",
    "X-Backend-Server: app-db7.internal",
    "X-Debug-Token: abc123",
    "X-Debug-Token-Link: http://app-db7.internal/_profiler/abc123",
    "X-Custom-Leak: 10.9.8.7",
    "X-Other: yes",
    "X-Keep: yes",
    "Cache-Status: inner-cdn-3; hit",
  }
  for i = 1, 60 do lines[#lines + 1] = "Server: s" .. i end
  lines[#lines + 1] = "Content-Length: 2"
  return table.concat(lines, "\r\n") .. "\r\n\r\nok"
end

-- name (lower case) -> number of lines, of a response's head
local function counts(res)
  local t = {}
  for _, kv in ipairs(res.header_list) do
    local l = kv[1]:lower()
    t[l] = (t[l] or 0) + 1
  end
  return t
end

-- curl over HTTP/2 with prior knowledge: body, status, the head's lines
-- (lower-case names -> list of values)
local function curl_h2(url, extra)
  local out = helpers.sh(string.format("timeout %d curl -sS --http2-prior-knowledge -D - %s -w '\\n%%{http_code}' '%s'",
    math.ceil(10 * S), extra or "", url))
  local head, body, code = out:match("^(.-\r\n\r\n)(.*)\n(%d+)$")
  local fields = {}
  for name, value in (head or ""):gmatch("\n([^:\r\n]+): ([^\r\n]*)") do
    local l = name:lower()
    fields[l] = fields[l] or {}
    table.insert(fields[l], value)
  end
  return body or out, tonumber(code), fields, head or out
end

local SITE = [[
return {
  on_request = function(txn)
    local pool, rest = txn.req.path:match("^/p/([%w_]+)(/.*)$")
    if pool then
      txn.upstream:pick(pool)
      txn.req.path = rest
    end
    if txn.req.path == "/answer" then
      local own = txn.req.headers:get("X-Answer-Server")
      return txn:respond(200, "answered\n", own and { Server = own } or {})
    end
  end,
  on_response = function(txn)
    local h = txn.req.headers
    txn.resp.headers:set("X-Seen-Server", tostring(txn.resp.headers:get("Server")))
    txn.resp.headers:set("X-Seen-Powered", tostring(txn.resp.headers:get("X-Powered-By")))
    if h:get("X-Set-Server") then txn.resp.headers:set("Server", h:get("X-Set-Server")) end
    if h:get("X-Set-Powered") then txn.resp.headers:set("X-Powered-By", h:get("X-Set-Powered")) end
  end,
}
]]

describe("masking the origins", function()
  local origin, h2o, leak, hints, ws, m
  local A, B, C, D -- listeners: defaults; own list + pseudonym; own Server, no Via; masking off

  lazy_setup(function()
    origin = helpers.start_origin()
    h2o = helpers.start_h2_origin()
    leak = helpers.start_raw_origin("reply-close", leaky_reply())
    hints = helpers.start_raw_origin("reply-close",
      "HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\nServer: hinter/1\r\nX-Powered-By: hints\r\n\r\n"
      .. "HTTP/1.1 200 OK\r\nServer: hinter/1\r\nContent-Length: 3\r\n\r\nfin")
    ws = helpers.start_raw_origin("reply", "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
      .. "Connection: Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\nServer: ws-origin/3\r\n"
      .. "X-Powered-By: sockets\r\n\r\n")
    A, B, C, D = helpers.free_port(), helpers.free_port(), helpers.free_port(), helpers.free_port()
    m = helpers.start_moxy({
      listen = {
        { addr = "127.0.0.1:" .. A, http2 = true },
        { addr = "127.0.0.1:" .. B, http2 = true,
          mask = { headers = { "x-CUSTOM-leak", "X-Trailer", "Cache-Status" }, add = { "X-Other" },
                 via = "edge-7" } },
        { addr = "127.0.0.1:" .. C, http2 = true, mask = { server = "edge/2", via = false } },
        { addr = "127.0.0.1:" .. D, mask = false },
      },
      upstreams = {
        app = { servers = { origin.addr } },
        h2 = { servers = { h2o.addr }, protocol = "h2" },
        leak = { servers = { leak.addr }, passive = false },
        hints = { servers = { hints.addr }, passive = false },
        ws = { servers = { ws.addr }, passive = false },
      },
      default_upstream = "app",
      cache = { size = "8m" },
      scripts = { "site.lua" },
    }, { files = { ["site.lua"] = SITE } })
  end)

  lazy_teardown(function() helpers.stop_all() end)

  local function get(port, path, headers, version)
    return assert(helpers.request(port, { path = path, headers = headers or {}, version = version }))
  end

  it("removes every default field, each line of it, in any case (HTTP/1.1)", function()
    local res = get(A, "/p/leak/x")
    assert.equal(200, res.status)
    assert.equal("ok", res.body)
    local n = counts(res)
    for _, name in ipairs(DEFAULT) do assert.is_nil(n[name], name .. " reached the client") end
    assert.equal("yes", res:header("x-keep"))
    assert.equal("10.9.8.7", res:header("x-custom-leak")) -- not in the default list
    assert.equal("1.1 moxy", res:header("via"))
    -- on_response saw the head masked
    assert.equal("nil", res:header("x-seen-server"))
    assert.equal("nil", res:header("x-seen-powered"))
  end)

  it("removes them for HTTP/2 clients", function()
    local body, code, f, head = curl_h2("http://127.0.0.1:" .. A .. "/p/leak/x")
    assert.equal(200, code, head)
    assert.equal("ok", body)
    for _, name in ipairs(DEFAULT) do assert.is_nil(f[name], name .. " reached the client: " .. head) end
    assert.same({ "yes" }, f["x-keep"])
    assert.same({ "1.1 moxy" }, f["via"])
  end)

  it("takes a listener's list: it replaces the default, add extends it, names in any case", function()
    local res = get(B, "/p/leak/x")
    assert.equal(200, res.status)
    local n = counts(res)
    assert.is_nil(n["x-custom-leak"])
    assert.is_nil(n["x-other"])
    assert.equal(63, n["server"]) -- no longer in the list: every line passes
    assert.equal(2, n["x-powered-by"])
    assert.equal("yes", res:header("x-keep"))
    assert.equal("1.1 edge-7", res:header("via"))
    -- a masked Cache-Status takes the origin's (an inner cache's) and leaves moxy's own
    assert.equal(1, n["cache-status"])
    assert.matches("^moxy; fwd=", res:header("cache-status"))
    assert.equal(2, counts(get(A, "/p/leak/x"))["cache-status"])
  end)

  it("sends moxy's own Server, once, in place of the origin's, and no Via when told", function()
    local res = get(C, "/p/leak/x")
    assert.equal(200, res.status)
    local n = counts(res)
    assert.equal(1, n["server"])
    assert.equal("edge/2", res:header("server"))
    assert.is_nil(n["x-powered-by"])
    assert.is_nil(n["via"])
    assert.equal("edge/2", res:header("x-seen-server")) -- on_response sees the Server that goes out
    local _, code, f = curl_h2("http://127.0.0.1:" .. C .. "/p/leak/x")
    assert.equal(200, code)
    assert.same({ "edge/2" }, f["server"])
    assert.is_nil(f["via"])
  end)

  it("masks nothing with mask = false", function()
    local res = get(D, "/p/leak/x")
    local n = counts(res)
    assert.equal(63, n["server"])
    assert.equal(2, n["x-powered-by"])
    for _, name in ipairs(DEFAULT) do assert.is_not_nil(n[name], name) end
    assert.equal("1.1 moxy", res:header("via")) -- Via is not masking: still on
  end)

  it("tells origins moxy's name in Via as configured, with the protocol the request came in", function()
    local function via(port, version, headers)
      local e = helpers.echo(get(port, "/echo", headers, version))
      return helpers.echo_value(e, "Via")
    end
    assert.equal("1.1 moxy", via(A))
    assert.equal("1.0 moxy", via(A, "HTTP/1.0"))
    assert.equal("1.0 fred, 1.1 moxy", via(A, nil, { Via = "1.0 fred" })) -- appended to the client's
    assert.equal("1.1 edge-7", via(B))
    assert.is_nil(via(C))
    assert.equal("1.0 fred", via(C, nil, { Via = "1.0 fred" })) -- the client's own passes
    assert.equal("1.1 moxy", via(D))
    local body, code = curl_h2("http://127.0.0.1:" .. B .. "/echo")
    assert.equal(200, code)
    assert.matches('"Via", "2 edge-7"', body, 1, true)
  end)

  it("names the protocol an HTTP/2 origin answered in, in the response's Via", function()
    local res = get(A, "/p/h2/echo")
    assert.equal(200, res.status)
    assert.equal("2 moxy", res:header("via"))
    res = get(B, "/p/h2/echo")
    assert.equal("2 edge-7", res:header("via"))
  end)

  it("masks cache hits on the way out, the stored object keeping what the origin sent", function()
    local path = helpers.origin_path("/echo/cached", { "Server:leaky/9", "X-Powered-By:php/4",
                                                        "Cache-Control:max-age=60" })
    local first = get(A, path)
    assert.equal(200, first.status)
    assert.is_nil(first:header("server"))
    assert.matches("fwd=", first:header("cache-status"), 1, true)
    local hit = get(A, path)
    assert.matches("moxy; hit", hit:header("cache-status"), 1, true)
    assert.is_nil(hit:header("server"))
    assert.is_nil(hit:header("x-powered-by"))
    assert.equal("nil", hit:header("x-seen-server")) -- on_response of a hit sees it masked too
    assert.equal("1.1 moxy", hit:header("via"))
    -- the same object, to a listener that masks nothing: the origin's fields are there
    local open = get(D, path)
    assert.matches("moxy; hit", open:header("cache-status"), 1, true)
    assert.equal("leaky/9", open:header("server"))
    assert.equal("php/4", open:header("x-powered-by"))
    -- and to an HTTP/2 client, from a listener with its own Server
    curl_h2("http://127.0.0.1:" .. C .. path)
    local _, code, f = curl_h2("http://127.0.0.1:" .. C .. path)
    assert.equal(200, code)
    assert.matches("hit", f["cache-status"][1], 1, true)
    assert.same({ "edge/2" }, f["server"])
    assert.is_nil(f["x-powered-by"])
  end)

  it("lets on_response set Server and a masked field again", function()
    local res = get(A, "/p/leak/x", { { "X-Set-Server", "script/1" }, { "X-Set-Powered", "lua" } })
    local n = counts(res)
    assert.equal(1, n["server"])
    assert.equal("script/1", res:header("server"))
    assert.equal("lua", res:header("x-powered-by"))
    -- over moxy's own Server too
    res = get(C, "/p/leak/x", { { "X-Set-Server", "script/2" } })
    assert.equal(1, counts(res)["server"])
    assert.equal("script/2", res:header("server"))
  end)

  it("gives moxy's own answers its Server, unless the answer has one", function()
    local res = get(A, "/answer")
    assert.equal(200, res.status)
    assert.is_nil(res:header("server"))
    assert.is_nil(res:header("via")) -- moxy's own answer forwards nothing
    res = get(C, "/answer")
    assert.equal("edge/2", res:header("server"))
    res = get(C, "/answer", { { "X-Answer-Server", "hook/1" } })
    assert.equal(1, counts(res)["server"])
    assert.equal("hook/1", res:header("server"))
  end)

  it("signs error pages with moxy's Server, or not at all", function()
    local res = get(A, "/p/app/x", { { "Content-Length", "abc" } }) -- a 400 from moxy
    assert.equal(400, res.status)
    assert.is_nil(res.body:find("<hr>", 1, true))
    assert.is_nil(res:header("server"))
    res = get(C, "/p/app/x", { { "Content-Length", "abc" } })
    assert.equal(400, res.status)
    assert.equal("edge/2", res:header("server"))
    assert.matches("<hr>edge/2</body>", res.body, 1, true)
  end)

  it("masks interim heads and trailers", function()
    local res = get(A, "/p/hints/x")
    assert.equal(200, res.status)
    assert.equal(103, res.interim[1].status)
    assert.equal("</a.css>; rel=preload", res.interim[1]:header("link"))
    assert.is_nil(res.interim[1]:header("server"))
    assert.is_nil(res.interim[1]:header("x-powered-by"))
    assert.is_nil(res:header("server"))
    -- the trailers: X-Trailer is on B's list
    res = get(B, "/chunked/100?trailer=1")
    assert.equal(200, res.status)
    assert.is_nil(res.trailers["x-trailer"])
    assert.same({ "100" }, res.trailers["x-body-length"])
    res = get(A, "/chunked/100?trailer=1")
    assert.same({ "done" }, res.trailers["x-trailer"])
  end)

  it("masks the head of an origin's 101", function()
    local c = assert(helpers.connection(A))
    local res = assert(c:request({ path = "/p/ws/chat", headers = {
      { "Upgrade", "websocket" }, { "Connection", "Upgrade" },
      { "Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==" }, { "Sec-WebSocket-Version", "13" } } }))
    c:close()
    assert.equal(101, res.status)
    assert.is_nil(res:header("server"))
    assert.is_nil(res:header("x-powered-by"))
    assert.equal("s3pPLMBiTxaQ9kYGzzhZRbK+xOo=", res:header("sec-websocket-accept"))
  end)
end)

-- dns.py (spec/support) on a free port, answering from zone (a table)
local function start_dns(zone)
  local dir = helpers.tmpdir("dns")
  helpers.write_file(dir .. "/zone.json", require("cjson").encode(zone))
  local p = helpers.spawn({ "python3", "-u", helpers.support .. "/dns.py", dir .. "/zone.json" }, { dir = dir })
  local port = helpers.wait_until(function()
    local port = p:stdout():match("ready (%d+)")
    if port then return tonumber(port) end
    if not p:alive() then return -1 end
  end, 10 * S)
  assert(port and port > 0, "dns.py did not start: " .. p:stdout() .. p:stderr())
  return "127.0.0.1:" .. port
end

describe("moxy's answers to origin failures", function()
  local origin, closer, badname, tls_origin, hole, m, port
  local cases -- pool -> { status, what the error log says, strings that must not reach a client }

  lazy_setup(function()
    local dir = helpers.tmpdir("mask-tls")
    helpers.make_cert(dir, "o", "ec", "secret-origin.internal", { "secret-origin.internal" })
    origin = helpers.start_origin()
    closer = helpers.start_raw_origin("close-head")
    badname = helpers.start_raw_origin("reply-close",
      "HTTP/1.1 200 OK\r\nServer : leak-host.internal\r\nContent-Length: 2\r\n\r\nok")
    tls_origin = helpers.start_h2_origin({ tls = { dir .. "/o.pem", dir .. "/o.key" } })
    hole = assert(helpers.blackhole())
    local refused = "127.0.0.1:" .. helpers.free_port()
    local dns = start_dns({}) -- knows no name
    port = helpers.free_port()
    local function pool(servers, extra)
      local p = { servers = servers, passive = false, tries = 1 }
      for k, v in pairs(extra or {}) do p[k] = v end
      return p
    end
    m = helpers.start_moxy({
      listen = { { addr = "127.0.0.1:" .. port, http2 = true } },
      upstreams = {
        backend_refused = pool({ refused }),
        backend_connect_timeout = pool({ hole.addr }),
        backend_read_timeout = pool({ origin.addr }),
        backend_bad = pool({ origin.addr }),
        backend_closed = pool({ closer.addr }),
        backend_badname = pool({ badname.addr }),
        backend_dns = pool({ "dbq.origin.internal:8080" }),
        backend_tls = pool({ origin.addr }, { tls = { name = "secret-origin.internal" } }),
        backend_tls_verify = pool({ tls_origin.addr }, { protocol = "h2", tls = { name = "secret-origin.internal" } }),
      },
      default_upstream = "backend_refused",
      resolver = { nameservers = { dns }, timeout = "1s" },
      timeouts = { connect = "500ms", upstream = "1s" },
      log = { level = "debug" },
      scripts = { "route.lua" },
    }, { files = { ["route.lua"] = [[
      return { on_request = function(txn)
        local pool, rest = txn.req.path:match("^/p/([%w_]+)(/.*)$")
        if pool then txn.upstream:pick(pool); txn.req.path = rest end
      end }
    ]] } })
    cases = {
      { pool = "backend_refused", path = "/x", status = 502, log = "connection refused", hide = { refused } },
      { pool = "backend_connect_timeout", path = "/x", status = 504, log = "connect to origin timed out",
        hide = { hole.addr } },
      { pool = "backend_read_timeout", path = "/slow-headers/5", status = 504, log = "origin read timed out",
        hide = { origin.addr } },
      { pool = "backend_bad", path = "/bad-response", status = 502, log = "invalid response from origin",
        hide = { origin.addr } },
      { pool = "backend_closed", path = "/x", status = 502, log = "closed the connection without answering",
        hide = { closer.addr } },
      { pool = "backend_badname", path = "/x", status = 502, log = "invalid response from origin",
        hide = { badname.addr, "leak-host" } },
      { pool = "backend_dns", path = "/x", status = 502, log = "cannot resolve dbq.origin.internal",
        hide = { "dbq", "origin.internal" } }, -- "q": never in a hex request id
      { pool = "backend_tls", path = "/x", status = 502, log = "TLS handshake with the origin failed",
        hide = { origin.addr, "secret-origin" } },
      { pool = "backend_tls_verify", path = "/echo", status = 502, log = "TLS handshake with the origin failed",
        hide = { tls_origin.addr, "secret-origin" } },
    }
  end)

  lazy_teardown(function()
    if hole then hole.close() end
    helpers.stop_all()
  end)

  -- what a client saw of res: its status line, head and body
  local function text_of(res)
    local out = { res.status_line }
    for _, kv in ipairs(res.header_list) do out[#out + 1] = kv[1] .. ": " .. kv[2] end
    out[#out + 1] = ""
    out[#out + 1] = res.body
    return table.concat(out, "\r\n")
  end

  -- the text a client saw must hold none of the origin's names
  local function clean(text, case, how)
    for _, s in ipairs(case.hide) do
      assert.is_nil(text:find(s, 1, true), case.pool .. " (" .. how .. ") told the client " .. s .. ":\n" .. text)
    end
    assert.is_nil(text:find("backend_", 1, true), case.pool .. " (" .. how .. ") named its pool:\n" .. text)
    assert.is_nil(text:find("127.0.0.1:", 1, true), case.pool .. " (" .. how .. ") named an address:\n" .. text)
  end

  it("answers each with its status and nothing of the origin, to HTTP/1.1 and HTTP/2 clients", function()
    for _, case in ipairs(cases) do
      local path = "/p/" .. case.pool .. case.path
      for _, accept in ipairs({ "text/html", "application/json" }) do
        local res = assert(helpers.request(port, { path = path, headers = { { "Accept", accept } } }))
        assert.equal(case.status, res.status, case.pool .. ": " .. res.body)
        clean(text_of(res), case, "HTTP/1.1, " .. accept)
        if accept == "application/json" then
          assert.equal(case.status, helpers.json(res.body).status)
        else
          assert.matches("request id", res.body, 1, true)
        end
      end
      local body, code, _, head = curl_h2("http://127.0.0.1:" .. port .. path)
      assert.equal(case.status, code, case.pool .. " over HTTP/2: " .. head)
      clean(head .. body, case, "HTTP/2")
      -- the error log is where the cause is told
      assert(m:wait_log(case.log, 5 * S, m.error_log), case.pool .. ": no log line with " .. case.log)
    end
  end)
end)

describe("mask config", function()
  local function check(body)
    local lines = { "return {", "  workers = 1," }
    for _, l in ipairs(body) do lines[#lines + 1] = l end
    lines[#lines + 1] = "}"
    local src = table.concat(lines, "\n") .. "\n"
    local code, out = helpers.run_moxy_check(src)
    return code, out, src
  end

  it("accepts mask at the top level and per listener", function()
    local code, out = check({
      '  listen = { "127.0.0.1:18080", { addr = "127.0.0.1:18081", mask = { add = { "X-Internal" }, via = "edge-1" } },',
      '             { addr = "127.0.0.1:18082", mask = false }, { addr = "127.0.0.1:18083", mask = true } },',
      '  upstreams = { app = { servers = { "127.0.0.1:9001" } } },',
      '  mask = { headers = { "Server", "X-Powered-By" }, server = "edge/2 (linux)", via = false },',
    })
    assert.equal(0, code, out)
  end)

  it("names file:line and the key of each bad value; moxy -t exits non-zero", function()
    local cases = {
      { '  mask = { headers = { "Server", "X Powered" } },', 'mask%.headers%[2%]: expected a header field name' },
      { '  mask = { headers = { "Server " } },', 'mask%.headers%[1%]: expected a header field name' },
      { '  mask = { headers = { "Content-Length" } },', 'mask%.headers%[1%]: Content%-Length is framing or hop%-by%-hop' },
      { '  mask = { add = { "Proxy-Authenticate" } },', 'mask%.add%[1%]: Proxy%-Authenticate is framing' },
      { '  mask = { headers = "Server" },', 'mask%.headers: expected a list' },
      { '  mask = { server = "<b>edge</b>" },', 'mask%.server: expected true, false or a name' },
      { '  mask = { server = "edge\\r\\nX-Evil: 1" },', 'mask%.server: expected true, false or a name' },
      { '  mask = { via = "edge 1" },', 'mask%.via: expected true, false or a pseudonym' },
      { '  mask = { via = 7 },', 'mask%.via: expected true, false or a pseudonym' },
      { '  mask = { hide = { "Server" } },', 'mask%.hide: unknown key' },
      { '  mask = "yes",', 'mask: expected a table' },
      { '  listen = { { addr = "127.0.0.1:18081", mask = { via = "a/b" } } },', 'listen%[1%]%.mask%.via' },
    }
    for _, c in ipairs(cases) do
      local body = { c[1] }
      if not c[1]:find("listen", 1, true) then body[#body + 1] = '  listen = { "127.0.0.1:18080" },' end
      body[#body + 1] = '  upstreams = { app = { servers = { "127.0.0.1:9001" } } },'
      local code, out, src = check(body)
      assert.is_true(code ~= nil and code ~= 0, c[1] .. ": exit " .. tostring(code) .. "\n" .. out)
      local line = helpers.line_of(src, c[1])
      assert.matches("moxy%.lua:" .. line .. ": " .. c[2], out)
    end
  end)
end)
