-- check-ffi.lua: the ffi.cdef in lua/moxy/txn.lua must declare exactly what
-- core/ffi.h exports between "BEGIN FFI" and "END FFI".  Run from the source
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

function M.compare(root)
  root = root or "."
  local h = read(root .. "/core/ffi.h"):match("/%* BEGIN FFI %*/(.-)/%* END FFI %*/")
  local lua = read(root .. "/lua/moxy/txn.lua"):match("ffi%.cdef%s*%[%[(.-)%]%]")
  assert(h, "core/ffi.h: no BEGIN FFI / END FFI block")
  assert(lua, "lua/moxy/txn.lua: no ffi.cdef block")
  local a, b = decls(h), decls(lua)
  local seta, setb, problems = {}, {}, {}
  for _, d in ipairs(a) do seta[d] = true end
  for _, d in ipairs(b) do setb[d] = true end
  for _, d in ipairs(a) do
    if not setb[d] then problems[#problems + 1] = "only in core/ffi.h: " .. d end
  end
  for _, d in ipairs(b) do
    if not seta[d] then problems[#problems + 1] = "only in lua/moxy/txn.lua: " .. d end
  end
  return problems
end

if arg and arg[0] and arg[0]:match("check%-ffi%.lua$") then
  local problems = M.compare(".")
  for _, p in ipairs(problems) do io.stderr:write(p, "\n") end
  if #problems > 0 then os.exit(1) end
  print("check-ffi: core/ffi.h and lua/moxy/txn.lua agree")
end

return M
