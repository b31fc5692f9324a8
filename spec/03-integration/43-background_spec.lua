-- Requests moxy makes itself (a stale-while-revalidate refresh) have no
-- client connection, yet they count like one: a graceful stop (QUIT) waits
-- for them, logs them, and cuts the one that outlasts timeouts.drain.
local helpers = require "spec.helpers"
local cjson = require "cjson.safe"

local q, path = helpers.query_escape, helpers.origin_path

describe("background refreshes", function()
  local origin

  lazy_setup(function() origin = helpers.start_origin() end)
  lazy_teardown(function() helpers.stop_all() end)

  -- A moxy with one worker and a cache, and a path of the origin that is
  -- stale after 1 s, may be served stale for 30 s, and takes delay seconds
  -- to answer (each time: the refresh too).
  local function setup(drain, delay, case)
    local m = helpers.start_moxy({
      workers = 1,
      upstreams = { app = { servers = { origin.addr } } },
      cache = { size = "8m" },
      timeouts = { drain = drain },
      log = { format = "json", fields = { "uri", "status", "error", "duration_ms" } },
    })
    local p = path("/bytes/100", { "X-Case:" .. case, "Cache-Control:max-age=1, stale-while-revalidate=30",
                                   'ETag:"b1"' }) .. "&match304=" .. q('"b1"') .. "&delay=" .. delay
    return m, p
  end

  -- one connection per request, closed by moxy after it: at QUIT, the
  -- refresh is all that is left in flight
  local function get(m, p)
    return assert(helpers.request(m.port, { path = p, timeout = 10, headers = { Connection = "close" } }))
  end

  local function lines_for(m, p)
    local out = {}
    for _, line in ipairs(m:access_lines()) do
      local e = cjson.decode(line)
      if e and e.uri == p then out[#out + 1] = e end
    end
    return out
  end

  -- QUIT: moxy must exit 0 (within 8 s); the seconds it took
  local function quit(m)
    local t0 = helpers.now()
    m:signal("QUIT")
    local code, how = m:wait_exit(8)
    assert.equal("exited", how)
    assert.equal(0, code)
    return helpers.now() - t0
  end

  -- store p, let it go stale, and have the next request start its refresh
  local function start_refresh(m, p)
    assert.equal(200, get(m, p).status)
    helpers.sleep(1.2)
    local t0 = helpers.now()
    local res = get(m, p)
    assert.is_true(helpers.now() - t0 < 0.5, "the stale answer waited for the origin")
    assert.matches("^moxy; hit; ttl=%-%d+$", res:header("cache-status"))
  end

  it("a QUIT waits for a refresh in flight, which is logged, then moxy exits 0", function()
    local m, p = setup("10s", "2", "quit-waits")
    start_refresh(m, p)
    helpers.sleep(0.3) -- the clients' connections are closed; the refresh is at the origin
    local took = quit(m)
    -- the refresh took its second at the origin before the worker let go
    assert.is_true(took >= 1.2, ("moxy exited %.2f s after QUIT, before its refresh ended"):format(took))
    assert.equal(2, #origin:saw("^" .. p:gsub("[%^%$%(%)%%%.%[%]%*%+%-%?]", "%%%0") .. "$"))
    local lines = lines_for(m, p)
    assert.equal(3, #lines, "the miss, the stale hit and the refresh are logged")
    local refresh = lines[3]
    assert.is_true(refresh.status == 304 or refresh.status == 200, cjson.encode(refresh))
    assert.is_true(refresh.duration_ms >= 1900, cjson.encode(refresh))
    assert.is_nil(refresh.error)
  end)

  it("a refresh that outlasts timeouts.drain is cut: logged 499 with why, and moxy exits", function()
    -- the origin takes 3 s for every request of the path: the first one too
    local m, p = setup("1s", "3", "drain-cuts")
    start_refresh(m, p)
    local took = quit(m)
    assert.is_true(took < 4, ("moxy took %.2f s to exit with a drain of 1 s"):format(took))
    local lines = lines_for(m, p)
    assert.equal(3, #lines, "the miss, the stale hit and the cut refresh are logged")
    local refresh = lines[3]
    assert.equal(499, refresh.status)
    assert.equal("worker stopped", refresh.error)
  end)
end)

-- A request that streams from the object another request fills, whose
-- client stops reading: the send timeout closes its connection while the
-- object still fills, and its on_log hooks wait (moxy.sleep).  It outlives
-- its connection; the stream from the object must stop, not write to a
-- connection that is gone.
describe("a collapsed request cut by its send timeout while its on_log waits", function()
  local origin, m

  lazy_setup(function()
    origin = helpers.start_origin()
    m = helpers.start_moxy({
      workers = 1,
      upstreams = { app = { servers = { origin.addr } } },
      cache = { size = "128m", max_object = "64m" },
      timeouts = { client_send = "1s" },
      scripts = { "hooks.lua" },
    }, { files = { ["hooks.lua"] = [[
return { on_log = function(txn) if txn.req.headers:get("X-Sleep") then moxy.sleep(2) end end }
]] } })
  end)
  lazy_teardown(function() helpers.stop_all() end)

  it("stops streaming to it; the leader gets the whole body and moxy keeps serving", function()
    -- 32 MB: the first 16 MB fill the follower's socket buffers, then the
    -- origin pauses 3 s (longer than the send timeout) before the rest
    local n = 32 * 1024 * 1024
    local p = path("/bytes/" .. n, { "Cache-Control:max-age=60", "X-Case:send-timeout" }) .. "&pause=3"
    local lead = assert(helpers.connection(m.port))
    assert(lead:send(helpers.build_request({ path = p })))
    local got = 0
    helpers.sleep(0.3) -- the origin's head is in: the object fills
    local f = assert(helpers.connection(m.port))
    assert(f:send(helpers.build_request({ path = p, headers = { ["X-Sleep"] = "1" } })))
    -- the follower reads nothing; the leader reads all
    local res = assert(lead:read_response({ timeout = 15, sink = function(chunk) got = got + #chunk end }))
    lead:close()
    assert.equal(200, res.status)
    assert.equal(n, got)
    helpers.sleep(2.5) -- the follower's on_log hooks end
    f:close()
    assert.is_true(m:alive(), "moxy died")
    local again = assert(helpers.request(m.port, { path = path("/bytes/100", { "X-Case:after" }) }))
    assert.equal(200, again.status)
  end)
end)
