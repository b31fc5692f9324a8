-- moxy.redis: Redis for hooks and moxy.timer callbacks, on the worker's
-- event loop (the calling hook waits; the worker serves others meanwhile).
-- Over core/api/redis.h (the cdef below must match it; tools/check-ffi.lua).
-- Reference: docs/redis.md.
--
--   local red = moxy.redis.new{ host = "127.0.0.1", port = 6379, timeout = 0.5 }
--   local n, err = red:incr("hits:" .. txn.client.ip)    -- any command, as a method
--   local v = red:call("GET", "k")                       -- or by name
--   if v == moxy.redis.null then ... end                 -- a nil reply
--   local res = red:pipeline(function(p) p:incr("a"); p:expire("a", 60) end)
--   local r = red:eval_script(LUA_SRC, { "key" }, { "arg" })  -- EVALSHA, SCRIPT LOAD when needed
--
-- Replies: bulk and status replies are strings, integers numbers, a nil
-- reply moxy.redis.null, arrays tables.  A Redis error: false, "ERR ...";
-- inside a pipeline's table (or an array reply), { false, "ERR ..." }.
-- A call that got no reply: nil, why ("timeout", "redis unavailable: ...").
local ffi = require "ffi"
local runtime = require "moxy.runtime" -- loads moxy.txn, which checks the FFI ABI

ffi.cdef [[
typedef struct moxy_redis_s moxy_redis_t;
moxy_redis_t *moxy_ffi_redis_client(const char *host, int port, const char *user, const char *password, int db,
                                    int tls, const char *server_name, double connect_timeout, double timeout,
                                    int pool_size, double max_reply, char *err, size_t errlen);
int moxy_ffi_redis_call(moxy_redis_t *c, int ncmds, const int *argc, const char **argv, const size_t *argvlen,
                        int pipeline, char *err, size_t errlen);
]]

local C = ffi.C
local OK, DECLINED = 0, -3
local ERR_LEN = 320
local errbuf = ffi.new("char[?]", ERR_LEN)

local type, tostring, tonumber, error, setmetatable, select = type, tostring, tonumber, error, setmetatable, select
local floor, upper, format = math.floor, string.upper, string.format
local ffi_string = ffi.string

local M = {}

-- The nil reply (a lightuserdata NULL: equal to cjson.null / moxy.json.null).
M.null = ffi.cast("void *", nil)
do
  local ok, cjson = pcall(require, "cjson.safe")
  if ok then M.null = cjson.null end
end

M.DEFAULTS = { host = "127.0.0.1", port = 6379, db = 0, timeout = 1, connect_timeout = 1, pool_size = 4,
               max_reply = 64 * 1024 * 1024 }

local SIZE_UNITS = { [""] = 1, b = 1, k = 1024, m = 1024 ^ 2, g = 1024 ^ 3 }

local function size(v)
  if type(v) == "number" then return v >= 1 and v == floor(v) and v or nil end
  if type(v) ~= "string" then return nil end
  local n, u = v:lower():match("^%s*(%d+)%s*([kmgb]?)%s*$")
  return n and tonumber(n) * SIZE_UNITS[u] or nil
end

-- Argument buffers, grown as needed and reused (one call at a time per VM
-- reaches C: the call copies the arguments before it returns).
local cap = 0
local argv, argvlen
local argc_cap = 0
local argc_buf

local function ensure(nargs, ncmds)
  if nargs > cap then
    cap = nargs < 64 and 64 or nargs * 2
    argv = ffi.new("const char *[?]", cap)
    argvlen = ffi.new("size_t[?]", cap)
  end
  if ncmds > argc_cap then
    argc_cap = ncmds < 16 and 16 or ncmds * 2
    argc_buf = ffi.new("int[?]", argc_cap)
  end
end

-- The string an argument is sent as.
local function arg_string(v, i)
  local t = type(v)
  if t == "string" then return v end
  if t == "number" then
    if v == floor(v) and v > -2 ^ 53 and v < 2 ^ 53 then return format("%d", v) end
    return format("%.17g", v)
  end
  if t == "boolean" then return tostring(v) end -- as lua-resty-redis
  error("moxy.redis: argument " .. i .. " must be a string or a number, got " .. t, 4)
end

local Client = {}
local client_mt

local function bad(msg) error("moxy.redis.new: " .. msg, 3) end

