-- jwt_auth.lua: let in only requests that carry a valid JSON Web Token
-- (RFC 7519) in `Authorization: Bearer <token>`, and tell the origin who
-- the caller is.
--
-- Configure: edit the CONFIG block below.
--   paths       path prefixes that need a token ({ "/" }: everything)
--   except      path prefixes that never do (health checks, login)
--   algs        the "alg" values accepted: HS256/384/512 (a shared secret),
--               RS256/384/512, PS256/384/512, ES256/384 (a public key).
--               "none" is never accepted.
--   secret      HS*: the shared secret (bytes)
--   public_key  RS*/PS*/ES*: a PEM public key or certificate, as text (e.g.
--               read from a file with io.open at load)
--   issuer      when set, "iss" must equal it
--   audience    when set, "aud" must equal it or (a list) contain it
--   leeway      seconds of clock skew allowed on exp and nbf
--   claims_to_headers  { claim = "Header-Name" }: claims sent to the origin
--               (the client's own headers of those names are replaced)
--
-- A request without a token, or with one that does not verify, gets 401
-- with `WWW-Authenticate: Bearer` (RFC 6750: error="invalid_token" and a
-- reason when there was a token).  The verified claims are in
-- txn.ctx.jwt for later hooks.  Tokens are checked in constant time and
-- must not be longer than 8 KiB.

-- CONFIG BEGIN
local CONFIG = {
  paths = { "/" },
  except = { "/healthz" },
  algs = { "HS256" },
  secret = "change me: a long random string",
  public_key = nil,
  issuer = nil,
  audience = nil,
  leeway = 30,
  claims_to_headers = { sub = "X-User" },
}
-- CONFIG END

local crypto = require "moxy.crypto"
local json = require "cjson.safe"

local MAX_TOKEN = 8192
local HMAC = { HS256 = "sha256", HS384 = "sha384", HS512 = "sha512" }

local ALGS = {}
for _, a in ipairs(CONFIG.algs or {}) do
  if a == "none" then error("CONFIG.algs: \"none\" is never accepted") end
  if not HMAC[a] and not a:match("^[RP]S%d%d%d$") and a ~= "ES256" and a ~= "ES384" then
    error("CONFIG.algs: unknown alg " .. tostring(a))
  end
  ALGS[a] = true
end
if not next(ALGS) then error("CONFIG.algs: at least one alg") end

local KEY
for a in pairs(ALGS) do
  if HMAC[a] and (type(CONFIG.secret) ~= "string" or #CONFIG.secret < 16) then
    error("CONFIG.secret: at least 16 bytes for " .. a)
  end
  if not HMAC[a] and not KEY then
    if type(CONFIG.public_key) ~= "string" then error("CONFIG.public_key: a PEM key for " .. a) end
    local err
    KEY, err = crypto.public_key(CONFIG.public_key)
    if not KEY then error("CONFIG.public_key: " .. err) end
  end
end

local function prefixed(path, list)
  for _, p in ipairs(list or {}) do
    if path:sub(1, #p) == p then return true end
  end
  return false
end

-- The claims of token, or nil and why it is not valid.
local function verify(token)
  if #token > MAX_TOKEN then return nil, "token too long" end
  local h64, p64, s64 = token:match("^([%w_-]+)%.([%w_-]+)%.([%w_-]*)$")
  if not h64 then return nil, "malformed token" end
  local header = json.decode(crypto.base64url_decode(h64) or "")
  if type(header) ~= "table" or type(header.alg) ~= "string" then return nil, "malformed header" end
  local alg = header.alg
  if not ALGS[alg] then return nil, "alg not accepted" end
  local sig = crypto.base64url_decode(s64)
  if not sig then return nil, "malformed signature" end
  local signed = h64 .. "." .. p64
  local ok
  if HMAC[alg] then
    ok = crypto.equal(crypto.hmac(HMAC[alg], CONFIG.secret, signed), sig)
  else
    ok = crypto.verify(alg, KEY, signed, sig)
  end
  if not ok then return nil, "bad signature" end
  local claims = json.decode(crypto.base64url_decode(p64) or "")
  if type(claims) ~= "table" then return nil, "malformed claims" end
  local now, leeway = os.time(), CONFIG.leeway or 0
  if claims.exp ~= nil and (type(claims.exp) ~= "number" or now > claims.exp + leeway) then return nil, "expired" end
  if claims.nbf ~= nil and (type(claims.nbf) ~= "number" or now < claims.nbf - leeway) then return nil, "not yet valid" end
  if CONFIG.issuer and claims.iss ~= CONFIG.issuer then return nil, "wrong issuer" end
  if CONFIG.audience then
    local aud, found = claims.aud, false
    if type(aud) == "table" then
      for _, a in ipairs(aud) do found = found or a == CONFIG.audience end
    else
      found = aud == CONFIG.audience
    end
    if not found then return nil, "wrong audience" end
  end
  return claims
end

local function deny(txn, why)
  local challenge = 'Bearer realm="moxy"'
  if why then challenge = challenge .. ', error="invalid_token", error_description="' .. why .. '"' end
  txn:log_field("jwt", why or "no token")
  return txn:respond(401, "unauthorized\n", { ["WWW-Authenticate"] = challenge })
end

return {
  on_request = function(txn)
    local path = txn.req.path
    if prefixed(path, CONFIG.except) or not prefixed(path, CONFIG.paths) then return end
    local auth = txn.req.headers:get("Authorization")
    local token = auth and auth:match("^[Bb]earer +(%S+)%s*$")
    if not token then return deny(txn, nil) end
    local claims, why = verify(token)
    if not claims then return deny(txn, why) end
    txn.ctx.jwt = claims
    for claim, header in pairs(CONFIG.claims_to_headers or {}) do
      local v = claims[claim]
      txn.req.headers:remove(header)
      if type(v) == "string" or type(v) == "number" then txn.req.headers:set(header, tostring(v)) end
    end
    txn.req.headers:remove("Authorization") -- the origin trusts moxy's headers, not the token
  end,
}
