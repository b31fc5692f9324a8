-- moxy.metrics: counters of a script's own in moxy's /metrics (Prometheus
-- text), added to by every worker.  moxy's own Lua modules (moxy.ratelimit,
-- moxy.acl, moxy.waf) count through it too.  Over core/base/counters.h.
--
--   moxy.metrics.inc("shop_logins_total", { result = "ok" })
--   moxy.metrics.inc("shop_bytes_total", nil, #body, "Bytes of uploads")
--
-- At most 4096 counters (name and labels together) in a moxy: past that,
-- new ones are dropped and counted in moxy_counters_refused_total.  Never
-- make a label of a client address or anything a client chooses freely.
local ffi = require "ffi"
require "moxy.txn" -- checks that the binary's FFI ABI matches these modules

ffi.cdef [[
int moxy_ffi_counter(const char *name, size_t nlen, const char *labels, size_t llen, const char *help);
void moxy_ffi_counter_add(int id, double by);
double moxy_ffi_counter_get(int id);
]]

local C = ffi.C
local type, tostring, error, pairs = type, tostring, error, pairs
local sort, concat = table.sort, table.concat

local M = {}

local ids = {}    -- "name{labels}" -> id (per VM); -1: refused
local nids = 0
local IDS_MAX = 8192

local function escape(v)
  return (tostring(v):gsub('[\\"\n]', { ["\\"] = "\\\\", ['"'] = '\\"', ["\n"] = "\\n" }))
end

-- The label text of a table: keys sorted, values escaped.
local function label_text(labels)
  if labels == nil then return "" end
  if type(labels) ~= "table" then error("moxy.metrics: labels must be a table", 3) end
  local keys = {}
  for k in pairs(labels) do keys[#keys + 1] = k end
  if #keys == 0 then return "" end
  sort(keys)
  local parts = {}
  for i, k in ipairs(keys) do
    if type(k) ~= "string" or not k:find("^[%a_][%w_]*$") then
      error("moxy.metrics: a label name must be a Lua identifier", 3)
    end
    parts[i] = k .. '="' .. escape(labels[k]) .. '"'
  end
  return concat(parts, ",")
end

-- The counter's id, made when new; nil when refused.  Names starting
-- with "moxy_" are moxy's own (own: moxy's modules calling).
local function id_of(name, labels, help, level, own)
  if type(name) ~= "string" or not name:find("^[%a_:][%w_:]*$") then
    error("moxy.metrics: a metric name is letters, digits, '_' and ':', not starting with a digit", level)
  end
  if not own and name:sub(1, 5) == "moxy_" then
    error("moxy.metrics: names starting with moxy_ are moxy's own", level)
  end
  local text = label_text(labels)
  local key = name .. "{" .. text
  local id = ids[key]
  if id == nil then
    id = C.moxy_ffi_counter(name, #name, text, #text, help and tostring(help) or nil)
    if nids >= IDS_MAX then ids, nids = {}, 0 end
    ids[key] = id
    nids = nids + 1
  end
  if id < 0 then return nil end
  return id
end

--- moxy.metrics.inc(name, labels, by, help): add by (default 1, >= 0) to
-- the counter name{labels}.  help (the first time a name is seen) becomes
-- its # HELP line.  Returns false when the counter could not be made
-- (the table is full, or the labels are not valid).
function M.inc(name, labels, by, help)
  local id = id_of(name, labels, help, 3, false)
  if not id then return false end
  by = by or 1
  if type(by) ~= "number" or by < 0 then error("moxy.metrics.inc: by must be a number >= 0", 2) end
  C.moxy_ffi_counter_add(id, by)
  return true
end

--- moxy.metrics.get(name, labels) -> the counter's value (0 when it does not exist yet).
function M.get(name, labels)
  local id = id_of(name, labels, nil, 3, true)
  if not id then return 0 end
  return C.moxy_ffi_counter_get(id)
end

-- For moxy's own modules (moxy.ratelimit, ...): the id of a moxy_ counter
-- (false when it could not be made), to keep and add to with M.add: making
-- the key of a labels table costs more than the rest of a decision.
function M.own_id(name, labels, help)
  return id_of(name, labels, help, 3, true) or false
end

--- Add by to the counter id (from own_id); nothing when id is false.
function M.add(id, by)
  if id then C.moxy_ffi_counter_add(id, by or 1) end
end

return M
