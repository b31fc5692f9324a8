-- Message bodies both ways: Content-Length, chunked (with trailers), close-
-- delimited, bodiless responses (HEAD, 204, 304), interim responses (100
-- Continue, 103 Early Hints), and 2 GiB transfers in bounded memory with
-- backpressure in both directions.
local helpers = require "spec.helpers"

local echo = helpers.echo
local MiB = 1024 * 1024
local GiB = 1024 * MiB
local BIG = helpers.sanitized and 256 * MiB or 2 * GiB     -- Content-Length up/download
local MID = helpers.sanitized and 64 * MiB or 256 * MiB     -- chunked up/download
local STALL = helpers.sanitized and 128 * MiB or 512 * MiB  -- backpressure transfers
local RSS_LIMIT_KIB = 64 * 1024 -- moxy's whole process tree

-- RSS means nothing under ASan (shadow memory, quarantine): only the
-- transfer itself is checked there
local function assert_rss(moxy, label, samples)
  local rss, hwm = moxy:rss()
  assert(rss, "cannot read /proc status of moxy")
  if samples then samples[#samples + 1] = rss end
  if helpers.sanitized then return end
  assert(rss < RSS_LIMIT_KIB, string.format("%s: moxy VmRSS %d KiB >= %d KiB", label, rss, RSS_LIMIT_KIB))
  assert(hwm < RSS_LIMIT_KIB, string.format("%s: moxy VmHWM %d KiB >= %d KiB", label, hwm, RSS_LIMIT_KIB))
end

describe("bodies", function()
  local origin, moxy

  lazy_setup(function()
    origin = helpers.start_origin()
    moxy = helpers.start_moxy({
      upstreams = { app = { servers = { origin.addr } } },
      limits = { body_bytes = "3g" },
      timeouts = { upstream = "120s", client_body = "120s", client_send = "120s" },
    })
  end)

  lazy_teardown(function() helpers.stop_all() end)

  it("forwards a Content-Length request body", function()
    local e = echo(helpers.request(moxy.port, { method = "POST", path = "/echo", body = "plain body\r\n" }))
    assert.equal("plain body\r\n", e.body)
    -- binary: the origin checks every byte against the pattern
    local doc = echo(helpers.request(moxy.port, { method = "POST", path = "/upload",
      body = helpers.pattern(0, 50000) }))
    assert.equal(50000, doc.bytes)
    assert.is_false(doc.chunked)
    assert.is_true(doc.pattern_ok, "body changed on the way")
  end)

  it("forwards a chunked request body", function()
    local e = echo(helpers.request(moxy.port, { method = "POST", path = "/echo",
      chunks = { "hello ", "chunked ", string.rep("x", 20000), " world" } }))
    assert.equal("hello chunked " .. string.rep("x", 20000) .. " world", e.body)
  end)

  it("forwards request trailers", function()
    local e = echo(helpers.request(moxy.port, { method = "POST", path = "/echo",
      chunks = { "body" }, trailers = { { "X-Req-Trailer", "t1" } } }))
    assert.equal("body", e.body)
    assert.is_true(e.chunked, "trailers need a chunked request to the origin")
    assert.same({ { "X-Req-Trailer", "t1" } }, e.trailers)
  end)

  it("forwards a Content-Length response", function()
    local res = assert(helpers.request(moxy.port, { path = "/bytes/100000" }))
    assert.equal(200, res.status)
    assert.equal("100000", res:header("content-length"))
    assert.equal(100000, #res.body)
    assert.is_true(helpers.pattern_ok(0, res.body))
  end)

  it("forwards a chunked response", function()
    local res = assert(helpers.request(moxy.port, { path = "/chunked/100000?chunk=7000" }))
    assert.equal(200, res.status)
    assert.equal(100000, #res.body)
    assert.is_true(helpers.pattern_ok(0, res.body))
  end)

  it("forwards response trailers", function()
    local res = assert(helpers.request(moxy.port, { path = "/chunked/1000?trailer=1" }))
    assert.equal(1000, #res.body)
    assert.is_true(res.chunked, "response to the client is not chunked")
    assert.equal("done", res.trailers["x-trailer"] and res.trailers["x-trailer"][1])
    assert.equal("1000", res.trailers["x-body-length"] and res.trailers["x-body-length"][1])
  end)

  it("forwards a close-delimited response", function()
    local c = assert(helpers.connection(moxy.port))
    local res = assert(c:request({ path = "/close/100000" }))
    assert.equal(200, res.status)
    assert.equal(100000, #res.body)
    assert.is_true(helpers.pattern_ok(0, res.body))
    c:close()
  end)

  it("sends a chunked or close-delimited origin body to an HTTP/1.0 client delimited by close", function()
    for _, path in ipairs({ "/chunked/30000?chunk=7000", "/close/30000" }) do
      local c = assert(helpers.connection(moxy.port))
      local res = assert(c:request({ path = path, version = "HTTP/1.0",
        headers = { { "Connection", "keep-alive" } } }))
      assert.equal(200, res.status)
      assert.is_falsy(res.chunked, path .. ": chunked sent to an HTTP/1.0 client")
      assert.is_true(res.close_delimited, path .. ": not delimited by close")
      assert.equal(30000, #res.body)
      assert.is_true(helpers.pattern_ok(0, res.body))
      assert.is_true((c:wait_closed(2 * helpers.scale)), path .. ": connection left open")
      c:close()
    end
  end)

  it("keeps an HTTP/1.0 keep-alive client's connection for a sized body", function()
    local c = assert(helpers.connection(moxy.port))
    for _ = 1, 2 do
      local res = assert(c:request({ path = "/bytes/500", version = "HTTP/1.0",
        headers = { { "Connection", "keep-alive" } } }))
      assert.equal(200, res.status)
      assert.equal("keep-alive", res:header("connection"))
      assert.equal(500, #res.body)
    end
    c:close()
  end)

  it("sends no body for HEAD, and the connection stays in sync", function()
    local c = assert(helpers.connection(moxy.port))
    local res = assert(c:request({ method = "HEAD", path = "/bytes/5000" }))
    assert.equal(200, res.status)
    if res:header("content-length") then assert.equal("5000", res:header("content-length")) end
    local res2 = assert(c:request({ method = "HEAD", path = "/chunked/5000" }))
    assert.equal(200, res2.status)
    assert.equal("/echo?after=head", echo(c:request({ path = "/echo?after=head" })).uri)
    c:close()
  end)

  for _, code in ipairs({ 204, 304 }) do
    it("sends no body for " .. code .. ", and the connection stays in sync", function()
      local c = assert(helpers.connection(moxy.port))
      local res = assert(c:request({ path = "/status/" .. code }))
      assert.equal(code, res.status)
      assert.equal("", res.body)
      assert.is_nil(res.headers["transfer-encoding"], "Transfer-Encoding on a " .. code)
      assert.equal("/echo?after=" .. code, echo(c:request({ path = "/echo?after=" .. code })).uri)
      c:close()
    end)
  end

  it("answers Expect: 100-continue with 100 before the body is sent", function()
    local c = assert(helpers.connection(moxy.port))
    assert(c:send(helpers.build_request({ method = "POST", path = "/echo",
      headers = { { "Content-Length", "11" }, { "Expect", "100-continue" } } })))
    local line, err = c:read_line(3 * helpers.scale)
    assert(line, "no interim response before the body: " .. tostring(err))
    assert.matches("^HTTP/1%.1 100 ", line)
    repeat
      local l = assert(c:read_line())
    until l == ""
    assert(c:send("hello world"))
    local e = echo(c:read_response({ method = "POST" }))
    assert.equal("hello world", e.body)
    c:close()
  end)

  it("forwards 103 Early Hints before the final response", function()
    local res = assert(helpers.request(moxy.port, { path = "/early-hints" }))
    assert.equal(200, res.status)
    assert.equal("early hints done\n", res.body)
    assert.equal(1, #res.interim, "no 1xx forwarded")
    assert.equal(103, res.interim[1].status)
    assert.matches("rel=preload", res.interim[1]:header("link"))
  end)

  describe("large", function()
    it(string.format("downloads %d MiB (Content-Length) with VmRSS < 64 MiB", BIG / MiB), function()
      local samples = {}
      local r = assert(helpers.download(moxy.port, string.format("/bytes/%d", BIG), {
        progress = function() assert_rss(moxy, "download", samples) end,
      }))
      assert.equal(200, r.status)
      assert.equal(BIG, r.bytes)
      assert.equal(string.format("%d", BIG), r.res:header("content-length"))
      assert.is_true(r.pattern_ok, "downloaded bytes differ from what the origin sent")
      assert.is_true(#samples >= 3, "RSS sampled only " .. #samples .. " times")
      assert_rss(moxy, "after download")
    end)

    it(string.format("uploads %d MiB (Content-Length) with VmRSS < 64 MiB", BIG / MiB), function()
      local r = assert(helpers.upload(moxy.port, "/upload", BIG, {
        progress = function() assert_rss(moxy, "upload") end,
      }))
      assert.equal(200, r.status)
      local doc = helpers.json(r.res.body)
      assert.equal(BIG, doc.bytes)
      assert.is_true(doc.pattern_ok, "the origin received different bytes")
      assert_rss(moxy, "after upload")
    end)

    it(string.format("downloads %d MiB chunked", MID / MiB), function()
      local r = assert(helpers.download(moxy.port, string.format("/chunked/%d?chunk=100003", MID), {
        progress = function() assert_rss(moxy, "chunked download") end,
      }))
      assert.equal(200, r.status)
      assert.equal(MID, r.bytes)
      assert.is_true(r.pattern_ok)
    end)

    it(string.format("uploads %d MiB chunked", MID / MiB), function()
      local r = assert(helpers.upload(moxy.port, "/upload", MID, {
        chunked = true,
        progress = function() assert_rss(moxy, "chunked upload") end,
      }))
      assert.equal(200, r.status)
      local doc = helpers.json(r.res.body)
      assert.equal(MID, doc.bytes)
      assert.is_true(doc.pattern_ok)
    end)

    it("does not buffer a response the client stops reading", function()
      local during
      local r = assert(helpers.download(moxy.port, string.format("/bytes/%d", STALL), {
        pause = {
          at = 8 * MiB, seconds = 2,
          during = function()
            helpers.sleep(1.5)
            during = moxy:rss()
            assert_rss(moxy, "client paused")
          end,
        },
      }))
      assert.equal(STALL, r.bytes)
      assert.is_true(r.pattern_ok)
      assert.is_number(during)
    end)

    it("does not buffer a request body the origin stops reading", function()
      local during
      local r = assert(helpers.upload(moxy.port, "/upload?delay=3", STALL, {
        stall = {
          seconds = 0,
          during = function()
            helpers.sleep(0.5)
            during = moxy:rss()
            assert_rss(moxy, "origin paused")
          end,
        },
      }))
      assert.equal(200, r.status)
      local doc = helpers.json(r.res.body)
      assert.equal(STALL, doc.bytes)
      assert.is_true(doc.pattern_ok)
      assert.is_true(r.stalled, "the upload never blocked: moxy buffered the whole body?")
      assert.is_number(during)
    end)
  end)
end)
