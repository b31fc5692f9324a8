-- moxy.tls_hello: the `hello` object on_tls_hello hooks receive, over the C
-- exports of core/api/tls_hello.h (the cdef below must match it; checked by
-- tools/check-ffi.lua).
--
--   on_tls_hello = function(hello)
--     hello.sni, hello.alpn, hello.ja4, hello.client.ip, hello.listener
--     hello:use(name)               -- a loaded certificate, or one supplied before
--     hello:supply(cert, key[, name]) -- PEM strings; kept for name (default: sni)
--     hello:refuse()
--   end
local ffi = require "ffi"
local txn = require "moxy.txn" -- checks that the binary's FFI ABI matches these modules

ffi.cdef [[
typedef struct {
    const char *sni;
    const unsigned char *alpn;
    size_t alpn_len;
    const char *ja4;
    const char *client_ip;
    int client_port;
    const char *listener;
} moxy_ffi_hello_t;
int moxy_ffi_hello(void *conn, moxy_ffi_hello_t *out);
int moxy_ffi_hello_use(void *conn, const char *name, size_t len);
int moxy_ffi_hello_supply(void *conn, const char *name, size_t nlen, const char *cert, size_t clen,
                          const char *key, size_t klen, char *err, size_t errlen);
void moxy_ffi_hello_refuse(void *conn);
]]
local C = ffi.C
local OK = 0
local PHASE = txn.PHASE.tls_hello
local VOID_P = ffi.typeof("void *")

local M = {}

-- The connection whose hooks run (a number, as C passes it), 0: none.
-- A hello object acts only while its own hooks run: one kept in a table
-- and called later (another connection's hook, a timer) is refused.
local cur = 0

function M.enter(ptr) cur = ptr end
function M.leave() cur = 0 end

local Hello = {}
Hello.__index = Hello

local function conn(self, what)
  if self._ptr == nil then error("hello:" .. what .. ": only inside the on_tls_hello hook that received it", 3) end
  if cur == 0 or self._ptr ~= cur then
    error("hello:" .. what .. ": only inside the on_tls_hello hook that received it", 3)
  end
  local p = ffi.cast(VOID_P, cur)
  return p
end

-- Present the certificates loaded for `name` (exact, or a wildcard one label
-- deep), or the one supplied for it earlier; false when there are none.
function Hello:use(name)
  if type(name) ~= "string" then error("hello:use: expected a host name (string), got " .. type(name), 2) end
  local fake = rawget(self, "_fake")
  if fake then return fake.use(name) end
  return C.moxy_ffi_hello_use(conn(self, "use"), name, #name) == OK
end

local errbuf = ffi.new("char[256]")

-- Present `cert` (PEM: the certificate, then its chain) with `key` (PEM,
-- not encrypted), kept for `name` (default: the name asked for) so that a
-- later hello:use(name) finds it.  true, or nil and the reason.
function Hello:supply(cert, key, name)
  if type(cert) ~= "string" or type(key) ~= "string" then
    error("hello:supply: expected a certificate and a key (PEM strings)", 2)
  end
  if name ~= nil and type(name) ~= "string" then
    error("hello:supply: the name must be a string, got " .. type(name), 2)
  end
  name = name or self.sni or ""
  local fake = rawget(self, "_fake")
  if fake then return fake.supply(cert, key, name) end
  local rc = C.moxy_ffi_hello_supply(conn(self, "supply"), name, #name, cert, #cert, key, #key, errbuf, 256)
  if rc ~= OK then return nil, ffi.string(errbuf) end
  return true
end

-- Refuse the handshake (the client gets a handshake_failure alert).
function Hello:refuse()
  local fake = rawget(self, "_fake")
  if fake then fake.refuse()
  else C.moxy_ffi_hello_refuse(conn(self, "refuse")) end
  rawset(self, "_refused", true)
end

-- The ALPN protocols of the wire list p (n bytes), in order.
local function alpn_list(p, n)
  local list, i = {}, 0
  while i < n do
    local len = p[i]
    list[#list + 1] = ffi.string(p + i + 1, len)
    i = i + 1 + len
  end
  return list
end

local function cstr(p)
  if p == nil then return nil end
  local s = ffi.string(p)
  return s
end

local out = ffi.new("moxy_ffi_hello_t[1]")

local function run_list(list, h)
  for i = 1, #list do
    list[i](h)
    if rawget(h, "_refused") then return end
  end
end

-- Run the on_tls_hello hooks of `list` for the connection `ptr`, in order,
-- until one refuses.  Raises what a hook raised.
function M.run(list, ptr)
  cur = ptr
  txn.enter(0, PHASE)
  local h = setmetatable({ _ptr = ptr, alpn = {} }, Hello)
  if C.moxy_ffi_hello(ffi.cast(VOID_P, ptr), out) == OK then
    local o = out[0]
    h.sni, h.ja4 = cstr(o.sni), cstr(o.ja4)
    h.alpn = alpn_list(o.alpn, tonumber(o.alpn_len))
    h.client = { ip = ffi.string(o.client_ip), port = o.client_port }
    h.listener = ffi.string(o.listener)
  end
  local ok, err = pcall(run_list, list, h)
  cur = 0
  txn.leave()
  if not ok then error(err, 0) end
end

-- moxy.test: run the hooks of `list` on a hello made of `fields` (sni,
-- alpn, ja4, client = { ip, port }, listener), deciding through `fake`
-- ({ use = fn(name) -> bool, supply = fn(cert, key, name) -> true | nil, err,
-- refuse = fn() }) instead of a connection.  Raises what a hook raised.
function M.run_fake(list, fields, fake)
  local h = setmetatable({ _fake = fake, sni = fields.sni, alpn = fields.alpn or {}, ja4 = fields.ja4,
                           client = fields.client, listener = fields.listener }, Hello)
  txn.enter(0, PHASE)
  local ok, err = pcall(run_list, list, h)
  rawset(h, "_fake", nil) -- kept and called later, it refuses like a real one
  txn.leave()
  if not ok then error(err, 0) end
end

return M
