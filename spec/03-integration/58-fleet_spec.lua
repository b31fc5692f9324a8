-- fleet = {...}: cache purges and shared-dict invalidations broadcast to
-- every node over Redis pub/sub.  One redis-server, three moxy nodes with a
-- cache in front of one counting origin: a purge on A (admin /purge, the
-- PURGE method, moxy.cache.purge, a prefix) makes the next request on B and
-- C a miss; moxy.fleet.delete / flush reach B's and C's dicts; messages
-- badly signed, malformed, stale or replayed are dropped and counted; with
-- Redis down purges still apply where they are made and requests flow; the
-- subscription comes back with Redis; a reload that changes the section
-- takes effect, one that does not keeps the connection.
local helpers = require "spec.helpers"

local S = helpers.scale
local TOKEN = "fleet-admin-token-0123456789"
local SECRET = "fleet-spec-secret-0123456789abcdef"

local SITE = [[
return {
  on_request = function(txn)
    local p, h = txn.req.path, txn.req.headers
    if p == "/purge" then return txn:respond(200, tostring(moxy.cache.purge(h:get("X-Key")))) end
    if p == "/purge-prefix" then return txn:respond(200, tostring(moxy.cache.purge_prefix(h:get("X-Key")))) end
    if p == "/dict-set" then
      moxy.shared.sessions:set(h:get("X-Key"), "v")
      return txn:respond(200, "set")
    end
    if p == "/dict-get" then return txn:respond(200, tostring(moxy.shared.sessions:get(h:get("X-Key")))) end
    if p == "/dict-delete" then
      local ok, err = moxy.fleet.delete("sessions", h:get("X-Key"))
      return txn:respond(200, tostring(ok) .. " " .. tostring(err))
    end
    if p == "/dict-flush" then
      local ok, err = moxy.fleet.flush("sessions")
      return txn:respond(200, tostring(ok) .. " " .. tostring(err))
    end
    if p == "/dict-bad" then
      local ok, err = pcall(moxy.fleet.delete, "nope", "k")
      return txn:respond(200, tostring(ok) .. " " .. tostring(err))
    end
  end,
  on_response = function(txn)
    txn.resp.headers:set("X-Key", tostring(txn.cache.key))
    txn.resp.headers:set("X-Cache", tostring(txn.cache.status))
  end,
}
]]

local function node_config(name, redis_port, origin)
  return {
    workers = 2,
    upstreams = { app = { servers = { origin.addr } } },
    cache = { size = "8m", purge = { "127.0.0.1" } },
    shared = { sessions = "1m" },
    admin = { token = TOKEN },
    scripts = { "site.lua" },
    fleet = { node = name, secret = SECRET, redis = { port = redis_port, timeout = 0.3, connect_timeout = 0.3 } },
  }
end

