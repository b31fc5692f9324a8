-- canary.lua: send a share of the clients to a canary pool, sticky per client.
--
-- How a request is placed, first match wins:
--   1. header `force_header: 1` (X-Canary: 1)  -> canary, for this request only
--      (no cookie is set: handy for testing the canary by hand)
--   2. cookie `cookie` = "canary" or "stable"  -> that group (the client keeps
--      the group it was given, even when `percent` changes)
--   3. otherwise a stable hash of the client's IP address: `percent` % of the
--      addresses go to the canary, always the same ones (across workers and
--      restarts); raising `percent` only adds addresses to the canary.  The
--      response then sets the cookie, so the choice sticks even if the
--      client's address changes.
--
-- Configure: edit the CONFIG block below.
--   percent       share of clients for the canary, 0..100 (fractions allowed: 0.5)
--   pool          the canary pool (a pool of `upstreams`)
--   stable_pool   the pool for everyone else; nil: pick nothing (the listener's
--                 pool or `default_upstream`)
--   cookie        the cookie's name; its value is "canary" or "stable"
--   cookie_attrs  attributes appended to the Set-Cookie header
--   force_header  request header that forces the canary when its value is "1"
--                 (nil: no such header)
--
-- txn.client.ip is the address of the peer moxy sees: behind another proxy or
-- a NAT many clients share one, so they land in the same group until their
-- cookie is set.

-- CONFIG BEGIN
local CONFIG = {
  percent = 10,
  pool = "canary",
  stable_pool = nil,
  cookie = "canary",
  cookie_attrs = "Path=/; Max-Age=86400; HttpOnly; SameSite=Lax",
  force_header = "X-Canary",
}
-- CONFIG END

local bit = require "bit"
local bxor, lshift, tobit = bit.bxor, bit.lshift, bit.tobit

if type(CONFIG.percent) ~= "number" or CONFIG.percent < 0 or CONFIG.percent > 100 then
  error("CONFIG.percent must be a number from 0 to 100")
end
if type(CONFIG.pool) ~= "string" then error("CONFIG.pool must be a pool name") end

-- computed once: the bucket threshold (buckets 0..9999) and both Set-Cookie values
local THRESHOLD = CONFIG.percent * 100
local POOL, STABLE_POOL = CONFIG.pool, CONFIG.stable_pool
local COOKIE, FORCE = CONFIG.cookie, CONFIG.force_header
local attrs = CONFIG.cookie_attrs and CONFIG.cookie_attrs ~= "" and "; " .. CONFIG.cookie_attrs or ""
local SET_COOKIE = {
  canary = COOKIE .. "=canary" .. attrs,
  stable = COOKIE .. "=stable" .. attrs,
}

-- FNV-1a (32 bits) of a string, as a bucket 0..9999.  Deterministic, unlike
-- math.random, so an address always lands in the same bucket.
local function bucket(s)
  local h = tobit(2166136261)
  for i = 1, #s do
    h = bxor(h, s:byte(i))
    h = tobit(lshift(h, 24) + h * 403) -- h * 16777619 (2^24 + 403), mod 2^32
  end
  if h < 0 then h = h + 4294967296 end
  return h % 10000
end

-- The value of cookie `name` in the request's Cookie header(s), or nil.
local function cookie_value(headers, name)
  for _, line in ipairs(headers:get_all("Cookie")) do
    for pair in line:gmatch("[^;]+") do
      local k, v = pair:match("^%s*([^=]-)%s*=%s*(.-)%s*$")
      if k == name then return v end
    end
  end
  return nil
end

return {
  on_request = function(txn)
    local headers = txn.req.headers
    local group
    if FORCE and headers:get(FORCE) == "1" then
      group = "canary"
    else
      local v = cookie_value(headers, COOKIE)
      if v == "canary" or v == "stable" then
        group = v
      else
        group = bucket(txn.client.ip) < THRESHOLD and "canary" or "stable"
        txn.ctx.canary_set_cookie = SET_COOKIE[group] -- make it stick
      end
    end
    if group == "canary" then
      txn.upstream:pick(POOL)
    elseif STABLE_POOL then
      txn.upstream:pick(STABLE_POOL)
    end
  end,

  on_response = function(txn)
    local set_cookie = txn.ctx.canary_set_cookie
    -- add, not set: the origin's own cookies stay
    if set_cookie then txn.resp.headers:add("Set-Cookie", set_cookie) end
  end,
}
