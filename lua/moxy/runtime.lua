-- moxy.runtime: loads the user's scripts into a worker's VM and runs their
-- hooks and timer callbacks.  Driven from core/http/lua_bridge.c.
--
-- Hooks run inside coroutines so that they may yield (moxy.sleep,
-- moxy.http, txn:read_body, ...).  A coroutine runs one request's hooks of
-- one phase (or one timer callback), yields DONE, and is then reused, so a
-- hook that never yields costs no coroutine creation.
-- Protocol with C (lua_resume):
--   resume(co, ptr, phase, txn[, chunk, eof])  run the hooks of a phase
--   resume(co, 0, TIMER, id)                   run timer `id`'s callback
--   resume(co, conn, TLS_HELLO)                run on_tls_hello hooks for a
--                                               connection at its hello
--     -> yields DONE, answered, txn[, chunk]    finished
--     -> yields WAIT                            parked: an FFI call started
--                                               what it waits for
--   resume(co, ptr, results...)                 after the event
local ffi = require "ffi"
local txn = require "moxy.txn"
local tls_hello = require "moxy.tls_hello"
local yield = coroutine.yield

ffi.cdef [[
int moxy_ffi_sleep(double secs);
int moxy_ffi_timer_add(double delay, double interval, int id);
int moxy_ffi_timer_cancel(int id);
int moxy_ffi_watch(const char *path, size_t len);
]]
local C = ffi.C
local OK = 0

local M = {}

M.DONE, M.WAIT = 0, 1

