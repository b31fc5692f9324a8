-- Compression at scale: the memory per concurrent compressed stream is
-- bounded, with 10,000 streams open at once.  10,000 HTTP/1.1 clients
-- (spec/support/many_streams.py, one GET with Accept-Encoding: gzip each)
-- go through one moxy worker to an HTTP/2 origin (spec/support/
-- hold_origin.py; a pool with protocol = "h2", max_streams = 1000: ten
-- origin connections, so the descriptors stay well under 20,000) that
-- answers each with a head and a first part of its text, then holds every
-- stream open.  While all are open: each client has its head and the first
-- part (moxy flushes its gzip output after each read from the origin), and
-- the workers' coders (admin /metrics: moxy_compression_memory_bytes) and
-- moxy's RSS are measured.  Then the origin sends the rest of each: every
-- body decodes to the origin's bytes and the coders' memory falls back.
--
--   1. lean gzip compressors (level 1, window 10, mem_level 1), all 10,000
--      compressed: the coders' bytes per stream within zlib's size for
--      those parameters, moxy's RSS growth per stream bounded;
--   2. default gzip compressors (~268 KB each) under compression.memory =
--      "64m": the coders hold at most the budget and one compressor, the
--      responses past it go uncompressed and are counted as skipped.
local helpers = require "spec.helpers"

local S = helpers.scale
local PY = "/usr/bin/python3" -- the one with python3-h2
local N = 10000
local FIRST, REST = 3000, 6000 -- the origin's bytes of each body before and after its hold

-- zlib's deflate memory (zconf.h): (1 << (windowBits + 2)) + (1 << (memLevel + 9))
-- bytes, "plus a few kilobytes for small objects" -- its deflate_state (~5.9
-- KB in zlib 1.2.x on 64 bits) and moxy's own coder: 8 KiB allowed for them.
local SMALL_OBJECTS = 8 * 1024
local function zlib_bytes(window, mem_level)
  return 2 ^ (window + 2) + 2 ^ (mem_level + 9) + SMALL_OBJECTS
end
local KEEP_IDLE = 4 -- finished compressors moxy keeps per coding for reuse (codec/coder.c)

-- moxy's RSS growth per open compressed stream (lean compressors): measured
-- here at about 17 KiB (its ~11 KiB compressor, the client's connection and
-- request, the origin stream, the buffers); the bound is that with ~50% margin
local RSS_PER_STREAM_KIB = 26

-- admin /metrics: the value of name{labels...} (labels: a table), or nil
local metric = helpers.metric

local GZIP = { direction = "compress", encoding = "gzip" }

-- hold_origin.py: o.addr (HTTP/2), o:ctl(path) -> its control port's JSON
local function start_hold_origin()
  local p = helpers.spawn({ PY, "-u", helpers.support .. "/hold_origin.py", "--first", tostring(FIRST),
    "--rest", tostring(REST) }, { dir = helpers.tmpdir("hold-origin"), kind = "origin" })
  local ports = helpers.wait_until(function()
    local h2, ctl = p:stdout():match("ready (%d+) (%d+)")
    if h2 then return { tonumber(h2), tonumber(ctl) } end
    if not p:alive() then return {} end
  end, 10 * S)
  if not ports or not ports[1] then
    p:stop("KILL")
    error("hold_origin.py did not start: " .. p:stdout() .. p:stderr(), 2)
  end
  local o = { port = ports[1], ctl_port = ports[2], addr = "127.0.0.1:" .. ports[1], proc = p }
  function o:ctl(path)
    local res, err = helpers.request(self.ctl_port, { path = path, timeout = 20 * S })
    assert(res and res.status == 200, "hold_origin " .. path .. ": " .. tostring(err or (res and res.body)))
    return helpers.json(res.body)
  end
  return o
end

-- many_streams.py against moxy's port: c:wait_open() -> open, failed,
-- seconds; c:go() lets it read the bodies to the end; c:result() -> its
-- JSON summary
local function start_clients(port)
  local dir = helpers.tmpdir("many-streams")
  local c = { go_file = dir .. "/go", open_deadline = 60 * S, deadline = 100 * S }
  c.proc = helpers.spawn({ PY, "-u", helpers.support .. "/many_streams.py", "--port", tostring(port),
    "--n", tostring(N), "--first", tostring(FIRST), "--rest", tostring(REST), "--go", c.go_file,
    "--batch", "500", "--step-timeout", tostring(20 * S), "--open-deadline", tostring(c.open_deadline),
    "--deadline", tostring(c.deadline) }, { dir = dir })
  function c:wait_open()
    local line = helpers.wait_until(function()
      local l = self.proc:stdout():match("OPEN [^\n]*")
      if l then return l end
      if not self.proc:alive() then return "exited" end
    end, self.open_deadline + 10 * S, 0.1)
    assert(line and line ~= "exited", "many_streams.py: no OPEN line: " .. self.proc:stdout() .. self.proc:stderr())
    local open, failed, secs = line:match("OPEN (%d+) (%d+) ([%d.]+)")
    return tonumber(open), tonumber(failed), tonumber(secs)
  end
  function c:go() helpers.write_file(self.go_file, "go\n") end
  function c:result()
    local code = self.proc:wait_exit(self.deadline + 10 * S)
    local doc = self.proc:stdout():match("RESULT ([^\n]*)")
    assert(doc, "many_streams.py: no RESULT (exit " .. tostring(code) .. "): " .. self.proc:stdout()
      .. self.proc:stderr())
    return helpers.json(doc)
  end
  return c
