-- moxy.ratelimit: rate limits (GCRA) and concurrency limits per key, exact
-- across the workers of one moxy (a moxy.shared dict holds the state) and,
-- with `redis`, across a fleet of moxy nodes (one Redis round trip per
-- decision; local limits while Redis is unreachable).  Reference:
-- docs/ratelimit.md.
--
--   local per_ip = moxy.ratelimit.new{ name = "ip", rate = "10r/s", burst = 20, dict = "limits" }
--   on_request = function(txn)
--     if not per_ip:enforce(txn, txn.client.ip) then return end  -- 429 sent
--   end
--
--   local conns = moxy.ratelimit.concurrency{ name = "api", max = 100, dict = "limits" }
--   if not conns:enter(txn, txn.req.headers:get("X-Api-Key") or txn.client.ip) then
--     return txn:respond(503, "too many requests in flight\n")
--   end                                       -- the place is given back when the request ends
local ffi = require "ffi"
local shared = require "moxy.shared" -- the dict cdef (moxy_ffi_shdict_gcra)
local txn_mod = require "moxy.txn"
local metrics = require "moxy.metrics"

local C = ffi.C
local OK, DECLINED = 0, -3
local gcra_out = ffi.new("moxy_gcra_t")
local err_out = ffi.new("int[1]")
local num_out = ffi.new("double[1]")

local type, tostring, tonumber, error, setmetatable = type, tostring, tonumber, error, setmetatable
local floor, ceil, format = math.floor, math.ceil, string.format

local M = {}

local UNITS = { s = 1, m = 60, h = 3600, d = 86400 }

-- "10r/s", "10/s", "600r/m", "5r/h", "100r/d", or a number (per second):
-- -> requests, seconds (the window the rate was given in).
local function parse_rate(v)
  if type(v) == "number" then
    if v > 0 and v < 1e9 then return v, 1 end
    return nil
  end
  if type(v) ~= "string" then return nil end
  local n, unit = v:lower():match("^%s*([%d%.]+)%s*r?%s*/%s*([smhd])%s*$")
  n = tonumber(n)
  if not n or n <= 0 or n >= 1e9 then return nil end
  return n, UNITS[unit]
end
M.parse_rate = parse_rate

local function dict_of(name, where)
  if type(name) ~= "string" then error(where .. ": dict must name a moxy.shared dict", 3) end
  local d = shared[name]
  if not d then
    error(where .. ": no shared dict \"" .. name .. "\" (declare it: shared = { " .. name .. " = \"10m\" })", 3)
  end
  return d
end

-- The options table's name (checked), for new and concurrency.
local function name_of(o, where)
  if type(o) ~= "table" then error(where .. ": a table of options is needed", 3) end
  local name = o.name or "default"
  if type(name) ~= "string" or not name:find("^[%w_%-%.]+$") or #name > 64 then
    error(where .. ": name must be 1 to 64 letters, digits, '_', '-' or '.'", 3)
  end
  return name
end

-- A key given as a string or a number, as a string.
local function key_of(key, where)
  if type(key) == "string" then return key end
  if type(key) == "number" then return tostring(key) end
  error(where .. ": key must be a string", 3)
end

local Limit = {}
Limit.__index = Limit

--- moxy.ratelimit.new{ name, rate, burst, dict [, redis, redis_timeout] } -> a limit.
-- rate: "10r/s", "600r/m", ... (or a number per second); burst: requests
-- allowed above the rate at once (default 0); dict: the moxy.shared dict
-- that holds the state (keys "rl:<name>:<key>"); redis: a moxy.redis
-- client (or its options) to share the limit with every node using that
-- Redis (see docs/ratelimit.md for what happens when it is down).
function M.new(o)
  local where = "moxy.ratelimit.new"
  local name = name_of(o, where)
  local n, window = parse_rate(o.rate)
  if not n then error(where .. ": rate must be like \"10r/s\", \"600r/m\", \"5r/h\" or a number per second", 2) end
  local burst = o.burst or 0
  if type(burst) ~= "number" or burst < 0 or burst ~= floor(burst) or burst > 1e9 then
    error(where .. ": burst must be a whole number >= 0", 2)
  end
  local d = dict_of(o.dict, where)
  local self = setmetatable({
    name = name, per = n, window = window, interval = window / n, burst = burst, dict = d,
    prefix = "rl:" .. name .. ":", ids = {}, log_ok = name .. ":ok", log_denied = name .. ":429",
    policy = format('"%s";q=%s;w=%d', name, n == floor(n) and format("%d", n) or format("%.3f", n), window),
  }, Limit)
  if o.redis ~= nil then
    local redis = require "moxy.redis"
    local client = o.redis
    if getmetatable(client) == nil then client = redis.new(client) end
    self.redis = client
    self.redis_timeout = o.redis_timeout
  end
  return self
