-- moxy.url: split, build and resolve URLs (RFC 3986), pure Lua.
--
--   local url = require "moxy.url"
--   local u = url.parse("https://example.com:8443/a/b?x=1#top")
--   -- { scheme = "https", host = "example.com", port = 8443, path = "/a/b",
--   --   query = "x=1", fragment = "top" }
--   url.join("http://a/b/c/d;p?q", "../g")   --> "http://a/b/g"
--
-- Components are kept as written (not percent-decoded).  query and fragment
-- are nil when the URL has no "?" / "#" and "" when it has one with nothing
-- after.  An IPv6 host is returned without its brackets ("::1").

local M = {}

local type, error, tostring, tonumber, floor = type, error, tostring, tonumber, math.floor
local find, sub, match, lower, byte = string.find, string.sub, string.match, string.lower, string.byte
local concat = table.concat

--- url.parse(s) -> { scheme, userinfo, host, port, path, query, fragment }, or
-- nil, err.  Relative references parse too (scheme and host nil).  scheme is
-- lower-cased; port is a number (nil when absent or empty); path is "" when
-- empty.  Errors: not a string, spaces or control characters, a bad port or
-- IPv6 literal.
function M.parse(s)
  if type(s) ~= "string" then return nil, "url.parse: URL must be a string, got " .. type(s) end
  if find(s, "[%z\1- \127]") then return nil, "url.parse: space or control character in URL" end
  local u = {}
  local rest = s
  local hash = find(rest, "#", 1, true)
  if hash then
    u.fragment = sub(rest, hash + 1)
    rest = sub(rest, 1, hash - 1)
  end
  local qm = find(rest, "?", 1, true)
  if qm then
    u.query = sub(rest, qm + 1)
    rest = sub(rest, 1, qm - 1)
  end
  local scheme, after = match(rest, "^(%a[%w+.%-]*):(.*)$")
  if scheme then
    u.scheme = lower(scheme)
    rest = after
  end
  if sub(rest, 1, 2) == "//" then
    local slash = find(rest, "/", 3, true)
    local authority = sub(rest, 3, (slash or #rest + 1) - 1)
    rest = slash and sub(rest, slash) or ""
    local at = find(authority, "@[^@]*$")
    if at then
      u.userinfo = sub(authority, 1, at - 1)
      authority = sub(authority, at + 1)
    end
    local host, port
    if byte(authority, 1) == 91 then -- "[v6]"
      local v6, tail = match(authority, "^%[([^%]]*)%](.*)$")
      if not v6 or not find(v6, "^[%x:.]+$") and not find(v6, "^[vV]%x+%.") then
        return nil, "url.parse: bad IPv6 address in " .. s
      end
      host = v6
      if tail ~= "" then
        port = match(tail, "^:(%d*)$")
        if not port then return nil, "url.parse: bad port in " .. s end
      end
    else
      host, port = match(authority, "^([^:]*):(.*)$")
      if not host then
        host = authority
      elseif not find(port, "^%d*$") then
        return nil, "url.parse: bad port in " .. s
      end
    end
    u.host = host
    if port and port ~= "" then
      local n = tonumber(port)
      if n > 65535 then return nil, "url.parse: port out of range in " .. s end
      u.port = n
    end
  end
  u.path = rest
  return u
end
local parse = M.parse

local function check_string(t, k)
  local v = t[k]
  if v ~= nil and type(v) ~= "string" then
    error("url.build: " .. k .. " must be a string, got " .. type(v), 3)
  end
  return v
end

--- url.build(t) -> the URL string of the parts t = { scheme, userinfo, host,
-- port, path, query, fragment } (as url.parse returns, so that
-- build(parse(s)) == s, scheme case aside).  A nil path is "/" (but for a
-- "scheme:" without host); after a host, a path gets a leading "/".  A host
-- holding ":" is bracketed as IPv6.  Raises on
-- fields of the wrong type.
function M.build(t)
  if type(t) ~= "table" then error("url.build: argument must be a table, got " .. type(t), 2) end
  local scheme, userinfo, host = check_string(t, "scheme"), check_string(t, "userinfo"), check_string(t, "host")
  local path, query, fragment = check_string(t, "path"), check_string(t, "query"), check_string(t, "fragment")
  local port = t.port
  if port ~= nil and (type(port) ~= "number" or port ~= floor(port) or port < 0 or port > 65535) then
    error("url.build: port must be an integer in 0..65535, got " .. tostring(port), 2)
  end
  local out, n = {}, 0
  if scheme then out[1], out[2], n = scheme, ":", 2 end
  if host then
    n = n + 1; out[n] = "//"
    if userinfo then n = n + 1; out[n] = userinfo; n = n + 1; out[n] = "@" end
    if find(host, ":", 1, true) then
      n = n + 1; out[n] = "["; n = n + 1; out[n] = host; n = n + 1; out[n] = "]"
    else
      n = n + 1; out[n] = host
    end
    if port then n = n + 1; out[n] = ":"; n = n + 1; out[n] = tostring(port) end
    if path == nil then
      path = "/"
    elseif path ~= "" and byte(path, 1) ~= 47 then
      path = "/" .. path
    end
  elseif path == nil and not scheme then
    path = "/"
  end
  if path then n = n + 1; out[n] = path end
  if query then n = n + 1; out[n] = "?"; n = n + 1; out[n] = query end
  if fragment then n = n + 1; out[n] = "#"; n = n + 1; out[n] = fragment end
  return concat(out, "", 1, n)
end
local build = M.build

--- url.remove_dot_segments(path) -> path without "." and ".." segments (RFC 3986 5.2.4).
-- The RFC's loop, with a position in the input instead of a shorter copy of it
-- at each step: linear in the path (a path is what a client sends).
local function remove_dot_segments(input)
  local out, n, i, len = {}, 0, 1, #input
  while i <= len do
    local c3 = sub(input, i, i + 2)
    if c3 == "../" then
      i = i + 3
    elseif sub(c3, 1, 2) == "./" then
      i = i + 2
    elseif c3 == "/./" then
      i = i + 2 -- the input goes on with its "/"
    elseif c3 == "/.." and (i + 3 > len or byte(input, i + 3) == 47) then
      if n > 0 then out[n] = nil; n = n - 1 end
      if i + 3 > len then -- "/.." at the end: the input becomes "/"
        n = n + 1; out[n] = "/"
        break
      end
      i = i + 3 -- "/../": the input goes on with its "/"
    elseif c3 == "/." and i + 1 == len then -- "/." at the end: the input becomes "/"
      n = n + 1; out[n] = "/"
      break
    elseif i == len and c3 == "." or i + 1 == len and c3 == ".." then
      break
    else
      local _, e = find(input, "^/?[^/]*", i)
      n = n + 1; out[n] = sub(input, i, e)
      i = e + 1
    end
  end
  return concat(out, "", 1, n)
end
M.remove_dot_segments = remove_dot_segments

local function copy_authority(t, from)
  t.userinfo, t.host, t.port = from.userinfo, from.host, from.port
end

--- url.join(base, ref) -> the URL of reference `ref` resolved against the
-- absolute URL `base` (RFC 3986 5.2.2: "g", "../g", "/g", "//h/g", "?q", "#f",
-- "http://x/"), or nil, err when either does not parse or base has no scheme.
function M.join(base, ref)
  local b, err = parse(base)
  if not b then return nil, err end
  if not b.scheme then return nil, "url.join: base URL is not absolute: " .. base end
  local r
  r, err = parse(ref)
  if not r then return nil, err end
  local t = {}
  if r.scheme then
    t.scheme = r.scheme
    copy_authority(t, r)
    t.path = remove_dot_segments(r.path)
    t.query = r.query
  else
    if r.host then
      copy_authority(t, r)
      t.path = remove_dot_segments(r.path)
      t.query = r.query
    else
      if r.path == "" then
        t.path = b.path
        if r.query ~= nil then t.query = r.query else t.query = b.query end
      else
        if byte(r.path, 1) == 47 then
          t.path = remove_dot_segments(r.path)
        else
          -- 5.2.3 merge
          local merged
          if b.host and b.path == "" then
            merged = "/" .. r.path
          else
            merged = (match(b.path, "^(.*/)") or "") .. r.path
          end
          t.path = remove_dot_segments(merged)
        end
        t.query = r.query
      end
      copy_authority(t, b)
    end
    t.scheme = b.scheme
  end
  t.fragment = r.fragment
  return build(t)
end

return M
