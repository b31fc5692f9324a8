-- moxy.crypto: digests, HMACs, base64, constant-time equality, random
-- bytes and JWS signature checks, against published vectors and keys made
-- by openssl.
package.path = "lua/?.lua;" .. package.path
local crypto = require "moxy.crypto"
local helpers = require "spec.helpers"

local function sh(cmd)
  local p = assert(io.popen(cmd .. " 2>/dev/null"))
  local out = p:read("*a")
  p:close()
  return out
end

local function read(path) return assert(helpers.read_file(path)) end

describe("moxy.crypto", function()
  it("digests and HMACs match their published vectors", function()
    assert.equal("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad", crypto.hex(crypto.sha256("abc")))
    assert.equal("a9993e364706816aba3e25717850c26c9cd0d89d", crypto.hex(crypto.sha1("abc")))
    assert.equal(64, #crypto.sha512(""))
    assert.equal(48, #crypto.sha384(""))
    -- RFC 4231 test case 2
    assert.equal("5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843",
      crypto.hex(crypto.hmac("sha256", "Jefe", "what do ya want for nothing?")))
    assert.has_error(function() crypto.hmac("md5", "k", "d") end)
  end)

  it("encodes and decodes base64 and base64url (RFC 4648 vectors), refusing what is not", function()
    local vectors = { [""] = "", f = "Zg==", fo = "Zm8=", foo = "Zm9v", foob = "Zm9vYg==", fooba = "Zm9vYmE=",
                      foobar = "Zm9vYmFy" }
    for plain, text in pairs(vectors) do
      assert.equal(text, crypto.base64_encode(plain))
      assert.equal(plain, crypto.base64_decode(text))
      assert.equal((text:gsub("=", "")), crypto.base64url_encode(plain))
      assert.equal(plain, crypto.base64url_decode((text:gsub("=", ""))))
      assert.equal(plain, crypto.base64_decode((text:gsub("=", "")))) -- padding optional
    end
    local bin = "\255\254\253\0\1"
    assert.equal("__79AAE", crypto.base64url_encode(bin))
    assert.equal(bin, crypto.base64url_decode("__79AAE"))
    for _, bad in ipairs({ "Zm9v=", "Z", "Zm=v", "Zm9v YmFy", "Zm\n9v", "=Zm9", "Zm9v==" }) do
      assert.is_nil(crypto.base64_decode(bad), bad)
    end
    assert.is_nil(crypto.base64url_decode("Zm9v+w"))
  end)

  it("compares in constant time, and draws random bytes", function()
    assert.is_true(crypto.equal("secret", "secret"))
    assert.is_false(crypto.equal("secret", "secreT"))
    assert.is_false(crypto.equal("secret", "secret!"))
    local a, b = crypto.random_bytes(32), crypto.random_bytes(32)
    assert.equal(32, #a)
    assert.is_not.equal(a, b)
    assert.equal("", crypto.random_bytes(0))
    assert.has_error(function() crypto.random_bytes(-1) end)
  end)

  it("verifies RS256, PS256 and ES256 signatures made by openssl, and refuses altered ones", function()
    local dir = sh("mktemp -d"):gsub("%s+$", "")
    sh("openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out " .. dir .. "/rsa.key")
    sh("openssl pkey -in " .. dir .. "/rsa.key -pubout -out " .. dir .. "/rsa.pub")
    sh("openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out " .. dir .. "/ec.key")
    sh("openssl pkey -in " .. dir .. "/ec.key -pubout -out " .. dir .. "/ec.pub")
    local data = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiIxMjMifQ"
    local f = assert(io.open(dir .. "/data", "wb"))
    f:write(data)
    f:close()
    sh(string.format("openssl dgst -sha256 -sign %s/rsa.key -out %s/rs.sig %s/data", dir, dir, dir))
    sh(string.format("openssl dgst -sha256 -sign %s/rsa.key -sigopt rsa_padding_mode:pss -sigopt rsa_pss_saltlen:digest "
      .. "-out %s/ps.sig %s/data", dir, dir, dir))
    sh(string.format("openssl dgst -sha256 -sign %s/ec.key -out %s/es.der %s/data", dir, dir, dir))
    local rsa = assert(crypto.public_key(read(dir .. "/rsa.pub")))
    local ec = assert(crypto.public_key(read(dir .. "/ec.pub")))
    assert.is_true(crypto.verify("RS256", rsa, data, read(dir .. "/rs.sig")))
    assert.is_true(crypto.verify("PS256", rsa, data, read(dir .. "/ps.sig")))
    assert.is_false(crypto.verify("RS256", rsa, data .. "x", read(dir .. "/rs.sig")))
    -- ECDSA: openssl writes DER; JWS writes r||s, 32 bytes each
    local der = read(dir .. "/es.der")
    local pos = 3
    local function int()
      local len = der:byte(pos + 1)
      local v = der:sub(pos + 2, pos + 1 + len):gsub("^%z+", "")
      pos = pos + 2 + len
      return string.rep("\0", 32 - #v) .. v
    end
    local raw = int() .. int()
    assert.equal(64, #raw)
    assert.is_true(crypto.verify("ES256", ec, data, raw))
    local flipped = raw:sub(1, 10) .. string.char((raw:byte(11) + 1) % 256) .. raw:sub(12)
    assert.is_false(crypto.verify("ES256", ec, data, flipped))
    assert.is_false(crypto.verify("ES256", ec, data, raw:sub(1, 63)))
    assert.has_error(function() crypto.verify("ES256", rsa, data, raw) end)
    assert.has_error(function() crypto.verify("HS256", rsa, data, raw) end)
    local k, err = crypto.public_key("not a key")
    assert.is_nil(k)
    assert.matches("not a PEM public key", err)
    sh("rm -rf " .. dir)
  end)
end)
