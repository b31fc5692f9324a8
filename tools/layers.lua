-- layers.lua -- check the one-way rule between core/'s folders, from the object
-- files' symbols (nm): a folder may use symbols defined in itself and in the
-- folders listed before it, never after.
--
--   luajit tools/layers.lua [-v] [-m MAP] [-k KNOWN] [-s SRCDIR] LAYER1,LAYER2,... OBJ...
--
-- Each OBJ is build/FOLDER/NAME.o (or, with -m, a flat build/NAME.o whose folder
-- MAP gives as "NAME FOLDER" lines: how a move is planned before it is made).
-- Prints every upward reference (user -> symbol -> definer), the folder graph's
-- cycles, and per pair of files the count; exits 1 when there is any.  -v also
-- prints the folder-to-folder reference counts.  With -s, the sources under
-- SRCDIR/LAYER/ are read too: an #include "FOLDER/x.h" of a later folder is
-- an upward reference as well (symbol "#include:FOLDER/x.h").
--
-- With -k, the upward references listed in KNOWN ("folder/file symbol" lines,
-- '#' comments) are the ones still being removed: only a reference not in it
-- fails, and so does a line of it that no longer matches a reference, so that
-- the list only shrinks.
local verbose, mapfile, knownfile, srcdir = false, nil, nil, nil
local args = { ... }
while args[1] and args[1]:sub(1, 1) == "-" do
  local a = table.remove(args, 1)
  if a == "-v" then verbose = true
  elseif a == "-m" then mapfile = table.remove(args, 1)
  elseif a == "-k" then knownfile = table.remove(args, 1)
  elseif a == "-s" then srcdir = table.remove(args, 1)
  else io.stderr:write("layers: unknown option ", a, "\n"); os.exit(2) end
end
local order = table.remove(args, 1)
if not order or #args == 0 then
  io.stderr:write("usage: luajit tools/layers.lua [-v] [-m MAP] LAYER1,LAYER2,... OBJ...\n")
  os.exit(2)
end

