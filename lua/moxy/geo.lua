-- moxy.geo: MaxMind (GeoIP2 / GeoLite2 / any .mmdb) lookups and geo-based
-- routing helpers.  The databases are the configuration's
-- `geoip = { city = "GeoLite2-City.mmdb", asn = "GeoLite2-ASN.mmdb" }`,
-- opened once and shared by every worker (core/api/geoip.c); the cdef below
-- must match core/api/ffi.h (checked by tools/check-ffi.lua).
--
--   local g = txn.client.geo          -- lazy: each field read once per request
--   if g.country == "DE" then ... end -- g.continent, g.city, g.asn, g.is_anonymous, ...
--   local rec, err = moxy.geo.lookup("81.2.69.142", "city")  -- the whole record
--
--   local regions = moxy.geo.regions {
--     eu = { lat = 50.11, lon = 8.68, pool = "eu" },
--     us = { lat = 39.04, lon = -77.49, pool = "us" },
--   }
--   on_upstream = function(txn) regions:pick(txn) end  -- nearest region with a live peer
local ffi = require "ffi"
require "moxy.txn" -- checks that the binary's FFI ABI matches these modules

if not pcall(ffi.typeof, "moxy_ffi_geo_value_t") then
ffi.cdef [[
enum { MOXY_FFI_GEO_NONE = 0, MOXY_FFI_GEO_STRING = 1, MOXY_FFI_GEO_NUMBER = 2, MOXY_FFI_GEO_BOOLEAN = 3 };
typedef struct {
    int type;
    const char *s;
    size_t len;
    double n;
} moxy_ffi_geo_value_t;
typedef struct {
    int type;
    unsigned size;
    const char *s;
    size_t len;
    double n;
    unsigned long long u, u_hi;
} moxy_ffi_geo_item_t;
int moxy_ffi_geo_client(moxy_req_t *r, int field, moxy_ffi_geo_value_t *out);
int moxy_ffi_geo_field(const char *ip, size_t iplen, int field, moxy_ffi_geo_value_t *out);
int moxy_ffi_geo_count(void);
const char *moxy_ffi_geo_name(int i);
int moxy_ffi_geo_lookup(const char *ip, size_t iplen, int db, moxy_ffi_geo_item_t *items, int max, int *n,
                        char *err, size_t errlen);
]]
end

local C = ffi.C
local ffi_string = ffi.string
local type, error, pairs, ipairs, tostring, tonumber, setmetatable =
  type, error, pairs, ipairs, tostring, tonumber, setmetatable
local sin, cos, asin, sqrt, rad, min = math.sin, math.cos, math.asin, math.sqrt, math.rad, math.min
local tohex = require("bit").tohex

local OK, DECLINED = 0, -3
local STRING, NUMBER, BOOLEAN = 1, 2, 3

local M = {}

-- txn.client.geo's fields, in core/api/geoip.c's client_fields order.
local FIELDS = { "country", "country_name", "continent", "continent_name", "city", "subdivision",
                 "subdivision_name", "postal", "lat", "lon", "accuracy_radius", "time_zone", "registered_country",
                 "asn", "as_org", "is_anonymous", "is_anonymous_vpn", "is_hosting_provider", "is_public_proxy",
                 "is_tor_exit_node", "is_residential_proxy" }
local FIELD_ID = {}
for i, name in ipairs(FIELDS) do FIELD_ID[name] = i - 1 end

local val = ffi.new("moxy_ffi_geo_value_t")

local function value()
  local t = val.type
  if t == STRING then
    local s = ffi_string(val.s, val.len)
    return s
  end
  if t == NUMBER then return val.n end
  if t == BOOLEAN then return val.n ~= 0 end
  return nil
end

--- The value of txn.client.geo[name] for the request at r, or nil.
function M.client_field(r, name)
  local id = FIELD_ID[name]
  if not id then return nil end
  if C.moxy_ffi_geo_client(r, id, val) ~= OK then return nil end
  return value()
end

