-- bench/cache-tests/moxy.lua -- moxy's configuration for the cache-tests run
-- (bench/cache-tests/run.sh). moxy listens on 127.0.0.1:CT_MOXY_PORT and proxies
-- to the suite's origin on 127.0.0.1:CT_ORIGIN_PORT, with the in-memory cache on
-- (a shared cache). Its pid file and error log go to CT_RUN_DIR.
local moxy_port = os.getenv("CT_MOXY_PORT") or "18080"
local origin_port = os.getenv("CT_ORIGIN_PORT") or "18000"
local run_dir = os.getenv("CT_RUN_DIR") or "/tmp"
return {
  workers = 2,
  pid_file = run_dir .. "/moxy.pid",
  listen = { "127.0.0.1:" .. moxy_port },
  upstreams = {
    origin = {
      servers = { "127.0.0.1:" .. origin_port },
      keepalive = 32,
      keepalive_timeout = "4s",   -- the suite's node origin closes idle sockets after 5 s
      tries = 1,                  -- no retry: a retried request shows up as a duplicate at the origin
      passive = false,            -- the suite deliberately disconnects; do not eject the only peer
    },
  },
  default_upstream = "origin",
  cache = { size = "64m" },
  log = { access = false, error = run_dir .. "/moxy-error.log", level = "info" },
}