-- moxy.watch's FFI call (init.lua checks the argument).
function M.watch(path)
  if C.moxy_ffi_watch(path, #path) ~= OK then error("moxy.watch: out of memory", 3) end
end

-- index - 1 = MOXY_PHASE_* in C (core/http/http-t.h; tools/check-ffi.lua checks it)
local PHASES = { "on_request", "on_upstream", "on_upstream_request", "on_response", "on_body",
                 "on_log", "on_error", "on_cache_key", "on_tls_hello" }
local P = txn.PHASE
local TIMER = #PHASES -- a timer's callback (not a phase)
local TLS_HELLO = P.tls_hello -- a connection's hooks, not a request's
M.PHASES = PHASES

local KNOWN = { init = true, worker_init = true }
for _, name in ipairs(PHASES) do KNOWN[name] = true end

-- A set of hooks: by phase index (1-based), plus init and worker_init.
local function new_set()
  local set = { once = { init = {}, worker_init = {} } }
  for i in ipairs(PHASES) do set[i] = {} end
  return set
end

-- Add the hooks of table `t` (what the script at `path` returned) to set.
local function add_hooks(set, t, path)
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
    if t[name] then set[i][#set[i] + 1] = t[name] end
  end
  for name, list in pairs(set.once) do
    if t[name] then list[#list + 1] = t[name] end
  end
end

-- Compile and run the script at `path`; its table of hooks.  Unless jit,
-- the script's functions are kept out of the JIT, so that the CPU budget's
-- count hook (lua_bridge.c) sees them run; moxy's own modules stay compiled.
local function load_script(path, jit_on, source)
  -- not loadfile: the VM's loadfile reads a relative path from the
  -- configuration's directory, and path is one already (lua_vm.c)
  local src = source
  if not src then
    local f, oerr = io.open(path, "rb")
    if not f then error("cannot open " .. tostring(oerr), 0) end
    src = f:read("*a")
    f:close()
  end
  local chunk, err = loadstring(src, "@" .. path)
  if not chunk then error(err, 0) end
  if not jit_on then jit.off(chunk, true) end
  local ok, t = pcall(chunk)
  if not ok then error(tostring(t), 0) end
  return t
end

local hooks = new_set() -- the worker's (M.load)

-- Load the scripts (in order) into the worker's hooks.  `scripts`: a list of
-- { path = ..., jit = bool [, source = text moxy made (access = {...})] }.  Raises "file:line: message".  Returns the
-- number of hooks of each phase, by name.
function M.load(scripts)
  _G.moxy = require "moxy"
  for _, s in ipairs(scripts) do add_hooks(hooks, load_script(s.path, s.jit, s.source), s.path) end
  local counts = {}
  for i, name in ipairs(PHASES) do counts[name] = #hooks[i] end
  return counts
end

-- A set of hooks of its own (for moxy.test): from a list whose items are
-- script paths or tables of hooks.  Raises like M.load.
function M.hook_set(list)
  _G.moxy = require "moxy"
  local set = new_set()
  for i, item in ipairs(list) do
    if type(item) == "string" then add_hooks(set, load_script(item, true), item)
    else add_hooks(set, item, "hooks #" .. i) end
  end
  return set
end

-- on_upstream hook #i returned p: the pool to pick.
local function returned_pool(t, p, i)
  if type(p) ~= "string" then
    error("on_upstream hook #" .. i .. " returned a " .. type(p) .. " (a pool name, or nothing)", 0)
  end
  t.upstream:pick(p)
end

-- on_body: each hook gets the previous one's output; nil keeps the chunk.
local function run_body(list, t, chunk, eof)
  for i = 1, #list do
    local out = list[i](t, chunk, eof)
    if out ~= nil then
      if type(out) ~= "string" then
        error("on_body hook #" .. i .. " returned a " .. type(out) .. " (a string, or nil to keep the chunk)", 0)
      end
      chunk = out
    end
  end
  return chunk
end

local txn_new, txn_enter, txn_leave = txn.new, txn.enter, txn.leave
local PHASE_BODY, PHASE_UPSTREAM, PHASE_CACHE_KEY = P.body, P.upstream, P.cache_key

-- on_cache_key hook #i returned k: the key to use.
local function returned_key(t, k, i)
  if type(k) ~= "string" then
    error("on_cache_key hook #" .. i .. " returned a " .. type(k) .. " (a key string, or nothing)", 0)
  end
  t.cache.key = k
end

-- Hook #i of phase returned v (not nil): a pool (on_upstream) or a key
-- (on_cache_key); the other phases' hooks return nothing that counts.
local function returned(t, phase, v, i)
  if phase == PHASE_UPSTREAM then returned_pool(t, v, i)
  elseif phase == PHASE_CACHE_KEY then returned_key(t, v, i) end
end

-- Run set's hooks of `phase` (0-based, as in C) for the request `ptr`.
-- Returns answered (a hook called txn:respond), the txn, and for on_body
-- the chunk to send.
-- This runs once per hook call, in LuaJIT's interpreter (a trace cannot
-- cross the user's functions, which are kept out of the JIT, nor the yield
-- after it): every bytecode here costs, so keep it short.
local function run_hooks(set, ptr, phase, t, chunk, eof)
  local list = set[phase + 1]
  if t then
    txn_enter(ptr, phase) -- a later phase: the request's txn (and ctx) again
  else
    t = txn_new(ptr, phase)
  end
  if phase == PHASE_BODY then return false, t, run_body(list, t, chunk, eof) end
  if list[2] == nil then -- a single hook, the common case
    local p = list[1](t)
    if p ~= nil then returned(t, phase, p, 1) end
    return rawget(t, "_done") == true, t
  end
  for i = 1, #list do
    local p = list[i](t)
    if p ~= nil then returned(t, phase, p, i) end
    if rawget(t, "_done") then return true, t end
  end
  return false, t
end

-- moxy.timer callbacks by id; C calls back with the id.
local timers, next_timer = {}, 0

local function run_timer(id)
  local tm = timers[id]
  if not tm then return end -- cancelled meanwhile
  if not tm.every then timers[id] = nil end
  tm.fn(unpack(tm.args, 1, tm.args.n))
end

-- Run set's hooks of phase for ptr (moxy.test drives the phases itself):
-- answered, txn[, on_body's chunk].
function M.run_phase(set, ptr, phase, t, chunk, eof)
  return run_hooks(set, ptr, phase, t, chunk, eof)
end

local hook_cos = setmetatable({}, { __mode = "k" }) -- coroutines of coroutine_body

-- The body of every hook coroutine: run a request's hooks of one phase (or
-- a timer's callback), report, wait for the next.
-- The txn goes back to C with DONE; C keeps it for the request's later
-- phases when there are hooks for them.
function M.coroutine_body(ptr, phase, t, chunk, eof)
  hook_cos[coroutine.running()] = true
  local DONE, set = M.DONE, hooks
  while true do
    local answered, out
    if phase == TLS_HELLO then
      tls_hello.run(set[phase + 1], ptr)
    elseif phase ~= TIMER then
      answered, t, out = run_hooks(set, ptr, phase, t, chunk, eof)
      txn_leave()
    else
      run_timer(t)
      t = nil
    end
    ptr, phase, t, chunk, eof = yield(DONE, answered, t, out)
  end
end

-- Outside requests (init, worker_init) nothing else runs on the thread yet:
-- a hook that sleeps simply blocks it for that long.
ffi.cdef [[ int poll(void *fds, unsigned long nfds, int timeout); ]]

M.in_once = false -- an init or worker_init hook runs

-- Run the `name` hooks ("init" once per configuration before the workers
-- start, "worker_init" in each worker's VM before it serves).  Hooks run in
-- a coroutine and may moxy.sleep.  Raises "name: file:line: message".
function M.run_once(name, set)
  for _, fn in ipairs((set or hooks).once[name]) do
    local co = coroutine.create(fn)
    M.in_once = true
    while true do
      local ok, kind, secs = coroutine.resume(co)
      if not ok then
        M.in_once = false
        error(name .. ": " .. tostring(kind), 0)
      end
      if coroutine.status(co) == "dead" then break end
      if kind ~= M.WAIT or type(secs) ~= "number" then
        M.in_once = false
        error(name .. ": only moxy.sleep may yield in " .. name, 0)
      end
      C.poll(nil, 0, math.floor(secs * 1000 + 0.5))
    end
    M.in_once = false
  end
end

-- moxy.test: with M.test set, hooks run without an event loop: moxy.sleep
-- simply waits (blocks), and M.test.http(opts) answers moxy.http calls.
M.test = nil

-- true when the running code may wait (a hook or a timer callback).
function M.can_wait()
  if M.test then return true end
  local co = coroutine.running()
  return co ~= nil and hook_cos[co] == true
end

local function resumed(ph, ptr, ...)
  if ph == TLS_HELLO then
    tls_hello.enter(ptr)
    txn.enter(0, ph)
  else
    txn.enter(ptr, ph)
  end
  return ...
end

-- Yield until what the running hook started (through an FFI call) is done;
-- returns its results.  For moxy's yielding APIs.
function M.wait()
  local ph = txn.phase()
  txn.leave()
  tls_hello.leave()
  return resumed(ph, yield(M.WAIT))
end

-- Park the running hook for `seconds` (called by moxy.sleep).
function M.sleep(seconds)
  if M.in_once then
    yield(M.WAIT, seconds)
    return
  end
  if M.test then
    C.poll(nil, 0, math.floor(seconds * 1000 + 0.5))
    return
  end
  if not M.can_wait() or C.moxy_ffi_sleep(seconds) ~= OK then
    error("moxy.sleep: only hooks and timer callbacks may sleep", 3)
  end
  M.wait()
end

-- Start a timer (moxy.timer.at / every); returns its id or nil, err.
function M.timer_add(delay, interval, fn, args)
  next_timer = next_timer + 1
  if next_timer >= 2 ^ 31 then next_timer = 1 end
  local id = next_timer
  local rc = C.moxy_ffi_timer_add(delay, interval, id)
  if rc ~= OK then
    if rc == -3 then return nil, "no event loop here (timers start in worker_init or hooks)" end
    return nil, "too many timers"
  end
  timers[id] = { fn = fn, args = args, every = interval > 0 }
  return id
end

-- Cancel timer `id`; true when it was pending.
function M.timer_cancel(id)
  if not timers[id] then return false end
  timers[id] = nil
  return C.moxy_ffi_timer_cancel(id) == OK
end

return M
