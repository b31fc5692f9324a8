-- bench/geo-lookup.lua -- the cost of GeoIP lookups, measured in moxy's own
-- init hook (moxy -t runs it; no server is started):
--
--   GEOIP_DB=/path/City.mmdb ./moxy -t -c bench/geo-lookup.lua     (or bench/geo.sh)
--
-- bench/geo-lookup-hook.lua prints, for a mix of addresses the database
-- holds (IPv4 and IPv6) and addresses it does not (GEOIP_IPS), the median
-- over ROUNDS rounds of N calls each of: moxy.geo.get(ip, "country") -- one
-- lookup and one field, what the first read of txn.client.geo.<field>
-- costs in a request (later reads reuse the request's lookup);
-- moxy.geo.get(ip, "city") after it; and moxy.geo.lookup(ip) (the whole
-- record as a table).
local db = os.getenv("GEOIP_DB")
if not db or db == "" then error("bench/geo-lookup.lua: set GEOIP_DB to a City .mmdb (bench/geo.sh does)", 0) end

return {
  listen = "127.0.0.1:1",
  upstreams = { app = { servers = { "127.0.0.1:2" } } },
  geoip = { city = db },
  lua = { cpu_budget = 0 },
  scripts = { "geo-lookup-hook.lua" },
  log = { error = "stderr", level = "warn" },
}
