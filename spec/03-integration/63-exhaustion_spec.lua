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

-- set the soft RLIMIT_NOFILE of the running process pid (moxy's workers
-- are threads: one limit for all)
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

  local PAUSE = "worker 0: accept: Too many open files; pausing accept"
  local RESUME = "worker 0: accept resumed after"

  lazy_setup(function()
    local dir = helpers.tmpdir("exhaust")
    helpers.make_cert(dir, "a", "ec", "a.test", { "a.test" })
    origin = helpers.start_origin()
    plain, cold, tlsp = helpers.free_port(), helpers.free_port(), helpers.free_port()
    m = helpers.start_moxy({
      workers = 1,
      upstreams = {
        app = { servers = { origin.addr } },
        -- never used before the descriptors run out; one failure would eject
        -- its peer, two failed checks mark it unhealthy
        cold = {
          servers = { origin.addr },
          passive = { failures = 1, max_ejected = 1 },
          health = { type = "tcp", interval = "200ms", timeout = "1s", healthy = 2, unhealthy = 2 },
        },
      },
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

    local transitions = helpers.metric(m.admin_port, "moxy_peer_health_transitions_total", { pool = "cold" })
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
    -- and so does one of the admin listener, which pauses as the workers do
    -- (libevent alone would retry accept in a busy loop, warning each time)
    local adm = assert(helpers.connection(m.admin_port, { timeout = 0.5 }))
    assert.is_nil(adm:request({ path = "/status" }))
    adm:close()
    assert.equal(1, count_lines(m.stderr_path, "admin: accept: Too many open files; pausing the admin listener"),
      m:stderr():sub(1, 3000))
    assert.equal(0, count_lines(m.stderr_path, "Error from accept() call"))

    -- descriptors come back without any connection of the worker's closing
    set_nofile(m.pid, 4096)
    local t0 = helpers.now()
    assert(helpers.wait_until(function()
      local r = helpers.request(plain, { path = "/echo/after", timeout = 0.3 })
      return r and r.status == 200
    end, 3 * S, 0.02))
    local took = helpers.now() - t0
    print(string.format("\ndescriptors back from elsewhere: served again after %.3f s", took))
    assert.is_true(took < 1.6 * S, "served again after " .. took .. " s") -- the retry timer backs off to 1 s
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
    -- nor taken for unhealthy by its active checks, which could not connect either
    assert.equal(transitions, helpers.metric(m.admin_port, "moxy_peer_health_transitions_total", { pool = "cold" }))
  end)

  it("resumes as soon as a connection of its own closes; the TLS listener the same", function()
    assert(helpers.wait_until(function() return helpers.metric(m.admin_port, "moxy_connections") == 0 end, 3 * S))
    set_nofile(m.pid, fd_count(m.pid) + 6)
    local holders = {}
    for i = 1, 40 do holders[i] = assert(helpers.connection(tlsp)) end
    assert(helpers.wait_until(function() return count_lines(m.stderr_path, PAUSE) == 2 end, 3 * S),
      helpers.sh("ls -l /proc/" .. m.pid .. "/fd") .. m:stderr())
    -- a TLS client is not answered while it lasts...
    local url = "https://127.0.0.1:" .. tlsp .. "/echo/tls"
    assert.is_not.equal(200, curl_status(url, 0.5))
    -- ...and is as soon as the holders go
    for _, c in ipairs(holders) do c:close() end
    local t0 = helpers.now()
    assert.equal(200, curl_status(url, 3 * S))
    local took = helpers.now() - t0
    print(string.format("\nholders closed: TLS client served after %.3f s", took))
    assert.is_true(took < 0.5 * S, "served again after " .. took .. " s")
    assert(helpers.wait_until(function() return count_lines(m.stderr_path, RESUME) == 2 end, 2 * S), m:stderr())
    assert.equal(2, count_lines(m.stderr_path, PAUSE))
    set_nofile(m.pid, 4096)
    assert.equal(2, helpers.metric(m.admin_port, "moxy_accept_paused_total", { reason = "descriptors" }))
    assert.is_true(m:alive())
  end)
end)

describe("at limits.connections", function()
  lazy_teardown(function() helpers.stop_all() end)

  it("pauses and resumes with each connection, logging a line a second at most", function()
    local origin = helpers.start_origin()
    local m = helpers.start_moxy({
      upstreams = { app = { servers = { origin.addr } } },
      admin = {},
      limits = { connections = 5 },
    })
    local conns = {}
    for i = 1, 5 do conns[i] = assert(helpers.connection(m.port)) end
    -- at the edge: each close lets the next one in, which pauses accept again
    for i = 1, 30 do
      local c = assert(helpers.connection(m.port))
      conns[1]:close()
      table.remove(conns, 1)
      assert.equal(200, assert(c:request({ path = "/echo/" .. i })).status)
      conns[#conns + 1] = c
    end
    for _, c in ipairs(conns) do c:close() end
    local lines = count_lines(m.stderr_path, "connections (limits.connections); pausing accept")
    local pauses = helpers.metric(m.admin_port, "moxy_accept_paused_total", { reason = "connections" })
    assert.is_true(pauses >= 30, "pauses " .. pauses)
    assert.is_true(lines >= 1 and lines <= 1 + math.ceil(helpers.now() - m.proc.started), "lines " .. lines)
  end)
end)

-- A log on a full disk (/dev/full: every write fails with ENOSPC, through a
-- symlink the spec turns into a file later, as space coming back after a
-- rotation would): requests are served as ever, the failure is reported
-- once and counted, and logging resumes after USR1 reopens the file.
describe("a full disk under the logs", function()
  local origin

  lazy_setup(function() origin = helpers.start_origin() end)
  lazy_teardown(function() helpers.stop_all() end)

  local function full_link(path)
    local out, code = helpers.sh("ln -sfn /dev/full " .. helpers.shell_quote(path))
    assert(code == 0, out)
  end
  local function make_file(path)
    local out, code = helpers.sh("rm -f " .. helpers.shell_quote(path) .. " && touch " .. helpers.shell_quote(path))
    assert(code == 0, out)
  end

  it("access log: 200s go on, one error line, counted, written again after USR1", function()
    local dir = helpers.tmpdir("fulllog")
    local alog, elog = dir .. "/access.log", dir .. "/error.log"
    full_link(alog)
    local m = helpers.start_moxy({
      upstreams = { app = { servers = { origin.addr } } },
      admin = {},
      log = { access = alog, error = elog },
    })
    local function metric(name, log) return helpers.metric(m.admin_port, name, { log = log }) or 0 end
    local NEEDLE = 'access log "' .. alog .. '": write: No space left on device'

    local t0 = helpers.now()
    for i = 1, 100 do
      assert.equal(200, assert(helpers.request(m.port, { path = "/echo/full" .. i })).status)
      if i == 50 then helpers.sleep(1.2) end -- two flushes at least
    end
    local took = helpers.now() - t0 - 1.2
    assert.is_true(took < 2 * S, "100 requests took " .. took .. " s")
    assert(helpers.wait_until(function() return metric("moxy_log_dropped_lines_total", "access") >= 100 end, 3 * S))
    assert.is_true(metric("moxy_log_write_failures_total", "access") >= 2)
    assert.equal(1, count_lines(elog, NEEDLE), helpers.read_file(elog))
    assert.equal(0, metric("moxy_log_write_failures_total", "error"))

    -- space again: the file is a file, and USR1 reopens it
    make_file(alog)
    m:signal("USR1")
    assert(helpers.wait_until(function() return count_lines(elog, "USR1: reopening log files") == 1 end, 2 * S))
    assert.equal(200, assert(helpers.request(m.port, { path = "/echo/back" })).status)
    assert.truthy(m:wait_log("GET /echo/back ", 3 * S), helpers.read_file(alog))
    assert(helpers.wait_until(function() return count_lines(elog, "access log: writing again after") == 1 end, 2 * S),
      helpers.read_file(elog))
    assert.equal(1, count_lines(elog, NEEDLE))
    assert.is_true(m:alive())
  end)

  it("access log on a pipe nobody reads: the worker does not wait for it", function()
    local dir = helpers.tmpdir("fifolog")
    local fifo, elog = dir .. "/access.fifo", dir .. "/error.log"
    local out, code = helpers.sh("mkfifo " .. helpers.shell_quote(fifo))
    assert(code == 0, out)
    -- a reader that opens the pipe and never reads (a stalled log collector)
    helpers.spawn({ "sh", "-c", "exec 3<" .. helpers.shell_quote(fifo) .. "; exec sleep 60" })
    local m = helpers.start_moxy({
      upstreams = { app = { servers = { origin.addr } } },
      admin = {},
      log = { access = fifo, error = elog },
    })
    -- 300 lines of over 1 KiB: five times what the pipe holds
    local c = assert(helpers.connection(m.port, { timeout = 3 * S }))
    local long = string.rep("p", 1000)
    local t0 = helpers.now()
    for i = 1, 300 do
      local res = assert(c:request({ path = "/echo/" .. long .. i }))
      assert.equal(200, res.status)
      if i % 100 == 0 then helpers.sleep(1.1) end -- let the worker flush its batch
    end
    local took = helpers.now() - t0 - 3.3
    c:close()
    assert.is_true(took < 3 * S, "300 requests took " .. took .. " s")
    assert(helpers.wait_until(function()
      return (helpers.metric(m.admin_port, "moxy_log_dropped_lines_total", { log = "access" }) or 0) > 0
    end, 3 * S))
    assert.equal(1, count_lines(elog, 'access log "' .. fifo .. '": write: Resource temporarily unavailable'),
      helpers.read_file(elog))
    assert.is_true(m:alive())
  end)

  it("error log: one line on stderr, counted, written again after USR1", function()
    local dir = helpers.tmpdir("fullerr")
    local elog = dir .. "/error.log"
    full_link(elog)
    local dead = helpers.free_port() -- nobody listens: every request logs an error line
    local m = helpers.start_moxy({
      upstreams = { app = { servers = { origin.addr } }, dead = { servers = { "127.0.0.1:" .. dead }, passive = false } },
      default_upstream = "app",
      listen = { "127.0.0.1:" .. helpers.free_port(), { addr = "127.0.0.1:" .. helpers.free_port(), upstream = "dead" } },
      admin = {},
      log = { access = false, error = elog },
    })
    local function metric(name) return helpers.metric(m.admin_port, name, { log = "error" }) or 0 end
    for i = 1, 20 do
      assert.equal(502, assert(helpers.request(m.ports[2], { path = "/dead" .. i })).status)
      assert.equal(200, assert(helpers.request(m.port, { path = "/echo/ok" .. i })).status)
    end
    assert.is_true(metric("moxy_log_dropped_lines_total") >= 20)
    assert.is_true(metric("moxy_log_write_failures_total") >= 20)
    local NEEDLE = 'error log "' .. elog .. '": write: No space left on device'
    assert.equal(1, count_lines(m.stderr_path, NEEDLE), m:stderr())

    make_file(elog)
    m:signal("USR1")
    helpers.sleep(0.3)
    assert.equal(502, assert(helpers.request(m.ports[2], { path = "/dead-after" })).status)
    assert(helpers.wait_until(function() return count_lines(elog, "/dead-after") >= 1 end, 2 * S), helpers.read_file(elog))
    assert.equal(1, count_lines(elog, "error log: writing again after"), helpers.read_file(elog))
    assert.equal(1, count_lines(m.stderr_path, NEEDLE))
    assert.is_true(m:alive())
  end)
end)

-- The cache filled far past its size by concurrent misses of every size:
-- it evicts, stays within its size, keeps answering hits, and moxy's
-- resident memory (which includes the memfds holding large bodies: they
-- stay mapped) stays within the cache's size and a fixed bound.
describe("a cache filled past its size", function()
  lazy_teardown(function() helpers.stop_all() end)

  -- VmRSS and, of it, RssShmem (the memfd bodies) of pid, KiB
  local function footprint(pid)
    local text = helpers.read_file("/proc/" .. pid .. "/status") or ""
    return tonumber(text:match("VmRSS:%s*(%d+)")), tonumber(text:match("RssShmem:%s*(%d+)"))
  end

  it("evicts, stays within its size and a bound, serves hits, no 5xx", function()
    -- the origin: a moxy answering /bytes/N with N bytes, cacheable (the
    -- Python origin is too slow to stream 40 MB in a few seconds)
    local origin = helpers.start_moxy({ workers = 2, scripts = { "bytes.lua" }, lua = { cpu_budget = "5s" }, log = { access = false } },
      { files = { ["bytes.lua"] = [[
local cache = {}
return {
  on_request = function(txn)
    local n = tonumber(txn.req.path:match("^/bytes/(%d+)$")) or 0
    cache[n] = cache[n] or string.rep("b", n)
    txn:respond(200, cache[n], { ["Cache-Control"] = "max-age=600" })
  end,
}
]] } })
    local SIZE_MB = 8
    local m = helpers.start_moxy({
      workers = 2,
      upstreams = { app = { servers = { "127.0.0.1:" .. origin.port }, keepalive = 32 } },
      cache = { size = SIZE_MB .. "m" },
      admin = {},
      log = { access = false },
    })
    local function metric(name) return helpers.metric(m.admin_port, name) or 0 end
    assert.equal(200, assert(helpers.request(m.port, { path = "/bytes/100?k=warm" })).status)
    local base = footprint(m.pid)

    -- 300 keys of 4 KiB .. 256 KiB (about 40 MB, 5x the cache), 16 at a time
    local N = 300
    local list = {}
    for i = 1, N do
      list[i] = string.format("http://127.0.0.1:%d/bytes/%d?k=%d", m.port, 4096 * (1 + (i * 37) % 64), i)
    end
    local listfile = helpers.tmpdir("urls") .. "/urls"
    local lines = {}
    for i, u in ipairs(list) do lines[i] = "-o /dev/null " .. u end
    helpers.write_file(listfile, table.concat(lines, "\n") .. "\n")
    local t0 = helpers.now()
    -- 16 curls at a time, 5 URLs each
    local out = helpers.sh(string.format(
      "xargs -P 16 -n 15 curl -s -w '%%{http_code}\\n' --max-time %d < %s", 20 * S, listfile))
    local took = helpers.now() - t0
    local codes = {}
    for c in out:gmatch("%d%d%d") do codes[c] = (codes[c] or 0) + 1 end
    assert.equal(N, codes["200"], out)
    assert.is_true(took < 20 * S)

    local cap = metric("moxy_cache_capacity_bytes")
    assert.equal(SIZE_MB * 1024 * 1024, cap)
    assert.is_true(metric("moxy_cache_used_bytes") <= cap)
    assert.is_true(metric("moxy_cache_evictions_total") >= 100, "evictions " .. metric("moxy_cache_evictions_total"))

    -- hits are served: a key asked for again is stored again (straight to
    -- S3-FIFO's main queue, its key being a ghost), and then hit
    local hits = metric("moxy_cache_hits_total")
    for i = 1, 10 do
      local path = list[i * 7]:match("^http://[^/]+(.*)$")
      for _ = 1, 3 do assert.equal(200, assert(helpers.request(m.port, { path = path })).status) end
    end
    assert.is_true(metric("moxy_cache_hits_total") - hits >= 10, "hits " .. (metric("moxy_cache_hits_total") - hits))

    local rss, shmem = footprint(m.pid)
    -- bound: the cache's size, plus 16 MiB for what the fill left around
    -- (the workers' buffers, malloc's free lists)
    print(string.format("\ncache fill: RSS %d KiB before, %d KiB after (memfd bodies %d KiB), %d requests in %.1f s",
      base, rss, shmem, N, took))
    if not helpers.sanitized then
      assert.is_true(rss - base <= (SIZE_MB + 16) * 1024,
        string.format("RSS grew %d KiB (memfd bodies %d) for a %d MiB cache", rss - base, shmem, SIZE_MB))
    end
    assert.equal(0, metric("moxy_lua_errors_total"))
    assert.equal(0, helpers.metric(m.admin_port, "moxy_requests_total", { class = "5xx" }) or 0)
  end)
end)

-- A script that allocates without end, or loops without end: lua.memory and
-- lua.cpu_budget hold on every worker (each has its own VM), the request
-- gets a 500 at once, and every worker serves its next requests, its
-- memory given back.
describe("a runaway script on every worker", function()
  lazy_teardown(function() helpers.stop_all() end)

  local SITE = [[
local id -- which worker's VM this is: 1, 2, ... in the order they started
return {
  worker_init = function() id = moxy.shared.ids:incr("n", 1, 0) end,
  on_request = function(txn)
    local path = txn.req.path
    if path == "/hog" then
      moxy.shared.ids:incr("hog" .. id, 1, 0)
      local t, i = {}, 0
      while true do i = i + 1; t[i] = string.rep("x", 1000) .. i end
    elseif path == "/counts" then
      local c = {}
      for _, k in ipairs({ "hog1", "hog2", "spin1", "spin2" }) do c[k] = moxy.shared.ids:get(k) end
      return txn:respond(200, moxy.json.encode(c))
    elseif path == "/spin" then
      moxy.shared.ids:incr("spin" .. id, 1, 0)
      local i = 0
      while true do i = i + 1 end
    end
    txn:respond(200, "vm=" .. id .. " mem=" .. math.floor(collectgarbage("count") / 1024))
  end,
}
]]

  it("a 500 for each runaway on each worker, promptly; 200s after, memory back", function()
    local m = helpers.start_moxy({
      workers = 2,
      scripts = { "site.lua" },
      shared = { ids = "1m" },
      lua = { memory = "32m", cpu_budget = "500ms" },
      admin = {},
      log = { access = false },
    }, { files = { ["site.lua"] = SITE } })
    local function metric(name) return helpers.metric(m.admin_port, name) or 0 end
    -- each worker has its VM and served once
    local seen = {}
    assert(helpers.wait_until(function()
      local res = helpers.request(m.port, { path = "/" })
      if res and res.status == 200 then seen[res.body:match("vm=(%d+)")] = true end
      return seen["1"] and seen["2"]
    end, 5 * S, 0))
    local base = m:rss()

    -- separate connections: SO_REUSEPORT spreads them over the workers;
    -- until each worker has had both kinds (bounded)
    local slowest, sent = { hog = 0, spin = 0 }, { hog = 0, spin = 0 }
    local function counts() return helpers.json(assert(helpers.request(m.port, { path = "/counts" })).body) end
    local c = {}
    for _ = 1, 20 do
      for _, kind in ipairs({ "hog", "spin" }) do
        local t0 = helpers.now()
        local res = assert(helpers.request(m.port, { path = "/" .. kind }))
        local took = helpers.now() - t0
        assert.equal(500, res.status, kind)
        slowest[kind] = math.max(slowest[kind], took)
        sent[kind] = sent[kind] + 1
        assert.equal(200, assert(helpers.request(m.port, { path = "/" })).status)
      end
      c = counts()
      if (c.hog1 or 0) > 0 and (c.hog2 or 0) > 0 and (c.spin1 or 0) > 0 and (c.spin2 or 0) > 0 then break end
    end
    print(string.format("\nrunaways: %d of each kind, slowest 500 for /spin %.3f s, /hog %.3f s", sent.hog,
      slowest.spin, slowest.hog))
    for _, key in ipairs({ "hog1", "hog2", "spin1", "spin2" }) do
      assert.is_true((c[key] or 0) > 0, "no " .. key .. ": " .. helpers.serialize(c))
    end
    -- a runaway is stopped within about 1.25 budgets (README)
    assert.is_true(slowest.spin < 0.8 * S, "spin: " .. slowest.spin)
    assert.is_true(slowest.hog < 0.8 * S, "hog: " .. slowest.hog)
    -- (under sanitizers a hog may run out of CPU before memory)
    local kills = metric("moxy_lua_budget_kills_total")
    if helpers.sanitized then assert.is_true(kills >= sent.spin) else assert.equal(sent.spin, kills) end
    assert.equal(sent.spin + sent.hog, metric("moxy_lua_errors_total"))

    -- afterwards: 200 from both workers, each VM's heap small again
    seen = {}
    local deadline = helpers.now() + 5 * S
    while not (seen["1"] and seen["2"]) and helpers.now() < deadline do
      local res = assert(helpers.request(m.port, { path = "/" }))
      assert.equal(200, res.status)
      local vm, mem = res.body:match("vm=(%d+) mem=(%d+)")
      assert.is_true(tonumber(mem) < 16, res.body)
      seen[vm] = true
    end
    assert.truthy(seen["1"] and seen["2"])
    local rss = m:rss()
    print(string.format("runaways: RSS before %d KiB, after %d KiB", base, rss))
    if not helpers.sanitized then
      -- the VMs' heaps are collected at once (mem= above), but LuaJIT's
      -- allocator keeps pages for reuse: up to lua.memory per worker
      assert.is_true(rss - base <= 2 * 32 * 1024 + 16 * 1024, "RSS grew " .. (rss - base) .. " KiB")
    end
    assert.equal(sent.hog - (kills - sent.spin),
      count_lines(m.stderr_path, "the worker's Lua memory limit was reached (lua.memory = 32 MiB)"), m:stderr())
  end)
end)
