-- HTTP/2 toward origins: a pool with protocol = "h2" speaks HTTP/2 to its
-- servers (prior knowledge in cleartext, ALPN h2 over TLS) and runs many
-- tries as streams of few connections, within the origin's
-- SETTINGS_MAX_CONCURRENT_STREAMS and the pool's max_streams; HTTP/1.1 and
-- HTTP/2 clients alike; bodies both ways with flow control, trailers, 103;
-- a refused stream is sent again, a reset one fails like a closed
-- connection; gRPC passes end to end.  Origins: spec/support/h2origin.py
-- (the python3-h2 library) and spec/support/grpc_peer.py (python3-grpcio).
local helpers = require "spec.helpers"
local cjson = require "cjson.safe"
local socket = require "socket"

local S = helpers.scale

-- curl to moxy: body, status, head (h2: over HTTP/2 with prior knowledge)
local function curl(url, extra, h2)
  local out = helpers.sh(string.format("timeout %d curl -sS -H 'Expect:' %s -D - %s -w '\\n%%{http_code}' '%s'",
    math.ceil(20 * S), h2 and "--http2-prior-knowledge" or "--http1.1", extra or "", url))
  local head, body, code = out:match("^(.-\r\n\r\n)(.*)\n(%d+)$")
  return body or out, tonumber(code), head or ""
end

