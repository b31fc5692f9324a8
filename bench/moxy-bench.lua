-- bench/moxy-bench.lua -- moxy's configuration for bench/run.sh.
--
--   LISTEN_PORT=18081 ORIGIN_PORT=18080 ./moxy -c bench/moxy-bench.lua
--
-- Mirrors bench/nginx-proxy.conf: one worker, keep-alive to the origin pool,
-- no access log; the per-request work is the hook in bench-hook.lua (set one
-- request header, pick the pool), like the quickstart script.
-- The ports come from the environment, set by bench/run.sh.

local function env(name, default)
  local v = os.getenv(name)
  if v == nil or v == "" then
    if default ~= nil then return default end
    error("moxy-bench.lua: environment variable " .. name
          .. " is not set (start moxy through bench/run.sh)", 2)
  end
  return v
end

local function port(name)
  local p = env(name)
  if not p:match("^%d+$") then
    error("moxy-bench.lua: " .. name .. " is not a port number: " .. p, 2)
  end
  return p
end

local listen_port = port("LISTEN_PORT")
local origin_port = port("ORIGIN_PORT")

-- The hook, by MOXY_BENCH_VARIANT (bench/run.sh sets it per peer; HOOKS=1):
--   "" or "moxy"  bench-hook.lua, guarded (interpreter + lua.cpu_budget), as
--                 users get it; MOXY_HOOK_JIT=1 lets the JIT compile it instead
--   "jit"         bench-hook.lua with { jit = true } (no CPU budget on it)
--   "noop"        bench-noop-hook.lua: on_request = function(txn) end (guarded)
--   "reads"       bench-reads-hook.lua: five txn reads, two header sets, the
--                 pick (guarded)
--   "nohook"      no scripts at all: moxy's bare proxy path
--   "geo"         bench-geo-hook.lua: scripts/geo_routing.lua's work (regions,
--                 txn.client.geo, X-Geo-Country) on MOXY_BENCH_GEOIP, a City
--                 database that knows 127.0.0.1 (bench/geo.sh builds one)
-- Paths are relative to this file.
local variant = env("MOXY_BENCH_VARIANT", "moxy")
local scripts
if variant == "moxy" then
  scripts = { { path = "bench-hook.lua", jit = os.getenv("MOXY_HOOK_JIT") == "1" } }
elseif variant == "jit" then
  scripts = { { path = "bench-hook.lua", jit = true } }
elseif variant == "noop" then
  scripts = { { path = "bench-noop-hook.lua", jit = false } }
elseif variant == "reads" then
  scripts = { { path = "bench-reads-hook.lua", jit = false } }
elseif variant == "nohook" then
  scripts = {}
elseif variant == "geo" then
  scripts = { { path = "bench-geo-hook.lua", jit = os.getenv("MOXY_HOOK_JIT") == "1" } }
else
  error("moxy-bench.lua: MOXY_BENCH_VARIANT must be moxy, jit, noop, reads, nohook or geo, not "
        .. variant, 0)
end

return {
  workers = tonumber(env("MOXY_WORKERS", "1")),
  -- MOXY_BENCH_TLS_CERT / _KEY (bench/tls.sh): the listener terminates TLS
  listen = { os.getenv("MOXY_BENCH_TLS_CERT")
             and { addr = "127.0.0.1:" .. listen_port,
                   tls = { certificates = { { cert = os.getenv("MOXY_BENCH_TLS_CERT"),
                                              key = env("MOXY_BENCH_TLS_KEY") } } } }
             or "127.0.0.1:" .. listen_port },
  upstreams = {
    origin = {
      servers = { "127.0.0.1:" .. origin_port },
      keepalive = 1024,
      keepalive_timeout = "300s",
    },
  },
  default_upstream = "origin",
  scripts = scripts,
  geoip = variant == "geo" and { city = env("MOXY_BENCH_GEOIP") } or nil,
  timeouts = { keepalive = "300s" },       -- never close a client mid-run
  limits = { connections = 20000,          -- room for IDLE_CONNS=10000,
              connections_per_client = 0 }, -- all from the load generator's one address
  log = { access = false, error = "stderr", level = "warn" },
}
