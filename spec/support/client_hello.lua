-- spec/support/client_hello.lua -- raw TLS ClientHello records for specs
-- (plain Lua strings, no FFI).
--
--   local ch = require "spec.support.client_hello"
--   local record = ch.record {
--     ciphers = { 0x1301, 0x1302 },
--     extensions = { ch.server_name("a.test"), ch.alpn { "h2" },
--                    ch.supported_versions { 0x0304 }, ch.key_share_x25519() },
--   }
--   local record, ja4 = ch.ja4_example()
--
-- ch.record(hello) -> the hello as TLS records (5-byte header 16 03 01, split
--   into records of at most 16384 bytes); ch.handshake(hello) -> the
--   handshake message alone (type 1, 3-byte length, body), as OpenSSL's
--   msg_callback hands it over; ch.wrap(msg) -> that message as records.
--   hello fields, all optional but ciphers:
--     version      legacy_version (0x0303)
--     random       32 bytes (random)
--     session_id   bytes (32 random bytes, as TLS 1.3 clients send)
--     ciphers      list of 16-bit cipher suites
--     compression  list of methods ({0})
--     extensions   list of {type = N, data = bytes}, sent in this order;
--                  nil: no extensions block at all
-- Extension makers (each returns {type, data}):
--   ch.server_name(host), ch.alpn({"h2", "http/1.1"}),
--   ch.supported_versions({0x0304, 0x0303}), ch.signature_algorithms({...}),
--   ch.supported_groups({...}), ch.key_share_x25519([key32][, grease_group]),
--   ch.ec_point_formats([{0}]), ch.psk_key_exchange_modes([{1}]),
--   ch.empty(type), ch.ext(type, data)
-- ch.GREASE: the 16 GREASE values (RFC 8701), ch.random_bytes(n).
local M = {}

local char, floor = string.char, math.floor
local unpack = table.unpack or unpack

local function u8(n) return char(n % 256) end
local function u16(n) return char(floor(n / 256) % 256, n % 256) end
local function u24(n) return char(floor(n / 65536) % 256, floor(n / 256) % 256, n % 256) end

