-- Compression: responses coded gzip, br or zstd on the way out, chosen by
-- the request's Accept-Encoding; gzip decoded for clients that cannot read
-- it, with a guard against bombs.  Every coded body is decoded here with the
-- gzip, brotli and zstd command-line tools (or curl) and compared with what
-- the origin (spec/support/compress_origin.py) sends: its text(N), a
-- compressible, varied, deterministic text.
local helpers = require "spec.helpers"

local S = helpers.scale
local PY = "/usr/bin/python3" -- the one with python3-brotli and python3-zstandard

local DECODER = { gzip = "gzip -dc", br = "brotli -dc", zstd = "zstd -dcq" }
local CODINGS = { "gzip", "br", "zstd" }

-- compress_origin.py: o.port, o.addr, o:targets() (request counts by target)
local function start_compress_origin()
  local p = helpers.spawn({ PY, "-u", helpers.support .. "/compress_origin.py", "0" },
    { dir = helpers.tmpdir("corigin"), kind = "origin" })
  local port = helpers.wait_until(function()
    local port = p:stdout():match("ready (%d+)")
    if port then return tonumber(port) end
    if not p:alive() then return -1 end
  end, 10 * S)
  if not port or port < 0 then
    p:stop("KILL")
    error("compress_origin.py did not start: " .. p:stdout() .. p:stderr(), 2)
  end
  local o = { port = port, addr = "127.0.0.1:" .. port, proc = p }
  function o:targets()
    local res = assert(helpers.request(self.port, { path = "/stats" }))
    return helpers.json(res.body).targets
  end
  return o
end

