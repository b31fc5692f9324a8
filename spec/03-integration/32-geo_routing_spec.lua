-- Geo routing end to end: a real moxy with the project's own City database
-- (geoip/mmdb-build), scripts/geo_routing.lua, three regional origins, and
-- clients reaching it through a trusted proxy's X-Forwarded-For and through
-- the PROXY protocol.  A region whose origin dies (health checks) sends its
-- clients to the next nearest region.
local helpers = require "spec.helpers"

local S = helpers.scale

-- the test database's networks (spec/support/geoip/city.json)
local GB, US, CN, ZA, JP6 = "81.2.69.142", "216.160.83.56", "175.16.199.1", "192.0.2.33", "2001:db8::1"

describe("geo routing through a real moxy", function()
  local origins, m, plain, pp

  lazy_setup(function()
    local dir = helpers.tmpdir("geo")
    local city = dir .. "/city.mmdb"
    local p = assert(io.popen("cd '" .. helpers.root .. "' && luajit geoip/mmdb-build spec/support/geoip/city.json '"
      .. city .. "' 2>&1"))
    local out = p:read("*a")
    assert(p:close(), "mmdb-build: " .. out)
    origins = { eu = helpers.start_origin(), us = helpers.start_origin(), ap = helpers.start_origin() }
    plain, pp = helpers.free_port(), helpers.free_port()
    local health = { path = "/status/200", interval = "200ms", timeout = "500ms", unhealthy = 1, healthy = 1 }
    m = helpers.start_moxy({
      workers = 2,
      listen = {
        { addr = "127.0.0.1:" .. plain, name = "plain" },
        { addr = "127.0.0.1:" .. pp, name = "lb", proxy_protocol = true },
      },
      upstreams = {
        eu = { servers = { origins.eu.addr }, health = health },
        us = { servers = { origins.us.addr }, health = health },
        ap = { servers = { origins.ap.addr }, health = health },
      },
      default_upstream = "us",
      geoip = { city = city },
      trusted_proxies = { "127.0.0.1" },
      scripts = { helpers.root .. "/scripts/geo_routing.lua" },
    }, { ports = { plain, pp } })
  end)

  lazy_teardown(function() helpers.stop_all() end)

  -- the origin's view of a request from `ip` (through X-Forwarded-For):
  -- which region's origin, and its X-Geo-Country / X-Geo-Region headers
  local function via_xff(ip)
    local doc = helpers.echo(helpers.request(plain, { path = "/echo", headers = { ["X-Forwarded-For"] = ip } }))
    return doc.port, helpers.echo_value(doc, "X-Geo-Country"), helpers.echo_value(doc, "X-Geo-Region")
  end

  local function region_of(port)
    for name, o in pairs(origins) do
      if o.port == port then return name end
    end
  end

  it("sends clients behind a trusted proxy to their region", function()
    for _, c in ipairs { { GB, "eu", "GB" }, { ZA, "eu", "ZA" }, { US, "us", "US" }, { CN, "ap", "CN" },
                         { JP6, "ap", "JP" }, { "10.1.1.1", "us", nil } } do
      local port, country, region = via_xff(c[1])
      assert.equal(c[2], region_of(port), c[1])
      assert.equal(c[3], country, c[1])
      assert.equal(c[2], region, c[1])
    end
  end)

  it("sends clients behind an L4 load balancer (PROXY protocol) to their region", function()
    for _, c in ipairs { { GB, "eu" }, { US, "us" }, { CN, "ap" } } do
      local conn = assert(helpers.connection(pp))
      assert(conn:send("PROXY TCP4 " .. c[1] .. " 127.0.0.1 40000 " .. pp .. "\r\n"))
      local doc = helpers.echo(conn:request({ path = "/echo" }))
      conn:close()
      assert.equal(c[2], region_of(doc.port), c[1])
      assert.equal(c[2], helpers.echo_value(doc, "X-Geo-Region"))
    end
  end)

  it("sends a region whose origin died to the next nearest region, and back when it returns", function()
    local port = origins.eu.port
    origins.eu:stop()
    assert.truthy(helpers.wait_until(function()
      return m:stderr():find("peer " .. origins.eu.addr .. " is unhealthy", 1, true)
    end, 3 * S))
    -- London's next nearest region is us (Virginia), not ap (Singapore)
    for _ = 1, 10 do
      local p, country, region = via_xff(GB)
      assert.equal("us", region_of(p))
      assert.equal("GB", country)
      assert.equal("us", region)
    end
    origins.eu = helpers.start_origin({ port = port })
    assert.truthy(helpers.wait_until(function()
      return m:stderr():find("peer " .. origins.eu.addr .. " is healthy again", 1, true)
    end, 3 * S))
    assert.equal("eu", region_of((via_xff(GB))))
  end)
end)
