-- re-bench.lua: nanoseconds per call of moxy.re (PCRE2 + JIT through the FFI)
-- against string.match/string.find with equivalent Lua patterns.
--
--   ./moxy test bench/re-bench.lua     inside moxy's runtime (ffi.C, as scripts)
--   luajit bench/re-bench.lua          plain LuaJIT (ffi.load("pcre2-8"))
--   N=2000000 luajit bench/re-bench.lua
--
-- Each case runs N calls (default 1e6), 5 times; the table gives the best
-- and the median ns per call (CPU time, os.clock).  Two caller modes: "jit"
-- is a loop LuaJIT compiles (moxy's own modules, or a script with jit = true);
-- "interp" is the same loop with jit.off, as moxy runs scripts by default
-- (DESIGN.md, "Runaway scripts vs the JIT") -- moxy.re's own code stays
-- compiled in both.  PCRE2 "nojit" rows compile the pattern without PCRE2's
-- JIT (re._set_jit(false)), for comparison.
package.path = "lua/?.lua;" .. package.path
local re = require "moxy.re"
-- locals: under busted, globals resolve through its environment's __index,
-- which would slow the string.* side only
local match, find, clock = string.match, string.find, os.clock

local N = tonumber(os.getenv("N")) or 1000000
local ROUNDS = 5

local PATH = "/users/12345/posts/678"
local MISS = "/static/css/site.css"

-- name, function(n) running n calls, returning something to keep
local CASES = {
  { "route hit   string.match", function(n)
      local a, b
      for _ = 1, n do a, b = match(PATH, "^/users/(%d+)/posts/(%d+)$") end
      return a, b
    end },
  { "route hit   re.match", function(n)
      local m
      for _ = 1, n do m = re.match(PATH, [[^/users/(\d+)/posts/(\d+)$]]) end
      return m
    end },
  { "route hit   re.match nojit", function(n)
      local m
      for _ = 1, n do m = re.match(PATH, [[^/users/(\d+)/posts/(\d+)(?:)$]]) end
      return m
    end, nojit = [[^/users/(\d+)/posts/(\d+)(?:)$]] },
  { "route miss  string.match", function(n)
      local a
      for _ = 1, n do a = match(MISS, "^/users/(%d+)/posts/(%d+)$") end
      return a
    end },
  { "route miss  re.match", function(n)
      local m
      for _ = 1, n do m = re.match(MISS, [[^/users/(\d+)/posts/(\d+)$]]) end
      return m
    end },
  { "test hit    string.find", function(n)
      local a
      for _ = 1, n do a = find(PATH, "^/users/%d+/posts/%d+$") end
      return a
    end },
  { "test hit    re.find", function(n)
      local a
      for _ = 1, n do a = re.find(PATH, [[^/users/\d+/posts/\d+$]]) end
      return a
    end },
  -- alternation, which Lua patterns lack: one find per alternative
  { "ext alt     5 x string.find", function(n)
      local a
      local exts = { "%.css$", "%.js$", "%.png$", "%.jpg$", "%.svg$" }
      for _ = 1, n do
        a = nil
        for k = 1, 5 do
          if find(MISS, exts[k]) then a = k break end
        end
      end
      return a
    end },
  { "ext alt     re.find", function(n)
      local a
      for _ = 1, n do a = re.find(MISS, [[\.(?:css|js|png|jpg|svg)$]]) end
      return a
    end },
}

local function median(t)
  table.sort(t)
  return t[math.ceil(#t / 2)]
end

local function run(case, interp)
  local fn = case[2]
  if interp then jit.off(fn) else jit.on(fn) end
  local was
  if case.nojit then
    was = re._set_jit(false)
    re.match(PATH, case.nojit) -- compile now, without PCRE2's JIT
  end
  fn(math.max(1, math.floor(N / 10))) -- warm up (compiles the traces)
  local times = {}
  for r = 1, ROUNDS do
    local t0 = clock()
    fn(N)
    times[r] = (clock() - t0) / N * 1e9
  end
  if case.nojit then re._set_jit(was) end
  local best = math.min(unpack(times))
  return best, median(times)
end

local function main()
  print(string.format("moxy.re bench: PCRE2 %s (JIT %s), %s, N = %d, %d rounds",
    re.version, re.jit and "yes" or "no", jit.version, N, ROUNDS))
  print(string.format("%-30s %16s %16s", "ns per call (best / median)", "caller: jit", "caller: interp"))
  for _, case in ipairs(CASES) do
    local jb, jm = run(case, false)
    local ib, im = run(case, true)
    print(string.format("%-30s %7.0f / %-7.0f %7.0f / %-7.0f", case[1], jb, jm, ib, im))
  end
end

if describe then -- under `moxy test`: one busted test that prints the table
  describe("re-bench", function() it("runs", main) end)
else
  main()
end
