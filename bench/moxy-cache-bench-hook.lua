-- The per-request work of bench/moxy-cache-bench.lua: the X-Edge-Proxy
-- header every peer adds, and storing what the origin sends for an hour.
return {
  on_request = function(txn) txn.req.headers:set("X-Edge-Proxy", "moxy") end,
  on_response = function(txn) txn.cache:store { ttl = 3600 } end,
}
