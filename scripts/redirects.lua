-- redirects.lua: answer redirects from a table, without asking the origin.
--
-- Configure: edit the CONFIG block below.
--   status  the default status: 301 (permanent), 302 (temporary), 307 or 308
--           (the same, but the client keeps the method and body, e.g. a POST)
--   exact   = { [path] = target or { to = target, status = 302, keep_query = false } }
--           the path must equal `path` ("/old" does not match "/old/")
--   prefix  = { [prefix] = target or { to = target, status = ..., keep_query = ... } }
--           `prefix` matches on whole segments ("/blog" and "/blog/" both match
--           "/blog", "/blog/" and "/blog/2024/x", not "/blogroll"); the rest of
--           the path is appended to the target: "/blog/2024/x" -> "/articles/2024/x".
--           The longest matching prefix wins; exact entries are tried first.
--   target  a path ("/new") or an absolute URL ("https://docs.example.com")
--   keep_query  (default true) append the request's query string to the
--           target ("?" or, when the target has a query already, "&")
--
-- Paths are matched as the client sent them (not percent-decoded).

-- CONFIG BEGIN
local CONFIG = {
  status = 301,
  exact = {
    ["/old-page"] = "/new-page",
    ["/promo"] = { to = "/sale", status = 302 },
  },
  prefix = {
    ["/blog"] = "/articles",
    ["/docs"] = { to = "https://docs.example.com", status = 308 },
  },
}
-- CONFIG END

local STATUSES = { [301] = true, [302] = true, [303] = true, [307] = true, [308] = true }

-- one rule: { to = target, status = n, keep_query = bool }, checked at load
local function rule(where, key, v)
  if type(v) == "string" then v = { to = v } end
  local status = v.status or CONFIG.status or 301
  if type(v.to) ~= "string" or v.to == "" then
    error("CONFIG." .. where .. "[\"" .. key .. "\"]: a target or { to = ..., status = ... }")
  end
  if not STATUSES[status] then
    error("CONFIG." .. where .. "[\"" .. key .. "\"]: status must be 301, 302, 303, 307 or 308")
  end
  return { to = v.to, status = status, keep_query = v.keep_query ~= false }
end

local EXACT = {}
for path, v in pairs(CONFIG.exact or {}) do EXACT[path] = rule("exact", path, v) end

-- prefixes indexed without their trailing "/", with the distinct lengths
-- longest first: one hash lookup per length per request
local PREFIX, LENGTHS = {}, {}
do
  local seen = {}
  for prefix, v in pairs(CONFIG.prefix or {}) do
    local r = rule("prefix", prefix, v)
    r.to = r.to:gsub("/+$", "") -- the rest of the path brings its own "/"
    local key = prefix:gsub("/+$", "")
    PREFIX[key] = r
    if not seen[#key] then
      seen[#key] = true
      LENGTHS[#LENGTHS + 1] = #key
    end
  end
  table.sort(LENGTHS, function(a, b) return a > b end)
end
local SLASH = string.byte("/")

local function go(txn, r, target)
  local query = txn.req.query
  if r.keep_query and query and query ~= "" then
    target = target .. (target:find("?", 1, true) and "&" or "?") .. query
  end
  return txn:redirect(target, r.status)
end

return {
  on_request = function(txn)
    local path = txn.req.path
    local r = EXACT[path]
    if r then return go(txn, r, r.to) end
    for i = 1, #LENGTHS do
      local n = LENGTHS[i]
      r = PREFIX[path:sub(1, n)]
      if r and (#path == n or path:byte(n + 1) == SLASH) then
        local target = r.to .. path:sub(n + 1)
        return go(txn, r, target ~= "" and target or "/")
      end
    end
  end,
}
