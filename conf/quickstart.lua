-- The quickstart: moxy on :8080 proxies to a demo origin on :8081, which is
-- moxy itself answering from a Lua hook (scripts/quickstart.lua).  Copy this
-- file to start your own configuration; every key is in README.md.
return {
  workers = "auto",
  listen = {
    "127.0.0.1:8080",
    { addr = "127.0.0.1:8081", name = "demo-origin" },
  },
  upstreams = {
    demo = { servers = { "127.0.0.1:8081" }, keepalive = 64 },
  },
  default_upstream = "demo",
  scripts = { "../scripts/quickstart.lua" },
  log = { access = false, error = "stderr", level = "info" },
}