local rank, layers = {}, {}
for name in order:gmatch("[^,]+") do
  layers[#layers + 1] = name
  rank[name] = #layers
end

local map = {}
if mapfile then
  for line in assert(io.open(mapfile)):lines() do
    local name, folder = line:match("^%s*(%S+)%s+(%S+)")
    if name and name:sub(1, 1) ~= "#" then map[name] = folder end
  end
end

-- The folder of an object file, and a short name for it ("http/request").
local function place(obj)
  local folder, name = obj:match("([^/]+)/([^/]+)%.o$")
  if mapfile then folder = map[name] end
  if not folder or not rank[folder] then
    io.stderr:write("layers: ", obj, " is in no layer of ", order, "\n")
    os.exit(2)
  end
  return folder, folder .. "/" .. name
end

local function nm(flags, obj)
  local p = assert(io.popen("nm -P " .. flags .. " '" .. obj .. "' 2>/dev/null"))
  local out = {}
  for line in p:lines() do
    local sym, kind = line:match("^(%S+) (%a)")
    if sym then out[#out + 1] = { sym = sym, kind = kind } end
  end
  p:close()
  return out
end

local definer, objs = {}, {}
for _, obj in ipairs(args) do
  local folder, short = place(obj)
  local o = { path = obj, folder = folder, short = short }
  objs[#objs + 1] = o
  for _, s in ipairs(nm("--defined-only", obj)) do
    -- exported text, data and read-only data (lower case = file-local)
    if s.kind:match("[TDBRCVW]") then definer[s.sym] = o end
  end
end

local known, nknown = {}, 0
if knownfile then
  for line in assert(io.open(knownfile)):lines() do
    local user, sym = line:match("^%s*([^#%s]+)%s+(%S+)")
    if user then known[user .. " " .. sym], nknown = false, nknown + 1 end
  end
end

local up, pairs_up, nup, nnew = {}, {}, 0, 0
local fgraph = {} -- folder -> folder -> count of references

-- A reference from folder a to folder b.
local function edge(a, b)
  fgraph[a] = fgraph[a] or {}
  fgraph[a][b] = (fgraph[a][b] or 0) + 1
end

-- An upward reference of user ("folder/file") to sym, defined in target;
-- shown is its report line.  Counted as known when KNOWN lists it.
local function upward(user, sym, target, shown)
  nup = nup + 1
  local key, mark = user .. " " .. sym, "upward: "
  if known[key] ~= nil then known[key], mark = true, "known:  " else nnew = nnew + 1 end
  up[#up + 1] = mark .. shown
  local pk = user .. " -> " .. target
  pairs_up[pk] = (pairs_up[pk] or 0) + 1
end
for _, o in ipairs(objs) do
  for _, s in ipairs(nm("-u", o.path)) do
    local d = definer[s.sym]
    if d and d ~= o then
      edge(o.folder, d.folder)
      if rank[d.folder] > rank[o.folder] then
        upward(o.short, s.sym, d.short, ("%-24s -> %-36s (%s)"):format(o.short, s.sym, d.short))
      end
    end
  end
end

-- Includes: a file of folder F may include headers of F and earlier folders.
if srcdir then
  for _, l in ipairs(layers) do
    local p = assert(io.popen("ls " .. srcdir .. "/" .. l .. " 2>/dev/null"))
    for f in p:lines() do
      if f:match("%.[ch]$") then
        local text = assert(io.open(srcdir .. "/" .. l .. "/" .. f)):read("*a")
        for folder, h in text:gmatch('#include "([%w_]+)/([^"]+)"') do
          if rank[folder] and rank[folder] > rank[l] then
            local short, sym = l .. "/" .. f, "#include:" .. folder .. "/" .. h
            edge(l, folder)
            upward(short, sym, folder .. "/" .. h, ("%-24s -> %s"):format(short, sym))
          end
        end
      end
    end
    p:close()
  end
end

-- Cycles between folders: strongly connected components of more than one.
local index, low, onstack, stack, sccs, n = {}, {}, {}, {}, {}, 0
local function strong(v)
  n = n + 1
  index[v], low[v] = n, n
  stack[#stack + 1] = v
  onstack[v] = true
  for w in pairs(fgraph[v] or {}) do
    if w ~= v then
      if not index[w] then
        strong(w)
        low[v] = math.min(low[v], low[w])
      elseif onstack[w] then
        low[v] = math.min(low[v], index[w])
      end
    end
  end
  if low[v] == index[v] then
    local comp = {}
    repeat
      local w = table.remove(stack)
      onstack[w] = nil
      comp[#comp + 1] = w
    until w == v
    if #comp > 1 then
      table.sort(comp, function(a, b) return rank[a] < rank[b] end)
      sccs[#sccs + 1] = table.concat(comp, " ")
    end
  end
end
for _, l in ipairs(layers) do if not index[l] then strong(l) end end

table.sort(up)
for _, line in ipairs(up) do print(line) end
local gone = {}
for k, seen in pairs(known) do if not seen then gone[#gone + 1] = k end end
table.sort(gone)
for _, k in ipairs(gone) do print("gone:   " .. k .. " (no longer a reference: remove it from " .. knownfile .. ")") end
local keys = {}
for k in pairs(pairs_up) do keys[#keys + 1] = k end
table.sort(keys)
for _, k in ipairs(keys) do print(("pair:   %-50s %d"):format(k, pairs_up[k])) end
for _, c in ipairs(sccs) do print("cycle:  " .. c) end
if verbose then
  for _, a in ipairs(layers) do
    for _, b in ipairs(layers) do
      local c = fgraph[a] and fgraph[a][b]
      if c and a ~= b then print(("uses:   %-8s -> %-8s %d"):format(a, b, c)) end
    end
  end
end
print(("layers: %d objects, %d upward references in %d file pairs, %d folder cycles (%s)")
  :format(#objs, nup, #keys, #sccs, order))
if knownfile then
  print(("layers: %d of them new, %d known still to remove, %d known gone"):format(nnew, nup - nnew, #gone))
  os.exit((nnew > 0 or #gone > 0) and 1 or 0)
end
os.exit((nup > 0 or #sccs > 0) and 1 or 0)
