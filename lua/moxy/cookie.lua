-- moxy.cookie: read the Cookie request header and build Set-Cookie values
-- (RFC 6265), pure Lua.
--
--   local cookie = require "moxy.cookie"
--   local sid = cookie.get(txn, "sid")
--   txn.resp.headers:add("Set-Cookie", cookie.build("sid", id,
--     { path = "/", max_age = 3600, secure = true, http_only = true, same_site = "Lax" }))

local M = {}

local type, error, tostring, pairs, floor = type, error, tostring, pairs, math.floor
local find, sub, byte, match, format, lower = string.find, string.sub, string.byte, string.match,
  string.format, string.lower
local os_date = os.date

-- The pair of `s` that starts at `pos`: next position (nil at the end), name,
-- value; name is nil for a malformed pair (no "=", or an empty name).
local function next_pair(s, pos)
  local semi = find(s, ";", pos, true)
  local stop = semi and semi - 1 or #s
  local eq = find(s, "=", pos, true)
  local name, value
  if eq and eq <= stop then
    name = match(sub(s, pos, eq - 1), "^%s*(.-)%s*$")
    if name == "" then
      name = nil
    else
      value = match(sub(s, eq + 1, stop), "^%s*(.-)%s*$")
      local n = #value
      if n >= 2 and byte(value, 1) == 34 and byte(value, n) == 34 then value = sub(value, 2, n - 1) end
    end
  end
  return semi and semi + 1, name, value
end

--- cookie.parse(header_value) -> table name -> value of a Cookie header
-- ("a=1; b=2").  Spaces around names and values are trimmed, a value in
-- double quotes loses them, the first of duplicate names wins, pairs without
-- "=" or without a name are skipped.  nil gives {}; a non-string gives nil, err.
function M.parse(s)
  local out = {}
  if s == nil then return out end
  if type(s) ~= "string" then return nil, "cookie.parse: header value must be a string, got " .. type(s) end
  local pos, name, value = 1, nil, nil
  while pos do
    pos, name, value = next_pair(s, pos)
    if name and out[name] == nil then out[name] = value end
  end
  return out
end

-- First value of cookie `want` in header value `s`, or nil.
local function find_in(s, want)
  local pos, name, value = 1, nil, nil
  while pos do
    pos, name, value = next_pair(s, pos)
    if name == want then return value end
  end
  return nil
end

--- cookie.get(txn, name) -> the value of cookie `name` in the request's Cookie
-- headers (all of them, in order, as if joined with "; "), or nil.
function M.get(txn, name)
  if type(name) ~= "string" then error("cookie.get: name must be a string, got " .. type(name), 2) end
  local headers = txn.req.headers
  local list = headers:get_all("Cookie")
  for i = 1, #list do
    local v = find_in(list[i], name)
    if v ~= nil then return v end
  end
  return nil
end

local DAYS = { "Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat" }
local MONTHS = { "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec" }

--- cookie.http_date(epoch) -> IMF-fixdate "Sun, 06 Nov 1994 08:49:37 GMT", as
-- os.date("!%a, %d %b %Y %H:%M:%S GMT") but in English whatever the C locale.
local function http_date(t)
  local d = os_date("!*t", t)
  return format("%s, %02d %s %04d %02d:%02d:%02d GMT", DAYS[d.wday], d.day, MONTHS[d.month], d.year,
    d.hour, d.min, d.sec)
end
M.http_date = http_date

local SAME_SITE = { strict = "Strict", lax = "Lax", none = "None" }
local OPTS = { path = true, domain = true, max_age = true, expires = true, secure = true,
               http_only = true, same_site = true }

-- token (RFC 7230): visible ASCII except separators
local TOKEN = "^[!#$%%&'*+%-.^_`|~%w]+$"
-- not a cookie-octet (RFC 6265 4.1.1): CTLs, space, DQUOTE, ",", ";", "\", non-ASCII
local NOT_OCTET = "[%z\1- \",;\\\127-\255]"
-- not allowed in an attribute value: CTLs and ";"
local NOT_AV = "[%z\1-\31;\127]"

