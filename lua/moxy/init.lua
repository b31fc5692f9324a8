-- moxy: the module every script sees as the global `moxy` (also
-- `require "moxy"`): moxy.sleep, moxy.timer, moxy.log, moxy.json, and the
-- modules loaded on first use below.
local runtime = require "moxy.runtime"
local txn = require "moxy.txn"

local C = txn.C
local type, tostring, select, concat = type, tostring, select, table.concat

local M = { version = "0.1.0" }

--- moxy.sleep(seconds): park the running hook for `seconds` (>= 0) without
-- blocking the worker; other requests go on meanwhile.  In every phase,
-- timer callbacks, init and worker_init (which simply wait).  Raises when
-- called outside them (e.g. while a script loads).
function M.sleep(seconds)
  if type(seconds) ~= "number" or seconds < 0 or seconds ~= seconds then
    error("moxy.sleep: seconds must be a number >= 0, got " .. tostring(seconds), 2)
  end
  runtime.sleep(seconds)
end

--- moxy.timer.at(delay, fn, ...) -> id or nil, err: call fn(...) once,
-- delay seconds from now, in a coroutine of its own (it may sleep or call
-- moxy.http; it runs outside any request, under the same CPU budget).
-- moxy.timer.every(interval, fn, ...) -> id or nil, err: call fn(...) every
-- interval seconds (the next call is scheduled when one returns, so calls
-- never overlap).  moxy.timer.cancel(id) -> true when it was pending.
-- Timers belong to the worker that started them: start per-worker
-- background work in worker_init.
M.timer = {}

local function check_timer(what, secs, fn)
  if type(secs) ~= "number" or secs < 0 or secs ~= secs then
    error("moxy.timer." .. what .. ": delay must be a number >= 0, got " .. tostring(secs), 3)
  end
  if type(fn) ~= "function" then
    error("moxy.timer." .. what .. ": fn must be a function, got " .. type(fn), 3)
  end
end

function M.timer.at(delay, fn, ...)
  check_timer("at", delay, fn)
  return runtime.timer_add(delay, 0, fn, { n = select("#", ...), ... })
end

function M.timer.every(interval, fn, ...)
  check_timer("every", interval, fn)
  if interval <= 0 then error("moxy.timer.every: interval must be > 0", 2) end
  return runtime.timer_add(interval, interval, fn, { n = select("#", ...), ... })
end

function M.timer.cancel(id)
  return runtime.timer_cancel(id)
end

local LEVELS = { err = 0, warn = 1, info = 2, debug = 3 }

local function logger(level)
  return function(...)
    local n = select("#", ...)
    local parts = { ... }
    for i = 1, n do parts[i] = tostring(parts[i]) end
    local msg = concat(parts, " ", 1, n)
    C.moxy_ffi_log(txn.current(), level, msg, #msg)
  end
end

--- moxy.watch(path): with `watch = true` in the configuration, a change
-- to the file at path (relative to the configuration's directory) reloads
-- moxy, as a change to the configuration or a script does.  Call it where
-- a script reads a file it depends on (its top level or init).
function M.watch(path)
  if type(path) ~= "string" or path == "" then
    error("moxy.watch: path must be a non-empty string, got " .. tostring(path), 2)
  end
  runtime.watch(path)
  return true
end

--- moxy.log.err/warn/info/debug(...): one error-log line of the arguments
-- (tostring'ed, space-separated), with the request id inside a hook.
M.log = {}
for name, level in pairs(LEVELS) do M.log[name] = logger(level) end

--- moxy.json: lua-cjson's safe module (loaded on first use):
-- moxy.json.encode(value) -> string or nil, err; moxy.json.decode(text) ->
-- value or nil, err; moxy.json.null.
-- Modules loaded on first use: moxy.shared (lua/moxy/shared.lua), moxy.re
-- (lua/moxy/re.lua), moxy.http (lua/moxy/http.lua), moxy.socket
-- (lua/moxy/socket.lua), moxy.redis (lua/moxy/redis.lua), moxy.ratelimit
-- (lua/moxy/ratelimit.lua), moxy.metrics (lua/moxy/metrics.lua), moxy.acl
-- (lua/moxy/acl.lua), moxy.waf (lua/moxy/waf.lua), moxy.fleet (lua/moxy/fleet.lua), moxy.upstream
-- (lua/moxy/upstream.lua), moxy.geo (lua/moxy/geo.lua).
local LAZY = { shared = "moxy.shared", re = "moxy.re", http = "moxy.http", upstream = "moxy.upstream",
               crypto = "moxy.crypto", socket = "moxy.socket", redis = "moxy.redis",
               ratelimit = "moxy.ratelimit", metrics = "moxy.metrics", acl = "moxy.acl", waf = "moxy.waf",
               geo = "moxy.geo", cache = "moxy.cache", fleet = "moxy.fleet" }

setmetatable(M, {
  __index = function(t, k)
    if LAZY[k] then
      local mod = require(LAZY[k])
      rawset(t, k, mod)
      return mod
    end
    if k == "json" then
      local ok, cjson = pcall(require, "cjson.safe")
      if not ok then error("moxy.json needs lua-cjson (Debian package lua-cjson)", 2) end
      rawset(t, "json", cjson)
      return cjson
    end
    return nil
  end,
})

return M
