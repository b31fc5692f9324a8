-- check-ffi.lua: each Lua module's ffi.cdef must declare exactly what
-- the C headers export for it, between "BEGIN FFI <module file>" and "END FFI"
-- (core/api/ffi.h, and the headers of modules below api/ that export their own);
-- and the constants C and Lua share (phase numbers, txn field, number and flag
-- numbers, the ABI) must have the same values on both sides.  Run from the
-- source root: `luajit tools/check-ffi.lua`; exits 1 and says what differs.
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

-- The C headers under core/ (one folder level), core/api/ffi.h first.
local function headers(root)
  local list = { "core/api/ffi.h" }
  local p = assert(io.popen("cd '" .. root .. "' && ls core/*/*.h"))
  for path in p:lines() do
    if path ~= "core/api/ffi.h" then list[#list + 1] = path end
  end
  p:close()
  return list
end

-- Every "BEGIN FFI <lua file>" ... "END FFI" block of the headers against the
-- first ffi.cdef of that Lua file (a block without a file name: txn.lua).
-- Returns a list of problems (empty when they all agree).
function M.compare(root)
  root = root or "."
  local problems, nblocks, seen = {}, 0, {}
  for _, path in ipairs(headers(root)) do
    local header = read(root .. "/" .. path)
    for file, h in header:gmatch("/%* BEGIN FFI ?([%w_/%.%-]*) %*/(.-)/%* END FFI %*/") do
      nblocks = nblocks + 1
      if file == "" then file = "lua/moxy/txn.lua" end
      if seen[file] then
        problems[#problems + 1] = ("%s: a second block for %s (the first is in %s)"):format(path, file, seen[file])
      end
      seen[file] = path
      local lua = read(root .. "/" .. file):match("ffi%.cdef%s*%[%[(.-)%]%]")
      if not lua then
        problems[#problems + 1] = file .. ": no ffi.cdef block"
      else
        local a, b = decls(h), decls(lua)
        local seta, setb = {}, {}
        for _, d in ipairs(a) do seta[d] = true end
        for _, d in ipairs(b) do setb[d] = true end
        for _, d in ipairs(a) do
          if not setb[d] then problems[#problems + 1] = "only in " .. path .. ": " .. d end
        end
        for _, d in ipairs(b) do
          if not seta[d] then problems[#problems + 1] = "only in " .. file .. ": " .. d end
        end
      end
    end
  end
  if nblocks == 0 then problems[#problems + 1] = "core/*/*.h: no BEGIN FFI / END FFI block" end
  return problems
end

-- The values of the C enum constants PREFIX_NAME in text, by name lowercased
-- ("MOXY_PHASE_CACHE_KEY" -> cache_key), counting as C does.
local function c_enum(text, prefix)
  text = text:gsub("/%*.-%*/", "")
  local out, n = {}, 0
  for body in text:gmatch("enum%s*{(.-)}") do
    local next_value = 0
    for item in body:gmatch("[^,]+") do
      local name, value = item:match("^%s*([%w_]+)%s*=%s*(%d+)%s*$")
      if not name then name = item:match("^%s*([%w_]+)%s*$") end
      if name then
        local v = value and tonumber(value) or next_value
        next_value = v + 1
        if name:sub(1, #prefix) == prefix then
          out[name:sub(#prefix + 1):lower()] = v
          n = n + 1
        end
      end
    end
  end
  return out, n
end

-- The table `local NAME = { k = number, ... }` of a Lua text.
local function lua_table(text, name)
  local body = text:match("\nlocal " .. name .. " = (%b{})")
  if not body then return nil end
  local out = {}
  for k, v in body:gmatch("([%w_]+)%s*=%s*(%d+)") do out[k] = tonumber(v) end
  return out
end

-- Constants C and Lua share: each C enum against the Lua table that copies
-- it, the phases' names against runtime.lua's PHASES order, and the ABI.
function M.compare_constants(root)
  root = root or "."
  local problems = {}
  local ffi_h, http_t = read(root .. "/core/api/ffi.h"), read(root .. "/core/http/http-t.h")
  local txn, runtime = read(root .. "/lua/moxy/txn.lua"), read(root .. "/lua/moxy/runtime.lua")
  local pairs_ = {
    { http_t, "core/http/http-t.h", "MOXY_PHASE_", "PHASE" },
    { ffi_h, "core/api/ffi.h", "MOXY_FFI_F_", "F" },
    { ffi_h, "core/api/ffi.h", "MOXY_FFI_N_", "N" },
    { ffi_h, "core/api/ffi.h", "MOXY_FFI_FLAG_", "FLAG" },
  }
  for _, p in ipairs(pairs_) do
    local c, n = c_enum(p[1], p[3])
    local l = lua_table(txn, p[4])
    if n == 0 then
      problems[#problems + 1] = p[2] .. ": no " .. p[3] .. "* constants"
    elseif not l then
      problems[#problems + 1] = "lua/moxy/txn.lua: no table " .. p[4] .. " (" .. p[3] .. "*)"
    else
      for k, v in pairs(c) do
        if l[k] ~= v then
          problems[#problems + 1] = ("%s%s = %d in %s, %s in lua/moxy/txn.lua's %s")
            :format(p[3], k:upper(), v, p[2], tostring(l[k]), p[4])
        end
      end
      for k in pairs(l) do
        if c[k] == nil then
          problems[#problems + 1] = ("lua/moxy/txn.lua's %s.%s: no %s%s in %s"):format(p[4], k, p[3], k:upper(), p[2])
        end
      end
    end
  end
  local phases = c_enum(http_t, "MOXY_PHASE_")
  local list = runtime:match("\nlocal PHASES = (%b{})")
  local names = {}
  for name in (list or ""):gmatch('"([%w_]+)"') do names[#names + 1] = name end
  for k, v in pairs(phases) do
    if names[v + 1] ~= "on_" .. k then
      problems[#problems + 1] = ("MOXY_PHASE_%s = %d, but lua/moxy/runtime.lua's PHASES[%d] is %s")
        :format(k:upper(), v, v + 1, tostring(names[v + 1]))
    end
  end
  local c_abi = ffi_h:match("#define MOXY_FFI_ABI (%d+)")
  local l_abi = txn:match("\nlocal ABI = (%d+)")
  if not c_abi or c_abi ~= l_abi then
    problems[#problems + 1] = ("MOXY_FFI_ABI is %s in core/api/ffi.h, %s in lua/moxy/txn.lua")
      :format(tostring(c_abi), tostring(l_abi))
  end
  return problems
end

if arg and arg[0] and arg[0]:match("check%-ffi%.lua$") then
  local problems = M.compare(".")
  for _, p in ipairs(M.compare_constants(".")) do problems[#problems + 1] = p end
  for _, p in ipairs(problems) do io.stderr:write(p, "\n") end
  if #problems > 0 then os.exit(1) end
  print("check-ffi: the C headers' FFI blocks and the Lua cdefs agree, and so do the constants they share")
end

return M