--- moxy.geo.get(ip, field) -> one of txn.client.geo's fields (country,
-- continent, city, lat, asn, is_anonymous, ...) for any address, from the
-- first database that has it; nil when unknown or ip is not an address.
-- Much cheaper than moxy.geo.lookup (no table is built).
function M.get(ip, name)
  if type(ip) ~= "string" then error("moxy.geo.get: ip must be a string", 2) end
  local id = FIELD_ID[name]
  if not id then error("moxy.geo.get: unknown field " .. tostring(name), 2) end
  if C.moxy_ffi_geo_field(ip, #ip, id, val) ~= OK then return nil end
  return value()
end

-- Databases by name -> index.
local function db_index(name)
  for i = 0, C.moxy_ffi_geo_count() - 1 do
    if ffi_string(C.moxy_ffi_geo_name(i)) == name then return i end
  end
  return nil
end

local MAX_ITEMS = 4096
local items = ffi.new("moxy_ffi_geo_item_t[?]", MAX_ITEMS)
local nitems = ffi.new("int[1]")
local ERR_LEN = 256
local errbuf = ffi.new("char[?]", ERR_LEN)

local MAP, ARRAY, UTF8, BYTES, UINT64, UINT128, BOOL = 7, 11, 2, 4, 9, 10, 14
local TWO53 = 2 ^ 53

-- The value starting at items[i] -> value, index after it.
local function decode(i)
  local it = items[i]
  local t = it.type
  if t == MAP then
    local out = {}
    local j = i + 1
    for _ = 1, it.size do
      local k = ffi_string(items[j].s, items[j].len)
      out[k], j = decode(j + 1)
    end
    return out, j
  elseif t == ARRAY then
    local out = {}
    local j = i + 1
    for n = 1, it.size do out[n], j = decode(j) end
    return out, j
  elseif t == UTF8 or t == BYTES then
    return ffi_string(it.s, it.len), i + 1
  elseif t == UINT64 then
    -- exact as a number up to 2^53, else its decimal text
    if it.u < TWO53 then return tonumber(it.u), i + 1 end
    return (tostring(it.u):gsub("ULL$", "")), i + 1
  elseif t == UINT128 then
    return "0x" .. tohex(it.u_hi, 16) .. tohex(it.u, 16), i + 1
  elseif t == BOOL then
    return it.n ~= 0, i + 1
  end
  return it.n, i + 1
end

local function lookup_one(ip, db)
  local rc = C.moxy_ffi_geo_lookup(ip, #ip, db, items, MAX_ITEMS, nitems, errbuf, ERR_LEN)
  if rc == DECLINED then return nil, "not found" end
  if rc ~= OK then return nil, ffi_string(errbuf) end
  return (decode(0))
end

--- moxy.geo.lookup(ip [, db]) -> the record (a table as the database holds
-- it), or nil, "not found" / "invalid address" / "no database named ..." /
-- "database error: ...".  Without db, the records of every database merged
-- (top-level keys; the first database in name order wins).
function M.lookup(ip, db)
  if type(ip) ~= "string" then error("moxy.geo.lookup: ip must be a string", 2) end
  if db ~= nil then
    if type(db) ~= "string" then error("moxy.geo.lookup: db must be a string", 2) end
    local i = db_index(db)
    if not i then return nil, "no database named \"" .. db .. "\"" end
    return lookup_one(ip, i)
  end
  local n = C.moxy_ffi_geo_count()
  if n == 0 then return nil, "no geoip database is configured" end
  local out, found, last_err
  for i = 0, n - 1 do
    local rec, err = lookup_one(ip, i)
    if rec then
      out = out or {}
      found = true
      for k, v in pairs(rec) do
        if out[k] == nil then out[k] = v end
      end
    elseif err ~= "not found" then
      last_err = err
      if err == "invalid address" then return nil, err end
    end
  end
  if found then return out end
  return nil, last_err or "not found"
end

--- moxy.geo.databases() -> the configured database names, in name order.
function M.databases()
  local out = {}
  for i = 0, C.moxy_ffi_geo_count() - 1 do out[#out + 1] = ffi_string(C.moxy_ffi_geo_name(i)) end
  return out
end

--- moxy.geo.distance(lat1, lon1, lat2, lon2) -> great-circle distance in km.
function M.distance(lat1, lon1, lat2, lon2)
  local dlat, dlon = rad(lat2 - lat1), rad(lon2 - lon1)
  local a = sin(dlat / 2) ^ 2 + cos(rad(lat1)) * cos(rad(lat2)) * sin(dlon / 2) ^ 2
  return 2 * 6371.0088 * asin(min(1, sqrt(a)))
end

local usable -- moxy.upstream.usable, loaded on first use

-- Whether a region's pool has a peer that can take a request now.
local function live(pool)
  if not usable then usable = require("moxy.upstream").usable end
  local n = usable(pool)
  return n ~= nil and n > 0
end

-- Region r may take the request: not excluded, its pool live.
local function ok(r, exclude)
  return r and not (exclude and exclude[r.name]) and live(r.pool)
end

local Regions = {}
Regions.__index = Regions

--- moxy.geo.regions{ name = { lat, lon, pool }, ... } -> a region set.
-- Optional per region: `countries` / `continents` lists that belong to it
-- whatever the distance (e.g. a data-residency rule).  Options (second
-- argument): `default` = the region for clients without a location.
function M.regions(list, opts)
  if type(list) ~= "table" then error("moxy.geo.regions: expected a table of regions", 2) end
  local rs = setmetatable({ list = {}, by_name = {}, by_country = {}, by_continent = {},
    default = opts and opts.default }, Regions)
  local names = {}
  for name in pairs(list) do names[#names + 1] = name end
  table.sort(names)
  for _, name in ipairs(names) do
    local r = list[name]
    if type(r) ~= "table" or type(r.lat) ~= "number" or type(r.lon) ~= "number" then
      error("moxy.geo.regions: region " .. tostring(name) .. " needs numeric lat and lon", 2)
    end
    local reg = { name = name, lat = r.lat, lon = r.lon, pool = r.pool or name }
    rs.list[#rs.list + 1] = reg
    rs.by_name[name] = reg
    for _, c in ipairs(r.countries or {}) do rs.by_country[c] = reg end
    for _, c in ipairs(r.continents or {}) do rs.by_continent[c] = reg end
  end
  if rs.default and not list[rs.default] then
    error("moxy.geo.regions: default region " .. tostring(rs.default) .. " is not in the list", 2)
  end
  return rs
end

--- regions:nearest_to(lat, lon [, live_only]) -> the regions sorted by
-- distance (nearest first) as a list of { region, km }; with live_only,
-- only those whose pool has a usable peer.
function Regions:nearest_to(lat, lon, live_only)
  local out = {}
  for _, r in ipairs(self.list) do
    if not live_only or live(r.pool) then out[#out + 1] = { region = r, km = M.distance(lat, lon, r.lat, r.lon) } end
  end
  table.sort(out, function(a, b) return a.km < b.km end)
  return out
end

--- regions:nearest(txn [, exclude]) -> name, region for this client, or
-- nil when no region has a live pool.  The region its country or continent
-- is listed in, when that region's pool is live; else the nearest live
-- region to the client's location (or, without one, to the listed region's
-- location); else the default region, else the first live one.  exclude: a
-- set of region names to pass over (e.g. the ones a retry already tried).
function Regions:nearest(txn, exclude)
  local g = txn.client.geo
  local c = g.country
  local listed = c and self.by_country[c]
  if ok(listed, exclude) then return listed.name, listed end
  local cont = g.continent
  local by_cont = cont and self.by_continent[cont]
  if not listed then listed = by_cont end
  if ok(by_cont, exclude) then return by_cont.name, by_cont end
  local lat, lon = g.lat, g.lon
  if not (lat and lon) and listed then lat, lon = listed.lat, listed.lon end
  if lat and lon then
    local best, best_km
    for _, reg in ipairs(self.list) do
      local km = M.distance(lat, lon, reg.lat, reg.lon)
      if (not best_km or km < best_km) and ok(reg, exclude) then best, best_km = reg, km end
    end
    if best then return best.name, best end
  end
  local default = self.default and self.by_name[self.default]
  if ok(default, exclude) then return default.name, default end
  for _, reg in ipairs(self.list) do
    if ok(reg, exclude) then return reg.name, reg end
  end
  return nil
end

--- regions:pick(txn [, exclude]) -> name: txn.upstream:pick the pool of
-- regions:nearest(txn, exclude) (nothing when no region is live: the
-- request keeps its pool).
function Regions:pick(txn, exclude)
  local name, r = self:nearest(txn, exclude)
  if r then txn.upstream:pick(r.pool) end
  return name
end

--- regions:get(name) -> the region called name ({name, lat, lon, pool}), or nil.
function Regions:get(name)
  return self.by_name[name]
end

local function by_field(field, fn)
  return function(map, default)
    if type(map) ~= "table" then error("moxy.geo." .. fn .. ": expected a table", 2) end
    return function(txn)
      local v = txn.client.geo[field]
      local out = v and map[v]
      if out == nil then out = default end
      return out
    end
  end
end

--- moxy.geo.by_country{ DE = "eu", US = "us" }, default) -> function(txn)
-- returning the value of the client's country (ISO code), or default.
M.by_country = by_field("country", "by_country")

--- moxy.geo.by_continent({ EU = "eu", NA = "us" }, default) -> function(txn)
-- returning the value of the client's continent code, or default.
M.by_continent = by_field("continent", "by_continent")

return M
