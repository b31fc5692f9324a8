-- moxy.router: match requests to handlers by method, host and path, pure Lua.
--
--   local r = require("moxy.router").new()
--   r:get("/users/:id", function(txn, params) ... end)       -- params.id
--   r:get("/static/*", serve, { host = "*.example.com" })    -- params.splat
--   r:add({ "GET", "HEAD" }, "/health", health, { strict_slash = false })
--   return { on_request = function(txn) r:dispatch(txn) end }
--
-- Patterns: "/a/b" exact; "/a/*" prefix (the rest of the path, maybe empty,
-- is params.splat; "*" only as the last segment); "/users/:id" one non-empty
-- segment captured as params.id (names are [%w_]+).  Paths are compared as
-- received (case-sensitive, not percent-decoded).  Routes are tried in the
-- order they were added; the first one that matches wins.  Each pattern is
-- compiled once, in r:add, to a string compare, a prefix compare or a Lua
-- pattern.

local M = {}

local type, error, tostring, ipairs, pairs, setmetatable, getmetatable =
  type, error, tostring, ipairs, pairs, setmetatable, getmetatable
local find, sub, match, lower, upper, byte, gsub =
  string.find, string.sub, string.match, string.lower, string.upper, string.byte, string.gsub

local EXACT, PREFIX, PATTERN = 1, 2, 3

local Router = {}
Router.__index = Router

local OPTS = { host = true, strict_slash = true }

local function lua_escape(s)
  return (gsub(s, "%p", "%%%0"))
end

