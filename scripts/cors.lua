-- cors.lua: Cross-Origin Resource Sharing at the edge.
--
-- * Preflights (OPTIONS with Origin and Access-Control-Request-Method) are
--   answered by moxy: 204 with the Access-Control-Allow-* headers when the
--   Origin is allowed, 403 when it is not.  The origin never sees them.
-- * Other requests go to the origin as usual; when their Origin is allowed
--   the response gets Access-Control-Allow-Origin (and Vary: Origin,
--   Access-Control-Allow-Credentials, Access-Control-Expose-Headers as
--   configured), replacing any the origin sent.  A request from an origin
--   that is not allowed gets no CORS headers, so the browser blocks it.
--   Unless the answer is "*" for everyone, every response gets Vary: Origin
--   so that shared caches keep one copy per Origin.
--
-- Configure: edit the CONFIG block below.
--   origins         "*" (any origin) or a list of exact origins, as browsers
--                   send them: { "https://app.example.com", "http://localhost:3000" }
--   methods         methods allowed for cross-origin requests
--   headers         request headers allowed, or "*" to allow whatever the
--                   preflight asks for (echoes Access-Control-Request-Headers)
--   expose_headers  response headers the page's script may read (besides the
--                   CORS-safelisted ones); {} for none
--   max_age         seconds the browser may cache a preflight (nil: not sent)
--   credentials     true: allow cookies / HTTP auth (Access-Control-Allow-
--                   Credentials: true); with origins = "*" the request's Origin
--                   is echoed back instead of "*", as browsers require

-- CONFIG BEGIN
local CONFIG = {
  origins = { "https://app.example.com" },
  methods = { "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE" },
  headers = { "Content-Type", "Authorization" },
  expose_headers = {},
  max_age = 600,
  credentials = false,
}
-- CONFIG END

-- computed once, at load
local ANY = CONFIG.origins == "*"
local ALLOWED = {}
if not ANY then
  if type(CONFIG.origins) ~= "table" then error("CONFIG.origins must be \"*\" or a list of origins") end
  for _, o in ipairs(CONFIG.origins) do ALLOWED[o] = true end
end
local CREDENTIALS = CONFIG.credentials == true
-- "*" can be sent as such only without credentials; otherwise echo the Origin
local STAR = ANY and not CREDENTIALS
local METHODS = table.concat(CONFIG.methods or {}, ", ")
local REFLECT_HEADERS = CONFIG.headers == "*"
local HEADERS = not REFLECT_HEADERS and table.concat(CONFIG.headers or {}, ", ") or nil
local EXPOSE = table.concat(CONFIG.expose_headers or {}, ", ")
local MAX_AGE = CONFIG.max_age and tostring(CONFIG.max_age)

-- the Access-Control-Allow-Origin value for this Origin, or nil: not allowed
local function allow_origin(origin)
  if not origin then return nil end
  if STAR then return "*" end
  if ANY or ALLOWED[origin] then return origin end
  return nil
end

-- add `token` to the response's Vary unless it is there already
local function vary(h, token)
  local v = table.concat(h:get_all("Vary"), ", ") -- the origin may send several
  if v == "" then return h:set("Vary", token) end
  local lower = v:lower()
  if lower:find("*", 1, true) then return end
  for t in lower:gmatch("[^,%s]+") do
    if t == token:lower() then return end
  end
  h:set("Vary", v .. ", " .. token)
end

local function preflight(txn, origin)
  local allow = allow_origin(origin)
  if not allow then
    return txn:respond(403, "CORS: origin not allowed\n", { ["Content-Type"] = "text/plain", ["Vary"] = "Origin" })
  end
  local h = {
    ["Access-Control-Allow-Origin"] = allow,
    ["Access-Control-Allow-Methods"] = METHODS,
  }
  local vary_value = STAR and nil or "Origin"
  if REFLECT_HEADERS then
    local asked = txn.req.headers:get("Access-Control-Request-Headers")
    if asked then h["Access-Control-Allow-Headers"] = asked end
    vary_value = vary_value and vary_value .. ", Access-Control-Request-Headers" or "Access-Control-Request-Headers"
  elseif HEADERS ~= "" then
    h["Access-Control-Allow-Headers"] = HEADERS
  end
  if vary_value then h["Vary"] = vary_value end
  if MAX_AGE then h["Access-Control-Max-Age"] = MAX_AGE end
  if CREDENTIALS then h["Access-Control-Allow-Credentials"] = "true" end
  return txn:respond(204, "", h)
end

return {
  on_request = function(txn)
    local req = txn.req
    local origin = req.headers:get("Origin")
    if not origin then return end
    if req.method == "OPTIONS" and req.headers:get("Access-Control-Request-Method") then
      return preflight(txn, origin)
    end
    txn.ctx.cors_allow = allow_origin(origin) -- for on_response
  end,

  on_response = function(txn)
    local h = txn.resp.headers
    -- unless the answer is "*" for everyone, it depends on Origin: tell caches
    if not STAR then vary(h, "Origin") end
    local allow = txn.ctx.cors_allow
    if not allow then return end
    h:set("Access-Control-Allow-Origin", allow)
    if CREDENTIALS then h:set("Access-Control-Allow-Credentials", "true") end
    if EXPOSE ~= "" then h:set("Access-Control-Expose-Headers", EXPOSE) end
  end,
}
