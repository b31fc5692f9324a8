-- moxy.query: parse and build application/x-www-form-urlencoded query
-- strings, pure Lua.
--
--   local query = require "moxy.query"
--   local args = query.parse(txn.req.query)    -- { page = "2", tag = { "a", "b" } }
--   txn.req.query = query.encode(args)

local M = {}

local type, error, tostring, pairs, tonumber = type, error, tostring, pairs, tonumber
local find, sub, gsub, char, format = string.find, string.sub, string.gsub, string.char,
  string.format
local sort, concat = table.sort, table.concat

-- byte -> "%XX" for every byte outside the unreserved set A-Za-z0-9-._~
local ESC = {}
for b = 0, 255 do
  local c = char(b)
  if not find(c, "^[A-Za-z0-9%-%._~]$") then ESC[c] = format("%%%02X", b) end
end

local function hex_byte(h) return char(tonumber(h, 16)) end

--- query.escape(s) -> s percent-encoded: every byte but A-Za-z0-9-._~ becomes %XX.
function M.escape(s)
  if type(s) ~= "string" then
    if type(s) ~= "number" then error("query.escape: argument must be a string, got " .. type(s), 2) end
    s = tostring(s)
  end
  return (gsub(s, "[^A-Za-z0-9%-%._~]", ESC))
end
local escape = M.escape

--- query.unescape(s) -> s with "+" as space and %XX decoded (a "%" not
-- followed by two hex digits stays as it is).
function M.unescape(s)
  if type(s) ~= "string" then error("query.unescape: argument must be a string, got " .. type(s), 2) end
  if not find(s, "[%%+]") then return s end
  s = gsub(s, "%+", " ")
  return (gsub(s, "%%(%x%x)", hex_byte))
end
local unescape = M.unescape

--- query.parse(qs, max) -> table name -> value, or a list of values (in
-- order) for a repeated name.  Names and values are percent-decoded ("+" is
-- a space); "a" without "=" gives a = ""; empty pairs and empty names are
-- skipped.  max (optional) caps the number of pairs read.  nil gives {}; a
-- non-string gives nil, err.
function M.parse(qs, max)
  local out = {}
  if qs == nil then return out end
  if type(qs) ~= "string" then return nil, "query.parse: query must be a string, got " .. type(qs) end
  local pos, len, count = 1, #qs, 0
  max = max or len + 1
  while pos <= len and count < max do
    local amp = find(qs, "&", pos, true)
    local stop = amp and amp - 1 or len
    if stop >= pos then
      local eq = find(qs, "=", pos, true)
      local name, value
      if eq and eq <= stop then
        name, value = sub(qs, pos, eq - 1), unescape(sub(qs, eq + 1, stop))
      else
        name, value = sub(qs, pos, stop), ""
      end
      if name ~= "" then
        name = unescape(name)
        count = count + 1
        local old = out[name]
        if old == nil then
          out[name] = value
        elseif type(old) == "table" then
          old[#old + 1] = value
        else
          out[name] = { old, value }
        end
      end
    end
    if not amp then break end
    pos = amp + 1
  end
  return out
end

local function key_less(a, b)
  return tostring(a) < tostring(b)
end

local function value_string(fn, k, v)
  local t = type(v)
  if t == "string" then return escape(v) end
  if t == "number" then return escape(tostring(v)) end
  error(fn .. ": bad value for \"" .. tostring(k) .. "\": " .. t, 3)
end

--- query.encode(tbl) -> a query string "a=1&b=x%20y&t=1&t=2": keys sorted, a
-- list value gives one pair per item, true gives the bare key, false is
-- skipped; names and values percent-encoded (all but A-Za-z0-9-._~).
-- Raises on values that are not strings, numbers, booleans or lists of them.
function M.encode(tbl)
  if type(tbl) ~= "table" then error("query.encode: argument must be a table, got " .. type(tbl), 2) end
  local keys, n = {}, 0
  for k in pairs(tbl) do
    local kt = type(k)
    if kt ~= "string" and kt ~= "number" then error("query.encode: bad key type " .. kt, 2) end
    n = n + 1
    keys[n] = k
  end
  sort(keys, key_less)
  local out, m = {}, 0
  for i = 1, n do
    local k = keys[i]
    local ek = escape(tostring(k))
    local v = tbl[k]
    if type(v) == "table" then
      for j = 1, #v do
        local item = v[j]
        m = m + 1
        if item == true then
          out[m] = ek
        elseif item == false then
          m = m - 1
        else
          out[m] = ek .. "=" .. value_string("query.encode", k, item)
        end
      end
    elseif v == true then
      m = m + 1
      out[m] = ek
    elseif v ~= false then
      m = m + 1
      out[m] = ek .. "=" .. value_string("query.encode", k, v)
    end
  end
  return concat(out, "&", 1, m)
end

return M
