-- moxy.config: load a configuration file, check it against the schema and
-- return it normalised (sizes in bytes, durations in seconds, addresses split).
--
-- Errors name the file, the line and the key path:
--   /etc/moxy/moxy.lua:12: upstreams.app.servers[2]: bad address "10.0.0.1:99999"
-- A Lua table does not remember where its keys were written, so the line is
-- found by searching the source for the path's keys in order (the nearest
-- named key when the path ends in an array index).

local M = {}

-- The access log's JSON fields, in core/http/access_log.c's order (ALF_*), and
-- the default set.
M.LOG_FIELDS = { "time", "request_id", "client", "method", "uri", "protocol", "status", "bytes", "upstream", "duration_ms", "referer", "user_agent", "error", "host", "socket_client", "pool", "tries", "upstream_status", "upstream_header_ms", "listener" }
M.LOG_FIELDS_DEFAULT = { "time", "request_id", "client", "method", "uri", "protocol", "status", "bytes", "upstream", "duration_ms", "referer", "user_agent", "error" }

local function escape(s)
  return (s:gsub("%p", "%%%0"))
end

-- Line of the key path `keys` in `src`, or nil.  When the bad `value` is a
-- string, the line of its literal after the last key found is better.
local function line_of(src, keys, value)
  local pos, found = 1, nil
  for _, k in ipairs(keys) do
    if type(k) == "string" then
      local e = escape(k)
      local s = src:find("%f[%w_]" .. e .. "%s*=", pos)
        or src:find("%[%s*[\"']" .. e .. "[\"']%s*%]%s*=", pos)
      if s then
        pos, found = s, s
      end
    end
  end
  if type(value) == "string" then
    local e = escape(value)
    local s = src:find("[\"']" .. e .. "[\"']", found or 1)
    if s then found = s end
  end
  if not found then return nil end
  local _, n = src:sub(1, found):gsub("\n", "")
  return n + 1
end

