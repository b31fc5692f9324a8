-- moxy.fleet: shared-dict invalidations broadcast to every moxy node of the
-- fleet (fleet = {...} in the configuration; docs/fleet.md), loaded on
-- first use.  Each call applies at once to this node's dict, then queues a
-- message that the other nodes apply when it reaches them over Redis
-- pub/sub (fire-and-forget: a node not subscribed then never sees it).
-- Cache purges (moxy.cache.purge, purge_prefix) are broadcast by
-- themselves.
local ffi = require "ffi"
require "moxy.txn" -- checks that the binary's FFI ABI matches these modules

ffi.cdef [[
int moxy_ffi_fleet_dict(const char *name, size_t nlen, const char *key, size_t klen);
]]
local C = ffi.C

local M = {}

local NOT_BROADCAST = { [1] = "not broadcast: no fleet configured",
                        [2] = "not broadcast: the fleet's queue refused it (see the log)" }

local function call(what, dict, key)
  if type(dict) ~= "string" or dict == "" then error("moxy.fleet." .. what .. ": dict must be a dict's name", 3) end
  if key ~= nil and (type(key) ~= "string" or key == "") then
    error("moxy.fleet." .. what .. ": key must be a non-empty string", 3)
  end
  local rc = C.moxy_ffi_fleet_dict(dict, #dict, key, key and #key or 0)
  if rc == -1 then error("moxy.fleet." .. what .. ": no shared dict \"" .. dict .. "\"", 3) end
  if rc == -2 then error("moxy.fleet." .. what .. ": key too long (at most 65535 bytes)", 3) end
  return true, NOT_BROADCAST[rc]
end

--- moxy.fleet.delete(dict, key) -> true[, why it was not broadcast]: delete
-- key from moxy.shared[dict] here and on every node.  Any phase.
-- Usage: moxy.fleet.delete("sessions", sid)
function M.delete(dict, key)
  if key == nil then error("moxy.fleet.delete: key must be a non-empty string", 2) end
  return call("delete", dict, key)
end

--- moxy.fleet.flush(dict) -> true[, why it was not broadcast]: empty
-- moxy.shared[dict] here and on every node.  Any phase.
function M.flush(dict) return call("flush", dict, nil) end

return M
