-- Hot reload by generations: SIGHUP, `moxy reload` and POST /reload load the
-- configuration and scripts again; a broken one is reported and the running
-- generation keeps serving; requests in flight finish on the scripts they
-- started with; listeners, pool state and shared dicts follow the rules of
-- docs/operations.md; 100 reloads under wrk load fail no request; memory
-- stays flat over 1000 reloads.
local helpers = require "spec.helpers"
local cjson = require "cjson.safe"

local TOKEN = "reload-admin-token-0123456789"
local WRK = "/usr/bin/wrk"

-- A script that says which version it is, and can wait before answering.
local function script(version, extra)
  return ([[
local VERSION = %q
return {
  on_request = function(txn)
    if txn.req.path == "/version" then
      if txn.req.query == "slow" then moxy.sleep(0.6) end
      return txn:respond(200, VERSION .. "\n", { ["X-Version"] = VERSION })
    end
  end,
  on_response = function(txn) txn.resp.headers:set("X-Version", VERSION) end,
  %s
}
]]):format(version, extra or "")
end

local BROKEN = "return { on_request = function(txn)\n  local x = = 1\nend }\n"

local function config(port, admin_port, origin, extra)
  return ([[
return {
  workers = 2,
  listen = { "127.0.0.1:%d" },
  upstreams = { app = { servers = { %q } } },
  admin = { listen = "127.0.0.1:%d", token = %q },
  shared = { counts = "1m" },
  log = { access = "access.log", error = "stderr" },
  timeouts = { drain = "5s" },
  scripts = { "site.lua" },
  %s
}
]]):format(port, origin.addr, admin_port, TOKEN, extra or "")
end

-- An origin and a moxy (2 workers, admin listener) running script("v1").
local function start(env)
  local origin = helpers.start_origin()
  local port, admin_port = helpers.free_port(), helpers.free_port()
  local m = helpers.start_moxy(config(port, admin_port, origin), {
    ports = { port, admin_port }, files = { ["site.lua"] = script("v1") }, env = env })
  assert(helpers.wait_until(function()
    return m:stderr():find("admin listener on", 1, true) or not m:alive()
  end, 10 * helpers.scale) and m:alive(), m:stderr())
  return origin, m, port, admin_port
end

