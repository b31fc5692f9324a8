-- Running out: file descriptors, disk for the logs, cache memory, a script's
-- CPU and memory.  moxy keeps serving what it can, says so once per episode
-- (a log line when it starts, one when it is over) and counts it in
-- /metrics, and comes back by itself when the resource does.
local helpers = require "spec.helpers"

local S = helpers.scale

-- lines of text (plain) in the file at path
local function count_lines(path, needle)
  local n = 0
  for line in (helpers.read_file(path) or ""):gmatch("[^\n]+") do
    if line:find(needle, 1, true) then n = n + 1 end
  end
  return n
end

local function fd_count(pid)
  local out = helpers.sh("ls /proc/" .. pid .. "/fd | wc -l")
  return tonumber(out:match("%d+"))
end

-- the soft RLIMIT_NOFILE of the running process pid
local function set_nofile(pid, n)
  local out, code = helpers.sh(string.format("prlimit --pid %d --nofile=%d:", pid, n))
  assert(code == 0, out)
end

local function curl_status(url, max_time)
  local out = helpers.sh(string.format("curl -sk -o /dev/null -w '%%{http_code}' --max-time %s '%s'", max_time, url))
  return tonumber(out:match("(%d+)%s*$"))
end

describe("out of file descriptors", function()
  local origin, m, plain, cold, tlsp

  local PAUSE = "pausing accept, retrying"
  local RESUME = "accept resumed after"

  lazy_setup(function()
    local dir = helpers.tmpdir("exhaust")
    helpers.make_cert(dir, "a", "ec", "a.test", { "a.test" })
    origin = helpers.start_origin()
    plain, cold, tlsp = helpers.free_port(), helpers.free_port(), helpers.free_port()
    m = helpers.start_moxy({
      workers = 1,
      upstreams = { app = { servers = { origin.addr } }, cold = { servers = { origin.addr }, passive = { failures = 1, max_ejected = 1 } } },
      default_upstream = "app",
      admin = {},
      listen = {
        "127.0.0.1:" .. plain,
        { addr = "127.0.0.1:" .. cold, upstream = "cold" },
        { addr = "127.0.0.1:" .. tlsp, tls = { certificates = { { cert = dir .. "/a.pem", key = dir .. "/a.key" } } } },
      },
    })
  end)

  lazy_teardown(function() helpers.stop_all() end)

  it("pauses accept once, keeps serving its connections, resumes on its timer", function()
    -- a client with a request done (its origin connection kept idle), and
    -- one to the cold pool, which has no origin connection yet
    local a = assert(helpers.connection(plain))
    assert.equal(200, assert(a:request({ path = "/echo/warm" })).status)
    local b = assert(helpers.connection(cold))
    assert(helpers.wait_until(function() return helpers.metric(m.admin_port, "moxy_connections") == 2 end, 3 * S))

    set_nofile(m.pid, fd_count(m.pid) + 8)
    local holders = {}
    for i = 1, 30 do holders[i] = assert(helpers.connection(plain)) end
    assert(helpers.wait_until(function() return count_lines(m.stderr_path, PAUSE) > 0 end, 3 * S), m:stderr())
    helpers.sleep(1.5) -- retries at 0.1, 0.3, 0.7, 1.5 s: none logs
    assert.equal(1, count_lines(m.stderr_path, PAUSE), m:stderr())
    assert.equal(0, count_lines(m.stderr_path, RESUME), m:stderr())

    -- the connections it has are served: over the kept origin connection...
    local res = assert(a:request({ path = "/echo/during" }))
    assert.equal(200, res.status)
    -- ...and where an origin connection needs a descriptor, a 502, without
    -- the peer taken for failed (one failure would eject it)
    res = assert(b:request({ path = "/echo/cold" }))
    assert.equal(502, res.status)
    assert.truthy(m:stderr():find("moxy's own limit, not the origin's", 1, true), m:stderr())
    -- a new client waits in the listen queue
    local late = assert(helpers.connection(plain, { timeout = 0.5 }))
    assert.is_nil(late:request({ path = "/echo/late" }))
    late:close()

    -- descriptors come back without any connection of the worker's closing
    set_nofile(m.pid, 4096)
    local t0 = helpers.now()
    assert(helpers.wait_until(function()
      local r = helpers.request(plain, { path = "/echo/after", timeout = 0.3 })
      return r and r.status == 200
    end, 3 * S, 0.02))
    local took = helpers.now() - t0
    assert.is_true(took < 1.3 * S, "served again after " .. took .. " s")
    assert(helpers.wait_until(function() return count_lines(m.stderr_path, RESUME) == 1 end, 2 * S), m:stderr())
    local line = m:stderr():match("[^\n]*" .. RESUME .. "[^\n]*")
    local ms, hits = line:match("after (%d+) ms paused out of descriptors %((%d+) failed accepts%)")
    assert.truthy(ms, line)
    assert.is_true(tonumber(hits) >= 4, line)
    assert.equal(1, count_lines(m.stderr_path, PAUSE))
    -- the cold pool's peer was not ejected: it serves now
    res = assert(b:request({ path = "/echo/cold2" }))
    assert.equal(200, res.status)

    for _, c in ipairs(holders) do c:close() end
    a:close()
    b:close()
    assert.equal(1, helpers.metric(m.admin_port, "moxy_accept_paused_total", { reason = "descriptors" }))
    assert.is_true(helpers.metric(m.admin_port, "moxy_accept_descriptor_errors_total") >= 4)
    assert.equal(0, helpers.metric(m.admin_port, "moxy_peer_ejections_total", { pool = "cold" }) or 0)
  end)

  it("resumes as soon as a connection of its own closes; the TLS listener the same", function()
    assert(helpers.wait_until(function() return helpers.metric(m.admin_port, "moxy_connections") == 0 end, 3 * S))
    set_nofile(m.pid, fd_count(m.pid) + 6)
    local holders = {}
    for i = 1, 20 do holders[i] = assert(helpers.connection(tlsp)) end
    assert(helpers.wait_until(function() return count_lines(m.stderr_path, PAUSE) == 2 end, 3 * S), m:stderr())
    -- a TLS client is not answered while it lasts...
    local url = "https://127.0.0.1:" .. tlsp .. "/echo/tls"
    assert.is_not.equal(200, curl_status(url, 0.5))
    -- ...and is as soon as the holders go
    for _, c in ipairs(holders) do c:close() end
    local t0 = helpers.now()
    assert.equal(200, curl_status(url, 3 * S))
    local took = helpers.now() - t0
    assert.is_true(took < 0.5 * S, "served again after " .. took .. " s")
    assert(helpers.wait_until(function() return count_lines(m.stderr_path, RESUME) == 2 end, 2 * S), m:stderr())
    assert.equal(2, count_lines(m.stderr_path, PAUSE))
    set_nofile(m.pid, 4096)
    assert.equal(2, helpers.metric(m.admin_port, "moxy_accept_paused_total", { reason = "descriptors" }))
    assert.is_true(m:alive())
  end)
end)
