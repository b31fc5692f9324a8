-- moxy.shared: dictionaries shared by every worker thread of a moxy process,
-- declared in the configuration (`shared = { limits = "10m" }`) and reached
-- as `moxy.shared.limits`.  Over the C exports of core/base/shared_dict.c; the
-- cdef below must match core/api/ffi.h (checked by tools/check-ffi.lua).
-- Reference: docs/shared.md.
--
-- Every call is one short critical section on one stripe of the dict: it
-- does not yield, and values are copied out under the stripe's lock.
local ffi = require "ffi"
require "moxy.txn" -- checks that the binary's FFI ABI matches these modules

-- busted reloads modules between spec files; the C declarations stay
if not pcall(ffi.typeof, "moxy_shdict_stats_t") then
ffi.cdef [[
typedef struct moxy_shdict_s moxy_shdict_t;
typedef struct {
    size_t capacity, used, items, evictions, hits, misses;
} moxy_shdict_stats_t;
enum {
    MOXY_SHDICT_NIL = 0,
    MOXY_SHDICT_STRING = 1,
    MOXY_SHDICT_NUMBER = 2,
    MOXY_SHDICT_BOOLEAN = 3,
    MOXY_SHDICT_TABLE = 4
};
enum {
    MOXY_SHDICT_SET = 0,
    MOXY_SHDICT_ADD = 1,
    MOXY_SHDICT_REPLACE = 2
};
enum {
    MOXY_SHDICT_E_NO_MEMORY = 1,
    MOXY_SHDICT_E_EXISTS = 2,
    MOXY_SHDICT_E_NOT_FOUND = 3,
    MOXY_SHDICT_E_NOT_NUMBER = 4,
    MOXY_SHDICT_E_BAD_KEY = 5
};
moxy_shdict_t *moxy_ffi_shdict_find(const char *name, size_t nlen);
moxy_shdict_t *moxy_ffi_shdict_create(const char *name, size_t nlen, size_t size);
int moxy_ffi_shdict_get(moxy_shdict_t *d, const char *key, size_t klen, int *type, char **val,
                        size_t *vlen, double *num, int *must_free);
int moxy_ffi_shdict_store(moxy_shdict_t *d, int op, const char *key, size_t klen, int type,
                          const char *str, size_t slen, double num, double ttl, int *err);
int moxy_ffi_shdict_incr(moxy_shdict_t *d, const char *key, size_t klen, double by, double init,
                         int has_init, double ttl, double *out, int *err);
typedef struct {
    double retry_after, reset, remaining;
} moxy_gcra_t;
int moxy_ffi_shdict_gcra(moxy_shdict_t *d, const char *key, size_t klen, double interval, double burst,
                         double cost, moxy_gcra_t *out, int *err);
int moxy_ffi_shdict_ttl(moxy_shdict_t *d, const char *key, size_t klen, double *ttl);
int moxy_ffi_shdict_expire(moxy_shdict_t *d, const char *key, size_t klen, double ttl);
int moxy_ffi_shdict_keys(moxy_shdict_t *d, int max, char **buf, size_t *len, int *count);
void moxy_ffi_shdict_flush_all(moxy_shdict_t *d);
void moxy_ffi_shdict_stats(moxy_shdict_t *d, moxy_shdict_stats_t *out);
void moxy_ffi_shdict_free(void *p);
]]
end

local C = ffi.C
local has_buffer, sbuf = pcall(require, "string.buffer")

local OK, DECLINED = 0, -3
local T_NIL, T_STRING, T_NUMBER = C.MOXY_SHDICT_NIL, C.MOXY_SHDICT_STRING, C.MOXY_SHDICT_NUMBER
local T_BOOLEAN, T_TABLE = C.MOXY_SHDICT_BOOLEAN, C.MOXY_SHDICT_TABLE
local SET, ADD, REPLACE = C.MOXY_SHDICT_SET, C.MOXY_SHDICT_ADD, C.MOXY_SHDICT_REPLACE
local ERRORS = {
  [C.MOXY_SHDICT_E_NO_MEMORY] = "no memory",
  [C.MOXY_SHDICT_E_EXISTS] = "exists",
  [C.MOXY_SHDICT_E_NOT_FOUND] = "not found",
  [C.MOXY_SHDICT_E_NOT_NUMBER] = "not a number",
  [C.MOXY_SHDICT_E_BAD_KEY] = "bad key",
}
local MAX_KEY = 65535
local INT_MAX = 2147483647

