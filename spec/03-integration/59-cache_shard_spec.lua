-- cache.shard: three moxy nodes whose caches are one.  Each key has an owner
-- among the nodes (the Maglev choice of the pool of nodes); a miss on any
-- node goes to the owner, which fills it from the origin once for the fleet.
-- A counting origin (origin.py) says how often each key reached it.
local helpers = require "spec.helpers"
local socket = require "socket"

local S = helpers.scale
local q, path = helpers.query_escape, helpers.origin_path

-- every node's hooks: a local health answer, and on_response marking the
-- answer with the node that ran it (the owner runs no hook for a peer's fill)
local HOOKS = [[
local NAME = "NODE"
return {
  on_request = function(txn)
    if txn.req.path == "/moxy-health" then return txn:respond(200, "ok\n") end
  end,
  on_upstream = function(txn)
    if txn.req.headers:get("X-Set-Peer") then txn.upstream:set_peer("127.0.0.1", ORIGIN_PORT) end
  end,
  on_response = function(txn)
    txn.resp.headers:add("X-Node", NAME)
  end,
}
]]

-- n nodes' configurations: ports, one origin pool, the pool of nodes.
-- opts.secret, opts.health ({interval...}), opts.drain[i] = j: node i's
-- pool has node j drained (the nodes disagree about owners);
-- opts.origin_pool[i]: node i's origin pool's name (default "app")
local function fleet(origin, n, opts)
  opts = opts or {}
  local ports, addrs = {}, {}
  for i = 1, n do
    ports[i] = helpers.free_port()
    addrs[i] = "127.0.0.1:" .. ports[i]
  end
  local nodes = {}
  for i = 1, n do
    local servers = {}
    for j = 1, n do
      servers[j] = { addr = addrs[j], drain = (opts.drain and opts.drain[i] == j) or nil }
    end
    local op = opts.origin_pool and opts.origin_pool[i] or "app"
    nodes[i] = helpers.start_moxy({
      workers = 2,
      listen = { addrs[i] },
      upstreams = {
        [op] = { servers = { origin.addr } },
        moxies = { servers = servers,
                   health = opts.health or { path = "/moxy-health", interval = "200ms", timeout = "500ms",
                                             unhealthy = 1, healthy = 1 } },
      },
      default_upstream = op,
      cache = { size = "8m", shard = { pool = "moxies", self = addrs[i], secret = opts.secret } },
      timeouts = opts.timeouts,
      admin = {},
      scripts = { "hooks.lua" },
    }, { files = { ["hooks.lua"] = HOOKS:gsub("NODE", "node" .. i):gsub("ORIGIN_PORT", tostring(origin.port)) } })
  end
  -- a node's first checks may have found the others not started yet: wait
  -- until every node sees every node up (but those it drains)
  local agreed = helpers.wait_until(function()
    for i = 1, n do
      for j = 1, n do
        local up = helpers.metric(nodes[i].admin_port, "moxy_peer_up", { pool = "moxies", peer = addrs[j] })
        if up ~= ((opts.drain and opts.drain[i] == j) and 0 or 1) then return nil end
      end
    end
    return true
  end, (opts.health and 5 or 3) * S, 0.05)
  assert(agreed, "the nodes do not see each other up")
  return nodes, addrs
end

local function get(m, p, headers)
  return assert(helpers.request(m.port, { path = p, headers = headers }))
end

local function origin_saw(origin, p)
  local pat = "^" .. p:gsub("[%^%$%(%)%%%.%[%]%*%+%-%?]", "%%%0") .. "$"
  return #origin:saw(pat)
end

local function metric(m, name)
  return helpers.metric(m.admin_port, name) or 0
end

local function sum(nodes, name)
  local t = 0
  for _, m in ipairs(nodes) do t = t + metric(m, name) end
  return t
end

describe("cache.shard configuration", function()
  lazy_teardown(function() helpers.stop_all() end)

  local function check(shard, extra)
    return helpers.run_moxy_check(([[
return {
  listen = { "127.0.0.1:18080" },
  upstreams = { app = { servers = { "127.0.0.1:9001" } },
                moxies = { servers = { "127.0.0.1:18080", "127.0.0.1:18081" }%s } },
  default_upstream = "app",
  cache = { size = "8m", shard = %s },
}
]]):format(extra or "", shard))
  end

  it("accepts a pool of nodes and this node's place in it, and names the key of each mistake", function()
    local code, out = check('{ pool = "moxies", self = "127.0.0.1:18080" }')
    assert.equal(0, code, out)
    code, out = check('{ pool = "moxies", self = "127.0.0.1:18080", secret = "0123456789abcdef" }', ', balance = "hash"')
    assert.equal(0, code, out)
    local cases = {
      { '{ pool = "nodes", self = "127.0.0.1:18080" }', nil, 'cache.shard.pool: no pool named "nodes" in upstreams' },
      { '{ pool = "moxies", self = "127.0.0.1:9999" }', nil, 'cache.shard.self: not a server of pool "moxies"' },
      { '{ pool = "moxies" }', nil, "cache.shard: self is required" },
      { '{ pool = "moxies", self = "127.0.0.1:18080" }', ', balance = "round_robin"',
        'cache.shard.pool: pool "moxies" must balance by "hash"' },
      { '{ pool = "moxies", self = "127.0.0.1:18080", secret = "short" }', nil,
        "cache.shard.secret: at least 16 visible ASCII characters" },
      { '{ pool = "moxies", self = "127.0.0.1:18080", owner = true }', nil, "cache.shard.owner: unknown key" },
    }
    for _, c in ipairs(cases) do
      local code2, out2, path2 = check(c[1], c[2])
      assert.equal(1, code2, out2)
      assert.truthy(out2:find(path2 .. ":", 1, true), out2)
      assert.truthy(out2:find(c[3], 1, true), out2)
    end
  end)
end)

describe("cache.shard", function()
  local origin
  local n = 0

  -- a path no other case uses, stored for a minute
  local function fresh(base, headers)
    n = n + 1
    local hs = { "Cache-Control:max-age=60", "X-Origin:yes", "X-Case:" .. n }
    for _, h in ipairs(headers or {}) do hs[#hs + 1] = h end
    return path(base or "/bytes/1000", hs)
  end

  lazy_setup(function()
    origin = helpers.start_origin()
  end)

  lazy_teardown(function() helpers.stop_all() end)

  describe("three healthy nodes", function()
    local nodes

    lazy_setup(function()
      nodes = fleet(origin, 3)
    end)

    lazy_teardown(function()
      for _, m in ipairs(nodes) do m:stop() end
    end)

    it("fills each key once for the fleet: N keys on all three nodes, one origin request each", function()
      local N = 30
      local paths = {}
      for k = 1, N do paths[k] = fresh() end
      local answers = {}
      for k = 1, N do
        for i = 1, 3 do
          local res = get(nodes[i], paths[k])
          assert.equal(200, res.status)
          assert.equal(1000, #res.body)
          assert.is_true(helpers.pattern_ok(0, res.body))
          assert.equal("yes", res:header("x-origin"))
          -- the node the client asked ran its on_response hook, once; the owner none
          assert.same({ "node" .. i }, res.headers["x-node"])
          answers[#answers + 1] = res
        end
      end
      for k = 1, N do assert.equal(1, origin_saw(origin, paths[k]), paths[k]) end
      -- every node owns some keys: the fleet spreads them
      local owners = { 0, 0, 0 }
      for _, res in ipairs(answers) do
        local cs = table.concat(res.headers["cache-status"], ", ")
        assert.truthy(cs:find("moxy; ", 1, true))
      end
      for i = 1, 3 do owners[i] = metric(nodes[i], "moxy_cache_shard_fills_total") end
      local forwarded = sum(nodes, "moxy_cache_shard_forwarded_total")
      -- each of the 3N requests went to another node but for those on the key's owner
      assert.equal(2 * N, forwarded)
      assert.equal(2 * N, owners[1] + owners[2] + owners[3])
      for i = 1, 3 do assert.is_true(owners[i] > 0, "node" .. i .. " owns no key of " .. N) end
      assert.equal(0, sum(nodes, "moxy_cache_shard_fallbacks_total"))
      -- /status says the same
      for i = 1, 3 do
        local st = helpers.json(assert(helpers.request(nodes[i].admin_port, { path = "/status" })).body)
        assert.equal(owners[i], st.cache.shard.fills)
        assert.equal(metric(nodes[i], "moxy_cache_shard_forwarded_total"), st.cache.shard.forwarded)
        assert.equal(0, st.cache.shard.fallbacks)
      end
      print(("\n    %d keys x 3 nodes: %d origin requests; fills served per node %d / %d / %d"):format(
        N, N, owners[1], owners[2], owners[3]))
    end)

    it("says who answered in Cache-Status and the access log", function()
      -- find a key node1 does not own: its answer carries the owner's entry, then node1's
      local p, res
      for _ = 1, 20 do
        p = fresh()
        res = get(nodes[1], p)
        local cs = table.concat(res.headers["cache-status"], ", ")
        if cs:find("detail=shard-owner", 1, true) then break end
        res = nil
      end
      assert.truthy(res, "no key of 20 was owned by another node")
      assert.matches("^moxy; fwd=uri%-miss; stored; ttl=%d+, moxy; fwd=uri%-miss; detail=shard%-owner$",
                     table.concat(res.headers["cache-status"], ", "))
      -- again: a hit at the owner, still a miss here (node1 keeps no copy)
      local again = get(nodes[1], p)
      assert.matches("^moxy; hit; ttl=%d+, moxy; fwd=uri%-miss; detail=shard%-owner$",
                     table.concat(again.headers["cache-status"], ", "))
      assert.truthy(tonumber(again:header("age")))
      assert.equal(1, origin_saw(origin, p))
      local esc = p:gsub("[%^%$%(%)%%%.%[%]%*%+%-%?]", "%%%0")
      assert.truthy(nodes[1]:wait_log(" shard=owner"))
      local line = helpers.wait_until(function()
        for _, l in ipairs(nodes[1]:access_lines()) do
          if l:find(esc, 1) and l:find("shard=owner", 1, true) then return l end
        end
      end, 3 * S, 0.05)
      assert.truthy(line)
      local filled = helpers.wait_until(function()
        for i = 2, 3 do
          for _, l in ipairs(nodes[i]:access_lines()) do
            if l:find(esc, 1) and l:find("shard=fill", 1, true) then return l end
          end
        end
      end, 3 * S, 0.05)
      assert.truthy(filled)
    end)

    it("leaves a request a hook sends elsewhere (set_peer) to the node asked, which stores it", function()
      for _ = 1, 6 do
        local p = fresh()
        local first = get(nodes[1], p, { ["X-Set-Peer"] = "1" })
        assert.equal(200, first.status)
        assert.matches("^moxy; fwd=uri%-miss; stored; ttl=%d+$", table.concat(first.headers["cache-status"], ", "))
        local again = get(nodes[1], p, { ["X-Set-Peer"] = "1" })
        assert.matches("^moxy; hit; ttl=%d+$", table.concat(again.headers["cache-status"], ", "))
        assert.equal(1, origin_saw(origin, p))
      end
    end)

    it("makes concurrent first requests on all three nodes one origin fetch", function()
      local p = fresh("/slow-headers/0.5")
      local conns = {}
      for k = 1, 15 do
        local m = nodes[(k - 1) % 3 + 1]
        conns[k] = assert(helpers.connection(m.port))
        assert(conns[k]:send(helpers.build_request({ path = p })))
      end
      local t0 = helpers.now()
      for k = 1, 15 do
        local res = assert(conns[k]:read_response())
        conns[k]:close()
        assert.equal(200, res.status)
        assert.equal("slow\n", res.body)
      end
      local took = helpers.now() - t0
      assert.equal(1, origin_saw(origin, p))
      print(("\n    15 concurrent first requests over 3 nodes, origin 0.5 s: 1 origin request, %.2f s"):format(took))
      assert.is_true(took < 3 * S, "took " .. took)
    end)

    it("ignores the fill marks of a client that is not a peer", function()
      -- from 127.0.0.9, which no node of the pool has: the marks go, the request is a client's
      local function from_9(p, headers)
        local sock = socket.tcp()
        sock:settimeout(3 * S)
        assert(sock:bind("127.0.0.9", 0))
        assert(sock:connect("127.0.0.1", nodes[1].port))
        local c = setmetatable({ sock = sock, buf = "", eof = false, port = nodes[1].port, timeout = 5 * S },
                               helpers.Conn)
        local res = assert(c:request({ path = p, headers = headers }))
        c:close()
        return res
      end
      local forged = { { "Moxy-Shard", "127.0.0.9:1" }, { "Moxy-Shard-Key", "http://evil.example/x" },
                       { "Moxy-Shard-Pool", "moxies" } }
      -- a key another node owns
      local p, res
      for _ = 1, 20 do
        p = fresh()
        res = from_9(p, forged)
        if table.concat(res.headers["cache-status"], ", "):find("detail=shard-owner", 1, true) then break end
        res = nil
      end
      assert.truthy(res, "no key of 20 was owned by another node")
      assert.equal(200, res.status)
      assert.same({ "node1" }, res.headers["x-node"]) -- node1 ran its hooks: a client's request
      -- the owner filled it for node1, and logged the client node1 saw
      local esc = p:gsub("[%^%$%(%)%%%.%[%]%*%+%-%?]", "%%%0")
      local filled = helpers.wait_until(function()
        for i = 2, 3 do
          for _, l in ipairs(nodes[i]:access_lines()) do
            if l:find(esc, 1) and l:find("shard=fill", 1, true) then return l end
          end
        end
      end, 3 * S, 0.05)
      assert.truthy(filled)
      assert.matches("^127%.0%.0%.9 ", filled)
      -- stored under the path's own key: the other nodes find it
      for i = 2, 3 do assert.equal(200, get(nodes[i], p).status) end
      assert.equal(1, origin_saw(origin, p))
      -- the origin never sees a mark
      for _, e in ipairs(origin:saw("X%-Case")) do
        for _, h in ipairs(e.headers) do assert.is_nil(h[1]:lower():find("^moxy%-shard")) end
      end
    end)
  end)

  describe("with a secret", function()
    local nodes

    lazy_setup(function()
      nodes = fleet(origin, 3, { secret = "a-long-fleet-secret-123" })
    end)

    lazy_teardown(function()
      for _, m in ipairs(nodes) do m:stop() end
    end)

    it("fills once, and a peer address without the secret is a client", function()
      local paths = {}
      for k = 1, 10 do paths[k] = fresh() end
      for k = 1, 10 do
        for i = 1, 3 do assert.equal(200, get(nodes[i], paths[k]).status) end
      end
      for k = 1, 10 do assert.equal(1, origin_saw(origin, paths[k])) end
      -- 127.0.0.1 is every node's address: only the secret tells a peer
      local p = fresh()
      local before = sum(nodes, "moxy_cache_shard_fills_total")
      local res = get(nodes[2], p, { { "Moxy-Shard", "127.0.0.1:1" }, { "Moxy-Shard-Key", "http://evil.example/y" },
                                     { "Moxy-Shard-Pool", "app" }, { "Moxy-Shard-Secret", "wrong-secret-wrong-secret" } })
      assert.equal(200, res.status)
      assert.same({ "node2" }, res.headers["x-node"])
      -- not taken for a fill, nor sent on (a peer whose secret differs could send it back):
      -- node2 filled it itself and says why
      assert.equal(before, sum(nodes, "moxy_cache_shard_fills_total"))
      assert.equal(1, origin_saw(origin, p))
      assert.truthy(nodes[2]:wait_error_log("(a peer's address) not believed: a wrong or missing secret", 3 * S))
      -- the others find it at its owner (node2, or another that fetches it once more)
      for i = 1, 3 do assert.equal(200, get(nodes[i], p).status) end
      assert.is_true(origin_saw(origin, p) <= 2)
    end)
  end)

  describe("a node stopped", function()
    local nodes

    lazy_setup(function()
      -- checks every 2 s: right after the kill, nodes still think it is up
      nodes = fleet(origin, 3, { health = { path = "/moxy-health", interval = "2s", timeout = "500ms",
                                            unhealthy = 1, healthy = 1 } })
    end)

    lazy_teardown(function()
      for _, m in ipairs(nodes) do m:stop() end
    end)

    it("serves its keys: the others go to the origin at once, then the ring moves; no 5xx", function()
      local N = 24
      local paths = {}
      for k = 1, N do paths[k] = fresh() end
      for k = 1, N do assert.equal(200, get(nodes[1], paths[k]).status) end
      local owned3 = metric(nodes[3], "moxy_cache_shard_fills_total")
      assert.is_true(owned3 > 0, "node3 owns none of " .. N .. " keys")
      nodes[3]:stop("KILL")
      -- at once: node3's keys fall back to the origin from nodes 1 and 2
      for k = 1, N do
        for i = 1, 2 do
          local res = get(nodes[i], paths[k])
          assert.equal(200, res.status)
          assert.equal(1000, #res.body)
        end
      end
      local fallbacks = sum({ nodes[1], nodes[2] }, "moxy_cache_shard_fallbacks_total")
      assert.is_true(fallbacks > 0)
      -- once the checks (or passive health) took node3 out, its keys have new owners
      helpers.sleep(2.5 * S)
      local paths2 = {}
      for k = 1, N do paths2[k] = fresh() end
      local f0 = sum({ nodes[1], nodes[2] }, "moxy_cache_shard_fallbacks_total")
      for k = 1, N do
        for i = 1, 2 do assert.equal(200, get(nodes[i], paths2[k]).status) end
      end
      assert.equal(f0, sum({ nodes[1], nodes[2] }, "moxy_cache_shard_fallbacks_total"))
      for k = 1, N do assert.equal(1, origin_saw(origin, paths2[k])) end
      print(("\n    node3 (owner of %d of %d keys) killed: %d fallbacks to the origin, then new owners, 0 5xx"):format(
        owned3, N, fallbacks))
      assert.truthy(nodes[1]:wait_error_log("cache.shard: ", 3 * S))
    end)
  end)

  describe("a node that hangs", function()
    local nodes

    lazy_setup(function()
      nodes = fleet(origin, 2, { timeouts = { upstream = "1s" },
                                 health = { path = "/moxy-health", interval = "5s", timeout = "500ms",
                                            unhealthy = 1, healthy = 1 } })
    end)

    lazy_teardown(function()
      nodes[2]:signal("CONT")
      for _, m in ipairs(nodes) do m:stop() end
    end)

    it("costs its fills timeouts.upstream, then the origin answers them", function()
      -- a key node2 owns, filled there
      local p
      for _ = 1, 20 do
        local c = fresh()
        local res = get(nodes[1], c)
        if table.concat(res.headers["cache-status"], ", "):find("detail=shard-owner", 1, true) then
          p = c
          break
        end
      end
      assert.truthy(p, "node2 owned no key of 20")
      nodes[2]:signal("STOP")
      local t0 = helpers.now()
      local res = get(nodes[1], p)
      local took = helpers.now() - t0
      assert.equal(200, res.status)
      assert.equal(1000, #res.body)
      assert.matches("detail=shard%-fallback", table.concat(res.headers["cache-status"], ", "))
      assert.equal(2, origin_saw(origin, p))
      assert.is_true(took >= 0.9 and took < 2.5 * S, "took " .. took)
      print(("\n    owner stopped (SIGSTOP), timeouts.upstream 1 s: answered from the origin in %.2f s"):format(took))
    end)
  end)

  describe("a node whose origin pool has another name", function()
    local nodes

    lazy_setup(function()
      -- node2's origin pool is "site": fills naming "app" get a 421 there
      nodes = fleet(origin, 2, { origin_pool = { "app", "site" } })
    end)

    lazy_teardown(function()
      for _, m in ipairs(nodes) do m:stop() end
    end)

    it("answers a fill naming a pool it lacks with 421, and the sender goes to the origin itself", function()
      local p, res
      for _ = 1, 20 do
        p = fresh()
        res = get(nodes[1], p)
        if metric(nodes[1], "moxy_cache_shard_fallbacks_total") > 0 then break end
      end
      assert.is_true(metric(nodes[1], "moxy_cache_shard_fallbacks_total") > 0, "node2 owned no key of 20")
      assert.equal(200, res.status)
      assert.equal(1000, #res.body)
      assert.matches("detail=shard%-fallback", table.concat(res.headers["cache-status"], ", "))
      assert.equal(1, origin_saw(origin, p))
      assert.truthy(nodes[2]:wait_error_log('names pool "app", which is not an origin pool here', 3 * S))
      assert.truthy(nodes[1]:wait_error_log("its owner refused the fill (421)", 3 * S))
    end)
  end)

  describe("nodes that disagree about owners", function()
    local nodes

    lazy_setup(function()
      -- node1 has node3 drained, nodes 2 and 3 do not
      nodes = fleet(origin, 3, { drain = { [1] = 3 } })
    end)

    lazy_teardown(function()
      for _, m in ipairs(nodes) do m:stop() end
    end)

    it("never sends a fill on: at most one extra fetch, no loop", function()
      local N = 30
      local paths = {}
      for k = 1, N do paths[k] = fresh() end
      local t0 = helpers.now()
      for k = 1, N do
        for i = 1, 3 do
          local res = get(nodes[i], paths[k])
          assert.equal(200, res.status)
          assert.equal(1000, #res.body)
        end
      end
      local took = helpers.now() - t0
      local total = 0
      for k = 1, N do
        local c = origin_saw(origin, paths[k])
        assert.is_true(c == 1 or c == 2, paths[k] .. ": " .. c)
        total = total + c
      end
      -- a fill is forwarded by its sender only: the fills served equal the misses forwarded
      assert.equal(sum(nodes, "moxy_cache_shard_forwarded_total"), sum(nodes, "moxy_cache_shard_fills_total"))
      print(("\n    node1 disagreeing about node3's keys: %d origin requests for %d keys x 3 nodes in %.2f s"):format(
        total, N, took))
      assert.is_true(took < 10 * S)
    end)
  end)
end)