-- Compile `pattern` into the fields of route `rt`; `fn` names the caller for errors.
local function compile(rt, pattern, strict, fn)
  if type(pattern) ~= "string" then
    error(fn .. ": pattern must be a string, got " .. type(pattern), 3)
  end
  if byte(pattern, 1) ~= 47 then -- "/"
    error(fn .. ": pattern must start with \"/\": " .. pattern, 3)
  end
  if find(pattern, "[%s%c?#]") then
    error(fn .. ": pattern may not hold spaces, control characters, \"?\" or \"#\": " .. pattern, 3)
  end
  -- split into segments (the first, before the leading "/", is empty)
  local segs, names, seen, dynamic = {}, {}, {}, false
  local splat = false
  local pos, len = 2, #pattern
  while true do
    local slash = find(pattern, "/", pos, true)
    local seg = sub(pattern, pos, (slash or len + 1) - 1)
    local last = slash == nil
    if seg == "" and not last then
      error(fn .. ": empty segment (\"//\") in pattern " .. pattern, 3)
    end
    if seg == "*" then
      if not last then error(fn .. ": \"*\" must be the last segment: " .. pattern, 3) end
      splat, dynamic = true, true
    elseif find(seg, "*", 1, true) then
      error(fn .. ": \"*\" must be a whole segment: " .. pattern, 3)
    elseif byte(seg, 1) == 58 then -- ":"
      local name = sub(seg, 2)
      if not find(name, "^[%w_]+$") then
        error(fn .. ": bad parameter name \"" .. seg .. "\" in pattern " .. pattern
          .. " (names are letters, digits and _)", 3)
      end
      if name == "splat" then error(fn .. ": \":splat\" is reserved for \"*\": " .. pattern, 3) end
      if seen[name] then error(fn .. ": parameter \":" .. name .. "\" used twice in " .. pattern, 3) end
      seen[name] = true
      names[#names + 1] = name
      dynamic = true
    end
    segs[#segs + 1] = seg
    if last then break end
    pos = slash + 1
  end

  if not dynamic then
    rt.kind = EXACT
    rt.path = pattern
    if not strict and len > 1 then
      if byte(pattern, len) == 47 then
        rt.alt = sub(pattern, 1, len - 1)
      else
        rt.alt = pattern .. "/"
      end
    end
    return
  end

  if splat and #names == 0 then
    rt.kind = PREFIX
    rt.prefix = sub(pattern, 1, len - 1) -- keeps the "/" before "*"
    rt.prefix_len = len - 1
    if not strict and len > 2 then rt.alt = sub(pattern, 1, len - 2) end
    return
  end

  rt.kind = PATTERN
  local parts = { "^" }
  local nsegs = #segs
  for i = 1, nsegs do
    local seg = segs[i]
    if i < nsegs or seg ~= "" then -- a trailing "/" leaves an empty last segment
      parts[#parts + 1] = "/"
      if seg == "*" then
        parts[#parts + 1] = "(.*)"
      elseif byte(seg, 1) == 58 then
        parts[#parts + 1] = "([^/]+)"
      else
        parts[#parts + 1] = lua_escape(seg)
      end
    end
  end
  local trailing = segs[nsegs] == ""
  if splat then
    names[#names + 1] = "splat"
    rt.lpat = table.concat(parts) .. "$"
    if not strict then
      -- "/u/:id/*" also matches "/u/1" (splat ""); the "/" and "(.*)" are the last two parts
      parts[#parts] = nil
      parts[#parts] = nil
      rt.alt = table.concat(parts) .. "$"
    end
  elseif strict then
    rt.lpat = table.concat(parts) .. (trailing and "/$" or "$")
  else
    rt.lpat = table.concat(parts) .. "/?$"
  end
  rt.names = names
  rt.ncaps = #names
end

-- host option -> lower-case exact host, or suffix (".example.com") for "*.example.com"
local function compile_host(rt, host, fn)
  if type(host) ~= "string" then
    error(fn .. ": opts.host must be a string, got " .. type(host), 3)
  end
  host = lower(host)
  if sub(host, 1, 2) == "*." then
    local rest = sub(host, 3)
    if rest == "" or find(rest, "[%*:/%s]") then error(fn .. ": bad opts.host \"" .. host .. "\"", 3) end
    rt.host_suffix = sub(host, 2)
    rt.host_suffix_len = #host - 1
  else
    if host == "" or find(host, "[%*/%s]") then error(fn .. ": bad opts.host \"" .. host .. "\"", 3) end
    rt.host = host
  end
end

local function compile_methods(rt, methods, fn)
  if methods == "*" then return end
  local list = methods
  if type(methods) == "string" then
    list = { methods }
  elseif type(methods) ~= "table" then
    error(fn .. ": method must be a string or a list of strings, got " .. type(methods), 3)
  elseif methods[1] == nil then
    error(fn .. ": empty method list", 3)
  end
  local set = {}
  for _, m in ipairs(list) do
    if m == "*" then return end
    if type(m) ~= "string" or not find(m, "^[%a_%-]+$") then
      error(fn .. ": bad method " .. tostring(m), 3)
    end
    set[upper(m)] = true
  end
  rt.methods = set
end

local function add(self, methods, pattern, handler, opts, fn)
  local ht = type(handler)
  if ht ~= "function" then
    local mt = ht == "table" and getmetatable(handler)
    if not (mt and mt.__call) then
      error(fn .. ": handler must be a function, got " .. ht, 3)
    end
  end
  local strict = true
  local rt = { handler = handler, pattern = pattern }
  if opts ~= nil then
    if type(opts) ~= "table" then error(fn .. ": opts must be a table, got " .. type(opts), 3) end
    for k in pairs(opts) do
      if not OPTS[k] then error(fn .. ": unknown option " .. tostring(k), 3) end
    end
    if opts.strict_slash == false then strict = false end
    if opts.host ~= nil then compile_host(rt, opts.host, fn) end
  end
  compile_methods(rt, methods, fn)
  compile(rt, pattern, strict, fn)
  local n = self.n + 1
  self.routes[n] = rt
  self.n = n
  if rt.host or rt.host_suffix then self.any_host = true end
  return self
end

--- router.new() -> an empty router.
function M.new()
  local router = setmetatable({ routes = {}, n = 0, any_host = false }, Router)
  return router
end

--- r:add(method, pattern, handler, opts) -> r: add a route after the others.
-- method: "GET", ..., "*" (any) or a list of them; handler(txn, params);
-- opts: { host = "example.com" | "*.example.com", strict_slash = false }.
-- Raises on a bad pattern, method, handler or option.
function Router:add(methods, pattern, handler, opts)
  return add(self, methods, pattern, handler, opts, "router:add")
end

--- r:get(pattern, handler, opts) -> r: r:add("GET", ...).
function Router:get(pattern, handler, opts) return add(self, "GET", pattern, handler, opts, "router:get") end
--- r:post(pattern, handler, opts) -> r: r:add("POST", ...).
function Router:post(pattern, handler, opts) return add(self, "POST", pattern, handler, opts, "router:post") end
--- r:put(pattern, handler, opts) -> r: r:add("PUT", ...).
function Router:put(pattern, handler, opts) return add(self, "PUT", pattern, handler, opts, "router:put") end
--- r:delete(pattern, handler, opts) -> r: r:add("DELETE", ...).
function Router:delete(pattern, handler, opts)
  return add(self, "DELETE", pattern, handler, opts, "router:delete")
end
--- r:patch(pattern, handler, opts) -> r: r:add("PATCH", ...).
function Router:patch(pattern, handler, opts) return add(self, "PATCH", pattern, handler, opts, "router:patch") end
--- r:head(pattern, handler, opts) -> r: r:add("HEAD", ...).
function Router:head(pattern, handler, opts) return add(self, "HEAD", pattern, handler, opts, "router:head") end
--- r:options(pattern, handler, opts) -> r: r:add("OPTIONS", ...).
function Router:options(pattern, handler, opts)
  return add(self, "OPTIONS", pattern, handler, opts, "router:options")
end
--- r:any(pattern, handler, opts) -> r: r:add("*", ...), any method.
function Router:any(pattern, handler, opts) return add(self, "*", pattern, handler, opts, "router:any") end

-- Host header value -> lower case, without the port; false when absent.
local function norm_host(host)
  if type(host) ~= "string" or host == "" then return false end
  if byte(host, 1) == 91 then -- "[v6]:port"
    local v6 = match(host, "^(%[[^%]]*%])")
    return v6 and lower(v6) or false
  end
  local name = match(host, "^([^:]*):%d*$")
  if name then host = name end
  if byte(host, -1) == 46 then host = sub(host, 1, -2) end -- "example.com."
  return lower(host)
end

local function params_of(rt, a, b, c, d, path, lpat)
  local names, n = rt.names, rt.ncaps
  local p = { [names[1]] = a }
  if n > 1 then p[names[2]] = b end
  if n > 2 then p[names[3]] = c end
  if n > 3 then p[names[4]] = d end
  if n > 4 then
    local all = { match(path, lpat) }
    for i = 5, n do p[names[i]] = all[i] end
  end
  return p
end

--- r:match(method, host, path) -> handler, params of the first matching route, or nil.
-- host may be nil (then routes with opts.host do not match); it may carry a
-- ":port".  params: captures by name (":id" -> params.id, "*" -> params.splat).
function Router:match(method, host, path)
  if type(path) ~= "string" then return nil, "router:match: path must be a string" end
  local lhost = nil
  local routes = self.routes
  for i = 1, self.n do
    local rt = routes[i]
    local ms = rt.methods
    if ms == nil or ms[method] then
      local ok = true
      if rt.host then
        if lhost == nil then lhost = norm_host(host) end
        ok = lhost == rt.host
      elseif rt.host_suffix then
        if lhost == nil then lhost = norm_host(host) end
        ok = lhost and #lhost > rt.host_suffix_len
          and sub(lhost, -rt.host_suffix_len) == rt.host_suffix
      end
      if ok then
        local kind = rt.kind
        if kind == EXACT then
          if path == rt.path or path == rt.alt then return rt.handler, {} end
        elseif kind == PREFIX then
          if find(path, rt.prefix, 1, true) == 1 then
            return rt.handler, { splat = sub(path, rt.prefix_len + 1) }
          elseif path == rt.alt then
            return rt.handler, { splat = "" }
          end
        else
          local lpat = rt.lpat
          local a, b, c, d = match(path, lpat)
          if a then return rt.handler, params_of(rt, a, b, c, d, path, lpat) end
          lpat = rt.alt
          if lpat then
            a, b, c, d = match(path, lpat)
            if a then
              local p = params_of(rt, a, b, c, d, path, lpat)
              p.splat = ""
              return rt.handler, p
            end
          end
        end
      end
    end
  end
  return nil
end

--- r:dispatch(txn) -> true if a route matched txn.req.method/host/path (its
-- handler(txn, params) has run), else false.
function Router:dispatch(txn)
  local req = txn.req
  local handler, params = self:match(req.method, req.host, req.path)
  if handler == nil then return false end
  handler(txn, params)
  return true
end

return M