local function attr_string(opts, k)
  local v = opts[k]
  if v == nil then return nil end
  if type(v) ~= "string" or v == "" or find(v, NOT_AV) then
    error("cookie.build: opts." .. k .. " must be a non-empty string without \";\" or control characters", 3)
  end
  return v
end

local function attr_number(opts, k)
  local v = opts[k]
  if v == nil then return nil end
  if type(v) ~= "number" or v ~= v or v == math.huge or v == -math.huge then
    error("cookie.build: opts." .. k .. " must be a number, got " .. tostring(v), 3)
  end
  return floor(v)
end

local function attr_bool(opts, k)
  local v = opts[k]
  if v ~= nil and type(v) ~= "boolean" then
    error("cookie.build: opts." .. k .. " must be a boolean, got " .. type(v), 3)
  end
  return v
end

--- cookie.build(name, value, opts) -> a Set-Cookie header value
-- "name=value; Path=..; Domain=..; Max-Age=..; Expires=..; Secure; HttpOnly; SameSite=..".
-- opts: path, domain (strings), max_age (seconds), expires (epoch seconds),
-- secure, http_only (booleans), same_site ("Strict", "Lax" or "None", which
-- needs secure).  Raises on a name that is not a token, a value with other
-- than cookie-octets (it may be wrapped in double quotes) or a bad option.
function M.build(name, value, opts)
  if type(name) ~= "string" or not find(name, TOKEN) then
    error("cookie.build: cookie name must be a token, got " .. format("%q", tostring(name)), 2)
  end
  if type(value) == "number" then value = tostring(value) end
  if type(value) ~= "string" then
    error("cookie.build: cookie value must be a string, got " .. type(value), 2)
  end
  local inner, vlen = value, #value
  if vlen >= 2 and byte(value, 1) == 34 and byte(value, vlen) == 34 then inner = sub(value, 2, vlen - 1) end
  if find(inner, NOT_OCTET) then
    error("cookie.build: cookie value holds characters outside cookie-octets: " .. format("%q", value), 2)
  end
  if opts == nil then return name .. "=" .. value end
  if type(opts) ~= "table" then error("cookie.build: opts must be a table, got " .. type(opts), 2) end
  for k in pairs(opts) do
    if not OPTS[k] then error("cookie.build: unknown option " .. tostring(k), 2) end
  end
  local path, domain = attr_string(opts, "path"), attr_string(opts, "domain")
  local max_age, expires = attr_number(opts, "max_age"), attr_number(opts, "expires")
  local secure, http_only = attr_bool(opts, "secure"), attr_bool(opts, "http_only")
  local same_site = opts.same_site
  if same_site ~= nil then
    local canon = type(same_site) == "string" and SAME_SITE[lower(same_site)]
    if not canon then
      error("cookie.build: opts.same_site must be \"Strict\", \"Lax\" or \"None\", got "
        .. tostring(same_site), 2)
    end
    if canon == "None" and not secure then
      error("cookie.build: same_site \"None\" needs secure = true (browsers reject it otherwise)", 2)
    end
    same_site = canon
  end
  local parts = { name, "=", value }
  local n = 3
  if path then parts[n + 1] = "; Path="; parts[n + 2] = path; n = n + 2 end
  if domain then parts[n + 1] = "; Domain="; parts[n + 2] = domain; n = n + 2 end
  if max_age then parts[n + 1] = "; Max-Age="; parts[n + 2] = format("%d", max_age); n = n + 2 end
  if expires then parts[n + 1] = "; Expires="; parts[n + 2] = http_date(expires); n = n + 2 end
  if secure then parts[n + 1] = "; Secure"; n = n + 1 end
  if http_only then parts[n + 1] = "; HttpOnly"; n = n + 1 end
  if same_site then parts[n + 1] = "; SameSite="; parts[n + 2] = same_site; n = n + 2 end
  return table.concat(parts, "", 1, n)
end

return M
