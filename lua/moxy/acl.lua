-- moxy.acl: access control lists for hooks -- rules tried in order, the
-- first whose conditions all hold decides: allow, deny (403), or ask for a
-- password (HTTP Basic, 401).  Client addresses are matched in C prefix
-- sets (core/base/prefix_set.c: 100,000s of CIDR blocks, tens of ns a
-- lookup); countries, continents and ASNs through GeoIP; methods, paths,
-- hosts and headers; the TLS client certificate.  Over core/api/acl.h.
-- Reference: docs/acl.md.
--
--   local acl = moxy.acl.new{
--     { name = "blocklist", deny = true, ip = { file = "blocklist.txt" } },
--     { name = "office",    allow = true, ip = { "10.0.0.0/8", "2001:db8::/32" } },
--     { name = "embargo",   deny = true, country = { "KP" } },
--     { name = "staff",     auth = { realm = "staff", users = "staff.htpasswd" }, path = "^/admin/" },
--   }
--   on_request = function(txn) if not acl:enforce(txn) then return end end
local ffi = require "ffi"
local runtime = require "moxy.runtime" -- loads moxy.txn, which checks the FFI ABI
local re = require "moxy.re"
local metrics = require "moxy.metrics"

ffi.cdef [[
typedef struct moxy_prefix_set_s moxy_prefix_set_t;
moxy_prefix_set_t *moxy_ffi_pset_new(const char **cidrs, const size_t *lens, int n, const char **files,
                                     int nfiles, char *err, size_t errlen);
void moxy_ffi_pset_free(moxy_prefix_set_t *s);
int moxy_ffi_pset_match(const moxy_prefix_set_t *s, const char *ip, size_t len);
void moxy_ffi_pset_info(const moxy_prefix_set_t *s, size_t *prefixes, size_t *bytes);
int moxy_ffi_crypt_supported(const char *hash);
int moxy_ffi_crypt_check(const char *pass, size_t plen, const char *hash, char *err, size_t errlen);
]]

local C = ffi.C
local OK, DECLINED = 0, -3
local ERR_LEN = 512
local errbuf = ffi.new("char[?]", ERR_LEN)
local size_out = ffi.new("size_t[2]")

local type, tostring, tonumber, error, pairs, ipairs, setmetatable = type, tostring, tonumber, error, pairs, ipairs,
  setmetatable
local find, sub, upper, format = string.find, string.sub, string.upper, string.format

local M = {}

local Acl = {}
Acl.__index = Acl

local DECISIONS = "moxy_acl_decisions_total"

local DECISIONS_HELP = "Requests an ACL rule decided, by ACL, rule and result (allow, deny, auth_ok, auth_failed)"

-- The counter of (acl, rule, result), its id made once.
local function count(self, rule, result)
  local ids = rule.ids
  local id = ids[result]
  if id == nil then
    id = metrics.own_id(DECISIONS, { acl = self.name, rule = rule.name, result = result }, DECISIONS_HELP)
    ids[result] = id
  end
  metrics.add(id, 1)
end

-- The configuration's directory, for relative list and password files.
local function path_of(p)
  local dir = package.loaded["moxy.conf_dir"]
  if type(dir) == "string" and dir ~= "." and sub(p, 1, 1) ~= "/" then return dir .. "/" .. p end
  return p
end

-- A reload when a file changes (with watch = true), where moxy.watch may run.
local function watch(p)
  local moxy = require "moxy"
  if moxy.watch then pcall(moxy.watch, p) end
end

local function bad(where, msg)
  error("moxy.acl: " .. where .. ": " .. msg, 0)
end

-- A set (value -> true) of a list of strings or numbers.
local function set_of(v, where, norm)
  if type(v) ~= "table" then v = { v } end
  local s = {}
  for _, x in ipairs(v) do
    if type(x) ~= "string" and type(x) ~= "number" then bad(where, "a list of strings or numbers is needed") end
    s[norm and norm(x) or x] = true
  end
  if next(s) == nil then bad(where, "an empty list matches nothing") end
  return s
end

local function pattern(v, where)
  if type(v) ~= "string" then bad(where, "a regular expression (string) is needed") end
  local ok, err = re.find("", v)
  if ok == nil and err then bad(where, tostring(err)) end
  return v
end