-- "/base?rh=..&k=v": rhs are origin response headers "Name:Value", q more
-- query parameters (a list of "k=v")
local function opath(base, rhs, q)
  local parts = {}
  for _, h in ipairs(rhs or {}) do parts[#parts + 1] = "rh=" .. helpers.query_escape(h) end
  for _, kv in ipairs(q or {}) do parts[#parts + 1] = kv end
  return base .. (#parts > 0 and ((base:find("?", 1, true) and "&" or "?") .. table.concat(parts, "&")) or "")
end

local function exec_ok(rc) return rc == 0 or rc == true end

-- data decoded by the coding's command-line tool -> text or nil, err
local function decode(dir, coding, data)
  local inp, out, err = dir .. "/in", dir .. "/out", dir .. "/err"
  helpers.write_file(inp, data)
  local rc = os.execute(string.format("%s < %s > %s 2> %s", DECODER[coding], inp, out, err))
  if not exec_ok(rc) then return nil, coding .. " decoder failed: " .. (helpers.read_file(err) or "") end
  return helpers.read_file(out)
end

-- "" when equal, else where they differ (short: bodies can be MiBs)
local function diff(want, got)
  if want == got then return "" end
  if type(got) ~= "string" then return "got " .. tostring(got) end
  local i, n = 1, math.min(#want, #got)
  while i <= n and want:sub(i, i + 4095) == got:sub(i, i + 4095) do i = i + 4096 end
  while i <= n and want:byte(i) == got:byte(i) do i = i + 1 end
  return string.format("%d bytes expected, %d got, first difference at byte %d (got %q)", #want, #got, i,
    got:sub(i, i + 20))
end

local function same(want, got, what)
  local d = diff(want, got)
  assert.is_true(d == "", (what or "body") .. ": " .. d)
end

-- Vary's tokens (lower case) -> list, count of accept-encoding
local function vary(res)
  local toks = helpers.tokens(res.headers["vary"])
  local n = 0
  for _, t in ipairs(toks) do if t == "accept-encoding" then n = n + 1 end end
  return toks, n
end

local function has(list, x)
  for _, v in ipairs(list) do if v == x then return true end end
  return false
end

-- one GET (or opts.method) with Accept-Encoding ae (nil: none) and more headers
local function get(port, path, ae, extra, opts)
  opts = opts or {}
  local headers = {}
  if type(ae) == "table" then
    for _, v in ipairs(ae) do headers[#headers + 1] = { "Accept-Encoding", v } end
  elseif ae then
    headers[#headers + 1] = { "Accept-Encoding", ae }
  end
  for _, h in ipairs(extra or {}) do headers[#headers + 1] = h end
  local res, err = helpers.request(port, { method = opts.method, path = path, headers = headers,
    version = opts.version, timeout = 10 * S })
  assert(res, "request " .. path .. ": " .. tostring(err))
  return res
end

local metric = helpers.metric

local function wait_metric(port, name, labels, atleast)
  return helpers.wait_until(function()
    local v = metric(port, name, labels)
    return v and v >= atleast and v
  end, 3 * S) or metric(port, name, labels) or -1
end

local SITE = [[
return {
  on_request = function(txn)
    local pool = txn.req.headers:get("X-Pool")
    if pool then txn.upstream:pick(pool) end
  end,
}
]]

describe("compression", function()
  local origin, m, dir
  local port, port_order, port_off, port_h2
  local texts = {}

  -- the origin's text(n), as the origin itself sends it
  local function text(n)
    if not texts[n] then
      local res = assert(helpers.request(origin.port, { path = "/gen/" .. n, timeout = 10 * S }))
      assert.equal(n, #res.body)
      texts[n] = res.body
    end
    return texts[n]
  end

  -- res is coded with coding and decodes to want
  local function assert_coded(res, coding, want, what)
    what = what or ""
    assert.equal(200, res.status, what)
    assert.equal(coding, res:header("content-encoding"), what)
    assert.is_nil(res:header("content-length"), what)
    local got, err = decode(dir, coding, res.body)
    assert(got, what .. ": " .. tostring(err))
    same(want, got, what)
  end

  -- res passes the origin's own coding through: its length kept, decodes to want
  local function assert_passed(res, coding, want, what)
    what = what or ""
    assert.equal(200, res.status, what)
    assert.equal(coding, res:header("content-encoding"), what)
    assert.equal(tostring(#res.body), res:header("content-length"), what)
    local got, err = decode(dir, coding, res.body)
    assert(got, what .. ": " .. tostring(err))
    same(want, got, what)
  end

  local function assert_plain(res, want, what, status)
    assert.equal(status or 200, res.status, what)
    assert.is_nil(res:header("content-encoding"), what)
    if want then same(want, res.body, what) end
  end

  lazy_setup(function()
    dir = helpers.tmpdir("compress")
    origin = start_compress_origin()
    port, port_order, port_off, port_h2 = helpers.free_port(), helpers.free_port(), helpers.free_port(),
      helpers.free_port()
    m = helpers.start_moxy({
      listen = {
        "127.0.0.1:" .. port,
        { addr = "127.0.0.1:" .. port_order,
          compression = { encodings = { "gzip", "zstd", "br" }, min_length = 2000 } },
        { addr = "127.0.0.1:" .. port_off, compression = false },
        { addr = "127.0.0.1:" .. port_h2, http2 = true },
      },
      upstreams = {
        app = { servers = { origin.addr } },
        plain = { servers = { origin.addr }, compression = false },
        fast = { servers = { origin.addr }, compression = { gzip = { level = 1 } } },
        small = { servers = { origin.addr }, compression = { decompress = { max_size = "1m" } } },
      },
      default_upstream = "app",
      admin = {},
      compression = { decompress = { max_ratio = 100, zstd = true } },
      timeouts = { upstream = "30s" },
      scripts = { "site.lua" },
    }, { files = { ["site.lua"] = SITE } })
  end)

  lazy_teardown(function() helpers.stop_all() end)

  describe("what the client decodes is the origin's body", function()
    it("gzip, br and zstd, 0 B to 1 MiB, from Content-Length, chunked and close-delimited origins", function()
      local bad = {}
      for _, n in ipairs({ 0, 1, 255, 256, 257, 100000, 1048576 }) do
        for _, frame in ipairs({ "cl", "chunked", "close" }) do
          for _, coding in ipairs(CODINGS) do
            local what = string.format("%s: %d B, %s", coding, n, frame)
            local res = get(port, "/gen/" .. n .. "?frame=" .. frame, coding)
            local ce = res:header("content-encoding")
            -- a known length below min_length (256) is not compressed; unknown lengths are
            local want_ce = (frame ~= "cl" or n >= 256) and coding or nil
            if res.status ~= 200 then
              bad[#bad + 1] = what .. ": status " .. res.status
            elseif ce ~= want_ce then
              bad[#bad + 1] = what .. ": Content-Encoding " .. tostring(ce) .. ", expected " .. tostring(want_ce)
            elseif want_ce then
              if res:header("content-length") then
                bad[#bad + 1] = what .. ": Content-Length " .. res:header("content-length") .. " on a coded body"
              end
              if not res.chunked then bad[#bad + 1] = what .. ": not chunked to an HTTP/1.1 client" end
              local got, err = decode(dir, coding, res.body)
              local d = got and diff(text(n), got) or err
              if d ~= "" then bad[#bad + 1] = what .. ": " .. d end
              if n >= 100000 and #res.body >= n / 2 then
                bad[#bad + 1] = what .. ": hardly compressed: " .. #res.body .. " bytes"
              end
            else
              local d = diff(text(n), res.body)
              if d ~= "" then bad[#bad + 1] = what .. " (uncompressed): " .. d end
            end
          end
        end
      end
      assert.is_true(#bad == 0, table.concat(bad, "\n"))
    end)

    it("64 MiB, streamed: the decoded stream's sha256 is the origin's, with each coding", function()
      local n = 64 * 1024 * 1024
      local want = helpers.json(assert(helpers.request(origin.port, { path = "/sha/" .. n, timeout = 30 * S })).body)
      -- one coding per request, each from another origin framing
      for coding, frame in pairs({ gzip = "chunked", br = "cl", zstd = "close" }) do
        local t0 = helpers.now()
        local out = dir .. "/sha-" .. coding
        local pipe = assert(io.popen(DECODER[coding] .. " | sha256sum > " .. out .. " 2>&1", "w"))
        local coded = 0
        local c = assert(helpers.connection(port, { timeout = 20 * S }))
        local res, err = c:request({ path = "/gen/" .. n .. "?frame=" .. frame,
          headers = { { "Accept-Encoding", coding } } }, {
          deadline = 60 * S,
          sink = function(chunk)
            coded = coded + #chunk
            pipe:write(chunk)
          end,
        })
        c:close()
        pipe:close()
        assert(res, coding .. ": " .. tostring(err) .. " after " .. coded .. " bytes")
        assert.equal(200, res.status)
        assert.equal(coding, res:header("content-encoding"))
        assert.is_nil(res:header("content-length"))
        assert.is_true(res.chunked, coding .. ": HTTP/1.1 client, no length: chunked")
        assert.is_true(coded < n / 2, coding .. ": " .. coded .. " coded bytes for " .. n)
        local sum = (helpers.read_file(out) or ""):match("^(%x+)")
        assert.equal(want.sha256, sum, coding .. " from a " .. frame .. " origin")
        assert.is_true(helpers.now() - t0 < 30 * S, coding .. " took " .. (helpers.now() - t0) .. " s")
      end
    end)

    it("a body the origin trickles one byte at a time", function()
      for _, c in ipairs({ { "gzip", "cl" }, { "zstd", "chunked" }, { "br", "close" } }) do
        local t0 = helpers.now()
        local res = get(port, "/gen/2500?trickle=0.0005&frame=" .. c[2], c[1])
        assert_coded(res, c[1], text(2500), c[1] .. " trickled, " .. c[2])
        assert.is_true(helpers.now() - t0 < 15 * S)
      end
    end)

    it("to an HTTP/1.0 client: no length, the end is the connection's close", function()
      local res = get(port, "/gen/5000", "gzip", nil, { version = "HTTP/1.0" })
      assert_coded(res, "gzip", text(5000))
      assert.is_true(res.close_delimited)
      assert.is_nil(res:header("transfer-encoding"))
    end)

    it("curl --compressed gets the origin's body, coded on the wire", function()
      for _, frame in ipairs({ "cl", "chunked" }) do
        local f, h = dir .. "/curl.body", dir .. "/curl.head"
        local out, code = helpers.sh(string.format(
          "timeout %d curl -sS --compressed -D %s -o %s -w '%%{size_download}' 'http://127.0.0.1:%d/gen/100000?frame=%s'",
          math.ceil(20 * S), h, f, port, frame))
        assert.equal(0, code, out)
        same(text(100000), helpers.read_file(f), "curl --compressed, " .. frame)
        local head = helpers.read_file(h):lower()
        assert.matches("\ncontent%-encoding: br\r\n", head) -- curl offers deflate, gzip, br, zstd: br wins the tie
        assert.is_true(tonumber(out) < 50000, "bytes on the wire: " .. out)
      end
    end)

    it("over HTTP/2 the same, without content-length", function()
      for _, coding in ipairs(CODINGS) do
        local f, h = dir .. "/h2.body", dir .. "/h2.head"
        local out, code = helpers.sh(string.format(
          "timeout %d curl -sS --http2-prior-knowledge -H 'Accept-Encoding: %s' -D %s -o %s -w '%%{http_version}' "
          .. "'http://127.0.0.1:%d/gen/300000?frame=chunked'", math.ceil(20 * S), coding, h, f, port_h2))
        assert.equal(0, code, out)
        assert.equal("2", out)
        local head = helpers.read_file(h):lower()
        assert.matches("\ncontent%-encoding: " .. coding .. "\r\n", head)
        assert.is_nil(head:find("\ncontent-length:", 1, true), head)
        assert.matches("\nvary: [^\r]*accept%-encoding", head)
        same(text(300000), decode(dir, coding, helpers.read_file(f)), "h2 " .. coding)
      end
      -- decoded for an h2 client that does not take gzip
      local f0, h0 = dir .. "/h2d.body", dir .. "/h2d.head"
      local out0, code0 = helpers.sh(string.format(
        "timeout %d curl -sS --http2-prior-knowledge -H 'Accept-Encoding: identity' -D %s -o %s "
        .. "'http://127.0.0.1:%d/gen/100000?enc=gzip'", math.ceil(20 * S), h0, f0, port_h2))
      assert.equal(0, code0, out0)
      assert.is_nil(helpers.read_file(h0):lower():find("\ncontent-encoding:", 1, true), helpers.read_file(h0))
      same(text(100000), helpers.read_file(f0), "h2 decoded")
      local f = dir .. "/h2c.body"
      local out, code = helpers.sh(string.format("timeout %d curl -sS --http2-prior-knowledge --compressed -o %s "
        .. "-w '%%{size_download}' 'http://127.0.0.1:%d/gen/1048576'", math.ceil(20 * S), f, port_h2))
      assert.equal(0, code, out)
      same(text(1048576), helpers.read_file(f), "h2 curl --compressed")
      assert.is_true(tonumber(out) < 1048576 / 2, out)
    end)
  end)

  describe("negotiation", function()
    it("picks the accepted coding with the highest q, ties in the configured order (br, zstd, gzip)", function()
      local cases = {
        { "gzip", "gzip" }, { "br", "br" }, { "zstd", "zstd" },
        { "gzip, br, zstd", "br" }, { "gzip, zstd", "zstd" }, { "zstd, gzip, br", "br" },
        { "gzip;q=1, br;q=0.5", "gzip" }, { "br;q=0.2, gzip;q=0.8, zstd;q=0.5", "gzip" },
        { "gzip;q=0.5, br;q=0.5, zstd;q=0.4", "br" }, { "zstd;q=0.9, gzip;q=0.9", "zstd" },
        { "gzip;q=1.0", "gzip" }, { "br;q=0.001", "br" }, { "gzip ; q=0.5 , br ; q=0.4", "gzip" },
        { "gzip;Q=0.5, zstd;q=0.3", "gzip" },
        -- q=0 refuses
        { "gzip;q=0", nil }, { "gzip;q=0, br", "br" }, { "gzip;q=0.000", nil },
        { "gzip;q=0, br;q=0, zstd;q=0", nil },
        -- * covers the codings not named
        { "*", "br" }, { "*;q=0.5, gzip", "gzip" }, { "*, br;q=0", "zstd" }, { "*, br;q=0, zstd;q=0", "gzip" },
        { "*;q=0.5, gzip;q=0.4", "br" }, { "*;q=0, zstd;q=0.2", "zstd" },
        -- identity
        { "identity", nil }, { "identity;q=1, gzip;q=0.5", nil }, { "identity, gzip;q=0.5", nil },
        { "identity;q=0.5, gzip;q=0.2, br;q=0.1", nil }, { "identity;q=0.5, gzip;q=1", "gzip" },
        { "gzip;q=0.1, identity;q=0", "gzip" },
        -- x-gzip is gzip; case does not matter
        { "x-gzip", "gzip" }, { "X-GZIP", "gzip" }, { "x-gzip;q=0.8, br;q=0.5", "gzip" },
        { "GZIP", "gzip" }, { "Br", "br" }, { "ZSTD", "zstd" },
        -- codings moxy does not make
        { "deflate", nil }, { "compress, deflate", nil }, { "deflate, gzip;q=0.5", "gzip" },
        -- the empty field accepts identity only
        { "", nil },
        -- several fields are one list
        { { "identity;q=0.5", "gzip" }, "gzip" }, { { "gzip;q=0.3", "zstd;q=0.6" }, "zstd" },
      }
      local bad = {}
      for _, c in ipairs(cases) do
        local ae, want = c[1], c[2]
        local label = type(ae) == "table" and table.concat(ae, " | ") or ae
        local res = get(port, "/gen/1000", ae)
        local ce = res:header("content-encoding")
        if res.status ~= 200 then
          bad[#bad + 1] = string.format("Accept-Encoding %q: status %d", label, res.status)
        elseif ce ~= want then
          bad[#bad + 1] = string.format("Accept-Encoding %q: Content-Encoding %s, expected %s", label, tostring(ce),
            tostring(want))
        elseif want then
          local got, err = decode(dir, want, res.body)
          local d = got and diff(text(1000), got) or err
          if d ~= "" then bad[#bad + 1] = string.format("Accept-Encoding %q: %s", label, d) end
        elseif res.body ~= text(1000) then
          bad[#bad + 1] = string.format("Accept-Encoding %q: uncompressed body differs", label)
        end
      end
      -- no Accept-Encoding at all: not compressed
      local res = get(port, "/gen/1000", nil)
      if res:header("content-encoding") then
        bad[#bad + 1] = "no Accept-Encoding: Content-Encoding " .. res:header("content-encoding")
      end
      assert.is_true(#bad == 0, "\n" .. table.concat(bad, "\n"))
    end)

    it("adds Vary: Accept-Encoding to responses that could be compressed, compressed or not", function()
      for _, ae in ipairs({ false, "identity", "gzip", "deflate" }) do
        local res = get(port, "/gen/1000", ae or nil)
        local _, n = vary(res)
        assert.equal(1, n, "Accept-Encoding " .. tostring(ae) .. ": Vary " .. tostring(res:header("vary")))
      end
    end)

    it("merges Vary, weakens a strong ETag, drops Accept-Ranges", function()
      local res = get(port, opath("/gen/2000", { "Vary:Accept-Encoding", 'ETag:"x1"', "Accept-Ranges:bytes" }), "gzip")
      assert_coded(res, "gzip", text(2000))
      local _, n = vary(res)
      assert.equal(1, n, res:header("vary"))
      assert.equal('W/"x1"', res:header("etag"))
      assert.is_nil(res:header("accept-ranges"))

      res = get(port, opath("/gen/2000", { "Vary:Cookie" }), "br")
      assert_coded(res, "br", text(2000))
      local toks
      toks, n = vary(res)
      assert.equal(1, n, res:header("vary"))
      assert.is_true(has(toks, "cookie"), res:header("vary"))

      res = get(port, opath("/gen/2000", { "Vary:*" }), "zstd")
      assert.equal("*", res:header("vary"))
      if res:header("content-encoding") then
        same(text(2000), decode(dir, res:header("content-encoding"), res.body), "Vary: *")
      end

      res = get(port, opath("/gen/2000", { 'ETag:W/"x2"' }), "gzip")
      assert_coded(res, "gzip", text(2000))
      assert.equal('W/"x2"', res:header("etag"))

      -- not compressed: the ETag stays strong
      res = get(port, opath("/gen/2000", { 'ETag:"x3"' }), nil)
      assert_plain(res, text(2000))
      assert.equal('"x3"', res:header("etag"))
    end)

    it("a listener's own order and min_length, merged over the top level's", function()
      local res = get(port_order, "/gen/3000", "br, zstd, gzip")
      assert_coded(res, "gzip", text(3000), "listener order gzip, zstd, br")
      assert_coded(get(port_order, "/gen/3000", "br, zstd"), "zstd", text(3000))
      assert_coded(get(port_order, "/gen/3000", "br"), "br", text(3000))
      assert_plain(get(port_order, "/gen/1000", "gzip"), text(1000), "below the listener's min_length 2000")
      -- the top level's decompress.zstd = true holds there too
      res = get(port_order, "/gen/3000?enc=zstd", "identity")
      assert_plain(res, text(3000), "zstd decoded on the listener")
      -- and the top level's order on the first listener
      assert_coded(get(port, "/gen/3000", "br, zstd, gzip"), "br", text(3000))
    end)

    it("a listener with compression = false compresses nothing", function()
      for _, coding in ipairs(CODINGS) do
        assert_plain(get(port_off, "/gen/3000", coding), text(3000), coding)
      end
    end)
  end)

  describe("never compressed", function()
    local ALL = "gzip, br, zstd"

    it("HEAD, 204, 304", function()
      local res = get(port, "/gen/1000", ALL, nil, { method = "HEAD" })
      assert.equal(200, res.status)
      assert.is_nil(res:header("content-encoding"))
      assert.equal("1000", res:header("content-length"))
      res = get(port, "/gen/1000?status=204", ALL)
      assert.equal(204, res.status)
      assert.is_nil(res:header("content-encoding"))
      res = get(port, opath("/gen/1000?match=t1", { 'ETag:"t1"' }), ALL, { { "If-None-Match", '"t1"' } })
      assert.equal(304, res.status)
      assert.is_nil(res:header("content-encoding"))
    end)

    it("a request with Range, a 206 with Content-Range", function()
      -- the origin ignores Range and answers 200 with all of it
      assert_plain(get(port, "/gen/1000", ALL, { { "Range", "bytes=0-99" } }), text(1000), "request with Range")
      local res = get(port, opath("/gen/1000?status=206", { "Content-Range:bytes 0-999/5000" }), ALL)
      assert_plain(res, text(1000), "206", 206)
      assert.equal("bytes 0-999/5000", res:header("content-range"))
    end)

    it("a response that already has a Content-Encoding: passed as it is, coded once", function()
      local res = get(port, "/gen/5000?enc=br", "gzip, br")
      assert_passed(res, "br", text(5000))
      res = get(port, "/gen/5000?enc=gzip", ALL)
      assert_passed(res, "gzip", text(5000))
    end)

    it("Cache-Control: no-transform in the response or in the request", function()
      assert_plain(get(port, opath("/gen/5000", { "Cache-Control:no-transform" }), ALL), text(5000), "response")
      assert_plain(get(port, opath("/gen/5000", { "Cache-Control:max-age=10, no-transform" }), ALL), text(5000),
        "response, in a list")
      assert_plain(get(port, "/gen/5000", ALL, { { "Cache-Control", "no-transform" } }), text(5000), "request")
      -- and it keeps the origin's coding: no decoding either
      local res = get(port, opath("/gen/5000?enc=gzip", { "Cache-Control:no-transform" }), "identity")
      assert_passed(res, "gzip", text(5000), "no-transform on a gzip body for an identity client")
    end)

    it("types not in the list", function()
      for _, ct in ipairs({ "image/png", "application/octet-stream", "font/woff2", "image/jpeg", "video/mp4" }) do
        assert_plain(get(port, "/gen/5000?ct=" .. helpers.query_escape(ct), ALL), text(5000), ct)
      end
    end)

    it("compresses the default types", function()
      for _, ct in ipairs({ "text/html; charset=utf-8", "text/css", "application/json", "application/vnd.api+json",
                            "application/javascript", "application/xml", "application/atom+xml", "image/svg+xml",
                            "application/wasm", "font/ttf", "font/otf", "Text/HTML" }) do
        assert_coded(get(port, "/gen/5000?ct=" .. helpers.query_escape(ct), "gzip"), "gzip", text(5000), ct)
      end
    end)

    it("a WebSocket upgrade: 101 and frames untouched", function()
      local c = assert(helpers.connection(port))
      local res = assert(c:request({ path = "/ws", headers = {
        { "Upgrade", "websocket" }, { "Connection", "Upgrade" }, { "Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==" },
        { "Sec-WebSocket-Version", "13" }, { "Accept-Encoding", ALL } } }))
      assert.equal(101, res.status)
      assert.is_nil(res:header("content-encoding"))
      local frame = assert(c:read_ws_frame(5 * S))
      assert.equal(1, frame.opcode)
      same(text(2000), frame.payload, "WebSocket frame")
      c:close()
    end)
  end)

  describe("decompression", function()
    it("decodes gzip for a client that does not accept it: no Content-Encoding, weak ETag, Vary", function()
      for _, ae in ipairs({ "identity", "br", "gzip;q=0, zstd;q=0" }) do
        local res = get(port, opath("/gen/5000?enc=gzip", { 'ETag:"d1"' }), ae)
        assert_plain(res, text(5000), "Accept-Encoding " .. ae)
        assert.equal('W/"d1"', res:header("etag"), ae)
        local _, n = vary(res)
        assert.equal(1, n, ae .. ": Vary " .. tostring(res:header("vary")))
      end
      -- chunked from the origin, bigger
      assert_plain(get(port, "/gen/1048576?enc=gzip&frame=chunked", "identity"), text(1048576), "1 MiB chunked")
    end)

    it("passes gzip as it is to a client without Accept-Encoding, and to one that accepts gzip", function()
      assert_passed(get(port, "/gen/5000?enc=gzip", nil), "gzip", text(5000), "no Accept-Encoding")
      assert_passed(get(port, "/gen/5000?enc=gzip", "gzip;q=0.1, br"), "gzip", text(5000), "accepts gzip")
    end)

    it("leaves br coded (decompress.br is off by default), decodes zstd (on at the top level here)", function()
      assert_passed(get(port, "/gen/5000?enc=br", "identity"), "br", text(5000), "br for identity")
      assert_plain(get(port, "/gen/5000?enc=zstd", "identity"), text(5000), "zstd for identity")
      -- Content-Encoding on an empty body: nothing to decode, an empty body
      assert_plain(get(port, "/gen/0?rh=Content-Encoding%3Agzip", "identity"), "", "empty gzip body")
      -- the body's end apart from its last bytes (an origin that closes, a last
      -- chunk in a later read): zstd's were cut (found by fuzz/http_response_fuzz.c)
      for _, frame in ipairs({ "close", "chunked" }) do
        for _, coding in ipairs({ "zstd", "gzip" }) do
          assert_plain(get(port, "/gen/5000?enc=" .. coding .. "&frame=" .. frame, "identity"), text(5000),
            coding .. " from a " .. frame .. " origin")
        end
      end
    end)

    it("stops a gzip bomb (10 MB of zeros past max_ratio 100): 502 or cut, a log line, the metric", function()
      local before = metric(m.admin_port, "moxy_decompression_bombs_total") or 0
      local res, err = helpers.request(port, { path = "/zeros/10485760?enc=gzip",
        headers = { { "Accept-Encoding", "identity" } }, timeout = 10 * S })
      if res then
        assert.equal(502, res.status, "a complete " .. res.status .. " response of " .. #res.body .. " bytes")
      else
        assert.matches("closed", err) -- cut: the client sees no complete response
      end
      assert.truthy(m:wait_error_log("max_ratio", 3 * S), m:error_text():sub(-2000))
      assert.equal(before + 1, wait_metric(m.admin_port, "moxy_decompression_bombs_total", nil, before + 1))
      -- the same from a chunked origin
      res, err = helpers.request(port, { path = "/zeros/10485760?enc=gzip&frame=chunked",
        headers = { { "Accept-Encoding", "identity" } }, timeout = 10 * S })
      if res then
        assert.equal(502, res.status, "chunked: a complete " .. res.status .. " response of " .. #res.body .. " bytes")
      else
        assert.matches("closed", err)
      end
      assert.equal(before + 2, wait_metric(m.admin_port, "moxy_decompression_bombs_total", nil, before + 2))
      -- a small legitimate gzip body still decodes
      assert_plain(get(port, "/gen/100000?enc=gzip", "identity"), text(100000), "after the bomb")
      -- and a client that takes gzip gets the bomb as it is (moxy does not decode it)
      res = get(port, "/zeros/10485760?enc=gzip", "gzip")
      assert.equal(200, res.status)
      assert.equal("gzip", res:header("content-encoding"))
    end)

    it("stops a body decoded past a pool's decompress.max_size (1m)", function()
      local before = metric(m.admin_port, "moxy_decompression_bombs_total") or 0
      local res, err = helpers.request(port, { path = "/gen/2000000?enc=gzip",
        headers = { { "Accept-Encoding", "identity" }, { "X-Pool", "small" } }, timeout = 10 * S })
      if res then
        assert.equal(502, res.status, "a complete " .. res.status .. " response of " .. #res.body .. " bytes")
      else
        assert.matches("closed", err)
      end
      assert.truthy(m:wait_error_log("max_size", 3 * S))
      assert.equal(before + 1, wait_metric(m.admin_port, "moxy_decompression_bombs_total", nil, before + 1))
      -- under it: fine
      assert_plain(get(port, "/gen/500000?enc=gzip", "identity", { { "X-Pool", "small" } }), text(500000), "500 KB")
    end)

    it("answers 502 to gzip that does not decode, and counts it", function()
      local before = metric(m.admin_port, "moxy_decompression_failures_total") or 0
      local res = get(port, "/bad-gzip", "identity")
      assert.equal(502, res.status)
      assert.equal(before + 1, wait_metric(m.admin_port, "moxy_decompression_failures_total", nil, before + 1))
      assert.equal(200, get(port, "/gen/1000", "gzip").status)
    end)

    it("never ends a decoded body cleanly when the origin's gzip stream stops short", function()
      -- the origin's Content-Length covers only the first bytes of the gzip stream
      for _, frame in ipairs({ "cl", "chunked" }) do
        local before = metric(m.admin_port, "moxy_decompression_failures_total") or 0
        local res, err = helpers.request(port, { path = "/gen/300000?enc=gzip&trunc=20000&frame=" .. frame,
          headers = { { "Accept-Encoding", "identity" } }, timeout = 10 * S })
        if res then
          assert.equal(502, res.status, frame .. ": a complete " .. res.status .. " response of " .. #res.body
            .. " bytes for a gzip stream cut short")
        else
          assert.matches("closed", err)
        end
        assert.equal(before + 1, wait_metric(m.admin_port, "moxy_decompression_failures_total", nil, before + 1))
      end
    end)

    it("decodes for an HTTP/1.0 client: close-delimited", function()
      local res = get(port, "/gen/100000?enc=gzip", "identity", nil, { version = "HTTP/1.0" })
      assert_plain(res, text(100000), "HTTP/1.0")
      assert.is_nil(res:header("content-length"))
      assert.is_true(res.close_delimited)
    end)
  end)

  it("a pool with compression = false compresses nothing; a pool with gzip level 1 less than the default", function()
    assert_plain(get(port, "/gen/100000", "gzip", { { "X-Pool", "plain" } }), text(100000), "pool plain")
    local def = get(port, "/gen/100000", "gzip", { { "X-Pool", "app" } })
    assert_coded(def, "gzip", text(100000), "pool app")
    local fast = get(port, "/gen/100000", "gzip", { { "X-Pool", "fast" } })
    assert_coded(fast, "gzip", text(100000), "pool fast")
    assert.is_true(#fast.body > #def.body, string.format("level 1: %d bytes, level 6: %d bytes", #fast.body,
      #def.body))
    -- the pool's table is merged over the top level's: br still br
    assert_coded(get(port, "/gen/100000", "br", { { "X-Pool", "fast" } }), "br", text(100000), "pool fast, br")
  end)

  it("counts compressed and decoded responses and bytes in /metrics and /status", function()
    local a = m.admin_port
    local function ctr(name, dir_, enc)
      return metric(a, name, { direction = dir_, encoding = enc }) or 0
    end
    local before = {}
    for _, enc in ipairs(CODINGS) do
      before[enc] = { r = ctr("moxy_compression_responses_total", "compress", enc),
                      i = ctr("moxy_compression_in_bytes_total", "compress", enc),
                      o = ctr("moxy_compression_out_bytes_total", "compress", enc) }
    end
    local dec_r = ctr("moxy_compression_responses_total", "decompress", "gzip")
    local dec_i = ctr("moxy_compression_in_bytes_total", "decompress", "gzip")
    local dec_o = ctr("moxy_compression_out_bytes_total", "decompress", "gzip")
    local sizes = {}
    for _, enc in ipairs(CODINGS) do
      local res = get(port, "/gen/100000", enc)
      assert_coded(res, enc, text(100000), enc)
      sizes[enc] = #res.body
    end
    assert_plain(get(port, "/gen/100000?enc=gzip", "identity"), text(100000), "decoded")
    for _, enc in ipairs(CODINGS) do
      local r = wait_metric(a, "moxy_compression_responses_total", { direction = "compress", encoding = enc },
        before[enc].r + 1)
      assert.equal(before[enc].r + 1, r, enc)
      -- bytes: at least this response's
      assert.truthy(wait_metric(a, "moxy_compression_in_bytes_total", { direction = "compress", encoding = enc },
        before[enc].i + 100000) >= before[enc].i + 100000, enc)
      assert.truthy(wait_metric(a, "moxy_compression_out_bytes_total", { direction = "compress", encoding = enc },
        before[enc].o + sizes[enc]) >= before[enc].o + sizes[enc], enc)
    end
    assert.equal(dec_r + 1, wait_metric(a, "moxy_compression_responses_total",
      { direction = "decompress", encoding = "gzip" }, dec_r + 1))
    assert.is_true(wait_metric(a, "moxy_compression_out_bytes_total", { direction = "decompress", encoding = "gzip" },
      dec_o + 100000) >= dec_o + 100000)
    local din = ctr("moxy_compression_in_bytes_total", "decompress", "gzip") - dec_i
    assert.is_true(din > 0 and din < 100000, "decoded gzip bytes in: " .. din)
    assert.truthy(metric(a, "moxy_compression_skipped_total"))
    assert.equal(0, metric(a, "moxy_compression_skipped_total"))
    assert.truthy(metric(a, "moxy_compression_memory_bytes"))
    assert.truthy(metric(a, "moxy_decompression_failures_total"))
    assert.truthy(metric(a, "moxy_decompression_bombs_total"))

    local st = helpers.json(assert(helpers.request(a, { path = "/status" })).body)
    local c = st.compression
    assert.is_table(c, "no compression in /status")
    for _, k in ipairs({ "memory", "skipped", "decode_failures", "bombs" }) do
      assert.is_number(c[k], k)
    end
    for _, enc in ipairs(CODINGS) do
      local e = c.encodings and c.encodings[enc]
      assert.is_table(e, enc)
      assert.is_true(e.compressed.responses >= 1, enc)
      assert.is_true(e.compressed["in"] >= 100000, enc)
      assert.is_true(e.compressed.out >= sizes[enc], enc)
      assert.is_table(e.decoded, enc)
      -- the same totals as /metrics
      assert.equal(metric(a, "moxy_compression_responses_total", { direction = "compress", encoding = enc }),
        e.compressed.responses, enc)
      assert.equal(metric(a, "moxy_compression_out_bytes_total", { direction = "compress", encoding = enc }),
        e.compressed.out, enc)
    end
    assert.equal(metric(a, "moxy_decompression_bombs_total"), c.bombs)
    assert.equal(metric(a, "moxy_decompression_failures_total"), c.decode_failures)
    assert.is_true(c.encodings.gzip.decoded.responses >= 1)
    assert.is_true(c.encodings.gzip.decoded.out >= 100000)
  end)
end)

describe("compression and Lua", function()
  local origin, m, dir

  local HOOKS = [[
return {
  on_request = function(txn)
    txn.ctx.mode = txn.req.headers:get("X-Mode")
    if txn.ctx.mode == "early-off" then txn.resp:compress(false) end
    if txn.ctx.mode == "early-on" then txn.resp:compress(true) end
  end,
  on_response = function(txn)
    local mode = txn.ctx.mode
    if mode == "off" then txn.resp:compress(false)
    elseif mode == "on" then txn.resp:compress(true)
    elseif mode == "gzip4" then txn.resp:compress{ encoding = "gzip", level = 4 }
    elseif mode == "gzip1" then txn.resp:compress{ encoding = "gzip", level = 1 }
    elseif mode == "gzip9" then txn.resp:compress{ encoding = "gzip", level = 9 }
    elseif mode == "bad-arg" then txn.resp:compress("yes")
    elseif mode == "bad-enc" then txn.resp:compress{ encoding = "deflate" }
    elseif mode == "bad-level" then txn.resp:compress{ encoding = "gzip", level = 42 }
    end
  end,
  on_body = function(txn, chunk, eof)
    if txn.ctx.mode == "upper" then return chunk:upper() end
  end,
}
]]

  local texts = {}
  local function text(n)
    if not texts[n] then texts[n] = assert(helpers.request(origin.port, { path = "/gen/" .. n })).body end
    return texts[n]
  end

  local function g(path, ae, mode)
    return get(m.port, path, ae, mode and { { "X-Mode", mode } } or nil)
  end

  local function coded(res, coding, want, what)
    assert.equal(200, res.status, what)
    assert.equal(coding, res:header("content-encoding"), what)
    local got, err = decode(dir, coding, res.body)
    assert(got, tostring(err))
    same(want, got, what)
  end

  lazy_setup(function()
    dir = helpers.tmpdir("compress-lua")
    origin = start_compress_origin()
    m = helpers.start_moxy({
      upstreams = { app = { servers = { origin.addr } } },
      scripts = { "hooks.lua" },
    }, { files = { ["hooks.lua"] = HOOKS } })
  end)

  lazy_teardown(function() helpers.stop_all() end)

  it("txn.resp:compress(false): the response as the origin sent it, neither compressed nor decoded", function()
    local res = g("/gen/5000", "gzip, br", "off")
    assert.equal(200, res.status)
    assert.is_nil(res:header("content-encoding"))
    same(text(5000), res.body, "compress(false)")
    res = g("/gen/5000?enc=gzip", "identity", "off")
    coded(res, "gzip", text(5000), "compress(false) on a gzip body for an identity client")
    -- from on_request too
    res = g("/gen/5000", "gzip, br", "early-off")
    assert.is_nil(res:header("content-encoding"), "compress(false) in on_request")
    same(text(5000), res.body, "compress(false) in on_request")
    coded(g("/gen/5000?enc=gzip", "identity", "early-off"), "gzip", text(5000), "compress(false) in on_request, gzip")
    -- without the hook the same requests are coded and decoded
    coded(g("/gen/5000", "gzip, br"), "br", text(5000), "no hook")
    assert.is_nil(g("/gen/5000?enc=gzip", "identity"):header("content-encoding"))
  end)

  it("txn.resp:compress(true): whatever the type and length, when the client accepts a coding", function()
    coded(g("/gen/10", "gzip", "on"), "gzip", text(10), "10 bytes")
    coded(g("/gen/0", "zstd", "on"), "zstd", "", "0 bytes")
    coded(g("/gen/1", "br", "on"), "br", text(1), "1 byte")
    coded(g("/gen/5000?ct=image/png", "zstd", "on"), "zstd", text(5000), "image/png")
    coded(g("/gen/5000?ct=application/octet-stream", "br", "on"), "br", text(5000), "octet-stream")
    coded(g("/gen/20?ct=font/woff2", "gzip", "early-on"), "gzip", text(20), "compress(true) in on_request")
    local res = g("/gen/5000?ct=image/png", nil, "on")
    assert.is_nil(res:header("content-encoding"), "no Accept-Encoding")
    same(text(5000), res.body)
    res = g("/gen/5000?ct=image/png", "identity", "on")
    assert.is_nil(res:header("content-encoding"), "identity")
  end)

  it("txn.resp:compress{encoding, level}: that coding if the client takes it, at that level", function()
    coded(g("/gen/100000", "br, zstd, gzip", "gzip4"), "gzip", text(100000), "gzip level 4")
    local res = g("/gen/100000", "br", "gzip4")
    assert.equal(200, res.status)
    assert.is_nil(res:header("content-encoding"), "the client does not take gzip")
    same(text(100000), res.body)
    local l1, l9 = g("/gen/100000", "gzip", "gzip1"), g("/gen/100000", "gzip", "gzip9")
    coded(l1, "gzip", text(100000), "level 1")
    coded(l9, "gzip", text(100000), "level 9")
    assert.is_true(#l1.body > #l9.body, string.format("level 1: %d bytes, level 9: %d", #l1.body, #l9.body))
  end)

  it("bad arguments raise: the request gets a 500", function()
    for _, mode in ipairs({ "bad-arg", "bad-enc", "bad-level" }) do
      local res = g("/gen/1000", "gzip", mode)
      assert.equal(500, res.status, mode)
    end
    assert.truthy(m:wait_log("txn.resp:compress", 3 * S, m.error_log))
    assert.equal(200, g("/gen/1000", "gzip").status)
  end)

  it("compresses what the on_body hooks made", function()
    coded(g("/gen/100000?frame=chunked", "gzip", "upper"), "gzip", text(100000):upper(), "upper-cased, gzip")
    coded(g("/gen/300000", "zstd", "upper"), "zstd", text(300000):upper(), "upper-cased, zstd")
    coded(g("/gen/5000?frame=chunked&chunk=100", "br", "upper"), "br", text(5000):upper(), "small chunks")
  end)
end)

describe("request bodies: txn:read_body{decode = true}", function()
  local origin, m, dir

  lazy_setup(function()
    dir = helpers.tmpdir("compress-body")
    origin = helpers.start_origin()
    m = helpers.start_moxy({
      upstreams = { app = { servers = { origin.addr } } },
      compression = { decompress = { max_ratio = 100 } },
      scripts = { "site.lua" },
    }, { files = { ["site.lua"] = [[
      return {
        on_request = function(txn)
          local mode = txn.req.headers:get("X-Decode")
          if not mode then return end -- the body streams to the origin as it came
          local body, err = txn:read_body{ decode = true, max = tonumber(mode) }
          if not body then
            txn:log_field("decode_error", err)
            return -- the request is answered with the failure's status
          end
          txn.req.headers:set("X-Hook-Saw", tostring(#body))
        end,
      }
    ]] } })
  end)

  lazy_teardown(function() helpers.stop_all() end)

  -- n bytes of varied, compressible text
  local function text(n)
    local parts, i = {}, 0
    while #parts * 24 < n do
      i = i + 1
      parts[#parts + 1] = string.format("line %08d of the body\n", i * 7919 % 100000)
    end
    return table.concat(parts):sub(1, n)
  end

  -- data coded with the command-line tool of coding
  local function encode(coding, data)
    local enc = { gzip = "gzip -c", br = "brotli -c", zstd = "zstd -qc" }
    helpers.write_file(dir .. "/plain", data)
    assert(os.execute(enc[coding] .. " < " .. dir .. "/plain > " .. dir .. "/coded"))
    return helpers.read_file(dir .. "/coded")
  end

  local function post(body, headers)
    return assert(helpers.request(m.port, { method = "POST", path = "/echo", body = body, headers = headers,
      timeout = 10 * S }))
  end

  it("decodes a gzip, br or zstd body: the hook and the origin get it decoded, with its length", function()
    local plain = text(60000) -- the origin echoes bodies up to 64 KiB
    for _, coding in ipairs(CODINGS) do
      local res = post(encode(coding, plain), { { "Content-Encoding", coding }, { "X-Decode", "0" } })
      assert.equal(200, res.status, coding)
      local doc = helpers.echo(res)
      assert.equal(#plain, doc.body_length, coding)
      assert.equal(plain, doc.body, coding)
      assert.is_nil(helpers.echo_value(doc, "Content-Encoding"), coding)
      assert.equal(tostring(#plain), helpers.echo_value(doc, "Content-Length"), coding)
      assert.equal(tostring(#plain), helpers.echo_value(doc, "X-Hook-Saw"), coding)
    end
  end)

  it("passes a coded body untouched without decode, and a body without a coding as it is", function()
    local coded = encode("gzip", text(5000))
    local doc = helpers.echo(post(coded, { { "Content-Encoding", "gzip" } }))
    assert.equal(#coded, doc.body_length)
    assert.equal("gzip", helpers.echo_value(doc, "Content-Encoding"))
    doc = helpers.echo(post(text(3000), { { "X-Decode", "0" } }))
    assert.equal(text(3000), doc.body)
  end)

  it("answers 400 to a body that does not decode, 413 to a bomb or one past max, 415 to another coding", function()
    local res = post(("not gzip at all "):rep(20), { { "Content-Encoding", "gzip" }, { "X-Decode", "0" } })
    assert.equal(400, res.status)
    res = post(encode("gzip", ("\0"):rep(10 * 1024 * 1024)), { { "Content-Encoding", "gzip" }, { "X-Decode", "0" } })
    assert.equal(413, res.status)
    res = post(encode("zstd", text(100000)), { { "Content-Encoding", "zstd" }, { "X-Decode", "50000" } })
    assert.equal(413, res.status, "decoded past the hook's max")
    res = post("x", { { "Content-Encoding", "deflate" }, { "X-Decode", "0" } })
    assert.equal(415, res.status)
    -- a repeated Content-Encoding (two codings in a row) is not decoded either
    res = post(encode("gzip", text(1000)), { { "Content-Encoding", "gzip" }, { "Content-Encoding", "gzip" }, { "X-Decode", "0" } })
    assert.equal(415, res.status, "two Content-Encoding lines")
    assert.truthy(m:wait_log("request body not decoded (gzip)", 3 * S, m.error_log))
  end)
end)

describe("compression and the cache", function()
  local origin, m, dir

  lazy_setup(function()
    dir = helpers.tmpdir("compress-cache")
    origin = start_compress_origin()
    m = helpers.start_moxy({
      upstreams = { app = { servers = { origin.addr } } },
      cache = { size = "16m", max_object = "2m", purge = { "127.0.0.1/32" } },
      admin = {},
    })
  end)

  local function compressed(coding)
    return metric(m.admin_port, "moxy_compression_responses_total", { direction = "compress", encoding = coding }) or 0
  end

  -- n requests for path at once with Accept-Encoding ae, each on its own connection
  local function at_once(path, ae, n)
    local conns, out = {}, {}
    for i = 1, n do
      conns[i] = assert(helpers.connection(m.port))
      assert(conns[i]:send(helpers.build_request({ path = path, headers = { { "Accept-Encoding", ae } } })))
    end
    for i = 1, n do
      out[i] = assert(conns[i]:read_response())
      conns[i]:close()
    end
    return out
  end

  it("keeps a compressed variant per coding: later hits of that coding are not compressed again, and have a length", function()
    local want = assert(helpers.request(origin.port, { path = "/gen/300000" })).body
    local p = opath("/gen/300000", { "Cache-Control:max-age=60" }, { "case=variants" })
    assert.equal(200, get(m.port, p).status) -- the miss: stored as the origin sent it
    for _, coding in ipairs(CODINGS) do
      local before = compressed(coding)
      local first = get(m.port, p, coding)
      assert.is_nil(first:header("content-length"), coding) -- the first hit of a coding compresses
      same(want, decode(dir, coding, first.body), coding .. ", first hit")
      for i = 1, 3 do
        local res = get(m.port, p, coding)
        assert.equal(coding, res:header("content-encoding"))
        assert.equal(tostring(#res.body), res:header("content-length"), coding .. ", hit " .. i)
        assert.matches("hit", res:header("cache-status"), 1, true)
        same(want, decode(dir, coding, res.body), coding .. ", hit " .. i)
      end
      assert.equal(before + 1, compressed(coding), coding .. " compressed once")
    end
    -- the stored object itself is as the origin sent it
    local plain = get(m.port, p, "identity")
    assert.equal(tostring(#want), plain:header("content-length"))
    same(want, plain.body, "identity hit")
    assert.equal(1, origin:targets()[p], "the origin answered once")
  end)

  it("compresses a stored object once for concurrent hits: the others stream what it makes", function()
    local want = assert(helpers.request(origin.port, { path = "/gen/1500000" })).body
    local p = opath("/gen/1500000", { "Cache-Control:max-age=60" }, { "case=coalesced" })
    assert.equal(200, get(m.port, p).status)
    local before = compressed("gzip")
    local res = at_once(p, "gzip", 20)
    for i, r in ipairs(res) do
      assert.equal(200, r.status)
      assert.equal("gzip", r:header("content-encoding"))
      same(want, decode(dir, "gzip", r.body), "hit " .. i)
    end
    assert.equal(before + 1, compressed("gzip"), "20 hits at once, compressed once")
  end)

  it("makes the copy whatever its first client does: one that leaves at once cuts nobody else", function()
    local want = assert(helpers.request(origin.port, { path = "/gen/1500000" })).body
    local p = opath("/gen/1500000", { "Cache-Control:max-age=60" }, { "case=leaves" })
    assert.equal(200, get(m.port, p).status)
    local before = compressed("zstd")
    local first = assert(helpers.connection(m.port))
    assert(first:send(helpers.build_request({ path = p, headers = { { "Accept-Encoding", "zstd" } } })))
    first:close() -- the hit that starts the copy is gone before it reads a byte
    for i, r in ipairs(at_once(p, "zstd", 5)) do
      assert.equal(200, r.status)
      same(want, decode(dir, "zstd", r.body), "hit " .. i)
    end
    assert.equal(before + 1, compressed("zstd"), "compressed once")
    local res = get(m.port, p, "zstd")
    assert.equal(tostring(#res.body), res:header("content-length"), "the copy was kept")
  end)

  it("drops the variants with their object: a purge, and a new response for the key", function()
    local want = assert(helpers.request(origin.port, { path = "/gen/50000" })).body
    local p = opath("/gen/50000", { "Cache-Control:max-age=60" }, { "case=purge" })
    get(m.port, p)
    get(m.port, p, "br")
    assert.equal(tostring(#get(m.port, p, "br").body), get(m.port, p, "br"):header("content-length"))
    local purge = assert(helpers.request(m.port, { method = "PURGE", path = p }))
    assert.equal(200, purge.status)
    assert.equal("purged 2\n", purge.body) -- the object and its br variant
    -- stored anew: its first br hit compresses again (a new body, a new variant)
    local before = compressed("br")
    get(m.port, p)
    local res = get(m.port, p, "br")
    assert.is_nil(res:header("content-length"))
    same(want, decode(dir, "br", res.body), "after the purge")
    assert.equal(before + 1, compressed("br"))
  end)

  lazy_teardown(function() helpers.stop_all() end)

  it("stores what the origin sent: each hit coded as its client asks, 304s (weak ETag, Vary), 206 uncoded", function()
    local want = assert(helpers.request(origin.port, { path = "/gen/200000" })).body
    local p = opath("/gen/200000", { "Cache-Control:max-age=60", 'ETag:"c1"' }, { "case=hits" })
    local function check(res, coding, what)
      assert.equal(200, res.status, what)
      assert.equal(coding, res:header("content-encoding"), what)
      local body = res.body
      if coding then body = assert(decode(dir, coding, res.body)) end
      same(want, body, what)
    end
    local first = get(m.port, p, "gzip")
    check(first, "gzip", "miss, gzip")
    assert.equal('W/"c1"', first:header("etag"))
    for _, c in ipairs({ { "br", "br" }, { "zstd", "zstd" }, { "gzip", "gzip" }, { nil, nil }, { "identity", nil } }) do
      local res = get(m.port, p, c[1])
      check(res, c[2], "hit, Accept-Encoding " .. tostring(c[1]))
      assert.matches("hit", res:header("cache-status") or "", 1, true)
      assert.equal(c[2] and 'W/"c1"' or '"c1"', res:header("etag"), tostring(c[1]))
      local _, n = vary(res)
      assert.equal(1, n, "Vary " .. tostring(res:header("vary")))
    end
    assert.equal(1, origin:targets()[p], "the origin answered once")

    -- the weak ETag the client got validates the cached object
    local res = get(m.port, p, "gzip", { { "If-None-Match", 'W/"c1"' } })
    assert.equal(304, res.status)
    assert.equal('W/"c1"', res:header("etag"))
    assert.is_nil(res:header("content-encoding"))
    -- RFC 9110 15.4.5: a 304 carries the Vary a 200 to the same request would
    local _, nv = vary(res)
    assert.equal(1, nv, "Vary on the cache's 304: " .. tostring(res:header("vary")))
    -- the strong form and a client without Accept-Encoding validate too; each
    -- 304 carries the Vary and the ETag its 200 would (RFC 9110 15.4.5)
    for _, c in ipairs({ { "br, gzip", '"c1"', 'W/"c1"' }, { nil, 'W/"c1"', '"c1"' }, { nil, '"c1"', '"c1"' } }) do
      res = get(m.port, p, c[1], { { "If-None-Match", c[2] } })
      local what = "If-None-Match " .. c[2] .. ", Accept-Encoding " .. tostring(c[1])
      assert.equal(304, res.status, what)
      _, nv = vary(res)
      assert.equal(1, nv, what .. ": Vary " .. tostring(res:header("vary")))
      assert.equal(c[3], res:header("etag"), what)
    end

    -- a range of the stored, uncoded bytes
    res = get(m.port, p, "gzip, br, zstd", { { "Range", "bytes=100-1099" } })
    assert.equal(206, res.status)
    assert.is_nil(res:header("content-encoding"))
    assert.equal("bytes 100-1099/200000", res:header("content-range"))
    same(want:sub(101, 1100), res.body, "range")
    assert.equal(1, origin:targets()[p], "the origin still answered once")

    -- HEAD from the cache: not compressed
    res = get(m.port, p, "gzip", nil, { method = "HEAD" })
    assert.equal(200, res.status)
    assert.is_nil(res:header("content-encoding"))
  end)

  it("stores a gzip response as it came: passed to clients that take gzip, decoded for the others", function()
    local want = assert(helpers.request(origin.port, { path = "/gen/100000" })).body
    local p = opath("/gen/100000?enc=gzip", { "Cache-Control:max-age=60", 'ETag:"g1"' }, { "case=gzip" })
    local res = get(m.port, p, "gzip")
    assert.equal("gzip", res:header("content-encoding"))
    same(want, decode(dir, "gzip", res.body), "miss, gzip")
    for _, ae in ipairs({ "gzip", "identity", "br", "gzip", "zstd, identity;q=0.1" }) do
      res = get(m.port, p, ae)
      assert.equal(200, res.status, ae)
      assert.matches("hit", res:header("cache-status") or "", 1, true)
      if ae == "gzip" then
        assert.equal("gzip", res:header("content-encoding"), ae)
        assert.equal('"g1"', res:header("etag"), ae)
        same(want, decode(dir, "gzip", res.body), "hit, " .. ae)
      else
        assert.is_nil(res:header("content-encoding"), ae)
        assert.equal('W/"g1"', res:header("etag"), ae)
        same(want, res.body, "hit, " .. ae)
      end
    end
    assert.equal(1, origin:targets()[p], "the origin answered once")
  end)
end)

describe("compression past its memory budget", function()
  local origin, m, dir

  lazy_setup(function()
    dir = helpers.tmpdir("compress-mem")
    origin = start_compress_origin()
    m = helpers.start_moxy({
      upstreams = { app = { servers = { origin.addr } } },
      admin = {},
      compression = { memory = "16k" }, -- less than one gzip compressor's state (~256 KiB)
    })
  end)

  lazy_teardown(function() helpers.stop_all() end)

  it("sends new responses uncompressed while the coders hold more, and counts them as skipped", function()
    local want = assert(helpers.request(origin.port, { path = "/gen/100000" })).body
    local slow_want = assert(helpers.request(origin.port, { path = "/gen/1500" })).body
    local before = metric(m.admin_port, "moxy_compression_skipped_total") or 0
    -- a response the origin trickles (about 1.5 s) holds its coder meanwhile
    local slow = assert(helpers.connection(m.port, { timeout = 10 * S }))
    assert(slow:send(helpers.build_request({ path = "/gen/1500?trickle=0.001&frame=chunked",
      headers = { { "Accept-Encoding", "gzip" } } })))
    helpers.sleep(0.3)
    local skipped = 0
    for _, coding in ipairs(CODINGS) do
      local res = get(m.port, "/gen/100000", coding)
      assert.equal(200, res.status)
      assert.is_nil(res:header("content-encoding"), coding .. " while another response is coded")
      same(want, res.body, coding)
      skipped = skipped + 1
    end
    local sres = assert(slow:read_response())
    slow:close()
    -- the slow one itself: coded (it held the memory), or skipped too (its coder alone is past 16k)
    local ce = sres:header("content-encoding")
    if ce then
      same(slow_want, decode(dir, ce, sres.body), "the slow response")
    else
      skipped = skipped + 1
      same(slow_want, sres.body, "the slow response")
    end
    assert.equal(before + skipped, wait_metric(m.admin_port, "moxy_compression_skipped_total", nil, before + skipped))
  end)
end)

describe("compression config", function()
  local function check(lines)
    local src = table.concat(lines, "\n") .. "\n"
    local code, out = helpers.run_moxy_check(src)
    return code, out, src
  end

  local HEAD = {
    "return {",
    "  workers = 1,",
  }

  local function conf(body)
    local lines = {}
    for _, l in ipairs(HEAD) do lines[#lines + 1] = l end
    for _, l in ipairs(body) do lines[#lines + 1] = l end
    lines[#lines + 1] = "}"
    return lines
  end

  it("accepts compression at the top level, per listener and per pool", function()
    local code, out = check(conf({
      '  listen = { "127.0.0.1:18080", { addr = "127.0.0.1:18081", compression = { min_length = "1k" } },',
      '             { addr = "127.0.0.1:18082", compression = false } },',
      '  upstreams = { app = { servers = { "127.0.0.1:9001" }, compression = { gzip = { level = 1 } } },',
      '                off = { servers = { "127.0.0.1:9002" }, compression = false } },',
      '  default_upstream = "app",',
      '  compression = { enabled = true, encodings = { "zstd", "gzip" }, types = { "text/*", "application/*+json" },',
      '                  min_length = 512, gzip = { level = 9, window = 12, mem_level = 4 },',
      '                  br = { level = 11, window = 22 }, zstd = { level = 19, window = 23 }, memory = "64m",',
      '                  decompress = { gzip = true, br = true, zstd = true, max_size = "16m", max_ratio = 50 } },',
    }))
    assert.equal(0, code, out)
  end)

  it("names file:line and the key of each bad value; moxy -t exits non-zero", function()
    local cases = {
      { "  compression = { gzip = { level = 10 } },", "compression%.gzip%.level: expected a number in 1%.%.9" },
      { '  compression = { encodings = { "gzip", "lzma" } },', 'compression%.encodings%[2%]: unknown coding' },
      { "  compression = { br = { level = 12 } },", "compression%.br%.level: expected a number in 0%.%.11" },
      { '  compression = { types = { "nonsense" } },', "compression%.types%[1%]" },
      { '  compression = { min_length = "lots" },', "compression%.min_length" },
      { "  compression = { decompress = { max_ratio = 1 } },", "compression%.decompress%.max_ratio" },
      { '  compression = { mystery = 1 },', "compression%.mystery: unknown key" },
      { '  upstreams = { app = { servers = { "127.0.0.1:9001" }, compression = { zstd = { level = 99 } } } },',
        "upstreams%.app%.compression%.zstd%.level" },
      { '  listen = { { addr = "127.0.0.1:18081", compression = { memory = "1m" } } },',
        "listen%[1%]%.compression%.memory: unknown key" },
    }
    for _, c in ipairs(cases) do
      local body = { c[1] }
      if not c[1]:find("listen", 1, true) then body[#body + 1] = '  listen = { "127.0.0.1:18080" },' end
      if not c[1]:find("upstreams", 1, true) then
        body[#body + 1] = '  upstreams = { app = { servers = { "127.0.0.1:9001" } } },'
      end
      local code, out, src = check(conf(body))
      assert.is_true(code ~= nil and code ~= 0, c[1] .. ": exit " .. tostring(code) .. "\n" .. out)
      local line = helpers.line_of(src, c[1])
      assert.matches("moxy%.lua:" .. line .. ": " .. c[2], out)
    end
  end)
end)