-- Out-parameters and buffers, made once per VM: get/set/incr allocate
-- nothing but the string they return.
local VALUE_BUF_SIZE = 16384 -- longer values come in a buffer C mallocs
local value_buf = ffi.new("char[?]", VALUE_BUF_SIZE)
local type_out = ffi.new("int[1]")
local val_out = ffi.new("char *[1]")
local len_out = ffi.new("size_t[1]")
local num_out = ffi.new("double[1]")
local free_out = ffi.new("int[1]")
local err_out = ffi.new("int[1]")
local count_out = ffi.new("int[1]")
local stats_out = ffi.new("moxy_shdict_stats_t")
local size_ptr = ffi.typeof("size_t *")
local SIZE_T = ffi.sizeof("size_t")
local encoder = has_buffer and sbuf.new() or nil
local decoder = has_buffer and sbuf.new() or nil

local ffi_string, type, tostring, error, pcall, tonumber = ffi.string, type, tostring, error, pcall, tonumber
local floor = math.floor

-- Dict objects -------------------------------------------------------------

local Dict = {}
Dict.__index = Dict

-- Raise "shared.NAME:method: msg" for a wrong call.  lvl blames as
-- error's level does, seen from the caller: 2 is the caller's caller.
local function misuse(self, method, msg, lvl)
  error(self._name .. ":" .. method .. ": " .. msg, lvl + 1)
end

-- The C dict of self; raises for dict.get(...) instead of dict:get(...).
local function dict_of(self, method, lvl)
  if type(self) ~= "table" or self._d == nil then
    error("moxy.shared: call dict methods with ':' (dict:" .. method .. "(...))", lvl + 1)
  end
  return self._d
end

local function check_key(self, key, method, lvl)
  if type(key) ~= "string" then misuse(self, method, "key must be a string, got " .. type(key), lvl + 1) end
  local n = #key
  if n == 0 then misuse(self, method, "key must not be empty", lvl + 1) end
  if n > MAX_KEY then misuse(self, method, "key is longer than " .. MAX_KEY .. " bytes", lvl + 1) end
end

-- ttl in seconds: nil or 0 never expires.
local function check_ttl(self, ttl, method, lvl)
  if ttl == nil then return 0 end
  if type(ttl) ~= "number" or not (ttl >= 0) or ttl == math.huge then
    misuse(self, method, "ttl must be a number of seconds >= 0 (0: never expires), got " .. tostring(ttl),
      lvl + 1)
  end
  return ttl
end

