-- bench/moxy-cache-bench.lua -- moxy with its HTTP cache, for the shared peer
-- harness's cache comparison (against its caching Varnish peer):
--
--   EXTRA_PROXY_NAME=moxy-cache EXTRA_PROXY_CMD='./moxy -c bench/moxy-cache-bench.lua' \
--     PEERS="varnish" REF_PEER=varnish ../shared/bench/run-peers.sh
--   (bench/cache.sh does that)
--
-- One worker like the other peers (PROXY_WORKERS), the origin's /small and
-- /large stored for an hour whatever their headers say (Varnish's default is
-- to store everything for 120 s), X-Edge-Proxy set as every peer does.
local function env(name)
  local v = os.getenv(name)
  if not v or v == "" then error("moxy-cache-bench.lua: " .. name .. " is not set (run through bench/cache.sh)", 2) end
  return v
end

return {
  workers = tonumber(os.getenv("PROXY_WORKERS") or "1"),
  listen = { "127.0.0.1:" .. env("LISTEN_PORT") },
  upstreams = { origin = { servers = { env("ORIGIN_ADDR") }, keepalive = 64 } },
  cache = { size = "256m", max_object = "16m" },
  limits = { connections_per_client = 0 }, -- 1000 connections from the load generator's one address
  pid_file = false,
  log = { access = false, error = "stderr", level = "warn" },
  scripts = { "moxy-cache-bench-hook.lua" },
}