local function path_text(keys)
  local out = {}
  for i, k in ipairs(keys) do
    if type(k) == "number" then
      out[#out + 1] = "[" .. k .. "]"
    elseif i == 1 then
      out[#out + 1] = k
    else
      out[#out + 1] = "." .. k
    end
  end
  return table.concat(out)
end

local function child(keys, k)
  local c = { unpack(keys) }
  c[#c + 1] = k
  return c
end

-- Value parsers: return the normalised value, or nil and a message. ----------

local SIZE_UNITS = { [""] = 1, b = 1, k = 1024, m = 1024 ^ 2, g = 1024 ^ 3 }
-- The largest size and duration: the core turns sizes into size_t and
-- durations into microseconds in 64-bit integers (and timevals); larger
-- values (1e999 is inf) would not convert.
local MAX_SIZE, MAX_DURATION = 2 ^ 53, 10 * 365 * 86400

local function size(v)
  if type(v) == "number" then
    if v >= 0 and v == math.floor(v) and v <= MAX_SIZE then return v end
    if v >= 0 and v == math.floor(v) then return nil, "size too large (at most 2^53 bytes), got " .. v end
    return nil, "expected a whole number of bytes, got " .. v
  end
  if type(v) ~= "string" then return nil, "expected a size (number or \"64k\"), got " .. type(v) end
  local n, u = v:lower():match("^%s*(%d+)%s*([kmgb]?)%s*$")
  if not n then return nil, "bad size \"" .. v .. "\" (use bytes or 64k, 16m, 1g)" end
  local r = tonumber(n) * SIZE_UNITS[u]
  if r > MAX_SIZE then return nil, "size too large (at most 2^53 bytes): \"" .. v .. "\"" end
  return r
end

local TIME_UNITS = { ms = 0.001, s = 1, m = 60, h = 3600 }

local function duration(v)
  if type(v) == "number" then
    if v >= 0 and v <= MAX_DURATION then return v end
    if v >= 0 then return nil, "duration too long (at most 10 years), got " .. v end
    return nil, "expected a duration >= 0, got " .. v
  end
  if type(v) ~= "string" then return nil, "expected a duration (seconds or \"250ms\"), got " .. type(v) end
  local n, u = v:lower():match("^%s*(%d+%.?%d*)%s*(m?s?h?)%s*$")
  if not n then return nil, "bad duration \"" .. v .. "\" (use 250ms, 10s, 5m, 1h)" end
  if u == "" then u = "s" end
  if not TIME_UNITS[u] then return nil, "bad duration \"" .. v .. "\" (use 250ms, 10s, 5m, 1h)" end
  local r = tonumber(n) * TIME_UNITS[u]
  if r > MAX_DURATION then return nil, "duration too long (at most 10 years): \"" .. v .. "\"" end
  return r
end

local function ipv4(h)
  local a, b, c, d = h:match("^(%d+)%.(%d+)%.(%d+)%.(%d+)$")
  if not a then return false end
  for _, o in ipairs { a, b, c, d } do
    -- no leading zero: inet_pton (config.c) refuses "010" (octal to some parsers)
    if #o > 3 or tonumber(o) > 255 or (#o > 1 and o:sub(1, 1) == "0") then return false end
  end
  return true
end

-- 1 when h is an IPv6 literal (RFC 4291 2.2: groups of 1..4 hex digits, at
-- most one "::", an optional dotted IPv4 tail), without brackets or zone.
local function ipv6(h)
  if #h < 2 or #h > 45 or h:find("[^%x:.]") then return false end
  local v4 = h:match(":(%d+%.%d+%.%d+%.%d+)$")
  if v4 then
    if not ipv4(v4) then return false end
    h = h:sub(1, #h - #v4) .. "0:0" -- the tail counts as two groups
  end
  if h:find(".", 1, true) then return false end
  local function groups(g)
    if g == "" then return 0 end
    local n = 0
    for x in (g .. ":"):gmatch("([^:]*):") do
      if #x < 1 or #x > 4 then return nil end
      n = n + 1
    end
    return n
  end
  local dbl = h:find("::", 1, true)
  if not dbl then return groups(h) == 8 end
  if h:find("::", dbl + 1, true) then return false end
  local a, b = groups(h:sub(1, dbl - 1)), groups(h:sub(dbl + 2))
  return a ~= nil and b ~= nil and a + b <= 7
end

-- A trusted_proxies entry, "10.0.0.0/8", "192.0.2.7", "fd00::/8" or "::1"
-- -> { text = v, addr = "10.0.0.0", family = 4|6, bits = n }.  Bits below
-- the prefix are ignored (as nginx's set_real_ip_from does).
local function cidr(v)
  if type(v) ~= "string" then return nil, "expected an address or CIDR (\"10.0.0.0/8\"), got " .. type(v) end
  local host, bits = v:match("^([^/]+)/(%d+)$")
  if not host then host = v end
  local family = ipv4(host) and 4 or ipv6(host) and 6
  if not family then return nil, "bad address \"" .. v .. "\" (expected an IPv4 or IPv6 address or CIDR)" end
  local max = family == 4 and 32 or 128
  bits = bits and tonumber(bits) or max
  if bits > max then return nil, "bad prefix in \"" .. v .. "\" (at most /" .. max .. ")" end
  return { text = v, addr = host, family = family, bits = bits }
end

-- "host:port" -> { host = ..., port = n, family = 4|6 }.  Hosts are IP
-- literals ("127.0.0.1", "[::1]"), "localhost" or "*" (any address).
local function address(v)
  if type(v) ~= "string" then return nil, "expected an address \"host:port\", got " .. type(v) end
  local host, port = v:match("^%[([%x:.]+)%]:(%d+)$")
  local family = 6
  if not host then
    host, port = v:match("^([^:]*):(%d+)$")
    family = 4
  end
  if not host then return nil, "bad address \"" .. v .. "\" (expected host:port)" end
  port = tonumber(port)
  if port < 1 or port > 65535 then return nil, "bad address \"" .. v .. "\" (port out of range)" end
  if family == 4 then
    if host == "" or host == "*" then
      host = "0.0.0.0"
    elseif host == "localhost" then
      host = "127.0.0.1"
    elseif not ipv4(host) then
      return nil, "bad address \"" .. v .. "\" (expected an IP address)"
    end
  elseif not ipv6(host) then
    return nil, "bad address \"" .. v .. "\" (bad IPv6 literal)"
  end
  return { text = v, host = host, port = port, family = family }
end

-- Schema walking -------------------------------------------------------------

local Checker = {}
Checker.__index = Checker

function Checker:err(keys, msg, value)
  local line = line_of(self.src, keys, value) or self.return_line or 1
  self.errors[#self.errors + 1] = string.format("%s:%d: %s: %s", self.path, line, path_text(keys), msg)
end

-- Check that `t` is a table with only the keys in `allowed`.
function Checker:table(t, keys, allowed)
  if type(t) ~= "table" then
    self:err(keys, "expected a table, got " .. type(t))
    return false
  end
  for k in pairs(t) do
    if not allowed[k] then
      local names = {}
      for n in pairs(allowed) do
        if type(n) == "string" then names[#names + 1] = n end
      end
      table.sort(names)
      self:err(child(keys, tostring(k)), "unknown key (expected one of: " .. table.concat(names, ", ") .. ")")
    end
  end
  return true
end

function Checker:value(v, keys, parse, default)
  if v == nil then return default end
  local r, msg = parse(v)
  if r == nil then
    self:err(keys, msg, v)
    return default
  end
  return r
end

local function typed(want)
  return function(v)
    if type(v) ~= want then return nil, "expected a " .. want .. ", got " .. type(v) end
    return v
  end
end

local function integer(min, max)
  return function(v)
    if type(v) ~= "number" or v ~= math.floor(v) then
      return nil, "expected a whole number, got " .. (type(v) == "number" and v or type(v))
    end
    if v < min or v > max then return nil, string.format("expected a number in %d..%d, got %d", min, max, v) end
    return v
  end
end

local function one_of(...)
  local set = { ... }
  return function(v)
    for _, s in ipairs(set) do
      if v == s then return v end
    end
    return nil, "expected one of \"" .. table.concat(set, "\", \"") .. "\", got " .. tostring(v)
  end
end

local function workers(v)
  if v == "auto" then return 0 end
  return integer(1, 256)(v)
end

local function list(c, v, keys)
  if v == nil then return {} end
  if type(v) ~= "table" then
    c:err(keys, "expected a list, got " .. type(v))
    return {}
  end
  local n = #v
  for k in pairs(v) do
    if type(k) ~= "number" or k < 1 or k > n or k ~= math.floor(k) then
      c:err(child(keys, tostring(k)), "unknown key (expected a list)")
    end
  end
  return v
end

-- A listener's `upgrade`: the protocols a client may switch to (Upgrade,
-- RFC 9110 7.8) through a tunnel, as tokens ("websocket"); default
-- { "websocket" }, {} for none.  Normalised to one lower-case comma list.
function Checker:upgrade_protocols(v, keys)
  if v == nil then return "websocket" end
  local out = {}
  for i, p in ipairs(list(self, v, keys)) do
    if type(p) ~= "string" or not p:match("^[%w!#$%%&'*+.^_`|~-]+$") then
      self:err(child(keys, i), "expected a protocol name (a token such as \"websocket\")")
    else
      out[#out + 1] = p:lower()
    end
  end
  return table.concat(out, ",")
end

local TLS_VERSIONS = { ["TLSv1.2"] = 12, ["TLSv1.3"] = 13 }

-- A file a setting names (what it holds, for the message): its path made
-- absolute (relative to the configuration's folder) when it can be opened,
-- else nil after an error naming the key.  Its bytes too when read is set.
function Checker:file(v, keys, what, read)
  local p = self:value(v, keys, typed("string"))
  if not p then return nil end
  local full = p:sub(1, 1) == "/" and p or self.dir .. "/" .. p
  local fh, err = io.open(full, "rb")
  if not fh then
    self:err(keys, "cannot open " .. what .. ": " .. tostring(err), p)
    return nil
  end
  local bytes = read and fh:read("*a")
  fh:close()
  return full, bytes
end

-- A listener's `tls`: its certificates ({ cert = path, key = path }, the
-- first one for clients that name no host or one no certificate serves,
-- unless refuse_unknown), the protocol versions and the ciphers.  Paths
-- are relative to the configuration's folder; each file must be readable.
function Checker:tls(v, keys)
  if v == nil then return nil end
  if not self:table(v, keys, { certificates = true, refuse_unknown = true, protocols = true, ciphers = true,
                               ciphersuites = true, groups = true, client_ca = true, verify_clients = true,
                               verify_depth = true, ticket_keys = true, hello_cache = true }) then
    return nil
  end
  local out = { certificates = {} }
  local ck = child(keys, "certificates")
  local certs = list(self, v.certificates, ck)
  if #certs == 0 then self:err(ck, "at least one { cert = ..., key = ... } is required") end
  for i, cert in ipairs(certs) do
    local k = child(ck, i)
    if self:table(cert, k, { cert = true, key = true, ocsp = true }) then
      local one = {}
      for f, what in pairs({ cert = "certificate", key = "key", ocsp = "OCSP response" }) do
        if cert[f] == nil and f ~= "ocsp" then self:err(k, f .. " is required") end
        one[f] = self:file(cert[f], child(k, f), what)
      end
      out.certificates[#out.certificates + 1] = one
    end
  end
  out.refuse_unknown = self:value(v.refuse_unknown, child(keys, "refuse_unknown"), typed("boolean"), false)
  local min, max = 12, 13
  if v.protocols ~= nil then
    min, max = nil, nil
    for i, p in ipairs(list(self, v.protocols, child(keys, "protocols"))) do
      local n = TLS_VERSIONS[p]
      if not n then
        self:err(child(child(keys, "protocols"), i), "expected \"TLSv1.2\" or \"TLSv1.3\" (older ones are not offered)", p)
      else
        min, max = math.min(min or n, n), math.max(max or n, n)
      end
    end
    if not min then
      self:err(child(keys, "protocols"), "at least one of \"TLSv1.2\", \"TLSv1.3\"")
      min, max = 12, 13
    end
  end
  out.min_version, out.max_version = min, max
  for _, f in ipairs({ "ciphers", "ciphersuites", "groups" }) do
    out[f] = self:value(v[f], child(keys, f), typed("string"))
  end
  -- mutual TLS: client certificates chained to client_ca, asked for
  -- ("optional": txn.client.tls.verified says) or required
  local vc = self:value(v.verify_clients, child(keys, "verify_clients"), one_of("off", "optional", "require"), "off")
  out.verify_clients = ({ off = 0, optional = 1, require = 2 })[vc] or 0
  out.verify_depth = self:value(v.verify_depth, child(keys, "verify_depth"), integer(1, 16), 3)
  -- certificates on_tls_hello hooks supplied, kept by name for the next
  -- handshakes (hello:use), at most this many
  out.hello_cache = self:value(v.hello_cache, child(keys, "hello_cache"), integer(0, 1000000), 1000)
  local tk, bytes = self:file(v.ticket_keys, child(keys, "ticket_keys"), "ticket keys", true)
  if tk and (#bytes == 0 or #bytes % 80 ~= 0 or #bytes > 80 * 16) then
    self:err(child(keys, "ticket_keys"), "expected 1 to 16 keys of 80 bytes each (e.g. openssl rand 80), got "
      .. #bytes .. " bytes", v.ticket_keys)
    tk = nil
  end
  out.ticket_keys = tk
  out.client_ca = self:file(v.client_ca, child(keys, "client_ca"), "CA certificates")
  if out.verify_clients > 0 and v.client_ca == nil then
    self:err(child(keys, "verify_clients"), "client_ca is required to verify clients")
  end
  return out
end

function Checker:listen(v, keys)
  local out = {}
  if v == nil then
    self:err(keys, "at least one listener is required")
    return out
  end
  if type(v) == "string" then v = { v } end
  for i, l in ipairs(list(self, v, keys)) do
    local k = child(keys, i)
    local ak = child(k, "addr")
    if type(l) == "string" then
      l, ak = { addr = l }, k
    end
    if self:table(l, k, { addr = true, name = true, upstream = true, backlog = true, proxy_protocol = true,
                          upgrade = true, tls = true, http2 = true,
                          compression = true, mask = true, access = true }) then
      local a = self:value(l.addr, ak, address)
      if l.addr == nil then self:err(k, "addr is required") end
      if a then
        out[#out + 1] = {
          addr = a,
          name = self:value(l.name, child(k, "name"), typed("string"), a.text),
          upstream = self:value(l.upstream, child(k, "upstream"), typed("string")),
          upstream_keys = child(k, "upstream"),
          backlog = self:value(l.backlog, child(k, "backlog"), integer(1, 65535), 4096),
          proxy_protocol = self:value(l.proxy_protocol, child(k, "proxy_protocol"), typed("boolean"), false),
          upgrade = self:upgrade_protocols(l.upgrade, child(k, "upgrade")),
          tls = self:tls(l.tls, child(k, "tls")),
          http2 = self:value(l.http2, child(k, "http2"), typed("boolean"), false),
          compression = l.compression ~= nil and self:compression(l.compression, child(k, "compression"),
                                                                  self.compress_top) or nil,
          mask = l.mask ~= nil and self:mask(l.mask, child(k, "mask"), self.mask_top) or nil,
        }
        if l.access ~= nil then out[#out].access = self:access(l.access, child(k, "access")) end
      end
    end
  end
  if #v == 0 then self:err(keys, "at least one listener is required") end
  return out
end

-- compression = {...}: responses compressed on the way out (and decoded
-- for clients that cannot read the origin's coding).  The top level's
-- table is complete with defaults; a listener's or a pool's is the top
-- level's with its own keys over it (false: off there).
local CODINGS = { gzip = 1, br = 2, zstd = 3 }
local CODING_RANGES = { -- level, window (log2), defaults
  gzip = { level = { 1, 9, 6 }, window = { 9, 15, 15 } },
  br = { level = { 0, 11, 4 }, window = { 10, 24, 18 } },
  zstd = { level = { 1, 19, 3 }, window = { 10, 23, 19 } },
}
M.COMPRESS_TYPES = {
  "text/*", "application/json", "application/*+json", "application/javascript", "application/x-javascript",
  "application/ecmascript", "application/xml", "application/*+xml", "image/svg+xml", "application/wasm",
  "font/ttf", "font/otf", "font/collection", "application/vnd.ms-fontobject", "application/x-font-ttf",
  "application/x-font-opentype", "image/x-icon", "image/vnd.microsoft.icon", "image/bmp",
}
local COMPRESS_KEYS = { enabled = true, encodings = true, types = true, min_length = true, gzip = true, br = true,
                        zstd = true, decompress = true, memory = true }

local function compress_defaults()
  local d = {
    enabled = true, encodings = { 2, 3, 1 }, types = M.COMPRESS_TYPES, min_length = 256,
    decompress = { codings = { [1] = true }, max_size = 256 * 1024 * 1024, max_ratio = 100 },
  }
  for name, r in pairs(CODING_RANGES) do
    d[name] = { level = r.level[3], window = r.window[3], mem_level = name == "gzip" and 8 or nil }
  end
  return d
end

local function copy(t)
  if type(t) ~= "table" then return t end
  local o = {}
  for k, v in pairs(t) do o[k] = copy(v) end
  return o
end

-- A media-type pattern: "type/subtype", "type/*", "type/*+suffix" (lower case).
local function media_pattern(v)
  if type(v) ~= "string" then return nil, "expected a media type such as \"text/*\", got " .. type(v) end
  local l = v:lower()
  if not (l:match("^[%w!#$&^_.+-]+/[%w!#$&^_.+-]+$") or l:match("^[%w!#$&^_.+-]+/%*$")
          or l:match("^[%w!#$&^_.+-]+/%*%+[%w!#$&^_.-]+$")) then
    return nil, "expected \"type/subtype\", \"type/*\" or \"type/*+suffix\", got \"" .. v .. "\""
  end
  return l
end

function Checker:compression(v, keys, base)
  local out = copy(base) or compress_defaults()
  if v == nil then return out end
  if v == false or v == true then
    out.enabled = v
    return out
  end
  local allowed = COMPRESS_KEYS
  if base then -- the worker's memory budget is the top level's only
    allowed = copy(COMPRESS_KEYS)
    allowed.memory = nil
  end
  if not self:table(v, keys, allowed) then return out end
  out.enabled = self:value(v.enabled, child(keys, "enabled"), typed("boolean"), out.enabled)
  if v.encodings ~= nil then
    local k = child(keys, "encodings")
    local seen, order = {}, {}
    for i, name in ipairs(list(self, v.encodings, k)) do
      local code = CODINGS[name]
      if not code then
        self:err(child(k, i), "unknown coding (expected \"br\", \"zstd\" or \"gzip\")", name)
      elseif seen[code] then
        self:err(child(k, i), "listed twice", name)
      else
        seen[code] = true
        order[#order + 1] = code
      end
    end
    out.encodings = order
  end
  if v.types ~= nil then
    local k = child(keys, "types")
    local types = {}
    for i, t in ipairs(list(self, v.types, k)) do
      types[#types + 1] = self:value(t, child(k, i), media_pattern)
    end
    out.types = types
  end
  out.min_length = self:value(v.min_length, child(keys, "min_length"), size, out.min_length)
  for name, r in pairs(CODING_RANGES) do
    local cv = v[name]
    if cv ~= nil then
      local k = child(keys, name)
      local ok_keys = { level = true, window = true }
      if name == "gzip" then ok_keys.mem_level = true end
      if self:table(cv, k, ok_keys) then
        local o = out[name]
        o.level = self:value(cv.level, child(k, "level"), integer(r.level[1], r.level[2]), o.level)
        o.window = self:value(cv.window, child(k, "window"), integer(r.window[1], r.window[2]), o.window)
        if name == "gzip" then o.mem_level = self:value(cv.mem_level, child(k, "mem_level"), integer(1, 9), o.mem_level) end
      end
    end
  end
  if v.decompress ~= nil then
    local k = child(keys, "decompress")
    local d = v.decompress
    if d == false then
      out.decompress.codings = {}
    elseif self:table(d, k, { gzip = true, br = true, zstd = true, max_size = true, max_ratio = true }) then
      for name, code in pairs(CODINGS) do
        local on = self:value(d[name], child(k, name), typed("boolean"))
        if on ~= nil then out.decompress.codings[code] = on or nil end
      end
      out.decompress.max_size = self:value(d.max_size, child(k, "max_size"), size, out.decompress.max_size)
      local mr = self:value(d.max_ratio, child(k, "max_ratio"), function(x)
        if type(x) ~= "number" or x < 2 then return nil, "expected a number >= 2" end
        return x
      end)
      if mr then out.decompress.max_ratio = mr end
    end
  end
  if v.memory ~= nil then out.memory = self:value(v.memory, child(keys, "memory"), size) end
  return out
end

-- mask = {...}: what clients learn of the origins and of moxy.  The top
-- level's table is complete with defaults; a listener's is the top level's
-- with its own keys over it.  Normalised: { headers = { lower-case names },
-- server = string or nil, via = string or nil }.
M.MASK_HEADERS = {
  "Server", "X-Powered-By", "X-AspNet-Version", "X-AspNetMvc-Version", -- software and version
  "X-Generator",                                                       -- the CMS that made the page
  "X-Backend-Server",                                                  -- the origin host's name
  "X-Debug-Token", "X-Debug-Token-Link",                               -- a debug profiler's, and where it is
}
local MASK_KEYS = { headers = true, add = true, server = true, via = true }
local MAX_MASKED = 256
-- Fields moxy frames or drops itself: masking them would break a response,
-- or mean nothing.
local UNMASKABLE = { ["content-length"] = true, ["transfer-encoding"] = true, connection = true, upgrade = true,
                     ["keep-alive"] = true, te = true, trailer = true }

local function mask_defaults()
  local names = {}
  for i, n in ipairs(M.MASK_HEADERS) do names[i] = n:lower() end
  return { headers = names, via = "moxy" }
end

-- A field name of mask.headers, lower case.
local function masked_name(v)
  if type(v) ~= "string" or not v:match("^[%w!#$%%&'*+%-.^_`|~]+$") then
    return nil, "expected a header field name (a token such as \"X-Powered-By\"), got " ..
      (type(v) == "string" and ("\"" .. v .. "\"") or type(v))
  end
  local l = v:lower()
  if UNMASKABLE[l] or l:sub(1, 6) == "proxy-" then
    return nil, v .. " is framing or hop-by-hop, which moxy writes or drops itself: it cannot be masked"
  end
  return l
end

-- mask.server: true ("moxy"), false (none) or a product ("edge/2", up to
-- 128 visible characters and spaces; none that HTML reads, since error
-- pages are signed with it).
local function server_name(v)
  if v == true then return "moxy" end
  if v == false then return false end
  if type(v) ~= "string" or #v == 0 or #v > 128 or v:find("[^\32-\126]") or v:find("[<>&\"'\\]")
     or v:find("^ ") or v:find(" $") then
    return nil, "expected true, false or a name such as \"edge/2\" (1..128 visible characters, spaces "
      .. "between, none of < > & \" ' \\)"
  end
  return v
end

-- mask.via: true ("moxy"), false (no Via) or a pseudonym (a token, RFC 9110 7.6.3).
local function via_name(v)
  if v == true then return "moxy" end
  if v == false then return false end
  if type(v) ~= "string" or #v > 64 or not v:match("^[%w!#$%%&'*+%-.^_`|~]+$") then
    return nil, "expected true, false or a pseudonym (a token of 1..64 letters, digits and !#$%&'*+-.^_`|~)"
  end
  return v
end

function Checker:mask(v, keys, base)
  local out = copy(base) or mask_defaults()
  if v == nil then return out end
  if v == false then
    out.headers = {}
    return out
  end
  if v == true then
    out.headers = mask_defaults().headers
    return out
  end
  if not self:table(v, keys, MASK_KEYS) then return out end
  local seen, names = {}, {}
  local function take(list_v, k)
    for i, n in ipairs(list(self, list_v, k)) do
      local l = self:value(n, child(k, i), masked_name)
      if l and not seen[l] then
        seen[l] = true
        names[#names + 1] = l
      end
    end
  end
  if v.headers == false then
    -- none
  elseif v.headers ~= nil then
    take(v.headers, child(keys, "headers"))
  else
    for _, l in ipairs(out.headers) do
      seen[l] = true
      names[#names + 1] = l
    end
  end
  if v.add ~= nil then take(v.add, child(keys, "add")) end
  if #names > MAX_MASKED then self:err(child(keys, "headers"), "at most " .. MAX_MASKED .. " names") end
  out.headers = names
  local sv = self:value(v.server, child(keys, "server"), server_name)
  if sv ~= nil then out.server = sv or nil end
  local vv = self:value(v.via, child(keys, "via"), via_name)
  if vv ~= nil then out.via = vv or nil end
  return out
end

-- t.run's opts.mask (moxy.test): the mask it stands for, normalised as the
-- top level's (nil: the default), or nil and the error.
function M.test_mask(v)
  local c = setmetatable({ errors = {}, path = "t.run", src = "" }, Checker)
  function c.err(_, keys, msg) c.errors[#c.errors + 1] = "t.run: opts." .. path_text(keys) .. ": " .. msg end
  local out = c:mask(v, { "mask" })
  if #c.errors > 0 then return nil, c.errors[1] end
  return out
end

-- An upstream server's "host:port": an IP literal or "localhost" as for
-- listeners, or a DNS name (resolved without blocking, see upstream.c).
local function server_address(v)
  local a, err = address(v)
  if a then return a end
  if type(v) ~= "string" then return nil, err end
  local host, port = v:match("^([%w][%w.-]*):(%d+)$")
  if not host or host:find("%.%.") or host:sub(-1) == "-" or #host > 253 then
    return nil, "bad address \"" .. v .. "\" (expected ip:port, [ipv6]:port or name:port)"
  end
  port = tonumber(port)
  if port < 1 or port > 65535 then return nil, "bad address \"" .. v .. "\" (port out of range)" end
  return { text = v, name = host, port = port, family = 0 }
end

-- A list of HTTP statuses ({502, 503} or the strings "5xx" / "500-599").
local function statuses(c, v, keys, default)
  if v == nil then return default end
  local out = {}
  for i, s in ipairs(list(c, v, keys)) do
    local lo, hi
    if type(s) == "number" and s == math.floor(s) then
      lo, hi = s, s
    elseif type(s) == "string" and s:match("^[1-5]xx$") then
      lo = tonumber(s:sub(1, 1)) * 100
      hi = lo + 99
    elseif type(s) == "string" and s:match("^%d%d%d%-%d%d%d$") then
      lo, hi = tonumber(s:sub(1, 3)), tonumber(s:sub(5, 7))
    end
    if not lo or lo < 100 or hi > 599 or lo > hi then
      c:err(child(keys, i), "expected a status (100..599), \"5xx\" or \"500-504\", got " .. tostring(s), s)
    else
      for n = lo, hi do out[#out + 1] = n end
    end
  end
  return out
end

local function ratio(v)
  if type(v) ~= "number" or v < 0 or v > 1 then
    return nil, "expected a number in 0..1, got " .. tostring(v)
  end
  return v
end

-- A Host header value: visible ASCII without spaces (no CR, LF or NUL to
-- smuggle another header in).
local function host_value(v)
  if type(v) ~= "string" then return nil, "expected a string, got " .. type(v) end
  if v == "" or v:find("[^\33-\126]") then return nil, "bad Host value \"" .. v .. "\" (visible characters, no spaces)" end
  return v
end

local BALANCE = { "round_robin", "least_conn", "ewma", "hash", "random" }

function Checker:passive(v, k)
  local d = { failures = 3, window = 10, backoff = 10, max_backoff = 300, statuses = {}, max_ejected = 0.5 }
  if v == nil then return d end
  if v == false then
    d.failures = 0
    return d
  end
  if not self:table(v, k, { failures = true, window = true, backoff = true, max_backoff = true, statuses = true,
                            max_ejected = true }) then
    return d
  end
  return {
    failures = self:value(v.failures, child(k, "failures"), integer(0, 1000), d.failures),
    window = self:value(v.window, child(k, "window"), duration, d.window),
    backoff = self:value(v.backoff, child(k, "backoff"), duration, d.backoff),
    max_backoff = self:value(v.max_backoff, child(k, "max_backoff"), duration, d.max_backoff),
    statuses = statuses(self, v.statuses, child(k, "statuses"), d.statuses),
    max_ejected = self:value(v.max_ejected, child(k, "max_ejected"), ratio, d.max_ejected),
  }
end

function Checker:health(v, k)
  if v == nil or v == false then return nil end
  if not self:table(v, k, { type = true, method = true, path = true, host = true, statuses = true, body = true,
                            interval = true, timeout = true, healthy = true, unhealthy = true }) then
    return nil
  end
  local h = {
    type = self:value(v.type, child(k, "type"), one_of("http", "tcp"), "http"),
    method = self:value(v.method, child(k, "method"), typed("string"), "GET"),
    path = self:value(v.path, child(k, "path"), typed("string"), "/"),
    host = self:value(v.host, child(k, "host"), host_value),
    statuses = statuses(self, v.statuses, child(k, "statuses"), nil),
    body = self:value(v.body, child(k, "body"), typed("string")),
    interval = self:value(v.interval, child(k, "interval"), duration, 5),
    timeout = self:value(v.timeout, child(k, "timeout"), duration, 2),
    healthy = self:value(v.healthy, child(k, "healthy"), integer(1, 100), 2),
    unhealthy = self:value(v.unhealthy, child(k, "unhealthy"), integer(1, 100), 2),
  }
  if not h.statuses then
    h.statuses = {}
    for n = 200, 399 do h.statuses[#h.statuses + 1] = n end
  end
  if not h.method:match("^[A-Z]+$") then self:err(child(k, "method"), "expected an HTTP method such as GET", v.method) end
  if h.path:sub(1, 1) ~= "/" or h.path:find("[%s%c]") then
    self:err(child(k, "path"), "expected a path starting with / without spaces", v.path)
  end
  if h.body then
    local ok, m, err = pcall(require("moxy.re").find, "", h.body)
    if not ok or (m == nil and err) then self:err(child(k, "body"), "bad pattern: " .. tostring(err or m), v.body) end
  end
  if h.interval < 0.01 then self:err(child(k, "interval"), "at least 10ms", v.interval) end
  if h.timeout <= 0 then self:err(child(k, "timeout"), "must be more than 0", v.timeout) end
  return h
end

local POOL_KEYS = { servers = true, keepalive = true, keepalive_timeout = true, host = true, balance = true,
                    tries = true, retry_timeout = true, retry_statuses = true, retry_budget = true,
                    retry_budget_min = true, passive = true, health = true, resolve = true, tls = true,
                    protocol = true, max_streams = true, compression = true }
local SERVER_KEYS = { addr = true, weight = true, backup = true, max_conns = true, slow_start = true, drain = true }

-- A pool's `tls`: true, or { verify = true, ca = file, name = "host",
-- client_cert = file, client_key = file }.  Files relative to the
-- configuration's folder, each readable.
function Checker:origin_tls(v, keys)
  if v == nil or v == false then return nil end
  if v == true then v = {} end
  if not self:table(v, keys, { verify = true, ca = true, name = true, client_cert = true, client_key = true }) then
    return nil
  end
  local out = { verify = self:value(v.verify, child(keys, "verify"), typed("boolean"), true) }
  for f, what in pairs({ ca = "CA certificates", client_cert = "certificate", client_key = "key" }) do
    out[f] = self:file(v[f], child(keys, f), what)
  end
  if (v.client_cert == nil) ~= (v.client_key == nil) then
    self:err(keys, "client_cert and client_key go together")
  end
  out.name = self:value(v.name, child(keys, "name"), host_value)
  return out
end

function Checker:upstreams(v, keys)
  local out, names = {}, {}
  if v == nil then return out end
  if type(v) ~= "table" then
    self:err(keys, "expected a table of pools, got " .. type(v))
    return out
  end
  for name in pairs(v) do names[#names + 1] = name end
  table.sort(names, function(a, b) return tostring(a) < tostring(b) end)
  for _, name in ipairs(names) do
    local k = child(keys, tostring(name))
    local u = v[name]
    if type(name) ~= "string" or not name:match("^[%w_.-]+$") then
      self:err(k, "pool names are words of letters, digits, _ . -")
    elseif self:table(u, k, POOL_KEYS) then
      local pool = {
        name = name,
        servers = {},
        keepalive = self:value(u.keepalive, child(k, "keepalive"), integer(0, 100000), 64),
        keepalive_timeout = self:value(u.keepalive_timeout, child(k, "keepalive_timeout"), duration, 60),
        host = self:value(u.host, child(k, "host"), host_value),
        balance = self:value(u.balance, child(k, "balance"), one_of(unpack(BALANCE)), "round_robin"),
        balance_set = u.balance ~= nil, -- cache.shard may choose "hash" for it
        tries = self:value(u.tries, child(k, "tries"), integer(1, 100), 2),
        retry_timeout = self:value(u.retry_timeout, child(k, "retry_timeout"), duration, 0),
        retry_statuses = statuses(self, u.retry_statuses, child(k, "retry_statuses"), {}),
        retry_budget = self:value(u.retry_budget, child(k, "retry_budget"), ratio, 0.2),
        retry_budget_min = self:value(u.retry_budget_min, child(k, "retry_budget_min"), integer(0, 1000000), 10),
        passive = self:passive(u.passive, child(k, "passive")),
        health = self:health(u.health, child(k, "health")),
        resolve = self:value(u.resolve, child(k, "resolve"), duration, 30),
        tls = self:origin_tls(u.tls, child(k, "tls")),
        protocol = self:value(u.protocol, child(k, "protocol"), one_of("http/1.1", "h2"), "http/1.1"),
        max_streams = self:value(u.max_streams, child(k, "max_streams"), integer(1, 10000), 100),
        compression = u.compression ~= nil and self:compression(u.compression, child(k, "compression"),
                                                                self.compress_top) or nil,
      }
      if pool.tls and pool.protocol == "h2" then pool.tls.h2 = true end
      if pool.resolve < 1 then self:err(child(k, "resolve"), "at least 1s", u.resolve) end
      local sk = child(k, "servers")
      if u.servers == nil or (type(u.servers) == "table" and #u.servers == 0) then
        self:err(sk, "a pool needs at least one server")
      end
      local seen, primaries = {}, 0
      for i, s in ipairs(list(self, u.servers, sk)) do
        local ik = child(sk, i)
        local ak = child(ik, "addr")
        if type(s) == "string" then
          s, ak = { addr = s }, ik
        end
        if self:table(s, ik, SERVER_KEYS) then
          local a = self:value(s.addr, ak, server_address)
          if s.addr == nil then self:err(ik, "addr is required") end
          if a then
            if a.host == "0.0.0.0" then self:err(ak, "an upstream server needs a host", s.addr) end
            if seen[a.text] then self:err(ak, "listed twice in this pool", s.addr) end
            seen[a.text] = true
            a.weight = self:value(s.weight, child(ik, "weight"), integer(1, 1000), 1)
            a.backup = self:value(s.backup, child(ik, "backup"), typed("boolean"), false)
            a.max_conns = self:value(s.max_conns, child(ik, "max_conns"), integer(0, 10000000), 0)
            a.slow_start = self:value(s.slow_start, child(ik, "slow_start"), duration, 0)
            a.drain = self:value(s.drain, child(ik, "drain"), typed("boolean"), false)
            if not a.backup then primaries = primaries + 1 end
            pool.servers[#pool.servers + 1] = a
          end
        end
      end
      if #pool.servers > 0 and primaries == 0 then self:err(sk, "every server is a backup: at least one must not be") end
      if #pool.servers > 60000 then self:err(sk, "at most 60000 servers") end
      out[#out + 1] = pool
    end
  end
  return out
end

-- cache.shard = { pool = "moxies", self = "10.0.0.1:8080", secret = "..." }:
-- the fleet's caches as one (docs/cache.md, "Sharding the cache over a
-- fleet").  pool names a pool of upstreams (the fleet's moxy nodes, this
-- one included), self is this node's server in it; the pool balances by
-- "hash" (set when it says nothing; another balance is an error: the
-- owner of a key is the pool's Maglev choice).  -> { pool, self, secret }
-- or nil.
function Checker:cache_shard(v, keys, pools)
  if v == nil then return nil end
  if not self:table(v, keys, { pool = true, self = true, secret = true }) then return nil end
  local name = self:value(v.pool, child(keys, "pool"), typed("string"))
  local me = self:value(v.self, child(keys, "self"), typed("string"))
  local secret = self:value(v.secret, child(keys, "secret"), typed("string"))
  if v.pool == nil then self:err(keys, "pool is required (the pool of the fleet's moxy nodes)") end
  if v.self == nil then self:err(keys, "self is required (this node's server in the pool)") end
  if secret and (#secret < 16 or not secret:match("^[!-~]+$")) then
    self:err(child(keys, "secret"), "at least 16 visible ASCII characters, no spaces")
    secret = nil
  end
  if not name or not me then return nil end
  local pool
  for _, p in ipairs(pools) do
    if p.name == name then pool = p end
  end
  if not pool then
    self:err(child(keys, "pool"), "no pool named \"" .. name .. "\" in upstreams", v.pool)
    return nil
  end
  local found
  for _, s in ipairs(pool.servers) do
    if s.text == me then found = s end
  end
  if not found then
    self:err(child(keys, "self"), "not a server of pool \"" .. name .. "\" (written as there)", v.self)
    return nil
  end
  if found.backup then self:err(child(keys, "self"), "a backup server owns no key", v.self) end
  if pool.balance ~= "hash" then
    if pool.balance_set then
      self:err(child(keys, "pool"), "pool \"" .. name .. "\" must balance by \"hash\" (the owner of a key is its choice)",
               v.pool)
    end
    pool.balance = "hash"
  end
  return { pool = name, self = me, secret = secret }
end

-- geoip = { NAME = "path.mmdb", ... }: MaxMind databases, as a list of
-- { name, path (absolute), line } sorted by name; the core opens them (the
-- line is for its error message).  Names are Lua identifiers (moxy.geo's
-- db argument).
function Checker:geoip(v, keys, dir)
  local out = {}
  self:names(v, keys, "expected a table of databases (geoip = { city = \"GeoLite2-City.mmdb\" })",
    "database names are identifiers (geoip = { city = \"GeoLite2-City.mmdb\" })", function(name, p, k)
      p = self:value(p, k, typed("string"))
      if p then
        out[#out + 1] = { name = name, path = p:sub(1, 1) == "/" and p or dir .. "/" .. p,
                          line = line_of(self.src, k, p) or self.return_line or 1 }
      end
    end)
  return out
end

-- resolver = { nameservers = {"127.0.0.1:53"}, timeout = "5s" }: the DNS
-- servers for upstream names (default: /etc/resolv.conf and /etc/hosts).
function Checker:resolver(v, k)
  local out = { nameservers = {}, timeout = 5 }
  if v == nil then return out end
  if not self:table(v, k, { nameservers = true, timeout = true }) then return out end
  for i, s in ipairs(list(self, v.nameservers, child(k, "nameservers"))) do
    local a = self:value(s, child(child(k, "nameservers"), i), address)
    if a then out.nameservers[#out.nameservers + 1] = a.text end
  end
  out.timeout = self:value(v.timeout, child(k, "timeout"), duration, 5)
  return out
end

local LUA_KEYWORDS = {}
for w in ("and break do else elseif end false for function goto if in local nil not or repeat "
  .. "return then true until while"):gmatch("%a+") do
  LUA_KEYWORDS[w] = true
end

local MIN_DICT, MAX_DICT = 8 * 1024, 1024 ^ 4

local function dict_size(v)
  local n, err = size(v)
  if n == nil then return nil, err end
  if n < MIN_DICT then return nil, "a shared dict needs at least 8k, got " .. tostring(v) end
  if n > MAX_DICT then return nil, "a shared dict can be at most 1024g, got " .. tostring(v) end
  return n
end

-- shared = { NAME = size, ... }: the moxy.shared dicts, as a list of
-- { name = ..., size = bytes } sorted by name.
function Checker:shared(v, keys)
  local out = {}
  self:names(v, keys, "expected a table of dict sizes (shared = { limits = \"10m\" })",
    "dict names are Lua identifiers, for moxy.shared.NAME (shared = { NAME = \"10m\" })", function(name, size, k)
      local n = self:value(size, k, dict_size)
      if n then out[#out + 1] = { name = name, size = n } end
    end)
  return out
end

-- access = { acl = {...}, limits = {...}, waf = {...}, dict = "16m", redis = {...} }:
-- access control, rate limits and a WAF without a script of one's own.  Checked
-- here for shape (with file:line and key); the rules themselves are
-- checked when the hooks moxy makes of them load (moxy.acl, moxy.ratelimit:
-- lua/moxy/access.lua), which names the rule.  Returns the table as it is
-- (a copy), or false.
local ACCESS_KEYS = { acl = true, limits = true, dict = true, redis = true, waf = true }
local LIMIT_KEYS = { name = true, key = true, rate = true, burst = true, concurrent = true, method = true,
                     path = true, redis = true, status = true }

local function plain_copy(v, depth)
  if type(v) ~= "table" then return v end
  if depth > 8 then return nil end
  local out = {}
  for k, x in pairs(v) do out[k] = plain_copy(x, depth + 1) end
  return out
end

function Checker:access(v, keys)
  if v == false then return false end
  if not self:table(v, keys, ACCESS_KEYS) then return nil end
  for i, r in ipairs(list(self, v.acl, child(keys, "acl"))) do
    if type(r) ~= "table" then self:err(child(child(keys, "acl"), i), "a rule is a table (see docs/acl.md)") end
  end
  if v.waf ~= nil and v.waf ~= true and v.waf ~= false and type(v.waf) ~= "table" then
    self:err(child(keys, "waf"), "true, false or a table (see docs/waf.md)")
  end
  local names = {}
  for i, l in ipairs(list(self, v.limits, child(keys, "limits"))) do
    local k = child(child(keys, "limits"), i)
    if self:table(l, k, LIMIT_KEYS) then
      local name = self:value(l.name, child(k, "name"), typed("string"))
      if not name then self:err(k, "name is required")
      elseif names[name] then self:err(child(k, "name"), "a name used twice", name)
      else names[name] = true end
      local key = self:value(l.key, child(k, "key"), typed("string"), "ip")
      if key and not (key == "ip" or key == "host" or key == "path" or key == "all" or key:match("^header:[%w%-_]+$")
                      or key:match("^cookie:[%w%-_%.]+$")) then
        self:err(child(k, "key"), 'expected "ip", "host", "path", "all", "header:NAME" or "cookie:NAME"', key)
      end
      if (l.rate == nil) == (l.concurrent == nil) then self:err(k, "one of rate or concurrent is required") end
      if l.concurrent ~= nil then self:value(l.concurrent, child(k, "concurrent"), integer(1, 1e9)) end
      if l.burst ~= nil then self:value(l.burst, child(k, "burst"), integer(0, 1e9)) end
      if l.status ~= nil then self:value(l.status, child(k, "status"), integer(400, 599)) end
      if l.redis ~= nil then
        self:value(l.redis, child(k, "redis"), typed("boolean"))
        if l.redis and v.redis == nil then self:err(child(k, "redis"), "access.redis is not set") end
      end
    end
  end
  if v.redis ~= nil then self:table(v.redis, child(keys, "redis"), { host = true, port = true, password = true,
    user = true, db = true, tls = true, verify = true, server_name = true, timeout = true, connect_timeout = true,
    pool_size = true }) end
  local out = plain_copy(v, 0)
  out.dict = self:value(v.dict, child(keys, "dict"), dict_size, 16 * 1024 * 1024)
  return out
end

-- fleet = { node = "edge-1", redis = {...}, channel = "moxy:fleet", secret = "..." | secret_file = "...",
-- max_age = 30 }: purges and shared-dict invalidations broadcast to every node over Redis pub/sub
-- (docs/fleet.md).  redis has moxy.redis's options (docs/redis.md), less pool_size and max_reply.
local FLEET_KEYS = { node = true, redis = true, channel = true, secret = true, secret_file = true, max_age = true }
local FLEET_REDIS_KEYS = { host = true, port = true, password = true, user = true, db = true, tls = true,
                           verify = true, server_name = true, timeout = true, connect_timeout = true }

local function short_string(max)
  return function(v)
    if type(v) ~= "string" then return nil, "expected a string, got " .. type(v) end
    if #v == 0 or #v > max then return nil, string.format("1 to %d bytes", max) end
    if v:find("[%c]") then return nil, "no control characters" end
    return v
  end
end

function Checker:fleet(v, keys, dir)
  if not self:table(v, keys, FLEET_KEYS) then return nil end
  local out = {
    node = self:value(v.node, child(keys, "node"), short_string(128)),
    channel = self:value(v.channel, child(keys, "channel"), short_string(256), "moxy:fleet"),
    max_age = self:value(v.max_age, child(keys, "max_age"), duration, 30),
  }
  if out.max_age and (out.max_age < 1 or out.max_age > 3600) then
    self:err(child(keys, "max_age"), "1 to 3600 seconds", v.max_age)
  end
  if v.secret ~= nil and v.secret_file ~= nil then
    self:err(child(keys, "secret_file"), "one of secret or secret_file")
  elseif v.secret ~= nil then
    out.secret = self:value(v.secret, child(keys, "secret"), typed("string"))
  elseif v.secret_file ~= nil then
    local p = self:value(v.secret_file, child(keys, "secret_file"), typed("string"))
    if p then
      local full = p:sub(1, 1) == "/" and p or dir .. "/" .. p
      local f, err = io.open(full, "rb")
      if not f then
        self:err(child(keys, "secret_file"), "cannot read: " .. tostring(err), p)
      else
        out.secret = (f:read("*a") or ""):gsub("[\r\n]+$", "")
        f:close()
      end
    end
  end
  if out.secret and #out.secret < 16 then
    self:err(child(keys, v.secret_file and "secret_file" or "secret"), "a secret of at least 16 bytes")
  end
  local r = v.redis == nil and {} or v.redis
  local rk = child(keys, "redis")
  if self:table(r, rk, FLEET_REDIS_KEYS) then
    local function k(name) return child(rk, name) end
    local tls = self:value(r.tls, k("tls"), typed("boolean"), false)
    local verify = self:value(r.verify, k("verify"), typed("boolean"), true)
    out.redis = {
      host = self:value(r.host, k("host"), short_string(255), "127.0.0.1"),
      port = self:value(r.port, k("port"), integer(1, 65535), 6379),
      user = self:value(r.user, k("user"), typed("string")),
      password = self:value(r.password, k("password"), typed("string")),
      db = self:value(r.db, k("db"), integer(0, 1000000), 0),
      tls = tls and (verify == false and 2 or 1) or 0,
      server_name = self:value(r.server_name, k("server_name"), short_string(255)),
      timeout = self:value(r.timeout, k("timeout"), duration, 1),
      connect_timeout = self:value(r.connect_timeout, k("connect_timeout"), duration, 1),
    }
    if r.user ~= nil and r.password == nil then self:err(k("user"), "user needs password") end
    for _, name in ipairs({ "timeout", "connect_timeout" }) do
      local d = out.redis[name]
      if d and (d <= 0 or d > 60) then self:err(k(name), "more than 0, at most 60 seconds", r[name]) end
    end
  end
  return out
end

-- A Lua literal of v (strings, numbers, booleans, tables of them).
local function literal(v)
  local t = type(v)
  if t == "string" then return string.format("%q", v) end
  if t == "number" or t == "boolean" then return tostring(v) end
  if t ~= "table" then return "nil" end
  local parts = {}
  for k, x in pairs(v) do
    local key = type(k) == "number" and "[" .. k .. "]" or "[" .. string.format("%q", tostring(k)) .. "]"
    parts[#parts + 1] = key .. "=" .. literal(x)
  end
  table.sort(parts)
  return "{" .. table.concat(parts, ",") .. "}"
end

-- Walk v, a table of NAME = value, in name order: fn(name, value, keys)
-- for each name that is a Lua identifier, an error (name_msg) for the
-- others; v not a table: the error `expected`.
function Checker:names(v, keys, expected, name_msg, fn)
  if v == nil then return end
  if type(v) ~= "table" then
    self:err(keys, expected .. ", got " .. type(v))
    return
  end
  local names = {}
  for name in pairs(v) do names[#names + 1] = name end
  table.sort(names, function(a, b) return tostring(a) < tostring(b) end)
  for _, name in ipairs(names) do
    local k = child(keys, type(name) == "number" and name or tostring(name))
    if type(name) ~= "string" or not name:match("^[%a_][%w_]*$") or LUA_KEYWORDS[name] then
      self:err(k, name_msg)
    else
      fn(name, v[name], k)
    end
  end
end

-- trusted_proxies = { "10.0.0.0/8", "::1", ... } (or one string): the
-- addresses whose real_ip_header moxy believes, as a list of cidr() tables.
function Checker:trusted_proxies(v, keys)
  local out = {}
  if type(v) == "string" then v = { v } end
  for i, s in ipairs(list(self, v, keys)) do
    local e = self:value(s, child(keys, i), cidr)
    if e then out[#out + 1] = e end
  end
  return out
end

-- real_ip_header: "X-Forwarded-For" (default) or "Forwarded", in any case.
local function real_ip_header(v)
  if type(v) == "string" then
    if v:lower() == "x-forwarded-for" then return "X-Forwarded-For" end
    if v:lower() == "forwarded" then return "Forwarded" end
  end
  return nil, "expected \"X-Forwarded-For\" or \"Forwarded\", got " .. tostring(v)
end

local TOP = {
  workers = true, listen = true, upstreams = true, default_upstream = true, scripts = true, lua = true,
  limits = true, timeouts = true, log = true, pid_file = true, watch = true, cache = true, http2 = true,
  compression = true, mask = true, access = true, fleet = true,
  shared = true, resolver = true, geoip = true, trusted_proxies = true, real_ip_header = true, admin = true,
}

-- Check the table `t` that `path` (with source text `src`) returned.
-- Returns the normalised configuration, or nil and a list of error lines.
function M.check(t, path, src)
  local c = setmetatable({ errors = {}, path = path, src = src }, Checker)
  do
    local _, n = (src:match("^(.-)%f[%w_]return%f[^%w_]") or ""):gsub("\n", "")
    c.return_line = n + 1
  end
  local conf = { path = path, dir = path:match("^(.*)/[^/]*$") or "." }
  if not c:table(t, {}, TOP) then return nil, c.errors end

  conf.workers = c:value(t.workers, { "workers" }, workers, 0)
  -- pid_file: where `moxy reload` finds the running moxy; false: none
  if t.pid_file == false then
    conf.pid_file = nil
  else
    local pf = c:value(t.pid_file, { "pid_file" }, typed("string"), "moxy.pid")
    if pf then
      conf.pid_file = pf:sub(1, 1) == "/" and pf or conf.dir .. "/" .. pf
      conf.pid_file_set = t.pid_file ~= nil
    end
  end
  conf.watch = c:value(t.watch, { "watch" }, typed("boolean"), false)
  c.dir = conf.dir
  conf.compression = c:compression(t.compression, { "compression" })
  conf.compression.memory = conf.compression.memory or 128 * 1024 * 1024
  c.compress_top = conf.compression
  conf.mask = c:mask(t.mask, { "mask" })
  c.mask_top = conf.mask
  conf.listen = c:listen(t.listen, { "listen" })
  conf.upstreams = c:upstreams(t.upstreams, { "upstreams" })
  conf.resolver = c:resolver(t.resolver, { "resolver" })
  if t.admin ~= nil and c:table(t.admin, { "admin" }, { listen = true, token = true }) then
    conf.admin = {
      listen = c:value(t.admin.listen, { "admin", "listen" }, address, address("127.0.0.1:9090")),
      token = c:value(t.admin.token, { "admin", "token" }, typed("string")),
    }
    if conf.admin.token and #conf.admin.token < 16 then
      c:err({ "admin", "token" }, "at least 16 characters (it guards reload, purge, drain and enable)")
    end
  end
  conf.geoip = c:geoip(t.geoip, { "geoip" }, conf.dir)
  if t.fleet ~= nil then conf.fleet = c:fleet(t.fleet, { "fleet" }, conf.dir) end
  conf.trusted_proxies = c:trusted_proxies(t.trusted_proxies, { "trusted_proxies" })
  conf.real_ip_header = c:value(t.real_ip_header, { "real_ip_header" }, real_ip_header, "X-Forwarded-For")
  local pools = {}
  for _, p in ipairs(conf.upstreams) do pools[p.name] = true end
  conf.default_upstream = c:value(t.default_upstream, { "default_upstream" }, typed("string"))
  if conf.default_upstream and not pools[conf.default_upstream] then
    c:err({ "default_upstream" }, "no pool named \"" .. conf.default_upstream .. "\" in upstreams")
  end
  if not conf.default_upstream and #conf.upstreams == 1 then conf.default_upstream = conf.upstreams[1].name end
  for _, l in ipairs(conf.listen) do
    if l.upstream and not pools[l.upstream] then
      c:err(l.upstream_keys, "no pool named \"" .. l.upstream .. "\" in upstreams")
    end
    l.upstream_keys = nil
  end

  conf.scripts = {}
  for i, s in ipairs(list(c, t.scripts, { "scripts" })) do
    local k, jit = { "scripts", i }, false
    if type(s) == "table" then
      if c:table(s, k, { [1] = true, path = true, jit = true }) then
        jit = c:value(s.jit, { "scripts", i, "jit" }, typed("boolean"), false)
        s = s.path or s[1]
        if s == nil then c:err(k, "path is required") end
      else
        s = nil
      end
    end
    local p = s ~= nil and c:value(s, k, typed("string")) or nil
    if p then
      local full = p:sub(1, 1) == "/" and p or conf.dir .. "/" .. p
      local f, err = io.open(full, "rb")
      if f then
        f:close()
        conf.scripts[#conf.scripts + 1] = { path = full, jit = jit }
      else
        c:err(k, "cannot open script: " .. tostring(err), p)
      end
    end
  end

  local lua = t.lua or {}
  if c:table(lua, { "lua" }, { cpu_budget = true, memory = true }) then
    conf.lua = { cpu_budget = c:value(lua.cpu_budget, { "lua", "cpu_budget" }, duration, 0.05),
                 memory = c:value(lua.memory, { "lua", "memory" }, size, 512 * 1024 * 1024) }
    if conf.lua.memory and conf.lua.memory ~= 0 and conf.lua.memory < 16 * 1024 * 1024 then
      c:err({ "lua", "memory" }, "at least 16m (or 0: no limit)", lua.memory)
    end
  end

  conf.shared = c:shared(t.shared, { "shared" })

  -- access = {...} (and listeners' own): moxy's own hooks, loaded before the
  -- scripts, trusted (JIT-compiled), with a shared dict for the limits
  local access_top = t.access ~= nil and c:access(t.access, { "access" }) or nil
  local spec, limits, dict = { listeners = {} }, false, 0
  if access_top then
    spec.default = access_top
    limits = limits or access_top.limits ~= nil
    dict = access_top.dict or 0
  end
  for _, l in ipairs(conf.listen) do
    if l.access ~= nil then
      spec.listeners[l.name] = l.access
      if l.access then
        limits = limits or l.access.limits ~= nil
        dict = math.max(dict, l.access.dict or 0)
      end
    end
    l.access = nil
  end
  if spec.default or next(spec.listeners) then
    if limits then
      for _, d in ipairs(conf.shared) do
        if d.name == "moxy_access" then c:err({ "shared", "moxy_access" }, "moxy_access is the access limits' own dict") end
      end
      conf.shared[#conf.shared + 1] = { name = "moxy_access", size = dict > 0 and dict or 16 * 1024 * 1024 }
    end
    table.insert(conf.scripts, 1, { path = path .. " (access)", jit = true,
      source = "return require(\"moxy.access\").hooks(" .. literal(spec) .. ")\n" })
  end

  -- cache = { size = "256m", max_object = "16m" }: the HTTP cache (off without it)
  if t.cache ~= nil and c:table(t.cache, { "cache" }, { size = true, max_object = true, purge = true,
                                                           coalesce_timeout = true, request_directives = true,
                                                           targeted_fields = true, sendfile = true,
                                                           stale_if_error = true, shard = true }) then
    local csize = c:value(t.cache.size, { "cache", "size" }, size, 256 * 1024 * 1024) or 0
    conf.cache = {
      size = csize,
      -- default: 16m, or an eighth of a small cache
      max_object = c:value(t.cache.max_object, { "cache", "max_object" }, size,
                           math.min(16 * 1024 * 1024, math.floor(csize / 8))),
      -- addresses allowed to send PURGE (none: PURGE goes to the origin like any method)
      purge = c:trusted_proxies(t.cache.purge, { "cache", "purge" }),
      -- concurrent misses for a key wait this long for the first one's response; 0: off
      coalesce_timeout = c:value(t.cache.coalesce_timeout, { "cache", "coalesce_timeout" }, duration, 5),
      -- a stale object without its own stale-if-error answers when the origin fails, for
      -- this long after it went stale (Varnish's grace); 0: only objects that say so
      stale_if_error = c:value(t.cache.stale_if_error, { "cache", "stale_if_error" }, duration, 0),
      -- honour the client's Cache-Control / Pragma (no-cache, max-age, ...); false: a CDN's
      -- choice, clients cannot force requests to the origin
      request_directives = c:value(t.cache.request_directives, { "cache", "request_directives" },
                                   typed("boolean"), true),
      -- RFC 9213: response fields that, when present and valid, replace Cache-Control for
      -- this cache (the first one present wins); {}: Cache-Control only
      targeted_fields = { "CDN-Cache-Control" },
      -- large bodies (64k and up, of known length) go to clients with sendfile from the
      -- memfd that holds them: true, false, or "auto" (not to clients on the same host,
      -- who pay more to receive sendfile's pages than moxy saves)
      sendfile = c:value(t.cache.sendfile, { "cache", "sendfile" }, function(v)
        if v == true or v == false or v == "auto" then return v end
        return nil, 'true, false or "auto"'
      end, "auto"),
    }
    if t.cache.targeted_fields ~= nil then
      local keys = { "cache", "targeted_fields" }
      local names = {}
      for i, name in ipairs(list(c, t.cache.targeted_fields, keys)) do
        if type(name) ~= "string" or not name:match("^[%w!#$%%&'*+%-.^_`|~]+$") then
          c:err(child(keys, i), "a header field name", name)
        else
          names[#names + 1] = name
        end
      end
      conf.cache.targeted_fields = names
    end
    if conf.cache.size and conf.cache.size < 1024 * 1024 then
      c:err({ "cache", "size" }, "at least 1m", t.cache.size)
    end
    if conf.cache.size and conf.cache.max_object and conf.cache.max_object > conf.cache.size / 2 then
      c:err({ "cache", "max_object" }, "at most half of cache.size", t.cache.max_object)
    end
    conf.cache.shard = c:cache_shard(t.cache.shard, { "cache", "shard" }, conf.upstreams)
  end

  local lim = t.limits or {}
  if c:table(lim, { "limits" }, { header_bytes = true, headers = true, uri_bytes = true, body_bytes = true, connections = true,
                                    connections_per_client = true, buffer_memory = true }) then
    conf.limits = {
      header_bytes = c:value(lim.header_bytes, { "limits", "header_bytes" }, size, 32 * 1024),
      headers = c:value(lim.headers, { "limits", "headers" }, integer(1, 10000), 100),
      uri_bytes = c:value(lim.uri_bytes, { "limits", "uri_bytes" }, size, 8 * 1024),
      body_bytes = c:value(lim.body_bytes, { "limits", "body_bytes" }, size, 64 * 1024 * 1024),
      connections = c:value(lim.connections, { "limits", "connections" }, integer(1, 1000000), 10000),
      connections_per_client = c:value(lim.connections_per_client, { "limits", "connections_per_client" },
                                       integer(0, 1000000), 1024),
      buffer_memory = c:value(lim.buffer_memory, { "limits", "buffer_memory" }, size, nil),
    }
    local bm = conf.limits.buffer_memory
    if bm and bm > 0 and bm < 1024 * 1024 then
      c:err({ "limits", "buffer_memory" }, "0 (no budget) or at least 1m", lim.buffer_memory)
    end
  end

  local h2 = t.http2 or {}
  local H2 = { max_concurrent_streams = true, stream_window = true, header_table_size = true,
               max_continuations = true, max_resets = true, reset_rate = true, max_control_frames = true }
  if c:table(h2, { "http2" }, H2) then
    local function k(name) return { "http2", name } end
    conf.http2 = {
      max_concurrent_streams = c:value(h2.max_concurrent_streams, k("max_concurrent_streams"), integer(1, 10000), 128),
      stream_window = c:value(h2.stream_window, k("stream_window"), size, 64 * 1024),
      header_table_size = c:value(h2.header_table_size, k("header_table_size"), size, 4096),
      max_continuations = c:value(h2.max_continuations, k("max_continuations"), integer(0, 1000), 8),
      max_resets = c:value(h2.max_resets, k("max_resets"), integer(1, 1000000), 200),
      reset_rate = c:value(h2.reset_rate, k("reset_rate"), integer(1, 1000000), 33),
      max_control_frames = c:value(h2.max_control_frames, k("max_control_frames"), integer(10, 1000000), 1000),
    }
    if conf.http2.stream_window < 1024 or conf.http2.stream_window > 2147483647 then
      c:err(k("stream_window"), "expected 1k..2g", h2.stream_window)
    end
    if conf.http2.header_table_size > 65536 then c:err(k("header_table_size"), "at most 64k", h2.header_table_size) end
  end

  local to = t.timeouts or {}
  local TO = { client_header = 10, client_body = 30, client_send = 60, connect = 3, upstream = 60, keepalive = 75,
               drain = 60, linger = 5 }
  local allowed = {}
  for k in pairs(TO) do allowed[k] = true end
  if c:table(to, { "timeouts" }, allowed) then
    conf.timeouts = {}
    for k, d in pairs(TO) do conf.timeouts[k] = c:value(to[k], { "timeouts", k }, duration, d) end
  end

  local lg = t.log or {}
  if c:table(lg, { "log" }, { access = true, format = true, error = true, level = true, fields = true }) then
    local access = lg.access
    if access == nil or access == false then
      access = nil
    else
      access = c:value(access, { "log", "access" }, typed("string"))
      if access and access ~= "stdout" and access ~= "stderr" and access:sub(1, 1) ~= "/" then
        access = conf.dir .. "/" .. access
      end
    end
    local err = c:value(lg.error, { "log", "error" }, typed("string"), "stderr")
    if err ~= "stderr" and err:sub(1, 1) ~= "/" then err = conf.dir .. "/" .. err end
    conf.log = {
      access = access,
      format = c:value(lg.format, { "log", "format" }, one_of("combined", "json"), "combined"),
      error = err,
      level = c:value(lg.level, { "log", "level" }, one_of("error", "warn", "info", "debug"), "info"),
      fields = {},
    }
    -- log.fields: the JSON line's keys, in order (the combined format is fixed)
    local known = {}
    for i, f in ipairs(M.LOG_FIELDS) do known[f] = i - 1 end
    local fields = lg.fields == nil and M.LOG_FIELDS_DEFAULT or list(c, lg.fields, { "log", "fields" })
    for i, f in ipairs(fields) do
      if known[f] == nil then
        c:err({ "log", "fields", i }, "unknown field " .. tostring(f) .. " (known: " .. table.concat(M.LOG_FIELDS, ", ") .. ")", f)
      else
        conf.log.fields[#conf.log.fields + 1] = known[f]
      end
    end
  end

  if #c.errors > 0 then return nil, c.errors end
  return conf
end

-- Load and check the configuration file at `path`.
-- Returns the normalised configuration, or nil and a list of error lines.
function M.load(path)
  local f, err = io.open(path, "rb")
  if not f then return nil, { path .. ": cannot open: " .. tostring(err) } end
  local src = f:read("*a")
  f:close()
  local chunk, cerr = loadstring(src, "@" .. path)
  if not chunk then return nil, { cerr } end
  local ok, t = pcall(chunk)
  if not ok then return nil, { tostring(t) } end
  if type(t) ~= "table" then
    return nil, { path .. ":1: the configuration must return a table, got " .. type(t) }
  end
  return M.check(t, path, src)
end

M._size, M._duration, M._address, M._line_of = size, duration, address, line_of
M._cidr = cidr

return M