--- moxy.redis.new(opts) -> a client.  opts: host (IP or name, default
-- 127.0.0.1), port (6379), password, user (ACL user; AUTH user password),
-- db (SELECT db when > 0), tls (true: TLS, the certificate verified),
-- verify (false: not verified), server_name (TLS name, default host),
-- timeout (seconds a call may wait, connecting included; default 1),
-- connect_timeout (seconds, 1), pool_size (connections per worker, 4),
-- max_reply (bytes, "64m").  Cheap: clients of equal settings share the
-- worker's connections, so a script may call new wherever it likes.
function M.new(opts)
  opts = opts or {}
  if type(opts) ~= "table" then bad("opts must be a table") end
  local o = {}
  for k, v in pairs(M.DEFAULTS) do o[k] = v end
  for k, v in pairs(opts) do
    if o[k] == nil and k ~= "password" and k ~= "user" and k ~= "tls" and k ~= "verify" and k ~= "server_name" then
      bad("unknown option " .. tostring(k))
    end
    o[k] = v
  end
  if type(o.host) ~= "string" or o.host == "" or o.host:find("[%z%s/]") then bad("host must be an IP address or a name") end
  if o.host:sub(1, 1) == "[" then o.host = o.host:sub(2, -2) end
  local port = tonumber(o.port)
  if not port or port < 1 or port > 65535 or port ~= floor(port) then bad("port must be 1 to 65535") end
  for _, k in ipairs({ "password", "user", "server_name" }) do
    if o[k] ~= nil and (type(o[k]) ~= "string" or o[k]:find("%z")) then bad(k .. " must be a string") end
  end
  if o.user ~= nil and o.password == nil then bad("user needs a password") end
  local db = tonumber(o.db)
  if not db or db < 0 or db ~= floor(db) or db > 1e6 then bad("db must be a whole number >= 0") end
  for _, k in ipairs({ "timeout", "connect_timeout" }) do
    local v = tonumber(o[k])
    if not v or v <= 0 or v > 3600 then bad(k .. " must be seconds > 0") end
    o[k] = v
  end
  local ps = tonumber(o.pool_size)
  if not ps or ps < 1 or ps > 64 or ps ~= floor(ps) then bad("pool_size must be 1 to 64") end
  local mr = size(o.max_reply)
  if not mr then bad("max_reply must be a size") end
  local tls = 0
  if o.tls then tls = o.verify == false and 2 or 1 end
  -- own fields only: any other name is a command (client:get(...))
  return setmetatable({ o = {
    host = o.host, port = port, user = o.user, password = o.password, db = db, tls = tls,
    server_name = o.server_name, timeout = o.timeout, connect_timeout = o.connect_timeout,
    pool_size = ps, max_reply = mr,
  } }, client_mt)
end

-- The worker's client for self's settings, made on the first call.
local function handle(self)
  local h = rawget(self, "h")
  if h then return h end
  local o = rawget(self, "o")
  h = C.moxy_ffi_redis_client(o.host, o.port, o.user, o.password, o.db, o.tls, o.server_name,
                              o.connect_timeout, o.timeout, o.pool_size, o.max_reply, errbuf, ERR_LEN)
  if h == nil then return nil, ffi_string(errbuf) end
  rawset(self, "h", h)
  return h
end

-- Send ncmds commands whose arguments fill argv[0 .. nargs-1]; wait.
local function send(self, ncmds, pipeline, level)
  if not runtime.can_wait() then
    error("moxy.redis: only hooks and timer callbacks may call Redis", level)
  end
  local h, err = handle(self)
  if not h then return nil, err end
  local rc = C.moxy_ffi_redis_call(h, ncmds, argc_buf, argv, argvlen, pipeline, errbuf, ERR_LEN)
  if rc == DECLINED then
    error("moxy.redis: only hooks and timer callbacks may call Redis", level)
  end
  if rc ~= OK then return nil, ffi_string(errbuf) end
  return runtime.wait()
end

-- hmset(key, { field = value, ... }) (HSET, MSET, MSETNX too): the table
-- is spread into field, value pairs, as lua-resty-redis does for HMSET.
local SPREAD = { hmset = true, hset = true, mset = true, msetnx = true }

local function spread(args, n)
  local t = args[n]
  local name = args[1]
  if type(t) == "table" and type(name) == "string" and SPREAD[name:lower()]
     and n == (name:lower():sub(1, 1) == "m" and 2 or 3) then
    args[n] = nil
    n = n - 1
    for k, v in pairs(t) do
      n = n + 2
      args[n - 1], args[n] = k, v
    end
  end
  return n
end

--- client:call(name, ...) -> reply; false, err for a Redis error reply;
-- nil, err when no reply came.  Between init_pipeline and
-- commit_pipeline, queued instead.
function Client:call(...)
  local n = select("#", ...)
  if n == 0 then error("moxy.redis: call: a command name is needed", 2) end
  local q = rawget(self, "queued")
  if q then return q:call(...) end
  local anchors = { ... }
  if type(anchors[n]) == "table" then n = spread(anchors, n) end
  ensure(n, 1)
  for i = 1, n do
    local s = arg_string(anchors[i], i)
    anchors[i] = s
    argv[i - 1] = s
    argvlen[i - 1] = #s
  end
  argc_buf[0] = n
  local res, err = send(self, 1, 0, 3) -- false, err: Redis answered with an error
  anchors = nil
  return res, err
