-- path_routing.lua: send requests to upstream pools by path prefix.
--
-- Configure: edit the CONFIG block below.
--
--   routes  = { [prefix] = "pool" or { pool = "pool", strip_prefix = true } }
--     prefix        a path prefix, matched on whole segments: "/api" (or
--                   "/api/") matches "/api", "/api/" and "/api/v1/users", not
--                   "/apiary".  "/" matches every path (a catch-all).
--                   The longest matching prefix wins.
--     pool          a pool of `upstreams` in moxy's configuration (an unknown
--                   pool is an error on the request: a 500 and an error-log line)
--     strip_prefix  true: remove the prefix from the path sent to the origin
--                   ("/api/v1/users?x=1" -> "/v1/users?x=1"; "/api" -> "/");
--                   the query string is kept as it is
--   default = nil or "pool"
--     the pool for paths no prefix matches; nil: pick nothing, so the request
--     goes to the listener's pool or `default_upstream` as usual
--
-- Paths are matched as the client sent them (not percent-decoded).

-- CONFIG BEGIN
local CONFIG = {
  routes = {
    ["/api"] = "api",
    ["/static"] = { pool = "static", strip_prefix = true },
  },
  default = nil,
}
-- CONFIG END

-- At load: index the routes by prefix (without its trailing "/") and keep the
-- distinct prefix lengths, longest first.  A request then costs one hash
-- lookup per distinct length, however many routes there are.
local BY_PREFIX, LENGTHS = {}, {}
do
  local seen = {}
  for prefix, route in pairs(CONFIG.routes or {}) do
    if type(prefix) ~= "string" or prefix:sub(1, 1) ~= "/" then
      error("CONFIG.routes: prefix " .. tostring(prefix) .. " must start with /")
    end
    if type(route) == "string" then route = { pool = route } end
    if type(route) ~= "table" or type(route.pool) ~= "string" then
      error("CONFIG.routes[\"" .. prefix .. "\"]: a pool name or { pool = ..., strip_prefix = ... }")
    end
    local key = prefix:gsub("/+$", "") -- "/api/" -> "/api", "/" -> ""
    BY_PREFIX[key] = { pool = route.pool, strip = route.strip_prefix == true }
    if not seen[#key] then
      seen[#key] = true
      LENGTHS[#LENGTHS + 1] = #key
    end
  end
  table.sort(LENGTHS, function(a, b) return a > b end)
end
local DEFAULT = CONFIG.default
local SLASH = string.byte("/")

return {
  on_request = function(txn)
    local path = txn.req.path
    for i = 1, #LENGTHS do
      local n = LENGTHS[i]
      local route = BY_PREFIX[path:sub(1, n)]
      -- a whole-segment match: the path ends there or goes on with "/"
      if route and (#path == n or path:byte(n + 1) == SLASH) then
        txn.upstream:pick(route.pool)
        if route.strip and n > 0 then
          local rest = path:sub(n + 1)
          txn.req.path = rest == "" and "/" or rest
        end
        return
      end
    end
    if DEFAULT then txn.upstream:pick(DEFAULT) end
  end,
}
