-- moxy.runtime: loads the user's scripts into a worker's VM and runs their
-- hooks.  Driven from core/lua_bridge.c.
--
-- Hooks run inside coroutines so that they may yield (moxy.sleep, ...).  A
-- coroutine runs one request's hooks, yields DONE, and is then reused for the
-- next request, so a hook that never yields costs no coroutine creation.
-- Protocol with C (lua_resume):
--   resume(co, ptr)           -> yields DONE, answered      hooks finished
--                             -> yields SLEEP, seconds      parked; C resumes
--   resume(co, ptr) again        after the event, with the request pointer
local txn = require "moxy.txn"
local yield = coroutine.yield

local M = {}

M.DONE, M.SLEEP = 0, 1

local KNOWN = { on_request = true }
local on_request = {}

-- Load the scripts at `paths` (in order).  Raises "file:line: message".
-- Returns the number of on_request hooks.
-- `scripts`: a list of { path = ..., jit = bool }.  Unless jit is true, the
-- script's functions are kept out of the JIT, so that the CPU budget's count
-- hook (lua_bridge.c) sees them run; moxy's own modules stay compiled.
function M.load(scripts)
  _G.moxy = require "moxy"
  for _, s in ipairs(scripts) do
    local path = s.path
    local chunk, err = loadfile(path)
    if not chunk then error(err, 0) end
    if not s.jit then jit.off(chunk, true) end
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

local function run_hooks(ptr)
  local t = txn.new(ptr)
  for i = 1, #on_request do
    on_request[i](t)
    if rawget(t, "_done") then return true end
  end
  return false
end

-- With a single hook (the common case) no loop: the JIT compiles the call
-- into one trace instead of giving up on a loop it cannot keep.
local function run_single(ptr)
  local t = txn.new(ptr)
  on_request[1](t)
  return rawget(t, "_done") == true
end

-- The body of every hook coroutine: run a request's hooks, report, wait for
-- the next request.
function M.coroutine_body(ptr)
  local run = #on_request == 1 and run_single or run_hooks
  while true do
    local answered = run(ptr)
    txn.leave()
    ptr = yield(M.DONE, answered)
  end
end

-- Park the running hook for `seconds` (called by moxy.sleep).
function M.sleep(seconds)
  txn.leave()
  local ptr = yield(M.SLEEP, seconds)
  txn.enter(ptr)
end

return M
