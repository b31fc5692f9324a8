-- bench/moxy-compress-bench.lua -- moxy's configuration for bench/compress.sh.
--
--   LISTEN_PORT=18081 ORIGIN_PORT=18080 GZIP_LEVEL=6 ./moxy -c bench/moxy-compress-bench.lua
--
-- Mirrors bench/nginx-compress.conf: one worker, keep-alive to the origin
-- pool, no access log, and response compression with the levels of the
-- environment (compress.sh sets them per case):
--   GZIP_LEVEL [6]  BR_LEVEL [4]  ZSTD_LEVEL [3]   compression levels
--   BR_WINDOW [18]  ZSTD_WINDOW [19]               lgwin, windowLog (moxy's defaults);
--                  gzip's window and mem_level are nginx's: 15 and 8
--   COMPRESS_MEMORY [128m]                         compression.memory
--   MOXY_COMPRESS_CACHE [0]  1 = the cache case: cache = { size = 256m }, and
--                  moxy-cache-bench-hook.lua stores every response for an hour
--                  (whatever its headers say), so that after the first request
--                  of a URL every response is a hit
--   MOXY_WORKERS [1]
-- Without the cache, the hook is bench-hook.lua (set X-Edge-Proxy, pick the
-- pool), the work nginx does with proxy_set_header.  Paths are relative to
-- this file.

local function env(name, default)
  local v = os.getenv(name)
  if v == nil or v == "" then
    if default ~= nil then return default end
    error("moxy-compress-bench.lua: environment variable " .. name
          .. " is not set (start moxy through bench/compress.sh)", 2)
  end
  return v
end

local function int(name, default, lo, hi)
  local v = env(name, default)
  local n = tonumber(v)
  if not n or n ~= math.floor(n) or n < lo or n > hi then
    error(("moxy-compress-bench.lua: %s must be an integer in %d..%d, not %s"):format(name, lo, hi, v), 2)
  end
  return n
end

local listen_port = int("LISTEN_PORT", nil, 1, 65535)
local origin_port = int("ORIGIN_PORT", nil, 1, 65535)
local cached = env("MOXY_COMPRESS_CACHE", "0") == "1"

return {
  workers = int("MOXY_WORKERS", "1", 0, 256),
  listen = { "127.0.0.1:" .. listen_port },
  upstreams = {
    origin = {
      servers = { "127.0.0.1:" .. origin_port },
      keepalive = 1024,
      keepalive_timeout = "300s",
    },
  },
  default_upstream = "origin",
  scripts = { cached and "moxy-cache-bench-hook.lua" or "bench-hook.lua" },
  cache = cached and { size = "256m", max_object = "16m" } or nil,
  compression = {
    enabled = true,
    encodings = { "br", "zstd", "gzip" },  -- server preference among equally accepted
    min_length = 256,                      -- as nginx's gzip_min_length 256
    gzip = { level = int("GZIP_LEVEL", "6", 1, 9), window = 15, mem_level = 8 },
    br = { level = int("BR_LEVEL", "4", 0, 11), window = int("BR_WINDOW", "18", 10, 24) },
    zstd = { level = int("ZSTD_LEVEL", "3", 1, 22), window = int("ZSTD_WINDOW", "19", 10, 23) },
    memory = env("COMPRESS_MEMORY", "128m"),
  },
  timeouts = { keepalive = "300s" },       -- never close a client mid-run
  pid_file = false,
  log = { access = false, error = "stderr", level = "warn" },
}
