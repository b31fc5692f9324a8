-- scripts/jwt_auth.lua: Bearer JSON Web Tokens checked at the edge (HS256
-- with a shared secret, RS256 with a public key), claims passed to the
-- origin.  Tokens are made here with moxy.crypto and openssl.
local helpers = require "spec.helpers"
package.path = helpers.root .. "/lua/?.lua;" .. package.path
local crypto = require "moxy.crypto"
local json = require "cjson"

local PATH = helpers.root .. "/scripts/jwt_auth.lua"
local SECRET = "a shared secret of 32 bytes......"

local function b64(t) return crypto.base64url_encode(json.encode(t)) end

local function hs256(claims, alg, secret)
  local input = b64({ alg = alg or "HS256", typ = "JWT" }) .. "." .. b64(claims)
  return input .. "." .. crypto.base64url_encode(crypto.hmac("sha256", secret or SECRET, input))
end

describe("scripts/jwt_auth.lua", function()
  local origin, m, rs, dir

  lazy_setup(function()
    origin = helpers.start_origin()
    m = helpers.start_moxy({
      upstreams = { app = { servers = { origin.addr } } },
      scripts = { "jwt.lua" },
    }, { files = { ["jwt.lua"] = helpers.script_with_config(PATH, [[{
      paths = { "/" }, except = { "/echo/healthz" }, algs = { "HS256" },
      secret = "]] .. SECRET .. [[", issuer = "https://id.example", audience = "edge", leeway = 5,
      claims_to_headers = { sub = "X-User" },
    }]]) } })
    dir = helpers.tmpdir("jwt")
    local out, code = helpers.sh(string.format("openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out %s/k.pem "
      .. "&& openssl pkey -in %s/k.pem -pubout -out %s/pub.pem", dir, dir, dir))
    assert(code == 0, out)
    rs = helpers.start_moxy({
      upstreams = { app = { servers = { origin.addr } } },
      scripts = { "jwt.lua" },
    }, { files = { ["jwt.lua"] = helpers.script_with_config(PATH, [[{
      paths = { "/" }, algs = { "RS256" }, public_key = io.open("]] .. dir .. [[/pub.pem"):read("*a"),
      leeway = 5, claims_to_headers = { sub = "X-User" },
    }]]) } })
  end)

  lazy_teardown(function() helpers.stop_all() end)

  local function get(port, path, token, headers)
    headers = headers or {}
    if token then headers.Authorization = "Bearer " .. token end
    return assert(helpers.request(port, { path = path, headers = headers }))
  end

  local function good(extra)
    local c = { sub = "user-42", iss = "https://id.example", aud = "edge", exp = os.time() + 60 }
    for k, v in pairs(extra or {}) do c[k] = v end
    return c
  end

  it("lets a valid token in, telling the origin who (and not the token, nor the client's own X-User)", function()
    local res = get(m.port, "/echo/in", hs256(good()), { ["X-User"] = "admin" })
    assert.equal(200, res.status, res.body)
    local doc = helpers.json(res.body)
    assert.equal("user-42", helpers.echo_value(doc, "X-User"))
    assert.is_nil(helpers.echo_value(doc, "Authorization"))
    res = get(m.port, "/echo/aud-list", hs256(good({ aud = { "other", "edge" } })))
    assert.equal(200, res.status)
  end)

  it("answers 401 with a Bearer challenge and the reason, and never asks the origin", function()
    local res = get(m.port, "/echo/none", nil)
    assert.equal(401, res.status)
    assert.equal('Bearer realm="moxy"', res:header("www-authenticate"))
    local cases = {
      { hs256(good(), "HS256", "another secret of 32 bytes......"), "bad signature" },
      { hs256(good({ exp = os.time() - 60 })), "expired" },
      { hs256(good({ nbf = os.time() + 600 })), "not yet valid" },
      { hs256(good({ iss = "https://evil.example" })), "wrong issuer" },
      { hs256(good({ aud = "other" })), "wrong audience" },
      { b64({ alg = "none" }) .. "." .. b64(good()) .. ".", "alg not accepted" },
      { hs256(good(), "HS512"), "alg not accepted" },
      { "not.a.token!", "malformed token" },
      { string.rep("a", 9000), "token too long" },
    }
    for _, c in ipairs(cases) do
      res = get(m.port, "/echo/denied", c[1])
      assert.equal(401, res.status, c[2])
      assert.equal('Bearer realm="moxy", error="invalid_token", error_description="' .. c[2] .. '"',
        res:header("www-authenticate"))
    end
    assert.same({}, origin:saw("^/echo/denied$"))
    assert.same({}, origin:saw("^/echo/none$"))
  end)

  it("leaves the except paths open", function()
    assert.equal(200, get(m.port, "/echo/healthz", nil).status)
  end)

  it("checks RS256 tokens with a public key, and refuses an HS256 one signed with that key (alg confusion)", function()
    local input = b64({ alg = "RS256", typ = "JWT" }) .. "." .. b64({ sub = "svc-7", exp = os.time() + 60 })
    helpers.write_file(dir .. "/input", input)
    local _, code = helpers.sh(string.format("openssl dgst -sha256 -sign %s/k.pem -out %s/sig %s/input", dir, dir, dir))
    assert.equal(0, code)
    local token = input .. "." .. crypto.base64url_encode(helpers.read_file(dir .. "/sig"))
    local res = get(rs.port, "/echo/rs", token)
    assert.equal(200, res.status, res.body)
    assert.equal("svc-7", helpers.echo_value(helpers.json(res.body), "X-User"))
    local forged = hs256({ sub = "root", exp = os.time() + 60 }, "HS256", helpers.read_file(dir .. "/pub.pem"))
    res = get(rs.port, "/echo/forged", forged)
    assert.equal(401, res.status)
    assert.matches("alg not accepted", res:header("www-authenticate"), 1, true)
  end)
end)
