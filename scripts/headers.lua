-- headers.lua: add, set and remove request and response headers.
--
-- Request headers are changed on the way to the origin (on_request); response
-- headers on the way back to the client (on_response).  Typical use: security
-- headers on every response, hiding what the origin runs (Server,
-- X-Powered-By), dropping a request header the origin must not trust.
--
-- Configure: edit the CONFIG block below.  Both `request` and `response` take:
--
--   remove  = { "Name", ... }            drop every value of these headers
--   set     = { ["Name"] = "value" }     replace (or create) the header
--   add     = { ["Name"] = "value" or { "v1", "v2" } }
--                                        append values, keeping the existing ones
--   default = { ["Name"] = "value" }     set only when the header is absent
--                                        (e.g. keep the origin's own CSP)
--
-- They are applied in that order (remove, set, add, default), so removing and
-- setting the same name replaces it.  Names are case-insensitive.
--
-- Notes:
--   * on_response only runs on the origin's answers: responses moxy gives
--     itself (error pages, another script's txn:respond) are not changed.
--   * Browsers honour Strict-Transport-Security only over HTTPS; moxy has no
--     TLS yet, so it only matters behind a TLS terminator.
--   * Remove either side's table (or leave it empty) and that hook is not
--     installed at all.

-- CONFIG BEGIN
local CONFIG = {
  request = {
    remove = { "X-Debug-Token" },
    set = { ["X-Edge"] = "moxy" },
    add = {},
    default = {},
  },
  response = {
    remove = { "Server", "X-Powered-By" },
    set = {
      ["Strict-Transport-Security"] = "max-age=31536000; includeSubDomains",
      ["X-Content-Type-Options"] = "nosniff",
      ["X-Frame-Options"] = "DENY",
      ["Referrer-Policy"] = "strict-origin-when-cross-origin",
    },
    add = {},
    default = {
      ["Content-Security-Policy"] = "default-src 'self'",
    },
  },
}
-- CONFIG END

-- Turn one side's tables into flat lists once, at load, so a request only walks
-- arrays.  Each op is { kind, name, value }.
local KINDS = { "remove", "set", "add", "default" }

local function compile(side, cfg)
  local ops = {}
  if cfg == nil then return ops end
  for _, kind in ipairs(KINDS) do
    local t = cfg[kind]
    if t ~= nil and type(t) ~= "table" then
      error("CONFIG." .. side .. "." .. kind .. " must be a table")
    end
    if kind == "remove" then
      for _, name in ipairs(t or {}) do ops[#ops + 1] = { kind, name } end
    else
      -- sorted, so the order headers are written in does not vary between runs
      local names = {}
      for name in pairs(t or {}) do names[#names + 1] = name end
      table.sort(names)
      for _, name in ipairs(names) do
        local v = t[name]
        -- only `add` takes a list of values
        local values = (kind == "add" and type(v) == "table") and v or { v }
        for _, value in ipairs(values) do
          if type(value) ~= "string" then
            error("CONFIG." .. side .. "." .. kind .. "[\"" .. name .. "\"] must be a string")
          end
          ops[#ops + 1] = { kind, name, value }
        end
      end
    end
  end
  return ops
end

local REQUEST = compile("request", CONFIG.request)
local RESPONSE = compile("response", CONFIG.response)

local function apply(h, ops)
  for i = 1, #ops do
    local op = ops[i]
    local kind = op[1]
    if kind == "remove" then
      h:remove(op[2])
    elseif kind == "set" then
      h:set(op[2], op[3])
    elseif kind == "add" then
      h:add(op[2], op[3])
    elseif h:get(op[2]) == nil then -- default
      h:set(op[2], op[3])
    end
  end
end

local hooks = {}
if #REQUEST > 0 then
  hooks.on_request = function(txn) apply(txn.req.headers, REQUEST) end
end
if #RESPONSE > 0 then
  hooks.on_response = function(txn) apply(txn.resp.headers, RESPONSE) end
end
return hooks
