-- check-tailcalls.lua: no function of moxy's Lua modules ends in a tail call
-- of ffi.string, ffi.cast, ffi.gc or setmetatable (`return ffi.string(p, n)`).
--
-- moxy's modules are compiled by LuaJIT's JIT while a user's hook, guarded
-- by the CPU budget, runs in the interpreter.  A trace that starts where a
-- module function starts and ends in a tail call of one of these fast
-- functions cannot return to the interpreted caller: LuaJIT aborts it at
-- every call ("NYI: return to lower frame", "leaving loop in root trace"),
-- and after a few aborts blacklists the function -- after which every trace
-- that would inline it aborts too, compiled hooks included.  Bind the result
-- first: `local s = ffi.string(p, n) return s`.  (spec/01-unit/22-txn_jit_spec.lua
-- watches the JIT for the txn API; this checks every module's text.)
--
-- Run from the source root: `luajit tools/check-tailcalls.lua`; exits 1 and
-- names each line.
local CALLEES = { "ffi%.string", "ffi_string", "ffi%.cast", "cast", "ffi%.gc", "setmetatable" }

local bad = 0
local p = assert(io.popen("ls lua/moxy/*.lua"))
for path in p:lines() do
  local n = 0
  for line in io.lines(path) do
    n = n + 1
    local code = line:gsub("%-%-.*$", "")
    for _, callee in ipairs(CALLEES) do
      -- one call and nothing after it: a tail call (`return f(a), b` is not)
      if code:match("^%s*return%s+" .. callee .. "%s*%b()%s*$")
        or code:match("[;%s]then%s+return%s+" .. callee .. "%s*%b()%s+end%s*$") then
        io.stderr:write(("%s:%d: a tail call of %s: bind its result to a local, then return it\n")
          :format(path, n, (callee:gsub("%%", ""))))
        bad = bad + 1
      end
    end
  end
end
p:close()
if bad > 0 then os.exit(1) end
