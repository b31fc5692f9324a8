-- bench/txn-api-hook.lua -- the hook of bench/txn_api.sh: the cost of one
-- call of the txn API, from a guarded hook (the interpreter: what a script
-- gets by default) and from a compiled one (`jit = true`).
--
--   GET /txn/<mode>/<op>/<n>   mode guarded | jit; runs op n times in a loop
--                              and answers the loop's nanoseconds
--
-- Each op's loop is compiled twice from the same source: once as is (the
-- JIT compiles it, as a script with jit = true), once kept out of the JIT
-- with jit.off(f, true), which is what moxy does to a guarded script's
-- functions (lua/moxy/runtime.lua).
local ffi = require "ffi"

ffi.cdef [[
typedef struct { long tv_sec; long tv_nsec; } moxy_bench_timespec;
int clock_gettime(int clk, moxy_bench_timespec *ts);
]]
local ts = ffi.new("moxy_bench_timespec")
local CLOCK_MONOTONIC = 1

local function now_ns()
  ffi.C.clock_gettime(CLOCK_MONOTONIC, ts)
  return tonumber(ts.tv_sec) * 1e9 + tonumber(ts.tv_nsec)
end

-- one call each (the table below is what bench/txn_api.sh reports)
local OPS = {
  empty = "",
  field = "out[1] = txn.req.method",
  path = "out[1] = txn.req.path",
  client_ip = "out[1] = txn.client.ip",
  header_get = 'out[1] = txn.req.headers:get("user-agent")',
  header_set = 'txn.req.headers:set("x-bench", "1")',
  pick = 'txn.upstream:pick("origin")',
  -- bench/callgrind.sh's "reads" variant per request, as one op
  five_reads_two_sets = "out[1], out[2], out[3], out[4], out[5] = txn.req.method, txn.req.path, txn.req.host, "
    .. 'txn.client.ip, txn.req.headers:get("user-agent"); '
    .. 'txn.req.headers:set("x-bench", "1"); txn.req.headers:set("x-bench-2", "2")',
}

local loops, out = {}, {}
for name, body in pairs(OPS) do
  -- what a read returns goes to a table slot, so that the JIT cannot drop it
  local src = "local txn, n, out = ...\nfor _ = 1, n do " .. body .. " end"
  local compiled = assert(loadstring(src, "=txn-api:" .. name))
  local guarded = assert(loadstring(src, "=txn-api:" .. name))
  jit.off(guarded, true)
  loops[name] = { jit = compiled, guarded = guarded }
end

return {
  on_request = function(txn)
    local mode, op, n = txn.req.path:match("^/txn/(%a+)/([%w_]+)/(%d+)$")
    local loop = loops[op] and loops[op][mode]
    if not loop then
      return txn:respond(404, "GET /txn/{guarded,jit}/{" .. table.concat((function()
        local names = {}
        for k in pairs(OPS) do names[#names + 1] = k end
        table.sort(names)
        return names
      end)(), ",") .. "}/<n>\n")
    end
    n = tonumber(n)
    local t0 = now_ns()
    loop(txn, n, out)
    local t1 = now_ns()
    txn:respond(200, string.format("%.0f", t1 - t0))
  end,
}
