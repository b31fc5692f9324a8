-- Hostile clients against a real moxy, through tools/hostile.py's short
-- version (`make soak` runs its full sizes: 10,000 slowloris connections...):
-- slowloris heads, slow readers of large responses over HTTP/1.1 and HTTP/2,
-- resets mid-download and mid-upload, idle TLS handshakes, each while a
-- probe client measures what a normal client gets.  And limits.buffer_memory
-- on its own: over it, each connection keeps less ahead of its client.
local helpers = require "spec.helpers"

local S = helpers.scale

describe("hostile clients", function()
  it("serve every normal request, bound the buffers and lose no byte (tools/hostile.py, short)", function()
    local dir = helpers.tmpdir("hostile")
    local out, code = helpers.sh(string.format(
      "cd %s && HOSTILE_SHORT=1 HOSTILE_OUT=%s MOXY_BIN=%s timeout %d /usr/bin/python3 tools/hostile.py",
      helpers.shell_quote(helpers.root), helpers.shell_quote(dir), helpers.shell_quote(helpers.moxy_bin()),
      math.ceil(240 * S)))
    local report = out:match("REPORT (%b{})")
    assert(report, "no report from tools/hostile.py:\n" .. out)
    local r = helpers.json(report)
    assert.same({}, r.failures)
    assert.equal(0, code, out)
    -- what a normal client noticed: nothing failed in any phase
    for _, phase in ipairs({ "quiet", "slowloris", "readers", "h2readers", "resets", "tlsidle" }) do
      assert.is_table(r[phase], phase)
      assert.equal(0, r[phase].failed, phase)
      assert.is_true(r[phase].requests > 20, phase .. ": the probe hardly ran")
    end
    -- slowloris: moxy answered 408 and closed each head within client_header + 2 s
    local sl = r.slowloris.attack
    assert.is_true(sl.closed_by_moxy >= 300, "closed " .. tostring(sl.closed_by_moxy))
    assert.equal(sl.closed_by_moxy, sl.answered_408)
    assert.is_true(sl.lifetime_max_s <= r.client_header_s + 2)
    -- slow readers: the budget bit while they held, and every byte came after
    assert.equal(1, r.readers.attack.over_while_held)
    assert.equal(r.readers.attack.clients, r.readers.attack.complete)
    assert.equal(1, r.h2readers.attack.over_while_held)
    assert.equal(r.h2readers.attack.streams, r.h2readers.attack.complete)
    -- 40 readers of 4 MiB: without the budget, 256 KiB + a 256 KiB read each
    -- (20 MiB and more); with 16 MiB, never past it by more than the slack
    assert.is_true(r.readers.buffers_max_mib <= r.budget_mib + 40 * 0.0625 + 1)
    -- resets: connections and buffers back to where they were
    assert.is_true(r.resets.attack.download > 0 and r.resets.attack.upload > 0 and r.resets.attack.h2_cancel > 0)
    assert.equal(0, r.resets.after.conns)
    -- one log line per crossing of the budget, not one per connection
    assert.is_true(r.budget_log.over >= 1)
    assert.equal(r.budget_log.over, r.budget_log.episodes)
    assert.equal(r.budget_log.over, r.budget_log.under)
  end)

  describe("limits.buffer_memory", function()
    local origin, m

    lazy_setup(function()
      origin = helpers.start_origin()
      m = helpers.start_moxy({
        workers = 1,
        upstreams = { app = { servers = { origin.addr } } },
        admin = {},
        limits = { buffer_memory = "2m" },
      })
    end)

    lazy_teardown(function() helpers.stop_all() end)

    local function metric(name) return helpers.metric(m.admin_port, name) or 0 end

    it("is on /metrics with its limit", function()
      assert.equal(2 * 1024 * 1024, metric("moxy_buffer_memory_limit_bytes"))
      assert.equal(0, metric("moxy_buffer_memory_over"))
      assert.is_true(metric("moxy_buffer_memory_bytes") < 1024 * 1024)
    end)

    it("slows connections while over it, logs the crossing both ways, and nothing is lost", function()
      -- 12 clients ask for 8 MiB each and read nothing for 4 s: past the kernel's
      -- socket buffers (up to 4 MiB a connection), moxy holds more than 2 MiB
      local readers = assert(io.popen(string.format("/usr/bin/python3 %s/spec/support/slow_readers.py %d 12 /bytes/8388608 %g",
        helpers.shell_quote(helpers.root), m.port, 4 * S)))
      assert(helpers.wait_until(function() return metric("moxy_buffer_memory_over") == 1 end, 3 * S, 0.05),
        "never over: " .. metric("moxy_buffer_memory_bytes"))
      assert(m:wait_error_log("over limits.buffer_memory (2.0 MiB): each connection now keeps at most 16 KiB"))
      assert.equal(1, metric("moxy_buffer_memory_over_total"))
      -- each keeps little ahead of its client: 12 x (16 + 16 KiB) over the budget at most
      assert.is_true(metric("moxy_buffer_memory_bytes") < 2 * 1024 * 1024 + 12 * 64 * 1024 + 1024 * 1024)
      -- a normal client is still served whole meanwhile
      local res = assert(helpers.request(m.port, { path = "/bytes/300000" }))
      assert.equal(200, res.status)
      assert.equal(300000, #res.body)
      -- the readers read: each gets its 8 MiB, and the buffers are under again
      local got = helpers.json(readers:read("*a"))
      readers:close()
      assert.equal(12, #got)
      for _, r in ipairs(got) do
        assert.equal("HTTP/1.1 200 OK", r.status)
        assert.equal(8388608, r.body)
      end
      assert(helpers.wait_until(function() return metric("moxy_buffer_memory_over") == 0 end, 5 * S, 0.05))
      assert(m:wait_error_log("under limits.buffer_memory (2.0 MiB) again after"))
      assert.equal(1, metric("moxy_buffer_memory_over_total"))
    end)

    it("rejects a budget under 1 MiB, naming the key", function()
      local code, out = helpers.run_moxy_check(
        'return { listen = { { addr = "127.0.0.1:8080" } }, limits = { buffer_memory = "64k" } }')
      assert.not_equal(0, code)
      assert.matches("moxy.lua:1: limits.buffer_memory", out, 1, true)
      assert.matches("at least 1m", out, 1, true)
      code, out = helpers.run_moxy_check(
        'return { listen = { { addr = "127.0.0.1:8080" } }, limits = { buffer_memory = 0 } }')
      assert.equal(0, code, out)
    end)
  end)
end)