-- The prefix set of ip = { "cidr", ..., file = "x", files = { ... } }.
local function ip_set(v, where)
  if type(v) == "string" then v = { v } end
  if type(v) ~= "table" then bad(where, "a list of CIDR blocks (and file = ...) is needed") end
  local cidrs, lens, files = {}, {}, {}
  for _, c in ipairs(v) do
    if type(c) ~= "string" then bad(where, "CIDR blocks are strings") end
    cidrs[#cidrs + 1] = c
    lens[#lens + 1] = #c
  end
  local fl = v.files or {}
  if v.file then fl = { v.file, unpack(fl) } end
  for _, f in ipairs(fl) do
    if type(f) ~= "string" then bad(where, "file names are strings") end
    files[#files + 1] = path_of(f)
    watch(f)
  end
  if #cidrs == 0 and #files == 0 then bad(where, "no CIDR block and no file") end
  local cc = ffi.new("const char *[?]", #cidrs + 1, cidrs)
  local cl = ffi.new("size_t[?]", #lens + 1, lens)
  local fc = ffi.new("const char *[?]", #files + 1, files)
  local s = C.moxy_ffi_pset_new(cc, cl, #cidrs, fc, #files, errbuf, ERR_LEN)
  if s == nil then bad(where, ffi.string(errbuf)) end
  local set = ffi.gc(s, C.moxy_ffi_pset_free)
  return set
end

-- Users of an auth rule: a table { user = hash } or an htpasswd file.
local function users_of(v, where)
  local users, lines = {}, {}
  if type(v) == "string" then
    local f, err = io.open(path_of(v), "rb")
    if not f then bad(where, "cannot open " .. v .. ": " .. tostring(err)) end
    watch(v)
    local n = 0
    for line in f:lines() do
      n = n + 1
      line = line:gsub("\r$", "")
      if not find(line, "^%s*#") and find(line, "%S") then
        local user, hash = line:match("^([^:]+):(%S+)%s*$")
        if not user then
          f:close()
          bad(v .. ":" .. n, "expected user:hash")
        end
        users[user] = hash
        lines[user] = v .. ":" .. n
      end
    end
    f:close()
  elseif type(v) == "table" then
    for user, hash in pairs(v) do
      if type(user) ~= "string" or type(hash) ~= "string" then bad(where, "users = { name = hash, ... }") end
      users[user] = hash
      lines[user] = where .. "." .. user
    end
  else
    bad(where, "users must be an htpasswd file or a table of user = hash")
  end
  local any
  for user, hash in pairs(users) do
    local s = C.moxy_ffi_crypt_supported(hash)
    if s == -1 then
      bad(lines[user], "user " .. user .. ": a weak hash (DES or MD5 crypt): use bcrypt (htpasswd -B), yescrypt or sha512crypt")
    elseif s ~= 1 then
      bad(lines[user], "user " .. user .. ": not a crypt(3) hash moxy checks (bcrypt $2y$/$2b$, yescrypt $y$, sha512crypt $6$, sha256crypt $5$)")
    end
    any = any or hash
  end
  if not any then bad(where, "no users") end
  return users, any
end

local CONDITIONS = { ip = true, country = true, continent = true, asn = true, method = true, path = true,
                     host = true, header = true, cert = true }
local KNOWN = { name = true, allow = true, deny = true, auth = true, status = true, body = true }
for k in pairs(CONDITIONS) do KNOWN[k] = true end

local function compile(r, i)
  local where = "rule " .. i
  if type(r) ~= "table" then bad(where, "a rule is a table") end
  for k in pairs(r) do
    if not KNOWN[k] then bad(where, "unknown key " .. tostring(k)) end
  end
  local name = r.name or tostring(i)
  if type(name) ~= "string" or not find(name, "^[%w_%-%.:]+$") or #name > 64 then
    bad(where, "name must be 1 to 64 of letters, digits, '_', '-', '.', ':'")
  end
  where = "rule " .. name
  local rule = { name = name, ids = {} }
  local n = (r.allow and 1 or 0) + (r.deny and 1 or 0) + (r.auth and 1 or 0)
  if n ~= 1 then bad(where, "one of allow = true, deny = true or auth = { ... } is needed") end
  rule.action = r.allow and "allow" or r.deny and "deny" or "auth"
  if r.auth then
    if type(r.auth) ~= "table" then bad(where, "auth = { realm = ..., users = ... }") end
    rule.realm = r.auth.realm or "moxy"
    if type(rule.realm) ~= "string" or find(rule.realm, '[%c"\\]') then bad(where, "auth.realm: no quotes, backslashes or controls") end
    rule.users, rule.dummy = users_of(r.auth.users, where .. ": auth.users")
    rule.cache, rule.ncache = {}, 0
  end
  if r.status ~= nil then
    if rule.action ~= "deny" or type(r.status) ~= "number" or r.status < 400 or r.status > 599 then
      bad(where, "status: a 4xx or 5xx for a deny rule")
    end
    rule.status = r.status
  end
  if r.body ~= nil then
    if type(r.body) ~= "string" then bad(where, "body must be a string") end
    rule.body = r.body
  end
  if r.ip ~= nil then rule.ip = ip_set(r.ip, where .. ": ip") end
  if r.country ~= nil then rule.country = set_of(r.country, where .. ": country", upper) end
  if r.continent ~= nil then rule.continent = set_of(r.continent, where .. ": continent", upper) end
  if r.asn ~= nil then rule.asn = set_of(r.asn, where .. ": asn", tonumber) end
  if r.method ~= nil then rule.method = set_of(r.method, where .. ": method", upper) end
  if r.path ~= nil then rule.path = pattern(r.path, where .. ": path") end
  if r.host ~= nil then rule.host = pattern(r.host, where .. ": host") end
  if r.header ~= nil then
    if type(r.header) ~= "table" then bad(where, "header = { Name = pattern | true | false }") end
    local hs = {}
    for h, want in pairs(r.header) do
      if type(h) ~= "string" then bad(where, "header names are strings") end
      if type(want) == "string" then pattern(want, where .. ": header " .. h)
      elseif type(want) ~= "boolean" then bad(where, "header " .. h .. ": a pattern, true (present) or false (absent)") end
      hs[#hs + 1] = { h, want }
    end
    rule.header = hs
  end
  if r.cert ~= nil then
    local c = r.cert
    if c ~= "verified" and c ~= "none" and c ~= "any" and type(c) ~= "table" then
      bad(where, 'cert: "verified", "any", "none" or { subject = pattern, issuer = pattern, fingerprint = {...} }')
    end
    if type(c) == "table" then
      local t = { subject = c.subject and pattern(c.subject, where .. ": cert.subject"),
                  issuer = c.issuer and pattern(c.issuer, where .. ": cert.issuer") }
      if c.fingerprint then t.fingerprint = set_of(c.fingerprint, where .. ": cert.fingerprint", string.lower) end
      c = t
    end
    rule.cert = c
  end
  return rule
end

--- moxy.acl.new(rules [, { name = "acl" }]) -> an ACL.  Raises with the rule
-- (and file:line) on a mistake: a script that builds its ACLs at its top
-- level fails to load (or to reload: the old configuration keeps serving).
function M.new(rules, opts)
  if type(rules) ~= "table" then error("moxy.acl.new: a list of rules is needed", 2) end
  local name = type(opts) == "table" and opts.name or "acl"
  local self = setmetatable({ name = name, rules = {}, seen = {} }, Acl)
  local seen = {}
  for i, r in ipairs(rules) do
    local ok, rule = pcall(compile, r, i)
    if not ok then error(rule, 2) end
    if seen[rule.name] then error("moxy.acl: rule " .. rule.name .. ": a name used twice", 2) end
    seen[rule.name] = true
    self.rules[i] = rule
  end
  return self
end

-- What of a request the rules look at, read once per check.
local function cert_ok(want, tls)
  if want == "any" then return tls ~= nil and tls.subject ~= nil end
  if want == "verified" then return tls ~= nil and tls.verified == true end
  if want == "none" then return tls == nil or tls.subject == nil end
  if not tls or not tls.subject then return false end
  if want.subject and not re.find(tls.subject, want.subject, "jo") then return false end
  if want.issuer and not re.find(tls.issuer or "", want.issuer, "jo") then return false end
  if want.fingerprint and not want.fingerprint[(tls.fingerprint or ""):lower()] then return false end
  return true
end

-- seen: what of the request one check has read already (its client's
-- address and GeoIP fields), so that several rules read them once.
local function matches(rule, txn, req, seen)
  if rule.method and not rule.method[req.method] then return false end
  if rule.path and not re.find(req.path, rule.path, "jo") then return false end
  if rule.host and not re.find(req.host or "", rule.host, "ijo") then return false end
  if rule.header then
    local hs = req.headers
    for _, h in ipairs(rule.header) do
      local v, want = hs:get(h[1]), h[2]
      if want == true then if v == nil then return false end
      elseif want == false then if v ~= nil then return false end
      elseif v == nil or not re.find(v, want, "jo") then return false end
    end
  end
  if rule.cert ~= nil and not cert_ok(rule.cert, txn.client.tls) then return false end
  if rule.country or rule.continent or rule.asn then
    local geo = seen.geo
    if not geo then
      geo = txn.client.geo
      seen.geo = geo
    end
    if rule.country and not rule.country[geo.country or ""] then return false end
    if rule.continent and not rule.continent[geo.continent or ""] then return false end
    if rule.asn and not rule.asn[geo.asn or -1] then return false end
  end
  if rule.ip then
    local ip = seen.ip
    if not ip then
      ip = txn.client.ip
      seen.ip = ip
    end
    if C.moxy_ffi_pset_match(rule.ip, ip, #ip) ~= 1 then return false end
  end
  return true
end

--- acl:check(txn) -> the deciding rule's action ("allow", "deny", "auth")
-- and name, or nil when no rule matched.
function Acl:check(txn)
  local req = txn.req
  local seen = self.seen -- reused: a check does not wait, so no other runs meanwhile
  seen.ip, seen.geo = nil, nil
  for _, rule in ipairs(self.rules) do
    if matches(rule, txn, req, seen) then return rule.action, rule.name, rule end
  end
  return nil
end

--- acl:match_ip(ip) -> the name of the first rule whose ip list holds ip
-- (its other conditions are not looked at), or nil.
function Acl:match_ip(ip)
  for _, rule in ipairs(self.rules) do
    if rule.ip and C.moxy_ffi_pset_match(rule.ip, ip, #ip) == 1 then return rule.name end
  end
  return nil
end

--- acl:info() -> { rule name = { prefixes, bytes } } for the rules with ip lists.
function Acl:info()
  local out = {}
  for _, rule in ipairs(self.rules) do
    if rule.ip then
      C.moxy_ffi_pset_info(rule.ip, size_out, size_out + 1)
      out[rule.name] = { prefixes = tonumber(size_out[0]), bytes = tonumber(size_out[1]) }
    end
  end
  return out
end

-- HTTP Basic credentials of the request, or nil.
local crypto
local function credentials(txn)
  local h = txn.req.headers:get("Authorization")
  if not h then return nil end
  local b64 = h:match("^[Bb][Aa][Ss][Ii][Cc]%s+([%w%+/=]+)%s*$")
  if not b64 then return nil end
  crypto = crypto or require "moxy.crypto"
  local plain = crypto.base64_decode(b64)
  if not plain then return nil end
  local user, pass = plain:match("^([^:]*):(.*)$")
  if not user then return nil end
  return user, pass, h
end

local secret -- a per-VM key: the cache keeps no password, nor anything one could be guessed from offline
local CACHE_MAX, CACHE_SECS = 1024, 60

-- The user, when the request's credentials are right for rule (checked on
-- the offload threads the first time, remembered for a minute).
local function authenticate(rule, txn)
  local user, pass, header = credentials(txn)
  if not user then return nil end
  crypto = crypto or require "moxy.crypto"
  secret = secret or crypto.random_bytes(32)
  local key = crypto.hmac("sha256", secret, header)
  local hit = rule.cache[key]
  local now = os.time()
  if hit and hit.expires > now then return hit.user end
  local hash = rule.users[user]
  -- an unknown user costs a check too: the answer's time tells nothing
  local rc = C.moxy_ffi_crypt_check(pass, #pass, hash or rule.dummy, errbuf, ERR_LEN)
  if rc == DECLINED then error("moxy.acl: only hooks may check passwords", 3) end
  if rc ~= OK then
    require("moxy").log.err("acl: ", ffi.string(errbuf))
    return nil
  end
  local match = runtime.wait()
  if not (match and hash) then return nil end
  if rule.ncache >= CACHE_MAX then rule.cache, rule.ncache = {}, 0 end
  rule.cache[key] = { user = user, expires = now + CACHE_SECS }
  rule.ncache = rule.ncache + 1
  return user
end

--- acl:enforce(txn) -> true: go on (no rule, an allow rule, or the right
-- password); false: moxy answered (403 for deny, 401 with
-- WWW-Authenticate for auth) and the hook should return.  The deciding
-- rule goes to the access log (acl=<name>), the user too (user=<name>),
-- and /metrics counts the decisions.
function Acl:enforce(txn)
  local action, name, rule = self:check(txn)
  if not action then return true end
  txn:log_field("acl", name)
  if action == "allow" then
    count(self, rule, "allow")
    return true
  end
  if action == "deny" then
    count(self, rule, "deny")
    txn:respond(rule.status or 403, rule.body or "Forbidden\n", { ["Content-Type"] = "text/plain" })
    return false
  end
  local user = authenticate(rule, txn)
  if user then
    count(self, rule, "auth_ok")
    txn:log_field("user", user)
    return true
  end
  count(self, rule, "auth_failed")
  txn:respond(401, "Unauthorized\n", {
    ["Content-Type"] = "text/plain",
    ["WWW-Authenticate"] = format('Basic realm="%s", charset="UTF-8"', rule.realm),
  })
  return false
end

M.Acl = Acl
return M