describe("hot reload", function()
  local origin, m, port, admin_port

  local function version(p)
    local res = assert(helpers.request(p or port, { path = "/version" }))
    return res.status, res.body:gsub("\n$", "")
  end

  local function write(name, text) helpers.write_file(m.dir .. "/" .. name, text) end

  local function post_reload(token)
    return assert(helpers.request(admin_port, { method = "POST", path = "/reload",
      headers = token and { Authorization = "Bearer " .. token } or nil }))
  end

  local function status()
    local res = assert(helpers.request(admin_port, { path = "/status" }))
    return assert(cjson.decode(res.body))
  end

  -- the log lines of reload results so far
  local function results()
    local ok, failed = 0, 0
    for line in m:stderr():gmatch("[^\n]+") do
      if line:find("reload: generation %d+ serving") then ok = ok + 1 end
      if line:find("reload failed, generation") then failed = failed + 1 end
    end
    return ok, failed
  end

  local function wait_results(ok, failed)
    assert(helpers.wait_until(function()
      local o, f = results()
      return o >= ok and f >= failed
    end, 20 * helpers.scale), "reload results not logged:\n" .. m:stderr())
  end

  before_each(function() origin, m, port, admin_port = start() end)

  after_each(function() helpers.stop_all() end)

  it("SIGHUP swaps the scripts; the PID file and /status follow", function()
    assert.equal("v1", select(2, version()))
    local pid = tonumber((helpers.read_file(m.dir .. "/moxy.pid") or ""):match("%d+"))
    assert.equal(m.pid, pid)
    assert.equal(1, status().generation)
    write("site.lua", script("v2"))
    m:signal("HUP")
    wait_results(1, 0)
    assert.equal("v2", select(2, version()))
    local st = status()
    assert.equal(2, st.generation)
    assert.is_true(st.reload.ok)
    assert.equal(1, st.reload.reloads)
  end)

  it("a broken script is reported with file:line and the old scripts keep serving", function()
    write("site.lua", BROKEN)
    m:signal("HUP")
    wait_results(0, 1)
    assert.matches("site.lua:2:", m:stderr(), 1, true)
    assert.equal("v1", select(2, version()))
    local st = status()
    assert.equal(1, st.generation)
    assert.is_false(st.reload.ok)
    assert.matches("site.lua:2:", st.reload.message, 1, true)
    -- and a worker_init error too (the main thread's init passes)
    write("site.lua", script("v3", "worker_init = function() error('no worker today') end,"))
    m:signal("HUP")
    wait_results(0, 2)
    assert.matches("no worker today", status().reload.message, 1, true)
    assert.equal("v1", select(2, version()))
  end)

  it("moxy reload prints the result and exits 0 or 1", function()
    write("site.lua", script("v2"))
    local code, out = helpers.run_moxy({ "reload", "-c", m.conf_path }, 30 * helpers.scale)
    assert.equal(0, code, out)
    assert.matches("moxy reload: ok", out, 1, true)
    assert.matches("generation 2 serving", out, 1, true)
    assert.equal("v2", select(2, version()))

    write("site.lua", BROKEN)
    code, out = helpers.run_moxy({ "reload", "-c", m.conf_path }, 30 * helpers.scale)
    assert.equal(1, code, out)
    assert.matches("site.lua:2:", out, 1, true)
    assert.equal("v2", select(2, version()))

    -- a configuration error is caught before the running moxy is asked
    write("moxy.lua", "return { workers = 2, listen = {}, bogus = 1 }")
    code, out = helpers.run_moxy({ "reload", "-c", m.conf_path }, 30 * helpers.scale)
    assert.equal(1, code, out)
    assert.matches("bogus", out, 1, true)
    assert.equal("v2", select(2, version()))
  end)

  it("POST /reload needs the token and answers with the result", function()
    assert.equal(401, post_reload().status)
    assert.equal(401, post_reload("wrong-token-wrong-token").status)
    write("site.lua", script("v2"))
    local res = post_reload(TOKEN)
    assert.equal(200, res.status, res.body)
    local doc = assert(cjson.decode(res.body))
    assert.is_true(doc.ok)
    assert.equal(2, doc.generation)
    assert.equal("v2", select(2, version()))
    write("site.lua", BROKEN)
    res = post_reload(TOKEN)
    assert.equal(422, res.status)
    doc = assert(cjson.decode(res.body))
    assert.is_false(doc.ok)
    assert.equal(2, doc.generation)
    assert.matches("site.lua:2:", doc.message, 1, true)
    -- /metrics counts both
    local metrics = assert(helpers.request(admin_port, { path = "/metrics" })).body
    assert.matches('moxy_reloads_total{result="ok"} 1', metrics, 1, true)
    assert.matches('moxy_reloads_total{result="failed"} 1', metrics, 1, true)
    assert.matches("moxy_generation 2", metrics, 1, true)
    assert.matches("moxy_last_reload_success 0", metrics, 1, true)
  end)

  it("a request in flight across a reload finishes on its old scripts", function()
    local conn = assert(helpers.connection(port))
    assert(conn:send(helpers.build_request({ path = "/version?slow" })))
    helpers.sleep(0.15) -- the hook sleeps 0.6 s
    write("site.lua", script("v2"))
    assert.equal(200, post_reload(TOKEN).status)
    assert.equal("v2", select(2, version())) -- new requests: new scripts
    local res = assert(conn:read_response())
    assert.equal(200, res.status)
    assert.equal("v1\n", res.body)
    -- the same keep-alive connection's next request runs on the new generation
    res = assert(conn:request({ path = "/version" }))
    assert.equal("v2\n", res.body)
    conn:close()
  end)

  it("keeps an unchanged pool's idle origin connections", function()
    local conn = assert(helpers.connection(port))
    assert.equal(200, assert(conn:request({ path = "/echo" })).status)
    local accepted = origin:stats().accepted
    write("site.lua", script("v2"))
    assert.equal(200, post_reload(TOKEN).status)
    for _ = 1, 5 do assert.equal(200, assert(conn:request({ path = "/echo" })).status) end
    conn:close()
    -- the same worker served them all over the same keep-alive connection to
    -- the origin: the only connection it accepted since is the one asking it
    -- for its stats
    assert.equal(accepted + 1, origin:stats().accepted, m:stderr())
  end)

  it("cuts what still runs on an old generation at its drain deadline", function()
    -- timeouts.drain is 5 s in config(): a request parked for 30 s outlives it
    write("site.lua", script("v1", [[
on_log = function(txn) end,
init = function() end,]]):gsub('if txn.req.query == "slow" then moxy.sleep%(0.6%) end',
      'if txn.req.query == "slow" then moxy.sleep(0.6) end\n      if txn.req.query == "stuck" then moxy.sleep(30) end'))
    assert.equal(200, post_reload(TOKEN).status)
    local conn = assert(helpers.connection(port))
    assert(conn:send(helpers.build_request({ path = "/version?stuck" })))
    helpers.sleep(0.2)
    write("site.lua", script("v2"))
    local t0 = helpers.now()
    assert.equal(200, post_reload(TOKEN).status)
    assert.is_true(conn:wait_closed(10 * helpers.scale), "the stuck request was not cut")
    local took = helpers.now() - t0
    assert.is_true(took > 4.5 and took < 7 * helpers.scale, ("cut after %.1f s"):format(took))
    assert.matches("generation 2: drain deadline passed with 1 request or timer on it; cutting them", m:stderr(), 1, true)
    assert.equal("v2", select(2, version()))
  end)

  it("keeps shared dicts and peer state; applies listener changes", function()
    write("site.lua", script("v1", [[
init = function() moxy.shared.counts:add("inits", 1) end,
on_log = function(txn) moxy.shared.counts:incr("seen", 1, 0) end,]]))
    assert.equal(200, post_reload(TOKEN).status)
    for _ = 1, 5 do assert.equal(200, (helpers.request(port, { path = "/echo" })).status) end
    assert.equal(200, assert(helpers.request(admin_port, { method = "POST", path = "/peers/app/" .. origin.addr .. "/drain",
      headers = { Authorization = "Bearer " .. TOKEN } })).status)

    -- a second listener, a changed pool setting (tries): the peer stays drained
    local port2 = helpers.free_port()
    local src = config(port, admin_port, origin):gsub('"127.0.0.1:' .. port .. '" }',
      '"127.0.0.1:' .. port .. '", "127.0.0.1:' .. port2 .. '" }')
    src = src:gsub("servers = {", "tries = 3, servers = {")
    write("moxy.lua", src)
    assert.equal(200, post_reload(TOKEN).status)
    assert.equal("v1", select(2, version(port2)))
    local st = status()
    assert.equal("drained", st.pools.app.peers[1].state)
    local res = assert(helpers.request(port2, { path = "/echo" }))
    assert.equal(502, res.status) -- the only peer is drained
    assert.equal(200, assert(helpers.request(admin_port, { method = "POST", path = "/peers/app/" .. origin.addr .. "/enable",
      headers = { Authorization = "Bearer " .. TOKEN } })).status)

    -- the dict kept its data: every request logged by that script so far
    -- (5 + version + the 502 + this one)
    assert.equal(200, (helpers.request(port2, { path = "/echo" })).status)
    write("site.lua", script("v1", [[
on_request = function(txn)
  return txn:respond(200, tostring(moxy.shared.counts:get("seen")) .. " " .. tostring(moxy.shared.counts:get("inits")))
end,]]))
    -- and the first listener goes away
    write("moxy.lua", (src:gsub('"127.0.0.1:' .. port .. '", ', "")))
    assert.equal(200, post_reload(TOKEN).status)
    res = assert(helpers.request(port2, { path = "/" }))
    assert.equal("8 1", res.body)
    assert(helpers.wait_until(function() return not helpers.connection(port) end, 5 * helpers.scale),
      "the removed listener still accepts")
  end)

  it("100 reloads under load, half of them broken, fail no request", function()
    if not io.open(WRK) then
      pending(WRK .. " is missing: install wrk (Debian package wrk)")
      return
    end
    -- wrk must outlast the reloads (about 5 s on a quiet machine): the bound
    -- below only keeps it so on a busy one
    local wrk_s = math.ceil(12 * helpers.scale)
    local wrk = helpers.spawn({ WRK, "-t2", "-c16", "-d" .. wrk_s .. "s", "http://127.0.0.1:" .. port .. "/echo" },
      { kind = "wrk" })
    finally(function() wrk:stop("KILL") end)
    helpers.sleep(0.5)
    local t0 = helpers.now()
    for i = 1, 100 do
      if i % 2 == 0 then write("site.lua", BROKEN) else write("site.lua", script("v" .. i)) end
      local res = post_reload(TOKEN)
      assert.equal(i % 2 == 0 and 422 or 200, res.status, res.body)
      helpers.sleep(0.03)
      if helpers.now() - t0 > wrk_s - 1 then error("100 reloads took more than " .. (wrk_s - 1) .. " s (" .. i .. " done)") end
    end
    assert.is_true(wrk:alive(), "wrk ended before the reloads did")
    assert.truthy(wrk:wait_exit(wrk_s + 7), "wrk did not end")
    local text = wrk:stdout() .. wrk:stderr()
    local requests = tonumber(text:match("(%d+) requests in"))
    assert(requests and requests > 1000, "wrk did not run:\n" .. text)
    assert.is_nil(text:match("Socket errors"), text)
    assert.is_nil(text:match("Non%-2xx"), text)
    print(("\n    wrk %d s, 16 connections, 100 reloads (50 broken): %d requests, no error"):format(wrk_s, requests))
    local ok, failed = results()
    assert.equal(50, ok)
    assert.equal(50, failed)
    assert.equal("v99", select(2, version()))
  end)
end)

describe("watch = true", function()
  local origin, m, port

  lazy_setup(function()
    origin = helpers.start_origin()
    port = helpers.free_port()
    m = helpers.start_moxy(([[
return {
  workers = 2, watch = true,
  listen = { "127.0.0.1:%d" },
  upstreams = { app = { servers = { %q } } },
  log = { error = "stderr" },
  scripts = { "site.lua" },
}
]]):format(port, origin.addr), { port = port, files = {
      ["data.txt"] = "one\n",
      ["site.lua"] = [[
local dir = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
local f = assert(io.open(dir .. "data.txt"))
local DATA = f:read("*a")
f:close()
moxy.watch("data.txt")
return { on_request = function(txn) return txn:respond(200, DATA) end }
]] } })
  end)

  lazy_teardown(function() helpers.stop_all() end)

  local function body()
    return assert(helpers.request(port, { path = "/" })).body
  end

  local function reloads()
    local n = 0
    for _ in m:stderr():gmatch("reload: generation %d+ serving") do n = n + 1 end
    return n
  end

  it("reloads when a file named with moxy.watch changes", function()
    assert.equal("one\n", body())
    local t0 = helpers.now()
    helpers.write_file(m.dir .. "/data.txt", "two\n")
    assert(helpers.wait_until(function() return body() == "two\n" end, 5 * helpers.scale), m:stderr())
    print(("\n    data.txt rewritten: served by the new generation %.0f ms later"):format((helpers.now() - t0) * 1000))
    assert.matches("watch: [^\n]*data.txt changed; reloading", m:stderr())
  end)

  it("reloads once for a burst of changes (debounced), and on a script replaced by rename", function()
    local before = reloads()
    for i = 1, 5 do
      helpers.write_file(m.dir .. "/data.txt", "burst " .. i .. "\n")
      helpers.sleep(0.02)
    end
    assert(helpers.wait_until(function() return body() == "burst 5\n" end, 5 * helpers.scale), m:stderr())
    helpers.sleep(0.5)
    assert.equal(before + 1, reloads())
    -- an editor's or a deploy's write-then-rename
    helpers.write_file(m.dir .. "/site.lua.new", "return { on_request = function(txn) return txn:respond(200, 'renamed\\n') end }\n")
    assert(os.rename(m.dir .. "/site.lua.new", m.dir .. "/site.lua"))
    assert(helpers.wait_until(function() return body() == "renamed\n" end, 5 * helpers.scale), m:stderr())
  end)
end)

describe("hot reload memory", function()
  local origin, m, port, admin_port

  -- under AddressSanitizer (make check) freed memory waits in its quarantine
  -- (256 MiB by default) before it is reused: keep that small here
  lazy_setup(function()
    origin, m, port, admin_port = start(helpers.sanitized and {
      ASAN_OPTIONS = (os.getenv("ASAN_OPTIONS") or "") .. ":quarantine_size_mb=1:thread_local_quarantine_size_kb=64" })
  end)

  lazy_teardown(function() helpers.stop_all() end)

  it("RSS after 1000 reloads is within a few MiB of after 10", function()
    local conn = assert(helpers.connection(admin_port))
    local traffic = assert(helpers.connection(port))
    local function reloads(n)
      for _ = 1, n do
        local res = assert(conn:request({ method = "POST", path = "/reload",
                                          headers = { Authorization = "Bearer " .. TOKEN } }))
        assert.equal(200, res.status, res.body)
        assert.equal(200, assert(traffic:request({ path = "/echo" })).status)
      end
    end
    reloads(10)
    helpers.sleep(0.2)
    local rss10 = m:rss()
    local t0 = helpers.now()
    reloads(990)
    local took = helpers.now() - t0
    helpers.sleep(0.2)
    local rss1000 = m:rss()
    print(("\n    RSS after 10 reloads %d KiB, after 1000 %d KiB (+%d KiB); 990 reloads took %.1f s"):format(
      rss10, rss1000, rss1000 - rss10, took))
    assert(rss1000 - rss10 < 8 * 1024, ("RSS grew %d KiB over 990 reloads"):format(rss1000 - rss10))
    conn:close()
    traffic:close()
  end)
end)
