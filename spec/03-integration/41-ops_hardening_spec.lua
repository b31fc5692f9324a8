-- What an operator notices: timings measured to the microsecond, a second
-- moxy on a busy address, passive ejection ending with a passing check,
-- and the small things a new user runs into (reload -c, JSON and error-log
-- escaping, paths relative to the configuration, --help, --version).
local helpers = require "spec.helpers"
local cjson = require "cjson.safe"

local SCALE = helpers.scale

-- The last access-log line of m once it holds at least n lines.
local function access_lines(m, n)
  local lines
  assert(helpers.wait_until(function()
    lines = m:access_lines()
    return #lines >= n
  end, 5 * SCALE), "fewer than " .. n .. " access-log lines:\n" .. m:stderr())
  return lines
end

describe("timings", function()
  local origin
  lazy_setup(function() origin = helpers.start_origin() end)
  lazy_teardown(function() helpers.stop_all() end)

  it("measure requests with the precise clock: at least the origin's delay, in microseconds", function()
    local m = helpers.start_moxy({
      upstreams = { app = { servers = { origin.addr } } },
      log = { access = "access.log", format = "json", error = "stderr",
              fields = { "uri", "duration_ms", "upstream_header_ms" } },
      admin = {},
    })
    finally(function() m:stop() end)
    local N, delays = 12, { 0.002, 0.013 }
    local conn = assert(helpers.connection(m.port))
    for i = 1, N do
      local res = assert(conn:request({ path = "/slow-headers/" .. delays[i % 2 + 1] }))
      assert.equal(200, res.status)
    end
    conn:close()
    local lines = access_lines(m, N)
    local fractional, quantized = 0, 0
    for i = 1, N do
      local doc = helpers.json(lines[i])
      local delay_ms = tonumber(doc.uri:match("/slow%-headers/(.*)")) * 1000
      -- the origin slept delay_ms before its head: nothing measured can be shorter
      assert.is_true(doc.upstream_header_ms >= delay_ms, lines[i])
      assert.is_true(doc.duration_ms >= doc.upstream_header_ms, lines[i])
      -- and nothing of it is rounded to a clock tick (4 ms, whole ms)
      for _, v in ipairs({ doc.duration_ms, doc.upstream_header_ms }) do
        local us = math.floor(v * 1000 + 0.5)
        if us % 1000 ~= 0 then fractional = fractional + 1 end
        if us % 4000 == 0 then quantized = quantized + 1 end
      end
    end
    -- a real microsecond reading is a whole millisecond once in a thousand
    assert.is_true(fractional >= 2 * N - 2, ("%d of %d values have microseconds"):format(fractional, 2 * N))
    assert.is_true(quantized <= 2, ("%d of %d values are multiples of 4 ms"):format(quantized, 2 * N))

    -- the origin-latency histogram saw no 2 ms answer under a millisecond
    local res = assert(helpers.request(m.admin_port, { path = "/metrics" }))
    local under_1ms = tonumber(res.body:match('moxy_upstream_header_seconds_bucket{pool="app",le="0%.001"} (%d+)'))
    local sum = tonumber(res.body:match('moxy_upstream_header_seconds_sum{pool="app"} ([%d%.e%-]+)'))
    assert.equal(0, under_1ms, res.body)
    assert.is_true(sum >= N / 2 * (0.002 + 0.013), res.body)
  end)
end)
