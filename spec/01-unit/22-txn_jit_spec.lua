-- The txn API under LuaJIT's JIT (lua/moxy/txn.lua).  Hooks run in the
-- interpreter unless their script says `jit = true` (the CPU budget's
-- guard); the API's own functions are compiled all the same, each as a
-- trace that starts where the function starts and returns to the
-- interpreted hook.  A function that LuaJIT cannot compile that way is
-- aborted again and again, then blacklisted -- and a blacklisted function
-- aborts every trace that would inline it, so that the hooks with `jit =
-- true` lose their compiled accessors too (a field read went from ~10 ns to
-- ~350 ns).  These specs watch the JIT's own events while hooks use the API.
local t = require "moxy.test"

-- "file:line: reason" of every aborted root trace that started in, or
-- aborted in, lua/moxy/txn.lua while fn runs: what LuaJIT penalizes and, a
-- few times over, blacklists.  Not counted: side traces (a side exit of a
-- compiled accessor that returns to the interpreted hook cannot be
-- compiled on its own; it stays an exit, nothing is blacklisted) and "loop
-- unroll limit reached" (the normal way to a loop's trace when a compiled
-- hook's loop first runs into a function that is already hot).
local function aborts_in_txn(fn)
  local jutil = require "jit.util"
  local vmdef = require "jit.vmdef"
  local seen, starts, side = {}, {}, {}
  local function where(func, pc)
    local info = jutil.funcinfo(func, pc)
    local src = info.source or ""
    if src:find("/moxy/txn.lua", 1, true) then return info.loc end
    return nil
  end
  local function on_trace(what, tr, func, pc, otr, oex)
    if what == "start" then
      starts[tr], side[tr] = where(func, pc), otr ~= nil and otr ~= 0
    elseif what == "abort" then
      local loc = starts[tr] or where(func, pc)
      local reason = vmdef.traceerr[otr] or tostring(otr)
      if loc and not side[tr] and reason ~= "loop unroll limit reached" then
        if type(oex) == "number" then reason = reason:gsub("%%d", oex) end
        seen[#seen + 1] = loc .. ": " .. reason
      end
    end
  end
  jit.attach(on_trace, "trace")
  local ok, err = pcall(fn)
  jit.attach(on_trace)
  assert(ok, err)
  return seen
end

local N = 3000 -- calls of each accessor: far past LuaJIT's hot thresholds

-- (no upvalues: the specs run copies of it made with string.dump)
local function use_api(txn, n)
  for _ = 1, n do
    local _ = txn.req.method, txn.req.path, txn.req.query, txn.req.host, txn.client.ip,
              txn.req.headers:get("user-agent"), txn.id, txn.client.port
    txn.req.headers:set("X-Edge", "moxy")
    txn.upstream:pick("origin")
  end
end

local function run(hooks)
  return t.run(hooks, t.txn { path = "/a?b=1", headers = { ["User-Agent"] = "spec" } },
    { upstreams = { origin = t.upstream(function() return 200, "ok" end) } })
end

describe("txn API under the JIT", function()
  it("compiles every accessor a guarded (interpreted) hook calls: no trace aborts in moxy/txn.lua", function()
    local body = loadstring(string.dump(use_api)) -- a copy of its own, kept out of the JIT
    jit.off(body, true)
    local hook = function(txn) body(txn, N) end
    jit.off(hook, true)
    local aborts = aborts_in_txn(function()
      local res = run { on_request = hook }
      assert.equal(200, res.resp.status, res.error)
    end)
    assert.same({}, aborts)
  end)

  it("keeps the accessors compiled for a hook with jit = true after guarded hooks ran", function()
    local guarded = loadstring(string.dump(use_api))
    jit.off(guarded, true)
    assert.equal(200, run({ on_request = function(txn) guarded(txn, N) end }).resp.status)
    local aborts = aborts_in_txn(function()
      local res = run { on_request = function(txn) use_api(txn, N) end }
      assert.equal(200, res.resp.status, res.error)
    end)
    assert.same({}, aborts)
  end)
end)
