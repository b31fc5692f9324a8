-- geo_routing.lua: send each client to the pool of its region, fail over to
-- the nearest region that has a live peer, and tell the origin where the
-- client is.
--
-- Needs a GeoIP database in the configuration (a City one for locations, or
-- a Country one for countries and continents only):
--   geoip = { city = "/var/lib/GeoIP/GeoLite2-City.mmdb" },
-- and, behind a load balancer or CDN, `trusted_proxies` so that
-- txn.client.ip is the real client.
--
-- How a request is placed (lua/moxy/geo.lua, regions:nearest):
--   1. the region that lists the client's country, then its continent, when
--      that region's pool has a usable peer (up, not drained, not ejected,
--      under max_conns);
--   2. else the nearest region with a usable peer, by great-circle distance
--      from the client's location (or from the listed region when the
--      client has no location);
--   3. else `default`, else the first live region; when no region is live
--      the request keeps the listener's pool / default_upstream.
-- On a retry (the try failed; on_upstream runs again) the request stays in
-- its region while the region's pool has usable peers it has not tried,
-- then moves to the next nearest live region.
--
-- Configure: edit the CONFIG block below.
--   regions         name = { lat, lon, pool, continents = {...}, countries = {...} }
--                   (pool defaults to the region's name)
--   default         region for clients the databases know nothing about
--   country_header  request header telling the origin the client's country
--                   (ISO code; removed when unknown); nil: none
--   region_header   request header telling the origin the region chosen; nil: none

-- CONFIG BEGIN
local CONFIG = {
  regions = {
    eu = { lat = 50.11, lon = 8.68, pool = "eu", continents = { "EU", "AF" } },
    us = { lat = 39.04, lon = -77.49, pool = "us", continents = { "NA", "SA" } },
    ap = { lat = 1.35, lon = 103.82, pool = "ap", continents = { "AS", "OC" } },
  },
  default = "us",
  country_header = "X-Geo-Country",
  region_header = "X-Geo-Region",
}
-- CONFIG END

local regions = moxy.geo.regions(CONFIG.regions, { default = CONFIG.default })
local COUNTRY, REGION = CONFIG.country_header, CONFIG.region_header
local usable = moxy.upstream.usable

return {
  on_upstream = function(txn)
    local ctx = txn.ctx
    local here = ctx.geo_region and regions:get(ctx.geo_region)
    if here then -- a retry: stay while the region has peers left to try
      ctx.geo_tries = ctx.geo_tries + 1
      if (usable(here.pool) or 0) >= ctx.geo_tries then
        txn.upstream:pick(here.pool)
        return
      end
      ctx.geo_tried[here.name] = true
    else
      ctx.geo_tried = {}
    end
    ctx.geo_region = regions:pick(txn, ctx.geo_tried)
    ctx.geo_tries = 1
  end,

  on_upstream_request = function(txn)
    local h = txn.req.headers
    if COUNTRY then
      local c = txn.client.geo.country
      if c then h:set(COUNTRY, c) else h:remove(COUNTRY) end
    end
    if REGION then
      if txn.ctx.geo_region then h:set(REGION, txn.ctx.geo_region) else h:remove(REGION) end
    end
  end,
}
