-- cache_rules.lua: caching rules for a typical site, on moxy's HTTP cache
-- (configure `cache = { size = "256m" }` too; docs/cache.md).
--
--   * static assets (by extension or path prefix) are stored for a day,
--     whatever the origin says, when they answer 200;
--   * nothing under /api/ is stored unless the origin says it may be
--     (Cache-Control max-age, s-maxage or public, or Expires): no heuristic
--     caching of API answers;
--   * tracking parameters (utm_*, gclid, fbclid, ...) are not part of the
--     cache key: /page?utm_source=x and /page share an object;
--   * requests of logged-in users (a session cookie) bypass the cache.
--
-- Configure: edit the CONFIG block below.

-- CONFIG BEGIN
local CONFIG = {
  static = {
    extensions = { "css", "js", "mjs", "png", "jpg", "jpeg", "gif", "svg", "webp", "avif", "ico",
                   "woff", "woff2", "ttf", "map" },
    prefixes = { "/assets/", "/static/" },
    ttl = 86400,               -- seconds
  },
  api_prefix = "/api/",
  strip_params = { "^utm_", "^gclid$", "^fbclid$", "^msclkid$", "^mc_cid$", "^mc_eid$" }, -- Lua patterns
  login_cookies = { "session", "logged_in" }, -- cookie names that mean "logged in"
}
-- CONFIG END

local EXT = {}
for _, e in ipairs(CONFIG.static.extensions) do EXT[e:lower()] = true end

local function is_static(path)
  for _, p in ipairs(CONFIG.static.prefixes) do
    if path:sub(1, #p) == p then return true end
  end
  local ext = path:match("%.([%w]+)$")
  return ext ~= nil and EXT[ext:lower()] == true
end

local function tracking(name)
  for _, pat in ipairs(CONFIG.strip_params) do
    if name:find(pat) then return true end
  end
  return false
end

local function logged_in(cookie)
  if not cookie then return false end
  for _, name in ipairs(CONFIG.login_cookies) do
    -- a cookie-pair "name=value" at the start or after "; "
    local at = 1
    while true do
      local s, e = cookie:find(name .. "=", at, true)
      if not s then break end
      if s == 1 or cookie:sub(s - 2, s - 1) == "; " or cookie:sub(s - 1, s - 1) == ";" then return true end
      at = e + 1
    end
  end
  return false
end

-- The origin allowed storing explicitly (no heuristic).
local function explicitly_cacheable(headers)
  local cc = (headers:get("Cache-Control") or ""):lower()
  return cc:find("max%-age=%d") ~= nil or cc:find("s%-maxage=%d") ~= nil or cc:find("public") ~= nil
    or headers:get("Expires") ~= nil
end

return {
  on_request = function(txn)
    if logged_in(txn.req.headers:get("Cookie")) then txn.cache:bypass() end
  end,

  on_cache_key = function(txn)
    local key = txn.cache.key
    local base, query = key:match("^([^?]*)%?(.*)$")
    if not query then return end
    local kept = {}
    for pair in query:gmatch("[^&]+") do
      local name = pair:match("^[^=]*")
      if not tracking(name) then kept[#kept + 1] = pair end
    end
    return #kept > 0 and (base .. "?" .. table.concat(kept, "&")) or base
  end,

  on_response = function(txn)
    local path = txn.req.path
    if path:sub(1, #CONFIG.api_prefix) == CONFIG.api_prefix then
      if not explicitly_cacheable(txn.resp.headers) then txn.cache:no_store() end
    elseif is_static(path) and txn.resp.status == 200 then
      txn.cache:store { ttl = CONFIG.static.ttl }
    end
  end,
}
