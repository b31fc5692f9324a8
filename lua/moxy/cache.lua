-- moxy.cache: the HTTP cache from scripts (`moxy.cache`, loaded on first
-- use).  Objects are keyed as txn.cache.key shows (by default
-- "http://host/path?sorted&query").
local ffi = require "ffi"
require "moxy.txn" -- checks that the binary's FFI ABI matches these modules

ffi.cdef [[
int moxy_ffi_cache_purge(const char *key, size_t len, int prefix);
]]
local C = ffi.C

local M = {}

local function purge(what, key, prefix)
  if type(key) ~= "string" or key == "" then error("moxy.cache." .. what .. ": a non-empty string", 3) end
  local n = C.moxy_ffi_cache_purge(key, #key, prefix)
  if n < 0 then return nil, "no cache (configure cache = {...})" end
  return n
end

--- moxy.cache.purge(key) -> the number of objects dropped (every variant of
-- key), or nil, err without a cache.
function M.purge(key) return purge("purge", key, 0) end

--- moxy.cache.purge_prefix(prefix) -> the number of objects whose key starts
-- with prefix, dropped ("http://example.com/assets/" drops that directory).
function M.purge_prefix(prefix) return purge("purge_prefix", prefix, 1) end

return M
