-- bench/moxy-access-bench.lua -- moxy's configuration for bench/access.sh.
--
--   LISTEN_PORT=18081 ORIGIN_PORT=18080 MOXY_ACCESS_VARIANT=acl \
--     MOXY_ACCESS_LIST=/tmp/list.txt ./moxy -c bench/moxy-access-bench.lua
--
-- moxy-bench.lua's proxy (one worker, keep-alive to the origin pool, no
-- access log) with a shared dict for the limiters, declared for every variant
-- so that they differ by their script only.  The script is access-hook.lua,
-- whose on_request does the variant's work and nothing else
-- (MOXY_ACCESS_VARIANT; that file lists them), or none for "nohook".
--   MOXY_ACCESS_JIT [0]  1 = the hook with { jit = true } (not guarded)
--   MOXY_ACCESS_CPU_BUDGET [50ms]  lua.cpu_budget (access.sh's CALLGRIND=1 sets
--                  "2s": under valgrind, a request that compiles a trace can take
--                  more than 50 ms; the budget's check costs the same either way)
--   MOXY_WORKERS [1]
-- access-hook.lua reads its own variables (MOXY_ACCESS_LIST, ...).  Paths
-- are relative to this file.

local function env(name, default)
  local v = os.getenv(name)
  if v == nil or v == "" then
    if default ~= nil then return default end
    error("moxy-access-bench.lua: environment variable " .. name
          .. " is not set (start moxy through bench/access.sh)", 2)
  end
  return v
end

local function int(name, default, lo, hi)
  local v = env(name, default)
  local n = tonumber(v)
  if not n or n ~= math.floor(n) or n < lo or n > hi then
    error(("moxy-access-bench.lua: %s must be an integer in %d..%d, not %s"):format(name, lo, hi, v), 2)
  end
  return n
end

local listen_port = int("LISTEN_PORT", nil, 1, 65535)
local origin_port = int("ORIGIN_PORT", nil, 1, 65535)
local variant = env("MOXY_ACCESS_VARIANT")

return {
  workers = int("MOXY_WORKERS", "1", 1, 256),
  listen = { "127.0.0.1:" .. listen_port },
  upstreams = {
    origin = {
      servers = { "127.0.0.1:" .. origin_port },
      keepalive = 1024,
      keepalive_timeout = "300s",
    },
  },
  default_upstream = "origin",
  scripts = variant == "nohook" and {}
    or { { path = "access-hook.lua", jit = env("MOXY_ACCESS_JIT", "0") == "1" } },
  lua = { cpu_budget = env("MOXY_ACCESS_CPU_BUDGET", "50ms") },
  shared = { limits = "16m" },             -- the limiters' state (every variant has it)
  timeouts = { keepalive = "300s" },       -- never close a client mid-run
  pid_file = false,
  log = { access = false, error = "stderr", level = "warn" },
}