describe("HTTP/2 to origins", function()
  local dir, o, otls, olimit, ohc, grpc, m, port

  local function metric(name)
    local res = helpers.request(m.admin_port, { path = "/metrics" })
    local text = res and res.body or ""
    return tonumber(text:match(name:gsub("[%{%}%.%-\"]", "%%%0") .. " (%d+)")), text
  end

  local function url(path) return "http://127.0.0.1:" .. port .. path end

  lazy_setup(function()
    dir = helpers.tmpdir("h2o")
    helpers.make_cert(dir, "o", "ec", "origin.test", { "origin.test", "IP:127.0.0.1" })
    o = helpers.start_h2_origin()
    otls = helpers.start_h2_origin({ tls = { dir .. "/o.pem", dir .. "/o.key" } })
    olimit = helpers.start_h2_origin({ max_streams = 3 })
    ohc = helpers.start_h2_origin() -- the health checks' own
    grpc = helpers.start_grpc_origin()
    port = helpers.free_port()
    m = helpers.start_moxy({
      listen = { { addr = "127.0.0.1:" .. port, http2 = true } },
      upstreams = {
        h2 = { servers = { o.addr }, protocol = "h2", keepalive_timeout = "1s" },
        h2tls = { servers = { otls.addr }, protocol = "h2", tls = { ca = dir .. "/o.pem", name = "origin.test" } },
        limited = { servers = { olimit.addr }, protocol = "h2", max_streams = 10 },
        capped = { servers = { o.addr }, protocol = "h2", max_streams = 2 },
        grpc = { servers = { grpc.addr }, protocol = "h2" },
        down = { servers = { "127.0.0.1:" .. helpers.free_port() }, protocol = "h2" },
        hc_ok = { servers = { ohc.addr }, protocol = "h2",
                  health = { method = "HEAD", path = "/status/204", interval = "200ms", healthy = 1, unhealthy = 1 } },
        hc_bad = { servers = { ohc.addr }, protocol = "h2",
                   health = { path = "/status/503", interval = "200ms", healthy = 1, unhealthy = 1 } },
        hc_tls = { servers = { otls.addr }, protocol = "h2", tls = { ca = dir .. "/o.pem", name = "origin.test" },
                   health = { path = "/echo/hc", body = '"scheme": "https"', interval = "200ms", healthy = 1,
                              unhealthy = 1 } },
      },
      default_upstream = "h2",
      admin = {},
      cache = { size = "8m" },
      timeouts = { upstream = 2 },
      scripts = { "route.lua" },
    }, { files = { ["route.lua"] = [[
      return {
        on_request = function(txn)
          if txn.req.path:find("^/moxy%.test%.") then return txn.upstream:pick("grpc") end
          local pool, rest = txn.req.path:match("^/@([%w_]+)(/.*)$")
          if pool then
            txn.upstream:pick(pool)
            txn.req.path = rest
          end
          txn.req.headers:set("X-Edge", "moxy")
        end,
        on_response = function(txn)
          txn.resp.headers:set("X-Seen", txn.resp.status .. " over " .. txn.req.http_version)
        end,
      }
    ]] } })
  end)

  lazy_teardown(function() helpers.stop_all() end)

  it("carries an HTTP/1.1 client's request over prior knowledge: pseudo-fields, lower-case names, no hop-by-hop", function()
    local body, code, head = curl(url("/echo/a?x=1"), "-H 'Keep-Alive: 5' -H 'Connection: keep-alive, X-Hop' "
      .. "-H 'X-Hop: 1' -H 'Upgrade: websocket' -H 'TE: trailers' -H 'Mixed-Case: yes'")
    assert.equal(200, code, body)
    assert.matches("X-Seen: 200 over 1.1", head, 1, true) -- on_response ran
    local e = assert(cjson.decode(body), body)
    assert.equal("GET", e.method)
    assert.equal("/echo/a?x=1", e.path)
    assert.equal("http", e.scheme)
    assert.equal("127.0.0.1:" .. port, e.authority)
    local names = {}
    for _, h in ipairs(e.headers) do names[h[1]] = h[2] end
    assert.equal("yes", names["mixed-case"])
    assert.equal("moxy", names["x-edge"])
    assert.equal("trailers", names["te"]) -- the one TE HTTP/2 allows (gRPC's servers want it)
    assert.is_truthy(names["x-forwarded-for"])
    for _, hop in ipairs { "keep-alive", "connection", "x-hop", "upgrade", "host", "transfer-encoding" } do
      assert.is_nil(names[hop], hop)
    end
  end)

  it("speaks h2 over TLS (ALPN h2, the certificate verified) to HTTP/2 clients", function()
    local body, code, head = curl(url("/@h2tls/echo/tls"), nil, true)
    assert.equal(200, code, body)
    assert.matches("x-seen: 200 over 2", head, 1, true)
    local e = assert(cjson.decode(body), body)
    assert.equal("https", e.scheme)
    assert.equal("/echo/tls", e.path)
  end)

  it("multiplexes: many requests at once on a few connections, the pool's max_streams a cap", function()
    o:reset_stats()
    local out = helpers.sh(string.format("timeout %d h2load -n 200 -c 2 -m 50 '%s' 2>&1", math.ceil(60 * S),
      url("/@capped/slow-headers/0.05")))
    assert.matches("200 succeeded", out, 1, true)
    local st = o:stats()
    assert.equal(200, st.streams)
    assert.is_true(st.max_concurrent <= 2, cjson.encode(st.max_concurrent)) -- max_streams = 2
    o:reset_stats()
    out = helpers.sh(string.format("timeout %d h2load -n 300 -c 3 -m 100 '%s' 2>&1", math.ceil(60 * S),
      url("/slow-headers/0.2")))
    assert.matches("300 succeeded", out, 1, true)
    st = o:stats()
    assert.equal(300, st.streams)
    assert.is_true(st.max_concurrent > 20, "streams at once on one connection: " .. st.max_concurrent)
    assert.is_true(st.connections <= 4, "connections: " .. st.connections) -- 100 streams each (the default)
  end)

  it("stays within the origin's SETTINGS_MAX_CONCURRENT_STREAMS, opening more connections", function()
    olimit:reset_stats()
    local out = helpers.sh(string.format("timeout %d h2load -n 40 -c 1 -m 20 '%s' 2>&1", math.ceil(60 * S),
      url("/@limited/slow-headers/0.1")))
    assert.matches("40 succeeded", out, 1, true)
    local st = olimit:stats()
    assert.equal(0, st.refused, cjson.encode(st)) -- nothing over the limit was sent
    assert.is_true(st.max_concurrent <= 3, cjson.encode(st))
    assert.is_true(st.connections >= 2, cjson.encode(st))
  end)

  it("does not let one slow stream stall the others on the same origin connection", function()
    -- the client reads nothing of a big download: its stream's window closes at
    -- the origin; a second request on the same origin connection is answered
    local outf = os.tmpname()
    local cmd = string.format("timeout %d /usr/bin/python3 %s/h2probe.py --port %d --timeout %g slow-reader "
      .. "--path /bytes/50000000 --other /echo/small --delay 2 > %s", math.ceil(30 * S), helpers.support, port,
      10 * S, outf)
    local before = m:rss()
    local p = helpers.spawn({ "sh", "-c", cmd }, {})
    helpers.sleep(1.5)
    local during = m:rss()
    local body, code = curl(url("/echo/meanwhile"))
    assert.equal(200, code, body)
    p:wait_exit(20 * S)
    local r = assert(cjson.decode(helpers.read_file(outf)), helpers.read_file(outf))
    os.remove(outf)
    assert.is_true(r.first.stalled, cjson.encode(r))
    assert.is_true(r.second.completed, cjson.encode(r))
    -- moxy holds a stream window (256 KiB) of the origin's body and its client's buffers
    assert.is_true(during - before < 16 * 1024, string.format("RSS %d -> %d KiB", before, during))
  end)

  it("streams big bodies both ways, with and without a length, byte for byte", function()
    local f = dir .. "/up.bin"
    helpers.sh(string.format("head -c 5000000 /dev/urandom > %s", f))
    local sha = helpers.sh("sha256sum " .. f):match("^(%x+)")
    local body, code = curl(url("/upload"), "--data-binary @" .. f .. " -H 'Content-Type: application/octet-stream'")
    assert.equal(200, code, body)
    local u = assert(cjson.decode(body), body)
    assert.equal(5000000, u.bytes)
    assert.equal(sha, u.sha256)
    body, code = curl(url("/upload"), "--data-binary @" .. f .. " -H 'Transfer-Encoding: chunked'")
    assert.equal(200, code, body)
    assert.equal(sha, assert(cjson.decode(body)).sha256)
    -- with Expect: 100-continue (moxy answers the 100 itself, then streams the body as DATA)
    local out = helpers.sh(string.format("timeout %d curl -sS --http1.1 -H 'Expect: 100-continue' --data-binary @%s '%s'",
      math.ceil(20 * S), f, url("/upload")))
    assert.equal(sha, (assert(cjson.decode(out), out)).sha256)
    body, code = curl(url("/upload"), "--data-binary @" .. f, true) -- an HTTP/2 client's DATA
    assert.equal(200, code, body)
    assert.equal(sha, assert(cjson.decode(body)).sha256)
    for _, path in ipairs { "/bytes/3000000", "/nolength/3000000" } do
      for _, h2 in ipairs { false, true } do
        local out = helpers.sh(string.format("timeout %d curl -sS %s '%s' | sha256sum", math.ceil(20 * S),
          h2 and "--http2-prior-knowledge" or "--http1.1", url(path)))
        local want = helpers.sh("/usr/bin/python3 -c \"import hashlib,sys; print(hashlib.sha256(bytes(i % 251 "
          .. "for i in range(3000000))).hexdigest())\"")
        assert.equal(want:match("%x+"), out:match("^(%x+)"), path)
      end
    end
  end)

  it("passes trailers both ways and 103 Early Hints", function()
    local out = helpers.sh(string.format("timeout %d nghttp -v '%s'", math.ceil(10 * S), url("/trailers")))
    assert.matches("body with trailers", out, 1, true)
    assert.matches("x-trailer: done", out, 1, true)
    assert.matches("x-checksum: 42", out, 1, true)
    -- an HTTP/1.1 client gets them in the last chunk
    local raw = helpers.raw(port, "GET /trailers HTTP/1.1\r\nHost: x\r\nTE: trailers\r\nConnection: close\r\n\r\n",
      { timeout = 5 * S })
    assert.matches("Transfer%-Encoding: chunked", raw)
    assert.matches("\r\n0\r\nx%-trailer: done\r\nx%-checksum: 42\r\n\r\n$", raw)
    -- request trailers reach the origin
    raw = helpers.raw(port, "POST /echo/rt HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
      .. "5\r\nhello\r\n0\r\nX-Sum: 5\r\n\r\n", { timeout = 5 * S })
    assert.matches('"trailers": %[%["x%-sum", "5"%]%]', raw)
    assert.matches('"body": "hello"', raw, 1, true)
    out = helpers.sh(string.format("timeout %d nghttp -v '%s'", math.ceil(10 * S), url("/early-hints")))
    assert.matches(":status: 103", out, 1, true)
    assert.matches("link: </style.css>; rel=preload", out, 1, true)
    assert.matches("early hints done", out, 1, true)
  end)

  it("sends a refused stream again on a new connection; a reset stream is a failed try", function()
    o:reset_stats()
    -- REFUSED_STREAM: not processed (RFC 9113 8.7), even a POST goes again
    local body, code = curl(url("/refuse?once=r1"), "-X POST")
    assert.equal(200, code, body)
    assert.equal("POST", assert(cjson.decode(body)).method)
    -- a body read by a hook goes again too; a streamed one cannot
    body, code = curl(url("/refuse?once=r2"), "-d 'a=1'")
    assert.equal(502, code, body)
    -- above a GOAWAY's last stream id: the same
    body, code = curl(url("/goaway?once=g1"))
    assert.equal(200, code, body)
    assert.is_truthy(m:wait_error_log("GOAWAY"))
    -- an INTERNAL_ERROR reset before the head: 502, the origin's word in the log
    body, code = curl(url("/reset"))
    assert.equal(502, code, body)
    assert.is_truthy(m:wait_error_log("origin reset the stream (INTERNAL_ERROR)"))
    -- in the body: the client's response is cut, not completed
    local _, c2 = helpers.sh(string.format("timeout %d curl -sS --http1.1 -o /dev/null '%s' 2>&1",
      math.ceil(10 * S), url("/reset-mid-body")))
    assert.are_not.equal(0, c2)
    local rsts = metric('moxy_pool_h2_resets_total{pool="h2"}')
    assert.is_true(rsts >= 3, tostring(rsts))
    assert.is_true(metric('moxy_pool_h2_goaways_total{pool="h2"}') >= 1)
  end)

  it("answers 502 when the origin is down and 504 when it is slow", function()
    local body, code = curl(url("/@down/echo/x"))
    assert.equal(502, code, body)
    local t0 = socket.gettime()
    body, code = curl(url("/slow-headers/4"))
    assert.equal(504, code, m:error_text():sub(-1500))
    assert.is_true(socket.gettime() - t0 < 3.5 * S)
  end)

  it("caches what an h2 origin sends like any other response", function()
    local body, code, head = curl(url("/echo/cached?cc=max-age%3D60"))
    assert.equal(200, code, body)
    local first = assert(cjson.decode(body)).stream
    body, code, head = curl(url("/echo/cached?cc=max-age%3D60"), nil, true)
    assert.equal(200, code, body)
    assert.equal(first, assert(cjson.decode(body)).stream) -- the same answer
    assert.matches("cache%-status: moxy; hit", head:lower())
  end)

  it("closes idle origin connections after keepalive_timeout and counts them", function()
    curl(url("/echo/idle"))
    assert.is_true(metric('moxy_pool_h2_connections{pool="h2"}') >= 1)
    assert.is_true(metric('moxy_pool_h2_streams_total{pool="h2"}') >= 1)
    assert.is_truthy(helpers.wait_until(function()
      return metric('moxy_pool_h2_connections{pool="h2"}') == 0
    end, 5 * S))
  end)

  it("carries gRPC end to end: unary, errors in trailers, server streaming and bidirectional streaming", function()
    local target = "127.0.0.1:" .. port
    local r = helpers.grpc_call(target, "unary", "hello", "--tag", "t1")
    assert.equal("OK", r.code, cjson.encode(r))
    assert.equal("echo:hello", r.reply)
    assert.equal("grpc-origin", r.trailers["x-served-by"])
    assert.equal("t1", r.initial["x-tag"])
    r = helpers.grpc_call(target, "fail")
    assert.equal("NOT_FOUND", r.code, cjson.encode(r))
    assert.equal("no such thing", r.details)
    r = helpers.grpc_call(target, "server-stream", "5")
    assert.equal("OK", r.code, cjson.encode(r))
    assert.same({ "msg-0", "msg-1", "msg-2", "msg-3", "msg-4" }, r.replies)
    -- each message answered before the next is sent: nothing is buffered on the way
    r = helpers.grpc_call(target, "bidi", "20")
    assert.equal("OK", r.code, cjson.encode(r))
    assert.equal(20, #r.replies)
    assert.equal("echo:m19", r.replies[20])
    assert.is_true(r.interleaved)
    assert.is_truthy(m:wait_log('"POST /moxy.test.Echo/Bidi HTTP/2.0" 200'))
  end)

  it("checks an h2 pool's health over HTTP/2: status, body, TLS with ALPN h2", function()
    local function up(pool, addr)
      return metric('moxy_peer_up{pool="' .. pool .. '",peer="' .. addr .. '"}')
    end
    assert.is_truthy(helpers.wait_until(function()
      return up("hc_ok", ohc.addr) == 1 and up("hc_tls", otls.addr) == 1 and up("hc_bad", ohc.addr) == 0
    end, 5 * S), select(2, metric("x")))
    local st = assert(cjson.decode(helpers.request(m.admin_port, { path = "/status" }).body))
    assert.equal("unhealthy", st.pools.hc_bad.peers[1].state)
    assert.equal("up", st.pools.hc_ok.peers[1].state)
    assert.is_true(st.pools.hc_ok.peers[1].checks >= 1)
    local seen
    for _, e in ipairs(ohc:stats().log) do
      if e.path == "/status/204" then seen = e end
    end
    assert.is_truthy(seen)
    assert.equal("HEAD", seen.method) -- over HTTP/2, as health.method says
    assert.equal(ohc.addr, seen.authority) -- the server's address: no host set
  end)

  it("refuses a protocol it does not speak, naming the key", function()
    local bad = helpers.write_file(dir .. "/bad.lua", [[
      return { listen = { "127.0.0.1:1" }, upstreams = { a = { servers = { "127.0.0.1:2" }, protocol = "h3" } } }
    ]])
    local out, code = helpers.sh(helpers.moxy_bin() .. " -t -c " .. bad .. " 2>&1")
    assert.are_not.equal(0, code)
    assert.matches("upstreams.a.protocol", out, 1, true)
  end)
end)

describe("HTTP/2 origins across a reload and a shutdown", function()
  local o

  lazy_setup(function() o = helpers.start_h2_origin() end)
  lazy_teardown(function() helpers.stop_all() end)

  -- curl in the background: its output file (status, then body)
  local function background(u)
    local out = os.tmpname()
    local p = helpers.spawn({ "sh", "-c", string.format("timeout %d curl -sS -w '\\n%%{http_code}' '%s' > %s 2>&1",
      math.ceil(20 * S), u, out) }, {})
    return p, out
  end

  it("keeps its origin connections across a reload: streams in flight finish, new ones reuse them", function()
    local m = helpers.start_moxy({
      workers = 1,
      upstreams = { app = { servers = { o.addr }, protocol = "h2" } },
      scripts = { "tag.lua" },
    }, { files = { ["tag.lua"] = [[return { on_response = function(txn) txn.resp.headers:set("X-Gen", "one") end }]] } })
    local base = "http://127.0.0.1:" .. m.port
    local body = curl(base .. "/echo/warm")
    local conn = assert(cjson.decode(body), body).conn
    local p, out = background(base .. "/slow-body/1")
    helpers.sleep(0.3)
    helpers.write_file(m.dir .. "/tag.lua",
      [[return { on_response = function(txn) txn.resp.headers:set("X-Gen", "two") end }]])
    m:signal("HUP")
    local after
    assert.is_truthy(helpers.wait_until(function()
      local b, _, head = curl(base .. "/echo/after")
      after = cjson.decode(b)
      return head:find("X-Gen: two", 1, true)
    end, 10 * S))
    p:wait_exit(20 * S)
    assert.matches("helloworld\n200$", helpers.read_file(out))
    os.remove(out)
    assert.equal(conn, after.conn) -- the same connection carried both generations' streams
  end)

  it("on QUIT finishes the streams in flight to an h2 origin, then exits", function()
    local m = helpers.start_moxy({ upstreams = { app = { servers = { o.addr }, protocol = "h2" } } })
    local base = "http://127.0.0.1:" .. m.port
    local p, out = background(base .. "/slow-headers/1")
    helpers.sleep(0.3)
    m:signal("QUIT")
    p:wait_exit(20 * S)
    assert.matches("^slow\n\n200$", helpers.read_file(out))
    os.remove(out)
    assert.is_truthy(m:wait_exit(10 * S))
  end)
end)
