-- bench/bench-geo-hook.lua -- scripts/geo_routing.lua's per-request work for
-- the "geo" variant of bench/moxy-bench.lua: the client's region by
-- continent (nearest live one as fallback, which asks the pool's state),
-- its pool picked, X-Geo-Country and X-Geo-Region set for the origin.  All
-- regions use the bench's one pool, "origin".
local regions = moxy.geo.regions({
  eu = { lat = 50.11, lon = 8.68, pool = "origin", continents = { "EU", "AF" } },
  us = { lat = 39.04, lon = -77.49, pool = "origin", continents = { "NA", "SA" } },
  ap = { lat = 1.35, lon = 103.82, pool = "origin", continents = { "AS", "OC" } },
}, { default = "us" })

return {
  on_upstream = function(txn)
    txn.ctx.region = regions:pick(txn)
  end,
  on_upstream_request = function(txn)
    local h = txn.req.headers
    local c = txn.client.geo.country
    if c then h:set("X-Geo-Country", c) end
    h:set("X-Geo-Region", txn.ctx.region or "none")
  end,
}