--- dict:get(key) -> the value (string, number, boolean or table), or nil
-- when absent or expired.  A table comes back as a new copy.
function Dict:get(key)
  local d = dict_of(self, "get", 2)
  check_key(self, key, "get", 2)
  val_out[0] = value_buf
  len_out[0] = VALUE_BUF_SIZE
  local rc = C.moxy_ffi_shdict_get(d, key, #key, type_out, val_out, len_out, num_out, free_out)
  if rc ~= OK then
    if rc == DECLINED then return nil end
    return nil, "no memory"
  end
  local t = type_out[0]
  if t == T_NUMBER then return num_out[0] end
  if t == T_BOOLEAN then return num_out[0] ~= 0 end
  local p, len = val_out[0], tonumber(len_out[0])
  local v, ok, err
  if t == T_STRING then
    v = ffi_string(p, len)
  elseif has_buffer then
    decoder:set(p, len)
    ok, v = pcall(decoder.decode, decoder)
    decoder:reset()
    if not ok then v, err = nil, "cannot decode the stored table" end
  end
  if free_out[0] ~= 0 then C.moxy_ffi_shdict_free(p) end
  return v, err
end

local function store(self, method, op, key, value, ttl)
  local d = dict_of(self, method, 3)
  check_key(self, key, method, 3)
  ttl = check_ttl(self, ttl, method, 3)
  local tv, rc = type(value), nil
  if tv == "string" then
    rc = C.moxy_ffi_shdict_store(d, op, key, #key, T_STRING, value, #value, 0, ttl, err_out)
  elseif tv == "number" then
    rc = C.moxy_ffi_shdict_store(d, op, key, #key, T_NUMBER, nil, 0, value, ttl, err_out)
  elseif tv == "boolean" then
    rc = C.moxy_ffi_shdict_store(d, op, key, #key, T_BOOLEAN, nil, 0, value and 1 or 0, ttl, err_out)
  elseif tv == "table" then
    if not has_buffer then misuse(self, method, "storing tables needs LuaJIT's string.buffer", 3) end
    encoder:reset()
    local ok, err = pcall(encoder.encode, encoder, value)
    if not ok then
      encoder:reset()
      misuse(self, method, "cannot store this table: " .. tostring(err), 3)
    end
    local p, len = encoder:ref()
    rc = C.moxy_ffi_shdict_store(d, op, key, #key, T_TABLE, p, len, 0, ttl, err_out)
    encoder:reset()
  elseif value == nil and op == SET then
    rc = C.moxy_ffi_shdict_store(d, op, key, #key, T_NIL, nil, 0, 0, 0, err_out)
  else
    misuse(self, method, "value must be a string, number, boolean or table"
      .. (op == SET and " (nil deletes)" or "") .. ", got " .. tv, 3)
  end
  if rc == OK then return true end
  return nil, ERRORS[err_out[0]] or "error"
end

--- dict:set(key, value[, ttl]) -> true, or nil, "no memory".  Stores value
-- (string, number, boolean or table) for ttl seconds (nil or 0: no expiry),
-- evicting the least recently used items of its stripe when full.  A nil
-- value deletes the key.
function Dict:set(key, value, ttl)
  local ok, err = store(self, "set", SET, key, value, ttl) -- not a tail call: errors blame the caller
  return ok, err
end

--- dict:add(key, value[, ttl]) -> true, or nil, "exists" (or "no memory").
-- Stores only when the key is absent (or expired).
function Dict:add(key, value, ttl)
  local ok, err = store(self, "add", ADD, key, value, ttl) -- not a tail call: errors blame the caller
  return ok, err
end

--- dict:replace(key, value[, ttl]) -> true, or nil, "not found" (or "no
-- memory").  Stores only when the key is present.
function Dict:replace(key, value, ttl)
  local ok, err = store(self, "replace", REPLACE, key, value, ttl) -- not a tail call: errors blame the caller
  return ok, err
end

--- dict:incr(key, by[, init[, ttl]]) -> the new number, or nil, err.
-- Adds `by` to the key's number atomically.  An absent key is created as
-- init + by (expiring after ttl seconds) when init is given, else the call
-- returns nil, "not found".  nil, "not a number" when the value is not a
-- number; an existing key keeps its ttl.
function Dict:incr(key, by, init, ttl)
  local d = dict_of(self, "incr", 2)
  check_key(self, key, "incr", 2)
  if type(by) ~= "number" then misuse(self, "incr", "by must be a number, got " .. type(by), 2) end
  local has_init = 1
  if init == nil then
    has_init, init = 0, 0
  elseif type(init) ~= "number" then
    misuse(self, "incr", "init must be a number or nil, got " .. type(init), 2)
  end
  ttl = check_ttl(self, ttl, "incr", 2)
  if C.moxy_ffi_shdict_incr(d, key, #key, by, init, has_init, ttl, num_out, err_out) ~= OK then
    return nil, ERRORS[err_out[0]] or "error"
  end
  return num_out[0]
end

--- dict:delete(key): removes the key (nothing happens when absent).
function Dict:delete(key)
  local d = dict_of(self, "delete", 2)
  check_key(self, key, "delete", 2)
  C.moxy_ffi_shdict_store(d, SET, key, #key, T_NIL, nil, 0, 0, 0, err_out)
end

--- dict:ttl(key) -> seconds the key has left (0: it never expires), or
-- nil, "not found".
function Dict:ttl(key)
  local d = dict_of(self, "ttl", 2)
  check_key(self, key, "ttl", 2)
  if C.moxy_ffi_shdict_ttl(d, key, #key, num_out) ~= OK then return nil, "not found" end
  return num_out[0]
end

--- dict:expire(key, ttl) -> true, or nil, "not found".  The key now expires
-- ttl seconds from now (0: never).
function Dict:expire(key, ttl)
  local d = dict_of(self, "expire", 2)
  check_key(self, key, "expire", 2)
  if ttl == nil then misuse(self, "expire", "ttl must be a number of seconds >= 0, got nil", 2) end
  ttl = check_ttl(self, ttl, "expire", 2)
  if C.moxy_ffi_shdict_expire(d, key, #key, ttl) ~= OK then return nil, "not found" end
  return true
end

--- dict:keys([max]) -> a list of up to max keys (default 1024; 0: all), in
-- no particular order.  Expired keys are left out.  Locks one stripe at a
-- time: on a busy dict, prefer a small max.
function Dict:keys(max)
  local d = dict_of(self, "keys", 2)
  if max == nil then
    max = 1024
  elseif type(max) ~= "number" or max < 0 or max ~= floor(max) then
    misuse(self, "keys", "max must be a whole number >= 0 (0: all), got " .. tostring(max), 2)
  end
  if max > INT_MAX then max = 0 end
  if C.moxy_ffi_shdict_keys(d, max, val_out, len_out, count_out) ~= OK then return nil, "no memory" end
  local out, p, off = {}, val_out[0], 0
  for i = 1, count_out[0] do
    local len = ffi.cast(size_ptr, p + off)[0]
    out[i] = ffi_string(p + off + SIZE_T, len)
    off = off + SIZE_T + floor((tonumber(len) + SIZE_T - 1) / SIZE_T) * SIZE_T
  end
  if p ~= nil then C.moxy_ffi_shdict_free(p) end
  return out
end

--- dict:flush_all(): removes every item (the stats counters stay).
function Dict:flush_all()
  C.moxy_ffi_shdict_flush_all(dict_of(self, "flush_all", 2))
end

--- dict:stats() -> { capacity, used, items, evictions, hits, misses }:
-- bytes (capacity, used), counts (the others); hits and misses count get.
function Dict:stats()
  C.moxy_ffi_shdict_stats(dict_of(self, "stats", 2), stats_out)
  local s = stats_out
  return {
    capacity = tonumber(s.capacity), used = tonumber(s.used), items = tonumber(s.items),
    evictions = tonumber(s.evictions), hits = tonumber(s.hits), misses = tonumber(s.misses),
  }
end

Dict.__tostring = function(self) return "moxy." .. self._name end

-- The module: moxy.shared.NAME -----------------------------------------------

local M = {}

local function new_dict(ptr, name)
  local dict = setmetatable({ _d = ptr, _name = "shared." .. name }, Dict)
  return dict
end

local function check_name(name, what)
  if type(name) ~= "string" or not name:match("^[%a_][%w_]*$") then
    error(what .. ": dict names are Lua identifiers, got " .. (type(name) == "string"
      and string.format("%q", name) or type(name)), 3)
  end
end

--- require("moxy.shared").create(name, size) -> the dict `name`, created
-- with a budget of `size` bytes (a number, or a size string like "64k") when
-- the process has none of that name; an existing one is returned as it is.
-- For tests (`moxy test`, where no configuration declares dicts) and tools;
-- scripts use the dicts the configuration declares.
local function create(name, size)
  check_name(name, "moxy.shared.create")
  local n = size
  if type(size) == "string" then n = require("moxy.config")._size(size) end
  if type(n) ~= "number" or n < 1 or n ~= floor(n) then
    error("moxy.shared.create: size must be a whole number of bytes >= 1 or a size like \"64k\", got "
      .. tostring(size), 2)
  end
  local ptr = C.moxy_ffi_shdict_create(name, #name, n)
  if ptr == nil then error("moxy.shared.create: out of memory", 2) end
  local d = rawget(M, name)
  if d == nil or name == "create" then
    d = new_dict(ptr, name)
    if name ~= "create" then rawset(M, name, d) end
  end
  return d
end

-- moxy.shared.NAME: the dict declared as NAME, made once per VM and kept in
-- M.  A dict called "create" wins over the function of that name.
setmetatable(M, {
  __index = function(_, name)
    if type(name) ~= "string" then
      error("moxy.shared[" .. tostring(name) .. "]: dict names are strings", 2)
    end
    local ptr = C.moxy_ffi_shdict_find(name, #name)
    if ptr ~= nil then
      local d = new_dict(ptr, name)
      if name ~= "create" then rawset(M, name, d) end
      return d
    end
    if name == "create" then return create end
    error(string.format('moxy.shared.%s: no shared dict "%s" (declare it in the config: shared = { %s = "10m" })',
      name, name, name), 2)
  end,
  __newindex = function(_, name)
    error("moxy.shared." .. tostring(name) .. ": dicts are declared in the config (shared = { ... }), not assigned", 2)
  end,
})

return M