-- bytes with a length prefix of 1, 2 or 3 bytes
local function vec8(s) assert(#s < 256, "vector too long"); return u8(#s) .. s end
local function vec16(s) assert(#s < 65536, "vector too long"); return u16(#s) .. s end
local function vec24(s) return u24(#s) .. s end

local function list16(values)
  local t = {}
  for i, v in ipairs(values) do t[i] = u16(v) end
  return table.concat(t)
end

M.GREASE = {}
for i = 0, 15 do M.GREASE[i + 1] = i * 0x1010 + 0x0a0a end

function M.random_bytes(n)
  local f = io.open("/dev/urandom", "rb")
  if f then
    local s = f:read(n)
    f:close()
    if s and #s == n then return s end
  end
  local t = {}
  for i = 1, n do t[i] = char(math.random(0, 255)) end
  return table.concat(t)
end

function M.ext(type, data) return { type = type, data = data or "" } end
function M.empty(type) return M.ext(type, "") end

-- server_name (0): one host_name entry
function M.server_name(host) return M.ext(0x0000, vec16("\0" .. vec16(host))) end

-- application_layer_protocol_negotiation (16)
function M.alpn(protocols)
  local t = {}
  for i, p in ipairs(protocols) do t[i] = vec8(p) end
  return M.ext(0x0010, vec16(table.concat(t)))
end

-- supported_versions (43), the client's form: a 1-byte length
function M.supported_versions(versions) return M.ext(0x002b, vec8(list16(versions))) end

-- signature_algorithms (13)
function M.signature_algorithms(algs) return M.ext(0x000d, vec16(list16(algs))) end

-- supported_groups (10)
function M.supported_groups(groups) return M.ext(0x000a, vec16(list16(groups))) end

-- ec_point_formats (11), {0} (uncompressed) by default
function M.ec_point_formats(formats)
  return M.ext(0x000b, vec8(char(unpack(formats or { 0 }))))
end

-- psk_key_exchange_modes (45), {1} (psk_dhe_ke) by default
function M.psk_key_exchange_modes(modes)
  return M.ext(0x002d, vec8(char(unpack(modes or { 1 }))))
end

-- key_share (51) with an x25519 share (key: 32 bytes, random by default),
-- after a one-byte share of grease_group when given (as Chrome sends: that
-- group must also be in supported_groups, or OpenSSL refuses the share).
function M.key_share_x25519(key, grease_group)
  key = key or M.random_bytes(32)
  assert(#key == 32, "key_share_x25519: a 32-byte key")
  local shares = u16(0x001d) .. vec16(key)
  if grease_group then shares = u16(grease_group) .. vec16("\0") .. shares end
  return M.ext(0x0033, vec16(shares))
end

function M.handshake(hello)
  local sid = hello.session_id or M.random_bytes(32)
  local random = hello.random or M.random_bytes(32)
  assert(#random == 32, "client_hello: random is 32 bytes")
  local body = {
    u16(hello.version or 0x0303), random, vec8(sid),
    vec16(list16(assert(hello.ciphers, "client_hello: ciphers"))),
    vec8(char(unpack(hello.compression or { 0 }))),
  }
  if hello.extensions then
    local e = {}
    for i, x in ipairs(hello.extensions) do e[i] = u16(x.type) .. vec16(x.data or "") end
    body[#body + 1] = vec16(table.concat(e))
  end
  return "\1" .. vec24(table.concat(body))
end

-- A handshake message as TLS records.
function M.wrap(msg)
  local out = {}
  for i = 1, #msg, 16384 do
    local frag = msg:sub(i, i + 16383)
    out[#out + 1] = "\22\3\1" .. u16(#frag) .. frag
  end
  return table.concat(out)
end

function M.record(hello) return M.wrap(M.handshake(hello)) end

-- The worked example of FoxIO's JA4.md (technical_details/JA4.md,
-- "Example" and "Raw Output"): Chrome's ciphers, extensions and
-- signature algorithms in their original order, h2 first in ALPN, TLS 1.3
-- in supported_versions; its JA4 is t13d1516h2_8daaf6152771_e5627efa2ab1.
-- GREASE values are added where Chrome puts them (first cipher, first and
-- last extension, supported_versions, supported_groups, key_share) and
-- one in signature_algorithms: none of them may change the fingerprint.
-- A well-formed hello that OpenSSL 3's server accepts (x25519 share).
-- ja4_example([host = "example.com"]) -> record, expected JA4, handshake message
function M.ja4_example(host)
  local G = M.GREASE
  local grease_group = G[3] -- 0x2a2a
  local hello = {
    ciphers = {
      G[1], 0x1301, 0x1302, 0x1303, 0xc02b, 0xc02f, 0xc02c, 0xc030, 0xcca9, 0xcca8,
      0xc013, 0xc014, 0x009c, 0x009d, 0x002f, 0x0035,
    },
    extensions = {
      M.ext(G[6], ""),                                      -- GREASE
      M.ext(0x001b, "\2\0\2"),                              -- compress_certificate: brotli
      M.server_name(host or "example.com"),                 -- 0000
      M.key_share_x25519(nil, grease_group),                -- 0033
      M.alpn { "h2", "http/1.1" },                          -- 0010
      M.ext(0x4469, vec16(vec8("h2"))),                     -- application_settings: h2
      M.empty(0x0017),                                      -- extended_master_secret
      M.psk_key_exchange_modes(),                           -- 002d
      M.signature_algorithms {                              -- 000d
        G[9], 0x0403, 0x0804, 0x0401, 0x0503, 0x0805, 0x0501, 0x0806, 0x0601,
      },
      M.ext(0x0005, "\1\0\0\0\0"),                          -- status_request: ocsp
      M.empty(0x0023),                                      -- session_ticket
      M.empty(0x0012),                                      -- signed_certificate_timestamp
      M.supported_versions { G[11], 0x0304, 0x0303 },       -- 002b
      M.ext(0xff01, "\0"),                                  -- renegotiation_info
      M.ec_point_formats(),                                 -- 000b
      M.supported_groups { grease_group, 0x001d, 0x0017, 0x0018 }, -- 000a
      M.ext(G[16], "\0"),                                   -- GREASE
      M.ext(0x0015, string.rep("\0", 16)),                  -- padding
    },
  }
  local msg = M.handshake(hello)
  return M.wrap(msg), "t13d1516h2_8daaf6152771_e5627efa2ab1", msg
end

return M