end

-- a short view of moxy's error log for a failure message
local function log_tail(m)
  local t = m:error_text()
  return #t > 3000 and ("..." .. t:sub(-3000)) or t
end

-- moxy with an h2 pool to o and this compression config; warmed up (one
-- request through the pool, so its first origin connection is up)
local function start_moxy(o, compression)
  local m = helpers.start_moxy({
    workers = 1, -- so the figures are one worker's
    upstreams = { hold = { servers = { o.addr }, protocol = "h2", max_streams = 1000 } },
    admin = {},
    limits = { connections = 20000, connections_per_client = 0 }, -- 10,000 clients, all from 127.0.0.1
    timeouts = { upstream = 90, client_send = 90 },
    compression = compression,
    log = { access = false },
  })
  local res = assert(helpers.request(m.port, { path = "/warm-up", timeout = 10 * S }))
  assert.equal(404, res.status)
  return m
end

local function json_short(t)
  return require("cjson").encode(t):sub(1, 1500)
end

describe("compression with 10,000 streams open at once", function()
  lazy_teardown(function() helpers.stop_all() end)

  describe("lean gzip compressors (level 1, window 10, mem_level 1), all compressed", function()
    local o, m
    lazy_setup(function()
      o = start_hold_origin()
      m = start_moxy(o, { gzip = { level = 1, window = 10, mem_level = 1 }, memory = "1g" })
    end)
    lazy_teardown(function() helpers.stop_all() end)

    it("holds 10,000 gzip streams within zlib's size each and a bounded RSS, then completes every body", function()
      local per_coder_max = zlib_bytes(10, 1)
      local responses0 = metric(m.admin_port, "moxy_compression_responses_total", GZIP) or 0
      local rss0 = m:rss()

      local c = start_clients(m.port)
      local open, failed, secs = c:wait_open()
      local ost = o:ctl("/stats")
      local gauge = metric(m.admin_port, "moxy_compression_memory_bytes") or -1
      local rss = m:rss()
      local per_stream_kib = (rss - rss0) / N
      print(string.format("\n  %d gzip streams open: %.1f KiB RSS per stream (%d -> %d KiB, bound %d), "
        .. "%d bytes of compressor each (zlib's size: %d); opened in %.1f s, the origin holding %d streams "
        .. "over %d h2 connections", open, per_stream_kib, rss0, rss, RSS_PER_STREAM_KIB, math.floor(gauge / N),
        per_coder_max, secs, ost.held, ost.conns))

      -- all open at once: the origin holds every stream, each client has its head and the first part
      assert.equal(N, open, "open streams; failed " .. failed .. "; origin " .. json_short(ost) .. "\n" .. log_tail(m))
      assert.equal(N, ost.held, json_short(ost))
      -- the coders: one lean compressor per stream, none past zlib's size for its parameters
      assert.is_true(gauge >= N * 2 ^ 12, "coders hold " .. gauge .. " bytes for " .. N .. " streams")
      assert.is_true(gauge / N <= per_coder_max,
        string.format("%.0f bytes of compressor per stream, zlib's size %d", gauge / N, per_coder_max))
      if not helpers.sanitized then -- RSS means nothing under ASan
        assert.is_true(per_stream_kib <= RSS_PER_STREAM_KIB,
          string.format("RSS %d -> %d KiB: %.1f KiB per stream (bound %d)", rss0, rss, per_stream_kib,
            RSS_PER_STREAM_KIB))
      end

      -- the origin sends the rest: every body completes and decodes to its bytes
      c:go()
      local rel = o:ctl("/release")
      assert.equal(N, rel.released)
      local r = c:result()
      print(string.format("  released: %d bodies complete and decoded in %.1f s", r.bodies_ok,
        r.finish_seconds - r.open_seconds))
      assert.same({}, r.errors, json_short(r))
      assert.equal(N, r.heads_ok)
      assert.equal(N, r.compressed)
      assert.equal(0, r.uncompressed)
      assert.equal(N, r.first_ok)
      assert.equal(N, r.bodies_ok)

      -- the coders' memory falls back to the few kept for reuse; every response counted
      local after = helpers.wait_until(function()
        local v = metric(m.admin_port, "moxy_compression_memory_bytes")
        return v and v <= KEEP_IDLE * per_coder_max and v
      end, 10 * S) or metric(m.admin_port, "moxy_compression_memory_bytes")
      print(string.format("  after: the coders hold %d bytes (at most %d kept compressors: %d)", after, KEEP_IDLE,
        KEEP_IDLE * per_coder_max))
      assert.is_true(after <= KEEP_IDLE * per_coder_max, "coders still hold " .. after .. " bytes")
      local responses = helpers.wait_until(function()
        local v = metric(m.admin_port, "moxy_compression_responses_total", GZIP)
        return v and v >= responses0 + N and v
      end, 10 * S) or metric(m.admin_port, "moxy_compression_responses_total", GZIP)
      assert.equal(responses0 + N, responses)
      assert.equal(0, metric(m.admin_port, "moxy_compression_skipped_total"))
      assert.is_true(m:alive(), "moxy exited")
    end)
  end)

  describe("default gzip compressors under compression.memory = \"64m\"", function()
    local o, m
    local BUDGET = 64 * 1024 * 1024
    lazy_setup(function()
      o = start_hold_origin()
      m = start_moxy(o, { memory = "64m" })
    end)
    lazy_teardown(function() helpers.stop_all() end)

    it("compresses while the coders hold less than the budget, sends the rest uncompressed and counts them", function()
      local per_coder_max = zlib_bytes(15, 8) -- gzip's defaults: window 15, mem_level 8
      local per_coder_min = 2 ^ 17 + 2 ^ 17
      local skipped0 = metric(m.admin_port, "moxy_compression_skipped_total") or 0
      local responses0 = metric(m.admin_port, "moxy_compression_responses_total", GZIP) or 0
      local rss0 = m:rss()

      local c = start_clients(m.port)
      local open, failed, secs = c:wait_open()
      local ost = o:ctl("/stats")
      local gauge = metric(m.admin_port, "moxy_compression_memory_bytes") or -1
      local skipped = (metric(m.admin_port, "moxy_compression_skipped_total") or -1) - skipped0
      local rss = m:rss()
      print(string.format("\n  %d streams open (in %.1f s), compression.memory 64m: the coders hold %d bytes "
        .. "(budget %d + %d), %d responses skipped, RSS %d -> %d KiB (%.1f KiB per stream)",
        open, secs, gauge, BUDGET, gauge - BUDGET, skipped, rss0, rss, (rss - rss0) / N))

      assert.equal(N, open, "open streams; failed " .. failed .. "; origin " .. json_short(ost) .. "\n" .. log_tail(m))
      assert.equal(N, ost.held, json_short(ost))
      -- the bound: a compressor starts only while the coders hold less than the budget
      assert.is_true(gauge <= BUDGET + per_coder_max,
        string.format("the coders hold %d bytes: past 64 MiB + one compressor (%d)", gauge, per_coder_max))
      assert.is_true(gauge >= BUDGET, "the coders hold " .. gauge .. " bytes, less than the budget, yet skipped")

      c:go()
      local rel = o:ctl("/release")
      assert.equal(N, rel.released)
      local r = c:result()
      local compressed_min, compressed_max = math.floor(BUDGET / per_coder_max), math.floor(BUDGET / per_coder_min) + 1
      print(string.format("  released: %d compressed (about 64 MiB / %d bytes: %d..%d), %d uncompressed, "
        .. "%d bodies complete and right in %.1f s", r.compressed, math.floor(gauge / math.max(1, r.compressed)),
        compressed_min, compressed_max, r.uncompressed, r.bodies_ok, r.finish_seconds - r.open_seconds))
      assert.same({}, r.errors, json_short(r))
      assert.equal(N, r.heads_ok)
      assert.equal(N, r.first_ok)
      assert.equal(N, r.bodies_ok) -- compressed or not, the origin's bytes
      assert.equal(N, r.compressed + r.uncompressed)
      assert.is_true(r.compressed >= compressed_min and r.compressed <= compressed_max,
        "compressed: " .. r.compressed)
      assert.equal(r.uncompressed, skipped)
      assert.equal(r.uncompressed, metric(m.admin_port, "moxy_compression_skipped_total") - skipped0)

      local after = helpers.wait_until(function()
        local v = metric(m.admin_port, "moxy_compression_memory_bytes")
        return v and v <= KEEP_IDLE * per_coder_max and v
      end, 10 * S) or metric(m.admin_port, "moxy_compression_memory_bytes")
      print(string.format("  after: the coders hold %d bytes (at most %d kept compressors: %d)", after, KEEP_IDLE,
        KEEP_IDLE * per_coder_max))
      assert.is_true(after <= KEEP_IDLE * per_coder_max, "coders still hold " .. after .. " bytes")
      local responses = helpers.wait_until(function()
        local v = metric(m.admin_port, "moxy_compression_responses_total", GZIP)
        return v and v >= responses0 + r.compressed and v
      end, 10 * S) or metric(m.admin_port, "moxy_compression_responses_total", GZIP)
      assert.equal(responses0 + r.compressed, responses)
      assert.is_true(m:alive(), "moxy exited")
    end)
  end)
end)
