-- bench/access-hook.lua -- the per-request work of bench/access.sh's
-- variants: each on_request does the variant's work only, so that its cost
-- over "noop" (the same hook, empty) is what the feature costs a request.
--
-- MOXY_ACCESS_VARIANT:
--   noop        on_request = function(txn) end: the baseline (entering Lua)
--   acl         moxy.acl: rule "blocklist" (deny; ip = the MOXY_ACCESS_LIST
--               file: 100,000 IPv4 and IPv6 prefixes, none holding the client,
--               127.0.0.1), then rule "admin" (deny; path = "^/admin/"), then
--               acl:enforce(txn): both rules are looked at, neither matches
--   rl          moxy.ratelimit.new{ rate = 1e6 r/s, burst = 1000, dict = "limits" }
--               + lim:enforce(txn, txn.client.ip): never denies
--   redis       the same with redis = { port = MOXY_ACCESS_REDIS_PORT, timeout = 0.2 }:
--               one EVALSHA round trip per request
--   conc        moxy.ratelimit.concurrency{ max = 1e6 } + conc:enter(txn, txn.client.ip)
--   waf         moxy.waf.new{ name = "bench" } (the default rule set, block mode,
--               anomaly scoring) + waf:enforce(txn): every rule looks at the
--               request (what there is to see depends on access.sh's REQUEST),
--               none matches
-- Check-only variants (access.sh's checks, never measured), built to deny:
--   acl-deny    "blocklist" also holds 127.0.0.0/8: GET /small -> 403
--   rl-deny     rate "1r/m", burst 0: the second request -> 429
--   redis-deny  the same in Redis: 429, and the key moxy:rl:benchdeny:127.0.0.1 stays
--               for a minute
--   waf-deny    the waf's default rules + rule 9001 (path exact "/small", score 5):
--               GET /small -> 403 with the WAF's page
-- At load (and `moxy -t`), the acl variants check their list: each address of
-- MOXY_ACCESS_PROBES (one inside a v4 and one inside a v6 prefix of the file)
-- is in "blocklist", 127.0.0.1 is not (acl), and the set holds at least
-- MOXY_ACCESS_MIN_PREFIXES; with MOXY_ACCESS_INFO set, acl:info() of the rule
-- is written to that file ("prefixes bytes"); the waf variants write "waf
-- <name>: N rules" (waf:list()) there.
local variant = os.getenv("MOXY_ACCESS_VARIANT") or ""

local function env(name)
  local v = os.getenv(name)
  if v == nil or v == "" then error("access-hook.lua: " .. name .. " is not set (variant " .. variant .. ")", 2) end
  return v
end

if variant == "noop" then
  return {
    on_request = function(txn) end,
  }
end

if variant == "acl" or variant == "acl-deny" then
  local ip = { file = env("MOXY_ACCESS_LIST") }
  if variant == "acl-deny" then ip[1] = "127.0.0.0/8" end
  local acl = moxy.acl.new({
    { name = "blocklist", deny = true, ip = ip },
    { name = "admin", deny = true, path = "^/admin/" },
  }, { name = "bench" })
  for probe in (os.getenv("MOXY_ACCESS_PROBES") or ""):gmatch("[^,%s]+") do
    assert(acl:match_ip(probe) == "blocklist", "access-hook.lua: " .. probe .. " is not in the list's set")
  end
  if variant == "acl" then
    assert(acl:match_ip("127.0.0.1") == nil, "access-hook.lua: the list holds 127.0.0.1")
  end
  local info = acl:info().blocklist
  local want = tonumber(os.getenv("MOXY_ACCESS_MIN_PREFIXES") or "0")
  assert(info and info.prefixes >= want, ("access-hook.lua: the set has %s prefixes, want >= %d")
    :format(tostring(info and info.prefixes), want))
  local out = os.getenv("MOXY_ACCESS_INFO")
  if out and out ~= "" then
    local f = assert(io.open(out, "w"))
    f:write(("%d %d\n"):format(info.prefixes, info.bytes))
    f:close()
  end
  return {
    on_request = function(txn)
      if not acl:enforce(txn) then return end -- 403 sent
    end,
  }
end

if variant == "rl" or variant == "redis" or variant == "rl-deny" or variant == "redis-deny" then
  local deny = variant:find("deny") ~= nil
  local redis
  if variant:find("^redis") then
    redis = { port = tonumber(env("MOXY_ACCESS_REDIS_PORT")), timeout = 0.2 }
  end
  local lim = moxy.ratelimit.new{
    name = deny and "benchdeny" or "bench",
    rate = deny and "1r/m" or 1e6,
    burst = deny and 0 or 1000,
    dict = "limits",
    redis = redis,
  }
  return {
    on_request = function(txn)
      if not lim:enforce(txn, txn.client.ip) then return end -- 429 sent
    end,
  }
end

if variant == "conc" then
  local conc = moxy.ratelimit.concurrency{ name = "bench", max = 1e6, dict = "limits" }
  return {
    on_request = function(txn)
      if not conc:enter(txn, txn.client.ip) then
        return txn:respond(503, "too many requests in flight\n")
      end
    end,
  }
end

if variant == "waf" or variant == "waf-deny" then
  local rules
  if variant == "waf-deny" then
    rules = { { id = 9001, msg = "bench: every GET /small", targets = { "path" }, op = "exact", value = "/small",
                score = 5 } }
  end
  local waf = moxy.waf.new{ name = variant == "waf" and "bench" or "benchdeny", rules = rules }
  local n = #waf:list()
  assert(n >= 40, "access-hook.lua: the WAF has " .. n .. " rules, the default set has more")
  local out = os.getenv("MOXY_ACCESS_INFO")
  if out and out ~= "" then
    local f = assert(io.open(out, "w"))
    f:write(("waf %s: %d rules\n"):format(waf.name, n))
    f:close()
  end
  return {
    on_request = function(txn)
      if not waf:enforce(txn) then return end -- 403 sent
    end,
  }
end

error("access-hook.lua: MOXY_ACCESS_VARIANT must be noop, acl, rl, redis, conc, waf, acl-deny, rl-deny, redis-deny or waf-deny, not '"
  .. variant .. "'", 0)
