-- scripts/geo_routing.lua: continents to their region's pool, the nearest
-- live region when a pool has no usable peer, failover across regions on
-- retries, X-Geo-Country / X-Geo-Region to the origin.  In-process with
-- moxy.test, on the project's own City test database (geoip/mmdb-build).
local helpers = require "spec.helpers"
local t = require "moxy.test"

local PATH = helpers.root .. "/scripts/geo_routing.lua"

-- the test database's networks (spec/support/geoip/city.json)
local GB, SE, US, CN, JP6, AU, BR, ZA = "81.2.69.142", "89.160.20.112", "216.160.83.56", "175.16.199.1",
  "2001:db8::1", "203.0.113.9", "198.51.100.7", "192.0.2.33"

describe("scripts/geo_routing.lua", function()
  local city

  setup(function()
    local dir = helpers.tmpdir("geo")
    city = dir .. "/city.mmdb"
    local cmd = "cd '" .. helpers.root .. "' && luajit geoip/mmdb-build spec/support/geoip/city.json '" .. city
      .. "' 2>&1"
    local p = assert(io.popen(cmd))
    local out = p:read("*a")
    assert(p:close(), "mmdb-build: " .. out)
  end)

  local function origin(name, calls)
    return t.upstream(function(req)
      if calls then calls[#calls + 1] = name end
      return 200, name
    end)
  end

  -- run the script (after `before` hooks, if any) for a client address
  local function run(ip, opts)
    opts = opts or {}
    local calls = {}
    local ups = { eu = origin("eu", calls), us = origin("us", calls), ap = origin("ap", calls) }
    for k, v in pairs(opts.upstreams or {}) do ups[k] = v end
    local scripts = { PATH }
    if opts.before then table.insert(scripts, 1, opts.before) end
    local txn = t.run(scripts, t.txn { path = "/", client_ip = ip, headers = opts.headers },
      { geoip = { city = city }, upstreams = ups, default_upstream = "us" })
    return txn, calls
  end

  it("sends each continent to its region and tells the origin the country and region", function()
    local cases = { { GB, "eu", "GB" }, { SE, "eu", "SE" }, { ZA, "eu", "ZA" }, { US, "us", "US" },
                    { BR, "us", "BR" }, { CN, "ap", "CN" }, { JP6, "ap", "JP" }, { AU, "ap", "AU" },
                    { "::ffff:" .. GB, "eu", "GB" } }
    for _, c in ipairs(cases) do
      local txn = run(c[1])
      assert.equal(200, txn.resp.status)
      assert.equal(c[2], txn.upstream.pool, c[1])
      assert.equal(c[3], txn.upstream.request.headers:get("X-Geo-Country"), c[1])
      assert.equal(c[2], txn.upstream.request.headers:get("X-Geo-Region"), c[1])
    end
  end)

  it("sends clients the database does not know to the default region, without a country header", function()
    local txn = run("10.9.8.7", { headers = { ["X-Geo-Country"] = "FR" } })
    assert.equal("us", txn.upstream.pool)
    assert.is_nil(txn.upstream.request.headers:get("X-Geo-Country")) -- a client's own claim is dropped
    assert.equal("us", txn.upstream.request.headers:get("X-Geo-Region"))
  end)

  -- a hook run before the script: drain the pools named in ctx
  local function drain(...)
    local pools = { ... }
    return {
      on_request = function()
        for _, pool in ipairs(pools) do
          for _, p in ipairs(moxy.upstream.peers(pool)) do moxy.upstream.drain(pool, p.addr) end
        end
      end,
    }
  end

  it("sends a region whose pool has no usable peer to the nearest live region", function()
    -- London: us (Virginia, ~5,900 km) is nearer than ap (Singapore, ~10,900 km)
    local txn = run(GB, { before = drain("eu") })
    assert.equal("us", txn.upstream.pool)
    assert.equal("us", txn.upstream.request.headers:get("X-Geo-Region"))
    -- Sydney without ap: us (~15,700 km) beats eu (~16,500 km)
    txn = run(AU, { before = drain("ap") })
    assert.equal("us", txn.upstream.pool)
    -- Changchun without ap: eu (~7,800 km) beats us (~10,900 km)
    txn = run(CN, { before = drain("ap") })
    assert.equal("eu", txn.upstream.pool)
    -- nothing live at all: the request keeps default_upstream (and fails there as moxy would)
    txn = run(CN, { before = drain("ap", "eu", "us") })
    assert.equal("us", txn.upstream.pool)
  end)

  it("fails over to the next nearest region when its region's origin fails", function()
    local calls = {}
    local txn, seen = run(GB, {
      upstreams = { eu = t.upstream(function()
        calls[#calls + 1] = "eu"
        return nil, "connection refused"
      end) },
    })
    assert.same({ "eu" }, calls)
    assert.same({ "us" }, seen)
    assert.equal(200, txn.resp.status)
    assert.equal("us", txn.upstream.pool)
    assert.equal("us", txn.resp.body)
    assert.equal("us", txn.upstream.request.headers:get("X-Geo-Region"))
  end)

  it("checks its CONFIG when it loads", function()
    local bad = helpers.tmpdir("geo") .. "/geo_routing.lua"
    helpers.write_file(bad, helpers.script_with_config(PATH, [[{ regions = { eu = { lat = "north" } } }]]))
    local ok, err = pcall(t.load, bad)
    assert.is_false(ok)
    assert.matches("region eu needs numeric lat and lon", err)
  end)
end)
