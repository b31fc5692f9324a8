-- The admin listener: GET /status (JSON), GET /metrics (Prometheus text
-- format, checked by a parser of that format below), and draining peers
-- with POST /peers/{pool}/{peer}/drain|enable behind the admin token.
local helpers = require "spec.helpers"
local cjson = require "cjson.safe"

local TOKEN = "s3cret-admin-token-0123"

-- Prometheus' text exposition format (0.0.4) -> { [name] = { type, help,
-- samples = { { labels = {...}, value } } } }; raises on any line that is
-- not valid, on samples of a family without # TYPE, and on broken histograms.
local function parse_prometheus(text)
  local families, order = {}, {}
  local function family(name)
    local base = name:gsub("_bucket$", ""):gsub("_sum$", ""):gsub("_count$", "")
    return families[name] or families[base]
  end
  for line in text:gmatch("[^\n]+") do
    local kind, name, rest = line:match("^# (%u+) ([%a_:][%w_:]*) (.*)$")
    if kind == "HELP" then
      families[name] = families[name] or { samples = {} }
      families[name].help = rest
    elseif kind == "TYPE" then
      assert(({ counter = 1, gauge = 1, histogram = 1, summary = 1, untyped = 1 })[rest], "bad type: " .. line)
      families[name] = families[name] or { samples = {} }
      assert(not families[name].type, "two TYPE lines for " .. name)
      families[name].type = rest
      order[#order + 1] = name
    else
      assert(line:sub(1, 1) ~= "#", "unknown comment: " .. line)
      local sname, labels, value = line:match("^([%a_:][%w_:]*)(%b{}) (%S+)$")
      if not sname then
        sname, value = line:match("^([%a_:][%w_:]*) (%S+)$")
        labels = "{}"
      end
      assert(sname, "bad sample line: " .. line)
      local v = tonumber(value) or (value == "+Inf" and math.huge) or (value == "NaN" and 0 / 0)
      assert(v, "bad value: " .. line)
      local lt = {}
      local body = labels:sub(2, -2)
      for k, lv in body:gmatch('([%a_][%w_]*)="(.-)"') do lt[k] = lv end
      local stripped = body:gsub('[%a_][%w_]*=".-"', ""):gsub(",", "")
      assert(stripped == "", "bad labels: " .. line)
      local f = family(sname)
      assert(f and f.type, "sample before its # TYPE: " .. line)
      f.samples[#f.samples + 1] = { name = sname, labels = lt, value = v }
    end
  end
  -- histograms: buckets cumulative and ending in +Inf = _count, per label set
  for name, f in pairs(families) do
    if f.type == "histogram" then
      local sets = {}
      for _, s in ipairs(f.samples) do
        local key = {}
        for k, v in pairs(s.labels) do if k ~= "le" then key[#key + 1] = k .. "=" .. v end end
        table.sort(key)
        key = table.concat(key, ",")
        sets[key] = sets[key] or { buckets = {} }
        if s.name == name .. "_bucket" then
          table.insert(sets[key].buckets, { le = s.labels.le == "+Inf" and math.huge or tonumber(s.labels.le), v = s.value })
        elseif s.name == name .. "_count" then
          sets[key].count = s.value
        elseif s.name == name .. "_sum" then
          sets[key].sum = s.value
        end
      end
      for key, set in pairs(sets) do
        local prev_le, prev_v = -math.huge, 0
        for _, b in ipairs(set.buckets) do
          assert(b.le > prev_le, name .. "{" .. key .. "}: buckets out of order")
          assert(b.v >= prev_v, name .. "{" .. key .. "}: buckets not cumulative")
          prev_le, prev_v = b.le, b.v
        end
        assert(prev_le == math.huge, name .. ": no +Inf bucket")
        assert(set.count == prev_v, name .. ": +Inf bucket ~= _count")
        assert(set.sum, name .. ": no _sum")
      end
    end
  end
  return families
end

local function value(fams, name, labels)
  local f = assert(fams[name] or fams[name:gsub("_bucket$", ""):gsub("_count$", ""):gsub("_sum$", "")],
    "no metric " .. name)
  for _, s in ipairs(f.samples) do
    if s.name == name then
      local match = true
      for k, v in pairs(labels or {}) do
        if s.labels[k] ~= v then match = false end
      end
      if match then return s.value end
    end
  end
  return nil
end

describe("admin listener", function()
  local a, b, m, admin_port

  lazy_setup(function()
    a, b = helpers.start_origin(), helpers.start_origin()
    m = helpers.start_moxy({
      workers = 2,
      upstreams = { app = { servers = { a.addr, b.addr } } },
      shared = { sessions = "1m" },
      admin = { token = TOKEN },
      lua = { cpu_budget = "20ms" },
      scripts = { "spin.lua" },
    }, { files = { ["spin.lua"] = [[
return { on_request = function(txn)
  if txn.req.path == "/spin" then while true do end end
  if txn.req.path == "/fail" then error("boom") end
end }
]] } })
    admin_port = m.admin_port
    -- the admin listener is bound after the workers' listeners: wait for its log line
    assert(helpers.wait_until(function()
      return m:stderr():find("admin listener on 127.0.0.1:" .. admin_port, 1, true) or not m:alive()
    end, 10 * helpers.scale) and m:alive(), "no admin listener:\n" .. m:stderr())
  end)

  lazy_teardown(function() helpers.stop_all() end)

  local function get(path, headers)
    local res, err = helpers.request(admin_port, { path = path, headers = headers })
    return assert(res, tostring(err) .. "\n--- moxy's stderr ---\n" .. m:stderr())
  end

  local function post(path, token)
    return assert(helpers.request(admin_port, { method = "POST", path = path,
                                                headers = token and { Authorization = "Bearer " .. token } or nil }))
  end

  local function traffic(n, path)
    local conn = assert(helpers.connection(m.port))
    for _ = 1, n do assert(conn:request({ path = path or "/echo" })) end
    conn:close()
  end

  it("serves /metrics in Prometheus' text format, with counts that follow the traffic", function()
    local before = parse_prometheus(get("/metrics").body)
    traffic(20)
    traffic(3, "/status/503")
    local res = get("/metrics")
    assert.equal(200, res.status)
    assert.matches("^text/plain; version=0%.0%.4", res:header("content-type"))
    local after = parse_prometheus(res.body)
    for _, name in ipairs { "moxy_requests_total", "moxy_request_duration_seconds", "moxy_upstream_header_seconds",
                            "moxy_upstream_connect_seconds", "moxy_peer_up", "moxy_peer_tries_total",
                            "moxy_peer_ejections_total", "moxy_peer_health_transitions_total", "moxy_pool_retries_total",
                            "moxy_connections", "moxy_shared_dict_capacity_bytes", "moxy_lua_errors_total",
                            "moxy_generation", "moxy_reloads_total", "moxy_last_reload_success" } do
      assert.truthy(after[name], name)
      assert.truthy(after[name].help, name)
    end
    local d2xx = value(after, "moxy_requests_total", { class = "2xx" }) - value(before, "moxy_requests_total", { class = "2xx" })
    local d5xx = value(after, "moxy_requests_total", { class = "5xx" }) - value(before, "moxy_requests_total", { class = "5xx" })
    -- the /metrics requests themselves are not proxied requests
    assert.equal(20, d2xx)
    assert.equal(3, d5xx)
    assert.equal(3, value(after, "moxy_pool_requests_total", { pool = "app", class = "5xx" })
      - value(before, "moxy_pool_requests_total", { pool = "app", class = "5xx" }))
    local dcount = value(after, "moxy_request_duration_seconds_count") - value(before, "moxy_request_duration_seconds_count")
    assert.equal(23, dcount)
    local tries = value(after, "moxy_peer_tries_total", { pool = "app", peer = a.addr })
      + value(after, "moxy_peer_tries_total", { pool = "app", peer = b.addr })
    assert.is_true(tries >= 23)
    -- every origin connection made counts its connect time; reused ones do not
    local connects = value(after, "moxy_upstream_connect_seconds_count", { pool = "app" })
    assert.is_true(connects >= 2 and connects <= tries, "connects " .. tostring(connects))
    assert.equal(0, value(after, "moxy_peer_ejections_total", { pool = "app", peer = a.addr }))
    assert.equal(1, value(after, "moxy_generation"))
    assert.equal(1, value(after, "moxy_peer_up", { pool = "app", peer = a.addr }))
    assert.equal(1048576, value(after, "moxy_shared_dict_capacity_bytes", { dict = "sessions" }))
    assert.equal(2, value(after, "moxy_workers"))
  end)

  it("counts script errors and CPU-budget kills, and shows each worker's loop lag", function()
    local before = parse_prometheus(get("/metrics").body)
    assert.equal(500, assert(helpers.request(m.port, { path = "/spin" })).status)
    assert.equal(500, assert(helpers.request(m.port, { path = "/fail" })).status)
    local after = parse_prometheus(get("/metrics").body)
    assert.equal(1, value(after, "moxy_lua_budget_kills_total") - value(before, "moxy_lua_budget_kills_total"))
    assert.equal(2, value(after, "moxy_lua_errors_total") - value(before, "moxy_lua_errors_total"))
    for w = 0, 1 do
      local lag = value(after, "moxy_worker_loop_lag_seconds", { worker = tostring(w) })
      assert.is_true(lag ~= nil and lag >= 0 and lag < 5, "worker " .. w .. " lag " .. tostring(lag))
    end
  end)

  it("serves /status as JSON", function()
    traffic(2)
    local res = get("/status")
    assert.equal(200, res.status)
    assert.equal("application/json", res:header("content-type"))
    local st = assert(cjson.decode(res.body))
    assert.equal(m.pid, st.pid)
    assert.equal(2, st.workers)
    assert.is_true(st.requests >= 2)
    assert.is_true(st.uptime > 0)
    assert.equal(2, #st.pools.app.peers)
    assert.equal(a.addr, st.pools.app.peers[1].addr)
    assert.equal("up", st.pools.app.peers[1].state)
    assert.equal(1048576, st.shared.sessions.capacity)
  end)

  it("drains and enables a peer for every worker, with the token only", function()
    local path = "/peers/app/" .. a.addr .. "/drain"
    assert.equal(401, post(path).status)
    assert.equal(401, post(path, "wrong-token-0123456789").status)
    assert.equal(405, get(path).status)
    assert.equal(404, post("/peers/nope/" .. a.addr .. "/drain", TOKEN).status)
    assert.equal(404, post("/peers/app/127.0.0.1:1/drain", TOKEN).status)
    assert.equal(404, post("/peers/app/" .. a.addr .. "/explode", TOKEN).status)
    local res = post(path, TOKEN)
    assert.equal(200, res.status)
    local st = cjson.decode(get("/status").body)
    assert.equal("drained", st.pools.app.peers[1].state)
    a:reset_stats()
    b:reset_stats()
    traffic(10)
    assert.equal(0, #a:saw("^/echo"))
    assert.equal(10, #b:saw("^/echo"))
    assert.equal(200, post("/peers/app/" .. a.addr .. "/enable", TOKEN).status)
    traffic(10)
    assert.is_true(#a:saw("^/echo") >= 4)
    assert.matches("upstream app: peer " .. a.addr:gsub("%p", "%%%0") .. " drained", m:stderr())
  end)

  it("answers 404 elsewhere, and refuses changes without a configured token", function()
    assert.equal(404, get("/nope").status)
    local port, ap = helpers.free_port(), helpers.free_port()
    local m2 = helpers.start_moxy({
      listen = { "127.0.0.1:" .. port },
      upstreams = { app = { servers = { a.addr } } },
      admin = { listen = "127.0.0.1:" .. ap },
    }, { ports = { port, ap } })
    finally(function() m2:stop() end)
    assert(helpers.wait_until(function() return m2:stderr():find("admin listener on", 1, true) end,
      10 * helpers.scale), m2:stderr())
    local res = assert(helpers.request(ap, { method = "POST", path = "/peers/app/" .. a.addr .. "/drain",
                                            headers = { Authorization = "Bearer " .. TOKEN } }))
    assert.equal(403, res.status)
    assert.matches("admin.token is not set", res.body)
    assert.equal(200, assert(helpers.request(ap, { path = "/metrics" })).status)
  end)

  it("refuses a short token in the configuration", function()
    local code, out = helpers.run_moxy_check([[
return {
  listen = "127.0.0.1:1",
  upstreams = { app = { servers = { "127.0.0.1:2" } } },
  admin = { token = "short" },
}
]])
    assert.equal(1, code)
    assert.matches(":4: admin%.token: at least 16 characters", out)
  end)
end)