end

-- Counted in /metrics: moxy_ratelimit_decisions_total{limit, result, store}.
local DECISIONS = "moxy_ratelimit_decisions_total"
local DECISIONS_HELP = "Rate-limit decisions, by limit, result (allowed, denied) and where the state was (local, redis)"
local FALLBACKS = "moxy_ratelimit_redis_fallbacks_total"
local FALLBACKS_HELP = "Rate-limit decisions made locally because Redis did not answer"

-- The counters' ids are made once per limit, result and store.
local function count(self, allowed, store)
  local k = allowed and store or "denied " .. store
  local id = self.ids[k]
  if id == nil then
    id = metrics.own_id(DECISIONS, { limit = self.name, result = allowed and "allowed" or "denied", store = store },
      DECISIONS_HELP)
    self.ids[k] = id
  end
  metrics.add(id, 1)
end

-- The info table of a decision.
local function info_of(self, allowed, retry_after, reset, remaining)
  return {
    allowed = allowed,
    limit = self.burst + 1,
    remaining = remaining < 0 and 0 or floor(remaining),
    reset = reset < 0 and 0 or reset,
    retry_after = retry_after < 0 and 0 or retry_after,
  }
end

-- One decision in the local dict.  -> allowed, info; or nil, err.
local function take_local(self, key, cost)
  local k = self.prefix .. key
  local rc = C.moxy_ffi_shdict_gcra(self.dict._d, k, #k, self.interval, self.burst, cost, gcra_out, err_out)
  if rc == OK or rc == DECLINED then
    if cost > 0 then count(self, rc == OK, "local") end
    return rc == OK, info_of(self, rc == OK, gcra_out.retry_after, gcra_out.reset, gcra_out.remaining)
  end
  local e = err_out[0]
  return nil, e == C.MOXY_SHDICT_E_NO_MEMORY and "no memory" or e == C.MOXY_SHDICT_E_NOT_NUMBER
    and "key holds something else" or "bad key"
end

-- GCRA in Redis: the same rule as moxy_ffi_shdict_gcra, on Redis's clock
-- (TIME), so that every node shares one arrival time per key.  Times in
-- ms; the numbers come back as strings (Redis would cut them to integers).
local REDIS_GCRA = [[
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local interval, burst, cost = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local limit = (burst + 1) * interval
local tat = tonumber(redis.call('GET', KEYS[1])) or now
if tat < now then tat = now end
local nxt = tat + cost * interval
if nxt - now > limit + 0.000001 then
  return { 0, tostring(nxt - limit - now), tostring(tat - now), '0' }
end
if cost > 0 then
  redis.call('SET', KEYS[1], tostring(nxt), 'PX', math.ceil(nxt - now) + 10)
end
return { 1, '0', tostring(nxt - now), tostring((limit - (nxt - now)) / interval) }
]]
M.REDIS_GCRA = REDIS_GCRA

local last_warn = 0

-- One decision in Redis; falls back to the local dict when Redis fails.
local function take_redis(self, key, cost)
  local k = "moxy:" .. self.prefix .. key
  local res, err = self.redis:eval_script(REDIS_GCRA, { k }, { self.interval * 1000, self.burst, cost })
  if type(res) == "table" and #res == 4 then
    local allowed = res[1] == 1
    if cost > 0 then count(self, allowed, "redis") end
    return allowed, info_of(self, allowed, tonumber(res[2]) / 1000, tonumber(res[3]) / 1000, tonumber(res[4]))
  end
  if self.ids.fallback == nil then self.ids.fallback = metrics.own_id(FALLBACKS, { limit = self.name }, FALLBACKS_HELP) end
  metrics.add(self.ids.fallback, 1)
  local now = os.time()
  if now - last_warn >= 10 then
    last_warn = now
    require("moxy").log.warn("ratelimit ", self.name, ": redis failed (", tostring(err or "bad reply"),
      "): deciding locally")
  end
  return take_local(self, key, cost)
end

--- limit:take(key [, cost]) -> allowed (boolean), info; or nil, err.
-- info: { allowed, limit, remaining, reset (seconds until the key is back
-- to its full burst), retry_after (seconds; 0 when allowed) }.  cost: the
-- requests this one counts for (default 1; 0 only looks).  A request that
-- is not allowed is not counted.
function Limit:take(key, cost)
  key = key_of(key, "ratelimit:take")
  cost = cost or 1
  if type(cost) ~= "number" or cost < 0 then error("ratelimit:take: cost must be a number >= 0", 2) end
  if self.redis then return take_redis(self, key, cost) end
  return take_local(self, key, cost)
end

--- limit:headers(info) -> the RateLimit-Policy and RateLimit field values
-- (draft-ietf-httpapi-ratelimit-headers): "name";q=10;w=1 and
-- "name";r=<remaining>;t=<seconds until full>.
function Limit:headers(info)
  return self.policy, format('"%s";r=%d;t=%d', self.name, info.remaining, ceil(info.reset))
end

--- limit:enforce(txn, key [, cost]) -> true when allowed; else answers 429
-- with Retry-After, RateLimit-Policy and RateLimit, and returns false.
-- Either way the decision goes to the access log (ratelimit=<name>:<ok|429>).
-- When the dict (or Redis and then the dict) fails, the request is allowed
-- and the failure logged: a limiter must not take a site down.
function Limit:enforce(txn, key, cost)
  local ok, info = self:take(key, cost)
  if ok == nil then
    require("moxy").log.err("ratelimit ", self.name, ": ", tostring(info), ": request allowed")
    return true
  end
  if ok then
    txn:log_field("ratelimit", self.log_ok)
    return true
  end
  local policy, state = self:headers(info)
  txn:log_field("ratelimit", self.log_denied)
  txn:respond(429, "Too Many Requests\n", {
    ["Content-Type"] = "text/plain",
    ["Retry-After"] = tostring(ceil(info.retry_after)),
    ["RateLimit-Policy"] = policy,
    ["RateLimit"] = state,
  })
  return false
end

local Concurrency = {}
Concurrency.__index = Concurrency

--- moxy.ratelimit.concurrency{ name, max, dict } -> a concurrency limit:
-- at most max requests in flight per key, across the workers.
function M.concurrency(o)
  local where = "moxy.ratelimit.concurrency"
  local name = name_of(o, where)
  local max = o.max
  if type(max) ~= "number" or max < 1 or max ~= floor(max) then error(where .. ": max must be a whole number >= 1", 2) end
  return setmetatable({ name = name, max = max, dict = dict_of(o.dict, where), prefix = "cc:" .. name .. ":" },
    Concurrency)
end

--- conc:enter(txn, key) -> true (the request holds a place until it ends,
-- whatever way it ends), or false, in_flight when key is at max.
function Concurrency:enter(_, key)
  key = key_of(key, "concurrency:enter")
  local k = self.prefix .. key
  local d = self.dict._d
  if C.moxy_ffi_shdict_incr(d, k, #k, 1, 0, 1, 0, num_out, err_out) ~= OK then
    return true -- the dict failed (full): allow rather than refuse everyone
  end
  local n = num_out[0]
  if n > self.max then
    C.moxy_ffi_shdict_incr(d, k, #k, -1, 0, 1, 0, num_out, err_out)
    return false, n - 1
  end
  local r = txn_mod.current() -- the request whose hook runs (txn is that one's)
  if r == nil or C.moxy_ffi_req_defer_incr(r, d, k, #k, -1) ~= OK then
    C.moxy_ffi_shdict_incr(d, k, #k, -1, 0, 1, 0, num_out, err_out)
    error("concurrency:enter: only inside a request's hooks", 2)
  end
  return true
end

--- conc:count(key) -> requests in flight for key now.
function Concurrency:count(key)
  local v = self.dict:get(self.prefix .. tostring(key))
  return type(v) == "number" and v or 0
end

M.Limit = Limit
M.Concurrency = Concurrency
return M
