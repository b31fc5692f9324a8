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

local PHASES = { "on_request", "on_response", "on_error" } -- index - 1 = MOXY_PHASE_* in C
local hooks = {}
for i, name in ipairs(PHASES) do hooks[i] = {} end
local KNOWN = { init = true, worker_init = true }
for _, name in ipairs(PHASES) do KNOWN[name] = true end
local once = { init = {}, worker_init = {} } -- hooks that run outside requests

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
    local ok, t = pcall(chunk)
    if not ok then error(tostring(t), 0) end
    if type(t) ~= "table" then
      error(path .. ": a script must return a table of hooks, got " .. type(t), 0)
    end
    for name, fn in pairs(t) do
      if not KNOWN[name] then
        error(path .. ": unknown hook \"" .. tostring(name) .. "\" (known: init, worker_init, "
          .. table.concat(PHASES, ", ") .. ")", 0)
      end
      if type(fn) ~= "function" then
        error(path .. ": " .. name .. " must be a function, got " .. type(fn), 0)
      end
    end
    for i, name in ipairs(PHASES) do
      if t[name] then hooks[i][#hooks[i] + 1] = t[name] end
    end
    for name, list in pairs(once) do
      if t[name] then list[#list + 1] = t[name] end
    end
  end
  local counts = {}
  for i, name in ipairs(PHASES) do counts[name] = #hooks[i] end
  return counts
end

-- Run the hooks of `phase` (0-based, as in C) for the request `ptr`; true
-- when one answered.
local function run_hooks(ptr, phase, t)
  local list = hooks[phase + 1]
  if t then
    txn.enter(ptr, phase) -- a later phase: the request's txn (and ctx) again
  else
    t = txn.new(ptr, phase)
  end
  if #list == 1 then
    -- no loop for a single hook (the common case): the JIT keeps the call
    -- in one trace instead of giving up on a loop it cannot keep
    list[1](t)
    return rawget(t, "_done") == true, t
  end
  for i = 1, #list do
    list[i](t)
    if rawget(t, "_done") then return true, t end
  end
  return false, t
end

-- The body of every hook coroutine: run a request's hooks of one phase,
-- report, wait for the next.
-- The txn goes back to C with DONE; C keeps it for the request's later
-- phases when there are hooks for them.
function M.coroutine_body(ptr, phase, t)
  while true do
    local answered
    answered, t = run_hooks(ptr, phase, t)
    txn.leave()
    ptr, phase, t = yield(M.DONE, answered, t)
  end
end

-- Outside requests (init, worker_init) nothing else runs on the thread yet:
-- a hook that sleeps simply blocks it for that long.
local ffi = require "ffi"
ffi.cdef [[ int poll(void *fds, unsigned long nfds, int timeout); ]]

M.in_once = false -- an init or worker_init hook runs

-- Run the `name` hooks ("init" once per configuration before the workers
-- start, "worker_init" in each worker's VM before it serves).  Hooks run in
-- a coroutine and may moxy.sleep.  Raises "name: file:line: message".
function M.run_once(name)
  for _, fn in ipairs(once[name]) do
    local co = coroutine.create(fn)
    local args = {}
    M.in_once = true
    while true do
      local ok, kind, secs = coroutine.resume(co, unpack(args))
      if not ok then
        M.in_once = false
        error(name .. ": " .. tostring(kind), 0)
      end
      if coroutine.status(co) == "dead" then break end
      if kind ~= M.SLEEP then
        M.in_once = false
        error(name .. ": a hook yielded outside moxy's API", 0)
      end
      ffi.C.poll(nil, 0, math.floor((tonumber(secs) or 0) * 1000 + 0.5))
      args = {}
    end
    M.in_once = false
  end
end

-- Park the running hook for `seconds` (called by moxy.sleep).
function M.sleep(seconds)
  if M.in_once then
    yield(M.SLEEP, seconds)
    return
  end
  local phase = txn.phase()
  txn.leave()
  local ptr = yield(M.SLEEP, seconds)
  txn.enter(ptr, phase)
end

return M
