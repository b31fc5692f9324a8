-- moxy.runtime: loads the user's scripts into a worker's VM and runs their
-- hooks.  Called from core/lua_bridge.c.
local txn = require "moxy.txn"

local M = {}

local KNOWN = { on_request = true }
local on_request = {}

-- Load the scripts at `paths` (in order).  Raises "file:line: message".
-- Returns the number of on_request hooks.
function M.load(paths)
  for _, path in ipairs(paths) do
    local chunk, err = loadfile(path)
    if not chunk then error(err, 0) end
    local ok, hooks = pcall(chunk)
    if not ok then error(tostring(hooks), 0) end
    if type(hooks) ~= "table" then
      error(path .. ": a script must return a table of hooks, got " .. type(hooks), 0)
    end
    for name, fn in pairs(hooks) do
      if not KNOWN[name] then
        error(path .. ": unknown hook \"" .. tostring(name) .. "\" (known: on_request)", 0)
      end
      if type(fn) ~= "function" then
        error(path .. ": " .. name .. " must be a function, got " .. type(fn), 0)
      end
    end
    if hooks.on_request then on_request[#on_request + 1] = hooks.on_request end
  end
  return #on_request
end

-- Run the on_request hooks for the request `ptr`; true when one answered.
function M.on_request(ptr)
  local t = txn.new(ptr)
  for i = 1, #on_request do
    on_request[i](t)
    if rawget(t, "_done") then return true end
  end
  return false
end

-- With a single hook (the common case) no loop: the JIT compiles the call
-- into one trace instead of giving up on a loop it cannot keep.
local function single(ptr)
  local t = txn.new(ptr)
  on_request[1](t)
  return rawget(t, "_done") == true
end

local load = M.load
function M.load(paths)
  local n = load(paths)
  if n == 1 then M.on_request = single end
  return n
end

return M
