-- moxy.crypto: digests, HMACs, random bytes, base64 and signature checks
-- for scripts, over core/api/crypto.h (OpenSSL 3).  Everything takes and
-- returns Lua strings of bytes; hex() and the base64 functions turn them
-- into text.
--
--   crypto.sha256(s), .sha1, .sha384, .sha512 -> digest bytes
--   crypto.hmac(alg, key, data)               -> MAC bytes ("sha256", ...)
--   crypto.random_bytes(n)                    -> n bytes from the CSPRNG
--   crypto.hex(s)                             -> lower-case hex
--   crypto.base64_encode(s) / base64_decode(t)        (decode: nil when not base64)
--   crypto.base64url_encode(s) / base64url_decode(t)  (RFC 4648 5, no padding)
--   crypto.equal(a, b)                        -> a == b in constant time
--   crypto.public_key(pem)                    -> key, or nil, err (PEM key or certificate)
--   crypto.verify(alg, key, data, sig)        -> true/false (JWS algs: RS256, RS384,
--                                                RS512, PS256, PS384, PS512, ES256, ES384)
local ffi = require "ffi"

ffi.cdef [[
typedef struct evp_pkey_st moxy_pkey_t;
int moxy_ffi_crypto_digest(const char *alg, const char *data, size_t len, unsigned char *out);
int moxy_ffi_crypto_hmac(const char *alg, const char *key, size_t klen, const char *data, size_t len,
                         unsigned char *out);
int moxy_ffi_crypto_random(unsigned char *out, size_t n);
int moxy_ffi_crypto_equal(const char *a, const char *b, size_t n);
int moxy_ffi_crypto_b64_encode(const unsigned char *in, size_t len, char *out);
int moxy_ffi_crypto_b64_decode(const char *in, size_t len, unsigned char *out);
moxy_pkey_t *moxy_ffi_crypto_pkey(const char *pem, size_t len, char *err, size_t errlen);
void moxy_ffi_crypto_pkey_free(moxy_pkey_t *k);
int moxy_ffi_crypto_verify(const char *alg, moxy_pkey_t *key, const char *data, size_t len,
                           const unsigned char *sig, size_t slen);
]]

local C = ffi.C
local type, error, tostring = type, error, tostring
local M = {}

local md = ffi.new("unsigned char[64]")
local RANDOM_MAX = 1024 * 1024

local function str(v, what, fn)
  if type(v) ~= "string" then error("moxy.crypto." .. fn .. ": " .. what .. " must be a string, got " .. type(v), 3) end
  return v
end

local function digest(alg)
  return function(s)
    str(s, "data", alg)
    local n = C.moxy_ffi_crypto_digest(alg, s, #s, md)
    local out = ffi.string(md, n)
    return out
  end
end
M.sha1, M.sha256, M.sha384, M.sha512 = digest("sha1"), digest("sha256"), digest("sha384"), digest("sha512")

local ALGS = { sha1 = true, sha256 = true, sha384 = true, sha512 = true }

function M.hmac(alg, key, data)
  if not ALGS[alg] then error("moxy.crypto.hmac: alg must be sha1, sha256, sha384 or sha512, got " .. tostring(alg), 2) end
  str(key, "key", "hmac")
  str(data, "data", "hmac")
  local n = C.moxy_ffi_crypto_hmac(alg, key, #key, data, #data, md)
  local s = ffi.string(md, n)
  return s
end

function M.random_bytes(n)
  if type(n) ~= "number" or n < 0 or n % 1 ~= 0 or n > RANDOM_MAX then
    error("moxy.crypto.random_bytes: n must be a whole number 0.." .. RANDOM_MAX .. ", got " .. tostring(n), 2)
  end
  local buf = ffi.new("unsigned char[?]", n > 0 and n or 1)
  if C.moxy_ffi_crypto_random(buf, n) ~= 0 then error("moxy.crypto.random_bytes: the random generator failed", 2) end
  local s = ffi.string(buf, n)
  return s
end

function M.hex(s)
  str(s, "data", "hex")
  return (s:gsub(".", function(c) return string.format("%02x", c:byte()) end))
end

function M.equal(a, b)
  str(a, "a", "equal")
  str(b, "b", "equal")
  if #a ~= #b then return false end
  return C.moxy_ffi_crypto_equal(a, b, #a) == 1
end

function M.base64_encode(s)
  str(s, "data", "base64_encode")
  local out = ffi.new("char[?]", 4 * math.floor((#s + 2) / 3) + 1)
  local n = C.moxy_ffi_crypto_b64_encode(s, #s, out)
  if n < 0 then error("moxy.crypto.base64_encode: data too long", 2) end
  local enc = ffi.string(out, n)
  return enc
end

function M.base64_decode(t)
  str(t, "text", "base64_decode")
  local out = ffi.new("unsigned char[?]", 3 * math.floor(#t / 4 + 1))
  local n = C.moxy_ffi_crypto_b64_decode(t, #t, out)
  if n < 0 then return nil end
  local s = ffi.string(out, n)
  return s
end

local TO_URL = { ["+"] = "-", ["/"] = "_" }
local FROM_URL = { ["-"] = "+", ["_"] = "/" }

function M.base64url_encode(s)
  return (M.base64_encode(s):gsub("[+/]", TO_URL):gsub("=+$", ""))
end

function M.base64url_decode(t)
  str(t, "text", "base64url_decode")
  if t:find("[+/=]") then return nil end
  return M.base64_decode((t:gsub("[-_]", FROM_URL)))
end

local errbuf = ffi.new("char[200]")

function M.public_key(pem)
  str(pem, "pem", "public_key")
  local k = C.moxy_ffi_crypto_pkey(pem, #pem, errbuf, 200)
  if k == nil then return nil, ffi.string(errbuf) end
  local key = ffi.gc(k, C.moxy_ffi_crypto_pkey_free)
  return key
end

local VERIFY_ALGS = { RS256 = true, RS384 = true, RS512 = true, PS256 = true, PS384 = true, PS512 = true,
                      ES256 = true, ES384 = true }

function M.verify(alg, key, data, sig)
  if not VERIFY_ALGS[alg] then error("moxy.crypto.verify: unknown alg " .. tostring(alg), 2) end
  if type(key) ~= "cdata" then error("moxy.crypto.verify: key must come from moxy.crypto.public_key", 2) end
  str(data, "data", "verify")
  str(sig, "sig", "verify")
  local rc = C.moxy_ffi_crypto_verify(alg, key, data, #data, sig, #sig)
  if rc < 0 then error("moxy.crypto.verify: " .. alg .. " is not for this kind of key", 2) end
  return rc == 1
end

return M
