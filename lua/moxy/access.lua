-- moxy.access: the hooks moxy makes of the configuration's `access = {...}`
-- (top level, and listeners' own): an ACL (moxy.acl) and rate and
-- concurrency limits (moxy.ratelimit) and a WAF (moxy.waf), applied in
-- on_request before any script's hooks, in that order.  lua/moxy/config.lua checks the shape and makes a script
-- of one line calling M.hooks; the rules and limits are checked here, when
-- it loads, so mistakes name the configuration, the rule and the key.
-- Reference: docs/acl.md ("In the configuration"), docs/ratelimit.md.
local acl_mod = require "moxy.acl"
local ratelimit = require "moxy.ratelimit"
local waf_mod = require "moxy.waf"
local re = require "moxy.re"

local type, pairs, ipairs, error, tostring = type, pairs, ipairs, error, tostring
local upper = string.upper

local M = {}

local DICT = "moxy_access"

-- The key of a limit for a request (nil: the limit does not count it).
local function key_fn(spec)
  if spec == "ip" then return function(txn) return txn.client.ip end end
  if spec == "all" then return function() return "all" end end
  if spec == "host" then return function(txn) return txn.req.host or "" end end
  if spec == "path" then return function(txn) return txn.req.path end end
  local h = spec:match("^header:(.+)$")
  if h then return function(txn) return txn.req.headers:get(h) end end
  local c = spec:match("^cookie:(.+)$")
  if c then
    local cookie = require "moxy.cookie"
    return function(txn) return cookie.get(txn, c) end
  end
  error("access: limits: key " .. tostring(spec) .. ": unknown", 0)
end

local redis_client

-- One scope (the top level's access, or a listener's): its ACL and limits.
local function scope(spec, where)
  if not spec then return false end
  local s = { limits = {} }
  if spec.acl then
    local ok, a = pcall(acl_mod.new, spec.acl, { name = where })
    if not ok then error(where .. ".acl: " .. tostring(a), 0) end
    s.acl = a
  end
  if spec.waf then
    local w = spec.waf == true and {} or spec.waf
    if w.name == nil then w.name = where == "access" and "waf" or (where:match("^listen%[(.-)%]"):gsub("[^%w_.:-]", "_")) end
    local ok, obj = pcall(waf_mod.new, w)
    if not ok then error(where .. ".waf: " .. tostring(obj), 0) end
    s.waf = obj
  end
  for i, l in ipairs(spec.limits or {}) do
    local lw = where .. ".limits[" .. i .. "] (" .. tostring(l.name) .. ")"
    local lim = { name = l.name, key = key_fn(l.key or "ip"), status = l.status }
    if l.method then
      lim.method = {}
      for _, m in ipairs(type(l.method) == "table" and l.method or { l.method }) do lim.method[upper(m)] = true end
    end
    if l.path then
      local ok, err = re.find("", l.path)
      if ok == nil and err then error(lw .. ": path: " .. tostring(err), 0) end
      lim.path = l.path
    end
    local ok, obj = pcall(function()
      if l.concurrent then
        return ratelimit.concurrency{ name = l.name, max = l.concurrent, dict = DICT }
      end
      local redis
      if l.redis and spec.redis then
        redis_client = redis_client or require("moxy.redis").new(spec.redis)
        redis = redis_client
      end
      return ratelimit.new{ name = l.name, rate = l.rate, burst = l.burst or 0, dict = DICT, redis = redis }
    end)
    if not ok then error(lw .. ": " .. tostring(obj), 0) end
    lim.obj = obj
    lim.concurrent = l.concurrent ~= nil
    s.limits[#s.limits + 1] = lim
  end
  return s
end

-- Apply scope s to txn.  true: go on; false: answered.
local function apply(s, txn)
  if s.acl and not s.acl:enforce(txn) then return false end
  local req = txn.req
  for _, lim in ipairs(s.limits) do
    if (not lim.method or lim.method[req.method]) and (not lim.path or re.find(req.path, lim.path, "jo")) then
      local key = lim.key(txn)
      if key ~= nil then
        if lim.concurrent then
          if not lim.obj:enter(txn, key) then
            txn:log_field("ratelimit", lim.name .. ":" .. (lim.status or 503))
            txn:respond(lim.status or 503, "Too Many Requests In Flight\n", { ["Content-Type"] = "text/plain" })
            return false
          end
        elseif not lim.obj:enforce(txn, key) then
          return false
        end
      end
    end
  end
  if s.waf and not s.waf:enforce(txn) then return false end
  return true
end

--- M.hooks(spec) -> the hooks of the configuration's access tables:
-- spec = { default = access or nil, listeners = { name = access | false } }.
function M.hooks(spec)
  local default = spec.default and scope(spec.default, "access") or nil
  local by_listener = {}
  for name, l in pairs(spec.listeners or {}) do
    by_listener[name] = scope(l, "listen[" .. name .. "].access")
  end
  return {
    on_request = function(txn)
      local s = by_listener[txn.listener]
      if s == nil then s = default end
      if s and not apply(s, txn) then return end
    end,
  }
end

return M
