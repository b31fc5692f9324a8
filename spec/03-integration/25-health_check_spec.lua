-- Active health checks (upstreams.NAME.health): moxy's main thread checks
-- every peer of a pool each interval (HTTP: method, path, Host; status in
-- statuses, body matching a pattern; or a TCP connect), marks a peer
-- unhealthy after `unhealthy` failures in a row and healthy again after
-- `healthy` passes, and logs each transition with the pool, the peer and why.
local helpers = require "spec.helpers"

local SCALE = helpers.scale

-- the line moxy logs when a peer's health changes
local function unhealthy_line(pool, addr, why)
  return "upstream " .. pool .. ": peer " .. addr .. " is unhealthy" .. (why and (": " .. why) or "")
end
local function healthy_line(pool, addr)
  return "upstream " .. pool .. ": peer " .. addr .. " is healthy again"
end

local function logged(m, text)
  return m:stderr():find(text, 1, true) ~= nil
end

-- wait (bounded) for text in moxy's log; true, or fail with the log
local function wait_logged(m, text, timeout)
  local ok = helpers.wait_until(function() return logged(m, text) end, timeout, 0.01)
  assert(ok, "not logged within " .. timeout .. " s: " .. text .. "\n--- stderr ---\n" .. m:stderr())
end

local function count(origin, pattern)
  return #origin:saw(pattern)
end

-- wait (bounded) until origin saw at least n requests whose target matches pattern
local function wait_seen(origin, pattern, n, timeout)
  local ok = helpers.wait_until(function() return count(origin, pattern) >= n end, timeout or 3 * SCALE, 0.02)
  assert(ok, string.format("origin %s saw %d of %d requests matching %s", origin.addr, count(origin, pattern), n,
    pattern))
end

