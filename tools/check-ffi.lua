-- check-ffi.lua: each Lua module's ffi.cdef must declare exactly what
-- core/api/ffi.h exports for it, between "BEGIN FFI <module file>" and "END FFI".  Run from the source
-- root: `luajit tools/check-ffi.lua`; exits 1 and says what differs.
local function read(path)
  local f = assert(io.open(path, "rb"))
  local s = f:read("*a")
  f:close()
  return s
end

-- Declarations of a C text: comments dropped, whitespace normalised, one per ';'.
local function decls(text)
  text = text:gsub("/%*.-%*/", ""):gsub("//[^\n]*", "")
  local out = {}
  for d in text:gmatch("([^;]+);") do
    d = d:gsub("%s+", " "):gsub("^ ", ""):gsub(" $", ""):gsub(" ?([%(%),%*]) ?", "%1")
    if d ~= "" then out[#out + 1] = d end
  end
  table.sort(out)
  return out
end

local M = {}

-- Every "BEGIN FFI <lua file>" ... "END FFI" block of core/api/ffi.h against the
-- first ffi.cdef of that Lua file (a block without a file name: txn.lua).
-- Returns a list of problems (empty when they all agree).
function M.compare(root)
  root = root or "."
  local header = read(root .. "/core/api/ffi.h")
  local problems, nblocks = {}, 0
  for file, h in header:gmatch("/%* BEGIN FFI ?([%w_/%.%-]*) %*/(.-)/%* END FFI %*/") do
    nblocks = nblocks + 1
    if file == "" then file = "lua/moxy/txn.lua" end
    local lua = read(root .. "/" .. file):match("ffi%.cdef%s*%[%[(.-)%]%]")
    if not lua then
      problems[#problems + 1] = file .. ": no ffi.cdef block"
    else
      local a, b = decls(h), decls(lua)
      local seta, setb = {}, {}
      for _, d in ipairs(a) do seta[d] = true end
      for _, d in ipairs(b) do setb[d] = true end
      for _, d in ipairs(a) do
        if not setb[d] then problems[#problems + 1] = "only in core/api/ffi.h: " .. d end
      end
      for _, d in ipairs(b) do
        if not seta[d] then problems[#problems + 1] = "only in " .. file .. ": " .. d end
      end
    end
  end
  if nblocks == 0 then problems[#problems + 1] = "core/api/ffi.h: no BEGIN FFI / END FFI block" end
  return problems
end

if arg and arg[0] and arg[0]:match("check%-ffi%.lua$") then
  local problems = M.compare(".")
  for _, p in ipairs(problems) do io.stderr:write(p, "\n") end
  if #problems > 0 then os.exit(1) end
  print("check-ffi: core/api/ffi.h and the Lua cdefs agree")
end

return M