-- the unsigned part of a message (base/fleet_msg.h's format)
local function ns(s) return #s .. ":" .. s .. "," end
local function message(node, ts_ms, nonce, kind, a1, a2)
  return "MXF1" .. ns(string.format("%d", ts_ms)) .. ns(node) .. ns(nonce) .. ns(kind) .. ns(a1) .. ns(a2 or "")
end

-- HMAC-SHA256 of text under key, in hex
local crypto = require "moxy.crypto"
local function hmac(key, text) return crypto.hex(crypto.hmac("sha256", key, text)) end

local function esc(s)
  return (s:gsub("[^%w]", function(ch) return ("%%%02X"):format(ch:byte()) end))
end

local function copy(t)
  if type(t) ~= "table" then return t end
  local out = {}
  for k, v in pairs(t) do out[k] = copy(v) end
  return out
end

local function signed(key, ...)
  local m = message(...)
  return m .. ns(hmac(key, m))
end

describe("fleet", function()
  local redis, origin, nodes
  local n = 0

  local function metric(m, name, labels) return helpers.metric(m.admin_port, name, labels) or 0 end

  local function get(m, p, headers, method)
    local list = {}
    for k, v in pairs(headers or {}) do list[#list + 1] = { k, v } end
    return assert(helpers.request(m.port, { path = p, headers = list, method = method, timeout = 5 * S }))
  end

  local function admin_purge(m, query)
    return assert(helpers.request(m.admin_port, { method = "POST", path = "/purge?" .. query,
      headers = { Authorization = "Bearer " .. TOKEN } }))
  end

  local function uniq(base)
    n = n + 1
    return base .. n
  end

  -- times the origin was asked for path p (exact)
  local function origin_saw(p)
    local pat = "^" .. p:gsub("[%^%$%(%)%%%.%[%]%*%+%-%?]", "%%%0") .. "$"
    return #origin:saw(pat)
  end

  -- p cached on every node: three misses, then three hits; -> its key
  local function cache_everywhere(p)
    local before, key = origin_saw(p)
    for _, m in ipairs(nodes) do key = get(m, p):header("x-key") end
    for _, m in ipairs(nodes) do assert.equal("hit", get(m, p):header("x-cache")) end
    assert.equal(before + 3, origin_saw(p))
    return key
  end

  local function applied(i) return metric(nodes[i], "moxy_fleet_applied_total") end

  -- wait until nodes B and C applied more than they had in before
  local function wait_applied(before, what)
    assert(helpers.wait_until(function() return applied(2) > before[2] and applied(3) > before[3] end, 5 * S),
      what .. ": not applied on B and C")
  end

  local function applied_now() return { applied(1), applied(2), applied(3) } end

  -- the next request for p on B and C goes to the origin (a miss), and on A
  local function misses_everywhere(p)
    local before = origin_saw(p)
    for _, m in ipairs(nodes) do assert.equal("miss", get(m, p):header("x-cache")) end
    assert.equal(before + 3, origin_saw(p))
  end

  local function wait_connected(i)
    return helpers.wait_until(function() return metric(nodes[i], "moxy_fleet_connected") == 1 end, 8 * S, 0.05)
  end

  lazy_setup(function()
    redis = helpers.start_redis()
    origin = helpers.start_origin()
    nodes = {}
    for i, name in ipairs({ "A", "B", "C" }) do
      nodes[i] = helpers.start_moxy(node_config(name, redis.port, origin), { files = { ["site.lua"] = SITE } })
    end
    for i = 1, 3 do assert(wait_connected(i), "node " .. i .. " did not subscribe: " .. nodes[i]:stderr()) end
  end)

  lazy_teardown(function() helpers.stop_all() end)

  it("names the file and the key of a mistake in fleet (moxy -t)", function()
    local function check(fleet, want, files)
      local src = "return { workers = 1, listen = { '127.0.0.1:18199' },\n  fleet = " .. fleet .. " }\n"
      local code, out = helpers.run_moxy_check(src, { files = files })
      assert.equal(1, code, out)
      assert.matches(want, out, 1, true)
    end
    check("{ colour = 1 }", "moxy.lua:2: fleet.colour: unknown key")
    check("{ redis = { port = 0 } }", "moxy.lua:2: fleet.redis.port: expected a number in 1..65535")
    check("{ redis = { pool_size = 4 } }", "fleet.redis.pool_size: unknown key")
    check("{ secret = 'short' }", "fleet.secret: a secret of at least 16 bytes")
    check("{ secret = '0123456789abcdef0', secret_file = 'k' }", "fleet.secret_file: one of secret or secret_file")
    check("{ secret_file = 'missing.key' }", "fleet.secret_file: cannot read")
    check("{ node = '' }", "fleet.node: 1 to 128 bytes")
    check("{ redis = { user = 'u' } }", "fleet.redis.user: user needs password")
    check("{ max_age = 0 }", "fleet.max_age: 1 to 3600 seconds")
    local code, out = helpers.run_moxy_check("return { workers = 1, listen = { '127.0.0.1:18199' },\n" ..
      "  fleet = { secret_file = 'fleet.key', redis = { timeout = '250ms' } } }\n",
      { files = { ["fleet.key"] = "0123456789abcdef0123\n" } })
    assert.equal(0, code, out)
  end)

  it("subscribes each node and says so in the log and /metrics", function()
    for i, m in ipairs(nodes) do
      assert(m:wait_error_log("fleet: subscribed to moxy:fleet on 127.0.0.1:" .. redis.port .. " as node " ..
        ({ "A", "B", "C" })[i]))
      assert.equal(1, metric(m, "moxy_fleet_connected"))
    end
    -- an idle subscription has no timeout (0.3 s here): still up a second later
    helpers.sleep(1)
    for _, m in ipairs(nodes) do
      assert.equal(1, metric(m, "moxy_fleet_connected"))
      assert.is_nil(m:stderr():find("lost the subscription", 1, true))
    end
  end)

  it("an admin purge on A is a miss on B and C", function()
    local p = uniq("/echo/admin") .. "?rh=Cache-Control:max-age%3D300"
    local key = cache_everywhere(p)
    local before = applied_now()
    local res = admin_purge(nodes[1], "key=" .. esc(key))
    assert.equal(200, res.status, res.body)
    assert.equal('{"purged":1,"broadcast":true}\n', res.body)
    wait_applied(before, "admin purge")
    -- A ignores its own echo, and B and C publish nothing of what they applied (no loop)
    helpers.sleep(0.3)
    assert.equal(before[1], applied(1))
    assert.equal(before[2] + 1, applied(2))
    assert.equal(before[3] + 1, applied(3))
    misses_everywhere(p)
    assert.is_true(metric(nodes[1], "moxy_fleet_published_total") >= 1)
  end)

  it("the PURGE method on A is a miss on B and C", function()
    local p = uniq("/echo/method") .. "?rh=Cache-Control:max-age%3D300"
    cache_everywhere(p)
    local before = applied_now()
    local res = get(nodes[1], p, nil, "PURGE")
    assert.equal(200, res.status)
    assert.equal("purged 1\n", res.body)
    wait_applied(before, "PURGE")
    misses_everywhere(p)
  end)

  it("moxy.cache.purge and purge_prefix from a script on A are misses on B and C", function()
    local p = uniq("/echo/script") .. "?rh=Cache-Control:max-age%3D300"
    local key = cache_everywhere(p)
    local before = applied_now()
    assert.equal("1", get(nodes[1], "/purge", { ["X-Key"] = key }).body)
    wait_applied(before, "moxy.cache.purge")
    misses_everywhere(p)

    local dir = uniq("/echo/dir")
    local a, b = dir .. "/a?rh=Cache-Control:max-age%3D300", dir .. "/b?rh=Cache-Control:max-age%3D300"
    cache_everywhere(a)
    cache_everywhere(b)
    before = applied_now()
    assert.equal("2", get(nodes[1], "/purge-prefix", { ["X-Key"] = "http://localhost" .. dir .. "/" }).body)
    wait_applied(before, "purge_prefix")
    misses_everywhere(a)
    misses_everywhere(b)

    -- the admin's prefix purge too
    local c = uniq("/echo/adminprefix") .. "/x?rh=Cache-Control:max-age%3D300"
    cache_everywhere(c)
    before = applied_now()
    local res = admin_purge(nodes[1], "prefix=" .. esc("http://localhost" .. c:match("^(.*)/x")))
    assert.equal(200, res.status, res.body)
    wait_applied(before, "admin prefix purge")
    misses_everywhere(c)
  end)

  it("moxy.fleet.delete and flush on A reach B's and C's dicts (and A's at once)", function()
    for _, m in ipairs(nodes) do
      get(m, "/dict-set", { ["X-Key"] = "s1" })
      get(m, "/dict-set", { ["X-Key"] = "s2" })
    end
    local before = applied_now()
    assert.equal("true nil", get(nodes[1], "/dict-delete", { ["X-Key"] = "s1" }).body)
    assert.equal("nil", get(nodes[1], "/dict-get", { ["X-Key"] = "s1" }).body)
    wait_applied(before, "moxy.fleet.delete")
    for i = 2, 3 do
      assert.equal("nil", get(nodes[i], "/dict-get", { ["X-Key"] = "s1" }).body)
      assert.equal("v", get(nodes[i], "/dict-get", { ["X-Key"] = "s2" }).body)
    end
    before = applied_now()
    assert.equal("true nil", get(nodes[1], "/dict-flush").body)
    assert.equal("nil", get(nodes[1], "/dict-get", { ["X-Key"] = "s2" }).body)
    wait_applied(before, "moxy.fleet.flush")
    for i = 2, 3 do assert.equal("nil", get(nodes[i], "/dict-get", { ["X-Key"] = "s2" }).body) end
    -- a dict that does not exist is the script's mistake: it raises, naming the call
    assert.matches('false .*moxy.fleet.delete: no shared dict "nope"', get(nodes[1], "/dict-bad").body)
  end)

  it("drops messages badly signed, unsigned, malformed, stale or replayed, and counts them", function()
    local p = uniq("/echo/forged") .. "?rh=Cache-Control:max-age%3D300"
    local key = cache_everywhere(p)
    local B = nodes[2]
    local function dropped(reason) return metric(B, "moxy_fleet_dropped_total", { reason = reason }) end
    local function publish(msg)
      assert.equal(3, tonumber(redis:cmd("PUBLISH", "moxy:fleet", msg)))
    end
    local now_ms = math.floor(helpers.now() * 1000)
    local sig0, mal0, stale0, replay0 = dropped("bad_signature"), dropped("malformed"), dropped("stale"), dropped("replay")
    publish(signed("another-secret-0123456789", "mallory", now_ms, "00000000000000a1", "purge", key))
    publish(message("mallory", now_ms, "00000000000000a2", "purge", key) .. ns(""))
    publish("MXF1 not a message")
    publish(string.rep("x", 100000))
    publish(signed(SECRET, "mallory", now_ms - 3600 * 1000, "00000000000000a3", "purge", key))
    assert(helpers.wait_until(function()
      return dropped("bad_signature") == sig0 + 2 and dropped("malformed") == mal0 + 1 and
        dropped("too_large") >= 1 and dropped("stale") == stale0 + 1
    end, 5 * S), "drops not counted")
    -- nothing was purged: still hits everywhere
    for _, m in ipairs(nodes) do assert.equal("hit", get(m, p):header("x-cache")) end
    -- a message signed with the secret (by anyone who has it) is applied, once
    local before = applied_now()
    local good = signed(SECRET, "ops-tool", now_ms, "00000000000000b1", "purge", key)
    publish(good)
    assert(helpers.wait_until(function()
      return applied(1) > before[1] and applied(2) > before[2] and applied(3) > before[3]
    end, 5 * S), "a well-signed message was not applied")
    misses_everywhere(p)
    get(B, p)
    assert.equal("hit", get(B, p):header("x-cache"))
    publish(good)
    assert(helpers.wait_until(function() return dropped("replay") == replay0 + 1 end, 5 * S), "replay not dropped")
    assert.equal("hit", get(B, p):header("x-cache"))
  end)

  it("applies keys of any bytes and logs them escaped", function()
    local before = applied_now()
    local key = "http://localhost/odd\0\nfleet: forged line\r"
    assert.equal(3, tonumber(redis:cmd("PUBLISH", "moxy:fleet",
      signed(SECRET, "ops\ntool", math.floor(helpers.now() * 1000), "00000000000000d1", "purge", key))))
    wait_applied(before, "a binary key")
    assert(nodes[2]:wait_error_log("fleet: purge http://localhost/odd\\x00\\x0afleet: forged line\\x0d from ops\\x0atool: 0 cached object(s)", 5 * S))
    assert.is_nil(nodes[2]:stderr():find("\nfleet: forged line", 1, true))
  end)

  it("bounds what a flood of messages costs: costly ones (prefix purges) at 10/s after a burst of 100", function()
    local B = nodes[2]
    local rate0, applied0 = metric(B, "moxy_fleet_dropped_total", { reason = "rate" }), applied(2)
    local now_ms = math.floor(helpers.now() * 1000)
    local c = assert(require("socket").connect("127.0.0.1", redis.port))
    local out = {}
    for i = 1, 300 do
      local msg = signed(SECRET, "flood", now_ms, string.format("%016x", 0xf100000 + i), "purge_prefix",
        "http://localhost/nothing-here/" .. i)
      out[#out + 1] = string.format("*3\r\n$7\r\nPUBLISH\r\n$10\r\nmoxy:fleet\r\n$%d\r\n%s\r\n", #msg, msg)
    end
    assert(c:send(table.concat(out)))
    for _ = 1, 300 do assert(c:receive("*l")) end
    c:close()
    local t0 = helpers.now()
    assert(helpers.wait_until(function()
      return metric(B, "moxy_fleet_dropped_total", { reason = "rate" }) - rate0 + applied(2) - applied0 >= 300
    end, 5 * S), "the flood was not all accounted for")
    local took = helpers.now() - t0
    local got = applied(2) - applied0
    -- a burst of 100 (less what earlier cases took), plus 10 a second while it came in
    assert.is_true(got >= 50 and got <= 100 + 10 * (took + 1) * S, got .. " of 300 applied")
    assert.is_true(metric(B, "moxy_fleet_dropped_total", { reason = "rate" }) - rate0 >= 150)
  end)

  it("with Redis down, purges apply where they are made and requests flow; broadcasts resume with Redis", function()
    local p = uniq("/echo/down") .. "?rh=Cache-Control:max-age%3D300"
    local key = cache_everywhere(p)
    local A = nodes[1]
    local failed0 = metric(A, "moxy_fleet_publish_failures_total")
    redis:stop("KILL")
    for i = 2, 3 do
      assert(helpers.wait_until(function() return metric(nodes[i], "moxy_fleet_connected") == 0 end, 5 * S),
        "node " .. i .. " still says it is subscribed")
    end
    assert(nodes[2]:wait_error_log("fleet: lost the subscription to moxy:fleet", 5 * S))
    -- purges on A: applied on A at once, each answered without waiting for Redis
    local t0 = helpers.now()
    assert.equal("1", get(A, "/purge", { ["X-Key"] = key }).body)
    local res = get(A, p, nil, "PURGE")
    assert.equal(404, res.status) -- gone already
    assert.is_true(helpers.now() - t0 < 0.3 * S, "purges waited on Redis")
    assert.equal("miss", get(A, p):header("x-cache"))
    -- B and C never heard of it (fire-and-forget): still hits
    assert.equal("hit", get(nodes[2], p):header("x-cache"))
    -- the failed broadcasts are counted and logged
    assert(helpers.wait_until(function() return metric(A, "moxy_fleet_publish_failures_total") >= failed0 + 2 end,
      5 * S), "failed publishes not counted")
    assert(A:wait_error_log("fleet: a purge was not broadcast", 5 * S))
    -- requests keep flowing on every node, none slower than the Redis timeout
    for _ = 1, 5 do
      for _, m in ipairs(nodes) do
        local t = helpers.now()
        assert.equal(200, get(m, uniq("/echo/flow")).status)
        assert.is_true(helpers.now() - t < 0.3 * S, "a request took " .. (helpers.now() - t) .. " s")
      end
    end
    assert.equal(0, metric(A, "moxy_requests_total", { class = "5xx" }))
    -- Redis back (empty): every node subscribes again by itself
    redis:start()
    for i = 1, 3 do assert(wait_connected(i), "node " .. i .. " did not subscribe again") end
    local q = uniq("/echo/back") .. "?rh=Cache-Control:max-age%3D300"
    local k2 = cache_everywhere(q)
    -- the publisher may still be in its backoff for a moment: purge until it goes through
    local before = applied_now()
    assert(helpers.wait_until(function()
      get(A, "/purge", { ["X-Key"] = k2 })
      return applied(2) > before[2] and applied(3) > before[3]
    end, 8 * S, 0.3), "broadcasts did not resume")
    misses_everywhere(q)
  end)

  it("a reload that changes fleet takes effect; one that does not keeps the connection", function()
    local C = nodes[3]
    local function subscribed_lines()
      local _, count = C:stderr():gsub("fleet: subscribed to", "")
      return count
    end
    local function reloads()
      local _, count = C:stderr():gsub("reload: generation %d+ serving", "")
      return count
    end
    local function reload(cfg)
      local r0 = reloads()
      helpers.write_file(C.conf_path, "return " .. helpers.serialize(cfg) .. "\n")
      C:signal("HUP")
      assert(helpers.wait_until(function() return reloads() > r0 end, 10 * S), "no reload: " .. C:stderr())
    end
    -- unchanged: no new subscription
    local subs = subscribed_lines()
    reload(C.config)
    helpers.sleep(0.3)
    assert.equal(subs, subscribed_lines())
    assert.equal(1, metric(C, "moxy_fleet_connected"))
    -- another channel: C no longer hears A's purges
    local cfg = copy(C.config)
    cfg.fleet.channel = "moxy:fleet-2"
    reload(cfg)
    assert(C:wait_error_log("fleet: subscribed to moxy:fleet-2", 5 * S))
    local p = uniq("/echo/reload") .. "?rh=Cache-Control:max-age%3D300"
    local key = cache_everywhere(p)
    local before = applied_now()
    get(nodes[1], "/purge", { ["X-Key"] = key })
    wait_applied({ before[1], before[2], -1 }, "after the reload")
    helpers.sleep(0.3)
    assert.equal(before[3], applied(3))
    assert.equal("hit", get(C, p):header("x-cache"))
    -- a message on the new channel reaches C
    assert.equal(1, tonumber(redis:cmd("PUBLISH", "moxy:fleet-2",
      signed(SECRET, "ops-tool", math.floor(helpers.now() * 1000), "00000000000000c1", "purge", key))))
    assert(helpers.wait_until(function() return applied(3) > before[3] end, 5 * S))
    assert.equal("miss", get(C, p):header("x-cache"))
    -- fleet removed: C stops
    cfg.fleet = nil
    reload(cfg)
    assert(C:wait_error_log("fleet: stopped", 5 * S))
    assert.equal(0, metric(C, "moxy_fleet_connected"))
  end)
end)

describe("fleet over TLS, and across a binary upgrade", function()
  lazy_teardown(function() helpers.stop_all() end)

  local function alive(pid) return pid and os.execute("kill -0 " .. pid .. " 2>/dev/null") == 0 end

  it("subscribes and publishes over TLS (verify = false)", function()
    local dir = helpers.tmpdir("redis-tls")
    helpers.make_cert(dir, "srv", "rsa", "localhost", { "localhost", "IP:127.0.0.1" })
    local port = helpers.free_port()
    local proc = helpers.spawn({ "redis-server", "--port", "0", "--tls-port", tostring(port), "--bind", "127.0.0.1",
      "--tls-cert-file", dir .. "/srv.pem", "--tls-key-file", dir .. "/srv.key",
      "--tls-ca-cert-file", dir .. "/srv.pem", "--tls-auth-clients", "no",
      "--save", "", "--appendonly", "no", "--daemonize", "no", "--dir", dir }, { dir = dir, kind = "redis" })
    local up = helpers.wait_until(function()
      if not proc:alive() then return "exited" end
      return helpers.sh("redis-cli --tls --insecure -h 127.0.0.1 -p " .. port .. " PING"):match("PONG") and "up"
    end, 10 * S, 0.05)
    if up ~= "up" then
      pending("redis-server with TLS did not start: " .. proc:stdout() .. proc:stderr())
      return
    end
    local origin = helpers.start_origin()
    local m = helpers.start_moxy({
      workers = 1,
      upstreams = { app = { servers = { origin.addr } } },
      cache = { size = "2m" },
      shared = { sessions = "1m" },
      admin = { token = TOKEN },
      scripts = { "site.lua" },
      fleet = { node = "T", redis = { port = port, tls = true, verify = false, timeout = 0.5 } },
    }, { files = { ["site.lua"] = SITE } })
    assert(helpers.wait_until(function() return helpers.metric(m.admin_port, "moxy_fleet_connected") == 1 end, 8 * S),
      m:stderr())
    assert(m:wait_error_log("messages NOT signed (set fleet.secret)"))
    -- its own purge goes out over TLS and comes back (an echo it ignores)
    assert.equal("true nil", assert(helpers.request(m.port, { path = "/dict-flush" })).body)
    assert(helpers.wait_until(function()
      return helpers.metric(m.admin_port, "moxy_fleet_published_total") == 1 and
        helpers.metric(m.admin_port, "moxy_fleet_received_total") == 1
    end, 5 * S), m:stderr())
    assert.equal(0, helpers.metric(m.admin_port, "moxy_fleet_applied_total"))
  end)

  it("the old process's fleet stops cleanly and the new one subscribes (SIGUSR2)", function()
    local redis = helpers.start_redis()
    local origin = helpers.start_origin()
    local m = helpers.start_moxy({
      workers = 1,
      upstreams = { app = { servers = { origin.addr } } },
      cache = { size = "2m" },
      admin = { token = TOKEN },
      fleet = { node = "U", secret = SECRET, redis = { port = redis.port } },
    })
    assert(m:wait_error_log("fleet: subscribed to moxy:fleet", 5 * S))
    local old_pid = m.pid
    local function pid_in_file() return tonumber((helpers.read_file(m.dir .. "/moxy.pid") or ""):match("%d+")) end
    m:signal("USR2")
    local new_pid = helpers.wait_until(function()
      local p = pid_in_file()
      return p and p ~= old_pid and p
    end, 10 * S)
    assert(new_pid, "no new process:\n" .. m:stderr())
    finally(function()
      if alive(new_pid) then helpers.sh("kill -TERM " .. new_pid) end
      helpers.wait_until(function() return not alive(new_pid) end, 10 * S)
      if alive(new_pid) then helpers.sh("kill -KILL " .. new_pid) end
    end)
    assert.equal(0, m:wait_exit(20 * S), "the old moxy did not exit 0:\n" .. m:stderr())
    local text = m:stderr()
    assert.matches("fleet: stopped", text, 1, true)
    -- both processes subscribed (the new one's lines go to the same stderr)
    assert(helpers.wait_until(function()
      local _, n = m:stderr():gsub("fleet: subscribed to moxy:fleet", "")
      return n >= 2
    end, 8 * S), m:stderr())
    assert.equal("1", tostring(redis:cmd("PUBSUB", "NUMSUB", "moxy:fleet")[2]))
    -- the new one stops cleanly too (its sanitizer reports, if any, go to the same stderr)
    helpers.sh("kill -TERM " .. new_pid)
    assert(helpers.wait_until(function() return not alive(new_pid) end, 10 * S), "the new moxy did not exit")
    local _, stops = m:stderr():gsub("fleet: stopped", "")
    assert.equal(2, stops)
    assert.is_nil(helpers.sanitizer_report(m:stderr()))
  end)
end)