describe("health checks", function()
  after_each(function() helpers.stop_all() end)

  it("mark a killed origin unhealthy within an interval, and healthy again when it is back", function()
    local o = { helpers.start_origin(), helpers.start_origin(), helpers.start_origin() }
    local m = helpers.start_moxy({
      upstreams = { app = {
        servers = { o[1].addr, o[2].addr, o[3].addr },
        health = { path = "/status/200", interval = "200ms", timeout = "500ms", unhealthy = 1, healthy = 1 },
      } },
    })
    for _, origin in ipairs(o) do wait_seen(origin, "^/status/200$", 1) end
    local dead = o[2]
    local port = dead.port
    dead:stop()
    local killed = helpers.now()
    wait_logged(m, unhealthy_line("app", dead.addr, "connect refused"), 1.5 * SCALE)
    -- the next check after the kill finds it: at most one interval (200 ms),
    -- plus the log's polling
    local took = helpers.now() - killed
    print(string.format("  health checks every 200 ms, unhealthy = 1: a killed origin marked unhealthy %.0f ms after the kill",
      took * 1000))
    assert.is_true(took <= 0.2 + 0.15 * SCALE, "took " .. took)
    -- the living peers keep being checked and stay healthy
    o[1]:reset_stats()
    o[3]:reset_stats()
    wait_seen(o[1], "^/status/200$", 2)
    wait_seen(o[3], "^/status/200$", 2)
    assert.is_false(logged(m, unhealthy_line("app", o[1].addr)))
    assert.is_false(logged(m, unhealthy_line("app", o[3].addr)))
    assert.is_false(logged(m, healthy_line("app", dead.addr)))

    local back = helpers.start_origin({ port = port })
    wait_logged(m, healthy_line("app", back.addr), 1.5 * SCALE)
    wait_seen(back, "^/status/200$", 1)
  end)

  -- what moxy.upstream.peers("app") shows, one peer a line: addr state checks transitions check_error
  local PEERS = [[
return {
  on_request = function(txn)
    if txn.req.path ~= "/peers" then return end
    local lines = {}
    for _, p in ipairs(moxy.upstream.peers("app")) do
      lines[#lines + 1] = table.concat({ p.addr, p.state, p.checks, p.transitions, p.check_error }, " ")
    end
    return txn:respond(200, table.concat(lines, "\n") .. "\n")
  end,
}
]]

  local function peer_line(m, addr)
    local res = assert(helpers.request(m.port, { path = "/peers" }))
    assert.equal(200, res.status)
    for line in res.body:gmatch("[^\n]+") do
      if line:sub(1, #addr + 1) == addr .. " " then return line end
    end
    error("no peer " .. addr .. " in /peers:\n" .. res.body)
  end

  -- tries = 1: no retry can hide a request that went to the dead peer
  it("send no request to an unhealthy peer, and requests again once it is healthy", function()
    local o = { helpers.start_origin(), helpers.start_origin(), helpers.start_origin() }
    local m = helpers.start_moxy({
      upstreams = { app = {
        servers = { o[1].addr, o[2].addr, o[3].addr },
        tries = 1,
        health = { path = "/status/200", interval = "200ms", timeout = "500ms", unhealthy = 1, healthy = 1 },
      } },
      scripts = { "peers.lua" },
    }, { files = { ["peers.lua"] = PEERS } })
    local dead = o[2]
    local port = dead.port
    dead:stop()
    -- the check that finds it dead is refused, or (killed mid-check) sees the connection close
    wait_logged(m, unhealthy_line("app", dead.addr), 1.5 * SCALE)
    assert.matches("^%S+ unhealthy [1-9]%d* 1 %a.+$", peer_line(m, dead.addr))
    assert.matches("^%S+ up [1-9]%d* 0 $", peer_line(m, o[1].addr))
    for i = 1, 30 do
      local res = assert(helpers.request(m.port, { path = "/echo/" .. i }))
      assert.equal(200, res.status)
    end
    assert.equal(30, count(o[1], "^/echo/") + count(o[3], "^/echo/"))

    local back = helpers.start_origin({ port = port })
    wait_logged(m, healthy_line("app", back.addr), 1.5 * SCALE)
    assert.matches("^%S+ up [1-9]%d* 2 $", peer_line(m, back.addr)) -- unhealthy, then healthy again
    for i = 1, 30 do
      local res = assert(helpers.request(m.port, { path = "/echo/again/" .. i }))
      assert.equal(200, res.status)
    end
    assert.is_true(count(back, "^/echo/again/") > 0)
  end)

  it("fail on a status outside statuses, naming the pool, the peer and the status", function()
    local origin = helpers.start_origin()
    local m = helpers.start_moxy({
      upstreams = {
        app = { servers = { origin.addr },
                health = { path = "/status/503", interval = "200ms", unhealthy = 1 } },
        lenient = { servers = { origin.addr },
                    health = { path = "/status/503?lenient", interval = "200ms", unhealthy = 1,
                               statuses = { "2xx", 503 } } },
      },
    })
    wait_logged(m, unhealthy_line("app", origin.addr, "status 503"), 1.5 * SCALE)
    -- the same status passes where statuses lists it
    wait_seen(origin, "^/status/503%?lenient$", 3)
    assert.is_false(logged(m, unhealthy_line("lenient", origin.addr)))
  end)

  it("match the body against health.body, and send Host and User-Agent", function()
    local origin = helpers.start_origin()
    local function pool(path, extra)
      local h = { path = path, interval = "200ms", unhealthy = 1 }
      for k, v in pairs(extra) do h[k] = v end
      return { servers = { origin.addr }, health = h }
    end
    local m = helpers.start_moxy({
      upstreams = {
        good = pool("/echo/good", { body = "\"method\": *\"GET\"" }),
        bad = pool("/echo/bad", { body = "\"method\": *\"POST\"" }),
        agent = pool("/echo/agent", { body = "\\[\"User-Agent\", \"moxy-health/[0-9.]+\"\\]" }),
        named = pool("/echo/named", { host = "hc.example", body = "\\[\"Host\", \"hc\\.example\"\\]" }),
        pooled = (function()
          local p = pool("/echo/pooled", { body = "\\[\"Host\", \"pool\\.example\"\\]" })
          p.host = "pool.example"
          return p
        end)(),
        addressed = pool("/echo/addressed", { body = "\\[\"Host\", \"" .. origin.addr:gsub("%.", "\\.") .. "\"\\]" }),
      },
    })
    wait_logged(m, unhealthy_line("bad", origin.addr, "body does not match"), 1.5 * SCALE)
    for _, name in ipairs({ "good", "agent", "named", "pooled", "addressed" }) do
      wait_seen(origin, "^/echo/" .. name .. "$", 3)
    end
    for _, name in ipairs({ "good", "agent", "named", "pooled", "addressed" }) do
      assert.is_false(logged(m, unhealthy_line(name, origin.addr)), name .. " was marked unhealthy:\n" .. m:stderr())
    end
  end)

  it("of type tcp pass on a listening port and fail on a closed one", function()
    local origin = helpers.start_origin()
    local closed = "127.0.0.1:" .. helpers.free_port()
    local m = helpers.start_moxy({
      upstreams = { app = {
        servers = { origin.addr, closed },
        health = { type = "tcp", interval = "200ms", unhealthy = 1 },
      } },
    })
    wait_logged(m, unhealthy_line("app", closed, "connect refused"), 1.5 * SCALE)
    -- the listening origin is connected to every interval, sent nothing, and stays healthy
    local before = origin:stats().accepted
    helpers.sleep(0.7)
    local accepted = origin:stats().accepted - before - 1 -- less the first /stats
    assert.is_true(accepted >= 2, "TCP checks accepted by the origin: " .. accepted)
    assert.equal(0, #origin:stats().log, "a TCP check sent a request")
    assert.is_false(logged(m, unhealthy_line("app", origin.addr)))
  end)

  it("run from one place: 4 workers do not send 4 times the checks", function()
    local origin = helpers.start_origin()
    helpers.start_moxy({
      workers = 4,
      upstreams = { app = { servers = { origin.addr }, health = { path = "/status/200", interval = "200ms" } } },
    })
    wait_seen(origin, "^/status/200$", 1)
    origin:reset_stats()
    local t0 = helpers.now()
    helpers.sleep(1)
    local n = count(origin, "^/status/200$")
    local elapsed = helpers.now() - t0
    -- one check per 200 ms: 5 in a second, one more or less for where the window falls
    assert.is_true(n >= math.floor(elapsed / 0.2) - 1 and n <= math.ceil(elapsed / 0.2) + 1,
      string.format("%d checks in %.2f s", n, elapsed))
  end)

  it("mark a peer unhealthy only after `unhealthy` failures in a row", function()
    local origin = helpers.start_origin()
    local m = helpers.start_moxy({
      upstreams = { app = { servers = { origin.addr },
                            health = { path = "/status/503", interval = "200ms", unhealthy = 3 } } },
    })
    local line = unhealthy_line("app", origin.addr, "status 503")
    -- poll the log first, then the origin: a check is counted by the origin
    -- before moxy judges it, so `seen` is at least the checks moxy had judged
    local seen_at = helpers.wait_until(function()
      local is_logged = logged(m, line)
      local seen = count(origin, "^/status/503$")
      assert.is_true(not is_logged or seen >= 3, "marked unhealthy after " .. seen .. " checks")
      if is_logged then return seen end
    end, 3 * SCALE, 0.01)
    assert(seen_at, "not marked unhealthy:\n" .. m:stderr())
    -- and not later: the 4th check is due 200 ms after the 3rd, polls are 10 ms apart
    assert.equal(3, seen_at, "marked unhealthy only after " .. seen_at .. " checks")
  end)
end)