end

local Pipeline = {}
local pipeline_mt = {
  __index = function(t, k)
    local m = Pipeline[k]
    if m then return m end
    local cmd = upper(k)
    return function(p, ...) return p:call(cmd, ...) end
  end,
}

--- pipeline:call(name, ...) (and pipeline:<command>(...)): queue one command.
function Pipeline:call(...)
  local n = select("#", ...)
  if n == 0 then error("moxy.redis: pipeline: a command name is needed", 2) end
  local cmd = { ... }
  if type(cmd[n]) == "table" then n = spread(cmd, n) end
  for i = 1, n do cmd[i] = arg_string(cmd[i], i) end
  self.cmds[#self.cmds + 1] = cmd
end

--- client:pipeline(fn) -> a table of replies (an error reply as { false,
-- "ERR ..." }), or nil, err when none came.  fn(p) queues the commands
-- (p:set(...), p:call("SET", ...)); they leave in one write, in order,
-- and their replies come back together.  MULTI ... EXEC must be whole in
-- one pipeline.
function Client:pipeline(fn)
  if type(fn) ~= "function" then error("moxy.redis: pipeline: a function is needed", 2) end
  local p = setmetatable({ cmds = {} }, pipeline_mt)
  fn(p)
  local cmds = p.cmds
  local ncmds = #cmds
  if ncmds == 0 then return {} end
  local nargs = 0
  for i = 1, ncmds do nargs = nargs + #cmds[i] end
  ensure(nargs, ncmds)
  local at = 0
  for i = 1, ncmds do
    local cmd = cmds[i]
    argc_buf[i - 1] = #cmd
    for k = 1, #cmd do
      argv[at] = cmd[k]
      argvlen[at] = #cmd[k]
      at = at + 1
    end
  end
  local res, err = send(self, ncmds, 1, 3)
  cmds = nil
  return res, err
end

--- client:init_pipeline() / client:commit_pipeline() / client:cancel_pipeline():
-- lua-resty-redis's form: commands called between init and commit are queued.
function Client:init_pipeline()
  rawset(self, "queued", setmetatable({ cmds = {} }, pipeline_mt))
end

function Client:cancel_pipeline()
  rawset(self, "queued", nil)
end

function Client:commit_pipeline()
  local q = rawget(self, "queued")
  if not q then return nil, "no pipeline started" end
  rawset(self, "queued", nil)
  return self:pipeline(function(p) p.cmds = q.cmds end)
end

-- lua-resty-redis's connection calls, for scripts ported from OpenResty:
-- moxy manages the connections (per worker, shared), so these do nothing.
function Client:connect() return true end
function Client:set_timeout() return true end
function Client:set_timeouts() return true end
function Client:set_keepalive() return true end
function Client:close() return true end

local sha_of = setmetatable({}, { __mode = "k" })
local crypto

--- client:eval_script(src, keys, args) -> the script's reply, or nil, err.
-- Runs src by its SHA1 (EVALSHA); when Redis does not know it yet
-- (NOSCRIPT), loads it (SCRIPT LOAD) and runs it again.
function Client:eval_script(src, keys, args)
  if type(src) ~= "string" then error("moxy.redis: eval_script: src must be a string", 2) end
  keys = keys or {}
  args = args or {}
  crypto = crypto or require "moxy.crypto"
  local sha = sha_of[src]
  if not sha then
    sha = crypto.hex(crypto.sha1(src))
    sha_of[src] = sha
  end
  local nk = #keys
  local call_args = { "EVALSHA", sha, nk }
  for i = 1, nk do call_args[#call_args + 1] = keys[i] end
  for i = 1, #args do call_args[#call_args + 1] = args[i] end
  local res, err = self:call(unpack(call_args))
  if res == false and type(err) == "string" and err:sub(1, 8) == "NOSCRIPT" then
    local loaded, lerr = self:call("SCRIPT", "LOAD", src)
    if not loaded then return loaded, lerr end -- false: Redis refused it; nil: no reply
    res, err = self:call(unpack(call_args))
  end
  return res, err
end

local methods = {}
client_mt = {
  __index = function(self, k)
    local m = Client[k]
    if m then return m end
    if k == "h" or k == "o" or k == "queued" then return nil end
    m = methods[k]
    if m then return m end
    if type(k) ~= "string" or not k:find("^[%a_][%w_]*$") then return nil end
    local cmd = upper(k)
    m = function(c, ...)
      local q = rawget(c, "queued")
      if q then return q:call(cmd, ...) end
      return c:call(cmd, ...)
    end
    methods[k] = m
    return m
  end,
}

M.Client = Client
return M
